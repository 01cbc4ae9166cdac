"""OpenTelemetry tracing of a mesh: tracer provider, sampler, exporter and the gRPC server interceptor.

Each mesh builds its own `TracerProvider` and hands it to the instrumentation explicitly; the global
provider is left to whoever embeds the mesh (tests start several meshes in one process, and a provider
shut down with one mesh must not be the one every other mesh uses). With the exporter `none` and no
processor passed in, there is no provider and no interceptor at all: nothing would read the spans, and
the call context already carries the caller's trace id with a span id of its own (`context.from_metadata`),
so trace ids in audit rows, logs and outbound `traceparent` headers stay consistent either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Status, StatusCode

from servers.common.settings import Settings

MESH_SERVICE_NAME = "powerx-mesh"
EXPORTERS = ("none", "otlp", "console")
# Health checks and reflection are noise; watches and session streams live for minutes or hours, so a
# span per stream says nothing about latency and keeps a trace open for the stream's whole life.
UNTRACED_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
UNTRACED_METHODS = frozenset(
    {"WatchRegistry", "WatchAgentEvents", "WatchCallbacks", "StreamRunOutput", "Connect"}
)
# Status codes that mark a server span as failed (OpenTelemetry gRPC semantic conventions): the
# others are the caller's mistakes, not the server's.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_STATUS_CODE_ATTRIBUTE = "rpc.grpc.status_code"


def traced(details: grpc.HandlerCallDetails) -> bool:
    """Whether calls of a method get a server span (everything but health, reflection and long streams)."""
    service, _, method = str(details.method).lstrip("/").partition("/")
    return service not in UNTRACED_SERVICES and method not in UNTRACED_METHODS


def active_span_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the active span as lower-case hex, or None when no valid span is active.

    Unsampled spans have valid ids too, so a call's ids do not depend on whether it is exported.
    """
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


def _exporter(name: str) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        # Imported only when used; reads OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _CERTIFICATE, ….
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    raise ValueError(f"POWERX_OTEL_EXPORTER must be one of {', '.join(EXPORTERS)}, got {name!r}")


def _record_status(span: trace.Span, code: object) -> None:
    if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
        return
    span.set_attribute(_STATUS_CODE_ATTRIBUTE, code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))


def _with_status(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """The handler, recording the call's final status code on the active server span.

    The instrumentation only sees `abort`/`set_code`; the context interceptor ends failed calls with
    `abort_with_status` (rich error details), which it does not wrap, so failed calls would look OK.
    """
    if handler is None:
        return None
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }

    def unary(inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def behavior(request: Any, servicer_context: grpc.aio.ServicerContext) -> Any:
            span = trace.get_current_span()
            try:
                return await inner(request, servicer_context)
            except asyncio.CancelledError:
                _record_status(span, grpc.StatusCode.CANCELLED)
                raise
            finally:
                _record_status(span, servicer_context.code())

        return behavior

    def stream(inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(request: Any, servicer_context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = trace.get_current_span()
            try:
                async for item in inner(request, servicer_context):
                    yield item
            except asyncio.CancelledError:
                _record_status(span, grpc.StatusCode.CANCELLED)
                raise
            finally:
                _record_status(span, servicer_context.code())

        return behavior

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kwargs)


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """OpenTelemetry's aio server interceptor, plus the final status code of calls ended with rich errors.

    Goes first in the server's interceptor list, so the server span (the caller's `traceparent` as its
    parent) is active when the context interceptor builds the call context and takes the span's ids.
    """

    def __init__(self, provider: TracerProvider) -> None:
        self._otel = aio_server_interceptor(tracer_provider=provider, filter_=traced)  # type: ignore[no-untyped-call]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Starts a server span around every traced method."""
        if not traced(handler_call_details):
            return await continuation(handler_call_details)

        async def with_status(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return _with_status(await continuation(details))

        return await self._otel.intercept_service(with_status, handler_call_details)


@dataclass(frozen=True)
class Tracing:
    """The tracer provider of one mesh and the interceptor that starts its server spans."""

    provider: TracerProvider
    interceptor: TracingInterceptor

    async def shutdown(self) -> None:
        """Exports what is buffered and stops the processors (off the event loop: exporting blocks)."""
        await asyncio.to_thread(self.provider.shutdown)


def setup(settings: Settings, processor: SpanProcessor | None = None) -> Tracing | None:
    """Builds the tracing of a mesh from POWERX_OTEL_EXPORTER and POWERX_OTEL_SAMPLE_RATIO.

    Args:
        settings: The mesh's settings.
        processor: An extra span processor (tests pass one with an in-memory exporter); with it,
            spans are made even when the exporter setting is `none`.

    Returns:
        The tracing to install, or None when nothing would receive spans.

    Raises:
        ValueError: An unknown exporter, or a sample ratio outside [0, 1].
    """
    ratio = settings.otel_sample_ratio
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"POWERX_OTEL_SAMPLE_RATIO must be between 0 and 1, got {ratio}")
    exporter = _exporter(settings.otel_exporter)
    if exporter is None and processor is None:
        return None
    provider = TracerProvider(
        # A caller's sampled flag decides; new traces are sampled at the configured ratio.
        sampler=ParentBased(TraceIdRatioBased(ratio)),
        # OTEL_RESOURCE_ATTRIBUTES adds to this (deployment.environment, service.instance.id, …).
        resource=Resource.create({SERVICE_NAME: MESH_SERVICE_NAME}),
    )
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if processor is not None:
        provider.add_span_processor(processor)
    return Tracing(provider, TracingInterceptor(provider))


__all__ = ["Tracing", "TracingInterceptor", "active_span_ids", "setup", "traced"]
