"""The agent of the streaming benchmark: streams token events through the mesh, or serves them directly.

`python -m tests.bench.agent_worker --mesh ADDR` registers the agent `bench.stream.agent` (skill
`bench.stream.tokens`) with the mesh, opens its Connect session stream and accepts every assignment
(ack OK) as soon as it arrives. It also serves the direct baseline on its own grpc.aio server:

- `/bench.AgentDirect/Events` (a server stream, request a Struct `{n, batch, text}`): one preamble
  message, 20 ms of quiet (so the subscriber waits on an open stream, as through the mesh), then the
  `n` token events as the mesh would send them to a subscriber (RunEvent with sequence, run_id, time
  and token): one `StreamRunOutputResponse` per event when `batch` is 1, else `ConnectRunOutput`
  messages of `batch` events. The trailing metadata `x-first-send-ns` is the time the first token left.

Commands: `run {run_id, n, batch, text}` waits until the run's assignment was acknowledged, then writes
`n` token events as `run_output` messages of `batch` events each, then `run_complete`, and answers with
`t_first_ns` (just before the first write), `t_written_ns` and the receipts once all arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import code_pb2

from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import run_pb2
from tests.bench.agent_common import SERVICE, TENANT_MD, bearer, manifest, rss_kib, serve_commands

AGENT_ID = "bench.stream.agent"
SKILL = "bench.stream.tokens"
DIRECT = "/bench.AgentDirect/Events"
FIRST_SEND_MD = "x-first-send-ns"


def direct_messages(n: int, batch: int, text: str, run_id: str) -> list[bytes]:
    """The serialized messages of a direct stream of `n` token events, `batch` per message."""
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    events = [
        run_pb2.RunEvent(sequence=i + 3, run_id=run_id, event_time=now, token=run_pb2.RunToken(text=text))
        for i in range(n)
    ]
    if batch == 1:
        return [svc.StreamRunOutputResponse(event=e).SerializeToString() for e in events]
    return [
        svc.ConnectRunOutput(run_id=run_id, events=events[i : i + batch]).SerializeToString()
        for i in range(0, n, batch)
    ]


def direct_preamble(batch: int, run_id: str) -> bytes:
    """What the direct stream sends before the tokens (the mesh replays the run's state changes)."""
    change = run_pb2.RunEvent(sequence=1, run_id=run_id)
    change.state_change.state = run_pb2.RUN_STATE_RUNNING
    if batch == 1:
        return svc.StreamRunOutputResponse(event=change).SerializeToString()
    return svc.ConnectRunOutput(run_id=run_id, events=[change]).SerializeToString()


class Direct(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Serves the direct baseline stream."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method == DIRECT:
            return grpc.unary_stream_rpc_method_handler(
                self.events, request_deserializer=struct_pb2.Struct.FromString
            )
        return None

    async def events(self, req: struct_pb2.Struct, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        n, batch, text = int(req["n"]), int(req["batch"]), str(req["text"])
        run_id = "run_" + "0" * 32
        messages = direct_messages(n, batch, text, run_id)
        yield direct_preamble(batch, run_id)
        await asyncio.sleep(0.02)
        first = time.monotonic_ns()
        for m in messages:
            yield m
        context.set_trailing_metadata(((FIRST_SEND_MD, str(first)),))


class Worker:
    """The agent's session with the mesh."""

    def __init__(self, mesh: str) -> None:
        self.channel = grpc.aio.insecure_channel(mesh)
        self.call: Any = None
        self.lock = asyncio.Lock()
        self.acked: dict[str, asyncio.Event] = {}
        self.receipts: list[svc.ConnectReceipt] = []
        self.receipt_wake = asyncio.Event()
        self.assignments = 0
        self.reader: asyncio.Task[None] | None = None

    def _acked(self, run_id: str) -> asyncio.Event:
        return self.acked.setdefault(run_id, asyncio.Event())

    async def start(self) -> None:
        register = self.channel.unary_unary(
            SERVICE + "RegisterAgent",
            request_serializer=svc.RegisterAgentRequest.SerializeToString,
            response_deserializer=svc.RegisterAgentResponse.FromString,
        )
        reg = await register(
            svc.RegisterAgentRequest(agent=manifest(AGENT_ID, [SKILL], heartbeat_s=30)),
            metadata=TENANT_MD,
            timeout=30,
        )
        connect = self.channel.stream_stream(
            SERVICE + "Connect",
            request_serializer=svc.ConnectRequest.SerializeToString,
            response_deserializer=svc.ConnectResponse.FromString,
        )
        self.call = connect(metadata=bearer(reg.agent_token))
        hello = svc.ConnectRequest()
        hello.hello.agent_id = AGENT_ID
        hello.hello.session_id = reg.session_id
        await self.call.write(hello)
        welcome = await self.call.read()
        if welcome is grpc.aio.EOF or welcome.WhichOneof("kind") != "welcome":
            raise RuntimeError(f"no welcome on Connect: {welcome}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        # read(), not `async for`: grpc.aio refuses to mix the two, and the welcome was read with read()
        while (msg := await self.call.read()) is not grpc.aio.EOF:
            kind = msg.WhichOneof("kind")
            if kind == "assignment":
                self.assignments += 1
                ack = svc.ConnectRequest()
                ack.ack.run_id = msg.assignment.run_id
                ack.ack.status.code = code_pb2.OK
                async with self.lock:
                    await self.call.write(ack)
                self._acked(msg.assignment.run_id).set()
            elif kind == "receipt":
                self.receipts.append(msg.receipt)
                self.receipt_wake.set()
            elif kind == "ping":
                beat = svc.ConnectRequest()
                beat.heartbeat.load.cpu_usage = 0.1
                async with self.lock:
                    await self.call.write(beat)

    async def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        run_id, n, batch, text = msg["run_id"], int(msg["n"]), int(msg["batch"]), str(msg["text"])
        writes = []
        for i in range(0, n, batch):
            req = svc.ConnectRequest()
            req.run_output.run_id = run_id
            for _ in range(min(batch, n - i)):
                req.run_output.events.add().token.text = text
            writes.append(req)
        done = svc.ConnectRequest()
        done.run_complete.run_id = run_id
        done.run_complete.result.string_value = "done"
        await asyncio.wait_for(self._acked(run_id).wait(), 30)
        self.receipts.clear()
        write = self.call.write
        async with self.lock:
            first = time.monotonic_ns()
            for req in writes:
                await write(req)
            written = time.monotonic_ns()
            await write(done)
        deadline = time.monotonic() + 60
        while len(self.receipts) < len(writes) + 1 and time.monotonic() < deadline:
            self.receipt_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.receipt_wake.wait(), 1)
        bad = [r.status.message for r in self.receipts if r.status.code != code_pb2.OK]
        return {
            "t_first_ns": first,
            "t_written_ns": written,
            "t_receipts_ns": time.monotonic_ns(),
            "receipts": len(self.receipts),
            "refused": bad[:3],
            "last_sequence": max((r.last_sequence for r in self.receipts), default=0),
        }


async def _main(mesh: str) -> None:
    worker = Worker(mesh)
    await worker.start()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Direct(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def stats(_msg: dict[str, Any]) -> dict[str, Any]:
        return {"assignments": worker.assignments, "rss_kib": rss_kib(os.getpid())}

    try:
        await serve_commands(
            {"address": f"127.0.0.1:{port}", "agent_id": AGENT_ID, "skill": SKILL},
            {"run": worker.run, "stats": stats},
        )
    finally:
        if worker.reader is not None:
            worker.reader.cancel()
        await server.stop(0.5)
        await worker.channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.agent_worker")
    parser.add_argument("--mesh", required=True)
    opts = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(opts.mesh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
