"""The router's route table: every capability's offerings and endpoints, in memory.

Kept current by registry events, so no call reads the database (seed 001 §3.3, §11).

Loaded once from the store, then every event after the loaded revision is applied in order. Events
carry whole states (an endpoint upsert carries the endpoint, a health change the endpoint with its new
health), so applying one twice, or over a newer state while loading, converges to the same table.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema
from google.protobuf import json_format

from powerx.registry.v1 import capability_pb2, endpoint_pb2, event_pb2
from router.policy import Offering, Policy, RouteEndpoint
from servers.common.bus import EventBus, Subscription
from servers.common.validate import semver_tuple
from servers.registry.service import REVISION_TOPIC, capability_message, endpoint_message
from servers.registry.store import CapabilityRow, EndpointRow, EventRow, RegistryStore

log = logging.getLogger("powerx.router.snapshot")

ET = event_pb2
_CapKey = tuple[str, str, str, str]  # tenant, provider, capability id, version


@dataclass(frozen=True, slots=True)
class _Cap:
    key: _CapKey
    message: capability_pb2.Capability


def policy_of(cap: capability_pb2.Capability) -> Policy:
    """The routing policy a capability declares, with defaults applied."""
    r = cap.routing
    return Policy.from_fields(
        (r.health_weight, r.latency_weight, r.cost_weight, r.region_weight),
        r.candidate_margin,
        r.panic_threshold,
        r.max_attempts,
        list(r.transport_order),
    )


def route_endpoint(e: endpoint_pb2.Endpoint) -> RouteEndpoint:
    """The router's view of an endpoint message."""
    return RouteEndpoint(
        endpoint_id=e.endpoint_id,
        provider_id=e.provider_id,
        tenant_id=e.tenant_id,
        transport=e.transport,
        uri=e.uri,
        health=e.health,
        region=e.region,
        weight=e.weight,
        cost=e.cost,
        session_id=e.session_id,
        metadata=dict(e.metadata),
    )


_ANNOTATIONS = frozenset({"type", "title", "description", "$schema", "additionalProperties"})


class _SchemaCheck:
    """Validates arguments against a JSON Schema, compiled the first time it is needed."""

    def __init__(self, capability_id: str, schema: dict[str, Any]) -> None:
        self.capability_id = capability_id
        self.schema = schema
        self._validator: jsonschema.protocols.Validator | None = None
        self._broken = False

    def check(self, arguments: Any) -> list[tuple[str, str]]:
        if self._validator is None:
            if self._broken:
                return []
            try:
                cls = jsonschema.validators.validator_for(self.schema)
                cls.check_schema(self.schema)
            except jsonschema.SchemaError:
                log.warning("capability %s: invalid input schema, arguments go unchecked", self.capability_id)
                self._broken = True
                return []
            self._validator = cls(self.schema)
        problems = []
        errors = self._validator.iter_errors(arguments)
        for err in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])[:20]:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
            problems.append((f"arguments{path}", err.message[:300]))
        return problems


class RouteSnapshot:
    """Offerings per capability id, rebuilt per capability when events touch it."""

    def __init__(self) -> None:
        self._caps: dict[_CapKey, _Cap] = {}
        self._caps_by_id: dict[str, set[_CapKey]] = defaultdict(set)
        self._endpoints: dict[str, tuple[endpoint_pb2.Endpoint, RouteEndpoint]] = {}
        self._endpoints_by_provider: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._routes: dict[str, tuple[Offering, ...]] = {}
        # Bumped for a capability whenever its offerings change (cached route plans compare it).
        self.generations: dict[str, int] = defaultdict(int)
        self.revision = 0
        self.endpoint_listeners: list[Callable[[str], None]] = []
        self._checkers: dict[bytes, _SchemaCheck | None] = {}

    # ---- reads (the call path) --------------------------------------------------------------------

    def offerings(self, capability_id: str) -> tuple[Offering, ...]:
        """Every offering of a capability id (all tenants; the policy filters by tenant)."""
        return self._routes.get(capability_id, ())

    def endpoint(self, endpoint_id: str) -> endpoint_pb2.Endpoint | None:
        """The registry's view of an endpoint."""
        found = self._endpoints.get(endpoint_id)
        return found[0] if found else None

    def endpoints(self) -> Iterable[tuple[endpoint_pb2.Endpoint, RouteEndpoint]]:
        """Every endpoint (for the health monitor and metrics)."""
        return list(self._endpoints.values())

    def capability_count_by_provider(self) -> dict[tuple[str, str], int]:
        """Capability offerings per (tenant, provider)."""
        out: dict[tuple[str, str], int] = defaultdict(int)
        for tenant, provider, _, _ in self._caps:
            out[(tenant, provider)] += 1
        return out

    def group_of(self, capability_id: str) -> list[str]:
        """Ids of every endpoint serving a capability."""
        return [e.endpoint_id for o in self.offerings(capability_id) for e in o.endpoints]

    # ---- writes ------------------------------------------------------------------------------------

    def load(self, revision: int, caps: Iterable[CapabilityRow], eps: Iterable[EndpointRow]) -> None:
        """Replaces the table with a loaded state."""
        self._caps.clear()
        self._caps_by_id.clear()
        self._endpoints.clear()
        self._endpoints_by_provider.clear()
        for c in caps:
            self._put_cap(capability_message(c))
        for e in eps:
            self._put_endpoint(endpoint_message(e))
        self._routes.clear()
        for cap_id in list(self._caps_by_id):
            self._rebuild(cap_id)
        self.revision = revision

    def apply(self, events: Iterable[EventRow]) -> int:
        """Applies events in order; returns how many changed the table."""
        dirty: set[str] = set()
        applied = 0
        for row in events:
            if row.revision <= self.revision:
                continue
            event = event_pb2.RegistryEvent.FromString(row.payload)
            t = event.type
            if t == ET.REGISTRY_EVENT_TYPE_CAPABILITY_UPSERTED:
                dirty.add(self._put_cap(event.capability))
            elif t == ET.REGISTRY_EVENT_TYPE_CAPABILITY_REMOVED:
                dirty.add(self._remove_cap(event.capability))
            elif t in (
                ET.REGISTRY_EVENT_TYPE_ENDPOINT_UPSERTED,
                ET.REGISTRY_EVENT_TYPE_ENDPOINT_HEALTH_CHANGED,
            ):
                ep = event.endpoint
                if not ep.capability_ids:  # older events: the row kept what it serves
                    ep.capability_ids.extend(row.capability_ids)
                dirty.update(self._put_endpoint(ep))
            elif t == ET.REGISTRY_EVENT_TYPE_ENDPOINT_REMOVED:
                dirty.update(self._remove_endpoint(event.endpoint_id))
            self.revision = row.revision
            applied += 1
        for cap_id in dirty:
            self._rebuild(cap_id)
        return applied

    def _put_cap(self, c: capability_pb2.Capability) -> str:
        key = (c.tenant_id, c.provider_id, c.capability_id, c.version)
        self._caps[key] = _Cap(key, c)
        self._caps_by_id[c.capability_id].add(key)
        return c.capability_id

    def _remove_cap(self, c: capability_pb2.Capability) -> str:
        key = (c.tenant_id, c.provider_id, c.capability_id, c.version)
        self._caps.pop(key, None)
        keys = self._caps_by_id.get(c.capability_id)
        if keys is not None:
            keys.discard(key)
        return c.capability_id

    def _put_endpoint(self, e: endpoint_pb2.Endpoint) -> set[str]:
        old = self._endpoints.get(e.endpoint_id)
        touched = set(e.capability_ids)
        if old is not None:
            touched.update(old[0].capability_ids)
        self._endpoints[e.endpoint_id] = (e, route_endpoint(e))
        self._endpoints_by_provider[(e.tenant_id, e.provider_id)].add(e.endpoint_id)
        return touched

    def _remove_endpoint(self, endpoint_id: str) -> set[str]:
        old = self._endpoints.pop(endpoint_id, None)
        if old is None:
            return set()
        self._endpoints_by_provider[(old[0].tenant_id, old[0].provider_id)].discard(endpoint_id)
        for listener in self.endpoint_listeners:
            listener(endpoint_id)
        return set(old[0].capability_ids)

    def _rebuild(self, capability_id: str) -> None:
        offerings = []
        for key in sorted(self._caps_by_id.get(capability_id, ())):
            cap = self._caps[key].message
            eids = self._endpoints_by_provider.get((key[0], key[1]), set())
            eps = tuple(
                self._endpoints[eid][1]
                for eid in sorted(eids)
                if capability_id in self._endpoints[eid][0].capability_ids
            )
            offerings.append(
                Offering(
                    capability_id=capability_id,
                    version=cap.version,
                    version_tuple=semver_tuple(cap.version),
                    tenant_id=cap.tenant_id,
                    provider_id=cap.provider_id,
                    endpoints=eps,
                    grantees=frozenset(cap.tenant_scopes),
                    scope=cap.security.scope,
                    idempotent=cap.idempotent,
                    streaming=cap.streaming,
                    cost=cap.cost,
                    labels=dict(cap.labels),
                    policy=policy_of(cap),
                    check_arguments=self._arguments_checker(cap),
                )
            )
        if offerings:
            self._routes[capability_id] = tuple(offerings)
        else:
            self._routes.pop(capability_id, None)
            self._caps_by_id.pop(capability_id, None)
        self.generations[capability_id] += 1

    def _arguments_checker(
        self, cap: capability_pb2.Capability
    ) -> Callable[[Any], list[tuple[str, str]]] | None:
        """The argument check of a capability, or None when its schema accepts any object.

        Shared by every capability with the same schema and compiled on first use, not on every rebuild.
        """
        if not cap.HasField("input_schema"):
            return None
        key = cap.input_schema.SerializeToString(deterministic=True)
        if key not in self._checkers:  # a rebuild of the same capability reuses it: no conversion again
            if len(self._checkers) > 10_000:
                self._checkers.clear()
            schema = json_format.MessageToDict(cap.input_schema)
            # `{"type": "object"}` and the like accept every call's arguments (always an object).
            trivial = set(schema) <= _ANNOTATIONS and schema.get("type", "object") == "object"
            self._checkers[key] = None if trivial else _SchemaCheck(cap.capability_id, schema)
        checker = self._checkers[key]
        return checker.check if checker is not None else None

    def describe(self, capability_id: str) -> list[dict[str, object]]:
        """A JSON-friendly dump of one capability's offerings (for logs and debugging)."""
        return [
            {
                "provider": o.provider_id,
                "version": o.version,
                "endpoints": [
                    json_format.MessageToDict(self._endpoints[e.endpoint_id][0]) for e in o.endpoints
                ],
            }
            for o in self.offerings(capability_id)
        ]


class SnapshotFollower:
    """Keeps a RouteSnapshot current: loads it, then applies events when the bus or a commit says so."""

    def __init__(
        self, store: RegistryStore, bus: EventBus, snapshot: RouteSnapshot, poll_s: float = 2.0
    ) -> None:
        self.store = store
        self.bus = bus
        self.snapshot = snapshot
        self.poll_s = poll_s
        # The highest revision known to exist (from commits in this process and bus wake-ups).
        self.known_revision = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def notify(self, revision: int) -> None:
        """Records that `revision` was committed (called synchronously by the registry service)."""
        if revision > self.known_revision:
            self.known_revision = revision
            self._wake.set()

    @property
    def behind(self) -> bool:
        """Whether a committed change has not been applied yet."""
        return self.known_revision > self.snapshot.revision

    async def start(self) -> None:
        """Loads the table from the store."""
        revision, caps, eps = await self.store.route_state()
        self.snapshot.load(revision, caps, eps)
        # The table is long-lived and large (about 9 objects per capability): keep it out of the
        # collector's full passes, which would otherwise stall the event loop for 100s of ms.
        gc.freeze()
        self.known_revision = max(self.known_revision, revision)
        await self.catch_up()

    async def catch_up(self) -> None:
        """Applies every committed event not applied yet."""
        async with self._lock:
            while True:
                rows = await self.store.all_events_after(self.snapshot.revision)
                if not rows:
                    break
                self.snapshot.apply(rows)
            self.known_revision = max(self.known_revision, self.snapshot.revision)

    async def run(self, stop: asyncio.Event) -> None:
        """Follows the registry until `stop` is set."""
        async with self.bus.subscribe(REVISION_TOPIC) as wakeups:
            pump = asyncio.create_task(self._pump(wakeups, stop))
            try:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
                    self._wake.clear()
                    try:
                        await self.catch_up()
                    except Exception:
                        log.warning("route snapshot catch-up failed; retrying", exc_info=True)
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    async def _pump(self, wakeups: Subscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            payload = await wakeups.get(self.poll_s)
            if payload:
                with contextlib.suppress(ValueError):
                    self.notify(int(payload))
                self._wake.set()
