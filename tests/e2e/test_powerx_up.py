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
        url, lines = None, []
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"REST \+ gRPC\s+(http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
        assert url, "".join(lines)
        for _ in range(50):
            r = httpx.get(f"{url}/api/v1/integration/capabilities", headers={"x-tenant-id": "t1"}, timeout=5)
            if r.status_code == 200:
                break
            time.sleep(0.1)  # the edge may still be waiting for its first upstream health check
        assert r.status_code == 200, r.text
        assert r.json()["capabilities"] == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert (tmp_path / "data" / "mesh.db").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
