"""Thin grpc.aio adapter of the agent service: one line per RPC; errors are mapped by the interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import agent_service_pb2_grpc as svc_grpc
from servers.agent.a2a_external import register_external_agent
from servers.agent.service import AgentService
from servers.common import context


class AgentServicer(svc_grpc.AgentServiceServicer):
    """Serves powerx.agent.v1.AgentService."""

    def __init__(self, service: AgentService) -> None:
        self.service = service

    async def ListAgents(self, request: svc.ListAgentsRequest, _: Any) -> svc.ListAgentsResponse:
        return await self.service.list_agents(request, context.current())

    async def GetAgent(self, request: svc.GetAgentRequest, _: Any) -> svc.GetAgentResponse:
        return await self.service.get_agent(request, context.current())

    async def RegisterAgent(self, request: svc.RegisterAgentRequest, _: Any) -> svc.RegisterAgentResponse:
        return await self.service.register_agent(request, context.current())

    async def RecordHeartbeat(
        self, request: svc.RecordHeartbeatRequest, _: Any
    ) -> svc.RecordHeartbeatResponse:
        return await self.service.record_heartbeat(request, context.current())

    async def AssignTask(self, request: svc.AssignTaskRequest, _: Any) -> svc.AssignTaskResponse:
        return await self.service.assign_task(request, context.current())

    async def CreateRun(self, request: svc.CreateRunRequest, _: Any) -> svc.CreateRunResponse:
        return await self.service.create_run(request, context.current())

    async def GetRun(self, request: svc.GetRunRequest, _: Any) -> svc.GetRunResponse:
        return await self.service.get_run(request, context.current())

    async def ListRuns(self, request: svc.ListRunsRequest, _: Any) -> svc.ListRunsResponse:
        return await self.service.list_runs(request, context.current())

    async def CancelRun(self, request: svc.CancelRunRequest, _: Any) -> svc.CancelRunResponse:
        return await self.service.cancel_run(request, context.current())

    async def StreamRunOutput(
        self, request: svc.StreamRunOutputRequest, _: Any
    ) -> AsyncIterator[svc.StreamRunOutputResponse]:
        async for item in self.service.stream_run_output(request, context.current()):
            yield item

    async def DisconnectAgent(
        self, request: svc.DisconnectAgentRequest, _: Any
    ) -> svc.DisconnectAgentResponse:
        return await self.service.disconnect_agent(request, context.current())

    async def DeleteAgent(self, request: svc.DeleteAgentRequest, _: Any) -> svc.DeleteAgentResponse:
        return await self.service.delete_agent(request, context.current())

    async def RevokeAgentToken(
        self, request: svc.RevokeAgentTokenRequest, _: Any
    ) -> svc.RevokeAgentTokenResponse:
        return await self.service.revoke_agent_token(request, context.current())

    async def RegisterExternalAgent(
        self, request: svc.RegisterExternalAgentRequest, _: Any
    ) -> svc.RegisterExternalAgentResponse:
        return await register_external_agent(self.service, request, context.current())

    async def WatchAgentEvents(
        self, request: svc.WatchAgentEventsRequest, _: Any
    ) -> AsyncIterator[svc.WatchAgentEventsResponse]:
        async for item in self.service.watch_agent_events(request, context.current()):
            yield item

    async def Connect(
        self, request_iterator: AsyncIterator[svc.ConnectRequest], _: Any
    ) -> AsyncIterator[svc.ConnectResponse]:
        async for item in self.service.connect(request_iterator, context.current()):
            yield item

    async def PullAssignments(
        self, request: svc.PullAssignmentsRequest, _: Any
    ) -> svc.PullAssignmentsResponse:
        return await self.service.pull_assignments(request, context.current())

    async def PublishRunOutput(
        self, request: svc.PublishRunOutputRequest, _: Any
    ) -> svc.PublishRunOutputResponse:
        return await self.service.publish_run_output(request, context.current())

    async def CompleteRun(self, request: svc.CompleteRunRequest, _: Any) -> svc.CompleteRunResponse:
        return await self.service.complete_run(request, context.current())
