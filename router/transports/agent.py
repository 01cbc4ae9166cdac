"""The agent transport: hands a routed call to the agent service, which runs it on a connected agent.

The router only knows the `AgentDispatcher` interface; the agent service (native agents over their
session channel, external agents over A2A) implements it and is plugged in when the mesh starts. Until
one is plugged in, calls fail with UNAVAILABLE and nothing is sent anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from google.protobuf import struct_pb2
from google.rpc import code_pb2

from powerx.provider.v1 import provider_service_pb2 as provider_pb2
from router.transports.base import Call, ProbeResult, Target, TransportError


class AgentDispatcher(Protocol):
    """What the agent service offers the router."""

    async def invoke(self, target: Target, call: Call) -> struct_pb2.Value:
        """Runs the call as a task on the agent behind `target` and returns its result."""
        ...

    def stream(self, target: Target, call: Call) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
        """Runs the call as a task and yields its output as it is produced."""
        ...

    def liveness(self, target: Target) -> tuple[bool, str] | None:
        """Whether the agent behind `target` is live (and why not); None when the agent is unknown."""
        ...


class AgentTransport:
    """Routes calls to agents through the plugged-in dispatcher."""

    # An agent's output is a stream whatever the capability says: InvokeStream always streams it.
    streams_unary = True

    def __init__(self, dispatcher: AgentDispatcher | None = None) -> None:
        self.dispatcher = dispatcher

    def _require(self) -> AgentDispatcher:
        if self.dispatcher is None:
            raise TransportError(
                code_pb2.UNAVAILABLE, "this mesh process runs no agent service to reach agents", sent=False
            )
        return self.dispatcher

    async def invoke(self, target: Target, call: Call) -> struct_pb2.Value:
        """Runs the call on the agent."""
        return await self._require().invoke(target, call)

    async def stream(self, target: Target, call: Call) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
        """Streams the agent's output."""
        async for chunk in self._require().stream(target, call):
            yield chunk

    async def probe(self, target: Target, timeout_s: float) -> ProbeResult:
        """An agent is alive while the agent service counts it live (heartbeats within its interval)."""
        verdict = None if self.dispatcher is None else self.dispatcher.liveness(target)
        if verdict is None:
            return ProbeResult(ok=True)  # nothing to judge by: leave the registry's state alone
        ok, detail = verdict
        return ProbeResult(ok=ok, detail=detail)

    async def forget(self, endpoint_id: str) -> None:
        """Nothing cached per endpoint."""

    async def close(self) -> None:
        """Nothing to release."""
