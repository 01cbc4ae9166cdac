"""Circuit breakers per (tenant, platform) (servers/connector/breaker.py), on a fake clock."""

from __future__ import annotations

import pytest

from powerx.connector.v1 import degrade_pb2
from servers.connector.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breaker,
    BreakerConfig,
    Breakers,
    BreakerState,
    Outcome,
)

S, F, IGN = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Change = tuple[BreakerState, BreakerState, str]


def make(config: BreakerConfig | None = None) -> tuple[Breaker, Clock, list[Change]]:
    clock = Clock()
    changes: list[Change] = []
    breaker = Breaker(config or BreakerConfig(), clock, lambda old, new, why: changes.append((old, new, why)))
    return breaker, clock, changes


def run(breaker: Breaker, *outcomes: Outcome, latency_s: float = 0.1) -> None:
    for outcome in outcomes:
        assert breaker.allow()
        breaker.record(outcome, latency_s)


def trip(breaker: Breaker) -> None:
    run(breaker, *[F] * 5)
    assert breaker.state == OPEN


def test_states_are_the_proto_enum() -> None:
    assert (CLOSED, OPEN, HALF_OPEN) == (
        degrade_pb2.BREAKER_STATE_CLOSED,
        degrade_pb2.BREAKER_STATE_OPEN,
        degrade_pb2.BREAKER_STATE_HALF_OPEN,
    )


# --- opening ---------------------------------------------------------------------------------------


def test_consecutive_failures_open() -> None:
    b, _, changes = make()
    run(b, F, F, F, F)
    assert b.state == CLOSED
    assert b.consecutive_failures == 4
    run(b, F)
    assert b.state == OPEN
    assert b.reason == "5 consecutive failures"
    assert changes == [(CLOSED, OPEN, "5 consecutive failures")]
    assert not b.allow()


def test_success_resets_the_consecutive_count() -> None:
    b, _, _ = make()
    run(b, F, F, F, F, S, F, F, F, F)
    assert b.state == CLOSED
    assert b.consecutive_failures == 4


def test_failure_rate_opens_once_min_calls_reached() -> None:
    b, _, _ = make(BreakerConfig(consecutive=0))
    run(b, S, F, S, F, S, F, S, F, S)  # 9 calls, rate 0.44
    assert b.state == CLOSED
    run(b, F)  # 10 calls, 5 failures
    assert b.state == OPEN
    assert b.reason == "failure rate 0.50 over 10 calls in 30s"
    assert b.failure_rate == pytest.approx(0.5)


def test_rate_below_threshold_stays_closed() -> None:
    b, _, _ = make(BreakerConfig(consecutive=0))
    run(b, *[S, S, F] * 10)
    assert b.state == CLOSED
    assert b.failure_rate == pytest.approx(1 / 3)


def test_high_rate_under_min_calls_stays_closed() -> None:
    b, _, _ = make(BreakerConfig(consecutive=0, min_calls=10))
    run(b, S, F, F, F, F, F)
    assert b.failure_rate > 0.8
    assert b.state == CLOSED


def test_exact_threshold_of_0_6() -> None:
    # 6/10 must reach a 0.6 threshold even though 0.6 * 10 is 6.000000000000001 in floating point.
    b, _, _ = make(BreakerConfig(consecutive=0, failure_rate=0.6))
    run(b, S, F, S, F, S, F, S, F, F)
    assert b.state == CLOSED
    run(b, F)
    assert b.state == OPEN
    assert b.reason == "failure rate 0.60 over 10 calls in 30s"


def test_slow_successes_count_as_failures() -> None:
    b, _, changes = make()
    run(b, S, S, S, S, latency_s=10.0)
    assert b.consecutive_failures == 4
    run(b, S, latency_s=9.99)
    assert b.consecutive_failures == 0
    run(b, *[S] * 5, latency_s=12.0)
    assert b.state == OPEN
    assert changes[-1][2] == "5 consecutive failures"


def test_slow_detection_can_be_turned_off() -> None:
    b, _, _ = make(BreakerConfig(slow_call_s=0))
    run(b, *[S] * 20, latency_s=3600.0)
    assert b.state == CLOSED
    assert b.failure_rate == 0.0


def test_ignored_outcomes_are_not_counted() -> None:
    b, _, _ = make()
    run(b, F, F, F, F, *[IGN] * 50, F)
    # Ignored outcomes neither reset the run of failures nor dilute the rate.
    assert b.state == OPEN
    assert b.reason == "5 consecutive failures"


def test_ignored_outcomes_do_not_make_the_rate() -> None:
    b, _, _ = make(BreakerConfig(consecutive=0))
    run(b, *[IGN] * 30, F, F, F)
    assert b.calls_in_window == 3
    assert b.state == CLOSED


# --- window ----------------------------------------------------------------------------------------


def test_window_expiry_forgets_old_failures() -> None:
    b, clock, _ = make(BreakerConfig(consecutive=0))
    run(b, F, F, F, F, F)
    assert b.calls_in_window == 5
    clock.advance(31)
    assert b.calls_in_window == 0
    assert b.failure_rate == 0.0
    run(b, S, S, S, S, S, F)
    assert b.state == CLOSED  # 1 failure in 6: the five old ones have aged out
    assert b.failure_rate == pytest.approx(1 / 6)


def test_window_slides_instead_of_resetting() -> None:
    b, clock, _ = make(BreakerConfig(consecutive=0, window_s=30))
    run(b, F, F, F, F, F)  # t=0
    clock.advance(20)
    run(b, S, S, S, S)  # t=20
    assert b.calls_in_window == 9
    clock.advance(15)  # t=35: the failures at t=0 are gone, the successes at t=20 stay
    assert b.calls_in_window == 4
    assert b.failure_rate == 0.0


def test_outcomes_just_inside_the_window_count() -> None:
    b, clock, _ = make(BreakerConfig(consecutive=0))
    run(b, F, F, F, F, F)
    clock.advance(28.9)  # within window_s - window_s/30 of the failures
    run(b, S, S, S, S, F)
    assert b.state == OPEN


# --- open and half-open ----------------------------------------------------------------------------


def test_open_rejects_until_open_period_passes() -> None:
    b, clock, changes = make()
    trip(b)
    clock.advance(29.9)
    assert not b.allow()
    assert b.retry_after_s == pytest.approx(0.1)
    clock.advance(0.1)
    assert b.allow()
    assert b.state == HALF_OPEN
    assert b.retry_after_s == 0.0
    assert changes[-1] == (OPEN, HALF_OPEN, "open for 30s; trying 3 calls")


def test_half_open_limits_concurrent_trials() -> None:
    b, clock, _ = make()
    trip(b)
    clock.advance(30)
    assert [b.allow() for _ in range(5)] == [True, True, True, False, False]
    b.record(S)
    assert not b.allow()  # the slot of a succeeded trial is spent, not returned
    b.record(S)
    assert b.state == HALF_OPEN
    b.record(S)
    assert b.state == CLOSED


def test_all_trials_succeeding_closes_and_clears_counters() -> None:
    b, clock, changes = make()
    trip(b)
    clock.advance(30)
    run(b, S, S, S)
    assert b.state == CLOSED
    assert changes[-1] == (HALF_OPEN, CLOSED, "3 trial calls succeeded")
    assert b.consecutive_failures == 0
    assert b.calls_in_window == 0
    assert b.allow()


def test_a_failed_trial_reopens() -> None:
    b, clock, changes = make()
    trip(b)
    clock.advance(30)
    run(b, S, S, F)
    assert b.state == OPEN
    assert changes[-1] == (HALF_OPEN, OPEN, "trial call failed while half-open")
    assert b.consecutive_failures == 6
    clock.advance(29)
    assert not b.allow()  # a fresh open period
    clock.advance(1)
    assert b.allow()


def test_a_slow_trial_reopens() -> None:
    b, clock, _ = make()
    trip(b)
    clock.advance(30)
    assert b.allow()
    b.record(S, latency_s=11.0)
    assert b.state == OPEN
    assert b.reason == "trial call slow (11.0s) while half-open"


def test_an_ignored_trial_frees_its_slot() -> None:
    b, clock, _ = make()
    trip(b)
    clock.advance(30)
    assert [b.allow() for _ in range(3)] == [True, True, True]
    b.record(IGN)
    assert b.state == HALF_OPEN
    assert b.allow()
    b.record(S)
    b.record(S)
    b.record(S)
    assert b.state == CLOSED


def test_a_trial_that_never_reports_counts_as_failed() -> None:
    b, clock, _ = make()
    trip(b)
    clock.advance(30)
    assert [b.allow() for _ in range(3)] == [True, True, True]
    clock.advance(9.9)
    assert not b.allow()
    clock.advance(0.1)  # slow_call_s after the oldest trial started
    assert b.state == OPEN
    assert b.reason == "trial call did not finish within 10s"


def test_late_results_while_open_are_ignored() -> None:
    b, clock, _ = make()
    trip(b)
    b.record(F)
    b.record(S)
    assert b.state == OPEN
    clock.advance(30)
    # In HALF_OPEN with no trial running, a late result from before the trip says nothing.
    assert b.state == HALF_OPEN
    b.record(F)
    assert b.state == HALF_OPEN


# --- reset -----------------------------------------------------------------------------------------


def test_operator_reset_open_to_half_open() -> None:
    b, _, changes = make()
    trip(b)
    b.reset(HALF_OPEN, "degradation turned off by admin")
    assert b.state == HALF_OPEN
    assert b.reason == "degradation turned off by admin"
    assert changes[-1] == (OPEN, HALF_OPEN, "degradation turned off by admin")
    run(b, S, S, S)
    assert b.state == CLOSED


def test_reset_closed_and_open() -> None:
    b, clock, _ = make()
    trip(b)
    b.reset(CLOSED)
    assert b.state == CLOSED
    assert b.consecutive_failures == 0
    b.reset(OPEN, "forced")
    assert not b.allow()
    clock.advance(30)
    assert b.allow()
    with pytest.raises(ValueError):
        b.reset(degrade_pb2.BREAKER_STATE_UNSPECIFIED)


def test_reset_to_the_same_state_does_not_fire_the_hook() -> None:
    b, _, changes = make()
    b.reset(CLOSED)
    assert changes == []


def test_a_broken_hook_does_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    def hook(old: BreakerState, new: BreakerState, reason: str) -> None:
        raise RuntimeError("boom")

    b = Breaker(BreakerConfig(), Clock(), hook)
    run(b, *[F] * 5)
    assert b.state == OPEN
    assert "breaker state hook failed" in caplog.text


# --- config ----------------------------------------------------------------------------------------


def test_defaults() -> None:
    c = BreakerConfig()
    assert (
        c.window_s,
        c.min_calls,
        c.failure_rate,
        c.consecutive,
        c.slow_call_s,
        c.open_s,
        c.half_open_calls,
    ) == (
        30.0,
        10,
        0.5,
        5,
        10.0,
        30.0,
        3,
    )


def test_parse_full_spec() -> None:
    c = BreakerConfig.parse(
        "window=1m, min_calls=20,failure_rate=0.25,consecutive=3,slow=500ms,open=2m,half_open=1"
    )
    assert c == BreakerConfig(
        window_s=60,
        min_calls=20,
        failure_rate=0.25,
        consecutive=3,
        slow_call_s=0.5,
        open_s=120,
        half_open_calls=1,
    )


def test_parse_partial_and_empty() -> None:
    assert BreakerConfig.parse("") == BreakerConfig()
    assert BreakerConfig.parse("open=45") == BreakerConfig(open_s=45)
    base = BreakerConfig(min_calls=50)
    assert BreakerConfig.parse("open=1h", base) == BreakerConfig(min_calls=50, open_s=3600)


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("windw=30s", "windw"),
        ("window=30x", "window"),
        ("window=", "window"),
        ("window", "window"),
        ("window=0s", "window"),
        ("window=-5s", "window"),
        ("min_calls=1.5", "min_calls"),
        ("min_calls=0", "min_calls"),
        ("failure_rate=1.5", "failure_rate"),
        ("failure_rate=0", "failure_rate"),
        ("failure_rate=nan", "failure_rate"),
        ("failure_rate=abc", "failure_rate"),
        ("consecutive=-1", "consecutive"),
        ("slow=fast", "slow"),
        ("open=inf", "open"),
        ("half_open=0", "half_open"),
    ],
)
def test_parse_errors_name_the_key(spec: str, key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        BreakerConfig.parse(spec)


def test_small_window_still_works() -> None:
    b, clock, _ = make(BreakerConfig(window_s=0.3, consecutive=0, min_calls=2))
    run(b, F)
    clock.advance(0.31)
    run(b, F)
    assert b.state == CLOSED
    run(b, F)
    assert b.state == OPEN


# --- registry --------------------------------------------------------------------------------------


def test_registry_keys_by_tenant_and_platform() -> None:
    clock = Clock()
    seen: list[tuple[str, str, BreakerState, BreakerState, str]] = []
    reg = Breakers(clock=clock, on_change=lambda *args: seen.append(args))
    a = reg.get("t1", "coze")
    assert reg.get("t1", "coze") is a
    assert reg.get("t1", "n8n") is not a
    assert reg.get("t2", "coze") is not a
    run(a, *[F] * 5)
    assert seen == [("t1", "coze", CLOSED, OPEN, "5 consecutive failures")]
    assert reg.get("t2", "coze").allow()
    assert reg.peek("t3", "coze") is None
    assert len(reg) == 3
    reg.forget("t1", "n8n")
    assert len(reg) == 2


def test_registry_per_breaker_config() -> None:
    reg = Breakers(BreakerConfig(consecutive=2), clock=Clock())
    assert reg.get("t1", "coze").config.consecutive == 2
    assert reg.get("t1", "n8n", BreakerConfig(consecutive=9)).config.consecutive == 9


def test_registry_is_bounded_and_keeps_open_breakers() -> None:
    reg = Breakers(clock=Clock(), capacity=3)
    run(reg.get("t0", "coze"), *[F] * 5)  # oldest, but OPEN
    reg.get("t1", "coze")
    reg.get("t2", "coze")
    reg.get("t3", "coze")
    assert len(reg) == 3
    assert reg.peek("t1", "coze") is None  # the oldest CLOSED one went
    assert reg.peek("t0", "coze") is not None
    reg.get("t2", "coze")  # used: now the most recent
    reg.get("t4", "coze")
    assert reg.peek("t3", "coze") is None
    assert [key for key, _ in reg.items()] == [("t0", "coze"), ("t2", "coze"), ("t4", "coze")]


def test_registry_evicts_the_oldest_when_all_are_open() -> None:
    reg = Breakers(clock=Clock(), capacity=2)
    for tenant in ("t0", "t1"):
        run(reg.get(tenant, "coze"), *[F] * 5)
    reg.get("t2", "coze")
    assert reg.peek("t0", "coze") is None
    assert len(reg) == 2
