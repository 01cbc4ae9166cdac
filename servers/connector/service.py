"""The connector service: instances, credentials, invocations, degradation and human tasks (seed 000).

Transport-free: methods take protobuf requests and a `CallContext` and raise `servers.common.errors`
exceptions. Webhooks are in `webhooks.py`, degrade switches and breakers in `degrade.py`, sealing and
refreshing credentials in `credentials.py`, the platforms behind `platforms.base.PlatformClient`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import random
import re
import secrets as _secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import field_mask_pb2, struct_pb2

from powerx.common.v1 import common_pb2
from powerx.connector.v1 import connector_pb2, degrade_pb2, invocation_pb2
from powerx.connector.v1 import connector_service_pb2 as svc
from router.policy import scope_allowed
from servers.agent.security import LocalQuotas, QuotaRule, Quotas
from servers.common.bus import EventBus
from servers.common.context import CallContext
from servers.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from servers.common.streams import stream_end
from servers.common.times import duration_s, seconds_of, timestamp_ms
from servers.common.validate import Violations, next_page_token, page_request
from servers.connector import credentials as creds
from servers.connector import templates, validation
from servers.connector.breaker import FAILURE, IGNORED, SUCCESS
from servers.connector.credentials import Secret, Vault
from servers.connector.crypto import CredentialDecryptError, Sealed
from servers.connector.degrade import CLOSED, HUMAN, LOCAL, OFF, OPEN, DegradeControl
from servers.connector.flags import CONNECTORS_FLAG, FlagSet
from servers.connector.metrics import ConnectorMetrics
from servers.connector.platforms import make_client
from servers.connector.platforms.base import (
    AUTH,
    PERMANENT,
    RETRYABLE,
    THROTTLED,
    Credentials,
    PlatformCall,
    PlatformClient,
    PlatformFailure,
    PlatformResult,
    StreamChunk,
)
from servers.connector.store import (
    TERMINAL_STATES,
    ConcurrentChange,
    ConnectorStore,
    StoredCredential,
    StoredInstance,
    StoredInvocation,
)
from servers.registry.service import require_tenant

log = logging.getLogger("powerx.connector")

MANAGE = "agent.connector.manage"
PENDING = invocation_pb2.INVOCATION_STATE_PENDING
RUNNING = invocation_pb2.INVOCATION_STATE_RUNNING
SUCCEEDED = invocation_pb2.INVOCATION_STATE_SUCCEEDED
FAILED = invocation_pb2.INVOCATION_STATE_FAILED
DEGRADED_LOCAL = invocation_pb2.INVOCATION_STATE_DEGRADED_LOCAL
AWAITING_HUMAN = invocation_pb2.INVOCATION_STATE_AWAITING_HUMAN
CANCELLED = invocation_pb2.INVOCATION_STATE_CANCELLED
SYNC = invocation_pb2.INVOCATION_MODE_SYNC
ASYNC = invocation_pb2.INVOCATION_MODE_ASYNC
STREAM = invocation_pb2.INVOCATION_MODE_STREAM
TASK_OPEN = degrade_pb2.HUMAN_TASK_STATE_OPEN
TASK_CLAIMED = degrade_pb2.HUMAN_TASK_STATE_CLAIMED
TASK_COMPLETED = degrade_pb2.HUMAN_TASK_STATE_COMPLETED
TASK_CANCELLED = degrade_pb2.HUMAN_TASK_STATE_CANCELLED
CONFIG_TOPIC = "platform.connector.config"
KEY_TTL_MS = 24 * 3600 * 1000
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
_TRACE_ID = re.compile(r"^[\x21-\x7e]{1,64}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_CONTEXT_BYTES = 256 * 1024
_MAX_REASON = 1000
_MAX_ANSWER_BYTES = 256 * 1024
_DEFAULT_TIMEOUT_S = 30.0
_POLL_START_S = 0.5
_POLL_MAX_S = 30.0
_KEEP_CREDENTIAL_VERSIONS = 5
_MAX_CLIENTS = 256
_EXPIRED_REASONS: dict[int, str] = {
    creds.EXPIRED: "CREDENTIAL_EXPIRED",
    creds.REJECTED: "CREDENTIAL_REJECTED",
}

LocalInvoke = Callable[[CallContext, str, struct_pb2.Struct, str], Awaitable[struct_pb2.Value]]
AuditSink = Callable[["AuditEntry"], None]


@dataclass(frozen=True)
class AuditEntry:
    """One audit line: who did what to which scope, how it ended, and a masked summary."""

    tenant_id: str
    actor: str
    trace_id: str
    request_id: str
    action: str
    scope: str
    outcome: str
    summary: Mapping[str, Any] = field(default_factory=dict)
    ok: bool | None = None  # None: from the outcome (FAILED, TIMED_OUT, … are failures)


@dataclass(frozen=True)
class ConnectorConfig:
    """Knobs of the connector service (from Settings)."""

    public_base_url: str = ""  # edge URL platforms call back on; empty → relative webhook path
    max_body_bytes: int = 1024 * 1024
    webhook_rate: QuotaRule = field(
        default_factory=lambda: QuotaRule.parse("rate=1000,burst=2000", "webhook")
    )
    callback_alert_after: int = 3
    callback_max_attempts: int = 10
    poll_interval_s: float = _POLL_START_S


def require_manage(ctx: CallContext) -> None:
    """PermissionDenied unless the caller holds `agent.connector.manage`."""
    if not scope_allowed(MANAGE, ctx.scopes):
        raise PermissionDenied(
            f"this call requires the permission {MANAGE}",
            reason="PERMISSION_REQUIRED",
            metadata={"permission": MANAGE},
        )


def check_platform(platform: str) -> str:
    """The platform of a request, or INVALID_ARGUMENT."""
    v = Violations()
    validation.check_platform(v, platform)
    v.raise_if_any("unknown platform")
    return platform


def request_hash(parts: Mapping[str, Any]) -> str:
    """Hash of what makes two invocation requests the same request."""
    return hashlib.sha256(
        json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def new_id(prefix: str) -> str:
    """A random identifier with a readable prefix."""
    return f"{prefix}_{_secrets.token_hex(12)}"


@dataclass
class Prepared:
    """An accepted invocation, ready to run (or, resumed, ready to be finished)."""

    stored: StoredInstance
    invocation: invocation_pb2.Invocation
    call: PlatformCall
    sensitive: list[str]
    timeout_s: float
    ctx: CallContext

    @classmethod
    def resume(
        cls, stored: StoredInstance, inv: invocation_pb2.Invocation, ctx: CallContext, timeout_s: float = 0.0
    ) -> Prepared:
        """An invocation picked up again: a poll, a callback, a human answer, a probe.

        No platform call is prepared; the instance's sensitive fields mask what is stored.
        """
        return cls(stored, inv, _no_call(), list(stored.instance.sensitive_fields), timeout_s, ctx)


class ConnectorService:
    """The domain logic behind ConnectorService."""

    def __init__(
        self,
        store: ConnectorStore,
        bus: EventBus,
        vault: Vault,
        metrics: ConnectorMetrics,
        degrade: DegradeControl,
        *,
        flags: Callable[[], FlagSet],
        audit: AuditSink,
        config: ConnectorConfig = ConnectorConfig(),
        quotas: Quotas | None = None,
        local_invoke: LocalInvoke | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        client_factory: Callable[[str, str, Credentials, float], PlatformClient] = make_client,
    ) -> None:
        self.store = store
        self.bus = bus
        self.vault = vault
        self.metrics = metrics
        self.degrade = degrade
        self.flags = flags
        self._audit = audit
        self.config = config
        self.quotas: Quotas = quotas or LocalQuotas()
        self.local_invoke = local_invoke
        self.clock_ms = clock_ms
        self.client_factory = client_factory
        self._finished: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._streamed: dict[str, int] = {}
        self._clients: collections.OrderedDict[tuple[str, str, str, str], PlatformClient] = (
            collections.OrderedDict()
        )

    # ---- helpers -------------------------------------------------------------------------------------

    def audit(
        self, ctx: CallContext, tenant: str, action: str, scope: str, outcome: str, **summary: Any
    ) -> None:
        """Queues an audit line; summaries are masked by the caller (never secrets)."""
        self._audit(
            AuditEntry(tenant, ctx.principal, ctx.trace_id, ctx.request_id, action, scope, outcome, summary)
        )

    def _lock(self, platform: str, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault((platform, instance_id), asyncio.Lock())

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancels background work of this process (polls and callbacks resume from the database)."""
        clients, self._clients = list(self._clients.values()), collections.OrderedDict()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def instance_of(self, tenant: str, platform: str, instance_id: str) -> StoredInstance:
        """A live instance of the tenant, or NOT_FOUND (also for another tenant's instance)."""
        v = Violations()
        v.pattern(instance_id, "instance_id", validation.INSTANCE_ID, "an instance id", required=True)
        v.raise_if_any("invalid instance id")
        stored = await self.store.instance(platform, instance_id)
        if stored is None or stored.deleted or stored.instance.tenant_id != tenant:
            raise NotFound(
                f"connector instance {platform}/{instance_id} not found",
                reason="INSTANCE_NOT_FOUND",
                metadata={"platform": platform, "instance_id": instance_id},
            )
        return stored

    async def credential_of(self, stored: StoredInstance, version: int = 0) -> StoredCredential | None:
        """A credential version of an instance (the current one by default)."""
        inst = stored.instance
        version = version or stored.credential_version
        if not version:
            return None
        return await self.store.credential(inst.tenant_id, inst.platform, inst.instance_id, version)

    async def view(self, stored: StoredInstance) -> connector_pb2.ConnectorInstance:
        """The instance as callers see it: with credential metadata (status as of now), never a secret."""
        inst = connector_pb2.ConnectorInstance()
        inst.CopyFrom(stored.instance)
        cred = await self.credential_of(stored)
        if cred is not None:
            inst.credential.CopyFrom(cred.info)
            inst.credential.status = self.vault.status(cred.info, self.clock_ms())  # type: ignore[assignment]
        return inst

    # ---- instances -----------------------------------------------------------------------------------

    async def create_instance(
        self, req: svc.CreateConnectorInstanceRequest, ctx: CallContext
    ) -> svc.CreateConnectorInstanceResponse:
        """Creates an instance with its credential sealed; answers with references, never secrets."""
        tenant = require_tenant(ctx)
        require_manage(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        if req.instance_id:
            v.pattern(
                req.instance_id, "instance_id", validation.INSTANCE_ID, "lower case letters, digits and -"
            )
        v.check(req.HasField("instance"), "instance", "is required")
        validation.validate_instance(req.instance, platform, v, field="instance", creating=True)
        if req.instance.HasField("credential_input"):
            validation.validate_credential_input(
                req.instance.credential_input, platform, v, field="instance.credential_input", required=False
            )
        v.text(req.reason, "reason", max_len=_MAX_REASON)
        v.raise_if_any("invalid connector instance")
        instance_id = req.instance_id or f"{platform}-{_secrets.token_hex(4)}"
        inst = await self.create_stored(
            tenant, platform, instance_id, req.instance, ctx, reason=req.reason, source="api", digest=""
        )
        return svc.CreateConnectorInstanceResponse(instance=inst)

    async def create_stored(
        self,
        tenant: str,
        platform: str,
        instance_id: str,
        given: connector_pb2.ConnectorInstance,
        ctx: CallContext,
        *,
        reason: str,
        source: str,
        digest: str,
    ) -> connector_pb2.ConnectorInstance:
        """Stores a new instance (from the API or a configuration file), version 1."""
        async with self._lock(platform, instance_id):
            existing = await self.store.instance(platform, instance_id)
            if existing is not None and not existing.deleted:
                raise AlreadyExists(
                    f"connector instance {platform}/{instance_id} exists",
                    reason="INSTANCE_EXISTS",
                    metadata={"platform": platform, "instance_id": instance_id},
                )
            # A deleted id may be used again; its versions (kept for audit) continue, never restart.
            base_version = existing.instance.config_version if existing is not None else 0
            if existing is not None:
                await self.store.purge_deleted(platform, instance_id)
            now = self.clock_ms()
            inst = connector_pb2.ConnectorInstance()
            inst.CopyFrom(given)
            inst.ClearField("credential_input")
            inst.instance_id, inst.tenant_id, inst.platform = instance_id, tenant, platform
            inst.config_version = base_version + 1
            inst.secret_ref = creds.secret_ref(tenant, platform, instance_id)
            inst.create_time.CopyFrom(timestamp_ms(now))
            inst.update_time.CopyFrom(timestamp_ms(now))
            credential = None
            if given.HasField("credential_input") and not creds.is_empty(given.credential_input):
                secret = creds.merge(given.credential_input, None)
                cred_version = await self._next_credential_version(inst, 0)
                credential = await self._new_credential(inst, secret, cred_version, previous=0)
            stored = StoredInstance(inst, credential.version if credential else 0, source, digest)
            version = self._version(
                inst, connector_pb2.CONFIG_CHANGE_TYPE_CREATE, ctx, reason, stored.credential_version
            )
            version.changed_fields.paths.extend(
                sorted(f.name for f, _ in given.ListFields() if f.name != "credential_input")
            )
            await self.store.save_instance(
                stored, version, now, create=True, expect_version=0, credential=credential
            )
        self.audit(
            ctx,
            tenant,
            "connector.instance.create",
            f"{platform}/{instance_id}",
            "OK",
            source=source,
            credential_kind=credential.info.kind if credential else 0,
        )
        await self.bus.publish(CONFIG_TOPIC, f"{platform}/{instance_id}".encode())
        return await self.view(stored)

    def _version(
        self,
        inst: connector_pb2.ConnectorInstance,
        change: int,
        ctx: CallContext,
        reason: str,
        credential_version: int,
    ) -> connector_pb2.ConfigVersion:
        version = connector_pb2.ConfigVersion(
            instance_id=inst.instance_id,
            version=inst.config_version,
            change_type=change,  # type: ignore[arg-type]
            credential_version=credential_version,
            actor=ctx.principal,
            reason=reason,
        )
        version.instance.CopyFrom(inst)
        version.create_time.CopyFrom(timestamp_ms(self.clock_ms()))
        return version

    async def _new_credential(
        self, inst: connector_pb2.ConnectorInstance, secret: Secret, version: int, *, previous: int
    ) -> StoredCredential:
        """Seals a new credential version.

        A JWT app gets its first token minted now; a failure is kept as REFRESH_FAILED and retried on
        use, so creation does not depend on the platform.
        """
        status, message = 0, ""
        if secret.kind == creds.COZE_JWT and not secret.token:
            try:
                secret = await self.vault.refreshed(secret, inst.base_url)
            except PlatformFailure as failure:
                status, message = creds.REFRESH_FAILED, f"minting a token failed: {failure.code}"
        now = self.clock_ms()
        sealed = self.vault.seal(secret, inst.tenant_id, inst.platform, inst.instance_id, version)
        info = self.vault.info(
            secret,
            tenant=inst.tenant_id,
            platform=inst.platform,
            instance_id=inst.instance_id,
            version=version,
            key_id=sealed.key_id,
            now_ms=now,
            previous_version=previous if inst.allow_previous_credential else 0,
            status=status,
            message=message,
        )
        return StoredCredential(
            inst.tenant_id,
            inst.platform,
            inst.instance_id,
            version,
            sealed.to_json().encode(),
            sealed.key_id,
            info,
        )

    async def update_instance(
        self, req: svc.UpdateConnectorInstanceRequest, ctx: CallContext
    ) -> svc.UpdateConnectorInstanceResponse:
        """Changes the fields named in the mask and stores a new configuration version."""
        tenant = require_tenant(ctx)
        require_manage(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        v.check(req.HasField("update_mask") and bool(req.update_mask.paths), "update_mask", "is required")
        validation.check_update_mask(list(req.update_mask.paths), v)
        validation.check_output_only(req.instance, v, "instance")
        v.text(req.reason, "reason", max_len=_MAX_REASON)
        v.raise_if_any("invalid update")
        async with self._lock(platform, req.instance_id):
            stored = await self.instance_of(tenant, platform, req.instance_id)
            paths = list(dict.fromkeys(req.update_mask.paths))
            inst = validation.apply_update_mask(stored.instance, req.instance, paths)
            validation.validate_instance(
                validation.settings_of(inst), platform, v, field="instance", creating=False
            )
            v.raise_if_any("invalid connector instance")
            updated = await self._commit(stored, inst, ctx, req.reason)
        self.audit(
            ctx, tenant, "connector.instance.update", f"{platform}/{req.instance_id}", "OK", fields=paths
        )
        return svc.UpdateConnectorInstanceResponse(instance=await self.view(updated))

    async def redeclare(
        self,
        existing: StoredInstance,
        given: connector_pb2.ConnectorInstance,
        ctx: CallContext,
        *,
        source: str,
        digest: str,
    ) -> None:
        """Applies a changed declaration from a configuration file.

        Its settings become a new version, its credential (from the environment) a new credential version.
        """
        inst_key = (existing.instance.platform, existing.instance.instance_id)
        async with self._lock(*inst_key):
            inst = validation.apply_update_mask(existing.instance, validation.settings_of(given), ["*"])
            updated = await self._commit(
                existing, inst, ctx, f"{source} changed", source=source, digest=digest
            )
            if given.HasField("credential_input") and not creds.is_empty(given.credential_input):
                await self._store_rotation(
                    updated, creds.merge(given.credential_input, None), ctx, f"{source} changed"
                )
        self.audit(
            ctx, inst.tenant_id, "connector.instance.redeclare", f"{inst.platform}/{inst.instance_id}", "OK"
        )

    async def disable_declared(self, existing: StoredInstance, ctx: CallContext) -> None:
        """Disables an instance whose configuration file no longer declares it (kept, versioned)."""
        inst_key = (existing.instance.platform, existing.instance.instance_id)
        async with self._lock(*inst_key):
            inst = connector_pb2.ConnectorInstance()
            inst.CopyFrom(existing.instance)
            inst.enabled = False
            await self._commit(existing, inst, ctx, "no longer declared", changed=["enabled"])
        self.audit(
            ctx, inst.tenant_id, "connector.instance.disable", f"{inst.platform}/{inst.instance_id}", "OK"
        )

    async def _commit(
        self,
        stored: StoredInstance,
        inst: connector_pb2.ConnectorInstance,
        ctx: CallContext,
        reason: str,
        *,
        change: int = connector_pb2.CONFIG_CHANGE_TYPE_UPDATE,
        rollback_of: int = 0,
        changed: list[str] | None = None,
        deleted: bool = False,
        source: str | None = None,
        digest: str | None = None,
    ) -> StoredInstance:
        """Stores `inst`, the new settings of `stored`, as the next configuration version.

        `changed` names the changed fields; by default every settable field that differs.
        """
        inst.config_version = stored.instance.config_version + 1
        inst.update_time.CopyFrom(timestamp_ms(self.clock_ms()))
        updated = StoredInstance(
            inst,
            stored.credential_version,
            stored.source if source is None else source,
            stored.digest if digest is None else digest,
            deleted=deleted,
        )
        version = self._version(inst, change, ctx, reason, stored.credential_version)
        version.rollback_of_version = rollback_of
        if changed is None:
            changed = [p for p in validation.UPDATABLE_FIELDS if _differs(stored.instance, inst, p)]
        version.changed_fields.paths.extend(changed)
        await self._save(updated, version, expect=stored.instance.config_version)
        return updated

    async def _save(
        self,
        stored: StoredInstance,
        version: connector_pb2.ConfigVersion,
        *,
        expect: int,
        credential: StoredCredential | None = None,
    ) -> None:
        try:
            await self.store.save_instance(
                stored, version, self.clock_ms(), create=False, expect_version=expect, credential=credential
            )
        except ConcurrentChange:
            raise Aborted(
                "the instance changed concurrently; read it again and retry", reason="CONCURRENT_CHANGE"
            ) from None
        await self.bus.publish(
            CONFIG_TOPIC, f"{stored.instance.platform}/{stored.instance.instance_id}".encode()
        )

    async def get_instance(
        self, req: svc.GetConnectorInstanceRequest, ctx: CallContext
    ) -> svc.GetConnectorInstanceResponse:
        """One instance of the caller's tenant."""
        tenant = require_tenant(ctx)
        stored = await self.instance_of(tenant, check_platform(req.platform), req.instance_id)
        return svc.GetConnectorInstanceResponse(instance=await self.view(stored))

    async def list_instances(
        self, req: svc.ListConnectorInstancesRequest, ctx: CallContext
    ) -> svc.ListConnectorInstancesResponse:
        """The tenant's instances of a platform, by id."""
        tenant = require_tenant(ctx)
        platform = check_platform(req.platform)
        filters = [tenant, platform]
        page = page_request(req.page_size, req.page_token, filters)
        after = str(page.after[0]) if page.after else ""
        rows = await self.store.instances(tenant, platform, after, page.size + 1)
        resp = svc.ListConnectorInstancesResponse(instances=[await self.view(s) for s in rows[: page.size]])
        if len(rows) > page.size:
            resp.next_page_token = next_page_token([rows[page.size - 1].instance.instance_id], filters)
        return resp

    async def delete_instance(
        self, req: svc.DeleteConnectorInstanceRequest, ctx: CallContext
    ) -> svc.DeleteConnectorInstanceResponse:
        """Deletes an instance: destroys its credentials and cancels its unfinished invocations."""
        tenant = require_tenant(ctx)
        require_manage(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        v.text(req.reason, "reason", max_len=_MAX_REASON)
        v.raise_if_any("invalid delete")
        async with self._lock(platform, req.instance_id):
            stored = await self.instance_of(tenant, platform, req.instance_id)
            view = await self.view(stored)
            inst = connector_pb2.ConnectorInstance()
            inst.CopyFrom(stored.instance)
            inst.enabled = False
            await self._commit(stored, inst, ctx, req.reason or "deleted", changed=["enabled"], deleted=True)
            await self.store.destroy_credentials(tenant, platform, req.instance_id)
        cancelled = 0
        for row in await self.store.unfinished_invocations(tenant, platform, req.instance_id):
            if await self._cancel(
                row, ctx, f"instance deleted: {req.reason}" if req.reason else "instance deleted"
            ):
                cancelled += 1
        self.audit(
            ctx,
            tenant,
            "connector.instance.delete",
            f"{platform}/{req.instance_id}",
            "OK",
            cancelled=cancelled,
        )
        await self.bus.publish(CONFIG_TOPIC, f"{platform}/{req.instance_id}".encode())
        return svc.DeleteConnectorInstanceResponse(instance=view, cancelled_invocation_count=cancelled)

    # ---- credentials ---------------------------------------------------------------------------------

    async def rotate_credential(
        self, req: svc.RotateCredentialRequest, ctx: CallContext
    ) -> svc.RotateCredentialResponse:
        """Stores a new credential version (given, or refreshed / re-minted now)."""
        tenant = require_tenant(ctx)
        require_manage(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        if req.HasField("credential_input"):
            validation.validate_credential_input(
                req.credential_input, platform, v, field="credential_input", required=False
            )
        v.text(req.reason, "reason", max_len=_MAX_REASON)
        v.raise_if_any("invalid rotation")
        async with self._lock(platform, req.instance_id):
            stored = await self.instance_of(tenant, platform, req.instance_id)
            current = await self.credential_of(stored)
            base = self._open(current) if current is not None and not current.destroyed else None
            if creds.is_empty(req.credential_input):
                if base is None or not base.refreshable:
                    raise FailedPrecondition(
                        "this credential cannot be refreshed (an API key, or none): rotate in a new one",
                        reason="CREDENTIAL_NOT_REFRESHABLE",
                    )
                try:
                    secret = await self.vault.refreshed(base, stored.instance.base_url)
                except PlatformFailure as failure:
                    await self._mark(current, creds.REFRESH_FAILED, f"refresh failed: {failure.code}")  # type: ignore[arg-type]
                    raise FailedPrecondition(
                        f"the platform refused the refresh: {failure.code}",
                        reason="CREDENTIAL_REFRESH_FAILED",
                    ) from None
            else:
                secret = creds.merge(req.credential_input, base)
            updated = await self._store_rotation(stored, secret, ctx, req.reason)
        info = (await self.credential_of(updated)).info  # type: ignore[union-attr]
        self.audit(
            ctx,
            tenant,
            "connector.credential.rotate",
            f"{platform}/{req.instance_id}",
            "OK",
            version=info.version,
            kind=info.kind,
            key_id=info.key_id,
        )
        return svc.RotateCredentialResponse(credential=info, config_version=updated.instance.config_version)

    async def _store_rotation(
        self, stored: StoredInstance, secret: Secret, ctx: CallContext, reason: str, *, rollback_of: int = 0
    ) -> StoredInstance:
        inst = connector_pb2.ConnectorInstance()
        inst.CopyFrom(stored.instance)
        inst.config_version += 1
        inst.update_time.CopyFrom(timestamp_ms(self.clock_ms()))
        new_version = await self._next_credential_version(inst, stored.credential_version)
        credential = await self._new_credential(inst, secret, new_version, previous=stored.credential_version)
        updated = StoredInstance(inst, new_version, stored.source, stored.digest)
        change = (
            connector_pb2.CONFIG_CHANGE_TYPE_ROLLBACK
            if rollback_of
            else connector_pb2.CONFIG_CHANGE_TYPE_ROTATE_CREDENTIAL
        )
        version = self._version(inst, change, ctx, reason, new_version)
        version.rollback_of_version = rollback_of
        version.changed_fields.paths.append("credential")
        await self._save(updated, version, expect=stored.instance.config_version, credential=credential)
        keep = list(range(max(1, new_version - _KEEP_CREDENTIAL_VERSIONS + 1), new_version + 1))
        await self.store.destroy_credentials(inst.tenant_id, inst.platform, inst.instance_id, keep=keep)
        return updated

    async def _next_credential_version(self, inst: connector_pb2.ConnectorInstance, current: int) -> int:
        """The next free credential version: monotonic per instance id, across deletions too."""
        latest = current
        while await self.store.credential(inst.tenant_id, inst.platform, inst.instance_id, latest + 1):
            latest += 1
        return latest + 1

    def _open(self, cred: StoredCredential) -> Secret:
        return self.vault.open(cred.sealed, cred.tenant_id, cred.platform, cred.instance_id, cred.version)

    async def _mark(self, cred: StoredCredential, status: int, message: str) -> None:
        """Records a credential's new status (no new version: nothing secret changed)."""
        cred.info.status = status  # type: ignore[assignment]
        cred.info.status_message = message
        await self.store.update_credential(cred)
        label = connector_pb2.CredentialStatus.Name(status).removeprefix("CREDENTIAL_STATUS_").lower()
        self.metrics.credential_alerts.labels(cred.platform, label).inc()
        log.warning(
            "credential %s of %s/%s: %s",
            cred.version,
            cred.platform,
            cred.instance_id,
            message,
            extra={"tenant": cred.tenant_id, "alert": f"platform.credential.{label}"},
        )

    async def list_versions(
        self, req: svc.ListConfigVersionsRequest, ctx: CallContext
    ) -> svc.ListConfigVersionsResponse:
        """Configuration versions, newest first."""
        tenant = require_tenant(ctx)
        platform = check_platform(req.platform)
        await self.instance_of(tenant, platform, req.instance_id)
        filters = [tenant, platform, req.instance_id]
        page = page_request(req.page_size, req.page_token, filters)
        rows = await self.store.versions(tenant, platform, req.instance_id, page)
        resp = svc.ListConfigVersionsResponse(versions=[r.version for r in rows[: page.size]])
        if len(rows) > page.size:
            resp.next_page_token = next_page_token([rows[page.size - 1].version.version], filters)
        return resp

    async def rollback(self, req: svc.RollbackConfigRequest, ctx: CallContext) -> svc.RollbackConfigResponse:
        """Restores an earlier version's settings (and credential, when asked) as a new version."""
        tenant = require_tenant(ctx)
        require_manage(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        v.check(req.version > 0, "version", "must be a positive version number")
        v.text(req.reason, "reason", max_len=_MAX_REASON)
        v.raise_if_any("invalid rollback")
        async with self._lock(platform, req.instance_id):
            stored = await self.instance_of(tenant, platform, req.instance_id)
            row = await self.store.version(tenant, platform, req.instance_id, req.version)
            if row is None:
                raise NotFound(f"configuration version {req.version} not found", reason="VERSION_NOT_FOUND")
            if row.version.version >= stored.instance.config_version:
                raise FailedPrecondition(
                    "only an earlier version can be rolled back to", reason="NOT_AN_EARLIER_VERSION"
                )
            inst = validation.apply_update_mask(stored.instance, row.version.instance, ["*"])
            restored = StoredInstance(inst, stored.credential_version, stored.source, stored.digest)
            if req.restore_credential and row.credential_version:
                old = await self.credential_of(stored, row.credential_version)
                if old is None or old.destroyed:
                    raise FailedPrecondition(
                        f"credential version {row.credential_version} is no longer kept",
                        reason="CREDENTIAL_DESTROYED",
                    )
                updated = await self._store_rotation(
                    restored, self._open(old), ctx, req.reason, rollback_of=req.version
                )
            else:
                updated = await self._commit(
                    stored,
                    inst,
                    ctx,
                    req.reason,
                    change=connector_pb2.CONFIG_CHANGE_TYPE_ROLLBACK,
                    rollback_of=req.version,
                )
        versions = await self.store.versions(tenant, platform, req.instance_id, page_request(1, "", []))
        self.audit(
            ctx,
            tenant,
            "connector.instance.rollback",
            f"{platform}/{req.instance_id}",
            "OK",
            to_version=req.version,
        )
        return svc.RollbackConfigResponse(instance=await self.view(updated), version=versions[0].version)

    # ---- invoke --------------------------------------------------------------------------------------

    async def invoke(self, req: svc.InvokeConnectorRequest, ctx: CallContext) -> svc.InvokeConnectorResponse:
        """Runs a workflow (SYNC waits, ASYNC returns at once) honouring every guard; see the proto."""
        mode = req.mode or SYNC
        if mode == STREAM or mode not in (SYNC, ASYNC):
            raise InvalidArgument(
                "mode must be SYNC or ASYNC (use InvokeConnectorStream to stream)",
                [("mode", "must be SYNC or ASYNC")],
            )
        prepared, existing = await self._prepare(
            ctx,
            req.platform,
            req.tenant,
            req.instance_id,
            req.workflow_id,
            req.context,
            req.trace_id,
            req.idempotency_key,
            mode,
            req.user_id,
            req.timeout,
        )
        if existing is not None:
            return svc.InvokeConnectorResponse(invocation=await self._settled(existing, mode), replayed=True)
        inv = await self._dispatch(prepared, mode)
        return svc.InvokeConnectorResponse(invocation=inv)

    async def invoke_stream(
        self, req: svc.InvokeConnectorStreamRequest, ctx: CallContext
    ) -> AsyncIterator[svc.InvokeConnectorStreamResponse]:
        """Relays streamed output as chunks, then the finished invocation, then the end."""
        prepared, existing = await self._prepare(
            ctx,
            req.platform,
            req.tenant,
            req.instance_id,
            req.workflow_id,
            req.context,
            req.trace_id,
            req.idempotency_key,
            STREAM,
            req.user_id,
            req.timeout,
        )
        if existing is not None:
            final = await self._settled(existing, STREAM)
            yield svc.InvokeConnectorStreamResponse(final=final)
            yield svc.InvokeConnectorStreamResponse(end=stream_end("REPLAYED", 0))
            return
        inv = prepared.invocation
        route = await self._route(prepared)
        sent = 0
        if route is not None:
            final = await self._degraded(prepared, route)
        else:
            # Unbounded: a caller that goes away must never block the platform call half-recorded.
            queue: asyncio.Queue[StreamChunk | None] = asyncio.Queue()
            runner = asyncio.ensure_future(self._run_platform(prepared, stream_to=queue))
            try:
                while True:
                    chunk = await queue.get()
                    if chunk is None:
                        break
                    msg = invocation_pb2.InvocationChunk(
                        invocation_id=inv.invocation_id,
                        sequence=sent,
                        event=chunk.event,
                        node_title=chunk.node_title,
                        node_finished=chunk.node_finished,
                    )
                    if chunk.text is not None:
                        msg.text = chunk.text
                    else:
                        msg.data.CopyFrom(
                            templates.py_to_value(templates.mask(chunk.data, prepared.sensitive))
                        )
                    sent += 1
                    self._streamed[inv.invocation_id] = sent
                    yield svc.InvokeConnectorStreamResponse(chunk=msg)
                final = await runner
            finally:
                self._streamed.pop(inv.invocation_id, None)
                if not runner.done():
                    # The caller went away: the run goes on to its end and is recorded.
                    self._tasks.add(runner)  # type: ignore[arg-type]
                    runner.add_done_callback(self._tasks.discard)
        yield svc.InvokeConnectorStreamResponse(final=final)
        yield svc.InvokeConnectorStreamResponse(end=stream_end(_state_name(final.state), max(0, sent - 1)))

    async def _prepare(  # noqa: PLR0917 - the two invoke requests share these fields, not a type
        self,
        ctx: CallContext,
        platform: str,
        tenant_field: str,
        instance_id: str,
        workflow_id: str,
        context: struct_pb2.Struct,
        trace_id: str,
        idempotency_key: str,
        mode: int,
        user_id: str,
        deadline: Any,
    ) -> tuple[Prepared, StoredInvocation | None]:
        """Checks every guard and records the invocation (PENDING) before anything reaches the platform.

        Returns the prepared call, or the earlier invocation holding the same idempotency key.
        """
        tenant = require_tenant(ctx)
        platform = check_platform(platform)
        v = Violations()
        if tenant_field and tenant_field != tenant:
            raise PermissionDenied("a call may act only for the caller's tenant", reason="TENANT_MISMATCH")
        v.text(workflow_id, "workflow_id", max_len=128, required=True)
        if instance_id:
            v.pattern(instance_id, "instance_id", validation.INSTANCE_ID, "an instance id")
        if trace_id:
            v.pattern(trace_id, "trace_id", _TRACE_ID, "1-64 printable ASCII characters")
        if idempotency_key:
            v.pattern(
                idempotency_key, "idempotency_key", _IDEMPOTENCY_KEY, "1-128 printable ASCII characters"
            )
        v.text(user_id, "user_id", max_len=255)
        timeout_s = seconds_of(deadline) if deadline is not None and deadline.ByteSize() else 0.0
        v.check(0 <= timeout_s <= 600, "timeout", "must be between 0 and 600 s")
        v.check(
            context.ByteSize() <= _MAX_CONTEXT_BYTES, "context", f"is larger than {_MAX_CONTEXT_BYTES} bytes"
        )
        v.raise_if_any("invalid invocation")
        flags = self.flags()
        if not flags.enabled(CONNECTORS_FLAG, tenant, platform):
            raise FailedPrecondition(
                f"the feature {CONNECTORS_FLAG} is not enabled for this tenant and platform",
                reason="FEATURE_DISABLED",
                metadata={"flag": CONNECTORS_FLAG},
            )
        stored = await self._invoke_instance(tenant, platform, instance_id)
        inst = stored.instance
        if not inst.enabled:
            raise FailedPrecondition(
                f"connector instance {platform}/{inst.instance_id} is disabled", reason="INSTANCE_DISABLED"
            )
        platform_workflow = inst.workflow_ids.get(workflow_id)
        if platform_workflow is None:
            raise NotFound(
                f"workflow {workflow_id!r} is not configured on instance {inst.instance_id}",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_id": workflow_id},
            )
        principal = user_id or ctx.principal
        platform_user = self._map_user(inst, principal, workflow_id)
        context_dict = templates.struct_to_dict(context)
        missing = templates.missing_fields(context_dict, list(inst.required_context_fields))
        if missing:
            raise InvalidArgument(
                "the context lacks required fields",
                [(f"context.{m}", "is required by the instance") for m in missing],
            )
        try:
            payload = templates.render_input(
                inst.input_template if inst.HasField("input_template") else None, context_dict
            )
        except templates.TemplateError as err:
            raise InvalidArgument(
                "the context does not fit the instance's input template",
                [(f"context.{err.path}", "is missing")],
            ) from None
        sensitive = list(inst.sensitive_fields)
        rate = flags.rate_limit(CONNECTORS_FLAG)
        if rate is not None and rate.requests_per_second > 0:
            await self._take(f"flag:{tenant}:{platform}", rate, "the tenant's connector call rate")
        effective_timeout = timeout_s or seconds_of(inst.timeout) or _DEFAULT_TIMEOUT_S
        trace = trace_id or ctx.trace_id
        now = self.clock_ms()
        inv = invocation_pb2.Invocation(
            invocation_id=new_id("inv"),
            tenant_id=tenant,
            platform=platform,
            instance_id=inst.instance_id,
            workflow_id=workflow_id,
            platform_workflow_id=platform_workflow,
            trace_id=trace,
            idempotency_key=idempotency_key,
            mode=mode,  # type: ignore[arg-type]
            state=PENDING,
            degrade_mode=OFF,
            user_id=principal,
            config_version=inst.config_version,
        )
        inv.context.CopyFrom(templates.dict_to_struct(templates.mask(context_dict, sensitive)))
        inv.create_time.CopyFrom(timestamp_ms(now))
        inv.update_time.CopyFrom(timestamp_ms(now))
        digest = request_hash(
            {
                "i": inst.instance_id,
                "w": workflow_id,
                "c": context_dict,
                "m": mode if mode != STREAM else SYNC,
                "u": principal,
            }
        )
        row = StoredInvocation(inv, digest, now + KEY_TTL_MS if idempotency_key else 0)
        if idempotency_key:
            existing = await self.store.insert_invocation(row, now)
            if existing is not None:
                if existing.request_hash != digest:
                    raise AlreadyExists(
                        "this idempotency key was used for a different request",
                        reason="IDEMPOTENCY_KEY_REUSED",
                        metadata={"invocation_id": existing.invocation.invocation_id},
                    )
                self.audit(
                    ctx,
                    tenant,
                    "connector.invoke",
                    f"{platform}/{inst.instance_id}",
                    "REPLAYED",
                    invocation_id=existing.invocation.invocation_id,
                    workflow_id=workflow_id,
                )
                return Prepared.resume(stored, existing.invocation, ctx, effective_timeout), existing
        else:
            await self.store.insert_invocation(row, now)
        self._finished[inv.invocation_id] = asyncio.Event()
        call = PlatformCall(
            invocation_id=inv.invocation_id,
            workflow_id=platform_workflow,
            payload=payload,
            platform_user_id=platform_user,
            trace_id=trace,
            idempotency_key=idempotency_key or inv.invocation_id,
            timeout_s=effective_timeout,
            callback_url=inst.callback_url or self._callback_url(platform, inst.instance_id),
            account_id=inst.platform_account_id,
            # The W3C header only when the call's own trace is used (a caller's `trace_id` may be any text).
            traceparent=ctx.traceparent if ctx.span_id and trace == ctx.trace_id else "",
        )
        self.audit(
            ctx,
            tenant,
            "connector.invoke",
            f"{platform}/{inst.instance_id}",
            "ACCEPTED",
            invocation_id=inv.invocation_id,
            workflow_id=workflow_id,
            mode=invocation_pb2.InvocationMode.Name(mode),
            context=templates.mask(context_dict, sensitive),
        )
        return Prepared(stored, inv, call, sensitive, effective_timeout, ctx), None

    def _callback_url(self, platform: str, instance_id: str) -> str:
        return (
            f"{self.config.public_base_url.rstrip('/')}/platform/connectors/{platform}/webhooks/{instance_id}"
        )

    async def _invoke_instance(self, tenant: str, platform: str, instance_id: str) -> StoredInstance:
        if instance_id:
            return await self.instance_of(tenant, platform, instance_id)
        rows = [s for s in await self.store.instances(tenant, platform, "", 1000) if s.instance.enabled]
        if not rows:
            raise NotFound(
                f"the tenant has no enabled {platform} connector instance", reason="INSTANCE_NOT_FOUND"
            )
        if len(rows) > 1:
            raise InvalidArgument(
                f"the tenant has several {platform} instances: name one",
                [("instance_id", "is required here")],
            )
        return rows[0]

    def _map_user(self, inst: connector_pb2.ConnectorInstance, principal: str, workflow: str) -> str:
        for mapping in inst.user_mappings:
            if mapping.user_id == principal:
                if mapping.workflow_aliases and workflow not in mapping.workflow_aliases:
                    raise PermissionDenied(
                        f"user {principal} may not invoke workflow {workflow}", reason="WORKFLOW_NOT_ALLOWED"
                    )
                return mapping.platform_user_id
        if inst.default_platform_user_id:
            return inst.default_platform_user_id
        raise PermissionDenied(
            f"user {principal} has no platform user mapping on this instance", reason="USER_NOT_MAPPED"
        )

    async def _take(self, key: str, rate: connector_pb2.RateLimit, what: str) -> None:
        rule = _rule(rate)
        wait = await self.quotas.take(key, rule)
        if wait > 0:
            raise ResourceExhausted(f"{what} is exceeded", reason="RATE_LIMITED", retry_after_s=wait)

    async def _settled(self, existing: StoredInvocation, mode: int) -> invocation_pb2.Invocation:
        """The invocation a repeated key refers to; a SYNC repeat waits for a first call still running."""
        inv = existing.invocation
        if mode == ASYNC or inv.state in TERMINAL_STATES or inv.state == AWAITING_HUMAN:
            return inv
        deadline = time.monotonic() + _DEFAULT_TIMEOUT_S
        event = self._finished.get(inv.invocation_id)
        while time.monotonic() < deadline:
            if event is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), 0.5)
            else:
                await asyncio.sleep(0.05)
            row = await self.store.invocation(inv.invocation_id)
            if row is not None and (
                row.invocation.state in TERMINAL_STATES or row.invocation.state == AWAITING_HUMAN
            ):
                return row.invocation
        row = await self.store.invocation(inv.invocation_id)
        return row.invocation if row is not None else inv

    async def _dispatch(self, p: Prepared, mode: int) -> invocation_pb2.Invocation:
        route = await self._route(p)
        if route is not None:
            return await self._degraded(p, route)
        if mode == ASYNC:
            return await self._start_async(p)
        return await self._run_platform(p)

    async def _route(self, p: Prepared) -> tuple[int, str, str] | None:
        """Where a call goes instead of the platform: (mode, local capability, reason), or None."""
        inst = p.stored.instance
        state = await self.degrade.state(inst.tenant_id, inst.platform)
        breaker = self.degrade.breaker(inst.tenant_id, inst.platform)
        capability = state.local_capability_id or inst.local_capability_id
        if state.mode in (LOCAL, HUMAN) and not state.automatic:
            return int(state.mode), capability, state.reason or "degraded by an operator"
        if (
            state.automatic
            and state.mode != OFF
            and breaker.state == CLOSED
            and state.breaker_state == OPEN
            and self.clock_ms() - state.set_time.ToMilliseconds() < self.degrade.breaker_config.open_s * 1000
        ):
            # Another process opened its breaker: follow its switch for its open period. After that this
            # process probes too, so a switch whose process went away cannot hold forever.
            return (LOCAL if capability else HUMAN), capability, state.reason
        if not breaker.allow():
            return (
                (LOCAL if capability else HUMAN),
                capability,
                breaker.reason or "the circuit breaker is open",
            )
        return None

    def _fallback(self, inst: connector_pb2.ConnectorInstance) -> int:
        return LOCAL if inst.local_capability_id else HUMAN

    async def _client(self, p: Prepared, secret: Secret) -> PlatformClient:
        """A client for the instance and secret, kept for reuse.

        Building one (an HTTP client with its TLS context) costs more CPU than the call itself. A rotated
        secret gets a new client; the least recently used ones are closed beyond `_MAX_CLIENTS`.
        """
        inst = p.stored.instance
        material = json.dumps([secret.token, sorted(secret.secret_headers.items())]).encode()
        key = (inst.platform, inst.instance_id, inst.base_url, hashlib.sha256(material).hexdigest())
        client = self._clients.pop(key, None)
        if client is None:
            client = self.client_factory(
                inst.platform,
                inst.base_url,
                Credentials(token=secret.token, secret_headers=dict(secret.secret_headers)),
                p.timeout_s,
            )
        self._clients[key] = client  # most recently used last
        while len(self._clients) > _MAX_CLIENTS:
            _, oldest = self._clients.popitem(last=False)
            self._spawn(oldest.aclose(), "close-platform-client")
        return client

    async def _usable_secret(
        self, p: Prepared, *, force_refresh: bool = False
    ) -> tuple[Secret, StoredCredential | None]:
        """The secret to call with.

        The current version (refreshed when due), or the previous one when the current cannot be used
        and the instance allows it; else the call is blocked.
        """
        current = await self.credential_of(p.stored)
        if current is None or current.destroyed:
            return Secret(), None
        now = self.clock_ms()
        secret = self._open(current)
        if force_refresh or self.vault.needs_refresh(secret, now):
            secret = await self._refresh(p.stored, current, secret) or secret
            current = await self.credential_of(p.stored) or current
        status = self.vault.status(current.info, now)
        if status in (creds.EXPIRED, creds.REJECTED) or (
            status == creds.REFRESH_FAILED and secret.expire_ms and now >= secret.expire_ms
        ):
            old = await self.usable_previous(p.stored, current)
            if old is not None:
                return self._open(old), old
            reason = _EXPIRED_REASONS.get(status, "CREDENTIAL_EXPIRED")
            raise _Blocked(
                reason,
                f"the instance's credential is {_status_name(status)}: rotate it",
            )
        return secret, current

    async def usable_previous(
        self, stored: StoredInstance, current: StoredCredential
    ) -> StoredCredential | None:
        """The version before `current`, when the instance allows falling back to it and it is valid.

        Used for calls whose current credential failed, and for webhook secrets.
        """
        previous = current.info.previous_version
        if not (stored.instance.allow_previous_credential and previous):
            return None
        old = await self.credential_of(stored, previous)
        usable = (creds.ACTIVE, creds.EXPIRING)
        if old is None or old.destroyed or self.vault.status(old.info, self.clock_ms()) not in usable:
            return None
        return old

    async def _refresh(self, stored: StoredInstance, cred: StoredCredential, secret: Secret) -> Secret | None:
        """Refreshes a token now and stores it as a new credential version (once per instance at a time)."""
        inst = stored.instance
        async with self._lock(inst.platform, inst.instance_id):
            fresh = await self.store.instance(inst.platform, inst.instance_id)
            if fresh is not None and fresh.credential_version != cred.version:
                stored.credential_version = fresh.credential_version
                stored.instance.CopyFrom(fresh.instance)
                return None  # someone else refreshed it meanwhile
            try:
                renewed = await self.vault.refreshed(secret, inst.base_url)
            except PlatformFailure as failure:
                await self._mark(cred, creds.REFRESH_FAILED, f"refresh failed: {failure.code}")
                return None
            system = CallContext(tenant_id=inst.tenant_id, principal="system")
            updated = await self._store_rotation(stored, renewed, system, "automatic token refresh")
            stored.instance.CopyFrom(updated.instance)
            stored.credential_version = updated.credential_version
        return renewed

    async def _run_platform(
        self, p: Prepared, *, stream_to: asyncio.Queue[StreamChunk | None] | None = None
    ) -> invocation_pb2.Invocation:
        """Calls the platform with retries, the breaker and credential fallback; finishes the invocation."""
        inv = p.invocation
        inst = p.stored.instance
        policy = inst.retry_policy
        max_attempts = policy.max_attempts or 3
        started = time.monotonic()
        deadline = started + p.timeout_s
        breaker = self.degrade.breaker(inst.tenant_id, inst.platform)
        refreshed = False
        failure: PlatformFailure | None = None
        result: PlatformResult | None = None
        try:
            secret, _ = await self._usable_secret(p)
        except _Blocked as blocked:
            return await self._finish(
                p, FAILED, error=PlatformFailure(blocked.reason, AUTH, blocked.message), stream_to=stream_to
            )
        inv.state = RUNNING
        await self._update(p)
        while True:
            inv.attempts += 1
            if inst.rate_limit.requests_per_second > 0:
                wait = await self.quotas.take(
                    f"out:{inst.tenant_id}:{inst.platform}:{inst.instance_id}", _rule(inst.rate_limit)
                )
                while wait > 0 and time.monotonic() + wait < deadline:
                    await asyncio.sleep(wait)  # then take a token for real: waiting is not having one
                    wait = await self.quotas.take(
                        f"out:{inst.tenant_id}:{inst.platform}:{inst.instance_id}", _rule(inst.rate_limit)
                    )
                if wait > 0:
                    failure = PlatformFailure(
                        "RATE_LIMITED",
                        THROTTLED,
                        "the instance's outbound rate limit is exhausted",
                        retry_after_s=wait,
                    )
                    break
            try:
                client = await self._client(p, secret)
            except PlatformFailure as err:  # no usable token (a JWT app whose mint failed)
                failure = err
                break
            t0 = time.monotonic()
            sent_before = stream_to.qsize() if stream_to is not None else 0
            try:
                remaining = max(0.001, deadline - t0)
                async with asyncio.timeout(remaining):
                    if stream_to is not None:
                        async for item in client.stream(p.call):
                            if isinstance(item, PlatformResult):
                                result = item
                            else:
                                await stream_to.put(item)
                    else:
                        result = await client.run(p.call)
                if result is None:
                    failure = PlatformFailure(
                        "EMPTY_RESPONSE", PERMANENT, "the platform ended the stream without a result"
                    )
            except TimeoutError:
                failure = PlatformFailure(
                    "PLATFORM_TIMEOUT", RETRYABLE, f"the platform did not answer within {p.timeout_s:g} s"
                )
            except PlatformFailure as err:
                failure = err
            latency = time.monotonic() - t0
            if result is not None:
                await self._breaker_record(breaker, inst, SUCCESS, latency)
                failure = None
                break
            assert failure is not None
            await self._breaker_record(
                breaker, inst, FAILURE if failure.counts_for_breaker else IGNORED, latency
            )
            inv.error.CopyFrom(failure.to_proto())
            if failure.error_class == AUTH and refreshed:
                current = await self.credential_of(p.stored)
                if current is not None:
                    await self._mark(current, creds.REJECTED, f"rejected after a refresh: {failure.code}")
            if failure.error_class == AUTH and not refreshed:
                refreshed = True
                try:
                    current = await self.credential_of(p.stored)
                    secret_now = self._open(current) if current is not None else Secret()
                    if secret_now.refreshable:
                        secret, _ = await self._usable_secret(p, force_refresh=True)
                        continue
                    if current is not None:
                        await self._mark(current, creds.REJECTED, f"the platform rejected it: {failure.code}")
                    if inst.allow_previous_credential:
                        secret, _ = await self._usable_secret(p)
                        continue
                except _Blocked:
                    pass
                break
            if failure.error_class not in (RETRYABLE, THROTTLED) or inv.attempts >= max_attempts:
                break
            if stream_to is not None and (
                self._streamed.get(inv.invocation_id, 0) or stream_to.qsize() > sent_before
            ):
                break  # output already reached the caller: a rerun would repeat it
            if not breaker.allow():
                break
            backoff = _backoff(policy, inv.attempts, failure.retry_after_s)
            if time.monotonic() + backoff >= deadline:
                break
            await self._update(p)
            await asyncio.sleep(backoff)
        self.metrics.latency.labels(inst.platform).observe(time.monotonic() - started)
        if result is not None:
            return await self._finish(p, SUCCEEDED, result=result, stream_to=stream_to)
        return await self._finish(p, FAILED, error=failure, stream_to=stream_to)

    async def _breaker_record(
        self, breaker: Any, inst: connector_pb2.ConnectorInstance, outcome: Any, latency: float
    ) -> None:
        before = breaker.state
        breaker.record(outcome, latency)
        after = breaker.state
        if after != before:
            await self.degrade.on_breaker_change(
                inst.tenant_id, inst.platform, after, breaker.reason, self._fallback(inst)
            )
        elif outcome == SUCCESS and after == CLOSED:
            # A probe past another process's automatic switch succeeded: recover it.
            await self.degrade.on_breaker_change(
                inst.tenant_id, inst.platform, CLOSED, "", self._fallback(inst)
            )

    async def _start_async(self, p: Prepared) -> invocation_pb2.Invocation:
        """Starts an asynchronous run: Coze is polled; n8n calls back (signed)."""
        inv = p.invocation
        inst = p.stored.instance
        try:
            secret, _ = await self._usable_secret(p)
        except _Blocked as blocked:
            return await self._finish(p, FAILED, error=PlatformFailure(blocked.reason, AUTH, blocked.message))
        try:
            client = await self._client(p, secret)
        except PlatformFailure as unusable:
            return await self._finish(p, FAILED, error=unusable)
        breaker = self.degrade.breaker(inst.tenant_id, inst.platform)
        t0 = time.monotonic()
        inv.attempts = 1
        try:
            async with asyncio.timeout(p.timeout_s):
                run_id = await client.start(p.call)
        except (TimeoutError, PlatformFailure) as err:
            failure = (
                err
                if isinstance(err, PlatformFailure)
                else PlatformFailure(
                    "PLATFORM_TIMEOUT", RETRYABLE, "the platform did not accept the run in time"
                )
            )
            await self._breaker_record(
                breaker, inst, FAILURE if failure.counts_for_breaker else IGNORED, time.monotonic() - t0
            )
            return await self._finish(p, FAILED, error=failure)
        await self._breaker_record(breaker, inst, SUCCESS, time.monotonic() - t0)
        inv.state = RUNNING
        inv.platform_run_id = run_id
        poll = inst.platform == "coze" and bool(run_id)
        next_poll = self.clock_ms() + int(self.config.poll_interval_s * 1000) if poll else 0
        await self._update(p, next_poll_ms=next_poll)
        if poll:
            self._spawn(self._poll_loop(inv.invocation_id), f"poll-{inv.invocation_id}")
        return inv

    async def _poll_loop(self, invocation_id: str) -> None:
        """Polls one Coze async run until it finishes (claims each poll so one process polls)."""
        interval = self.config.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            done = await self.poll_once(invocation_id)
            if done:
                return
            interval = min(interval * 1.5, _POLL_MAX_S)

    async def poll_once(self, invocation_id: str) -> bool:
        """One poll of an async run; True when the invocation is finished (or gone)."""
        row = await self.store.invocation(invocation_id)
        if row is None or row.invocation.state != RUNNING or not row.next_poll_ms:
            return True
        next_ms = self.clock_ms() + int(_POLL_MAX_S * 1000)
        if not await self.store.claim_poll(invocation_id, row.next_poll_ms, next_ms):
            return False
        inv = row.invocation
        stored = await self.store.instance(inv.platform, inv.instance_id)
        if stored is None or stored.deleted:
            return True
        p = Prepared.resume(
            stored,
            inv,
            CallContext(tenant_id=inv.tenant_id, principal="system"),
            seconds_of(stored.instance.timeout) or _DEFAULT_TIMEOUT_S,
        )
        try:
            secret, _ = await self._usable_secret(p)
            client = await self._client(p, secret)
            result = await client.poll(inv.platform_workflow_id, inv.platform_run_id)
        except _Blocked as blocked:
            await self._finish(p, FAILED, error=PlatformFailure(blocked.reason, AUTH, blocked.message))
            return True
        except PlatformFailure as failure:
            if failure.error_class in (RETRYABLE, THROTTLED):
                await self.store.claim_poll(
                    invocation_id, next_ms, self.clock_ms() + int(self.config.poll_interval_s * 2000)
                )
                return False
            await self._finish(p, FAILED, error=failure)
            return True
        if result is None:
            await self.store.claim_poll(
                invocation_id, next_ms, self.clock_ms() + int(self.config.poll_interval_s * 1000)
            )
            return False
        await self._finish(p, SUCCEEDED, result=result)
        return True

    async def resume_polls(self) -> int:
        """Polls due async runs (after a restart, or ones another process dropped)."""
        count = 0
        for row in await self.store.due_polls(self.clock_ms()):
            if await self.poll_once(row.invocation.invocation_id):
                count += 1
        return count

    async def _degraded(self, p: Prepared, route: tuple[int, str, str]) -> invocation_pb2.Invocation:
        """Answers a call without the platform: a local capability, or a human task."""
        mode, capability, reason = route
        inv = p.invocation
        inv.degrade_mode = mode  # type: ignore[assignment]
        if mode == LOCAL:
            if not capability or self.local_invoke is None:
                return await self._finish(
                    p,
                    FAILED,
                    error=PlatformFailure(
                        "NO_LOCAL_CAPABILITY",
                        PERMANENT,
                        "the platform is degraded to LOCAL but no local capability is configured",
                    ),
                )
            try:
                value = await self.local_invoke(
                    p.ctx, capability, templates.dict_to_struct(p.call.payload), inv.invocation_id
                )
            except MeshError as err:
                return await self._finish(
                    p,
                    FAILED,
                    error=PlatformFailure(
                        "LOCAL_FALLBACK_FAILED", PERMANENT, f"the local capability failed: {err.reason}"
                    ),
                )
            return await self._finish(
                p, DEGRADED_LOCAL, result=PlatformResult(output=templates.value_to_py(value))
            )
        now = self.clock_ms()
        task = degrade_pb2.HumanTask(
            task_id=new_id("task"),
            invocation_id=inv.invocation_id,
            tenant_id=inv.tenant_id,
            platform=inv.platform,
            instance_id=inv.instance_id,
            workflow_id=inv.workflow_id,
            trace_id=inv.trace_id,
            state=TASK_OPEN,
            reason=reason,
        )
        task.context.CopyFrom(inv.context)
        task.create_time.CopyFrom(timestamp_ms(now))
        await self.store.put_human_task(task, now, create=True)
        inv.human_task_id = task.task_id
        inv.state = AWAITING_HUMAN
        await self._update(p)
        self.audit(
            p.ctx,
            inv.tenant_id,
            "connector.human_task.open",
            f"{inv.platform}/{inv.instance_id}",
            "OPEN",
            invocation_id=inv.invocation_id,
            task_id=task.task_id,
            reason=reason,
        )
        return inv

    async def _update(self, p: Prepared, *, next_poll_ms: int = 0) -> bool:
        inv = p.invocation
        now = self.clock_ms()
        inv.update_time.CopyFrom(timestamp_ms(now))
        inv.latency.CopyFrom(duration_s((now - inv.create_time.ToMilliseconds()) / 1000))
        return await self.store.update_invocation(StoredInvocation(inv, "", 0, next_poll_ms), now)

    async def _finish(
        self,
        p: Prepared,
        state: int,
        *,
        result: PlatformResult | None = None,
        error: PlatformFailure | None = None,
        stream_to: asyncio.Queue[StreamChunk | None] | None = None,
    ) -> invocation_pb2.Invocation:
        """Writes the terminal state once (a concurrent finisher wins only if first), audits, counts."""
        inv = p.invocation
        inst = p.stored.instance
        try:
            inv.state = state  # type: ignore[assignment]
            if result is not None:
                out = result.output
                if inst.HasField("output_template") and state == SUCCEEDED:
                    out = templates.render_output(inst.output_template, out)
                inv.result.CopyFrom(templates.py_to_value(templates.mask(out, p.sensitive)))
                inv.platform_run_id = result.run_id or inv.platform_run_id
                inv.debug_url = result.debug_url or inv.debug_url
                inv.ClearField("error")
            if error is not None:
                inv.error.CopyFrom(error.to_proto())
            now = self.clock_ms()
            inv.complete_time.CopyFrom(timestamp_ms(now))
            written = await self._update(p)
            if not written:  # finished elsewhere (cancelled, or a callback): report what is stored
                row = await self.store.invocation(inv.invocation_id)
                if row is not None:
                    inv.CopyFrom(row.invocation)
                return inv
            outcome = _state_name(state)
            self.metrics.finished(inv.platform, outcome)
            latency_s = (now - inv.create_time.ToMilliseconds()) / 1000
            if latency_s > 3.0 and inv.mode == SYNC:
                log.warning(
                    "invocation %s of %s/%s took %.1f s (seed alert: > 3 s)",
                    inv.invocation_id,
                    inv.platform,
                    inv.instance_id,
                    latency_s,
                    extra={"tenant": inv.tenant_id, "alert": "platform.latency"},
                )
            self.audit(
                p.ctx,
                inv.tenant_id,
                "connector.invoke.finish",
                f"{inv.platform}/{inv.instance_id}",
                outcome,
                invocation_id=inv.invocation_id,
                attempts=inv.attempts,
                error=inv.error.code if error else "",
                degrade_mode=degrade_pb2.DegradeMode.Name(inv.degrade_mode or OFF),
            )
            return inv
        finally:
            if stream_to is not None:
                await stream_to.put(None)
            event = self._finished.pop(inv.invocation_id, None)
            if event is not None:
                event.set()

    # ---- invocations: read and cancel --------------------------------------------------------------

    async def invocation_of(self, tenant: str, platform: str, invocation_id: str) -> StoredInvocation:
        """A tenant's invocation of a platform, or NOT_FOUND."""
        v = Violations()
        v.text(invocation_id, "invocation_id", max_len=64, required=True)
        v.raise_if_any("invalid invocation id")
        row = await self.store.invocation(invocation_id)
        if row is None or row.invocation.tenant_id != tenant or row.invocation.platform != platform:
            raise NotFound(f"invocation {invocation_id} not found", reason="INVOCATION_NOT_FOUND")
        return row

    async def get_invocation(
        self, req: svc.GetInvocationRequest, ctx: CallContext
    ) -> svc.GetInvocationResponse:
        """One invocation."""
        tenant = require_tenant(ctx)
        row = await self.invocation_of(tenant, check_platform(req.platform), req.invocation_id)
        return svc.GetInvocationResponse(invocation=row.invocation)

    async def list_invocations(
        self, req: svc.ListInvocationsRequest, ctx: CallContext
    ) -> svc.ListInvocationsResponse:
        """A tenant's invocations, newest first."""
        tenant = require_tenant(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        v.check(req.state in invocation_pb2.InvocationState.values(), "state", "is not a known state")
        if req.instance_id:
            v.pattern(req.instance_id, "instance_id", validation.INSTANCE_ID, "an instance id")
        v.text(req.workflow_id, "workflow_id", max_len=128)
        v.text(req.trace_id, "trace_id", max_len=64)
        v.raise_if_any("invalid filter")
        filters = [tenant, platform, req.state, req.instance_id, req.workflow_id, req.trace_id]
        page = page_request(req.page_size, req.page_token, filters)
        rows = await self.store.list_invocations(
            tenant,
            platform,
            page,
            state=req.state,
            instance_id=req.instance_id,
            workflow_id=req.workflow_id,
            trace_id=req.trace_id,
        )
        resp = svc.ListInvocationsResponse(invocations=rows[: page.size])
        if len(rows) > page.size:
            last = rows[page.size - 1]
            resp.next_page_token = next_page_token(
                [last.create_time.ToMilliseconds(), last.invocation_id], filters
            )
        return resp

    async def cancel_invocation(
        self, req: svc.CancelInvocationRequest, ctx: CallContext
    ) -> svc.CancelInvocationResponse:
        """Cancels an unfinished invocation (and its human task)."""
        tenant = require_tenant(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        v.text(req.reason, "reason", max_len=_MAX_REASON)
        v.raise_if_any("invalid cancel")
        row = await self.invocation_of(tenant, platform, req.invocation_id)
        if row.invocation.state in TERMINAL_STATES or not await self._cancel(row, ctx, req.reason):
            raise FailedPrecondition(
                f"invocation {req.invocation_id} has finished ({_state_name(row.invocation.state)})",
                reason="INVOCATION_FINISHED",
            )
        fresh = await self.store.invocation(req.invocation_id)
        return svc.CancelInvocationResponse(invocation=fresh.invocation if fresh else row.invocation)

    async def _cancel(self, row: StoredInvocation, ctx: CallContext, reason: str) -> bool:
        inv = row.invocation
        now = self.clock_ms()
        inv.state = CANCELLED
        inv.update_time.CopyFrom(timestamp_ms(now))
        inv.complete_time.CopyFrom(timestamp_ms(now))
        inv.error.CopyFrom(
            invocation_pb2.PlatformError(
                code="CANCELLED", error_class=PERMANENT, message=reason or "cancelled"
            )
        )
        if not await self.store.update_invocation(StoredInvocation(inv, "", 0, 0), now):
            return False
        if inv.human_task_id:
            task = await self.store.human_task(inv.tenant_id, inv.human_task_id)
            if task is not None and task.state in (TASK_OPEN, TASK_CLAIMED):
                expected = task.state
                task.state = TASK_CANCELLED
                task.complete_time.CopyFrom(timestamp_ms(now))
                await self.store.put_human_task(task, now, expect_state=expected)
        event = self._finished.pop(inv.invocation_id, None)
        if event is not None:
            event.set()
        self.audit(
            ctx,
            inv.tenant_id,
            "connector.invoke.cancel",
            f"{inv.platform}/{inv.instance_id}",
            "CANCELLED",
            invocation_id=inv.invocation_id,
            reason=reason,
        )
        return True

    # ---- degradation and human tasks ------------------------------------------------------------------

    def _tenant_for(self, ctx: CallContext, given: str) -> str:
        tenant = require_tenant(ctx)
        if given and given != tenant:
            raise PermissionDenied("a call may act only for the caller's tenant", reason="TENANT_MISMATCH")
        return tenant

    async def set_degrade(
        self, req: svc.SetDegradeModeRequest, ctx: CallContext
    ) -> svc.SetDegradeModeResponse:
        """Sets the degrade switch of a platform for the caller's tenant."""
        tenant = self._tenant_for(ctx, req.tenant)
        require_manage(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        v.check(req.mode in (OFF, LOCAL, HUMAN), "mode", "must be OFF, LOCAL or HUMAN")
        timeout_s = seconds_of(req.timeout)
        v.check(0 <= timeout_s <= 7 * 86400, "timeout", "must be between 0 and 7 days")
        v.text(req.reason, "reason", max_len=_MAX_REASON)
        v.text(req.local_capability_id, "local_capability_id", max_len=255)
        v.raise_if_any("invalid degrade switch")
        state = await self.degrade.set(
            tenant,
            platform,
            req.mode,
            reason=req.reason,
            actor=ctx.principal,
            automatic=False,
            timeout_ms=int(timeout_s * 1000),
            local_capability_id=req.local_capability_id,
        )
        return svc.SetDegradeModeResponse(state=state)

    async def get_degrade(
        self, req: svc.GetDegradeStateRequest, ctx: CallContext
    ) -> svc.GetDegradeStateResponse:
        """The switch in force for the caller's tenant."""
        tenant = self._tenant_for(ctx, req.tenant)
        platform = check_platform(req.platform)
        return svc.GetDegradeStateResponse(state=await self.degrade.state(tenant, platform))

    async def degrade_history(
        self, req: svc.ListDegradeHistoryRequest, ctx: CallContext
    ) -> svc.ListDegradeHistoryResponse:
        """Changes of the switch, newest first."""
        tenant = self._tenant_for(ctx, req.tenant)
        platform = check_platform(req.platform)
        v = Violations()
        since = v.timestamp_ms(req.start_time, "start_time") if req.HasField("start_time") else 0
        v.raise_if_any("invalid degrade history request")
        filters = [tenant, platform, since]
        page = page_request(req.page_size, req.page_token, filters)
        rows = await self.store.degrade_history(tenant, platform, page, since)
        resp = svc.ListDegradeHistoryResponse(states=[s for _, s in rows[: page.size]])
        if len(rows) > page.size:
            resp.next_page_token = next_page_token([rows[page.size - 1][0]], filters)
        return resp

    async def list_human_tasks(
        self, req: svc.ListHumanTasksRequest, ctx: CallContext
    ) -> svc.ListHumanTasksResponse:
        """The tenant's human tasks, oldest first."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.check(req.state in degrade_pb2.HumanTaskState.values(), "state", "is not a known state")
        if req.platform:
            validation.check_platform(v, req.platform)
        v.text(req.assignee, "assignee", max_len=255)
        v.raise_if_any("invalid filter")
        filters = [tenant, req.state, req.platform, req.assignee]
        page = page_request(req.page_size, req.page_token, filters)
        rows = await self.store.human_tasks(
            tenant, page, state=req.state, platform=req.platform, assignee=req.assignee
        )
        resp = svc.ListHumanTasksResponse(tasks=rows[: page.size])
        if len(rows) > page.size:
            last = rows[page.size - 1]
            resp.next_page_token = next_page_token([last.create_time.ToMilliseconds(), last.task_id], filters)
        return resp

    async def _task(self, tenant: str, task_id: str) -> degrade_pb2.HumanTask:
        v = Violations()
        v.pattern(task_id, "task_id", _TASK_ID, "a task id", required=True)
        v.raise_if_any("invalid task id")
        task = await self.store.human_task(tenant, task_id)
        if task is None:
            raise NotFound(f"human task {task_id} not found", reason="TASK_NOT_FOUND")
        return task

    async def claim_human_task(
        self, req: svc.ClaimHumanTaskRequest, ctx: CallContext
    ) -> svc.ClaimHumanTaskResponse:
        """Claims an open task for the caller."""
        tenant = require_tenant(ctx)
        task = await self._task(tenant, req.task_id)
        if task.state == TASK_CLAIMED and task.assignee == ctx.principal:
            return svc.ClaimHumanTaskResponse(task=task)
        if task.state != TASK_OPEN:
            raise FailedPrecondition(
                f"task {req.task_id} is {_task_state_name(task.state)}"
                + (f" by {task.assignee}" if task.assignee else ""),
                reason="TASK_NOT_OPEN",
            )
        now = self.clock_ms()
        task.state, task.assignee = TASK_CLAIMED, ctx.principal
        task.claim_time.CopyFrom(timestamp_ms(now))
        if not await self.store.put_human_task(task, now, expect_state=TASK_OPEN):
            raise FailedPrecondition(
                f"task {req.task_id} was claimed by someone else", reason="TASK_NOT_OPEN"
            )
        self.audit(
            ctx,
            tenant,
            "connector.human_task.claim",
            f"{task.platform}/{task.instance_id}",
            "CLAIMED",
            task_id=task.task_id,
        )
        return svc.ClaimHumanTaskResponse(task=task)

    async def complete_human_task(
        self, req: svc.CompleteHumanTaskRequest, ctx: CallContext
    ) -> svc.CompleteHumanTaskResponse:
        """Completes a task with an answer, which finishes its invocation as SUCCEEDED."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.check(req.HasField("answer"), "answer", "is required")
        v.check(
            req.answer.ByteSize() <= _MAX_ANSWER_BYTES, "answer", f"is larger than {_MAX_ANSWER_BYTES} bytes"
        )
        v.text(req.note, "note", max_len=_MAX_REASON)
        v.raise_if_any("invalid completion")
        task = await self._task(tenant, req.task_id)
        if task.state not in (TASK_OPEN, TASK_CLAIMED):
            raise FailedPrecondition(f"task {req.task_id} is not open", reason="TASK_NOT_OPEN")
        if task.state == TASK_CLAIMED and task.assignee != ctx.principal:
            raise FailedPrecondition(
                f"task {req.task_id} is claimed by {task.assignee}", reason="TASK_CLAIMED_BY_OTHER"
            )
        now = self.clock_ms()
        expected = task.state
        task.state = TASK_COMPLETED
        task.assignee = task.assignee or ctx.principal
        task.answer.CopyFrom(req.answer)
        task.note = req.note
        task.complete_time.CopyFrom(timestamp_ms(now))
        if not await self.store.put_human_task(task, now, expect_state=expected):
            raise FailedPrecondition(f"task {req.task_id} changed meanwhile", reason="TASK_NOT_OPEN")
        row = await self.store.invocation(task.invocation_id)
        assert row is not None
        stored = await self.store.instance(task.platform, task.instance_id)
        p = Prepared.resume(
            stored or StoredInstance(connector_pb2.ConnectorInstance(), 0, "", ""), row.invocation, ctx
        )
        inv = await self._finish(
            p, SUCCEEDED, result=PlatformResult(output=templates.value_to_py(req.answer))
        )
        if self.on_human_answer is not None:
            await self.on_human_answer(inv, task)
        self.audit(
            ctx,
            tenant,
            "connector.human_task.complete",
            f"{task.platform}/{task.instance_id}",
            "COMPLETED",
            task_id=task.task_id,
            invocation_id=inv.invocation_id,
        )
        return svc.CompleteHumanTaskResponse(task=task, invocation=inv)

    on_human_answer: Callable[[invocation_pb2.Invocation, degrade_pb2.HumanTask], Awaitable[None]] | None = (
        None
    )

    # ---- flags, platform reads ------------------------------------------------------------------------

    async def list_flags(
        self, req: svc.ListFeatureFlagsRequest, ctx: CallContext
    ) -> svc.ListFeatureFlagsResponse:
        """Flags with their state for the caller's tenant, by name."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.text(req.name_prefix, "name_prefix", max_len=128)
        v.raise_if_any("invalid filter")
        filters = [req.name_prefix]
        page = page_request(req.page_size, req.page_token, filters)
        after = str(page.after[0]) if page.after else ""
        flags = [
            f for f in self.flags().list(tenant) if f.name.startswith(req.name_prefix) and f.name > after
        ]
        flags.sort(key=lambda f: f.name)
        resp = svc.ListFeatureFlagsResponse(flags=flags[: page.size])
        if len(flags) > page.size:
            resp.next_page_token = next_page_token([flags[page.size - 1].name], filters)
        return resp

    async def _probe_client(self, stored: StoredInstance) -> PlatformClient:
        p = Prepared.resume(
            stored, invocation_pb2.Invocation(), CallContext(), seconds_of(stored.instance.timeout) or 10.0
        )
        try:
            secret, _ = await self._usable_secret(p)
        except _Blocked as blocked:
            raise FailedPrecondition(blocked.message, reason=blocked.reason) from None
        return await self._client(p, secret)

    async def list_workflows(
        self, req: svc.ListPlatformWorkflowsRequest, ctx: CallContext
    ) -> svc.ListPlatformWorkflowsResponse:
        """Workflows the instance can reach (n8n: its REST API; Coze: the mapped ones)."""
        tenant = require_tenant(ctx)
        platform = check_platform(req.platform)
        stored = await self.instance_of(tenant, platform, req.instance_id)
        inst = stored.instance
        filters = [tenant, platform, req.instance_id, req.active_only]
        page = page_request(req.page_size, req.page_token, filters)
        aliases: dict[str, list[str]] = {}
        for alias, wf in inst.workflow_ids.items():
            aliases.setdefault(wf, []).append(alias)
        out: list[connector_pb2.PlatformWorkflow] = []
        if platform == "coze":
            for wf_id, names in sorted(aliases.items()):
                out.append(
                    connector_pb2.PlatformWorkflow(
                        workflow_id=wf_id, name=names[0], active=True, aliases=sorted(names)
                    )
                )
        else:
            client = await self._probe_client(stored)
            try:
                infos = await client.list_workflows(req.active_only)
            except PlatformFailure as failure:
                raise FailedPrecondition(
                    f"the platform refused the listing: {failure.code}", reason=failure.code
                ) from None
            for info in infos:
                found = connector_pb2.PlatformWorkflow(
                    workflow_id=info.workflow_id,
                    name=info.name,
                    active=info.active,
                    webhook_paths=list(info.webhook_paths),
                    tags=list(info.tags),
                )
                found.aliases.extend(
                    sorted(
                        {a for p in info.webhook_paths for a in aliases.get(p, [])}
                        | set(aliases.get(info.workflow_id, []))
                    )
                )
                if info.update_time_ms:
                    found.update_time.CopyFrom(timestamp_ms(info.update_time_ms))
                out.append(found)
            out.sort(key=lambda w: w.workflow_id)
        after = str(page.after[0]) if page.after else ""
        out = [w for w in out if w.workflow_id > after]
        resp = svc.ListPlatformWorkflowsResponse(workflows=out[: page.size])
        if len(out) > page.size:
            resp.next_page_token = next_page_token([out[page.size - 1].workflow_id], filters)
        return resp

    async def check_health(
        self, req: svc.CheckPlatformHealthRequest, ctx: CallContext
    ) -> svc.CheckPlatformHealthResponse:
        """Probes the platform with the instance's credential now."""
        tenant = require_tenant(ctx)
        platform = check_platform(req.platform)
        stored = await self.instance_of(tenant, platform, req.instance_id)
        resp = svc.CheckPlatformHealthResponse()
        cred = await self.credential_of(stored)
        now = self.clock_ms()
        status = self.vault.status(cred.info, now) if cred else connector_pb2.CREDENTIAL_STATUS_UNSPECIFIED
        resp.credential_status = status  # type: ignore[assignment]
        resp.breaker_state = (await self.degrade.state(tenant, platform)).breaker_state
        resp.check_time.CopyFrom(timestamp_ms(now))
        t0 = time.monotonic()
        try:
            client = await self._probe_client(stored)
            await client.check()
        except FailedPrecondition as err:
            resp.health = common_pb2.HEALTH_STATE_UNREACHABLE
            resp.message = err.message
        except PlatformFailure as failure:
            resp.error.CopyFrom(failure.to_proto())
            resp.health = (
                common_pb2.HEALTH_STATE_WARNING
                if failure.error_class == THROTTLED
                else common_pb2.HEALTH_STATE_UNREACHABLE
            )
            resp.message = failure.message
        else:
            elapsed = time.monotonic() - t0
            resp.health = (
                common_pb2.HEALTH_STATE_WARNING if elapsed > 3.0 else common_pb2.HEALTH_STATE_HEALTHY
            )
            resp.message = "slow answer" if elapsed > 3.0 else "ok"
        resp.latency.CopyFrom(duration_s(time.monotonic() - t0))
        self.audit(
            ctx,
            tenant,
            "connector.health",
            f"{platform}/{req.instance_id}",
            common_pb2.HealthState.Name(resp.health),
        )
        return resp

    # ---- background ------------------------------------------------------------------------------------

    async def credential_sweep(self) -> None:
        """Re-wraps sealed credentials under the active key, refreshes due tokens, alerts on expiry."""
        now = self.clock_ms()
        for cred in await self.store.live_credentials():
            try:
                if cred.sealed and self.vault.keyring.needs_rewrap(_sealed(cred)):
                    # Every kept version, not only the current one: rollback and fallback need them too.
                    cred.sealed = self.vault.keyring.rewrap(_sealed(cred)).to_json().encode()
                    cred.key_id = self.vault.keyring.active_key_id
                    cred.info.key_id = cred.key_id
                    await self.store.update_credential(cred)
            except CredentialDecryptError:
                log.error(  # noqa: TRY400 - no stack: the key ring lacks this version's key
                    "credential %s of %s/%s cannot be re-wrapped: its key %s is not configured",
                    cred.version,
                    cred.platform,
                    cred.instance_id,
                    cred.key_id,
                    extra={"tenant": cred.tenant_id, "alert": "platform.credential.key_missing"},
                )
                continue
            stored = await self.store.instance(cred.platform, cred.instance_id)
            if stored is None or stored.deleted or stored.credential_version != cred.version:
                continue
            status = self.vault.status(cred.info, now)
            secret = self._open(cred)
            if self.vault.needs_refresh(secret, now) and status != creds.REJECTED:
                await self._refresh(stored, cred, secret)
                continue
            if status in (creds.EXPIRING, creds.EXPIRED) and cred.info.status != status:
                await self._mark(
                    cred,
                    status,
                    "expires soon: rotate it"
                    if status == creds.EXPIRING
                    else "expired: calls are blocked until it is rotated",
                )


class _Blocked(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _sealed(cred: StoredCredential) -> Sealed:
    return Sealed.from_json(cred.sealed)


def _rule(rate: connector_pb2.RateLimit) -> QuotaRule:
    burst = rate.burst or max(1, int(-(-rate.requests_per_second // 1)))
    return QuotaRule(rate=rate.requests_per_second, burst=float(burst))


def _backoff(policy: connector_pb2.RetryPolicy, attempt: int, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, at least what the platform asked for."""
    initial = seconds_of(policy.initial_backoff) or 0.2
    cap = seconds_of(policy.max_backoff) or 10.0
    factor = policy.backoff_multiplier or 2.0
    ceiling = min(cap, initial * factor ** (attempt - 1))
    delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret
    return max(delay, retry_after or 0.0)


def _no_call() -> PlatformCall:
    return PlatformCall("", "", {}, "", "", "", 0.0)


def _status_name(status: int) -> str:
    return connector_pb2.CredentialStatus.Name(status).removeprefix("CREDENTIAL_STATUS_").lower()


def _task_state_name(state: int) -> str:
    return degrade_pb2.HumanTaskState.Name(state).removeprefix("HUMAN_TASK_STATE_").lower()


def _state_name(state: int) -> str:
    return invocation_pb2.InvocationState.Name(state).removeprefix("INVOCATION_STATE_")


def _differs(a: connector_pb2.ConnectorInstance, b: connector_pb2.ConnectorInstance, name: str) -> bool:
    """Whether two instances differ in one field (a field mask copies it the same way for both)."""
    x, y = connector_pb2.ConnectorInstance(), connector_pb2.ConnectorInstance()
    mask = field_mask_pb2.FieldMask(paths=[name])
    mask.MergeMessage(a, x)
    mask.MergeMessage(b, y)
    return x != y
