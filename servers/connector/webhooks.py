"""The webhook guard in front of the connectors, the durable callback outbox, and the callback stream.

A webhook is checked in this order, and a rejection writes nothing but a metric and an audit line:
size, instance, feature flag, per-tenant throttle, signature over the exact bytes (Standard Webhooks or
the Coze scheme, timestamp within the instance's tolerance), JSON body, then the id's novelty (replay
memory shared by every mesh process: Redis `SET NX` with a TTL of twice the tolerance, or the database).
A verified callback is first written to the outbox, which makes it durable, then processed: it finishes
its invocation, becomes a stored and published `platform.connector.callback` event, and is audited. A
processing failure is retried from the outbox with exponential backoff and alerts after a threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from powerx.connector.v1 import callback_pb2, degrade_pb2, invocation_pb2
from powerx.connector.v1 import connector_service_pb2 as svc
from servers.common.context import CallContext
from servers.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from servers.common.streams import stream_end
from servers.common.times import seconds_of, timestamp_ms
from servers.common.validate import Violations
from servers.connector import guard, templates, validation
from servers.connector.flags import WEBHOOK_GUARD_FLAG
from servers.connector.platforms.base import PERMANENT, PlatformFailure, PlatformResult
from servers.connector.service import (
    FAILED,
    SUCCEEDED,
    AuditEntry,
    ConnectorService,
    Prepared,
    _rule,
    check_platform,
)
from servers.connector.store import TERMINAL_STATES, OutboxItem, StoredInstance
from servers.registry.service import require_tenant

log = logging.getLogger("powerx.connector.webhooks")

CALLBACK_TOPIC = "platform.connector.callback"
ALERT_TOPIC = "platform.connector.alert"
DEFAULT_TOLERANCE_S = 300.0
_LEASE_MS = 30_000
_REPLAY_BATCH = 500
_VERIFIED = callback_pb2.SIGNATURE_STATUS_VERIFIED


class ReplayMemory(Protocol):
    """Remembers webhook ids for a while, atomically across mesh processes."""

    async def first_use(self, key: str, ttl_s: float) -> bool:
        """True the first time a key is seen within its TTL."""
        ...

    async def forget(self, key: str) -> None:
        """Drops a key (its webhook could not be recorded, so the platform's retry must pass)."""
        ...


class RedisReplay:
    """Replay memory in Redis: `SET key 1 NX PX ttl`."""

    def __init__(self, redis: Any, prefix: str = "powerx:webhook:") -> None:
        self.redis = redis
        self.prefix = prefix

    async def first_use(self, key: str, ttl_s: float) -> bool:
        """See ReplayMemory."""
        return bool(await self.redis.set(self.prefix + key, b"1", nx=True, px=max(1, int(ttl_s * 1000))))

    async def forget(self, key: str) -> None:
        """See ReplayMemory."""
        await self.redis.delete(self.prefix + key)


class DatabaseReplay:
    """Replay memory in the database (the embedded default, shared by processes on one database)."""

    def __init__(self, service: ConnectorService) -> None:
        self.service = service

    async def first_use(self, key: str, ttl_s: float) -> bool:
        """See ReplayMemory."""
        return await self.service.store.first_use(key, ttl_s, self.service.clock_ms())

    async def forget(self, key: str) -> None:
        """See ReplayMemory."""
        await self.service.store.forget(key)


class WebhookIntake:
    """Receives webhooks, processes them through the outbox, and streams the resulting events."""

    def __init__(self, service: ConnectorService, replay: ReplayMemory) -> None:
        self.service = service
        self.replay = replay
        self.store = service.store
        self.metrics = service.metrics
        self._wake = asyncio.Event()
        service.on_human_answer = self._human_answer

    def _audit(
        self,
        tenant: str,
        ctx: CallContext,
        action: str,
        scope: str,
        outcome: str,
        *,
        ok: bool = True,
        **summary: Any,
    ) -> None:
        self.service._audit(
            AuditEntry(
                tenant, "webhook", ctx.trace_id, ctx.request_id, action, scope, outcome, summary, ok=ok
            )
        )

    def _reject(
        self,
        tenant: str,
        platform: str,
        scope: str,
        ctx: CallContext,
        code: str,
        *,
        signature_status: int = 0,
    ) -> None:
        self.metrics.callback_failures.labels(platform, code.lower()).inc()
        self.metrics.callbacks.labels(platform, "rejected").inc()
        if signature_status:
            name = (
                callback_pb2.SignatureStatus.Name(signature_status).removeprefix("SIGNATURE_STATUS_").lower()
            )
            self.metrics.signature_failures.labels(platform, name).inc()
        self._audit(tenant, ctx, "connector.webhook", scope, code, ok=False)

    # ---- intake ------------------------------------------------------------------------------------

    async def receive(
        self, req: svc.ReceiveWebhookRequest, headers: Mapping[str, str], ctx: CallContext
    ) -> svc.ReceiveWebhookResponse:
        """Guards, records and processes one webhook; see the module docstring for the order."""
        platform = check_platform(req.platform)
        scope = f"{platform}/{req.instance_id}"
        v = Violations()
        v.pattern(req.instance_id, "instance_id", validation.INSTANCE_ID, "an instance id", required=True)
        v.raise_if_any("invalid webhook address")
        body = req.body.data
        limit = self.service.config.max_body_bytes
        if len(body) > limit:
            self._reject("", platform, scope, ctx, "WEBHOOK_TOO_LARGE")
            raise InvalidArgument(
                f"the webhook body is larger than {limit} bytes",
                [("body", f"must be at most {limit} bytes")],
                reason="WEBHOOK_TOO_LARGE",
            )
        stored = await self.store.instance(platform, req.instance_id)
        if stored is None or stored.deleted:
            self._reject("", platform, scope, ctx, "INSTANCE_NOT_FOUND")
            raise NotFound(f"connector instance {scope} not found", reason="INSTANCE_NOT_FOUND")
        inst = stored.instance
        tenant = inst.tenant_id
        flags = self.service.flags()
        if not flags.enabled(WEBHOOK_GUARD_FLAG, tenant, platform):
            self._reject(tenant, platform, scope, ctx, "FEATURE_DISABLED")
            raise FailedPrecondition(
                f"webhook intake ({WEBHOOK_GUARD_FLAG}) is not enabled for this tenant",
                reason="FEATURE_DISABLED",
            )
        if not inst.enabled:
            self._reject(tenant, platform, scope, ctx, "INSTANCE_DISABLED")
            raise FailedPrecondition(f"connector instance {scope} is disabled", reason="INSTANCE_DISABLED")
        rate = flags.rate_limit(WEBHOOK_GUARD_FLAG)
        rule = (
            _rule(rate)
            if rate is not None and rate.requests_per_second > 0
            else self.service.config.webhook_rate
        )
        wait = await self.service.quotas.take(f"wh:{tenant}:{platform}", rule)
        if wait > 0:
            self._reject(tenant, platform, scope, ctx, "RATE_LIMITED")
            raise ResourceExhausted(
                "too many webhooks for this tenant", reason="RATE_LIMITED", retry_after_s=wait
            )
        webhook_secrets, coze_tokens = await self._secrets(stored)
        tolerance = seconds_of(inst.webhook_tolerance) or DEFAULT_TOLERANCE_S
        verdict = guard.verify(
            body,
            headers,
            secrets=webhook_secrets,
            coze_tokens=coze_tokens,
            now_s=self.service.clock_ms() / 1000,
            tolerance_s=tolerance,
        )
        if not verdict.ok:
            self._reject(tenant, platform, scope, ctx, verdict.error_code, signature_status=verdict.status)
            raise Unauthenticated(
                f"webhook rejected: {verdict.message}",
                reason=verdict.error_code,
                metadata={"scheme": verdict.scheme},
            )
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            payload = None
        if not isinstance(payload, dict):
            self._reject(tenant, platform, scope, ctx, "MALFORMED_BODY")
            raise InvalidArgument(
                "the webhook body must be a JSON object", [("body", "must be a JSON object")]
            )
        key = f"{platform}:{req.instance_id}:{verdict.webhook_id}"
        if not await self.replay.first_use(key, 2 * tolerance):
            self.metrics.callbacks.labels(platform, "replayed").inc()
            self._audit(tenant, ctx, "connector.webhook", scope, "REPLAYED", callback_id=verdict.webhook_id)
            return svc.ReceiveWebhookResponse(callback_id=verdict.webhook_id, duplicate=True)
        record = {
            "callback_id": verdict.webhook_id,
            "scheme": verdict.scheme,
            "platform": platform,
            "instance_id": req.instance_id,
            "receive_ms": self.service.clock_ms(),
            "trace_id": ctx.trace_id,
            "body": payload,
        }
        try:
            payload = json.dumps(record).encode()
            # Stored already claimed by this request (attempt 1, due after the lease), so the sweeper
            # of another process leaves it to the inline processing below unless this process dies.
            now = self.service.clock_ms()
            item_id = await self.store.add_outbox(
                tenant, "callback", payload, now, claimed_until_ms=now + _LEASE_MS
            )
        except Exception:
            await self.replay.forget(key)
            log.exception("could not record webhook %s of %s", verdict.webhook_id, scope)
            raise Unavailable(
                "the webhook could not be recorded; retry it", reason="STORE_UNAVAILABLE"
            ) from None
        self.metrics.callbacks.labels(platform, "verified").inc()
        invocation_id = await self._run(OutboxItem(item_id, tenant, "callback", payload, 1), stored)
        return svc.ReceiveWebhookResponse(callback_id=verdict.webhook_id, invocation_id=invocation_id or "")

    async def _secrets(self, stored: StoredInstance) -> tuple[list[str], list[str]]:
        """Webhook secrets and Coze verify tokens of the instance's credential.

        The previous version's count too while the instance allows it, so a rotation does not reject
        webhooks signed a moment before.
        """
        webhook_secrets: list[str] = []
        coze_tokens: list[str] = []
        cred = await self.service.credential_of(stored)
        versions = []
        if cred is not None and not cred.destroyed:
            versions.append(cred)
            prev = await self.service.usable_previous(stored, cred)
            if prev is not None:
                versions.append(prev)
        for c in versions:
            secret = self.service._open(c)
            webhook_secrets.extend(secret.webhook_secrets)
            if secret.coze_verify_token:
                coze_tokens.append(secret.coze_verify_token)
        return webhook_secrets, coze_tokens

    # ---- processing ----------------------------------------------------------------------------------

    async def process(self, item_id: int) -> str | None:
        """Processes one outbox item if it is due and free; returns the invocation it completed."""
        now = self.service.clock_ms()
        item = await self.store.claim_outbox(item_id, now, _LEASE_MS)
        if item is None:
            return None
        return await self._run(item)

    async def _run(self, item: OutboxItem, stored: StoredInstance | None = None) -> str | None:
        """Processes a claimed outbox item: done, or scheduled for a retry.

        `stored` is the instance when the caller has just read it (inline processing of a webhook); the
        sweeper's retries read it again, since it may have changed meanwhile.
        """
        record = json.loads(item.payload)
        try:
            invocation_id = await self._apply(item.tenant_id, record, stored)
        except Exception as err:  # retried from the outbox: a failure here must not lose the callback
            await self._failed(item.item_id, item.tenant_id, record, item.attempts, err)
            return None
        await self.store.finish_outbox(item.item_id, self.service.clock_ms(), state="done")
        return invocation_id

    async def _failed(
        self, item_id: int, tenant: str, record: dict[str, Any], attempts: int, err: Exception
    ) -> None:
        config = self.service.config
        platform = record.get("platform", "")
        message = f"{type(err).__name__}: {err}"[:500]
        if attempts >= config.callback_max_attempts:
            await self.store.finish_outbox(item_id, self.service.clock_ms(), state="dead", error=message)
            state = "dead"
        else:
            backoff = min(300.0, 0.5 * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
            await self.store.finish_outbox(
                item_id,
                self.service.clock_ms(),
                state="pending",
                next_attempt_ms=self.service.clock_ms() + int(backoff * 1000),
                error=message,
            )
            state = "retrying"
        self.metrics.callback_failures.labels(platform, "processing").inc()
        if attempts >= config.callback_alert_after:
            log.error(
                "callback %s of %s failed %d times (%s): %s",
                record.get("callback_id"),
                platform,
                attempts,
                state,
                message,
                extra={"tenant": tenant, "alert": "platform.callback.failing"},
            )
            alert = json.dumps(
                {
                    "tenant_id": tenant,
                    "platform": platform,
                    "callback_id": record.get("callback_id"),
                    "attempts": attempts,
                    "state": state,
                    "error": message,
                }
            ).encode()
            with contextlib.suppress(Exception):
                await self.service.bus.publish(ALERT_TOPIC, alert)
        else:
            log.warning(
                "callback %s processing failed (attempt %d): %s", record.get("callback_id"), attempts, message
            )

    async def _apply(self, tenant: str, record: dict[str, Any], stored: StoredInstance | None = None) -> str:
        """Finishes the invocation a callback names, then stores, publishes and audits the event."""
        body: dict[str, Any] = record["body"]
        platform, instance_id = record["platform"], record["instance_id"]
        if stored is None:
            stored = await self.store.instance(platform, instance_id)
        inv = await self._find_invocation(tenant, platform, instance_id, body)
        sensitive = list(stored.instance.sensitive_fields) if stored else []
        event = callback_pb2.CallbackEvent(
            callback_id=record["callback_id"],
            tenant_id=tenant,
            platform=platform,
            instance_id=instance_id,
            signature_status=_VERIFIED,
            signature_scheme=record["scheme"],
            trace_id=str(body.get("trace_id", ""))[:64],
            platform_run_id=str(body.get("execution_id", ""))[:128],
        )
        event.receive_time.CopyFrom(timestamp_ms(record["receive_ms"]))
        ok = body.get("ok") is True
        code, message = _error_of(body)
        if not ok:
            event.error_code, event.error_message = code or "WORKFLOW_FAILED", message
        result = body.get("result")
        if inv is not None:
            event.invocation_id = inv.invocation_id
            event.trace_id = inv.trace_id
            if inv.state not in TERMINAL_STATES and stored is not None:
                p = Prepared.resume(stored, inv, CallContext(tenant_id=tenant, principal="webhook"))
                if body.get("execution_id"):
                    inv.platform_run_id = str(body["execution_id"])[:128]
                if ok:
                    inv = await self.service._finish(p, SUCCEEDED, result=PlatformResult(output=result))
                else:
                    failure = PlatformFailure(
                        code or "WORKFLOW_FAILED", PERMANENT, message or "the workflow reported a failure"
                    )
                    inv = await self.service._finish(p, FAILED, error=failure)
                started = inv.create_time.ToMilliseconds()
                self.metrics.callback_latency.labels(platform).observe(
                    max(0.0, (record["receive_ms"] - started) / 1000)
                )
            event.invocation_state = inv.state
            if inv.HasField("result"):
                event.result.CopyFrom(inv.result)
        elif result is not None:
            out = result
            if stored is not None and stored.instance.HasField("output_template"):
                out = templates.render_output(stored.instance.output_template, out)
            event.result.CopyFrom(templates.py_to_value(templates.mask(out, sensitive)))
        await self.store.add_callback(event, self.service.clock_ms())
        await self.service.bus.publish(CALLBACK_TOPIC, event.SerializeToString())
        self._audit(
            tenant,
            CallContext(trace_id=event.trace_id, request_id=record.get("trace_id", "")),
            "connector.callback",
            f"{platform}/{instance_id}",
            "VERIFIED",
            callback_id=event.callback_id,
            invocation_id=event.invocation_id,
            error_code=event.error_code,
            state=invocation_pb2.InvocationState.Name(event.invocation_state),
        )
        return event.invocation_id

    async def _find_invocation(
        self, tenant: str, platform: str, instance_id: str, body: Mapping[str, Any]
    ) -> invocation_pb2.Invocation | None:
        inv_id = body.get("invocation_id")
        if isinstance(inv_id, str) and inv_id:
            row = await self.store.invocation(inv_id[:64])
            if row is not None:
                inv = row.invocation
                if inv.tenant_id == tenant and inv.platform == platform and inv.instance_id == instance_id:
                    return inv
            return None
        exec_id = body.get("execution_id")
        if isinstance(exec_id, (str, int)) and str(exec_id):
            for row in await self.store.unfinished_invocations(tenant, platform, instance_id):
                if row.invocation.platform_run_id == str(exec_id):
                    return row.invocation
        return None

    async def _human_answer(self, inv: invocation_pb2.Invocation, task: degrade_pb2.HumanTask) -> None:
        event = callback_pb2.CallbackEvent(
            callback_id=task.task_id,
            tenant_id=inv.tenant_id,
            platform=inv.platform,
            instance_id=inv.instance_id,
            invocation_id=inv.invocation_id,
            signature_status=_VERIFIED,
            signature_scheme="human-task",
            trace_id=inv.trace_id,
            invocation_state=inv.state,
        )
        event.result.CopyFrom(inv.result)
        event.receive_time.CopyFrom(timestamp_ms(self.service.clock_ms()))
        await self.store.add_callback(event, self.service.clock_ms())
        await self.service.bus.publish(CALLBACK_TOPIC, event.SerializeToString())

    async def run_outbox(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Retries due outbox items until `stop` is set (every process runs it; claims keep them apart)."""
        while not stop.is_set():
            try:
                for item_id in await self.store.due_outbox(self.service.clock_ms()):
                    await self.process(item_id)
                counts = await self.store.outbox_counts()
                self.metrics.outbox_pending.set(counts.get("pending", 0))
            except Exception:
                log.exception("outbox sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    # ---- watch ---------------------------------------------------------------------------------------

    async def watch(
        self, req: svc.WatchCallbacksRequest, ctx: CallContext
    ) -> AsyncIterator[svc.WatchCallbacksResponse]:
        """The tenant's callback events of a platform: stored ones after `since_sequence`, then live ones."""
        tenant = require_tenant(ctx)
        platform = check_platform(req.platform)
        v = Violations()
        if req.instance_id:
            v.pattern(req.instance_id, "instance_id", validation.INSTANCE_ID, "an instance id")
        v.check(req.since_sequence >= 0, "since_sequence", "must not be negative")
        v.check(req.max_events >= 0, "max_events", "must not be negative")
        idle = seconds_of(req.idle_timeout)
        v.check(0 <= idle <= 3600, "idle_timeout", "must be between 0 and 1 h")
        v.raise_if_any("invalid watch")
        sent = 0
        last = req.since_sequence
        async with self.service.bus.subscribe(CALLBACK_TOPIC) as sub:
            if req.since_sequence:
                while True:
                    batch = await self.store.callbacks_after(
                        tenant, platform, req.instance_id, last, _REPLAY_BATCH
                    )
                    for event in batch:
                        last = event.sequence
                        sent += 1
                        yield svc.WatchCallbacksResponse(event=event)
                        if req.max_events and sent >= req.max_events:
                            yield svc.WatchCallbacksResponse(end=stream_end("MAX_EVENTS", last))
                            return
                    if len(batch) < _REPLAY_BATCH:
                        break
            while True:
                payload = await sub.get(idle or None)
                if payload is None:
                    yield svc.WatchCallbacksResponse(end=stream_end("IDLE_TIMEOUT", last))
                    return
                event = callback_pb2.CallbackEvent.FromString(payload)
                if event.tenant_id != tenant or event.platform != platform:
                    continue
                if req.instance_id and event.instance_id != req.instance_id:
                    continue
                if event.sequence and event.sequence <= last:
                    continue
                last = max(last, event.sequence)
                sent += 1
                yield svc.WatchCallbacksResponse(event=event)
                if req.max_events and sent >= req.max_events:
                    yield svc.WatchCallbacksResponse(end=stream_end("MAX_EVENTS", last))
                    return


def _error_of(body: Mapping[str, Any]) -> tuple[str, str]:
    """The (code, message) of a callback's `error`: a string, or an object with code and message."""
    err = body.get("error")
    if isinstance(err, dict):
        return str(err.get("code", ""))[:64], str(err.get("message", ""))[:500]
    if isinstance(err, str):
        return "WORKFLOW_FAILED", err[:500]
    return "", ""
