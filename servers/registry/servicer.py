"""Thin grpc.aio adapter of the registry: one line per RPC; errors are mapped by the interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers.common import context
from servers.registry.service import RegistryService


class RegistryServicer(rs_grpc.RegistryServiceServicer):
    """Serves powerx.registry.v1.RegistryService."""

    def __init__(self, service: RegistryService) -> None:
        self.service = service

    async def AnnounceProvider(
        self, request: rs.AnnounceProviderRequest, _: Any
    ) -> rs.AnnounceProviderResponse:
        return await self.service.announce_provider(request, context.current())

    async def WithdrawProvider(
        self, request: rs.WithdrawProviderRequest, _: Any
    ) -> rs.WithdrawProviderResponse:
        return await self.service.withdraw_provider(request, context.current())

    async def RenewProviderLease(
        self, request: rs.RenewProviderLeaseRequest, _: Any
    ) -> rs.RenewProviderLeaseResponse:
        return await self.service.renew_provider_lease(request, context.current())

    async def GetProvider(self, request: rs.GetProviderRequest, _: Any) -> rs.GetProviderResponse:
        return await self.service.get_provider(request, context.current())

    async def ListProviders(self, request: rs.ListProvidersRequest, _: Any) -> rs.ListProvidersResponse:
        return await self.service.list_providers(request, context.current())

    async def GetCapability(self, request: rs.GetCapabilityRequest, _: Any) -> rs.GetCapabilityResponse:
        return await self.service.get_capability(request, context.current())

    async def ListCapabilities(
        self, request: rs.ListCapabilitiesRequest, _: Any
    ) -> rs.ListCapabilitiesResponse:
        return await self.service.list_capabilities(request, context.current())

    async def ListRuntimeEndpoints(
        self, request: rs.ListRuntimeEndpointsRequest, _: Any
    ) -> rs.ListRuntimeEndpointsResponse:
        return await self.service.list_runtime_endpoints(request, context.current())

    async def RefreshRegistry(self, request: rs.RefreshRegistryRequest, _: Any) -> rs.RefreshRegistryResponse:
        return await self.service.refresh_registry(request, context.current())

    async def DeleteEndpoint(self, request: rs.DeleteEndpointRequest, _: Any) -> rs.DeleteEndpointResponse:
        return await self.service.delete_endpoint(request, context.current())

    async def ImportMcpServer(self, request: rs.ImportMcpServerRequest, _: Any) -> rs.ImportMcpServerResponse:
        return await self.service.import_mcp_server(request, context.current())

    async def WatchRegistry(
        self, request: rs.WatchRegistryRequest, _: Any
    ) -> AsyncIterator[rs.WatchRegistryResponse]:
        async for item in self.service.watch_registry(request, context.current()):
            yield item
