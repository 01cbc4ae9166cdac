"""Agent metrics with the names of seed 002 §12, on the mesh's Prometheus registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class _Counts(Collector):
    """Scrape-time gauges from the agent directory (no bookkeeping on the hot path)."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        registered, active = self._counts()
        yield GaugeMetricFamily(
            "agent_registered_total",
            "Agents registered and not retired (seed 002: 已注册智能体数)",
            registered,
        )
        yield GaugeMetricFamily(
            "agent_active_total", "Agents heartbeating now: idle, active, busy or degraded", active
        )


class AgentMetrics:
    """The agent service's instruments."""

    def __init__(self, registry: CollectorRegistry, counts: Callable[[], tuple[int, int]]) -> None:
        registry.register(_Counts(counts))
        self.heartbeat_latency = Histogram(
            "agent_heartbeat_latency_ms",
            "How late heartbeats arrive: time since the previous one beyond the agent's interval (ms)",
            buckets=_MS_BUCKETS,
            registry=registry,
        )
        self.invocations = Counter(
            "agent_invocations_total",
            "Runs created, by who asked: a user or workflow, or another agent (A2A)",
            ["caller"],
            registry=registry,
        )
        self.a2a_latency = Histogram(
            "agent_to_agent_latency_ms",
            "Duration of runs created by another agent, from creation to end (ms)",
            buckets=_MS_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "agent_failures_total", "Runs that failed, by error code", ["code"], registry=registry
        )
