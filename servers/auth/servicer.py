"""Thin grpc.aio adapters of the auth and audit services; errors are mapped by the interceptor."""

from __future__ import annotations

from typing import Any

from powerx.audit.v1 import audit_service_pb2 as apb
from powerx.audit.v1 import audit_service_pb2_grpc as apb_grpc
from powerx.auth.v1 import auth_service_pb2 as pb
from powerx.auth.v1 import auth_service_pb2_grpc as pb_grpc
from servers.auth.service import AuditService, AuthService
from servers.common import context


class AuthServicer(pb_grpc.AuthServiceServicer):
    """Serves powerx.auth.v1.AuthService."""

    def __init__(self, service: AuthService) -> None:
        self.service = service

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, _: Any) -> pb.CreateApiKeyResponse:
        """See the proto."""
        return await self.service.create_key(request, context.current())

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, _: Any) -> pb.ListApiKeysResponse:
        """See the proto."""
        return await self.service.list_keys(request, context.current())

    async def GetApiKey(self, request: pb.GetApiKeyRequest, _: Any) -> pb.GetApiKeyResponse:
        """See the proto."""
        return await self.service.get_key(request, context.current())

    async def SetApiKeyStatus(self, request: pb.SetApiKeyStatusRequest, _: Any) -> pb.SetApiKeyStatusResponse:
        """See the proto."""
        return await self.service.set_status(request, context.current())

    async def WhoAmI(self, request: pb.WhoAmIRequest, _: Any) -> pb.WhoAmIResponse:
        """See the proto."""
        return await self.service.whoami(context.current())


class AuditServicer(apb_grpc.AuditServiceServicer):
    """Serves powerx.audit.v1.AuditService."""

    def __init__(self, service: AuditService) -> None:
        self.service = service

    async def ListAuditRecords(
        self, request: apb.ListAuditRecordsRequest, _: Any
    ) -> apb.ListAuditRecordsResponse:
        """See the proto."""
        return await self.service.list_records(request, context.current())

    async def GetAuditStats(self, request: apb.GetAuditStatsRequest, _: Any) -> apb.GetAuditStatsResponse:
        """See the proto."""
        return await self.service.stats(request, context.current())
