"""Storage of API keys and the audit log (SQLAlchemy Core, SQLite and PostgreSQL).

Keys are stored by id with the SHA-256 hash of the raw key, never the key. Every read of tenant data
names the tenant; only an operator (tenant `*`) reads the audit log across tenants, and then says so
explicitly (`tenant_id=None`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from servers.common.validate import Page

md = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")

api_keys_t = sa.Table(
    "api_keys",
    md,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("name", sa.String(128)),
    sa.Column("key_hash", sa.String(64)),
    sa.Column("scopes", sa.Text),
    sa.Column("status", sa.SmallInteger),
    sa.Column("status_reason", sa.String(512)),
    sa.Column("created_by", sa.String(255)),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
    sa.Column("expire_ms", sa.BigInteger),
)

audit_log_t = sa.Table(
    "audit_log",
    md,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("actor", sa.String(255)),
    sa.Column("permission", sa.String(128)),
    sa.Column("action", sa.String(160)),
    sa.Column("kind", sa.SmallInteger),
    sa.Column("outcome", sa.String(64)),
    sa.Column("ok", sa.Boolean),
    sa.Column("reason", sa.String(128)),
    sa.Column("resource", sa.String(255)),
    sa.Column("trace_id", sa.String(64)),
    sa.Column("request_id", sa.String(128)),
    sa.Column("duration_ms", sa.Float),
    sa.Column("summary", sa.Text),
)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """An API key as stored (its hash, never the key)."""

    key_id: str
    tenant_id: str
    name: str
    key_hash: str
    scopes: tuple[str, ...]
    status: int
    status_reason: str
    created_by: str
    created_ms: int
    updated_ms: int
    expire_ms: int

    def values(self) -> dict[str, object]:
        """Column values."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["scopes"] = json.dumps(list(self.scopes))
        return out


def _key(row: sa.Row[tuple[object, ...]]) -> KeyRow:
    m = dict(row._mapping)
    m["scopes"] = tuple(json.loads(str(m["scopes"])))
    return KeyRow(**m)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """A row of `audit_log` (the writer batches them)."""

    created_ms: int
    tenant_id: str
    actor: str
    permission: str
    action: str
    kind: int
    outcome: str
    ok: bool
    reason: str
    resource: str
    trace_id: str
    request_id: str
    duration_ms: float
    summary: str


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Filters of an audit query; empty values match everything."""

    actor: str = ""
    action_prefix: str = ""
    outcome: str = ""
    kind: int = 0
    trace_id: str = ""
    start_ms: int = 0
    end_ms: int = 0

    def as_list(self) -> list[object]:
        """For binding page tokens to the filters."""
        return [getattr(self, f.name) for f in fields(self)]


class AuthStore:
    """API keys and the audit log."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # ---- API keys -----------------------------------------------------------------------------------

    async def insert_key(self, row: KeyRow) -> None:
        """Stores a new key."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(api_keys_t).values(**row.values()))

    async def key(self, key_id: str) -> KeyRow | None:
        """A key by id, whatever its tenant (authentication looks keys up before a tenant is known)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys_t).where(api_keys_t.c.key_id == key_id))).first()
        return _key(row) if row is not None else None

    async def tenant_key(self, tenant_id: str, key_id: str) -> KeyRow | None:
        """A key of a tenant."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(api_keys_t).where(
                        api_keys_t.c.key_id == key_id, api_keys_t.c.tenant_id == tenant_id
                    )
                )
            ).first()
        return _key(row) if row is not None else None

    async def list_keys(self, tenant_id: str, page: Page, status: int) -> list[KeyRow]:
        """A tenant's keys, newest first."""
        q = sa.select(api_keys_t).where(api_keys_t.c.tenant_id == tenant_id)
        if status:
            q = q.where(api_keys_t.c.status == status)
        if page.after:
            created, key_id = int(page.after[0]), str(page.after[1])
            q = q.where(
                sa.or_(
                    api_keys_t.c.created_ms < created,
                    sa.and_(api_keys_t.c.created_ms == created, api_keys_t.c.key_id < key_id),
                )
            )
        q = q.order_by(api_keys_t.c.created_ms.desc(), api_keys_t.c.key_id.desc()).limit(page.size + 1)
        async with self.engine.connect() as conn:
            return [_key(r) for r in (await conn.execute(q)).all()]

    async def set_status(
        self, tenant_id: str, key_id: str, status: int, reason: str, now_ms: int, *, unless: int
    ) -> bool:
        """Changes a tenant's key's status unless it is `unless` (revoked); whether a row changed."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(api_keys_t)
                .where(
                    api_keys_t.c.key_id == key_id,
                    api_keys_t.c.tenant_id == tenant_id,
                    api_keys_t.c.status != unless,
                )
                .values(status=status, status_reason=reason, updated_ms=now_ms)
            )
        return bool(result.rowcount)

    async def count_active_keys(self) -> int:
        """Active keys of every tenant (to tell whether the mesh still needs a first key)."""
        async with self.engine.connect() as conn:
            n = await conn.scalar(
                sa.select(sa.func.count()).select_from(api_keys_t).where(api_keys_t.c.status == 1)
            )
        return int(n or 0)

    # ---- audit log ----------------------------------------------------------------------------------

    def _audit_where(self, tenant_id: str | None, f: AuditFilter) -> list[sa.ColumnElement[bool]]:
        c = audit_log_t.c
        where: list[sa.ColumnElement[bool]] = []
        if tenant_id is not None:
            where.append(c.tenant_id == tenant_id)
        if f.actor:
            where.append(c.actor == f.actor)
        if f.action_prefix:
            escaped = f.action_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(c.action.like(escaped + "%", escape="\\"))
        if f.outcome:
            where.append(c.outcome == f.outcome)
        if f.kind:
            where.append(c.kind == f.kind)
        if f.trace_id:
            where.append(c.trace_id == f.trace_id)
        if f.start_ms:
            where.append(c.created_ms >= f.start_ms)
        if f.end_ms:
            where.append(c.created_ms < f.end_ms)
        return where

    async def audit_records(
        self, tenant_id: str | None, f: AuditFilter, page: Page
    ) -> list[dict[str, object]]:
        """Audit rows, newest first; `tenant_id=None` reads every tenant (operators only)."""
        c = audit_log_t.c
        q = sa.select(audit_log_t).where(*self._audit_where(tenant_id, f))
        if page.after:
            q = q.where(c.id < int(page.after[0]))
        q = q.order_by(c.id.desc()).limit(page.size + 1)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(q)).all()]

    async def audit_stats(self, tenant_id: str | None, start_ms: int, end_ms: int) -> list[dict[str, object]]:
        """Per tenant and action: count, failures, refusals, actors, mean and max duration."""
        c = audit_log_t.c
        denied = sa.case((c.outcome.in_(("UNAUTHENTICATED", "PERMISSION_DENIED")), 1), else_=0)
        q = (
            sa.select(
                c.tenant_id,
                c.action,
                sa.func.count().label("total"),
                sa.func.sum(sa.case((c.ok.is_(False), 1), else_=0)).label("failed"),
                sa.func.sum(denied).label("denied"),
                sa.func.avg(c.duration_ms).label("mean_ms"),
                sa.func.max(c.duration_ms).label("max_ms"),
            )
            .where(*self._audit_where(tenant_id, AuditFilter(start_ms=start_ms, end_ms=end_ms)))
            .group_by(c.tenant_id, c.action)
        )
        actors = (
            sa.select(c.tenant_id, sa.func.count(sa.distinct(c.actor)).label("actors"))
            .where(*self._audit_where(tenant_id, AuditFilter(start_ms=start_ms, end_ms=end_ms)))
            .group_by(c.tenant_id)
        )
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in (await conn.execute(q)).all()]
            counts = {str(r.tenant_id): int(r.actors) for r in (await conn.execute(actors)).all()}
        for r in rows:
            r["actors"] = counts.get(str(r["tenant_id"]), 0)
        return rows

    async def prune_audit(self, before_ms: int) -> int:
        """Deletes audit rows older than `before_ms` (retention); how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(audit_log_t).where(audit_log_t.c.created_ms < before_ms))
        return int(result.rowcount or 0)
