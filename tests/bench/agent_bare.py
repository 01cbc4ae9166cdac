"""The baseline of the heartbeat benchmark: AgentService with nothing behind it.

`python -m tests.bench.agent_bare` serves `powerx.agent.v1.AgentService` on an ephemeral port with a
plain `grpc.aio` server (no interceptor, no database, no other service) implementing two methods:
`RecordHeartbeat` answers at once with a fixed response (state IDLE, the server time, the interval),
and `Connect` answers `hello` with `welcome` and then only counts heartbeats. Same request and
response messages as the mesh, so what separates the two is the mesh's own work. It prints
`{"ready": true, "pid": …, "address": …}` and answers the command `stats` (heartbeats seen, RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import duration_pb2

from powerx.agent.v1 import agent_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import agent_service_pb2_grpc as svc_grpc
from tests.bench.agent_common import rss_kib, serve_commands


class BareAgentService(svc_grpc.AgentServiceServicer):  # type: ignore[misc]
    """RecordHeartbeat and Connect, doing nothing but answer."""

    def __init__(self) -> None:
        self.heartbeats = 0
        self._interval = duration_pb2.Duration(seconds=30)

    async def RecordHeartbeat(
        self, request: svc.RecordHeartbeatRequest, context: Any
    ) -> svc.RecordHeartbeatResponse:
        self.heartbeats += 1
        resp = svc.RecordHeartbeatResponse(
            state=agent_pb2.AGENT_STATE_IDLE, heartbeat_interval=self._interval
        )
        resp.server_time.GetCurrentTime()
        return resp

    async def Connect(
        self, request_iterator: AsyncIterator[svc.ConnectRequest], context: Any
    ) -> AsyncIterator[svc.ConnectResponse]:
        async for msg in request_iterator:
            kind = msg.WhichOneof("kind")
            if kind == "heartbeat":
                self.heartbeats += 1
            elif kind == "hello":
                self.heartbeats += 1
                welcome = svc.ConnectResponse()
                welcome.welcome.session_id = msg.hello.session_id
                welcome.welcome.heartbeat_interval.CopyFrom(self._interval)
                welcome.welcome.state = agent_pb2.AGENT_STATE_IDLE
                yield welcome


async def _serve() -> None:
    service = BareAgentService()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    svc_grpc.add_AgentServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def stats(_msg: dict[str, Any]) -> dict[str, Any]:
        return {
            "t_ns": time.monotonic_ns(),
            "heartbeats": service.heartbeats,
            "rss_kib": rss_kib(os.getpid()),
        }

    try:
        await serve_commands({"address": f"127.0.0.1:{port}"}, {"stats": stats})
    finally:
        await server.stop(0.5)


def main() -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
