"""agent_heartbeats: heartbeats/s of one mesh process holding 10,000 agents, DB writes, memory per agent.

Processes: the mesh (`tests/bench/agent_mesh.py`: `start_mesh` on SQLite, counting its SQL writes),
the bare baseline (`tests/bench/agent_bare.py`: AgentService's RecordHeartbeat and Connect on a plain
grpc.aio server, doing nothing), and load generators (`tests/bench/agent_load.py`); this process only
sends commands and reads /proc.

1. Registration over gRPC: `--register` agents (500; 150 with --quick) call RegisterAgent and then
   RecordHeartbeat once (REGISTERING -> IDLE: a state change, written). Figures: registrations/s, mesh
   CPU, SQL statements and commits per agent, RSS per agent (after 50 warm-up registrations).
2. The other agents up to `--agents` (10,000; 2,000 with --quick) are written straight into the
   `agents` table as a registration plus first heartbeat leaves them, then heartbeat once, which loads
   each into the mesh's memory. RegisterAgent costs the mesh 35-115 ms of CPU per agent, more the
   more agents share its skill (see docs/benchmarks.md), so registering 10,000 would take from about
   6 minutes to most of an hour; `--register 10000` does it anyway. Figure: RSS per agent for these
   (the agent service's memory, without the registry's share).
3. Idle CPU of the mesh with every agent in memory (sweeper, health monitor).
4. Steady state, 3 repetitions, cases interleaved (order reversed every other repetition):
   - unary: RecordHeartbeat (`authorization: Bearer <token>`) round-robin over every agent, 64 calls in
     flight per load generator, against the mesh and against the bare server;
   - stream: `--streams` agents (1,000) hold Connect session streams and write heartbeats on them as
     fast as flow control allows, against the mesh and the bare server (counted by the server).
   Figures: heartbeats/s, server CPU seconds per 1,000 heartbeats, client latency, and the SQL writes of
   the mesh during the windows (per table; the `agents` table must show none), checked again from the
   outside by counting `agents` rows whose `updated_ms` falls after the steady phase began.
Target (issue): >= 5,000 heartbeats/s on one mesh process with 10,000 agents, no DB write per heartbeat.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import pstats
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.bench.agent_common import Peer, rss_kib
from tests.bench.common import (
    REPEATS,
    CpuMeter,
    Figures,
    fmt,
    header,
    loadavg,
    proc_cpu_s,
    ratio,
    ratio_line,
    stop_all_children,
)

NAME = "agent_heartbeats"
TARGET = 5000
WARM_REGISTRATIONS = 50


def _sum(replies: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in replies)


def _writes(before: dict[str, Any], after: dict[str, Any]) -> Counter[str]:
    delta: Counter[str] = Counter(after["statements"])
    delta.subtract(Counter(before["statements"]))
    return Counter({k: v for k, v in delta.items() if v})


class Rig:
    """The processes of the benchmark."""

    def __init__(self, loadgens: int, agents: int) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="powerx-bench-agents-")
        self.dir = Path(self._tmp.name)
        self.peers: list[Peer] = []
        try:
            self._start(loadgens, agents)
        except BaseException:
            self.stop()
            raise

    def _peer(self, name: str, module: str, args: list[str]) -> Peer:
        peer = Peer(name, module, args, self.dir)
        self.peers.append(peer)
        return peer

    def _start(self, loadgens: int, agents: int) -> None:
        self.mesh = self._peer("mesh", "tests.bench.agent_mesh", ["--data-dir", str(self.dir / "mesh")])
        ready = self.mesh.ready()
        self.mesh_address, self.database = ready["address"], ready["database"]
        self.bare = self._peer("bare", "tests.bench.agent_bare", [])
        self.bare_address = self.bare.ready()["address"]
        self.loadgens = [
            self._peer(
                f"load{k}",
                "tests.bench.agent_load",
                [
                    *("--mesh", self.mesh_address, "--bare", self.bare_address),
                    *("--index", str(k), "--of", str(loadgens), "--agents", str(agents)),
                ],
            )
            for k in range(loadgens)
        ]
        for lg in self.loadgens:
            lg.ready()

    def pids(self) -> dict[str, int]:
        pids = {"mesh": self.mesh.pid, "bare": self.bare.pid}
        pids.update({lg.name: lg.pid for lg in self.loadgens})
        return pids

    async def all(self, cmd: str, timeout_s: float = 900.0, **args: Any) -> list[dict[str, Any]]:
        """Sends a command to every load generator at once; their answers."""
        for lg in self.loadgens:
            lg.send(cmd, **args)
        return [await lg.aanswer(timeout_s) for lg in self.loadgens]

    def stop(self) -> None:
        for peer in reversed(self.peers):
            peer.stop()
        self._tmp.cleanup()


async def _sleep_until(t_ns: int) -> None:
    await asyncio.sleep(max(0.0, (t_ns - time.monotonic_ns()) / 1e9))


async def _drained(server: Peer) -> None:
    """Waits until the server's heartbeat count stops moving (streams flushed their backlog)."""
    last = -1
    for _ in range(100):
        now = (await server.acall("stats"))["heartbeats"]
        if now == last:
            return
        last = now
        await asyncio.sleep(0.3)


async def _profiled(rig: Rig, profile_dir: Path | None, label: str, coro: Any) -> Any:
    if profile_dir is None:
        return await coro
    await rig.mesh.acall("profile", action="start")
    try:
        return await coro
    finally:
        path = profile_dir / f"{NAME}-{label}.prof"
        await rig.mesh.acall("profile", action="stop", path=str(path))
        print(f"\n  mesh profile of {label} ({path}), top 25 by internal time:")
        pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)


async def run(
    quick: bool = False,
    *,
    agents: int | None = None,
    register: int | None = None,
    streams: int | None = None,
    loadgens: int = 1,
    in_flight: int = 64,
    window_s: float | None = None,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Runs the benchmark and prints its block; returns the headline figures."""
    agents = max(2 * WARM_REGISTRATIONS, agents or (2000 if quick else 10_000))
    register = min(agents, max(2 * WARM_REGISTRATIONS, register or (150 if quick else 500)))
    streams = min(agents, streams if streams is not None else (400 if quick else 1000))
    window_s = window_s or (1.5 if quick else 5.0)
    header(
        f"{NAME}: RecordHeartbeat and Connect heartbeats on one mesh process with {agents:,} agents",
        [
            f"processes: {loadgens} load generator(s) -> mesh | bare AgentService (grpc.aio, no work); "
            "this process only sends commands and reads /proc",
            f"agents: {register:,} registered over gRPC (RegisterAgent + first RecordHeartbeat), "
            f"{agents - register:,} written to the agents table and loaded by one heartbeat each",
            f"steady state per repetition and case: a {window_s:g} s window after 0.5 s of ramp-up; unary "
            f"RecordHeartbeat round-robin over all agents, {in_flight} in flight per load generator; "
            f"Connect streams of {streams:,} agents writing heartbeats as fast as flow control allows; "
            f"cases interleaved, order reversed every other repetition; {REPEATS} repetitions",
        ],
    )
    if profile_dir is not None:
        await asyncio.to_thread(profile_dir.mkdir, parents=True, exist_ok=True)
    rig = Rig(loadgens, agents)
    try:
        return await _run(rig, agents, register, streams, in_flight, window_s, profile_dir)
    finally:
        rig.stop()


async def _run(
    rig: Rig,
    agents: int,
    register: int,
    streams: int,
    in_flight: int,
    window_s: float,
    profile_dir: Path | None,
) -> dict[str, Any]:
    mesh, bare = rig.mesh, rig.bare
    out: dict[str, Any] = {"agents": agents, "registered": register}
    with CpuMeter({"mesh": mesh.pid}) as idle0:
        await asyncio.sleep(1.0)
    rss_empty = rss_kib(mesh.pid)

    # 1. registration over gRPC
    await rig.all("register", first=0, end=WARM_REGISTRATIONS, concurrency=8)
    s0 = await mesh.acall("stats")
    cpu0, t0 = proc_cpu_s(mesh.pid), time.perf_counter()
    replies = await _profiled(
        rig,
        profile_dir,
        "registration",
        rig.all("register", first=WARM_REGISTRATIONS, end=register, concurrency=16),
    )
    reg_wall, reg_cpu = time.perf_counter() - t0, proc_cpu_s(mesh.pid) - cpu0
    s1 = await mesh.acall("stats")
    n_reg = int(_sum(replies, "registered"))
    states = Counter[str]()
    for r in replies:
        states.update(r["states"])
    reg = {
        "agents": n_reg,
        "rate": n_reg / reg_wall,
        "mesh_cpu_ms": reg_cpu * 1000 / n_reg,
        "statements": (s1["all_statements"] - s0["all_statements"]) / n_reg,
        "writes": sum(_writes(s0, s1).values()) / n_reg,
        "commits": (s1["commits"] - s0["commits"]) / n_reg,
        "rss_kib": (s1["rss_kib"] - s0["rss_kib"]) / n_reg,
        "register_p50_ms": max(r["register_p50_ms"] for r in replies),
        "first_heartbeat_p50_ms": max(r["first_heartbeat_p50_ms"] for r in replies),
    }
    out["registration"] = reg
    print(
        f"  registration over gRPC: {n_reg:,} agents in {reg_wall:.1f}s = {reg['rate']:.0f}/s at 16 in "
        f"flight; mesh CPU {reg['mesh_cpu_ms']:.1f} ms per agent (RegisterAgent + first heartbeat); per "
        f"agent {reg['statements']:.1f} SQL statements, {reg['writes']:.1f} of them writes, "
        f"{reg['commits']:.1f} commits; latency p50 RegisterAgent {reg['register_p50_ms']:.0f} ms, "
        f"first heartbeat {reg['first_heartbeat_p50_ms']:.0f} ms; states after: {dict(states)}",
        flush=True,
    )
    print(f"    writes of the {n_reg:,} registrations, per table: {dict(_writes(s0, s1))}")

    # 2. the rest, seeded into the agents table and loaded by one heartbeat each
    secret = rig.dir / "mesh" / "agent-token.secret"
    t0 = time.perf_counter()
    seeded = await rig.all("seed", database=rig.database, secret=str(secret))
    seed_s = time.perf_counter() - t0
    n_seed = int(_sum(seeded, "seeded"))
    s2 = await mesh.acall("stats")
    cpu0, t0 = proc_cpu_s(mesh.pid), time.perf_counter()
    loaded = await rig.all("load", concurrency=32)
    load_wall, load_cpu = time.perf_counter() - t0, proc_cpu_s(mesh.pid) - cpu0
    s3 = await mesh.acall("stats", detail=True)
    loaded_states = Counter[str]()
    for r in loaded:
        loaded_states.update(r["states"])
    out["seeded"] = n_seed
    out["rss_per_seeded_kib"] = (s3["rss_kib"] - s2["rss_kib"]) / n_seed if n_seed else float("nan")
    out["rss_per_registered_kib"] = reg["rss_kib"]
    print(
        f"  seeded {n_seed:,} agents in {seed_s:.1f}s, loaded by one heartbeat each in {load_wall:.1f}s "
        f"(mesh CPU {load_cpu * 1000 / max(1, n_seed):.2f} ms per agent; writes {dict(_writes(s2, s3))}); "
        f"states {dict(loaded_states)}; mesh now holds {s3['agents']}",
        flush=True,
    )

    # 3. idle with every agent in memory
    await asyncio.sleep(0.5)

    async def idle_window(seconds: float) -> CpuMeter:
        with CpuMeter({"mesh": mesh.pid}) as meter:
            await asyncio.sleep(seconds)
        return meter

    idle = await _profiled(rig, profile_dir, "idle", idle_window(1.5 if window_s < 3 else 3.0))
    idle_ms = idle.cpu_s["mesh"] * 1000 / idle.wall_s
    out["idle_cpu_ms_per_s"] = idle_ms
    out["idle_cpu_ms_per_s_empty"] = idle0.cpu_s["mesh"] * 1000 / idle0.wall_s
    rss_loaded = rss_kib(mesh.pid)
    print(
        f"  mesh RSS: {rss_empty / 1024:.0f} MiB empty, {s1['rss_kib'] / 1024:.0f} MiB after "
        f"{n_reg + WARM_REGISTRATIONS:,} registrations, {rss_loaded / 1024:.0f} MiB with {agents:,} "
        f"agents; idle CPU {out['idle_cpu_ms_per_s_empty']:.0f} ms/s empty, {idle_ms:.0f} ms/s with "
        f"{agents:,} agents",
        flush=True,
    )

    # 4. the Connect streams, opened once (against both servers) for the stream cases
    rss_streams = rss_loaded
    if streams:
        per = -(-streams // len(rig.loadgens))
        for target in ("mesh", "bare"):
            t0 = time.perf_counter()
            opened = await rig.all("connect", target=target, count=per)
            print(
                f"  opened {int(_sum(opened, 'streams')):,} Connect streams to the {target} in "
                f"{time.perf_counter() - t0:.1f}s",
                flush=True,
            )
        await asyncio.sleep(0.5)
        rss_streams = rss_kib(mesh.pid)
        out["rss_per_stream_kib"] = (rss_streams - rss_loaded) / streams
        print(
            f"  mesh RSS with the streams open: {rss_streams / 1024:.0f} MiB "
            f"(+{out['rss_per_stream_kib']:.1f} KiB per Connect stream)",
            flush=True,
        )

    figs = Figures()
    writes_steady: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    steady_start_ms = int(time.time() * 1000)
    cases = ["unary mesh", "unary bare"] + (["stream mesh", "stream bare"] if streams else [])
    pids = rig.pids()
    for rep in range(REPEATS):
        for case in cases if rep % 2 == 0 else list(reversed(cases)):
            kind, target = case.split()
            server = mesh if target == "mesh" else bare
            start = time.monotonic_ns() + 500_000_000
            end = start + int(window_s * 1e9)
            cmd = "unary" if kind == "unary" else "stream"

            async def window(server: Peer = server, start: int = start, end: int = end) -> Any:
                await _sleep_until(start)
                with CpuMeter(pids) as meter:
                    before = await server.acall("stats")
                    await _sleep_until(end)
                    after = await server.acall("stats")
                return meter, before, after

            for lg in rig.loadgens:
                lg.send(cmd, target=target, in_flight=in_flight, count_from_ns=start, count_to_ns=end)
            label = f"{kind}-mesh" if target == "mesh" and rep == 0 else ""
            if label and profile_dir is not None:
                meter, before, after = await _profiled(rig, profile_dir, label, window())
            else:
                meter, before, after = await window()
            replies = [await lg.aanswer(60) for lg in rig.loadgens]
            server_rate = (after["heartbeats"] - before["heartbeats"]) / (
                (after["t_ns"] - before["t_ns"]) / 1e9
            )
            if kind == "unary":
                rate = _sum(replies, "ok") / window_s
                for r in replies:
                    errors.update(r["errors"])
                figs.add(f"{case}: p50 latency", max(r["p50_us"] for r in replies), "µs", higher=False)
                figs.add(f"{case}: p99 latency", max(r["p99_us"] for r in replies), "µs", higher=False)
            else:
                rate = server_rate
                await _drained(server)
            figs.add(f"{case}: heartbeats/s", rate, "/s", higher=True)
            server_cores = meter.cpu_s[target] / meter.wall_s
            figs.add(f"{case}: {target} CPU per 1k heartbeats", server_cores / rate * 1000, "s", higher=False)
            client_cores = sum(meter.cpu_s[lg.name] for lg in rig.loadgens) / meter.wall_s
            figs.add(f"{case}: client CPU per 1k heartbeats", client_cores / rate * 1000, "s", higher=False)
            figs.add(f"{case}: background CPU", meter.background_s / meter.wall_s, "cores", higher=False)
            if target == "mesh":
                writes_steady.update(_writes(before, after))
    steady_end = await mesh.acall("stats")
    with contextlib.closing(sqlite3.connect(f"file:{rig.database}?mode=ro", uri=True, timeout=30)) as db:
        touched = db.execute(
            "SELECT COUNT(*) FROM agents WHERE tenant_id = 'bench-agents' AND updated_ms >= ?",
            (steady_start_ms,),
        ).fetchone()[0]
        total_rows = db.execute("SELECT COUNT(*) FROM agents WHERE tenant_id = 'bench-agents'").fetchone()[0]
    if streams:
        await rig.all("disconnect")

    print(*figs.table(), sep="\n")
    um, ub = figs["unary mesh: heartbeats/s"], figs["unary bare: heartbeats/s"]
    uc, bc = figs["unary mesh: mesh CPU per 1k heartbeats"], figs["unary bare: bare CPU per 1k heartbeats"]
    print(ratio_line("unary: mesh heartbeats/s / bare calls/s", um, ub, "- (cost of the mesh's work)"))
    print(ratio_line("unary: mesh CPU per heartbeat / bare CPU per call", uc, bc, "- (steadier than rates)"))
    print(
        f"  unary mesh heartbeats/s vs the issue's target: median {fmt(um.median)} (best {fmt(um.best)}) "
        f"against >= {TARGET:,}/s; one core's worth of mesh CPU would carry {fmt(1000 / uc.median)}/s "
        f"(bare server: {fmt(1000 / bc.median)}/s)"
    )
    out.update(
        unary_rate=um.median,
        unary_best=um.best,
        bare_rate=ub.median,
        unary_ratio=ratio(um, ub)[0],
        unary_cpu_s_per_1k=uc.median,
        bare_cpu_s_per_1k=bc.median,
        unary_cpu_ratio=ratio(uc, bc)[0],
    )
    if streams:
        sm, sb = figs["stream mesh: heartbeats/s"], figs["stream bare: heartbeats/s"]
        sc, sbc = (
            figs["stream mesh: mesh CPU per 1k heartbeats"],
            figs["stream bare: bare CPU per 1k heartbeats"],
        )
        print(ratio_line("stream: mesh heartbeats/s / bare heartbeats/s", sm, sb, "- (reference)"))
        print(ratio_line("stream: mesh CPU per heartbeat / bare CPU", sc, sbc, "- (reference)"))
        print(
            f"  stream mesh heartbeats/s vs the issue's target: median {fmt(sm.median)} "
            f"(best {fmt(sm.best)}) against >= {TARGET:,}/s; one core's worth of mesh CPU would carry "
            f"{fmt(1000 / sc.median)}/s"
        )
        out.update(
            stream_rate=sm.median,
            stream_best=sm.best,
            stream_bare_rate=sb.median,
            stream_ratio=ratio(sm, sb)[0],
            stream_cpu_s_per_1k=sc.median,
        )
    agent_writes = sum(v for k, v in writes_steady.items() if k.endswith(" agents"))
    out["steady_agent_writes"] = agent_writes
    out["steady_agent_rows_touched"] = touched
    out["steady_writes"] = dict(writes_steady)
    n_beats = steady_end["heartbeats"]
    print(
        f"  DB writes by the mesh during the steady windows: {agent_writes} to the agents table "
        f"(all tables: {dict(writes_steady) or 'none'}); agents rows with updated_ms after the steady phase "
        f"began: {touched} of {total_rows:,}; heartbeats the mesh saw in all: {n_beats:,}; "
        f"RPC errors: {dict(errors) or 'none'}"
    )
    rss_end = rss_kib(mesh.pid)
    out["rss_end_mib"] = rss_end / 1024
    print(
        f"  memory per agent (VmRSS): {reg['rss_kib']:.1f} KiB per agent registered over gRPC "
        f"(agent service + registry + route snapshot), {out['rss_per_seeded_kib']:.1f} KiB per seeded agent "
        f"(agent service only); mesh RSS {rss_streams / 1024:.0f} MiB before the steady phase, "
        f"{rss_end / 1024:.0f} MiB after it ({(rss_end - rss_empty) / agents:.1f} KiB per agent over the "
        f"empty mesh, Connect streams included)"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Runs this benchmark alone."""
    parser = argparse.ArgumentParser(
        prog=f"python -m tests.bench.bench_{NAME}", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="2,000 agents, 1.5 s windows")
    parser.add_argument("--agents", type=int, default=None, help="agents in all (10,000)")
    parser.add_argument("--register", type=int, default=None, help="agents registered over gRPC (500)")
    parser.add_argument("--streams", type=int, default=None, help="agents holding Connect streams (1,000)")
    parser.add_argument("--loadgens", type=int, default=1, help="load generator processes (1)")
    parser.add_argument("--in-flight", type=int, default=64, help="unary calls in flight per load generator")
    parser.add_argument("--window", type=float, default=None, help="seconds per measured window (5)")
    parser.add_argument(
        "--profile-mesh", type=Path, default=None, help="folder for cProfile stats of the mesh"
    )
    opts = parser.parse_args(argv)
    atexit.register(stop_all_children)
    print(f"load average at start: {loadavg()}", flush=True)
    started = time.perf_counter()
    try:
        asyncio.run(
            run(
                opts.quick,
                agents=opts.agents,
                register=opts.register,
                streams=opts.streams,
                loadgens=opts.loadgens,
                in_flight=opts.in_flight,
                window_s=opts.window,
                profile_dir=opts.profile_mesh,
            )
        )
    except KeyboardInterrupt:
        stop_all_children()
        return 130
    print(f"  total {time.perf_counter() - started:.0f}s (load average at the end: {loadavg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
