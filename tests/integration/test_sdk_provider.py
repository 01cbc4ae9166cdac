"""The provider SDK against a real mesh: announce, gRPC and HTTP calls, leases, withdraw, the example."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import provider_pb2 as registry_provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from sdk import AnnounceError, CallInfo, Provider, ProviderError
from sdk._contract import SERVICE_NAME, provider_pb2, provider_pb2_grpc
from servers.mesh import Mesh, start_mesh
from tests.conftest import mesh_settings, tenant
from tests.integration.helpers import error_info

ROOT = Path(__file__).resolve().parents[2]
TENANT = "t1"
PID = "com.acme.crm"
SECRET = "db password is hunter2"
ACTIVE = registry_provider_pb2.PROVIDER_STATE_ACTIVE
EXPIRED = registry_provider_pb2.PROVIDER_STATE_EXPIRED
WITHDRAWN = registry_provider_pb2.PROVIDER_STATE_WITHDRAWN
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NDJSON = "application/x-ndjson"


def make_provider(registry: str, provider_id: str = PID, **kw: Any) -> Provider:
    """A provider with one capability of every kind, serving gRPC and HTTP."""
    options: dict[str, Any] = {"http_port": 0, "lease_ttl_s": 30.0, "region": "eu-1", **kw}
    provider = Provider(provider_id, version="1.2.0", tenant_id=TENANT, registry=registry, **options)

    @provider.unary(
        "crm.lead.create",
        version="1.0.0",
        scope="crm.lead.write",
        input_schema={"type": "object", "required": ["email"]},
        description="Creates a lead",
    )
    async def create(args: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        return {
            "args": args,
            "transport": call.transport,
            "tenant": call.tenant_id,
            "actor": call.actor_id,
            "request_id": call.request_id,
            "trace_id": call.trace_id,
            "traceparent": call.traceparent,
            "key": call.idempotency_key,
            "attempt": call.attempt,
            "version": call.version,
            "time_remaining": call.time_remaining(),
            "custom": call.metadata.get("x-custom", ""),
        }

    @provider.unary("crm.lead.get", idempotent=True)
    async def get(args: dict[str, Any], call: CallInfo) -> Any:
        if args.get("deny"):
            raise ProviderError(grpc.StatusCode.PERMISSION_DENIED, "not your lead", reason="LEAD_FORBIDDEN")
        if args.get("boom"):
            raise RuntimeError(SECRET)
        await asyncio.sleep(float(args.get("sleep_s", 0)))
        return args.get("value")

    @provider.streaming("text.generate", idempotent=True)
    async def generate(args: dict[str, Any], call: CallInfo) -> AsyncIterator[Any]:
        yield "hello"
        yield b"\x00\x01"
        yield {"n": 1}
        if args.get("fail"):
            raise ProviderError(code_pb2.RESOURCE_EXHAUSTED, "quota used up")
        if args.get("boom"):
            raise RuntimeError(SECRET)

    return provider


@pytest.fixture
async def wire_mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    """A mesh on SQLite only, for tests of the provider's own wire formats (the database plays no part)."""
    m = await start_mesh(mesh_settings(tmp_path))
    try:
        yield m
    finally:
        await m.stop(0)


@pytest.fixture
async def provider(wire_mesh: Mesh) -> AsyncIterator[Provider]:
    """A started provider (gRPC and HTTP) announced to a mesh."""
    p = make_provider(wire_mesh.address)
    await p.start()
    try:
        yield p
    finally:
        await p.stop(withdraw=False)


@pytest.fixture
async def stub(provider: Provider) -> AsyncIterator[Any]:
    """A ProviderService stub over a real channel to the provider."""
    assert provider.grpc_address is not None
    async with grpc.aio.insecure_channel(provider.grpc_address) as ch:
        yield provider_pb2_grpc.ProviderServiceStub(ch)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def struct(**fields: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(fields)
    return s


async def collect(call: AsyncIterator[Any], into: list[Any]) -> None:
    """Appends every message of a stream to `into`, so a test keeps what came before an error."""
    async for message in call:
        into.append(message)


def plain(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value)


async def get_provider(
    registry: rs_grpc.RegistryServiceStub, provider_id: str = PID
) -> rs.GetProviderResponse:
    return await registry.GetProvider(rs.GetProviderRequest(provider_id=provider_id), metadata=tenant(TENANT))


async def wait_for_state(
    registry: rs_grpc.RegistryServiceStub, state: int, timeout_s: float, provider_id: str = PID
) -> rs.GetProviderResponse:
    """Polls GetProvider until the provider is in `state` (fails after `timeout_s`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        got = await get_provider(registry, provider_id)
        if got.provider.state == state or loop.time() > deadline:
            assert got.provider.state == state, registry_provider_pb2.ProviderState.Name(got.provider.state)
            return got
        await asyncio.sleep(0.1)


# Announce.


async def test_announce_shows_capabilities_and_endpoints(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub
) -> None:
    async with make_provider(mesh.address) as provider:
        got = await get_provider(registry)
        announced = provider.endpoints
        grpc_address, http_url = provider.grpc_address, provider.http_url
    assert got.provider.state == ACTIVE
    assert got.provider.version == "1.2.0"
    assert got.provider.lease_ttl.ToTimedelta().total_seconds() == 30
    caps = {(c.capability_id, c.version): c for c in got.capabilities}
    assert set(caps) == {("crm.lead.create", "1.0.0"), ("crm.lead.get", "1.2.0"), ("text.generate", "1.2.0")}
    create = caps["crm.lead.create", "1.0.0"]
    assert create.security.scope == "crm.lead.write"
    assert not create.idempotent
    assert not create.streaming
    assert create.description == "Creates a lead"
    assert json_format.MessageToDict(create.input_schema) == {"type": "object", "required": ["email"]}
    assert caps["crm.lead.get", "1.2.0"].idempotent
    assert caps["text.generate", "1.2.0"].streaming

    assert grpc_address is not None
    assert http_url is not None
    assert http_url.endswith("/invoke")
    endpoints = {e.transport: e for e in got.endpoints}
    assert endpoints[common_pb2.TRANSPORT_GRPC].uri == f"grpc://{grpc_address}"
    assert endpoints[common_pb2.TRANSPORT_HTTP].uri == http_url
    assert {e.region for e in got.endpoints} == {"eu-1"}
    assert [e.uri for e in announced] == [f"grpc://{grpc_address}", http_url]
    for cap in got.capabilities:
        assert {e.transport for e in cap.endpoints} == {common_pb2.TRANSPORT_GRPC, common_pb2.TRANSPORT_HTTP}


async def test_grpc_only_provider_announces_one_endpoint(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub
) -> None:
    async with make_provider(mesh.address, "com.acme.grpconly", http_port=None) as p:
        assert p.http_url is None
        got = await get_provider(registry, "com.acme.grpconly")
        assert [(e.transport, e.uri) for e in got.endpoints] == [
            (common_pb2.TRANSPORT_GRPC, f"grpc://{p.grpc_address}")
        ]


async def test_start_raises_when_the_registry_refuses_the_announce(mesh: Mesh) -> None:
    p = make_provider(mesh.address, labels={"Not A Label": "x"}, announce_timeout_s=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AnnounceError) as err:
        await p.start()
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert loop.time() - started < 2, "a refusal is not retried"
    assert not p.running
    assert p.grpc_address is None


async def test_a_taken_port_fails_start_before_anything_is_announced(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub
) -> None:
    async with make_provider(mesh.address, http_port=None) as first:
        assert first.grpc_address is not None
        port = int(first.grpc_address.rsplit(":", 1)[1])
        second = make_provider(mesh.address, "com.acme.second", grpc_port=port, http_port=None)
        with pytest.raises(OSError):
            await second.start()
        assert not second.running
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await get_provider(registry, "com.acme.second")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_start_gives_up_after_the_announce_timeout_and_releases_ports(tmp_path: Path) -> None:
    registry_port, grpc_port, http_port = _free_port(), _free_port(), _free_port()
    p = make_provider(
        f"127.0.0.1:{registry_port}", grpc_port=grpc_port, http_port=http_port, announce_timeout_s=0.6
    )
    with pytest.raises(AnnounceError) as err:
        await p.start()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert p.grpc_address is None
    for port in (grpc_port, http_port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # fails while the provider still holds the port


async def test_start_retries_until_the_registry_comes_up(tmp_path: Path, database_url: str) -> None:
    port = _free_port()
    p = make_provider(f"127.0.0.1:{port}", announce_timeout_s=10)
    starting = asyncio.create_task(p.start())
    await asyncio.sleep(0.5)
    assert not starting.done(), "start() waits for the first successful announce"
    settings = dataclasses.replace(mesh_settings(tmp_path, database_url), grpc_address=f"127.0.0.1:{port}")
    mesh = await start_mesh(settings)
    try:
        await asyncio.wait_for(starting, 8)
        async with grpc.aio.insecure_channel(mesh.address) as ch:
            got = await get_provider(rs_grpc.RegistryServiceStub(ch))
        assert got.provider.state == ACTIVE
        assert len(got.capabilities) == 3
        await p.stop()
    finally:
        await mesh.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# gRPC.


async def test_grpc_invoke_passes_arguments_and_call_context(stub: Any) -> None:
    request = provider_pb2.InvokeRequest(
        capability_id="crm.lead.create",
        version="1.0.0",
        arguments=struct(email="a@b.c", n=3, ratio=0.5, tags=["x"]),
        context=provider_pb2.CallContext(actor_id="u-7", idempotency_key="k-1", attempt=2),
    )
    metadata = (
        ("x-tenant-id", TENANT),
        ("x-request-id", "req-1"),
        ("traceparent", TRACEPARENT),
        ("x-custom", "yes"),
    )
    reply = await stub.Invoke(request, metadata=metadata, timeout=5)
    result = plain(reply.result)
    assert result["args"] == {"email": "a@b.c", "n": 3, "ratio": 0.5, "tags": ["x"]}
    assert result["transport"] == "grpc"
    assert result["tenant"] == TENANT
    assert result["actor"] == "u-7"
    assert result["request_id"] == "req-1"
    assert result["traceparent"] == TRACEPARENT
    assert result["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert result["key"] == "k-1"
    assert result["attempt"] == 2
    assert result["version"] == "1.0.0"
    assert result["custom"] == "yes"
    assert 3 < result["time_remaining"] <= 5.05  # a relative timeout on the wire: allow clock slack


async def test_grpc_context_wins_over_metadata_and_missing_deadline_is_none(stub: Any) -> None:
    request = provider_pb2.InvokeRequest(
        capability_id="crm.lead.create",
        context=provider_pb2.CallContext(tenant_id="t-ctx", request_id="req-ctx"),
    )
    reply = await stub.Invoke(request, metadata=(("x-tenant-id", "t-md"), ("x-request-id", "req-md")))
    result = plain(reply.result)
    assert (result["tenant"], result["request_id"]) == ("t-ctx", "req-ctx")
    assert result["time_remaining"] is None
    assert result["args"] == {}
    assert result["attempt"] == 1


async def test_grpc_invoke_stream_sends_text_raw_and_data_chunks(stub: Any) -> None:
    call = stub.InvokeStream(provider_pb2.InvokeStreamRequest(capability_id="text.generate"), timeout=5)
    chunks = [c async for c in call]
    assert [c.WhichOneof("content") for c in chunks] == ["text", "raw", "data"]
    assert chunks[0].text == "hello"
    assert chunks[1].raw == b"\x00\x01"
    assert plain(chunks[2].data) == {"n": 1}


async def test_grpc_provider_error_keeps_its_code_and_reason(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Invoke(
            provider_pb2.InvokeRequest(capability_id="crm.lead.get", arguments=struct(deny=True))
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == "not your lead"
    assert error_info(err.value).reason == "LEAD_FORBIDDEN"

    call = stub.InvokeStream(
        provider_pb2.InvokeStreamRequest(capability_id="text.generate", arguments=struct(fail=True))
    )
    received: list[Any] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(call, received)
    assert len(received) == 3, "chunks before the error are delivered"
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == "quota used up"


async def test_grpc_unknown_capability_and_wrong_call_kind(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Invoke(provider_pb2.InvokeRequest(capability_id="crm.nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err.value).reason == "CAPABILITY_NOT_FOUND"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Invoke(provider_pb2.InvokeRequest(capability_id="crm.lead.create", version="9.9.9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Invoke(provider_pb2.InvokeRequest(capability_id="text.generate"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.InvokeStream(provider_pb2.InvokeStreamRequest(capability_id="crm.lead.get")):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_grpc_unexpected_exception_is_internal_without_its_text(
    stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="powerx.sdk")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Invoke(
            provider_pb2.InvokeRequest(capability_id="crm.lead.get", arguments=struct(boom=True)),
            metadata=(("x-request-id", "req-boom"),),
        )
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (err.value.details() or "")
    assert "Traceback" not in (err.value.details() or "")
    assert error_info(err.value).metadata["request_id"] == "req-boom"
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records), "the exception is logged"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.InvokeStream(
            provider_pb2.InvokeStreamRequest(capability_id="text.generate", arguments=struct(boom=True))
        ):
            pass
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (err.value.details() or "")


async def test_grpc_reflection_lists_the_provider_service(provider: Provider) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(provider.grpc_address or "") as ch:
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for s in (await call.read()).list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_grpc_non_json_result_is_internal(wire_mesh: Mesh) -> None:
    p = Provider("com.acme.bytes", version="1.0.0", tenant_id=TENANT, registry=wire_mesh.address)

    @p.unary("bad.result")
    async def bad(args: dict[str, Any], call: CallInfo) -> Any:
        return {1, 2}

    async with p, grpc.aio.insecure_channel(p.grpc_address or "") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await provider_pb2_grpc.ProviderServiceStub(ch).Invoke(
                provider_pb2.InvokeRequest(capability_id="bad.result")
            )
    assert err.value.code() == grpc.StatusCode.INTERNAL


# HTTP wire format.


async def test_http_unary_accepts_snake_and_camel_case_and_reads_headers(
    provider: Provider, http: httpx.AsyncClient
) -> None:
    assert provider.http_url is not None
    headers = {
        "x-request-id": "req-h",
        "traceparent": TRACEPARENT,
        "x-tenant-id": TENANT,
        "x-powerx-capability": "crm.lead.create",
        "idempotency-key": "idem-1",
        "x-powerx-timeout-ms": "4000",
        "accept": "application/json",
    }
    body = {
        "capabilityId": "crm.lead.create",
        "arguments": {"email": "a@b.c", "n": 2},
        "context": {"attempt": 3},
    }
    r = await http.post(provider.http_url, json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    result = r.json()["result"]
    assert result["args"] == {"email": "a@b.c", "n": 2}
    assert '"n":2' in r.text, "integral numbers travel as integers"
    assert result["transport"] == "http"
    assert (result["tenant"], result["request_id"], result["key"]) == (TENANT, "req-h", "idem-1")
    assert result["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert result["attempt"] == 3
    assert 2 < result["time_remaining"] <= 4

    snake = {"capability_id": "crm.lead.get", "arguments": {"value": [1, "two", None]}}
    r = await http.post(provider.http_url, json=snake)
    assert r.status_code == 200, r.text
    assert r.json() == {"result": [1, "two", None]}

    # The capability can come from the header alone.
    r = await http.post(provider.http_url, json={"arguments": {"email": "x"}}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["args"] == {"email": "x"}


async def test_http_ndjson_stream(provider: Provider, http: httpx.AsyncClient) -> None:
    assert provider.http_url is not None
    headers = {"accept": "application/x-ndjson, text/event-stream"}
    async with http.stream(
        "POST", provider.http_url, json={"capability_id": "text.generate"}, headers=headers
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(NDJSON)
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert lines == [{"text": "hello"}, {"raw": "AAE="}, {"data": {"n": 1}}]


async def test_http_stream_error_after_start_is_the_last_line(
    provider: Provider, http: httpx.AsyncClient
) -> None:
    assert provider.http_url is not None
    body = {"capability_id": "text.generate", "arguments": {"fail": True}}
    r = await http.post(provider.http_url, json=body, headers={"accept": NDJSON})
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert len(lines) == 4
    assert lines[-1]["error"]["code"] == code_pb2.RESOURCE_EXHAUSTED
    assert lines[-1]["error"]["message"] == "quota used up"

    body = {"capability_id": "text.generate", "arguments": {"boom": True}}
    r = await http.post(provider.http_url, json=body, headers={"accept": NDJSON})
    last = json.loads(r.text.splitlines()[-1])
    assert last["error"]["code"] == code_pb2.INTERNAL
    assert "hunter2" not in r.text


async def test_http_sse_stream(provider: Provider, http: httpx.AsyncClient) -> None:
    assert provider.http_url is not None
    r = await http.post(
        provider.http_url, json={"capability_id": "text.generate"}, headers={"accept": "text/event-stream"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert [json.loads(e.removeprefix("data: ")) for e in events] == [
        {"text": "hello"},
        {"raw": "AAE="},
        {"data": {"n": 1}},
    ]


@pytest.mark.parametrize(
    ("body", "accept", "status", "code"),
    [
        ({"capability_id": "crm.nope"}, "application/json", 404, code_pb2.NOT_FOUND),
        ({"capability_id": "crm.nope"}, NDJSON, 404, code_pb2.NOT_FOUND),
        ({"capability_id": "text.generate"}, "application/json", 400, code_pb2.FAILED_PRECONDITION),
        ({"capability_id": "crm.lead.get"}, NDJSON, 400, code_pb2.FAILED_PRECONDITION),
        (
            {"capability_id": "crm.lead.get", "arguments": [1]},
            "application/json",
            400,
            code_pb2.INVALID_ARGUMENT,
        ),
        ({"arguments": {}}, "application/json", 400, code_pb2.INVALID_ARGUMENT),
        ({"capability_id": "crm.lead.get", "arguments": {"deny": True}}, "", 403, code_pb2.PERMISSION_DENIED),
        ({"capability_id": "crm.lead.get", "arguments": {"boom": True}}, "", 500, code_pb2.INTERNAL),
    ],
)
async def test_http_errors_are_status_bodies_with_gateway_http_codes(
    provider: Provider, http: httpx.AsyncClient, body: dict[str, Any], accept: str, status: int, code: int
) -> None:
    assert provider.http_url is not None
    r = await http.post(provider.http_url, json=body, headers={"accept": accept} if accept else {})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    assert payload["code"] == code
    assert payload["message"]
    assert "hunter2" not in r.text


async def test_http_malformed_json_and_deadline(provider: Provider, http: httpx.AsyncClient) -> None:
    assert provider.http_url is not None
    r = await http.post(provider.http_url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["code"] == code_pb2.INVALID_ARGUMENT

    body = {"capability_id": "crm.lead.get", "arguments": {"sleep_s": 2}}
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await http.post(provider.http_url, json=body, headers={"x-powerx-timeout-ms": "150"})
    assert r.status_code == 504
    assert r.json()["code"] == code_pb2.DEADLINE_EXCEEDED
    assert loop.time() - started < 1.5


async def test_http_health(provider: Provider, http: httpx.AsyncClient) -> None:
    r = await http.get(f"{provider.http_url}/health")
    assert r.status_code == 200
    assert r.json() == {"status": "SERVING"}


# Lifecycle and leases.


async def test_stop_reports_not_serving_drains_calls_and_withdraws(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub, http: httpx.AsyncClient
) -> None:
    p = make_provider(mesh.address)
    await p.start()
    assert p.grpc_address is not None
    assert p.http_url is not None
    health_url = f"{p.http_url}/health"
    async with grpc.aio.insecure_channel(p.grpc_address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        invoke = provider_pb2_grpc.ProviderServiceStub(ch).Invoke
        slow_request = provider_pb2.InvokeRequest(
            capability_id="crm.lead.get", arguments=struct(sleep_s=1.5, value="ok")
        )

        async def slow_call() -> Any:
            return await invoke(slow_request)

        slow = asyncio.create_task(slow_call())
        await asyncio.sleep(0.2)
        stopping = asyncio.create_task(p.stop(withdraw=True))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        r = await http.get(health_url)
        assert r.status_code == 503
        assert r.json() == {"status": "NOT_SERVING"}
        await wait_for_state(registry, WITHDRAWN, 1.0)
        assert not slow.done(), "the provider withdraws first, then drains the calls in flight"
        reply = await slow
        assert plain(reply.result) == "ok", "a call in flight finishes during the graceful stop"
        await stopping
    got = await get_provider(registry)
    assert got.provider.state == WITHDRAWN
    assert not got.capabilities
    assert not got.endpoints
    assert not p.running
    with pytest.raises(httpx.TransportError):
        await http.get(health_url)


async def test_lease_renewal_keeps_the_provider_active_past_its_ttl(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub
) -> None:
    async with make_provider(mesh.address, lease_ttl_s=1.0):
        first = (await get_provider(registry)).provider.lease_expire_time.ToDatetime()
        await asyncio.sleep(2.6)  # more than twice the TTL, with the sweeper running every second
        got = await get_provider(registry)
        assert got.provider.state == ACTIVE
        assert got.provider.lease_expire_time.ToDatetime() > first
        assert {e.health for e in got.endpoints} == {common_pb2.HEALTH_STATE_HEALTHY}


async def test_without_renewal_the_lease_expires(mesh: Mesh, registry: rs_grpc.RegistryServiceStub) -> None:
    p = make_provider(mesh.address, lease_ttl_s=1.0)
    await p.start()
    await p.stop(withdraw=False)
    assert (await get_provider(registry)).provider.state == ACTIVE, "stop(withdraw=False) leaves the announce"
    got = await wait_for_state(registry, EXPIRED, 4)
    assert {e.health for e in got.endpoints} == {common_pb2.HEALTH_STATE_STALE}


async def test_renewal_announces_again_after_the_registry_forgot_the_provider(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub
) -> None:
    async with make_provider(mesh.address, lease_ttl_s=1.5) as p:
        await registry.WithdrawProvider(rs.WithdrawProviderRequest(provider_id=PID), metadata=tenant(TENANT))
        assert (await get_provider(registry)).provider.state == WITHDRAWN
        got = await wait_for_state(registry, ACTIVE, 3)
        assert len(got.capabilities) == 3
        assert sorted(e.uri for e in got.endpoints) == sorted(e.uri for e in p.endpoints)


async def test_context_manager_withdraws_and_start_twice_is_refused(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub
) -> None:
    p = make_provider(mesh.address)
    async with p:
        with pytest.raises(RuntimeError):
            await p.start()
        with pytest.raises(RuntimeError):

            @p.unary("late.capability")
            async def late(args: dict[str, Any], call: CallInfo) -> None:
                return None

    assert (await get_provider(registry)).provider.state == WITHDRAWN


def test_bad_declarations_are_refused_early() -> None:
    with pytest.raises(ValueError):
        Provider("Com.Acme", version="1.0.0", tenant_id=TENANT, registry="x:1")
    with pytest.raises(ValueError):
        Provider(PID, version="1", tenant_id=TENANT, registry="x:1")
    with pytest.raises(ValueError):
        Provider(PID, version="1.0.0", tenant_id="bad tenant", registry="x:1")
    with pytest.raises(ValueError):
        Provider(PID, version="1.0.0", tenant_id=TENANT, registry="x:1", grpc_port=None)
    p = Provider(PID, version="1.0.0", tenant_id=TENANT, registry="x:1")
    with pytest.raises(TypeError):
        p.unary("a.b")(lambda args, call: None)  # type: ignore[type-var]
    with pytest.raises(ValueError):

        @p.unary("Bad Id")
        async def bad(args: dict[str, Any], call: CallInfo) -> None:
            return None

    @p.unary("a.b")
    async def ok(args: dict[str, Any], call: CallInfo) -> None:
        return None

    with pytest.raises(ValueError):
        p.unary("a.b")(ok)


# The example provider process.


async def _start_example(mesh: Mesh, *args: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.echo_provider",
        "--registry",
        mesh.address,
        "--tenant",
        TENANT,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
    except TimeoutError:
        proc.kill()
        raise
    if not line:
        assert proc.stderr is not None
        raise AssertionError((await proc.stderr.read()).decode())
    return proc, json.loads(line)


async def _sigterm(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        raise


async def test_echo_provider_process_serves_and_withdraws_on_sigterm(
    mesh: Mesh, registry: rs_grpc.RegistryServiceStub, http: httpx.AsyncClient
) -> None:
    pid = "com.example.echo"
    proc, ready = await _start_example(mesh, "--provider-id", pid, "--http-port", "0", "--lease-ttl", "5")
    try:
        assert ready["ready"] is True
        assert ready["pid"] == proc.pid
        assert ready["grpc"].startswith("grpc://127.0.0.1:")
        assert ready["http"].startswith("http://127.0.0.1:")
        assert ready["http"].endswith("/invoke")
        assert proc.stdout is not None

        got = await get_provider(registry, pid)
        assert got.provider.state == ACTIVE
        caps = {c.capability_id: c for c in got.capabilities}
        assert set(caps) == {"echo.say", "echo.count", "echo.create", "echo.fail", "echo.sleep", "echo.text"}
        assert caps["echo.count"].streaming
        assert caps["echo.text"].streaming
        assert caps["echo.say"].idempotent
        assert not caps["echo.create"].idempotent
        assert not caps["echo.say"].security.scope
        assert sorted(e.uri for e in got.endpoints) == sorted([ready["grpc"], ready["http"]])

        async with grpc.aio.insecure_channel(ready["grpc"].removeprefix("grpc://")) as ch:
            stub = provider_pb2_grpc.ProviderServiceStub(ch)
            reply = await stub.Invoke(
                provider_pb2.InvokeRequest(
                    capability_id="echo.say",
                    arguments=struct(hello="world"),
                    context=provider_pb2.CallContext(tenant_id=TENANT, request_id="r-1", attempt=1),
                ),
                metadata=(("traceparent", TRACEPARENT),),
            )
            say = plain(reply.result)
            assert say["echo"] == {"hello": "world"}
            assert (say["provider"], say["pid"], say["transport"]) == (pid, proc.pid, "grpc")
            assert (say["request_id"], say["traceparent"], say["tenant"], say["attempt"]) == (
                "r-1",
                TRACEPARENT,
                TENANT,
                1,
            )
            chunks = [
                c
                async for c in stub.InvokeStream(
                    provider_pb2.InvokeStreamRequest(capability_id="echo.count", arguments=struct(n=3))
                )
            ]
            assert [plain(c.data) for c in chunks[:3]] == [{"i": i, "provider": pid} for i in range(3)]
            assert chunks[3].text == "done"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Invoke(
                    provider_pb2.InvokeRequest(
                        capability_id="echo.fail", arguments=struct(code=code_pb2.UNAVAILABLE, message="down")
                    )
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == "down"
            slept = await stub.Invoke(
                provider_pb2.InvokeRequest(capability_id="echo.sleep", arguments=struct(ms=50)), timeout=5
            )
            assert plain(slept.result)["slept_ms"] == 50
            assert 0 < plain(slept.result)["time_remaining"] < 5

        key = {"idempotency-key": "idem-9"}
        counts = []
        for _ in range(2):
            r = await http.post(ready["http"], json={"capability_id": "echo.create"}, headers=key)
            assert r.status_code == 200, r.text
            counts.append(r.json()["result"])
        assert [c["count"] for c in counts] == [1, 2]
        assert counts[0] == {"created": True, "provider": pid, "key": "idem-9", "count": 1}
        r = await http.post(ready["http"], json={"capability_id": "echo.say", "arguments": {"a": 1}})
        assert r.json()["result"]["transport"] == "http"
        r = await http.post(
            ready["http"],
            json={"capability_id": "echo.text", "arguments": {"text": "a b  c"}},
            headers={"accept": NDJSON},
        )
        assert [json.loads(line) for line in r.text.splitlines()] == [{"text": w} for w in "abc"]
        r = await http.post(ready["http"], json={"capability_id": "echo.fail", "arguments": {"code": 5}})
        assert (r.status_code, r.json()["code"]) == (404, 5)
    finally:
        code = await _sigterm(proc)
    assert code == 0
    assert await proc.stdout.read() == b"", "the ready line is the only output"
    got = await get_provider(registry, pid)
    assert got.provider.state == WITHDRAWN


async def test_echo_provider_http_only_with_scope(mesh: Mesh, registry: rs_grpc.RegistryServiceStub) -> None:
    pid = "com.example.echo.http"
    proc, ready = await _start_example(
        mesh,
        "--provider-id",
        pid,
        "--no-grpc",
        "--http-port",
        "0",
        "--scope",
        "crm.lead.write",
        "--region",
        "r2",
    )
    try:
        assert ready["grpc"] is None
        assert ready["http"].startswith("http://")
        got = await get_provider(registry, pid)
        assert [(e.transport, e.region) for e in got.endpoints] == [(common_pb2.TRANSPORT_HTTP, "r2")]
        assert {c.security.scope for c in got.capabilities} == {"crm.lead.write"}
    finally:
        assert await _sigterm(proc) == 0
    assert (await get_provider(registry, pid)).provider.state == WITHDRAWN
