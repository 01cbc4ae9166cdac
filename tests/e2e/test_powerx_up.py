"""`powerx up` as a user runs it: mesh and edge start, answer REST, and stop cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.envoy


def test_powerx_up_serves_rest_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        POWERX_GRPC_ADDRESS="127.0.0.1:0",
        POWERX_EDGE_ADDRESS="127.0.0.1:0",
        POWERX_ENVOY_ADMIN_ADDRESS="127.0.0.1:0",
        POWERX_A2A_ADDRESS="127.0.0.1:0",
        POWERX_METRICS_ADDRESS="127.0.0.1:0",
        POWERX_DATA_DIR=str(tmp_path / "data"),
        POWERX_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "servers.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        url, metrics, key, lines = None, None, None, []
        deadline = time.monotonic() + 30
        while "Press Ctrl-C" not in "".join(lines[-1:]) and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if match := re.search(r"REST \+ gRPC\s+(http://127\.0\.0\.1:\d+)", line):
                url = match.group(1)
            if match := re.search(r"Metrics\s+(http://127\.0\.0\.1:\d+/metrics)", line):
                metrics = match.group(1)
            if match := re.search(r"export POWERX_API_KEY=(pxk_\S+)", line):
                key = match.group(1)
        assert url, "".join(lines)
        # Authentication is on by default; the first start prints an operator key, once.
        assert key, "".join(lines)
        caps = f"{url}/api/v1/integration/capabilities"
        for _ in range(50):
            r = httpx.get(caps, headers={"x-tenant-id": "t1", "x-api-key": key}, timeout=5)
            if r.status_code == 200:
                break
            time.sleep(0.1)  # the edge may still be waiting for its first upstream health check
        assert r.status_code == 200, r.text
        assert r.json()["capabilities"] == []
        refused = httpx.get(caps, headers={"x-tenant-id": "t1"}, timeout=5)
        assert refused.status_code == 401, refused.text
        assert refused.json()["details"][0]["reason"] == "UNAUTHENTICATED"
        assert metrics, "".join(lines)
        exposition = httpx.get(metrics, timeout=5).text
        assert "registry_capabilities_total" in exposition
        assert "agent_platform_calls_total" in exposition
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert (tmp_path / "data" / "mesh.db").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
