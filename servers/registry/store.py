"""Registry storage: one SQLAlchemy Core implementation for SQLite and PostgreSQL.

Rows keep the columns queries filter and order on, plus the resource's protobuf bytes (`spec`) for the
rest. Writers serialize on the single `registry_state` row (SELECT … FOR UPDATE on PostgreSQL, an
asyncio lock plus SQLite's single writer otherwise), so revisions are handed out and committed in order:
a watcher that read up to revision N never sees a smaller revision appear later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from servers.common.validate import Page

md = sa.MetaData()
TENANT = sa.String(63)
ID = sa.String(255)

state_t = sa.Table(
    "registry_state", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("revision", sa.BigInteger)
)
providers_t = sa.Table(
    "registry_providers",
    md,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("provider_id", ID, primary_key=True),
    sa.Column("state", sa.SmallInteger),
    sa.Column("manifest_digest", sa.String(64)),
    sa.Column("lease_ttl_ms", sa.BigInteger),
    sa.Column("lease_expires_ms", sa.BigInteger),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
    sa.Column("revision", sa.BigInteger),
)
caps_t = sa.Table(
    "registry_capabilities",
    md,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("provider_id", ID, primary_key=True),
    sa.Column("capability_id", ID, primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("version_key", sa.String(160)),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
    sa.Column("revision", sa.BigInteger),
)
grants_t = sa.Table(
    "registry_capability_grants",
    md,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("provider_id", ID, primary_key=True),
    sa.Column("capability_id", ID, primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("grantee", TENANT, primary_key=True),
)
endpoints_t = sa.Table(
    "registry_endpoints",
    md,
    sa.Column("endpoint_id", sa.String(40), primary_key=True),
    sa.Column("tenant_id", TENANT),
    sa.Column("provider_id", ID),
    sa.Column("transport", sa.SmallInteger),
    sa.Column("health", sa.SmallInteger),
    sa.Column("health_reason", sa.String(500)),
    sa.Column("health_changed_ms", sa.BigInteger),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
    sa.Column("revision", sa.BigInteger),
)
ep_caps_t = sa.Table(
    "registry_endpoint_capabilities",
    md,
    sa.Column("endpoint_id", sa.String(40), primary_key=True),
    sa.Column("capability_id", ID, primary_key=True),
)
events_t = sa.Table(
    "registry_events",
    md,
    sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("tenant_id", TENANT),
    sa.Column("provider_id", ID),
    sa.Column("type", sa.SmallInteger),
    sa.Column("capability_ids", sa.Text),
    sa.Column("grantees", sa.Text),
    sa.Column("payload", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
)


@dataclass
class ProviderRow:
    """A stored provider."""

    tenant_id: str
    provider_id: str
    state: int
    manifest_digest: str
    lease_ttl_ms: int
    lease_expires_ms: int
    spec: bytes
    created_ms: int
    updated_ms: int
    revision: int


@dataclass
class CapabilityRow:
    """A stored capability offering, with the tenants it is shared with."""

    tenant_id: str
    provider_id: str
    capability_id: str
    version: str
    version_key: str
    spec: bytes
    created_ms: int
    updated_ms: int
    revision: int
    grantees: tuple[str, ...] = ()


@dataclass
class EndpointRow:
    """A stored endpoint, with the capability ids it serves."""

    endpoint_id: str
    tenant_id: str
    provider_id: str
    transport: int
    health: int
    health_reason: str
    health_changed_ms: int
    spec: bytes
    created_ms: int
    updated_ms: int
    revision: int
    capability_ids: tuple[str, ...] = ()


@dataclass
class EventRow:
    """A stored registry event."""

    revision: int
    tenant_id: str
    provider_id: str
    type: int
    capability_ids: tuple[str, ...]
    grantees: tuple[str, ...]
    payload: bytes
    created_ms: int


def _split(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split("\n") if x)


def _event_row(r: Any) -> EventRow:
    """An event as stored, with its id lists split."""
    return EventRow(
        revision=r.revision,
        tenant_id=r.tenant_id,
        provider_id=r.provider_id,
        type=r.type,
        capability_ids=_split(r.capability_ids),
        grantees=_split(r.grantees),
        payload=r.payload,
        created_ms=r.created_ms,
    )


def _visible_caps(tenant_id: str) -> sa.ColumnElement[bool]:
    shared = (
        sa.select(grants_t.c.grantee)
        .where(
            grants_t.c.tenant_id == caps_t.c.tenant_id,
            grants_t.c.provider_id == caps_t.c.provider_id,
            grants_t.c.capability_id == caps_t.c.capability_id,
            grants_t.c.version == caps_t.c.version,
            grants_t.c.grantee.in_([tenant_id, "*"]),
        )
        .exists()
    )
    return sa.or_(caps_t.c.tenant_id == tenant_id, shared)


class RegistryTx:
    """Reads and writes inside one locked registry transaction."""

    def __init__(self, conn: AsyncConnection, revision: int) -> None:
        self.conn = conn
        self.revision = revision
        self.changed = False

    def next_revision(self) -> int:
        """Hands out the next revision (written back when the transaction commits)."""
        self.revision += 1
        self.changed = True
        return self.revision

    async def provider(self, tenant_id: str, provider_id: str) -> ProviderRow | None:
        """The provider row, if any."""
        row = (
            await self.conn.execute(
                sa.select(providers_t).where(
                    providers_t.c.tenant_id == tenant_id, providers_t.c.provider_id == provider_id
                )
            )
        ).first()
        return ProviderRow(**row._mapping) if row else None

    async def put_provider(self, row: ProviderRow) -> None:
        """Inserts or replaces a provider row."""
        values = row.__dict__
        result = await self.conn.execute(
            sa.update(providers_t)
            .where(providers_t.c.tenant_id == row.tenant_id, providers_t.c.provider_id == row.provider_id)
            .values(**values)
        )
        if result.rowcount == 0:
            await self.conn.execute(sa.insert(providers_t).values(**values))

    async def capabilities_of(self, tenant_id: str, provider_id: str) -> list[CapabilityRow]:
        """Every capability row of a provider, with grantees."""
        rows = (
            await self.conn.execute(
                sa.select(caps_t).where(caps_t.c.tenant_id == tenant_id, caps_t.c.provider_id == provider_id)
            )
        ).all()
        grants = (
            await self.conn.execute(
                sa.select(grants_t).where(
                    grants_t.c.tenant_id == tenant_id, grants_t.c.provider_id == provider_id
                )
            )
        ).all()
        by_key: dict[tuple[str, str], list[str]] = {}
        for g in grants:
            by_key.setdefault((g.capability_id, g.version), []).append(g.grantee)
        return [
            CapabilityRow(**r._mapping, grantees=tuple(sorted(by_key.get((r.capability_id, r.version), []))))
            for r in rows
        ]

    async def put_capability(self, row: CapabilityRow) -> None:
        """Inserts or replaces a capability row and its grants."""
        await self.delete_capability(row.tenant_id, row.provider_id, row.capability_id, row.version)
        values = {k: v for k, v in row.__dict__.items() if k != "grantees"}
        await self.conn.execute(sa.insert(caps_t).values(**values))
        if row.grantees:
            await self.conn.execute(
                sa.insert(grants_t),
                [
                    {
                        "tenant_id": row.tenant_id,
                        "provider_id": row.provider_id,
                        "capability_id": row.capability_id,
                        "version": row.version,
                        "grantee": g,
                    }
                    for g in row.grantees
                ],
            )

    async def delete_capability(
        self, tenant_id: str, provider_id: str, capability_id: str, version: str
    ) -> None:
        """Deletes a capability row and its grants."""
        for table in (grants_t, caps_t):
            await self.conn.execute(
                sa.delete(table).where(
                    table.c.tenant_id == tenant_id,
                    table.c.provider_id == provider_id,
                    table.c.capability_id == capability_id,
                    table.c.version == version,
                )
            )

    async def endpoints_of(self, tenant_id: str, provider_id: str) -> list[EndpointRow]:
        """Every endpoint of a provider, with the capability ids each serves."""
        rows = (
            await self.conn.execute(
                sa.select(endpoints_t).where(
                    endpoints_t.c.tenant_id == tenant_id, endpoints_t.c.provider_id == provider_id
                )
            )
        ).all()
        return await _with_caps(self.conn, rows)

    async def endpoint(self, endpoint_id: str) -> EndpointRow | None:
        """One endpoint by id (any tenant; callers check the tenant)."""
        rows = (
            await self.conn.execute(sa.select(endpoints_t).where(endpoints_t.c.endpoint_id == endpoint_id))
        ).all()
        found = await _with_caps(self.conn, rows)
        return found[0] if found else None

    async def put_endpoint(self, row: EndpointRow) -> None:
        """Inserts or replaces an endpoint and the capability ids it serves."""
        await self.delete_endpoint(row.endpoint_id)
        values = {k: v for k, v in row.__dict__.items() if k != "capability_ids"}
        await self.conn.execute(sa.insert(endpoints_t).values(**values))
        if row.capability_ids:
            await self.conn.execute(
                sa.insert(ep_caps_t),
                [{"endpoint_id": row.endpoint_id, "capability_id": c} for c in row.capability_ids],
            )

    async def set_health(
        self, endpoint_id: str, health: int, reason: str, now_ms: int, revision: int
    ) -> None:
        """Changes only the health of an endpoint."""
        await self.conn.execute(
            sa.update(endpoints_t)
            .where(endpoints_t.c.endpoint_id == endpoint_id)
            .values(
                health=health,
                health_reason=reason[:500],
                health_changed_ms=now_ms,
                updated_ms=now_ms,
                revision=revision,
            )
        )

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """Deletes an endpoint and its capability links."""
        await self.conn.execute(sa.delete(ep_caps_t).where(ep_caps_t.c.endpoint_id == endpoint_id))
        await self.conn.execute(sa.delete(endpoints_t).where(endpoints_t.c.endpoint_id == endpoint_id))

    async def expired_providers(
        self, now_ms: int, tenant_id: str = "", provider_id: str = ""
    ) -> list[ProviderRow]:
        """Active providers whose lease ran out, optionally of one tenant or provider."""
        q = sa.select(providers_t).where(providers_t.c.state == 1, providers_t.c.lease_expires_ms < now_ms)
        if tenant_id:
            q = q.where(providers_t.c.tenant_id == tenant_id)
        if provider_id:
            q = q.where(providers_t.c.provider_id == provider_id)
        return [ProviderRow(**r._mapping) for r in (await self.conn.execute(q)).all()]

    async def append_event(self, row: EventRow) -> None:
        """Appends an event to the log."""
        values = dict(row.__dict__)
        values["capability_ids"] = "\n".join(row.capability_ids)
        values["grantees"] = "\n".join(row.grantees)
        await self.conn.execute(sa.insert(events_t).values(**values))


async def _with_caps(conn: AsyncConnection, rows: Sequence[Any]) -> list[EndpointRow]:
    if not rows:
        return []
    ids = [r.endpoint_id for r in rows]
    links = (await conn.execute(sa.select(ep_caps_t).where(ep_caps_t.c.endpoint_id.in_(ids)))).all()
    caps: dict[str, list[str]] = {}
    for link in links:
        caps.setdefault(link.endpoint_id, []).append(link.capability_id)
    return [
        EndpointRow(**r._mapping, capability_ids=tuple(sorted(caps.get(r.endpoint_id, [])))) for r in rows
    ]


class RegistryStore:
    """Registry persistence over an async SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._lock = asyncio.Lock()
        self._pg = engine.dialect.name == "postgresql"

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[RegistryTx]:
        """A write transaction holding the registry lock; revisions handed out are committed with it."""
        async with self._lock, self.engine.begin() as conn:
            q = sa.select(state_t.c.revision).where(state_t.c.id == 1)
            if self._pg:
                q = q.with_for_update()
            revision = (await conn.execute(q)).scalar_one()
            tx = RegistryTx(conn, revision)
            yield tx
            if tx.changed:
                await conn.execute(sa.update(state_t).where(state_t.c.id == 1).values(revision=tx.revision))

    async def revision(self) -> int:
        """The latest committed revision."""
        async with self.engine.connect() as conn:
            return int(
                (await conn.execute(sa.select(state_t.c.revision).where(state_t.c.id == 1))).scalar_one()
            )

    async def provider(self, tenant_id: str, provider_id: str) -> ProviderRow | None:
        """One provider of a tenant."""
        async with self.engine.connect() as conn:
            return await RegistryTx(conn, 0).provider(tenant_id, provider_id)

    async def provider_detail(
        self, tenant_id: str, provider_id: str
    ) -> tuple[ProviderRow, list[CapabilityRow], list[EndpointRow]] | None:
        """A provider with its capabilities and endpoints."""
        async with self.engine.connect() as conn:
            tx = RegistryTx(conn, 0)
            row = await tx.provider(tenant_id, provider_id)
            if row is None:
                return None
            return (
                row,
                await tx.capabilities_of(tenant_id, provider_id),
                await tx.endpoints_of(tenant_id, provider_id),
            )

    async def list_providers(self, tenant_id: str, state: int, page: Page) -> list[ProviderRow]:
        """A page of a tenant's providers, by provider id."""
        q = sa.select(providers_t).where(providers_t.c.tenant_id == tenant_id)
        if state:
            q = q.where(providers_t.c.state == state)
        if page.after:
            q = q.where(providers_t.c.provider_id > page.after[0])
        q = q.order_by(providers_t.c.provider_id).limit(page.size + 1)
        async with self.engine.connect() as conn:
            return [ProviderRow(**r._mapping) for r in (await conn.execute(q)).all()]

    async def list_capabilities(
        self,
        tenant_id: str,
        page: Page,
        *,
        capability_id: str = "",
        version: str = "",
        provider_id: str = "",
        prefix: str = "",
        transport: int = 0,
        health: int = 0,
    ) -> list[CapabilityRow]:
        """A page of capabilities visible to a tenant, by (capability id, version key, provider id)."""
        q = sa.select(caps_t).where(_visible_caps(tenant_id))
        if capability_id:
            q = q.where(caps_t.c.capability_id == capability_id)
        if version:
            q = q.where(caps_t.c.version == version)
        if provider_id:
            q = q.where(caps_t.c.provider_id == provider_id)
        if prefix:
            q = q.where(caps_t.c.capability_id.startswith(prefix, autoescape=True))
        if transport or health:
            ep = (
                sa.select(endpoints_t.c.endpoint_id)
                .join(ep_caps_t, ep_caps_t.c.endpoint_id == endpoints_t.c.endpoint_id)
                .where(
                    endpoints_t.c.tenant_id == caps_t.c.tenant_id,
                    endpoints_t.c.provider_id == caps_t.c.provider_id,
                    ep_caps_t.c.capability_id == caps_t.c.capability_id,
                )
            )
            if transport:
                ep = ep.where(endpoints_t.c.transport == transport)
            if health:
                ep = ep.where(endpoints_t.c.health == health)
            q = q.where(ep.exists())
        key = sa.tuple_(
            caps_t.c.capability_id, caps_t.c.version_key, caps_t.c.provider_id, caps_t.c.tenant_id
        )
        if page.after:
            q = q.where(key > sa.tuple_(*[sa.literal(x) for x in page.after]))
        q = q.order_by(caps_t.c.capability_id, caps_t.c.version_key, caps_t.c.provider_id, caps_t.c.tenant_id)
        q = q.limit(page.size + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [CapabilityRow(**r._mapping) for r in rows]

    async def endpoints_serving(
        self, caps: Iterable[CapabilityRow]
    ) -> dict[tuple[str, str, str], list[EndpointRow]]:
        """Endpoints serving each (tenant, provider, capability id) of the given capabilities."""
        keys = {(c.tenant_id, c.provider_id, c.capability_id) for c in caps}
        if not keys:
            return {}
        providers = {(t, p) for t, p, _ in keys}
        q = (
            sa.select(endpoints_t, ep_caps_t.c.capability_id.label("served"))
            .join(ep_caps_t, ep_caps_t.c.endpoint_id == endpoints_t.c.endpoint_id)
            .where(
                sa.or_(
                    *[
                        sa.and_(endpoints_t.c.tenant_id == t, endpoints_t.c.provider_id == p)
                        for t, p in providers
                    ]
                ),
                ep_caps_t.c.capability_id.in_({c for _, _, c in keys}),
            )
            .order_by(endpoints_t.c.endpoint_id)
        )
        out: dict[tuple[str, str, str], list[EndpointRow]] = {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        for r in rows:
            data = dict(r._mapping)
            served = data.pop("served")
            key = (r.tenant_id, r.provider_id, served)
            if key in keys:
                out.setdefault(key, []).append(EndpointRow(**data))
        return out

    async def list_endpoints(
        self,
        tenant_id: str,
        page: Page,
        *,
        provider_id: str = "",
        capability_id: str = "",
        transport: int = 0,
        health: int = 0,
    ) -> list[EndpointRow]:
        """A page of a tenant's endpoints, by endpoint id."""
        q = sa.select(endpoints_t).where(endpoints_t.c.tenant_id == tenant_id)
        if provider_id:
            q = q.where(endpoints_t.c.provider_id == provider_id)
        if capability_id:
            q = q.where(
                sa.select(ep_caps_t.c.endpoint_id)
                .where(
                    ep_caps_t.c.endpoint_id == endpoints_t.c.endpoint_id,
                    ep_caps_t.c.capability_id == capability_id,
                )
                .exists()
            )
        if transport:
            q = q.where(endpoints_t.c.transport == transport)
        if health:
            q = q.where(endpoints_t.c.health == health)
        if page.after:
            q = q.where(endpoints_t.c.endpoint_id > page.after[0])
        q = q.order_by(endpoints_t.c.endpoint_id).limit(page.size + 1)
        async with self.engine.connect() as conn:
            return await _with_caps(conn, (await conn.execute(q)).all())

    async def events_after(self, revision: int, tenant_id: str, limit: int = 500) -> list[EventRow]:
        """Events after `revision` that concern the tenant (its own or shared with it), in order."""
        q = (
            sa.select(events_t)
            .where(
                events_t.c.revision > revision,
                sa.or_(events_t.c.tenant_id == tenant_id, events_t.c.grantees != ""),
            )
            .order_by(events_t.c.revision)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        events = [_event_row(r) for r in rows]
        return [e for e in events if e.tenant_id == tenant_id or tenant_id in e.grantees or "*" in e.grantees]

    async def last_event_revision_scanned(self, revision: int, limit: int = 500) -> int:
        """The highest revision among the next `limit` events after `revision` (any tenant), or `revision`."""
        q = sa.select(sa.func.max(events_t.c.revision)).where(
            events_t.c.revision.in_(
                sa.select(events_t.c.revision)
                .where(events_t.c.revision > revision)
                .order_by(events_t.c.revision)
                .limit(limit)
            )
        )
        async with self.engine.connect() as conn:
            value = (await conn.execute(q)).scalar()
        return int(value) if value is not None else revision

    async def route_state(self) -> tuple[int, list[CapabilityRow], list[EndpointRow]]:
        """Every capability (with grantees) and endpoint of every tenant, and the revision read first.

        Changes that commit while this reads are replayed by the caller from the returned revision on:
        events carry whole states, so replaying them over a newer state converges.
        """
        async with self.engine.connect() as conn:
            revision = int(
                (await conn.execute(sa.select(state_t.c.revision).where(state_t.c.id == 1))).scalar_one()
            )
            grants: dict[tuple[str, str, str, str], list[str]] = {}
            for g in (await conn.execute(sa.select(grants_t))).all():
                grants.setdefault((g.tenant_id, g.provider_id, g.capability_id, g.version), []).append(
                    g.grantee
                )
            caps = [
                CapabilityRow(
                    **r._mapping,
                    grantees=tuple(
                        sorted(grants.get((r.tenant_id, r.provider_id, r.capability_id, r.version), []))
                    ),
                )
                for r in (await conn.execute(sa.select(caps_t))).all()
            ]
            links: dict[str, list[str]] = {}
            for link in (await conn.execute(sa.select(ep_caps_t))).all():
                links.setdefault(link.endpoint_id, []).append(link.capability_id)
            eps = [
                EndpointRow(**r._mapping, capability_ids=tuple(sorted(links.get(r.endpoint_id, []))))
                for r in (await conn.execute(sa.select(endpoints_t))).all()
            ]
        return revision, caps, eps

    async def all_events_after(self, revision: int, limit: int = 1000) -> list[EventRow]:
        """Events of every tenant after `revision`, in order (for route caches, never for callers)."""
        q = (
            sa.select(events_t)
            .where(events_t.c.revision > revision)
            .order_by(events_t.c.revision)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_event_row(r) for r in rows]
