"""Thin grpc.aio adapter of the router: one line per RPC; errors are mapped by the interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from powerx.router.v1 import router_service_pb2 as rt
from powerx.router.v1 import router_service_pb2_grpc as rt_grpc
from router.service import RouterService
from servers.common import context


class RouterServicer(rt_grpc.RouterServiceServicer):
    """Serves powerx.router.v1.RouterService."""

    def __init__(self, service: RouterService) -> None:
        self.service = service

    async def ResolveEndpoint(self, request: rt.ResolveEndpointRequest, _: Any) -> rt.ResolveEndpointResponse:
        return await self.service.resolve_endpoint(request, context.current())

    async def Invoke(self, request: rt.InvokeRequest, _: Any) -> rt.InvokeResponse:
        return await self.service.invoke(request, context.current())

    async def InvokeStream(
        self, request: rt.InvokeStreamRequest, _: Any
    ) -> AsyncIterator[rt.InvokeStreamResponse]:
        async for message in self.service.invoke_stream(request, context.current()):
            yield message

    async def ReportOutcome(self, request: rt.ReportOutcomeRequest, _: Any) -> rt.ReportOutcomeResponse:
        return await self.service.report_outcome(request, context.current())
