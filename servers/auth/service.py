"""API key management and audit queries (powerx.auth.v1.AuthService, powerx.audit.v1.AuditService)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from powerx.audit.v1 import audit_service_pb2 as apb
from powerx.auth.v1 import auth_service_pb2 as pb
from servers.auth import keys
from servers.auth.permissions import covers
from servers.auth.store import AuditFilter, AuthStore, KeyRow
from servers.common.bus import EventBus
from servers.common.context import CallContext, valid_tenant
from servers.common.errors import FailedPrecondition, NotFound, PermissionDenied, TenantRequired
from servers.common.times import timestamp_ms
from servers.common.validate import Violations, next_page_token, page_request

log = logging.getLogger("powerx.auth")

_SCOPE = re.compile(r"^(\*|[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*(\.\*)?)$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_SCOPES = 64
STATUSES = {
    pb.API_KEY_STATUS_ACTIVE: keys.ACTIVE,
    pb.API_KEY_STATUS_DISABLED: keys.DISABLED,
    pb.API_KEY_STATUS_REVOKED: keys.REVOKED,
}
DEFAULT_STATS_WINDOW_MS = 24 * 3600 * 1000


def api_key_message(row: KeyRow) -> pb.ApiKey:
    """The API message of a stored key (never its hash)."""
    msg = pb.ApiKey(
        key_id=row.key_id,
        tenant_id=row.tenant_id,
        name=row.name,
        scopes=list(row.scopes),
        status=row.status,  # type: ignore[arg-type]
        created_by=row.created_by,
        create_time=timestamp_ms(row.created_ms),
        update_time=timestamp_ms(row.updated_ms),
        status_reason=row.status_reason,
    )
    if row.expire_ms:
        msg.expire_time.CopyFrom(timestamp_ms(row.expire_ms))
    return msg


class AuthService:
    """API keys: create (shown once), list, get, change status; and who the caller is."""

    def __init__(
        self,
        store: AuthStore,
        cache: keys.KeyCache,
        bus: EventBus,
        *,
        auth_required: bool,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.cache = cache
        self.bus = bus
        self.auth_required = auth_required
        self.clock_ms = clock_ms

    async def caller_key(self, ctx: CallContext) -> KeyRow | None:
        """The API key the call was made with, if any (from the cache its authentication just filled)."""
        if not ctx.principal.startswith("apikey:"):
            return None
        return await self.cache.row(ctx.principal.removeprefix("apikey:"))

    async def _operator(self, ctx: CallContext) -> bool:
        key = await self.caller_key(ctx)
        return key is not None and key.tenant_id == keys.ALL_TENANTS

    def _tenant(self, ctx: CallContext) -> str:
        if not ctx.tenant_id or not valid_tenant(ctx.tenant_id):
            raise TenantRequired(
                "the call carries no tenant: an operator key names one in x-tenant-id",
                [("metadata.x-tenant-id", "is required")],
            )
        return ctx.tenant_id

    async def create_key(
        self, req: pb.CreateApiKeyRequest, ctx: CallContext, *, bootstrap: bool = False
    ) -> pb.CreateApiKeyResponse:
        """Creates a key; the caller may only hand out scopes it holds, for its own tenant."""
        v = Violations()
        tenant = req.tenant_id or ctx.tenant_id
        v.check(bool(tenant), "tenant_id", "is required (or send x-tenant-id)")
        if tenant and tenant != keys.ALL_TENANTS:
            v.check(valid_tenant(tenant), "tenant_id", "must be 1-63 letters, digits, '.', '_', '-', or '*'")
        v.text(req.name, "name", max_len=128, required=True)
        v.check(0 < len(req.scopes) <= MAX_SCOPES, "scopes", f"must list 1-{MAX_SCOPES} scopes")
        for i, scope in enumerate(req.scopes):
            v.check(
                len(scope) <= 128 and bool(_SCOPE.match(scope)),
                f"scopes[{i}]",
                "must be `*`, a permission such as agent.connector.manage, or a wildcard such as agent.*",
            )
        now = self.clock_ms()
        expire_ms = 0
        if req.HasField("expire_time"):
            known = len(v.items)
            expire_ms = v.timestamp_ms(req.expire_time, "expire_time")
            if len(v.items) == known:
                v.check(expire_ms > now, "expire_time", "must be in the future")
        v.raise_if_any("invalid API key")
        if not bootstrap and self.auth_required:
            operator = await self._operator(ctx)
            if tenant != ctx.tenant_id and not operator:
                raise PermissionDenied(
                    "a key can only create keys for its own tenant", reason="TENANT_MISMATCH"
                )
            if tenant == keys.ALL_TENANTS and not operator:
                raise PermissionDenied("only an operator key can create operator keys", reason="NOT_OPERATOR")
            for scope in req.scopes:
                if not covers(ctx.scopes, scope):
                    raise PermissionDenied(
                        f"the caller does not hold the scope {scope} it tries to grant",
                        reason="SCOPE_NOT_HELD",
                        metadata={"scope": scope},
                    )
        key_id, raw = keys.new_raw_key()
        row = KeyRow(
            key_id=key_id,
            tenant_id=tenant,
            name=req.name,
            key_hash=keys.key_hash(raw),
            scopes=tuple(dict.fromkeys(req.scopes)),
            status=keys.ACTIVE,
            status_reason="",
            created_by=ctx.principal[:255],
            created_ms=now,
            updated_ms=now,
            expire_ms=expire_ms,
        )
        await self.store.insert_key(row)
        log.info("api key created", extra={"key_id": key_id, "tenant": tenant, "actor": ctx.principal})
        return pb.CreateApiKeyResponse(api_key=api_key_message(row), secret=raw)

    async def list_keys(self, req: pb.ListApiKeysRequest, ctx: CallContext) -> pb.ListApiKeysResponse:
        """The keys of the caller's tenant, newest first."""
        tenant = self._tenant(ctx)
        v = Violations()
        v.check(req.status in (0, *STATUSES), "status", "is not a known status")
        v.raise_if_any("invalid request")
        filters = [tenant, int(req.status)]
        page = page_request(req.page_size, req.page_token, filters)
        rows = await self.store.list_keys(tenant, page, int(req.status))
        out = pb.ListApiKeysResponse(api_keys=[api_key_message(r) for r in rows[: page.size]])
        if len(rows) > page.size:
            last = rows[page.size - 1]
            out.next_page_token = next_page_token([last.created_ms, last.key_id], filters)
        return out

    async def _key(self, ctx: CallContext, key_id: str) -> KeyRow:
        tenant = self._tenant(ctx)
        v = Violations()
        v.pattern(key_id, "key_id", _KEY_ID, "16 hex digits")
        v.raise_if_any("invalid request")
        row = await self.store.tenant_key(tenant, key_id)
        if row is None:
            raise NotFound(f"API key {key_id} does not exist", reason="API_KEY_NOT_FOUND")
        return row

    async def get_key(self, req: pb.GetApiKeyRequest, ctx: CallContext) -> pb.GetApiKeyResponse:
        """One key of the caller's tenant."""
        return pb.GetApiKeyResponse(api_key=api_key_message(await self._key(ctx, req.key_id)))

    async def set_status(
        self, req: pb.SetApiKeyStatusRequest, ctx: CallContext
    ) -> pb.SetApiKeyStatusResponse:
        """Activates, disables or revokes a key; every process forgets its cached copy."""
        v = Violations()
        v.check(req.status in STATUSES, "status", "must be ACTIVE, DISABLED or REVOKED")
        v.text(req.reason, "reason", max_len=512)
        v.raise_if_any("invalid request")
        row = await self._key(ctx, req.key_id)
        if row.status == keys.REVOKED:
            raise FailedPrecondition(f"API key {row.key_id} is revoked for good", reason="API_KEY_REVOKED")
        if not await self.store.set_status(
            row.tenant_id, row.key_id, STATUSES[req.status], req.reason, self.clock_ms(), unless=keys.REVOKED
        ):
            raise FailedPrecondition(f"API key {row.key_id} is revoked for good", reason="API_KEY_REVOKED")
        self.cache.forget(row.key_id)
        await self.bus.publish(keys.BUS_TOPIC, row.key_id.encode())
        log.info(
            "api key status changed",
            extra={"key_id": row.key_id, "status": pb.ApiKeyStatus.Name(req.status), "actor": ctx.principal},
        )
        updated = await self.store.tenant_key(row.tenant_id, row.key_id)
        assert updated is not None
        return pb.SetApiKeyStatusResponse(api_key=api_key_message(updated))

    async def whoami(self, ctx: CallContext) -> pb.WhoAmIResponse:
        """The caller as authenticated."""
        return pb.WhoAmIResponse(
            principal=ctx.principal,
            tenant_id=ctx.tenant_id,
            scopes=sorted(ctx.scopes),
            auth_required=self.auth_required,
        )

    async def follow(self) -> None:
        """Forgets keys whose status another process changed (runs until cancelled)."""
        async with self.bus.subscribe(keys.BUS_TOPIC) as sub:
            async for payload in sub:
                self.cache.forget(payload.decode(errors="replace"))


class AuditService:
    """Reads the audit log: filtered records and per-tenant stats."""

    def __init__(
        self, store: AuthStore, auth: AuthService, clock_ms: Callable[[], int] | None = None
    ) -> None:
        self.store = store
        self.auth = auth
        self.clock_ms = clock_ms or auth.clock_ms

    async def _scope(self, ctx: CallContext) -> str | None:
        """The tenant to read, or None for every tenant (an operator key without x-tenant-id)."""
        if not ctx.tenant_id and await self.auth._operator(ctx):
            return None
        return self.auth._tenant(ctx)

    async def list_records(
        self, req: apb.ListAuditRecordsRequest, ctx: CallContext
    ) -> apb.ListAuditRecordsResponse:
        """Audit records, newest first."""
        tenant = await self._scope(ctx)
        v = Violations()
        v.text(req.actor, "actor", max_len=255)
        v.text(req.action, "action", max_len=160)
        v.text(req.outcome, "outcome", max_len=64)
        v.text(req.trace_id, "trace_id", max_len=64)
        v.check(req.kind in apb.AuditKind.values(), "kind", "is not a known kind")
        start = v.timestamp_ms(req.start_time, "start_time") if req.HasField("start_time") else 0
        end = v.timestamp_ms(req.end_time, "end_time") if req.HasField("end_time") else 0
        v.check(not (start and end) or start < end, "end_time", "must be after start_time")
        v.raise_if_any("invalid request")
        f = AuditFilter(
            actor=req.actor,
            action_prefix=req.action,
            outcome=req.outcome,
            kind=int(req.kind),
            trace_id=req.trace_id,
            start_ms=start,
            end_ms=end,
        )
        filters = [tenant, *f.as_list()]
        page = page_request(req.page_size, req.page_token, filters)
        rows = await self.store.audit_records(tenant, f, page)
        out = apb.ListAuditRecordsResponse(records=[_record(r) for r in rows[: page.size]])
        if len(rows) > page.size:
            out.next_page_token = next_page_token([rows[page.size - 1]["id"]], filters)
        return out

    async def stats(self, req: apb.GetAuditStatsRequest, ctx: CallContext) -> apb.GetAuditStatsResponse:
        """Per-tenant figures over a window (default: the last 24 hours)."""
        tenant = await self._scope(ctx)
        v = Violations()
        end = v.timestamp_ms(req.end_time, "end_time") if req.HasField("end_time") else self.clock_ms()
        start = (
            v.timestamp_ms(req.start_time, "start_time")
            if req.HasField("start_time")
            else end - DEFAULT_STATS_WINDOW_MS
        )
        v.check(bool(v.items) or start < end, "start_time", "must be before end_time")
        v.raise_if_any("invalid request")
        rows = await self.store.audit_stats(tenant, start, end)
        tenants: dict[str, apb.TenantStats] = {}
        for r in rows:
            t = tenants.setdefault(
                str(r["tenant_id"]),
                apb.TenantStats(tenant_id=str(r["tenant_id"]), actors=int(r["actors"])),  # type: ignore[call-overload]
            )
            total, failed = int(r["total"]), int(r["failed"] or 0)  # type: ignore[call-overload]
            t.total += total
            t.failed += failed
            t.denied += int(r["denied"] or 0)  # type: ignore[call-overload]
            t.actions.append(
                apb.ActionStats(
                    action=str(r["action"]),
                    total=total,
                    failed=failed,
                    mean_duration_ms=float(r["mean_ms"] or 0.0),  # type: ignore[arg-type]
                    max_duration_ms=float(r["max_ms"] or 0.0),  # type: ignore[arg-type]
                )
            )
        out = apb.GetAuditStatsResponse(start_time=timestamp_ms(start), end_time=timestamp_ms(end))
        for tenant_id in sorted(tenants):
            t = tenants[tenant_id]
            ordered = sorted(t.actions, key=lambda a: (-a.total, a.action))[:100]
            del t.actions[:]
            t.actions.extend(ordered)
            out.tenants.append(t)
        return out


def _record(r: dict[str, object]) -> apb.AuditRecord:
    return apb.AuditRecord(
        record_id=str(r["id"]),
        create_time=timestamp_ms(int(r["created_ms"])),  # type: ignore[call-overload]
        tenant_id=str(r["tenant_id"] or ""),
        actor=str(r["actor"] or ""),
        permission=str(r["permission"] or ""),
        action=str(r["action"] or ""),
        kind=int(r["kind"] or 0),  # type: ignore[call-overload]
        outcome=str(r["outcome"] or ""),
        ok=bool(r["ok"]),
        reason=str(r["reason"] or ""),
        resource=str(r["resource"] or ""),
        trace_id=str(r["trace_id"] or ""),
        request_id=str(r["request_id"] or ""),
        duration_ms=float(r["duration_ms"] or 0.0),  # type: ignore[arg-type]
        summary=str(r["summary"] or ""),
    )
