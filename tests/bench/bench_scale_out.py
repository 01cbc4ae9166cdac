"""scale_out: calls/s of a read+write mix through one Envoy edge with ONE mesh process against TWO.

Processes (each its own): two `powerx serve` processes (`tests/processes.py`) sharing one fresh
PostgreSQL schema and Redis (the scaled-out deployment), two Envoy edges — edge ONE with process A as
its only upstream, edge TWO with A and B — and, per measurement, a load generator process (this module
with `--load`). The bench process only orchestrates and reads /proc.

Setup: 16 providers are announced (one capability each, one gRPC endpoint each). The health monitor is
off (POWERX_HEALTH_MONITOR=0) so the announced endpoints stay healthy and no probes run; watch polling is
the default (1 s).

The mix, every call through the edge with a 10 s deadline, `IN_FLIGHT` calls in flight over one channel:
- 80 % `RouterService/ResolveEndpoint` of one of the 16 capabilities (the router's decision over its
  in-memory snapshot: the mesh-CPU-bound hot path);
- 10 % `RegistryService/GetProvider` (a PostgreSQL read);
- 10 % `RegistryService/RenewProviderLease` (a PostgreSQL write transaction).

Per repetition both cases run, the order reversed every other repetition; each case warms up for 1 s,
then is measured for `MEASURE_S` (the load generator prints when the window opens and what it counted
when it closes; CPU is read from /proc over the same window). 3 repetitions; medians and best.

Figures: calls/s through each edge, the ratio TWO/ONE (target >= 1.7x), and the CPU (in cores) of each
mesh process, Envoy, the load generator and the rest of the machine (PostgreSQL, Redis, other tenants of
the box). On a 2-core machine all of these share the 2 cores: read the ratio next to the CPU figures.

Needs PostgreSQL and Redis: POWERX_TEST_DATABASE_URL and POWERX_TEST_REDIS_URL (defaults: the local
servers the tests use); the bench is skipped when either does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import random
import select
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.router.v1 import router_service_pb2 as rt
from tests.bench.common import (
    REPEATS,
    Child,
    CpuMeter,
    Figures,
    fmt,
    header,
    loadavg,
    ratio,
    ratio_line,
    self_cpu_s,
    stop_all_children,
)
from tests.processes import MeshProcess, Shared, call_metadata, start_edge

NAME = "scale_out"
TARGET = 1.7
IN_FLIGHT = 48
PROVIDERS = 16
WARMUP_S = 1.0
MEASURE_S, MEASURE_S_QUICK = 5.0, 3.0
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
REGISTRY = "/powerx.registry.v1.RegistryService/"
ROUTER = "/powerx.router.v1.RouterService/"


def provider_id(i: int) -> str:
    return f"com.bench.scale{i:02d}"


def capability_id(i: int) -> str:
    return f"bench.scale.cap{i:02d}"


# ---- the load generator (a process of its own) ---------------------------------------------------------


async def _load(
    target: str, tenant: str, in_flight: int, warmup_s: float, measure_s: float
) -> dict[str, Any]:
    md = call_metadata(tenant)
    async with grpc.aio.insecure_channel(target) as ch:
        resolve = ch.unary_unary(
            ROUTER + "ResolveEndpoint",
            request_serializer=rt.ResolveEndpointRequest.SerializeToString,
            response_deserializer=rt.ResolveEndpointResponse.FromString,
        )
        get = ch.unary_unary(
            REGISTRY + "GetProvider",
            request_serializer=rs.GetProviderRequest.SerializeToString,
            response_deserializer=rs.GetProviderResponse.FromString,
        )
        renew = ch.unary_unary(
            REGISTRY + "RenewProviderLease",
            request_serializer=rs.RenewProviderLeaseRequest.SerializeToString,
            response_deserializer=rs.RenewProviderLeaseResponse.FromString,
        )
        resolves = [rt.ResolveEndpointRequest(capability_id=capability_id(i)) for i in range(PROVIDERS)]
        gets = [rs.GetProviderRequest(provider_id=provider_id(i)) for i in range(PROVIDERS)]
        renews = [rs.RenewProviderLeaseRequest(provider_id=provider_id(i)) for i in range(PROVIDERS)]
        counting = False
        counts = {"resolve": 0, "get": 0, "renew": 0}
        errors: dict[str, int] = {}
        stop = time.monotonic() + warmup_s + measure_s
        rng = random.Random(7)

        async def worker() -> None:
            while time.monotonic() < stop:
                roll = rng.random()
                i = rng.randrange(PROVIDERS)
                kind = "resolve" if roll < 0.8 else "get" if roll < 0.9 else "renew"
                try:
                    if kind == "resolve":
                        await resolve(resolves[i], metadata=md, timeout=10)
                    elif kind == "get":
                        await get(gets[i], metadata=md, timeout=10)
                    else:
                        await renew(renews[i], metadata=md, timeout=10)
                except grpc.aio.AioRpcError as err:
                    if counting:
                        errors[err.code().name] = errors.get(err.code().name, 0) + 1
                    continue
                if counting:
                    counts[kind] += 1

        workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
        await asyncio.sleep(warmup_s)
        counting = True
        cpu0, t0 = self_cpu_s(), time.perf_counter()
        sys.stdout.write(json.dumps({"phase": "measure"}) + "\n")
        sys.stdout.flush()
        await asyncio.gather(*workers)
        wall = time.perf_counter() - t0
        return {"counts": counts, "errors": errors, "wall_s": wall, "cpu_s": self_cpu_s() - cpu0}


def _load_main(opts: argparse.Namespace) -> int:
    result = asyncio.run(_load(opts.target, opts.tenant, opts.in_flight, opts.warmup, opts.seconds))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


class Lines:
    """JSON lines from a child's stdout, read with a deadline (nothing is lost between lines)."""

    def __init__(self, child: Child) -> None:
        assert child.proc.stdout is not None
        self.child = child
        self.fd = child.proc.stdout.fileno()
        self.buf = b""

    def next(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{self.child.name}: no answer in {timeout_s:.0f}s\n{self.child.log_tail()}"
                )
            readable, _, _ = select.select([self.fd], [], [], left)
            if readable:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.child.name} exited\n{self.child.log_tail()}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        parsed: dict[str, Any] = json.loads(line)
        return parsed


# ---- the rig ---------------------------------------------------------------------------------------------


def _pg_schema(url: str) -> tuple[str, str]:
    """(schema, URL of the database whose connections use it): a fresh schema."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in url else "?"
    return schema, f"{url}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _services_answer(pg: str, redis_url: str) -> str:
    """Empty when PostgreSQL and Redis answer, else why not."""
    try:
        import psycopg
        import redis

        with psycopg.connect(pg.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        redis.from_url(redis_url, socket_timeout=3).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


class Rig:
    """Two mesh processes on one PostgreSQL schema and Redis, an edge in front of A, one in front of both."""

    def __init__(self, pg: str, redis_url: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="powerx-bench-scale-")
        self.dir = Path(self._tmp.name)
        self.pg, self.redis_url = pg, redis_url
        self.schema = ""
        self.tenant = f"bench-scale-{uuid.uuid4().hex[:8]}"
        self.processes: list[MeshProcess] = []
        self.edges: dict[str, Any] = {}
        self.envoy_pids: dict[str, int] = {}

    async def start(self) -> None:
        started = time.perf_counter()
        self.schema, url = _pg_schema(self.pg)
        env = {
            "POWERX_HEALTH_MONITOR": "0",
            "POWERX_WATCH_POLL_INTERVAL_S": "1",
            "POWERX_LOG_LEVEL": "WARNING",
        }
        shared = Shared(database_url=url, redis_url=self.redis_url)
        a = MeshProcess("mesh-a", self.dir, shared, env=env)
        b = MeshProcess("mesh-b", self.dir, shared, env=env)
        self.processes = [a, b]
        a.start()
        await a.wait_ready(60)
        b.start()
        await b.wait_ready(60)
        for name, upstreams in (("one", [a]), ("two", [a, b])):
            edge = start_edge(upstreams, self.dir / name, access_log=False)
            self.edges[name] = edge
            await asyncio.to_thread(edge.wait_healthy_upstreams, 15.0, len(upstreams))
            proc = edge._proc  # the launcher keeps its Popen private; the pid is for /proc CPU figures
            assert proc is not None
            self.envoy_pids[name] = proc.pid
        await self._announce()
        print(
            f"  rig up in {time.perf_counter() - started:.1f}s: mesh A pid {a.pid} ({a.address}), mesh B pid "
            f"{b.pid} ({b.address}); edge ONE {self.edges['one'].url} (pid {self.envoy_pids['one']}) -> A; "
            f"edge TWO {self.edges['two'].url} (pid {self.envoy_pids['two']}) -> A, B; PostgreSQL schema "
            f"{self.schema}",
            flush=True,
        )

    async def _announce(self) -> None:
        md = call_metadata(self.tenant)
        async with grpc.aio.insecure_channel(self.processes[0].address) as ch:
            announce = ch.unary_unary(
                REGISTRY + "AnnounceProvider",
                request_serializer=rs.AnnounceProviderRequest.SerializeToString,
                response_deserializer=rs.AnnounceProviderResponse.FromString,
            )
            for i in range(PROVIDERS):
                req = rs.AnnounceProviderRequest(
                    provider=provider_pb2.Provider(provider_id=provider_id(i), version="1.0.0"),
                    capabilities=[capability_pb2.Capability(capability_id=capability_id(i), version="1.0.0")],
                    endpoints=[
                        endpoint_pb2.Endpoint(
                            transport=common_pb2.TRANSPORT_GRPC, uri=f"grpc://127.0.0.1:{40000 + i}"
                        )
                    ],
                )
                req.lease_ttl.FromSeconds(3600)
                await announce(req, metadata=md, timeout=10)
        # Both processes route every capability before anything is measured.
        for p in self.processes:
            async with grpc.aio.insecure_channel(p.address) as ch:
                resolve = ch.unary_unary(
                    ROUTER + "ResolveEndpoint",
                    request_serializer=rt.ResolveEndpointRequest.SerializeToString,
                    response_deserializer=rt.ResolveEndpointResponse.FromString,
                )
                deadline = time.monotonic() + 20
                for i in range(PROVIDERS):
                    while True:
                        try:
                            await resolve(
                                rt.ResolveEndpointRequest(capability_id=capability_id(i)),
                                metadata=md,
                                timeout=5,
                            )
                            break
                        except grpc.aio.AioRpcError:
                            if time.monotonic() > deadline:
                                raise
                            await asyncio.sleep(0.2)

    def target(self, case: str) -> str:
        return f"127.0.0.1:{self.edges[case].listen_port}"

    def pids(self, case: str, load_pid: int) -> dict[str, int]:
        a, b = self.processes
        return {"mesh_a": a.pid, "mesh_b": b.pid, "envoy": self.envoy_pids[case], "load": load_pid}

    def stop(self) -> None:
        for edge in self.edges.values():
            with contextlib.suppress(Exception):
                edge.stop()
        for p in self.processes:
            p.stop()
        if self.schema:
            with contextlib.suppress(Exception):
                _drop_schema(self.pg, self.schema)
        self._tmp.cleanup()


async def _measure(rig: Rig, case: str, measure_s: float) -> dict[str, Any]:
    """One measurement of one case: a fresh load process, its window, the CPU of everything meanwhile."""
    child = Child(
        f"load-{case}",
        "tests.bench.bench_scale_out",
        [
            "--load",
            "--target",
            rig.target(case),
            "--tenant",
            rig.tenant,
            "--in-flight",
            str(IN_FLIGHT),
            "--warmup",
            str(WARMUP_S),
            "--seconds",
            str(measure_s),
        ],
        rig.dir,
    )
    try:
        lines = Lines(child)
        first = await asyncio.to_thread(lines.next, 60.0)
        assert first.get("phase") == "measure", first
        with CpuMeter(rig.pids(case, child.pid)) as meter:
            result = await asyncio.to_thread(lines.next, measure_s + 30)
    finally:
        child.stop()
    calls = sum(result["counts"].values())
    wall = result["wall_s"]
    return {
        "rate": calls / wall,
        "calls": calls,
        "counts": result["counts"],
        "errors": result["errors"],
        # CPU over the window, in cores (the load generator's from its own getrusage).
        "cores": {k: v / meter.wall_s for k, v in meter.cpu_s.items()},
        "rest_cores": meter.background_s / meter.wall_s,
        "mesh_cpu_us_per_call": (meter.cpu_s["mesh_a"] + meter.cpu_s["mesh_b"]) * 1e6 / max(1, calls),
    }


async def run(quick: bool = False, *, profile_dir: Path | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints its block; an empty dict when PostgreSQL or Redis is missing."""
    del profile_dir  # the mesh processes are not profiled here
    pg = os.environ.get("POWERX_TEST_DATABASE_URL", "") or DEFAULT_PG
    redis_url = os.environ.get("POWERX_TEST_REDIS_URL", "") or DEFAULT_REDIS
    measure_s = MEASURE_S_QUICK if quick else MEASURE_S
    header(
        f"{NAME}: a read+write mix through one Envoy, ONE mesh process vs TWO (PostgreSQL + Redis)",
        [
            "processes: load generator -> Envoy ONE -> mesh A, or load generator -> Envoy TWO -> mesh A +"
            " mesh B; both meshes on one PostgreSQL schema and one Redis",
            f"mix: 80 % ResolveEndpoint, 10 % GetProvider (read), 10 % RenewProviderLease (write) over "
            f"{PROVIDERS} providers; {IN_FLIGHT} in flight on one channel",
            f"per repetition: each case {WARMUP_S:g} s warm-up + {measure_s:g} s measured, order reversed "
            f"every other repetition; {REPEATS} repetitions; {os.cpu_count()} CPUs shared by every process",
        ],
    )
    why = _services_answer(pg, redis_url)
    if why:
        print(f"  SKIPPED: PostgreSQL or Redis does not answer ({why})", flush=True)
        return {}
    figs = Figures()
    cores: dict[str, dict[str, list[float]]] = {"one": {}, "two": {}}
    errors: dict[str, dict[str, int]] = {"one": {}, "two": {}}
    rig = Rig(pg, redis_url)
    try:
        await rig.start()
        for rep in range(REPEATS):
            order = ["one", "two"] if rep % 2 == 0 else ["two", "one"]
            for case in order:
                m = await _measure(rig, case, measure_s)
                label = "ONE process" if case == "one" else "TWO processes"
                figs.add(f"{label} calls/s", m["rate"], "calls/s", higher=True)
                figs.add(f"{label} mesh CPU per call", m["mesh_cpu_us_per_call"], "µs", higher=False)
                for k, v in [*m["cores"].items(), ("rest", m["rest_cores"])]:
                    cores[case].setdefault(k, []).append(v)
                for code, n in m["errors"].items():
                    errors[case][code] = errors[case].get(code, 0) + n
    finally:
        rig.stop()
    for row in figs.table():
        print(row)
    one, two = figs["ONE process calls/s"], figs["TWO processes calls/s"]
    print(ratio_line("TWO/ONE processes calls/s", two, one, f">= {TARGET}x"))
    for case in ("one", "two"):
        med = {k: statistics.median(v) for k, v in cores[case].items()}
        print(
            f"  CPU in cores, {case.upper()} (median): mesh A {med['mesh_a']:.2f}, "
            f"mesh B {med['mesh_b']:.2f}, envoy {med['envoy']:.2f}, load generator {med['load']:.2f}, "
            f"rest of the machine (PostgreSQL, Redis, others) {med['rest']:.2f}; "
            f"total {sum(med.values()):.2f} of {os.cpu_count()}"
            + (f"; errors {errors[case]}" if errors[case] else "")
        )
    med_ratio, best_ratio = ratio(two, one)
    two_cores = {k: statistics.median(v) for k, v in cores["two"].items()}
    one_cores = {k: statistics.median(v) for k, v in cores["one"].items()}
    return {
        "one_rate": one.median,
        "two_rate": two.median,
        "ratio": med_ratio,
        "ratio_best": best_ratio,
        "one_mesh_cores": one_cores["mesh_a"] + one_cores["mesh_b"],
        "two_mesh_cores": two_cores["mesh_a"] + two_cores["mesh_b"],
        "two_total_cores": sum(two_cores.values()),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs this benchmark alone, or (with --load) one load generator."""
    parser = argparse.ArgumentParser(
        prog=f"python -m tests.bench.bench_{NAME}", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help=f"{MEASURE_S_QUICK:g} s per case and repetition")
    parser.add_argument("--load", action="store_true", help="run as a load generator (used by the bench)")
    parser.add_argument("--target", default="")
    parser.add_argument("--tenant", default="")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    parser.add_argument("--warmup", type=float, default=WARMUP_S)
    parser.add_argument("--seconds", type=float, default=MEASURE_S)
    opts = parser.parse_args(argv)
    if opts.load:
        return _load_main(opts)
    atexit.register(stop_all_children)
    print(f"load average at start: {loadavg()}", flush=True)
    started = time.perf_counter()
    try:
        result = asyncio.run(run(opts.quick))
    except KeyboardInterrupt:
        stop_all_children()
        return 130
    if result:
        print(
            f"  two/one {result['ratio']:.2f}x ({fmt(result['two_rate'])} vs "
            f"{fmt(result['one_rate'])} calls/s)"
        )
    print(f"  total {time.perf_counter() - started:.0f}s (load average at the end: {loadavg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
