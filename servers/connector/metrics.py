"""Connector metrics with the names of seed 000 (`agent.platform.*` as `agent_platform_*`).

Labels are platform, outcome and codes only: never tenants' secrets, contexts or workflow inputs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_S_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120)


class ConnectorMetrics:
    """The connector service's instruments."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "agent_platform_latency_seconds",
            "Duration of platform calls, retries included (seed 000: agent.platform.latency_p95)",
            ["platform"],
            buckets=_S_BUCKETS,
            registry=registry,
        )
        self.calls = Counter(
            "agent_platform_calls_total",
            "Finished invocations by outcome (seed 000 agent.platform.success_rate = succeeded / all)",
            ["platform", "outcome"],
            registry=registry,
        )
        self.success_rate = Gauge(
            "agent_platform_success_rate",
            "Share of finished invocations that succeeded since this process started (seed 000: >= 0.98)",
            ["platform"],
            registry=registry,
        )
        self._finished: dict[str, list[int]] = {}
        self.callback_failures = Counter(
            "agent_platform_callback_failure_total",
            "Callbacks rejected by the webhook guard or whose processing failed, by reason",
            ["platform", "reason"],
            registry=registry,
        )
        self.signature_failures = Counter(
            "agent_platform_signature_failure_total",
            "Webhooks whose signature was missing, invalid or stale",
            ["platform", "status"],
            registry=registry,
        )
        self.callbacks = Counter(
            "agent_platform_callbacks_total",
            "Webhooks received, by guard verdict (verified, replayed, rejected)",
            ["platform", "verdict"],
            registry=registry,
        )
        self.callback_latency = Histogram(
            "agent_platform_callback_latency_seconds",
            "Time from an asynchronous invocation's start to its callback (seed 000: callback latency < 3 s)",
            ["platform"],
            buckets=_S_BUCKETS,
            registry=registry,
        )
        self.degrades = Counter(
            "agent_platform_degrade_total",
            "Degrade switch changes, by new mode and whether the circuit breaker made them",
            ["platform", "mode", "automatic"],
            registry=registry,
        )
        self.degraded = Gauge(
            "agent_platform_degraded",
            "Tenants whose platform is degraded now (LOCAL or HUMAN), as this process last saw them",
            ["platform"],
            registry=registry,
        )
        self.credential_alerts = Counter(
            "agent_platform_credential_alert_total",
            "Credential alerts: expiring soon, expired, refresh failed, rejected",
            ["platform", "status"],
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "agent_platform_callback_outbox_pending",
            "Callbacks waiting in the durable outbox for (re)processing",
            registry=registry,
        )

    def finished(self, platform: str, outcome: str) -> None:
        """Counts a finished invocation and updates the success rate.

        Degraded answers count against the platform; awaiting-human ones are not finished yet.
        """
        self.calls.labels(platform, outcome.lower()).inc()
        counts = self._finished.setdefault(platform, [0, 0])
        counts[1] += 1
        if outcome == "SUCCEEDED":
            counts[0] += 1
        self.success_rate.labels(platform).set(counts[0] / counts[1])
