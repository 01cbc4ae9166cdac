"""Thin grpc.aio adapter of the connector service: one line per RPC; errors are mapped by the interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from powerx.connector.v1 import connector_service_pb2 as svc
from powerx.connector.v1 import connector_service_pb2_grpc as svc_grpc
from servers.common import context
from servers.connector.service import ConnectorService
from servers.connector.webhooks import WebhookIntake

# Headers a webhook's signature check may read; everything else in the metadata is ignored.
_WEBHOOK_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-coze-signature",
        "x-coze-timestamp",
        "x-coze-nonce",
    }
)


def webhook_headers(metadata: Any) -> dict[str, str]:
    """The signature headers among a call's metadata (Envoy forwards every request header)."""
    out: dict[str, str] = {}
    for key, value in metadata or ():
        name = key.lower()
        if name in _WEBHOOK_HEADERS and isinstance(value, str):
            out.setdefault(name, value)
    return out


class ConnectorServicer(svc_grpc.ConnectorServiceServicer):
    """Serves powerx.connector.v1.ConnectorService."""

    def __init__(self, service: ConnectorService, webhooks: WebhookIntake) -> None:
        self.service = service
        self.webhooks = webhooks

    async def CreateConnectorInstance(
        self, request: svc.CreateConnectorInstanceRequest, _: Any
    ) -> svc.CreateConnectorInstanceResponse:
        return await self.service.create_instance(request, context.current())

    async def UpdateConnectorInstance(
        self, request: svc.UpdateConnectorInstanceRequest, _: Any
    ) -> svc.UpdateConnectorInstanceResponse:
        return await self.service.update_instance(request, context.current())

    async def GetConnectorInstance(
        self, request: svc.GetConnectorInstanceRequest, _: Any
    ) -> svc.GetConnectorInstanceResponse:
        return await self.service.get_instance(request, context.current())

    async def ListConnectorInstances(
        self, request: svc.ListConnectorInstancesRequest, _: Any
    ) -> svc.ListConnectorInstancesResponse:
        return await self.service.list_instances(request, context.current())

    async def DeleteConnectorInstance(
        self, request: svc.DeleteConnectorInstanceRequest, _: Any
    ) -> svc.DeleteConnectorInstanceResponse:
        return await self.service.delete_instance(request, context.current())

    async def RotateCredential(
        self, request: svc.RotateCredentialRequest, _: Any
    ) -> svc.RotateCredentialResponse:
        return await self.service.rotate_credential(request, context.current())

    async def ListConfigVersions(
        self, request: svc.ListConfigVersionsRequest, _: Any
    ) -> svc.ListConfigVersionsResponse:
        return await self.service.list_versions(request, context.current())

    async def RollbackConfig(self, request: svc.RollbackConfigRequest, _: Any) -> svc.RollbackConfigResponse:
        return await self.service.rollback(request, context.current())

    async def InvokeConnector(
        self, request: svc.InvokeConnectorRequest, _: Any
    ) -> svc.InvokeConnectorResponse:
        return await self.service.invoke(request, context.current())

    async def InvokeConnectorStream(
        self, request: svc.InvokeConnectorStreamRequest, _: Any
    ) -> AsyncIterator[svc.InvokeConnectorStreamResponse]:
        async for item in self.service.invoke_stream(request, context.current()):
            yield item

    async def GetInvocation(self, request: svc.GetInvocationRequest, _: Any) -> svc.GetInvocationResponse:
        return await self.service.get_invocation(request, context.current())

    async def ListInvocations(
        self, request: svc.ListInvocationsRequest, _: Any
    ) -> svc.ListInvocationsResponse:
        return await self.service.list_invocations(request, context.current())

    async def CancelInvocation(
        self, request: svc.CancelInvocationRequest, _: Any
    ) -> svc.CancelInvocationResponse:
        return await self.service.cancel_invocation(request, context.current())

    async def ReceiveWebhook(
        self, request: svc.ReceiveWebhookRequest, ctx: Any
    ) -> svc.ReceiveWebhookResponse:
        headers = webhook_headers(ctx.invocation_metadata())
        return await self.webhooks.receive(request, headers, context.current())

    async def WatchCallbacks(
        self, request: svc.WatchCallbacksRequest, _: Any
    ) -> AsyncIterator[svc.WatchCallbacksResponse]:
        async for item in self.webhooks.watch(request, context.current()):
            yield item

    async def SetDegradeMode(self, request: svc.SetDegradeModeRequest, _: Any) -> svc.SetDegradeModeResponse:
        return await self.service.set_degrade(request, context.current())

    async def GetDegradeState(
        self, request: svc.GetDegradeStateRequest, _: Any
    ) -> svc.GetDegradeStateResponse:
        return await self.service.get_degrade(request, context.current())

    async def ListDegradeHistory(
        self, request: svc.ListDegradeHistoryRequest, _: Any
    ) -> svc.ListDegradeHistoryResponse:
        return await self.service.degrade_history(request, context.current())

    async def ListHumanTasks(self, request: svc.ListHumanTasksRequest, _: Any) -> svc.ListHumanTasksResponse:
        return await self.service.list_human_tasks(request, context.current())

    async def ClaimHumanTask(self, request: svc.ClaimHumanTaskRequest, _: Any) -> svc.ClaimHumanTaskResponse:
        return await self.service.claim_human_task(request, context.current())

    async def CompleteHumanTask(
        self, request: svc.CompleteHumanTaskRequest, _: Any
    ) -> svc.CompleteHumanTaskResponse:
        return await self.service.complete_human_task(request, context.current())

    async def ListFeatureFlags(
        self, request: svc.ListFeatureFlagsRequest, _: Any
    ) -> svc.ListFeatureFlagsResponse:
        return await self.service.list_flags(request, context.current())

    async def ListPlatformWorkflows(
        self, request: svc.ListPlatformWorkflowsRequest, _: Any
    ) -> svc.ListPlatformWorkflowsResponse:
        return await self.service.list_workflows(request, context.current())

    async def CheckPlatformHealth(
        self, request: svc.CheckPlatformHealthRequest, _: Any
    ) -> svc.CheckPlatformHealthResponse:
        return await self.service.check_health(request, context.current())
