"""The subscriber of the streaming benchmark: reads a run's output through the mesh, or the direct stream.

`python -m tests.bench.agent_subscriber --mesh ADDR --direct ADDR`. Commands:

- `follow {run_id, n}`: opens StreamRunOutput for the run (tenant `bench-agents`) and answers once the
  first message arrived (the replayed state changes), so the stream is known to be live; it keeps
  reading in the background, counting token events until `end`.
- `result`: waits for that stream's end; answers with the tokens counted, `t_first_ns` and `t_last_ns`
  (arrival of the first and the n-th token) and the end's reason and status code.
- `direct {n, batch, text}`: reads the agent's direct stream (`/bench.AgentDirect/Events`) and answers
  with the same figures plus the agent's `t_first_send_ns` from the trailing metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

import grpc
from google.protobuf import struct_pb2

from powerx.agent.v1 import agent_service_pb2 as svc
from tests.bench.agent_common import SERVICE, TENANT_MD, serve_commands
from tests.bench.agent_worker import DIRECT, FIRST_SEND_MD


class Subscriber:
    """Streams of run output."""

    def __init__(self, mesh: str, direct: str) -> None:
        self.mesh = grpc.aio.insecure_channel(mesh)
        self.direct_ch = grpc.aio.insecure_channel(direct)
        self.stream_output = self.mesh.unary_stream(
            SERVICE + "StreamRunOutput",
            request_serializer=svc.StreamRunOutputRequest.SerializeToString,
            response_deserializer=svc.StreamRunOutputResponse.FromString,
        )
        self.direct_events = self.direct_ch.unary_stream(
            DIRECT, request_serializer=struct_pb2.Struct.SerializeToString
        )
        self.task: asyncio.Task[dict[str, Any]] | None = None

    async def follow(self, msg: dict[str, Any]) -> dict[str, Any]:
        run_id, n = msg["run_id"], int(msg["n"])
        live = asyncio.Event()

        async def read() -> dict[str, Any]:
            clock = time.monotonic_ns
            tokens = 0
            first = last = 0
            reason, code = "", -1
            call = self.stream_output(
                svc.StreamRunOutputRequest(run_id=run_id), metadata=TENANT_MD, timeout=120
            )
            async for resp in call:
                live.set()
                if resp.WhichOneof("kind") == "end":
                    reason, code = resp.end.reason, resp.end.status.code
                    break
                if resp.event.HasField("token"):
                    tokens += 1
                    if tokens == 1:
                        first = clock()
                    if tokens == n:
                        last = clock()
            live.set()
            return {"tokens": tokens, "t_first_ns": first, "t_last_ns": last, "end": reason, "code": code}

        self.task = asyncio.create_task(read())
        waiter = asyncio.create_task(live.wait())
        await asyncio.wait({waiter, self.task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return {"subscribed": live.is_set()}

    async def result(self, _msg: dict[str, Any]) -> dict[str, Any]:
        assert self.task is not None
        task, self.task = self.task, None
        return await asyncio.wait_for(task, 120)

    async def direct(self, msg: dict[str, Any]) -> dict[str, Any]:
        n, batch = int(msg["n"]), int(msg["batch"])
        req = struct_pb2.Struct()
        req.update({"n": n, "batch": batch, "text": msg["text"]})
        clock = time.monotonic_ns
        tokens = 0
        first = last = 0
        call = self.direct_events(req, timeout=120)
        if batch == 1:
            async for raw in call:
                resp = svc.StreamRunOutputResponse.FromString(raw)
                if resp.event.HasField("token"):
                    tokens += 1
                    if tokens == 1:
                        first = clock()
                    if tokens == n:
                        last = clock()
        else:
            async for raw in call:
                out = svc.ConnectRunOutput.FromString(raw)
                for e in out.events:
                    if e.HasField("token"):
                        tokens += 1
                        if tokens == 1:
                            first = clock()
                        if tokens == n:
                            last = clock()
        trailing = dict(await call.trailing_metadata() or ())
        return {
            "tokens": tokens,
            "t_first_ns": first,
            "t_last_ns": last,
            "t_first_send_ns": int(trailing.get(FIRST_SEND_MD, 0)),
        }


async def _main(opts: argparse.Namespace) -> None:
    sub = Subscriber(opts.mesh, opts.direct)
    try:
        await serve_commands({}, {"follow": sub.follow, "result": sub.result, "direct": sub.direct})
    finally:
        await sub.mesh.close()
        await sub.direct_ch.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.agent_subscriber")
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--direct", required=True)
    opts = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
