"""The gRPC side: a thin `powerx.provider.v1.ProviderService` adapter plus `grpc.health.v1.Health`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from sdk._contract import SERVICE_NAME, provider_pb2, provider_pb2_grpc
from sdk.call import CallInfo, build_call_info
from sdk.dispatch import Dispatcher
from sdk.errors import ProviderError


def _metadata(context: Any) -> dict[str, str]:
    """Text invocation metadata as a dict (binary `-bin` entries are left out)."""
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


def _call_info(request: Any, context: Any) -> CallInfo:
    return build_call_info(
        capability_id=request.capability_id,
        version=request.version,
        context=request.context,
        metadata=_metadata(context),
        transport="grpc",
        time_remaining_s=context.time_remaining(),
    )


async def _abort(context: Any, error: ProviderError) -> None:
    """Ends the RPC with the error's status (and its ErrorInfo, when it has one)."""
    await context.abort_with_status(rpc_status.to_status(error.to_status()))


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """Serves powerx.provider.v1.ProviderService from a Dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def Invoke(  # noqa: N802 - the name is fixed by the gRPC contract
        self, request: provider_pb2.InvokeRequest, context: Any
    ) -> provider_pb2.InvokeResponse:
        """Calls a unary capability."""
        call = _call_info(request, context)
        try:
            spec = self.dispatcher.resolve(request.capability_id, request.version, streaming=False)
            result = await self.dispatcher.invoke(spec, request.arguments, call)
        except ProviderError as err:
            await _abort(context, err)
            raise  # unreachable: abort raises
        return provider_pb2.InvokeResponse(result=result)

    async def InvokeStream(  # noqa: N802 - the name is fixed by the gRPC contract
        self, request: provider_pb2.InvokeStreamRequest, context: Any
    ) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
        """Calls a streaming capability and streams its chunks."""
        call = _call_info(request, context)
        try:
            spec = self.dispatcher.resolve(request.capability_id, request.version, streaming=True)
            async for chunk in self.dispatcher.stream(spec, request.arguments, call):
                yield chunk
        except ProviderError as err:
            await _abort(context, err)


class GrpcServer:
    """A grpc.aio server with the provider service, health and server reflection, on one port."""

    def __init__(self, dispatcher: Dispatcher, options: list[tuple[str, Any]] | None = None) -> None:
        # Without SO_REUSEPORT a port clash is an error instead of two processes sharing the port.
        self.server: Any = grpc.aio.server(options=[("grpc.so_reuseport", 0), *(options or [])])
        self.health: Any = health.aio.HealthServicer()
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(  # type: ignore[no-untyped-call]
            ProviderServicer(dispatcher), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # Reflection lets grpcurl and buf curl call the provider without its protos.
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Binds `host:port` (0 = ephemeral), starts serving and reports SERVING; returns the port."""
        bind_host = f"[{host}]" if ":" in host else host
        try:
            self.port = int(self.server.add_insecure_port(f"{bind_host}:{port}"))
        except RuntimeError as exc:  # grpc reports a failed bind as RuntimeError
            raise OSError(f"could not bind gRPC on {bind_host}:{port}: {exc}") from None
        if self.port == 0:
            raise OSError(f"could not bind gRPC on {bind_host}:{port}")
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def enter_graceful_shutdown(self) -> None:
        """Reports NOT_SERVING for every service; calls are still served."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Refuses new calls and lets running ones finish for up to `grace_s`."""
        await self.server.stop(grace_s)
