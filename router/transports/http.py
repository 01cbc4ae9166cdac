"""The HTTP transport: JSON POST per call, NDJSON or SSE for streams, `GET {uri}/health` as the probe.

Wire format (docs/provider-sdk.md): the body is `powerx.provider.v1.InvokeRequest` in proto3 JSON; a
2xx answer is `InvokeResponse` JSON; an error is a `google.rpc.Status` JSON body with a non-2xx status;
stream lines or SSE `data:` events are `InvokeStreamResponse` JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2

from powerx.provider.v1 import provider_service_pb2 as provider_pb2
from router.transports.base import Call, ProbeResult, Target, TransportError, chunk_error

# grpc-gateway's mapping, reversed, for answers that carry no google.rpc.Status body.
_HTTP_TO_CODE = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    408: code_pb2.DEADLINE_EXCEEDED,
    409: code_pb2.ABORTED,
    412: code_pb2.FAILED_PRECONDITION,
    429: code_pb2.RESOURCE_EXHAUSTED,
    499: code_pb2.CANCELLED,
    501: code_pb2.UNIMPLEMENTED,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.DEADLINE_EXCEEDED,
}
_REQUEST_STATUSES = frozenset({400, 401, 403, 404, 409, 412, 422})
MAX_RESPONSE_BYTES = 16 << 20


def headers_for(call: Call, accept: str) -> dict[str, str]:
    """Request headers that carry the caller's context."""
    h = {
        "content-type": "application/json",
        "accept": accept,
        "x-request-id": call.request_id,
        "traceparent": call.traceparent,
        "x-tenant-id": call.tenant_id,
        "x-powerx-capability": call.capability_id,
        "x-powerx-attempt": str(call.attempt),
    }
    if call.idempotency_key:
        h["idempotency-key"] = call.idempotency_key
    if call.timeout_s is not None:
        h["x-powerx-timeout-ms"] = str(max(1, int(call.timeout_s * 1000)))
    for k, v in call.metadata.items():
        h[k.lower()] = v
    return h


def _body(call: Call) -> bytes:
    req = provider_pb2.InvokeRequest(
        capability_id=call.capability_id,
        version=call.version,
        arguments=call.arguments,
        context=call.provider_context(),
    )
    return json_format.MessageToJson(req, preserving_proto_field_name=True, indent=None).encode()


def _error(status: int, body: bytes, where: str) -> TransportError:
    code = _HTTP_TO_CODE.get(status, code_pb2.UNAVAILABLE if status >= 500 else code_pb2.UNKNOWN)
    message = f"HTTP {status}"
    try:
        parsed = json.loads(body[:65536])
        if isinstance(parsed, dict):
            err = parsed.get("error", parsed)
            if isinstance(err, dict):
                if isinstance(err.get("code"), int) and 0 < err["code"] <= 16:
                    code = err["code"]
                if isinstance(err.get("message"), str):
                    message = f"HTTP {status}: {err['message']}"
    except ValueError:
        pass
    return TransportError(code, f"{where}: {message}"[:1000], provider_error=status in _REQUEST_STATUSES)


def _transport_error(exc: httpx.HTTPError, where: str) -> TransportError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return TransportError(code_pb2.UNAVAILABLE, f"{where}: cannot connect", sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(code_pb2.DEADLINE_EXCEEDED, f"{where}: timed out")
    return TransportError(code_pb2.UNAVAILABLE, f"{where}: {type(exc).__name__}")


class HttpTransport:
    """Calls providers over HTTP/1.1 with one pooled client."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            timeout=httpx.Timeout(30.0, connect=5.0),
            follow_redirects=False,
        )

    def _timeout(self, call: Call) -> httpx.Timeout:
        return httpx.Timeout(call.timeout_s if call.timeout_s is not None else 30.0, connect=5.0)

    async def invoke(self, target: Target, call: Call) -> struct_pb2.Value:
        """POSTs the call and parses `{"result": …}`."""
        where = f"http {target.uri}"
        try:
            resp = await self._client.post(
                target.uri,
                content=_body(call),
                headers=headers_for(call, "application/json"),
                timeout=self._timeout(call),
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc, where) from None
        if len(resp.content) > MAX_RESPONSE_BYTES:
            raise TransportError(code_pb2.RESOURCE_EXHAUSTED, f"{where}: response too large")
        if not 200 <= resp.status_code < 300:
            raise _error(resp.status_code, resp.content, where)
        try:
            parsed = provider_pb2.InvokeResponse()
            json_format.Parse(resp.content, parsed, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError):
            raise TransportError(code_pb2.INTERNAL, f"{where}: the answer is not an InvokeResponse") from None
        result: struct_pb2.Value = parsed.result
        return result

    async def stream(self, target: Target, call: Call) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
        """POSTs the call and yields NDJSON lines or SSE events as chunks."""
        where = f"http {target.uri}"
        try:
            async with self._client.stream(
                "POST",
                target.uri,
                content=_body(call),
                headers=headers_for(call, "application/x-ndjson, text/event-stream"),
                timeout=self._timeout(call),
            ) as resp:
                if not 200 <= resp.status_code < 300:
                    raise _error(resp.status_code, await resp.aread(), where)
                sse = resp.headers.get("content-type", "").startswith("text/event-stream")
                async for raw_line in resp.aiter_lines():
                    line = raw_line
                    if sse:
                        if not line.startswith("data:"):
                            continue
                        line = line[5:].strip()
                    if not line.strip():
                        continue
                    yield _chunk(line, where)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, where) from None

    async def probe(self, target: Target, timeout_s: float) -> ProbeResult:
        """`GET {uri}/health`: 2xx serving, 429 degraded, anything else failing."""
        url = target.uri.rstrip("/") + "/health"
        try:
            resp = await self._client.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return ProbeResult(ok=False, detail=f"health check failed: {type(exc).__name__}")
        if 200 <= resp.status_code < 300:
            return ProbeResult(ok=True)
        if resp.status_code == 429:
            return ProbeResult(ok=True, degraded=True, detail="health check: HTTP 429")
        return ProbeResult(ok=False, detail=f"health check: HTTP {resp.status_code}")

    async def forget(self, endpoint_id: str) -> None:
        """Nothing per endpoint: connections are pooled by host."""

    async def close(self) -> None:
        """Closes the pool."""
        await self._client.aclose()


def _chunk(line: str, where: str) -> provider_pb2.InvokeStreamResponse:
    chunk = provider_pb2.InvokeStreamResponse()
    try:
        json_format.Parse(line, chunk, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError):
        raise TransportError(
            code_pb2.INTERNAL, f"{where}: a stream line is not an InvokeStreamResponse"
        ) from None
    if chunk.HasField("error"):
        raise chunk_error(chunk.error, where)
    return chunk
