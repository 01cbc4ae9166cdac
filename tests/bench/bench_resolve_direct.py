"""resolve_direct: resolve once, then call the provider directly, against plain direct calls.

Setup: the same processes as invoke_overhead (mesh, echo provider, client = this process).
- resolve+direct: `RouterService/ResolveEndpoint(echo.say)` once per repetition, then N
  `ProviderService/Invoke` calls straight to the resolved endpoint, and a `RouterService/ReportOutcome`
  (OK, mean latency of the last 100 calls, the route token) after every 100th call, awaited inline as a
  simple client would; the resolve and the reports are inside the timed window. The channel to the
  endpoint is opened (and kept) before timing, as a client caching channels per endpoint would.
- direct: the same N calls with no router involved.
The two cases run interleaved in slices (A B, B A, …) so both see the same background load.
Both sequential and with many calls in flight. Figures: calls/s, and the mesh's CPU per direct call (the
router's share of resolve-then-call-direct). Target (issue): calls/s ratio >= 0.9x.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from google.protobuf import duration_pb2

from powerx.router.v1 import router_service_pb2 as rt
from router.transports.grpc import grpc_target
from tests.bench.common import (
    REPEATS,
    TENANT_MD,
    Cluster,
    Figures,
    calls_case,
    header,
    interleaved,
    provider_invoke,
    provider_request,
    ratio,
    ratio_line,
    router_report,
    router_resolve,
    run_calls,
    struct,
)

NAME = "resolve_direct"
IN_FLIGHT = 32
SLICES, SLICES_QUICK = 6, 3
REPORT_EVERY = 100
TARGET = 0.9


class _ResolvingClient:
    """Resolves on its first call, then calls the endpoint directly and reports every 100 calls."""

    def __init__(self, resolve: Any, report: Any, direct: dict[str, Any]) -> None:
        self.resolve, self.report, self.direct = resolve, report, direct
        self.res: rt.ResolveEndpointResponse | None = None
        self.call: Any = None
        self.req: Any = None
        self.done = 0
        self.window_ns = 0

    async def _resolve(self) -> None:
        self.res = await self.resolve(
            rt.ResolveEndpointRequest(capability_id="echo.say"), metadata=TENANT_MD, timeout=10
        )
        self.call = self.direct[grpc_target(self.res.endpoint.uri)]
        self.req = provider_request("echo.say", self.res.version, struct(msg="hello", n=1))

    async def _report(self) -> None:
        assert self.res is not None
        latency = duration_pb2.Duration()
        latency.FromNanoseconds(self.window_ns // REPORT_EVERY)
        self.window_ns = 0
        await self.report(
            rt.ReportOutcomeRequest(
                endpoint_id=self.res.endpoint.endpoint_id,
                capability_id="echo.say",
                code=0,
                latency=latency,
                route_token=self.res.route_token,
            ),
            metadata=TENANT_MD,
            timeout=10,
        )

    def case(self, in_flight: int) -> Any:
        """An `interleaved` case: the first slice also resolves (inside its timed window)."""

        async def run(n: int, _latencies: list[int] | None) -> float:
            started = time.perf_counter()
            if self.res is None:
                await self._resolve()
            remaining = n
            clock = time.perf_counter_ns

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    t0 = clock()
                    await self.call(self.req, metadata=TENANT_MD, timeout=10)
                    self.window_ns += clock() - t0
                    self.done += 1
                    if self.done % REPORT_EVERY == 0:
                        await self._report()

            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return time.perf_counter() - started

        return run


async def run(cluster: Cluster, quick: bool = False) -> dict[str, Any]:
    """Runs the benchmark against a started cluster and prints its block."""
    n_seq = 500 if quick else 2000
    n_par = 800 if quick else 3000
    warm = 150 if quick else 400
    header(
        f"{NAME}: ResolveEndpoint once + direct calls (ReportOutcome every {REPORT_EVERY}) vs direct calls",
        [
            "processes: client (this one) -> echo provider; client -> mesh for resolve and reports only",
            f"per repetition: {n_seq} sequential calls and {n_par} calls with {IN_FLIGHT} in flight per case,"
            " "
            f"interleaved in {SLICES_QUICK if quick else SLICES} slices (A B, B A, A B, …)",
            f"one resolve per repetition (in the first slice's timed window); {warm} warm-up calls first; "
            f"{REPEATS} repetitions",
        ],
    )
    figs = Figures()
    args = struct(msg="hello", n=1)
    async with (
        grpc.aio.insecure_channel(cluster.mesh_address) as mesh_ch,
        grpc.aio.insecure_channel(cluster.provider_address) as direct_ch,
    ):
        resolve, report = router_resolve(mesh_ch), router_report(mesh_ch)
        d_inv = provider_invoke(direct_ch)
        direct = {cluster.provider_address: d_inv}
        plain_req = provider_request("echo.say", "1.0.0", args)

        def plain() -> Any:
            return d_inv(plain_req, metadata=TENANT_MD, timeout=10)

        await run_calls(plain, warm, 8)
        await _ResolvingClient(resolve, report, direct).case(8)(warm, None)
        modes = (("seq", n_seq, 1), (f"{IN_FLIGHT}-inflight", n_par, IN_FLIGHT))
        for _ in range(REPEATS):
            for mode, n, k in modes:
                client = _ResolvingClient(resolve, report, direct)
                got = await interleaved(
                    {"resolve+direct": client.case(k), "direct": calls_case(plain, k)},
                    n,
                    cluster.pids(),
                    slices=SLICES_QUICK if quick else SLICES,
                )
                rd, d = got["resolve+direct"], got["direct"]
                figs.add(f"{mode} resolve+direct: calls/s", rd.rate, "calls/s", higher=True)
                figs.add(
                    f"{mode} resolve+direct: mesh CPU/call", rd.cpu_us_per_call("router"), "µs", higher=False
                )
                figs.add(
                    f"{mode} resolve+direct: client CPU/call",
                    rd.cpu_us_per_call("client"),
                    "µs",
                    higher=False,
                )
                figs.add(f"{mode} direct: calls/s", d.rate, "calls/s", higher=True)
                figs.add(
                    f"{mode} direct: mesh CPU/call (idle)", d.cpu_us_per_call("router"), "µs", higher=False
                )
                figs.add(f"{mode} direct: client CPU/call", d.cpu_us_per_call("client"), "µs", higher=False)
    out: dict[str, Any] = {}
    for mode, _, _ in modes:
        print(f"  [{mode}]")
        print(*figs.table([k for k in figs.by_name if k.startswith(mode + " ")]), sep="\n")
        rd_fig, d_fig = figs[f"{mode} resolve+direct: calls/s"], figs[f"{mode} direct: calls/s"]
        print(ratio_line(f"{mode} resolve+direct / direct calls/s", rd_fig, d_fig, f">= {TARGET}x"))
        med, best = ratio(rd_fig, d_fig)
        out[mode] = {
            "resolve_rate": rd_fig.median,
            "direct_rate": d_fig.median,
            "ratio": med,
            "ratio_best": best,
            "mesh_cpu_us": figs[f"{mode} resolve+direct: mesh CPU/call"].median,
        }
    return out
