"""agent_stream: token events from an agent to a subscriber through the mesh vs a direct gRPC stream.

Processes: the mesh (`tests/bench/agent_mesh.py`), the agent (`tests/bench/agent_worker.py`), the
subscriber (`tests/bench/agent_subscriber.py`); this process only creates the runs and sends commands.

- mesh: CreateRun (skill of the agent) -> the mesh assigns the run on the agent's Connect stream ->
  the agent acks -> the subscriber opens StreamRunOutput and receives the replayed state changes ->
  the agent writes N token events as `run_output` messages, one event per message or 50 per message,
  then `run_complete` -> the subscriber counts tokens (one StreamRunOutputResponse per event) until `end`.
- direct: the subscriber calls a server stream on the agent process itself (`/bench.AgentDirect/Events`):
  the same events as the mesh sends to subscribers, one per message (or 50 per message for the batched
  variant), after a preamble and 20 ms of quiet: one hop, no mesh.
Figures: events/s from the agent's first write to the subscriber's N-th token (times from
CLOCK_MONOTONIC, one clock for every process), CPU per event of each process, and the time to first
token (TTFC: agent's write -> subscriber's receipt) on short runs (N = 1) and as the first token of the
long runs. Target (issue): events/s through the mesh >= 0.5x the direct stream; TTFC added reported.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import run_pb2
from tests.bench.agent_common import SERVICE, TENANT_MD, Peer
from tests.bench.common import (
    REPEATS,
    CpuMeter,
    Figures,
    fmt,
    header,
    loadavg,
    ratio,
    ratio_line,
    stop_all_children,
)

NAME = "agent_stream"
TARGET = 0.5
TEXT = "token-x "  # 8 bytes, about an LLM token
BATCH = 50


class Rig:
    """The mesh, the agent and the subscriber."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="powerx-bench-agent-stream-")
        self.dir = Path(self._tmp.name)
        self.peers: list[Peer] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _peer(self, name: str, module: str, args: list[str]) -> Peer:
        peer = Peer(name, module, args, self.dir)
        self.peers.append(peer)
        return peer

    def _start(self) -> None:
        self.mesh = self._peer("mesh", "tests.bench.agent_mesh", ["--data-dir", str(self.dir / "mesh")])
        self.mesh_address = self.mesh.ready()["address"]
        self.agent = self._peer("agent", "tests.bench.agent_worker", ["--mesh", self.mesh_address])
        ready = self.agent.ready()
        self.direct_address, self.skill = ready["address"], ready["skill"]
        self.sub = self._peer(
            "subscriber",
            "tests.bench.agent_subscriber",
            ["--mesh", self.mesh_address, "--direct", self.direct_address],
        )
        self.sub.ready()

    def pids(self) -> dict[str, int]:
        return {"mesh": self.mesh.pid, "agent": self.agent.pid, "subscriber": self.sub.pid}

    def stop(self) -> None:
        for peer in reversed(self.peers):
            peer.stop()
        self._tmp.cleanup()


class Runs:
    """One run through the mesh or one direct stream, measured."""

    def __init__(self, rig: Rig, channel: grpc.aio.Channel) -> None:
        self.rig = rig
        self.create = channel.unary_unary(
            SERVICE + "CreateRun",
            request_serializer=svc.CreateRunRequest.SerializeToString,
            response_deserializer=svc.CreateRunResponse.FromString,
        )
        self.writes = {"statements": 0, "commits": 0, "events": 0}

    async def mesh(self, n: int, batch: int, *, count_writes: bool = False) -> dict[str, Any]:
        rig = self.rig
        req = svc.CreateRunRequest(task=run_pb2.Task(skill=rig.skill, goal="stream tokens"))
        run = (await self.create(req, metadata=TENANT_MD, timeout=30)).run
        sub = await rig.sub.acall("follow", run_id=run.run_id, n=n)
        if not sub["subscribed"]:
            raise RuntimeError(f"the subscriber saw nothing of {run.run_id}")
        before = await rig.mesh.acall("stats") if count_writes else None
        with CpuMeter(rig.pids()) as meter:
            sent = await rig.agent.acall("run", run_id=run.run_id, n=n, batch=batch, text=TEXT)
            got = await rig.sub.acall("result")
        if before is not None:
            after = await rig.mesh.acall("stats")
            self.writes["statements"] += after["all_statements"] - before["all_statements"]
            self.writes["commits"] += after["commits"] - before["commits"]
            self.writes["events"] += n
        expected_receipts = -(-n // batch) + 1
        if got["tokens"] != n or got["end"] != "COMPLETED" or got["code"] != 0:
            raise RuntimeError(f"run {run.run_id}: subscriber got {got}")
        if sent["receipts"] != expected_receipts or sent["refused"]:
            raise RuntimeError(f"run {run.run_id}: agent got {sent}")
        return {
            "rate": n / ((got["t_last_ns"] - sent["t_first_ns"]) / 1e9),
            "ttfc_us": (got["t_first_ns"] - sent["t_first_ns"]) / 1e3,
            "cpu": meter.cpu_s,
            "background": meter.background_s / meter.wall_s,
        }

    async def direct(self, n: int, batch: int) -> dict[str, Any]:
        with CpuMeter(self.rig.pids()) as meter:
            got = await self.rig.sub.acall("direct", n=n, batch=batch, text=TEXT)
        if got["tokens"] != n:
            raise RuntimeError(f"direct stream: subscriber got {got}")
        return {
            "rate": n / ((got["t_last_ns"] - got["t_first_send_ns"]) / 1e9),
            "ttfc_us": (got["t_first_ns"] - got["t_first_send_ns"]) / 1e3,
            "cpu": meter.cpu_s,
            "background": meter.background_s / meter.wall_s,
        }


async def run(
    quick: bool = False, *, events: int | None = None, profile_dir: Path | None = None
) -> dict[str, Any]:
    """Runs the benchmark and prints its block; returns the headline figures."""
    n = events or (1000 if quick else 3000)
    n = max(BATCH, n - n % BATCH)
    long_runs = 1 if quick else 2
    short = 8 if quick else 20
    header(
        f"{NAME}: token events agent -> mesh -> subscriber vs agent -> subscriber direct",
        [
            "processes: agent (Connect) -> mesh -> subscriber (StreamRunOutput) | subscriber <- agent "
            "(direct grpc.aio server stream); this process creates the runs and sends commands",
            f"per repetition: {long_runs} run(s) of {n:,} token events ({len(TEXT)}-byte text) per case, "
            f"sent 1 event per message and {BATCH} per message; then {short} short runs (1 event) per "
            f"case for the time to first token; cases interleaved, order reversed every other "
            f"repetition; 1 warm-up run per case; {REPEATS} repetitions",
        ],
    )
    if profile_dir is not None:
        await asyncio.to_thread(profile_dir.mkdir, parents=True, exist_ok=True)
    rig = Rig()
    try:
        async with grpc.aio.insecure_channel(rig.mesh_address) as channel:
            return await _run(rig, Runs(rig, channel), n, long_runs, short, profile_dir)
    finally:
        rig.stop()


async def _run(
    rig: Rig, runs: Runs, n: int, long_runs: int, short: int, profile_dir: Path | None
) -> dict[str, Any]:
    figs = Figures()
    cases = [("mesh", 1), ("direct", 1), ("mesh", BATCH), ("direct", BATCH)]
    for target, batch in cases:  # warm-up
        await (runs.mesh(n, batch) if target == "mesh" else runs.direct(n, batch))
    for rep in range(REPEATS):
        got: dict[str, list[dict[str, Any]]] = {}
        for _ in range(long_runs):
            for target, batch in cases if rep % 2 == 0 else list(reversed(cases)):
                key = f"{target} {batch}/msg"
                profiled = profile_dir is not None and rep == 0 and target == "mesh" and not got.get(key)
                if profiled:
                    await rig.mesh.acall("profile", action="start")
                if target == "mesh":
                    r = await runs.mesh(n, batch, count_writes=True)
                else:
                    r = await runs.direct(n, batch)
                if profiled:
                    assert profile_dir is not None
                    path = profile_dir / f"{NAME}-mesh-{batch}.prof"
                    await rig.mesh.acall("profile", action="stop", path=str(path))
                    print(f"\n  mesh profile of one run of {n:,} events, {batch} per message ({path}):")
                    pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)
                got.setdefault(key, []).append(r)
        for key, rs in got.items():
            total = n * len(rs)
            figs.add(f"{key}: events/s", statistics.fmean(r["rate"] for r in rs), "/s", higher=True)
            for proc in (
                ("mesh", "agent", "subscriber") if key.startswith("mesh") else ("agent", "subscriber")
            ):
                cpu = sum(r["cpu"][proc] for r in rs) * 1e6 / total
                figs.add(f"{key}: {proc} CPU per event", cpu, "µs", higher=False)
            figs.add(
                f"{key}: first token latency", statistics.median(r["ttfc_us"] for r in rs), "µs", higher=False
            )
            figs.add(
                f"{key}: background CPU", statistics.fmean(r["background"] for r in rs), "cores", higher=False
            )
        ttfc: dict[str, list[float]] = {"mesh": [], "direct": []}
        for i in range(short):
            for target in ("mesh", "direct") if i % 2 == 0 else ("direct", "mesh"):
                r = await (runs.mesh(1, 1) if target == "mesh" else runs.direct(1, 1))
                ttfc[target].append(r["ttfc_us"])
        for target, values in ttfc.items():
            figs.add(f"{target}: TTFC p50 (1-event runs)", statistics.median(values), "µs", higher=False)
    print(*figs.table(), sep="\n")
    m1, d1 = figs["mesh 1/msg: events/s"], figs["direct 1/msg: events/s"]
    mb, db = figs[f"mesh {BATCH}/msg: events/s"], figs[f"direct {BATCH}/msg: events/s"]
    print(ratio_line("mesh / direct events/s, 1 event per message", m1, d1, f">= {TARGET}x"))
    print(ratio_line(f"mesh / direct events/s, {BATCH} events per message", mb, db, "- (reference)"))
    print(ratio_line(f"mesh {BATCH}/msg / direct 1/msg events/s", mb, d1, "- (reference)"))
    tm, td = figs["mesh: TTFC p50 (1-event runs)"], figs["direct: TTFC p50 (1-event runs)"]
    added = tm.median - td.median
    first_m, first_d = figs["mesh 1/msg: first token latency"], figs["direct 1/msg: first token latency"]
    print(
        f"  TTFC added by the mesh: +{fmt(added)} µs (medians of the 1-event runs: {fmt(tm.median)} vs "
        f"{fmt(td.median)} µs; best {fmt(tm.best - td.best)} µs); first token of the {n:,}-event runs: "
        f"{fmt(first_m.median)} vs {fmt(first_d.median)} µs"
    )
    w = runs.writes
    per_k = 1000 / w["events"] if w["events"] else float("nan")
    print(
        f"  mesh SQL during the measured runs: {w['statements'] * per_k:.1f} statements and "
        f"{w['commits'] * per_k:.1f} commits per 1,000 events (output stored in batches)"
    )
    return {
        "events": n,
        "mesh_rate": m1.median,
        "direct_rate": d1.median,
        "ratio": ratio(m1, d1)[0],
        "ratio_best": ratio(m1, d1)[1],
        "mesh_rate_batched": mb.median,
        "direct_rate_batched": db.median,
        "ratio_batched": ratio(mb, db)[0],
        "ttfc_mesh_us": tm.median,
        "ttfc_direct_us": td.median,
        "ttfc_added_us": added,
        "mesh_cpu_us": figs["mesh 1/msg: mesh CPU per event"].median,
        "mesh_cpu_us_batched": figs[f"mesh {BATCH}/msg: mesh CPU per event"].median,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs this benchmark alone."""
    parser = argparse.ArgumentParser(
        prog=f"python -m tests.bench.bench_{NAME}", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="1,000-event runs, fewer short runs")
    parser.add_argument("--events", type=int, default=None, help="token events per long run (3,000)")
    parser.add_argument(
        "--profile-mesh", type=Path, default=None, help="folder for cProfile stats of the mesh"
    )
    opts = parser.parse_args(argv)
    atexit.register(stop_all_children)
    print(f"load average at start: {loadavg()}", flush=True)
    started = time.perf_counter()
    try:
        asyncio.run(run(opts.quick, events=opts.events, profile_dir=opts.profile_mesh))
    except KeyboardInterrupt:
        stop_all_children()
        return 130
    print(f"  total {time.perf_counter() - started:.0f}s (load average at the end: {loadavg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
