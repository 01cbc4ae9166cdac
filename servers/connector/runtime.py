"""Wiring of the connector service into a mesh process: its parts, its configuration files, its loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from powerx.connector.v1 import degrade_pb2
from powerx.router.v1 import router_service_pb2 as rt_pb
from router.audit import AuditLog
from servers.agent.security import LocalQuotas, QuotaRule, Quotas, RedisQuotas
from servers.auth.audit import Auditor
from servers.auth.permissions import Kind
from servers.common.bus import EventBus
from servers.common.context import CallContext
from servers.common.errors import MeshError
from servers.common.settings import Settings
from servers.connector import templates
from servers.connector.breaker import BreakerConfig
from servers.connector.config_files import ConfigError, ConfigWatcher, LoadedConfig, load_config
from servers.connector.credentials import Vault
from servers.connector.crypto import KeyRing
from servers.connector.degrade import DegradeControl
from servers.connector.flags import FlagSet
from servers.connector.metrics import ConnectorMetrics
from servers.connector.service import AuditEntry, ConnectorConfig, ConnectorService, LocalInvoke
from servers.connector.store import ConnectorStore
from servers.connector.webhooks import DatabaseReplay, RedisReplay, ReplayMemory, WebhookIntake

log = logging.getLogger("powerx.connector")
# Outcomes of connector events that count as failures in the audit log's stats.
FAILED_OUTCOMES = frozenset({"FAILED", "TIMED_OUT", "CANCELLED", "REJECTED", "ERROR", "DEAD"})
CONFIG_ACTOR = "config"


@dataclass
class ConnectorRuntime:
    """The connector parts of one mesh process."""

    service: ConnectorService
    webhooks: WebhookIntake
    audit_log: AuditLog  # the mesh's one audit log (the mesh starts and closes it)
    watcher: ConfigWatcher | None = None
    flags: FlagSet = field(default_factory=FlagSet)
    config_error: str = ""

    async def apply(self, loaded: LoadedConfig) -> None:
        """Applies a loaded configuration: the flags and the declared instances.

        Declared instances are created, updated when their file changed, and disabled when their file
        no longer declares them. An instance created through the API is never overwritten by a file.
        """
        self.flags = FlagSet(loaded.flags) if loaded.flags_file else FlagSet()
        svc = self.service
        ctx = CallContext(principal=CONFIG_ACTOR)
        declared = {(d.platform, d.instance_id) for d in loaded.instances}
        for d in loaded.instances:
            ctx_t = CallContext(tenant_id=d.tenant, principal=CONFIG_ACTOR, trace_id=ctx.trace_id)
            existing = await svc.store.instance(d.platform, d.instance_id)
            try:
                if existing is None or existing.deleted:
                    await svc.create_stored(
                        d.tenant,
                        d.platform,
                        d.instance_id,
                        d.instance,
                        ctx_t,
                        reason=f"declared in {d.source}",
                        source=f"file:{d.source}",
                        digest=d.digest,
                    )
                elif existing.source == "api" or existing.instance.tenant_id != d.tenant:
                    log.error(
                        "%s declares %s/%s, which exists and is managed through the API; the file entry "
                        "is ignored",
                        d.source,
                        d.platform,
                        d.instance_id,
                    )
                elif existing.digest != d.digest:
                    await svc.redeclare(
                        existing, d.instance, ctx_t, source=f"file:{d.source}", digest=d.digest
                    )
            except MeshError as err:
                log.error(  # noqa: TRY400 - a configuration problem, not a bug: no stack trace
                    "%s: instance %s/%s: %s", d.source, d.platform, d.instance_id, err.message
                )
        for existing in await svc.store.declared_instances():
            inst = existing.instance
            if (inst.platform, inst.instance_id) not in declared and inst.enabled:
                await svc.disable_declared(
                    existing, CallContext(tenant_id=inst.tenant_id, principal=CONFIG_ACTOR)
                )


def build(
    settings: Settings,
    engine: AsyncEngine,
    bus: EventBus,
    registry: CollectorRegistry,
    *,
    local_invoke: LocalInvoke | None,
    edge_url: str,
    auditor: Auditor,
) -> ConnectorRuntime:
    """Creates the connector parts (nothing runs until `start`); events go to the mesh's audit log."""
    store = ConnectorStore(engine)
    metrics = ConnectorMetrics(registry)
    keyring = KeyRing.load(settings.connector_keys, settings.data_dir)
    vault = Vault(keyring, warning_s=settings.connector_credential_warning_s, refresh_margin_s=300.0)

    def audit(entry: AuditEntry) -> None:
        auditor.event(
            tenant_id=entry.tenant_id,
            actor=entry.actor,
            action=entry.action,
            resource=entry.scope,
            outcome=entry.outcome,
            ok=entry.outcome not in FAILED_OUTCOMES if entry.ok is None else entry.ok,
            summary=templates.mask(dict(entry.summary), ()),
            trace_id=entry.trace_id,
            request_id=entry.request_id,
            kind=Kind.INVOCATION if entry.action.startswith("connector.invoke") else Kind.MUTATION,
        )

    async def audit_degrade(state: degrade_pb2.DegradeState, actor: str) -> None:
        audit(
            AuditEntry(
                state.tenant_id,
                actor,
                "",
                "",
                "connector.degrade",
                state.platform,
                degrade_pb2.DegradeMode.Name(state.mode),
                {
                    "reason": state.reason,
                    "automatic": state.automatic,
                    "breaker": degrade_pb2.BreakerState.Name(state.breaker_state),
                },
            )
        )

    quotas: Quotas
    replay_redis = None
    if settings.redis_url:
        replay_redis = aioredis.from_url(settings.redis_url)
        quotas = RedisQuotas(replay_redis, prefix="powerx:connector:quota:")
    else:
        quotas = LocalQuotas()
    breaker = (
        BreakerConfig.parse(settings.connector_breaker) if settings.connector_breaker else BreakerConfig()
    )
    degrade = DegradeControl(
        store, bus, metrics, breaker, clock_ms=lambda: int(time.time() * 1000), audit=audit_degrade
    )
    holder: dict[str, ConnectorRuntime] = {}
    config = ConnectorConfig(
        public_base_url=settings.public_url or edge_url,
        max_body_bytes=settings.connector_webhook_max_bytes,
        webhook_rate=QuotaRule.parse(settings.connector_webhook_rate, "POWERX_CONNECTOR_WEBHOOK_RATE"),
    )
    service = ConnectorService(
        store,
        bus,
        vault,
        metrics,
        degrade,
        flags=lambda: holder["rt"].flags,
        audit=audit,
        config=config,
        quotas=quotas,
        local_invoke=local_invoke,
    )
    replay: ReplayMemory = RedisReplay(replay_redis) if replay_redis is not None else DatabaseReplay(service)
    webhooks = WebhookIntake(service, replay)
    rt = ConnectorRuntime(service, webhooks, auditor.log)
    rt._redis = replay_redis  # type: ignore[attr-defined]
    holder["rt"] = rt
    return rt


async def start(rt: ConnectorRuntime, settings: Settings, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Loads the configuration files and starts the background loops.

    A bad file at start is logged and skipped, like a bad reload.
    """
    try:
        loaded = await asyncio.to_thread(load_config, settings.config_root)
    except ConfigError as err:
        rt.config_error = str(err)
        log.error("connector configuration rejected, running without it: %s", err)  # noqa: TRY400
        loaded = None
    if loaded is not None:
        await rt.apply(loaded)
    rt.watcher = ConfigWatcher(
        settings.config_root, rt.apply, poll_s=settings.connector_config_poll_s, current=loaded
    )
    svc = rt.service

    async def every(interval: float, fn: Callable[[], Awaitable[Any]], name: str) -> None:
        while not stop.is_set():
            try:
                await fn()
            except Exception:
                log.exception("connector %s failed", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def expire_keys() -> None:
        await svc.store.expire_replay_keys(svc.clock_ms())

    def gauge() -> None:
        for platform, n in svc.degrade.degraded_counts().items():
            svc.metrics.degraded.labels(platform).set(n)

    async def degrade_tick() -> None:
        await svc.degrade.expire()
        gauge()

    return [
        asyncio.create_task(rt.watcher.run(stop), name="connector-config"),
        asyncio.create_task(rt.webhooks.run_outbox(stop), name="connector-outbox"),
        asyncio.create_task(svc.degrade.follow(stop), name="connector-degrade-follow"),
        asyncio.create_task(every(1.0, degrade_tick, "degrade sweep"), name="connector-degrade"),
        asyncio.create_task(every(2.0, svc.resume_polls, "poll sweep"), name="connector-polls"),
        asyncio.create_task(
            every(30.0, svc.credential_sweep, "credential sweep"), name="connector-credentials"
        ),
        asyncio.create_task(every(60.0, expire_keys, "replay key expiry"), name="connector-replay"),
    ]


async def close(rt: ConnectorRuntime) -> None:
    """Stops background work and flushes the audit log."""
    await rt.service.close()
    redis = getattr(rt, "_redis", None)
    if redis is not None:
        await redis.aclose()


def router_local_invoke(router: Any) -> LocalInvoke:
    """LOCAL degradation through the router: the capability answers with the workflow's input."""

    async def call(ctx: CallContext, capability_id: str, arguments: struct_pb2.Struct, key: str) -> Any:
        resp = await router.invoke(
            rt_pb.InvokeRequest(capability_id=capability_id, arguments=arguments, idempotency_key=key), ctx
        )
        return resp.result

    return call
