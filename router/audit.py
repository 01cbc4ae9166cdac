"""One audit record per routed invocation, written in batches off the call path (seed 001 §13)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("powerx.router.audit")

audit_t = sa.Table(
    "router_audit",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("actor", sa.String(255)),
    sa.Column("trace_id", sa.String(32)),
    sa.Column("request_id", sa.String(128)),
    sa.Column("capability_id", sa.String(255)),
    sa.Column("version", sa.String(64)),
    sa.Column("endpoint_id", sa.String(40)),
    sa.Column("transport", sa.String(16)),
    sa.Column("outcome", sa.String(32)),
    sa.Column("attempts", sa.Integer),
    sa.Column("latency_ms", sa.Float),
    sa.Column("streamed", sa.Boolean),
)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What the audit keeps of one invocation: who, what, where, how it ended. Never arguments or results."""

    created_ms: int
    tenant_id: str
    actor: str
    trace_id: str
    request_id: str
    capability_id: str
    version: str
    endpoint_id: str
    transport: str
    outcome: str
    attempts: int
    latency_ms: float
    streamed: bool


class AuditLog:
    """Queues records and writes them in batches; `close()` flushes what is left.

    Records are dataclasses whose fields are the table's columns (AuditRecord for the router's table;
    the connector service writes its own table with the same writer).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        table: sa.Table = audit_t,
        flush_every_s: float = 0.25,
        max_queue: int = 100_000,
        name: str = "router-audit",
    ) -> None:
        self.engine = engine
        self.table = table
        self.name = name
        self.flush_every_s = flush_every_s
        self._queue: list[Any] = []
        self._max_queue = max_queue
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, rec: Any) -> None:
        """Queues a record (never blocks the call; drops and counts when the database cannot keep up)."""
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            return
        self._queue.append(rec)
        if len(self._queue) >= 500:
            self._wake.set()

    def start(self) -> None:
        """Starts the writer task."""
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def flush(self) -> None:
        """Writes every queued record now; returns once they, and any write already under way, are stored."""
        async with self._writing:  # a flush never returns while the writer task still holds a batch
            batch, self._queue = self._queue, []
            if not batch:
                return
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(
                        sa.insert(self.table),
                        [{f.name: getattr(r, f.name) for f in fields(r)} for r in batch],
                    )
            except Exception:
                log.exception("could not write %d audit records", len(batch))
                self._queue[:0] = batch[: self._max_queue - len(self._queue)]

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_every_s)
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        """Stops the writer and flushes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
