"""Shared helpers of the benchmarks: timing, CPU accounting, statistics, output, and child processes.

Method (as in the routing reference, §3): every server (mesh, provider, bare proxy) is its own process,
CPU per call is the utime+stime delta of that process from /proc/<pid>/stat (the client's from
getrusage), every case is warmed up first, and every measurement is repeated; the median and the best
repetition are reported because the 2-core machines are shared and noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from powerx.provider.v1 import provider_service_pb2 as provider_pb2
from powerx.router.v1 import router_service_pb2 as rt

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TENANT = "t1"
TENANT_MD = (("x-tenant-id", TENANT),)
PROVIDER_ID = "com.bench.echo"
INVOKE = "/powerx.provider.v1.ProviderService/Invoke"
INVOKE_STREAM = "/powerx.provider.v1.ProviderService/InvokeStream"
ROUTER = "/powerx.router.v1.RouterService/"
REPEATS = 3

# Runs a module as __main__ after asking the kernel to SIGTERM it when the bench process dies, so no
# server outlives an interrupted or killed bench.
_LAUNCHER = (
    "import ctypes, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))\n"
    "except Exception:\n"
    "    pass\n"
    "mod = sys.argv[1]\n"
    "sys.argv = [mod, *sys.argv[2:]]\n"
    "runpy.run_module(mod, run_name='__main__', alter_sys=True)\n"
)


# ---- CPU, load and memory -------------------------------------------------------------------------


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_s() -> float:
    """utime + stime of this process (all threads), from getrusage."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_bytes() -> int:
    """Resident set size of this process."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_SIZE


def system_busy_s() -> float:
    """CPU time (all cores) the whole machine spent not idle, from /proc/stat."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(x) for x in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


class CpuMeter:
    """CPU deltas of named processes (pid 0 means this process) and of the whole machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._wall = 0.0
        self._busy = 0.0
        self.cpu_s: dict[str, float] = {}
        self.wall_s = 0.0
        self.background_s = 0.0

    def _read(self) -> dict[str, float]:
        return {name: self_cpu_s() if pid == 0 else proc_cpu_s(pid) for name, pid in self.pids.items()}

    def __enter__(self) -> CpuMeter:
        self._busy = system_busy_s()
        self._start = self._read()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        end = self._read()
        self.cpu_s = {name: end[name] - self._start[name] for name in self.pids}
        # What the rest of the machine did meanwhile (other tenants of the box, other processes).
        self.background_s = max(0.0, system_busy_s() - self._busy - sum(self.cpu_s.values()))


# ---- statistics and output ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


@dataclass
class Figure:
    """One figure measured once per repetition; `higher` says which direction is better."""

    name: str
    unit: str
    higher: bool
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def best(self) -> float:
        if not self.values:
            return float("nan")
        return max(self.values) if self.higher else min(self.values)


class Figures:
    """Figures by name, in the order they were first recorded."""

    def __init__(self) -> None:
        self.by_name: dict[str, Figure] = {}

    def add(self, name: str, value: float, unit: str, *, higher: bool) -> None:
        fig = self.by_name.get(name)
        if fig is None:
            fig = self.by_name[name] = Figure(name, unit, higher)
        fig.values.append(value)

    def __getitem__(self, name: str) -> Figure:
        return self.by_name[name]

    def table(self, names: Iterable[str] | None = None) -> list[str]:
        """Rows `name  median  best  unit  (each repetition)`."""
        rows = []
        for name in names or self.by_name:
            f = self.by_name[name]
            each = ", ".join(fmt(v) for v in f.values)
            rows.append(
                f"  {f.name:<46} median {fmt(f.median):>9}  best {fmt(f.best):>9} {f.unit:<9} [{each}]"
            )
        return rows


def fmt(v: float) -> str:
    """A number with a sensible number of digits."""
    if v != v:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def paired_ratios(num: Figure, den: Figure) -> list[float]:
    """num/den per repetition (the two were measured side by side, so they share the machine's mood)."""
    return [a / b if b else float("nan") for a, b in zip(num.values, den.values, strict=True)]


def ratio(num: Figure, den: Figure) -> tuple[float, float]:
    """(median of the per-repetition ratios, ratio of the two best figures)."""
    med = statistics.median(paired_ratios(num, den))
    best = num.best / den.best if den.best else float("nan")
    return med, best


def ratio_line(label: str, num: Figure, den: Figure, target: str) -> str:
    """`RATIO label  median  best  [per repetition]  target`."""
    med, best = ratio(num, den)
    each = ", ".join(f"{r:.2f}" for r in paired_ratios(num, den))
    return f"  RATIO {label:<44} median {med:5.2f}x  best {best:5.2f}x  [{each}]  target {target}"


def header(title: str, lines: Iterable[str]) -> None:
    """Prints a bench's header block."""
    print()
    print("=" * 100)
    print(f"BENCH {title}    (load average {loadavg()})")
    print("-" * 100)
    for line in lines:
        print(f"  {line}")
    print("-" * 100, flush=True)


def struct(**fields: Any) -> struct_pb2.Struct:
    """A Struct from keyword arguments."""
    s = struct_pb2.Struct()
    s.update(fields)
    return s


# ---- child processes ------------------------------------------------------------------------------


class Child:
    """A server process started for a bench; reads its JSON ready line; always ends it."""

    def __init__(self, name: str, module: str, args: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-c", _LAUNCHER, module, *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches the bench only; it ends the children itself
        )
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Waits for the first stdout line (a JSON object) and returns it."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name} did not get ready in {timeout_s:.0f}s\n{self.log_tail()}")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited ({self.proc.poll()})\n{self.log_tail()}")
                buf += chunk
        line: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
        return line

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 8.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)


_LIVE: list[Child] = []


def stop_all_children() -> None:
    """Ends every child still running (newest first); used by atexit and signal handlers."""
    for child in reversed(list(_LIVE)):
        with contextlib.suppress(Exception):
            child.stop(timeout_s=3.0)


class Cluster:
    """A mesh process, one echo provider process registered with it, and a bare proxy process."""

    def __init__(self, *, profile_mesh: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="powerx-bench-")
        self.dir = Path(self._tmp.name)
        self.profile_mesh = profile_mesh
        self.mesh: Child | None = None
        self.provider: Child | None = None
        self.proxy: Child | None = None
        self.mesh_address = ""
        self.provider_address = ""
        self.proxy_address = ""
        self.idle_cpu_ms_per_s: dict[str, float] = {}

    def pids(self) -> dict[str, int]:
        assert self.mesh is not None
        assert self.provider is not None
        assert self.proxy is not None
        return {"client": 0, "router": self.mesh.pid, "proxy": self.proxy.pid, "provider": self.provider.pid}

    async def start(self) -> None:
        """Starts the three processes and waits until the router routes echo.say to the provider."""
        started = time.perf_counter()
        args = ["--data-dir", str(self.dir / "mesh")]
        if self.profile_mesh is not None:
            args += ["--profile", str(self.profile_mesh)]
        self.mesh = Child("mesh", "tests.bench.mesh_runner", args, self.dir)
        self.mesh_address = self.mesh.ready()["address"]
        self.provider = Child(
            "provider",
            "examples.echo_provider",
            ["--registry", self.mesh_address, "--tenant", TENANT, "--provider-id", PROVIDER_ID],
            self.dir,
        )
        uri = self.provider.ready()["grpc"]
        self.provider_address = uri.removeprefix("grpc://")
        self.proxy = Child("proxy", "tests.bench.raw_proxy", ["--upstream", self.provider_address], self.dir)
        self.proxy_address = self.proxy.ready()["address"]
        await self._wait_routable()
        print(
            f"  cluster up in {time.perf_counter() - started:.1f}s: mesh pid {self.mesh.pid} at "
            f"{self.mesh_address}, echo provider pid {self.provider.pid} at {self.provider_address}, "
            f"bare proxy pid {self.proxy.pid} at {self.proxy_address}",
            flush=True,
        )

    async def _wait_routable(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(self.mesh_address) as ch:
            invoke = router_invoke(ch)
            req = rt.InvokeRequest(capability_id="echo.say", arguments=struct(msg="hello"))
            while True:
                try:
                    await invoke(req, metadata=TENANT_MD, timeout=5)
                    return
                except grpc.aio.AioRpcError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the router never routed echo.say: {exc.details()}") from exc
                    await asyncio.sleep(0.2)

    async def measure_idle(self, seconds: float) -> None:
        """CPU the servers burn while nothing calls them (health probes, heartbeats, pollers)."""
        with CpuMeter(self.pids()) as m:
            await asyncio.sleep(seconds)
        self.idle_cpu_ms_per_s = {k: v * 1000 / m.wall_s for k, v in m.cpu_s.items()}

    def stop(self) -> None:
        for child in (self.proxy, self.provider, self.mesh):
            if child is not None:
                child.stop()
        self._tmp.cleanup()


# ---- gRPC clients ---------------------------------------------------------------------------------


def router_invoke(ch: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """Cached RouterService/Invoke."""
    return ch.unary_unary(
        ROUTER + "Invoke",
        request_serializer=rt.InvokeRequest.SerializeToString,
        response_deserializer=rt.InvokeResponse.FromString,
    )


def router_stream(ch: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    """Cached RouterService/InvokeStream."""
    return ch.unary_stream(
        ROUTER + "InvokeStream",
        request_serializer=rt.InvokeStreamRequest.SerializeToString,
        response_deserializer=rt.InvokeStreamResponse.FromString,
    )


def router_resolve(ch: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """Cached RouterService/ResolveEndpoint."""
    return ch.unary_unary(
        ROUTER + "ResolveEndpoint",
        request_serializer=rt.ResolveEndpointRequest.SerializeToString,
        response_deserializer=rt.ResolveEndpointResponse.FromString,
    )


def router_report(ch: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """Cached RouterService/ReportOutcome."""
    return ch.unary_unary(
        ROUTER + "ReportOutcome",
        request_serializer=rt.ReportOutcomeRequest.SerializeToString,
        response_deserializer=rt.ReportOutcomeResponse.FromString,
    )


def provider_invoke(ch: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """Cached ProviderService/Invoke (direct to the provider, or through the bare proxy)."""
    return ch.unary_unary(
        INVOKE,
        request_serializer=provider_pb2.InvokeRequest.SerializeToString,
        response_deserializer=provider_pb2.InvokeResponse.FromString,
    )


def provider_stream(ch: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    """Cached ProviderService/InvokeStream."""
    return ch.unary_stream(
        INVOKE_STREAM,
        request_serializer=provider_pb2.InvokeStreamRequest.SerializeToString,
        response_deserializer=provider_pb2.InvokeStreamResponse.FromString,
    )


def provider_request(capability_id: str, version: str, arguments: struct_pb2.Struct) -> Any:
    """A ProviderService request as the router would send it."""
    cls = provider_pb2.InvokeStreamRequest if capability_id == "echo.count" else provider_pb2.InvokeRequest
    return cls(
        capability_id=capability_id,
        version=version,
        arguments=arguments,
        context=provider_pb2.CallContext(tenant_id=TENANT, actor_id="anonymous", attempt=1),
    )


@dataclass
class Measured:
    """What one case did over the slices of a repetition."""

    calls: int = 0
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    background_s: float = 0.0
    latencies: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s

    def cpu_us_per_call(self, name: str) -> float:
        return self.cpu_s.get(name, 0.0) * 1e6 / self.calls


# A case: runs `n` calls (recording per-call ns into the list when given) and returns the wall time.
Case = Callable[[int, "list[int] | None"], Awaitable[float]]


async def interleaved(
    cases: dict[str, Case], n: int, pids: dict[str, int], *, slices: int = 3, latencies: bool = False
) -> dict[str, Measured]:
    """Runs every case for `n` calls, cut into `slices` slices taken in turn, the order reversed on every
    other slice (A B C, C B A, A B C, …).

    Interleaving spreads the machine's changing background load over all cases alike; reversing cancels
    what running first or last in a slice does.
    """
    out = {name: Measured() for name in cases}
    per_slice = [n // slices + (1 if i < n % slices else 0) for i in range(slices)]
    for i, size in enumerate(per_slice):
        order = list(cases.items())
        for name, case in order if i % 2 == 0 else reversed(order):
            m = out[name]
            lat: list[int] | None = m.latencies if latencies else None
            with CpuMeter(pids) as meter:
                wall = await case(size, lat)
            m.calls += size
            m.wall_s += wall
            m.background_s += meter.background_s
            for k, v in meter.cpu_s.items():
                m.cpu_s[k] = m.cpu_s.get(k, 0.0) + v
    return out


def calls_case(call: Callable[[], Awaitable[object]], in_flight: int) -> Case:
    """A case making `call()` with `in_flight` calls at a time."""

    async def case(n: int, latencies: list[int] | None) -> float:
        return await run_calls(call, n, in_flight, latencies=latencies)

    return case


async def run_calls(
    call: Callable[[], Any], n: int, in_flight: int, *, latencies: list[int] | None = None
) -> float:
    """Makes `n` calls with `in_flight` workers; returns the wall time. Records per-call ns if asked."""
    remaining = n
    clock = time.perf_counter_ns

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            if latencies is None:
                await call()
            else:
                t0 = clock()
                await call()
                latencies.append(clock() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Prints how long a setup step took."""
    t0 = time.perf_counter()
    yield
    print(f"  ({label}: {time.perf_counter() - t0:.1f}s)", flush=True)
