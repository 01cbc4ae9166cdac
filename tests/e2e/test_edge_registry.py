"""The registry's REST paths, errors, streams, health and reflection through a real Envoy edge."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers.mesh import SERVICE_NAMES
from tests.conftest import announce_request
from tests.e2e.conftest import Edge

pytestmark = pytest.mark.envoy
T1 = {"x-tenant-id": "t1"}
ANNOUNCE = json_format.MessageToDict(announce_request(lease_s=60), preserving_proto_field_name=True)


def _error_info(body: dict) -> dict:
    infos = [d for d in body.get("details", []) if d.get("@type", "").endswith("google.rpc.ErrorInfo")]
    assert infos, body
    return infos[0]


async def test_every_registry_rest_path(edge: Edge) -> None:
    http = edge.http
    r = await http.post(
        "/api/v1/integration/providers/announce", json=ANNOUNCE, headers={**T1, "x-request-id": "rest-1"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "rest-1"
    assert not [h for h in r.headers if h.startswith("x-envoy-")]
    body = r.json()
    assert body["changed"] is True
    endpoint_id = body["endpoints"][0]["endpoint_id"]
    assert body["endpoints"][0]["health"] == "HEALTH_STATE_HEALTHY"
    assert (await http.post("/api/v1/integration/providers/announce", json=ANNOUNCE, headers=T1)).json()[
        "changed"
    ] is False

    r = await http.get("/api/v1/integration/capabilities", headers=T1)
    assert [c["capability_id"] for c in r.json()["capabilities"]] == ["crm.lead.create"]
    r = await http.get("/api/v1/integration/capabilities/crm.lead.create", headers=T1)
    assert r.json()["capabilities"][0]["endpoints"][0]["endpoint_id"] == endpoint_id
    r = await http.get(
        "/api/v1/integration/runtime/endpoints", params={"transport": "TRANSPORT_GRPC"}, headers=T1
    )
    assert [e["endpoint_id"] for e in r.json()["endpoints"]] == [endpoint_id]
    r = await http.get("/api/v1/integration/providers/com.acme.crm", headers=T1)
    assert r.json()["provider"]["state"] == "PROVIDER_STATE_ACTIVE"
    r = await http.get("/api/v1/integration/providers", headers=T1)
    assert [p["provider_id"] for p in r.json()["providers"]] == ["com.acme.crm"]
    r = await http.post("/api/v1/integration/providers/com.acme.crm/heartbeat", json={}, headers=T1)
    assert r.status_code == 200, r.text
    r = await http.post("/api/v1/integration/refresh", json={}, headers=T1)
    assert r.json()["expired_provider_count"] == 0
    r = await http.delete(f"/api/v1/integration/endpoints/{endpoint_id}", headers=T1)
    assert r.json()["endpoint"]["health"] == "HEALTH_STATE_OFFLINE"
    r = await http.post(
        "/api/v1/integration/providers/com.acme.crm/withdraw", json={"reason": "done"}, headers=T1
    )
    assert r.json()["provider"]["state"] == "PROVIDER_STATE_WITHDRAWN"


async def test_not_found_is_json_with_error_info(edge: Edge) -> None:
    r = await edge.http.get("/api/v1/integration/capabilities/no.such.cap", headers=T1)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    info = _error_info(r.json())
    assert (info["reason"], info["domain"]) == ("CAPABILITY_NOT_FOUND", "registry.powerx")


async def test_invalid_input_is_400_with_field_violations_and_writes_nothing(edge: Edge) -> None:
    bad = dict(ANNOUNCE, provider={"provider_id": "Bad Id", "version": "x"})
    r = await edge.http.post("/api/v1/integration/providers/announce", json=bad, headers=T1)
    assert r.status_code == 400
    body = r.json()
    violations = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    fields = {v["field"] for v in violations[0]["field_violations"]}
    assert {"provider.provider_id", "provider.version"} <= fields
    r = await edge.http.get("/api/v1/integration/capabilities", headers=T1)
    assert r.json()["capabilities"] == []


async def test_missing_tenant_is_rejected(edge: Edge) -> None:
    r = await edge.http.get("/api/v1/integration/capabilities")
    assert r.status_code == 400
    assert _error_info(r.json())["reason"] == "TENANT_REQUIRED"


async def test_malformed_json_unknown_query_and_unknown_paths(edge: Edge) -> None:
    r = await edge.http.post("/api/v1/integration/providers/announce", content=b"{not json", headers=T1)
    assert r.status_code == 400
    r = await edge.http.post(
        "/api/v1/integration/providers/announce", json={"provider": {"version": 5}}, headers=T1
    )
    assert r.status_code == 400
    r = await edge.http.get("/api/v1/integration/capabilities", params={"bogus": "1"}, headers=T1)
    assert r.status_code == 400
    for path in ("/nope", "/api/v1/nope", "/api/v1/integration/capabilities/a/b/c"):
        r = await edge.http.get(path, headers=T1)
        assert r.status_code == 404, (path, r.status_code, r.text)
    r = await edge.http.put("/api/v1/integration/capabilities", headers=T1)
    assert r.status_code in (404, 405)


async def test_oversized_body_is_413_and_hostile_headers_do_not_break_calls(edge: Edge) -> None:
    big = dict(ANNOUNCE, provider=dict(ANNOUNCE["provider"], description="x" * (2 * 1024 * 1024)))
    r = await edge.http.post("/api/v1/integration/providers/announce", json=big, headers=T1)
    assert r.status_code == 413, r.text[:300]
    hostile = {
        **T1,
        "x-sig-bin": "not base64 !!",
        "grpc-timeout": "1n",
        "x-envoy-upstream-rq-timeout-ms": "1",
    }
    r = await edge.http.get("/api/v1/integration/capabilities", headers=hostile)
    assert r.status_code == 200, r.text


async def test_watch_streams_ndjson_ending_with_an_end_message(edge: Edge) -> None:
    await edge.http.post("/api/v1/integration/providers/announce", json=ANNOUNCE, headers=T1)
    lines = []
    async with edge.http.stream(
        "GET", "/api/v1/integration/watch", params={"since_revision": "0", "max_events": "2"}, headers=T1
    ) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
    assert [next(iter(m)) for m in lines] == ["event", "event", "end"]
    assert lines[0]["event"]["type"] == "REGISTRY_EVENT_TYPE_PROVIDER_ANNOUNCED"
    assert lines[-1]["end"]["reason"] == "LIMIT_REACHED"
    assert lines[-1]["end"]["last_sequence"] == "2"


async def test_native_grpc_health_and_reflection_through_the_edge(edge: Edge) -> None:
    async with grpc.aio.insecure_channel(edge.grpc_target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert (
            await health.Check(health_pb2.HealthCheckRequest())
        ).status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for s in (await call.read()).list_services_response.service}
        assert set(SERVICE_NAMES) | {"grpc.health.v1.Health"} <= names
        registry = rs_grpc.RegistryServiceStub(ch)
        resp = await registry.AnnounceProvider(announce_request(), metadata=(("x-tenant-id", "t1"),))
        assert resp.changed
        got = await registry.ListCapabilities(rs.ListCapabilitiesRequest(), metadata=(("x-tenant-id", "t1"),))
        assert got.capabilities[0].capability_id == "crm.lead.create"
