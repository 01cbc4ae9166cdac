"""Hot state of the agent service: live agents (heartbeats, load, mailboxes) and live runs (their output).

None of this is written per heartbeat or per output event: heartbeats only touch memory, and output
reaches subscribers from memory at once while `OutputWriter` stores it in batches (group commit), so
an append is acknowledged only once it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from powerx.agent.v1 import agent_pb2, run_pb2
from servers.agent.store import AgentStore, StoredAgent, StoredRun
from servers.common.times import seconds_of

log = logging.getLogger("powerx.agent")

TERMINAL_RUN_STATES = frozenset(
    {run_pb2.RUN_STATE_SUCCEEDED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED}
)
HELD_RUN_STATES = frozenset({run_pb2.RUN_STATE_ASSIGNED, run_pb2.RUN_STATE_RUNNING})


class Mailbox:
    """What waits for an agent: assignments and cancellations, pushed on its Connect stream or pulled."""

    def __init__(self) -> None:
        self.items: deque[run_pb2.Run | run_pb2.RunCancellation] = deque()
        self._wake = asyncio.Event()

    def put(self, item: run_pb2.Run | run_pb2.RunCancellation) -> None:
        """Adds an item and wakes whoever waits."""
        self.items.append(item)
        self._wake.set()

    def drop_run(self, run_id: str) -> None:
        """Removes a waiting assignment (the run was cancelled or moved before the agent took it)."""
        self.items = deque(i for i in self.items if not (isinstance(i, run_pb2.Run) and i.run_id == run_id))

    async def wait(self, timeout_s: float | None) -> bool:
        """Waits until something is in the box; false on timeout."""
        if self.items:
            return True
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except TimeoutError:
            return bool(self.items)
        return True

    def take(self, max_runs: int) -> tuple[list[run_pb2.Run], list[run_pb2.RunCancellation]]:
        """Takes every cancellation and up to `max_runs` assignments, in order."""
        runs: list[run_pb2.Run] = []
        cancels: list[run_pb2.RunCancellation] = []
        kept: deque[run_pb2.Run | run_pb2.RunCancellation] = deque()
        for item in self.items:
            if isinstance(item, run_pb2.RunCancellation):
                cancels.append(item)
            elif len(runs) < max_runs:
                runs.append(item)
            else:
                kept.append(item)
        self.items = kept
        return runs, cancels


@dataclass
class LiveAgent:
    """An agent as this process holds it: the stored record plus what its heartbeats say.

    Attributes:
        stored: The agent's record (state, session, token hash).
        last_seen: `time.monotonic()` of its last heartbeat (or of the mesh's start for known agents).
        load: Load from its last heartbeat.
        runs: Runs handed to it (ASSIGNED or RUNNING) and not finished.
        mailbox: Assignments and cancellations waiting for it.
        streams: Open Connect streams (0 or 1; a new one replaces the old).
    """

    stored: StoredAgent
    last_seen: float
    load: agent_pb2.AgentLoad = field(default_factory=agent_pb2.AgentLoad)
    runs: set[str] = field(default_factory=set)
    mailbox: Mailbox = field(default_factory=Mailbox)
    streams: int = 0
    stream_epoch: int = 0
    last_heartbeat_wall_ms: int = 0

    @property
    def agent(self) -> agent_pb2.Agent:
        """The agent message."""
        return self.stored.agent

    @property
    def key(self) -> tuple[str, str]:
        """(tenant, agent id)."""
        return (self.stored.agent.tenant_id, self.stored.agent.agent_id)

    @property
    def max_concurrency(self) -> int:
        """Runs it takes at once."""
        return self.stored.agent.runtime.max_concurrency or 1

    def interval_s(self, default_s: float) -> float:
        """Its heartbeat interval."""
        return seconds_of(self.stored.agent.runtime.heartbeat_interval) or default_s


class LiveRun:
    """A run's output as this process holds it: the events produced since the run went live here."""

    def __init__(self, stored: StoredRun) -> None:
        self.stored = stored
        self.events: list[run_pb2.RunEvent] = []
        # Sequence of events[0]; earlier events are read from the store.
        self.first_in_memory = stored.run.last_sequence + 1
        self._wake = asyncio.Event()
        self.subscribers = 0
        self.lock = asyncio.Lock()
        # Appends numbered but not stored yet, by append key, with their numbered events and the write's
        # future: the same batch sent again meanwhile (an agent resends what was not acknowledged, after
        # a reconnect say) joins that write instead of being numbered and stored a second time.
        self.staged: dict[str, tuple[list[run_pb2.RunEvent], asyncio.Future[None]]] = {}

    @property
    def run(self) -> run_pb2.Run:
        """The run message."""
        return self.stored.run

    @property
    def finished(self) -> bool:
        """Whether the run reached a terminal state."""
        return self.stored.run.state in TERMINAL_RUN_STATES

    def add(self, events: Sequence[run_pb2.RunEvent]) -> None:
        """Makes events visible to subscribers (they were numbered by the caller)."""
        self.events.extend(events)
        self.run.last_sequence = events[-1].sequence
        self.wake()

    def wake(self) -> None:
        """Wakes every subscriber waiting for news."""
        old, self._wake = self._wake, asyncio.Event()
        old.set()

    async def wait(self, timeout_s: float | None) -> bool:
        """Waits for the next append or state change; false on timeout."""
        event = self._wake
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def since(self, sequence: int) -> list[run_pb2.RunEvent]:
        """Events in memory from `sequence` on."""
        start = max(0, sequence - self.first_in_memory)
        return self.events[start:]


@dataclass
class _Pending:
    run_id: str
    events: Sequence[run_pb2.RunEvent]
    key: str
    last: int
    done: asyncio.Future[None]


class OutputWriter:
    """Stores run output in batches: every append waiting when a write starts shares its transaction."""

    def __init__(self, store: AgentStore, *, max_batch: int = 2000) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Starts the writer task."""
        self._task = asyncio.create_task(self._run(), name="agent-output-writer")

    def submit(self, run_id: str, events: Sequence[run_pb2.RunEvent], key: str = "") -> asyncio.Future[None]:
        """Queues events (and the append key) for storing; the future is done once they are durable."""
        if self._closed:
            raise RuntimeError("the output writer is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(run_id, events, key, events[-1].sequence if events else 0, future))
        self._wake.set()
        return future

    async def write(self, run_id: str, events: Sequence[run_pb2.RunEvent], key: str = "") -> None:
        """Stores events (and the append key); returns once they are durable."""
        await asyncio.shield(self.submit(run_id, events, key))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, size = [], 0
                while self._pending and size < self.max_batch:
                    item = self._pending.pop(0)
                    batch.append(item)
                    size += len(item.events)
                try:
                    await self.store.append([(p.run_id, p.events, p.key, p.last) for p in batch])
                except Exception as exc:
                    log.exception("storing run output failed")
                    for p in batch:
                        if not p.done.done():
                            p.done.set_exception(exc)
                else:
                    for p in batch:
                        if not p.done.done():
                            p.done.set_result(None)

    async def close(self) -> None:
        """Writes what is pending, then stops."""
        self._closed = True
        if self._pending:
            await asyncio.gather(*(p.done for p in list(self._pending)), return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
