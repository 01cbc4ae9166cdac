"""Route policy (router/policy.py): filters, tiers, scores and the pick, on hand-built route tables.

Pure: no network, no clock, no global randomness (every pick uses a seeded `random.Random`).
Seed 001 §5–§10; routing_anchors_and_baselines.md §6.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping

import pytest

from powerx.common.v1 import common_pb2
from router.outlier import EndpointStats
from router.policy import (
    ANY_VERSION,
    DEFAULT_MARGIN,
    DEFAULT_PANIC_THRESHOLD,
    DEFAULT_POLICY,
    DEFAULT_WEIGHTS,
    HEALTHY,
    LATENCY_DECAY_S,
    MAX_ATTEMPTS,
    OFFLINE,
    STALE,
    UNKNOWN,
    UNREACHABLE,
    WARNING,
    Offering,
    Plan,
    Policy,
    RouteEndpoint,
    RouteError,
    RouteRequest,
    Scored,
    VersionRequest,
    parse_version_request,
    pick,
    plan,
    scope_allowed,
)
from servers.common.validate import semver_tuple

GRPC = common_pb2.TRANSPORT_GRPC
HTTP = common_pb2.TRANSPORT_HTTP
MCP = common_pb2.TRANSPORT_MCP
NOW = 1_000.0
CAP = "crm.lead.create"


# --- helpers ---------------------------------------------------------------------------------------


def ep(
    endpoint_id: str,
    transport: int = GRPC,
    health: int = HEALTHY,
    *,
    tenant: str = "t1",
    provider: str = "p1",
    region: str = "",
    weight: int = 0,
    cost: float = 0.0,
) -> RouteEndpoint:
    return RouteEndpoint(
        endpoint_id=endpoint_id,
        provider_id=provider,
        tenant_id=tenant,
        transport=transport,
        uri=f"grpc://{endpoint_id}:50051",
        health=health,
        region=region,
        weight=weight,
        cost=cost,
    )


def offering(
    endpoints: Iterable[RouteEndpoint],
    version: str = "1.0.0",
    *,
    tenant: str = "t1",
    provider: str = "p1",
    grantees: Iterable[str] = (),
    scope: str = "",
    streaming: bool = False,
    cost: float = 0.0,
    policy: Policy = DEFAULT_POLICY,
) -> Offering:
    return Offering(
        capability_id=CAP,
        version=version,
        version_tuple=semver_tuple(version),
        tenant_id=tenant,
        provider_id=provider,
        endpoints=tuple(endpoints),
        grantees=frozenset(grantees),
        scope=scope,
        streaming=streaming,
        cost=cost,
        policy=policy,
    )


def request(tenant: str = "t1", *, version: str = "", **kw: object) -> RouteRequest:
    parsed = parse_version_request(version)
    assert parsed is not None
    return RouteRequest(tenant_id=tenant, version=parsed, **kw)  # type: ignore[arg-type]


def run(
    offerings: Iterable[Offering],
    req: RouteRequest | None = None,
    stats: Mapping[str, EndpointStats] | None = None,
    now: float = NOW,
) -> Plan:
    return plan(list(offerings), req or request(), stats or {}, now, capability_id=CAP)


def route_error(
    offerings: Iterable[Offering],
    req: RouteRequest | None = None,
    stats: Mapping[str, EndpointStats] | None = None,
    now: float = NOW,
) -> RouteError:
    with pytest.raises(RouteError) as info:
        run(offerings, req, stats, now)
    return info.value


def ids(items: Iterable[Scored]) -> list[str]:
    return sorted(s.endpoint.endpoint_id for s in items)


def dropped(p: Plan) -> dict[str, str]:
    return {d.endpoint.endpoint_id: d.reason for d in p.dropped}


def by_id(p: Plan) -> dict[str, Scored]:
    return {s.endpoint.endpoint_id: s for s in p.scored}


def latency_stats(ewma_ms: float, *, last_sample_at: float = NOW, samples: int = 10) -> EndpointStats:
    return EndpointStats(ewma_ms=ewma_ms, samples=samples, last_sample_at=last_sample_at)


def ejected(until: float, failures: int = 5) -> EndpointStats:
    return EndpointStats(ejected_until=until, ejection_failures=failures, ejections=1)


# --- tenant visibility -----------------------------------------------------------------------------


def test_own_tenant_sees_its_offering() -> None:
    p = run([offering([ep("a")], tenant="t1")], request("t1"))
    assert ids(p.candidates) == ["a"]


def test_grantee_tenant_sees_a_shared_offering() -> None:
    p = run([offering([ep("a")], tenant="t1", grantees=["t2"])], request("t2"))
    assert ids(p.candidates) == ["a"]


def test_star_grantee_shares_with_every_tenant() -> None:
    o = offering([ep("a")], tenant="t1", grantees=["*"])
    for caller in ("t2", "t3", "someone-else"):
        assert ids(run([o], request(caller)).candidates) == ["a"]


def test_other_tenant_gets_not_found() -> None:
    o = offering([ep("ep-of-t1")], tenant="t1", grantees=["t2"])
    err = route_error([o], request("t3"))
    assert err.kind == "not_found"
    assert "ep-of-t1" not in err.message
    assert "t1" not in err.message


def test_explain_never_reveals_another_tenants_endpoints() -> None:
    mine = offering([ep("mine-ok"), ep("mine-off", health=OFFLINE)], "1.0.0", tenant="t1")
    secret = offering(
        [ep("secret-1", tenant="t2", provider="p2"), ep("secret-2", tenant="t2", provider="p2")],
        "2.0.0",
        tenant="t2",
        provider="p2",
    )
    p = run([mine, secret], request("t1"))
    seen = {s.endpoint.endpoint_id for s in p.scored} | set(dropped(p))
    assert seen == {"mine-ok", "mine-off"}
    assert all(d.offering.tenant_id == "t1" for d in p.dropped)
    assert p.version == "1.0.0"  # the other tenant's higher version is not even considered


def test_errors_never_reveal_another_tenants_versions_or_endpoints() -> None:
    mine = offering([ep("mine", health=OFFLINE)], "1.0.0", tenant="t1")
    secret = offering([ep("secret", tenant="t2", provider="p2")], "2.5.0", tenant="t2", provider="p2")
    err = route_error([mine, secret], request("t1", version="2"))
    assert err.kind == "version"
    assert "2.5.0" not in err.message
    assert "1.0.0" in err.message  # only what the caller may see is listed
    err = route_error([mine, secret], request("t1"))
    assert err.kind == "unroutable"
    assert "secret" not in err.detail
    assert "forced offline" in err.detail


# --- scope -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "allowed"),
    [
        ({"crm.lead.write"}, True),
        ({"crm.lead.*"}, True),
        ({"crm.*"}, True),
        ({"*"}, True),
        ({"other", "crm.*"}, True),
        (set(), False),
        ({"crm.lead.read"}, False),
        ({"crm"}, False),
        ({"crm.lead"}, False),
        ({"crmx.*"}, False),
        ({"crm.lead.write.*"}, False),
        ({"erp.*"}, False),
    ],
)
def test_scope_allowed(held: set[str], allowed: bool) -> None:
    assert scope_allowed("crm.lead.write", frozenset(held)) is allowed


def test_empty_required_scope_is_always_allowed() -> None:
    assert scope_allowed("", frozenset())


@pytest.mark.parametrize("held", [{"crm.lead.write"}, {"crm.*"}, {"*"}])
def test_plan_with_a_held_scope_routes(held: set[str]) -> None:
    o = offering([ep("a")], scope="crm.lead.write")
    assert ids(run([o], request(scopes=frozenset(held))).candidates) == ["a"]


@pytest.mark.parametrize("held", [set(), {"crm.lead.read"}, {"erp.*"}])
def test_plan_without_the_scope_fails_with_kind_scope(held: set[str]) -> None:
    o = offering([ep("a")], scope="crm.lead.write")
    err = route_error([o], request(scopes=frozenset(held)))
    assert err.kind == "scope"
    assert err.detail == "crm.lead.write"


# --- version requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ANY_VERSION),
        ("   ", ANY_VERSION),
        ("1", VersionRequest(1, 0, 0, False, "1")),
        ("1.2", VersionRequest(1, 2, 0, False, "1.2")),
        ("1.2.3", VersionRequest(1, 2, 3, False, "1.2.3")),
        ("=1.2.3", VersionRequest(1, 2, 3, True, "=1.2.3")),
        ("0", VersionRequest(0, 0, 0, False, "0")),
        (" 2.10 ", VersionRequest(2, 10, 0, False, "2.10")),
    ],
)
def test_parse_version_request(text: str, expected: VersionRequest) -> None:
    assert parse_version_request(text) == expected


@pytest.mark.parametrize(
    "text",
    ["=1", "=1.2", "v1", "1.2.3.4", "01", "1.02", "1.", "1..2", "x", "-1", "*", "^1.2", "~1.2", "1.2.3-rc.1",
     "1.2.3+build", "= 1.2.3", "1 2", ">=1.0.0", "1234567890"],
)  # fmt: skip
def test_parse_version_request_rejects_malformed(text: str) -> None:
    assert parse_version_request(text) is None


def _versions() -> list[Offering]:
    return [
        offering([ep("v100")], "1.0.0"),
        offering([ep("v120")], "1.2.0"),
        offering([ep("v141")], "1.4.1"),
        offering([ep("v200")], "2.0.0"),
    ]


@pytest.mark.parametrize(
    ("wanted", "version", "endpoint"),
    [
        ("", "2.0.0", "v200"),
        ("1", "1.4.1", "v141"),
        ("1.0", "1.4.1", "v141"),
        ("1.2", "1.4.1", "v141"),
        ("1.4", "1.4.1", "v141"),
        ("1.4.1", "1.4.1", "v141"),
        ("=1.2.0", "1.2.0", "v120"),
        ("=1.0.0", "1.0.0", "v100"),
        ("2", "2.0.0", "v200"),
        ("=2.0.0", "2.0.0", "v200"),
    ],
)
def test_version_request_picks_the_highest_compatible(wanted: str, version: str, endpoint: str) -> None:
    p = run(_versions(), request(version=wanted))
    assert p.version == version
    assert ids(p.candidates) == [endpoint]
    assert p.version_fallback is False


def test_compatible_request_never_chooses_another_major() -> None:
    offerings = [offering([ep("one", health=OFFLINE)], "1.0.0"), offering([ep("two")], "2.0.0")]
    err = route_error(offerings, request(version="1"))
    assert err.kind == "unroutable"
    p = run([offering([ep("one")], "1.0.0"), offering([ep("two")], "2.0.0")], request(version="1"))
    assert p.version == "1.0.0"
    assert "two" in dropped(p)
    assert "does not match" in dropped(p)["two"]


def test_lower_matching_version_is_used_when_the_highest_is_unroutable() -> None:
    offerings = [offering([ep("new", health=OFFLINE)], "1.4.1"), offering([ep("old")], "1.2.0")]
    p = run(offerings, request(version="1"))
    assert p.version == "1.2.0"
    assert p.version_fallback is False  # 1.2.0 satisfies "1": not a fallback
    assert ids(p.candidates) == ["old"]
    assert dropped(p)["new"] == "forced offline"


def test_lower_version_is_dropped_while_a_higher_one_is_routable() -> None:
    offerings = [offering([ep("new")], "1.4.1"), offering([ep("old")], "1.2.0")]
    p = run(offerings, request(version="1"))
    assert ids(p.candidates) == ["new"]
    assert "higher version" in dropped(p)["old"]


def test_falls_back_to_an_earlier_minor_of_the_same_major() -> None:
    offerings = [
        offering([ep("v14", health=OFFLINE)], "1.4.0"),
        offering([ep("v12")], "1.2.0"),
        offering([ep("v10")], "1.0.0"),
        offering([ep("v20")], "2.0.0"),
    ]
    p = run(offerings, request(version="1.4"))
    assert p.version == "1.2.0"
    assert p.version_fallback is True
    assert ids(p.candidates) == ["v12"]
    assert "does not match" in dropped(p)["v20"]


def test_falls_back_when_no_matching_version_exists_at_all() -> None:
    p = run([offering([ep("v12")], "1.2.0")], request(version="1.5"))
    assert (p.version, p.version_fallback) == ("1.2.0", True)


def test_matching_version_is_preferred_over_a_fallback() -> None:
    offerings = [offering([ep("v14")], "1.4.0"), offering([ep("v12")], "1.2.0")]
    p = run(offerings, request(version="1.4"))
    assert (p.version, p.version_fallback) == ("1.4.0", False)
    assert ids(p.candidates) == ["v14"]


def test_fallback_never_crosses_to_an_earlier_major() -> None:
    offerings = [offering([ep("v21", health=OFFLINE)], "2.1.0"), offering([ep("v19")], "1.9.0")]
    err = route_error(offerings, request(version="2.1"))
    assert err.kind == "unroutable"


def test_exact_request_never_falls_back() -> None:
    offerings = [offering([ep("v141", health=OFFLINE)], "1.4.1"), offering([ep("v120")], "1.2.0")]
    err = route_error(offerings, request(version="=1.4.1"))
    assert err.kind == "unroutable"
    assert "forced offline" in err.detail


def test_exact_request_for_a_missing_version_fails_with_kind_version() -> None:
    err = route_error(_versions(), request(version="=1.3.0"))
    assert err.kind == "version"
    assert "1.2.0" in err.message  # the available versions are listed


def test_unmatched_version_fails_with_kind_version() -> None:
    err = route_error(_versions(), request(version="3"))
    assert err.kind == "version"
    for v in ("1.0.0", "1.2.0", "1.4.1", "2.0.0"):
        assert v in err.message


def test_version_request_matches() -> None:
    req = parse_version_request("1.2")
    assert req is not None
    assert req.matches((1, 2, 0, ""))
    assert req.matches((1, 9, 9, ""))
    assert not req.matches((1, 1, 9, ""))
    assert not req.matches((2, 0, 0, ""))
    assert req.fallback_ok((1, 1, 9, ""))
    assert not req.fallback_ok((0, 9, 0, ""))
    exact = parse_version_request("=1.2.3")
    assert exact is not None
    assert exact.matches((1, 2, 3, ""))
    assert not exact.matches((1, 2, 4, ""))
    assert not exact.matches((1, 2, 3, "rc.1"))
    assert not exact.fallback_ok((1, 2, 2, ""))
    assert ANY_VERSION.matches((7, 0, 0, ""))
    assert not ANY_VERSION.fallback_ok((7, 0, 0, ""))


def test_release_outranks_its_pre_release() -> None:
    offerings = [offering([ep("rc")], "1.0.0-rc.1"), offering([ep("ga")], "1.0.0")]
    p = run(offerings, request())
    assert p.version == "1.0.0"
    assert ids(p.candidates) == ["ga"]


# --- streaming -------------------------------------------------------------------------------------


def test_streaming_mismatch_fails_with_kind_streaming() -> None:
    unary = offering([ep("a")], streaming=False)
    assert route_error([unary], request(streaming=True)).kind == "streaming"
    stream = offering([ep("b")], streaming=True)
    assert route_error([stream], request(streaming=False)).kind == "streaming"


def test_streaming_match_or_unspecified_routes() -> None:
    stream = offering([ep("b")], streaming=True)
    assert ids(run([stream], request(streaming=True)).candidates) == ["b"]
    assert ids(run([stream], request(streaming=None)).candidates) == ["b"]


def test_streaming_filter_picks_the_matching_version() -> None:
    offerings = [offering([ep("s")], "1.1.0", streaming=True), offering([ep("u")], "1.0.0")]
    p = run(offerings, request(streaming=False))
    assert p.version == "1.0.0"
    assert "streaming" in dropped(p)["s"]


# --- only / exclude --------------------------------------------------------------------------------


def test_only_transports() -> None:
    o = offering([ep("g", GRPC), ep("h", HTTP), ep("m", MCP)])
    p = run([o], request(only_transports=frozenset({HTTP})))
    assert ids(p.scored) == ["h"]
    assert dropped(p) == {"g": "transport grpc is not in only", "m": "transport mcp is not in only"}


def test_only_regions() -> None:
    o = offering([ep("eu", region="eu-west"), ep("us", region="us-east"), ep("none")])
    p = run([o], request(only_regions=frozenset({"eu-west"})))
    assert ids(p.scored) == ["eu"]
    assert dropped(p)["none"] == "region (none) is not in only"
    assert dropped(p)["us"] == "region us-east is not in only"


def test_only_that_matches_nothing_is_unroutable() -> None:
    o = offering([ep("g", GRPC)])
    err = route_error([o], request(only_transports=frozenset({HTTP})))
    assert err.kind == "unroutable"
    assert "not in only" in err.detail


def test_exclude() -> None:
    o = offering([ep("a"), ep("b")])
    p = run([o], request(exclude=frozenset({"a"})))
    assert ids(p.scored) == ["b"]
    assert dropped(p) == {"a": "already tried in this call"}
    err = route_error([o], request(exclude=frozenset({"a", "b"})))
    assert err.kind == "unroutable"


# --- health and panic ------------------------------------------------------------------------------


@pytest.mark.parametrize("health", [HEALTHY, WARNING])
def test_healthy_and_warning_are_routable(health: int) -> None:
    p = run([offering([ep("ok"), ep("x", health=health)])])
    assert ids(p.scored) == ["ok", "x"]
    assert p.panic is False


@pytest.mark.parametrize("health", [STALE, UNREACHABLE, UNKNOWN])
def test_unhealthy_states_are_not_routable_outside_panic(health: int) -> None:
    p = run([offering([ep("ok"), ep("x", health=health)])])
    assert p.panic is False
    assert ids(p.scored) == ["ok"]
    assert dropped(p)["x"].startswith("health ")


@pytest.mark.parametrize("health", [STALE, UNREACHABLE, UNKNOWN])
def test_unhealthy_states_are_routable_in_panic(health: int) -> None:
    p = run([offering([ep("ok"), ep("x", health=health), ep("y", health=health)])])
    assert p.panic is True
    assert ids(p.scored) == ["ok", "x", "y"]
    assert ids(p.candidates) == ["ok"]  # health still weighs in the score


def test_offline_is_never_routed_even_in_panic() -> None:
    o = offering([ep("off", health=OFFLINE), ep("u1", health=UNREACHABLE), ep("u2", health=UNREACHABLE)])
    p = run([o])
    assert p.panic is True
    assert ids(p.scored) == ["u1", "u2"]
    assert dropped(p)["off"] == "forced offline"


def test_all_offline_is_unroutable() -> None:
    err = route_error([offering([ep("a", health=OFFLINE), ep("b", health=OFFLINE)])])
    assert err.kind == "unroutable"
    assert "forced offline" in err.detail


def test_default_panic_threshold_is_half() -> None:
    assert DEFAULT_POLICY.panic_threshold == DEFAULT_PANIC_THRESHOLD == 0.5


def test_exactly_at_the_panic_threshold_is_not_panic() -> None:
    # 1 of 2 routable = 50 %: not below the threshold.
    p = run([offering([ep("ok"), ep("bad", health=UNREACHABLE)])])
    assert p.panic is False
    assert ids(p.scored) == ["ok"]
    # 2 of 4 routable: still exactly at it.
    o = offering([ep("a"), ep("b", health=WARNING), ep("c", health=STALE), ep("d", health=UNKNOWN)])
    assert run([o]).panic is False


def test_below_the_panic_threshold_is_panic() -> None:
    p = run([offering([ep("ok"), ep("b1", health=UNREACHABLE), ep("b2", health=STALE)])])
    assert p.panic is True
    assert ids(p.scored) == ["b1", "b2", "ok"]


def test_no_routable_endpoint_at_all_is_panic() -> None:
    p = run([offering([ep("u", health=UNREACHABLE)])])
    assert p.panic is True
    assert ids(p.candidates) == ["u"]


def test_custom_panic_threshold() -> None:
    strict = Policy(panic_threshold=0.9)
    o = offering([ep("a"), ep("b"), ep("c"), ep("d", health=STALE)], policy=strict)
    p = run([o])  # 3 of 4 = 75 % < 90 %
    assert p.panic is True
    assert ids(p.scored) == ["a", "b", "c", "d"]


def test_negative_panic_threshold_disables_panic() -> None:
    off = Policy(panic_threshold=-1.0)
    o = offering([ep("a", health=UNREACHABLE), ep("b", health=STALE)], policy=off)
    err = route_error([o])
    assert err.kind == "unroutable"
    assert "health unreachable" in err.detail
    assert "health stale" in err.detail
    p = run([offering([ep("ok"), ep("u1", health=UNREACHABLE), ep("u2", health=UNREACHABLE)], policy=off)])
    assert p.panic is False
    assert ids(p.scored) == ["ok"]


# --- passive ejection ------------------------------------------------------------------------------


def test_ejected_endpoint_is_dropped() -> None:
    o = offering([ep("a"), ep("b")])
    p = run([o], stats={"a": ejected(NOW + 10.0, failures=5)})
    assert ids(p.scored) == ["b"]
    assert dropped(p)["a"] == "ejected for 10.0s after 5 consecutive failures"
    assert p.valid_until == NOW + 10.0


def test_ejection_that_ended_is_not_dropped() -> None:
    o = offering([ep("a"), ep("b")])
    p = run([o], stats={"a": ejected(NOW)})  # ends exactly now
    assert ids(p.scored) == ["a", "b"]
    assert p.valid_until == math.inf


def test_ejected_endpoint_is_dropped_even_in_panic() -> None:
    o = offering([ep("a"), ep("u1", health=UNREACHABLE), ep("u2", health=UNREACHABLE)])
    p = run([o], stats={"a": ejected(NOW + 30.0)})
    assert p.panic is True
    assert ids(p.scored) == ["u1", "u2"]
    assert dropped(p)["a"].startswith("ejected")


def test_all_ejected_fails_with_kind_ejected_and_retry_after() -> None:
    o = offering([ep("a"), ep("b"), ep("c", health=OFFLINE)])
    stats = {"a": ejected(NOW + 12.5), "b": ejected(NOW + 4.0)}
    err = route_error([o], stats=stats)
    assert err.kind == "ejected"
    assert err.retry_after_s == pytest.approx(4.0)


def test_valid_until_is_the_earliest_ejection_end() -> None:
    o = offering([ep("a"), ep("b"), ep("c")])
    stats = {"a": ejected(NOW + 50.0), "b": ejected(NOW + 5.0)}
    p = run([o], stats=stats)
    assert ids(p.scored) == ["c"]
    assert p.valid_until == NOW + 5.0


def test_valid_until_is_infinite_without_ejections() -> None:
    p = run([offering([ep("a")])], stats={"a": latency_stats(10.0)})
    assert p.valid_until == math.inf


def test_fallback_plan_expires_when_the_ejected_matching_version_returns() -> None:
    offerings = [offering([ep("v13")], "1.3.0"), offering([ep("v12")], "1.2.0")]
    p = run(offerings, request(version="1.3"), stats={"v13": ejected(NOW + 20.0)})
    assert (p.version, p.version_fallback) == ("1.2.0", True)
    assert p.valid_until == NOW + 20.0


# --- tiers: transport and region preferences -------------------------------------------------------


def test_preferred_transport_wins_and_the_other_is_a_fallback() -> None:
    o = offering([ep("g", GRPC), ep("h", HTTP)])
    p = run([o], request(prefer_transports=(GRPC, HTTP)))
    assert ids(p.scored) == ["g"]
    assert dropped(p)["h"] == "transport http is a fallback while grpc is routable"


@pytest.mark.parametrize(
    ("stats", "health"),
    [({}, OFFLINE), ({"g": ejected(NOW + 30.0)}, HEALTHY), ({}, UNREACHABLE)],
    ids=["offline", "ejected", "unreachable"],
)
def test_fallback_transport_is_used_when_no_preferred_endpoint_is_routable(
    stats: dict[str, EndpointStats], health: int
) -> None:
    o = offering([ep("g", GRPC, health), ep("h", HTTP)])
    p = run([o], request(prefer_transports=(GRPC, HTTP)), stats=stats)
    assert ids(p.candidates) == ["h"]
    assert p.panic is False


def test_panic_does_not_prefer_unreachable_preferred_transport_over_a_healthy_fallback() -> None:
    o = offering([ep("g1", GRPC, UNREACHABLE), ep("g2", GRPC, UNREACHABLE), ep("h", HTTP)])
    p = run([o], request(prefer_transports=(GRPC, HTTP)))
    assert ids(p.candidates) == ["h"]


def test_panic_does_not_prefer_an_unreachable_higher_version_over_a_healthy_lower_one() -> None:
    offerings = [
        offering([ep("a", health=UNREACHABLE), ep("b", health=UNREACHABLE)], "1.3.0"),
        offering([ep("c")], "1.2.0"),
    ]
    p = run(offerings, request(version="1"))
    assert p.version == "1.2.0"
    assert ids(p.candidates) == ["c"]


def test_capability_transport_order_is_used_when_the_request_has_none() -> None:
    pol = Policy(transport_order=(HTTP, GRPC))
    o = offering([ep("g", GRPC), ep("h", HTTP)], policy=pol)
    p = run([o])
    assert ids(p.scored) == ["h"]
    assert dropped(p)["g"] == "transport grpc is a fallback while http is routable"
    # The request's preference overrides the capability's order.
    assert ids(run([o], request(prefer_transports=(GRPC,))).scored) == ["g"]


def test_no_transport_preference_scores_every_transport() -> None:
    o = offering([ep("g", GRPC), ep("h", HTTP), ep("m", MCP)])
    assert ids(run([o]).scored) == ["g", "h", "m"]


def test_transports_missing_from_the_order_share_the_last_tier() -> None:
    o = offering([ep("h", HTTP), ep("m", MCP)])
    p = run([o], request(prefer_transports=(GRPC,)))
    assert ids(p.scored) == ["h", "m"]


def test_preferred_region_wins_and_the_other_is_a_fallback() -> None:
    o = offering([ep("eu", region="eu"), ep("us", region="us"), ep("none")])
    p = run([o], request(prefer_regions=("eu", "us")))
    assert ids(p.scored) == ["eu"]
    assert dropped(p)["us"] == "region us is a fallback while eu is routable"
    assert dropped(p)["none"] == "region (none) is a fallback while eu is routable"


def test_fallback_region_is_used_when_the_preferred_one_is_unroutable() -> None:
    o = offering([ep("eu", region="eu", health=OFFLINE), ep("us", region="us"), ep("ap", region="ap")])
    p = run([o], request(prefer_regions=("eu", "us")))
    assert ids(p.scored) == ["us"]
    assert dropped(p)["ap"] == "region ap is a fallback while us is routable"


def test_transport_tier_comes_before_region_tier() -> None:
    o = offering([ep("g-us", GRPC, region="us"), ep("h-eu", HTTP, region="eu")])
    p = run([o], request(prefer_transports=(GRPC,), prefer_regions=("eu",)))
    assert ids(p.scored) == ["g-us"]
    assert "transport http is a fallback" in dropped(p)["h-eu"]


# --- score parts -----------------------------------------------------------------------------------


def test_health_score_parts() -> None:
    p = run([offering([ep("h"), ep("w", health=WARNING)])])
    assert by_id(p)["h"].health == 1.0
    assert by_id(p)["w"].health == 0.5
    p = run([offering([ep("k", health=UNKNOWN), ep("u", health=UNREACHABLE), ep("s", health=STALE)])])
    assert p.panic is True
    assert by_id(p)["k"].health == 0.25
    assert by_id(p)["u"].health == 0.0
    assert by_id(p)["s"].health == 0.0


def test_latency_fastest_is_one_and_others_are_best_over_ewma() -> None:
    o = offering([ep("fast"), ep("slow"), ep("cold"), ep("nosamples")])
    stats = {
        "fast": latency_stats(100.0),
        "slow": latency_stats(400.0),
        "nosamples": EndpointStats(ewma_ms=0.0, samples=0),
    }
    s = by_id(run([o], stats=stats))
    assert s["fast"].latency == 1.0
    assert s["slow"].latency == pytest.approx(0.25)
    assert s["cold"].latency == 1.0  # no statistics: counts as the best, so it gets traffic
    assert s["nosamples"].latency == 1.0


def test_latency_without_any_samples_is_one_for_all() -> None:
    s = by_id(run([offering([ep("a"), ep("b")])]))
    assert s["a"].latency == s["b"].latency == 1.0


def test_idle_slow_endpoint_decays_toward_the_best() -> None:
    o = offering([ep("fast"), ep("slow")])

    def slow_latency(idle_s: float) -> float:
        stats = {"fast": latency_stats(100.0), "slow": latency_stats(300.0, last_sample_at=NOW - idle_s)}
        return by_id(run([o], stats=stats))["slow"].latency

    assert slow_latency(0.0) == pytest.approx(100.0 / 300.0)
    one_decay = 100.0 / (100.0 + 200.0 * math.exp(-1.0))
    assert slow_latency(LATENCY_DECAY_S) == pytest.approx(one_decay)
    values = [slow_latency(t) for t in (0.0, 10.0, 30.0, 60.0, 120.0, 600.0)]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(1.0, abs=1e-6)


def test_cost_cheapest_is_one_dearest_is_zero() -> None:
    o = offering([ep("cheap", cost=1.0), ep("mid", cost=2.0), ep("dear", cost=3.0)])
    s = by_id(run([o]))
    assert s["cheap"].cost == 1.0
    assert s["mid"].cost == pytest.approx(0.5)
    assert s["dear"].cost == 0.0


def test_cost_all_equal_is_one() -> None:
    s = by_id(run([offering([ep("a", cost=2.0), ep("b", cost=2.0)])]))
    assert s["a"].cost == s["b"].cost == 1.0


def test_endpoint_cost_overrides_offering_cost() -> None:
    o = offering([ep("own", cost=1.0), ep("inherits")], cost=5.0)
    s = by_id(run([o]))
    assert s["own"].cost == 1.0
    assert s["inherits"].cost == 0.0


def test_region_score_parts() -> None:
    o = offering([ep("eu", region="eu"), ep("us", region="us"), ep("none")])
    s = by_id(run([o], request(region="eu")))
    assert (s["eu"].region, s["us"].region, s["none"].region) == (1.0, 0.0, 0.5)
    s = by_id(run([o], request(region="")))
    assert {x.region for x in s.values()} == {0.5}


def test_default_weights() -> None:
    assert DEFAULT_WEIGHTS == (0.4, 0.3, 0.2, 0.1)
    o = offering(
        [ep("best", region="eu", cost=1.0), ep("worst", health=WARNING, region="us", cost=3.0)],
    )
    stats = {"best": latency_stats(100.0), "worst": latency_stats(200.0)}
    s = by_id(run([o], request(region="eu"), stats=stats))
    assert s["best"].score == pytest.approx(0.4 * 1 + 0.3 * 1 + 0.2 * 1 + 0.1 * 1)
    assert s["worst"].score == pytest.approx(0.4 * 0.5 + 0.3 * 0.5 + 0.2 * 0 + 0.1 * 0)


def test_per_capability_weights() -> None:
    latency_only = Policy.from_fields((0.0, 1.0, 0.0, 0.0), 0.0, 0.0, 0, [])
    assert latency_only.weights == (0.0, 1.0, 0.0, 0.0)
    o = offering([ep("warn-fast", health=WARNING), ep("healthy-slow")], policy=latency_only)
    stats = {"warn-fast": latency_stats(60.0), "healthy-slow": latency_stats(100.0)}
    p = run([o], stats=stats)
    assert by_id(p)["warn-fast"].score == pytest.approx(1.0)
    assert by_id(p)["healthy-slow"].score == pytest.approx(0.6)
    assert ids(p.candidates) == ["warn-fast"]
    # With the default weights health wins instead (0.83 against 0.75).
    p = run([offering(o.endpoints)], stats=stats)
    assert by_id(p)["healthy-slow"].score == pytest.approx(0.4 + 0.3 * 0.6 + 0.2 + 0.05)
    assert by_id(p)["warn-fast"].score == pytest.approx(0.2 + 0.3 + 0.2 + 0.05)
    assert ids(p.candidates) == ["healthy-slow"]


def test_policy_from_fields_applies_defaults() -> None:
    p = Policy.from_fields((0.0, 0.0, 0.0, 0.0), 0.0, 0.0, 0, [])
    assert p == Policy()
    assert p.weights == DEFAULT_WEIGHTS
    assert p.margin == DEFAULT_MARGIN
    assert p.panic_threshold == DEFAULT_PANIC_THRESHOLD
    assert p.max_attempts == 3
    assert Policy.from_fields((0, 0, 0, 0), 0, -1.0, 0, []).panic_threshold == -1.0
    assert Policy.from_fields((0, 0, 0, 0), 0, 0, 50, []).max_attempts == MAX_ATTEMPTS
    q = Policy.from_fields((1.0, 0.0, 0.0, 0.0), 0.2, 0.3, 2, [HTTP, GRPC])
    assert q == Policy((1.0, 0.0, 0.0, 0.0), 0.2, 0.3, 2, (HTTP, GRPC))


def test_only_endpoints_within_the_margin_are_candidates() -> None:
    o = offering([ep("best"), ep("close"), ep("far")])
    stats = {
        "best": latency_stats(100.0),
        "close": latency_stats(100.0 / 0.9),  # latency 0.9: score 0.03 under the best
        "far": latency_stats(200.0),  # latency 0.5: score 0.15 under the best
    }
    p = run([o], stats=stats)
    assert ids(p.candidates) == ["best", "close"]
    assert ids(p.scored) == ["best", "close", "far"]
    assert [s.endpoint.endpoint_id for s in p.scored] == ["best", "close", "far"]  # best first
    wide = Policy(margin=0.2)
    p = run([offering(o.endpoints, policy=wide)], stats=stats)
    assert ids(p.candidates) == ["best", "close", "far"]


# --- pick ------------------------------------------------------------------------------------------


def _candidates(*names: str, weights: Mapping[str, int] | None = None) -> tuple[Scored, ...]:
    weights = weights or {}
    o = offering([ep(n, weight=weights.get(n, 0)) for n in names])
    p = run([o])
    assert ids(p.candidates) == sorted(names)
    return p.candidates


def _counts(cands: tuple[Scored, ...], stats: Mapping[str, EndpointStats], n: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    return Counter(pick(cands, stats, rng).endpoint.endpoint_id for _ in range(n))


def test_single_candidate_is_picked() -> None:
    (only,) = _candidates("a")
    rng = random.Random(1)
    assert all(pick((only,), {}, rng) is only for _ in range(20))


def test_pick_prefers_the_lower_in_flight() -> None:
    cands = _candidates("idle", "busy")
    stats = {"idle": EndpointStats(in_flight=0), "busy": EndpointStats(in_flight=5)}
    assert _counts(cands, stats, 500, seed=7) == Counter({"idle": 500})


def test_power_of_two_choices_never_picks_the_busiest() -> None:
    cands = _candidates("a", "b", "c")
    stats = {
        "a": EndpointStats(in_flight=0),
        "b": EndpointStats(in_flight=1),
        "c": EndpointStats(in_flight=5),
    }
    counts = _counts(cands, stats, 3000, seed=11)
    assert counts["c"] == 0
    # a wins every pair it is in (2 of 3 pairs), b wins the remaining one.
    assert counts["a"] / 3000 == pytest.approx(2 / 3, abs=0.04)
    assert counts["b"] / 3000 == pytest.approx(1 / 3, abs=0.04)


def test_weight_scales_the_load() -> None:
    cands = _candidates("heavy", "light", weights={"heavy": 2, "light": 1})
    # weight 2 with 1 in flight ties weight 1 with 0 in flight: a fair coin.
    tie = {"heavy": EndpointStats(in_flight=1), "light": EndpointStats(in_flight=0)}
    counts = _counts(cands, tie, 2000, seed=3)
    assert 900 <= counts["heavy"] <= 1100
    assert 900 <= counts["light"] <= 1100
    # weight 2 with 2 in flight (load 1.5) loses to weight 1 with 0 (load 1).
    busier = {"heavy": EndpointStats(in_flight=2), "light": EndpointStats(in_flight=0)}
    assert _counts(cands, busier, 200, seed=3) == Counter({"light": 200})
    # weight 2 with 0 in flight (load 0.5) beats weight 1 with 0 (load 1).
    idle = {"heavy": EndpointStats(), "light": EndpointStats()}
    assert _counts(cands, idle, 200, seed=3) == Counter({"heavy": 200})


def test_weight_zero_counts_as_one() -> None:
    cands = _candidates("zero", "one", weights={"zero": 0, "one": 1})
    counts = _counts(cands, {}, 2000, seed=5)
    assert 900 <= counts["zero"] <= 1100


@pytest.mark.parametrize("seed", [0, 1, 2024])
@pytest.mark.parametrize("n", [2, 4])
def test_ties_are_broken_at_random_with_fair_shares(seed: int, n: int) -> None:
    names = [f"e{i}" for i in range(n)]
    cands = _candidates(*names)
    stats = {name: EndpointStats(in_flight=3) for name in names}
    counts = _counts(cands, stats, 2000, seed=seed)
    fair = 2000 / n
    for name in names:
        assert fair * 0.9 <= counts[name] <= fair * 1.1, counts


def test_no_starvation_under_load() -> None:
    """Each pick adds a call in flight (none finish): P2C keeps the endpoints within a few calls."""
    names = ["a", "b", "c", "d", "e"]
    cands = _candidates(*names)
    stats = {name: EndpointStats() for name in names}
    rng = random.Random(42)
    for _ in range(1000):
        stats[pick(cands, stats, rng).endpoint.endpoint_id].in_flight += 1
    loads = [stats[n].in_flight for n in names]
    assert sum(loads) == 1000
    assert max(loads) - min(loads) <= 4, loads


def test_pick_is_reproducible_with_the_same_seed() -> None:
    cands = _candidates("a", "b", "c", "d")
    first = [pick(cands, {}, random.Random(9)).endpoint.endpoint_id for _ in range(5)]
    rng1, rng2 = random.Random(99), random.Random(99)
    seq1 = [pick(cands, {}, rng1).endpoint.endpoint_id for _ in range(50)]
    seq2 = [pick(cands, {}, rng2).endpoint.endpoint_id for _ in range(50)]
    assert seq1 == seq2
    assert len(set(first)) == 1
