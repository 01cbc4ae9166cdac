"""Every registry RPC through a real grpc.aio channel, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import event_pb2, provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers.mesh import Mesh
from tests.conftest import announce_request, tenant
from tests.integration.helpers import bad_fields, error_info

T1 = tenant("t1")


async def _revision(registry: rs_grpc.RegistryServiceStub) -> int:
    return (await registry.ListCapabilities(rs.ListCapabilitiesRequest(page_size=1), metadata=T1)).revision


async def test_announce_get_list_withdraw(registry: rs_grpc.RegistryServiceStub) -> None:
    call = registry.AnnounceProvider(announce_request(), metadata=(*T1, ("x-request-id", "req-announce-1")))
    resp = await call
    assert resp.changed
    assert dict(await call.initial_metadata())["x-request-id"] == "req-announce-1"
    assert not (await registry.AnnounceProvider(announce_request(), metadata=T1)).changed

    cap = await registry.GetCapability(rs.GetCapabilityRequest(capability_id="crm.lead.create"), metadata=T1)
    assert cap.capabilities[0].provider_id == "com.acme.crm"
    assert cap.capabilities[0].endpoints[0].uri == "grpc://127.0.0.1:51043"
    assert cap.capabilities[0].security.scope == "crm.lead.write"
    listed = await registry.ListCapabilities(
        rs.ListCapabilitiesRequest(transport=common_pb2.TRANSPORT_GRPC), metadata=T1
    )
    assert [c.capability_id for c in listed.capabilities] == ["crm.lead.create"]
    assert not (
        await registry.ListCapabilities(
            rs.ListCapabilitiesRequest(transport=common_pb2.TRANSPORT_HTTP), metadata=T1
        )
    ).capabilities
    eps = await registry.ListRuntimeEndpoints(
        rs.ListRuntimeEndpointsRequest(capability_id="crm.lead.create"), metadata=T1
    )
    assert [e.health for e in eps.endpoints] == [common_pb2.HEALTH_STATE_HEALTHY]
    assert eps.endpoints[0].lease_expire_time.seconds > 0
    prov = await registry.GetProvider(rs.GetProviderRequest(provider_id="com.acme.crm"), metadata=T1)
    assert prov.provider.display_name == "CRM Plus"
    assert prov.provider.tenant_id == "t1"
    provs = await registry.ListProviders(
        rs.ListProvidersRequest(state=provider_pb2.PROVIDER_STATE_ACTIVE), metadata=T1
    )
    assert [p.provider_id for p in provs.providers] == ["com.acme.crm"]

    renewed = await registry.RenewProviderLease(
        rs.RenewProviderLeaseRequest(provider_id="com.acme.crm"), metadata=T1
    )
    assert (
        renewed.provider.lease_expire_time.ToMilliseconds()
        >= prov.provider.lease_expire_time.ToMilliseconds()
    )

    out = await registry.WithdrawProvider(rs.WithdrawProviderRequest(provider_id="com.acme.crm"), metadata=T1)
    assert out.provider.state == provider_pb2.PROVIDER_STATE_WITHDRAWN
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.GetCapability(rs.GetCapabilityRequest(capability_id="crm.lead.create"), metadata=T1)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(err.value)
    assert (info.reason, info.domain) == ("CAPABILITY_NOT_FOUND", "registry.powerx")


async def test_refresh_and_delete_endpoint(registry: rs_grpc.RegistryServiceStub) -> None:
    resp = await registry.AnnounceProvider(announce_request(lease_s=1), metadata=T1)
    await asyncio.sleep(1.1)
    refreshed = await registry.RefreshRegistry(
        rs.RefreshRegistryRequest(provider_id="com.acme.crm"), metadata=T1
    )
    # The background sweeper may have expired it first; either way it is stale now.
    eps = await registry.ListRuntimeEndpoints(rs.ListRuntimeEndpointsRequest(), metadata=T1)
    assert eps.endpoints[0].health == common_pb2.HEALTH_STATE_STALE
    assert refreshed.revision >= resp.revision + 2
    deleted = await registry.DeleteEndpoint(
        rs.DeleteEndpointRequest(endpoint_id=resp.endpoints[0].endpoint_id, reason="drain"), metadata=T1
    )
    assert deleted.endpoint.health == common_pb2.HEALTH_STATE_OFFLINE
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.DeleteEndpoint(rs.DeleteEndpointRequest(endpoint_id="ep_nope"), metadata=T1)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err.value).reason == "ENDPOINT_NOT_FOUND"


async def test_watch_streams_replay_caught_up_live_and_end(registry: rs_grpc.RegistryServiceStub) -> None:
    first = await registry.AnnounceProvider(announce_request("com.a"), metadata=T1)
    stream = registry.WatchRegistry(rs.WatchRegistryRequest(since_revision=0, max_events=5), metadata=T1)
    kinds: list[str] = []
    received: list[event_pb2.RegistryEvent] = []
    async for msg in stream:
        kinds.append(msg.WhichOneof("kind"))
        if msg.HasField("caught_up"):
            assert msg.caught_up.revision == first.revision
            await registry.AnnounceProvider(
                announce_request("com.b", endpoints=((common_pb2.TRANSPORT_HTTP, "http://b/x"),)), metadata=T1
            )
        elif msg.HasField("event"):
            received.append(msg.event)
    assert kinds == ["event"] * 3 + ["caught_up"] + ["event"] * 2 + ["end"]
    assert [e.revision for e in received] == [1, 2, 3, 4, 5]
    # Reconnect with the last revision seen: nothing is missed, nothing repeated.
    resumed = [
        m
        async for m in registry.WatchRegistry(
            rs.WatchRegistryRequest(since_revision=5, idle_timeout={"nanos": 300_000_000}), metadata=T1
        )
    ]
    assert [m.event.revision for m in resumed if m.HasField("event")] == [6]
    assert resumed[-1].end.reason == "IDLE_TIMEOUT"


async def test_watch_cancelled_by_client_releases_the_stream(
    registry: rs_grpc.RegistryServiceStub, mesh: Mesh
) -> None:
    from servers.registry.service import REVISION_TOPIC

    bus = mesh.bus
    count = getattr(bus, "subscriber_count", None)
    before = count(REVISION_TOPIC) if count is not None else 0  # the route snapshot follows it too
    stream = registry.WatchRegistry(rs.WatchRegistryRequest(), metadata=T1)
    assert (await stream.read()).HasField("caught_up")
    if count is not None:
        assert count(REVISION_TOPIC) == before + 1
    stream.cancel()
    for _ in range(50):
        if count is None or count(REVISION_TOPIC) == before:
            break
        await asyncio.sleep(0.02)
    if count is not None:
        assert count(REVISION_TOPIC) == before


# ---- bad input: every RPC rejects malformed, oversized and tenant-less requests and writes nothing ----

BAD_REQUESTS = {
    "AnnounceProvider": [
        announce_request(provider_id=""),
        announce_request(version="one"),
        announce_request(endpoints=((common_pb2.TRANSPORT_UNSPECIFIED, "grpc://h:1"),)),
        announce_request(caps=tuple((f"c.{i}", "1.0.0") for i in range(1001))),
        announce_request(lease_s=100_000),
    ],
    "WithdrawProvider": [
        rs.WithdrawProviderRequest(),
        rs.WithdrawProviderRequest(provider_id="p", reason="x" * 501),
    ],
    "RenewProviderLease": [
        rs.RenewProviderLeaseRequest(),
        rs.RenewProviderLeaseRequest(provider_id="p", lease_ttl={"seconds": -5}),
    ],
    "GetProvider": [rs.GetProviderRequest(), rs.GetProviderRequest(provider_id="p" * 300)],
    "ListProviders": [rs.ListProvidersRequest(page_size=-1), rs.ListProvidersRequest(page_token="%%%")],
    "GetCapability": [rs.GetCapabilityRequest(), rs.GetCapabilityRequest(capability_id="Bad Id")],
    "ListCapabilities": [
        rs.ListCapabilitiesRequest(page_size=5000),
        rs.ListCapabilitiesRequest(transport=99),
    ],  # type: ignore[arg-type]
    "ListRuntimeEndpoints": [
        rs.ListRuntimeEndpointsRequest(page_size=-3),
        rs.ListRuntimeEndpointsRequest(health=42),
    ],  # type: ignore[arg-type]
    "RefreshRegistry": [rs.RefreshRegistryRequest(provider_id="p" * 300)],
    "DeleteEndpoint": [rs.DeleteEndpointRequest(), rs.DeleteEndpointRequest(endpoint_id="e" * 41)],
}


@pytest.mark.parametrize("method", sorted(BAD_REQUESTS))
async def test_bad_input_is_rejected_with_field_violations_and_writes_nothing(
    registry: rs_grpc.RegistryServiceStub, method: str
) -> None:
    await registry.AnnounceProvider(announce_request("com.seed"), metadata=T1)
    before = await _revision(registry)
    for req in BAD_REQUESTS[method]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(registry, method)(req, metadata=T1)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (req, err.value.details())
        assert error_info(err.value).domain == "registry.powerx"
        assert bad_fields(err.value), f"{method} gave no field violations"
    assert await _revision(registry) == before


@pytest.mark.parametrize("metadata", [(), (("x-tenant-id", "no spaces allowed"),)])
async def test_calls_without_a_valid_tenant_are_rejected(
    registry: rs_grpc.RegistryServiceStub, metadata: tuple
) -> None:
    calls = [
        registry.AnnounceProvider(announce_request(), metadata=metadata),
        registry.ListCapabilities(rs.ListCapabilitiesRequest(), metadata=metadata),
        registry.GetCapability(rs.GetCapabilityRequest(capability_id="crm.lead.create"), metadata=metadata),
        registry.ListRuntimeEndpoints(rs.ListRuntimeEndpointsRequest(), metadata=metadata),
        registry.RefreshRegistry(rs.RefreshRegistryRequest(), metadata=metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(err.value).reason == "TENANT_REQUIRED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.WatchRegistry(rs.WatchRegistryRequest(), metadata=metadata).read()
    assert error_info(err.value).reason == "TENANT_REQUIRED"
    assert await _revision(registry) == 0


async def test_oversized_messages_are_refused_by_the_transport(registry: rs_grpc.RegistryServiceStub) -> None:
    req = announce_request()
    req.provider.description = "x" * (5 * 1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.AnnounceProvider(req, metadata=T1)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await _revision(registry) == 0


async def test_wrong_tenant_sees_nothing_and_changes_nothing(registry: rs_grpc.RegistryServiceStub) -> None:
    resp = await registry.AnnounceProvider(announce_request(), metadata=T1)
    other = tenant("t2")
    for call in (
        registry.GetProvider(rs.GetProviderRequest(provider_id="com.acme.crm"), metadata=other),
        registry.GetCapability(rs.GetCapabilityRequest(capability_id="crm.lead.create"), metadata=other),
        registry.WithdrawProvider(rs.WithdrawProviderRequest(provider_id="com.acme.crm"), metadata=other),
        registry.RenewProviderLease(rs.RenewProviderLeaseRequest(provider_id="com.acme.crm"), metadata=other),
        registry.DeleteEndpoint(
            rs.DeleteEndpointRequest(endpoint_id=resp.endpoints[0].endpoint_id), metadata=other
        ),
        registry.RefreshRegistry(rs.RefreshRegistryRequest(provider_id="com.acme.crm"), metadata=other),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await registry.ListCapabilities(rs.ListCapabilitiesRequest(), metadata=other)).capabilities
    assert not (await registry.ListProviders(rs.ListProvidersRequest(), metadata=other)).providers
    watched = [
        m
        async for m in registry.WatchRegistry(
            rs.WatchRegistryRequest(idle_timeout={"nanos": 200_000_000}), metadata=other
        )
    ]
    assert [m.WhichOneof("kind") for m in watched] == ["caught_up", "end"]
    assert await _revision(registry) == resp.revision
