"""Registry domain logic on a real SQLite file, with a controllable clock and no network."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import event_pb2, provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from servers.common.bus import InProcessBus
from servers.common.context import CallContext
from servers.common.db import create_engine, migrate
from servers.common.errors import FailedPrecondition, InvalidArgument, NotFound, TenantRequired
from servers.registry.service import RegistryService
from servers.registry.store import RegistryStore
from tests.conftest import announce_request

T1 = CallContext(tenant_id="t1", request_id="r1")
T2 = CallContext(tenant_id="t2", request_id="r2")
GRPC = common_pb2.TRANSPORT_GRPC
HTTP = common_pb2.TRANSPORT_HTTP


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def svc(tmp_path: Path, clock: Clock) -> AsyncIterator[RegistryService]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await migrate(engine)
    yield RegistryService(
        RegistryStore(engine),
        InProcessBus(),
        default_lease_ttl_s=30,
        clock_ms=clock,
        watch_poll_interval_s=0.05,
    )
    await engine.dispose()


async def events(
    svc: RegistryService, ctx: CallContext = T1, since: int = 0
) -> list[event_pb2.RegistryEvent]:
    out = []
    async for msg in svc.watch_registry(rs.WatchRegistryRequest(since_revision=since), ctx):
        if msg.HasField("caught_up"):
            break
        out.append(msg.event)
    return out


async def test_announce_is_an_idempotent_upsert(svc: RegistryService) -> None:
    first = await svc.announce_provider(announce_request(), T1)
    assert first.changed
    assert first.revision == 3  # provider, capability, endpoint
    assert first.provider.state == provider_pb2.PROVIDER_STATE_ACTIVE
    assert [e.health for e in first.endpoints] == [common_pb2.HEALTH_STATE_HEALTHY]
    assert first.capabilities[0].endpoints[0].endpoint_id == first.endpoints[0].endpoint_id

    again = await svc.announce_provider(announce_request(), T1)
    assert not again.changed
    assert again.revision == first.revision
    assert again.endpoints[0].endpoint_id == first.endpoints[0].endpoint_id
    log = await events(svc)
    assert len(log) == 3
    # Each event carries the resource as it is after the change, stamped with the event's revision.
    assert [log[0].provider.revision, log[1].capability.revision, log[2].endpoint.revision] == [1, 2, 3]


async def test_reannounce_replaces_endpoints_and_capabilities(svc: RegistryService) -> None:
    await svc.announce_provider(
        announce_request(
            caps=(("a.one", "1.0.0"), ("a.two", "1.0.0")),
            endpoints=((GRPC, "grpc://10.0.0.1:1"), (HTTP, "http://10.0.0.1/x")),
        ),
        T1,
    )
    resp = await svc.announce_provider(
        announce_request(caps=(("a.one", "1.1.0"),), endpoints=((GRPC, "grpc://10.0.0.2:1"),)), T1
    )
    assert resp.changed
    assert [(c.capability_id, c.version) for c in resp.capabilities] == [("a.one", "1.1.0")]
    assert [e.uri for e in resp.endpoints] == ["grpc://10.0.0.2:1"]
    kinds = [e.type for e in await events(svc, since=6 - 1)]
    assert event_pb2.REGISTRY_EVENT_TYPE_CAPABILITY_REMOVED in kinds
    assert event_pb2.REGISTRY_EVENT_TYPE_ENDPOINT_REMOVED in kinds


async def test_invalid_announce_names_every_field_and_writes_nothing(svc: RegistryService) -> None:
    req = announce_request(
        provider_id="Not Valid!",
        version="1.0",
        caps=(("crm.lead.create", "x"), ("crm.lead.create", "x")),
        endpoints=((GRPC, "http://wrong-scheme:1"), (0, "grpc://h:1"), (GRPC, "grpc://host")),
    )
    req.endpoints[0].capability_ids.append("not.declared")
    with pytest.raises(InvalidArgument) as err:
        await svc.announce_provider(req, T1)
    fields = {f for f, _ in err.value.violations}
    assert {"provider.provider_id", "provider.version"} <= fields
    assert await svc.store.revision() == 0
    req = announce_request(
        caps=(("crm.lead.create", "x"), ("crm.lead.create", "x")),
        endpoints=((GRPC, "http://wrong-scheme:1"), (0, "grpc://h:1"), (GRPC, "grpc://host")),
    )
    req.endpoints[0].capability_ids.append("not.declared")
    with pytest.raises(InvalidArgument) as err:
        await svc.announce_provider(req, T1)
    fields = {f for f, _ in err.value.violations}
    assert {
        "capabilities[0].version",
        "capabilities[1]",
        "endpoints[0].uri",
        "endpoints[1].transport",
        "endpoints[2].uri",
        "endpoints[0].capability_ids[0]",
    } <= fields
    assert await svc.store.revision() == 0


@pytest.mark.parametrize(
    ("transport", "uri", "ok"),
    [
        (GRPC, "grpc://127.0.0.1:50051", True),
        (GRPC, "grpc://[::1]:50051", True),
        (GRPC, "grpc://svc.local:1/path", False),
        (GRPC, "grpc://user:pw@h:1", False),
        (HTTP, "https://api.example.com/v1/run", True),
        (HTTP, "ftp://x", False),
        (common_pb2.TRANSPORT_MCP, "stdio:python -m server", True),
        (common_pb2.TRANSPORT_MCP, "stdio:", False),
        (common_pb2.TRANSPORT_MCP, "http://127.0.0.1:9000/mcp", True),
        (common_pb2.TRANSPORT_AGENT, "agent://com.powerx.agent.sales", True),
        (common_pb2.TRANSPORT_AGENT, "agent://", False),
        (common_pb2.TRANSPORT_AGENT, "https://agents.example.com/.well-known/agent-card.json", True),
    ],
)
async def test_uri_must_suit_its_transport(svc: RegistryService, transport: int, uri: str, ok: bool) -> None:
    req = announce_request(endpoints=((transport, uri),))
    if ok:
        assert (await svc.announce_provider(req, T1)).endpoints[0].uri == uri
    else:
        with pytest.raises(InvalidArgument):
            await svc.announce_provider(req, T1)


async def test_missing_or_malformed_tenant_is_rejected(svc: RegistryService) -> None:
    with pytest.raises(TenantRequired):
        await svc.announce_provider(announce_request(), CallContext())
    with pytest.raises(TenantRequired):
        await svc.list_capabilities(rs.ListCapabilitiesRequest(), CallContext(tenant_id="bad tenant!"))


async def test_lease_expiry_marks_stale_and_renewal_restores(svc: RegistryService, clock: Clock) -> None:
    resp = await svc.announce_provider(announce_request(lease_s=10), T1)
    clock.ms += 9_000
    assert (await svc.expire_leases(T1))[1] == 0
    clock.ms += 2_000
    _, providers, endpoints = await svc.expire_leases(T1)
    assert (providers, endpoints) == (1, 1)
    got = await svc.get_provider(rs.GetProviderRequest(provider_id="com.acme.crm"), T1)
    assert got.provider.state == provider_pb2.PROVIDER_STATE_EXPIRED
    assert got.endpoints[0].health == common_pb2.HEALTH_STATE_STALE
    assert got.endpoints[0].health_reason == "lease expired"
    # Registered but stale stays visible in the catalog.
    listed = await svc.list_capabilities(rs.ListCapabilitiesRequest(health=common_pb2.HEALTH_STATE_STALE), T1)
    assert [c.capability_id for c in listed.capabilities] == ["crm.lead.create"]

    renewed = await svc.renew_provider_lease(rs.RenewProviderLeaseRequest(provider_id="com.acme.crm"), T1)
    assert renewed.provider.state == provider_pb2.PROVIDER_STATE_ACTIVE
    got = await svc.get_provider(rs.GetProviderRequest(provider_id="com.acme.crm"), T1)
    assert got.endpoints[0].health == common_pb2.HEALTH_STATE_HEALTHY
    assert got.endpoints[0].endpoint_id == resp.endpoints[0].endpoint_id
    # A renewal of a live lease is not a catalog change.
    before = await svc.store.revision()
    await svc.renew_provider_lease(rs.RenewProviderLeaseRequest(provider_id="com.acme.crm"), T1)
    assert await svc.store.revision() == before


async def test_reannounce_after_restart_readmits_stale_endpoints(svc: RegistryService, clock: Clock) -> None:
    await svc.announce_provider(announce_request(lease_s=5), T1)
    clock.ms += 6_000
    await svc.expire_leases(T1)
    resp = await svc.announce_provider(announce_request(lease_s=5), T1)
    assert resp.changed
    assert resp.provider.state == provider_pb2.PROVIDER_STATE_ACTIVE
    assert resp.endpoints[0].health == common_pb2.HEALTH_STATE_HEALTHY


async def test_withdraw_removes_from_catalog_and_blocks_renewal(svc: RegistryService) -> None:
    await svc.announce_provider(announce_request(), T1)
    out = await svc.withdraw_provider(
        rs.WithdrawProviderRequest(provider_id="com.acme.crm", reason="bye"), T1
    )
    assert out.provider.state == provider_pb2.PROVIDER_STATE_WITHDRAWN
    assert not (await svc.list_capabilities(rs.ListCapabilitiesRequest(), T1)).capabilities
    with pytest.raises(FailedPrecondition):
        await svc.renew_provider_lease(rs.RenewProviderLeaseRequest(provider_id="com.acme.crm"), T1)
    again = await svc.withdraw_provider(rs.WithdrawProviderRequest(provider_id="com.acme.crm"), T1)
    assert again.revision == out.revision
    with pytest.raises(NotFound):
        await svc.withdraw_provider(rs.WithdrawProviderRequest(provider_id="com.unknown"), T1)


async def test_tenants_are_isolated_unless_shared(svc: RegistryService) -> None:
    await svc.announce_provider(announce_request("com.t1.private", caps=(("p.op", "1.0.0"),)), T1)
    await svc.announce_provider(
        announce_request("com.t1.shared", caps=(("s.op", "1.0.0"),), scopes=("t2",)), T1
    )
    seen = await svc.list_capabilities(rs.ListCapabilitiesRequest(), T2)
    assert [c.capability_id for c in seen.capabilities] == ["s.op"]
    with pytest.raises(NotFound):
        await svc.get_capability(rs.GetCapabilityRequest(capability_id="p.op"), T2)
    with pytest.raises(NotFound):
        await svc.get_provider(rs.GetProviderRequest(provider_id="com.t1.private"), T2)
    endpoint_id = (
        (await svc.get_capability(rs.GetCapabilityRequest(capability_id="s.op"), T2))
        .capabilities[0]
        .endpoints[0]
        .endpoint_id
    )
    with pytest.raises(NotFound):
        await svc.delete_endpoint(rs.DeleteEndpointRequest(endpoint_id=endpoint_id), T2)
    assert not (await svc.list_runtime_endpoints(rs.ListRuntimeEndpointsRequest(), T2)).endpoints
    # t2 sees only the shared capability's events, never the private provider's.
    assert {e.capability_id for e in await events(svc, T2) if e.capability_id} == {"s.op"}
    # The same provider id in another tenant is a different provider.
    other = await svc.announce_provider(announce_request("com.t1.private"), T2)
    assert other.endpoints[0].endpoint_id != endpoint_id


async def test_get_capability_returns_every_offering_highest_version_first(svc: RegistryService) -> None:
    await svc.announce_provider(announce_request("com.a", caps=(("x.op", "1.2.0"), ("x.op", "1.10.0"))), T1)
    await svc.announce_provider(
        announce_request("com.b", caps=(("x.op", "2.0.0-rc.1"),), endpoints=((GRPC, "grpc://h2:1"),)), T1
    )
    got = await svc.get_capability(rs.GetCapabilityRequest(capability_id="x.op"), T1)
    assert [c.version for c in got.capabilities] == ["2.0.0-rc.1", "1.10.0", "1.2.0"]
    assert all(c.endpoints for c in got.capabilities)
    only = await svc.get_capability(rs.GetCapabilityRequest(capability_id="x.op", version="1.2.0"), T1)
    assert [c.version for c in only.capabilities] == ["1.2.0"]


async def test_pagination_walks_everything_once(svc: RegistryService) -> None:
    caps = tuple((f"cap.n{i:03d}", "1.0.0") for i in range(23))
    await svc.announce_provider(announce_request(caps=caps), T1)
    seen, token = [], ""
    while True:
        page = await svc.list_capabilities(rs.ListCapabilitiesRequest(page_size=5, page_token=token), T1)
        seen += [c.capability_id for c in page.capabilities]
        token = page.next_page_token
        if not token:
            break
    assert seen == [c for c, _ in caps]
    with pytest.raises(InvalidArgument):
        await svc.list_capabilities(rs.ListCapabilitiesRequest(page_size=-1), T1)
    with pytest.raises(InvalidArgument):
        await svc.list_capabilities(rs.ListCapabilitiesRequest(page_size=1001), T1)
    with pytest.raises(InvalidArgument):
        await svc.list_capabilities(rs.ListCapabilitiesRequest(page_token="garbage"), T1)
    first = await svc.list_capabilities(rs.ListCapabilitiesRequest(page_size=5), T1)
    with pytest.raises(InvalidArgument):  # a token is bound to its filters
        await svc.list_capabilities(
            rs.ListCapabilitiesRequest(
                page_size=5, page_token=first.next_page_token, capability_id_prefix="cap."
            ),
            T1,
        )


async def test_delete_endpoint_forces_offline_until_reannounced(svc: RegistryService) -> None:
    resp = await svc.announce_provider(announce_request(), T1)
    eid = resp.endpoints[0].endpoint_id
    out = await svc.delete_endpoint(rs.DeleteEndpointRequest(endpoint_id=eid, reason="maintenance"), T1)
    assert out.endpoint.health == common_pb2.HEALTH_STATE_OFFLINE
    assert out.endpoint.health_reason == "maintenance"
    listed = await svc.list_runtime_endpoints(
        rs.ListRuntimeEndpointsRequest(health=common_pb2.HEALTH_STATE_OFFLINE), T1
    )
    assert [e.endpoint_id for e in listed.endpoints] == [eid]
    again = await svc.announce_provider(announce_request(), T1)
    assert again.changed
    assert again.endpoints[0].health == common_pb2.HEALTH_STATE_HEALTHY


async def test_watch_replays_then_follows_and_resumes(svc: RegistryService) -> None:
    await svc.announce_provider(announce_request("com.a", caps=(("a.op", "1.0.0"),)), T1)
    got: list[rs.WatchRegistryResponse] = []
    req = rs.WatchRegistryRequest(since_revision=0, capability_ids=["b.op"], max_events=3)
    stream = svc.watch_registry(req, T1)
    first = await anext(stream)
    assert first.HasField("caught_up")  # nothing about b.op yet
    await svc.announce_provider(
        announce_request("com.b", caps=(("b.op", "1.0.0"),), endpoints=((GRPC, "grpc://b:1"),)), T1
    )
    async for msg in stream:
        got.append(msg)
    assert [m.WhichOneof("kind") for m in got] == ["event", "event", "event", "end"]
    assert got[-1].end.reason == "LIMIT_REACHED"
    revisions = [m.event.revision for m in got[:3]]
    assert revisions == sorted(revisions)
    # Resuming from the last revision seen replays exactly what came after it.
    rest = await events(svc, since=revisions[1])
    assert [e.revision for e in rest] == list(range(revisions[1] + 1, await svc.store.revision() + 1))


async def test_watch_rejects_a_revision_from_the_future(svc: RegistryService) -> None:
    with pytest.raises(InvalidArgument):
        await anext(svc.watch_registry(rs.WatchRegistryRequest(since_revision=99), T1))
