"""A mesh process for the agent benchmarks that also counts its database writes.

`python -m tests.bench.agent_mesh --data-dir DIR` starts the mesh as
`tests/bench/mesh_runner.py` does (`start_mesh`, SQLite in DIR, in-process bus, health monitor on, JSON
INFO logs on stderr), then hooks SQLAlchemy's `before_cursor_execute` and `commit` events on its engine
to count every INSERT/UPDATE/DELETE per table (executemany rows counted one by one) and every commit.
It prints `{"ready": true, "pid": …, "address": …, "database": PATH}` and answers commands on stdin:

- `stats {detail}`: the write counters, heartbeats seen (the count of the `agent_heartbeat_latency_ms`
  histogram, observed once per heartbeat of a live agent), live runs, RSS and a monotonic timestamp;
  with `detail`, also the agents by state and the open Connect streams (a walk over every agent).
- `profile {action: start|stop, path}`: runs the event loop thread under cProfile between the two.

It serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event

from powerx.agent.v1 import agent_pb2
from servers.common import logs
from servers.common.settings import Settings
from servers.mesh import start_mesh
from tests.bench.agent_common import rss_kib, serve_commands

_WRITE = re.compile(r'^\s*(INSERT(?:\s+OR\s+\w+)?\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)', re.IGNORECASE)


class WriteCounter:
    """Counts write statements per (verb, table), rows written and commits."""

    def __init__(self) -> None:
        self.statements: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.all_statements = 0
        self.commits = 0

    def on_execute(
        self, _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, executemany: bool
    ) -> None:
        self.all_statements += 1
        m = _WRITE.match(statement)
        if m is None:
            return
        key = f"{m.group(1).split()[0].upper()} {m.group(2)}"
        self.statements[key] += 1
        self.rows[key] += len(parameters) if executemany and parameters is not None else 1

    def on_commit(self, _conn: Any) -> None:
        self.commits += 1


async def _serve(data_dir: Path) -> None:
    settings = Settings(grpc_address="127.0.0.1:0", data_dir=data_dir, health_monitor=True)
    mesh = await start_mesh(settings)
    counter = WriteCounter()
    sync_engine = mesh._engine.sync_engine  # type: ignore[attr-defined]
    event.listen(sync_engine, "before_cursor_execute", counter.on_execute)
    event.listen(sync_engine, "commit", counter.on_commit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    agents = mesh.agents
    assert agents is not None
    assert agents.metrics is not None
    histogram = agents.metrics.heartbeat_latency

    def heartbeats() -> int:
        # Read from the histogram itself: a registry-wide collect would also run the scrape-time
        # gauges, which walk every agent.
        for metric in histogram.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count"):
                    return int(sample.value)
        return 0

    async def stats(msg: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t_ns": time.monotonic_ns(),
            "heartbeats": heartbeats(),
            "statements": dict(counter.statements),
            "rows": dict(counter.rows),
            "all_statements": counter.all_statements,
            "commits": counter.commits,
            "runs": len(agents.runs),
            "rss_kib": rss_kib(os.getpid()),
        }
        if msg.get("detail"):  # walks every agent: not inside measured windows
            out["agents"] = dict(
                Counter(agent_pb2.AgentState.Name(a.agent.state) for a in agents.agents.values())
            )
            out["connect_streams"] = sum(a.streams for a in agents.agents.values())
        return out

    profiler: list[cProfile.Profile] = []

    async def profile(msg: dict[str, Any]) -> dict[str, Any]:
        if msg["action"] == "start":
            profiler.append(cProfile.Profile())
            profiler[-1].enable()
            return {"profiling": True}
        prof = profiler.pop()
        prof.disable()
        prof.dump_stats(msg["path"])
        return {"profiling": False, "path": msg["path"]}

    commands = asyncio.create_task(
        serve_commands(
            {"address": mesh.address, "database": str((data_dir / "mesh.db").resolve())},
            {"stats": stats, "profile": profile},
        )
    )
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({commands, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        commands.cancel()
        waiter.cancel()
        await mesh.stop(grace_s=1.0)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.agent_mesh")
    parser.add_argument("--data-dir", required=True, type=Path)
    opts = parser.parse_args()
    logs.configure("INFO", "json")  # as `powerx serve`: INFO, JSON lines on stderr
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(opts.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
