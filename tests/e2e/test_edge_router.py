"""The router's REST paths through a real Envoy edge: invoke, streamed output as NDJSON, errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sdk import CallInfo, Provider
from tests.e2e.conftest import Edge

T1 = {"x-tenant-id": "t1"}


@pytest.fixture
async def provider(edge: Edge) -> AsyncIterator[Provider]:
    p = Provider("com.test.edge", version="1.2.0", tenant_id="t1", registry=edge.mesh.address)

    @p.unary("edge.echo", idempotent=True)
    async def echo(a: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        return {"echo": a, "request_id": call.request_id}

    @p.streaming("edge.words", idempotent=True)
    async def words(a: dict[str, Any], call: CallInfo) -> AsyncIterator[Any]:
        for w in str(a["text"]).split():
            yield w

    async with p:
        yield p


async def test_invoke_over_rest(edge: Edge, provider: Provider) -> None:
    r = await edge.http.post(
        "/api/v1/router/invoke",
        json={"capability_id": "edge.echo", "arguments": {"lead": {"name": "Ada"}}},
        headers={**T1, "x-request-id": "rest-1"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == {"echo": {"lead": {"name": "Ada"}}, "request_id": "rest-1"}
    assert body["version"] == "1.2.0"
    assert body["endpoint"]["transport"] == "TRANSPORT_GRPC"


async def test_invoke_stream_over_rest_as_ndjson(edge: Edge, provider: Provider) -> None:
    lines = []
    async with edge.http.stream(
        "POST",
        "/api/v1/router/invoke/stream",
        json={"capability_id": "edge.words", "arguments": {"text": "one two three"}},
        headers=T1,
    ) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
    assert [m["chunk"]["text"] for m in lines[:-1]] == ["one", "two", "three"]
    assert [m["chunk"]["sequence"] for m in lines[:-1]] == ["1", "2", "3"]
    assert lines[-1]["end"]["reason"] == "COMPLETED"
    assert lines[-1]["end"]["last_sequence"] == "3"


async def test_resolve_and_report_over_rest(edge: Edge, provider: Provider) -> None:
    r = await edge.http.post(
        "/api/v1/router/resolve", json={"capability_id": "edge.echo", "explain": True}, headers=T1
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["endpoint"]["uri"] == f"grpc://{provider.grpc_address}"
    assert body["candidates"][0]["selected"] is True
    r = await edge.http.post(
        "/api/v1/router/outcomes",
        json={
            "endpoint_id": body["endpoint"]["endpoint_id"],
            "capability_id": "edge.echo",
            "code": 0,
            "latency": "0.004s",
            "route_token": body["route_token"],
        },
        headers=T1,
    )
    assert r.status_code == 200, r.text
    assert r.json()["latency_ewma_ms"] == pytest.approx(4.0)


async def test_router_errors_over_rest_are_json_statuses(edge: Edge, provider: Provider) -> None:
    r = await edge.http.post("/api/v1/router/invoke", json={"capability_id": "no.such"}, headers=T1)
    assert r.status_code == 404
    assert r.json()["details"][0]["reason"] == "CAPABILITY_NOT_FOUND"
    r = await edge.http.post(
        "/api/v1/router/invoke", json={"capability_id": "edge.echo"}, headers={"x-tenant-id": "t2"}
    )
    assert r.status_code == 404
    r = await edge.http.post(
        "/api/v1/router/invoke", content=b"{not json", headers={**T1, "content-type": "application/json"}
    )
    assert r.status_code == 400
    r = await edge.http.post(
        "/api/v1/router/invoke", json={"capability_id": "edge.echo", "arguments": "not an object"}, headers=T1
    )
    assert r.status_code == 400
