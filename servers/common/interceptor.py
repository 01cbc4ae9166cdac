"""The one server interceptor: builds the call context and maps domain errors onto gRPC statuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_status import rpc_status

from servers.auth.audit import DENIED, Auditor
from servers.auth.gate import API_KEY_HEADER, Gate, identified
from servers.auth.permissions import Kind, rule_of
from servers.common import context
from servers.common.errors import MeshError, code_of, internal_status, to_status

log = logging.getLogger("powerx.rpc")
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def domain_of(method: str) -> str:
    """Error domain of a full method name: `/powerx.registry.v1.RegistryService/X` -> `registry.powerx`."""
    parts = method.lstrip("/").split(".")
    return f"{parts[1]}.powerx" if len(parts) > 2 and parts[0] == "powerx" else "powerx"


@dataclass(frozen=True, slots=True)
class Guard:
    """What the interceptor checks and records: authentication (`Gate`) and the audit log."""

    gate: Gate | None = None
    auditor: Auditor | None = None


def _api_key(metadata: Any) -> str:
    for key, value in metadata or ():
        if key.lower() == API_KEY_HEADER and isinstance(value, str):
            return value.strip()[:512]
    return ""


class _Call:
    """What the wrappers share for one RPC: its context, its permission rule, and how it ends."""

    def __init__(self, method: str, servicer_context: grpc.aio.ServicerContext, guard: Guard) -> None:
        self.method = method
        self.domain = domain_of(method)
        self.grpc_context = servicer_context
        self.guard = guard
        metadata = servicer_context.invocation_metadata() or ()
        self.ctx = context.from_metadata(metadata, servicer_context.time_remaining())
        self.api_key = _api_key(metadata) if guard.gate is not None else ""
        self.rule = rule_of(method)
        self.started = time.perf_counter()
        self.started_ms = int(time.time() * 1000)
        self.outcome = "OK"
        self.reason = ""
        self.request: Message | None = None

    async def begin(self) -> context.CallContext:
        # Direct gRPC callers get the request id back as Envoy's REST callers do.
        await self.grpc_context.send_initial_metadata(((context.REQUEST_ID_HEADER, self.ctx.request_id),))
        if self.guard.gate is not None:
            try:
                self.ctx = await self.guard.gate.admit(self.ctx, self.rule, self.method, self.api_key)
            except MeshError as exc:
                self.ctx = identified(exc) or self.ctx  # the audit row names a proven caller
                raise
            finally:
                self.api_key = ""
            context.bind(self.ctx)  # undone with the interceptor's own token when the call ends
        return self.ctx

    def ended(self, outcome: str, reason: str = "") -> None:
        self.outcome, self.reason = outcome, reason

    async def fail(self, exc: BaseException) -> None:
        if isinstance(exc, MeshError):
            status = to_status(exc, self.domain)
            self.ended(_CODES[status.code].name if status.code in _CODES else "UNKNOWN", exc.reason)
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
        self.ended("INTERNAL", "INTERNAL")
        log.exception("rpc crashed", extra={"method": self.method}, exc_info=exc)
        await self.grpc_context.abort_with_status(
            rpc_status.to_status(internal_status(self.domain, self.ctx.request_id))
        )

    def done(self) -> None:
        ms = (time.perf_counter() - self.started) * 1e3
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rpc done", extra={"method": self.method, "ms": ms})
        auditor, rule = self.guard.auditor, self.rule
        if auditor is None:
            return
        if rule is not None and rule.kind is Kind.READ and self.outcome not in DENIED:
            return  # reads are audited only when refused
        auditor.call(
            self.ctx,
            method=self.method,
            permission=rule.permission if rule is not None else "",
            kind=rule.kind if rule is not None else Kind.READ,
            outcome=self.outcome,
            reason=self.reason,
            started_ms=self.started_ms,
            duration_ms=ms,
            request=self.request,
        )


def _passthrough(exc: BaseException) -> bool:
    # Aborts raised by the servicer itself and cancellations (client went away) are not ours to map.
    return isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError)


def _passthrough_outcome(call: _Call, exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):
        call.ended("CANCELLED")
    else:  # the servicer aborted the call itself
        code = call.grpc_context.code()
        call.ended(code.name if isinstance(code, grpc.StatusCode) else "ABORTED")


def _wrap_unary(
    method: str, inner: Callable[..., Awaitable[Any]], guard: Guard
) -> Callable[..., Awaitable[Any]]:
    async def behavior(request: Any, grpc_context: grpc.aio.ServicerContext) -> Any:
        call = _Call(method, grpc_context, guard)
        call.request = request if isinstance(request, Message) else None
        token = context.bind(call.ctx)
        try:
            await call.begin()
            return await inner(request, grpc_context)
        except BaseException as exc:
            if _passthrough(exc) or not isinstance(exc, Exception):
                _passthrough_outcome(call, exc)
                raise
            await call.fail(exc)
            raise  # unreachable: abort raises
        finally:
            call.done()
            context.reset(token)

    return behavior


def _wrap_stream(
    method: str, inner: Callable[..., AsyncIterator[Any]], guard: Guard
) -> Callable[..., AsyncIterator[Any]]:
    async def behavior(request: Any, grpc_context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _Call(method, grpc_context, guard)
        call.request = request if isinstance(request, Message) else None
        token = context.bind(call.ctx)
        try:
            await call.begin()
            async for item in inner(request, grpc_context):
                yield item
        except BaseException as exc:
            if _passthrough(exc) or not isinstance(exc, Exception):
                _passthrough_outcome(call, exc)
                raise
            await call.fail(exc)
        finally:
            call.done()
            context.reset(token)

    return behavior


class ContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every `powerx.*` RPC with the call context, authentication, the audit log and the error table.

    Binds a `CallContext`, admits the call by its API key or agent token against the permission table
    (`servers.auth`), records mutations, invocations and refusals in the audit log, maps `MeshError`s
    through the error table, and turns anything unexpected into INTERNAL with a generic message (logged
    with the request id). The same checks apply to native gRPC and to REST through Envoy, which
    forwards the caller's headers as metadata.
    """

    def __init__(self, guard: Guard | None = None) -> None:
        self.guard = guard or Guard()

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
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, self.guard), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream, self.guard), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(method, handler.stream_unary, self.guard), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(method, handler.stream_stream, self.guard), **kwargs
        )


__all__ = ["ContextInterceptor", "Guard", "code_of", "domain_of"]
