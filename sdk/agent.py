"""`Agent`: register with the mesh, hold a session, run tasks with skill handlers, call other agents.

The session runs over `AgentService.Connect` (a bidirectional stream; `mode="stream"`, the default) or,
for agents that cannot hold a stream, over the unary calls `RecordHeartbeat`, `PullAssignments`,
`PublishRunOutput` and `CompleteRun` (`mode="unary"`). Either way the agent:

1. registers its manifest, signed with its Ed25519 key (one is generated unless given), and keeps the
   token and session it gets;
2. says hello and heartbeats every interval with its load (CPU, memory, active runs, uptime);
3. accepts assignments up to `max_concurrency` (refusing more with RESOURCE_EXHAUSTED) and runs each
   with the handler of its skill, concurrently; output is batched per run (see `_agent_task`);
4. completes each run with the handler's result, or its exception as the run's error;
5. stops a handler when the mesh cancels its run;
6. reconnects with backoff when the channel breaks, registering again (with its token, resuming its
   session) when the mesh no longer knows the session; stops for good, with `AgentRevokedError`, when
   its token was revoked or a newer registration took over;
7. on `stop()`, takes no new runs, lets running ones finish for `stop_grace_s`, cancels the rest, signs
   off (DisconnectAgent: the mesh hands unfinished runs to other agents at once) and closes the channel.

Example:
    ```python
    agent = Agent("com.acme.sales", version="1.0.0", tenant_id="t1", mesh="127.0.0.1:50051",
                  tool_grants=["crm.*"], max_concurrency=4)


    @agent.skill("crm.lead.summarize")
    async def summarize(task: TaskContext) -> dict[str, Any]:
        lead = await task.call("crm.lead.fetch", {"id": task.inputs["id"]})
        await task.token(f"Lead {lead['name']}: ")
        return {"summary": "…"}


    agent.run()  # until SIGTERM / Ctrl-C
    ```
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import logging
import os
import re
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from powerx.agent.v1 import agent_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import agent_service_pb2_grpc as svc_grpc
from powerx.router.v1 import router_service_pb2 as rt
from powerx.router.v1 import router_service_pb2_grpc as rt_grpc
from sdk import signing
from sdk._agent_errors import (
    AgentError,
    AgentExistsError,
    AgentRevokedError,
    SessionNotFoundError,
    TaskError,
)
from sdk._agent_load import LoadSampler
from sdk._agent_session import (
    Link,
    LinkDown,
    RunGone,
    Session,
    StreamLink,
    UnaryLink,
    ack_request,
    completion,
)
from sdk._agent_state import read_state, write_state
from sdk._agent_task import RunOutput, TaskContext, to_struct
from sdk.dispatch import CAPABILITY_ID_RE, SEMVER_RE, to_python, to_value
from sdk.lease import backoff_s
from sdk.provider import PROVIDER_ID_RE, TENANT_ID_RE
from sdk.signing import AgentKey

log = logging.getLogger("powerx.sdk.agent")

AGENT_ID_RE = PROVIDER_ID_RE  # agent and provider ids follow the same rule (an agent is a provider)
GRANT_RE = re.compile(r"^(\*|[a-z0-9][a-z0-9._/-]{0,190}(\.\*)?)$")
TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")

TENANT_KEY = "x-tenant-id"
AUTHORIZATION_KEY = "authorization"
TRACEPARENT_KEY = "traceparent"

Mode = Literal["stream", "unary"]
Handler = Callable[[TaskContext], Awaitable[Any]]
HandlerT = TypeVar("HandlerT", bound=Handler)

MAX_CALL_TIMEOUT_S = 10.0
RECONNECT_PAUSE_S = 0.05
SIGN_OFF_TIMEOUT_S = 2.0
# Times a failed output or completion is checked against the run (GetRun) before the run counts as gone.
MAX_VERIFICATIONS = 3
# A call from a run the mesh has not yet seen accepted is tried again this often, after 5 ms, 10 ms, ...
PARENT_RETRIES = 8
PARENT_RETRY_S = 0.005
TERMINAL_RUN_STATES = frozenset(
    {run_pb2.RUN_STATE_SUCCEEDED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED}
)


def _is_coroutine_function(fn: object) -> bool:
    # A plain bool (not inspect's TypeGuard) keeps the decorated handler's own type.
    return inspect.iscoroutinefunction(fn)


@dataclass
class AgentStats:
    """What the agent did since it started.

    Attributes:
        runs_started: Runs it accepted.
        runs_succeeded: Runs it completed with a result.
        runs_failed: Runs it completed with an error.
        runs_cancelled: Runs it stopped because the mesh cancelled them (or took them back).
        runs_refused: Assignments it refused because it was at capacity.
        output_events: Output events the mesh stored.
        output_batches: Batches those events went in (`run_output` messages or PublishRunOutput calls).
        connections: Sessions opened (welcomes on the channel, or first heartbeats in unary mode).
        registrations: Successful RegisterAgent calls.
    """

    runs_started: int = 0
    runs_succeeded: int = 0
    runs_failed: int = 0
    runs_cancelled: int = 0
    runs_refused: int = 0
    output_events: int = 0
    output_batches: int = 0
    connections: int = 0
    registrations: int = 0


@dataclass
class _Slot:
    """One run in the agent's hands."""

    ctx: TaskContext
    output: RunOutput
    task: asyncio.Task[None] | None = None
    # running -> gone (the mesh took it back: report nothing), stopped (the agent stops: report nothing),
    # aborted (the mesh refused its output: complete it with `abort_error`).
    state: str = "running"
    abort_error: status_pb2.Status | None = None
    handler_done: bool = False

    @property
    def run_id(self) -> str:
        return self.ctx.run_id


class Agent:
    """An agent in the PowerX mesh: serves skills as runs and calls other agents' skills.

    Declare skills with the `skill` decorator, then `start()` (or `async with agent:`, or `run()` in a
    script). See the module docstring for what the agent does while it runs.

    Args:
        agent_id: Stable reverse-DNS identifier, lower case (`[a-z0-9._-]`), such as `com.acme.sales`.
        version: Semantic version of the agent.
        tenant_id: Tenant that owns the agent.
        mesh: The mesh's gRPC address, `host:port`.
        tool_grants: Capability ids or patterns (`crm.lead.*`, `*`) the agent may call.
        max_concurrency: Runs the agent executes at once (1 to 1,000).
        heartbeat_interval_s: Heartbeat interval asked for (1 s to 5 min); the mesh may grant another.
        key: Ed25519 key that signs the manifest and every agent-to-agent call; generated when None.
        sign: Whether to sign the manifest and calls (an unsigned agent cannot call other agents).
        mode: `stream` (the Connect session channel) or `unary` (heartbeat and long-poll calls).
        display_name: Human-readable name.
        description: What the agent does.
        author: Who publishes it.
        roles: Roles it plays, for role-scoped scheduling.
        labels: Free-form labels.
        tenant_scopes: Tenants allowed to run its skills besides the owner (`*` for all).
        region: Region it runs in, for region affinity.
        cost_weight: Relative cost of a run on it, for cost-weighted scheduling.
        token: Token of an earlier registration (`agt_…`), so that a restarted agent may register again.
        session_id: Session of that registration, to resume it (its runs stay with the agent).
        state_path: File that keeps the token, session and key across restarts (created with mode 0600);
            its values are used when `token`, `session_id` and `key` are not given.
        credentials: `grpc.ChannelCredentials` for the mesh, or None for a plaintext channel.
        metadata: Extra metadata for every call to the mesh.
        connect_timeout_s: How long `start()` tries to register and connect.
        stop_grace_s: How long `stop()` lets running handlers finish before cancelling them.
        call_timeout_s: Default deadline of `call`/`call_stream` outside a run (None: the router's).
        max_batch_events: Most output events sent in one batch.
        poll_wait_s: Long-poll wait of PullAssignments in unary mode (at most 60 s).
        max_backoff_s: Longest pause between reconnection attempts.
        sign_off: Whether `stop()` takes the agent offline at once (DisconnectAgent), so the mesh hands
            its unfinished runs on without waiting for missed heartbeats.

    Raises:
        ValueError: An argument is malformed.
    """

    def __init__(
        self,
        agent_id: str,
        *,
        version: str,
        tenant_id: str,
        mesh: str,
        tool_grants: Sequence[str] = (),
        max_concurrency: int = 1,
        heartbeat_interval_s: float = 10.0,
        key: AgentKey | None = None,
        sign: bool = True,
        mode: Mode = "stream",
        display_name: str = "",
        description: str = "",
        author: str = "",
        roles: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        tenant_scopes: Sequence[str] = (),
        region: str = "",
        cost_weight: float = 0.0,
        token: str | None = None,
        session_id: str | None = None,
        state_path: str | os.PathLike[str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Mapping[str, str] | None = None,
        connect_timeout_s: float = 10.0,
        stop_grace_s: float = 5.0,
        call_timeout_s: float | None = None,
        max_batch_events: int = 100,
        poll_wait_s: float = 20.0,
        max_backoff_s: float = 5.0,
        sign_off: bool = True,
    ) -> None:
        if not AGENT_ID_RE.match(agent_id):
            raise ValueError(f"agent id {agent_id!r} must match {AGENT_ID_RE.pattern}")
        if not SEMVER_RE.match(version):
            raise ValueError(f"agent version {version!r} is not a semantic version such as 1.0.0")
        if not TENANT_ID_RE.match(tenant_id):
            raise ValueError(f"tenant id {tenant_id!r} must match {TENANT_ID_RE.pattern}")
        if not 1 <= max_concurrency <= 1000:
            raise ValueError(f"max_concurrency must be 1 to 1000, not {max_concurrency}")
        if not 1.0 <= heartbeat_interval_s <= 300.0:
            raise ValueError(f"heartbeat_interval_s must be 1 to 300 seconds, not {heartbeat_interval_s}")
        if mode not in ("stream", "unary"):
            raise ValueError(f"mode must be 'stream' or 'unary', not {mode!r}")
        for grant in tool_grants:
            if not GRANT_RE.match(grant):
                raise ValueError(f"tool grant {grant!r} is not a capability id, a prefix such as crm.*, or *")
        if not 0 < poll_wait_s <= 60:
            raise ValueError(f"poll_wait_s must be more than 0 and at most 60 seconds, not {poll_wait_s}")
        self.agent_id = agent_id
        self.version = version
        self.tenant_id = tenant_id
        self.mesh = mesh
        self.tool_grants = list(tool_grants)
        self.max_concurrency = max_concurrency
        self.heartbeat_interval_s = heartbeat_interval_s
        self.sign = sign
        self.mode: Mode = mode
        self.display_name = display_name
        self.description = description
        self.author = author
        self.roles = list(roles)
        self.labels = dict(labels or {})
        self.tenant_scopes = list(tenant_scopes)
        self.region = region
        self.cost_weight = cost_weight
        self.state_path = Path(state_path) if state_path is not None else None
        self.connect_timeout_s = connect_timeout_s
        self.stop_grace_s = stop_grace_s
        self.call_timeout_s = call_timeout_s
        self.max_batch_events = max_batch_events
        self.poll_wait_s = poll_wait_s
        self.max_backoff_s = max_backoff_s
        self.sign_off = sign_off
        self.stats = AgentStats()
        self._key = key or AgentKey()
        self._key_given = key is not None
        self._token = token or ""
        self._session_id = session_id or ""
        self._credentials = credentials
        self._metadata = tuple(sorted((metadata or {}).items()))
        self._handlers: dict[str, Handler] = {}
        self._fallback: Handler | None = None
        self._load = LoadSampler()
        self._interval_s = heartbeat_interval_s
        self._channel: Any = None
        self._agents: Any = None
        self._router: Any = None
        self._main: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._stopping = False
        self._must_register = True
        self._fatal: BaseException | None = None
        self._last_error: BaseException | None = None
        self._session: Session | None = None
        self._connected = False
        # Events are made by start(), on the loop that runs the agent.
        self._changed = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._slots: dict[str, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._registered: agent_pb2.Agent | None = None

    # Declaring skills.

    def skill(self, skill_id: str) -> Callable[[HandlerT], HandlerT]:
        """Declares a skill served by the decorated `async def handler(task: TaskContext)`.

        The handler's return value (JSON-like) becomes the run's result; an exception becomes the run's
        error (`AgentError`/`TaskError` with their code and reason, others as UNKNOWN).

        Args:
            skill_id: Capability id of the skill, such as `crm.lead.summarize`.

        Returns:
            A decorator that registers the handler and returns it unchanged.
        """

        def register(handler: HandlerT) -> HandlerT:
            if self._main is not None:
                raise RuntimeError("declare skills before start(): they are registered once")
            if not CAPABILITY_ID_RE.match(skill_id):
                raise ValueError(f"skill id {skill_id!r} must match {CAPABILITY_ID_RE.pattern}")
            if not _is_coroutine_function(handler):
                raise TypeError(f"the handler of {skill_id} must be an `async def` function")
            if skill_id in self._handlers:
                raise ValueError(f"skill {skill_id} is declared twice")
            self._handlers[skill_id] = handler
            return handler

        return register

    def on_task(self, handler: HandlerT) -> HandlerT:
        """Declares the handler of runs assigned without a skill or with one not declared here."""
        if not _is_coroutine_function(handler):
            raise TypeError("the task handler must be an `async def` function")
        self._fallback = handler
        return handler

    @property
    def skills(self) -> list[str]:
        """The declared skills, sorted."""
        return sorted(self._handlers)

    # What the agent is.

    @property
    def key(self) -> AgentKey:
        """The agent's Ed25519 key."""
        return self._key

    @property
    def token(self) -> str:
        """The agent's current token (`agt_…`), or empty before it registered."""
        return self._token

    @property
    def session_id(self) -> str:
        """The agent's current session, or empty before it registered."""
        return self._session_id

    @property
    def connected(self) -> bool:
        """Whether the agent holds a live session (welcomed on its channel, or heartbeating)."""
        return self._connected

    @property
    def running(self) -> bool:
        """Whether the agent has started and not stopped."""
        return self._main is not None

    @property
    def active_runs(self) -> list[str]:
        """Runs the agent is executing now."""
        return sorted(run_id for run_id, slot in self._slots.items() if slot.state in ("running", "aborted"))

    @property
    def registration(self) -> agent_pb2.Agent | None:
        """The agent as the mesh stored it at the last registration."""
        return self._registered

    def manifest(self) -> agent_pb2.Agent:
        """The manifest the agent registers: skills, grants, runtime; signed when `sign` is set."""
        agent = agent_pb2.Agent(
            agent_id=self.agent_id,
            version=self.version,
            display_name=self.display_name,
            description=self.description,
            author=self.author,
            skills=self.skills,
            tool_grants=self.tool_grants,
            labels=self.labels,
            roles=self.roles,
            tenant_scopes=self.tenant_scopes,
        )
        runtime = agent.runtime
        runtime.heartbeat_interval.FromNanoseconds(int(self.heartbeat_interval_s * 1e9))
        runtime.max_concurrency = self.max_concurrency
        runtime.isolation_level = agent_pb2.ISOLATION_LEVEL_THREAD
        runtime.region = self.region
        runtime.cost_weight = self.cost_weight
        if self.sign:
            self._key.sign_manifest(agent)
        return agent

    # Lifecycle.

    async def start(self) -> None:
        """Registers, opens the session and returns once the mesh may schedule runs on the agent.

        Raises:
            RuntimeError: The agent is already running.
            AgentError: The mesh refused the registration (for example `AgentExistsError` when the
                agent is registered and no token was given), or no session came up within
                `connect_timeout_s` (code UNAVAILABLE).
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._main is not None:
                raise RuntimeError(f"agent {self.agent_id} is already running")
            self._stopping = False
            self._fatal = None
            self._last_error = None
            self._must_register = True
            self._changed = asyncio.Event()
            self._stop_requested = asyncio.Event()
            self._slot_freed = asyncio.Event()
            try:
                if self.state_path is not None:
                    await self._load_state()
                self._open_channel()
                loop = self._stream_session if self.mode == "stream" else self._unary_session
                self._main = asyncio.create_task(self._main_loop(loop), name=f"agent:{self.agent_id}")
                try:
                    await self.wait_connected(timeout_s=self.connect_timeout_s)
                except TimeoutError:
                    last = self._last_error
                    raise AgentError(
                        code_pb2.UNAVAILABLE,
                        f"agent {self.agent_id} could not connect to the mesh at {self.mesh} within "
                        f"{self.connect_timeout_s:g} s" + (f" (last error: {last})" if last else ""),
                    ) from None
            except BaseException:
                await self._shutdown(graceful=False)
                raise
            log.info(
                "agent %s connected to %s (session %s, skills %s)",
                self.agent_id,
                self.mesh,
                self._session_id,
                ", ".join(self.skills) or "none",
                extra={"agent_id": self.agent_id, "tenant_id": self.tenant_id},
            )

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops: refuses new runs, waits for running ones (up to the grace), cancels the rest, signs off.

        Args:
            grace_s: How long running handlers may take to finish; defaults to `stop_grace_s`.
        """
        if self._lock is None:
            return
        async with self._lock:
            if self._main is None:
                return
            await self._shutdown(graceful=True, grace_s=self.stop_grace_s if grace_s is None else grace_s)

    async def wait_connected(self, *, count: int = 1, timeout_s: float | None = None) -> None:
        """Waits until the agent holds a session, and has opened at least `count` sessions in all.

        Raises:
            TimeoutError: Not within `timeout_s`.
            AgentError: The agent stopped for good (the error that stopped it).
            RuntimeError: The agent is not running.
        """
        async with asyncio.timeout(timeout_s):
            while not (self._connected and self.stats.connections >= count):
                self._raise_if_stopped()
                await self._changed.wait()

    async def wait_stopped(self) -> None:
        """Waits until the agent stops on its own (its token was revoked, say) or is stopped.

        Raises:
            AgentError: The error that stopped the agent, if one did.
        """
        main = self._main
        if main is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(main)
        if self._fatal is not None:
            raise self._fatal

    def _raise_if_stopped(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._main is None or self._main.done():
            raise RuntimeError(f"agent {self.agent_id} is not running")

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_forever(self, on_ready: Callable[[Agent], object] | None = None) -> None:
        """Starts, calls `on_ready(self)`, serves until SIGTERM or SIGINT (or `stop()`), then stops.

        Raises:
            AgentError: The agent could not start, or stopped for good (for example its token was
                revoked).
        """
        loop = asyncio.get_running_loop()
        await self.start()
        signalled = asyncio.Event()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, signalled.set)
                installed.append(sig)
        try:
            if on_ready is not None:
                on_ready(self)
            waiters = [asyncio.create_task(signalled.wait()), asyncio.create_task(self.wait_stopped())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await waiter
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            fatal = self._fatal
            await self.stop()
        if fatal is not None:
            raise fatal

    run_forever = serve_forever

    def run(self, on_ready: Callable[[Agent], object] | None = None) -> None:
        """Blocking helper for scripts: `asyncio.run(self.serve_forever(on_ready))`."""
        asyncio.run(self.serve_forever(on_ready))

    def _open_channel(self) -> None:
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.mesh, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self.mesh, self._credentials, options=options)
        self._agents = svc_grpc.AgentServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._router = rt_grpc.RouterServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def _shutdown(self, *, graceful: bool, grace_s: float = 0.0) -> None:
        self._stopping = True
        self._stop_requested.set()
        self._slot_freed.set()
        try:
            if graceful and self._tasks and grace_s > 0:
                await asyncio.wait(set(self._tasks), timeout=grace_s)
            await self._cancel_all("the agent is stopping", "stopped")
            main, self._main = self._main, None
            if main is not None:
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await main
            if graceful and self.sign_off and self._fatal is None and self._token:
                await self._sign_off()
        finally:
            self._main = None
            self._connected = False
            self._notify()
            channel, self._channel = self._channel, None
            if channel is not None:
                await channel.close()

    async def _cancel_all(self, reason: str, state: str) -> None:
        for slot in list(self._slots.values()):
            self._cancel_slot(slot, reason, state)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _sign_off(self) -> None:
        """Takes the agent offline at once, unless a newer registration of it holds the session."""
        md = self._auth_metadata()
        try:
            got = await self._agents.GetAgent(
                svc.GetAgentRequest(agent_id=self.agent_id), metadata=md, timeout=SIGN_OFF_TIMEOUT_S
            )
            if got.agent.session_id != self._session_id:
                return
            await self._agents.DisconnectAgent(
                svc.DisconnectAgentRequest(agent_id=self.agent_id, reason="agent stopped"),
                metadata=md,
                timeout=SIGN_OFF_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            log.info("agent %s could not sign off: %s %s", self.agent_id, err.code().name, err.details())

    def _notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    # Registration.

    def _auth_metadata(self) -> list[tuple[str, str]]:
        md = [(TENANT_KEY, self.tenant_id), *self._metadata]
        if self._token:
            md.append((AUTHORIZATION_KEY, f"Bearer {self._token}"))
        return md

    async def _register(self) -> None:
        req = svc.RegisterAgentRequest(agent=self.manifest())
        if self._token and self._session_id:
            req.resume_session_id = self._session_id
        try:
            resp = await self._agents.RegisterAgent(
                req, metadata=self._auth_metadata(), timeout=MAX_CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            error = AgentError.from_rpc_error(err)
            if isinstance(error, AgentExistsError):
                error.message += (
                    " (give the agent its token, for example with state_path, or revoke the old token)"
                )
                error.args = (error.message,)
            raise error from None
        self._token = resp.agent_token
        self._session_id = resp.session_id
        self._registered = resp.agent
        interval = resp.heartbeat_interval.ToNanoseconds() / 1e9
        self._interval_s = interval or self.heartbeat_interval_s
        self._must_register = False
        self.stats.registrations += 1
        log.info(
            "agent %s registered (session %s)",
            self.agent_id,
            self._session_id,
            extra={"agent_id": self.agent_id},
        )
        if self.state_path is not None:
            await self._save_state()

    def _on_error(self, exc: BaseException) -> None:
        """Decides what a failed registration or session means; raises the error when the agent must stop."""
        self._last_error = exc
        error = AgentError.from_rpc_error(exc) if isinstance(exc, grpc.aio.AioRpcError) else exc
        if not isinstance(error, AgentError):
            expected = isinstance(error, LinkDown | TimeoutError | OSError)
            log.warning("agent %s lost its session: %r", self.agent_id, error, exc_info=not expected)
            return
        if error.reason == "AGENT_TOKEN_INVALID":  # the mesh never issued it: start over
            self._token, self._session_id, self._must_register = "", "", True
        elif isinstance(error, SessionNotFoundError):
            self._must_register = True
        elif isinstance(error, AgentRevokedError | AgentExistsError) or not error.transient:
            raise error
        log.warning(
            "agent %s: %s (%s); reconnecting",
            self.agent_id,
            error.message,
            error.reason or code_pb2.Code.Name(error.code),
        )

    async def _main_loop(self, session: Callable[[], Awaitable[bool]]) -> None:
        failures = 0
        try:
            while not self._stopping:
                opened = False
                try:
                    if self._must_register:
                        await self._register()
                    opened = await session()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._on_error(exc)
                if self._stopping:
                    break
                failures = 0 if opened else failures + 1
                pause = backoff_s(failures, self.max_backoff_s) if failures else RECONNECT_PAUSE_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), pause)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fatal = exc
            log.error("agent %s stopped: %s", self.agent_id, exc)  # noqa: TRY400 - the reason says it all
            await self._cancel_all(f"agent stopped: {exc}", "stopped")
        finally:
            self._connected = False
            self._notify()

    def _connected_now(self) -> None:
        self._connected = True
        self.stats.connections += 1
        self._notify()

    def _disconnected(self) -> None:
        self._connected = False
        self._notify()

    # The session channel (mode "stream").

    def _heartbeat(self) -> svc.ConnectRequest:
        msg = svc.ConnectRequest()
        msg.heartbeat.load.CopyFrom(self._load.sample(self._active()))
        return msg

    async def _stream_session(self) -> bool:
        call = self._agents.Connect(metadata=self._auth_metadata())
        session = Session(call)
        writer = asyncio.create_task(self._write_loop(session), name="agent-session-writer")
        heartbeats: asyncio.Task[None] | None = None
        welcomed = False
        try:
            hello = svc.ConnectRequest()
            hello.hello.agent_id = self.agent_id
            hello.hello.session_id = self._session_id
            hello.hello.load.CopyFrom(self._load.sample(self._active()))
            session.send(hello)
            async with asyncio.timeout(self.connect_timeout_s):
                first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise LinkDown("the mesh ended the session channel before its welcome")
            welcome = first.welcome
            interval = welcome.heartbeat_interval.ToNanoseconds() / 1e9
            self._interval_s = interval or self._interval_s
            self._session = session
            welcomed = True
            self._connected_now()
            heartbeats = asyncio.create_task(self._stream_heartbeats(session), name="agent-heartbeats")
            while True:
                # The mesh sends something (a ping at least) every interval; silence means a dead link.
                async with asyncio.timeout(3 * self._interval_s + 2):
                    msg = await call.read()
                if msg is grpc.aio.EOF:
                    return welcomed
                kind = msg.WhichOneof("kind")
                if kind == "assignment":
                    self._on_assignment(session, msg.assignment)
                elif kind == "cancel":
                    self._on_cancel(msg.cancel.run_id, msg.cancel.reason or "cancelled")
                elif kind == "ping":
                    session.send(self._heartbeat())
                elif kind == "receipt":
                    if not session.receipt(msg.receipt) and msg.receipt.status.code != code_pb2.OK:
                        log.debug(
                            "agent %s: answer about %s refused: %s",
                            self.agent_id,
                            msg.receipt.run_id,
                            msg.receipt.status.message,
                        )
                elif kind == "end":
                    log.info(
                        "agent %s: the mesh ended the session (%s)",
                        self.agent_id,
                        msg.end.reason,
                        extra={"agent_id": self.agent_id},
                    )
                    return welcomed
        finally:
            session.close()
            if self._session is session:
                self._session = None
                self._disconnected()
            for task in (writer, heartbeats):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            call.cancel()

    async def _write_loop(self, session: Session) -> None:
        try:
            while True:
                msg = await session.outq.get()
                await session.call.write(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call ended; the reader sees why
            log.debug("agent %s: session write failed: %r", self.agent_id, exc)
            session.close()

    async def _stream_heartbeats(self, session: Session) -> None:
        with contextlib.suppress(LinkDown):
            while True:
                await asyncio.sleep(self._interval_s)
                session.send(self._heartbeat())

    def _on_assignment(self, session: Session, run: run_pb2.Run) -> None:
        held = self._slots.get(run.run_id)
        if held is not None and held.state == "running":
            session.send(ack_request(run.run_id))  # offered again: the mesh lost the first answer
            return
        if self._stopping:
            # Left unanswered: a refusal would requeue the run, and the mesh would hand it straight back
            # while this agent is live; signing off hands it on once.
            log.debug("agent %s is stopping: run %s left to the mesh", self.agent_id, run.run_id)
            return
        active = self._active()
        if active >= self.max_concurrency:
            session.send(
                ack_request(
                    run.run_id,
                    code_pb2.RESOURCE_EXHAUSTED,
                    f"agent {self.agent_id} runs {active} of {self.max_concurrency} already",
                )
            )
            self.stats.runs_refused += 1
            return
        session.send(ack_request(run.run_id))
        self._start_run(run)

    # Heartbeats and long polls (mode "unary").

    async def _rpc(self, method: Any, request: Any, timeout_s: float = MAX_CALL_TIMEOUT_S) -> Any:
        try:
            return await method(request, metadata=self._auth_metadata(), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise AgentError.from_rpc_error(err) from None

    async def _record_heartbeat(self) -> svc.RecordHeartbeatResponse:
        req = svc.RecordHeartbeatRequest(
            agent_id=self.agent_id,
            session_id=self._session_id,
            load=self._load.sample(self._active()),
        )
        resp: svc.RecordHeartbeatResponse = await self._rpc(self._agents.RecordHeartbeat, req)
        interval = resp.heartbeat_interval.ToNanoseconds() / 1e9
        self._interval_s = interval or self._interval_s
        return resp

    async def _unary_session(self) -> bool:
        await self._record_heartbeat()
        self._connected_now()
        tasks = [
            asyncio.create_task(self._unary_heartbeats(), name="agent-heartbeats"),
            asyncio.create_task(self._pull_loop(), name="agent-pull"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            return True
        finally:
            self._disconnected()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _unary_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._record_heartbeat()

    async def _pull_loop(self) -> None:
        while True:
            if self._stopping:
                await asyncio.Event().wait()  # keep heartbeating while running handlers finish
            if (
                self._active() >= self.max_concurrency
            ):  # wait for a free slot, but still hear about cancellations now and then
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), self._interval_s)
                if self._stopping:
                    continue
            free = self.max_concurrency - self._active()
            wait_s = self.poll_wait_s if free > 0 else 0.0
            req = svc.PullAssignmentsRequest(
                agent_id=self.agent_id,
                session_id=self._session_id,
                max_count=max(1, free),
            )
            req.wait.FromNanoseconds(int(wait_s * 1e9))
            resp: svc.PullAssignmentsResponse = await self._rpc(
                self._agents.PullAssignments, req, timeout_s=wait_s + MAX_CALL_TIMEOUT_S
            )
            for cancel in resp.cancellations:
                self._on_cancel(cancel.run_id, cancel.reason or "cancelled")
            for run in resp.runs:  # already RUNNING: pulled runs cannot be refused
                held = self._slots.get(run.run_id)
                if held is None or held.state != "running":
                    self._start_run(run)

    # Runs.

    def _start_run(self, run: run_pb2.Run) -> None:
        slot_ref: list[_Slot] = []

        async def send(events: list[run_pb2.RunEvent], key: str) -> None:
            await self._send_output(slot_ref[0], events, key)

        output = RunOutput(
            send,
            lambda exc: self._output_failed(slot_ref[0], exc),
            max_batch_events=self.max_batch_events,
        )
        slot = _Slot(ctx=TaskContext(run, output, self, self.agent_id), output=output)
        slot_ref.append(slot)
        self._slots[run.run_id] = slot
        self.stats.runs_started += 1
        task = asyncio.create_task(self._execute(slot), name=f"agent-run:{run.run_id}")
        slot.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _active(self) -> int:
        """Runs the mesh counts as this agent's: being executed or being completed."""
        return sum(1 for slot in self._slots.values() if slot.state in ("running", "aborted"))

    def _cancel_slot(self, slot: _Slot, reason: str, state: str) -> None:
        if slot.state != "running":
            return
        slot.state = state
        slot.ctx.mark_cancelled(reason)
        # An aborted run whose handler is done is being completed (with its error): let that finish.
        if slot.task is not None and (state != "aborted" or not slot.handler_done):
            slot.task.cancel()

    def _on_cancel(self, run_id: str, reason: str) -> None:
        slot = self._slots.get(run_id)
        if slot is not None and slot.state == "running":
            log.info("agent %s: run %s cancelled: %s", self.agent_id, run_id, reason)
            self.stats.runs_cancelled += 1
            self._cancel_slot(slot, reason, "gone")

    def _output_failed(self, slot: _Slot, exc: BaseException) -> None:
        if isinstance(exc, RunGone):
            if slot.state == "running":
                self.stats.runs_cancelled += 1
            self._cancel_slot(slot, f"the mesh took the run back: {exc}", "gone")
            return
        log.error("agent %s: the mesh refused the output of run %s: %s", self.agent_id, slot.run_id, exc)
        if slot.state == "running":
            slot.abort_error = status_pb2.Status(
                code=code_pb2.INTERNAL, message=f"the mesh refused the run's output: {exc}"[:4096]
            )
            self._cancel_slot(slot, "the run's output was refused", "aborted")

    async def _execute(self, slot: _Slot) -> None:
        try:
            outcome = await self._run_handler(slot)
            slot.handler_done = True
            if outcome is None or slot.state in ("gone", "stopped"):
                return
            result, error = outcome
            if slot.state == "running":
                try:  # what the handler produced goes before the end, even when it failed
                    await slot.output.drain()
                except Exception:
                    if slot.state != "aborted":
                        return
            if slot.state == "aborted":
                result, error = None, slot.abort_error
            await self._complete(slot, result, error)
        finally:
            await slot.output.close()
            if self._slots.get(slot.run_id) is slot:
                del self._slots[slot.run_id]
            self.stats.output_events += slot.output.stored
            self.stats.output_batches += slot.output.batches
            self._slot_freed.set()

    async def _run_handler(
        self, slot: _Slot
    ) -> tuple[struct_pb2.Value | None, status_pb2.Status | None] | None:
        """Runs the handler: (result, None) or (None, error), or None when there is nothing to report."""
        ctx = slot.ctx
        handler = self._handlers.get(ctx.skill) or self._fallback
        if handler is None:
            missing = TaskError(
                code_pb2.UNIMPLEMENTED,
                f"agent {self.agent_id} has no handler for skill {ctx.skill!r}",
                reason="SKILL_NOT_IMPLEMENTED",
            )
            return None, missing.to_status()
        try:
            return to_value(await handler(ctx)), None
        except asyncio.CancelledError:
            if slot.state in ("gone", "stopped"):
                return None
            if slot.state == "aborted":
                return None, slot.abort_error
            raise
        except AgentError as exc:
            return None, exc.to_status()
        except Exception as exc:
            log.exception("agent %s: run %s (%s) failed", self.agent_id, ctx.run_id, ctx.skill)
            return None, status_pb2.Status(
                code=code_pb2.UNKNOWN, message=f"{type(exc).__name__}: {exc}"[:4096]
            )

    async def _complete(
        self, slot: _Slot, result: struct_pb2.Value | None, error: status_pb2.Status | None
    ) -> None:
        run_id = slot.run_id
        for _ in range(2):
            try:
                await self._deliver(slot, completion(run_id, result, error))
            except RunGone as exc:
                log.info("agent %s: run %s ended elsewhere: %s", self.agent_id, run_id, exc)
                return
            except AgentError as exc:
                if exc.code == code_pb2.INVALID_ARGUMENT and error is None:  # e.g. a result over 2 MiB
                    error = status_pb2.Status(
                        code=code_pb2.INTERNAL, message=f"the mesh refused the run's result: {exc.message}"
                    )
                    continue
                log.error("agent %s: could not complete run %s: %r", self.agent_id, run_id, exc)  # noqa: TRY400
                return
            if error is None:
                self.stats.runs_succeeded += 1
            else:
                self.stats.runs_failed += 1
            return

    async def _send_output(self, slot: _Slot, events: list[run_pb2.RunEvent], key: str) -> None:
        await self._deliver(slot, lambda link: link.output(slot.run_id, events, key))

    async def _link(self) -> Link:
        while True:
            if self.mode == "unary":
                if self._token:
                    return UnaryLink(self._agents, self._rpc)
            else:
                session = self._session
                if session is not None and not session.closed:
                    return StreamLink(session)
            if self._fatal is not None:
                raise RunGone("the agent stopped")
            await self._changed.wait()

    async def _deliver(self, slot: _Slot, send: Callable[[Link], Awaitable[None]]) -> None:
        """Sends an output batch or a completion until the mesh takes it, across reconnects.

        Raises:
            RunGone: The mesh no longer wants the run from this agent.
            AgentError: The mesh refused what was sent (for example it is malformed).
        """
        failures = 0
        checks = 0
        while True:
            link = await self._link()
            try:
                await send(link)
                return
            except LinkDown:
                pass
            except AgentError as exc:
                if (
                    exc.code in (code_pb2.FAILED_PRECONDITION, code_pb2.NOT_FOUND)
                    and checks < MAX_VERIFICATIONS
                ):
                    checks += 1
                    if not await self._still_ours(slot.run_id, link):
                        raise RunGone(exc.message) from None
                    continue
                if exc.code in (code_pb2.FAILED_PRECONDITION, code_pb2.NOT_FOUND):
                    raise RunGone(exc.message) from None
                if not exc.transient:
                    raise
            failures += 1
            await asyncio.sleep(backoff_s(failures, self.max_backoff_s))

    async def _still_ours(self, run_id: str, link: Link) -> bool:
        """Whether a run the mesh refused output for is still this agent's to finish (and accepts it)."""
        try:
            resp = await self._rpc(self._agents.GetRun, svc.GetRunRequest(run_id=run_id))
        except AgentError as exc:
            return exc.transient
        run: run_pb2.Run = resp.run
        if run.agent_id != self.agent_id or run.state in TERMINAL_RUN_STATES:
            return False
        if run.state == run_pb2.RUN_STATE_ASSIGNED:  # the acceptance got lost with a broken channel
            with contextlib.suppress(LinkDown):
                link.ack(run_id)
            return True
        return run.state == run_pb2.RUN_STATE_RUNNING

    # Calls to other agents and capabilities.

    def _call_metadata(
        self, capability_id: str, arguments: struct_pb2.Struct, parent_run_id: str, trace_id: str
    ) -> list[tuple[str, str]]:
        if not self._token:
            raise RuntimeError(f"agent {self.agent_id} is not registered yet: start() it first")
        md = self._auth_metadata()
        if parent_run_id:
            md.append((signing.PARENT_RUN_HEADER, parent_run_id))
        if self.sign:
            md.append(
                (
                    signing.SIGNATURE_HEADER,
                    self._key.sign_call(
                        tenant_id=self.tenant_id,
                        caller_agent_id=self.agent_id,
                        parent_run_id=parent_run_id,
                        capability_id=capability_id,
                        arguments=arguments,
                    ),
                )
            )
        if TRACE_ID_RE.match(trace_id):
            md.append((TRACEPARENT_KEY, f"00-{trace_id}-{secrets.token_hex(8)}-01"))
        return md

    async def call(
        self,
        capability_id: str,
        arguments: Mapping[str, Any] | struct_pb2.Struct | None = None,
        *,
        parent_run_id: str = "",
        trace_id: str = "",
        version: str = "",
        timeout_s: float | None = None,
        idempotency_key: str = "",
    ) -> Any:
        """Calls a capability through the router, signed as this agent; returns its result.

        Inside a run use `TaskContext.call`, which names the run as the parent (for the depth check and
        the run's grants).

        Args:
            capability_id: Capability to call, such as `crm.lead.fetch`.
            arguments: Its arguments.
            parent_run_id: Run (of this agent) the call is part of, or empty.
            trace_id: Trace to join (32 hex digits), or empty.
            version: Version wanted (empty for the highest).
            timeout_s: Deadline of the call; defaults to `call_timeout_s`.
            idempotency_key: Makes a non-idempotent call safe for the router to retry.

        Returns:
            The result as plain Python.

        Raises:
            AgentError: The mesh refused the call or the callee failed (typed by reason).
            RuntimeError: The agent has not registered yet.
        """
        args = to_struct(arguments)
        req = rt.InvokeRequest(
            capability_id=capability_id, version=version, arguments=args, idempotency_key=idempotency_key
        )
        attempt = 0
        while True:
            md = self._call_metadata(capability_id, args, parent_run_id, trace_id)
            try:
                resp = await self._router.Invoke(req, metadata=md, timeout=timeout_s or self.call_timeout_s)
            except grpc.aio.AioRpcError as err:
                error = AgentError.from_rpc_error(err)
                if await self._parent_not_started(error, parent_run_id, attempt):
                    attempt += 1
                    continue
                raise error from None
            return to_python(resp.result)

    async def _parent_not_started(self, error: AgentError, parent_run_id: str, attempt: int) -> bool:
        """Whether a call was refused only because the mesh has not yet taken in the run's acceptance.

        An accepted assignment gets no receipt on the session channel, so a handler that calls at once
        may reach the router before the mesh read the `ack`; the refusal comes before anything was done,
        so the call is made again (freshly signed) after a short pause, while the run is in hand.
        """
        slot = self._slots.get(parent_run_id) if parent_run_id else None
        if (
            error.reason != "PARENT_RUN_NOT_RUNNING"
            or slot is None
            or slot.state != "running"
            or attempt >= PARENT_RETRIES
        ):
            return False
        log.debug("agent %s: run %s not yet seen accepted; calling again", self.agent_id, parent_run_id)
        await asyncio.sleep(PARENT_RETRY_S * 2**attempt)
        return True

    async def call_stream(
        self,
        capability_id: str,
        arguments: Mapping[str, Any] | struct_pb2.Struct | None = None,
        *,
        parent_run_id: str = "",
        trace_id: str = "",
        version: str = "",
        timeout_s: float | None = None,
        idempotency_key: str = "",
    ) -> AsyncIterator[Any]:
        """Calls a capability through the router, signed as this agent, and yields its chunks.

        Text chunks come as `str`, binary ones as `bytes`, data chunks as plain Python.

        Raises:
            AgentError: The mesh refused the call, or the stream ended with an error.
            RuntimeError: The agent has not registered yet.
        """
        args = to_struct(arguments)
        req = rt.InvokeStreamRequest(
            capability_id=capability_id, version=version, arguments=args, idempotency_key=idempotency_key
        )
        attempt = 0
        while True:
            md = self._call_metadata(capability_id, args, parent_run_id, trace_id)
            call = self._router.InvokeStream(req, metadata=md, timeout=timeout_s or self.call_timeout_s)
            started = False
            try:
                async for msg in call:
                    started = True
                    if msg.WhichOneof("kind") == "end":
                        if msg.end.status.code != code_pb2.OK:
                            raise AgentError.from_status(msg.end.status)
                        return
                    chunk = msg.chunk
                    content = chunk.WhichOneof("content")
                    if content == "text":
                        yield chunk.text
                    elif content == "raw":
                        yield chunk.raw
                    elif content == "data":
                        yield to_python(chunk.data)
                return
            except grpc.aio.AioRpcError as err:
                error = AgentError.from_rpc_error(err)
                if not started and await self._parent_not_started(error, parent_run_id, attempt):
                    attempt += 1
                    continue
                raise error from None
            finally:
                call.cancel()

    # Keeping the token across restarts.

    async def _load_state(self) -> None:
        path = self.state_path
        assert path is not None
        state = await asyncio.to_thread(read_state, path)
        if not self._token and isinstance(state.get("agent_token"), str):
            self._token = state["agent_token"]
            if not self._session_id and isinstance(state.get("session_id"), str):
                self._session_id = state["session_id"]
        seed = state.get("private_key")
        if not self._key_given and isinstance(seed, str):
            with contextlib.suppress(binascii.Error, ValueError):
                self._key = AgentKey.from_seed(base64.b64decode(seed, validate=True))

    async def _save_state(self) -> None:
        path = self.state_path
        assert path is not None
        seed = self._key.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        state = {
            "agent_id": self.agent_id,
            "tenant_id": self.tenant_id,
            "mesh": self.mesh,
            "agent_token": self._token,
            "session_id": self._session_id,
            "private_key": base64.b64encode(seed).decode(),
        }
        try:
            await asyncio.to_thread(write_state, path, state)
        except OSError as exc:
            log.warning("agent %s could not save its state to %s: %s", self.agent_id, path, exc)


__all__ = ["Agent", "AgentStats", "TaskContext"]
