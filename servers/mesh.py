"""Wiring: one grpc.aio server hosting every mesh service, health, reflection, storage and the bus."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import SpanProcessor
from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from powerx.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from powerx.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from powerx.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from powerx.auth.v1 import auth_service_pb2 as auth_pb2
from powerx.common.v1 import common_pb2
from powerx.connector.v1 import connector_service_pb2, connector_service_pb2_grpc
from powerx.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from powerx.router.v1 import router_service_pb2, router_service_pb2_grpc
from router.audit import AuditLog
from router.health import HealthMonitor, default_rules, parse_rule
from router.metrics import RouterMetrics
from router.outlier import OutlierConfig, StatsTable
from router.service import RouterConfig, RouterService
from router.servicer import RouterServicer
from router.snapshot import RouteSnapshot, SnapshotFollower
from router.transports.agent import AgentTransport
from router.transports.base import Transport
from router.transports.grpc import GrpcTransport
from router.transports.http import HttpTransport
from router.transports.mcp import McpTransport
from servers.agent.a2a_external import A2ARunner
from servers.agent.a2a_server import A2AServer
from servers.agent.a2a_server import base_url as a2a_base_url
from servers.agent.a2a_server import bind as a2a_bind
from servers.agent.dispatch import AgentDispatch
from servers.agent.metrics import AgentMetrics
from servers.agent.security import (
    NonceMemory,
    QuotaRule,
    Quotas,
    RedisNonces,
    RedisQuotas,
    TokenSigner,
    load_secret,
)
from servers.agent.service import AgentConfig, AgentService
from servers.agent.servicer import AgentServicer
from servers.agent.store import AgentStore
from servers.auth import keys
from servers.auth.audit import Auditor
from servers.auth.gate import AgentClaims, Gate
from servers.auth.keys import KeyCache
from servers.auth.service import AuditService, AuthService
from servers.auth.servicer import AuditServicer, AuthServicer
from servers.auth.store import AuthStore, KeyRow, audit_log_t
from servers.common.bus import EventBus, make_bus
from servers.common.context import CallContext
from servers.common.db import create_engine, migrate
from servers.common.interceptor import ContextInterceptor, Guard
from servers.common.settings import Settings, parse_overrides
from servers.common.telemetry import Tracing
from servers.common.telemetry import setup as setup_tracing
from servers.connector import runtime as connector_runtime
from servers.connector.servicer import ConnectorServicer
from servers.registry.service import RegistryService, lease_sweeper
from servers.registry.servicer import RegistryServicer
from servers.registry.store import RegistryStore

log = logging.getLogger("powerx.mesh")


def _agent_service(
    settings: Settings,
    engine: AsyncEngine,
    bus: EventBus,
    registry: RegistryService,
    metrics: CollectorRegistry,
    *,
    a2a_base_url: str,
) -> AgentService:
    config = AgentConfig(
        default_heartbeat_s=settings.agent_heartbeat_s,
        default_run_timeout_s=settings.agent_run_timeout_s,
        require_signed_manifests=settings.agent_require_signed,
        agent_quota=QuotaRule.parse(settings.agent_quota, "POWERX_AGENT_QUOTA"),
        tenant_quota=QuotaRule.parse(settings.tenant_run_quota, "POWERX_TENANT_RUN_QUOTA"),
        a2a_base_url=a2a_base_url,
    )
    quotas: Quotas | None = None
    nonces: NonceMemory | None = None
    if settings.redis_url:
        import redis.asyncio as aioredis  # noqa: PLC0415 (only with Redis)

        client = aioredis.from_url(settings.redis_url)
        quotas, nonces = RedisQuotas(client), RedisNonces(client)
    return AgentService(
        AgentStore(engine),
        bus,
        registry,
        TokenSigner(load_secret(settings.agent_token_secret, settings.data_dir)),
        config=config,
        quotas=quotas,
        nonces=nonces,
        metrics=lambda counts: AgentMetrics(metrics, counts),
    )


async def _bootstrap_key(store: AuthStore, settings: Settings) -> None:
    """Registers POWERX_BOOTSTRAP_API_KEY as an operator key unless its id is known (even if revoked)."""
    raw = settings.bootstrap_api_key
    if not raw:
        return
    key_id = keys.parse(raw)
    if key_id is None:
        raise ValueError("POWERX_BOOTSTRAP_API_KEY must look like pxk_<16 hex digits>_<32-64 characters>")
    if await store.key(key_id) is not None:
        return
    now = int(time.time() * 1000)
    with contextlib.suppress(IntegrityError):  # another process registered it first
        await store.insert_key(
            KeyRow(
                key_id=key_id,
                tenant_id=keys.ALL_TENANTS,
                name="bootstrap",
                key_hash=keys.key_hash(raw),
                scopes=("*",),
                status=keys.ACTIVE,
                status_reason="",
                created_by="system:bootstrap",
                created_ms=now,
                updated_ms=now,
                expire_ms=0,
            )
        )
        log.info("bootstrap API key registered", extra={"key_id": key_id})


async def _audit_retention(store: AuthStore, days: float, stop: asyncio.Event) -> None:
    """Deletes audit rows older than the retention period, hourly."""
    while not stop.is_set():
        if days > 0:
            try:
                removed = await store.prune_audit(int((time.time() - days * 86400) * 1000))
                if removed:
                    log.info("audit rows pruned", extra={"rows": removed})
            except Exception:
                log.exception("audit retention failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3600)


async def first_key(mesh: Mesh) -> str | None:
    """With authentication on and no active key anywhere, creates an operator key and returns it (once)."""
    if not mesh.settings.auth_required or mesh.auth is None:
        return None
    if await mesh.auth.store.count_active_keys():
        return None
    created = await mesh.auth.create_key(
        auth_pb2.CreateApiKeyRequest(tenant_id=keys.ALL_TENANTS, name="first key", scopes=["*"]),
        CallContext(principal="system:powerx-up"),
        bootstrap=True,
    )
    return created.secret


def _router_config(settings: Settings) -> RouterConfig:
    config = RouterConfig(default_timeout_s=settings.router_default_timeout_s)
    if settings.route_token_secret:
        # Shared by every mesh process, so a token from one is accepted by the others.
        config = dataclasses.replace(config, route_token_secret=settings.route_token_secret.encode())
    return config


SERVICE_NAMES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    router_service_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name,
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    connector_service_pb2.DESCRIPTOR.services_by_name["ConnectorService"].full_name,
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


@dataclass
class Mesh:
    """A running mesh process. Build it with `start_mesh`, end it with `stop`."""

    settings: Settings
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    bus: EventBus
    registry: RegistryService
    router: RouterService
    metrics: CollectorRegistry
    transports: dict[int, Transport]
    agents: AgentService | None = None
    a2a: A2AServer | None = None
    a2a_runner: A2ARunner | None = None
    monitor: HealthMonitor | None = None
    audit: AuditLog | None = None
    audit_log: AuditLog | None = None
    auth: AuthService | None = None
    connectors: connector_runtime.ConnectorRuntime | None = None
    tracing: Tracing | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _engine: object = None
    _metrics_server: Any = None
    metrics_address: str = ""  # host:port of the Prometheus admin listener, empty when off

    @property
    def address(self) -> str:
        """host:port of the gRPC listener."""
        host = self.settings.grpc_address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def a2a_address(self) -> str:
        """host:port of the A2A HTTP listener, or empty when it is off."""
        return self.a2a.address if self.a2a is not None else ""

    async def stop(self, grace_s: float | None = None) -> None:
        """Reports NOT_SERVING, drains calls for the grace period, then releases everything."""
        await self.health.enter_graceful_shutdown()
        self._stop.set()
        try:
            await self.server.stop(self.settings.shutdown_grace_s if grace_s is None else grace_s)
            if self.a2a is not None:
                await self.a2a.stop(grace_s)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.audit is not None:
                await self.audit.close()
            if self.connectors is not None:
                await connector_runtime.close(self.connectors)
            if self.audit_log is not None:
                await self.audit_log.close()
            if self.a2a_runner is not None:
                await self.a2a_runner.close()
            if self.agents is not None:
                await self.agents.close()
            for transport in self.transports.values():
                with contextlib.suppress(Exception):
                    await transport.close()
            await self.bus.close()
        finally:
            if self.tracing is not None:
                await self.tracing.shutdown()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
            if self._engine is not None:
                await self._engine.dispose()  # type: ignore[attr-defined]

    async def wait_for_termination(self) -> None:
        """Waits until the server stops."""
        await self.server.wait_for_termination()


async def start_mesh(settings: Settings, *, span_processor: SpanProcessor | None = None) -> Mesh:
    """Migrates the database, connects the bus, and starts serving on `settings.grpc_address`.

    `span_processor` receives the mesh's spans in addition to the configured exporter (tests).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.effective_database_url)
    await migrate(engine)
    bus = make_bus(settings.redis_url)
    ping = getattr(bus, "ping", None)
    if ping is not None:
        await ping()
    registry = RegistryService(
        RegistryStore(engine),
        bus,
        default_lease_ttl_s=settings.default_lease_ttl_s,
        watch_poll_interval_s=settings.watch_poll_interval_s,
    )
    # Authentication and the audit log, shared by every service of the process. Agent tokens are checked
    # with the agent service's signer, which exists once the agent service is built below.
    auth_store = AuthStore(engine)
    key_cache = KeyCache(auth_store)
    signer_holder: dict[str, TokenSigner] = {}

    def verify_agent_token(token: str) -> AgentClaims | None:
        claims = signer_holder["signer"].verify(token) if "signer" in signer_holder else None
        return AgentClaims(claims.tenant_id, claims.agent_id) if claims is not None else None

    audit_log = AuditLog(engine, table=audit_log_t, name="audit")
    auditor = Auditor(audit_log)
    gate = Gate(key_cache, verify_agent_token, required=settings.auth_required)
    await _bootstrap_key(auth_store, settings)
    tracing = setup_tracing(settings, span_processor)
    server = grpc.aio.server(
        # Tracing first: its server span is active when the context interceptor builds the call context.
        interceptors=[
            *([tracing.interceptor] if tracing is not None else []),
            ContextInterceptor(Guard(gate=gate, auditor=auditor)),
        ],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)
    registry.mcp_stdio_commands = frozenset(settings.mcp_stdio_commands)
    snapshot = RouteSnapshot()
    follower = SnapshotFollower(
        registry.store, bus, snapshot, poll_s=max(settings.watch_poll_interval_s, 0.5)
    )
    registry.commit_listeners.append(follower.notify)
    await follower.start()
    transports: dict[int, Transport] = {
        common_pb2.TRANSPORT_GRPC: GrpcTransport(),
        common_pb2.TRANSPORT_HTTP: HttpTransport(),
        common_pb2.TRANSPORT_MCP: McpTransport(stdio_commands=settings.mcp_stdio_commands),
        common_pb2.TRANSPORT_AGENT: AgentTransport(),
    }
    metrics_registry = CollectorRegistry()
    audit = AuditLog(engine)
    router = RouterService(
        snapshot,
        follower,
        transports=transports,
        stats=StatsTable(parse_overrides(OutlierConfig(), settings.outlier, "POWERX_OUTLIER")),
        metrics=RouterMetrics(metrics_registry, snapshot),
        audit=audit,
        config=_router_config(settings),
    )
    router_service_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(router), server)
    # Bound before the agent service exists: the cards it publishes carry the real port (port 0 too).
    a2a_socket = await a2a_bind(settings.a2a_address) if settings.a2a_address else None
    agents = _agent_service(
        settings,
        engine,
        bus,
        registry,
        metrics_registry,
        a2a_base_url=a2a_base_url(a2a_socket) if a2a_socket else "",
    )
    a2a_runner = A2ARunner()
    agents.external = a2a_runner
    signer_holder["signer"] = agents.signer
    await agents.start()
    agent_transport = transports[common_pb2.TRANSPORT_AGENT]
    assert isinstance(agent_transport, AgentTransport)
    agent_transport.dispatcher = AgentDispatch(agents)

    async def admit(
        ctx: CallContext, capability_id: str, arguments: struct_pb2.Struct
    ) -> tuple[str, dict[str, str]]:
        caller = await agents.admit_agent_call(ctx, capability_id, arguments)
        if caller is None:
            return ctx.tenant_id, {}
        return caller.agent.agent.tenant_id, caller.metadata()

    router.caller_guard = admit
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(agents), server)
    connectors = connector_runtime.build(
        settings,
        engine,
        bus,
        metrics_registry,
        local_invoke=connector_runtime.router_local_invoke(router),
        edge_url=f"http://{settings.edge_address}",
        auditor=auditor,
    )
    connector_service_pb2_grpc.add_ConnectorServiceServicer_to_server(
        ConnectorServicer(connectors.service, connectors.webhooks), server
    )
    auth_service = AuthService(auth_store, key_cache, bus, auth_required=settings.auth_required)
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth_service), server)
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(AuditService(auth_store, auth_service)), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(settings.grpc_address)
    if port == 0:
        raise OSError(f"cannot listen on {settings.grpc_address}")
    await server.start()
    # Every hosted contract reports SERVING.
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    a2a_server = None
    if a2a_socket is not None:
        a2a_server = A2AServer(agents)
        await a2a_server.start(a2a_socket, grace_s=settings.shutdown_grace_s)
    mesh = Mesh(
        settings=settings,
        server=server,
        port=port,
        health=health_servicer,
        bus=bus,
        registry=registry,
        router=router,
        metrics=metrics_registry,
        transports=transports,
        agents=agents,
        a2a=a2a_server,
        a2a_runner=a2a_runner,
        audit=audit,
        audit_log=audit_log,
        auth=auth_service,
        connectors=connectors,
        tracing=tracing,
    )
    mesh._engine = engine
    audit.start()
    audit_log.start()
    mesh._tasks.append(asyncio.create_task(auth_service.follow(), name="api-key-follow"))
    mesh._tasks.append(
        asyncio.create_task(
            _audit_retention(auth_store, settings.audit_retention_days, mesh._stop), name="audit-retention"
        )
    )
    mesh._tasks.append(
        asyncio.create_task(
            lease_sweeper(registry, settings.lease_sweep_interval_s, mesh._stop), name="lease-sweeper"
        )
    )
    mesh._tasks.append(asyncio.create_task(follower.run(mesh._stop), name="route-snapshot"))
    mesh._tasks.extend(await connector_runtime.start(connectors, settings, mesh._stop))
    mesh._tasks.append(asyncio.create_task(agents.run_sweeper(mesh._stop), name="agent-sweeper"))
    if settings.redis_url:  # other processes share the bus: follow their agents
        mesh._tasks.append(asyncio.create_task(agents.run_directory_sync(mesh._stop), name="agent-directory"))
    if settings.health_monitor:
        rules = default_rules()
        names = {
            "grpc": common_pb2.TRANSPORT_GRPC,
            "http": common_pb2.TRANSPORT_HTTP,
            "mcp": common_pb2.TRANSPORT_MCP,
            "agent": common_pb2.TRANSPORT_AGENT,
        }
        for name, spec in settings.health_rules:
            rules[names[name]] = parse_rule(rules[names[name]], spec)

        async def set_health(
            endpoint_id: str, health_state: int, reason: str, ctx: CallContext, seen: int
        ) -> bool:
            return await registry.set_endpoint_health(endpoint_id, health_state, reason, ctx, expected=seen)

        mesh.monitor = HealthMonitor(snapshot, transports, set_health, rules)
        mesh._tasks.append(asyncio.create_task(mesh.monitor.run(mesh._stop), name="health-monitor"))
    if settings.metrics_address:
        host, _, mport = settings.metrics_address.rpartition(":")
        metrics_server, _thread = start_http_server(
            int(mport), addr=host or "127.0.0.1", registry=metrics_registry
        )
        mesh._metrics_server = metrics_server
        mesh.metrics_address = f"{host or '127.0.0.1'}:{metrics_server.server_address[1]}"
    log.info(
        "mesh serving",
        extra={"grpc": mesh.address, "database": engine.dialect.name, "bus": type(bus).__name__},
    )
    return mesh
