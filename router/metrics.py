"""Prometheus metrics of the registry and router (seed 001 §12), on a registry per mesh process.

Counters and histograms are updated on the call path; the catalog gauges (`registry_capabilities_total`,
`endpoint_health_state`) are computed from the route snapshot when scraped, so they cost nothing per call.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from powerx.common.v1 import common_pb2
from router.snapshot import RouteSnapshot

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def transport_label(t: int) -> str:
    """`grpc`, `http`, `mcp`, `agent`."""
    return common_pb2.Transport.Name(t).removeprefix("TRANSPORT_").lower() if t else "unspecified"


def health_label(h: int) -> str:
    """`healthy`, `warning`, and so on."""
    return common_pb2.HealthState.Name(h).removeprefix("HEALTH_STATE_").lower() if h else "unspecified"


class _CatalogCollector(Collector):
    def __init__(self, snapshot: RouteSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        caps = GaugeMetricFamily(
            "registry_capabilities_total",
            "Capability offerings registered, per provider.",
            labels=["provider"],
        )
        per_provider: Tally[str] = Tally()
        for (_, provider), n in self.snapshot.capability_count_by_provider().items():
            per_provider[provider] += n
        for provider, n in sorted(per_provider.items()):
            caps.add_metric([provider], n)
        yield caps
        health = GaugeMetricFamily(
            "endpoint_health_state",
            "Endpoints per transport, provider and health state.",
            labels=["transport", "provider", "state"],
        )
        tally: Tally[tuple[str, str, str]] = Tally()
        for _, ep in self.snapshot.endpoints():
            tally[(transport_label(ep.transport), ep.provider_id, health_label(ep.health))] += 1
        for labels, n in sorted(tally.items()):
            health.add_metric(list(labels), n)
        yield health


class RouterMetrics:
    """The router's metrics on their own registry."""

    def __init__(self, registry: CollectorRegistry, snapshot: RouteSnapshot) -> None:
        self.registry = registry
        self.latency = Histogram(
            "router_latency_seconds",
            "Routed call latency (time to first chunk for streams), per capability.",
            ["capability"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "router_failures_total",
            "Failed attempts, per capability and transport.",
            ["capability", "transport"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "router_cache_hits", "Route decisions served from a cached plan.", registry=registry
        )
        self.cache_misses = Counter(
            "router_cache_misses", "Route decisions that had to filter and score again.", registry=registry
        )
        self.ejections = Counter(
            "router_ejections_total",
            "Endpoints ejected after consecutive failures.",
            ["transport"],
            registry=registry,
        )
        registry.register(_CatalogCollector(snapshot))
