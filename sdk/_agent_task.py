"""What a skill handler works with: `TaskContext` (the run, its output, its calls) and the run's outbox.

Output events are queued, not sent one by one: one sender per run sends whatever has piled up as one
batch (up to `max_batch_events`), waits until the mesh has stored it, then sends the next. That keeps the
run's events in order, makes a batch safe to send again after a reconnect (same idempotency key), and
lets a handler produce tokens much faster than one round trip each.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from google.protobuf import struct_pb2

from powerx.agent.v1 import run_pb2
from sdk.dispatch import struct_to_dict, to_value

SendBatch = Callable[[list[run_pb2.RunEvent], str], Awaitable[None]]

MAX_TOKEN_CHARS = 64 * 1024
MAX_LOG_CHARS = 16 * 1024
# Artifact content per chunk: the mesh takes at most 1 MiB; text is cut by characters (UTF-8 <= 4 bytes).
MAX_CHUNK_BYTES = 1024 * 1024 - 4096
MAX_CHUNK_CHARS = MAX_CHUNK_BYTES // 4

ARTIFACT_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")

LOG_LEVELS: dict[str, int] = {
    "debug": run_pb2.LOG_LEVEL_DEBUG,
    "info": run_pb2.LOG_LEVEL_INFO,
    "warning": run_pb2.LOG_LEVEL_WARNING,
    "warn": run_pb2.LOG_LEVEL_WARNING,
    "error": run_pb2.LOG_LEVEL_ERROR,
}


class RunOutput:
    """The output of one run on its way to the mesh, one batch at a time.

    Args:
        send: Sends one batch with its idempotency key and returns once the mesh stored it; raises when
            the batch can never be stored (the run is gone). Retrying across reconnects is its job.
        on_failure: Called once when `send` failed for good.
        max_batch_events: Most events in one batch.
        max_batch_bytes: Most encoded bytes in one batch (a single larger event still goes alone).
        max_pending_events: Events queued at which `put` waits for the sender (backpressure).
    """

    def __init__(
        self,
        send: SendBatch,
        on_failure: Callable[[BaseException], None],
        *,
        max_batch_events: int = 100,
        max_batch_bytes: int = 2 * 1024 * 1024,
        max_pending_events: int = 10_000,
    ) -> None:
        self._send = send
        self._on_failure = on_failure
        self._max_events = max(1, max_batch_events)
        self._max_bytes = max_batch_bytes
        self._max_pending = max(self._max_events, max_pending_events)
        self._pending: deque[tuple[run_pb2.RunEvent, int]] = deque()
        self._queued = 0
        self._stored = 0
        self._batches = 0
        self._changed = asyncio.Event()
        self._progress = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Events handed to `put` so far."""
        return self._queued

    @property
    def stored(self) -> int:
        """Events the mesh has confirmed so far."""
        return self._stored

    @property
    def batches(self) -> int:
        """Batches the mesh has confirmed so far."""
        return self._batches

    async def put(self, event: run_pb2.RunEvent) -> None:
        """Queues an event; waits only while too many are queued.

        Raises:
            Exception: The run's output can no longer be sent (the error the mesh gave).
        """
        self._raise_if_failed()
        self._pending.append((event, event.ByteSize()))
        self._queued += 1
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agent-run-output")
        while len(self._pending) >= self._max_pending and self._error is None:
            await self._wait_progress()
        self._raise_if_failed()

    async def drain(self) -> None:
        """Waits until every event queued so far is stored.

        Raises:
            Exception: The run's output can no longer be sent.
        """
        target = self._queued
        while self._stored < target:
            self._raise_if_failed()
            await self._wait_progress()

    async def close(self) -> None:
        """Stops the sender (what is still queued is dropped)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait_progress(self) -> None:
        await self._progress.wait()

    def _notify(self) -> None:
        old, self._progress = self._progress, asyncio.Event()
        old.set()

    def _take(self) -> list[run_pb2.RunEvent]:
        batch: list[run_pb2.RunEvent] = []
        size = 0
        while self._pending and len(batch) < self._max_events:
            event, event_size = self._pending[0]
            if batch and size + event_size > self._max_bytes:
                break
            self._pending.popleft()
            batch.append(event)
            size += event_size
        return batch

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            while self._pending:
                batch = self._take()
                try:
                    await self._send(batch, uuid.uuid4().hex)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._error = exc
                    self._pending.clear()
                    self._notify()
                    self._on_failure(exc)
                    return
                self._stored += len(batch)
                self._batches += 1
                self._notify()


class Calls(Protocol):
    """How a task makes signed calls through the mesh (implemented by `Agent`)."""

    async def call(
        self,
        capability_id: str,
        arguments: struct_pb2.Struct,
        *,
        parent_run_id: str,
        trace_id: str,
        version: str,
        timeout_s: float | None,
        idempotency_key: str,
    ) -> Any:
        """Calls a capability through the router and returns its result."""
        ...

    def call_stream(
        self,
        capability_id: str,
        arguments: struct_pb2.Struct,
        *,
        parent_run_id: str,
        trace_id: str,
        version: str,
        timeout_s: float | None,
        idempotency_key: str,
    ) -> AsyncIterator[Any]:
        """Calls a capability through the router and yields its chunks."""
        ...


def to_struct(arguments: Mapping[str, Any] | struct_pb2.Struct | None) -> struct_pb2.Struct:
    """Call arguments as a protobuf Struct."""
    if isinstance(arguments, struct_pb2.Struct):
        return arguments
    out = struct_pb2.Struct()
    if arguments:
        out.update(dict(arguments))
    return out


class TaskContext:
    """One run an agent executes: what to do, how to report progress, and how to call other agents.

    A handler gets it as its only argument. Output methods queue events and return at once (they wait
    only when thousands are queued); `flush()` waits until the mesh has stored everything queued.

    Attributes:
        run: The run as the mesh assigned it (task, tenant, depth, attempt, deadline, caller).
        agent_id: The agent executing it.
    """

    def __init__(self, run: run_pb2.Run, output: RunOutput, calls: Calls, agent_id: str) -> None:
        self.run = run
        self.agent_id = agent_id
        self._output = output
        self._calls = calls
        self._inputs: dict[str, Any] | None = None
        self._cancelled = asyncio.Event()
        self._cancel_reason = ""

    # What to do.

    @property
    def run_id(self) -> str:
        """Identifier of the run, such as `run_3f9c…`."""
        return self.run.run_id

    @property
    def skill(self) -> str:
        """The skill (capability id) the run exercises; empty for a run assigned without one."""
        return self.run.task.skill

    @property
    def goal(self) -> str:
        """What to achieve, in natural language."""
        return self.run.task.goal

    @property
    def inputs(self) -> dict[str, Any]:
        """The task's inputs as a dict (integral numbers as int)."""
        if self._inputs is None:
            self._inputs = struct_to_dict(self.run.task.inputs)
        return self._inputs

    @property
    def tenant_id(self) -> str:
        """Tenant that owns the run."""
        return self.run.tenant_id

    @property
    def actor_id(self) -> str:
        """User on whose behalf the run acts."""
        return self.run.task.actor_id

    @property
    def trace_id(self) -> str:
        """Trace the run belongs to; calls made from the run join it."""
        return self.run.task.trace_id

    @property
    def attempt(self) -> int:
        """How many times the run has been handed to an agent (more than 1 after a reassignment)."""
        return self.run.attempt

    @property
    def depth(self) -> int:
        """Agent-to-agent call depth: 0 for a run a user created."""
        return self.run.depth

    @property
    def caller_agent_id(self) -> str:
        """Agent that created the run through an agent-to-agent call, or empty."""
        return self.run.caller_agent_id

    @property
    def deadline(self) -> float | None:
        """Unix time at which the run times out, or None."""
        ms = self.run.deadline_time.ToMilliseconds()
        return ms / 1000 if ms else None

    def time_remaining(self) -> float | None:
        """Seconds left before the run times out (at least 0), or None."""
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline - time.time())

    # Cancellation.

    @property
    def cancelled(self) -> bool:
        """Whether the mesh cancelled the run (or the agent is stopping); the handler is being cancelled."""
        return self._cancelled.is_set()

    @property
    def cancel_reason(self) -> str:
        """Why the run was cancelled, or empty."""
        return self._cancel_reason

    async def wait_cancelled(self) -> None:
        """Returns once the run is cancelled."""
        await self._cancelled.wait()

    def mark_cancelled(self, reason: str) -> None:
        """Records the cancellation (the SDK calls it before it cancels the handler)."""
        if not self._cancelled.is_set():
            self._cancel_reason = reason
            self._cancelled.set()

    # Output.

    async def token(self, text: str) -> None:
        """Appends generated text to the run's output (long text is split into several tokens)."""
        for start in range(0, len(text), MAX_TOKEN_CHARS):
            event = run_pb2.RunEvent()
            event.token.text = text[start : start + MAX_TOKEN_CHARS]
            await self._output.put(event)

    async def log(self, level: str | int, message: str) -> None:
        """Writes a log line to the run's output.

        Args:
            level: `debug`, `info`, `warning` or `error` (or a `LogLevel` number).
            message: The line; cut to 16 KiB characters. An empty line is not sent.

        Raises:
            ValueError: The level is not one of those.
        """
        number = LOG_LEVELS.get(level.lower()) if isinstance(level, str) else int(level)
        if number not in LOG_LEVELS.values():
            raise ValueError(f"log level {level!r} is not debug, info, warning or error")
        if not message:
            return
        event = run_pb2.RunEvent()
        event.log.level = number  # type: ignore[assignment]
        event.log.message = message[:MAX_LOG_CHARS]
        await self._output.put(event)

    async def artifact(
        self,
        artifact_id: str,
        content: str | bytes | Any,
        *,
        name: str = "",
        mime_type: str = "",
        append: bool = False,
        last_chunk: bool = True,
    ) -> None:
        """Sends a chunk of an artifact: `str` as text, `bytes` as data, anything else as JSON.

        Content larger than one chunk (1 MiB) is sent as several chunks that append to the first.

        Args:
            artifact_id: The artifact's identifier; every chunk of one artifact has the same one.
            content: The chunk's content.
            name: Human-readable name, such as a file name.
            mime_type: Media type of the content, such as `text/markdown`.
            append: Whether this chunk extends the artifact's earlier chunks (else it replaces them).
            last_chunk: Whether this is the artifact's last chunk.

        Raises:
            ValueError: The artifact id is not 1-128 printable characters without spaces.
        """
        if not ARTIFACT_ID_RE.match(artifact_id):
            raise ValueError(f"artifact id {artifact_id!r} must be 1-128 printable characters without spaces")
        pieces: list[str | bytes | struct_pb2.Value]
        if isinstance(content, str):
            pieces = [content[i : i + MAX_CHUNK_CHARS] for i in range(0, len(content), MAX_CHUNK_CHARS)]
        elif isinstance(content, bytes | bytearray | memoryview):
            raw = bytes(content)
            pieces = [raw[i : i + MAX_CHUNK_BYTES] for i in range(0, len(raw), MAX_CHUNK_BYTES)]
        else:
            pieces = [to_value(content)]
        pieces = pieces or [content if isinstance(content, str) else b""]
        for i, piece in enumerate(pieces):
            event = run_pb2.RunEvent()
            chunk = event.artifact
            chunk.artifact_id = artifact_id
            chunk.name = name
            chunk.mime_type = mime_type
            chunk.append = append or i > 0
            chunk.last_chunk = last_chunk and i == len(pieces) - 1
            if isinstance(piece, str):
                chunk.text = piece
            elif isinstance(piece, bytes):
                chunk.data = piece
            else:
                chunk.json.CopyFrom(piece)
            await self._output.put(event)

    async def flush(self) -> None:
        """Waits until the mesh has stored every event queued so far."""
        await self._output.drain()

    # Calls.

    def _timeout(self, timeout_s: float | None) -> float | None:
        remaining = self.time_remaining()
        if timeout_s is None:
            return remaining if remaining else None
        return min(timeout_s, remaining) if remaining else timeout_s

    async def call(
        self,
        capability_id: str,
        arguments: Mapping[str, Any] | struct_pb2.Struct | None = None,
        *,
        version: str = "",
        timeout_s: float | None = None,
        idempotency_key: str = "",
    ) -> Any:
        """Calls a capability (another agent's skill, or any provider's) as part of this run.

        The call is signed with the agent's key and names this run as its parent, so the mesh checks it
        against the agent's tool grants and the call depth.

        Args:
            capability_id: Capability to call, such as `crm.lead.fetch`.
            arguments: Its arguments.
            version: Version wanted, as the router takes it (empty for the highest).
            timeout_s: Deadline of the call; defaults to the time left of this run.
            idempotency_key: Makes a non-idempotent call safe for the router to retry.

        Returns:
            The result as plain Python (dicts, lists, str, int, float, bool, None).

        Raises:
            AgentError: The mesh refused the call or the callee failed (typed by reason, for example
                `ToolNotGrantedError` or `CallDepthExceededError`).
        """
        return await self._calls.call(
            capability_id,
            to_struct(arguments),
            parent_run_id=self.run_id,
            trace_id=self.trace_id,
            version=version,
            timeout_s=self._timeout(timeout_s),
            idempotency_key=idempotency_key,
        )

    def call_stream(
        self,
        capability_id: str,
        arguments: Mapping[str, Any] | struct_pb2.Struct | None = None,
        *,
        version: str = "",
        timeout_s: float | None = None,
        idempotency_key: str = "",
    ) -> AsyncIterator[Any]:
        """Calls a capability as part of this run and yields its chunks as they come.

        Text chunks come as `str`, binary ones as `bytes`, data chunks as plain Python; another agent's
        skill streams its tokens as text, then its result as data.

        Raises:
            AgentError: The mesh refused the call, or the stream ended with an error.
        """
        return self._calls.call_stream(
            capability_id,
            to_struct(arguments),
            parent_run_id=self.run_id,
            trace_id=self.trace_id,
            version=version,
            timeout_s=self._timeout(timeout_s),
            idempotency_key=idempotency_key,
        )

    def __repr__(self) -> str:
        return f"TaskContext(run_id={self.run_id!r}, skill={self.skill!r})"
