"""invoke_overhead: a call through the router against a call through a bare Python proxy.

Setup (each its own process): the mesh (`tests.bench.mesh_runner`, SQLite, health monitor on), one echo
provider (`examples.echo_provider`) registered with it, and a bare grpc.aio pass-through proxy
(`tests.bench.raw_proxy`) in front of the same provider. The client is this process (grpc.aio, one
channel per target, cached multicallables).

Cases, each sequential (1 in flight) and with many calls in flight:
- router: `RouterService/Invoke(capability_id="echo.say")` (route, validate arguments, call, audit);
- proxy:  `ProviderService/Invoke` through the bare proxy (the same request the router sends);
- direct: `ProviderService/Invoke` straight to the provider (reference only).
Figures: calls/s; CPU µs per call of the router process and of the proxy process (utime+stime deltas from
/proc/<pid>/stat divided by the calls); the provider's and the client's CPU per call for context.
Targets (issue): router CPU per call <= 1.15x the proxy's; router calls/s >= 0.85x the proxy's.
"""

from __future__ import annotations

from typing import Any

import grpc

from powerx.router.v1 import router_service_pb2 as rt
from tests.bench.common import (
    REPEATS,
    TENANT_MD,
    Cluster,
    Figures,
    calls_case,
    header,
    interleaved,
    percentile,
    provider_invoke,
    provider_request,
    ratio,
    ratio_line,
    router_invoke,
    run_calls,
    struct,
)

NAME = "invoke_overhead"
IN_FLIGHT = 32
SLICES, SLICES_QUICK = 6, 3
TARGET_CPU = 1.15
TARGET_RATE = 0.85


async def run(cluster: Cluster, quick: bool = False) -> dict[str, Any]:
    """Runs the benchmark against a started cluster and prints its block."""
    n_seq = 300 if quick else 1200
    n_par = 600 if quick else 2400
    warm = 150 if quick else 400
    header(
        f"{NAME}: RouterService/Invoke vs a bare grpc.aio proxy vs direct (echo.say)",
        [
            "processes: client (this one) -> mesh | bare proxy | nothing -> echo provider, all on 127.0.0.1",
            f"per repetition: {n_seq} sequential calls and {n_par} calls with {IN_FLIGHT} in flight per case,"
            " "
            f"cases interleaved in {SLICES_QUICK if quick else SLICES} slices (A B C, C B A, …); "
            f"{warm} warm-up calls per case first; "
            f"{REPEATS} repetitions",
            "CPU per call = process utime+stime delta / calls; 'background' = CPU the rest of the machine"
            " used "
            "meanwhile (other processes)",
            "idle CPU before the run (ms per s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in cluster.idle_cpu_ms_per_s.items()),
        ],
    )
    args = struct(msg="hello", n=1)
    router_req = rt.InvokeRequest(capability_id="echo.say", arguments=args)
    provider_req = provider_request("echo.say", "1.0.0", args)
    figs = Figures()
    async with (
        grpc.aio.insecure_channel(cluster.mesh_address) as mesh_ch,
        grpc.aio.insecure_channel(cluster.proxy_address) as proxy_ch,
        grpc.aio.insecure_channel(cluster.provider_address) as direct_ch,
    ):
        r_inv, p_inv, d_inv = router_invoke(mesh_ch), provider_invoke(proxy_ch), provider_invoke(direct_ch)
        cases = {
            "router": lambda: r_inv(router_req, metadata=TENANT_MD, timeout=10),
            "proxy": lambda: p_inv(provider_req, metadata=TENANT_MD, timeout=10),
            "direct": lambda: d_inv(provider_req, metadata=TENANT_MD, timeout=10),
        }
        for call in cases.values():
            await run_calls(call, warm, 8)
        modes = (("seq", n_seq, 1), (f"{IN_FLIGHT}-inflight", n_par, IN_FLIGHT))
        for _ in range(REPEATS):
            for mode, n, k in modes:
                got = await interleaved(
                    {case: calls_case(call, k) for case, call in cases.items()},
                    n,
                    cluster.pids(),
                    slices=SLICES_QUICK if quick else SLICES,
                    latencies=k == 1,
                )
                for case, m in got.items():
                    figs.add(f"{mode} {case}: calls/s", m.rate, "calls/s", higher=True)
                    if m.latencies:
                        lat = sorted(m.latencies)
                        figs.add(
                            f"{mode} {case}: p50 latency", percentile(lat, 50) / 1000, "µs", higher=False
                        )
                        figs.add(
                            f"{mode} {case}: p99 latency", percentile(lat, 99) / 1000, "µs", higher=False
                        )
                    if case in ("router", "proxy"):
                        figs.add(
                            f"{mode} {case}: {case} process CPU/call",
                            m.cpu_us_per_call(case),
                            "µs",
                            higher=False,
                        )
                    figs.add(
                        f"{mode} {case}: provider CPU/call", m.cpu_us_per_call("provider"), "µs", higher=False
                    )
                    figs.add(
                        f"{mode} {case}: client CPU/call", m.cpu_us_per_call("client"), "µs", higher=False
                    )
                    figs.add(
                        f"{mode} {case}: background CPU/call",
                        m.background_s * 1e6 / m.calls,
                        "µs",
                        higher=False,
                    )
    out: dict[str, Any] = {}
    for mode, _, _ in modes:
        print(f"  [{mode}]")
        print(*figs.table([k for k in figs.by_name if k.startswith(mode + " ")]), sep="\n")
        cpu_r, cpu_p = (
            figs[f"{mode} router: router process CPU/call"],
            figs[f"{mode} proxy: proxy process CPU/call"],
        )
        rate_r, rate_p = figs[f"{mode} router: calls/s"], figs[f"{mode} proxy: calls/s"]
        rate_d = figs[f"{mode} direct: calls/s"]
        print(ratio_line(f"{mode} router CPU/call / proxy CPU/call", cpu_r, cpu_p, f"<= {TARGET_CPU}x"))
        print(ratio_line(f"{mode} router calls/s / proxy calls/s", rate_r, rate_p, f">= {TARGET_RATE}x"))
        print(ratio_line(f"{mode} proxy calls/s / direct calls/s", rate_p, rate_d, "- (reference)"))
        print(ratio_line(f"{mode} router calls/s / direct calls/s", rate_r, rate_d, "- (reference)"))
        cpu_ratio, cpu_best = ratio(cpu_r, cpu_p)
        rate_ratio, rate_best = ratio(rate_r, rate_p)
        out[mode] = {
            "router_cpu_us": cpu_r.median,
            "proxy_cpu_us": cpu_p.median,
            "cpu_ratio": cpu_ratio,
            "cpu_ratio_best": cpu_best,
            "router_rate": rate_r.median,
            "proxy_rate": rate_p.median,
            "direct_rate": rate_d.median,
            "rate_ratio": rate_ratio,
            "rate_ratio_best": rate_best,
        }
    return out
