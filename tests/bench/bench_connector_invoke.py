"""connector_invoke: SYNC InvokeConnector through the mesh to a fake n8n against calling its webhook directly.

Processes (each its own): the mesh and its Envoy edge as `powerx up` runs them (see `bench_webhooks`),
and the fake n8n (`tests/bench/fake_platform_runner.py --kind n8n`: `tests.fakes.n8n.FakeN8n` on
starlette/uvicorn, header auth). The fake runs in its own process so that its CPU is neither charged to
the client nor competing with it inside one event loop; the client is this process.

Cases, each sequential (1 in flight) and with `IN_FLIGHT` in flight, interleaved in slices (order reversed
every other slice), 3 repetitions:
- grpc:   `ConnectorService/InvokeConnector` (SYNC, workflow alias `echo` -> webhook `mesh-invoke`)
          straight to the mesh's gRPC port (grpc.aio, one channel, cached multicallable);
- rest:   the same call as REST through Envoy (`POST /platform/connectors/n8n/invoke`, httpx, keep-alive);
- direct: `POST /webhook/mesh-invoke` on the fake with httpx (keep-alive), with the body and headers the
          mesh itself sends (invocation id, trace id, idempotency key, user, callback URL, input) — the
          baseline;
- direct, new client: the same, but with a new `httpx.AsyncClient` per call, closed after it, as the mesh
          does for every platform call (reference: it isolates that cost).
Figures: calls/s, latency p50/p99, CPU per call of the mesh, Envoy, the fake and the client. Every answer
is checked (SUCCEEDED / `ok: true`), and at the end the fake's run count must equal the calls made.
Ratios: mesh calls/s over direct calls/s (no target in the issue: reported).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import struct_pb2

from powerx.connector.v1 import connector_service_pb2 as svc
from powerx.connector.v1 import invocation_pb2
from tests.bench.bench_webhooks import INSTANCE, INVOKE_MD, PLATFORM, TENANT, ConnectorRig, log_summary
from tests.bench.common import (
    REPEATS,
    Figures,
    calls_case,
    header,
    interleaved,
    loadavg,
    percentile,
    ratio,
    ratio_line,
    run_calls,
    stop_all_children,
)
from tests.bench.fake_platform_runner import AUTH, SYNC_PATH

NAME = "connector_invoke"
IN_FLIGHT = 16
INVOKE = "/powerx.connector.v1.ConnectorService/InvokeConnector"
CONTEXT = {"customer": "c-42", "question": "where is my order?", "lines": [1, 2, 3]}
SUCCEEDED = invocation_pb2.INVOCATION_STATE_SUCCEEDED


class Checked:
    """Wraps each case's call: counts calls and wrong answers (the first few are kept)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.examples: list[str] = []

    def wrap(self, name: str, call: Callable[[], Awaitable[str | None]]) -> Callable[[], Awaitable[None]]:
        async def checked() -> None:
            self.calls[name] += 1
            try:
                problem = await call()
            except (grpc.aio.AioRpcError, httpx.HTTPError) as err:
                problem = f"{type(err).__name__}: {err}"
            if problem:
                self.failed[name] += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{name}: {problem[:300]}")

        return checked


def _direct_body() -> tuple[dict[str, Any], dict[str, str]]:
    """A body and headers as the mesh's n8n client sends them for one call."""
    inv = f"inv_{uuid.uuid4().hex[:24]}"
    trace = uuid.uuid4().hex
    body = {
        "invocation_id": inv,
        "trace_id": trace,
        "idempotency_key": inv,
        "user_id": "bench-user",
        "callback_url": f"http://127.0.0.1:8080/platform/connectors/{PLATFORM}/webhooks/{INSTANCE}",
        "input": CONTEXT,
    }
    headers = {AUTH[0]: AUTH[1], "X-Trace-Id": trace, "Idempotency-Key": inv}
    return body, headers


def _direct_check(resp: httpx.Response) -> str | None:
    if resp.status_code != 200:
        return f"HTTP {resp.status_code} {resp.text[:200]}"
    body = resp.json()
    return None if body.get("ok") is True else f"not ok: {body}"


async def run(quick: bool = False, *, profile_dir: Path | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints its block; returns the headline figures."""
    n_seq = 60 if quick else 200
    n_par = 120 if quick else 400
    warm = 15 if quick else 40
    slices = 2 if quick else 4
    header(
        f"{NAME}: SYNC InvokeConnector (gRPC, REST via Envoy) to a fake n8n vs calling its webhook directly",
        [
            "processes: client (this one) -> mesh (`powerx up`, gRPC) | Envoy -> mesh | nothing -> fake n8n "
            "(FakeN8n on starlette/uvicorn, own process), all on 127.0.0.1",
            f"per repetition: {n_seq} sequential calls and {n_par} calls with {IN_FLIGHT} in flight per "
            f"case, cases interleaved in {slices} slices (A B C D, D C B A, …); {warm} warm-up calls per "
            f"case first; {REPEATS} repetitions",
            "clients: grpc.aio (one channel); httpx.AsyncClient with keep-alive for REST and direct (the "
            "same library for both HTTP cases)",
            "CPU per call = process utime+stime delta / calls; envoy is the child of the `powerx up` process",
        ]
        + (["(--profile-mesh is not supported here: the mesh runs as `powerx up`)"] if profile_dir else []),
    )
    rig = ConnectorRig(bare=False)
    try:
        await rig.start()
        await rig.measure_idle(1.0 if quick else 2.0)
        print(f"  {rig.idle_line()}", flush=True)
        return await _measure(rig, n_seq, n_par, warm, slices)
    finally:
        rig.stop()


async def _measure(rig: ConnectorRig, n_seq: int, n_par: int, warm: int, slices: int) -> dict[str, Any]:
    ctx = struct_pb2.Struct()
    ctx.update(CONTEXT)
    grpc_req = svc.InvokeConnectorRequest(
        platform=PLATFORM, instance_id=INSTANCE, workflow_id="echo", context=ctx
    )
    rest_body = {"instance_id": INSTANCE, "workflow_id": "echo", "context": CONTEXT}
    rest_headers = {"x-tenant-id": TENANT, "x-principal": "bench"}
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    checked = Checked()
    figs = Figures()
    async with (
        grpc.aio.insecure_channel(rig.grpc_address) as ch,
        httpx.AsyncClient(base_url=rig.edge_url, limits=limits, timeout=60) as edge_http,
        httpx.AsyncClient(base_url=rig.fake_url, limits=limits, timeout=60) as fake_http,
    ):
        invoke = ch.unary_unary(
            INVOKE,
            request_serializer=svc.InvokeConnectorRequest.SerializeToString,
            response_deserializer=svc.InvokeConnectorResponse.FromString,
        )

        async def via_grpc() -> str | None:
            inv = (await invoke(grpc_req, metadata=INVOKE_MD, timeout=60)).invocation
            return None if inv.state == SUCCEEDED else f"{inv.state} {inv.error}"

        async def via_rest() -> str | None:
            resp = await edge_http.post(
                f"/platform/connectors/{PLATFORM}/invoke", json=rest_body, headers=rest_headers
            )
            if resp.status_code != 200:
                return f"HTTP {resp.status_code} {resp.text[:200]}"
            inv = resp.json()["invocation"]
            return (
                None if inv["state"] == "INVOCATION_STATE_SUCCEEDED" else f"{inv['state']} {inv.get('error')}"
            )

        async def direct() -> str | None:
            body, headers = _direct_body()
            return _direct_check(await fake_http.post(f"/webhook/{SYNC_PATH}", json=body, headers=headers))

        async def direct_new_client() -> str | None:
            body, headers = _direct_body()
            async with httpx.AsyncClient(timeout=60, follow_redirects=False) as http:
                resp = await http.post(f"{rig.fake_url}/webhook/{SYNC_PATH}", json=body, headers=headers)
            return _direct_check(resp)

        cases = {
            "grpc": checked.wrap("grpc", via_grpc),
            "rest": checked.wrap("rest", via_rest),
            "direct": checked.wrap("direct", direct),
            "direct new client": checked.wrap("direct new client", direct_new_client),
        }
        for call in cases.values():
            await run_calls(call, warm, 4)
        modes = (("seq", n_seq, 1), (f"{IN_FLIGHT}-inflight", n_par, IN_FLIGHT))
        for _ in range(REPEATS):
            for mode, n, k in modes:
                got = await interleaved(
                    {case: calls_case(call, k) for case, call in cases.items()},
                    n,
                    rig.pids(),
                    slices=slices,
                    latencies=True,
                )
                for case, m in got.items():
                    figs.add(f"{mode} {case}: calls/s", m.rate, "calls/s", higher=True)
                    lat = sorted(m.latencies)
                    figs.add(f"{mode} {case}: p50 latency", percentile(lat, 50) / 1e6, "ms", higher=False)
                    figs.add(f"{mode} {case}: p99 latency", percentile(lat, 99) / 1e6, "ms", higher=False)
                    procs = (
                        ("mesh", "envoy", "fake", "client")
                        if case in ("grpc", "rest")
                        else ("fake", "client")
                    )
                    for proc in procs:
                        figs.add(
                            f"{mode} {case}: {proc} CPU/call",
                            m.cpu_us_per_call(proc) / 1000,
                            "ms",
                            higher=False,
                        )
                    background = m.background_s * 1e3 / m.calls
                    figs.add(f"{mode} {case}: background CPU/call", background, "ms", higher=False)
    assert rig.fake is not None
    stats = await rig.fake.acall("stats")
    out: dict[str, Any] = {}
    for mode, _, _ in modes:
        print(f"  [{mode}]")
        print(*figs.table([k for k in figs.by_name if k.startswith(mode + " ")]), sep="\n")
        direct_rate = figs[f"{mode} direct: calls/s"]
        for case in ("grpc", "rest", "direct new client"):
            print(
                ratio_line(
                    f"{mode} {case} calls/s / direct calls/s",
                    figs[f"{mode} {case}: calls/s"],
                    direct_rate,
                    "- (reported)",
                )
            )
        grpc_ratio, grpc_best = ratio(figs[f"{mode} grpc: calls/s"], direct_rate)
        rest_ratio, rest_best = ratio(figs[f"{mode} rest: calls/s"], direct_rate)
        out[mode] = {
            "grpc_rate": figs[f"{mode} grpc: calls/s"].median,
            "rest_rate": figs[f"{mode} rest: calls/s"].median,
            "direct_rate": direct_rate.median,
            "direct_new_client_rate": figs[f"{mode} direct new client: calls/s"].median,
            "grpc_ratio": grpc_ratio,
            "grpc_ratio_best": grpc_best,
            "rest_ratio": rest_ratio,
            "rest_ratio_best": rest_best,
            "grpc_p50_ms": figs[f"{mode} grpc: p50 latency"].median,
            "rest_p50_ms": figs[f"{mode} rest: p50 latency"].median,
            "direct_p50_ms": figs[f"{mode} direct: p50 latency"].median,
            "mesh_cpu_ms": figs[f"{mode} grpc: mesh CPU/call"].median,
            "mesh_cpu_rest_ms": figs[f"{mode} rest: mesh CPU/call"].median,
            "envoy_cpu_ms": figs[f"{mode} rest: envoy CPU/call"].median,
        }
    sent = sum(checked.calls.values())
    runs = stats["runs"].get(SYNC_PATH, 0)
    same = "equal" if runs == sent else "DIFFERENT"
    print(
        f"  answers checked: {dict(checked.calls)} calls, failures {dict(checked.failed) or 'none'}; "
        f"the fake ran the workflow {runs:,} times for {sent:,} calls ({same})"
    )
    for line in checked.examples:
        print(f"    {line}")
    assert rig.mesh is not None
    print(f"  mesh log: {log_summary(rig.mesh.log_path)}")
    out["failures"] = sum(checked.failed.values())
    out["runs_match"] = runs == sent
    return out


def main(argv: list[str] | None = None) -> int:
    """Runs this benchmark alone."""
    parser = argparse.ArgumentParser(
        prog=f"python -m tests.bench.bench_{NAME}", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="60 sequential and 120 concurrent calls per case"
    )
    opts = parser.parse_args(argv)
    atexit.register(stop_all_children)
    print(f"load average at start: {loadavg()}", flush=True)
    started = time.perf_counter()
    try:
        asyncio.run(run(opts.quick))
    except KeyboardInterrupt:
        stop_all_children()
        return 130
    print(f"  total {time.perf_counter() - started:.0f}s (load average at the end: {loadavg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
