"""Circuit breakers guarding each platform for each tenant.

Shaped after resilience4j: a sliding **time** window of call outcomes; the breaker opens when the window
holds at least `min_calls` calls and the failure rate reaches the threshold, or on a run of consecutive
failures; slow calls count as failures. After `open_s` it lets a few trial calls through (HALF_OPEN): if
they all succeed it closes, if any fails it opens again.

Built here rather than taken from a library: pybreaker, aiobreaker and purgatory only count consecutive
failures (no failure-rate window, no slow calls), pybreaker's async support needs Tornado, and the mesh
needs its own outcome classification (a tenant's own 4xx and throttling are not the platform failing)
and state-change hook for the degrade switch.

The window is kept as 30 buckets of `window_s / 30` each, so memory per breaker is constant whatever the
call rate; an outcome leaves the window between `window_s - window_s/30` and `window_s` after it was
recorded. Breakers are not thread-safe: they are used from one event loop, and no method awaits.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import math
import re
import time
from collections.abc import Callable

from powerx.connector.v1 import degrade_pb2

log = logging.getLogger("powerx.connector.breaker")

BreakerState = degrade_pb2.BreakerState
CLOSED = degrade_pb2.BREAKER_STATE_CLOSED
OPEN = degrade_pb2.BREAKER_STATE_OPEN
HALF_OPEN = degrade_pb2.BREAKER_STATE_HALF_OPEN

_BUCKETS = 30
_STATE_NAMES = {CLOSED: "CLOSED", OPEN: "OPEN", HALF_OPEN: "HALF_OPEN"}

StateHook = Callable[[BreakerState, BreakerState, str], None]
"""Called as `hook(old_state, new_state, reason)` after every state change."""

RegistryHook = Callable[[str, str, BreakerState, BreakerState, str], None]
"""Called as `hook(tenant_id, platform, old_state, new_state, reason)` after every state change."""


class Outcome(enum.Enum):
    """How a platform call ended, as far as the breaker is concerned."""

    SUCCESS = "success"
    """The platform answered (a slow answer still counts as a failure)."""
    FAILURE = "failure"
    """The platform failed: timeouts, 5xx, Coze 4009/4013/5000, broken connections."""
    IGNORED = "ignored"
    """Says nothing about the platform's health: the caller's own 4xx (bad input, auth, not found),
    throttling, cancellation. Not counted; releases a half-open trial slot."""


# Module-level names for call sites: `breaker.record(SUCCESS, latency)`.
SUCCESS = Outcome.SUCCESS
FAILURE = Outcome.FAILURE
IGNORED = Outcome.IGNORED

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Setting key → (field, kind). Durations accept `30s`, `500ms`, `2m`, `1h` or bare seconds.
_KEYS: dict[str, tuple[str, str]] = {
    "window": ("window_s", "duration"),
    "min_calls": ("min_calls", "int"),
    "failure_rate": ("failure_rate", "float"),
    "consecutive": ("consecutive", "int"),
    "slow": ("slow_call_s", "duration"),
    "open": ("open_s", "duration"),
    "half_open": ("half_open_calls", "int"),
}


def _parse_value(key: str, kind: str, raw: str) -> float | int:
    text = raw.strip()
    if kind == "duration":
        match = _DURATION.fullmatch(text)
        if not match:
            raise ValueError(f"breaker setting {key!r} must be a duration such as 30s or 500ms, got {raw!r}")
        return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    if kind == "int":
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"breaker setting {key!r} must be a whole number, got {raw!r}")
        return int(text)
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"breaker setting {key!r} must be a number, got {raw!r}") from None
    return number


@dataclasses.dataclass(frozen=True)
class BreakerConfig:
    """When a breaker opens and how it recovers. The defaults suit a remote workflow platform.

    Attributes:
        window_s: Length of the sliding time window of outcomes (`window`).
        min_calls: Calls the window must hold before the failure rate can open the breaker (`min_calls`).
        failure_rate: Failure rate, from 0 (exclusive) to 1, that opens the breaker (`failure_rate`).
        consecutive: Consecutive failures that open the breaker whatever the window says; 0 turns this
            rule off (`consecutive`).
        slow_call_s: A successful call at least this slow counts as a failure; 0 turns this off (`slow`).
        open_s: How long the breaker stays OPEN before trying again (`open`).
        half_open_calls: Trial calls let through while HALF_OPEN, at most this many at once; all of them
            must succeed to close the breaker (`half_open`).
    """

    window_s: float = 30.0
    min_calls: int = 10
    failure_rate: float = 0.5
    consecutive: int = 5
    slow_call_s: float = 10.0
    open_s: float = 30.0
    half_open_calls: int = 3

    def __post_init__(self) -> None:
        checks = (
            ("window", self.window_s, math.isfinite(self.window_s) and self.window_s > 0, "greater than 0"),
            ("min_calls", self.min_calls, self.min_calls >= 1, "at least 1"),
            ("failure_rate", self.failure_rate, 0 < self.failure_rate <= 1, "above 0 and at most 1"),
            ("consecutive", self.consecutive, self.consecutive >= 0, "at least 0 (0 turns it off)"),
            (
                "slow",
                self.slow_call_s,
                math.isfinite(self.slow_call_s) and self.slow_call_s >= 0,
                "at least 0",
            ),
            ("open", self.open_s, math.isfinite(self.open_s) and self.open_s >= 0, "at least 0"),
            ("half_open", self.half_open_calls, self.half_open_calls >= 1, "at least 1"),
        )
        for key, value, ok, rule in checks:
            if not ok:
                raise ValueError(f"breaker setting {key!r} must be {rule}, got {value!r}")

    @classmethod
    def parse(cls, spec: str, base: BreakerConfig | None = None) -> BreakerConfig:
        """A config from a setting such as `window=30s,min_calls=10,failure_rate=0.5,slow=10s,open=30s`.

        Keys: `window`, `min_calls`, `failure_rate`, `consecutive`, `slow`, `open`, `half_open`. Durations
        take `ms`, `s`, `m` or `h` (bare numbers are seconds).

        Args:
            spec: Comma-separated `key=value` pairs; keys left out keep their value from `base`.
            base: The config to start from; the defaults when None.

        Raises:
            ValueError: An unknown key, a malformed value or a value out of range, naming the key.
        """
        values: dict[str, float | int] = {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if key not in _KEYS:
                raise ValueError(f"unknown breaker setting {key!r} (expected one of {', '.join(_KEYS)})")
            if not sep or not raw.strip():
                raise ValueError(f"breaker setting {key!r} has no value")
            name, kind = _KEYS[key]
            values[name] = _parse_value(key, kind, raw)
        # Values were typed per key by _parse_value; __post_init__ checks the ranges.
        return dataclasses.replace(base or cls(), **values)  # type: ignore[arg-type]


class Breaker:
    """The circuit breaker of one platform for one tenant.

    Use: `if breaker.allow(): <call>; breaker.record(outcome, latency_s)`; when `allow()` is false, the
    call follows the degrade mode instead. Every `allow()` that returned true must be followed by exactly
    one `record()` (IGNORED when the call was never made), or a HALF_OPEN trial slot stays taken until
    the trial times out.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateHook | None = None,
    ) -> None:
        """Builds a CLOSED breaker.

        Args:
            config: Thresholds; the defaults when None.
            clock: Seconds from a monotonic clock (injectable for tests).
            on_change: Called after every state change; its exceptions are logged and swallowed, so a
                broken hook cannot break invocations.
        """
        self.config = config or BreakerConfig()
        self.on_change = on_change
        self._clock = clock
        self._width = self.config.window_s / _BUCKETS
        # [bucket index, calls, failures], oldest first.
        self._buckets: collections.deque[list[int]] = collections.deque()
        self._calls = 0
        self._failures = 0
        self._consecutive = 0
        self._state: BreakerState = CLOSED
        self._reason = ""
        self._opened_at = 0.0
        # Reservation times of the HALF_OPEN trial calls still running, oldest first.
        self._trials: collections.deque[float] = collections.deque()
        self._trial_successes = 0

    def __repr__(self) -> str:
        return f"Breaker({_STATE_NAMES[self._state]}, reason={self._reason!r})"

    # --- reading ------------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; reading it moves OPEN to HALF_OPEN once the open period has passed."""
        self._advance(self._clock())
        return self._state

    @property
    def reason(self) -> str:
        """Why the breaker is in its state, e.g. `5 consecutive failures`; empty for a fresh breaker."""
        self._advance(self._clock())
        return self._reason

    @property
    def failure_rate(self) -> float:
        """Share of failed calls in the window, from 0 to 1 (0 when the window is empty)."""
        self._prune(self._clock())
        return self._failures / self._calls if self._calls else 0.0

    @property
    def calls_in_window(self) -> int:
        """Counted calls (successes and failures) in the window."""
        self._prune(self._clock())
        return self._calls

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (trial failures included); reset when the breaker closes."""
        return self._consecutive

    @property
    def retry_after_s(self) -> float:
        """Seconds until an OPEN breaker lets trial calls through; 0 in the other states."""
        now = self._clock()
        self._advance(now)
        if self._state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.open_s - now)

    # --- calls --------------------------------------------------------------------------------------

    def allow(self) -> bool:
        """Whether a call may go to the platform now; in HALF_OPEN a true answer takes a trial slot."""
        now = self._clock()
        self._advance(now)
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            return False
        if len(self._trials) + self._trial_successes < self.config.half_open_calls:
            self._trials.append(now)
            return True
        return False

    def record(self, outcome: Outcome, latency_s: float = 0.0) -> None:
        """Counts the outcome of a call that `allow()` let through.

        Args:
            outcome: How the call ended.
            latency_s: How long it took; a SUCCESS at least `slow_call_s` long counts as a failure.
        """
        now = self._clock()
        self._advance(now)
        slow = 0 < self.config.slow_call_s <= latency_s
        failed = outcome is Outcome.FAILURE or (outcome is Outcome.SUCCESS and slow)
        if self._state == OPEN:
            return  # the late result of a call sent before the breaker opened
        if self._state == HALF_OPEN:
            # Results are matched to trial slots in order; one with no slot left (a call from before the
            # breaker opened, finishing late) says nothing about the trials.
            if not self._trials:
                return
            self._trials.popleft()
            if outcome is Outcome.IGNORED:
                return
            if failed:
                self._consecutive += 1
                what = f"slow ({latency_s:.1f}s)" if outcome is Outcome.SUCCESS else "failed"
                self._open(now, f"trial call {what} while half-open")
                return
            self._trial_successes += 1
            if self._trial_successes >= self.config.half_open_calls:
                self._close(f"{self._trial_successes} trial calls succeeded")
            return
        if outcome is Outcome.IGNORED:
            return
        self._count(now, failed)
        if not failed:
            self._consecutive = 0
            return
        self._consecutive += 1
        cfg = self.config
        if cfg.consecutive and self._consecutive >= cfg.consecutive:
            self._open(now, f"{self._consecutive} consecutive failures")
        elif self._calls >= cfg.min_calls and self._failures / self._calls >= cfg.failure_rate:
            rate = self._failures / self._calls
            self._open(now, f"failure rate {rate:.2f} over {self._calls} calls in {cfg.window_s:g}s")

    def reset(self, state: BreakerState = CLOSED, reason: str = "reset by an operator") -> None:
        """Forces a state, e.g. HALF_OPEN when an operator turns degradation OFF while the breaker is OPEN.

        CLOSED clears the window and counters; HALF_OPEN starts a fresh set of trial calls; OPEN starts a
        fresh open period. The hook runs when the state changes.

        Raises:
            ValueError: `state` is not CLOSED, OPEN or HALF_OPEN.
        """
        now = self._clock()
        if state == CLOSED:
            self._close(reason)
        elif state == HALF_OPEN:
            self._half_open(reason)
        elif state == OPEN:
            self._open(now, reason)
        else:
            raise ValueError(f"cannot reset a breaker to state {state}")

    # --- internals ----------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self._state == OPEN and now - self._opened_at >= self.config.open_s:
            self._half_open(f"open for {self.config.open_s:g}s; trying {self.config.half_open_calls} calls")
        elif self._state == HALF_OPEN and self._trials:
            # A trial that never reports would hold its slot forever; one slower than a slow call is a
            # failure anyway. With slow calls off, the window length bounds it instead.
            limit = self.config.slow_call_s or self.config.window_s
            if now - self._trials[0] >= limit:
                self._consecutive += 1
                self._open(now, f"trial call did not finish within {limit:g}s")

    def _prune(self, now: float) -> None:
        oldest = math.floor(now / self._width) - _BUCKETS
        while self._buckets and self._buckets[0][0] <= oldest:
            _, calls, failures = self._buckets.popleft()
            self._calls -= calls
            self._failures -= failures

    def _count(self, now: float, failed: bool) -> None:
        self._prune(now)
        index = math.floor(now / self._width)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += int(failed)
        self._calls += 1
        self._failures += int(failed)

    def _open(self, now: float, reason: str) -> None:
        self._opened_at = now
        self._trials.clear()
        self._trial_successes = 0
        self._change(OPEN, reason)

    def _half_open(self, reason: str) -> None:
        self._trials.clear()
        self._trial_successes = 0
        self._change(HALF_OPEN, reason)

    def _close(self, reason: str) -> None:
        # The failures that opened the breaker must not count against the platform once it recovered.
        self._buckets.clear()
        self._calls = self._failures = self._consecutive = 0
        self._trials.clear()
        self._trial_successes = 0
        self._change(CLOSED, reason)

    def _change(self, new: BreakerState, reason: str) -> None:
        old, self._state, self._reason = self._state, new, reason
        if old != new and self.on_change is not None:
            try:
                self.on_change(old, new, reason)
            except Exception:
                log.exception("breaker state hook failed (%s -> %s)", _STATE_NAMES[old], _STATE_NAMES[new])


class Breakers:
    """The breakers of every (tenant, platform), created on first use and bounded in number.

    Past `capacity`, the least recently used CLOSED breaker is dropped (a dropped breaker only forgets
    outcomes); only when none of the oldest is CLOSED does an OPEN or HALF_OPEN one go.
    """

    _EVICTION_SCAN = 64

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: RegistryHook | None = None,
        capacity: int = 10_000,
    ) -> None:
        """Builds an empty registry.

        Args:
            config: Thresholds of breakers created without their own.
            clock: Seconds from a monotonic clock, shared by every breaker.
            on_change: Called as `hook(tenant_id, platform, old, new, reason)` after any state change.
            capacity: Most breakers kept.
        """
        if capacity < 1:
            raise ValueError("breaker registry capacity must be at least 1")
        self.config = config or BreakerConfig()
        self._clock = clock
        self._on_change = on_change
        self._capacity = capacity
        self._breakers: collections.OrderedDict[tuple[str, str], Breaker] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._breakers)

    def get(self, tenant_id: str, platform: str, config: BreakerConfig | None = None) -> Breaker:
        """The breaker of a tenant's platform, created CLOSED with `config` (else the registry's) if new."""
        key = (tenant_id, platform)
        breaker = self._breakers.get(key)
        if breaker is not None:
            self._breakers.move_to_end(key)
            return breaker
        breaker = Breaker(config or self.config, self._clock, self._hook(tenant_id, platform))
        self._breakers[key] = breaker
        if len(self._breakers) > self._capacity:
            self._evict()
        return breaker

    def peek(self, tenant_id: str, platform: str) -> Breaker | None:
        """The breaker if it exists, without creating it or marking it used."""
        return self._breakers.get((tenant_id, platform))

    def forget(self, tenant_id: str, platform: str) -> None:
        """Drops a breaker (e.g. when the tenant's last instance of the platform is deleted)."""
        self._breakers.pop((tenant_id, platform), None)

    def items(self) -> list[tuple[tuple[str, str], Breaker]]:
        """Every ((tenant_id, platform), breaker), least recently used first."""
        return list(self._breakers.items())

    def _hook(self, tenant_id: str, platform: str) -> StateHook | None:
        hook = self._on_change
        if hook is None:
            return None

        def changed(old: BreakerState, new: BreakerState, reason: str) -> None:
            hook(tenant_id, platform, old, new, reason)

        return changed

    def _evict(self) -> None:
        # The newest entry is the breaker just created for the caller: never a candidate.
        scan = min(self._EVICTION_SCAN, len(self._breakers) - 1)
        for index, (key, breaker) in enumerate(self._breakers.items()):
            if index >= scan:
                break
            # The private field: reading `state` could move the breaker to HALF_OPEN and fire its hook.
            if breaker._state == CLOSED:
                del self._breakers[key]
                return
        self._breakers.popitem(last=False)
