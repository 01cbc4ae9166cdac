"""The one server interceptor: builds the call context and maps domain errors onto gRPC statuses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_status import rpc_status

from servers.auth.audit import DENIED, Auditor
from servers.auth.gate import API_KEY_HEADER, Gate, identified
from servers.auth.permissions import Kind, rule_of
from servers.common import context, telemetry
from servers.common.errors import InvalidArgument, MeshError, code_of, internal_status, to_status

log = logging.getLogger("powerx.rpc")
_CODES = {c.value[0]: c for c in grpc.StatusCode}
STREAM_HEADER_GRACE_S = 0.1


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
        ids = telemetry.active_span_ids()
        if ids is not None:  # the server span's ids: audit rows, logs and outbound calls name that span
            self.ctx = replace(self.ctx, trace_id=ids[0], span_id=ids[1])
        self.api_key = _api_key(metadata) if guard.gate is not None else ""
        self.rule = rule_of(method)
        self.started = time.perf_counter()
        self.started_ms = int(time.time() * 1000)
        self.outcome = "OK"
        self.reason = ""
        self.request: Message | None = None
        self.headers_sent = False
        self._header_task: asyncio.Future[None] | None = None

    async def send_headers(self) -> None:
        # Direct gRPC callers get the request id back as Envoy's REST callers do.
        if self.headers_sent:
            return
        self.headers_sent = True
        await self.grpc_context.send_initial_metadata(((context.REQUEST_ID_HEADER, self.ctx.request_id),))

    def headers_soon(self) -> None:
        """Sends the headers from a task of its own (a stream that has nothing to say yet)."""

        async def send() -> None:
            with contextlib.suppress(Exception):  # the call may have ended meanwhile
                await self.send_headers()

        if not self.headers_sent:
            self._header_task = asyncio.ensure_future(send())

    async def begin(self, *, headers: bool = True) -> context.CallContext:
        if headers:
            await self.send_headers()
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
        try:
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
        except Exception:  # an audit fault never changes the call's outcome
            log.exception("audit record failed", extra={"method": self.method})


class _Undecodable:
    """Stands for a request message that did not parse, so that the call fails inside the wrapper."""

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc.aio answers a deserializer exception with UNKNOWN and "Unexpected <class ...DecodeError>: ..."
    # (through Envoy: HTTP 500 with that text), before any interceptor code runs. Parsing here instead
    # lets the wrapper reject the call like any other invalid input.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return parse


def _malformed(request: Any) -> Any:
    """The request, after raising INVALID_ARGUMENT when it (or a streamed one) did not parse."""
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            "the request is not a valid protobuf message of its type", reason="MALFORMED_REQUEST"
        )
    if isinstance(request, Message) or not hasattr(request, "__aiter__"):
        return request

    async def checked() -> AsyncIterator[Any]:
        async for item in request:
            yield _malformed(item)

    return checked()


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
            return await inner(_malformed(request), grpc_context)
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
        # Headers go with the first message, or after a short grace when the stream has nothing yet (an
        # idle watch). Sending them first would turn an error found while starting the stream (invalid
        # input, not found) into HTTP 200 with the status in the body for REST callers.
        timer = asyncio.get_running_loop().call_later(STREAM_HEADER_GRACE_S, call.headers_soon)
        try:
            await call.begin(headers=False)
            async for item in inner(_malformed(request), grpc_context):
                timer.cancel()
                await call.send_headers()
                yield item
        except BaseException as exc:
            timer.cancel()
            if _passthrough(exc) or not isinstance(exc, Exception):
                _passthrough_outcome(call, exc)
                raise
            await call.fail(exc)
        finally:
            timer.cancel()
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
            "request_deserializer": _tolerant(handler.request_deserializer),
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
