"""The mesh process: health, reflection, every RPC implemented, restart persistence, the contract."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from router.servicer import RouterServicer
from servers.agent.servicer import AgentServicer
from servers.connector.servicer import ConnectorServicer
from servers.mesh import SERVICE_NAMES, Mesh, start_mesh
from servers.registry.servicer import RegistryServicer
from tests.conftest import announce_request, mesh_settings, tenant

DESCRIPTORS = Path(__file__).resolve().parents[2] / "gen" / "descriptors" / "powerx.binpb"


async def test_health_per_service_and_not_serving_on_shutdown(tmp_path: Path) -> None:
    mesh = await start_mesh(mesh_settings(tmp_path))
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", *SERVICE_NAMES):
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope.Service"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        await mesh.health.enter_graceful_shutdown()
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await mesh.stop(0)


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> reflection_pb2.ServerReflectionResponse:
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return await call.read()

    names = {s.name for s in (await ask()).list_services_response.service}
    assert set(SERVICE_NAMES) | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_every_registry_rpc_in_the_descriptors_is_implemented() -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    methods = {
        m.name for f in fds.file if f.package == "powerx.registry.v1" for s in f.service for m in s.method
    }
    assert methods, "no registry methods in the descriptor set"
    missing = {m for m in methods if m not in RegistryServicer.__dict__}
    assert not missing, f"RegistryServicer lacks {missing}"


@pytest.mark.parametrize(
    ("package", "servicer"),
    [
        ("powerx.agent.v1", AgentServicer),
        ("powerx.router.v1", RouterServicer),
        ("powerx.connector.v1", ConnectorServicer),
    ],
)
def test_every_rpc_of_the_built_services_is_implemented(package: str, servicer: type) -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    methods = {m.name for f in fds.file if f.package == package for s in f.service for m in s.method}
    assert methods, f"no {package} methods in the descriptor set"
    missing = {m for m in methods if m not in servicer.__dict__}
    assert not missing, f"{servicer.__name__} lacks {missing}"


async def test_durable_state_survives_a_restart(tmp_path: Path, database_url: str) -> None:
    settings = mesh_settings(tmp_path, database_url)
    first: Mesh = await start_mesh(settings)
    async with grpc.aio.insecure_channel(first.address) as ch:
        announced = await rs_grpc.RegistryServiceStub(ch).AnnounceProvider(
            announce_request(), metadata=tenant()
        )
    await first.stop(0)

    second = await start_mesh(settings)
    try:
        async with grpc.aio.insecure_channel(second.address) as ch:
            registry = rs_grpc.RegistryServiceStub(ch)
            got = await registry.GetProvider(
                rs.GetProviderRequest(provider_id="com.acme.crm"), metadata=tenant()
            )
            assert got.endpoints[0].endpoint_id == announced.endpoints[0].endpoint_id
            assert got.capabilities[0].capability_id == "crm.lead.create"
            # Revisions continue from where they were; the same announce is still a no-op.
            again = await registry.AnnounceProvider(announce_request(), metadata=tenant())
            assert not again.changed
            assert again.revision == announced.revision
            replay = [
                m
                async for m in registry.WatchRegistry(
                    rs.WatchRegistryRequest(max_events=3), metadata=tenant()
                )
            ]
            assert [m.event.revision for m in replay if m.HasField("event")] == [1, 2, 3]
    finally:
        await second.stop(0)
