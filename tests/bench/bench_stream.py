"""stream: a server stream through the router against the provider's stream called directly.

Setup: the same processes as invoke_overhead. `echo.count` with `{"n": 2000, "interval_ms": 0}` sends
2,000 data chunks and a final text chunk (2,001 chunks):
- router: `RouterService/InvokeStream` (each chunk re-wrapped as a StreamChunk, then a StreamEnd);
- proxy:  `ProviderService/InvokeStream` through the bare proxy (bytes forwarded; reference);
- direct: `ProviderService/InvokeStream` straight to the provider.
Figures: chunks/s over the whole stream (from the call to the last chunk), CPU µs per chunk of the router,
proxy and provider processes, and the time to first chunk measured on short streams (n = 1) so it is
not hidden behind the provider's first yield. Target (issue): router chunks/s >= 0.5x direct.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import grpc

from powerx.router.v1 import router_service_pb2 as rt
from tests.bench.common import (
    REPEATS,
    TENANT_MD,
    Cluster,
    CpuMeter,
    Figures,
    Measured,
    fmt,
    header,
    provider_request,
    provider_stream,
    ratio,
    ratio_line,
    router_stream,
    struct,
)

NAME = "stream"
N_MSGS = 2000
TARGET = 0.5


async def _drain(open_stream: Callable[[], Any], is_chunk: Callable[[Any], bool]) -> tuple[int, float, float]:
    """Reads a whole stream; returns (chunks, seconds to the first chunk, seconds to the end)."""
    t0 = time.perf_counter()
    first = 0.0
    chunks = 0
    async for msg in open_stream():
        if is_chunk(msg):
            if not chunks:
                first = time.perf_counter() - t0
            chunks += 1
    return chunks, first, time.perf_counter() - t0


async def run(cluster: Cluster, quick: bool = False) -> dict[str, Any]:
    """Runs the benchmark against a started cluster and prints its block."""
    streams = 1 if quick else 4
    short = 20 if quick else 60
    header(
        f"{NAME}: RouterService/InvokeStream vs ProviderService/InvokeStream (echo.count n={N_MSGS})",
        [
            "processes: client (this one) -> mesh | bare proxy | nothing -> echo provider",
            f"per repetition and case: {streams} stream(s) of {N_MSGS} + 1 chunks, one at a time,"
            f" then {short} "
            "short streams (n=1) for the time to first chunk; cases interleaved stream by stream; "
            f"1 warm-up stream per case; {REPEATS} repetitions",
        ],
    )
    figs = Figures()

    def router_chunk(m: Any) -> bool:
        return bool(m.WhichOneof("kind") == "chunk")

    def any_chunk(m: Any) -> bool:
        return True

    async with (
        grpc.aio.insecure_channel(cluster.mesh_address) as mesh_ch,
        grpc.aio.insecure_channel(cluster.proxy_address) as proxy_ch,
        grpc.aio.insecure_channel(cluster.provider_address) as direct_ch,
    ):
        r_st, p_st, d_st = router_stream(mesh_ch), provider_stream(proxy_ch), provider_stream(direct_ch)

        def cases(n: int) -> dict[str, tuple[Callable[[], Any], Callable[[Any], bool]]]:
            args = struct(n=n, interval_ms=0)
            r_req = rt.InvokeStreamRequest(capability_id="echo.count", arguments=args)
            p_req = provider_request("echo.count", "1.0.0", args)
            return {
                "router": (lambda: r_st(r_req, metadata=TENANT_MD, timeout=60), router_chunk),
                "proxy": (lambda: p_st(p_req, metadata=TENANT_MD, timeout=60), any_chunk),
                "direct": (lambda: d_st(p_req, metadata=TENANT_MD, timeout=60), any_chunk),
            }

        long_cases, short_cases = cases(N_MSGS), cases(1)
        for open_stream, is_chunk in long_cases.values():
            warm, _, _ = await _drain(open_stream, is_chunk)
            if warm != N_MSGS + 1:
                raise RuntimeError(f"expected {N_MSGS + 1} chunks, got {warm}")
        for _ in range(REPEATS):
            got: dict[str, Measured] = {case: Measured() for case in long_cases}
            for _ in range(streams):  # interleaved: one stream of each case in turn
                for case, (open_stream, is_chunk) in long_cases.items():
                    with CpuMeter(cluster.pids()) as m:
                        chunks, _, _ = await _drain(open_stream, is_chunk)
                    acc = got[case]
                    acc.calls += chunks
                    acc.wall_s += m.wall_s
                    for k, v in m.cpu_s.items():
                        acc.cpu_s[k] = acc.cpu_s.get(k, 0.0) + v
            for case, acc in got.items():
                figs.add(f"{case}: chunks/s", acc.rate, "chunks/s", higher=True)
                if case in ("router", "proxy"):
                    figs.add(
                        f"{case}: {case} process CPU/chunk", acc.cpu_us_per_call(case), "µs", higher=False
                    )
                figs.add(f"{case}: provider CPU/chunk", acc.cpu_us_per_call("provider"), "µs", higher=False)
                figs.add(f"{case}: client CPU/chunk", acc.cpu_us_per_call("client"), "µs", higher=False)
            firsts: dict[str, list[float]] = {case: [] for case in short_cases}
            for _ in range(short):
                for case, (open_stream, is_chunk) in short_cases.items():
                    _, first, _ = await _drain(open_stream, is_chunk)
                    firsts[case].append(first * 1e6)
            for case, values in firsts.items():
                figs.add(f"{case}: time to first chunk p50", statistics.median(values), "µs", higher=False)
    print(*figs.table(), sep="\n")
    r, p, d = figs["router: chunks/s"], figs["proxy: chunks/s"], figs["direct: chunks/s"]
    print(ratio_line("router chunks/s / direct chunks/s", r, d, f">= {TARGET}x"))
    print(ratio_line("proxy chunks/s / direct chunks/s", p, d, "- (reference)"))
    print(ratio_line("router chunks/s / proxy chunks/s", r, p, "- (reference)"))
    ttfc_r, ttfc_d = figs["router: time to first chunk p50"], figs["direct: time to first chunk p50"]
    ttfc_p = figs["proxy: time to first chunk p50"]
    added = ttfc_r.median - ttfc_d.median
    print(
        f"  TTFC added by the router: +{fmt(added)} µs (medians; best {fmt(ttfc_r.best - ttfc_d.best)} µs); "
        f"by the bare proxy: +{fmt(ttfc_p.median - ttfc_d.median)} µs"
    )
    return {
        "router_rate": r.median,
        "direct_rate": d.median,
        "proxy_rate": p.median,
        "ratio": ratio(r, d)[0],
        "ratio_best": ratio(r, d)[1],
        "ttfc_added_us": added,
        "router_cpu_us": figs["router: router process CPU/chunk"].median,
        "proxy_cpu_us": figs["proxy: proxy process CPU/chunk"].median,
    }
