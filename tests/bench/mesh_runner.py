"""Runs one mesh process for the benchmarks: `python -m tests.bench.mesh_runner --data-dir DIR`.

Starts the mesh with `servers.mesh.start_mesh` on an ephemeral port (SQLite in DIR, in-process bus,
health monitor on), prints `{"ready": true, "pid": …, "address": "127.0.0.1:PORT"}` and serves until
SIGTERM or SIGINT. With `--profile FILE` the event loop thread runs under cProfile and the stats are
written to FILE on exit (the router's Python code runs on that thread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import signal
import sys
from pathlib import Path

from servers.common import logs
from servers.common.settings import Settings
from servers.mesh import start_mesh


async def _serve(data_dir: Path) -> None:
    mesh = await start_mesh(Settings(grpc_address="127.0.0.1:0", data_dir=data_dir, health_monitor=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(json.dumps({"ready": True, "pid": os.getpid(), "address": mesh.address}) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await mesh.stop(grace_s=1.0)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.mesh_runner")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats here on exit")
    opts = parser.parse_args()
    # As `powerx serve` does: INFO, JSON lines on stderr.
    logs.configure("INFO", "json")
    profiler = cProfile.Profile() if opts.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(opts.data_dir))
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(opts.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
