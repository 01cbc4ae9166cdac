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

    def heartbeat_age_s(self, target: Target) -> float | None:
        """Seconds since the agent behind `target` last showed a sign of life; None if never."""
        ...


class AgentTransport:
    """Routes calls to agents through the plugged-in dispatcher."""

    def __init__(self, dispatcher: AgentDispatcher | None = None, *, inactive_after_s: float = 10.0) -> None:
        self.dispatcher = dispatcher
        self.inactive_after_s = inactive_after_s

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
        """An agent is alive while its heartbeats keep coming (seed 001 §5: 10 s without one → inactive)."""
        if self.dispatcher is None:
            return ProbeResult(ok=True)  # nothing to judge by: leave the registry's state alone
        age = self.dispatcher.heartbeat_age_s(target)
        if age is None or age > self.inactive_after_s:
            shown = "never" if age is None else f"{age:.0f}s ago"
            return ProbeResult(
                ok=False, detail=f"no heartbeat within {self.inactive_after_s:.0f}s (last {shown})"
            )
        return ProbeResult(ok=True)

    async def forget(self, endpoint_id: str) -> None:
        """Nothing cached per endpoint."""

    async def close(self) -> None:
        """Nothing to release."""
