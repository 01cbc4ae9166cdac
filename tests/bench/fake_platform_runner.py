"""A fake platform in its own process for the connector benchmarks.

`python -m tests.bench.fake_platform_runner --kind n8n` serves `tests.fakes.n8n.FakeN8n` (uvicorn +
starlette, header auth `X-Mesh-Token: tenant-a-token`) on a free port of 127.0.0.1 with two webhooks:

- `mesh-invoke` (mode `respond`): answers `{"ok":true,"result":{"echo":input},…}` at once (SYNC calls);
- `mesh-async` (mode `fail_before_respond`): an async call (`"mode":"async"` in the body) is answered
  at once with `{"message":"Workflow was started"}` and the fake sends no callback of its own (in the
  fake, only this mode skips the callback; `on_received` still calls back), so the benchmark's own
  signed webhooks are the only callbacks the mesh sees.

`--kind bare` serves a trivial starlette app on the same uvicorn setup instead: `POST /noop` reads the
body and answers a fixed small JSON object, doing nothing else. It is the webhook benchmark's baseline
(the cost of one HTTP/1.1 request/response on this machine with this server stack).

TCP_NODELAY: `tests.fakes.coze.LocalServer` binds its socket with protocol IPPROTO_TCP, so asyncio turns
Nagle's algorithm off (as real n8n on Node.js does); without that every keep-alive answer after the first
waited about 40 ms for the client's delayed ACK.

The port is always a free one (`LocalServer` binds port 0); the ready line carries the base URL:
`{"ready": true, "pid": …, "base_url": "http://127.0.0.1:PORT"}`. Then it answers JSON commands on
stdin (`tests.bench.agent_common.serve_commands`): `stats` (requests seen, runs per webhook path, CPU
seconds), `reset` (forgets the recorded requests, which the fake keeps in memory). It exits when stdin
closes or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.bench.agent_common import rss_kib, self_cpu, serve_commands
from tests.fakes.coze import LocalServer
from tests.fakes.n8n import FAIL_BEFORE_RESPOND, RESPOND, FakeN8n

SYNC_PATH = "mesh-invoke"
ASYNC_PATH = "mesh-async"
AUTH = ("X-Mesh-Token", "tenant-a-token")


class _Bare:
    """POST /noop: read the body, answer a fixed JSON object."""

    def __init__(self) -> None:
        self.requests = 0
        self.server = LocalServer(Starlette(routes=[Route("/noop", self._noop, methods=["POST"])]))

    async def _noop(self, request: Request) -> Response:
        await request.body()
        self.requests += 1
        return JSONResponse({"callbackId": "msg", "invocationId": "inv"})


async def _serve(kind: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if kind == "n8n":
        n8n = FakeN8n(header_auth=AUTH)
        n8n.webhook(SYNC_PATH, mode=RESPOND)
        n8n.webhook(ASYNC_PATH, mode=FAIL_BEFORE_RESPOND)
        server: LocalServer = n8n

        def stats() -> dict[str, Any]:
            return {"requests": len(n8n.requests), "runs": dict(n8n.runs), "callbacks": len(n8n.callbacks)}

        def reset() -> None:
            n8n.requests.clear()

    else:
        bare = _Bare()
        server = bare.server

        def stats() -> dict[str, Any]:
            return {"requests": bare.requests}

        def reset() -> None:
            bare.requests = 0

    async def on_stats(_msg: dict[str, Any]) -> dict[str, Any]:
        return {**stats(), "cpu_s": self_cpu(), "rss_kib": rss_kib(os.getpid())}

    async def on_reset(_msg: dict[str, Any]) -> dict[str, Any]:
        reset()
        return {"ok": True}

    await server.start()
    try:
        handlers = {"stats": on_stats, "reset": on_reset}
        ready = {"base_url": server.base_url, "kind": kind}
        commands = asyncio.ensure_future(serve_commands(ready, handlers))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({commands, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (commands, stopped):
            task.cancel()
    finally:
        await server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fake_platform_runner")
    parser.add_argument("--kind", choices=("n8n", "bare"), default="n8n")
    opts = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(opts.kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
