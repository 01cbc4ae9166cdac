"""The degrade switch of each (tenant, platform): set by operators or by the circuit breaker.

The stored `DegradeState` is the truth every mesh process shares (database plus a bus event on every
change, so the others follow at once; a short cache lifetime bounds the lag when the bus is lost).
Breakers are per process: the one that sees the platform fail opens its breaker, writes an automatic
switch (LOCAL or HUMAN), and closes it again after successful half-open probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from powerx.connector.v1 import degrade_pb2
from servers.common.bus import EventBus
from servers.common.times import timestamp_ms
from servers.connector.breaker import Breaker, BreakerConfig
from servers.connector.metrics import ConnectorMetrics
from servers.connector.store import ConnectorStore

log = logging.getLogger("powerx.connector.degrade")

OFF = degrade_pb2.DEGRADE_MODE_OFF
LOCAL = degrade_pb2.DEGRADE_MODE_LOCAL
HUMAN = degrade_pb2.DEGRADE_MODE_HUMAN
CLOSED = degrade_pb2.BREAKER_STATE_CLOSED
OPEN = degrade_pb2.BREAKER_STATE_OPEN
HALF_OPEN = degrade_pb2.BREAKER_STATE_HALF_OPEN
DEGRADE_TOPIC = "platform.connector.degrade"
BREAKER_ACTOR = "circuit-breaker"
_CACHE_MS = 2000  # bound on how stale another process's switch may be when a bus event is lost


class DegradeControl:
    """Reads and writes degrade switches; owns this process's breakers."""

    def __init__(
        self,
        store: ConnectorStore,
        bus: EventBus,
        metrics: ConnectorMetrics,
        breaker_config: BreakerConfig,
        *,
        clock_ms: Callable[[], int],
        audit: Callable[[degrade_pb2.DegradeState, str], Awaitable[None]],
    ) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.breaker_config = breaker_config
        self.clock_ms = clock_ms
        self._audit = audit
        self._cache: dict[tuple[str, str], tuple[int, degrade_pb2.DegradeState]] = {}
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._lock = asyncio.Lock()
        self._alerted: set[tuple[str, str, int]] = set()  # long-held switches alerted once each

    # ---- reading ------------------------------------------------------------------------------------

    def default(self, tenant: str, platform: str) -> degrade_pb2.DegradeState:
        """The switch of a pair that was never set."""
        return degrade_pb2.DegradeState(
            platform=platform, tenant_id=tenant, mode=OFF, previous_mode=OFF, breaker_state=CLOSED
        )

    async def state(self, tenant: str, platform: str) -> degrade_pb2.DegradeState:
        """The switch in force now, with this process's breaker figures filled in.

        A timed mode past its expiry reads as OFF.
        """
        key = (tenant, platform)
        now = self.clock_ms()
        cached = self._cache.get(key)
        if cached is None or now - cached[0] > _CACHE_MS:
            stored = await self.store.degrade(tenant, platform)
            cached = (now, stored if stored is not None else self.default(tenant, platform))
            self._cache[key] = cached
        state = degrade_pb2.DegradeState()
        state.CopyFrom(cached[1])
        if state.mode != OFF and state.HasField("expire_time") and state.expire_time.ToMilliseconds() <= now:
            state.previous_mode, state.mode = state.mode, OFF
            state.reason = "the timed mode expired"
            state.ClearField("expire_time")
        breaker = self._breakers.get(key)
        if breaker is not None:
            state.failure_rate = breaker.failure_rate
            state.consecutive_failures = breaker.consecutive_failures
            if not state.automatic or state.mode == OFF:
                state.breaker_state = breaker.state
        return state

    def breaker(self, tenant: str, platform: str) -> Breaker:
        """This process's breaker of a pair."""
        key = (tenant, platform)
        breaker = self._breakers.get(key)
        if breaker is None:
            if len(self._breakers) > 100_000:  # bounded: drop closed, idle breakers first
                for k in [k for k, b in self._breakers.items() if b.state == CLOSED][:10_000]:
                    del self._breakers[k]
            breaker = Breaker(self.breaker_config)
            self._breakers[key] = breaker
        return breaker

    def forget(self, tenant: str, platform: str) -> None:
        """Drops the cached switch of a pair (a bus event said it changed)."""
        self._cache.pop((tenant, platform), None)

    # ---- writing ------------------------------------------------------------------------------------

    async def set(
        self,
        tenant: str,
        platform: str,
        mode: int,
        *,
        reason: str,
        actor: str,
        automatic: bool,
        timeout_ms: int = 0,
        local_capability_id: str = "",
        breaker_state: int = 0,
    ) -> degrade_pb2.DegradeState:
        """Stores a new switch, appends it to the history, tells the other processes, audits it."""
        async with self._lock:
            now = self.clock_ms()
            current = await self.state(tenant, platform)
            breaker = self.breaker(tenant, platform)
            if not automatic and mode == OFF and breaker.state == OPEN:
                breaker.reset(HALF_OPEN)  # an operator's recovery lets probes through at once
            state = degrade_pb2.DegradeState(
                platform=platform,
                tenant_id=tenant,
                mode=mode,  # type: ignore[arg-type]
                previous_mode=current.mode,
                reason=reason,
                actor=actor,
                automatic=automatic,
                breaker_state=breaker_state or breaker.state,  # type: ignore[arg-type]
                consecutive_failures=breaker.consecutive_failures,
                failure_rate=breaker.failure_rate,
                local_capability_id=local_capability_id,
            )
            state.set_time.CopyFrom(timestamp_ms(now))
            if timeout_ms and mode != OFF:
                state.expire_time.CopyFrom(timestamp_ms(now + timeout_ms))
            await self.store.put_degrade(state, now)
            self._cache[(tenant, platform)] = (now, state)
        self.metrics.degrades.labels(
            platform,
            degrade_pb2.DegradeMode.Name(mode).removeprefix("DEGRADE_MODE_").lower(),
            str(automatic).lower(),
        ).inc()
        log.warning(
            "degrade switch of %s for tenant %s: %s (%s) by %s",
            platform,
            tenant,
            degrade_pb2.DegradeMode.Name(mode),
            reason,
            actor,
            extra={"tenant": tenant, "alert": "platform.degrade"},
        )
        await self.bus.publish(DEGRADE_TOPIC, state.SerializeToString())
        await self._audit(state, actor)
        return state

    async def on_breaker_change(
        self, tenant: str, platform: str, new: int, reason: str, fallback_mode: int
    ) -> None:
        """Turns this process's breaker transitions into automatic switches.

        OPEN degrades to the fallback mode, CLOSED recovers (only an automatic switch: an operator's
        mode stays).
        """
        current = await self.state(tenant, platform)
        if new == OPEN and current.mode == OFF:
            await self.set(
                tenant,
                platform,
                fallback_mode,
                reason=reason,
                actor=BREAKER_ACTOR,
                automatic=True,
                breaker_state=OPEN,
            )
        elif new == CLOSED and current.automatic and current.mode != OFF:
            await self.set(
                tenant,
                platform,
                OFF,
                reason="the circuit breaker closed after successful probes",
                actor=BREAKER_ACTOR,
                automatic=True,
                breaker_state=CLOSED,
            )

    async def expire(self) -> None:
        """Writes OFF for timed modes whose time is over, and alerts on long-held switches.

        Writing OFF makes the history show the recovery; a switch held over 30 minutes is an alert.
        """
        now = self.clock_ms()
        for state in await self.store.all_degrades():
            if state.mode == OFF:
                continue
            if state.HasField("expire_time") and state.expire_time.ToMilliseconds() <= now:
                self.forget(state.tenant_id, state.platform)
                await self.set(
                    state.tenant_id,
                    state.platform,
                    OFF,
                    reason="the timed mode expired",
                    actor="system",
                    automatic=False,
                )
            elif now - state.set_time.ToMilliseconds() > 30 * 60_000 and (
                (state.tenant_id, state.platform, state.set_time.ToMilliseconds()) not in self._alerted
            ):
                self._alerted.add((state.tenant_id, state.platform, state.set_time.ToMilliseconds()))
                log.error(
                    "platform %s of tenant %s has been degraded for more than 30 minutes",
                    state.platform,
                    state.tenant_id,
                    extra={"tenant": state.tenant_id, "alert": "platform.degrade.long"},
                )

    async def follow(self, stop: asyncio.Event) -> None:
        """Drops cached switches other processes changed (bus events)."""
        async with self.bus.subscribe(DEGRADE_TOPIC) as sub:
            while not stop.is_set():
                payload = await sub.get(1.0)
                if payload is None:
                    continue
                state = degrade_pb2.DegradeState.FromString(payload)
                self._cache[(state.tenant_id, state.platform)] = (self.clock_ms(), state)

    def degraded_counts(self) -> dict[str, int]:
        """Degraded tenants per platform as cached here (for the gauge)."""
        counts: dict[str, int] = {"coze": 0, "n8n": 0}  # zero when recovered, not a stale count
        for (_, platform), (_, state) in self._cache.items():
            if state.mode != OFF:
                counts[platform] = counts.get(platform, 0) + 1
        return counts
