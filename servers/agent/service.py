"""The agent manager (seed 002): registration, tokens, heartbeats, lifecycle, runs, scheduling, output.

Transport-free: the servicer adapts it to gRPC, the router reaches it through `AgentDispatch`, the A2A
server through the same run API. Durable state (agents, runs, output) is in `AgentStore`; hot state
(heartbeats, load, mailboxes, live output) in memory, rebuilt at start and from heartbeats.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar

from google.protobuf import struct_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from powerx.agent.v1 import agent_pb2, event_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from sdk import signing
from servers.agent import lifecycle, validation
from servers.agent.lifecycle import DISCONNECTED, LIVE, REGISTERING, RETIRED, DegradePolicy
from servers.agent.live import HELD_RUN_STATES, TERMINAL_RUN_STATES, LiveAgent, LiveRun, OutputWriter
from servers.agent.metrics import AgentMetrics
from servers.agent.scheduler import STRATEGIES, Candidate, pick
from servers.agent.security import (
    LocalNonces,
    LocalQuotas,
    NonceMemory,
    QuotaRule,
    Quotas,
    TokenClaims,
    TokenSigner,
    hashes_equal,
    token_hash,
)
from servers.agent.store import KIND_A2A, KIND_NATIVE, AgentStore, StoredAgent, StoredRun
from servers.common.bus import EventBus, InProcessBus, Subscription
from servers.common.context import CallContext
from servers.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    to_status,
)
from servers.common.streams import stream_end
from servers.common.times import duration_s, seconds_of, timestamp_ms
from servers.common.validate import Violations, next_page_token, page_request
from servers.registry.service import RegistryService, endpoint_id_for, require_tenant

log = logging.getLogger("powerx.agent")
M = TypeVar("M", bound=Message)
DOMAIN = "agent.powerx"  # error domain of statuses sent inside the session channel

QUEUED = run_pb2.RUN_STATE_QUEUED
ASSIGNED = run_pb2.RUN_STATE_ASSIGNED
RUNNING = run_pb2.RUN_STATE_RUNNING
SUCCEEDED = run_pb2.RUN_STATE_SUCCEEDED
FAILED = run_pb2.RUN_STATE_FAILED
CANCELLED = run_pb2.RUN_STATE_CANCELLED
ET = event_pb2
TOPIC_OF = {
    ET.AGENT_EVENT_TYPE_RUN_OUTPUT: ET.AGENT_EVENT_TOPIC_TOKEN,
}
MAX_DEPTH = 3
# Lease of an agent's registry provider: the agent service keeps it alive while the agent is known.
AGENT_LEASE_S = 24 * 3600
LEASE_RENEW_S = 6 * 3600
FINISHED_RUN_KEPT_S = 30.0
LIST_BATCH = 500
# States in which an agent is expected to heartbeat (and is disconnected when it stops).
HEARTBEATING = LIVE | {REGISTERING}


P = ParamSpec("P")
R = TypeVar("R")


def _uninterruptible(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Runs a state change to its end even when the call that started it is cancelled.

    A caller going away (a cancelled RPC, an agent closing its stream right after its last message)
    must not leave a change half made: memory updated but not stored, or a run finished without its
    agent's slot being freed.
    """

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.shield(asyncio.ensure_future(method(*args, **kwargs)))

    return run


def event_topic_name(event_type: int) -> str:
    """Bus topic of an agent event type: `agent.registered`, `agent.heartbeat` and so on."""
    return "agent." + ET.AgentEventType.Name(event_type).removeprefix("AGENT_EVENT_TYPE_").lower()


ALL_EVENT_TYPES = tuple(t for t in ET.AgentEventType.values() if t)


def error_status(code: int, message: str) -> status_pb2.Status:
    """The status a failed run (or a refused session message) carries; the message is capped."""
    return status_pb2.Status(code=code, message=message[:1000])


@dataclass(frozen=True)
class AgentConfig:
    """Tunables of the agent service (see the README's configuration table).

    Attributes:
        default_heartbeat_s: Heartbeat interval of agents that set none.
        missed_heartbeats: Heartbeats missed in a row before an agent is DISCONNECTED.
        default_run_timeout_s: Run timeout when the task sets none.
        require_signed_manifests: Reject manifests without a public key and signature.
        signature_tolerance_s: How far the time of a signed agent call may be from the mesh's clock.
        tenant_quota: Runs a tenant may create (token bucket).
        agent_quota: Calls an agent may make to other agents, and runs it may be handed (token bucket).
        degrade: When an agent counts as DEGRADED.
        heartbeat_uri: REST path agents send heartbeats to.
        a2a_base_url: Base URL of the mesh's A2A endpoint (cards are published under it), or empty.
        sweep_interval_s: How often missed heartbeats and run deadlines are checked.
    """

    default_heartbeat_s: float = 10.0
    missed_heartbeats: int = 3
    default_run_timeout_s: float = 300.0
    require_signed_manifests: bool = False
    signature_tolerance_s: float = 300.0
    tenant_quota: QuotaRule = field(default_factory=lambda: QuotaRule(rate=200, burst=400))
    agent_quota: QuotaRule = field(default_factory=lambda: QuotaRule(rate=50, burst=100))
    degrade: DegradePolicy = field(default_factory=DegradePolicy)
    heartbeat_uri: str = "/api/v1/agents/heartbeat"
    a2a_base_url: str = ""
    sweep_interval_s: float = 0.5


class ExternalRunner(Protocol):
    """Executes runs on agents the mesh drives itself (external A2A agents)."""

    def start(self, service: AgentService, run: run_pb2.Run, agent: agent_pb2.Agent) -> None:
        """Starts executing a run assigned to `agent`; reports through `service.mesh_output/mesh_finish`."""

    def cancel(self, run_id: str) -> None:
        """Stops a run it is executing."""


@dataclass
class AgentCaller:
    """An agent making a call (delegating to another agent or calling a capability), once admitted."""

    agent: LiveAgent
    parent: StoredRun | None
    depth: int
    signature: str

    def metadata(self) -> dict[str, str]:
        """What travels with the routed call to the callee."""
        md = {
            signing.CALLER_AGENT_HEADER: self.agent.agent.agent_id,
            signing.CALL_DEPTH_HEADER: str(self.depth),
            signing.SIGNATURE_HEADER: self.signature,
        }
        if self.parent is not None:
            md[signing.PARENT_RUN_HEADER] = self.parent.run.run_id
        return md


@dataclass
class RunRequest:
    """A run to create, validated by the caller: for whom, what, on which agent or how to pick one."""

    tenant_id: str
    task: run_pb2.Task
    agent: LiveAgent | None = None
    strategy: int = 0
    region: str = ""
    role: str = ""
    caller: AgentCaller | None = None
    caller_tenant_id: str = ""
    candidates_checked: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class AgentService:
    """Agents, their sessions and their runs."""

    def __init__(
        self,
        store: AgentStore,
        bus: EventBus,
        registry: RegistryService,
        signer: TokenSigner,
        *,
        config: AgentConfig | None = None,
        quotas: Quotas | None = None,
        nonces: NonceMemory | None = None,
        metrics: Callable[[Callable[[], tuple[int, int]]], AgentMetrics] | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.bus = bus
        self.registry = registry
        self.signer = signer
        self.config = config or AgentConfig()
        self.quotas = quotas or LocalQuotas(monotonic)
        self.nonces = nonces or LocalNonces(monotonic)
        self.clock_ms = clock_ms
        self.monotonic = monotonic
        self.agents: dict[tuple[str, str], LiveAgent] = {}
        self.runs: dict[str, LiveRun] = {}
        self.queue: list[str] = []
        self.writer = OutputWriter(store)
        self.external: ExternalRunner | None = None
        self.metrics = metrics(self._counts) if metrics is not None else None
        self._rr: dict[tuple[str, ...], int] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._run_locks: dict[str, asyncio.Lock] = {}
        self._renewed: dict[tuple[str, str], float] = {}
        self._finished_at: dict[str, float] = {}
        self._pumping = False
        # Events this process published, so that the directory sync skips them (bounded).
        self._own_events: collections.OrderedDict[str, None] = collections.OrderedDict()

    # ---- start, stop, sweep --------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads agents and unfinished runs; known agents get three intervals to show up again."""
        self.writer.start()
        now = self.monotonic()
        restarted: list[LiveRun] = []
        for stored in await self.store.all_agents():
            self.agents[(stored.agent.tenant_id, stored.agent.agent_id)] = LiveAgent(stored, last_seen=now)
        for stored_run in await self.store.unfinished_runs([QUEUED, ASSIGNED, RUNNING]):
            live_run = LiveRun(stored_run)
            self.runs[stored_run.run.run_id] = live_run
            if stored_run.run.state == QUEUED:
                self.queue.append(stored_run.run.run_id)
                continue
            holder = self.agents.get((stored_run.agent_tenant_id, stored_run.run.agent_id))
            if holder is None:
                self.queue.append(stored_run.run.run_id)
                continue
            if holder.stored.kind == KIND_A2A:  # the mesh drove it, and that stream died with the process
                restarted.append(live_run)
                continue
            holder.runs.add(stored_run.run.run_id)
            if stored_run.run.state == ASSIGNED:
                holder.mailbox.put(_copy(stored_run.run))
        for live_run in restarted:
            await self._finish(
                live_run,
                FAILED,
                error=error_status(
                    code_pb2.UNAVAILABLE, "the mesh restarted while it ran the run on an external agent"
                ),
                reason="mesh restarted",
            )
        log.info(
            "agent service loaded", extra={"agents": len(self.agents), "unfinished_runs": len(self.runs)}
        )

    async def close(self) -> None:
        """Flushes pending output."""
        await self.writer.close()

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Marks agents that missed heartbeats, fails runs past their deadline, keeps leases alive."""
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("agent sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.sweep_interval_s)

    async def sweep(self) -> None:
        """One pass of the sweeper."""
        now = self.monotonic()
        for key, live in list(self.agents.items()):
            if live.stored.kind == KIND_NATIVE and live.agent.state in HEARTBEATING:
                limit = self.config.missed_heartbeats * live.interval_s(self.config.default_heartbeat_s)
                if now - live.last_seen > limit:
                    await self._disconnect(
                        live, f"missed {self.config.missed_heartbeats} heartbeats", end_session=False
                    )
                    continue
            if live.agent.state in LIVE and now - self._renewed.get(key, now) > LEASE_RENEW_S:
                await self._renew_lease(live)
        wall = self.clock_ms()
        for run_id, live_run in list(self.runs.items()):
            run = live_run.run
            if run.state in TERMINAL_RUN_STATES:
                done_at = self._finished_at.setdefault(run_id, now)
                if live_run.subscribers == 0 and now - done_at > FINISHED_RUN_KEPT_S:
                    self.runs.pop(run_id, None)
                    self._finished_at.pop(run_id, None)
                    self._run_locks.pop(run_id, None)
                continue
            if run.deadline_time.ToMilliseconds() and wall >= run.deadline_time.ToMilliseconds():
                await self._finish(
                    live_run,
                    FAILED,
                    error=error_status(
                        code_pb2.DEADLINE_EXCEEDED, "the run did not finish within its timeout"
                    ),
                    reason="timed out",
                )

    # ---- the directory across processes -----------------------------------------------------------

    def _own(self, event_id: str) -> str:
        self._own_events[event_id] = None
        while len(self._own_events) > 10_000:
            self._own_events.popitem(last=False)
        return event_id

    async def run_directory_sync(self, stop: asyncio.Event) -> None:
        """Keeps this process's directory in step with the others sharing the bus (scaled out).

        Heartbeats seen elsewhere keep an agent alive here too (no database read); a state change made
        elsewhere reloads the agent's record.
        """
        types = [t for t in ALL_EVENT_TYPES if t != ET.AGENT_EVENT_TYPE_RUN_OUTPUT]
        async with _merged(self.bus, [event_topic_name(t) for t in types]) as events:
            while not stop.is_set():
                try:
                    payload = await asyncio.wait_for(events.get(), 0.5)
                except TimeoutError:
                    continue
                try:
                    await self._apply_remote(ET.AgentEvent.FromString(payload))
                except Exception:
                    log.warning("could not apply an agent event from another process", exc_info=True)

    async def _apply_remote(self, event: event_pb2.AgentEvent) -> None:
        if event.event_id in self._own_events or not event.agent_id:
            return
        key = (event.tenant_id, event.agent_id)
        if event.type == ET.AGENT_EVENT_TYPE_HEARTBEAT:
            live = self.agents.get(key)
            if live is not None:
                live.last_seen = self.monotonic()
                live.load = event.load
                live.last_heartbeat_wall_ms = event.event_time.ToMilliseconds()
            return
        if event.type in (
            ET.AGENT_EVENT_TYPE_ASSIGNED,
            ET.AGENT_EVENT_TYPE_COMPLETED,
            ET.AGENT_EVENT_TYPE_FAILED,
        ):
            return
        live = await self._live(*key, refresh=True)
        if live is not None and live.agent.state in HEARTBEATING:
            live.last_seen = self.monotonic()

    # ---- authentication ------------------------------------------------------------------------------

    async def _live(self, tenant: str, agent_id: str, *, refresh: bool = False) -> LiveAgent | None:
        live = self.agents.get((tenant, agent_id))
        if live is not None and not refresh:
            return live
        stored = await self.store.agent(tenant, agent_id)
        if stored is None:
            return None
        if live is None:
            live = LiveAgent(stored, last_seen=self.monotonic())
            self.agents[(tenant, agent_id)] = live
        else:
            live.stored = stored
        return live

    async def authenticate(self, ctx: CallContext) -> LiveAgent:
        """The agent whose token the call carries; Unauthenticated when there is none or it is invalid."""
        if not ctx.bearer:
            raise Unauthenticated(
                "this call needs the agent's token: authorization: Bearer agt_…",
                reason="AGENT_TOKEN_REQUIRED",
            )
        claims = self._claims(ctx)
        if claims is None:
            raise Unauthenticated(
                "the agent token is malformed or was not issued by this mesh", reason="AGENT_TOKEN_INVALID"
            )
        digest = token_hash(ctx.bearer)
        live = await self._live(claims.tenant_id, claims.agent_id)
        if live is not None and not hashes_equal(live.stored.token_hash, digest):
            live = await self._live(
                claims.tenant_id, claims.agent_id, refresh=True
            )  # another process may know better
        if live is None or not live.stored.token_hash or not hashes_equal(live.stored.token_hash, digest):
            raise Unauthenticated(
                "the agent token was revoked or replaced by a newer registration",
                reason="AGENT_TOKEN_REVOKED",
            )
        return live

    async def _self_call(self, ctx: CallContext, agent_id: str, session_id: str | None = None) -> LiveAgent:
        live = await self.authenticate(ctx)
        if agent_id != live.agent.agent_id:
            raise PermissionDenied("an agent may only act for itself", reason="AGENT_MISMATCH")
        if live.agent.state == RETIRED:
            raise FailedPrecondition("the agent is retired; register it again", reason="AGENT_RETIRED")
        if session_id is not None and (not session_id or session_id != live.agent.session_id):
            raise NotFound(
                "the session is unknown or has ended; register again",
                reason="SESSION_NOT_FOUND",
                metadata={"agent_id": agent_id},
            )
        return live

    def _claims(self, ctx: CallContext) -> TokenClaims | None:
        """The claims of the call's agent token (None without a valid one); its tenant must be the call's."""
        claims = self.signer.verify(ctx.bearer) if ctx.bearer else None
        if claims is not None and ctx.tenant_id and ctx.tenant_id != claims.tenant_id:
            raise PermissionDenied(
                "the agent token belongs to another tenant than x-tenant-id", reason="TENANT_MISMATCH"
            )
        return claims

    def tenant_of(self, ctx: CallContext) -> str:
        """The tenant of a call: the agent token's, else `x-tenant-id` (validated)."""
        claims = self._claims(ctx)
        return claims.tenant_id if claims is not None else require_tenant(ctx)

    def _lock(self, tenant: str, agent_id: str) -> asyncio.Lock:
        return self._locks.setdefault((tenant, agent_id), asyncio.Lock())

    def _run_lock(self, run_id: str) -> asyncio.Lock:
        return self._run_locks.setdefault(run_id, asyncio.Lock())

    # ---- views and events ----------------------------------------------------------------------------

    def _counts(self) -> tuple[int, int]:
        states = collections.Counter(a.agent.state for a in self.agents.values())
        return len(self.agents) - states[RETIRED], sum(states[s] for s in LIVE)

    def view(self, live: LiveAgent) -> agent_pb2.Agent:
        """The agent as callers see it: with its live load and heartbeat, without its signature."""
        agent = _copy(live.agent)
        agent.ClearField("signature")
        if live.last_heartbeat_wall_ms:
            agent.last_heartbeat_time.CopyFrom(timestamp_ms(live.last_heartbeat_wall_ms))
            agent.load.CopyFrom(live.load)
        health = (
            common_pb2.HEALTH_STATE_HEALTHY
            if agent.state in LIVE
            else common_pb2.HEALTH_STATE_UNREACHABLE
            if agent.state in (DISCONNECTED, RETIRED)
            else common_pb2.HEALTH_STATE_UNKNOWN
        )
        for e in agent.endpoints:
            e.health = health
        return agent

    async def _emit(
        self,
        event_type: int,
        live: LiveAgent,
        *,
        previous: int = 0,
        reason: str = "",
        run: run_pb2.Run | None = None,
        run_event: run_pb2.RunEvent | None = None,
        load: agent_pb2.AgentLoad | None = None,
        with_agent: bool = False,
    ) -> None:
        a = live.agent
        bus_topic = event_topic_name(event_type)
        if isinstance(self.bus, InProcessBus) and not self.bus.subscriber_count(bus_topic):
            return  # nobody in this process listens, and no other process shares this bus
        topic = ET.AGENT_EVENT_TOPIC_STATE
        if run_event is not None:
            topic = ET.AGENT_EVENT_TOPIC_LOG if run_event.HasField("log") else ET.AGENT_EVENT_TOPIC_TOKEN
        event = ET.AgentEvent(
            event_id=self._own(uuid.uuid4().hex),
            type=event_type,  # type: ignore[arg-type]
            topic=topic,
            tenant_id=a.tenant_id,
            agent_id=a.agent_id,
            session_id=a.session_id,
            state=a.state,
            previous_state=previous,  # type: ignore[arg-type]
            reason=reason[:500],
        )
        event.event_time.CopyFrom(timestamp_ms(self.clock_ms()))
        if run is not None:
            event.run_id = run.run_id
            event.run.CopyFrom(run)
            event.trace_id = run.task.trace_id
        if run_event is not None:
            event.run_id = run_event.run_id
            event.run_event.CopyFrom(run_event)
        if load is not None:
            event.load.CopyFrom(load)
        if with_agent:
            event.agent.CopyFrom(self.view(live))
        try:
            await self.bus.publish(bus_topic, event.SerializeToString())
        except Exception:
            log.warning("could not publish agent event", exc_info=True)

    # ---- lifecycle -----------------------------------------------------------------------------------

    def _health(self, live: LiveAgent) -> lifecycle.Health:
        stats = live.agent.stats
        return lifecycle.Health(
            run_count=stats.run_count,
            error_rate=stats.error_rate,
            avg_latency_s=seconds_of(stats.avg_latency),
            cpu=live.load.cpu_usage,
            mem=live.load.mem_usage,
        )

    def _live_state(self, live: LiveAgent) -> int:
        is_degraded = lifecycle.degraded(
            self.config.degrade, self._health(live), live.agent.state == lifecycle.DEGRADED
        )
        return lifecycle.live_state(len(live.runs), live.max_concurrency, is_degraded)

    @_uninterruptible
    async def _set_state(
        self, live: LiveAgent, target: int, reason: str, event_type: int = ET.AGENT_EVENT_TYPE_STATE_CHANGED
    ) -> bool:
        a = live.agent
        previous = a.state
        if not lifecycle.check(previous, target, a.agent_id):
            return False
        now = self.clock_ms()
        a.state = target  # type: ignore[assignment]
        a.state_reason = reason[:500]
        a.state_change_time.CopyFrom(timestamp_ms(now))
        a.update_time.CopyFrom(timestamp_ms(now))
        await self.store.put_agent(live.stored, now)
        await self._emit(event_type, live, previous=previous, reason=reason, with_agent=True)
        await self._endpoint_health(live, previous, target)
        log.info(
            "agent state changed",
            extra={
                "agent_id": a.agent_id,
                "from": lifecycle.name(previous),
                "to": lifecycle.name(target),
                "reason": reason,
            },
        )
        return True

    async def _endpoint_health(self, live: LiveAgent, previous: int, target: int) -> None:
        was_live, is_live = previous in LIVE, target in LIVE
        if was_live == is_live or live.stored.kind != KIND_NATIVE or target == RETIRED:
            return
        a = live.agent
        eid = endpoint_id_for(a.tenant_id, a.agent_id, common_pb2.TRANSPORT_AGENT, _agent_uri(a.agent_id))
        health = common_pb2.HEALTH_STATE_HEALTHY if is_live else common_pb2.HEALTH_STATE_UNREACHABLE
        try:
            await self.registry.set_endpoint_health(
                eid, health, f"agent {lifecycle.name(target).lower()}", _system_ctx(a.tenant_id)
            )
        except Exception:
            log.warning("could not update the agent endpoint's health", exc_info=True)

    async def _refresh_state(self, live: LiveAgent, reason: str) -> None:
        """Moves a live agent between IDLE, ACTIVE, BUSY and DEGRADED as its runs and health say."""
        if live.agent.state not in LIVE:
            return
        target = self._live_state(live)
        if target != live.agent.state:
            await self._set_state(live, target, reason)

    @_uninterruptible
    async def _disconnect(self, live: LiveAgent, reason: str, *, end_session: bool) -> None:
        async with self._lock(*live.key):
            if live.agent.state in (DISCONNECTED, RETIRED):
                return
            await self._set_state(live, DISCONNECTED, reason, ET.AGENT_EVENT_TYPE_DISCONNECTED)
            if end_session:
                self._end_streams(live)
        await self._hand_over(live, f"agent {live.agent.agent_id} {reason}", fail_pinned=False)

    def _end_streams(self, live: LiveAgent) -> None:
        live.stream_epoch += 1
        live.mailbox.put(run_pb2.RunCancellation(run_id="", reason="session ended"))

    @_uninterruptible
    async def _hand_over(self, live: LiveAgent, reason: str, *, fail_pinned: bool) -> None:
        """Sends an agent's unfinished runs on: to the queue (and another agent) or back to wait for it."""
        for run_id in sorted(live.runs):
            live_run = await self.load_run(run_id)
            if live_run is None or live_run.finished:
                live.runs.discard(run_id)
                continue
            async with self._run_lock(run_id):
                if live_run.finished or live_run.run.agent_id != live.agent.agent_id:
                    live.runs.discard(run_id)
                    continue
                live.runs.discard(run_id)
                live.mailbox.drop_run(run_id)
                live.mailbox.put(run_pb2.RunCancellation(run_id=run_id, reason=reason))
                if live.stored.kind == KIND_A2A and self.external is not None:
                    self.external.cancel(run_id)
                if live_run.run.task.skill or not fail_pinned:
                    await self._requeue(live_run, reason, keep_agent=not live_run.run.task.skill)
                    continue
            await self._finish(
                live_run, FAILED, error=error_status(code_pb2.UNAVAILABLE, reason), reason=reason
            )
        await self._pump()

    async def _requeue(self, live_run: LiveRun, reason: str, *, keep_agent: bool) -> None:
        run = live_run.run
        previous = run.state
        run.state = QUEUED
        run.state_reason = reason[:500]
        if not keep_agent:
            run.agent_id = ""
            live_run.stored.agent_tenant_id = ""
        run.session_id = ""
        await self._state_event(live_run, previous, reason)
        await self._save_run(live_run)
        self.queue.append(run.run_id)

    # ---- registration --------------------------------------------------------------------------------

    async def register_agent(
        self, req: svc.RegisterAgentRequest, ctx: CallContext
    ) -> svc.RegisterAgentResponse:
        """Registers (or registers again) an agent from its manifest; returns its token and session."""
        claims = self._claims(ctx)
        if ctx.bearer and claims is None:
            raise Unauthenticated(
                "the agent token is malformed or was not issued by this mesh", reason="AGENT_TOKEN_INVALID"
            )
        tenant = claims.tenant_id if claims is not None else require_tenant(ctx)
        manifest = req.agent
        validation.check_manifest(manifest, require_signature=self.config.require_signed_manifests)
        _check_text(req.resume_session_id, "resume_session_id", 64)
        if claims is not None and claims.agent_id != manifest.agent_id:
            raise PermissionDenied("the agent token belongs to another agent", reason="AGENT_MISMATCH")
        agent_id = manifest.agent_id
        async with self._lock(tenant, agent_id):
            existing = await self.store.agent(tenant, agent_id)
            if existing is not None and existing.kind != KIND_NATIVE:
                raise AlreadyExists(
                    f"{agent_id} is registered as an external A2A agent", reason="AGENT_EXISTS"
                )
            if existing is not None and existing.agent.state != RETIRED and existing.token_hash:
                if claims is None:
                    raise AlreadyExists(
                        f"agent {agent_id} is registered; register it again with its token",
                        reason="AGENT_EXISTS",
                        metadata={"agent_id": agent_id},
                    )
                if not hashes_equal(existing.token_hash, token_hash(ctx.bearer)):
                    raise Unauthenticated(
                        "the agent token was revoked or replaced by a newer registration",
                        reason="AGENT_TOKEN_REVOKED",
                    )
            now = self.clock_ms()
            agent = agent_pb2.Agent()
            agent.CopyFrom(manifest)
            for f in (
                "state",
                "state_reason",
                "state_change_time",
                "session_id",
                "last_heartbeat_time",
                "load",
                "stats",
                "token_issue_time",
                "manifest_digest",
                "create_time",
                "update_time",
                "a2a_card",
                "a2a_card_url",
            ):
                agent.ClearField(f)
            for e in agent.endpoints:
                e.ClearField("health")
            agent.tenant_id = tenant
            agent.manifest_digest = hashlib.sha256(signing.canonical_manifest(manifest)).hexdigest()
            if not agent.runtime.max_concurrency:
                agent.runtime.max_concurrency = 1
            if not seconds_of(agent.runtime.heartbeat_interval):
                agent.runtime.heartbeat_interval.CopyFrom(duration_s(self.config.default_heartbeat_s))
            if self.config.a2a_base_url:
                agent.a2a_card_url = (
                    f"{self.config.a2a_base_url.rstrip('/')}/{tenant}/{agent_id}/.well-known/agent-card.json"
                )
            previous = existing.agent.state if existing else 0
            old_session = existing.agent.session_id if existing else ""
            if existing is not None:
                agent.stats.CopyFrom(existing.agent.stats)
                agent.create_time.CopyFrom(existing.agent.create_time)
                lifecycle.check(previous, REGISTERING, agent_id)
            else:
                agent.create_time.CopyFrom(timestamp_ms(now))
            await self._announce(agent)
            session_id = "sess_" + secrets.token_hex(12)
            token = self.signer.issue(tenant, agent_id, now)
            agent.session_id = session_id
            agent.token_issue_time.CopyFrom(timestamp_ms(now))
            agent.state = REGISTERING
            agent.state_reason = "registered again" if existing else "registered"
            agent.state_change_time.CopyFrom(timestamp_ms(now))
            agent.update_time.CopyFrom(timestamp_ms(now))
            stored = StoredAgent(agent, KIND_NATIVE, token_hash(token))
            await self.store.put_agent(stored, now)
            live = self.agents.get((tenant, agent_id))
            resumed = bool(req.resume_session_id) and req.resume_session_id == old_session
            if live is None:
                live = LiveAgent(stored, last_seen=self.monotonic())
                self.agents[(tenant, agent_id)] = live
            else:
                live.stored = stored
                live.last_seen = self.monotonic()
                self._end_streams(live)
                if resumed:
                    for run_id in live.runs:
                        lr = self.runs.get(run_id)
                        if lr is not None:
                            lr.run.session_id = session_id
            self._renewed[(tenant, agent_id)] = self.monotonic()
        await self._emit(
            ET.AGENT_EVENT_TYPE_REGISTERED,
            live,
            previous=previous,
            reason=agent.state_reason,
            with_agent=True,
        )
        if live.runs and not resumed:
            await self._hand_over(live, f"agent {agent_id} registered a new session", fail_pinned=False)
        log.info("agent registered", extra={"agent_id": agent_id, "tenant_id": tenant, "resumed": resumed})
        return svc.RegisterAgentResponse(
            agent=self.view(live),
            agent_token=token,
            session_id=session_id,
            heartbeat_uri=self.config.heartbeat_uri,
            heartbeat_interval=agent.runtime.heartbeat_interval,
        )

    async def _announce(self, agent: agent_pb2.Agent) -> None:
        """Publishes the agent's skills to the registry as capabilities of provider `agent_id`."""
        uri = (
            agent.a2a_card_url if agent.labels.get("powerx.kind") == KIND_A2A else _agent_uri(agent.agent_id)
        )
        req = rs.AnnounceProviderRequest(
            provider=provider_pb2.Provider(
                provider_id=agent.agent_id,
                display_name=agent.display_name,
                version=agent.version,
                author=agent.author,
                description=agent.description[:2000],
                labels={
                    "powerx.kind": "agent",
                    **{k: v for k, v in agent.labels.items() if k != "powerx.kind"},
                },
            ),
            capabilities=[
                capability_pb2.Capability(
                    capability_id=skill,
                    version=agent.version,
                    display_name=skill,
                    description=f"skill of agent {agent.agent_id}",
                    tenant_scopes=list(agent.tenant_scopes),
                    labels={"agent.id": agent.agent_id},
                )
                for skill in agent.skills
            ],
            endpoints=[
                endpoint_pb2.Endpoint(
                    transport=common_pb2.TRANSPORT_AGENT,
                    uri=uri,
                    region=agent.runtime.region,
                    capability_ids=list(agent.skills),
                )
            ]
            if agent.skills
            else [],
        )
        req.lease_ttl.FromSeconds(AGENT_LEASE_S)
        await self.registry.announce_provider(req, _system_ctx(agent.tenant_id))

    async def _renew_lease(self, live: LiveAgent) -> None:
        self._renewed[live.key] = self.monotonic()
        req = rs.RenewProviderLeaseRequest(provider_id=live.agent.agent_id)
        req.lease_ttl.FromSeconds(AGENT_LEASE_S)
        try:
            await self.registry.renew_provider_lease(req, _system_ctx(live.agent.tenant_id))
        except MeshError:
            await self._announce(live.agent)

    async def register_external(self, agent: agent_pb2.Agent, ctx: CallContext) -> agent_pb2.Agent:
        """Stores an external (A2A) agent built by the A2A importer and publishes its skills."""
        tenant = self.tenant_of(ctx)
        async with self._lock(tenant, agent.agent_id):
            existing = await self.store.agent(tenant, agent.agent_id)
            if existing is not None and existing.kind != KIND_A2A and existing.agent.state != RETIRED:
                raise AlreadyExists(f"a native agent {agent.agent_id} is registered", reason="AGENT_EXISTS")
            now = self.clock_ms()
            agent.tenant_id = tenant
            agent.labels["powerx.kind"] = KIND_A2A
            agent.runtime.max_concurrency = agent.runtime.max_concurrency or 16
            agent.state = lifecycle.IDLE
            agent.state_reason = "agent card fetched"
            agent.state_change_time.CopyFrom(timestamp_ms(now))
            agent.update_time.CopyFrom(timestamp_ms(now))
            if existing is not None:
                agent.create_time.CopyFrom(existing.agent.create_time)
                agent.stats.CopyFrom(existing.agent.stats)
            else:
                agent.create_time.CopyFrom(timestamp_ms(now))
            await self._announce(agent)
            stored = StoredAgent(agent, KIND_A2A, "")
            await self.store.put_agent(stored, now)
            live = self.agents.get((tenant, agent.agent_id))
            if live is None:
                live = LiveAgent(stored, last_seen=self.monotonic())
                self.agents[(tenant, agent.agent_id)] = live
            else:
                live.stored = stored
            self._renewed[live.key] = self.monotonic()
        await self._emit(ET.AGENT_EVENT_TYPE_REGISTERED, live, reason="external A2A agent", with_agent=True)
        await self._pump()
        return self.view(live)

    # ---- heartbeats ----------------------------------------------------------------------------------

    async def record_heartbeat(
        self, req: svc.RecordHeartbeatRequest, ctx: CallContext
    ) -> svc.RecordHeartbeatResponse:
        """Records a heartbeat: no database write unless the agent's state changes."""
        _check_load(req.load, "load")
        live = await self._self_call(ctx, req.agent_id, req.session_id)
        await self.heartbeat(live, req.load)
        pending = 0 if live.streams else sum(1 for i in live.mailbox.items if isinstance(i, run_pb2.Run))
        resp = svc.RecordHeartbeatResponse(
            state=live.agent.state,
            pending_assignment_count=pending,
            heartbeat_interval=live.agent.runtime.heartbeat_interval,
        )
        resp.server_time.GetCurrentTime()
        return resp

    async def heartbeat(self, live: LiveAgent, load: agent_pb2.AgentLoad) -> None:
        """Takes note of a sign of life with the agent's load (unary or on the session channel)."""
        now = self.monotonic()
        state = live.agent.state
        if self.metrics is not None and state in LIVE:
            late = now - live.last_seen - live.interval_s(self.config.default_heartbeat_s)
            self.metrics.heartbeat_latency.observe(max(0.0, late) * 1000)
        live.last_seen = now
        live.load = load
        live.last_heartbeat_wall_ms = self.clock_ms()
        if state in (REGISTERING, DISCONNECTED):
            async with self._lock(*live.key):
                if live.agent.state in (REGISTERING, DISCONNECTED):
                    reconnect = live.agent.state == DISCONNECTED
                    await self._set_state(
                        live,
                        self._live_state(live),
                        "reconnected" if reconnect else "first heartbeat",
                        ET.AGENT_EVENT_TYPE_RECONNECTED if reconnect else ET.AGENT_EVENT_TYPE_STATE_CHANGED,
                    )
            await self._pump()
        elif state in LIVE:
            target = self._live_state(live)
            if target != state:
                await self._set_state(live, target, "load reported by heartbeat")
                await self._pump()
        await self._emit(ET.AGENT_EVENT_TYPE_HEARTBEAT, live, load=load)

    # ---- reads ---------------------------------------------------------------------------------------

    async def get_agent(self, req: svc.GetAgentRequest, ctx: CallContext) -> svc.GetAgentResponse:
        """One agent of the caller's tenant."""
        tenant = self.tenant_of(ctx)
        live = await self._require_agent(tenant, req.agent_id)
        return svc.GetAgentResponse(agent=self.view(live))

    async def _require_agent(self, tenant: str, agent_id: str) -> LiveAgent:
        v = Violations()
        v.pattern(agent_id, "agent_id", validation.AGENT_ID, "an agent id")
        v.raise_if_any("invalid request")
        live = await self._live(tenant, agent_id, refresh=True)
        if live is None:
            raise NotFound(
                f"agent {agent_id} is not registered",
                reason="AGENT_NOT_FOUND",
                metadata={"agent_id": agent_id},
            )
        return live

    async def list_agents(self, req: svc.ListAgentsRequest, ctx: CallContext) -> svc.ListAgentsResponse:
        """Agents of the caller's tenant ordered by id, filtered by state, skill and role."""
        tenant = self.tenant_of(ctx)
        filters = [int(req.state), req.skill, req.role]
        page = page_request(req.page_size, req.page_token, filters)
        v = Violations()
        v.check(req.state in agent_pb2.AgentState.values(), "state", "is not a known state")
        v.text(req.skill, "skill", max_len=192)
        v.text(req.role, "role", max_len=63)
        v.raise_if_any("invalid filter")
        out: list[agent_pb2.Agent] = []
        after = str(page.after[0]) if page.after else ""
        more = False
        while not more:  # skill and role are filtered here, so read in batches until the page is full
            rows = await self.store.list_agents(tenant, after, LIST_BATCH, int(req.state))
            for stored in rows:
                after = stored.agent.agent_id
                if (req.skill and req.skill not in stored.agent.skills) or (
                    req.role and req.role not in stored.agent.roles
                ):
                    continue
                if len(out) == page.size:
                    more = True
                    break
                live = self.agents.get((tenant, stored.agent.agent_id))
                if live is not None:
                    live.stored = stored
                out.append(self.view(live) if live is not None else _copy(stored.agent))
            if len(rows) < LIST_BATCH:
                break
        token = next_page_token([out[-1].agent_id], filters) if more and out else ""
        return svc.ListAgentsResponse(agents=out, next_page_token=token)

    # ---- runs: creation ------------------------------------------------------------------------------

    async def admit_agent_call(
        self, ctx: CallContext, capability_id: str, arguments: struct_pb2.Struct
    ) -> AgentCaller | None:
        """Checks a call an agent makes (by its token): grants, depth, signature and quota.

        Returns None when the caller is not an agent (no token in the call).
        """
        if not ctx.bearer:
            return None
        live = await self.authenticate(ctx)
        a = live.agent
        if a.state in (RETIRED, DISCONNECTED):
            raise FailedPrecondition(
                f"agent {a.agent_id} is {lifecycle.name(a.state)} and cannot make calls",
                reason="AGENT_NOT_CONNECTED",
            )
        parent: StoredRun | None = None
        depth = 1
        if ctx.parent_run_id:
            parent_live = await self.load_run(ctx.parent_run_id)
            if (
                parent_live is None
                or parent_live.run.agent_id != a.agent_id
                or parent_live.stored.agent_tenant_id != a.tenant_id
            ):
                raise NotFound(
                    "the parent run is not a run of the calling agent",
                    reason="PARENT_RUN_NOT_FOUND",
                    metadata={"run_id": ctx.parent_run_id},
                )
            # ASSIGNED too: an agent may start calling out before the mesh has read its `ack`.
            if parent_live.run.state not in HELD_RUN_STATES:
                raise FailedPrecondition("the parent run is not running", reason="PARENT_RUN_NOT_RUNNING")
            parent = parent_live.stored
            depth = parent.run.depth + 1
        _check_depth(depth)
        if not validation.grant_allows(tuple(a.tool_grants), capability_id) or (
            parent is not None
            and parent.run.task.grants
            and not validation.grant_allows(tuple(parent.run.task.grants), capability_id)
        ):
            raise PermissionDenied(
                f"agent {a.agent_id} is not granted {capability_id}",
                reason="TOOL_NOT_GRANTED",
                metadata={"agent_id": a.agent_id, "capability_id": capability_id},
            )
        await self._check_signature(live, ctx, capability_id, arguments)
        await self._take_quota(
            f"agent:{a.tenant_id}:{a.agent_id}", self.config.agent_quota, "agent", a.agent_id
        )
        return AgentCaller(agent=live, parent=parent, depth=depth, signature=ctx.agent_signature)

    async def _check_signature(
        self, live: LiveAgent, ctx: CallContext, capability_id: str, arguments: struct_pb2.Struct
    ) -> None:
        a = live.agent
        key = signing.public_key_of(a.public_key) if a.public_key else None
        if key is None:
            raise PermissionDenied(
                "agent-to-agent calls must be signed: register the agent with a public_key",
                reason="AGENT_KEY_REQUIRED",
            )
        parsed = signing.CallSignature.parse(ctx.agent_signature) if ctx.agent_signature else None
        if parsed is None:
            raise Unauthenticated(
                f"the call needs a valid {signing.SIGNATURE_HEADER} header (t=…,n=…,s=…)",
                reason="AGENT_SIGNATURE_MISSING",
            )
        if abs(time.time() - parsed.t) > self.config.signature_tolerance_s:
            raise Unauthenticated(
                "the call signature's time is too far from the mesh's clock", reason="AGENT_SIGNATURE_STALE"
            )
        data = signing.call_string(
            tenant_id=a.tenant_id,
            caller_agent_id=a.agent_id,
            parent_run_id=ctx.parent_run_id,
            capability_id=capability_id,
            digest=signing.arguments_digest(arguments),
            t=parsed.t,
            nonce=parsed.nonce,
        )
        if not signing.verify(key, parsed.signature, data):
            raise Unauthenticated("the call signature does not verify", reason="AGENT_SIGNATURE_INVALID")
        if not await self.nonces.first_use(
            f"{a.tenant_id}:{a.agent_id}:{parsed.nonce}", 2 * self.config.signature_tolerance_s
        ):
            raise Unauthenticated(
                "the call signature was used before (replay)", reason="AGENT_SIGNATURE_REPLAYED"
            )

    async def _take_quota(self, key: str, rule: QuotaRule, what: str, who: str) -> None:
        wait = await self.quotas.take(key, rule)
        if wait > 0:
            raise ResourceExhausted(
                f"the {what} quota of {who} is spent ({rule.rate:g}/s, burst {rule.burst:g})",
                retry_after_s=wait,
                reason="QUOTA_EXCEEDED",
                metadata={"quota": what, "subject": who},
            )

    def _check_task(self, task: run_pb2.Task, *, skill_required: bool) -> None:
        v = Violations()
        validation.check_task(task, v, skill_required=skill_required)
        v.raise_if_any("invalid task")

    async def assign_task(self, req: svc.AssignTaskRequest, ctx: CallContext) -> svc.AssignTaskResponse:
        """Creates a run for one named agent (queued while the agent is busy)."""
        tenant = self.tenant_of(ctx)
        v = Violations()
        v.pattern(req.agent_id, "agent_id", validation.AGENT_ID, "an agent id")
        validation.check_task(req.task, v, skill_required=bool(ctx.bearer))
        v.raise_if_any("invalid task")
        caller = await self.admit_agent_call(ctx, req.task.skill, req.task.inputs) if ctx.bearer else None
        live = await self._require_agent(tenant, req.agent_id)
        run = await self.create_run_for(
            RunRequest(tenant_id=tenant, task=req.task, agent=live, caller=caller), ctx
        )
        return svc.AssignTaskResponse(run=run)

    async def create_run(self, req: svc.CreateRunRequest, ctx: CallContext) -> svc.CreateRunResponse:
        """Creates a run for a skill; the scheduler picks the agent."""
        tenant = self.tenant_of(ctx)
        v = Violations()
        validation.check_task(req.task, v, skill_required=True)
        v.check(req.strategy == 0 or req.strategy in STRATEGIES, "strategy", "is not a known strategy")
        if req.region:
            v.check(
                bool(validation.REGION.match(req.region)),
                "region",
                "must be 1-64 letters, digits, '.', '_', '-'",
            )
        if req.role:
            v.check(bool(validation.ROLE.match(req.role)), "role", "is not a role")
        v.raise_if_any("invalid run request")
        caller = await self.admit_agent_call(ctx, req.task.skill, req.task.inputs) if ctx.bearer else None
        run = await self.create_run_for(
            RunRequest(
                tenant_id=tenant,
                task=req.task,
                strategy=req.strategy or run_pb2.SCHEDULING_STRATEGY_LEAST_LOAD,
                region=req.region,
                role=req.role,
                caller=caller,
            ),
            ctx,
        )
        return svc.CreateRunResponse(run=run)

    async def create_run_for(self, rr: RunRequest, ctx: CallContext) -> run_pb2.Run:
        """Creates a run (validated by the caller) and hands it to an agent or queues it."""
        task = rr.task
        if task.idempotency_key:
            existing = await self.store.run_by_key(rr.tenant_id, task.idempotency_key)
            if existing is not None:
                if self.clock_ms() - existing.run.create_time.ToMilliseconds() < 24 * 3600 * 1000:
                    return (
                        self.runs[existing.run.run_id].run
                        if existing.run.run_id in self.runs
                        else existing.run
                    )
                await self.store.release_key(rr.tenant_id, task.idempotency_key)
        target = rr.agent
        if target is not None:
            a = target.agent
            if a.state in (DISCONNECTED, RETIRED):
                raise FailedPrecondition(
                    f"agent {a.agent_id} is {lifecycle.name(a.state)}",
                    reason="AGENT_NOT_CONNECTED",
                    metadata={"agent_id": a.agent_id, "state": lifecycle.name(a.state)},
                )
            if task.skill and task.skill not in a.skills:
                raise FailedPrecondition(
                    f"agent {a.agent_id} has no skill {task.skill}",
                    reason="SKILL_NOT_OFFERED",
                    metadata={"agent_id": a.agent_id, "skill": task.skill},
                )
        elif not self._candidates(rr.tenant_id, task.skill, rr.role, any_state=True):
            raise FailedPrecondition(
                f"no agent of the tenant has the skill {task.skill}"
                + (f" and the role {rr.role}" if rr.role else ""),
                reason="NO_AGENT_FOR_SKILL",
                metadata={"skill": task.skill},
            )
        await self._take_quota(f"tenant:{rr.tenant_id}", self.config.tenant_quota, "tenant", rr.tenant_id)
        if target is not None and rr.caller is None:
            await self._take_quota(
                f"agent:{target.agent.tenant_id}:{target.agent.agent_id}",
                self.config.agent_quota,
                "agent",
                target.agent.agent_id,
            )
        now = self.clock_ms()
        run = run_pb2.Run(
            run_id="run_" + uuid.uuid4().hex,
            tenant_id=rr.tenant_id,
            state=QUEUED,
            state_reason="created",
            strategy=rr.strategy,  # type: ignore[arg-type]
            region=rr.region,
            role=rr.role,
            attempt=0,
        )
        run.task.CopyFrom(task)
        run.task.actor_id = task.actor_id or ctx.principal
        run.task.trace_id = task.trace_id or ctx.trace_id
        # The run outlives the call that creates it (CreateRun, AssignTask answer at once), so the call's
        # gRPC deadline does not bound it: its deadline is the task's timeout, as run.proto documents.
        timeout = seconds_of(task.timeout) or self.config.default_run_timeout_s
        run.create_time.CopyFrom(timestamp_ms(now))
        run.update_time.CopyFrom(timestamp_ms(now))
        run.deadline_time.CopyFrom(timestamp_ms(now + int(timeout * 1000)))
        if rr.caller is not None:
            run.caller_agent_id = rr.caller.agent.agent.agent_id
            run.depth = rr.caller.depth
            run.caller_signature = rr.caller.signature
            if rr.caller.parent is not None:
                run.task.parent_run_id = rr.caller.parent.run.run_id
        elif task.parent_run_id:
            parent = await self.load_run(task.parent_run_id)
            if parent is None or parent.run.tenant_id != rr.tenant_id:
                raise NotFound("the parent run does not exist in the tenant", reason="PARENT_RUN_NOT_FOUND")
            run.depth = parent.run.depth + 1
            _check_depth(run.depth)
        if target is not None:
            run.agent_id = target.agent.agent_id
        stored = StoredRun(run, target.agent.tenant_id if target is not None else "")
        try:
            await self.store.put_run(stored, now, create=True)
        except Exception:
            if task.idempotency_key:  # a concurrent duplicate won the race: return its run
                existing = await self.store.run_by_key(rr.tenant_id, task.idempotency_key)
                if existing is not None:
                    return existing.run
            raise
        live_run = LiveRun(stored)
        self.runs[run.run_id] = live_run
        if self.metrics is not None:
            self.metrics.invocations.labels("agent" if rr.caller is not None else "user").inc()
        self.queue.append(run.run_id)
        await self._pump()
        return _copy(live_run.run)

    def _candidates(self, tenant: str, skill: str, role: str, *, any_state: bool = False) -> list[LiveAgent]:
        out = []
        for live in self.agents.values():
            a = live.agent
            if a.tenant_id != tenant and not (set(a.tenant_scopes) & {tenant, "*"}):
                continue
            if skill not in a.skills or (role and role not in a.roles):
                continue
            if a.state == RETIRED or (not any_state and a.state not in LIVE):
                continue
            out.append(live)
        return out

    @_uninterruptible
    async def _pump(self) -> None:
        """Hands queued runs to agents with free slots, in the order they were queued."""
        if self._pumping:
            return
        self._pumping = True
        try:
            i = 0
            while i < len(self.queue):
                run_id = self.queue[i]
                live_run = self.runs.get(run_id)
                if live_run is None or live_run.run.state != QUEUED:
                    self.queue.pop(i)
                    continue
                agent = self._choose(live_run)
                if agent is None:
                    i += 1
                    continue
                self.queue.pop(i)
                await self._assign(live_run, agent)
        finally:
            self._pumping = False

    def _choose(self, live_run: LiveRun) -> LiveAgent | None:
        run = live_run.run
        if run.agent_id:
            live = self.agents.get((live_run.stored.agent_tenant_id, run.agent_id))
            if live is None or live.agent.state not in LIVE:
                return None
            return live if len(live.runs) < live.max_concurrency else None
        lives = self._candidates(run.tenant_id, run.task.skill, run.role)
        by_id = {(c.agent.tenant_id, c.agent.agent_id): c for c in lives}
        candidates = [
            Candidate(
                agent_id=f"{c.agent.tenant_id}/{c.agent.agent_id}",
                state=c.agent.state,
                active_runs=len(c.runs),
                max_concurrency=c.max_concurrency,
                cpu=c.load.cpu_usage,
                mem=c.load.mem_usage,
                region=c.agent.runtime.region,
                cost_weight=c.agent.runtime.cost_weight or 1.0,
            )
            for c in lives
        ]
        group = (run.tenant_id, run.task.skill, run.role)
        turn = self._rr.get(group, 0)
        chosen = pick(candidates, run.strategy, region=run.region, turn=turn)
        if chosen is None:
            return None
        if run.strategy == run_pb2.SCHEDULING_STRATEGY_ROUND_ROBIN:
            self._rr[group] = turn + 1
        tenant, _, agent_id = chosen.agent_id.partition("/")
        return by_id[(tenant, agent_id)]

    async def _assign(self, live_run: LiveRun, live: LiveAgent) -> None:
        run = live_run.run
        previous = run.state
        now = self.clock_ms()
        run.state = ASSIGNED
        run.state_reason = f"assigned to {live.agent.agent_id}"
        run.agent_id = live.agent.agent_id
        run.session_id = live.agent.session_id
        run.attempt += 1
        run.assign_time.CopyFrom(timestamp_ms(now))
        live_run.stored.agent_tenant_id = live.agent.tenant_id
        live.runs.add(run.run_id)
        await self._state_event(live_run, previous, run.state_reason)
        await self._save_run(live_run)
        await self._emit(ET.AGENT_EVENT_TYPE_ASSIGNED, live, run=run)
        if live.stored.kind == KIND_A2A and self.external is not None:
            await self._start(live_run)
            self.external.start(self, _copy(run), live.agent)
        else:
            live.mailbox.put(_copy(run))
        await self._refresh_state(live, "run assigned")

    # ---- runs: the agent's side ----------------------------------------------------------------------

    async def _held_run(self, live: LiveAgent, run_id: str) -> LiveRun:
        v = Violations()
        v.pattern(run_id, "run_id", validation.RUN_ID, "a run id")
        v.raise_if_any("invalid request")
        live_run = await self.load_run(run_id)
        if (
            live_run is None
            or live_run.run.agent_id != live.agent.agent_id
            or live_run.stored.agent_tenant_id != live.agent.tenant_id
        ):
            raise NotFound(
                f"run {run_id} is not assigned to this agent",
                reason="RUN_NOT_FOUND",
                metadata={"run_id": run_id},
            )
        return live_run

    async def pull_assignments(
        self, req: svc.PullAssignmentsRequest, ctx: CallContext
    ) -> svc.PullAssignmentsResponse:
        """Takes waiting assignments (long poll); they become RUNNING."""
        v = Violations()
        wait = seconds_of(req.wait)
        v.check(0 <= wait <= 60, "wait", "must be between 0 and 60 s")
        v.check(req.max_count >= 0, "max_count", "must not be negative")
        v.raise_if_any("invalid pull")
        live = await self._self_call(ctx, req.agent_id, req.session_id)
        remaining = ctx.time_remaining()
        if remaining is not None:
            wait = min(wait, max(0.0, remaining - 0.1))
        await live.mailbox.wait(wait if wait > 0 else 0.0001)
        runs, cancels = live.mailbox.take(req.max_count or 1)
        started = []
        for r in runs:
            if not r.run_id:
                continue
            live_run = self.runs.get(r.run_id)
            if (
                live_run is None
                or live_run.run.state != ASSIGNED
                or live_run.run.agent_id != live.agent.agent_id
            ):
                continue
            await self._start(live_run)
            started.append(_copy(live_run.run))
        return svc.PullAssignmentsResponse(runs=started, cancellations=[c for c in cancels if c.run_id])

    @_uninterruptible
    async def _start(self, live_run: LiveRun) -> None:
        async with self._run_lock(live_run.run.run_id):
            run = live_run.run
            if run.state != ASSIGNED:
                return
            run.state = RUNNING
            run.state_reason = "accepted by the agent"
            run.start_time.CopyFrom(timestamp_ms(self.clock_ms()))
            await self._state_event(live_run, ASSIGNED, run.state_reason)
            await self._save_run(live_run)

    async def accept(self, live: LiveAgent, ack: svc.ConnectAck) -> status_pb2.Status:
        """An agent's answer to an assignment on its session channel."""
        live_run = await self._held_run(live, ack.run_id)
        if live_run.run.state != ASSIGNED:
            return error_status(code_pb2.FAILED_PRECONDITION, "the run is not waiting for an answer")
        if ack.status.code == code_pb2.OK:
            await self._start(live_run)
            return error_status(code_pb2.OK, "")
        async with self._run_lock(live_run.run.run_id):
            live.runs.discard(live_run.run.run_id)
            await self._requeue(
                live_run, f"refused by {live.agent.agent_id}: {ack.status.message}"[:500], keep_agent=False
            )
        await self._refresh_state(live, "run refused")
        await self._pump()
        return error_status(code_pb2.OK, "")

    async def publish_run_output(
        self, req: svc.PublishRunOutputRequest, ctx: CallContext
    ) -> svc.PublishRunOutputResponse:
        """Appends output events of a running run of the calling agent; returns once they are stored."""
        validation.check_output_events(list(req.events), "events")
        _check_append_key(req.idempotency_key)
        live = await self.authenticate(ctx)
        live_run = await self._held_run(live, req.run_id)
        last = await self.append_output(live_run, list(req.events), req.idempotency_key)
        return svc.PublishRunOutputResponse(last_sequence=last)

    async def append_output(
        self, live_run: LiveRun, events: list[run_pb2.RunEvent], key: str = "", *, durable: bool = True
    ) -> int:
        """Numbers events, shows them to subscribers and stores them; the run must be RUNNING."""
        write = await self._stage_output(live_run, events, key)
        if isinstance(write, int):
            return write
        if durable:
            await write
        else:
            asyncio.ensure_future(write)  # noqa: RUF006 - the writer reports failures itself
        return events[-1].sequence

    async def _stage_output(
        self, live_run: LiveRun, events: list[run_pb2.RunEvent], key: str
    ) -> int | Awaitable[None]:
        async with live_run.lock:  # pipelined appends of one run are numbered in arrival order
            return await self._stage_locked(live_run, events, key)

    async def _stage_locked(
        self, live_run: LiveRun, events: list[run_pb2.RunEvent], key: str
    ) -> int | Awaitable[None]:
        run = live_run.run
        if key:
            staged = live_run.staged.get(key)
            if staged is not None:  # the same append again while its first copy is being stored
                events[:] = staged[0]
                return asyncio.shield(staged[1])
            stored = await self.store.appended(run.run_id, key)
            if stored is not None:
                return stored
        if run.state != RUNNING:
            raise FailedPrecondition(
                f"run {run.run_id} is {_run_state(run.state)}, not RUNNING",
                reason="RUN_NOT_RUNNING",
                metadata={"run_id": run.run_id},
            )
        now = timestamp_ms(self.clock_ms())
        seq = run.last_sequence
        numbered = []
        for e in events:
            seq += 1
            item = run_pb2.RunEvent()
            item.CopyFrom(e)
            item.sequence = seq
            item.run_id = run.run_id
            item.event_time.CopyFrom(now)
            numbered.append(item)
        live_run.add(numbered)
        holder = self.agents.get((live_run.stored.agent_tenant_id, run.agent_id))
        if holder is not None:
            for item in numbered:
                if item.HasField("token") or item.HasField("log"):
                    await self._emit(ET.AGENT_EVENT_TYPE_RUN_OUTPUT, holder, run_event=item)
        events[:] = numbered
        future = self.writer.submit(run.run_id, numbered, key)
        if key:
            # Until it is stored (then `store.appended` knows the key) or fails (then it may be sent again).
            live_run.staged[key] = (numbered, future)
            future.add_done_callback(lambda _: live_run.staged.pop(key, None))
        return asyncio.shield(future)

    async def complete_run(self, req: svc.CompleteRunRequest, ctx: CallContext) -> svc.CompleteRunResponse:
        """Finishes a running run of the calling agent with its result or error."""
        v = Violations()
        outcome = req.WhichOneof("outcome")
        v.check(outcome is not None, "outcome", "set result or error")
        if outcome == "error":
            v.check(req.error.code != code_pb2.OK, "error.code", "must not be OK (send a result instead)")
            v.text(req.error.message, "error.message", max_len=4096)
        v.check(req.ByteSize() <= 2 * 1024 * 1024, "result", "is larger than 2 MiB")
        v.raise_if_any("invalid completion")
        live = await self.authenticate(ctx)
        live_run = await self._held_run(live, req.run_id)
        run = await self.complete(
            live_run,
            req.result if outcome == "result" else None,
            req.error if outcome == "error" else None,
        )
        return svc.CompleteRunResponse(run=run)

    async def complete(
        self, live_run: LiveRun, result: struct_pb2.Value | None, error: status_pb2.Status | None
    ) -> run_pb2.Run:
        """Finishes a run as its agent reported; repeating the same completion changes nothing."""
        run = live_run.run
        state = SUCCEEDED if error is None else FAILED
        if run.state in TERMINAL_RUN_STATES:
            same = run.state == state and (
                (error is None and run.result == result) or (error is not None and run.error == error)
            )
            if same:
                return _copy(run)
            raise FailedPrecondition(
                f"run {run.run_id} already ended as {_run_state(run.state)}",
                reason="RUN_ALREADY_FINISHED",
                metadata={"run_id": run.run_id},
            )
        if run.state != RUNNING:
            raise FailedPrecondition(f"run {run.run_id} was not accepted yet", reason="RUN_NOT_RUNNING")
        await self._finish(
            live_run,
            state,
            result=result,
            error=error,
            reason="completed by the agent" if error is None else "failed",
        )
        return _copy(run)

    async def mesh_output(self, run_id: str, events: list[run_pb2.RunEvent]) -> None:
        """Output of a run the mesh executes itself (external agents)."""
        live_run = self.runs.get(run_id)
        if live_run is not None and live_run.run.state == RUNNING:
            await self.append_output(live_run, events)

    async def mesh_finish(
        self, run_id: str, result: struct_pb2.Value | None, error: status_pb2.Status | None
    ) -> None:
        """The end of a run the mesh executes itself."""
        live_run = self.runs.get(run_id)
        if live_run is not None and live_run.run.state == RUNNING:
            await self._finish(
                live_run,
                SUCCEEDED if error is None else FAILED,
                result=result,
                error=error,
                reason="finished",
            )

    @_uninterruptible
    async def _finish(
        self,
        live_run: LiveRun,
        state: int,
        *,
        result: struct_pb2.Value | None = None,
        error: status_pb2.Status | None = None,
        reason: str,
    ) -> None:
        async with self._run_lock(live_run.run.run_id):
            run = live_run.run
            if run.state in TERMINAL_RUN_STATES:
                return
            now = self.clock_ms()
            held_by = (
                self.agents.get((live_run.stored.agent_tenant_id, run.agent_id)) if run.agent_id else None
            )
            was_held = run.state in HELD_RUN_STATES
            event = run_pb2.RunEvent(sequence=run.last_sequence + 1, run_id=run.run_id)
            event.event_time.CopyFrom(timestamp_ms(now))
            event.result.state = state  # type: ignore[assignment]
            if result is not None:
                event.result.result.CopyFrom(result)
                run.result.CopyFrom(result)
            if error is not None:
                event.result.error.CopyFrom(error)
                run.error.CopyFrom(error)
            run.state = state  # type: ignore[assignment]
            run.state_reason = reason[:500]
            run.end_time.CopyFrom(timestamp_ms(now))
            live_run.add([event])
            await self.writer.write(run.run_id, [event])
            await self._save_run(live_run)
        if self.metrics is not None:
            if state == FAILED:
                self.metrics.failures.labels(
                    code_pb2.Code.Name(error.code if error else code_pb2.UNKNOWN)
                ).inc()
            if run.caller_agent_id:
                self.metrics.a2a_latency.observe(now - run.create_time.ToMilliseconds())
        if held_by is None:
            return
        held_by.runs.discard(run.run_id)
        held_by.mailbox.drop_run(run.run_id)
        if state == CANCELLED or (
            state == FAILED and error is not None and error.code == code_pb2.DEADLINE_EXCEEDED
        ):
            held_by.mailbox.put(run_pb2.RunCancellation(run_id=run.run_id, reason=reason))
            if held_by.stored.kind == KIND_A2A and self.external is not None:
                self.external.cancel(run.run_id)
        if was_held and run.start_time.ToMilliseconds():
            self._record_stats(held_by, state, (now - run.start_time.ToMilliseconds()) / 1000)
            await self.store.put_agent(held_by.stored, now)
        await self._emit(
            ET.AGENT_EVENT_TYPE_COMPLETED if state == SUCCEEDED else ET.AGENT_EVENT_TYPE_FAILED,
            held_by,
            run=run,
            reason=reason,
        )
        await self._refresh_state(held_by, "run finished")
        await self._pump()

    def _record_stats(self, live: LiveAgent, state: int, seconds: float) -> None:
        stats = live.agent.stats
        stats.run_count += 1
        failed = state != SUCCEEDED
        if failed:
            stats.error_count += 1
        alpha = 0.2
        stats.error_rate = (
            (1 - alpha) * stats.error_rate + alpha * (1.0 if failed else 0.0)
            if stats.run_count > 1
            else float(failed)
        )
        previous = seconds_of(stats.avg_latency)
        average = seconds if stats.run_count == 1 else (1 - alpha) * previous + alpha * seconds
        stats.avg_latency.CopyFrom(duration_s(average))

    async def _state_event(self, live_run: LiveRun, previous: int, reason: str) -> None:
        run = live_run.run
        event = run_pb2.RunEvent(sequence=run.last_sequence + 1, run_id=run.run_id)
        event.event_time.CopyFrom(timestamp_ms(self.clock_ms()))
        event.state_change.previous_state = previous  # type: ignore[assignment]
        event.state_change.state = run.state
        event.state_change.reason = reason[:500]
        event.state_change.agent_id = run.agent_id
        live_run.add([event])
        await self.writer.write(run.run_id, [event])

    async def _save_run(self, live_run: LiveRun) -> None:
        now = self.clock_ms()
        live_run.run.update_time.CopyFrom(timestamp_ms(now))
        await self.store.put_run(live_run.stored, now)
        live_run.wake()

    async def load_run(self, run_id: str) -> LiveRun | None:
        """A run by id: the live one of this process, else a view of the stored one."""
        live_run = self.runs.get(run_id)
        if live_run is not None:
            return live_run
        stored = await self.store.run(run_id)
        if stored is None:
            return None
        if stored.run.state in TERMINAL_RUN_STATES:
            return LiveRun(stored)  # read-only view; not kept
        return self.runs.setdefault(run_id, LiveRun(stored))

    # ---- runs: reads, cancel, output -----------------------------------------------------------------

    async def _tenant_run(self, ctx: CallContext, run_id: str) -> LiveRun:
        v = Violations()
        v.pattern(run_id, "run_id", validation.RUN_ID, "a run id such as run_0f3c…")
        v.raise_if_any("invalid request")
        tenant = self.tenant_of(ctx)
        live_run = await self.load_run(run_id)
        if live_run is None:
            raise NotFound(
                f"run {run_id} does not exist", reason="RUN_NOT_FOUND", metadata={"run_id": run_id}
            )
        if live_run.run.tenant_id == tenant:
            return live_run
        if ctx.bearer:  # an agent reading a run it holds, created by another tenant sharing its skill
            claims = self.signer.verify(ctx.bearer)
            if claims is not None and (claims.tenant_id, claims.agent_id) == (
                live_run.stored.agent_tenant_id,
                live_run.run.agent_id,
            ):
                await self.authenticate(ctx)
                return live_run
        raise NotFound(f"run {run_id} does not exist", reason="RUN_NOT_FOUND", metadata={"run_id": run_id})

    async def get_run(self, req: svc.GetRunRequest, ctx: CallContext) -> svc.GetRunResponse:
        """One run of the caller's tenant."""
        live_run = await self._tenant_run(ctx, req.run_id)
        return svc.GetRunResponse(run=_copy(live_run.run))

    async def list_runs(self, req: svc.ListRunsRequest, ctx: CallContext) -> svc.ListRunsResponse:
        """Runs of the caller's tenant, newest first."""
        tenant = self.tenant_of(ctx)
        filters = [req.agent_id, int(req.state)]
        page = page_request(req.page_size, req.page_token, filters)
        v = Violations()
        v.check(req.state in run_pb2.RunState.values(), "state", "is not a known state")
        if req.agent_id:
            v.pattern(req.agent_id, "agent_id", validation.AGENT_ID, "an agent id")
        v.raise_if_any("invalid filter")
        rows = await self.store.list_runs(tenant, page, req.agent_id, int(req.state))
        more = len(rows) > page.size
        rows = rows[: page.size]
        runs = [self.runs[r.run.run_id].run if r.run.run_id in self.runs else r.run for r in rows]
        token = ""
        if more and rows:
            last = rows[-1].run
            token = next_page_token([last.create_time.ToMilliseconds(), last.run_id], filters)
        return svc.ListRunsResponse(runs=[_copy(r) for r in runs], next_page_token=token)

    async def cancel_run(self, req: svc.CancelRunRequest, ctx: CallContext) -> svc.CancelRunResponse:
        """Cancels an unfinished run; a finished one is returned unchanged."""
        v = Violations()
        v.text(req.reason, "reason", max_len=500)
        v.raise_if_any("invalid cancel")
        live_run = await self._tenant_run(ctx, req.run_id)
        await self.cancel(live_run, req.reason or "cancelled by the caller")
        return svc.CancelRunResponse(run=_copy(live_run.run))

    async def cancel(self, live_run: LiveRun, reason: str) -> None:
        """Cancels a run (no-op when it finished)."""
        if live_run.finished:
            return
        with contextlib.suppress(ValueError):
            self.queue.remove(live_run.run.run_id)
        await self._finish(live_run, CANCELLED, error=error_status(code_pb2.CANCELLED, reason), reason=reason)

    async def stream_run_output(
        self, req: svc.StreamRunOutputRequest, ctx: CallContext
    ) -> AsyncIterator[svc.StreamRunOutputResponse]:
        """Streams a run's output from a sequence: what is stored first, then live events, then `end`."""
        v = Violations()
        v.check(req.from_sequence >= 0, "from_sequence", "must not be negative")
        v.check(req.max_events >= 0, "max_events", "must not be negative")
        idle = seconds_of(req.idle_timeout)
        v.check(0 <= idle <= 3600, "idle_timeout", "must be between 0 and 1 h")
        v.raise_if_any("invalid stream request")
        live_run = await self._tenant_run(ctx, req.run_id)
        async for item in self.follow(live_run, req.from_sequence, req.max_events, idle):
            yield item

    async def follow(
        self, live_run: LiveRun, from_sequence: int, max_events: int = 0, idle_s: float = 0.0
    ) -> AsyncIterator[svc.StreamRunOutputResponse]:
        """Every output event of a run from a sequence on, live, ending with `end`."""
        next_seq = max(1, from_sequence)
        sent = 0
        live_run.subscribers += 1
        try:
            while True:
                batch: list[run_pb2.RunEvent] = []
                if next_seq < live_run.first_in_memory:
                    batch = await self.store.events(live_run.run.run_id, next_seq, 1000)
                    batch = [e for e in batch if e.sequence < live_run.first_in_memory]
                    if not batch:  # written but not yet readable: take what memory has
                        next_seq = live_run.first_in_memory
                if not batch:
                    batch = live_run.since(next_seq)
                for e in batch:
                    if e.sequence < next_seq:
                        continue
                    yield svc.StreamRunOutputResponse(event=e)
                    next_seq = e.sequence + 1
                    sent += 1
                    if max_events and sent >= max_events:
                        yield svc.StreamRunOutputResponse(end=stream_end("MAX_EVENTS", next_seq - 1))
                        return
                if batch:
                    continue
                if live_run.finished and next_seq > live_run.run.last_sequence:
                    run = live_run.run
                    status = run.error if run.HasField("error") else error_status(code_pb2.OK, "")
                    yield svc.StreamRunOutputResponse(end=stream_end("COMPLETED", next_seq - 1, status))
                    return
                current = self.runs.get(live_run.run.run_id)
                if current is not None and current is not live_run:
                    live_run.subscribers -= 1
                    live_run = current
                    live_run.subscribers += 1
                    continue
                woke = await live_run.wait(idle_s or (None if current is not None else 0.25))
                if not woke:
                    if current is None:  # another process holds the run: poll the store
                        stored = await self.store.run(live_run.run.run_id)
                        if stored is not None:
                            refreshed = LiveRun(stored)
                            refreshed.first_in_memory = stored.run.last_sequence + 1
                            live_run.subscribers -= 1
                            live_run = refreshed
                            live_run.subscribers += 1
                        if not idle_s:
                            continue
                    yield svc.StreamRunOutputResponse(end=stream_end("IDLE_TIMEOUT", next_seq - 1))
                    return
        finally:
            live_run.subscribers -= 1

    async def wait_result(self, live_run: LiveRun) -> run_pb2.Run:
        """Waits until the run finishes."""
        live_run.subscribers += 1
        try:
            while not live_run.finished:
                await live_run.wait(1.0)
                current = self.runs.get(live_run.run.run_id)
                if current is None:
                    stored = await self.store.run(live_run.run.run_id)
                    if stored is not None and stored.run.state in TERMINAL_RUN_STATES:
                        return stored.run
                elif current is not live_run:
                    live_run.subscribers -= 1
                    live_run = current
                    live_run.subscribers += 1
            return live_run.run
        finally:
            live_run.subscribers -= 1

    # ---- operator actions ----------------------------------------------------------------------------

    async def disconnect_agent(
        self, req: svc.DisconnectAgentRequest, ctx: CallContext
    ) -> svc.DisconnectAgentResponse:
        """Takes an agent offline and hands its runs on."""
        tenant = self.tenant_of(ctx)
        _check_text(req.reason, "reason", 500)
        live = await self._require_agent(tenant, req.agent_id)
        if live.agent.state == RETIRED:
            raise FailedPrecondition(f"agent {req.agent_id} is retired", reason="AGENT_RETIRED")
        await self._disconnect(live, req.reason or "disconnected by an operator", end_session=True)
        return svc.DisconnectAgentResponse(agent=self.view(live))

    async def delete_agent(self, req: svc.DeleteAgentRequest, ctx: CallContext) -> svc.DeleteAgentResponse:
        """Retires an agent: token revoked, skills withdrawn, runs handed on or failed."""
        _check_text(req.reason, "reason", 500)
        tenant = self.tenant_of(ctx)
        live = await self._require_agent(tenant, req.agent_id)
        reason = req.reason or "deleted"
        async with self._lock(tenant, req.agent_id):
            if live.agent.state != RETIRED:
                _revoke(live)
                await self._set_state(live, RETIRED, reason, ET.AGENT_EVENT_TYPE_RETIRED)
                self._end_streams(live)
                with contextlib.suppress(NotFound):
                    await self.registry.withdraw_provider(
                        rs.WithdrawProviderRequest(provider_id=req.agent_id, reason="agent retired"),
                        _system_ctx(tenant),
                    )
        await self._hand_over(live, f"agent {req.agent_id} retired", fail_pinned=True)
        return svc.DeleteAgentResponse(agent=self.view(live))

    async def revoke_agent_token(
        self, req: svc.RevokeAgentTokenRequest, ctx: CallContext
    ) -> svc.RevokeAgentTokenResponse:
        """Revokes the agent's token and ends its session."""
        _check_text(req.reason, "reason", 500)
        tenant = self.tenant_of(ctx)
        live = await self._require_agent(tenant, req.agent_id)
        reason = req.reason or "token revoked"
        async with self._lock(tenant, req.agent_id):
            _revoke(live)
            if live.agent.state not in (DISCONNECTED, RETIRED):
                await self._set_state(live, DISCONNECTED, reason, ET.AGENT_EVENT_TYPE_DISCONNECTED)
            else:
                await self.store.put_agent(live.stored, self.clock_ms())
            self._end_streams(live)
        await self._hand_over(live, f"agent {req.agent_id}: {reason}", fail_pinned=False)
        return svc.RevokeAgentTokenResponse(agent=self.view(live))

    # ---- watch ---------------------------------------------------------------------------------------

    async def watch_agent_events(
        self, req: svc.WatchAgentEventsRequest, ctx: CallContext
    ) -> AsyncIterator[svc.WatchAgentEventsResponse]:
        """Live events of one agent (or `-` for all) of the tenant, filtered by topic and type."""
        tenant = self.tenant_of(ctx)
        v = Violations()
        v.check(req.max_events >= 0, "max_events", "must not be negative")
        idle = seconds_of(req.idle_timeout)
        v.check(0 <= idle <= 3600, "idle_timeout", "must be between 0 and 1 h")
        for i, topic in enumerate(req.topics):
            v.check(
                topic in ET.AgentEventTopic.values() and topic != 0, f"topics[{i}]", "is not a known topic"
            )
        for i, kind in enumerate(req.event_types):
            v.check(kind in ALL_EVENT_TYPES, f"event_types[{i}]", "is not a known event type")
        if req.agent_id != "-":
            v.pattern(req.agent_id, "agent_id", validation.AGENT_ID, "an agent id or -")
        v.raise_if_any("invalid watch")
        if req.agent_id != "-":
            await self._require_agent(tenant, req.agent_id)
        types = tuple(req.event_types) or ALL_EVENT_TYPES
        topics = set(req.topics)
        sent = 0
        async with _merged(self.bus, [event_topic_name(t) for t in types]) as merged:
            while True:
                try:
                    payload = await asyncio.wait_for(merged.get(), idle or None)
                except TimeoutError:
                    yield svc.WatchAgentEventsResponse(end=stream_end("IDLE_TIMEOUT", sent))
                    return
                event = ET.AgentEvent.FromString(payload)
                if event.tenant_id != tenant or req.agent_id not in ("-", event.agent_id):
                    continue
                if topics and event.topic not in topics:
                    continue
                sent += 1
                yield svc.WatchAgentEventsResponse(event=event)
                if req.max_events and sent >= req.max_events:
                    yield svc.WatchAgentEventsResponse(end=stream_end("MAX_EVENTS", sent))
                    return

    # ---- the session channel -------------------------------------------------------------------------

    async def connect(
        self, requests: AsyncIterator[svc.ConnectRequest], ctx: CallContext
    ) -> AsyncIterator[svc.ConnectResponse]:
        """An agent's session channel: hello, then heartbeats and output in, assignments out."""
        live = await self.authenticate(ctx)
        try:
            first = await asyncio.wait_for(anext(requests), 30)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidArgument(
                "the session channel must start with hello", [("hello", "is required")]
            ) from None
        if first.WhichOneof("kind") != "hello":
            raise InvalidArgument("the session channel must start with hello", [("hello", "is required")])
        hello = first.hello
        _check_load(hello.load, "hello.load")
        live = await self._self_call(ctx, hello.agent_id, hello.session_id)
        live.stream_epoch += 1
        epoch = live.stream_epoch
        live.streams += 1
        out: asyncio.Queue[svc.ConnectResponse | None] = asyncio.Queue()
        try:
            await self.heartbeat(live, hello.load)
            welcome = svc.ConnectResponse()
            welcome.welcome.session_id = live.agent.session_id
            welcome.welcome.heartbeat_interval.CopyFrom(live.agent.runtime.heartbeat_interval)
            welcome.welcome.state = live.agent.state
            yield welcome
            # Assignments sent on an earlier channel and never answered are offered again.
            waiting = {i.run_id for i in live.mailbox.items if isinstance(i, run_pb2.Run)}
            for run_id in sorted(live.runs):
                lr = self.runs.get(run_id)
                if lr is not None and lr.run.state == ASSIGNED and run_id not in waiting:
                    live.mailbox.put(_copy(lr.run))
            reader = asyncio.create_task(self._read_session(live, requests, out, epoch))
            interval = live.interval_s(self.config.default_heartbeat_s)
            try:
                while True:
                    if live.stream_epoch != epoch:
                        yield svc.ConnectResponse(end=stream_end("SESSION_ENDED", 0))
                        return
                    while not out.empty():
                        item = out.get_nowait()
                        if item is None:
                            return
                        yield item
                    runs, cancels = live.mailbox.take(1000)
                    for c in cancels:
                        if c.run_id:
                            yield svc.ConnectResponse(cancel=c)
                    for r in runs:
                        lr = self.runs.get(r.run_id)
                        if (
                            lr is not None
                            and lr.run.state == ASSIGNED
                            and lr.run.agent_id == live.agent.agent_id
                        ):
                            yield svc.ConnectResponse(assignment=_copy(lr.run))
                    if live.stream_epoch != epoch:
                        continue
                    get = asyncio.ensure_future(out.get())
                    mail = asyncio.ensure_future(live.mailbox.wait(interval))
                    done, _ = await asyncio.wait({get, mail}, return_when=asyncio.FIRST_COMPLETED)
                    if get in done:
                        mail.cancel()
                        item = get.result()
                        if item is None:
                            return
                        yield item
                    else:
                        get.cancel()
                        if not mail.result() and live.stream_epoch == epoch:
                            ping = svc.ConnectResponse()
                            ping.ping.server_time.GetCurrentTime()
                            yield ping
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        finally:
            live.streams -= 1

    async def _read_session(
        self,
        live: LiveAgent,
        requests: AsyncIterator[svc.ConnectRequest],
        out: asyncio.Queue[svc.ConnectResponse | None],
        epoch: int,
    ) -> None:
        pending: set[asyncio.Task[None]] = set()
        try:
            async for msg in requests:
                if live.stream_epoch != epoch:
                    break
                kind = msg.WhichOneof("kind")
                if kind == "heartbeat":
                    _check_load(msg.heartbeat.load, "heartbeat.load")
                    await self.heartbeat(live, msg.heartbeat.load)
                elif kind == "run_output":
                    task = asyncio.create_task(self._session_output(live, msg.run_output, out))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    await asyncio.sleep(0)
                elif kind == "run_complete":
                    if pending:
                        await asyncio.gather(*pending, return_exceptions=True)
                    c = msg.run_complete
                    receipt = svc.ConnectResponse()
                    receipt.receipt.run_id = c.run_id
                    try:
                        if c.ByteSize() > 2 * 1024 * 1024:
                            raise InvalidArgument(
                                "invalid completion", [("run_complete.result", "is larger than 2 MiB")]
                            )
                        lr = await self._held_run(live, c.run_id)
                        outcome = c.WhichOneof("outcome")
                        run = await self.complete(
                            lr,
                            c.result if outcome == "result" else None,
                            c.error if outcome == "error" else None,
                        )
                        receipt.receipt.last_sequence = run.last_sequence
                        receipt.receipt.status.code = code_pb2.OK
                    except MeshError as exc:
                        receipt.receipt.status.CopyFrom(to_status(exc, DOMAIN))
                    await out.put(receipt)
                elif kind == "ack":
                    try:
                        status = await self.accept(live, msg.ack)
                    except MeshError as exc:
                        status = to_status(exc, DOMAIN)
                    if status.code != code_pb2.OK:
                        receipt = svc.ConnectResponse()
                        receipt.receipt.run_id = msg.ack.run_id
                        receipt.receipt.status.CopyFrom(status)
                        await out.put(receipt)
                elif kind == "hello":
                    receipt = svc.ConnectResponse()
                    receipt.receipt.status.CopyFrom(
                        error_status(code_pb2.INVALID_ARGUMENT, "hello was already sent")
                    )
                    await out.put(receipt)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await out.put(None)

    async def _session_output(
        self, live: LiveAgent, msg: svc.ConnectRunOutput, out: asyncio.Queue[svc.ConnectResponse | None]
    ) -> None:
        receipt = svc.ConnectResponse()
        receipt.receipt.run_id = msg.run_id
        try:
            validation.check_output_events(list(msg.events), "run_output.events")
            _check_append_key(msg.idempotency_key)
            lr = await self._held_run(live, msg.run_id)
            receipt.receipt.last_sequence = await self.append_output(
                lr, list(msg.events), msg.idempotency_key
            )
            receipt.receipt.status.code = code_pb2.OK
        except MeshError as exc:
            receipt.receipt.status.CopyFrom(to_status(exc, DOMAIN))
        await out.put(receipt)


@contextlib.asynccontextmanager
async def _merged(bus: EventBus, topics: list[str]) -> AsyncIterator[asyncio.Queue[bytes]]:
    """One queue of the events of several bus topics (the oldest dropped when a reader falls behind)."""
    merged: asyncio.Queue[bytes] = asyncio.Queue(4096)

    async def forward(sub: Subscription) -> None:
        async for payload in sub:
            if merged.full():
                merged.get_nowait()
            merged.put_nowait(payload)

    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(bus.subscribe(t)) for t in topics]
        tasks = [asyncio.create_task(forward(sub)) for sub in subs]
        try:
            yield merged
        finally:
            for task in tasks:
                task.cancel()


def _run_state(state: int) -> str:
    return run_pb2.RunState.Name(state).removeprefix("RUN_STATE_")


def _agent_uri(agent_id: str) -> str:
    return f"agent://{agent_id}"


def _system_ctx(tenant: str) -> CallContext:
    return CallContext(
        tenant_id=tenant,
        principal="system:agents",
        request_id=uuid.uuid4().hex,
        trace_id=secrets.token_hex(16),
        span_id=secrets.token_hex(8),
    )


def _copy(msg: M) -> M:
    clone = type(msg)()
    clone.CopyFrom(msg)
    return clone


def _check_text(value: str, field: str, max_len: int) -> None:
    v = Violations()
    v.text(value, field, max_len=max_len)
    v.raise_if_any("invalid request")


def _revoke(live: LiveAgent) -> None:
    """Forgets the agent's token (its hash), so that no call authenticates with it any more."""
    live.stored.token_hash = ""
    live.agent.ClearField("token_issue_time")


def _check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FailedPrecondition(
            f"agent-to-agent call depth would be {depth}; at most {MAX_DEPTH} is allowed",
            reason="AGENT_CALL_DEPTH_EXCEEDED",
            metadata={"depth": str(depth), "max_depth": str(MAX_DEPTH)},
        )


def _check_load(load: agent_pb2.AgentLoad, field: str) -> None:
    v = Violations()
    for name in ("cpu_usage", "mem_usage"):
        value = getattr(load, name)
        v.check(0 <= value <= 1, f"{field}.{name}", "must be between 0 and 1")
    v.check(load.active_tasks >= 0, f"{field}.active_tasks", "must not be negative")
    v.check(load.uptime.seconds >= 0 and load.uptime.nanos >= 0, f"{field}.uptime", "must not be negative")
    v.raise_if_any("invalid load")


def _check_append_key(key: str) -> None:
    if key and not validation.IDEMPOTENCY_KEY.match(key):
        raise InvalidArgument(
            "invalid idempotency key",
            [("idempotency_key", "must be 1-128 printable ASCII characters without spaces")],
        )


__all__ = ["AgentCaller", "AgentConfig", "AgentService", "DeadlineExceeded", "ExternalRunner"]
