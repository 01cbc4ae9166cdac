"""Shared pieces of the agent benchmarks: peer processes driven over stdin/stdout, manifests, memory.

Every process of the agent benchmarks (the mesh, load generators, the agent, the subscriber, the bare
baseline server) is a `Peer`: it prints one JSON ready line, then answers one JSON line on stdout per
JSON command line it reads on stdin. The bench process sends the commands, so phases can be timed from
outside without starting processes in the timed windows. Cross-process times are `time.monotonic_ns()`
(CLOCK_MONOTONIC is one clock for every process of the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2

from powerx.agent.v1 import agent_pb2
from tests.bench import common
from tests.bench.common import PYTHON, ROOT, Child

AGENT_TENANT = "bench-agents"
TENANT_MD = (("x-tenant-id", AGENT_TENANT),)
SERVICE = "/powerx.agent.v1.AgentService/"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata of a call an agent makes with its token."""
    return (("authorization", f"Bearer {token}"),)


def manifest(agent_id: str, skills: Sequence[str], *, heartbeat_s: int, max_concurrency: int = 1) -> Any:
    """A minimal unsigned agent manifest."""
    return agent_pb2.Agent(
        agent_id=agent_id,
        version="1.0.0",
        display_name=agent_id,
        skills=list(skills),
        runtime=agent_pb2.AgentRuntime(
            heartbeat_interval=duration_pb2.Duration(seconds=heartbeat_s), max_concurrency=max_concurrency
        ),
    )


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---- the bench side -------------------------------------------------------------------------------


class Peer(Child):
    """A child process that takes JSON commands on stdin and answers each with one JSON line."""

    def __init__(  # replaces Child's start: stdin is a pipe here
        self, name: str, module: str, args: Sequence[str], log_dir: Path
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self._buf = b""
        self.proc = subprocess.Popen(
            [PYTHON, "-c", common._LAUNCHER, module, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        common._LIVE.append(self)

    def ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Waits for the ready line."""
        return self._line(timeout_s)

    def _line(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name} did not answer in {timeout_s:.0f}s\n{self.log_tail()}")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited ({self.proc.poll()})\n{self.log_tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def send(self, cmd: str, **args: Any) -> None:
        """Sends a command without waiting for its answer (read it with `answer`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        self.proc.stdin.flush()

    def answer(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """The answer to the oldest command not answered yet."""
        return self._line(timeout_s)

    def call(self, cmd: str, timeout_s: float = 120.0, **args: Any) -> dict[str, Any]:
        """Sends a command and waits for its answer."""
        self.send(cmd, **args)
        return self.answer(timeout_s)

    async def acall(self, cmd: str, timeout_s: float = 120.0, **args: Any) -> dict[str, Any]:
        """`call` from a coroutine, without blocking the bench's event loop."""
        return await asyncio.to_thread(self.call, cmd, timeout_s, **args)

    async def aanswer(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """`answer` from a coroutine."""
        return await asyncio.to_thread(self.answer, timeout_s)

    def stop(self, timeout_s: float = 8.0) -> None:
        """Closes its stdin (it then exits by itself), then stops it as Child does."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(min(2.0, timeout_s))
        super().stop(timeout_s)


# ---- the peer side --------------------------------------------------------------------------------

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve_commands(ready: dict[str, Any], handlers: dict[str, Handler]) -> None:
    """Prints the ready line, then runs each command read on stdin in turn until stdin closes.

    Commands run one at a time, in order; a handler that must keep working after it answers starts a
    task. stdin is read by a thread, so the event loop never blocks on it.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=reader, name="commands", daemon=True).start()
    _emit({"ready": True, "pid": os.getpid(), **ready})
    while (line := await lines.get()) is not None:
        if not line.strip():
            continue
        msg = json.loads(line)
        handler = handlers.get(msg.get("cmd", ""))
        if handler is None:
            _emit({"error": f"unknown command {msg.get('cmd')!r}"})
            continue
        try:
            _emit(await handler(msg))
        except Exception as exc:
            traceback.print_exc()
            _emit({"error": f"{type(exc).__name__}: {exc}"})


def self_cpu() -> float:
    """utime + stime of this process."""
    return common.self_cpu_s()
