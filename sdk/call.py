"""What a handler learns about the call it serves, gathered the same way from gRPC and HTTP."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sdk._contract import provider_pb2

Transport = Literal["grpc", "http"]

# Header (HTTP) or metadata key (gRPC) names the mesh sends with every call.
TENANT_KEY = "x-tenant-id"
ACTOR_KEY = "x-actor-id"
REQUEST_ID_KEY = "x-request-id"
TRACEPARENT_KEY = "traceparent"
IDEMPOTENCY_KEY = "idempotency-key"
ATTEMPT_KEY = "x-powerx-attempt"
CAPABILITY_KEY = "x-powerx-capability"
TIMEOUT_MS_KEY = "x-powerx-timeout-ms"


@dataclass(frozen=True)
class CallInfo:
    """Who is calling a capability and how much time is left.

    Values come from the request's `CallContext` and fall back to the call's metadata (gRPC) or
    headers (HTTP) when the context leaves them empty.

    Attributes:
        capability_id: Capability being called.
        version: Version of the capability the router chose (empty when the caller named none).
        transport: How the call arrived: "grpc" or "http".
        tenant_id: Tenant of the caller.
        actor_id: Principal (user, agent or API key) that made the call.
        request_id: Request id of the call, for logs.
        trace_id: W3C trace id (32 hex digits) of the call, or empty.
        traceparent: W3C `traceparent` of the call, or empty.
        idempotency_key: The caller's idempotency key, or empty; the same key means the same call.
        attempt: Attempt number, starting at 1; greater than 1 on a retry or failover.
        metadata: Every invocation metadata entry (gRPC) or header (HTTP), keys in lower case.
        deadline: `time.monotonic()` value at which the caller gives up, or None without a deadline.
    """

    capability_id: str
    version: str = ""
    transport: Transport = "grpc"
    tenant_id: str = ""
    actor_id: str = ""
    request_id: str = ""
    trace_id: str = ""
    traceparent: str = ""
    idempotency_key: str = ""
    attempt: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict)
    deadline: float | None = None

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (at least 0), or None when there is none."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


def _trace_id(traceparent: str) -> str:
    """The trace id of a W3C traceparent (`version-traceid-spanid-flags`), or empty."""
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return ""


def _attempt(value: str) -> int:
    try:
        return max(1, int(value))
    except ValueError:
        return 1


def build_call_info(
    *,
    capability_id: str,
    version: str,
    context: provider_pb2.CallContext,
    metadata: Mapping[str, str],
    transport: Transport,
    time_remaining_s: float | None,
) -> CallInfo:
    """Merges a request's CallContext with its metadata or headers into a CallInfo.

    Args:
        capability_id: Capability named by the request.
        version: Version named by the request.
        context: The request's CallContext (possibly empty).
        metadata: Invocation metadata or headers, keys in lower case.
        transport: How the call arrived.
        time_remaining_s: Seconds left before the caller's deadline, or None.

    Returns:
        The call as a handler sees it.
    """
    traceparent = metadata.get(TRACEPARENT_KEY, "")
    deadline = None
    if time_remaining_s is not None and math.isfinite(time_remaining_s):
        deadline = time.monotonic() + time_remaining_s
    return CallInfo(
        capability_id=capability_id,
        version=version,
        transport=transport,
        tenant_id=context.tenant_id or metadata.get(TENANT_KEY, ""),
        actor_id=context.actor_id or metadata.get(ACTOR_KEY, ""),
        request_id=context.request_id or metadata.get(REQUEST_ID_KEY, ""),
        trace_id=context.trace_id or _trace_id(traceparent),
        traceparent=traceparent,
        idempotency_key=context.idempotency_key or metadata.get(IDEMPOTENCY_KEY, ""),
        attempt=context.attempt if context.attempt > 0 else _attempt(metadata.get(ATTEMPT_KEY, "1")),
        metadata=dict(metadata),
        deadline=deadline,
    )


def timeout_from_header(value: str | None) -> float | None:
    """Seconds of an `x-powerx-timeout-ms` header, or None when it is absent or not a number."""
    if not value:
        return None
    try:
        ms = float(value)
    except ValueError:
        return None
    if not math.isfinite(ms):
        return None
    return max(0.0, ms / 1000.0)
