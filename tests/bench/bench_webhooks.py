"""webhooks: signed n8n callbacks per second through the Envoy edge, 10 % replays, no duplicate processed.

Processes (each its own): the mesh and its Envoy edge as `powerx up` runs them (`python -m servers.cli
up`, SQLite in a temporary folder, in-process bus, JSON INFO logs, Envoy's access log on; Envoy is a
child of the mesh process), a fake n8n (`tests/bench/fake_platform_runner.py --kind n8n`) and the
baseline server (`--kind bare`: a starlette/uvicorn app whose `POST /noop` reads the body and answers a
fixed JSON object). The client is this process.

Setup: one n8n connector instance (header auth, the fake's Standard Webhooks secret), then one ASYNC
`InvokeConnector` per webhook to come (gRPC, 16 in flight). The fake's `mesh-async` webhook answers
`{"message":"Workflow was started"}` and sends no callback of its own, so each invocation stays RUNNING
until the benchmark's webhook completes it.

Measured: REST `POST /platform/connectors/n8n/webhooks/{instance}` through Envoy, the body
`{"invocation_id","execution_id","ok":true,"result"}` signed in advance (`webhook-id`,
`webhook-timestamp`, `webhook-signature`, as n8n sends them), `IN_FLIGHT` requests in flight over as many
HTTP/1.1 keep-alive connections of a minimal asyncio client (httpx costs the client about ten times the
CPU per request, and the client shares the 2 cores with the servers). Every 10th request re-sends an
earlier webhook byte for byte (same id, timestamp and signature), which the mesh must acknowledge as a
duplicate and not process. The baseline is the same client sending the same bytes to the bare server,
cases interleaved in slices (order reversed every other slice), 3 repetitions.

Afterwards the mesh's SQLite file is read: stored callback events (`connector_callbacks`) must equal the
distinct webhook ids sent, each invocation must have exactly one event and be SUCCEEDED, and the outbox
must hold only `done` items.

Target (issue): >= 500 verified webhooks/s with zero duplicates processed.

The rig (`ConnectorRig`) and the raw HTTP client (`RawConnection`) are shared with
`bench_connector_invoke`.
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
import sqlite3
import sys
import tempfile
import time
import unittest.mock
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from powerx.connector.v1 import callback_pb2, connector_pb2, invocation_pb2
from powerx.connector.v1 import connector_service_pb2 as svc
from powerx.connector.v1 import connector_service_pb2_grpc as svc_grpc
from servers.connector import guard
from tests.bench.agent_common import Peer
from tests.bench.common import (
    REPEATS,
    Child,
    CpuMeter,
    Figures,
    fmt,
    header,
    interleaved,
    loadavg,
    percentile,
    ratio,
    ratio_line,
    stop_all_children,
)
from tests.bench.fake_platform_runner import ASYNC_PATH, AUTH, SYNC_PATH
from tests.fakes.n8n import DEFAULT_SECRET

NAME = "webhooks"
IN_FLIGHT = 32
REPLAY_EVERY = 10  # every 10th request re-sends an earlier webhook
CREATE_IN_FLIGHT = 16
TARGET = 500.0
TENANT = "bench-conn"
INSTANCE = "bench-n8n"
PLATFORM = "n8n"
MANAGE_MD = (("x-tenant-id", TENANT), ("x-scopes", "agent.connector.manage"), ("x-principal", "bench"))
INVOKE_MD = (("x-tenant-id", TENANT), ("x-principal", "bench"))
# The per-tenant webhook throttle (default rate=1000,burst=2000) is a product guard, not a capacity
# limit; the rig raises it so that it cannot cut a measurement short (any 429 would be printed).
WEBHOOK_RATE = "rate=100000,burst=100000"


# ---- a minimal HTTP/1.1 keep-alive client ------------------------------------------------------------


def http_request(method: str, host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The bytes of one HTTP/1.1 request (keep-alive, explicit Content-Length)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawConnection:
    """One HTTP/1.1 keep-alive connection: writes prepared request bytes, reads one response at a time.

    Understands what the servers here send: a status line, headers, and a Content-Length or chunked body.
    Reconnects when the server closes the connection.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Sends one request; its status and body."""
        if self._writer is None or self._writer.is_closing():
            await self.open()
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(data)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        length = -1
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            body = b""
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        elif length >= 0:
            body = await self._reader.readexactly(length)
        else:
            body = await self._reader.read()
            close = True
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None


# ---- the processes -----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class ConnectorRig:
    """`powerx up` (mesh + Envoy), a fake n8n and optionally the bare baseline server, each a process."""

    def __init__(self, *, bare: bool) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="powerx-bench-conn-")
        self.dir = Path(self._tmp.name)
        self.with_bare = bare
        self.mesh: Child | None = None
        self.fake: Peer | None = None
        self.bare: Peer | None = None
        self.envoy_pid = 0
        self.grpc_address = ""
        self.edge_url = ""
        self.edge_host = ""
        self.edge_port = 0
        self.fake_url = ""
        self.bare_url = ""
        self.database = self.dir / "data" / "mesh.db"
        self.idle_cpu_ms_per_s: dict[str, float] = {}

    def pids(self) -> dict[str, int]:
        assert self.mesh is not None
        assert self.fake is not None
        pids = {"client": 0, "mesh": self.mesh.pid, "envoy": self.envoy_pid, "fake": self.fake.pid}
        if self.bare is not None:
            pids["bare"] = self.bare.pid
        return pids

    async def start(self) -> None:
        """Starts everything, waits for the edge to route, and creates the connector instance."""
        started = time.perf_counter()
        root = self.dir / "root"  # an empty config root: no connector or flag files (no flag limits)
        root.mkdir()
        env = {
            "POWERX_CONFIG_ROOT": str(root),
            "POWERX_CONNECTOR_WEBHOOK_RATE": WEBHOOK_RATE,
            "POWERX_LOG_LEVEL": "INFO",
            "POWERX_LOG_FORMAT": "json",
        }
        args = ["up", "--data-dir", str(self.dir / "data")]
        for flag in ("--grpc-address", "--edge-address", "--admin-address", "--a2a-address"):
            args += [flag, "127.0.0.1:0"]
        with unittest.mock.patch.dict(os.environ, env):
            self.mesh = Child("mesh", "servers.cli", args, self.dir)
        self.fake = Peer("fake", "tests.bench.fake_platform_runner", ["--kind", "n8n"], self.dir)
        if self.with_bare:
            self.bare = Peer("bare", "tests.bench.fake_platform_runner", ["--kind", "bare"], self.dir)
        lines = await asyncio.to_thread(self._up_lines)
        for line in lines:
            words = line.split()
            if line.strip().startswith("gRPC"):
                self.grpc_address = words[1]
            elif "REST + gRPC" in line:
                self.edge_url = words[3]
        self.edge_host, _, port = self.edge_url.removeprefix("http://").rpartition(":")
        self.edge_port = int(port)
        envoys = [p for p in _children(self.mesh.pid) if _comm(p).startswith("envoy")]
        if not envoys:
            raise RuntimeError(f"no envoy child under the mesh process {self.mesh.pid}")
        self.envoy_pid = envoys[0]
        self.fake_url = (await self.fake.aanswer(30))["base_url"]
        if self.bare is not None:
            self.bare_url = (await self.bare.aanswer(30))["base_url"]
        await self._wait_edge()
        await self._create_instance()
        print(
            f"  rig up in {time.perf_counter() - started:.1f}s: mesh pid {self.mesh.pid} (gRPC "
            f"{self.grpc_address}), envoy pid {self.envoy_pid} ({self.edge_url}), fake n8n pid "
            f"{self.fake.pid} ({self.fake_url})"
            + (f", bare server pid {self.bare.pid} ({self.bare_url})" if self.bare else ""),
            flush=True,
        )

    def _up_lines(self, timeout_s: float = 60.0) -> list[str]:
        """The lines `powerx up` prints until "Press Ctrl-C" (its addresses)."""
        assert self.mesh is not None
        assert self.mesh.proc.stdout is not None
        fd = self.mesh.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buf = b""
        while b"Press Ctrl-C" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"powerx up did not start in {timeout_s:.0f}s\n{self.mesh.log_tail()}")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"powerx up exited ({self.mesh.proc.poll()})\n{self.mesh.log_tail()}")
                buf += chunk
        return buf.decode().splitlines()

    async def _wait_edge(self, timeout_s: float = 30.0) -> None:
        """Waits until a REST call through Envoy reaches the mesh (the upstream passed its health check)."""
        conn = RawConnection(self.edge_host, self.edge_port)
        data = http_request(
            "GET",
            f"{self.edge_host}:{self.edge_port}",
            f"/platform/connectors/{PLATFORM}/instances",
            {"x-tenant-id": TENANT},
            b"",
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    status, body = await conn.request(data)
                except (OSError, asyncio.IncompleteReadError):
                    status, body = 0, b""
                    await conn.close()
                if status == 200:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the edge never routed to the mesh: {status} {body[:200]!r}")
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    async def _create_instance(self) -> None:
        inst = connector_pb2.ConnectorInstance(
            base_url=self.fake_url,
            workflow_ids={"echo": SYNC_PATH, "background": ASYNC_PATH},
            default_platform_user_id="bench-user",
            enabled=True,
        )
        inst.credential_input.secret_headers[AUTH[0]] = AUTH[1]
        inst.credential_input.webhook_secrets.append(DEFAULT_SECRET)
        async with grpc.aio.insecure_channel(self.grpc_address) as ch:
            await svc_grpc.ConnectorServiceStub(ch).CreateConnectorInstance(
                svc.CreateConnectorInstanceRequest(platform=PLATFORM, instance_id=INSTANCE, instance=inst),
                metadata=MANAGE_MD,
                timeout=30,
            )

    async def measure_idle(self, seconds: float) -> None:
        """CPU the processes burn while nothing calls them."""
        with CpuMeter(self.pids()) as m:
            await asyncio.sleep(seconds)
        self.idle_cpu_ms_per_s = {k: v * 1000 / m.wall_s for k, v in m.cpu_s.items() if k != "client"}

    def idle_line(self) -> str:
        return "idle CPU before the runs (ms per s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in self.idle_cpu_ms_per_s.items()
        )

    def stop(self) -> None:
        for child in (self.bare, self.fake, self.mesh):
            if child is not None:
                child.stop()
        self._tmp.cleanup()


async def run_limited(make: Callable[[int], Awaitable[Any]], n: int, in_flight: int) -> list[Any]:
    """`make(i)` for i in range(n), `in_flight` at a time; the results in order."""
    out: list[Any] = [None] * n
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            out[i] = await make(i)

    await asyncio.gather(*(worker() for _ in range(min(in_flight, n))))
    return out


# ---- the webhooks ------------------------------------------------------------------------------------


@dataclass
class Hook:
    """One request of the run: a new webhook or a byte-for-byte replay of an earlier one."""

    mesh_bytes: bytes
    bare_bytes: bytes
    callback_id: str
    invocation_id: str
    replay: bool


@dataclass
class Tally:
    """What the mesh answered, per webhook id (a replay may overtake its original: then the replay is
    the one processed and the original is the duplicate, which is as correct)."""

    processed: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    not_inline: int = 0  # processed, but by the outbox sweeper: the answer names no invocation
    wrong: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)


def _build_hooks(invocations: list[str], n_total: int, host: str, seed: int = 7) -> list[Hook]:
    """`n_total` requests: every REPLAY_EVERY-th re-sends an earlier webhook, the others complete one
    invocation each (in order). A replay repeats a webhook sent at least 2 * IN_FLIGHT requests earlier
    when there is one, so that it mostly arrives after the original finished (a replay racing its
    original is guarded all the same: the replay key is taken before anything is recorded)."""
    rng = random.Random(seed)
    ts = int(time.time())
    hooks: list[Hook] = []
    originals: list[int] = []
    next_inv = 0
    path = f"/platform/connectors/{PLATFORM}/webhooks/{INSTANCE}"
    for i in range(n_total):
        if i % REPLAY_EVERY == REPLAY_EVERY - 1 and originals:
            old = [k for k in originals if k <= i - 2 * IN_FLIGHT] or originals
            src = hooks[rng.choice(old)]
            hooks.append(Hook(src.mesh_bytes, src.bare_bytes, src.callback_id, src.invocation_id, True))
            continue
        inv_id = invocations[next_inv]
        next_inv += 1
        msg_id = f"msg_{i:07d}_{inv_id[-8:]}"
        body = json.dumps(
            {
                "invocation_id": inv_id,
                "execution_id": str(100_000 + i),
                "ok": True,
                "result": {"answer": f"done {i}", "items": [1, 2, 3]},
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "axios/1.16.1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": guard.sign_standard(DEFAULT_SECRET, msg_id, ts, body),
        }
        originals.append(len(hooks))
        hooks.append(
            Hook(
                http_request("POST", host, path, headers, body),
                http_request("POST", host, "/noop", headers, body),
                msg_id,
                inv_id,
                False,
            )
        )
    return hooks


def originals_needed(n_total: int) -> int:
    """How many new webhooks (and so invocations) `n_total` requests contain."""
    return n_total - n_total // REPLAY_EVERY


class Sender:
    """Sends hooks in order over keep-alive connections, `len(conns)` in flight."""

    def __init__(self, hooks: list[Hook], conns: list[RawConnection], *, mesh: bool) -> None:
        self.hooks = hooks
        self.conns = conns
        self.mesh = mesh
        self.pos = 0
        self.tally = Tally()
        self.new_sent = 0

    def _check(self, hook: Hook, status: int, body: bytes) -> None:
        t = self.tally
        t.statuses[status] += 1
        if not self.mesh:
            return
        if status != 200:
            t.wrong.append(f"{hook.callback_id}: HTTP {status} {body[:200]!r}")
            return
        reply = json.loads(body)
        if reply.get("callback_id") != hook.callback_id:
            t.wrong.append(f"{hook.callback_id}: answered for {reply.get('callback_id')!r}")
        elif reply.get("duplicate"):
            t.duplicates[hook.callback_id] += 1
        else:
            t.processed[hook.callback_id] += 1
            if not reply.get("invocation_id"):
                t.not_inline += 1
            elif reply.get("invocation_id") != hook.invocation_id:
                t.wrong.append(f"{hook.callback_id}: completed {reply.get('invocation_id')!r}")

    async def case(self, n: int, latencies: list[int] | None) -> float:
        start = self.pos
        self.pos += n
        if self.pos > len(self.hooks):
            raise RuntimeError("ran out of prepared webhooks")
        it = iter(range(start, start + n))
        self.new_sent += sum(1 for i in range(start, start + n) if not self.hooks[i].replay)
        clock = time.perf_counter_ns
        lat = latencies if latencies is not None else []

        async def worker(conn: RawConnection) -> None:
            for i in it:
                hook = self.hooks[i]
                t0 = clock()
                status, body = await conn.request(hook.mesh_bytes if self.mesh else hook.bare_bytes)
                lat.append(clock() - t0)
                self._check(hook, status, body)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in self.conns))
        return time.perf_counter() - t0


async def _create_invocations(rig: ConnectorRig, n: int) -> tuple[list[str], float, float]:
    """n ASYNC invocations of the fake's `mesh-async` webhook; (ids, invocations/s, mesh CPU ms each)."""
    ctx = struct_pb2.Struct()
    ctx.update({"order": "bench", "lines": 3})
    async with grpc.aio.insecure_channel(rig.grpc_address) as ch:
        invoke = svc_grpc.ConnectorServiceStub(ch).InvokeConnector

        async def make(_i: int) -> str:
            req = svc.InvokeConnectorRequest(
                platform=PLATFORM,
                instance_id=INSTANCE,
                workflow_id="background",
                context=ctx,
                mode=invocation_pb2.INVOCATION_MODE_ASYNC,
            )
            resp = await invoke(req, metadata=INVOKE_MD, timeout=60)
            inv = resp.invocation
            if inv.state != invocation_pb2.INVOCATION_STATE_RUNNING:
                raise RuntimeError(
                    f"ASYNC invocation is {invocation_pb2.InvocationState.Name(inv.state)}: {inv.error}"
                )
            return str(inv.invocation_id)

        assert rig.mesh is not None
        with CpuMeter({"mesh": rig.mesh.pid}) as m:
            ids = await run_limited(make, n, CREATE_IN_FLIGHT)
    return ids, n / m.wall_s, m.cpu_s["mesh"] * 1000 / n


_LOUD = ("warning", "error", "critical")


def log_summary(path: Path, top: int = 3) -> str:
    """Counts of the warning and error lines of a JSON-lines log, most frequent messages first."""
    counts: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and str(rec.get("level", "")).lower() in (
                "warning",
                "error",
                "critical",
            ):
                counts[f"{rec['level']}: {str(rec.get('msg', ''))[:90]}"] += 1
    if not counts:
        return "no warnings or errors"
    return f"{sum(counts.values())} warnings/errors; " + "; ".join(
        f"{n} x {msg}" for msg, n in counts.most_common(top)
    )


def _read_back(database: Path, invocation_ids: list[str]) -> dict[str, Any]:
    """What the mesh stored: callback events, invocation states, outbox states, replay keys."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        events = [
            callback_pb2.CallbackEvent.FromString(bytes(row[0]))
            for row in db.execute("SELECT payload FROM connector_callbacks")
        ]
        wanted = set(invocation_ids)
        states: Counter[str] = Counter()
        for inv_id, state in db.execute("SELECT invocation_id, state FROM connector_invocations"):
            if inv_id in wanted:
                states[invocation_pb2.InvocationState.Name(state)] += 1
        outbox = Counter(dict(db.execute("SELECT state, COUNT(*) FROM connector_outbox GROUP BY state")))
        replay_keys = db.execute("SELECT COUNT(*) FROM connector_replay_keys").fetchone()[0]
    finally:
        db.close()
    per_invocation = Counter(e.invocation_id for e in events)
    return {
        "events": len(events),
        "distinct_callback_ids": len({e.callback_id for e in events}),
        "events_per_invocation": per_invocation,
        "events_without_invocation": per_invocation.get("", 0),
        "invocation_states": states,
        "outbox": outbox,
        "replay_keys": replay_keys,
    }


async def run(quick: bool = False, *, profile_dir: Path | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints its block; returns the headline figures."""
    n = 400 if quick else 1000
    warm = 100 if quick else 200
    slices = 2 if quick else 4
    n_requests = warm + REPEATS * n
    n_originals = originals_needed(n_requests)
    header(
        f"{NAME}: signed n8n webhooks through Envoy completing ASYNC invocations, 10 % replays",
        [
            "processes: client (this one, raw asyncio HTTP/1.1) -> Envoy -> mesh (`powerx up`) | bare "
            "starlette/uvicorn server; fake n8n (own process) only for the ASYNC invocations",
            f"per repetition: {n} requests per case ({n // REPLAY_EVERY} of them replays), {IN_FLIGHT} in "
            f"flight over {IN_FLIGHT} keep-alive connections, cases interleaved in {slices} slices "
            f"(order reversed every other slice); {warm} warm-up requests per case first; {REPEATS} "
            "repetitions",
            f"{n_originals:,} ASYNC invocations created beforehand ({CREATE_IN_FLIGHT} in flight, gRPC), "
            "one completed by each new webhook; webhooks signed before the run",
            "CPU per webhook = process utime+stime delta / requests (envoy is the `powerx up` child); "
            "'background' = CPU of the rest of the machine meanwhile",
            f"webhook throttle raised to {WEBHOOK_RATE} (POWERX_CONNECTOR_WEBHOOK_RATE); empty config root",
        ]
        + (["(--profile-mesh is not supported here: the mesh runs as `powerx up`)"] if profile_dir else []),
    )
    rig = ConnectorRig(bare=True)
    try:
        await rig.start()
        await rig.measure_idle(1.0 if quick else 2.0)
        print(f"  {rig.idle_line()}", flush=True)
        t0 = time.perf_counter()
        inv_ids, create_rate, create_cpu_ms = await _create_invocations(rig, n_originals)
        print(
            f"  created {len(inv_ids):,} ASYNC invocations in {time.perf_counter() - t0:.1f}s: "
            f"{create_rate:.1f}/s, mesh CPU {create_cpu_ms:.1f} ms per invocation",
            flush=True,
        )
        return await _measure(rig, inv_ids, n, warm, slices, create_rate, create_cpu_ms)
    finally:
        rig.stop()


async def _measure(
    rig: ConnectorRig,
    inv_ids: list[str],
    n: int,
    warm: int,
    slices: int,
    create_rate: float,
    create_cpu_ms: float,
) -> dict[str, Any]:
    edge_host = f"{rig.edge_host}:{rig.edge_port}"
    hooks = _build_hooks(inv_ids, warm + REPEATS * n, edge_host)
    bare_host, _, bare_port = rig.bare_url.removeprefix("http://").rpartition(":")
    mesh_conns = [RawConnection(rig.edge_host, rig.edge_port) for _ in range(IN_FLIGHT)]
    bare_conns = [RawConnection(bare_host, int(bare_port)) for _ in range(IN_FLIGHT)]
    for c in (*mesh_conns, *bare_conns):
        await c.open()
    mesh = Sender(hooks, mesh_conns, mesh=True)
    bare = Sender(hooks, bare_conns, mesh=False)
    figs = Figures()
    try:
        await mesh.case(warm, None)
        await bare.case(warm, None)
        for _ in range(REPEATS):
            new_before = mesh.new_sent
            measured = await interleaved(
                {"mesh": mesh.case, "bare": bare.case}, n, rig.pids(), slices=slices, latencies=True
            )
            new_in_rep = mesh.new_sent - new_before
            for case, m in measured.items():
                figs.add(f"{case}: requests/s", m.rate, "req/s", higher=True)
                if case == "mesh":
                    figs.add("mesh: new webhooks processed/s", new_in_rep / m.wall_s, "/s", higher=True)
                lat = sorted(m.latencies)
                figs.add(f"{case}: p50 latency", percentile(lat, 50) / 1e6, "ms", higher=False)
                figs.add(f"{case}: p99 latency", percentile(lat, 99) / 1e6, "ms", higher=False)
                procs = ("mesh", "envoy", "client") if case == "mesh" else ("bare", "client")
                for proc in procs:
                    figs.add(f"{case}: {proc} CPU/request", m.cpu_us_per_call(proc), "µs", higher=False)
                figs.add(
                    f"{case}: background CPU/request", m.background_s * 1e6 / m.calls, "µs", higher=False
                )
    finally:
        for c in (*mesh_conns, *bare_conns):
            await c.close()
    print(*figs.table(), sep="\n")
    rate_m, rate_b = figs["mesh: requests/s"], figs["bare: requests/s"]
    print(ratio_line("mesh webhooks/s / bare requests/s", rate_m, rate_b, "- (reference)"))
    t = mesh.tally
    sent = hooks[: mesh.pos]
    sent_ids = {h.callback_id for h in sent}
    sent_new = len(sent_ids)
    sent_replays = len(sent) - sent_new
    processed_twice = [cid for cid, k in t.processed.items() if k > 1]
    never_processed = sent_ids - set(t.processed)
    acknowledged = sum(t.duplicates.values())
    back = await asyncio.to_thread(_read_back, rig.database, inv_ids[:sent_new])
    per_inv = back["events_per_invocation"]
    once = sum(1 for i in inv_ids[:sent_new] if per_inv.get(i) == 1)
    more = sum(1 for i in inv_ids[:sent_new] if per_inv.get(i, 0) > 1)
    succeeded = back["invocation_states"].get("INVOCATION_STATE_SUCCEEDED", 0)
    zero_dup = (
        back["events"] == back["distinct_callback_ids"] == sent_new
        and once == sent_new
        and more == 0
        and succeeded == sent_new
        and not processed_twice
        and not never_processed
        and acknowledged == sent_replays
        and not t.wrong
    )
    print(
        f"  answers from the mesh: {sum(t.processed.values()):,} processed ({t.not_inline} of them by the "
        f"outbox sweeper, not inline: answered without invocation_id), {acknowledged:,} acknowledged as "
        f"duplicates (replays sent {sent_replays:,}); webhook ids processed twice {len(processed_twice)}, "
        f"never {len(never_processed)}; HTTP statuses {dict(t.statuses)}; unexpected answers {len(t.wrong)}"
    )
    for line in t.wrong[:5]:
        print(f"    {line}")
    print(
        f"  read back from the mesh's SQLite file: {back['events']:,} callback events, "
        f"{back['distinct_callback_ids']:,} distinct callback ids, {sent_new:,} distinct webhook ids "
        f"sent; invocations with exactly one event {once:,} of {sent_new:,}, with more than one {more}; "
        f"invocation states {dict(back['invocation_states'])}; outbox {dict(back['outbox'])}; "
        f"replay keys {back['replay_keys']:,}"
    )
    assert rig.mesh is not None
    print(f"  mesh log: {log_summary(rig.mesh.log_path)}")
    print(f"  ZERO DUPLICATES PROCESSED: {'yes' if zero_dup else 'NO'}")
    med = figs["mesh: new webhooks processed/s"].median
    print(
        f"  TARGET >= {TARGET:.0f} verified webhooks/s: {fmt(rate_m.median)} requests/s "
        f"({fmt(med)} new webhooks/s) -> {'met' if rate_m.median >= TARGET else 'MISSED'}; "
        f"zero duplicates -> {'met' if zero_dup else 'MISSED'}"
    )
    r, r_best = ratio(rate_m, rate_b)
    return {
        "rate": rate_m.median,
        "rate_best": rate_m.best,
        "new_rate": med,
        "bare_rate": rate_b.median,
        "ratio": r,
        "ratio_best": r_best,
        "p50_ms": figs["mesh: p50 latency"].median,
        "p99_ms": figs["mesh: p99 latency"].median,
        "mesh_cpu_us": figs["mesh: mesh CPU/request"].median,
        "envoy_cpu_us": figs["mesh: envoy CPU/request"].median,
        "client_cpu_us": figs["mesh: client CPU/request"].median,
        "replays_sent": sent_replays,
        "replays_acknowledged": acknowledged,
        "events": back["events"],
        "distinct_ids": sent_new,
        "not_inline": t.not_inline,
        "zero_duplicates": zero_dup,
        "create_rate": create_rate,
        "create_cpu_ms": create_cpu_ms,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs this benchmark alone."""
    parser = argparse.ArgumentParser(
        prog=f"python -m tests.bench.bench_{NAME}", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="400 requests per case and repetition")
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
