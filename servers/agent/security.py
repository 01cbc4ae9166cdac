"""Agent tokens, replay memory for signed agent-to-agent calls, and quotas (token buckets).

Tokens are `agt_<claims>.<mac>`: the claims (tenant, agent, issue time, nonce) with an HMAC-SHA256
under the mesh's token secret. The mesh stores only the token's SHA-256: a request is authenticated
when the MAC verifies (no database read) and the hash equals the agent's current one (revocation). Both
comparisons are constant time. The shared state (nonces, buckets) lives in Redis when the mesh is
scaled out, so every process sees the same.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

TOKEN_PREFIX = "agt_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    tenant_id: str
    agent_id: str
    issued_ms: int


def token_hash(token: str) -> str:
    """SHA-256 (hex) of a token: the only form in which the mesh keeps it."""
    return hashlib.sha256(token.encode()).hexdigest()


def hashes_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and checks agent tokens with the mesh's secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the agent token secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, claims: bytes) -> bytes:
        return hmac.new(self._secret, b"agt1\n" + claims, hashlib.sha256).digest()

    def issue(self, tenant_id: str, agent_id: str, now_ms: int) -> str:
        """A new token for the agent."""
        claims = "\n".join((tenant_id, agent_id, str(now_ms), secrets.token_hex(16))).encode()
        return f"{TOKEN_PREFIX}{_b64(claims)}.{_b64(self._mac(claims))}"

    def verify(self, token: str) -> TokenClaims | None:
        """The claims of a token this mesh issued, or None (malformed or forged)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 1024:
            return None
        body, _, mac = token[len(TOKEN_PREFIX) :].partition(".")
        try:
            claims, given = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(self._mac(claims), given):
            return None
        parts = claims.decode(errors="replace").split("\n")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return TokenClaims(tenant_id=parts[0], agent_id=parts[1], issued_ms=int(parts[2]))


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The token secret: POWERX_AGENT_TOKEN_SECRET, else one kept in the data folder (created once).

    Kept across restarts so that agents can re-register with their token after the mesh restarts
    (seed 002 §14). Processes sharing a database must share the setting.
    """
    if configured:
        return configured.encode()
    path = data_dir / "agent-token.secret"
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32).encode()
    path.touch(mode=0o600)
    path.write_bytes(secret)
    return secret


class NonceMemory(Protocol):
    """Remembers nonces for a while; `first_use` is true only the first time a nonce is offered."""

    async def first_use(self, key: str, ttl_s: float) -> bool:
        """Records `key`; false when it was recorded before and has not expired."""


class LocalNonces:
    """Nonce memory of one process (the embedded default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, capacity: int = 200_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._clock = clock
        self._capacity = capacity

    async def first_use(self, key: str, ttl_s: float) -> bool:
        """See NonceMemory."""
        now = self._clock()
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self._capacity:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now + ttl_s
        return True


class RedisNonces:
    """Nonce memory shared by every mesh process: `SET NX` with a TTL."""

    def __init__(self, redis: Any, prefix: str = "powerx:agent:nonce:") -> None:
        self._redis = redis
        self._prefix = prefix

    async def first_use(self, key: str, ttl_s: float) -> bool:
        """See NonceMemory."""
        return bool(await self._redis.set(self._prefix + key, b"1", nx=True, px=max(1, int(ttl_s * 1000))))


@dataclass(frozen=True)
class QuotaRule:
    """A token bucket: `rate` tokens per second, up to `burst`; a rate of 0 means no limit."""

    rate: float = 0.0
    burst: float = 0.0

    @classmethod
    def parse(cls, spec: str, what: str) -> QuotaRule:
        """`rate=50,burst=100` (burst defaults to twice the rate); empty means no limit."""
        values: dict[str, float] = {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            key, _, raw = item.partition("=")
            key = key.strip()
            if key not in ("rate", "burst"):
                raise ValueError(f"unknown {what} field {key!r} (expected rate and burst)")
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"{what} field {key} must be a number, got {raw!r}") from None
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"{what} field {key} must be a finite number >= 0, got {raw!r}")
            values[key] = number
        rate = values.get("rate", 0.0)
        return cls(rate=rate, burst=values.get("burst", 2 * rate) or rate)


class Quotas(Protocol):
    """Token buckets by key."""

    async def take(self, key: str, rule: QuotaRule) -> float:
        """Takes a token; returns 0 when granted, else the seconds until one is available."""


class LocalQuotas:
    """Token buckets of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._clock = clock

    async def take(self, key: str, rule: QuotaRule) -> float:
        """See Quotas."""
        if rule.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.get(key, (rule.burst, now))
        tokens = min(rule.burst, tokens + (now - at) * rule.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / rule.rate


# KEYS[1] bucket; ARGV rate, burst, now (ms). Returns 0 when granted, else ms to wait.
_TAKE_LUA = """
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""


class RedisQuotas:
    """Token buckets shared by every mesh process (one Lua script per take, atomic in Redis)."""

    def __init__(self, redis: Any, prefix: str = "powerx:quota:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_TAKE_LUA)
        self._lock = asyncio.Lock()

    async def take(self, key: str, rule: QuotaRule) -> float:
        """See Quotas (the time is the Redis client's clock, the same on every process)."""
        if rule.rate <= 0:
            return 0.0
        wait_ms = await self._script(
            keys=[self._prefix + key], args=[rule.rate, rule.burst, int(time.time() * 1000)]
        )
        return int(wait_ms) / 1000
