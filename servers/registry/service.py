"""Registry domain logic: announce, withdraw, leases, queries, forced offline, and the watch stream.

Transport-free: takes protobuf messages and a CallContext, raises domain errors from servers.common.errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from google.protobuf import duration_pb2

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import (
    capability_pb2,
    endpoint_pb2,
    event_pb2,
    provider_pb2,
)
from powerx.registry.v1 import (
    registry_service_pb2 as rs,
)
from servers.common.bus import EventBus
from servers.common.context import CallContext, valid_tenant
from servers.common.errors import FailedPrecondition, InvalidArgument, NotFound, TenantRequired
from servers.common.streams import stream_end
from servers.common.times import seconds_of, timestamp_ms
from servers.common.validate import Violations, next_page_token, page_request, semver_key
from servers.registry import validation
from servers.registry.store import (
    CapabilityRow,
    EndpointRow,
    EventRow,
    ProviderRow,
    RegistryStore,
    RegistryTx,
)

log = logging.getLogger("powerx.registry")

# Bus topic on which every committed change announces the new revision (a wake-up for watchers and
# route caches in every process; the durable event log is the source of truth).
REVISION_TOPIC = "registry.revision"

ACTIVE = provider_pb2.PROVIDER_STATE_ACTIVE
EXPIRED = provider_pb2.PROVIDER_STATE_EXPIRED
WITHDRAWN = provider_pb2.PROVIDER_STATE_WITHDRAWN
HEALTHY = common_pb2.HEALTH_STATE_HEALTHY
STALE = common_pb2.HEALTH_STATE_STALE
OFFLINE = common_pb2.HEALTH_STATE_OFFLINE
# States a fresh announce clears: the provider just proved it is alive at these addresses. WARNING is a
# probe verdict about quality and stays until the health monitor clears it.
CLEARED_BY_ANNOUNCE = {
    common_pb2.HEALTH_STATE_STALE,
    common_pb2.HEALTH_STATE_OFFLINE,
    common_pb2.HEALTH_STATE_UNKNOWN,
    common_pb2.HEALTH_STATE_UNREACHABLE,
}
ET = event_pb2


def _now_ms() -> int:
    return int(time.time() * 1000)


def _duration(ms: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(ms)
    return d


def endpoint_id_for(tenant_id: str, provider_id: str, transport: int, uri: str) -> str:
    """Stable endpoint id: the same tenant, provider and address always get the same id."""
    digest = hashlib.sha256(f"{tenant_id}\x00{provider_id}\x00{transport}\x00{uri}".encode()).hexdigest()
    return f"ep_{digest[:32]}"


def require_tenant(ctx: CallContext) -> str:
    """The caller's tenant, or TenantRequired."""
    if not ctx.tenant_id:
        raise TenantRequired(
            "the call carries no tenant: send the x-tenant-id header",
            [("metadata.x-tenant-id", "is required")],
        )
    if not valid_tenant(ctx.tenant_id):
        raise TenantRequired(
            "x-tenant-id is malformed",
            [("metadata.x-tenant-id", "must be 1-63 letters, digits, '.', '_', '-'")],
        )
    return ctx.tenant_id


# ---- row <-> message -------------------------------------------------------------------------------


def _provider_spec(p: provider_pb2.Provider) -> bytes:
    spec = provider_pb2.Provider()
    spec.CopyFrom(p)
    for name in (
        "tenant_id",
        "signature",
        "state",
        "lease_ttl",
        "lease_expire_time",
        "manifest_digest",
        "create_time",
        "update_time",
        "revision",
    ):
        spec.ClearField(name)
    return spec.SerializeToString(deterministic=True)


def provider_message(row: ProviderRow) -> provider_pb2.Provider:
    """The API view of a stored provider."""
    p = provider_pb2.Provider.FromString(row.spec)
    p.tenant_id = row.tenant_id
    p.state = row.state  # type: ignore[assignment]
    p.lease_ttl.CopyFrom(_duration(row.lease_ttl_ms))
    p.lease_expire_time.CopyFrom(timestamp_ms(row.lease_expires_ms))
    p.manifest_digest = row.manifest_digest
    p.create_time.CopyFrom(timestamp_ms(row.created_ms))
    p.update_time.CopyFrom(timestamp_ms(row.updated_ms))
    p.revision = row.revision
    return p


def _capability_spec(c: capability_pb2.Capability) -> bytes:
    spec = capability_pb2.Capability()
    spec.CopyFrom(c)
    for name in (
        "provider_id",
        "tenant_id",
        "endpoints",
        "create_time",
        "update_time",
        "revision",
        "tenant_scopes",
    ):
        spec.ClearField(name)
    return spec.SerializeToString(deterministic=True)


def capability_message(
    row: CapabilityRow, endpoints: Iterable[EndpointRow] = ()
) -> capability_pb2.Capability:
    """The API view of a stored capability."""
    c = capability_pb2.Capability.FromString(row.spec)
    c.provider_id = row.provider_id
    c.tenant_id = row.tenant_id
    c.tenant_scopes.extend(row.grantees)
    c.create_time.CopyFrom(timestamp_ms(row.created_ms))
    c.update_time.CopyFrom(timestamp_ms(row.updated_ms))
    c.revision = row.revision
    c.endpoints.extend(endpoint_message(e) for e in endpoints)
    return c


def _endpoint_spec(e: endpoint_pb2.Endpoint) -> bytes:
    spec = endpoint_pb2.Endpoint()
    for name in ("transport", "uri", "session_id", "region", "weight", "cost", "capability_ids", "metadata"):
        field = getattr(e, name)
        if name in ("capability_ids",):
            spec.capability_ids.extend(sorted(set(field)))
        elif name == "metadata":
            spec.metadata.update(field)
        else:
            setattr(spec, name, field)
    return spec.SerializeToString(deterministic=True)


def endpoint_message(row: EndpointRow, lease_expires_ms: int = 0) -> endpoint_pb2.Endpoint:
    """The API view of a stored endpoint."""
    e = endpoint_pb2.Endpoint.FromString(row.spec)
    if row.capability_ids:  # what it serves (an announce may leave the list empty, meaning "all")
        e.ClearField("capability_ids")
        e.capability_ids.extend(row.capability_ids)
    e.endpoint_id = row.endpoint_id
    e.provider_id = row.provider_id
    e.tenant_id = row.tenant_id
    e.health = row.health  # type: ignore[assignment]
    e.health_reason = row.health_reason
    e.health_change_time.CopyFrom(timestamp_ms(row.health_changed_ms))
    if lease_expires_ms:
        e.lease_expire_time.CopyFrom(timestamp_ms(lease_expires_ms))
    e.create_time.CopyFrom(timestamp_ms(row.created_ms))
    e.update_time.CopyFrom(timestamp_ms(row.updated_ms))
    e.revision = row.revision
    return e


@dataclass
class _EventSink:
    """Collects the events of one write transaction; they are published after it commits."""

    tx: RegistryTx
    ctx: CallContext
    tenant_id: str
    provider_id: str
    now_ms: int
    last: int = 0

    async def emit(
        self,
        etype: int,
        *,
        capability_ids: Iterable[str] = (),
        grantees: Iterable[str] = (),
        reason: str = "",
        provider: provider_pb2.Provider | None = None,
        capability: capability_pb2.Capability | None = None,
        endpoint: endpoint_pb2.Endpoint | None = None,
        previous_health: int = 0,
    ) -> int:
        revision = self.tx.next_revision()
        event = event_pb2.RegistryEvent(
            revision=revision,
            type=etype,  # type: ignore[arg-type]
            tenant_id=self.tenant_id,
            provider_id=self.provider_id,
            reason=reason,
            request_id=self.ctx.request_id,
            previous_health=previous_health,  # type: ignore[arg-type]
        )
        event.event_time.CopyFrom(timestamp_ms(self.now_ms))
        if provider is not None:
            event.provider.CopyFrom(provider)
        if capability is not None:
            event.capability.CopyFrom(capability)
            event.capability_id = capability.capability_id
        if endpoint is not None:
            event.endpoint.CopyFrom(endpoint)
            event.endpoint_id = endpoint.endpoint_id
        await self.tx.append_event(
            EventRow(
                revision=revision,
                tenant_id=self.tenant_id,
                provider_id=self.provider_id,
                type=etype,
                capability_ids=tuple(sorted(set(capability_ids))),
                grantees=tuple(sorted(set(grantees))),
                payload=event.SerializeToString(),
                created_ms=self.now_ms,
            )
        )
        self.last = revision
        return revision

    async def change_health(self, ep: EndpointRow, health: int, reason: str, grantees: Iterable[str]) -> None:
        """Moves an endpoint to another health state and records the change.

        The stored reason explains a non-healthy state; a healthy endpoint keeps none (the event keeps it).
        """
        stored_reason = "" if health == HEALTHY else reason
        msg = endpoint_message(ep)
        msg.health = health  # type: ignore[assignment]
        msg.health_reason = stored_reason
        msg.health_change_time.CopyFrom(timestamp_ms(self.now_ms))
        msg.revision = self.tx.revision + 1
        revision = await self.emit(
            ET.REGISTRY_EVENT_TYPE_ENDPOINT_HEALTH_CHANGED,
            capability_ids=ep.capability_ids,
            grantees=grantees,
            previous_health=ep.health,
            reason=reason,
            endpoint=msg,
        )
        await self.tx.set_health(ep.endpoint_id, health, stored_reason, self.now_ms, revision)

    async def change_provider_state(
        self, row: ProviderRow, state: int, etype: int, caps: list[CapabilityRow], reason: str
    ) -> None:
        """Moves a provider to another lifecycle state, records the change and stores the row."""
        row.state = state
        row.updated_ms = self.now_ms
        row.revision = self.tx.revision + 1  # the revision the event below gets
        await self.emit(
            etype,
            capability_ids=[c.capability_id for c in caps],
            grantees=_grantees(caps),
            provider=provider_message(row),
            reason=reason,
        )
        await self.tx.put_provider(row)

    async def remove_endpoint(self, ep: EndpointRow, grantees: Iterable[str], reason: str) -> None:
        """Deletes an endpoint and records its removal."""
        await self.tx.delete_endpoint(ep.endpoint_id)
        await self.emit(
            ET.REGISTRY_EVENT_TYPE_ENDPOINT_REMOVED,
            capability_ids=ep.capability_ids,
            grantees=grantees,
            endpoint=endpoint_message(ep),
            reason=reason,
        )

    async def remove_capability(self, cap: CapabilityRow, reason: str) -> None:
        """Deletes a capability and records its removal."""
        await self.tx.delete_capability(cap.tenant_id, cap.provider_id, cap.capability_id, cap.version)
        await self.emit(
            ET.REGISTRY_EVENT_TYPE_CAPABILITY_REMOVED,
            capability_ids=[cap.capability_id],
            grantees=cap.grantees,
            capability=capability_message(cap),
            reason=reason,
        )


def _grantees(caps: Iterable[CapabilityRow]) -> list[str]:
    """Every tenant some of these capabilities are shared with (their events concern those tenants)."""
    return sorted({g for c in caps for g in c.grantees})


def _provider_not_found(provider_id: str) -> NotFound:
    return NotFound(
        f"provider {provider_id} not found",
        reason="PROVIDER_NOT_FOUND",
        metadata={"provider_id": provider_id},
    )


class RegistryService:
    """The registry: source of truth for providers, capabilities and endpoints."""

    def __init__(
        self,
        store: RegistryStore,
        bus: EventBus,
        *,
        default_lease_ttl_s: float = 30.0,
        watch_poll_interval_s: float = 1.0,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.store = store
        self.bus = bus
        self.default_lease_ms = int(default_lease_ttl_s * 1000)
        self.watch_poll_interval_s = watch_poll_interval_s
        self.clock_ms = clock_ms
        # Called with each committed revision, before the bus hears of it: lets a route cache in this
        # process know at once that it is behind (read-your-writes for announce then invoke).
        self.commit_listeners: list[Callable[[int], None]] = []
        # Executables a `stdio:` MCP server may be started with on ImportMcpServer (`*`: any; none by
        # default, since starting a process on the mesh host is an operator's decision).
        self.mcp_stdio_commands: frozenset[str] = frozenset()

    async def _published(self, revision: int) -> None:
        for listener in self.commit_listeners:
            listener(revision)
        if revision:
            try:
                await self.bus.publish(REVISION_TOPIC, str(revision).encode())
            except Exception:
                # Watchers also poll the log, so a lost wake-up only delays them.
                log.warning("could not publish registry revision %s", revision, exc_info=True)

    # ---- writes --------------------------------------------------------------------------------------

    async def announce_provider(
        self, req: rs.AnnounceProviderRequest, ctx: CallContext
    ) -> rs.AnnounceProviderResponse:
        """Upserts a provider's whole desired state; the same announce twice changes nothing."""
        tenant = require_tenant(ctx)
        validation.check_announce(req)
        pid = req.provider.provider_id
        ttl_ms = int(seconds_of(req.lease_ttl) * 1000) or self.default_lease_ms
        now = self.clock_ms()
        provider_spec = _provider_spec(req.provider)
        cap_specs = {
            (c.capability_id, c.version): (_capability_spec(c), tuple(sorted(set(c.tenant_scopes))), c)
            for c in req.capabilities
        }
        all_cap_ids = sorted({c.capability_id for c in req.capabilities})
        ep_specs = {}
        for e in req.endpoints:
            eid = endpoint_id_for(tenant, pid, e.transport, e.uri)
            served = tuple(sorted(set(e.capability_ids) or all_cap_ids))
            ep_specs[eid] = (_endpoint_spec(e), served, e)
        digest = hashlib.sha256(
            b"\x00".join(
                [provider_spec]
                + [s + b"|" + ",".join(g).encode() for _, (s, g, _) in sorted(cap_specs.items())]
                + [s for _, (s, _, _) in sorted(ep_specs.items())]
            )
        ).hexdigest()

        async with self.store.write() as tx:
            sink = _EventSink(tx, ctx, tenant, pid, now)
            old = await tx.provider(tenant, pid)
            old_caps = {(c.capability_id, c.version): c for c in await tx.capabilities_of(tenant, pid)}
            old_eps = {e.endpoint_id: e for e in await tx.endpoints_of(tenant, pid)}
            provider_changed = (
                old is None
                or old.state != ACTIVE
                or old.spec != provider_spec  # stored spec is this same canonical serialization
            )
            revision_before = tx.revision
            shared_grantees = sorted({g for _, grantees, _ in cap_specs.values() for g in grantees})
            row = ProviderRow(
                tenant_id=tenant,
                provider_id=pid,
                state=ACTIVE,
                manifest_digest=digest,
                lease_ttl_ms=ttl_ms,
                lease_expires_ms=now + ttl_ms,
                spec=provider_spec,
                created_ms=old.created_ms if old else now,
                updated_ms=now if provider_changed or old is None else old.updated_ms,
                revision=old.revision if old else 0,
            )
            if provider_changed:
                row.revision = tx.revision + 1  # the revision the event below gets
                await sink.emit(
                    ET.REGISTRY_EVENT_TYPE_PROVIDER_ANNOUNCED,
                    capability_ids=all_cap_ids,
                    grantees=shared_grantees,
                    provider=provider_message(row),
                )
            # Capabilities: upsert new or changed ones, remove the ones no longer announced.
            for key, (spec, grantees, _cap) in sorted(cap_specs.items()):
                prev = old_caps.pop(key, None)
                if prev is not None and prev.spec == spec and prev.grantees == grantees:
                    continue
                cap_row = CapabilityRow(
                    tenant_id=tenant,
                    provider_id=pid,
                    capability_id=key[0],
                    version=key[1],
                    version_key=semver_key(key[1]),
                    spec=spec,
                    created_ms=prev.created_ms if prev else now,
                    updated_ms=now,
                    revision=0,
                    grantees=grantees,
                )
                cap_row.revision = sink.tx.revision + 1
                await tx.put_capability(cap_row)
                await sink.emit(
                    ET.REGISTRY_EVENT_TYPE_CAPABILITY_UPSERTED,
                    capability_ids=[key[0]],
                    grantees=grantees,
                    capability=capability_message(cap_row),
                )
            for _key, gone in sorted(old_caps.items()):
                await sink.remove_capability(gone, "not in the latest announce")
            # Endpoints: the announce replaces the provider's endpoints.
            for eid, (spec, served, ep_msg) in sorted(ep_specs.items()):
                prev_ep = old_eps.pop(eid, None)
                if prev_ep is not None and prev_ep.spec == spec and prev_ep.capability_ids == served:
                    if prev_ep.health in CLEARED_BY_ANNOUNCE:
                        await sink.change_health(
                            prev_ep, HEALTHY, "provider announced again", shared_grantees
                        )
                    continue
                ep_row = EndpointRow(
                    endpoint_id=eid,
                    tenant_id=tenant,
                    provider_id=pid,
                    transport=ep_msg.transport,
                    health=HEALTHY,
                    health_reason="",
                    health_changed_ms=now,
                    spec=spec,
                    created_ms=prev_ep.created_ms if prev_ep else now,
                    updated_ms=now,
                    revision=sink.tx.revision + 1,
                    capability_ids=served,
                )
                await tx.put_endpoint(ep_row)
                await sink.emit(
                    ET.REGISTRY_EVENT_TYPE_ENDPOINT_UPSERTED,
                    capability_ids=served,
                    grantees=shared_grantees,
                    endpoint=endpoint_message(ep_row, now + ttl_ms),
                )
            for _eid, gone_ep in sorted(old_eps.items()):
                await sink.remove_endpoint(gone_ep, shared_grantees, "not in the latest announce")
            changed = tx.revision != revision_before
            if changed and not provider_changed:
                row.revision = tx.revision
            await tx.put_provider(row)
            final_revision = tx.revision
            caps = await tx.capabilities_of(tenant, pid)
            eps = await tx.endpoints_of(tenant, pid)
        if changed:
            log.info("provider announced", extra={"provider_id": pid, "revision": final_revision})
            await self._published(final_revision)
        return rs.AnnounceProviderResponse(
            provider=provider_message(row),
            capabilities=self._capabilities_with_endpoints(caps, eps, row.lease_expires_ms),
            endpoints=[
                endpoint_message(e, row.lease_expires_ms) for e in sorted(eps, key=lambda e: e.endpoint_id)
            ],
            changed=changed,
            revision=final_revision,
        )

    @staticmethod
    def _capabilities_with_endpoints(
        caps: list[CapabilityRow], eps: list[EndpointRow], lease_expires_ms: int
    ) -> list[capability_pb2.Capability]:
        out = []
        for c in sorted(caps, key=lambda c: (c.capability_id, c.version_key)):
            serving = [e for e in eps if c.capability_id in e.capability_ids]
            msg = capability_message(c)
            msg.endpoints.extend(
                endpoint_message(e, lease_expires_ms) for e in sorted(serving, key=lambda e: e.endpoint_id)
            )
            out.append(msg)
        return out

    async def withdraw_provider(
        self, req: rs.WithdrawProviderRequest, ctx: CallContext
    ) -> rs.WithdrawProviderResponse:
        """Withdraws a provider: its capabilities and endpoints leave the catalog."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.text(req.provider_id, "provider_id", max_len=255, required=True)
        v.text(req.reason, "reason", max_len=500)
        v.raise_if_any("invalid withdraw")
        now = self.clock_ms()
        async with self.store.write() as tx:
            row = await tx.provider(tenant, req.provider_id)
            if row is None:
                raise _provider_not_found(req.provider_id)
            if row.state != WITHDRAWN:
                sink = _EventSink(tx, ctx, tenant, req.provider_id, now)
                caps = await tx.capabilities_of(tenant, req.provider_id)
                grantees = _grantees(caps)
                for ep in await tx.endpoints_of(tenant, req.provider_id):
                    await sink.remove_endpoint(ep, grantees, "provider withdrew")
                for cap in caps:
                    await sink.remove_capability(cap, "provider withdrew")
                row.manifest_digest = ""
                await sink.change_provider_state(
                    row, WITHDRAWN, ET.REGISTRY_EVENT_TYPE_PROVIDER_WITHDRAWN, caps, req.reason
                )
            revision = tx.revision
            changed = tx.changed
        if changed:
            await self._published(revision)
        return rs.WithdrawProviderResponse(provider=provider_message(row), revision=revision)

    async def renew_provider_lease(
        self, req: rs.RenewProviderLeaseRequest, ctx: CallContext
    ) -> rs.RenewProviderLeaseResponse:
        """Renews a lease; an expired provider's stale endpoints become healthy again."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.text(req.provider_id, "provider_id", max_len=255, required=True)
        validation.lease_seconds(seconds_of(req.lease_ttl), "lease_ttl", v)
        v.raise_if_any("invalid lease renewal")
        now = self.clock_ms()
        async with self.store.write() as tx:
            row = await tx.provider(tenant, req.provider_id)
            if row is None:
                raise _provider_not_found(req.provider_id)
            if row.state == WITHDRAWN:
                raise FailedPrecondition(
                    f"provider {req.provider_id} withdrew; announce it again instead of renewing",
                    reason="PROVIDER_WITHDRAWN",
                    metadata={"provider_id": req.provider_id},
                )
            ttl_ms = int(seconds_of(req.lease_ttl) * 1000) or row.lease_ttl_ms
            row.lease_ttl_ms = ttl_ms
            row.lease_expires_ms = now + ttl_ms
            if row.state == EXPIRED:
                sink = _EventSink(tx, ctx, tenant, req.provider_id, now)
                caps = await tx.capabilities_of(tenant, req.provider_id)
                grantees = _grantees(caps)
                for ep in await tx.endpoints_of(tenant, req.provider_id):
                    if ep.health == STALE:
                        await sink.change_health(ep, HEALTHY, "lease renewed", grantees)
                await sink.change_provider_state(
                    row, ACTIVE, ET.REGISTRY_EVENT_TYPE_PROVIDER_ANNOUNCED, caps, "lease renewed"
                )
            else:
                await tx.put_provider(row)  # only the lease moved: not a catalog change
            revision = tx.revision
            changed = tx.changed
        if changed:
            await self._published(revision)
        return rs.RenewProviderLeaseResponse(provider=provider_message(row), revision=revision)

    async def expire_leases(
        self, ctx: CallContext, *, tenant_id: str = "", provider_id: str = ""
    ) -> tuple[int, int, int]:
        """Marks providers whose lease ran out as expired and their endpoints stale.

        Returns:
            (revision, expired provider count, stale endpoint count).
        """
        now = self.clock_ms()
        providers = endpoints = 0
        async with self.store.write() as tx:
            for row in await tx.expired_providers(now, tenant_id, provider_id):
                sink = _EventSink(tx, ctx, row.tenant_id, row.provider_id, now)
                caps = await tx.capabilities_of(row.tenant_id, row.provider_id)
                grantees = _grantees(caps)
                for ep in await tx.endpoints_of(row.tenant_id, row.provider_id):
                    if ep.health in (STALE, OFFLINE):
                        continue
                    await sink.change_health(ep, STALE, "lease expired", grantees)
                    endpoints += 1
                await sink.change_provider_state(
                    row, EXPIRED, ET.REGISTRY_EVENT_TYPE_PROVIDER_EXPIRED, caps, "lease expired"
                )
                providers += 1
            revision = tx.revision
        if providers:
            log.info("leases expired", extra={"providers": providers, "endpoints": endpoints})
            await self._published(revision)
        return revision, providers, endpoints

    async def refresh_registry(
        self, req: rs.RefreshRegistryRequest, ctx: CallContext
    ) -> rs.RefreshRegistryResponse:
        """Expires lapsed leases of the caller's tenant now and wakes every route cache."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.text(req.provider_id, "provider_id", max_len=255)
        v.raise_if_any("invalid refresh")
        if req.provider_id and await self.store.provider(tenant, req.provider_id) is None:
            raise _provider_not_found(req.provider_id)
        revision, providers, endpoints = await self.expire_leases(
            ctx, tenant_id=tenant, provider_id=req.provider_id
        )
        if not providers:  # expire_leases published already when it expired something
            await self._published(revision)
        return rs.RefreshRegistryResponse(
            revision=revision, expired_provider_count=providers, stale_endpoint_count=endpoints
        )

    async def delete_endpoint(
        self, req: rs.DeleteEndpointRequest, ctx: CallContext
    ) -> rs.DeleteEndpointResponse:
        """Forces an endpoint offline (it stays visible, and is never routed until re-announced)."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.text(req.endpoint_id, "endpoint_id", max_len=40, required=True)
        v.text(req.reason, "reason", max_len=500)
        v.raise_if_any("invalid endpoint deletion")
        now = self.clock_ms()
        async with self.store.write() as tx:
            ep = await tx.endpoint(req.endpoint_id)
            if ep is None or ep.tenant_id != tenant:
                raise NotFound(
                    f"endpoint {req.endpoint_id} not found",
                    reason="ENDPOINT_NOT_FOUND",
                    metadata={"endpoint_id": req.endpoint_id},
                )
            reason = req.reason or "forced offline by an operator"
            if ep.health != OFFLINE:
                caps = await tx.capabilities_of(tenant, ep.provider_id)
                sink = _EventSink(tx, ctx, tenant, ep.provider_id, now)
                await sink.change_health(ep, OFFLINE, reason, _grantees(caps))
            updated = await tx.endpoint(req.endpoint_id)
            revision = tx.revision
            changed = tx.changed
        if changed:
            await self._published(revision)
        assert updated is not None
        return rs.DeleteEndpointResponse(endpoint=endpoint_message(updated), revision=revision)

    async def set_endpoint_health(
        self, endpoint_id: str, health: int, reason: str, ctx: CallContext, *, expected: int = 0
    ) -> bool:
        """Records a health verdict of the monitor; returns whether the state changed.

        Args:
            endpoint_id: The endpoint probed.
            health: Its new state.
            reason: Why (shown in the registry and in the event).
            ctx: The monitor's context.
            expected: When set, change only if the stored state is still this one (a concurrent
                announce, expiry or forced offline wins over a probe verdict made before it).
        """
        now = self.clock_ms()
        async with self.store.write() as tx:
            ep = await tx.endpoint(endpoint_id)
            if ep is None or ep.health == health or ep.health in (OFFLINE, STALE):
                return False
            if expected and ep.health != expected:
                return False
            caps = await tx.capabilities_of(ep.tenant_id, ep.provider_id)
            sink = _EventSink(tx, ctx, ep.tenant_id, ep.provider_id, now)
            await sink.change_health(ep, health, reason[:500], _grantees(caps))
            revision = tx.revision
        log.info(
            "endpoint health changed",
            extra={
                "endpoint_id": endpoint_id,
                "health": common_pb2.HealthState.Name(health),
                "reason": reason,
            },
        )
        await self._published(revision)
        return True

    async def import_mcp_server(
        self, req: rs.ImportMcpServerRequest, ctx: CallContext
    ) -> rs.ImportMcpServerResponse:
        """Discovers an MCP server and announces it as a provider with one capability per tool.

        Idempotent, and a re-import replaces the provider's whole state (announce semantics); see
        servers.registry.mcp_import for the mapping and the errors.
        """
        from servers.registry.mcp_import import import_mcp_server as _import  # noqa: PLC0415 (import cycle)

        return await _import(self, req, ctx)

    # ---- reads ---------------------------------------------------------------------------------------

    async def get_provider(self, req: rs.GetProviderRequest, ctx: CallContext) -> rs.GetProviderResponse:
        """One provider of the caller's tenant with its capabilities and endpoints."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.text(req.provider_id, "provider_id", max_len=255, required=True)
        v.raise_if_any("invalid request")
        found = await self.store.provider_detail(tenant, req.provider_id)
        if found is None:
            raise _provider_not_found(req.provider_id)
        row, caps, eps = found
        return rs.GetProviderResponse(
            provider=provider_message(row),
            capabilities=self._capabilities_with_endpoints(caps, eps, row.lease_expires_ms),
            endpoints=[
                endpoint_message(e, row.lease_expires_ms) for e in sorted(eps, key=lambda e: e.endpoint_id)
            ],
        )

    async def list_providers(
        self, req: rs.ListProvidersRequest, ctx: CallContext
    ) -> rs.ListProvidersResponse:
        """A page of the caller's providers."""
        tenant = require_tenant(ctx)
        if req.state not in provider_pb2.ProviderState.values():
            raise InvalidArgument("unknown provider state", [("state", "is not a known ProviderState")])
        filters = ["providers", tenant, req.state]
        page = page_request(req.page_size, req.page_token, filters)
        rows = await self.store.list_providers(tenant, req.state, page)
        resp = rs.ListProvidersResponse(providers=[provider_message(r) for r in rows[: page.size]])
        if len(rows) > page.size:
            resp.next_page_token = next_page_token([rows[page.size - 1].provider_id], filters)
        return resp

    async def _with_endpoints(self, rows: list[CapabilityRow]) -> list[capability_pb2.Capability]:
        serving = await self.store.endpoints_serving(rows)
        return [
            capability_message(r, serving.get((r.tenant_id, r.provider_id, r.capability_id), []))
            for r in rows
        ]

    async def get_capability(
        self, req: rs.GetCapabilityRequest, ctx: CallContext
    ) -> rs.GetCapabilityResponse:
        """Every offering of one capability id visible to the caller, highest version first."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.pattern(
            req.capability_id,
            "capability_id",
            validation.CAPABILITY_ID,
            "a capability id such as crm.lead.create",
        )
        v.text(req.version, "version", max_len=64)
        v.text(req.provider_id, "provider_id", max_len=255)
        v.raise_if_any("invalid request")
        page = page_request(validation.MAX_CAPABILITIES, "", [])
        rows = await self.store.list_capabilities(
            tenant, page, capability_id=req.capability_id, version=req.version, provider_id=req.provider_id
        )
        if not rows:
            raise NotFound(
                f"capability {req.capability_id} not found",
                reason="CAPABILITY_NOT_FOUND",
                metadata={"capability_id": req.capability_id},
            )
        rows.sort(key=lambda r: (r.version_key, r.provider_id), reverse=True)
        return rs.GetCapabilityResponse(capabilities=await self._with_endpoints(rows[: page.size]))

    async def list_capabilities(
        self, req: rs.ListCapabilitiesRequest, ctx: CallContext
    ) -> rs.ListCapabilitiesResponse:
        """A page of capabilities visible to the caller."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.check(req.transport in common_pb2.Transport.values(), "transport", "is not a known Transport")
        v.check(req.health in common_pb2.HealthState.values(), "health", "is not a known HealthState")
        v.text(req.provider_id, "provider_id", max_len=255)
        v.text(req.capability_id_prefix, "capability_id_prefix", max_len=255)
        v.raise_if_any("invalid request")
        filters = ["caps", tenant, req.provider_id, req.transport, req.health, req.capability_id_prefix]
        page = page_request(req.page_size, req.page_token, filters)
        revision = await self.store.revision()
        rows = await self.store.list_capabilities(
            tenant,
            page,
            provider_id=req.provider_id,
            prefix=req.capability_id_prefix,
            transport=req.transport,
            health=req.health,
        )
        resp = rs.ListCapabilitiesResponse(
            capabilities=await self._with_endpoints(rows[: page.size]), revision=revision
        )
        if len(rows) > page.size:
            last = rows[page.size - 1]
            resp.next_page_token = next_page_token(
                [last.capability_id, last.version_key, last.provider_id, last.tenant_id], filters
            )
        return resp

    async def list_runtime_endpoints(
        self, req: rs.ListRuntimeEndpointsRequest, ctx: CallContext
    ) -> rs.ListRuntimeEndpointsResponse:
        """A page of the caller's endpoints with their live health."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.check(req.transport in common_pb2.Transport.values(), "transport", "is not a known Transport")
        v.check(req.health in common_pb2.HealthState.values(), "health", "is not a known HealthState")
        v.text(req.provider_id, "provider_id", max_len=255)
        v.text(req.capability_id, "capability_id", max_len=255)
        v.raise_if_any("invalid request")
        filters = ["eps", tenant, req.provider_id, req.capability_id, req.transport, req.health]
        page = page_request(req.page_size, req.page_token, filters)
        revision = await self.store.revision()
        rows = await self.store.list_endpoints(
            tenant,
            page,
            provider_id=req.provider_id,
            capability_id=req.capability_id,
            transport=req.transport,
            health=req.health,
        )
        leases: dict[str, int] = {}
        for r in rows[: page.size]:
            if r.provider_id not in leases:
                prov = await self.store.provider(tenant, r.provider_id)
                leases[r.provider_id] = prov.lease_expires_ms if prov else 0
        resp = rs.ListRuntimeEndpointsResponse(
            endpoints=[endpoint_message(r, leases[r.provider_id]) for r in rows[: page.size]],
            revision=revision,
        )
        if len(rows) > page.size:
            resp.next_page_token = next_page_token([rows[page.size - 1].endpoint_id], filters)
        return resp

    # ---- watch ---------------------------------------------------------------------------------------

    async def watch_registry(
        self, req: rs.WatchRegistryRequest, ctx: CallContext
    ) -> AsyncIterator[rs.WatchRegistryResponse]:
        """Replays changes after `since_revision`, marks the catch-up, then follows live changes.

        Always ends with a StreamEnd message (limit reached, idle timeout, or shutdown via cancellation,
        in which case the transport ends the stream).
        """
        tenant = require_tenant(ctx)
        v = Violations()
        v.check(req.since_revision >= 0, "since_revision", "must not be negative")
        v.check(req.max_events >= 0, "max_events", "must not be negative")
        idle_s = seconds_of(req.idle_timeout)
        v.check(idle_s >= 0, "idle_timeout", "must not be negative")
        v.check(len(req.capability_ids) <= 256, "capability_ids", "has more than 256 entries")
        v.check(len(req.provider_ids) <= 256, "provider_ids", "has more than 256 entries")
        for i, t in enumerate(req.event_types):
            v.check(
                t in event_pb2.RegistryEventType.values() and t != 0,
                f"event_types[{i}]",
                "is not a known RegistryEventType",
            )
        v.raise_if_any("invalid watch")
        head = await self.store.revision()
        if req.since_revision > head:
            raise InvalidArgument(
                f"since_revision {req.since_revision} is ahead of the registry (at {head})",
                [("since_revision", f"must be at most the current revision {head}")],
                reason="REVISION_AHEAD",
                metadata={"revision": str(head)},
            )
        caps, provs, types = set(req.capability_ids), set(req.provider_ids), set(req.event_types)

        def wanted(row: EventRow) -> bool:
            return (
                (not caps or bool(caps.intersection(row.capability_ids)))
                and (not provs or row.provider_id in provs)
                and (not types or row.type in types)
            )

        cursor = req.since_revision
        sent = 0
        caught_up = False
        last_activity = time.monotonic()
        async with self.bus.subscribe(REVISION_TOPIC) as wakeups:
            while True:
                rows = await self.store.events_after(cursor, tenant)
                # Skip past other tenants' events too, so the next read starts after them.
                scanned = await self.store.last_event_revision_scanned(cursor)
                for row in rows:
                    if wanted(row):
                        yield rs.WatchRegistryResponse(event=event_pb2.RegistryEvent.FromString(row.payload))
                        sent += 1
                        last_activity = time.monotonic()
                        if req.max_events and sent >= req.max_events:
                            yield self._end("LIMIT_REACHED", row.revision)
                            return
                cursor = max(cursor, scanned)
                if (rows and len(rows) >= 500) or scanned > cursor:
                    continue
                if not caught_up:
                    caught_up = True
                    yield rs.WatchRegistryResponse(caught_up=rs.WatchCaughtUp(revision=cursor))
                wait = self.watch_poll_interval_s
                if idle_s:
                    remaining = idle_s - (time.monotonic() - last_activity)
                    if remaining <= 0:
                        yield self._end("IDLE_TIMEOUT", cursor)
                        return
                    wait = min(wait, remaining)
                await wakeups.get(wait)

    @staticmethod
    def _end(reason: str, revision: int) -> rs.WatchRegistryResponse:
        return rs.WatchRegistryResponse(end=stream_end(reason, revision))


async def lease_sweeper(service: RegistryService, interval_s: float, stop: asyncio.Event) -> None:
    """Expires lapsed leases every `interval_s` until `stop` is set."""
    ctx = CallContext(principal="system:lease-sweeper", request_id="lease-sweeper")
    while not stop.is_set():
        try:
            await service.expire_leases(ctx)
        except Exception:
            log.exception("lease sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
