"""Live endpoint statistics: in-flight counts, latency EWMA, passive outlier ejection, retry budget.

Pure bookkeeping: the caller passes the time (`time.monotonic()` in production, a fake in tests).
Ejection follows Envoy's outlier detection: after `consecutive_failures` failures in a row an endpoint
is ejected for `base_ejection_s × (number of ejections so far)`, capped at `max_ejection_s`; at most
`max_ejected_share` of a capability's endpoints are ejected at once, but always at least one, so a
capability with a single endpoint cools down too instead of paying for every failed attempt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Thresholds of passive health and latency tracking."""

    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_share: float = 0.5
    # Weight of the newest latency sample; a sample slower than the estimate weighs double (reacts
    # fast to a slowing endpoint, recovers gradually).
    ewma_alpha: float = 0.3


@dataclass(slots=True)
class EndpointStats:
    """What the router has observed about one endpoint."""

    in_flight: int = 0
    ewma_ms: float = 0.0
    samples: int = 0
    last_sample_at: float = 0.0
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    ejection_failures: int = 0
    successes: int = 0
    failures: int = 0


class InFlight:
    """One call counted against an endpoint; `done()` releases it exactly once."""

    __slots__ = ("_done", "_stats")

    def __init__(self, stats: EndpointStats) -> None:
        self._stats = stats
        self._done = False
        stats.in_flight += 1

    def done(self) -> None:
        """Releases the call; further calls do nothing, so the count never goes negative."""
        if not self._done:
            self._done = True
            self._stats.in_flight = max(0, self._stats.in_flight - 1)


class StatsTable:
    """Statistics of every endpoint the router has called, shared by all calls of one process."""

    def __init__(self, config: OutlierConfig | None = None) -> None:
        self.config = config or OutlierConfig()
        self.by_endpoint: dict[str, EndpointStats] = {}
        # Bumped whenever an ejection starts, so cached route plans notice it.
        self.generation = 0

    def get(self, endpoint_id: str) -> EndpointStats:
        """The statistics of an endpoint, created empty on first use."""
        st = self.by_endpoint.get(endpoint_id)
        if st is None:
            st = self.by_endpoint[endpoint_id] = EndpointStats()
        return st

    def begin(self, endpoint_id: str) -> InFlight:
        """Counts a call as in flight on the endpoint."""
        return InFlight(self.get(endpoint_id))

    def observe_latency(self, endpoint_id: str, latency_ms: float, now: float) -> float:
        """Adds a latency sample (time to first chunk for streams); returns the new estimate."""
        st = self.get(endpoint_id)
        latency_ms = max(0.0, latency_ms)
        if not st.samples:
            st.ewma_ms = latency_ms
        else:
            alpha = self.config.ewma_alpha
            if latency_ms > st.ewma_ms:
                alpha = min(1.0, alpha * 2)
            st.ewma_ms += alpha * (latency_ms - st.ewma_ms)
        st.samples += 1
        st.last_sample_at = now
        return st.ewma_ms

    def success(self, endpoint_id: str, latency_ms: float, now: float) -> None:
        """Records a successful call: resets the failure streak and ends a past ejection's count."""
        st = self.get(endpoint_id)
        st.successes += 1
        st.consecutive_failures = 0
        # Healthy for a while after an ejection: the next ejection's back-off shrinks again.
        if st.ejected_until and now - st.ejected_until > self.config.max_ejection_s:
            st.ejections = max(0, st.ejections - 1)
            st.ejected_until = 0.0
        self.observe_latency(endpoint_id, latency_ms, now)

    def failure(self, endpoint_id: str, now: float, group: Iterable[str]) -> bool:
        """Records a failed call; returns True when it ejects the endpoint.

        Args:
            endpoint_id: The endpoint that failed.
            now: Current time.
            group: Every endpoint of the capability (for the maximum ejected share).
        """
        cfg = self.config
        st = self.get(endpoint_id)
        st.failures += 1
        st.consecutive_failures += 1
        if st.consecutive_failures < cfg.consecutive_failures or st.ejected_until > now:
            return False
        members = list(group)
        ejected = sum(
            1
            for eid in members
            if eid != endpoint_id and (o := self.by_endpoint.get(eid)) is not None and o.ejected_until > now
        )
        allowed = max(1, int(cfg.max_ejected_share * len(members)))
        if ejected + 1 > allowed:
            return False
        st.ejections += 1
        st.ejection_failures = st.consecutive_failures
        st.ejected_until = now + min(cfg.base_ejection_s * st.ejections, cfg.max_ejection_s)
        st.consecutive_failures = 0
        self.generation += 1
        return True

    def forget(self, endpoint_id: str) -> None:
        """Drops an endpoint that left the registry (its in-flight calls keep their own reference)."""
        self.by_endpoint.pop(endpoint_id, None)


class RetryBudget:
    """Envoy's retry budget: retries in flight stay under a share of active calls (with a floor).

    A burst of failures then cannot multiply the load on a struggling capability.
    """

    def __init__(self, budget_share: float = 0.2, min_concurrency: int = 3) -> None:
        self.budget_share = budget_share
        self.min_concurrency = min_concurrency
        self.active = 0
        self.retrying = 0

    def allowed(self) -> int:
        """How many retries may be in flight now."""
        return max(self.min_concurrency, int(self.budget_share * self.active))

    def try_acquire(self) -> bool:
        """Takes a retry slot; False when the budget is spent (then do not retry)."""
        if self.retrying >= self.allowed():
            return False
        self.retrying += 1
        return True

    def release(self) -> None:
        """Returns a retry slot."""
        self.retrying = max(0, self.retrying - 1)
