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
    bench_invoke_overhead,
    bench_resolve_direct,
    bench_route_decision,
    bench_stream,
)
from tests.bench.common import Cluster, fmt, loadavg, stop_all_children

IN_PROCESS = {bench_route_decision.NAME: bench_route_decision}
WITH_CLUSTER = {
    bench_invoke_overhead.NAME: bench_invoke_overhead,
    bench_resolve_direct.NAME: bench_resolve_direct,
    bench_stream.NAME: bench_stream,
}
ALL = [*IN_PROCESS, *WITH_CLUSTER]


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
    if not cluster_names:
        return results
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
