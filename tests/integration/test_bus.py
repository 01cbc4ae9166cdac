"""The event bus: in-process and Redis Streams, and a watch that spans two mesh processes' worth of state."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers.common.bus import InProcessBus, RedisStreamsBus
from servers.mesh import start_mesh
from tests.conftest import announce_request, mesh_settings, tenant


async def test_in_process_bus_fans_out_in_order_and_unsubscribes() -> None:
    bus = InProcessBus()
    async with bus.subscribe("t") as a, bus.subscribe("t") as b:
        for i in range(3):
            await bus.publish("t", str(i).encode())
        assert [await a.get(1) for _ in range(3)] == [b"0", b"1", b"2"]
        assert [await b.get(1) for _ in range(3)] == [b"0", b"1", b"2"]
        assert await a.get(0.05) is None
    assert bus.subscriber_count("t") == 0


@pytest.mark.redis
async def test_redis_bus_delivers_across_instances_in_order(redis_url: str) -> None:
    topic = f"test-{uuid.uuid4().hex}"
    publisher, subscriber = RedisStreamsBus(redis_url), RedisStreamsBus(redis_url)
    try:
        await publisher.publish(topic, b"before")  # published before subscribing: not delivered
        async with subscriber.subscribe(topic) as sub, subscriber.subscribe(topic) as sub2:
            for i in range(50):
                await publisher.publish(topic, f"m{i}".encode())
            got = [await sub.get(5) for _ in range(50)]
            assert got == [f"m{i}".encode() for i in range(50)]
            assert await sub2.get(5) == b"m0"
            assert await sub.get(0.1) is None
    finally:
        await publisher.close()
        await subscriber.close()


@pytest.mark.redis
@pytest.mark.postgres
async def test_watch_on_one_mesh_sees_an_announce_made_through_another(
    tmp_path: Path, pg_database_url: str, redis_url: str
) -> None:
    database_url = pg_database_url
    # A long poll interval proves the Redis wake-up, not polling, delivers the change.
    a = await start_mesh(mesh_settings(tmp_path / "a", database_url, redis_url, watch_poll_interval_s=30))
    b = await start_mesh(mesh_settings(tmp_path / "b", database_url, redis_url, watch_poll_interval_s=30))
    try:
        async with grpc.aio.insecure_channel(a.address) as ca, grpc.aio.insecure_channel(b.address) as cb:
            watch = rs_grpc.RegistryServiceStub(ca).WatchRegistry(
                rs.WatchRegistryRequest(), metadata=tenant()
            )
            assert (await watch.read()).HasField("caught_up")
            announced = await rs_grpc.RegistryServiceStub(cb).AnnounceProvider(
                announce_request(), metadata=tenant()
            )
            seen = [await asyncio.wait_for(watch.read(), 5) for _ in range(3)]
            assert [m.event.revision for m in seen] == [1, 2, 3]
            assert seen[-1].event.revision == announced.revision
            watch.cancel()
    finally:
        try:
            await a.stop(0)
        finally:
            await b.stop(0)


@pytest.mark.redis
async def test_redis_bus_closes_cleanly_while_subscribers_are_leaving(redis_url: str) -> None:
    bus = RedisStreamsBus(redis_url)
    entered = asyncio.Semaphore(0)

    async def hold(topic: str) -> None:
        async with bus.subscribe(topic) as sub:
            entered.release()
            await sub.get()

    tasks = [asyncio.create_task(hold(f"leave-{uuid.uuid4().hex}")) for _ in range(4)]
    for _ in tasks:
        await asyncio.wait_for(entered.acquire(), 5)
    for task in tasks:
        task.cancel()  # their unsubscribes run while close() awaits the readers
    await bus.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
