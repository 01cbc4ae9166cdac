"""Agent storage: agents, runs and run output, one SQLAlchemy Core implementation for SQLite and PostgreSQL.

Rows keep the columns that queries filter and order on, plus the resource's protobuf bytes (`spec`).
Every query names the tenant it reads for (runs also the agent's tenant, for the agent's own calls).
Heartbeats are not stored: they are hot state (see service.Directory); only the transitions they cause
are.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from powerx.agent.v1 import agent_pb2, run_pb2
from servers.common.validate import Page

md = sa.MetaData()
agents_t = sa.Table(
    "agents",
    md,
    sa.Column("tenant_id", sa.String(63), primary_key=True),
    sa.Column("agent_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16)),
    sa.Column("state", sa.SmallInteger),
    sa.Column("session_id", sa.String(64)),
    sa.Column("token_hash", sa.String(64)),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
)
runs_t = sa.Table(
    "agent_runs",
    md,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("agent_tenant_id", sa.String(63)),
    sa.Column("agent_id", sa.String(128)),
    sa.Column("state", sa.SmallInteger),
    sa.Column("idempotency_key", sa.String(128)),
    sa.Column("last_sequence", sa.BigInteger),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
)
events_t = sa.Table(
    "agent_run_events",
    md,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("payload", sa.LargeBinary),
)
appends_t = sa.Table(
    "agent_run_appends",
    md,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("append_key", sa.String(128), primary_key=True),
    sa.Column("last_sequence", sa.BigInteger),
)

KIND_NATIVE = "native"
KIND_A2A = "a2a"


class StoredAgent:
    """An agent row: the message plus what only the mesh sees (kind, token hash)."""

    __slots__ = ("agent", "kind", "token_hash")

    def __init__(self, agent: agent_pb2.Agent, kind: str, token_hash: str) -> None:
        self.agent = agent
        self.kind = kind
        self.token_hash = token_hash


class StoredRun:
    """A run row: the message plus the tenant of the agent holding it."""

    __slots__ = ("agent_tenant_id", "run")

    def __init__(self, run: run_pb2.Run, agent_tenant_id: str) -> None:
        self.run = run
        self.agent_tenant_id = agent_tenant_id


def _agent(row: sa.Row[tuple[object, ...]]) -> StoredAgent:
    agent = agent_pb2.Agent.FromString(row.spec)
    return StoredAgent(agent, row.kind, row.token_hash)


def _run(row: sa.Row[tuple[object, ...]]) -> StoredRun:
    run = run_pb2.Run.FromString(row.spec)
    run.last_sequence = max(run.last_sequence, row.last_sequence)
    return StoredRun(run, row.agent_tenant_id)


class AgentStore:
    """Reads and writes agents, runs and run output."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    # ---- agents ------------------------------------------------------------------------------------

    async def all_agents(self) -> list[StoredAgent]:
        """Every agent of every tenant (to rebuild the directory at start)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(agents_t))).all()
        return [_agent(r) for r in rows]

    async def agent(self, tenant_id: str, agent_id: str) -> StoredAgent | None:
        """One agent of a tenant."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(agents_t).where(
                        agents_t.c.tenant_id == tenant_id, agents_t.c.agent_id == agent_id
                    )
                )
            ).first()
        return _agent(row) if row else None

    async def put_agent(self, stored: StoredAgent, now_ms: int) -> None:
        """Inserts or replaces an agent."""
        a = stored.agent
        values = {
            "kind": stored.kind,
            "state": int(a.state),
            "session_id": a.session_id,
            "token_hash": stored.token_hash,
            "spec": a.SerializeToString(deterministic=True),
            "updated_ms": now_ms,
        }
        async with self.engine.begin() as conn:
            updated = await conn.execute(
                sa.update(agents_t)
                .where(agents_t.c.tenant_id == a.tenant_id, agents_t.c.agent_id == a.agent_id)
                .values(**values)
            )
            if updated.rowcount == 0:
                await conn.execute(
                    sa.insert(agents_t).values(
                        tenant_id=a.tenant_id, agent_id=a.agent_id, created_ms=now_ms, **values
                    )
                )

    async def list_agents(self, tenant_id: str, after_id: str, limit: int, state: int) -> list[StoredAgent]:
        """Up to `limit` agents of a tenant ordered by id, after `after_id` (the caller filters skills)."""
        q = sa.select(agents_t).where(agents_t.c.tenant_id == tenant_id, agents_t.c.agent_id > after_id)
        if state:
            q = q.where(agents_t.c.state == state)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(agents_t.c.agent_id).limit(limit))).all()
        return [_agent(r) for r in rows]

    # ---- runs --------------------------------------------------------------------------------------

    async def put_run(self, stored: StoredRun, now_ms: int, *, create: bool = False) -> None:
        """Inserts (create) or replaces a run's record."""
        r = stored.run
        values = {
            "agent_tenant_id": stored.agent_tenant_id,
            "agent_id": r.agent_id,
            "state": int(r.state),
            "last_sequence": r.last_sequence,
            "spec": r.SerializeToString(deterministic=True),
            "updated_ms": now_ms,
        }
        async with self.engine.begin() as conn:
            if create:
                await conn.execute(
                    sa.insert(runs_t).values(
                        run_id=r.run_id,
                        tenant_id=r.tenant_id,
                        idempotency_key=r.task.idempotency_key,
                        created_ms=now_ms,
                        **values,
                    )
                )
            else:
                await conn.execute(sa.update(runs_t).where(runs_t.c.run_id == r.run_id).values(**values))

    async def run(self, run_id: str) -> StoredRun | None:
        """A run by id, whatever its tenant: callers check the tenant against their own."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(runs_t).where(runs_t.c.run_id == run_id))).first()
        return _run(row) if row else None

    async def run_by_key(self, tenant_id: str, key: str) -> StoredRun | None:
        """The run a tenant created with an idempotency key."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(runs_t).where(runs_t.c.tenant_id == tenant_id, runs_t.c.idempotency_key == key)
                )
            ).first()
        return _run(row) if row else None

    async def release_key(self, tenant_id: str, key: str) -> None:
        """Frees an idempotency key whose 24 hours are over."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(runs_t)
                .where(runs_t.c.tenant_id == tenant_id, runs_t.c.idempotency_key == key)
                .values(idempotency_key="")
            )

    async def list_runs(self, tenant_id: str, page: Page, agent_id: str, state: int) -> list[StoredRun]:
        """Runs of a tenant, newest first."""
        q = sa.select(runs_t).where(runs_t.c.tenant_id == tenant_id)
        if agent_id:
            q = q.where(runs_t.c.agent_id == agent_id)
        if state:
            q = q.where(runs_t.c.state == state)
        if page.after:
            created, run_id = int(page.after[0]), str(page.after[1])
            q = q.where(
                sa.or_(
                    runs_t.c.created_ms < created,
                    sa.and_(runs_t.c.created_ms == created, runs_t.c.run_id < run_id),
                )
            )
        q = q.order_by(runs_t.c.created_ms.desc(), runs_t.c.run_id.desc()).limit(page.size + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_run(r) for r in rows]

    async def created_ms(self, run_id: str) -> int:
        """When a run was created (for page tokens)."""
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(sa.select(runs_t.c.created_ms).where(runs_t.c.run_id == run_id))
            ).scalar()
        return int(value or 0)

    async def unfinished_runs(self, states: Sequence[int]) -> list[StoredRun]:
        """Runs in the given states (to rebuild the queue at start)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(runs_t).where(runs_t.c.state.in_(list(states))).order_by(runs_t.c.created_ms)
                )
            ).all()
        return [_run(r) for r in rows]

    # ---- run output ----------------------------------------------------------------------------------

    async def append(self, batches: Sequence[tuple[str, Sequence[run_pb2.RunEvent], str, int]]) -> None:
        """Stores output events of several runs in one transaction.

        Args:
            batches: (run_id, events, append key or "", last sequence after the events) per append.
        """
        rows = [
            {"run_id": run_id, "sequence": e.sequence, "payload": e.SerializeToString()}
            for run_id, events, _, _ in batches
            for e in events
        ]
        keys = [
            {"run_id": run_id, "append_key": key, "last_sequence": last}
            for run_id, _, key, last in batches
            if key
        ]
        last: dict[str, int] = {}
        for run_id, _, _, seq in batches:
            last[run_id] = max(last.get(run_id, 0), seq)
        async with self.engine.begin() as conn:
            if rows:
                await conn.execute(sa.insert(events_t), rows)
            if keys:
                await conn.execute(sa.insert(appends_t), keys)
            for run_id, seq in last.items():
                await conn.execute(
                    sa.update(runs_t)
                    .where(runs_t.c.run_id == run_id, runs_t.c.last_sequence < seq)
                    .values(last_sequence=seq)
                )

    async def appended(self, run_id: str, key: str) -> int | None:
        """The last sequence an earlier append with this key stored, or None."""
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(
                    sa.select(appends_t.c.last_sequence).where(
                        appends_t.c.run_id == run_id, appends_t.c.append_key == key
                    )
                )
            ).scalar()
        return None if value is None else int(value)

    async def events(self, run_id: str, from_sequence: int, limit: int = 1000) -> list[run_pb2.RunEvent]:
        """Stored output of a run from a sequence on."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(events_t.c.payload)
                    .where(events_t.c.run_id == run_id, events_t.c.sequence >= from_sequence)
                    .order_by(events_t.c.sequence)
                    .limit(limit)
                )
            ).all()
        return [run_pb2.RunEvent.FromString(r.payload) for r in rows]
