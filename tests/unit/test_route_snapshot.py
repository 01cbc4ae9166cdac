"""The router's route table (router/snapshot.py): load from store rows, then apply registry events.

Rows are `servers.registry.store` row classes; events are `RegistryEvent`s wrapped in `EventRow`s.
No database, no bus, no network.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, event_pb2
from router.policy import DEFAULT_POLICY, Offering, Policy
from router.snapshot import RouteSnapshot, policy_of, route_endpoint
from servers.registry.store import CapabilityRow, EndpointRow, EventRow

GRPC = common_pb2.TRANSPORT_GRPC
HTTP = common_pb2.TRANSPORT_HTTP
HEALTHY = common_pb2.HEALTH_STATE_HEALTHY
WARNING = common_pb2.HEALTH_STATE_WARNING
UNREACHABLE = common_pb2.HEALTH_STATE_UNREACHABLE
ET = event_pb2

CREATE = "crm.lead.create"
GET = "crm.lead.get"
LOADED = 10


# --- builders --------------------------------------------------------------------------------------


def cap_msg(
    capability_id: str = CREATE,
    version: str = "1.0.0",
    *,
    tenant: str = "t1",
    provider: str = "p1",
    grantees: Iterable[str] = (),
    scope: str = "",
    streaming: bool = False,
    cost: float = 0.0,
    routing: capability_pb2.RoutingPolicy | None = None,
) -> capability_pb2.Capability:
    c = capability_pb2.Capability(
        capability_id=capability_id,
        version=version,
        tenant_id=tenant,
        provider_id=provider,
        tenant_scopes=list(grantees),
        security=capability_pb2.CapabilitySecurity(scope=scope),
        streaming=streaming,
        cost=cost,
        labels={"team": "crm"},
    )
    if routing is not None:
        c.routing.CopyFrom(routing)
    return c


def cap_row(c: capability_pb2.Capability) -> CapabilityRow:
    spec = capability_pb2.Capability()
    spec.CopyFrom(c)
    spec.ClearField("tenant_id")
    spec.ClearField("provider_id")
    spec.ClearField("tenant_scopes")  # stored as grants
    return CapabilityRow(
        c.tenant_id,
        c.provider_id,
        c.capability_id,
        c.version,
        "",
        spec.SerializeToString(),
        0,
        0,
        1,
        tuple(c.tenant_scopes),
    )


def ep_msg(
    endpoint_id: str,
    caps: Iterable[str] = (CREATE,),
    *,
    transport: int = GRPC,
    health: int = HEALTHY,
    tenant: str = "t1",
    provider: str = "p1",
    region: str = "",
    weight: int = 0,
    cost: float = 0.0,
) -> endpoint_pb2.Endpoint:
    return endpoint_pb2.Endpoint(
        endpoint_id=endpoint_id,
        tenant_id=tenant,
        provider_id=provider,
        transport=transport,  # type: ignore[arg-type]
        uri=f"grpc://{endpoint_id}:50051",
        health=health,  # type: ignore[arg-type]
        region=region,
        weight=weight,
        cost=cost,
        capability_ids=list(caps),
        metadata={"zone": "a"},
    )


def ep_row(e: endpoint_pb2.Endpoint) -> EndpointRow:
    spec = endpoint_pb2.Endpoint(
        transport=e.transport,
        uri=e.uri,
        region=e.region,
        weight=e.weight,
        cost=e.cost,
        metadata=dict(e.metadata),
    )
    return EndpointRow(
        e.endpoint_id,
        e.tenant_id,
        e.provider_id,
        e.transport,
        e.health,
        "",
        0,
        spec.SerializeToString(),
        0,
        0,
        1,
        tuple(e.capability_ids),
    )


def event(
    revision: int,
    etype: int,
    *,
    capability: capability_pb2.Capability | None = None,
    endpoint: endpoint_pb2.Endpoint | None = None,
    endpoint_id: str = "",
    row_caps: Iterable[str] = (),
) -> EventRow:
    ev = event_pb2.RegistryEvent(revision=revision, type=etype)  # type: ignore[arg-type]
    tenant = provider = ""
    if capability is not None:
        ev.capability.CopyFrom(capability)
        ev.capability_id = capability.capability_id
        tenant, provider = capability.tenant_id, capability.provider_id
    if endpoint is not None:
        ev.endpoint.CopyFrom(endpoint)
        ev.endpoint_id = endpoint.endpoint_id
        tenant, provider = endpoint.tenant_id, endpoint.provider_id
    if endpoint_id:
        ev.endpoint_id = endpoint_id
    return EventRow(revision, tenant, provider, etype, tuple(row_caps), (), ev.SerializeToString(), 0)


def cap_upsert(revision: int, c: capability_pb2.Capability) -> EventRow:
    return event(revision, ET.REGISTRY_EVENT_TYPE_CAPABILITY_UPSERTED, capability=c)


def cap_removed(revision: int, c: capability_pb2.Capability) -> EventRow:
    return event(revision, ET.REGISTRY_EVENT_TYPE_CAPABILITY_REMOVED, capability=c)


def ep_upsert(revision: int, e: endpoint_pb2.Endpoint, row_caps: Iterable[str] = ()) -> EventRow:
    return event(revision, ET.REGISTRY_EVENT_TYPE_ENDPOINT_UPSERTED, endpoint=e, row_caps=row_caps)


def ep_health(revision: int, e: endpoint_pb2.Endpoint) -> EventRow:
    return event(revision, ET.REGISTRY_EVENT_TYPE_ENDPOINT_HEALTH_CHANGED, endpoint=e)


def ep_removed(revision: int, e: endpoint_pb2.Endpoint) -> EventRow:
    return event(revision, ET.REGISTRY_EVENT_TYPE_ENDPOINT_REMOVED, endpoint=e, endpoint_id=e.endpoint_id)


def base_caps() -> list[capability_pb2.Capability]:
    routing = capability_pb2.RoutingPolicy(
        health_weight=0.7,
        latency_weight=0.1,
        cost_weight=0.1,
        region_weight=0.1,
        transport_order=[HTTP, GRPC],
    )
    return [
        cap_msg(CREATE, "1.0.0", grantees=["t2"], scope="crm.lead.write", cost=2.5, routing=routing),
        cap_msg(GET, "1.0.0", streaming=True),
        cap_msg(CREATE, "1.0.0", tenant="t9", provider="p9"),
    ]


def base_endpoints() -> list[endpoint_pb2.Endpoint]:
    return [
        ep_msg("e1", [CREATE, GET], region="eu", weight=2, cost=1.5),
        ep_msg("e2", [CREATE], transport=HTTP, health=WARNING),
        ep_msg("e9", [CREATE], tenant="t9", provider="p9"),
        # Serves CREATE but its provider offers no capability: never in an offering.
        ep_msg("orphan", [CREATE], tenant="t1", provider="p-none"),
    ]


def loaded() -> RouteSnapshot:
    snap = RouteSnapshot()
    snap.load(LOADED, [cap_row(c) for c in base_caps()], [ep_row(e) for e in base_endpoints()])
    return snap


def endpoints_of(snap: RouteSnapshot, capability_id: str) -> dict[tuple[str, str, str], list[str]]:
    """(tenant, provider, version) → endpoint ids of each offering."""
    return {
        (o.tenant_id, o.provider_id, o.version): [e.endpoint_id for e in o.endpoints]
        for o in snap.offerings(capability_id)
    }


def offering(snap: RouteSnapshot, capability_id: str, tenant: str = "t1", version: str = "1.0.0") -> Offering:
    (found,) = [o for o in snap.offerings(capability_id) if o.tenant_id == tenant and o.version == version]
    return found


# --- load ------------------------------------------------------------------------------------------


def test_load_builds_offerings_per_capability() -> None:
    snap = loaded()
    assert snap.revision == LOADED
    assert endpoints_of(snap, CREATE) == {
        ("t1", "p1", "1.0.0"): ["e1", "e2"],
        ("t9", "p9", "1.0.0"): ["e9"],
    }
    assert endpoints_of(snap, GET) == {("t1", "p1", "1.0.0"): ["e1"]}
    assert snap.offerings("nope") == ()
    assert sorted(snap.group_of(CREATE)) == ["e1", "e2", "e9"]
    assert snap.group_of(GET) == ["e1"]


def test_load_carries_the_capability_fields() -> None:
    o = offering(loaded(), CREATE)
    assert o.version_tuple == (1, 0, 0, "")
    assert o.grantees == frozenset({"t2"})
    assert o.visible_to("t2")
    assert o.visible_to("t1")
    assert not o.visible_to("t3")
    assert o.scope == "crm.lead.write"
    assert o.cost == 2.5
    assert o.streaming is False
    assert o.labels == {"team": "crm"}
    assert o.policy == Policy((0.7, 0.1, 0.1, 0.1), 0.05, 0.5, 3, (HTTP, GRPC))
    assert offering(loaded(), GET).streaming is True
    assert offering(loaded(), GET).policy == DEFAULT_POLICY


def test_load_carries_the_endpoint_fields() -> None:
    snap = loaded()
    e1, e2 = offering(snap, CREATE).endpoints
    assert (e1.endpoint_id, e1.provider_id, e1.tenant_id) == ("e1", "p1", "t1")
    assert (e1.transport, e1.health, e1.region, e1.weight, e1.cost) == (GRPC, HEALTHY, "eu", 2, 1.5)
    assert e1.uri == "grpc://e1:50051"
    assert e1.metadata == {"zone": "a"}
    assert (e2.transport, e2.health) == (HTTP, WARNING)
    msg = snap.endpoint("e2")
    assert msg is not None
    assert msg.health == WARNING
    assert list(msg.capability_ids) == [CREATE]
    assert snap.endpoint("missing") is None
    assert sorted(m.endpoint_id for m, _ in snap.endpoints()) == ["e1", "e2", "e9", "orphan"]


def test_load_replaces_the_previous_table() -> None:
    snap = loaded()
    snap.load(20, [cap_row(cap_msg(GET, "2.0.0"))], [ep_row(ep_msg("x", [GET]))])
    assert snap.revision == 20
    assert snap.offerings(CREATE) == ()
    assert endpoints_of(snap, GET) == {("t1", "p1", "2.0.0"): ["x"]}
    assert snap.endpoint("e1") is None


def test_load_bumps_generations() -> None:
    snap = loaded()
    assert snap.generations[CREATE] == 1
    assert snap.generations[GET] == 1


def test_capability_counts_by_provider() -> None:
    assert loaded().capability_count_by_provider() == {("t1", "p1"): 2, ("t9", "p9"): 1}


def test_policy_of_applies_defaults() -> None:
    assert policy_of(capability_pb2.Capability()) == DEFAULT_POLICY
    routing = capability_pb2.RoutingPolicy(candidate_margin=0.2, panic_threshold=-1.0, max_attempts=99)
    pol = policy_of(capability_pb2.Capability(routing=routing))
    assert (pol.margin, pol.panic_threshold, pol.max_attempts) == (0.2, -1.0, 10)


def test_route_endpoint_copies_the_message() -> None:
    e = ep_msg("e1", region="us", weight=3, cost=0.5)
    e.session_id = "s-1"
    r = route_endpoint(e)
    assert (r.endpoint_id, r.region, r.weight, r.cost, r.session_id) == ("e1", "us", 3, 0.5, "s-1")
    assert r.metadata == {"zone": "a"}


# --- capability events -----------------------------------------------------------------------------


def test_capability_upsert_adds_a_version_with_the_providers_endpoints() -> None:
    snap = loaded()
    assert snap.apply([cap_upsert(11, cap_msg(CREATE, "1.1.0"))]) == 1
    assert snap.revision == 11
    assert endpoints_of(snap, CREATE) == {
        ("t1", "p1", "1.0.0"): ["e1", "e2"],
        ("t1", "p1", "1.1.0"): ["e1", "e2"],
        ("t9", "p9", "1.0.0"): ["e9"],
    }
    assert snap.generations[CREATE] == 2
    assert snap.generations[GET] == 1


def test_capability_upsert_replaces_an_existing_offering() -> None:
    snap = loaded()
    snap.apply([cap_upsert(11, cap_msg(CREATE, "1.0.0", scope="crm.admin", grantees=["*"]))])
    offerings = [o for o in snap.offerings(CREATE) if o.tenant_id == "t1"]
    assert len(offerings) == 1
    assert offerings[0].scope == "crm.admin"
    assert offerings[0].grantees == frozenset({"*"})
    assert offerings[0].policy == DEFAULT_POLICY


def test_capability_upsert_of_a_new_capability_id() -> None:
    snap = loaded()
    snap.apply([cap_upsert(11, cap_msg("crm.lead.delete", "1.0.0"))])
    # No endpoint of p1 lists it yet.
    assert endpoints_of(snap, "crm.lead.delete") == {("t1", "p1", "1.0.0"): []}
    snap.apply([ep_upsert(12, ep_msg("e1", [CREATE, GET, "crm.lead.delete"]))])
    assert endpoints_of(snap, "crm.lead.delete") == {("t1", "p1", "1.0.0"): ["e1"]}


def test_capability_removed() -> None:
    snap = loaded()
    assert snap.apply([cap_removed(11, cap_msg(CREATE, "1.0.0", tenant="t9", provider="p9"))]) == 1
    assert endpoints_of(snap, CREATE) == {("t1", "p1", "1.0.0"): ["e1", "e2"]}
    assert snap.generations[CREATE] == 2


def test_removing_the_last_offering_removes_the_capability() -> None:
    snap = loaded()
    snap.apply([cap_removed(11, cap_msg(GET, "1.0.0"))])
    assert snap.offerings(GET) == ()
    assert snap.group_of(GET) == []
    assert snap.generations[GET] == 2
    assert snap.capability_count_by_provider() == {("t1", "p1"): 1, ("t9", "p9"): 1}
    # It can come back.
    snap.apply([cap_upsert(12, cap_msg(GET, "1.0.0"))])
    assert endpoints_of(snap, GET) == {("t1", "p1", "1.0.0"): ["e1"]}


# --- endpoint events -------------------------------------------------------------------------------


def test_endpoint_upsert_adds_an_endpoint() -> None:
    snap = loaded()
    assert snap.apply([ep_upsert(11, ep_msg("e3", [CREATE], transport=HTTP))]) == 1
    assert endpoints_of(snap, CREATE)[("t1", "p1", "1.0.0")] == ["e1", "e2", "e3"]
    assert snap.generations[CREATE] == 2
    assert snap.generations[GET] == 1  # not touched
    assert snap.endpoint("e3") is not None


def test_endpoint_upsert_that_changes_what_it_serves_rebuilds_both() -> None:
    snap = loaded()
    snap.apply([ep_upsert(11, ep_msg("e1", [GET], region="us"))])
    assert endpoints_of(snap, CREATE)[("t1", "p1", "1.0.0")] == ["e2"]
    assert endpoints_of(snap, GET) == {("t1", "p1", "1.0.0"): ["e1"]}
    assert offering(snap, GET).endpoints[0].region == "us"
    assert snap.generations[CREATE] == 2
    assert snap.generations[GET] == 2


def test_endpoint_upsert_without_capability_ids_uses_the_event_row() -> None:
    snap = loaded()
    snap.apply([ep_upsert(11, ep_msg("e4", []), row_caps=[CREATE])])
    assert endpoints_of(snap, CREATE)[("t1", "p1", "1.0.0")] == ["e1", "e2", "e4"]
    msg = snap.endpoint("e4")
    assert msg is not None
    assert list(msg.capability_ids) == [CREATE]


def test_endpoint_health_change() -> None:
    snap = loaded()
    assert snap.apply([ep_health(11, ep_msg("e1", [CREATE, GET], health=UNREACHABLE, region="eu"))]) == 1
    assert offering(snap, CREATE).endpoints[0].health == UNREACHABLE
    assert offering(snap, GET).endpoints[0].health == UNREACHABLE
    assert snap.endpoint("e1").health == UNREACHABLE  # type: ignore[union-attr]
    assert snap.generations[CREATE] == 2
    assert snap.generations[GET] == 2
    snap.apply([ep_health(12, ep_msg("e1", [CREATE, GET], health=HEALTHY, region="eu"))])
    assert offering(snap, CREATE).endpoints[0].health == HEALTHY
    assert snap.generations[CREATE] == 3


def test_endpoint_removed_calls_the_listeners_once() -> None:
    snap = loaded()
    removed: list[str] = []
    also: list[str] = []
    snap.endpoint_listeners.extend([removed.append, also.append])
    assert snap.apply([ep_removed(11, ep_msg("e1", [CREATE, GET]))]) == 1
    assert removed == also == ["e1"]
    assert snap.endpoint("e1") is None
    assert endpoints_of(snap, CREATE)[("t1", "p1", "1.0.0")] == ["e2"]
    assert endpoints_of(snap, GET) == {("t1", "p1", "1.0.0"): []}
    assert snap.generations[CREATE] == 2
    assert snap.generations[GET] == 2
    # Removing it again (a replay) changes nothing and calls nobody.
    assert snap.apply([ep_removed(12, ep_msg("e1", [CREATE, GET]))]) == 1
    assert removed == ["e1"]
    assert snap.revision == 12
    assert snap.generations[CREATE] == 2


def test_unknown_event_types_only_advance_the_revision() -> None:
    snap = loaded()
    before = endpoints_of(snap, CREATE)
    row = event(11, ET.REGISTRY_EVENT_TYPE_PROVIDER_ANNOUNCED)
    assert snap.apply([row]) == 1
    assert snap.revision == 11
    assert endpoints_of(snap, CREATE) == before
    assert snap.generations[CREATE] == 1


# --- revisions and replay --------------------------------------------------------------------------


def test_events_at_or_below_the_loaded_revision_are_ignored() -> None:
    snap = loaded()
    removed: list[str] = []
    snap.endpoint_listeners.append(removed.append)
    stale = [
        ep_removed(LOADED - 1, ep_msg("e1")),
        cap_removed(LOADED, cap_msg(CREATE, "1.0.0")),
        ep_upsert(3, ep_msg("e5")),
    ]
    assert snap.apply(stale) == 0
    assert snap.revision == LOADED
    assert removed == []
    assert endpoints_of(snap, CREATE)[("t1", "p1", "1.0.0")] == ["e1", "e2"]
    assert snap.generations[CREATE] == 1


def test_apply_skips_old_events_in_a_mixed_batch() -> None:
    snap = loaded()
    rows = [ep_upsert(11, ep_msg("e5")), ep_removed(11, ep_msg("e5")), ep_upsert(12, ep_msg("e6"))]
    assert snap.apply(rows) == 2
    assert snap.revision == 12
    assert endpoints_of(snap, CREATE)[("t1", "p1", "1.0.0")] == ["e1", "e2", "e5", "e6"]


def _history() -> list[EventRow]:
    return [
        cap_upsert(11, cap_msg(CREATE, "1.1.0")),
        ep_upsert(12, ep_msg("e3", [CREATE], transport=HTTP)),
        ep_health(13, ep_msg("e2", [CREATE], transport=HTTP, health=UNREACHABLE)),
        ep_removed(14, ep_msg("e1", [CREATE, GET], region="eu", weight=2, cost=1.5)),
        cap_removed(15, cap_msg(GET, "1.0.0")),
    ]


def _renumbered(rows: list[EventRow], start: int) -> list[EventRow]:
    return [EventRow(start + i, r.tenant_id, r.provider_id, r.type, r.capability_ids, r.grantees, r.payload,
                     r.created_ms) for i, r in enumerate(rows)]  # fmt: skip


def _table(snap: RouteSnapshot) -> dict[str, tuple[Offering, ...]]:
    return {cid: snap.offerings(cid) for cid in (CREATE, GET, "crm.lead.delete")}


def test_applying_the_history_gives_the_expected_table() -> None:
    snap = loaded()
    assert snap.apply(_history()) == 5
    assert snap.revision == 15
    assert endpoints_of(snap, CREATE) == {
        ("t1", "p1", "1.0.0"): ["e2", "e3"],
        ("t1", "p1", "1.1.0"): ["e2", "e3"],
        ("t9", "p9", "1.0.0"): ["e9"],
    }
    assert offering(snap, CREATE).endpoints[0].health == UNREACHABLE
    assert snap.offerings(GET) == ()


def test_replaying_events_twice_converges() -> None:
    once = loaded()
    once.apply(_history())
    twice = loaded()
    twice.apply(_history())
    twice.apply(_renumbered(_history(), 16))  # the same changes again, as new revisions
    assert twice.revision == 20
    assert _table(twice) == _table(once)
    assert [m for m, _ in twice.endpoints()] == [m for m, _ in once.endpoints()]


def test_replaying_events_one_at_a_time_converges() -> None:
    batch = loaded()
    batch.apply(_history())
    single = loaded()
    for row in _history():
        single.apply([row])
        single.apply([row])  # the same revision again: ignored
    assert single.revision == 15
    assert _table(single) == _table(batch)


def test_events_applied_over_a_newer_loaded_state_converge() -> None:
    """The load read rows that already include revisions 11–13 but reported revision 10."""
    expected = loaded()
    expected.apply(_history())

    caps = [*base_caps(), cap_msg(CREATE, "1.1.0")]
    eps = base_endpoints()
    eps[1] = ep_msg("e2", [CREATE], transport=HTTP, health=UNREACHABLE)
    eps.append(ep_msg("e3", [CREATE], transport=HTTP))
    racy = RouteSnapshot()
    racy.load(LOADED, [cap_row(c) for c in caps], [ep_row(e) for e in eps])
    racy.apply(_history())
    assert racy.revision == 15
    assert _table(racy) == _table(expected)


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_split_batches_give_the_same_table(cut: int) -> None:
    whole = loaded()
    whole.apply(_history())
    split = loaded()
    split.apply(_history()[:cut])
    split.apply(_history()[cut:])
    assert _table(split) == _table(whole)
    assert split.revision == whole.revision == 15


def test_describe_dumps_the_offerings() -> None:
    snap = loaded()
    described = snap.describe(GET)
    assert len(described) == 1
    assert described[0]["provider"] == "p1"
    assert described[0]["version"] == "1.0.0"
    (endpoint,) = described[0]["endpoints"]  # type: ignore[misc]
    assert endpoint["endpointId"] == "e1"
