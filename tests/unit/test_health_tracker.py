"""Active health verdicts (router/health.py): the seed's thresholds per transport (seed 001 §5),
`parse_rule`, and `HealthMonitor.judge` with a fake `set_health` and a loaded RouteSnapshot.

Every time is an explicit `now` (or a fake clock): no sleeping, no network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, event_pb2
from router.health import (
    HEALTHY,
    UNKNOWN,
    UNREACHABLE,
    WARNING,
    HealthMonitor,
    HealthTracker,
    ProbeRule,
    default_rules,
    parse_rule,
)
from router.snapshot import RouteSnapshot
from router.transports.base import ProbeResult
from servers.common.context import CallContext
from servers.registry.store import CapabilityRow, EndpointRow, EventRow

GRPC = common_pb2.TRANSPORT_GRPC
HTTP = common_pb2.TRANSPORT_HTTP
MCP = common_pb2.TRANSPORT_MCP
AGENT = common_pb2.TRANSPORT_AGENT
STALE = common_pb2.HEALTH_STATE_STALE
OFFLINE = common_pb2.HEALTH_STATE_OFFLINE

OK = ProbeResult(ok=True)
FAIL = ProbeResult(ok=False, detail="connection refused")
DEGRADED = ProbeResult(ok=True, degraded=True, detail="429")


def tracker(transport: int, first_seen: float = 0.0) -> HealthTracker:
    return HealthTracker(default_rules()[transport], first_seen)


def feed(
    t: HealthTracker,
    results: Iterable[ProbeResult],
    current: int = HEALTHY,
    start: float = 0.0,
    step: float = 1.0,
) -> list[int]:
    """Feeds results one per `step` seconds, each verdict becoming the current state; returns them."""
    out = []
    now = start
    for r in results:
        current = t.observe(r, current, now)
        out.append(current)
        now += step
    return out


# --- default rules ---------------------------------------------------------------------------------


def test_default_rules_are_the_seeds_thresholds() -> None:
    rules = default_rules()
    assert set(rules) == {GRPC, HTTP, MCP, AGENT}
    assert rules[GRPC] == ProbeRule(interval_s=5.0, warn_after=3, unreachable_after=5)
    assert rules[HTTP] == ProbeRule(interval_s=5.0, warn_after=2, unreachable_after=5)
    assert rules[MCP] == ProbeRule(interval_s=15.0, warn_after=1, unreachable_after_s=30.0, timeout_s=5.0)
    assert rules[AGENT] == ProbeRule(interval_s=2.0, warn_after=1, unreachable_after=1)
    assert all(r.recover_after == 1 for r in rules.values())


def test_default_rules_are_fresh_copies() -> None:
    a = default_rules()
    a.pop(GRPC)
    assert GRPC in default_rules()


# --- per transport ---------------------------------------------------------------------------------


def test_grpc_three_failures_warn_five_unreachable() -> None:
    t = tracker(GRPC)
    assert feed(t, [FAIL] * 6) == [HEALTHY, HEALTHY, WARNING, WARNING, UNREACHABLE, UNREACHABLE]
    assert t.failures == 6


def test_http_two_failures_warn_five_unreachable() -> None:
    assert feed(tracker(HTTP), [FAIL] * 5) == [HEALTHY, WARNING, WARNING, WARNING, UNREACHABLE]


def test_mcp_failure_warns_and_thirty_seconds_without_success_is_unreachable() -> None:
    t = tracker(MCP, first_seen=0.0)
    assert t.observe(FAIL, HEALTHY, now=0.0) == WARNING
    assert t.observe(FAIL, WARNING, now=15.0) == WARNING
    assert t.observe(FAIL, WARNING, now=29.9) == WARNING
    assert t.observe(FAIL, WARNING, now=30.0) == UNREACHABLE


def test_mcp_silence_counts_from_the_last_success() -> None:
    t = tracker(MCP, first_seen=0.0)
    assert t.observe(OK, HEALTHY, now=20.0) == HEALTHY
    assert t.observe(FAIL, HEALTHY, now=35.0) == WARNING  # 15 s since the last answer
    assert t.observe(FAIL, WARNING, now=49.0) == WARNING
    assert t.observe(FAIL, WARNING, now=50.0) == UNREACHABLE


def test_mcp_is_judged_by_time_not_by_failure_count() -> None:
    t = tracker(MCP, first_seen=100.0)
    verdicts = feed(t, [FAIL] * 30, start=100.0, step=1.0)  # 30 failures within 29 s
    assert verdicts == [WARNING] * 30
    assert t.observe(FAIL, WARNING, now=130.0) == UNREACHABLE


def test_agent_one_failed_heartbeat_check_is_unreachable() -> None:
    assert feed(tracker(AGENT), [FAIL]) == [UNREACHABLE]
    assert feed(tracker(AGENT), [FAIL, OK]) == [UNREACHABLE, HEALTHY]


@pytest.mark.parametrize("transport", [GRPC, HTTP, MCP, AGENT])
@pytest.mark.parametrize("current", [WARNING, UNREACHABLE, UNKNOWN, HEALTHY])
def test_a_success_recovers_to_healthy(transport: int, current: int) -> None:
    t = tracker(transport)
    assert t.observe(OK, current, now=1.0) == HEALTHY
    assert (t.failures, t.successes, t.last_ok) == (0, 1, 1.0)


def test_full_cycle_healthy_warning_unreachable_healthy() -> None:
    t = tracker(GRPC)
    verdicts = feed(t, [FAIL] * 5 + [OK])
    assert verdicts == [HEALTHY, HEALTHY, WARNING, WARNING, UNREACHABLE, HEALTHY]


def test_a_success_resets_the_failure_streak() -> None:
    assert feed(tracker(GRPC), [FAIL, FAIL, OK, FAIL, FAIL]) == [HEALTHY] * 5
    assert feed(tracker(HTTP), [FAIL, OK, FAIL, OK]) == [HEALTHY] * 4


def test_recover_after_needs_consecutive_successes() -> None:
    t = HealthTracker(ProbeRule(interval_s=1.0, warn_after=1, unreachable_after=2, recover_after=2), 0.0)
    assert feed(t, [FAIL, FAIL, OK, FAIL, OK, OK]) == [
        WARNING,
        UNREACHABLE,
        UNREACHABLE,
        UNREACHABLE,
        UNREACHABLE,
        HEALTHY,
    ]


def test_first_success_of_an_unknown_endpoint_is_healthy() -> None:
    t = HealthTracker(ProbeRule(interval_s=1.0, warn_after=1, recover_after=3), 0.0)
    assert t.observe(OK, UNKNOWN, now=0.0) == HEALTHY


def test_failures_below_the_warn_threshold_keep_the_current_state() -> None:
    assert feed(tracker(GRPC), [FAIL, FAIL], current=UNKNOWN) == [UNKNOWN, UNKNOWN]
    assert feed(tracker(GRPC), [FAIL, FAIL, FAIL], current=UNKNOWN)[-1] == WARNING


@pytest.mark.parametrize("current", [HEALTHY, WARNING, UNREACHABLE, UNKNOWN])
def test_degraded_answer_is_warning(current: int) -> None:
    t = tracker(GRPC)
    assert t.observe(DEGRADED, current, now=0.0) == WARNING
    assert t.failures == 0
    assert t.detail == "429"


def test_degraded_answers_never_make_an_endpoint_unreachable() -> None:
    assert feed(tracker(MCP), [DEGRADED] * 10, step=10.0) == [WARNING] * 10


def test_detail_records_the_failure_reason() -> None:
    t = tracker(GRPC)
    t.observe(FAIL, HEALTHY, now=0.0)
    assert t.detail == "connection refused"
    t.observe(ProbeResult(ok=False), HEALTHY, now=1.0)
    assert t.detail == "probe failed"
    t.observe(OK, HEALTHY, now=2.0)
    assert t.detail == ""


# --- parse_rule ------------------------------------------------------------------------------------


def test_parse_rule_overrides_fields() -> None:
    base = default_rules()[GRPC]
    rule = parse_rule(base, "interval_s=1.5, warn_after=4 ,unreachable_after_s=12,recover_after=2")
    assert rule == ProbeRule(
        interval_s=1.5, warn_after=4, unreachable_after=5, unreachable_after_s=12.0, recover_after=2
    )
    assert isinstance(rule.warn_after, int)
    assert isinstance(rule.recover_after, int)
    assert isinstance(rule.unreachable_after_s, float)
    assert base == default_rules()[GRPC]  # the base is not changed


def test_parse_rule_empty_spec_keeps_the_base() -> None:
    base = default_rules()[MCP]
    assert parse_rule(base, "") == base
    assert parse_rule(base, " , ,") == base


def test_parse_rule_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown health rule field 'bogus'"):
        parse_rule(default_rules()[GRPC], "interval_s=1,bogus=2")


@pytest.mark.parametrize(
    "spec",
    ["warn_after=abc", "warn_after=1.5", "interval_s=fast", "interval_s", "timeout_s=", "recover_after=2s"],
)
def test_parse_rule_rejects_non_numbers(spec: str) -> None:
    with pytest.raises(ValueError, match="must be a number"):
        parse_rule(default_rules()[GRPC], spec)


@pytest.mark.parametrize("spec", ["interval_s=nan", "timeout_s=inf"])
def test_parse_rule_rejects_non_finite_numbers(spec: str) -> None:
    with pytest.raises(ValueError, match="must be a number"):
        parse_rule(default_rules()[GRPC], spec)


# --- HealthMonitor.judge ---------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeRegistry:
    """A fake `set_health`: records calls and applies the verdict to the snapshot as the registry would."""

    snapshot: RouteSnapshot
    calls: list[tuple[str, int, str, CallContext, int]] = field(default_factory=list)
    fail: bool = False

    async def set_health(
        self, endpoint_id: str, state: int, reason: str, ctx: CallContext, prev: int
    ) -> bool:
        self.calls.append((endpoint_id, state, reason, ctx, prev))
        if self.fail:
            raise RuntimeError("registry down")
        ep = endpoint_pb2.Endpoint()
        ep.CopyFrom(self.snapshot.endpoint(endpoint_id))  # type: ignore[arg-type]
        ep.health = state  # type: ignore[assignment]
        event = event_pb2.RegistryEvent(
            type=event_pb2.REGISTRY_EVENT_TYPE_ENDPOINT_HEALTH_CHANGED,
            endpoint_id=endpoint_id,
            endpoint=ep,
            previous_health=prev,  # type: ignore[arg-type]
        )
        revision = self.snapshot.revision + 1
        row = EventRow(
            revision, ep.tenant_id, ep.provider_id, event.type, (), (), event.SerializeToString(), 0
        )
        self.snapshot.apply([row])
        return True

    def states(self) -> list[tuple[str, int, int]]:
        return [(eid, state, prev) for eid, state, _, _, prev in self.calls]


def _snapshot(endpoints: Sequence[tuple[str, int, int]]) -> RouteSnapshot:
    cap = capability_pb2.Capability(capability_id="crm.lead.create", version="1.0.0")
    caps = [CapabilityRow("t1", "p1", "crm.lead.create", "1.0.0", "", cap.SerializeToString(), 0, 0, 1)]
    rows = [
        EndpointRow(
            eid,
            "t1",
            "p1",
            transport,
            health,
            "",
            0,
            endpoint_pb2.Endpoint(transport=transport, uri=f"grpc://{eid}:1").SerializeToString(),  # type: ignore[arg-type]
            0,
            0,
            1,
            ("crm.lead.create",),
        )
        for eid, transport, health in endpoints
    ]
    snap = RouteSnapshot()
    snap.load(10, caps, rows)
    return snap


def _monitor(snap: RouteSnapshot, clock: Clock | None = None) -> tuple[HealthMonitor, FakeRegistry]:
    fake = FakeRegistry(snap)
    return HealthMonitor(snap, {}, fake.set_health, clock=clock or Clock()), fake


async def test_judge_calls_set_health_only_on_a_change() -> None:
    snap = _snapshot([("g", GRPC, HEALTHY)])
    mon, fake = _monitor(snap)
    for _ in range(2):
        await mon.judge("g", GRPC, FAIL)
    assert fake.calls == []
    await mon.judge("g", GRPC, FAIL)
    assert fake.states() == [("g", WARNING, HEALTHY)]
    assert snap.endpoint("g").health == WARNING  # type: ignore[union-attr]
    await mon.judge("g", GRPC, FAIL)
    assert len(fake.calls) == 1
    await mon.judge("g", GRPC, FAIL)
    assert fake.states() == [("g", WARNING, HEALTHY), ("g", UNREACHABLE, WARNING)]
    await mon.judge("g", GRPC, FAIL)
    assert len(fake.calls) == 2
    await mon.judge("g", GRPC, OK)
    assert fake.states()[-1] == ("g", HEALTHY, UNREACHABLE)
    await mon.judge("g", GRPC, OK)
    assert len(fake.calls) == 3
    assert snap.offerings("crm.lead.create")[0].endpoints[0].health == HEALTHY


async def test_judge_reasons_and_context() -> None:
    snap = _snapshot([("h", HTTP, HEALTHY)])
    mon, fake = _monitor(snap)
    await mon.judge("h", HTTP, FAIL)
    await mon.judge("h", HTTP, FAIL)
    await mon.judge("h", HTTP, OK)
    (_, _, warn_reason, ctx, _), (_, _, ok_reason, _, _) = fake.calls
    assert warn_reason == "connection refused"
    assert ok_reason == "probe succeeded"
    assert ctx.principal == "system:health-monitor"
    assert ctx.request_id == "health-h"


@pytest.mark.parametrize("health", [STALE, OFFLINE])
async def test_judge_leaves_stale_and_offline_endpoints_alone(health: int) -> None:
    snap = _snapshot([("e", AGENT, health)])
    mon, fake = _monitor(snap)
    for result in (FAIL, FAIL, OK, DEGRADED, FAIL):
        await mon.judge("e", AGENT, result)
    assert fake.calls == []
    assert snap.endpoint("e").health == health  # type: ignore[union-attr]


async def test_judge_ignores_unknown_endpoints() -> None:
    mon, fake = _monitor(_snapshot([]))
    await mon.judge("nope", GRPC, FAIL)
    assert fake.calls == []


async def test_judge_uses_the_monitor_clock_for_mcp_silence() -> None:
    clock = Clock(now=500.0)
    snap = _snapshot([("m", MCP, HEALTHY)])
    mon, fake = _monitor(snap, clock)
    await mon.judge("m", MCP, FAIL)  # first seen at 500
    assert fake.states() == [("m", WARNING, HEALTHY)]
    clock.now = 515.0
    await mon.judge("m", MCP, FAIL)
    assert len(fake.calls) == 1
    clock.now = 530.0
    await mon.judge("m", MCP, FAIL)
    assert fake.states()[-1] == ("m", UNREACHABLE, WARNING)


async def test_judge_agent_failure_is_unreachable_at_once() -> None:
    snap = _snapshot([("a", AGENT, HEALTHY)])
    mon, fake = _monitor(snap)
    await mon.judge("a", AGENT, FAIL)
    assert fake.states() == [("a", UNREACHABLE, HEALTHY)]


async def test_judge_unknown_endpoint_becomes_healthy_on_success() -> None:
    snap = _snapshot([("u", GRPC, UNKNOWN)])
    mon, fake = _monitor(snap)
    await mon.judge("u", GRPC, OK)
    assert fake.states() == [("u", HEALTHY, UNKNOWN)]


async def test_judge_survives_a_failing_set_health() -> None:
    snap = _snapshot([("a", AGENT, HEALTHY)])
    mon, fake = _monitor(snap)
    fake.fail = True
    await mon.judge("a", AGENT, FAIL)  # must not raise
    assert fake.states() == [("a", UNREACHABLE, HEALTHY)]
    await mon.judge("a", AGENT, FAIL)  # still unreachable against a healthy snapshot: tried again
    assert len(fake.calls) == 2
