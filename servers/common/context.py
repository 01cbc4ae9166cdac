"""The transport-free call context every service method receives."""

from __future__ import annotations

import contextvars
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

# W3C trace context: version-traceid-parentid-flags, lower-case hex, all-zero ids invalid.
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

TENANT_HEADER = "x-tenant-id"
REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"
PRINCIPAL_HEADER = "x-principal"
# Until authentication lands (production posture work), the caller's scopes arrive in this header,
# space- or comma-separated, and are trusted like the principal.
SCOPES_HEADER = "x-scopes"
AUTHORIZATION_HEADER = "authorization"
# Agent-to-agent calls: the run the call is part of, and the calling agent's signature (sdk.signing).
PARENT_RUN_HEADER = "x-powerx-parent-run"
AGENT_SIGNATURE_HEADER = "x-powerx-agent-signature"
_SCOPE = re.compile(r"^[A-Za-z0-9._:*-]{1,128}$")


@dataclass(frozen=True)
class CallContext:
    """Who is calling, on behalf of which tenant, and how the call is traced.

    Attributes:
        tenant_id: Tenant of the call; every read and write is scoped to it. Empty when the caller
            sent none (services that need one raise `TenantRequired`).
        principal: Who made the call (user, agent or API key id); `anonymous` until authentication.
        scopes: Permissions the principal holds.
        request_id: `x-request-id` of the call, generated when the caller sent none.
        trace_id: W3C trace id (32 hex digits).
        span_id: Span id to use as the parent of outbound calls (16 hex digits).
        deadline: Absolute `time.monotonic()` deadline of the call, or None.
        bearer: The bearer credential of `authorization: Bearer …` (an agent token), or empty.
        parent_run_id: `x-powerx-parent-run`: the run an agent's call is part of, or empty.
        agent_signature: `x-powerx-agent-signature` of an agent's call, or empty.
    """

    tenant_id: str = ""
    principal: str = "anonymous"
    scopes: frozenset[str] = field(default_factory=frozenset)
    request_id: str = ""
    trace_id: str = ""
    span_id: str = ""
    deadline: float | None = None
    bearer: str = field(default="", repr=False)
    parent_run_id: str = ""
    agent_signature: str = field(default="", repr=False)

    @property
    def traceparent(self) -> str:
        """The `traceparent` header to send on outbound calls."""
        return f"00-{self.trace_id}-{self.span_id}-01"

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or None when the call has none."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def outbound_metadata(self) -> list[tuple[str, str]]:
        """Metadata that propagates this call to the next hop."""
        md = [(REQUEST_ID_HEADER, self.request_id), (TRACEPARENT_HEADER, self.traceparent)]
        if self.tenant_id:
            md.append((TENANT_HEADER, self.tenant_id))
        return md


_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("powerx_call_context")


def current() -> CallContext:
    """The context of the call being served (an empty context outside a call)."""
    return _current.get(CallContext())


def bind(ctx: CallContext) -> contextvars.Token[CallContext]:
    """Makes `ctx` the current context (the interceptor does this for every call)."""
    return _current.set(ctx)


def reset(token: contextvars.Token[CallContext]) -> None:
    """Undoes a `bind`."""
    _current.reset(token)


def from_metadata(metadata: Iterable[tuple[str, str | bytes]], time_remaining: float | None) -> CallContext:
    """Builds a call context from gRPC invocation metadata.

    Invalid values are not errors here: a malformed `traceparent` or request id is replaced by a fresh
    one (as the W3C spec asks), and the tenant is validated by the services that need it.
    """
    md: dict[str, str] = {}
    for key, value in metadata:
        if isinstance(value, str):
            md.setdefault(key.lower(), value)
    request_id = md.get(REQUEST_ID_HEADER, "")
    if not _REQUEST_ID.match(request_id):
        request_id = str(uuid.uuid4())
    trace_id, span_id = "", ""
    match = _TRACEPARENT.match(md.get(TRACEPARENT_HEADER, ""))
    if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        trace_id = match.group(1)
    if not trace_id:
        trace_id = secrets.token_hex(16)
    span_id = secrets.token_hex(8)
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    scopes = frozenset(s for s in md.get(SCOPES_HEADER, "").replace(",", " ").split()[:64] if _SCOPE.match(s))
    scheme, _, credential = md.get(AUTHORIZATION_HEADER, "").strip().partition(" ")
    return CallContext(
        tenant_id=md.get(TENANT_HEADER, "").strip(),
        principal=md.get(PRINCIPAL_HEADER, "anonymous").strip() or "anonymous",
        scopes=scopes,
        request_id=request_id,
        trace_id=trace_id,
        span_id=span_id,
        deadline=deadline,
        bearer=credential.strip()[:2048] if scheme.lower() == "bearer" else "",
        parent_run_id=md.get(PARENT_RUN_HEADER, "").strip()[:64],
        agent_signature=md.get(AGENT_SIGNATURE_HEADER, "").strip()[:512],
    )


def valid_tenant(tenant_id: str) -> bool:
    """Whether a tenant id is well formed (1 to 63 characters: letters, digits, `.`, `_`, `-`)."""
    return bool(_TENANT.match(tenant_id))
