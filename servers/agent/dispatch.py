"""The router's way into the agent service: a routed call to an `agent://` endpoint becomes a run.

The router picked the agent (the endpoint of provider `agent_id`); the call becomes a run pinned to
that agent with the capability as its skill and the arguments as its inputs, and its output flows back
as the routed call's result or stream. A caller agent, admitted by the router through
`AgentService.admit_agent_call`, travels in `Call.metadata` (caller, depth, parent run, signature).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.protobuf import struct_pb2
from google.rpc import code_pb2

from powerx.agent.v1 import run_pb2
from powerx.provider.v1 import provider_service_pb2 as provider_pb2
from router.transports.base import REQUEST_CODES, Call, Target, TransportError
from sdk import signing
from servers.agent.lifecycle import LIVE, name
from servers.agent.live import LiveRun
from servers.agent.service import AgentCaller, AgentService, RunRequest
from servers.common.context import CallContext
from servers.common.errors import MeshError, code_of
from servers.common.times import duration_s


class AgentDispatch:
    """Implements router.transports.agent.AgentDispatcher on the agent service."""

    def __init__(self, service: AgentService) -> None:
        self.service = service

    async def _start(self, target: Target, call: Call) -> LiveRun:
        live = self.service.agents.get((target.tenant_id, target.provider_id))
        if live is None or live.agent.state not in LIVE:
            state = "unknown" if live is None else name(live.agent.state).lower()
            raise TransportError(code_pb2.UNAVAILABLE, f"agent {target.provider_id} is {state}", sent=False)
        task = run_pb2.Task(skill=call.capability_id, actor_id=call.actor_id)
        task.inputs.CopyFrom(call.arguments)
        trace = call.traceparent.split("-")
        if len(trace) == 4:
            task.trace_id = trace[1]
        if call.timeout_s is not None:
            task.timeout.CopyFrom(duration_s(min(call.timeout_s, 24 * 3600)))
        if call.idempotency_key:
            task.idempotency_key = f"route:{call.idempotency_key}"[:128]
        caller = None
        caller_id = call.metadata.get(signing.CALLER_AGENT_HEADER, "")
        if caller_id:
            caller_live = self.service.agents.get((call.tenant_id, caller_id))
            parent_id = call.metadata.get(signing.PARENT_RUN_HEADER, "")
            parent = self.service.runs.get(parent_id) if parent_id else None
            if caller_live is not None:
                caller = AgentCaller(
                    agent=caller_live,
                    parent=parent.stored if parent is not None else None,
                    depth=int(call.metadata.get(signing.CALL_DEPTH_HEADER, "1")),
                    signature=call.metadata.get(signing.SIGNATURE_HEADER, ""),
                )
        ctx = CallContext(
            tenant_id=call.tenant_id,
            principal=call.actor_id,
            request_id=call.request_id,
            trace_id=task.trace_id,
        )
        try:
            run = await self.service.create_run_for(
                RunRequest(tenant_id=call.tenant_id, task=task, agent=live, caller=caller), ctx
            )
        except MeshError as exc:
            sent = code_of(exc) in (code_pb2.FAILED_PRECONDITION, code_pb2.RESOURCE_EXHAUSTED)
            raise TransportError(code_of(exc), exc.message, sent=not sent, provider_error=True) from None
        live_run = self.service.runs.get(run.run_id)
        if live_run is None:  # finished already (idempotent repeat)
            loaded = await self.service.load_run(run.run_id)
            assert loaded is not None
            return loaded
        return live_run

    async def invoke(self, target: Target, call: Call) -> struct_pb2.Value:
        """Runs the call and returns the run's result."""
        live_run = await self._start(target, call)
        try:
            run = await self.service.wait_result(live_run)
        except asyncio.CancelledError:
            await self.service.cancel(live_run, "the caller went away")
            raise
        if run.state == run_pb2.RUN_STATE_SUCCEEDED:
            return run.result
        raise _error(run)

    async def stream(self, target: Target, call: Call) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
        """Runs the call and streams its tokens, artifacts and result."""
        live_run = await self._start(target, call)
        finished = False
        try:
            async for item in self.service.follow(live_run, 1):
                if item.HasField("end"):
                    finished = True
                    break
                event = item.event
                kind = event.WhichOneof("kind")
                if kind == "token":
                    yield provider_pb2.InvokeStreamResponse(text=event.token.text)
                elif kind == "artifact":
                    chunk = event.artifact
                    content = chunk.WhichOneof("content")
                    if content == "text":
                        yield provider_pb2.InvokeStreamResponse(text=chunk.text)
                    elif content == "data":
                        yield provider_pb2.InvokeStreamResponse(raw=chunk.data)
                    elif content == "json":
                        yield provider_pb2.InvokeStreamResponse(data=chunk.json)
                elif kind == "result":
                    if event.result.state == run_pb2.RUN_STATE_SUCCEEDED:
                        if event.result.HasField("result"):
                            yield provider_pb2.InvokeStreamResponse(data=event.result.result)
                    else:
                        raise _error_status(event.result.error.code, event.result.error.message)
        finally:
            if not finished and not live_run.finished:
                await self.service.cancel(live_run, "the caller went away")

    def liveness(self, target: Target) -> tuple[bool, str] | None:
        """Whether the agent behind `target` is live, and why not."""
        live = self.service.agents.get((target.tenant_id, target.provider_id))
        if live is None:
            return None
        if live.agent.state in LIVE:
            return True, ""
        return False, f"agent is {name(live.agent.state).lower()}"


def _error(run: run_pb2.Run) -> TransportError:
    return _error_status(run.error.code or code_pb2.UNKNOWN, run.error.message or "the run failed")


def _error_status(code: int, message: str) -> TransportError:
    code = code or code_pb2.UNKNOWN
    return TransportError(code, message, provider_error=code in REQUEST_CODES or code == code_pb2.UNKNOWN)
