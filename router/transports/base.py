"""What every transport (grpc, http, mcp, agent) offers the router, and the one error type they raise.

A transport turns a routed call into a request on one endpoint and the answer back into protobuf
values. It never chooses endpoints, retries or records outcomes: the router does that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from powerx.provider.v1 import provider_service_pb2 as provider_pb2

if TYPE_CHECKING:
    from router.policy import RouteEndpoint

# Codes worth trying on another endpoint: the endpoint (not the request) is the likely problem.
RETRYABLE_CODES = frozenset(
    {
        code_pb2.UNAVAILABLE,
        code_pb2.RESOURCE_EXHAUSTED,
        code_pb2.DEADLINE_EXCEEDED,
        code_pb2.ABORTED,
        code_pb2.INTERNAL,
        code_pb2.UNKNOWN,
    }
)

# Codes a provider sends about the request itself: another endpoint would answer the same.
REQUEST_CODES = frozenset(
    {
        code_pb2.INVALID_ARGUMENT,
        code_pb2.NOT_FOUND,
        code_pb2.ALREADY_EXISTS,
        code_pb2.PERMISSION_DENIED,
        code_pb2.UNAUTHENTICATED,
        code_pb2.FAILED_PRECONDITION,
        code_pb2.OUT_OF_RANGE,
        code_pb2.UNIMPLEMENTED,
        code_pb2.CANCELLED,
    }
)


@dataclass(frozen=True)
class Target:
    """The endpoint a call goes to, as the transport needs it.

    Attributes:
        endpoint_id: Stable id of the endpoint.
        uri: Address as announced (`grpc://h:p`, `http(s)://…`, `stdio:<command>`, `agent://…`).
        session_id: Session the endpoint belongs to (MCP, agent), if any.
        metadata: The endpoint's announced metadata (for example static headers).
        labels: Labels of the capability being called (for example `mcp.tool`, the original tool name).
        provider_id: Provider offering the endpoint.
        tenant_id: Tenant that owns the provider.
    """

    endpoint_id: str
    uri: str
    session_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    provider_id: str = ""
    tenant_id: str = ""

    @classmethod
    def of(cls, e: RouteEndpoint, labels: Mapping[str, str] | None = None) -> Target:
        """The target of a route-table endpoint, with the labels of the capability being called."""
        return cls(
            endpoint_id=e.endpoint_id,
            uri=e.uri,
            session_id=e.session_id,
            metadata=e.metadata,
            labels=labels or {},
            provider_id=e.provider_id,
            tenant_id=e.tenant_id,
        )


@dataclass(frozen=True)
class Call:
    """One attempt of a routed call.

    Attributes:
        capability_id: Capability being called.
        version: Version of the capability the router chose.
        arguments: The caller's arguments.
        tenant_id: Tenant of the caller.
        actor_id: Principal making the call.
        request_id: `x-request-id` to propagate.
        traceparent: W3C `traceparent` to propagate (the router's span as parent).
        idempotency_key: The caller's idempotency key, or empty.
        attempt: 1 for the first attempt, 2 for the first retry, …
        timeout_s: Seconds left for this attempt (the caller's deadline), or None for no deadline.
        metadata: Extra key/value pairs to propagate (for example the agent call depth).
    """

    capability_id: str
    version: str
    arguments: struct_pb2.Struct
    tenant_id: str
    actor_id: str
    request_id: str
    traceparent: str
    idempotency_key: str = ""
    attempt: int = 1
    timeout_s: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def provider_context(self) -> provider_pb2.CallContext:
        """The call context as the provider contract carries it."""
        return provider_pb2.CallContext(
            tenant_id=self.tenant_id,
            actor_id=self.actor_id,
            request_id=self.request_id,
            trace_id=self.traceparent.split("-")[1] if self.traceparent.count("-") == 3 else "",
            idempotency_key=self.idempotency_key,
            attempt=self.attempt,
        )


class TransportError(Exception):
    """A failed attempt.

    Attributes:
        code: google.rpc.Code of the failure (the provider's own code when it answered with one).
        message: What went wrong, safe to show the caller (no secrets, no payloads).
        sent: False only when the request certainly never reached the provider (connection refused,
            unknown host): such a failure can be retried even for a non-idempotent capability.
        provider_error: True when the provider itself answered with an error (as opposed to the
            transport failing to reach it); a provider error with a non-retryable code is the caller's
            problem and is passed through as is.
    """

    def __init__(self, code: int, message: str, *, sent: bool = True, provider_error: bool = False) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.sent = sent
        self.provider_error = provider_error

    @property
    def retryable(self) -> bool:
        """Whether another endpoint might succeed where this one failed."""
        return self.code in RETRYABLE_CODES

    def __repr__(self) -> str:
        return f"TransportError({code_pb2.Code.Name(self.code)}, {self.message!r}, sent={self.sent})"


def chunk_error(error: status_pb2.Status, where: str) -> TransportError:
    """The failure a provider reported inside a stream (the `error` chunk of InvokeStreamResponse)."""
    return TransportError(
        error.code or code_pb2.UNKNOWN,
        f"{where}: {error.message}"[:1000],
        provider_error=error.code in REQUEST_CODES,
    )


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one active health probe.

    Attributes:
        ok: The endpoint answered and is serving.
        detail: Why it is not (empty when ok).
        degraded: The endpoint answered but asked to be used less (HTTP 429, NOT_SERVING on one service).
    """

    ok: bool
    detail: str = ""
    degraded: bool = False


class Transport(Protocol):
    """One way of reaching endpoints. Implementations cache connections per endpoint."""

    async def invoke(self, target: Target, call: Call) -> struct_pb2.Value:
        """Calls the capability once and returns its result; raises TransportError on failure."""
        ...

    def stream(self, target: Target, call: Call) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
        """Calls a streaming capability; yields chunks (data, text or raw), raises TransportError.

        A chunk carrying `error` is never yielded: the transport raises it as a TransportError.
        """
        ...

    async def probe(self, target: Target, timeout_s: float) -> ProbeResult:
        """Asks the endpoint whether it is serving (the health monitor's active check)."""
        ...

    async def forget(self, endpoint_id: str) -> None:
        """Drops what is cached for an endpoint that left the registry."""
        ...

    async def close(self) -> None:
        """Releases every connection."""
        ...
