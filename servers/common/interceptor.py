"""The one server interceptor: builds the call context and maps domain errors onto gRPC statuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from servers.common import context
from servers.common.errors import MeshError, code_of, internal_status, to_status

log = logging.getLogger("powerx.rpc")


def domain_of(method: str) -> str:
    """Error domain of a full method name: `/powerx.registry.v1.RegistryService/X` -> `registry.powerx`."""
    parts = method.lstrip("/").split(".")
    return f"{parts[1]}.powerx" if len(parts) > 2 and parts[0] == "powerx" else "powerx"


class _Call:
    """What the wrappers share for one RPC: its context, and how it ends."""

    def __init__(self, method: str, servicer_context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.domain = domain_of(method)
        self.grpc_context = servicer_context
        self.ctx = context.from_metadata(
            servicer_context.invocation_metadata() or (), servicer_context.time_remaining()
        )
        self.started = time.perf_counter()

    async def begin(self) -> context.CallContext:
        # Direct gRPC callers get the request id back as Envoy's REST callers do.
        await self.grpc_context.send_initial_metadata(((context.REQUEST_ID_HEADER, self.ctx.request_id),))
        return self.ctx

    async def fail(self, exc: BaseException) -> None:
        if isinstance(exc, MeshError):
            status = to_status(exc, self.domain)
            log.info(
                "rpc failed",
                extra={
                    "method": self.method,
                    "code": status.code,
                    "reason": exc.reason,
                    "error": exc.message,
                },
            )
            await self.grpc_context.abort_with_status(rpc_status.to_status(status))
        log.exception("rpc crashed", extra={"method": self.method}, exc_info=exc)
        await self.grpc_context.abort_with_status(
            rpc_status.to_status(internal_status(self.domain, self.ctx.request_id))
        )

    def done(self) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "rpc done", extra={"method": self.method, "ms": (time.perf_counter() - self.started) * 1e3}
            )


def _passthrough(exc: BaseException) -> bool:
    # Aborts raised by the servicer itself and cancellations (client went away) are not ours to map.
    return isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError)


def _wrap_unary(method: str, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def behavior(request: Any, grpc_context: grpc.aio.ServicerContext) -> Any:
        call = _Call(method, grpc_context)
        token = context.bind(call.ctx)
        try:
            await call.begin()
            return await inner(request, grpc_context)
        except BaseException as exc:
            if _passthrough(exc) or not isinstance(exc, Exception):
                raise
            await call.fail(exc)
            raise  # unreachable: abort raises
        finally:
            call.done()
            context.reset(token)

    return behavior


def _wrap_stream(method: str, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def behavior(request: Any, grpc_context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _Call(method, grpc_context)
        token = context.bind(call.ctx)
        try:
            await call.begin()
            async for item in inner(request, grpc_context):
                yield item
        except BaseException as exc:
            if _passthrough(exc) or not isinstance(exc, Exception):
                raise
            await call.fail(exc)
        finally:
            call.done()
            context.reset(token)

    return behavior


class ContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every `powerx.*` RPC with the call context and the error table.

    Binds a `CallContext`, maps `MeshError`s through the error table, and turns anything unexpected into
    INTERNAL with a generic message (logged with the request id).
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wraps the handler of a `powerx.*` method; passes health and reflection through untouched."""
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith("/powerx."):
            return handler
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(method, handler.unary_unary), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(method, handler.unary_stream), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(method, handler.stream_unary), **kwargs)
        return grpc.stream_stream_rpc_method_handler(_wrap_stream(method, handler.stream_stream), **kwargs)


__all__ = ["ContextInterceptor", "code_of", "domain_of"]
