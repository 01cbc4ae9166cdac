"""Endpoint statistics (router/outlier.py): in-flight counts, latency EWMA, passive ejection, retry budget.

Pure bookkeeping with explicit `now` values: no clock, no sleeping.
"""

from __future__ import annotations

import pytest

from router.outlier import EndpointStats, InFlight, OutlierConfig, RetryBudget, StatsTable

GROUP4 = ["a", "b", "c", "d"]


def fail_n(table: StatsTable, endpoint_id: str, n: int, now: float, group: list[str]) -> list[bool]:
    return [table.failure(endpoint_id, now, group) for _ in range(n)]


# --- in flight -------------------------------------------------------------------------------------


def test_begin_counts_and_done_releases_once() -> None:
    table = StatsTable()
    first = table.begin("a")
    second = table.begin("a")
    assert table.get("a").in_flight == 2
    first.done()
    first.done()
    assert table.get("a").in_flight == 1
    second.done()
    second.done()
    assert table.get("a").in_flight == 0


def test_done_never_goes_negative() -> None:
    st = EndpointStats()
    call = InFlight(st)
    st.in_flight = 0  # e.g. reset by someone else
    call.done()
    call.done()
    assert st.in_flight == 0


def test_in_flight_survives_forget() -> None:
    table = StatsTable()
    call = table.begin("a")
    table.forget("a")
    fresh = table.get("a")
    assert fresh.in_flight == 0
    call.done()  # releases its own (forgotten) stats, not the fresh ones
    assert fresh.in_flight == 0


# --- latency EWMA ----------------------------------------------------------------------------------


def test_first_sample_sets_the_estimate() -> None:
    table = StatsTable()
    assert table.observe_latency("a", 120.0, now=5.0) == 120.0
    st = table.get("a")
    assert (st.ewma_ms, st.samples, st.last_sample_at) == (120.0, 1, 5.0)


def test_faster_sample_uses_alpha() -> None:
    table = StatsTable()
    table.observe_latency("a", 100.0, now=1.0)
    assert table.observe_latency("a", 50.0, now=2.0) == pytest.approx(100.0 + 0.3 * (50.0 - 100.0))
    assert table.get("a").samples == 2
    assert table.get("a").last_sample_at == 2.0


def test_slower_sample_weighs_double() -> None:
    table = StatsTable()
    table.observe_latency("a", 100.0, now=1.0)
    assert table.observe_latency("a", 200.0, now=2.0) == pytest.approx(100.0 + 0.6 * 100.0)


def test_slower_sample_weight_is_capped_at_one() -> None:
    table = StatsTable(OutlierConfig(ewma_alpha=0.7))
    table.observe_latency("a", 100.0, now=1.0)
    assert table.observe_latency("a", 300.0, now=2.0) == pytest.approx(300.0)
    assert table.observe_latency("a", 100.0, now=3.0) == pytest.approx(300.0 - 0.7 * 200.0)


def test_negative_latency_counts_as_zero() -> None:
    table = StatsTable()
    assert table.observe_latency("a", -5.0, now=1.0) == 0.0


def test_success_records_latency_and_resets_the_streak() -> None:
    table = StatsTable()
    fail_n(table, "a", 3, 0.0, GROUP4)
    table.success("a", 80.0, now=1.0)
    st = table.get("a")
    assert (st.successes, st.failures, st.consecutive_failures) == (1, 3, 0)
    assert (st.ewma_ms, st.samples, st.last_sample_at) == (80.0, 1, 1.0)


# --- ejection --------------------------------------------------------------------------------------


def test_ejected_after_consecutive_failures() -> None:
    table = StatsTable()
    assert table.config.consecutive_failures == 5
    assert fail_n(table, "a", 5, 100.0, GROUP4) == [False, False, False, False, True]
    st = table.get("a")
    assert st.ejected_until == 100.0 + 30.0
    assert (st.ejections, st.ejection_failures, st.consecutive_failures) == (1, 5, 0)
    assert table.generation == 1


def test_custom_consecutive_failures() -> None:
    table = StatsTable(OutlierConfig(consecutive_failures=2, base_ejection_s=10.0))
    assert fail_n(table, "a", 2, 0.0, ["a", "b"]) == [False, True]
    assert table.get("a").ejected_until == 10.0


def test_success_resets_the_failure_streak() -> None:
    table = StatsTable()
    fail_n(table, "a", 4, 0.0, GROUP4)
    table.success("a", 10.0, now=0.0)
    assert fail_n(table, "a", 4, 0.0, GROUP4) == [False] * 4
    assert table.get("a").ejected_until == 0.0
    assert table.generation == 0


def test_failures_while_ejected_do_not_extend_the_ejection() -> None:
    table = StatsTable()
    fail_n(table, "a", 5, 0.0, GROUP4)
    assert fail_n(table, "a", 10, 10.0, GROUP4) == [False] * 10
    st = table.get("a")
    assert st.ejected_until == 30.0
    assert st.ejections == 1
    assert table.generation == 1


def test_ejection_duration_grows_with_each_ejection_and_is_capped() -> None:
    table = StatsTable(OutlierConfig(base_ejection_s=30.0, max_ejection_s=100.0))
    now = 0.0
    durations = []
    for _ in range(5):
        assert fail_n(table, "a", 5, now, GROUP4)[-1] is True
        st = table.get("a")
        durations.append(st.ejected_until - now)
        now = st.ejected_until  # back exactly when the ejection ends
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0]
    assert table.get("a").ejections == 5
    assert table.generation == 5


def test_long_healthy_period_shrinks_the_next_ejection() -> None:
    cfg = OutlierConfig(base_ejection_s=30.0, max_ejection_s=300.0)
    table = StatsTable(cfg)
    fail_n(table, "a", 5, 0.0, GROUP4)  # ejected until 30
    table.success("a", 10.0, now=30.0 + 300.0 + 1.0)
    assert table.get("a").ejections == 0
    assert table.get("a").ejected_until == 0.0
    fail_n(table, "a", 5, 400.0, GROUP4)
    assert table.get("a").ejected_until == 400.0 + 30.0


def test_success_soon_after_an_ejection_keeps_the_count() -> None:
    table = StatsTable()
    fail_n(table, "a", 5, 0.0, GROUP4)  # ejected until 30
    table.success("a", 10.0, now=40.0)
    assert table.get("a").ejections == 1
    fail_n(table, "a", 5, 50.0, GROUP4)
    assert table.get("a").ejected_until == 50.0 + 60.0


def test_max_ejected_share_limits_ejections() -> None:
    table = StatsTable()  # max_ejected_share 0.5: 2 of 4
    assert fail_n(table, "a", 5, 0.0, GROUP4)[-1] is True
    assert fail_n(table, "b", 5, 0.0, GROUP4)[-1] is True
    assert fail_n(table, "c", 5, 0.0, GROUP4)[-1] is False
    assert table.get("c").ejected_until == 0.0
    assert table.generation == 2
    # Once the others are back, c's next failure ejects it (its streak was kept).
    assert table.failure("c", 30.0, GROUP4) is True
    assert table.get("c").ejection_failures == 6
    assert table.generation == 3


def test_single_endpoint_group_is_ejected() -> None:
    table = StatsTable()
    assert fail_n(table, "only", 5, 0.0, ["only"])[-1] is True
    assert table.get("only").ejected_until == 30.0


@pytest.mark.parametrize(("size", "allowed"), [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (10, 5)])
def test_at_least_one_and_at_most_the_share_are_ejected(size: int, allowed: int) -> None:
    table = StatsTable()
    group = [f"e{i}" for i in range(size)]
    results = [fail_n(table, eid, 5, 0.0, group)[-1] for eid in group]
    assert sum(results) == allowed
    assert results == [True] * allowed + [False] * (size - allowed)


def test_zero_share_still_ejects_one() -> None:
    table = StatsTable(OutlierConfig(max_ejected_share=0.0))
    assert fail_n(table, "a", 5, 0.0, GROUP4)[-1] is True
    assert fail_n(table, "b", 5, 0.0, GROUP4)[-1] is False


def test_generation_bumps_only_on_ejection() -> None:
    table = StatsTable()
    table.begin("a").done()
    table.success("a", 10.0, 0.0)
    fail_n(table, "a", 4, 0.0, GROUP4)
    assert table.generation == 0
    fail_n(table, "a", 1, 0.0, GROUP4)
    assert table.generation == 1


def test_forget_drops_the_statistics() -> None:
    table = StatsTable()
    fail_n(table, "a", 5, 0.0, GROUP4)
    table.forget("a")
    assert "a" not in table.by_endpoint
    assert table.get("a") == EndpointStats()
    table.forget("never-seen")  # no error


def test_get_creates_once() -> None:
    table = StatsTable()
    st = table.get("a")
    assert table.get("a") is st
    assert table.by_endpoint == {"a": st}


# --- retry budget ----------------------------------------------------------------------------------


def test_retry_budget_floor_is_three() -> None:
    budget = RetryBudget()
    assert budget.allowed() == 3
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert budget.retrying == 3


@pytest.mark.parametrize(("active", "allowed"), [(0, 3), (10, 3), (15, 3), (20, 4), (50, 10), (100, 20)])
def test_retry_budget_is_twenty_percent_of_active(active: int, allowed: int) -> None:
    budget = RetryBudget()
    budget.active = active
    assert budget.allowed() == allowed
    assert sum(budget.try_acquire() for _ in range(allowed + 5)) == allowed


def test_retry_budget_release_frees_a_slot_and_never_goes_negative() -> None:
    budget = RetryBudget()
    for _ in range(3):
        assert budget.try_acquire()
    assert not budget.try_acquire()
    budget.release()
    assert budget.retrying == 2
    assert budget.try_acquire()
    for _ in range(10):
        budget.release()
    assert budget.retrying == 0
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_retry_budget_custom_share_and_floor() -> None:
    budget = RetryBudget(budget_share=0.5, min_concurrency=1)
    assert budget.allowed() == 1
    budget.active = 9
    assert budget.allowed() == 4
