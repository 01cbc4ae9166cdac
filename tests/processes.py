"""Mesh processes for the multi-process tests and benchmarks: `powerx serve` as real subprocesses.

Each `MeshProcess` runs `powerx serve` (the `servers.cli` entry point, in a fresh interpreter) on a port
chosen before it starts, so that it can be killed with SIGKILL and restarted on the same address, and an
Envoy edge can be configured with it before it answers. Processes of one deployment share a `Shared`:
the database, Redis and every secret that must be equal across processes (agent token secret, route
token secret, connector key ring), so that a token or a credential made by one is accepted by another.

`call_metadata` / `rest_headers` are the one place that says how test calls authenticate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.envoy import EdgeConfig, EnvoyEdge

ROOT = Path(__file__).resolve().parents[1]

# Runs `powerx serve` (servers.cli as __main__) after asking the kernel to SIGKILL it when the test
# process dies, so that no mesh outlives an interrupted run. A process started this way *is* the mesh:
# killing its pid kills the server, nothing sits in between.
_LAUNCHER = (
    "import ctypes, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))\n"
    "except Exception:\n"
    "    pass\n"
    "sys.argv = ['powerx', *sys.argv[1:]]\n"
    "runpy.run_module('servers.cli', run_name='__main__', alter_sys=True)\n"
)


# ---- how test calls authenticate ----------------------------------------------------------------------


def call_metadata(
    tenant: str, *, scopes: Sequence[str] = (), principal: str = "scale-tester"
) -> tuple[tuple[str, str], ...]:
    """Metadata of a call made for `tenant` with `scopes`.

    The processes run with `POWERX_AUTH_REQUIRED=0` (development mode), where the mesh trusts the
    `x-tenant-id`, `x-principal` and `x-scopes` headers. Every multi-process test and benchmark builds
    its metadata here, so that switching them to an API key is a change of this function only.
    """
    md = [("x-tenant-id", tenant), ("x-principal", principal)]
    if scopes:
        md.append(("x-scopes", " ".join(scopes)))
    return tuple(md)


def rest_headers(
    tenant: str, *, scopes: Sequence[str] = (), principal: str = "scale-tester"
) -> dict[str, str]:
    """The same as `call_metadata`, as HTTP headers for REST calls through the edge."""
    return dict(call_metadata(tenant, scopes=scopes, principal=principal))


AUTH_ENV: dict[str, str] = {"POWERX_AUTH_REQUIRED": "0"}
"""Environment of the processes that goes with `call_metadata` (development mode for now)."""


# ---- shared state of a deployment -----------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a process that is told its port before it binds)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Shared:
    """What every process of one deployment shares: stores and secrets.

    Attributes:
        database_url: POWERX_DATABASE_URL (empty: each process has SQLite in its data folder).
        redis_url: POWERX_REDIS_URL (empty: in-process bus, local quotas).
        agent_token_secret: POWERX_AGENT_TOKEN_SECRET.
        route_token_secret: POWERX_ROUTE_TOKEN_SECRET.
        connector_keys: POWERX_CONNECTOR_KEYS (`kid:base64`).
        env: Further POWERX_* settings given to every process.
    """

    database_url: str = ""
    redis_url: str = ""
    agent_token_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    route_token_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    connector_keys: str = field(
        default_factory=lambda: "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(), repr=False
    )
    env: Mapping[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The POWERX_* variables these values stand for."""
        return {
            "POWERX_DATABASE_URL": self.database_url,
            "POWERX_REDIS_URL": self.redis_url,
            "POWERX_AGENT_TOKEN_SECRET": self.agent_token_secret,
            "POWERX_ROUTE_TOKEN_SECRET": self.route_token_secret,
            "POWERX_CONNECTOR_KEYS": self.connector_keys,
            **AUTH_ENV,
            **self.env,
        }


class MeshProcessError(RuntimeError):
    """A mesh process exited, or did not become healthy in time; the message ends with its log."""


class MeshProcess:
    """One `powerx serve` process on a fixed port, restartable on the same address.

    Its stdout and stderr (JSON logs) go to `<workdir>/<name>.log`, appended across restarts.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        shared: Shared,
        *,
        port: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.shared = shared
        self.port = port or free_port()
        self.extra_env = dict(env or {})
        self.data_dir = workdir / name / "data"
        self.config_root = workdir / name / "root"  # empty: no connector or flag files
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, the same across restarts."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Pid of the running process."""
        if self.proc is None:
            raise MeshProcessError(f"{self.name} is not running")
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def environment(self) -> dict[str, str]:
        """The environment the process starts with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("POWERX_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "POWERX_GRPC_ADDRESS": self.address,
                "POWERX_DATA_DIR": str(self.data_dir),
                "POWERX_CONFIG_ROOT": str(self.config_root),
                # Empty would mean the default 127.0.0.1:9464, shared by every process: port 0 instead.
                "POWERX_METRICS_ADDRESS": "127.0.0.1:0",
                "POWERX_LOG_LEVEL": "INFO",
                "POWERX_LOG_FORMAT": "json",
                "POWERX_SHUTDOWN_GRACE_S": "0.5",
                "POWERX_WATCH_POLL_INTERVAL_S": "0.2",
            }
        )
        env.update(self.shared.environment())
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Starts the process (returns at once; see `wait_ready`). Call it from the main thread."""
        if self.alive:
            raise MeshProcessError(f"{self.name} is already running")
        self.config_root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts + 1} of {self.name} on {self.address}\n".encode())
            log.flush()
            # The launcher's parent-death signal is tied to the thread that forks: this must be the
            # main thread (not a worker of asyncio.to_thread), or the child dies with the worker.
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, "serve"],
                cwd=ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run reaches pytest only
            )
        self.starts += 1

    async def wait_ready(self, timeout_s: float = 30.0) -> float:
        """Waits until the process answers `grpc.health.v1` SERVING; returns the seconds it took.

        Raises:
            MeshProcessError: The process exited, or was not SERVING within `timeout_s`.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.alive:
                    code = self.proc.poll() if self.proc is not None else None
                    raise MeshProcessError(f"{self.name} exited with {code}:\n{self.log_tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - started
                if time.monotonic() > deadline:
                    raise MeshProcessError(
                        f"{self.name} not SERVING after {timeout_s:g}s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up of any kind. Waits until the process is gone."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (a graceful stop), then SIGKILL after `timeout_s`. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start_edge(
    processes: Sequence[MeshProcess],
    workdir: Path,
    *,
    port: int = 0,
    health_check_interval_s: float = 1.0,
    access_log: bool = True,
) -> EnvoyEdge:
    """Starts one Envoy edge in front of `processes` (not waiting for them to be healthy)."""
    workdir.mkdir(parents=True, exist_ok=True)
    edge = EnvoyEdge(
        EdgeConfig(
            listen_port=port,
            admin_port=0,
            upstreams=tuple(("127.0.0.1", p.port) for p in processes),
            max_request_body_bytes=1024 * 1024,
            health_check_interval_s=health_check_interval_s,
            access_log=access_log,
        ),
        log_path=workdir / "envoy.log",
    )
    edge.start()
    return edge


class Deployment:
    """N mesh processes sharing `shared`, behind one Envoy edge (optional). An async context manager.

    Example:
        async with Deployment(tmp_path, Shared(database_url=pg, redis_url=redis), count=2) as d:
            stub = RegistryServiceStub(grpc.aio.insecure_channel(d.edge_target))
    """

    def __init__(
        self,
        workdir: Path,
        shared: Shared,
        *,
        count: int = 2,
        with_edge: bool = True,
        env: Mapping[str, str] | None = None,
        health_check_interval_s: float = 1.0,
    ) -> None:
        self.workdir = workdir
        self.shared = shared
        self.edge_port = free_port() if with_edge else 0
        extra = dict(env or {})
        if with_edge:
            # Connector callback URLs point at the edge.
            extra.setdefault("POWERX_EDGE_ADDRESS", f"127.0.0.1:{self.edge_port}")
        self.processes = [
            MeshProcess(f"mesh-{chr(ord('a') + i)}", workdir, shared, env=extra) for i in range(count)
        ]
        self.with_edge = with_edge
        self.health_check_interval_s = health_check_interval_s
        self.edge: EnvoyEdge | None = None

    @property
    def edge_target(self) -> str:
        """`127.0.0.1:PORT` of the edge (native gRPC and REST)."""
        return f"127.0.0.1:{self.edge_port}"

    @property
    def edge_url(self) -> str:
        """Base URL of the edge for REST."""
        return f"http://{self.edge_target}"

    async def start(self, timeout_s: float = 45.0) -> None:
        """Starts the processes (first one alone: it migrates the database), then the edge; waits for all."""
        first, *rest = self.processes
        first.start()
        await first.wait_ready(timeout_s)
        for p in rest:
            p.start()
        await asyncio.gather(*(p.wait_ready(timeout_s) for p in rest))
        if self.with_edge:
            edge = start_edge(
                self.processes,
                self.workdir,
                port=self.edge_port,
                health_check_interval_s=self.health_check_interval_s,
            )
            self.edge = edge
            await asyncio.to_thread(edge.wait_healthy_upstreams, 15.0, len(self.processes))

    def stop(self) -> None:
        """Stops the edge and every process (gracefully, then by force)."""
        if self.edge is not None:
            self.edge.stop()
            self.edge = None
        for p in self.processes:
            p.stop()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, *, interval_s: float = 0.05, what: str = ""
) -> float:
    """Polls `predicate` until it is true; returns the seconds it took.

    Raises:
        AssertionError: Not true within `timeout_s`.
    """
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:g}s: {what or predicate}")
        await asyncio.sleep(interval_s)
    return time.monotonic() - started
