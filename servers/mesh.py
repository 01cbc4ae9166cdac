"""Wiring: one grpc.aio server hosting every mesh service, health, reflection, storage and the bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from powerx.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from powerx.connector.v1 import connector_service_pb2, connector_service_pb2_grpc
from powerx.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from powerx.router.v1 import router_service_pb2, router_service_pb2_grpc
from servers.common.bus import EventBus, make_bus
from servers.common.db import create_engine, migrate
from servers.common.interceptor import ContextInterceptor
from servers.common.settings import Settings
from servers.common.unimplemented import unimplemented_servicer
from servers.registry.service import RegistryService, lease_sweeper
from servers.registry.servicer import RegistryServicer
from servers.registry.store import RegistryStore

log = logging.getLogger("powerx.mesh")

SERVICE_NAMES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    router_service_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name,
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    connector_service_pb2.DESCRIPTOR.services_by_name["ConnectorService"].full_name,
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
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _engine: object = None

    @property
    def address(self) -> str:
        """host:port of the gRPC listener."""
        host = self.settings.grpc_address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace_s: float | None = None) -> None:
        """Reports NOT_SERVING, drains calls for the grace period, then releases everything."""
        await self.health.enter_graceful_shutdown()
        self._stop.set()
        try:
            await self.server.stop(self.settings.shutdown_grace_s if grace_s is None else grace_s)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.bus.close()
        finally:
            if self._engine is not None:
                await self._engine.dispose()  # type: ignore[attr-defined]

    async def wait_for_termination(self) -> None:
        """Waits until the server stops."""
        await self.server.wait_for_termination()


async def start_mesh(settings: Settings) -> Mesh:
    """Migrates the database, connects the bus, and starts serving on `settings.grpc_address`."""
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
    server = grpc.aio.server(
        interceptors=[ContextInterceptor()],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)
    router_service_pb2_grpc.add_RouterServiceServicer_to_server(
        unimplemented_servicer(
            router_service_pb2_grpc.RouterServiceServicer,
            router_service_pb2.DESCRIPTOR.services_by_name["RouterService"],
            "it arrives with the router work (policy routing and invocation)",
        ),
        server,
    )
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(
        unimplemented_servicer(
            agent_service_pb2_grpc.AgentServiceServicer,
            agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
            "it arrives with the agents work (registration, runs, scheduling)",
        ),
        server,
    )
    connector_service_pb2_grpc.add_ConnectorServiceServicer_to_server(
        unimplemented_servicer(
            connector_service_pb2_grpc.ConnectorServiceServicer,
            connector_service_pb2.DESCRIPTOR.services_by_name["ConnectorService"],
            "it arrives with the connectors work (Coze and n8n)",
        ),
        server,
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
    # Every hosted contract reports SERVING: the unbuilt ones answer (UNIMPLEMENTED) as designed.
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    mesh = Mesh(
        settings=settings, server=server, port=port, health=health_servicer, bus=bus, registry=registry
    )
    mesh._engine = engine
    mesh._tasks.append(
        asyncio.create_task(
            lease_sweeper(registry, settings.lease_sweep_interval_s, mesh._stop), name="lease-sweeper"
        )
    )
    log.info(
        "mesh serving",
        extra={"grpc": mesh.address, "database": engine.dialect.name, "bus": type(bus).__name__},
    )
    return mesh
