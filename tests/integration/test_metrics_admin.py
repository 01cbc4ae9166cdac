"""The Prometheus admin port serves every metric name the seeds give."""

from __future__ import annotations

from pathlib import Path

import httpx

from servers.mesh import start_mesh
from tests.conftest import mesh_settings

# Seed 000 (`agent.platform.*`, written with underscores; latency_p95 comes from the histogram), seed 001
# (registry and router) and seed 002 (agents).
SEED_METRICS = (
    "agent_platform_latency_seconds",
    "agent_platform_success_rate",
    "agent_platform_callback_failure_total",
    "agent_platform_degrade_total",
    "agent_platform_signature_failure_total",
    "registry_capabilities_total",
    "router_latency_seconds",
    "router_failures_total",
    "router_cache_hits",
    "agent_registered_total",
    "agent_active_total",
    "agent_heartbeat_latency_ms",
    "agent_invocations_total",
    "agent_failures_total",
    "agent_to_agent_latency_ms",
)


async def test_admin_port_serves_the_seed_metrics(tmp_path: Path) -> None:
    mesh = await start_mesh(mesh_settings(tmp_path, metrics_address="127.0.0.1:0"))
    try:
        assert mesh.metrics_address
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"http://{mesh.metrics_address}/metrics")
        assert r.status_code == 200
        families = {line.split()[2] for line in r.text.splitlines() if line.startswith("# TYPE ")}
        # A counter's family is its name without `_total` (`router_cache_hits` is `router_cache_hits_total`).
        names = families | {f.removesuffix("_total") for f in families}
        assert set(SEED_METRICS) <= names, set(SEED_METRICS) - names
    finally:
        await mesh.stop(0)
    # The listener is closed with the mesh.
    async with httpx.AsyncClient(timeout=2) as http:
        try:
            await http.get(f"http://{mesh.metrics_address}/metrics")
            closed = False
        except httpx.TransportError:
            closed = True
    assert closed
