"""Authentication through the Envoy edge: REST and native gRPC get the same checks as direct calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from gateway.envoy import EdgeConfig, EnvoyEdge
from powerx.auth.v1 import auth_service_pb2 as pb
from powerx.auth.v1 import auth_service_pb2_grpc as pb_grpc
from servers.mesh import start_mesh
from tests.conftest import mesh_settings
from tests.e2e.conftest import Edge, _free_port

pytestmark = pytest.mark.envoy

OPERATOR_KEY = "pxk_fedcba9876543210_" + "e" * 43


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Edge]:
    port = _free_port()
    mesh = await start_mesh(
        mesh_settings(
            tmp_path, edge_address=f"127.0.0.1:{port}", auth_required=True, bootstrap_api_key=OPERATOR_KEY
        )
    )
    envoy = EnvoyEdge(
        EdgeConfig(listen_port=port, admin_port=0, upstreams=(("127.0.0.1", mesh.port),)),
        log_path=tmp_path / "envoy.log",
    )
    try:
        await asyncio.to_thread(envoy.start)
        await asyncio.to_thread(envoy.wait_healthy_upstreams)
        async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
            yield Edge(mesh, envoy, http)
    finally:
        await asyncio.to_thread(envoy.stop)
        await mesh.stop(0)


def reason(r: httpx.Response) -> str:
    return str(r.json()["details"][0]["reason"])


async def test_rest_keys_scopes_tenants_and_audit_through_envoy(secured: Edge) -> None:
    http = secured.http
    caps = "/api/v1/integration/capabilities"
    none = await http.get(caps, headers={"x-tenant-id": "t1"})
    assert (none.status_code, reason(none)) == (401, "UNAUTHENTICATED")
    bad = await http.get(caps, headers={"x-api-key": "pxk_0000000000000000_" + "x" * 43})
    assert (bad.status_code, reason(bad)) == (401, "API_KEY_INVALID")

    # The operator makes a tenant key over REST; the raw key is in this answer only.
    made = await http.post(
        "/api/v1/auth/api-keys",
        json={"tenant_id": "t1", "name": "reader", "scopes": ["registry.read", "audit.read"]},
        headers={"x-api-key": OPERATOR_KEY},
    )
    assert made.status_code == 200, made.text
    key, key_id = made.json()["secret"], made.json()["api_key"]["key_id"]
    listed = await http.get("/api/v1/auth/api-keys", headers={"x-api-key": OPERATOR_KEY, "x-tenant-id": "t1"})
    assert [k["key_id"] for k in listed.json()["api_keys"]] == [key_id]
    assert key not in listed.text

    ok = await http.get(caps, headers={"x-api-key": key})
    assert ok.status_code == 200, ok.text
    assert ok.json()["capabilities"] == []
    other = await http.get(caps, headers={"x-api-key": key, "x-tenant-id": "t2"})
    assert (other.status_code, reason(other)) == (403, "TENANT_MISMATCH")
    write = await http.post("/api/v1/integration/refresh", json={}, headers={"x-api-key": key})
    assert (write.status_code, reason(write)) == (403, "PERMISSION_DENIED")

    # Disabled at once (this process), enabled again.
    status = f"/api/v1/auth/api-keys/{key_id}/status"
    off = await http.post(
        status,
        json={"status": "API_KEY_STATUS_DISABLED"},
        headers={"x-api-key": OPERATOR_KEY, "x-tenant-id": "t1"},
    )
    assert off.status_code == 200, off.text
    refused = await http.get(caps, headers={"x-api-key": key})
    assert (refused.status_code, reason(refused)) == (401, "API_KEY_DISABLED")
    on = await http.post(
        status,
        json={"status": "API_KEY_STATUS_ACTIVE"},
        headers={"x-api-key": OPERATOR_KEY, "x-tenant-id": "t1"},
    )
    assert on.status_code == 200, on.text

    # The refusals are in t1's audit log, queryable over REST by the reader key.
    assert secured.mesh.audit_log is not None
    await secured.mesh.audit_log.flush()
    records = await http.get(
        "/api/v1/audit/records", params={"outcome": "PERMISSION_DENIED"}, headers={"x-api-key": key}
    )
    assert records.status_code == 200, records.text
    rows = records.json()["records"]
    assert [r["action"] for r in rows] == [
        "/powerx.registry.v1.RegistryService/RefreshRegistry",
        "/powerx.registry.v1.RegistryService/ListCapabilities",
    ]
    assert {r["actor"] for r in rows} == {f"apikey:{key_id}"}
    stats = await http.get("/api/v1/audit/stats", headers={"x-api-key": key})
    assert stats.status_code == 200, stats.text
    assert [t["tenant_id"] for t in stats.json()["tenants"]] == ["t1"]


async def test_native_grpc_through_envoy_is_checked_the_same_way(secured: Edge) -> None:
    async with grpc.aio.insecure_channel(secured.grpc_target) as ch:
        auth = pb_grpc.AuthServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth.WhoAmI(pb.WhoAmIRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        who = await auth.WhoAmI(
            pb.WhoAmIRequest(), metadata=(("x-api-key", OPERATOR_KEY), ("x-tenant-id", "t9"))
        )
        assert (who.principal, who.tenant_id) == ("apikey:fedcba9876543210", "t9")
