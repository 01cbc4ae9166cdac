"""The event bus: topics of opaque byte payloads, fanned out to every subscriber of every process.

Two implementations behind one interface: in-process (the embedded default) and Redis Streams (when
`POWERX_REDIS_URL` is set, so that several mesh processes see each other's events). Payloads are
serialized protobuf messages; the bus never looks inside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, Protocol

log = logging.getLogger("powerx.bus")

# How many undelivered events a slow subscriber may hold before the oldest are dropped. Consumers that
# must not miss anything (watch streams) read the durable log; the bus is their wake-up call.
SUBSCRIBER_BUFFER = 1024


class EventBus(Protocol):
    """Publish/subscribe over named topics."""

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publishes one event to every current subscriber of `topic`, in every process."""

    def subscribe(self, topic: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Subscribes to events published from now on; leaving the context unsubscribes."""

    async def close(self) -> None:
        """Stops background work and releases connections."""


class Subscription:
    """Events of one topic for one subscriber, in publish order."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.dropped = 0
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(SUBSCRIBER_BUFFER)

    def _offer(self, payload: bytes) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(payload)

    async def get(self, wait_s: float | None = None) -> bytes | None:
        """The next event, or None when `wait_s` seconds pass without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            yield await self._queue.get()


class InProcessBus:
    """Fans events out to subscribers of this process only."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Delivers to every subscriber of `topic` in this process."""
        self.deliver(topic, payload)

    def deliver(self, topic: str, payload: bytes) -> None:
        """Hands an event to local subscribers without awaiting anything."""
        for sub in tuple(self._subscribers.get(topic, ())):
            sub._offer(payload)

    def subscriber_count(self, topic: str) -> int:
        """How many local subscribers `topic` has."""
        return len(self._subscribers.get(topic, ()))

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """Subscribes for the duration of the context."""
        sub = Subscription(topic)
        self._subscribers[topic].add(sub)
        try:
            yield sub
        finally:
            self._subscribers[topic].discard(sub)
            if not self._subscribers[topic]:
                del self._subscribers[topic]

    async def close(self) -> None:
        """Nothing to release."""
        self._subscribers.clear()


class RedisStreamsBus:
    """Event bus on Redis Streams, shared by every mesh process.

    Publishes with XADD to one stream per topic; one reader task per topic and process reads it with
    XREAD BLOCK and fans out locally, so every process sees every event in the same order.
    """

    def __init__(self, url: str, *, prefix: str = "powerx:bus:", maxlen: int = 10_000) -> None:
        import redis.asyncio as redis  # noqa: PLC0415  (only needed when Redis is configured)

        self._redis: Any = redis.from_url(url)
        self._prefix = prefix
        self._maxlen = maxlen
        self._local = InProcessBus()
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._ready: dict[str, asyncio.Event] = {}

    async def ping(self) -> None:
        """Fails when Redis cannot be reached."""
        await self._redis.ping()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Appends the event to the topic's stream (capped at about `maxlen` entries)."""
        await self._redis.xadd(self._prefix + topic, {b"p": payload}, maxlen=self._maxlen, approximate=True)

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """Subscribes; events published after this returns are delivered."""
        async with self._local.subscribe(topic) as sub:
            if topic not in self._readers:
                self._ready[topic] = asyncio.Event()
                self._readers[topic] = asyncio.create_task(self._read(topic), name=f"bus-reader:{topic}")
            await self._ready[topic].wait()
            try:
                yield sub
            finally:
                if self._local.subscriber_count(topic) <= 1:
                    reader = self._readers.pop(topic, None)
                    self._ready.pop(topic, None)
                    if reader is not None:
                        reader.cancel()

    async def _read(self, topic: str) -> None:
        key = self._prefix + topic
        # Start from the stream's current end so that subscribers see only what comes after them.
        info = await self._redis.xinfo_stream(key) if await self._redis.exists(key) else None
        last_id: bytes | str = info["last-generated-id"] if info else "0-0"
        self._ready[topic].set()
        while True:
            try:
                batches = await self._redis.xread({key: last_id}, block=1000, count=256)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redis bus read failed; retrying", extra={"topic": topic})
                await asyncio.sleep(0.5)
                continue
            for _stream, entries in batches or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    self._local.deliver(topic, bytes(fields[b"p"]))

    async def close(self) -> None:
        """Stops the readers and closes the connection pool."""
        # Take the readers first: subscribers leaving while we wait below also remove their reader.
        tasks = list(self._readers.values())
        self._readers.clear()
        self._ready.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()


def make_bus(redis_url: str) -> EventBus:
    """The Redis Streams bus when a URL is given, the in-process bus otherwise."""
    return RedisStreamsBus(redis_url) if redis_url else InProcessBus()
