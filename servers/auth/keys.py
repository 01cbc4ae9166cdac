"""API keys: the raw format, hashing, and the verified-key cache every mesh process keeps.

A raw key is `pxk_<key_id>_<secret>`: the id (16 hex digits) finds the row, the SHA-256 hash of the
whole key is compared with the stored one in constant time. The raw key is returned once, at creation,
and never stored or logged.

Verified keys are cached for a few seconds per process so a call costs no database read; a status
change drops the entry at once in the process that made it and, through the `auth.apikey` bus event,
in every other process (the cache's lifetime bounds the delay if an event is lost).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from servers.auth.store import AuthStore, KeyRow

PREFIX = "pxk_"
_RAW = re.compile(r"^pxk_([0-9a-f]{16})_([A-Za-z0-9_-]{32,64})$")
ACTIVE, DISABLED, REVOKED = 1, 2, 3
ALL_TENANTS = "*"
BUS_TOPIC = "auth.apikey"


def new_raw_key() -> tuple[str, str]:
    """A fresh `(key_id, raw_key)`."""
    key_id = secrets.token_hex(8)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_hash(raw: str) -> str:
    """The stored hash of a raw key."""
    return hashlib.sha256(raw.encode()).hexdigest()


def parse(raw: str) -> str | None:
    """The key id of a well-formed raw key, or None."""
    match = _RAW.match(raw)
    return match.group(1) if match else None


def looks_like_key(value: str) -> bool:
    """Whether a bearer credential is meant as an API key (rather than an agent token)."""
    return value.startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking a raw key: the key, or why it was refused."""

    key: KeyRow | None
    reason: str = ""  # API_KEY_INVALID, API_KEY_DISABLED, API_KEY_REVOKED, API_KEY_EXPIRED


class KeyCache:
    """Verified keys of one process, by id, for `ttl_s` seconds (bounded LRU)."""

    def __init__(
        self,
        store: AuthStore,
        *,
        ttl_s: float = 5.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.size = size
        self.clock = clock
        self.wall_ms = wall_ms
        self._rows: OrderedDict[str, tuple[float, KeyRow | None]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[KeyRow | None]] = {}

    def forget(self, key_id: str) -> None:
        """Drops a key (its status changed)."""
        self._rows.pop(key_id, None)

    async def row(self, key_id: str) -> KeyRow | None:
        """A key's stored row by id (cached; None when unknown)."""
        now = self.clock()
        hit = self._rows.get(key_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            self._rows.move_to_end(key_id)
            return hit[1]
        pending = self._loading.get(key_id)
        if pending is not None:  # one database read however many calls arrive at once
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRow | None] = asyncio.get_running_loop().create_future()
        self._loading[key_id] = future
        try:
            row = await self.store.key(key_id)
            future.set_result(row)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            self._loading.pop(key_id, None)
        self._rows[key_id] = (now, row)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
        return row

    async def verify(self, raw: str) -> Verdict:
        """Checks a raw key: well formed, known, same hash (constant time), active and not expired."""
        key_id = parse(raw)
        if key_id is None:
            return Verdict(None, "API_KEY_INVALID")
        row = await self.row(key_id)
        # Compared even when the row is missing, so timing does not tell known ids from unknown ones.
        stored = row.key_hash if row is not None else "0" * 64
        if not hmac.compare_digest(stored, key_hash(raw)) or row is None:
            return Verdict(None, "API_KEY_INVALID")
        if row.status == REVOKED:
            return Verdict(None, "API_KEY_REVOKED")
        if row.status != ACTIVE:
            return Verdict(None, "API_KEY_DISABLED")
        if row.expire_ms and row.expire_ms <= self.wall_ms():
            return Verdict(None, "API_KEY_EXPIRED")
        return Verdict(row)
