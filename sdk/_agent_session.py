"""How an agent's run output and completions reach the mesh: the Connect stream or the unary calls.

`Session` is one open Connect stream: an outgoing queue (one writer task writes it, since a gRPC stream
takes one write at a time) and the receipts the agent waits for. The mesh answers every `run_output` and
`run_complete` with a receipt naming only the run, so an agent keeps at most one of them in flight per
run; that also keeps a run's output in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import run_pb2
from sdk._agent_errors import AgentError

Rpc = Callable[[Any, Any], Awaitable[Any]]


class LinkDown(Exception):
    """The session channel broke; what was being sent goes again on the next one."""


class RunGone(AgentError):
    """The mesh no longer wants this run from this agent: it was cancelled, finished, or handed on."""

    def __init__(self, message: str) -> None:
        super().__init__(code_pb2.FAILED_PRECONDITION, message, reason="RUN_GONE")


class Link(Protocol):
    """How run output and completions reach the mesh in the agent's mode."""

    async def output(self, run_id: str, events: list[run_pb2.RunEvent], key: str) -> None:
        """Stores output events (idempotent by key); raises AgentError when the mesh refuses them."""
        ...

    async def complete(
        self, run_id: str, result: struct_pb2.Value | None, error: status_pb2.Status | None
    ) -> None:
        """Finishes a run; raises AgentError when the mesh refuses it."""
        ...

    def ack(self, run_id: str) -> None:
        """Accepts an assignment (again, after the mesh lost the first answer)."""
        ...


def ack_request(run_id: str, code: int = code_pb2.OK, message: str = "") -> svc.ConnectRequest:
    """The `ack` that accepts (code OK) or refuses an assignment."""
    msg = svc.ConnectRequest()
    msg.ack.run_id = run_id
    msg.ack.status.code = code
    msg.ack.status.message = message
    return msg


def completion(
    run_id: str, result: struct_pb2.Value | None, error: status_pb2.Status | None
) -> Callable[[Link], Awaitable[None]]:
    """Sends a run's completion over whatever link is up."""

    def send(link: Link) -> Awaitable[None]:
        return link.complete(run_id, result, error)

    return send


def _outcome_value(result: struct_pb2.Value | None) -> struct_pb2.Value:
    return result if result is not None else struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)


class Session:
    """One open Connect stream: its outgoing queue and the receipts it waits for.

    Args:
        call: The `grpc.aio` stream-stream call.
    """

    def __init__(self, call: Any) -> None:
        self.call = call
        self.outq: asyncio.Queue[svc.ConnectRequest] = asyncio.Queue()
        self.receipts: dict[str, asyncio.Future[status_pb2.Status]] = {}
        self.closed = False

    def send(self, msg: svc.ConnectRequest) -> None:
        """Queues a message for the writer.

        Raises:
            LinkDown: The stream is closed.
        """
        if self.closed:
            raise LinkDown("the session channel is closed")
        self.outq.put_nowait(msg)

    async def request(self, run_id: str, msg: svc.ConnectRequest) -> status_pb2.Status:
        """Sends a run_output or run_complete and returns its receipt's status.

        Raises:
            LinkDown: The stream closed before the receipt came.
        """
        if self.closed:
            raise LinkDown("the session channel is closed")
        future: asyncio.Future[status_pb2.Status] = asyncio.get_running_loop().create_future()
        self.receipts[run_id] = future
        try:
            self.send(msg)
            return await future
        finally:
            if self.receipts.get(run_id) is future:
                del self.receipts[run_id]

    def receipt(self, receipt: svc.ConnectReceipt) -> bool:
        """Hands a receipt to whoever waits for it; false when nobody does (an answer to an `ack`)."""
        future = self.receipts.pop(receipt.run_id, None)
        if future is None or future.done():
            return False
        future.set_result(receipt.status)
        return True

    def close(self) -> None:
        """Marks the stream closed; whoever waits for a receipt gets LinkDown."""
        self.closed = True
        for future in self.receipts.values():
            if not future.done():
                future.set_exception(LinkDown("the session channel closed"))
        self.receipts.clear()


class StreamLink:
    """Output and completions as messages on the session channel."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def output(self, run_id: str, events: list[run_pb2.RunEvent], key: str) -> None:
        """Sends `run_output` and waits for its receipt."""
        msg = svc.ConnectRequest()
        msg.run_output.run_id = run_id
        msg.run_output.events.extend(events)
        msg.run_output.idempotency_key = key
        status = await self.session.request(run_id, msg)
        if status.code != code_pb2.OK:
            raise AgentError.from_status(status)

    async def complete(
        self, run_id: str, result: struct_pb2.Value | None, error: status_pb2.Status | None
    ) -> None:
        """Sends `run_complete` and waits for its receipt."""
        msg = svc.ConnectRequest()
        msg.run_complete.run_id = run_id
        if error is not None:
            msg.run_complete.error.CopyFrom(error)
        else:
            msg.run_complete.result.CopyFrom(_outcome_value(result))
        status = await self.session.request(run_id, msg)
        if status.code != code_pb2.OK:
            raise AgentError.from_status(status)

    def ack(self, run_id: str) -> None:
        """Sends an `ack` accepting the run."""
        self.session.send(ack_request(run_id))


class UnaryLink:
    """Output and completions as PublishRunOutput and CompleteRun calls.

    Args:
        stub: The AgentService stub.
        rpc: Makes one call with the agent's metadata: `rpc(stub.Method, request)`.
    """

    def __init__(self, stub: Any, rpc: Rpc) -> None:
        self.stub = stub
        self.rpc = rpc

    async def output(self, run_id: str, events: list[run_pb2.RunEvent], key: str) -> None:
        """Calls PublishRunOutput."""
        await self.rpc(
            self.stub.PublishRunOutput,
            svc.PublishRunOutputRequest(run_id=run_id, events=events, idempotency_key=key),
        )

    async def complete(
        self, run_id: str, result: struct_pb2.Value | None, error: status_pb2.Status | None
    ) -> None:
        """Calls CompleteRun."""
        req = svc.CompleteRunRequest(run_id=run_id)
        if error is not None:
            req.error.CopyFrom(error)
        else:
            req.result.CopyFrom(_outcome_value(result))
        await self.rpc(self.stub.CompleteRun, req)

    def ack(self, run_id: str) -> None:
        """Nothing to do: pulled runs are accepted by the pull itself."""
