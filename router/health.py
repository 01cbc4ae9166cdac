"""The health monitor: active probes per transport, with the seed's thresholds (seed 001 §5).

| transport | probe                          | verdict                                                      |
|-----------|--------------------------------|--------------------------------------------------------------|
| grpc      | grpc.health.v1 Check           | 3 failures in a row → warning, 5 → unreachable               |
| http      | GET {uri}/health               | 2 failures in a row → warning, 5 → unreachable               |
| mcp       | MCP ping every 15 s            | a failed ping → warning, 30 s without an answer → unreachable |
| agent     | the agent's channel heartbeats | 10 s without one → unreachable (inactive)                    |

A success brings an endpoint back to healthy on its own. Verdicts are written through the registry,
so each transition is an event on the bus, in the registry watch and in `endpoint_health_state`. Stale
(lease expired) and offline (forced by an operator) endpoints are left alone: only their provider or
an operator brings them back. `HealthTracker` is the pure state machine; `HealthMonitor` runs probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from powerx.common.v1 import common_pb2
from router.snapshot import RouteSnapshot
from router.transports.base import ProbeResult, Target, Transport
from servers.common.context import CallContext
from servers.common.settings import parse_overrides

log = logging.getLogger("powerx.router.health")

HEALTHY = common_pb2.HEALTH_STATE_HEALTHY
WARNING = common_pb2.HEALTH_STATE_WARNING
UNREACHABLE = common_pb2.HEALTH_STATE_UNREACHABLE
UNKNOWN = common_pb2.HEALTH_STATE_UNKNOWN
MONITORED = frozenset({HEALTHY, WARNING, UNREACHABLE, UNKNOWN})


@dataclass(frozen=True, slots=True)
class ProbeRule:
    """How one transport is probed and judged.

    Attributes:
        interval_s: Time between probes of one endpoint.
        warn_after: Consecutive failures that make an endpoint `warning`.
        unreachable_after: Consecutive failures that make it `unreachable` (0: judged by time only).
        unreachable_after_s: Seconds without a successful probe that make it `unreachable` (0: off).
        recover_after: Consecutive successes that make it `healthy` again.
        timeout_s: Timeout of one probe.
    """

    interval_s: float
    warn_after: int
    unreachable_after: int = 0
    unreachable_after_s: float = 0.0
    recover_after: int = 1
    timeout_s: float = 2.0


def parse_rule(base: ProbeRule, spec: str) -> ProbeRule:
    """Overrides fields of `base` from `interval_s=5,warn_after=3,…` (the POWERX_HEALTH_* settings)."""
    return parse_overrides(base, spec, "health rule")


def default_rules() -> dict[int, ProbeRule]:
    """The seed's thresholds."""
    return {
        common_pb2.TRANSPORT_GRPC: ProbeRule(interval_s=5.0, warn_after=3, unreachable_after=5),
        common_pb2.TRANSPORT_HTTP: ProbeRule(interval_s=5.0, warn_after=2, unreachable_after=5),
        common_pb2.TRANSPORT_MCP: ProbeRule(
            interval_s=15.0, warn_after=1, unreachable_after_s=30.0, timeout_s=5.0
        ),
        common_pb2.TRANSPORT_AGENT: ProbeRule(interval_s=2.0, warn_after=1, unreachable_after=1),
    }


@dataclass(slots=True)
class HealthTracker:
    """The probe history of one endpoint and the state it leads to."""

    rule: ProbeRule
    first_seen: float
    failures: int = 0
    successes: int = 0
    last_ok: float | None = None
    detail: str = ""
    # The state this monitor last recorded, and when: the route snapshot may not show it yet, and a
    # verdict judged against the older state would be refused by the registry's compare-and-set.
    recorded: int | None = None
    recorded_at: float = 0.0

    def current(self, snapshot_state: int, now: float, lag_s: float) -> int:
        """The endpoint's state to judge against: our own recent write until the snapshot shows it."""
        if self.recorded is not None and (snapshot_state == self.recorded or now - self.recorded_at > lag_s):
            self.recorded = None
        return snapshot_state if self.recorded is None else self.recorded

    def observe(self, result: ProbeResult, current: int, now: float) -> int:
        """Adds a probe result; returns the state the endpoint should be in (maybe `current`)."""
        r = self.rule
        if result.ok:
            self.failures = 0
            self.successes += 1
            self.last_ok = now
            self.detail = result.detail
            if result.degraded:
                return WARNING
            if current != HEALTHY and self.successes >= r.recover_after:
                return HEALTHY
            return current if current != UNKNOWN else HEALTHY
        self.successes = 0
        self.failures += 1
        self.detail = result.detail or "probe failed"
        silent_for = now - (self.last_ok if self.last_ok is not None else self.first_seen)
        if (r.unreachable_after and self.failures >= r.unreachable_after) or (
            r.unreachable_after_s and silent_for >= r.unreachable_after_s
        ):
            return UNREACHABLE
        if self.failures >= r.warn_after:
            return WARNING if current != UNREACHABLE else UNREACHABLE
        return current


@dataclass
class HealthMonitor:
    """Probes every monitored endpoint of the snapshot on its transport's schedule."""

    snapshot: RouteSnapshot
    transports: Mapping[int, Transport]
    # (endpoint id, new state, reason, context, state the verdict was made against) → changed?
    set_health: Callable[[str, int, str, CallContext, int], Awaitable[bool]]
    rules: dict[int, ProbeRule] = field(default_factory=default_rules)
    tick_s: float = 0.5
    # How long our own recorded verdict stands in for the snapshot's older state (the snapshot follows
    # the registry within a poll interval; past this, the snapshot is believed again).
    snapshot_lag_s: float = 5.0
    max_concurrent: int = 32
    clock: Callable[[], float] = time.monotonic
    _trackers: dict[str, HealthTracker] = field(default_factory=dict)
    _next_probe: dict[str, float] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)
    probes_sent: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Probes until `stop` is set."""
        sem = asyncio.Semaphore(self.max_concurrent)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                now = self.clock()
                seen = set()
                for _, ep in self.snapshot.endpoints():
                    seen.add(ep.endpoint_id)
                    rule = self.rules.get(ep.transport)
                    if rule is None or ep.health not in MONITORED or ep.endpoint_id in self._running:
                        continue
                    due = self._next_probe.setdefault(ep.endpoint_id, now)
                    if due > now:
                        continue
                    self._next_probe[ep.endpoint_id] = now + rule.interval_s
                    self._running.add(ep.endpoint_id)
                    task = asyncio.create_task(self._probe(sem, Target.of(ep), ep.transport, rule))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                for gone in set(self._trackers) - seen:
                    self._trackers.pop(gone, None)
                    self._next_probe.pop(gone, None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.tick_s)
        finally:
            for task in tasks:
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _probe(self, sem: asyncio.Semaphore, target: Target, transport: int, rule: ProbeRule) -> None:
        try:
            async with sem:
                try:
                    result = await asyncio.wait_for(
                        self.transports[transport].probe(target, rule.timeout_s), rule.timeout_s + 1.0
                    )
                except Exception as exc:  # a probe must never take the monitor down
                    result = ProbeResult(ok=False, detail=f"probe error: {type(exc).__name__}")
                self.probes_sent += 1
                await self.judge(target.endpoint_id, transport, result)
        finally:
            self._running.discard(target.endpoint_id)

    async def judge(self, endpoint_id: str, transport: int, result: ProbeResult) -> None:
        """Feeds a probe result to the endpoint's tracker and records a changed verdict."""
        msg = self.snapshot.endpoint(endpoint_id)
        if msg is None or msg.health not in MONITORED:
            return
        now = self.clock()
        tracker = self._trackers.get(endpoint_id)
        if tracker is None:
            tracker = self._trackers[endpoint_id] = HealthTracker(self.rules[transport], now)
        current = tracker.current(msg.health, now, self.snapshot_lag_s)
        verdict = tracker.observe(result, current, now)
        if verdict == current:
            return
        reason = tracker.detail if verdict != HEALTHY else "probe succeeded"
        ctx = CallContext(principal="system:health-monitor", request_id=f"health-{endpoint_id}")
        try:
            changed = await self.set_health(endpoint_id, verdict, reason, ctx, current)
            tracker.recorded, tracker.recorded_at = (verdict, now) if changed else (None, 0.0)
        except Exception:
            log.warning(
                "could not record a health verdict", exc_info=True, extra={"endpoint_id": endpoint_id}
            )
