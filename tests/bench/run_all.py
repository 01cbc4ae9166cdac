"""Runs the router benchmarks: `python -m tests.bench.run_all [--quick] [--only NAME[,NAME]]`.

Benchmarks never pass or fail: each prints its setup, absolute figures (median and best of 3
repetitions) and ratios against a baseline measured in the same run, next to the issue's target.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import os
import platform
import pstats
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import __version__ as protobuf_version

from tests.bench import (
    bench_agent_heartbeats,
    bench_agent_stream,
    bench_connector_invoke,
    bench_invoke_overhead,
    bench_resolve_direct,
    bench_route_decision,
    bench_scale_out,
    bench_stream,
    bench_webhooks,
)
from tests.bench.common import Cluster, fmt, loadavg, stop_all_children

IN_PROCESS = {bench_route_decision.NAME: bench_route_decision}
WITH_CLUSTER = {
    bench_invoke_overhead.NAME: bench_invoke_overhead,
    bench_resolve_direct.NAME: bench_resolve_direct,
    bench_stream.NAME: bench_stream,
}
# Benchmarks that start processes of their own (a mesh with 10,000 agents, an agent, a subscriber;
# `powerx up` with its Envoy edge and a fake n8n for the connector benchmarks).
OWN_PROCESSES = {
    bench_agent_heartbeats.NAME: bench_agent_heartbeats,
    bench_agent_stream.NAME: bench_agent_stream,
    bench_webhooks.NAME: bench_webhooks,
    bench_connector_invoke.NAME: bench_connector_invoke,
    # Two `powerx serve` processes on PostgreSQL + Redis behind Envoy (skipped without the servers).
    bench_scale_out.NAME: bench_scale_out,
}
ALL = [*IN_PROCESS, *WITH_CLUSTER, *OWN_PROCESSES]


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _summary(results: dict[str, Any]) -> None:
    print()
    print("=" * 100)
    print(
        "SUMMARY: ratios are the median of the 3 per-repetition ratios (each pair measured side by side);"
        " 'best' = best figure / best figure"
    )
    print("-" * 100)
    rows: list[tuple[str, str, str, str]] = []
    if r := results.get("route_decision"):
        rows.append(
            (
                "route_decision (a) cached plan+pick p99",
                f"{fmt(r['cached_p99_us'])} µs (p50 {fmt(r['cached_p50_us'])})",
                "<= 50 µs",
                _verdict(r["cached_p99_us"] <= 50),
            )
        )
        rows.append(
            (
                "route_decision (b) full plan+pick p99",
                f"{fmt(r['full_p99_us'])} µs (p50 {fmt(r['full_p50_us'])}; "
                f"p99 {fmt(r['full_p99_frozen_us'])} after gc.freeze())",
                "<= 50 µs",
                _verdict(r["full_p99_us"] <= 50),
            )
        )
    if r := results.get("invoke_overhead"):
        for mode, v in r.items():
            rows.append(
                (
                    f"invoke_overhead {mode} router/proxy CPU per call",
                    f"{v['cpu_ratio']:.2f}x (best {v['cpu_ratio_best']:.2f}x; "
                    f"{fmt(v['router_cpu_us'])} vs {fmt(v['proxy_cpu_us'])} µs)",
                    "<= 1.15x",
                    _verdict(v["cpu_ratio"] <= 1.15),
                )
            )
            rows.append(
                (
                    f"invoke_overhead {mode} router/proxy calls/s",
                    f"{v['rate_ratio']:.2f}x (best {v['rate_ratio_best']:.2f}x; "
                    f"{fmt(v['router_rate'])} vs {fmt(v['proxy_rate'])})",
                    ">= 0.85x",
                    _verdict(v["rate_ratio"] >= 0.85),
                )
            )
    if r := results.get("resolve_direct"):
        for mode, v in r.items():
            rows.append(
                (
                    f"resolve_direct {mode} calls/s vs direct",
                    f"{v['ratio']:.2f}x (best {v['ratio_best']:.2f}x; "
                    f"{fmt(v['resolve_rate'])} vs {fmt(v['direct_rate'])})",
                    ">= 0.9x",
                    _verdict(v["ratio"] >= 0.9),
                )
            )
    if r := results.get("stream"):
        rows.append(
            (
                "stream router/direct chunks/s",
                f"{r['ratio']:.2f}x (best {r['ratio_best']:.2f}x; "
                f"{fmt(r['router_rate'])} vs {fmt(r['direct_rate'])}); TTFC +{fmt(r['ttfc_added_us'])} µs",
                ">= 0.5x",
                _verdict(r["ratio"] >= 0.5),
            )
        )
    if r := results.get("agent_heartbeats"):
        rows.append(
            (
                f"agent_heartbeats unary heartbeats/s ({r['agents']:,} agents)",
                f"{fmt(r['unary_rate'])} (best {fmt(r['unary_best'])}; bare server {fmt(r['bare_rate'])}, "
                f"{r['unary_ratio']:.2f}x; mesh CPU {r['unary_cpu_s_per_1k']:.2f} s per 1k)",
                ">= 5,000/s",
                _verdict(r["unary_rate"] >= 5000),
            )
        )
        if "stream_rate" in r:
            rows.append(
                (
                    "agent_heartbeats Connect-stream heartbeats/s",
                    f"{fmt(r['stream_rate'])} (best {fmt(r['stream_best'])}; bare server "
                    f"{fmt(r['stream_bare_rate'])}; mesh CPU {r['stream_cpu_s_per_1k']:.3f} s per 1k)",
                    ">= 5,000/s",
                    _verdict(r["stream_rate"] >= 5000),
                )
            )
        rows.append(
            (
                "agent_heartbeats DB writes in the steady windows",
                f"{r['steady_agent_writes']} to agents; {r['steady_agent_rows_touched']} rows touched",
                "0",
                _verdict(r["steady_agent_writes"] == 0 and r["steady_agent_rows_touched"] == 0),
            )
        )
        rows.append(
            (
                "agent_heartbeats memory per agent (VmRSS)",
                f"{r['rss_per_registered_kib']:.1f} KiB registered over gRPC; "
                f"{r['rss_per_seeded_kib']:.1f} KiB agent service only",
                "-",
                "-",
            )
        )
    if r := results.get("agent_stream"):
        rows.append(
            (
                "agent_stream mesh/direct events/s (1 per message)",
                f"{r['ratio']:.2f}x (best {r['ratio_best']:.2f}x; {fmt(r['mesh_rate'])} vs "
                f"{fmt(r['direct_rate'])}); 50 per message {fmt(r['mesh_rate_batched'])}/s",
                ">= 0.5x",
                _verdict(r["ratio"] >= 0.5),
            )
        )
        rows.append(
            (
                "agent_stream time to first token added",
                f"+{fmt(r['ttfc_added_us'])} µs ({fmt(r['ttfc_mesh_us'])} vs {fmt(r['ttfc_direct_us'])} µs)",
                "-",
                "-",
            )
        )
    if r := results.get("webhooks"):
        rows.append(
            (
                "webhooks verified webhooks/s via Envoy (10 % replays)",
                f"{fmt(r['rate'])} (best {fmt(r['rate_best'])}; {fmt(r['new_rate'])} new/s; bare server "
                f"{fmt(r['bare_rate'])}, {r['ratio']:.2f}x; p50/p99 {fmt(r['p50_ms'])}/"
                f"{fmt(r['p99_ms'])} ms)",
                ">= 500/s",
                _verdict(r["rate"] >= 500),
            )
        )
        rows.append(
            (
                "webhooks duplicates processed",
                f"{r['events']:,} events for {r['distinct_ids']:,} ids; {r['replays_acknowledged']:,} of "
                f"{r['replays_sent']:,} replays acknowledged",
                "0",
                _verdict(r["zero_duplicates"]),
            )
        )
    if r := results.get("connector_invoke"):
        for mode, v in r.items():
            if not isinstance(v, dict):
                continue
            rows.append(
                (
                    f"connector_invoke {mode} mesh/direct calls/s",
                    f"gRPC {v['grpc_ratio']:.2f}x, REST {v['rest_ratio']:.2f}x ({fmt(v['grpc_rate'])}, "
                    f"{fmt(v['rest_rate'])} vs {fmt(v['direct_rate'])}); mesh CPU "
                    f"{fmt(v['mesh_cpu_ms'])} ms/call",
                    "-",
                    "-",
                )
            )
    if r := results.get("scale_out"):
        rows.append(
            (
                "scale_out TWO/ONE mesh processes calls/s",
                f"{r['ratio']:.2f}x (best {r['ratio_best']:.2f}x; {fmt(r['two_rate'])} vs "
                f"{fmt(r['one_rate'])}); mesh CPU {r['two_mesh_cores']:.2f} vs "
                f"{r['one_mesh_cores']:.2f} cores, all processes {r['two_total_cores']:.2f} cores",
                ">= 1.7x",
                _verdict(r["ratio"] >= 1.7),
            )
        )
    for name, value, target, verdict in rows:
        print(f"  {name:<54} {value:<62} target {target:<9} {verdict}")
    print(f"  (load average at the end: {loadavg()})")


async def _main(names: list[str], quick: bool, profile: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        if name in IN_PROCESS:
            t0 = time.perf_counter()
            results[name] = await IN_PROCESS[name].run(quick=quick)
            gc.collect()  # drop the bench's snapshot before the next one
            print(f"  ({name} took {time.perf_counter() - t0:.1f}s)", flush=True)
    cluster_names = [n for n in names if n in WITH_CLUSTER]
    if cluster_names:
        print()
        cluster = Cluster(profile_mesh=profile)
        try:
            await cluster.start()
            await cluster.measure_idle(1.0 if quick else 2.0)
            for name in cluster_names:
                t0 = time.perf_counter()
                results[name] = await WITH_CLUSTER[name].run(cluster, quick=quick)
                print(f"  ({name} took {time.perf_counter() - t0:.1f}s)", flush=True)
        finally:
            cluster.stop()
    for name in names:
        if name in OWN_PROCESSES:
            t0 = time.perf_counter()
            # Their mesh profiles go next to the cluster's, one file per measured phase.
            profile_dir = profile.parent if profile is not None else None
            results[name] = await OWN_PROCESSES[name].run(quick=quick, profile_dir=profile_dir)
            print(f"  ({name} took {time.perf_counter() - t0:.1f}s)", flush=True)
    return results


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run_all", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 15 s per benchmark)")
    parser.add_argument("--only", default="", help=f"comma-separated benchmarks to run: {', '.join(ALL)}")
    parser.add_argument(
        "--profile-mesh",
        type=Path,
        default=None,
        help="run the mesh under cProfile, write the stats here and print the top entries "
        "(slows the router down: figures of such a run are not comparable)",
    )
    opts = parser.parse_args(argv)
    names = [n.strip() for n in opts.only.split(",") if n.strip()] or ALL
    unknown = [n for n in names if n not in ALL]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    atexit.register(stop_all_children)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C must interrupt even when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        f"PowerX router benchmarks ({'quick' if opts.quick else 'full'}): {', '.join(names)}\n"
        f"  python {platform.python_version()}, grpcio {grpc.__version__}, protobuf {protobuf_version}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}\n"
        f"  load average at start: {loadavg()}",
        flush=True,
    )
    started = time.perf_counter()
    try:
        results = asyncio.run(_main(names, opts.quick, opts.profile_mesh))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the benchmark processes", file=sys.stderr)
        stop_all_children()
        return 130
    finally:
        stop_all_children()
    _summary(results)
    print(f"  total {time.perf_counter() - started:.0f}s")
    if opts.profile_mesh is not None and opts.profile_mesh.exists():
        print(f"\nmesh profile ({opts.profile_mesh}), top 30 by internal time:")
        pstats.Stats(str(opts.profile_mesh)).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
