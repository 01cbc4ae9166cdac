"""RouterService: resolve, invoke (unary and streaming) with failover, and outcome reports.

Transport-free towards callers (protobuf messages in, domain errors out); the policy is in
`router.policy`, the live statistics in `router.outlier`, the route table in `router.snapshot`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2

from powerx.common.v1 import common_pb2
from powerx.provider.v1 import provider_service_pb2 as provider_pb2
from powerx.registry.v1 import endpoint_pb2
from powerx.router.v1 import route_pb2
from powerx.router.v1 import router_service_pb2 as rt
from router import policy
from router.audit import AuditLog, AuditRecord
from router.metrics import RouterMetrics, transport_label
from router.outlier import RetryBudget, StatsTable
from router.policy import Plan, RouteError, RouteRequest, Scored
from router.snapshot import RouteSnapshot, SnapshotFollower
from router.transports.base import Call, Target, Transport, TransportError
from servers.common.context import CallContext
from servers.common.errors import (
    ERROR_CODES,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    NotFound,
    PermissionDenied,
    Unavailable,
    to_status,
)
from servers.common.streams import stream_end
from servers.common.times import duration_s, seconds_of
from servers.common.validate import Violations
from servers.registry import validation
from servers.registry.service import require_tenant

log = logging.getLogger("powerx.router")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_REGION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROUTE_TOKEN_TTL_S = 600.0
MAX_EXCLUDED = 64
_CODE_CLASSES: dict[int, type[MeshError]] = {code: cls for cls, code in ERROR_CODES.items()}


@dataclass(frozen=True)
class RouterConfig:
    """Router settings (see the README's configuration table)."""

    default_timeout_s: float = 30.0
    # How long a scored plan is reused before latencies are looked at again.
    plan_refresh_s: float = 1.0
    route_token_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    retry_budget_share: float = 0.2
    retry_min_concurrency: int = 3
    max_cached_plans: int = 50_000


@dataclass(slots=True)
class _CachedPlan:
    generation: int
    stats_generation: int
    expires: float
    plan: Plan


def _error_for_route(err: RouteError, capability_id: str) -> MeshError:
    md = {"capability_id": capability_id}
    if err.kind == "not_found":
        return NotFound(err.message, reason="CAPABILITY_NOT_FOUND", metadata=md)
    if err.kind == "version":
        return FailedPrecondition(err.message, reason="VERSION_UNAVAILABLE", metadata=md)
    if err.kind == "scope":
        return PermissionDenied(err.message, reason="MISSING_SCOPE", metadata={**md, "scope": err.detail})
    if err.kind == "streaming":
        return FailedPrecondition(err.message, reason="STREAMING_MISMATCH", metadata=md)
    if err.kind == "ejected":
        return Unavailable(
            err.message, reason="ENDPOINTS_EJECTED", retry_after_s=max(err.retry_after_s, 0.001), metadata=md
        )
    return Unavailable(
        f"{err.message}: {err.detail}" if err.detail else err.message,
        reason="NO_ROUTABLE_ENDPOINT",
        metadata=md,
    )


def _error_for_attempt(err: TransportError, capability_id: str, attempts: int, why: str) -> MeshError:
    cls = _CODE_CLASSES.get(err.code, Unavailable)
    if err.provider_error:
        reason = "PROVIDER_ERROR"
    elif err.code == code_pb2.DEADLINE_EXCEEDED:
        cls, reason = DeadlineExceeded, "DEADLINE_EXCEEDED"
    else:
        reason = why
    return cls(
        err.message,
        reason=reason,
        metadata={
            "capability_id": capability_id,
            "attempts": str(attempts),
            "code": code_pb2.Code.Name(err.code),
        },
    )


# (context, capability id, arguments) -> the calling agent's tenant, and metadata describing the caller
# to the callee.
CallerGuard = Callable[[CallContext, str, struct_pb2.Struct], Awaitable[tuple[str, Mapping[str, str]]]]


@dataclass
class _Invocation:
    """Book-keeping of one routed call across its attempts."""

    capability_id: str
    route: RouteRequest
    idempotency_key: str
    deadline: float
    started: float
    attempts: list[route_pb2.Attempt] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    retry_slot: bool = False
    # How it ended, for the audit; the last failed attempt, reported when no endpoint is left.
    outcome: str = "UNKNOWN"
    last: tuple[Scored, TransportError] | None = None
    version: str = ""
    endpoint_id: str = ""
    transport: int = 0


class RouterService:
    """Routes calls to the best endpoint of a capability and learns from the outcomes."""

    def __init__(
        self,
        snapshot: RouteSnapshot,
        follower: SnapshotFollower | None,
        *,
        transports: Mapping[int, Transport],
        stats: StatsTable,
        metrics: RouterMetrics,
        audit: AuditLog | None,
        config: RouterConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.follower = follower
        self.transports = transports
        self.stats = stats
        self.metrics = metrics
        self.audit = audit
        self.config = config or RouterConfig()
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - load balancing, not security
        self.budget = RetryBudget(self.config.retry_budget_share, self.config.retry_min_concurrency)
        # Admits calls made by agents (their token, grants, depth, signature, quota) and returns the
        # metadata that carries the caller to the callee; plugged in by the agent service.
        self.caller_guard: CallerGuard | None = None
        self._plans: dict[tuple[object, ...], _CachedPlan] = {}
        snapshot.endpoint_listeners.append(self._endpoint_gone)

    def _endpoint_gone(self, endpoint_id: str) -> None:
        self.stats.forget(endpoint_id)
        for t in self.transports.values():
            asyncio.ensure_future(t.forget(endpoint_id))  # noqa: RUF006 - best effort clean-up

    # ---- request parsing ---------------------------------------------------------------------------

    def _route_request(
        self,
        ctx: CallContext,
        *,
        capability_id: str,
        version: str,
        prefer: route_pb2.RoutePreference,
        only: route_pb2.RoutePreference,
        region: str,
        exclude: list[str] | tuple[str, ...] = (),
        idempotency_key: str = "",
        streaming: bool | None = None,
        v: Violations | None = None,
    ) -> RouteRequest:
        tenant = require_tenant(ctx)
        v = v or Violations()
        v.pattern(
            capability_id,
            "capability_id",
            validation.CAPABILITY_ID,
            "a capability id such as crm.lead.create",
        )
        parsed = policy.parse_version_request(version)
        v.check(parsed is not None, "version", "must be empty, 1, 1.2, 1.2.3 or =1.2.3")
        for name, pref in (("prefer", prefer), ("only", only)):
            for i, t in enumerate(pref.transports):
                v.check(
                    t in validation.TRANSPORT_NAMES, f"{name}.transports[{i}]", "is not a known transport"
                )
            v.check(len(pref.regions) <= 16, f"{name}.regions", "has more than 16 entries")
            for i, r in enumerate(pref.regions):
                v.check(
                    bool(_REGION.match(r)),
                    f"{name}.regions[{i}]",
                    "must be 1-64 letters, digits, '.', '_', '-'",
                )
        if region:
            v.check(bool(_REGION.match(region)), "region", "must be 1-64 letters, digits, '.', '_', '-'")
        v.check(len(exclude) <= MAX_EXCLUDED, "exclude_endpoint_ids", f"has more than {MAX_EXCLUDED} entries")
        if idempotency_key:
            v.check(
                bool(_IDEMPOTENCY_KEY.match(idempotency_key)),
                "idempotency_key",
                "must be 1-255 printable ASCII characters without spaces",
            )
        v.raise_if_any("invalid route request")
        assert parsed is not None
        return RouteRequest(
            tenant_id=tenant,
            scopes=ctx.scopes,
            version=parsed,
            prefer_transports=tuple(dict.fromkeys(prefer.transports)),
            prefer_regions=tuple(dict.fromkeys(prefer.regions)),
            only_transports=frozenset(only.transports),
            only_regions=frozenset(only.regions),
            region=region,
            exclude=frozenset(exclude),
            streaming=streaming,
        )

    # ---- routing -----------------------------------------------------------------------------------

    async def _plan(self, capability_id: str, req: RouteRequest, *, fresh: bool = False) -> Plan:
        if self.follower is not None and self.follower.behind:
            await self.follower.catch_up()  # a change committed in this process: see it (read-your-writes)
        now = self.clock()
        key = (
            capability_id,
            req.tenant_id,
            req.scopes,
            req.version,
            req.prefer_transports,
            req.prefer_regions,
            req.only_transports,
            req.only_regions,
            req.region,
            req.streaming,
        )
        generation = self.snapshot.generations.get(capability_id, 0)
        cacheable = not fresh and not req.exclude
        if cacheable:
            cached = self._plans.get(key)
            if (
                cached is not None
                and cached.generation == generation
                and cached.stats_generation == self.stats.generation
                and now < cached.expires
            ):
                self.metrics.cache_hits.inc()
                return cached.plan
        self.metrics.cache_misses.inc()
        try:
            plan = policy.plan(
                self.snapshot.offerings(capability_id),
                req,
                self.stats.by_endpoint,
                now,
                capability_id=capability_id,
            )
        except RouteError as err:
            raise _error_for_route(err, capability_id) from None
        if cacheable:
            if len(self._plans) >= self.config.max_cached_plans:
                self._plans.clear()
            self._plans[key] = _CachedPlan(
                generation,
                self.stats.generation,
                min(now + self.config.plan_refresh_s, plan.valid_until),
                plan,
            )
        return plan

    def _pick(self, plan: Plan) -> Scored:
        return policy.pick(plan.candidates, self.stats.by_endpoint, self.rng)

    def _endpoint_message(self, s: Scored) -> endpoint_pb2.Endpoint:
        msg = endpoint_pb2.Endpoint()
        found = self.snapshot.endpoint(s.endpoint.endpoint_id)
        if found is not None:
            msg.CopyFrom(found)
        st = self.stats.by_endpoint.get(s.endpoint.endpoint_id)
        if st is not None:
            msg.latency_ewma_ms = st.ewma_ms
            msg.in_flight = st.in_flight
        return msg

    def _explain(self, plan: Plan, chosen: Scored | None) -> list[route_pb2.Candidate]:
        out = [
            route_pb2.Candidate(
                endpoint=self._endpoint_message(s),
                version=s.offering.version,
                score=s.score,
                parts=route_pb2.ScoreParts(health=s.health, latency=s.latency, cost=s.cost, region=s.region),
                selected=chosen is not None and s.endpoint.endpoint_id == chosen.endpoint.endpoint_id,
            )
            for s in plan.scored
        ]
        for d in plan.dropped:
            msg = self.snapshot.endpoint(d.endpoint.endpoint_id) or endpoint_pb2.Endpoint(
                endpoint_id=d.endpoint.endpoint_id
            )
            out.append(route_pb2.Candidate(endpoint=msg, version=d.offering.version, dropped_reason=d.reason))
        return out

    def _route_token(self, tenant: str, capability_id: str, endpoint_id: str) -> str:
        expires = int((time.time() + ROUTE_TOKEN_TTL_S) * 1000)
        payload = f"{tenant}|{capability_id}|{endpoint_id}|{expires}".encode()
        mac = hmac.new(self.config.route_token_secret, payload, hashlib.sha256).digest()[:16]
        return (
            base64.urlsafe_b64encode(payload).decode().rstrip("=")
            + "."
            + base64.urlsafe_b64encode(mac).decode().rstrip("=")
        )

    def _check_route_token(self, token: str, tenant: str, capability_id: str, endpoint_id: str) -> bool:
        try:
            p64, m64 = token.split(".")
            payload = base64.urlsafe_b64decode(p64 + "=" * (-len(p64) % 4))
            mac = base64.urlsafe_b64decode(m64 + "=" * (-len(m64) % 4))
        except ValueError:
            return False
        expected = hmac.new(self.config.route_token_secret, payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            return False
        parts = payload.decode(errors="replace").split("|")
        return (
            len(parts) == 4
            and parts[:3] == [tenant, capability_id, endpoint_id]
            and parts[3].isdigit()
            and int(parts[3]) > time.time() * 1000
        )

    # ---- RPCs --------------------------------------------------------------------------------------

    async def resolve_endpoint(
        self, req: rt.ResolveEndpointRequest, ctx: CallContext
    ) -> rt.ResolveEndpointResponse:
        """Chooses the endpoint a client should call directly (then reports back with ReportOutcome)."""
        rreq = self._route_request(
            ctx,
            capability_id=req.capability_id,
            version=req.version,
            prefer=req.prefer,
            only=req.only,
            region=req.region,
            exclude=list(req.exclude_endpoint_ids),
        )
        plan = await self._plan(req.capability_id, rreq, fresh=req.explain)
        chosen = self._pick(plan)
        resp = rt.ResolveEndpointResponse(
            endpoint=self._endpoint_message(chosen),
            version=chosen.offering.version,
            panic=plan.panic,
            version_fallback=plan.version_fallback,
            route_token=self._route_token(rreq.tenant_id, req.capability_id, chosen.endpoint.endpoint_id),
        )
        if req.explain:
            resp.candidates.extend(self._explain(plan, chosen))
        return resp

    @contextlib.contextmanager
    def _invocation(
        self, ctx: CallContext, capability_id: str, rreq: RouteRequest, key: str, *, streamed: bool
    ) -> Iterator[_Invocation]:
        """One routed call: counted against the retry budget while it runs, audited when it ends."""
        now = self.clock()
        remaining = ctx.time_remaining()
        timeout = self.config.default_timeout_s if remaining is None else remaining
        if timeout <= 0:
            raise DeadlineExceeded("the call's deadline passed before it could be routed")
        inv = _Invocation(capability_id, rreq, key, now + timeout, now)
        if streamed:
            inv.outcome = "CANCELLED"  # until it completes or fails: the caller went away
        self.budget.active += 1
        try:
            yield inv
        except MeshError as exc:
            inv.outcome = exc.reason
            raise
        finally:
            self.budget.active -= 1
            if inv.retry_slot:
                self.budget.release()
            self._audit(inv, ctx, inv.outcome, streamed=streamed)

    async def _route_attempt(self, inv: _Invocation, *, fresh: bool = False) -> tuple[Plan, Scored]:
        """The plan and endpoint of the next attempt; when none is left, the last attempt's failure."""
        try:
            plan = await self._plan(inv.capability_id, _excluding(inv.route, inv.excluded), fresh=fresh)
        except MeshError:
            if inv.last is not None:  # every endpoint tried failed: report the last failure
                raise self._final_error(inv, *inv.last) from None
            raise
        return plan, self._pick(plan)

    async def _admit(
        self, ctx: CallContext, capability_id: str, arguments: struct_pb2.Struct
    ) -> tuple[CallContext, Mapping[str, str]]:
        """An agent's call (it carries the agent's token) gets the agent's tenant and caller metadata."""
        if self.caller_guard is None or not ctx.bearer:
            return ctx, {}
        tenant, metadata = await self.caller_guard(ctx, capability_id, arguments)
        return dataclasses.replace(ctx, tenant_id=tenant), metadata

    def _call(
        self,
        inv: _Invocation,
        s: Scored,
        ctx: CallContext,
        arguments: struct_pb2.Struct,
        metadata: Mapping[str, str],
    ) -> tuple[Target, Call]:
        check = s.offering.check_arguments
        if check is not None and not inv.attempts:
            problems = check(json_format.MessageToDict(arguments))
            if problems:
                raise InvalidArgument(
                    f"arguments do not match the input schema of {inv.capability_id} {s.offering.version}",
                    problems,
                    reason="ARGUMENTS_INVALID",
                )
        remaining = inv.deadline - self.clock()
        if remaining <= 0:
            raise DeadlineExceeded(
                "the call's deadline passed", metadata={"attempts": str(len(inv.attempts))}
            )
        e = s.endpoint
        target = Target.of(e, s.offering.labels)
        call = Call(
            capability_id=inv.capability_id,
            version=s.offering.version,
            arguments=arguments,
            tenant_id=ctx.tenant_id,
            actor_id=ctx.principal,
            request_id=ctx.request_id,
            traceparent=ctx.traceparent,
            idempotency_key=inv.idempotency_key,
            attempt=len(inv.attempts) + 1,
            timeout_s=remaining,
            metadata=metadata,
        )
        inv.version, inv.endpoint_id, inv.transport = s.offering.version, e.endpoint_id, e.transport
        return target, call

    def _transport(self, s: Scored) -> Transport:
        t = self.transports.get(s.endpoint.transport)
        if t is None:
            raise TransportError(code_pb2.UNAVAILABLE, "no transport for this endpoint", sent=False)
        return t

    def _failed(self, inv: _Invocation, s: Scored, err: TransportError, started: float) -> bool:
        """Records a failed attempt; returns whether another attempt may follow."""
        elapsed = self.clock() - started
        eid = s.endpoint.endpoint_id
        inv.attempts.append(
            route_pb2.Attempt(
                endpoint_id=eid,
                transport=s.endpoint.transport,  # type: ignore[arg-type]
                code=err.code,
                message=err.message[:300],
                latency=duration_s(elapsed),
            )
        )
        self.metrics.failures.labels(inv.capability_id, transport_label(s.endpoint.transport)).inc()
        # A provider rejecting the request says nothing about the endpoint's health.
        endpoint_fault = not (err.provider_error and not err.retryable)
        if endpoint_fault and self.stats.failure(
            eid, self.clock(), self.snapshot.group_of(inv.capability_id)
        ):
            self.metrics.ejections.labels(transport_label(s.endpoint.transport)).inc()
            log.warning(
                "endpoint ejected after consecutive failures",
                extra={"endpoint_id": eid, "capability_id": inv.capability_id},
            )
        inv.excluded.add(eid)
        if not err.retryable or len(inv.attempts) >= s.offering.policy.max_attempts:
            return False
        if err.sent and not s.offering.idempotent and not inv.idempotency_key:
            return False
        if self.clock() >= inv.deadline:
            return False
        if not inv.retry_slot:
            if not self.budget.try_acquire():
                log.info("retry budget spent", extra={"capability_id": inv.capability_id})
                return False
            inv.retry_slot = True
        return True

    def _final_error(self, inv: _Invocation, s: Scored, err: TransportError) -> MeshError:
        if err.sent and err.retryable and not s.offering.idempotent and not inv.idempotency_key:
            why = "NOT_RETRIED_NON_IDEMPOTENT"
        else:
            why = "ENDPOINTS_FAILED"
        return _error_for_attempt(err, inv.capability_id, len(inv.attempts), why)

    def _audit(self, inv: _Invocation, ctx: CallContext, outcome: str, streamed: bool) -> None:
        latency_ms = (self.clock() - inv.started) * 1000
        # Only routed calls are audited: a request rejected before an endpoint was chosen wrote nothing.
        if self.audit is not None and inv.endpoint_id:
            self.audit.record(
                AuditRecord(
                    created_ms=int(time.time() * 1000),
                    tenant_id=ctx.tenant_id,
                    actor=ctx.principal,
                    trace_id=ctx.trace_id,
                    request_id=ctx.request_id,
                    capability_id=inv.capability_id,
                    version=inv.version,
                    endpoint_id=inv.endpoint_id,
                    transport=transport_label(inv.transport) if inv.transport else "",
                    outcome=outcome,
                    attempts=len(inv.attempts) + (1 if outcome == "OK" else 0),
                    latency_ms=latency_ms,
                    streamed=streamed,
                )
            )

    async def invoke(self, req: rt.InvokeRequest, ctx: CallContext) -> rt.InvokeResponse:
        """Calls the capability on the best endpoint, failing over to the next ones when allowed."""
        ctx, caller = await self._admit(ctx, req.capability_id, req.arguments)
        rreq = self._route_request(
            ctx,
            capability_id=req.capability_id,
            version=req.version,
            prefer=req.prefer,
            only=req.only,
            region=req.region,
            idempotency_key=req.idempotency_key,
            streaming=False,
        )
        explained: list[route_pb2.Candidate] = []
        with self._invocation(ctx, req.capability_id, rreq, req.idempotency_key, streamed=False) as inv:
            while True:
                plan, s = await self._route_attempt(inv, fresh=req.explain and not inv.attempts)
                if req.explain and not inv.attempts:
                    explained = self._explain(plan, s)
                target, call = self._call(inv, s, ctx, req.arguments, caller)
                started = self.clock()
                in_flight = self.stats.begin(s.endpoint.endpoint_id)
                try:
                    value = await self._transport(s).invoke(target, call)
                except TransportError as err:
                    inv.last = (s, err)
                    if not self._failed(inv, s, err, started):
                        raise self._final_error(inv, s, err) from None
                    continue
                finally:
                    in_flight.done()
                elapsed = self.clock() - started
                self.stats.success(s.endpoint.endpoint_id, elapsed * 1000, self.clock())
                self.metrics.latency.labels(req.capability_id).observe(elapsed)
                inv.outcome = "OK"
                resp = rt.InvokeResponse(
                    endpoint=self._endpoint_message(s),
                    version=s.offering.version,
                    attempts=inv.attempts,
                    latency=duration_s(self.clock() - inv.started),
                    candidates=explained,
                )
                resp.result.CopyFrom(value)
                return resp

    async def invoke_stream(
        self, req: rt.InvokeStreamRequest, ctx: CallContext
    ) -> AsyncIterator[rt.InvokeStreamResponse]:
        """Streams a capability's output; fails over only before the first chunk reached the caller.

        Ends with a StreamEnd stating the outcome; a failure after output started ends the stream with
        the error in StreamEnd.status instead of an error status, so the caller keeps what it got. A
        unary capability streams its result as one chunk.
        """
        ctx, caller = await self._admit(ctx, req.capability_id, req.arguments)
        rreq = self._route_request(
            ctx,
            capability_id=req.capability_id,
            version=req.version,
            prefer=req.prefer,
            only=req.only,
            region=req.region,
            idempotency_key=req.idempotency_key,
            streaming=None,  # a unary capability streams its one result
        )
        sequence = 0
        with self._invocation(ctx, req.capability_id, rreq, req.idempotency_key, streamed=True) as inv:
            while True:
                _, s = await self._route_attempt(inv)
                target, call = self._call(inv, s, ctx, req.arguments, caller)
                started = self.clock()
                first_at = 0.0
                in_flight = self.stats.begin(s.endpoint.endpoint_id)
                transport = self._transport(s)
                streams = s.offering.streaming or getattr(transport, "streams_unary", False)
                chunks = transport.stream(target, call) if streams else _one(transport, target, call)
                try:
                    async for chunk in chunks:
                        if not first_at:
                            first_at = self.clock()
                            self.metrics.latency.labels(req.capability_id).observe(first_at - started)
                        sequence += 1
                        yield rt.InvokeStreamResponse(
                            chunk=_stream_chunk(chunk, sequence, s.endpoint.endpoint_id)
                        )
                except TransportError as err:
                    in_flight.done()  # now, not after the final message below reaches a slow reader
                    inv.last = (s, err)
                    may_retry = self._failed(inv, s, err, started)
                    if sequence == 0 and may_retry:
                        continue
                    if sequence == 0:
                        raise self._final_error(inv, s, err) from None
                    final = self._final_error(inv, s, err)
                    inv.outcome = final.reason
                    yield rt.InvokeStreamResponse(end=_end("FAILED", final, sequence))
                    return
                finally:
                    in_flight.done()
                    await chunks.aclose()  # type: ignore[attr-defined]
                ttfc = (first_at or self.clock()) - started
                self.stats.success(s.endpoint.endpoint_id, ttfc * 1000, self.clock())
                inv.outcome = "OK"
                yield rt.InvokeStreamResponse(end=_end("COMPLETED", None, sequence))
                return

    async def report_outcome(
        self, req: rt.ReportOutcomeRequest, ctx: CallContext
    ) -> rt.ReportOutcomeResponse:
        """Feeds the outcome of a direct call (after ResolveEndpoint) into latency and ejection."""
        tenant = require_tenant(ctx)
        v = Violations()
        v.text(req.endpoint_id, "endpoint_id", max_len=40, required=True)
        v.pattern(
            req.capability_id,
            "capability_id",
            validation.CAPABILITY_ID,
            "a capability id such as crm.lead.create",
        )
        v.check(0 <= req.code <= 16, "code", "must be a google.rpc.Code (0-16)")
        latency_s = seconds_of(req.latency)
        v.check(0 <= latency_s <= 3600, "latency", "must be between 0 and 1 hour")
        v.text(req.route_token, "route_token", max_len=1024)
        v.raise_if_any("invalid outcome report")
        offering = next(
            (
                o
                for o in self.snapshot.offerings(req.capability_id)
                if o.visible_to(tenant) and any(e.endpoint_id == req.endpoint_id for e in o.endpoints)
            ),
            None,
        )
        if offering is None:
            raise NotFound(
                f"endpoint {req.endpoint_id} does not serve {req.capability_id} for this tenant",
                reason="ENDPOINT_NOT_FOUND",
                metadata={"endpoint_id": req.endpoint_id, "capability_id": req.capability_id},
            )
        if req.route_token and not self._check_route_token(
            req.route_token, tenant, req.capability_id, req.endpoint_id
        ):
            raise InvalidArgument(
                "route_token is invalid, expired, or was issued for another call",
                [("route_token", "must be the token ResolveEndpoint returned for this endpoint")],
                reason="ROUTE_TOKEN_INVALID",
            )
        now = self.clock()
        if req.code == code_pb2.OK:
            self.stats.success(req.endpoint_id, latency_s * 1000, now)
        elif req.code in (
            code_pb2.UNAVAILABLE,
            code_pb2.DEADLINE_EXCEEDED,
            code_pb2.INTERNAL,
            code_pb2.UNKNOWN,
            code_pb2.RESOURCE_EXHAUSTED,
        ):
            self.stats.failure(req.endpoint_id, now, self.snapshot.group_of(req.capability_id))
        st = self.stats.get(req.endpoint_id)
        return rt.ReportOutcomeResponse(latency_ewma_ms=st.ewma_ms, ejected=st.ejected_until > now)


async def _one(
    transport: Transport, target: Target, call: Call
) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
    """A unary call as a stream of one chunk."""
    yield provider_pb2.InvokeStreamResponse(data=await transport.invoke(target, call))


def _excluding(req: RouteRequest, excluded: set[str]) -> RouteRequest:
    return dataclasses.replace(req, exclude=req.exclude | excluded) if excluded else req


def _stream_chunk(chunk: object, sequence: int, endpoint_id: str) -> rt.StreamChunk:
    out = rt.StreamChunk(sequence=sequence, endpoint_id=endpoint_id)
    kind = chunk.WhichOneof("content")  # type: ignore[attr-defined]
    if kind == "data":
        out.data.CopyFrom(chunk.data)  # type: ignore[attr-defined]
    elif kind == "text":
        out.text = chunk.text  # type: ignore[attr-defined]
    elif kind == "raw":
        out.raw = chunk.raw  # type: ignore[attr-defined]
    return out


def _end(reason: str, error: MeshError | None, sequence: int) -> common_pb2.StreamEnd:
    return stream_end(reason, sequence, None if error is None else to_status(error, "router.powerx"))
