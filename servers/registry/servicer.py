"""Thin grpc.aio adapter of the registry: one line per RPC; errors are mapped by the interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers.common import context
from servers.registry.service import RegistryService


class RegistryServicer(rs_grpc.RegistryServiceServicer):  # type: ignore[misc]
    """Serves powerx.registry.v1.RegistryService."""

    def __init__(self, service: RegistryService) -> None:
        self.service = service

    async def AnnounceProvider(self, request: rs.AnnounceProviderRequest, _: Any) -> rs.AnnounceProviderResponse:  # noqa: N802, D102
        return await self.service.announce_provider(request, context.current())

    async def WithdrawProvider(self, request: rs.WithdrawProviderRequest, _: Any) -> rs.WithdrawProviderResponse:  # noqa: N802, D102
        return await self.service.withdraw_provider(request, context.current())

    async def RenewProviderLease(self, request: rs.RenewProviderLeaseRequest, _: Any) -> rs.RenewProviderLeaseResponse:  # noqa: N802, D102
        return await self.service.renew_provider_lease(request, context.current())

    async def GetProvider(self, request: rs.GetProviderRequest, _: Any) -> rs.GetProviderResponse:  # noqa: N802, D102
        return await self.service.get_provider(request, context.current())

    async def ListProviders(self, request: rs.ListProvidersRequest, _: Any) -> rs.ListProvidersResponse:  # noqa: N802, D102
        return await self.service.list_providers(request, context.current())

    async def GetCapability(self, request: rs.GetCapabilityRequest, _: Any) -> rs.GetCapabilityResponse:  # noqa: N802, D102
        return await self.service.get_capability(request, context.current())

    async def ListCapabilities(self, request: rs.ListCapabilitiesRequest, _: Any) -> rs.ListCapabilitiesResponse:  # noqa: N802, D102
        return await self.service.list_capabilities(request, context.current())

    async def ListRuntimeEndpoints(  # noqa: N802, D102
        self, request: rs.ListRuntimeEndpointsRequest, _: Any
    ) -> rs.ListRuntimeEndpointsResponse:
        return await self.service.list_runtime_endpoints(request, context.current())

    async def RefreshRegistry(self, request: rs.RefreshRegistryRequest, _: Any) -> rs.RefreshRegistryResponse:  # noqa: N802, D102
        return await self.service.refresh_registry(request, context.current())

    async def DeleteEndpoint(self, request: rs.DeleteEndpointRequest, _: Any) -> rs.DeleteEndpointResponse:  # noqa: N802, D102
        return await self.service.delete_endpoint(request, context.current())

    async def ImportMcpServer(self, request: rs.ImportMcpServerRequest, _: Any) -> rs.ImportMcpServerResponse:  # noqa: N802, D102
        return await self.service.import_mcp_server(request, context.current())

    async def WatchRegistry(  # noqa: N802, D102
        self, request: rs.WatchRegistryRequest, _: Any
    ) -> AsyncIterator[rs.WatchRegistryResponse]:
        async for item in self.service.watch_registry(request, context.current()):
            yield item
