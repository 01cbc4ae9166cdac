"""The one audit log: what gets recorded for a call, and the masked summary of its request.

The interceptor records every mutation and invocation of every service, and every call refused by
authentication or permissions; services add their own events (webhooks, breaker switches, callbacks)
through `Auditor.event`. Rows are written in batches off the call path (`router.audit.AuditLog`).

The summary keeps a request's identifying scalar fields only (ids, names, platform, mode…). Payloads
(`Struct`, bytes, bodies, nested messages) are left out, and any field whose name says it is secret
is masked, so a summary can never carry a credential or a user's data.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from powerx.audit.v1 import audit_service_pb2 as pb
from router.audit import AuditLog
from servers.auth.permissions import Kind
from servers.auth.store import AuditRow
from servers.common.context import CallContext

KIND_NUMBER = {
    Kind.MUTATION: pb.AUDIT_KIND_MUTATION,
    Kind.INVOCATION: pb.AUDIT_KIND_INVOCATION,
    Kind.READ: pb.AUDIT_KIND_READ,
}
SECRET_NAME = re.compile(
    r"secret|token|password|passwd|api_?key|credential|authorization|signature|private", re.I
)
MASK = "***"
MAX_VALUE_CHARS = 200
MAX_SUMMARY_CHARS = 2000
DENIED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_IDENTIFYING = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_ENUM,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
    }
)


def summarize(request: Message | None) -> dict[str, Any]:
    """The identifying fields of a request: set scalar fields, secrets masked, values cut short.

    Nested messages (one level) contribute their own scalar fields under `parent.child`; repeated
    fields and payload types (Struct, bytes, HttpBody) contribute only their size.
    """
    out: dict[str, Any] = {}
    if request is None:
        return out
    _fields(request, "", out, depth=0)
    return out


def _fields(msg: Message, prefix: str, out: dict[str, Any], depth: int) -> None:
    for fd, value in msg.ListFields():
        name = prefix + fd.name
        if SECRET_NAME.search(fd.name):
            out[name] = MASK
        elif fd.is_repeated:
            out[name] = f"<{len(value)} items>"
        elif fd.type == FieldDescriptor.TYPE_BYTES:
            out[name] = f"<{len(value)} bytes>"
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            full = fd.message_type.full_name if fd.message_type is not None else ""
            if full.startswith("google.protobuf.") or full == "google.api.HttpBody" or depth >= 1:
                if full in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
                    out[name] = _time_json(value)
                elif full == "google.api.HttpBody":
                    out[name] = f"<{len(value.data)} bytes>"
                else:
                    out[name] = "{…}"
            else:
                _fields(value, name + ".", out, depth + 1)
        elif fd.type in _IDENTIFYING:
            if fd.type == FieldDescriptor.TYPE_ENUM:
                enum_value = fd.enum_type.values_by_number.get(value) if fd.enum_type is not None else None
                out[name] = enum_value.name if enum_value is not None else value
            elif isinstance(value, str):
                out[name] = value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "…"
            else:
                out[name] = value
        else:  # floats and doubles: numbers a caller picked, harmless but not identifying
            out[name] = value


def _time_json(value: Message) -> str:
    # A request may carry any seconds/nanos (out of range, signs mismatched); validation rejects them
    # later, but the summary of the rejected call is still written and must not raise.
    try:
        return str(value.ToJsonString())  # type: ignore[attr-defined]
    except ValueError:
        return f"<invalid {value.seconds}s {value.nanos}ns>"  # type: ignore[attr-defined]


def summary_json(summary: Mapping[str, Any]) -> str:
    """The stored form of a summary, cut to a bounded size."""
    text = json.dumps(summary, default=str, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= MAX_SUMMARY_CHARS else text[: MAX_SUMMARY_CHARS - 1] + "…"


class Auditor:
    """Queues audit rows for the batch writer."""

    def __init__(self, log: AuditLog, *, clock_ms: Any = None) -> None:
        self.log = log
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def call(
        self,
        ctx: CallContext,
        *,
        method: str,
        permission: str,
        kind: Kind,
        outcome: str,
        reason: str,
        started_ms: int,
        duration_ms: float,
        request: Message | None,
    ) -> None:
        """Records one RPC."""
        self.log.record(
            AuditRow(
                created_ms=started_ms,
                tenant_id=ctx.tenant_id[:63],
                actor=ctx.principal[:255],
                permission=permission[:128],
                action=method[:160],
                kind=KIND_NUMBER[kind],
                outcome=outcome[:64],
                ok=outcome == "OK",
                reason=reason[:128],
                resource="",
                trace_id=ctx.trace_id[:64],
                request_id=ctx.request_id[:128],
                duration_ms=round(duration_ms, 3),
                summary=summary_json(summarize(request)),
            )
        )

    def event(
        self,
        *,
        tenant_id: str,
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        ok: bool,
        summary: Mapping[str, Any],
        trace_id: str = "",
        request_id: str = "",
        kind: Kind = Kind.MUTATION,
    ) -> None:
        """Records something a service did (a verified webhook, a breaker switch); `summary` is masked."""
        masked = {k: (MASK if SECRET_NAME.search(k) else v) for k, v in summary.items()}
        self.log.record(
            AuditRow(
                created_ms=self.clock_ms(),
                tenant_id=tenant_id[:63],
                actor=actor[:255],
                permission="",
                action=action[:160],
                kind=KIND_NUMBER[kind],
                outcome=outcome[:64],
                ok=ok,
                reason="",
                resource=resource[:255],
                trace_id=trace_id[:64],
                request_id=request_id[:128],
                duration_ms=0.0,
                summary=summary_json(masked),
            )
        )
