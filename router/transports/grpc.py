"""The gRPC transport: `powerx.provider.v1.ProviderService` on the endpoint, channels cached per endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from powerx.provider.v1 import provider_service_pb2 as provider_pb2
from router.transports.base import REQUEST_CODES, Call, ProbeResult, Target, TransportError, chunk_error

_INVOKE = "/powerx.provider.v1.ProviderService/Invoke"
_STREAM = "/powerx.provider.v1.ProviderService/InvokeStream"
# grpc-core's wording when no connection could be made: the request was never sent.
_NOT_SENT_MARKERS = ("failed to connect", "connection refused", "name resolution", "dns resolution")


def grpc_target(uri: str) -> str:
    """`grpc://host:port` → `host:port`."""
    parts = urlsplit(uri)
    return parts.netloc or uri


def metadata_for(call: Call) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries the caller's context to the provider."""
    md = [
        ("x-request-id", call.request_id),
        ("traceparent", call.traceparent),
        ("x-tenant-id", call.tenant_id),
        ("x-powerx-attempt", str(call.attempt)),
    ]
    if call.idempotency_key:
        md.append(("idempotency-key", call.idempotency_key))
    md.extend((k.lower(), v) for k, v in call.metadata.items())
    return tuple(md)


def error_from_rpc(exc: grpc.aio.AioRpcError, what: str) -> TransportError:
    """Maps a failed gRPC call to a TransportError."""
    code = exc.code().value[0]
    details = exc.details() or code_pb2.Code.Name(code)
    sent = not (code == code_pb2.UNAVAILABLE and any(m in details.lower() for m in _NOT_SENT_MARKERS))
    return TransportError(code, f"{what}: {details}"[:1000], sent=sent, provider_error=code in REQUEST_CODES)


class _Endpoint:
    __slots__ = ("channel", "health", "invoke", "stream", "target")

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(
            target, options=[("grpc.enable_retries", 0), ("grpc.max_receive_message_length", 16 << 20)]
        )
        self.invoke = self.channel.unary_unary(
            _INVOKE,
            request_serializer=provider_pb2.InvokeRequest.SerializeToString,
            response_deserializer=provider_pb2.InvokeResponse.FromString,
        )
        self.stream = self.channel.unary_stream(
            _STREAM,
            request_serializer=provider_pb2.InvokeStreamRequest.SerializeToString,
            response_deserializer=provider_pb2.InvokeStreamResponse.FromString,
        )
        self.health = health_pb2_grpc.HealthStub(self.channel)


class GrpcTransport:
    """Calls providers over gRPC; one cached channel and multicallables per endpoint."""

    def __init__(self) -> None:
        self._endpoints: dict[str, _Endpoint] = {}

    def _get(self, target: Target) -> _Endpoint:
        addr = grpc_target(target.uri)
        ep = self._endpoints.get(target.endpoint_id)
        if ep is None or ep.target != addr:
            if ep is not None:
                asyncio.ensure_future(ep.channel.close())  # noqa: RUF006 - fire and forget
            ep = self._endpoints[target.endpoint_id] = _Endpoint(addr)
        return ep

    async def invoke(self, target: Target, call: Call) -> struct_pb2.Value:
        """Calls ProviderService.Invoke."""
        ep = self._get(target)
        req = provider_pb2.InvokeRequest(
            capability_id=call.capability_id,
            version=call.version,
            arguments=call.arguments,
            context=call.provider_context(),
        )
        try:
            resp = await ep.invoke(req, timeout=call.timeout_s, metadata=metadata_for(call))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"grpc {ep.target}") from None
        result: struct_pb2.Value = resp.result
        return result

    async def stream(self, target: Target, call: Call) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
        """Calls ProviderService.InvokeStream; cancels the provider's stream when the consumer stops."""
        ep = self._get(target)
        req = provider_pb2.InvokeStreamRequest(
            capability_id=call.capability_id,
            version=call.version,
            arguments=call.arguments,
            context=call.provider_context(),
        )
        rpc = ep.stream(req, timeout=call.timeout_s, metadata=metadata_for(call))
        try:
            async for chunk in rpc:
                if chunk.HasField("error"):
                    raise chunk_error(chunk.error, f"grpc {ep.target}")
                yield chunk
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"grpc {ep.target}") from None
        finally:
            rpc.cancel()

    async def probe(self, target: Target, timeout_s: float) -> ProbeResult:
        """grpc.health.v1 Check of the whole server."""
        ep = self._get(target)
        try:
            resp = await ep.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                # Reachable but without the health service: the connection is the only signal we get.
                return ProbeResult(ok=True)
            return ProbeResult(ok=False, detail=f"health check failed: {exc.code().name}")
        if resp.status == health_pb2.HealthCheckResponse.SERVING:
            return ProbeResult(ok=True)
        return ProbeResult(
            ok=False, detail=f"health check: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
        )

    async def forget(self, endpoint_id: str) -> None:
        """Closes the endpoint's channel."""
        ep = self._endpoints.pop(endpoint_id, None)
        if ep is not None:
            await ep.channel.close()

    async def close(self) -> None:
        """Closes every channel."""
        eps, self._endpoints = list(self._endpoints.values()), {}
        for ep in eps:
            with contextlib.suppress(Exception):
                await ep.channel.close()
