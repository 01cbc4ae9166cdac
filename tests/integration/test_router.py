"""RouterService through a real channel, with real providers built with the SDK.

In-process providers for most behaviour; separate provider processes where a process has to die
(`kill -9`) or restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import json_format, struct_pb2
from prometheus_client import generate_latest

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from powerx.router.v1 import route_pb2
from powerx.router.v1 import router_service_pb2 as rt
from powerx.router.v1 import router_service_pb2_grpc as rt_grpc
from router.audit import audit_t
from sdk import CallInfo, Provider, ProviderError
from servers.common.db import create_engine
from servers.mesh import Mesh, start_mesh
from tests.conftest import mesh_settings
from tests.integration.helpers import bad_fields, error_info

T1 = (("x-tenant-id", "t1"),)
T2 = (("x-tenant-id", "t2"),)
GRPC = common_pb2.TRANSPORT_GRPC
HTTP = common_pb2.TRANSPORT_HTTP
ROOT = Path(__file__).resolve().parents[2]


def args(**kw: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


def value(v: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(v)


@pytest.fixture
async def mesh(tmp_path: Path, database_url: str) -> AsyncIterator[Mesh]:
    """A mesh whose health monitor and ejection run on test time scales."""
    m = await start_mesh(
        mesh_settings(
            tmp_path,
            database_url,
            health_rules=(
                ("grpc", "interval_s=0.2,timeout_s=0.5"),
                ("http", "interval_s=0.2,timeout_s=0.5"),
            ),
            outlier="consecutive_failures=3,base_ejection_s=1",
            lease_sweep_interval_s=0.2,
        )
    )
    try:
        yield m
    finally:
        await m.stop(0)


@pytest.fixture
async def router(mesh: Mesh) -> AsyncIterator[rt_grpc.RouterServiceStub]:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield rt_grpc.RouterServiceStub(ch)


@pytest.fixture
async def registry(mesh: Mesh) -> AsyncIterator[rs_grpc.RegistryServiceStub]:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield rs_grpc.RegistryServiceStub(ch)


def echo_provider(mesh: Mesh, provider_id: str = "com.test.echo", **kw: Any) -> Provider:
    """An in-process provider with a few capabilities and a call log."""
    p = Provider(provider_id, version="1.0.0", tenant_id="t1", registry=mesh.address, lease_ttl_s=30, **kw)
    p.calls = Counter()  # type: ignore[attr-defined]

    @p.unary("echo.say", idempotent=True)
    async def say(a: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        p.calls["echo.say"] += 1  # type: ignore[attr-defined]
        return {
            "echo": a,
            "provider": provider_id,
            "request_id": call.request_id,
            "traceparent": call.traceparent,
            "tenant": call.tenant_id,
            "attempt": call.attempt,
            "time_remaining": call.time_remaining(),
        }

    @p.unary(
        "echo.typed",
        idempotent=True,
        input_schema={
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 1}},
            "required": ["n"],
        },
    )
    async def typed(a: dict[str, Any], call: CallInfo) -> int:
        p.calls["echo.typed"] += 1  # type: ignore[attr-defined]
        return int(a["n"]) * 2

    @p.unary("echo.secret", idempotent=True, scope="echo.read")
    async def secret(a: dict[str, Any], call: CallInfo) -> str:
        return "classified"

    @p.unary("echo.create")
    async def create(a: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        p.calls["echo.create"] += 1  # type: ignore[attr-defined]
        raise ProviderError(grpc.StatusCode.UNAVAILABLE, "backend hiccup")

    @p.unary("echo.sleep", idempotent=True)
    async def sleep(a: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        await asyncio.sleep(float(a.get("ms", 0)) / 1000)
        return {"time_remaining": call.time_remaining()}

    @p.unary("echo.reject", idempotent=True)
    async def reject(a: dict[str, Any], call: CallInfo) -> None:
        p.calls["echo.reject"] += 1  # type: ignore[attr-defined]
        raise ProviderError(grpc.StatusCode.INVALID_ARGUMENT, "no such lead source")

    @p.streaming("echo.count", idempotent=True)
    async def count(a: dict[str, Any], call: CallInfo) -> AsyncIterator[Any]:
        for i in range(int(a.get("n", 3))):
            yield {"i": i, "provider": provider_id}
        yield "done"

    return p


async def wait_until(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await predicate() if asyncio.iscoroutinefunction(predicate) else predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


# ---- invoke ------------------------------------------------------------------------------------------


async def test_invoke_reaches_the_provider_with_the_callers_context(
    mesh: Mesh, router: rt_grpc.RouterServiceStub, database_url: str
) -> None:
    async with echo_provider(mesh):
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        resp = await router.Invoke(
            rt.InvokeRequest(capability_id="echo.say", arguments=args(x=1)),
            metadata=(*T1, ("x-request-id", "req-42"), ("traceparent", trace), ("x-principal", "u-309")),
            timeout=5,
        )
        metrics = generate_latest(mesh.metrics).decode()
    out = value(resp.result)
    assert out["echo"] == {"x": 1.0}
    assert out["request_id"] == "req-42"
    assert out["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"  # same trace
    assert out["traceparent"].split("-")[2] != "b7ad6b7169203331"  # the router's own span as parent
    assert out["tenant"] == "t1"
    assert 0 < out["time_remaining"] <= 5.1  # the caller's deadline reached the provider
    assert resp.endpoint.transport == GRPC
    assert resp.version == "1.0.0"
    assert not resp.attempts  # no failed attempt
    # One audit record for the call, with who, what, where and how it ended.
    assert mesh.audit is not None
    await mesh.audit.flush()
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(audit_t))).all()
    finally:
        await engine.dispose()
    assert len(rows) == 1
    row = rows[0]
    assert (row.tenant_id, row.actor, row.capability_id, row.outcome, row.transport) == (
        "t1",
        "u-309",
        "echo.say",
        "OK",
        "grpc",
    )
    assert row.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert row.endpoint_id == resp.endpoint.endpoint_id
    assert 'router_latency_seconds_count{capability="echo.say"} 1.0' in metrics
    assert 'registry_capabilities_total{provider="com.test.echo"}' in metrics
    assert 'endpoint_health_state{provider="com.test.echo",state="healthy",transport="grpc"} 1.0' in metrics


async def test_streaming_through_the_router(mesh: Mesh, router: rt_grpc.RouterServiceStub) -> None:
    async with echo_provider(mesh):
        msgs = [
            m
            async for m in router.InvokeStream(
                rt.InvokeStreamRequest(capability_id="echo.count", arguments=args(n=4)),
                metadata=T1,
                timeout=5,
            )
        ]
    chunks = [m.chunk for m in msgs if m.HasField("chunk")]
    assert [c.sequence for c in chunks] == [1, 2, 3, 4, 5]
    assert [value(c.data)["i"] for c in chunks[:4]] == [0, 1, 2, 3]
    assert chunks[4].text == "done"
    assert msgs[-1].HasField("end")
    assert msgs[-1].end.reason == "COMPLETED"
    assert msgs[-1].end.last_sequence == 5
    assert msgs[-1].end.status.code == 0


async def test_a_streaming_capability_needs_invoke_stream_and_a_unary_one_streams_one_chunk(
    mesh: Mesh, router: rt_grpc.RouterServiceStub
) -> None:
    async with echo_provider(mesh):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.Invoke(rt.InvokeRequest(capability_id="echo.count"), metadata=T1)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == "STREAMING_MISMATCH"
        msgs = [
            m
            async for m in router.InvokeStream(
                rt.InvokeStreamRequest(capability_id="echo.say", arguments=args(a=1)), metadata=T1
            )
        ]
    assert [m.WhichOneof("kind") for m in msgs] == ["chunk", "end"]
    assert value(msgs[0].chunk.data)["echo"] == {"a": 1.0}
    assert msgs[1].end.reason == "COMPLETED"


async def test_deadline_ends_a_slow_call(mesh: Mesh, router: rt_grpc.RouterServiceStub) -> None:
    async with echo_provider(mesh):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.Invoke(
                rt.InvokeRequest(capability_id="echo.sleep", arguments=args(ms=3000)),
                metadata=T1,
                timeout=0.5,
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_provider_errors_about_the_request_pass_through_without_retry(
    mesh: Mesh, router: rt_grpc.RouterServiceStub
) -> None:
    a, b = echo_provider(mesh, "com.test.a"), echo_provider(mesh, "com.test.b")
    async with a, b:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.Invoke(rt.InvokeRequest(capability_id="echo.reject"), metadata=T1, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no such lead source" in (err.value.details() or "")
    assert error_info(err.value).reason == "PROVIDER_ERROR"
    assert a.calls["echo.reject"] + b.calls["echo.reject"] == 1  # type: ignore[attr-defined]


async def test_a_non_idempotent_call_is_retried_only_with_an_idempotency_key(
    mesh: Mesh, router: rt_grpc.RouterServiceStub
) -> None:
    a, b = echo_provider(mesh, "com.test.a"), echo_provider(mesh, "com.test.b")
    async with a, b:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.Invoke(rt.InvokeRequest(capability_id="echo.create"), metadata=T1, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(err.value).reason == "NOT_RETRIED_NON_IDEMPOTENT"
        assert a.calls["echo.create"] + b.calls["echo.create"] == 1  # type: ignore[attr-defined]

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.Invoke(
                rt.InvokeRequest(capability_id="echo.create", idempotency_key="lead-7"),
                metadata=T1,
                timeout=5,
            )
        assert error_info(err.value).reason == "ENDPOINTS_FAILED"
        assert error_info(err.value).metadata["attempts"] == "2"  # both endpoints, never the same twice
        assert a.calls["echo.create"] + b.calls["echo.create"] == 3  # type: ignore[attr-defined]
        assert a.calls["echo.create"] >= 1
        assert b.calls["echo.create"] >= 1


async def test_failover_from_grpc_to_http(
    mesh: Mesh, router: rt_grpc.RouterServiceStub, registry: rs_grpc.RegistryServiceStub
) -> None:
    # A provider whose gRPC endpoint is down (nothing listens) and whose HTTP endpoint works.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    async with echo_provider(mesh, grpc_port=None, http_port=0) as http_side:
        assert http_side.http_url
        await registry.AnnounceProvider(
            rs.AnnounceProviderRequest(
                provider=provider_pb2.Provider(provider_id="com.test.mixed", version="1.0.0"),
                capabilities=[
                    capability_pb2.Capability(capability_id="echo.say", version="1.0.0", idempotent=True)
                ],
                endpoints=[
                    endpoint_pb2.Endpoint(transport=GRPC, uri=f"grpc://127.0.0.1:{dead}"),
                    endpoint_pb2.Endpoint(transport=HTTP, uri=http_side.http_url),
                ],
            ),
            metadata=T1,
        )
        # Only the mixed provider, so the HTTP-only echo provider cannot mask the failover.
        await registry.WithdrawProvider(rs.WithdrawProviderRequest(provider_id="com.test.echo"), metadata=T1)
        resp = await router.Invoke(
            rt.InvokeRequest(
                capability_id="echo.say",
                arguments=args(hello="world"),
                prefer=route_pb2.RoutePreference(transports=[GRPC, HTTP]),
            ),
            metadata=T1,
            timeout=5,
        )
    assert resp.endpoint.transport == HTTP
    assert [a.transport for a in resp.attempts] == [GRPC]
    assert resp.attempts[0].code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert value(resp.result)["echo"] == {"hello": "world"}


# ---- load sharing, kill -9, restart --------------------------------------------------------------


class ProviderProcess:
    """The example echo provider as a separate process."""

    def __init__(self, mesh: Mesh, provider_id: str, *extra: str) -> None:
        self.mesh = mesh
        self.provider_id = provider_id
        self.extra = extra
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}

    async def start(self) -> ProviderProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "examples.echo_provider",
            "--registry",
            self.mesh.address,
            "--tenant",
            "t1",
            "--provider-id",
            self.provider_id,
            "--lease-ttl",
            "30",
            *self.extra,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen' / 'python'}"},
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        self.ready = json.loads(line)
        assert self.ready["ready"] is True
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


async def test_two_providers_share_load_and_a_killed_one_is_routed_around_then_readmitted(
    mesh: Mesh, router: rt_grpc.RouterServiceStub, registry: rs_grpc.RegistryServiceStub
) -> None:
    a = await ProviderProcess(mesh, "com.echo.a").start()
    b = await ProviderProcess(mesh, "com.echo.b").start()
    try:

        async def call() -> str:
            resp = await router.Invoke(
                rt.InvokeRequest(capability_id="echo.say", arguments=args(k="v")), metadata=T1, timeout=5
            )
            return str(value(resp.result)["provider"])

        # Both share the load (8 calls in flight at a time).
        seen: Counter[str] = Counter()
        for _ in range(20):
            seen.update(await asyncio.gather(*(call() for _ in range(8))))
        assert seen["com.echo.a"] >= 40, seen
        assert seen["com.echo.b"] >= 40, seen

        # kill -9 one of them in the middle of a stream of calls: every call still succeeds.
        results: Counter[str] = Counter()
        for i in range(60):
            if i == 10:
                a.kill9()
            results.update(await asyncio.gather(*(call() for _ in range(4))))
        assert sum(results.values()) == 240
        assert results["com.echo.b"] >= 200  # after the kill only b answers

        # The dead endpoint is marked by the health monitor, and stays visible: not silently dropped.
        async def a_unreachable() -> bool:
            eps = await registry.ListRuntimeEndpoints(
                rs.ListRuntimeEndpointsRequest(provider_id="com.echo.a"), metadata=T1
            )
            return [e.health for e in eps.endpoints] == [common_pb2.HEALTH_STATE_UNREACHABLE]

        await wait_until(a_unreachable, timeout_s=10)

        # Restarted (new process, new port): it re-announces, replaces its endpoint, and gets traffic again.
        await a.close()
        a = await ProviderProcess(mesh, "com.echo.a").start()
        eps = await registry.ListRuntimeEndpoints(
            rs.ListRuntimeEndpointsRequest(provider_id="com.echo.a"), metadata=T1
        )
        assert [(e.uri, e.health) for e in eps.endpoints] == [
            (a.ready["grpc"], common_pb2.HEALTH_STATE_HEALTHY)
        ]
        again: Counter[str] = Counter()
        for _ in range(15):
            again.update(await asyncio.gather(*(call() for _ in range(8))))
        assert again["com.echo.a"] >= 20, again
    finally:
        await a.close()
        await b.close()


async def test_health_monitor_marks_a_dead_endpoint_and_readmits_it_when_it_answers_again(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub
) -> None:
    p = echo_provider(mesh, grpc_port=0)
    await p.start()
    port = int(p.grpc_address.rsplit(":", 1)[1])  # type: ignore[union-attr]
    watch = registry.WatchRegistry(
        rs.WatchRegistryRequest(event_types=[event_type_health()]), metadata=T1, timeout=20
    )
    await p.stop(withdraw=False)  # the process "dies" without telling the registry
    states = []
    async for msg in watch:
        if msg.HasField("event"):
            states.append(msg.event.endpoint.health)
            if msg.event.endpoint.health == common_pb2.HEALTH_STATE_UNREACHABLE:
                break
    # 3 failed probes -> warning, 5 -> unreachable, each transition an event in the watch.
    assert states == [common_pb2.HEALTH_STATE_WARNING, common_pb2.HEALTH_STATE_UNREACHABLE]
    # It comes back on the same address: the monitor re-admits it on its own.
    revived = echo_provider(mesh, grpc_port=port)
    await revived.start()
    try:
        async for msg in watch:
            if msg.HasField("event") and msg.event.endpoint.health == common_pb2.HEALTH_STATE_HEALTHY:
                break
    finally:
        watch.cancel()
        await revived.stop()
    assert mesh.monitor is not None
    assert mesh.monitor.probes_sent >= 5


def event_type_health() -> int:
    from powerx.registry.v1 import event_pb2

    return event_pb2.REGISTRY_EVENT_TYPE_ENDPOINT_HEALTH_CHANGED


# ---- resolve and report --------------------------------------------------------------------------


async def test_resolve_explains_and_report_outcome_ejects(
    mesh: Mesh, router: rt_grpc.RouterServiceStub
) -> None:
    a, b = echo_provider(mesh, "com.test.a"), echo_provider(mesh, "com.test.b", http_port=0)
    async with a, b:
        resp = await router.ResolveEndpoint(
            rt.ResolveEndpointRequest(
                capability_id="echo.say", explain=True, only=route_pb2.RoutePreference(transports=[GRPC])
            ),
            metadata=T1,
        )
        assert resp.endpoint.transport == GRPC
        selected = [c for c in resp.candidates if c.selected]
        assert len(selected) == 1
        assert selected[0].endpoint.endpoint_id == resp.endpoint.endpoint_id
        scored = [c for c in resp.candidates if not c.dropped_reason]
        assert len(scored) == 2
        assert all(c.parts.health == 1.0 for c in scored)
        dropped = [c for c in resp.candidates if c.dropped_reason]
        assert [c.endpoint.transport for c in dropped] == [HTTP]
        assert "not in only" in dropped[0].dropped_reason

        # Direct calls that fail, reported back, eject the endpoint; resolve then avoids it.
        target = resp.endpoint.endpoint_id
        report = None
        for _ in range(3):
            report = await router.ReportOutcome(
                rt.ReportOutcomeRequest(
                    endpoint_id=target, capability_id="echo.say", code=14, route_token=resp.route_token
                ),
                metadata=T1,
            )
        assert report is not None
        assert report.ejected
        for _ in range(20):
            again = await router.ResolveEndpoint(
                rt.ResolveEndpointRequest(
                    capability_id="echo.say", only=route_pb2.RoutePreference(transports=[GRPC])
                ),
                metadata=T1,
            )
            assert again.endpoint.endpoint_id != target

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.ReportOutcome(
                rt.ReportOutcomeRequest(
                    endpoint_id=target, capability_id="echo.say", code=0, route_token=resp.route_token + "x"
                ),
                metadata=T1,
            )
        assert error_info(err.value).reason == "ROUTE_TOKEN_INVALID"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.ReportOutcome(
                rt.ReportOutcomeRequest(endpoint_id=target, capability_id="echo.say", code=0), metadata=T2
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # another tenant cannot touch its stats


async def test_a_single_endpoint_capability_cools_down_instead_of_failing_every_call(
    mesh: Mesh, router: rt_grpc.RouterServiceStub
) -> None:
    p = echo_provider(mesh)
    async with p:
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError):
                await router.Invoke(
                    rt.InvokeRequest(capability_id="echo.create", idempotency_key="k"), metadata=T1, timeout=5
                )
        calls = p.calls["echo.create"]  # type: ignore[attr-defined]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.Invoke(rt.InvokeRequest(capability_id="echo.say"), metadata=T1, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(err.value).reason == "ENDPOINTS_EJECTED"
        assert p.calls["echo.create"] == calls  # type: ignore[attr-defined]  # nothing sent while ejected
        # After the ejection (1 s here) it is tried again.
        await asyncio.sleep(1.1)
        resp = await router.Invoke(rt.InvokeRequest(capability_id="echo.say"), metadata=T1, timeout=5)
        assert value(resp.result)["provider"] == "com.test.echo"


# ---- bad input -----------------------------------------------------------------------------------


async def test_bad_requests_get_clear_errors_and_write_nothing(
    mesh: Mesh, router: rt_grpc.RouterServiceStub, database_url: str
) -> None:
    async with echo_provider(mesh) as p:

        async def fails(req: rt.InvokeRequest, md: Any = T1) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await router.Invoke(req, metadata=md, timeout=5)
            return err.value

        e = await fails(rt.InvokeRequest(capability_id="no.such.thing"))
        assert (e.code(), error_info(e).reason) == (grpc.StatusCode.NOT_FOUND, "CAPABILITY_NOT_FOUND")
        e = await fails(rt.InvokeRequest(capability_id="echo.say"), T2)  # another tenant's capability
        assert (e.code(), error_info(e).reason) == (grpc.StatusCode.NOT_FOUND, "CAPABILITY_NOT_FOUND")
        e = await fails(rt.InvokeRequest(capability_id="echo.say"), ())
        assert error_info(e).reason == "TENANT_REQUIRED"
        e = await fails(rt.InvokeRequest(capability_id="echo.secret"))
        assert (e.code(), error_info(e).reason) == (grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE")
        ok = await router.Invoke(
            rt.InvokeRequest(capability_id="echo.secret"), metadata=(*T1, ("x-scopes", "echo.*")), timeout=5
        )
        assert value(ok.result) == "classified"
        e = await fails(rt.InvokeRequest(capability_id="echo.typed", arguments=args(n="three")))
        assert (e.code(), error_info(e).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ARGUMENTS_INVALID")
        assert "arguments.n" in bad_fields(e)
        e = await fails(rt.InvokeRequest(capability_id="echo.typed", arguments=args()))
        assert error_info(e).reason == "ARGUMENTS_INVALID"
        ok = await router.Invoke(
            rt.InvokeRequest(capability_id="echo.typed", arguments=args(n=3)), metadata=T1
        )
        assert value(ok.result) == 6
        e = await fails(
            rt.InvokeRequest(capability_id="Echo Say", version="one", idempotency_key="has space")
        )
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert {"capability_id", "version", "idempotency_key"} <= set(bad_fields(e))
        e = await fails(
            rt.InvokeRequest(capability_id="echo.say", prefer=route_pb2.RoutePreference(transports=[99]))
        )
        assert "prefer.transports[0]" in bad_fields(e)
        e = await fails(rt.InvokeRequest(capability_id="echo.say", version="2"))
        assert (e.code(), error_info(e).reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "VERSION_UNAVAILABLE",
        )
        assert p.calls["echo.typed"] == 1  # type: ignore[attr-defined]  # only the valid call got through
    # Only the two routed calls were audited.
    assert mesh.audit is not None
    await mesh.audit.flush()
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            outcomes = sorted(r.capability_id for r in (await conn.execute(sa.select(audit_t))).all())
    finally:
        await engine.dispose()
    assert outcomes == ["echo.secret", "echo.typed"]


async def test_a_just_announced_capability_is_routable_at_once(
    mesh: Mesh, router: rt_grpc.RouterServiceStub
) -> None:
    # No waiting between announce and invoke: the route table catches up with this process's commits.
    for i in range(5):
        async with echo_provider(mesh, f"com.test.p{i}"):
            resp = await router.Invoke(rt.InvokeRequest(capability_id="echo.say"), metadata=T1, timeout=5)
            assert value(resp.result)["provider"] == f"com.test.p{i}"


async def test_a_capabilitys_routing_policy_sets_the_transport_order(
    mesh: Mesh, router: rt_grpc.RouterServiceStub
) -> None:
    p = Provider("com.test.ordered", version="1.0.0", tenant_id="t1", registry=mesh.address, http_port=0)

    @p.unary(
        "ordered.say",
        idempotent=True,
        routing=capability_pb2.RoutingPolicy(transport_order=[HTTP, GRPC], max_attempts=2),
    )
    async def say(a: dict[str, Any], call: CallInfo) -> str:
        return call.transport

    async with p:
        for _ in range(5):
            resp = await router.Invoke(rt.InvokeRequest(capability_id="ordered.say"), metadata=T1, timeout=5)
            assert resp.endpoint.transport == HTTP
            assert value(resp.result) == "http"
        # The caller's own preference wins over the capability's order.
        resp = await router.Invoke(
            rt.InvokeRequest(
                capability_id="ordered.say", prefer=route_pb2.RoutePreference(transports=[GRPC])
            ),
            metadata=T1,
            timeout=5,
        )
        assert resp.endpoint.transport == GRPC
