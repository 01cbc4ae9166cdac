"""Authentication, permissions and the audit log, through a real channel to a mesh with auth on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from powerx.agent.v1 import agent_pb2
from powerx.agent.v1 import agent_service_pb2 as agent_svc
from powerx.agent.v1 import agent_service_pb2_grpc as agent_grpc
from powerx.audit.v1 import audit_service_pb2 as apb
from powerx.audit.v1 import audit_service_pb2_grpc as apb_grpc
from powerx.auth.v1 import auth_service_pb2 as pb
from powerx.auth.v1 import auth_service_pb2_grpc as pb_grpc
from powerx.connector.v1 import connector_pb2
from powerx.connector.v1 import connector_service_pb2 as csvc
from powerx.connector.v1 import connector_service_pb2_grpc as csvc_grpc
from powerx.registry.v1 import registry_service_pb2 as rs
from servers.auth import permissions
from servers.auth.store import api_keys_t, audit_log_t
from servers.connector.store import instances_t
from servers.mesh import SERVICE_NAMES, Mesh, start_mesh
from tests.conftest import announce_request, mesh_settings
from tests.integration.helpers import error_info

OPERATOR_KEY = "pxk_0123456789abcdef_" + "o" * 43
TRACE = "0af7651916cd43dd8448eb211c80319c"


def key_md(key: str, tenant: str = "", *, trace: str = "") -> tuple[tuple[str, str], ...]:
    md: list[tuple[str, str]] = [("x-api-key", key)]
    if tenant:
        md.append(("x-tenant-id", tenant))
    if trace:
        md.append(("traceparent", f"00-{trace}-b7ad6b7169203331-01"))
    return tuple(md)


@pytest.fixture
async def mesh(tmp_path: Path, database_url: str) -> AsyncIterator[Mesh]:
    m = await start_mesh(
        mesh_settings(tmp_path, database_url, auth_required=True, bootstrap_api_key=OPERATOR_KEY)
    )
    try:
        yield m
    finally:
        await m.stop(0)


@pytest.fixture
async def channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield ch


async def make_key(ch: grpc.aio.Channel, tenant: str, *scopes: str, by: str = OPERATOR_KEY) -> str:
    resp = await pb_grpc.AuthServiceStub(ch).CreateApiKey(
        pb.CreateApiKeyRequest(tenant_id=tenant, name=f"{tenant} key", scopes=list(scopes)),
        metadata=key_md(by, tenant if by == OPERATOR_KEY else ""),
    )
    assert resp.secret.startswith(f"pxk_{resp.api_key.key_id}_")
    return resp.secret


async def rows(mesh: Mesh, table: sa.Table) -> list[dict[str, Any]]:
    if mesh.audit_log is not None:
        await mesh.audit_log.flush()
    async with mesh.registry.store.engine.connect() as conn:  # type: ignore[attr-defined]
        return [dict(r._mapping) for r in (await conn.execute(sa.select(table))).all()]


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), error_info(err.value).reason


def test_every_hosted_rpc_has_a_permission_rule() -> None:
    pool = descriptor_pool.Default()
    hosted = {f"/{name}/{m.name}" for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods}
    assert hosted == set(permissions.PERMISSIONS)
    assert {s.full_name for s in permissions.SERVICES} == set(SERVICE_NAMES)
    # Only webhooks go without a credential.
    assert [m for m, r in permissions.PERMISSIONS.items() if r.public] == [
        "/powerx.connector.v1.ConnectorService/ReceiveWebhook"
    ]


def test_docs_list_every_rule_as_the_table_has_it() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    listed = {}
    for line in doc.splitlines():
        if line.startswith("| `/powerx."):
            cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
            listed[cells[0]] = cells[1]
    assert listed == {m: r.permission for m, r in permissions.PERMISSIONS.items()}


@pytest.mark.parametrize(
    ("scopes", "permission", "ok"),
    [
        ({"*"}, "agent.connector.manage", True),
        ({"agent.connector.*"}, "agent.connector.manage", True),
        ({"agent.*"}, "agent.connector.manage", True),
        ({"agent.connector.manage"}, "agent.connector.manage", True),
        ({"agent.connector.read"}, "agent.connector.manage", False),
        ({"agent.connector"}, "agent.connector.manage", False),
        ({"agent.conn*"}, "agent.connector.manage", False),
        (set(), "agent.connector.manage", False),
    ],
)
def test_scope_wildcards(scopes: set[str], permission: str, ok: bool) -> None:
    assert permissions.granted(frozenset(scopes), permission) is ok


async def test_calls_without_a_valid_key_are_refused_and_health_and_reflection_stay_open(
    mesh: Mesh, channel: grpc.aio.Channel
) -> None:
    stub = csvc_grpc.ConnectorServiceStub(channel)
    req = csvc.ListConnectorInstancesRequest(platform="n8n")
    assert await code_of(stub.ListConnectorInstances(req, metadata=(("x-tenant-id", "t1"),))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
    # The x-scopes / x-principal headers of development mode grant nothing here.
    trusted = (("x-tenant-id", "t1"), ("x-scopes", "*"), ("x-principal", "root"))
    assert (await code_of(stub.ListConnectorInstances(req, metadata=trusted)))[
        0
    ] == grpc.StatusCode.UNAUTHENTICATED
    tampered = OPERATOR_KEY[:-1] + "x"
    assert await code_of(stub.ListConnectorInstances(req, metadata=key_md(tampered, "t1"))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_INVALID",
    )
    for junk in ("pxk_", "pxk_0123456789abcdef_short", "not-a-key", "pxk_" + "z" * 200):
        assert await code_of(stub.ListConnectorInstances(req, metadata=key_md(junk, "t1"))) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
        )
    # An agent-token-looking bearer on a call that takes only keys.
    bearer = (("authorization", "Bearer agt1.xyz"), ("x-tenant-id", "t1"))
    assert await code_of(stub.ListConnectorInstances(req, metadata=bearer)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REQUIRED",
    )
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        await health.Check(health_pb2.HealthCheckRequest())
    ).status == health_pb2.HealthCheckResponse.SERVING
    # Refusals are audited (reads only when refused), with no tenant proven.
    audit = await rows(mesh, audit_log_t)
    refused = [r for r in audit if r["action"].endswith("/ListConnectorInstances")]
    assert len(refused) == 8
    assert {r["outcome"] for r in refused} == {"UNAUTHENTICATED"}
    assert tampered not in json.dumps(audit)


async def test_operator_key_makes_tenant_keys_shown_once_and_stored_as_hashes(
    mesh: Mesh, channel: grpc.aio.Channel
) -> None:
    auth = pb_grpc.AuthServiceStub(channel)
    who = await auth.WhoAmI(pb.WhoAmIRequest(), metadata=key_md(OPERATOR_KEY, "t1"))
    assert (who.principal, who.tenant_id, list(who.scopes), who.auth_required) == (
        "apikey:0123456789abcdef",
        "t1",
        ["*"],
        True,
    )
    created = await auth.CreateApiKey(
        pb.CreateApiKeyRequest(name="ci", scopes=["agent.connector.*", "audit.read"]),
        metadata=key_md(OPERATOR_KEY, "t1"),
    )
    assert created.api_key.tenant_id == "t1"
    assert created.api_key.status == pb.API_KEY_STATUS_ACTIVE
    assert created.api_key.created_by == "apikey:0123456789abcdef"
    got = await auth.GetApiKey(
        pb.GetApiKeyRequest(key_id=created.api_key.key_id), metadata=key_md(OPERATOR_KEY, "t1")
    )
    listed = await auth.ListApiKeys(pb.ListApiKeysRequest(), metadata=key_md(OPERATOR_KEY, "t1"))
    for answer in (got, listed):
        assert created.secret not in str(answer)
    assert [k.key_id for k in listed.api_keys] == [created.api_key.key_id]
    stored = await rows(mesh, api_keys_t)
    assert created.secret not in json.dumps(stored, default=str)
    assert OPERATOR_KEY not in json.dumps(stored, default=str)
    assert {len(r["key_hash"]) for r in stored} == {64}
    # The raw key never reaches the audit log (the response is not recorded; the request has no secret).
    audit = await rows(mesh, audit_log_t)
    assert created.secret not in json.dumps(audit, default=str)
    create_rows = [r for r in audit if r["action"].endswith("/CreateApiKey")]
    assert create_rows[0]["actor"] == "apikey:0123456789abcdef"
    assert create_rows[0]["permission"] == "auth.apikey.manage"
    # The new key works, and only within its scopes and tenant.
    me = await auth.WhoAmI(pb.WhoAmIRequest(), metadata=key_md(created.secret))
    assert (me.tenant_id, sorted(me.scopes)) == ("t1", ["agent.connector.*", "audit.read"])


async def test_scopes_and_tenants_are_enforced_and_refusals_write_nothing(
    mesh: Mesh, channel: grpc.aio.Channel
) -> None:
    reader = await make_key(channel, "t1", "agent.connector.read")
    manager = await make_key(channel, "t1", "agent.connector.*")
    stub = csvc_grpc.ConnectorServiceStub(channel)
    instance = connector_pb2.ConnectorInstance(
        base_url="http://127.0.0.1:9", enabled=True, workflow_ids={"echo": "hook"}
    )
    instance.credential_input.api_key.token = "tok-secret-value-123"
    create = csvc.CreateConnectorInstanceRequest(platform="n8n", instance_id="i1", instance=instance)

    assert await code_of(stub.CreateConnectorInstance(create, metadata=key_md(reader))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    # A tenant key cannot act for another tenant.
    assert await code_of(stub.CreateConnectorInstance(create, metadata=key_md(manager, "t2"))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_MISMATCH",
    )
    assert await rows(mesh, instances_t) == []
    made = await stub.CreateConnectorInstance(create, metadata=key_md(manager))
    assert made.instance.tenant_id == "t1"
    got = await stub.GetConnectorInstance(
        csvc.GetConnectorInstanceRequest(platform="n8n", instance_id="i1"), metadata=key_md(reader)
    )
    assert got.instance.instance_id == "i1"
    # A key of another tenant does not see it.
    other = await make_key(channel, "t2", "*")
    assert (
        await code_of(
            stub.GetConnectorInstance(
                csvc.GetConnectorInstanceRequest(platform="n8n", instance_id="i1"), metadata=key_md(other)
            )
        )
    )[0] == grpc.StatusCode.NOT_FOUND
    # Audit: the refused create, and the create with its masked summary; the secret appears nowhere.
    audit = await rows(mesh, audit_log_t)
    creates = [r for r in audit if r["action"].endswith("/CreateConnectorInstance")]
    assert [r["outcome"] for r in creates] == ["PERMISSION_DENIED", "PERMISSION_DENIED", "OK"]
    summary = json.loads(creates[-1]["summary"])
    assert summary["instance_id"] == "i1"
    assert summary["instance.credential_input"] == "***"
    assert "tok-secret-value-123" not in json.dumps(audit, default=str)


async def test_keys_cannot_hand_out_more_than_they_hold(channel: grpc.aio.Channel) -> None:
    admin = await make_key(channel, "t1", "auth.apikey.manage", "agent.connector.*")
    auth = pb_grpc.AuthServiceStub(channel)

    async def create(tenant: str, *scopes: str) -> tuple[grpc.StatusCode, str]:
        return await code_of(
            auth.CreateApiKey(
                pb.CreateApiKeyRequest(tenant_id=tenant, name="x", scopes=list(scopes)),
                metadata=key_md(admin),
            )
        )

    assert await create("t1", "*") == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_NOT_HELD")
    assert await create("t1", "agent.*") == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_NOT_HELD")
    assert await create("t1", "registry.read") == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_NOT_HELD")
    assert await create("t2", "agent.connector.read") == (
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_MISMATCH",
    )
    assert await create("*", "agent.connector.read") == (grpc.StatusCode.PERMISSION_DENIED, "TENANT_MISMATCH")
    assert (await create("t1", "bad scope!"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert (await create("t1"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    ok = await auth.CreateApiKey(
        pb.CreateApiKeyRequest(name="narrow", scopes=["agent.connector.read", "agent.connector.*"]),
        metadata=key_md(admin),
    )
    assert ok.api_key.tenant_id == "t1"


async def test_disable_enable_revoke_and_expiry(mesh: Mesh, channel: grpc.aio.Channel) -> None:
    auth = pb_grpc.AuthServiceStub(channel)
    key = await make_key(channel, "t1", "agent.connector.read")
    key_id = key.split("_")[1]
    stub = csvc_grpc.ConnectorServiceStub(channel)
    req = csvc.ListConnectorInstancesRequest(platform="n8n")
    await stub.ListConnectorInstances(req, metadata=key_md(key))  # cached now

    async def set_status(status: int) -> pb.SetApiKeyStatusResponse:
        return await auth.SetApiKeyStatus(
            pb.SetApiKeyStatusRequest(key_id=key_id, status=status, reason="test"),  # type: ignore[arg-type]
            metadata=key_md(OPERATOR_KEY, "t1"),
        )

    await set_status(pb.API_KEY_STATUS_DISABLED)
    assert await code_of(stub.ListConnectorInstances(req, metadata=key_md(key))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_DISABLED",
    )
    await set_status(pb.API_KEY_STATUS_ACTIVE)
    await stub.ListConnectorInstances(req, metadata=key_md(key))
    revoked = await set_status(pb.API_KEY_STATUS_REVOKED)
    assert revoked.api_key.status == pb.API_KEY_STATUS_REVOKED
    assert revoked.api_key.status_reason == "test"
    assert await code_of(stub.ListConnectorInstances(req, metadata=key_md(key))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REVOKED",
    )
    assert await code_of(set_status(pb.API_KEY_STATUS_ACTIVE)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "API_KEY_REVOKED",
    )
    # Another tenant's operator view cannot touch t1's key.
    assert (
        await code_of(
            auth.SetApiKeyStatus(
                pb.SetApiKeyStatusRequest(key_id=key_id, status=pb.API_KEY_STATUS_ACTIVE),
                metadata=key_md(OPERATOR_KEY, "t2"),
            )
        )
    )[0] == grpc.StatusCode.NOT_FOUND
    # Expiry: a key whose expiry passed is refused.
    short = await auth.CreateApiKey(
        pb.CreateApiKeyRequest(name="short", scopes=["agent.connector.read"]),
        metadata=key_md(OPERATOR_KEY, "t1"),
    )
    async with mesh.registry.store.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            sa.update(api_keys_t).where(api_keys_t.c.key_id == short.api_key.key_id).values(expire_ms=1)
        )
    assert mesh.auth is not None
    mesh.auth.cache.forget(short.api_key.key_id)
    assert await code_of(stub.ListConnectorInstances(req, metadata=key_md(short.secret))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_EXPIRED",
    )


async def test_agent_tokens_authenticate_the_agent_runtime_only(channel: grpc.aio.Channel) -> None:
    registrar = await make_key(channel, "t1", "agent.register")
    stub = agent_grpc.AgentServiceStub(channel)
    agent = agent_pb2.Agent(
        agent_id="helper", version="1.0.0", display_name="helper", skills=["text.summarize"]
    )
    agent.runtime.max_concurrency = 1
    reg = await stub.RegisterAgent(agent_svc.RegisterAgentRequest(agent=agent), metadata=key_md(registrar))
    token_md = (("authorization", f"Bearer {reg.agent_token}"),)
    await stub.RecordHeartbeat(
        agent_svc.RecordHeartbeatRequest(agent_id="helper", session_id=reg.session_id), metadata=token_md
    )
    # The registrar key is not an agent: heartbeats need the token (the service says so).
    assert (
        await code_of(
            stub.RecordHeartbeat(
                agent_svc.RecordHeartbeatRequest(agent_id="helper", session_id=reg.session_id),
                metadata=key_md(registrar),
            )
        )
    )[0] == grpc.StatusCode.PERMISSION_DENIED
    # The token does not open management calls.
    assert await code_of(stub.ListAgents(agent_svc.ListAgentsRequest(), metadata=token_md)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REQUIRED",
    )
    # Nor another tenant.
    assert await code_of(
        stub.RecordHeartbeat(
            agent_svc.RecordHeartbeatRequest(agent_id="helper", session_id=reg.session_id),
            metadata=(*token_md, ("x-tenant-id", "t2")),
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "TENANT_MISMATCH")
    forged = reg.agent_token[:-2] + ("AA" if not reg.agent_token.endswith("AA") else "BB")
    assert await code_of(
        stub.RecordHeartbeat(
            agent_svc.RecordHeartbeatRequest(agent_id="helper", session_id=reg.session_id),
            metadata=(("authorization", f"Bearer {forged}"),),
        )
    ) == (grpc.StatusCode.UNAUTHENTICATED, "AGENT_TOKEN_INVALID")
    who = await pb_grpc.AuthServiceStub(channel).WhoAmI(pb.WhoAmIRequest(), metadata=token_md)
    assert (who.principal, who.tenant_id) == ("agent:t1/helper", "t1")


async def test_webhooks_need_no_key_but_their_signature(channel: grpc.aio.Channel) -> None:
    stub = csvc_grpc.ConnectorServiceStub(channel)
    req = csvc.ReceiveWebhookRequest(platform="n8n", instance_id="nope")
    req.body.data = b"{}"
    req.body.content_type = "application/json"
    # The guard answers (unknown instance), not authentication.
    assert (await code_of(stub.ReceiveWebhook(req)))[0] == grpc.StatusCode.NOT_FOUND


async def test_audit_log_query_filters_paging_and_stats_per_tenant(
    mesh: Mesh, channel: grpc.aio.Channel
) -> None:
    reg_t1 = await make_key(channel, "t1", "registry.*", "audit.read")
    reg_t2 = await make_key(channel, "t2", "registry.*", "audit.read")
    reader = await make_key(channel, "t1", "registry.read")
    from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc

    registry = rs_grpc.RegistryServiceStub(channel)
    for i in range(3):
        await registry.AnnounceProvider(
            announce_request(f"com.acme.p{i}"), metadata=key_md(reg_t1, trace=TRACE if i == 0 else "")
        )
    await registry.AnnounceProvider(announce_request("com.other.p"), metadata=key_md(reg_t2))
    await registry.ListProviders(rs.ListProvidersRequest(), metadata=key_md(reader))  # a read: not audited
    await code_of(registry.AnnounceProvider(announce_request("com.acme.denied"), metadata=key_md(reader)))
    assert mesh.audit_log is not None
    await mesh.audit_log.flush()

    audit = apb_grpc.AuditServiceStub(channel)
    t1 = await audit.ListAuditRecords(
        apb.ListAuditRecordsRequest(action="/powerx.registry.v1.RegistryService/"), metadata=key_md(reg_t1)
    )
    assert [r.outcome for r in t1.records] == ["PERMISSION_DENIED", "OK", "OK", "OK"]
    assert {r.tenant_id for r in t1.records} == {"t1"}
    assert all(r.kind == apb.AUDIT_KIND_MUTATION for r in t1.records)
    assert t1.records[-1].trace_id == TRACE
    assert json.loads(t1.records[-1].summary)["provider.provider_id"] == "com.acme.p0"
    by_trace = await audit.ListAuditRecords(
        apb.ListAuditRecordsRequest(trace_id=TRACE), metadata=key_md(reg_t1)
    )
    assert len(by_trace.records) == 1
    denied = await audit.ListAuditRecords(
        apb.ListAuditRecordsRequest(outcome="PERMISSION_DENIED", actor=f"apikey:{reader.split('_')[1]}"),
        metadata=key_md(reg_t1),
    )
    assert len(denied.records) == 1
    assert denied.records[0].permission == "registry.provider.write"
    # Paging: 2 + 2, no overlap.
    first = await audit.ListAuditRecords(
        apb.ListAuditRecordsRequest(page_size=2, action="/powerx.registry.v1."), metadata=key_md(reg_t1)
    )
    second = await audit.ListAuditRecords(
        apb.ListAuditRecordsRequest(
            page_size=2, action="/powerx.registry.v1.", page_token=first.next_page_token
        ),
        metadata=key_md(reg_t1),
    )
    assert len(first.records) == 2
    assert len(second.records) == 2
    assert not {r.record_id for r in first.records} & {r.record_id for r in second.records}
    # Another tenant's records are invisible; a token made for other filters is refused.
    t2 = await audit.ListAuditRecords(
        apb.ListAuditRecordsRequest(action="/powerx.registry.v1."), metadata=key_md(reg_t2)
    )
    assert [r.tenant_id for r in t2.records] == ["t2"]
    assert (
        await code_of(
            audit.ListAuditRecords(
                apb.ListAuditRecordsRequest(page_size=2, page_token=first.next_page_token),
                metadata=key_md(reg_t1),
            )
        )
    )[0] == grpc.StatusCode.INVALID_ARGUMENT
    # Stats: per tenant; the operator without x-tenant-id sees every tenant.
    mine = await audit.GetAuditStats(apb.GetAuditStatsRequest(), metadata=key_md(reg_t1))
    assert [t.tenant_id for t in mine.tenants] == ["t1"]
    announce = next(a for a in mine.tenants[0].actions if a.action.endswith("/AnnounceProvider"))
    assert (announce.total, announce.failed) == (4, 1)
    assert mine.tenants[0].denied == 1
    everyone = await audit.GetAuditStats(apb.GetAuditStatsRequest(), metadata=key_md(OPERATOR_KEY))
    assert {"t1", "t2"} <= {t.tenant_id for t in everyone.tenants}


async def test_key_status_changes_reach_another_process(
    tmp_path: Path, pg_database_url: str, redis_url: str
) -> None:
    settings = {"auth_required": True, "bootstrap_api_key": OPERATOR_KEY}
    a = await start_mesh(mesh_settings(tmp_path / "a", pg_database_url, redis_url, **settings))
    b = await start_mesh(mesh_settings(tmp_path / "b", pg_database_url, redis_url, **settings))
    try:
        async with grpc.aio.insecure_channel(a.address) as ca, grpc.aio.insecure_channel(b.address) as cb:
            key = await make_key(ca, "t1", "agent.connector.read")
            req = csvc.ListConnectorInstancesRequest(platform="n8n")
            await csvc_grpc.ConnectorServiceStub(cb).ListConnectorInstances(req, metadata=key_md(key))
            await pb_grpc.AuthServiceStub(ca).SetApiKeyStatus(
                pb.SetApiKeyStatusRequest(key_id=key.split("_")[1], status=pb.API_KEY_STATUS_REVOKED),
                metadata=key_md(OPERATOR_KEY, "t1"),
            )
            deadline = asyncio.get_running_loop().time() + 3.0  # well inside the 5 s cache lifetime
            reason = ""
            while not reason:
                try:
                    await csvc_grpc.ConnectorServiceStub(cb).ListConnectorInstances(req, metadata=key_md(key))
                except grpc.aio.AioRpcError as err:
                    reason = error_info(err).reason
                assert asyncio.get_running_loop().time() < deadline, "process B still accepts the revoked key"
                await asyncio.sleep(0.05)
            assert reason == "API_KEY_REVOKED"
    finally:
        await a.stop(0)
        await b.stop(0)
