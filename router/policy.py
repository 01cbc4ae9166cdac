"""Route policy: which endpoints may serve a call, how they score, and which one is picked.

Pure: no I/O, no clock, no global randomness. The caller passes the route table of one capability,
the request, the live endpoint statistics, the time and a random source.

Steps, in order (seed 001 §6–§7, §9–§10):
1. Tenant: offerings the caller's tenant may not see are left out entirely (explain never reveals
   another tenant's endpoints).
2. Version: `""` any; `1` or `1.2` or `1.2.3` compatible (same major, at least that version, the
   highest routable one preferred); `=1.2.3` exactly. When no matching version is routable, an
   earlier minor of the same major is used (`version_fallback`); an exact request never falls back.
3. Scope: the caller must hold the capability's security scope (`crm.lead.write`, `crm.*` or `*`).
4. Per endpoint: `only` (transport, region), already-tried endpoints, forced offline, passive
   ejection, health and lease (healthy and warning are routable; stale, unreachable and unknown only
   in panic mode, i.e. when the routable share drops under the panic threshold).
5. Tiers: the highest routable version; then the caller's `prefer` order (or the capability's
   `transport_order`) for transports and regions: lower tiers are fallbacks, used when nothing in a
   higher one is routable.
6. Score `w_h·health + w_l·latency + w_c·cost + w_r·region`; endpoints within the margin of the best
   are candidates; the pick among them is power-of-two-choices on in-flight calls (weighted),
   ties broken at random.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from powerx.common.v1 import common_pb2
from router.outlier import EndpointStats

HEALTHY = common_pb2.HEALTH_STATE_HEALTHY
WARNING = common_pb2.HEALTH_STATE_WARNING
UNREACHABLE = common_pb2.HEALTH_STATE_UNREACHABLE
STALE = common_pb2.HEALTH_STATE_STALE
UNKNOWN = common_pb2.HEALTH_STATE_UNKNOWN
OFFLINE = common_pb2.HEALTH_STATE_OFFLINE

HEALTH_SCORE: Mapping[int, float] = {HEALTHY: 1.0, WARNING: 0.5, UNKNOWN: 0.25}
ROUTABLE = frozenset({HEALTHY, WARNING})
# Routable only in panic mode: the endpoint may well be fine (an expired lease, a failed probe).
PANIC_ROUTABLE = frozenset({STALE, UNREACHABLE, UNKNOWN})

DEFAULT_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
DEFAULT_MARGIN = 0.05
DEFAULT_PANIC_THRESHOLD = 0.5
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS = 10
# How fast an idle endpoint's latency estimate forgets a slow past (seconds): a slow endpoint that got
# no traffic is tried again instead of being starved forever.
LATENCY_DECAY_S = 30.0

_VERSION_REQUEST = re.compile(r"^(=)?(0|[1-9]\d{0,8})(?:\.(0|[1-9]\d{0,8})(?:\.(0|[1-9]\d{0,8}))?)?$")


@dataclass(frozen=True, slots=True)
class Policy:
    """A capability's routing policy with defaults applied (see powerx.registry.v1.RoutingPolicy)."""

    weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS
    margin: float = DEFAULT_MARGIN
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    transport_order: tuple[int, ...] = ()

    @classmethod
    def from_fields(
        cls,
        weights: tuple[float, float, float, float],
        margin: float,
        panic_threshold: float,
        max_attempts: int,
        transport_order: Sequence[int],
    ) -> Policy:
        """Applies the defaults the proto documents to raw field values."""
        return cls(
            weights=weights if any(weights) else DEFAULT_WEIGHTS,
            margin=margin or DEFAULT_MARGIN,
            panic_threshold=panic_threshold or DEFAULT_PANIC_THRESHOLD,
            max_attempts=min(max_attempts or DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS),
            transport_order=tuple(transport_order),
        )


DEFAULT_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class RouteEndpoint:
    """An endpoint as the router sees it in its snapshot."""

    endpoint_id: str
    provider_id: str
    tenant_id: str
    transport: int
    uri: str
    health: int = HEALTHY
    region: str = ""
    weight: int = 0
    cost: float = 0.0
    session_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Offering:
    """One provider's offer of one version of a capability, with the endpoints serving it."""

    capability_id: str
    version: str
    version_tuple: tuple[int, int, int, str]
    tenant_id: str
    provider_id: str
    endpoints: tuple[RouteEndpoint, ...]
    grantees: frozenset[str] = frozenset()
    scope: str = ""
    idempotent: bool = False
    streaming: bool = False
    cost: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    policy: Policy = DEFAULT_POLICY
    # Checks call arguments against the capability's input schema: returns (field, problem) pairs.
    check_arguments: Callable[[Any], list[tuple[str, str]]] | None = None

    def visible_to(self, tenant_id: str) -> bool:
        """Whether a caller of `tenant_id` may see and call this offering."""
        return tenant_id == self.tenant_id or tenant_id in self.grantees or "*" in self.grantees


@dataclass(frozen=True, slots=True)
class VersionRequest:
    """A parsed version request: `exact`, or compatible with (major, minor, patch)."""

    major: int | None = None
    minor: int = 0
    patch: int = 0
    exact: bool = False
    text: str = ""

    def matches(self, v: tuple[int, int, int, str]) -> bool:
        """Whether version `v` satisfies the request (exact, or same major and at least the request)."""
        if self.major is None:
            return True
        if self.exact:
            return v[:3] == (self.major, self.minor, self.patch) and not v[3]
        return v[0] == self.major and v[:3] >= (self.major, self.minor, self.patch)

    def fallback_ok(self, v: tuple[int, int, int, str]) -> bool:
        """Whether `v` is an acceptable earlier version when nothing matching is routable."""
        if self.major is None or self.exact:
            return False
        return v[0] == self.major and v[:3] < (self.major, self.minor, self.patch)


ANY_VERSION = VersionRequest()


def version_order(v: tuple[int, int, int, str]) -> tuple[int, int, int, bool, str]:
    """Sort key of a version tuple: a release ranks above its pre-releases (1.0.0 > 1.0.0-rc.1)."""
    return (v[0], v[1], v[2], not v[3], v[3])


def parse_version_request(text: str) -> VersionRequest | None:
    """Parses `""`, `1`, `1.2`, `1.2.3` or `=1.2.3`; None when malformed."""
    text = text.strip()
    if not text:
        return ANY_VERSION
    m = _VERSION_REQUEST.match(text)
    if not m:
        return None
    exact, major, minor, patch = m.groups()
    if exact and (minor is None or patch is None):
        return None
    return VersionRequest(int(major), int(minor or 0), int(patch or 0), bool(exact), text)


def scope_allowed(required: str, held: frozenset[str]) -> bool:
    """Whether scopes `held` grant `required` (exact, `*`, or a `prefix.*` wildcard)."""
    if not required or required in held or "*" in held:
        return True
    parts = required.split(".")
    return any(".".join(parts[:i]) + ".*" in held for i in range(1, len(parts)))


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the caller asked for."""

    tenant_id: str
    scopes: frozenset[str] = frozenset()
    version: VersionRequest = ANY_VERSION
    prefer_transports: tuple[int, ...] = ()
    prefer_regions: tuple[str, ...] = ()
    only_transports: frozenset[int] = frozenset()
    only_regions: frozenset[str] = frozenset()
    region: str = ""
    exclude: frozenset[str] = frozenset()
    streaming: bool | None = None


@dataclass(frozen=True, slots=True)
class Scored:
    """A routable endpoint with its score."""

    offering: Offering
    endpoint: RouteEndpoint
    score: float
    health: float
    latency: float
    cost: float
    region: float


@dataclass(frozen=True, slots=True)
class Dropped:
    """An endpoint that was not routable, and why."""

    offering: Offering
    endpoint: RouteEndpoint
    reason: str


class RouteError(Exception):
    """No endpoint can serve the call.

    Attributes:
        kind: `not_found`, `version`, `scope`, `streaming`, `ejected` or `unroutable`.
        retry_after_s: For `ejected`: when the first ejected endpoint comes back.
    """

    def __init__(self, kind: str, message: str, *, retry_after_s: float = 0.0, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of filtering and scoring: the candidates to pick from, and what was dropped."""

    candidates: tuple[Scored, ...]
    scored: tuple[Scored, ...]
    dropped: tuple[Dropped, ...]
    version: str
    version_fallback: bool
    panic: bool
    # Earliest time (same clock as `now`) at which an ejection ends: the plan is stale after it.
    valid_until: float = math.inf


def _transport_name(t: int) -> str:
    return common_pb2.Transport.Name(t).removeprefix("TRANSPORT_").lower() if t else "unspecified"


def _health_name(h: int) -> str:
    return common_pb2.HealthState.Name(h).removeprefix("HEALTH_STATE_").lower() if h else "unspecified"


def _tier_of(value: object, order: Sequence[object]) -> int:
    if not order:
        return 0
    try:
        return order.index(value)
    except ValueError:
        return len(order)


def plan(
    offerings: Sequence[Offering],
    req: RouteRequest,
    stats: Mapping[str, EndpointStats],
    now: float,
    *,
    capability_id: str = "",
) -> Plan:
    """Filters and scores the endpoints of one capability for a request; raises RouteError."""
    visible = [o for o in offerings if o.visible_to(req.tenant_id)]
    if not visible:
        raise RouteError("not_found", f"capability {capability_id} not found")
    dropped: list[Dropped] = []

    def drop(o: Offering, reason: str, eps: Iterable[RouteEndpoint] | None = None) -> None:
        for e in o.endpoints if eps is None else eps:
            dropped.append(Dropped(o, e, reason))

    # Version and scope, per offering.
    matching: list[Offering] = []
    fallback: list[Offering] = []
    wanted = req.version
    for o in visible:
        if wanted.matches(o.version_tuple):
            target = matching
        elif wanted.fallback_ok(o.version_tuple):
            target = fallback
        else:
            drop(o, f"version {o.version} does not match {wanted.text}")
            continue
        if not scope_allowed(o.scope, req.scopes):
            drop(o, f"the caller lacks scope {o.scope}")
            continue
        if req.streaming is not None and o.streaming != req.streaming:
            kind = "streaming" if o.streaming else "unary"
            drop(o, f"version {o.version} is {kind}")
            continue
        target.append(o)
    if not matching and not fallback:
        _raise_for_offerings(visible, req, capability_id)

    # Endpoint filters, then panic, over the matching versions first and the fallbacks second.
    for group, is_fallback in ((matching, False), (fallback, True)):
        if not group:
            continue
        result = _plan_group(group, req, stats, now, dropped=dropped, is_fallback=is_fallback)
        if result is not None:
            # Stale once any ejection seen on the way ends (also one in a matching version we fell back from).
            ends = [
                stats[d.endpoint.endpoint_id].ejected_until
                for d in dropped
                if d.reason.startswith("ejected") and d.endpoint.endpoint_id in stats
            ]
            if ends and min(ends) < result.valid_until:
                result = dataclasses.replace(result, valid_until=min(ends))
            return result
    # Nothing routable: say why, preferring the most useful reason.
    ejected_until = [
        stats[d.endpoint.endpoint_id].ejected_until
        for d in dropped
        if d.reason.startswith("ejected") and d.endpoint.endpoint_id in stats
    ]
    if ejected_until:
        raise RouteError(
            "ejected",
            f"every endpoint of {capability_id} is ejected after consecutive failures",
            retry_after_s=max(0.0, min(ejected_until) - now),
        )
    raise RouteError(
        "unroutable",
        f"no routable endpoint for {capability_id}",
        detail="; ".join(sorted({d.reason for d in dropped}))[:500],
    )


def _raise_for_offerings(visible: Sequence[Offering], req: RouteRequest, capability_id: str) -> None:
    versioned = [
        o for o in visible if req.version.matches(o.version_tuple) or req.version.fallback_ok(o.version_tuple)
    ]
    if not versioned:
        have = ", ".join(sorted({o.version for o in visible}))
        raise RouteError(
            "version",
            f"no version of {capability_id} matches {req.version.text} (available: {have})",
        )
    scoped = [o for o in versioned if scope_allowed(o.scope, req.scopes)]
    if not scoped:
        raise RouteError(
            "scope",
            f"calling {capability_id} needs scope {versioned[0].scope}",
            detail=versioned[0].scope,
        )
    raise RouteError(
        "streaming",
        f"{capability_id} is {'not ' if req.streaming else ''}a streaming capability",
    )


def _plan_group(
    group: Sequence[Offering],
    req: RouteRequest,
    stats: Mapping[str, EndpointStats],
    now: float,
    *,
    dropped: list[Dropped],
    is_fallback: bool,
) -> Plan | None:
    passing: list[tuple[Offering, RouteEndpoint]] = []
    valid_until = math.inf
    for o in group:
        for e in o.endpoints:
            reason = ""
            if req.only_transports and e.transport not in req.only_transports:
                reason = f"transport {_transport_name(e.transport)} is not in only"
            elif req.only_regions and e.region not in req.only_regions:
                reason = f"region {e.region or '(none)'} is not in only"
            elif e.endpoint_id in req.exclude:
                reason = "already tried in this call"
            elif e.health == OFFLINE:
                reason = "forced offline"
            else:
                st = stats.get(e.endpoint_id)
                if st is not None and st.ejected_until > now:
                    reason = (
                        f"ejected for {st.ejected_until - now:.1f}s after "
                        f"{st.ejection_failures} consecutive failures"
                    )
                    valid_until = min(valid_until, st.ejected_until)
            if reason:
                dropped.append(Dropped(o, e, reason))
            else:
                passing.append((o, e))
    if not passing:
        return None
    routable = [(o, e) for o, e in passing if e.health in ROUTABLE]
    threshold = group[0].policy.panic_threshold
    panic = threshold > 0 and len(routable) < threshold * len(passing)
    admitted = []
    for o, e in passing:
        if e.health in ROUTABLE or (panic and e.health in PANIC_ROUTABLE):
            admitted.append((o, e))
        else:
            dropped.append(Dropped(o, e, f"health {_health_name(e.health)}"))
    if not admitted:
        return None

    # Tiers: version first (highest), then the preference order, both chosen among the truly routable
    # endpoints when there are any: panic mode widens the candidates, it must not make an unreachable
    # preferred transport or higher version outrank a healthy fallback.
    pool = [(o, e) for o, e in admitted if e.health in ROUTABLE] or admitted
    best_version = max((o.version_tuple for o, _ in pool), key=version_order)
    transport_order = req.prefer_transports or group[0].policy.transport_order
    regions = req.prefer_regions

    def tier(o: Offering, e: RouteEndpoint) -> tuple[int, int]:
        return (_tier_of(e.transport, transport_order), _tier_of(e.region, regions))

    top_version = [(o, e) for o, e in admitted if o.version_tuple == best_version]
    for o, e in admitted:
        if o.version_tuple != best_version:
            dropped.append(Dropped(o, e, f"a higher version is routable than {o.version}"))
    best_tier = min(tier(o, e) for o, e in pool if o.version_tuple == best_version)
    chosen = []
    for o, e in top_version:
        t = tier(o, e)
        if t == best_tier:
            chosen.append((o, e))
        else:
            dropped.append(Dropped(o, e, _tier_reason(e, t, best_tier, transport_order, regions)))

    scored = _score(chosen, req, stats, now)
    best = max(s.score for s in scored)
    margin = chosen[0][0].policy.margin
    candidates = tuple(s for s in scored if s.score >= best - margin - 1e-12)
    return Plan(
        candidates=candidates,
        scored=tuple(sorted(scored, key=lambda s: -s.score)),
        dropped=tuple(dropped),
        version=chosen[0][0].version,
        version_fallback=is_fallback,
        panic=panic,
        valid_until=valid_until,
    )


def _tier_reason(
    e: RouteEndpoint,
    t: tuple[int, int],
    best: tuple[int, int],
    transports: Sequence[int],
    regions: Sequence[str],
) -> str:
    if t[0] != best[0]:
        preferred = _transport_name(transports[best[0]]) if best[0] < len(transports) else "other"
        return f"transport {_transport_name(e.transport)} is a fallback while {preferred} is routable"
    preferred_region = regions[best[1]] if best[1] < len(regions) else "other"
    return f"region {e.region or '(none)'} is a fallback while {preferred_region} is routable"


def _score(
    chosen: Sequence[tuple[Offering, RouteEndpoint]],
    req: RouteRequest,
    stats: Mapping[str, EndpointStats],
    now: float,
) -> list[Scored]:
    # Latency: the best known estimate is 1; an endpoint without samples counts as the best, so new
    # endpoints get traffic; an idle endpoint's estimate decays toward the best (no starvation).
    known = [stats[e.endpoint_id] for _, e in chosen if e.endpoint_id in stats]
    lat_known = [s.ewma_ms for s in known if s.samples]
    best_lat = min(lat_known) if lat_known else 0.0
    costs = [e.cost or o.cost for o, e in chosen]
    lo, hi = min(costs), max(costs)
    out = []
    for (o, e), cost in zip(chosen, costs, strict=True):
        st = stats.get(e.endpoint_id)
        if st is None or not st.samples or best_lat <= 0:
            lat = 1.0
        else:
            age = max(0.0, now - st.last_sample_at)
            eff = best_lat + (st.ewma_ms - best_lat) * math.exp(-age / LATENCY_DECAY_S)
            lat = best_lat / eff if eff > 0 else 1.0
        cost_part = 1.0 if hi <= lo else (hi - cost) / (hi - lo)
        region = 0.5 if not req.region or not e.region else float(e.region == req.region)
        health = HEALTH_SCORE.get(e.health, 0.0)
        wh, wl, wc, wr = o.policy.weights
        total = wh * health + wl * lat + wc * cost_part + wr * region
        out.append(Scored(o, e, total, health, lat, cost_part, region))
    return out


def pick(candidates: Sequence[Scored], stats: Mapping[str, EndpointStats], rng: random.Random) -> Scored:
    """Power of two choices on in-flight calls (scaled by weight), ties broken at random."""
    n = len(candidates)
    if n == 1:
        return candidates[0]
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    a, b = candidates[i], candidates[j]
    la, lb = _load(a, stats), _load(b, stats)
    if la == lb:
        return a if rng.random() < 0.5 else b
    return a if la < lb else b


def _load(s: Scored, stats: Mapping[str, EndpointStats]) -> float:
    st = stats.get(s.endpoint.endpoint_id)
    in_flight = st.in_flight if st is not None else 0
    return (in_flight + 1) / (s.endpoint.weight or 1)
