"""ConnectorService through a real channel against local fake Coze and n8n servers (seed 000).

Every RPC, every guard (permission, tenant, flag, template, idempotency, rate, credential, breaker),
the chaos list of the seed (platform 5xx, timeouts, tampered signatures, credential expiry, late
webhooks, replays across two mesh processes) and the promise that bad input writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api import httpbody_pb2
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2, timestamp_pb2
from prometheus_client import generate_latest

from powerx.connector.v1 import callback_pb2, connector_pb2, degrade_pb2, invocation_pb2
from powerx.connector.v1 import connector_service_pb2 as svc
from powerx.connector.v1 import connector_service_pb2_grpc as svc_grpc
from sdk import CallInfo, Provider
from servers.common.db import create_engine
from servers.connector import guard
from servers.connector.store import (
    callbacks_t,
    credentials_t,
    instances_t,
    invocations_t,
    outbox_t,
)
from servers.mesh import Mesh, start_mesh
from tests.conftest import mesh_settings
from tests.fakes.coze import FakeCoze, coze_error, http_error, slow
from tests.fakes.n8n import FakeN8n
from tests.integration.helpers import bad_fields, error_info

MANAGE = (("x-tenant-id", "t1"), ("x-scopes", "agent.connector.manage"), ("x-principal", "alice"))
T1 = (("x-tenant-id", "t1"), ("x-principal", "alice"))
T2_MANAGE = (("x-tenant-id", "t2"), ("x-scopes", "agent.connector.*"), ("x-principal", "bob"))
HOOK_TOKEN = "tenant-a-token"
PAT = "pat_good"
SUCCEEDED = invocation_pb2.INVOCATION_STATE_SUCCEEDED
FAILED = invocation_pb2.INVOCATION_STATE_FAILED
RUNNING = invocation_pb2.INVOCATION_STATE_RUNNING
AWAITING_HUMAN = invocation_pb2.INVOCATION_STATE_AWAITING_HUMAN
ASYNC = invocation_pb2.INVOCATION_MODE_ASYNC


def ctx(**kw: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


def dur(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return d


def ts(unix_s: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(int(unix_s * 1000))
    return t


def py(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value)


async def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def mesh(tmp_path: Path, database_url: str) -> AsyncIterator[Mesh]:
    m = await start_mesh(
        mesh_settings(
            tmp_path,
            database_url,
            connector_breaker="window=30s,min_calls=4,failure_rate=0.5,consecutive=3,open=1s,half_open=1",
        )
    )
    try:
        yield m
    finally:
        await m.stop(0)


@pytest.fixture
async def stub(mesh: Mesh) -> AsyncIterator[svc_grpc.ConnectorServiceStub]:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield svc_grpc.ConnectorServiceStub(ch)


@pytest.fixture
async def n8n() -> AsyncIterator[FakeN8n]:
    async with FakeN8n() as fake:
        fake.webhook("mesh-invoke")
        yield fake


@pytest.fixture
async def coze() -> AsyncIterator[FakeCoze]:
    async with FakeCoze() as fake:
        yield fake


def n8n_instance(n8n: FakeN8n, **kw: Any) -> connector_pb2.ConnectorInstance:
    inst = connector_pb2.ConnectorInstance(
        display_name="acme n8n",
        base_url=n8n.base_url,
        workflow_ids={"echo": "mesh-invoke"},
        default_platform_user_id="n8n-user",
        enabled=True,
        **kw,
    )
    inst.credential_input.api_key.token = "n8n_api_key"
    inst.credential_input.secret_headers["X-Mesh-Token"] = HOOK_TOKEN
    inst.credential_input.webhook_secrets.append(n8n.callback_secret)
    return inst


def coze_instance(coze: FakeCoze, **kw: Any) -> connector_pb2.ConnectorInstance:
    inst = connector_pb2.ConnectorInstance(
        base_url=coze.base_url,
        workflow_ids={"summarize": "7366000000000000001"},
        default_platform_user_id="coze-user",
        enabled=True,
        **kw,
    )
    if not inst.credential_input.WhichOneof("credential"):
        inst.credential_input.api_key.token = PAT
    return inst


async def create(
    stub: svc_grpc.ConnectorServiceStub,
    platform: str,
    instance_id: str,
    inst: connector_pb2.ConnectorInstance,
) -> connector_pb2.ConnectorInstance:
    resp = await stub.CreateConnectorInstance(
        svc.CreateConnectorInstanceRequest(platform=platform, instance_id=instance_id, instance=inst),
        metadata=MANAGE,
    )
    return resp.instance


async def invoke(
    stub: svc_grpc.ConnectorServiceStub, platform: str, workflow: str, md: Any = T1, **kw: Any
) -> svc.InvokeConnectorResponse:
    kw.setdefault("context", ctx(q="hi"))
    return await stub.InvokeConnector(
        svc.InvokeConnectorRequest(platform=platform, workflow_id=workflow, **kw), metadata=md
    )


def signed(
    secret: str, body: dict[str, Any] | bytes, msg_id: str, at: float | None = None
) -> tuple[bytes, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = int(time.time() if at is None else at)
    sig = guard.sign_standard(secret, msg_id, stamp, raw)
    return raw, (("webhook-id", msg_id), ("webhook-timestamp", str(stamp)), ("webhook-signature", sig))


async def webhook(
    stub: svc_grpc.ConnectorServiceStub, instance_id: str, raw: bytes, md: Any, platform: str = "n8n"
) -> svc.ReceiveWebhookResponse:
    return await stub.ReceiveWebhook(
        svc.ReceiveWebhookRequest(
            platform=platform,
            instance_id=instance_id,
            body=httpbody_pb2.HttpBody(content_type="application/json", data=raw),
        ),
        metadata=md,
    )


async def counts(database_url: str, mesh: Mesh) -> dict[str, int]:
    engine = create_engine(mesh.settings.effective_database_url)
    try:
        async with engine.connect() as conn:
            out = {}
            for t in (instances_t, credentials_t, invocations_t, callbacks_t, outbox_t):
                out[t.name] = (await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar_one()
            return out
    finally:
        await engine.dispose()


async def audit_rows(mesh: Mesh) -> list[dict[str, Any]]:
    assert mesh.connectors is not None
    await mesh.connectors.audit_log.flush()
    return await mesh.connectors.service.store.audit_rows("t1")


# ---- instances, versions, credentials ----------------------------------------------------------------


async def test_instance_lifecycle_keeps_secrets_sealed_and_versions_every_change(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n
) -> None:
    created = await create(stub, "n8n", "acme", n8n_instance(n8n))
    assert created.tenant_id == "t1"
    assert created.platform == "n8n"
    assert created.config_version == 1
    assert created.secret_ref == "secret://tenants/t1/platforms/n8n/instances/acme/credential"
    assert created.credential.version == 1
    assert created.credential.webhook_secret_count == 1
    assert created.credential.kind == connector_pb2.CREDENTIAL_KIND_API_KEY
    assert created.credential.status == connector_pb2.CREDENTIAL_STATUS_ACTIVE
    assert not created.HasField("credential_input")
    text = created.SerializeToString()
    for secret in (HOOK_TOKEN.encode(), n8n.callback_secret.encode(), b"n8n_api_key"):
        assert secret not in text
    # At rest: sealed, and bound to its row (tenant, platform, instance, version).
    engine = create_engine(mesh.settings.effective_database_url)
    async with engine.connect() as conn:
        sealed = (await conn.execute(sa.select(credentials_t.c.sealed))).scalar_one()
    await engine.dispose()
    assert HOOK_TOKEN.encode() not in sealed
    assert b"n8n_api_key" not in sealed
    # Read, list, update (a new version), versions, rollback.
    got = await stub.GetConnectorInstance(
        svc.GetConnectorInstanceRequest(platform="n8n", instance_id="acme"), metadata=T1
    )
    assert got.instance == created
    listed = await stub.ListConnectorInstances(svc.ListConnectorInstancesRequest(platform="n8n"), metadata=T1)
    assert [i.instance_id for i in listed.instances] == ["acme"]
    patch = connector_pb2.ConnectorInstance(
        timeout=dur(5), workflow_ids={"echo": "mesh-invoke", "other": "x"}
    )
    updated = await stub.UpdateConnectorInstance(
        svc.UpdateConnectorInstanceRequest(
            platform="n8n",
            instance_id="acme",
            instance=patch,
            update_mask=field_mask_pb2.FieldMask(paths=["timeout", "workflow_ids"]),
            reason="faster",
        ),
        metadata=MANAGE,
    )
    assert updated.instance.config_version == 2
    assert updated.instance.timeout.seconds == 5
    assert updated.instance.display_name == "acme n8n"  # untouched by the mask
    rotated = await stub.RotateCredential(
        svc.RotateCredentialRequest(
            platform="n8n",
            instance_id="acme",
            credential_input=connector_pb2.CredentialInput(secret_headers={"X-Mesh-Token": "new-token"}),
            reason="quarterly",
        ),
        metadata=MANAGE,
    )
    assert rotated.credential.version == 2
    assert rotated.config_version == 3
    assert rotated.credential.webhook_secret_count == 1  # unset parts keep their stored value
    versions = await stub.ListConfigVersions(
        svc.ListConfigVersionsRequest(platform="n8n", instance_id="acme"), metadata=T1
    )
    assert [v.version for v in versions.versions] == [3, 2, 1]
    assert [v.change_type for v in versions.versions] == [
        connector_pb2.CONFIG_CHANGE_TYPE_ROTATE_CREDENTIAL,
        connector_pb2.CONFIG_CHANGE_TYPE_UPDATE,
        connector_pb2.CONFIG_CHANGE_TYPE_CREATE,
    ]
    assert versions.versions[1].changed_fields.paths == ["workflow_ids", "timeout"] or set(
        versions.versions[1].changed_fields.paths
    ) == {"workflow_ids", "timeout"}
    assert versions.versions[1].actor == "alice"
    assert versions.versions[1].reason == "faster"
    rolled = await stub.RollbackConfig(
        svc.RollbackConfigRequest(platform="n8n", instance_id="acme", version=1, restore_credential=True),
        metadata=MANAGE,
    )
    assert rolled.instance.config_version == 4
    assert not rolled.instance.HasField("timeout")
    assert rolled.version.rollback_of_version == 1
    assert rolled.version.change_type == connector_pb2.CONFIG_CHANGE_TYPE_ROLLBACK
    assert rolled.instance.credential.version == 3  # the old secret, stored again as a new version
    # The rolled-back header is used again on the platform.
    resp = await invoke(stub, "n8n", "echo")
    assert resp.invocation.state == SUCCEEDED
    assert n8n.requests[-1].headers["x-mesh-token"] == HOOK_TOKEN
    # No audit row, error or response ever carried a secret.
    rows = await audit_rows(mesh)
    assert {r["action"] for r in rows} >= {
        "connector.instance.create",
        "connector.instance.update",
        "connector.credential.rotate",
        "connector.instance.rollback",
    }
    dumped = json.dumps(rows, default=str)
    for secret in (HOOK_TOKEN, "new-token", n8n.callback_secret, "n8n_api_key"):
        assert secret not in dumped
    deleted = await stub.DeleteConnectorInstance(
        svc.DeleteConnectorInstanceRequest(platform="n8n", instance_id="acme"), metadata=MANAGE
    )
    assert deleted.instance.instance_id == "acme"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetConnectorInstance(
            svc.GetConnectorInstanceRequest(platform="n8n", instance_id="acme"), metadata=T1
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    engine = create_engine(mesh.settings.effective_database_url)
    async with engine.connect() as conn:
        kept = (await conn.execute(sa.select(credentials_t.c.sealed))).scalars().all()
    await engine.dispose()
    assert kept
    assert all(s == b"" for s in kept)
    # The id can be used again; versions continue after the deleted instance's (kept for audit).
    again = await create(stub, "n8n", "acme", n8n_instance(n8n))
    assert again.config_version == 6
    assert again.credential.version == 4
    assert (await invoke(stub, "n8n", "echo")).invocation.state == SUCCEEDED


async def test_management_needs_the_permission_and_the_tenant_and_bad_input_writes_nothing(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n, database_url: str
) -> None:
    before = await counts(database_url, mesh)
    req = svc.CreateConnectorInstanceRequest(platform="n8n", instance_id="acme", instance=n8n_instance(n8n))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateConnectorInstance(req, metadata=T1)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(err.value).reason == "PERMISSION_REQUIRED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateConnectorInstance(req, metadata=(("x-scopes", "agent.connector.manage"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "TENANT_REQUIRED"
    bad = n8n_instance(n8n)
    bad.base_url = "ftp://nowhere"
    bad.workflow_ids["bad alias!"] = "x y"
    bad.tenant_id = "t9"  # output only
    bad.credential_input.webhook_secrets.append("whsec_short")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateConnectorInstance(
            svc.CreateConnectorInstanceRequest(platform="n8n", instance_id="Bad_Id", instance=bad),
            metadata=MANAGE,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = bad_fields(err.value)
    assert {"instance_id", "instance.base_url", "instance.tenant_id"} <= fields
    assert any(f.startswith("instance.workflow_ids") for f in fields)
    assert any(f.startswith("instance.credential_input.webhook_secrets") for f in fields)
    assert "whsec_short" not in str(err.value.details()) + repr(fields)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateConnectorInstance(
            svc.CreateConnectorInstanceRequest(platform="zapier", instance=n8n_instance(n8n)), metadata=MANAGE
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "platform" in bad_fields(err.value)
    assert await counts(database_url, mesh) == before
    await create(stub, "n8n", "acme", n8n_instance(n8n))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, "n8n", "acme", n8n_instance(n8n))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Another tenant sees nothing of it, and cannot change it.
    for call in (
        stub.GetConnectorInstance(
            svc.GetConnectorInstanceRequest(platform="n8n", instance_id="acme"), metadata=T2_MANAGE
        ),
        stub.DeleteConnectorInstance(
            svc.DeleteConnectorInstanceRequest(platform="n8n", instance_id="acme"), metadata=T2_MANAGE
        ),
        stub.RotateCredential(
            svc.RotateCredentialRequest(platform="n8n", instance_id="acme"), metadata=T2_MANAGE
        ),
        stub.ListConfigVersions(
            svc.ListConfigVersionsRequest(platform="n8n", instance_id="acme"), metadata=T2_MANAGE
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListConnectorInstances(
        svc.ListConnectorInstancesRequest(platform="n8n"), metadata=T2_MANAGE
    )
    assert not listed.instances
    # Update masks: output-only fields and the credential cannot be set this way.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateConnectorInstance(
            svc.UpdateConnectorInstanceRequest(
                platform="n8n",
                instance_id="acme",
                instance=connector_pb2.ConnectorInstance(),
                update_mask=field_mask_pb2.FieldMask(paths=["secret_ref", "credential_input", "nope"]),
            ),
            metadata=MANAGE,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An API key cannot be refreshed; a rollback must name an earlier version.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RotateCredential(
            svc.RotateCredentialRequest(platform="n8n", instance_id="acme"), metadata=MANAGE
        )
    assert error_info(err.value).reason == "CREDENTIAL_NOT_REFRESHABLE"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RollbackConfig(
            svc.RollbackConfigRequest(platform="n8n", instance_id="acme", version=7), metadata=MANAGE
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListConnectorInstances(
            svc.ListConnectorInstancesRequest(platform="n8n", page_size=-1), metadata=T1
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- invoke --------------------------------------------------------------------------------------------


async def test_n8n_invoke_maps_context_and_user_sends_trace_and_key_and_masks_sensitive_fields(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n
) -> None:
    template = struct_pb2.Struct()
    template.update(
        {"question": "{{context.q}}", "customer": {"email": "{{context.customer.email}}"}, "fixed": 1}
    )
    out = struct_pb2.Struct()
    out.update({"answer": "{{result.echo.question}}"})
    inst = n8n_instance(n8n, input_template=template, output_template=out)
    inst.required_context_fields.append("q")
    inst.sensitive_fields.append("customer.email")
    inst.user_mappings.add(user_id="alice", platform_user_id="n8n-alice", workflow_aliases=["echo"])
    await create(stub, "n8n", "acme", inst)
    resp = await invoke(
        stub,
        "n8n",
        "echo",
        context=ctx(q="hello", customer={"email": "a@b.c"}),
        trace_id="trace-123",
        idempotency_key="k-1",
    )
    inv = resp.invocation
    assert inv.state == SUCCEEDED
    assert inv.attempts == 1
    assert not resp.replayed
    assert py(inv.result) == {"answer": "hello"}
    assert inv.user_id == "alice"
    assert inv.trace_id == "trace-123"
    assert json_format.MessageToDict(inv.context) == {"q": "hello", "customer": {"email": "***"}}
    sent = n8n.requests[-1]
    assert sent.headers["x-trace-id"] == "trace-123"
    assert sent.headers["idempotency-key"] == "k-1"
    body = sent.body
    assert body["input"] == {"question": "hello", "customer": {"email": "a@b.c"}, "fixed": 1}
    assert body["user_id"] == "n8n-alice"
    assert body["invocation_id"] == inv.invocation_id
    assert body["callback_url"].endswith("/platform/connectors/n8n/webhooks/acme")
    rows = await audit_rows(mesh)
    assert "a@b.c" not in json.dumps(rows, default=str)
    assert any(r["action"] == "connector.invoke.finish" and r["outcome"] == "SUCCEEDED" for r in rows)
    # Guards before any platform call: required fields, unknown workflow, unmapped user, other tenant.
    runs = n8n.runs["mesh-invoke"]
    for kw, code, reason in (
        ({"context": ctx(other=1)}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ({"workflow": "nope"}, grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND"),
        ({"tenant": "t2"}, grpc.StatusCode.PERMISSION_DENIED, "TENANT_MISMATCH"),
        (
            {"mode": invocation_pb2.INVOCATION_MODE_STREAM},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
        ({"context": ctx(q="x" * 300_000)}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ({"idempotency_key": "bad key\n"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ):
        workflow = kw.pop("workflow", "echo")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await invoke(stub, "n8n", workflow, **kw)
        assert err.value.code() == code, kw
        assert error_info(err.value).reason == reason
    await stub.UpdateConnectorInstance(
        svc.UpdateConnectorInstanceRequest(
            platform="n8n",
            instance_id="acme",
            instance=connector_pb2.ConnectorInstance(
                workflow_ids={"echo": "mesh-invoke", "admin": "mesh-admin"}
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["default_platform_user_id", "workflow_ids"]),
        ),
        metadata=MANAGE,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await invoke(stub, "n8n", "echo", md=(("x-tenant-id", "t1"), ("x-principal", "mallory")))
    assert error_info(err.value).reason == "USER_NOT_MAPPED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await invoke(stub, "n8n", "admin", context=ctx(q="x"))
    assert error_info(err.value).reason == "WORKFLOW_NOT_ALLOWED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await invoke(stub, "n8n", "echo", md=(("x-tenant-id", "t2"),))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert n8n.runs["mesh-invoke"] == runs


async def test_an_idempotency_key_triggers_the_platform_once_even_under_concurrent_duplicates(
    stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n
) -> None:
    n8n.webhook("mesh-invoke", delay_s=0.3)
    await create(stub, "n8n", "acme", n8n_instance(n8n))
    results = await asyncio.gather(*(invoke(stub, "n8n", "echo", idempotency_key="same") for _ in range(8)))
    assert n8n.runs["mesh-invoke"] == 1
    assert len({r.invocation.invocation_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert all(r.invocation.state == SUCCEEDED for r in results)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await invoke(stub, "n8n", "echo", idempotency_key="same", context=ctx(q="different"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(err.value).reason == "IDEMPOTENCY_KEY_REUSED"
    assert n8n.runs["mesh-invoke"] == 1


async def test_n8n_failures_are_classified_and_the_empty_200_is_a_failure(
    stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n
) -> None:
    await create(
        stub, "n8n", "acme", n8n_instance(n8n, retry_policy=connector_pb2.RetryPolicy(max_attempts=1))
    )
    n8n.webhook("mesh-invoke", mode="fail_before_respond")
    inv = (await invoke(stub, "n8n", "echo")).invocation
    assert inv.state == FAILED
    assert inv.error.code == "EMPTY_RESPONSE"
    assert inv.error.error_class == invocation_pb2.ERROR_CLASS_PERMANENT
    n8n.webhook("mesh-invoke", active=False)
    inv = (await invoke(stub, "n8n", "echo")).invocation
    assert inv.error.code == "WORKFLOW_NOT_FOUND"
    assert "stack" not in inv.error.message.lower()
    n8n.webhook("mesh-invoke")
    n8n.header_auth = ("X-Mesh-Token", "rotated-on-the-platform")
    inv = (await invoke(stub, "n8n", "echo")).invocation
    assert inv.error.error_class == invocation_pb2.ERROR_CLASS_AUTH


# ---- Coze ------------------------------------------------------------------------------------------------


async def test_coze_sync_async_and_stream(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, coze: FakeCoze
) -> None:
    await create(stub, "coze", "cz", coze_instance(coze))
    inv = (await invoke(stub, "coze", "summarize", context=ctx(text="abc"), trace_id="trace-c")).invocation
    assert inv.state == SUCCEEDED
    assert py(inv.result) == {"output": {"text": "abc"}}
    assert inv.debug_url
    run = coze.requests_to("/v1/workflow/run")[-1]
    assert run.headers["x-trace-id"] == "trace-c"
    assert run.headers["authorization"] == f"Bearer {PAT}"
    assert run.body["ext"]["user_id"] == "coze-user"
    # Async: RUNNING at once, then polled to the end.
    coze.workflow("7366000000000000001", polls_running=2)
    inv = (await invoke(stub, "coze", "summarize", mode=ASYNC)).invocation
    assert inv.state == RUNNING
    assert inv.platform_run_id

    async def done() -> bool:
        got = await stub.GetInvocation(
            svc.GetInvocationRequest(platform="coze", invocation_id=inv.invocation_id), metadata=T1
        )
        return got.invocation.state == SUCCEEDED

    await wait_until(done)
    # Stream: chunks in order, then the final invocation, then the end.
    coze.workflow("7366000000000000001", stream_ping=True)
    items = [
        m
        async for m in stub.InvokeConnectorStream(
            svc.InvokeConnectorStreamRequest(platform="coze", workflow_id="summarize", context=ctx(text="s")),
            metadata=T1,
        )
    ]
    kinds = [m.WhichOneof("kind") for m in items]
    assert kinds[-2:] == ["final", "end"]
    assert kinds.count("chunk") >= 1
    chunks = [m.chunk for m in items if m.WhichOneof("kind") == "chunk"]
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert all(c.event != "PING" for c in chunks)
    assert items[-2].final.state == SUCCEEDED
    listed = await stub.ListInvocations(svc.ListInvocationsRequest(platform="coze", page_size=2), metadata=T1)
    assert len(listed.invocations) == 2
    assert listed.next_page_token
    assert (
        listed.invocations[0].create_time.ToMilliseconds()
        >= listed.invocations[1].create_time.ToMilliseconds()
    )
    health = await stub.CheckPlatformHealth(
        svc.CheckPlatformHealthRequest(platform="coze", instance_id="cz"), metadata=T1
    )
    from powerx.common.v1 import common_pb2

    assert health.health == common_pb2.HEALTH_STATE_HEALTHY
    workflows = await stub.ListPlatformWorkflows(
        svc.ListPlatformWorkflowsRequest(platform="coze", instance_id="cz"), metadata=T1
    )
    assert [w.aliases[0] for w in workflows.workflows] == ["summarize"]


async def test_coze_retries_only_retryable_errors_with_backoff(
    stub: svc_grpc.ConnectorServiceStub, coze: FakeCoze
) -> None:
    policy = connector_pb2.RetryPolicy(max_attempts=4, initial_backoff=dur(0.01), max_backoff=dur(0.05))
    await create(stub, "coze", "cz", coze_instance(coze, retry_policy=policy))
    coze.fail_next(coze_error(5000, "internal"), times=2)
    inv = (await invoke(stub, "coze", "summarize")).invocation
    assert inv.state == SUCCEEDED
    assert inv.attempts == 3
    coze.fail_next(coze_error(4200, "workflow not published"))
    inv = (await invoke(stub, "coze", "summarize")).invocation
    assert inv.state == FAILED
    assert inv.attempts == 1
    assert inv.error.code == "WORKFLOW_NOT_FOUND"
    assert inv.error.platform_code == "4200"
    assert inv.error.platform_log_id
    coze.fail_next(coze_error(4020, "rpm exceeded"), times=4)
    inv = (await invoke(stub, "coze", "summarize")).invocation
    assert inv.state == FAILED
    assert inv.attempts == 4
    assert inv.error.error_class == invocation_pb2.ERROR_CLASS_THROTTLED


async def test_chaos_platform_5xx_and_timeouts_open_the_breaker_which_degrades_then_recovers(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, coze: FakeCoze
) -> None:
    policy = connector_pb2.RetryPolicy(max_attempts=1)
    await create(stub, "coze", "cz", coze_instance(coze, retry_policy=policy, timeout=dur(0.3)))
    coze.fail_next(http_error(502), times=2)
    coze.fail_next(slow(1.0), times=1)
    errors = [(await invoke(stub, "coze", "summarize")).invocation.error.code for _ in range(3)]
    assert errors[2] == "PLATFORM_TIMEOUT"
    runs = sum(coze.runs.values())
    # Three consecutive failures opened the breaker: the switch is HUMAN (no local capability) at once.
    state = (await stub.GetDegradeState(svc.GetDegradeStateRequest(platform="coze"), metadata=T1)).state
    assert state.mode == degrade_pb2.DEGRADE_MODE_HUMAN
    assert state.automatic
    assert state.actor == "circuit-breaker"
    assert state.breaker_state == degrade_pb2.BREAKER_STATE_OPEN
    inv = (await invoke(stub, "coze", "summarize")).invocation
    assert inv.state == AWAITING_HUMAN
    assert inv.degrade_mode == degrade_pb2.DEGRADE_MODE_HUMAN
    assert sum(coze.runs.values()) == runs  # not sent to the platform
    metrics = generate_latest(mesh.metrics).decode()
    assert 'agent_platform_degrade_total{automatic="true",mode="human",platform="coze"} 1.0' in metrics
    # After the open period a probe goes through; its success closes the breaker and recovers.
    await asyncio.sleep(1.1)
    inv = (await invoke(stub, "coze", "summarize")).invocation
    assert inv.state == SUCCEEDED
    state = (await stub.GetDegradeState(svc.GetDegradeStateRequest(platform="coze"), metadata=T1)).state
    assert state.mode == degrade_pb2.DEGRADE_MODE_OFF
    assert state.breaker_state == degrade_pb2.BREAKER_STATE_CLOSED
    history = await stub.ListDegradeHistory(svc.ListDegradeHistoryRequest(platform="coze"), metadata=T1)
    assert [s.mode for s in history.states] == [degrade_pb2.DEGRADE_MODE_OFF, degrade_pb2.DEGRADE_MODE_HUMAN]


async def test_operator_degrade_to_local_runs_the_local_capability_through_the_router_and_human_tasks(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n
) -> None:
    await create(stub, "n8n", "acme", n8n_instance(n8n, local_capability_id="local.summarize"))
    provider = Provider(
        "com.test.local", version="1.0.0", tenant_id="t1", registry=mesh.address, lease_ttl_s=30
    )

    @provider.unary("local.summarize", idempotent=True)
    async def summarize(a: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        return {"local": a}

    async with provider:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetDegradeMode(
                svc.SetDegradeModeRequest(platform="n8n", mode=degrade_pb2.DEGRADE_MODE_LOCAL), metadata=T1
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetDegradeMode(
                svc.SetDegradeModeRequest(platform="n8n", tenant="t2", mode=degrade_pb2.DEGRADE_MODE_LOCAL),
                metadata=MANAGE,
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetDegradeMode(svc.SetDegradeModeRequest(platform="n8n"), metadata=MANAGE)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        state = (
            await stub.SetDegradeMode(
                svc.SetDegradeModeRequest(
                    platform="n8n", mode=degrade_pb2.DEGRADE_MODE_LOCAL, reason="n8n upgrade", timeout=dur(60)
                ),
                metadata=MANAGE,
            )
        ).state
        assert state.actor == "alice"
        assert state.expire_time.seconds > time.time()
        inv = (await invoke(stub, "n8n", "echo", context=ctx(q="local?"))).invocation
        assert inv.state == invocation_pb2.INVOCATION_STATE_DEGRADED_LOCAL
        assert py(inv.result) == {"local": {"q": "local?"}}
        assert n8n.runs["mesh-invoke"] == 0
    await stub.SetDegradeMode(
        svc.SetDegradeModeRequest(platform="n8n", mode=degrade_pb2.DEGRADE_MODE_HUMAN, reason="manual"),
        metadata=MANAGE,
    )
    inv = (await invoke(stub, "n8n", "echo")).invocation
    assert inv.state == AWAITING_HUMAN
    assert inv.human_task_id
    tasks = await stub.ListHumanTasks(svc.ListHumanTasksRequest(), metadata=T1)
    assert [t.task_id for t in tasks.tasks] == [inv.human_task_id]
    assert tasks.tasks[0].reason == "manual"
    claimed = await stub.ClaimHumanTask(svc.ClaimHumanTaskRequest(task_id=inv.human_task_id), metadata=T1)
    assert claimed.task.state == degrade_pb2.HUMAN_TASK_STATE_CLAIMED
    assert claimed.task.assignee == "alice"
    bob = (("x-tenant-id", "t1"), ("x-principal", "bob"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ClaimHumanTask(svc.ClaimHumanTaskRequest(task_id=inv.human_task_id), metadata=bob)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    answer = struct_pb2.Value()
    answer.string_value = "done by hand"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CompleteHumanTask(
            svc.CompleteHumanTaskRequest(task_id=inv.human_task_id, answer=answer), metadata=bob
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ClaimHumanTask(
            svc.ClaimHumanTaskRequest(task_id=inv.human_task_id), metadata=(("x-tenant-id", "t2"),)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    done = await stub.CompleteHumanTask(
        svc.CompleteHumanTaskRequest(task_id=inv.human_task_id, answer=answer, note="ok"), metadata=T1
    )
    assert done.invocation.state == SUCCEEDED
    assert done.invocation.result.string_value == "done by hand"
    assert done.task.state == degrade_pb2.HUMAN_TASK_STATE_COMPLETED
    events = [
        m
        async for m in stub.WatchCallbacks(
            svc.WatchCallbacksRequest(platform="n8n", since_sequence=0, idle_timeout=dur(0.2)), metadata=T1
        )
    ]
    assert events[-1].WhichOneof("kind") == "end"
    await stub.SetDegradeMode(
        svc.SetDegradeModeRequest(platform="n8n", mode=degrade_pb2.DEGRADE_MODE_OFF), metadata=MANAGE
    )
    inv = (await invoke(stub, "n8n", "echo")).invocation
    assert inv.state == SUCCEEDED
    assert n8n.runs["mesh-invoke"] == 1


async def test_cancel_stops_an_async_invocation_and_a_late_callback_changes_nothing(
    stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n
) -> None:
    n8n.webhook("mesh-invoke", mode="on_received", callback_delay_s=60)
    await create(stub, "n8n", "acme", n8n_instance(n8n))
    inv = (await invoke(stub, "n8n", "echo", mode=ASYNC)).invocation
    assert inv.state == RUNNING
    cancelled = await stub.CancelInvocation(
        svc.CancelInvocationRequest(platform="n8n", invocation_id=inv.invocation_id, reason="user gave up"),
        metadata=T1,
    )
    assert cancelled.invocation.state == invocation_pb2.INVOCATION_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CancelInvocation(
            svc.CancelInvocationRequest(platform="n8n", invocation_id=inv.invocation_id), metadata=T1
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    raw, md = signed(
        n8n.callback_secret, {"invocation_id": inv.invocation_id, "ok": True, "result": 1}, "late-1"
    )
    resp = await webhook(stub, "acme", raw, md)
    assert resp.invocation_id == inv.invocation_id
    got = await stub.GetInvocation(
        svc.GetInvocationRequest(platform="n8n", invocation_id=inv.invocation_id), metadata=T1
    )
    assert got.invocation.state == invocation_pb2.INVOCATION_STATE_CANCELLED


# ---- webhooks ----------------------------------------------------------------------------------------


async def test_webhook_guard_rejects_bad_callbacks_records_nothing_and_completes_a_verified_one(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n, database_url: str
) -> None:
    n8n.webhook("mesh-invoke", mode="on_received", callback_delay_s=60)
    await create(stub, "n8n", "acme", n8n_instance(n8n))
    inv = (await invoke(stub, "n8n", "echo", mode=ASYNC, trace_id="trace-w")).invocation
    watch = stub.WatchCallbacks(svc.WatchCallbacksRequest(platform="n8n", max_events=1), metadata=T1)
    payload = {
        "invocation_id": inv.invocation_id,
        "ok": True,
        "result": {"answer": 42},
        "trace_id": "trace-w",
    }
    raw, md = signed(n8n.callback_secret, payload, "msg-1")
    before = await counts(database_url, mesh)
    tampered = raw.replace(b"42", b"43")
    cases = [
        (tampered, md, grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_INVALID"),
        (raw, md[:2], grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_MISSING"),
        (raw, (*md[:2], ("webhook-signature", "v1")), grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_SIGNATURE"),
        (
            *signed(n8n.callback_secret, payload, "msg-old", at=time.time() - 301),
            grpc.StatusCode.UNAUTHENTICATED,
            "TIMESTAMP_STALE",
        ),
        (
            *signed("whsec_" + "A" * 40, payload, "msg-1"),
            grpc.StatusCode.UNAUTHENTICATED,
            "SIGNATURE_INVALID",
        ),
        (
            *signed(n8n.callback_secret, b"[1,2]", "msg-arr"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
        (b"x" * (1024 * 1024 + 1), md, grpc.StatusCode.INVALID_ARGUMENT, "WEBHOOK_TOO_LARGE"),
    ]
    for body, headers, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await webhook(stub, "acme", body, headers)
        assert err.value.code() == code, reason
        assert error_info(err.value).reason == reason
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await webhook(stub, "nobody", raw, md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await counts(database_url, mesh) == before
    metrics = generate_latest(mesh.metrics).decode()
    assert 'agent_platform_signature_failure_total{platform="n8n",status="invalid"} 3.0' in metrics
    assert 'agent_platform_signature_failure_total{platform="n8n",status="stale"} 1.0' in metrics
    resp = await webhook(stub, "acme", raw, md)
    assert resp.invocation_id == inv.invocation_id
    assert not resp.duplicate
    got = await stub.GetInvocation(
        svc.GetInvocationRequest(platform="n8n", invocation_id=inv.invocation_id), metadata=T1
    )
    assert got.invocation.state == SUCCEEDED
    assert py(got.invocation.result) == {"answer": 42}
    again = await webhook(stub, "acme", raw, md)
    assert again.duplicate
    assert again.callback_id == "msg-1"
    events = [m async for m in watch]
    assert events[0].event.callback_id == "msg-1"
    assert events[0].event.trace_id == "trace-w"
    assert events[0].event.signature_status == callback_pb2.SIGNATURE_STATUS_VERIFIED
    assert events[0].event.invocation_state == SUCCEEDED
    assert events[-1].WhichOneof("kind") == "end"
    # Resuming after sequence 0 replays the stored event.
    replay = [
        m
        async for m in stub.WatchCallbacks(
            svc.WatchCallbacksRequest(platform="n8n", since_sequence=0, idle_timeout=dur(0.2)), metadata=T1
        )
    ]
    stored = await mesh.connectors.service.store.callbacks_after("t1", "n8n", "", 0, 10)  # type: ignore[union-attr]
    assert [e.callback_id for e in stored] == ["msg-1"]
    assert replay[-1].WhichOneof("kind") == "end"
    rows = await audit_rows(mesh)
    outcomes = [r["outcome"] for r in rows if r["action"] == "connector.webhook"]
    assert "SIGNATURE_INVALID" in outcomes
    assert "TIMESTAMP_STALE" in outcomes
    assert "REPLAYED" in outcomes
    assert any(r["action"] == "connector.callback" and r["outcome"] == "VERIFIED" for r in rows)


async def test_the_n8n_async_callback_arrives_signed_and_completes_the_invocation(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n
) -> None:
    """The fake n8n signs its callback as a real n8n Code node would; it reaches ReceiveWebhook here
    through a tiny HTTP relay standing in for the Envoy edge (the e2e tests use the real edge)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.fakes.coze import LocalServer

    async def relay(request: Request) -> JSONResponse:
        md = tuple((k, v) for k, v in request.headers.items() if k.startswith("webhook-"))
        resp = await webhook(stub, request.path_params["instance"], await request.body(), md)
        return JSONResponse(json_format.MessageToDict(resp))

    edge = LocalServer(
        Starlette(routes=[Route("/platform/connectors/n8n/webhooks/{instance}", relay, methods=["POST"])])
    )
    async with edge:
        n8n.webhook("mesh-invoke", mode="on_received", callback_delay_s=0.05)
        await create(
            stub,
            "n8n",
            "acme",
            n8n_instance(n8n, callback_url=f"{edge.base_url}/platform/connectors/n8n/webhooks/acme"),
        )
        inv = (await invoke(stub, "n8n", "echo", mode=ASYNC)).invocation
        sent = await n8n.wait_callbacks(1)
        assert sent[0].status == 200

        async def finished() -> bool:
            got = await stub.GetInvocation(
                svc.GetInvocationRequest(platform="n8n", invocation_id=inv.invocation_id), metadata=T1
            )
            return got.invocation.state == SUCCEEDED

        await wait_until(finished)


async def test_a_failing_callback_is_retried_from_the_outbox_alerts_and_is_processed_once(
    mesh: Mesh, stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n, caplog: pytest.LogCaptureFixture
) -> None:
    assert mesh.connectors is not None
    intake = mesh.connectors.webhooks
    mesh.connectors.service.config = type(mesh.connectors.service.config)(
        callback_alert_after=2, callback_max_attempts=10
    )
    n8n.webhook("mesh-invoke", mode="on_received", callback_delay_s=60)
    await create(stub, "n8n", "acme", n8n_instance(n8n))
    inv = (await invoke(stub, "n8n", "echo", mode=ASYNC)).invocation
    real_apply = intake._apply
    failures = {"left": 2}

    async def flaky(tenant: str, record: dict[str, Any], stored: Any = None) -> str:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("downstream store unavailable")
        return await real_apply(tenant, record, stored)

    intake._apply = flaky  # type: ignore[method-assign]
    raw, md = signed(
        n8n.callback_secret, {"invocation_id": inv.invocation_id, "ok": True, "result": "r"}, "m-out"
    )
    resp = await webhook(stub, "acme", raw, md)
    assert resp.invocation_id == ""
    assert not resp.duplicate
    store = mesh.connectors.service.store
    for _ in range(2):  # the outbox retries when due (here forced, instead of waiting for the backoff)
        engine = store.engine
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(outbox_t).values(next_attempt_ms=0).where(outbox_t.c.state == "pending")
            )
        for item_id in await store.due_outbox(int(time.time() * 1000)):
            await intake.process(item_id)
    got = await stub.GetInvocation(
        svc.GetInvocationRequest(platform="n8n", invocation_id=inv.invocation_id), metadata=T1
    )
    assert got.invocation.state == SUCCEEDED
    assert "failed 2 times" in caplog.text
    assert len(await store.callbacks_after("t1", "n8n", "", 0, 10)) == 1
    assert await store.outbox_counts() == {"done": 1}
    metrics = generate_latest(mesh.metrics).decode()
    assert 'agent_platform_callback_failure_total{platform="n8n",reason="processing"} 2.0' in metrics


async def test_replays_are_dropped_across_two_mesh_processes(
    tmp_path: Path, database_url: str, n8n: FakeN8n
) -> None:
    """Two mesh processes on one database (and Redis when the test run has one) share replay memory."""
    from tests.conftest import REDIS_URL

    settings = mesh_settings(
        tmp_path, database_url, redis_url=REDIS_URL if database_url.startswith("postgresql") else ""
    )
    first = await start_mesh(settings)
    second = await start_mesh(settings)
    try:
        async with (
            grpc.aio.insecure_channel(first.address) as c1,
            grpc.aio.insecure_channel(second.address) as c2,
        ):
            s1, s2 = svc_grpc.ConnectorServiceStub(c1), svc_grpc.ConnectorServiceStub(c2)
            n8n.webhook("mesh-invoke", mode="on_received", callback_delay_s=60)
            await create(s1, "n8n", "acme", n8n_instance(n8n))
            inv = (await invoke(s1, "n8n", "echo", mode=ASYNC)).invocation
            # A fresh id: Redis outlives test runs, and its memory is exactly what is being tested.
            msg_id = f"twice-{time.time_ns()}"
            raw, md = signed(n8n.callback_secret, {"invocation_id": inv.invocation_id, "ok": True}, msg_id)
            answers = await asyncio.gather(webhook(s1, "acme", raw, md), webhook(s2, "acme", raw, md))
            assert sorted(a.duplicate for a in answers) == [False, True]
            assert len(await first.connectors.service.store.callbacks_after("t1", "n8n", "", 0, 10)) == 1  # type: ignore[union-attr]
    finally:
        await second.stop(0)
        await first.stop(0)


# ---- credentials ---------------------------------------------------------------------------------------


async def test_chaos_credential_expiry_blocks_calls_and_the_previous_version_takes_over(
    stub: svc_grpc.ConnectorServiceStub, coze: FakeCoze
) -> None:
    inst = coze_instance(coze, allow_previous_credential=True)
    await create(stub, "coze", "cz", inst)
    coze.tokens["pat_short"] = None
    short = connector_pb2.CredentialInput()
    short.api_key.token = "pat_short"
    short.api_key.expire_time.CopyFrom(ts(time.time() + 1.0))
    rotated = await stub.RotateCredential(
        svc.RotateCredentialRequest(platform="coze", instance_id="cz", credential_input=short),
        metadata=MANAGE,
    )
    assert rotated.credential.status == connector_pb2.CREDENTIAL_STATUS_EXPIRING
    assert rotated.credential.previous_version == 1
    assert (await invoke(stub, "coze", "summarize")).invocation.state == SUCCEEDED
    assert coze.requests_to("/v1/workflow/run")[-1].headers["authorization"] == "Bearer pat_short"
    await asyncio.sleep(1.1)
    # Expired: the previous version (still valid) is used.
    assert (await invoke(stub, "coze", "summarize")).invocation.state == SUCCEEDED
    assert coze.requests_to("/v1/workflow/run")[-1].headers["authorization"] == f"Bearer {PAT}"
    got = await stub.GetConnectorInstance(
        svc.GetConnectorInstanceRequest(platform="coze", instance_id="cz"), metadata=T1
    )
    assert got.instance.credential.status == connector_pb2.CREDENTIAL_STATUS_EXPIRED
    # Without a usable previous version the call is blocked with a clear error.
    await stub.UpdateConnectorInstance(
        svc.UpdateConnectorInstanceRequest(
            platform="coze",
            instance_id="cz",
            instance=connector_pb2.ConnectorInstance(allow_previous_credential=False),
            update_mask=field_mask_pb2.FieldMask(paths=["allow_previous_credential"]),
        ),
        metadata=MANAGE,
    )
    runs = sum(coze.runs.values())
    inv = (await invoke(stub, "coze", "summarize")).invocation
    assert inv.state == FAILED
    assert inv.error.code == "CREDENTIAL_EXPIRED"
    assert sum(coze.runs.values()) == runs


async def test_oauth_tokens_refresh_with_rotating_refresh_tokens_and_jwt_apps_mint_tokens(
    stub: svc_grpc.ConnectorServiceStub,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    async with FakeCoze(
        tokens=set(),
        jwt_app_id="app-1",
        jwt_public_keys={"kid-1": key.public_key()},
        oauth_clients={"cli": "s3cret"},
    ) as coze:
        jwt_inst = coze_instance(coze)
        jwt_inst.credential_input.coze_jwt.CopyFrom(
            connector_pb2.CozeJwtCredential(app_id="app-1", public_key_id="kid-1", private_key_pem=pem)
        )
        created = await create(stub, "coze", "jwt", jwt_inst)
        assert created.credential.kind == connector_pb2.CREDENTIAL_KIND_COZE_JWT
        assert created.credential.status == connector_pb2.CREDENTIAL_STATUS_ACTIVE
        assert created.credential.HasField("expire_time")
        assert (await invoke(stub, "coze", "summarize", instance_id="jwt")).invocation.state == SUCCEEDED
        assert pem not in str(created)
        # OAuth: an access token about to expire is refreshed on use; the refresh token rotates.
        refresh = coze.issue_refresh_token("cli")
        oauth_inst = coze_instance(coze)
        oauth_inst.credential_input.oauth.CopyFrom(
            connector_pb2.OAuthCredential(
                access_token="expired-access",
                refresh_token=refresh,
                client_id="cli",
                client_secret="s3cret",
                expire_time=ts(time.time() + 5),
            )
        )
        created = await create(stub, "coze", "oauth", oauth_inst)
        assert created.credential.has_refresh_token
        inv = (await invoke(stub, "coze", "summarize", instance_id="oauth")).invocation
        assert inv.state == SUCCEEDED
        got = await stub.GetConnectorInstance(
            svc.GetConnectorInstanceRequest(platform="coze", instance_id="oauth"), metadata=T1
        )
        assert got.instance.credential.version == 2  # refreshed and stored as a new version
        assert refresh not in coze.refresh_tokens  # the old refresh token died on use
        rotated = await stub.RotateCredential(
            svc.RotateCredentialRequest(platform="coze", instance_id="oauth"), metadata=MANAGE
        )
        assert rotated.credential.version == 3
        versions = await stub.ListConfigVersions(
            svc.ListConfigVersionsRequest(platform="coze", instance_id="oauth"), metadata=T1
        )
        assert versions.versions[1].actor == "system"


# ---- flags and configuration files --------------------------------------------------------------------


async def test_flags_and_declared_instances_load_from_files_and_reload_without_restart(
    tmp_path: Path, database_url: str, n8n: FakeN8n, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "config" / "platform" / "connectors").mkdir(parents=True)
    (root / "config" / "feature_flags").mkdir(parents=True)
    flags = root / "config" / "feature_flags" / "platform_connectors.yaml"
    flags.write_text(
        "flags:\n"
        "  - name: agent-platform-connectors\n    enabled: true\n    rollout_percent: 0\n"
        "    tenant_allowlist: [t1]\n"
        "  - name: platform-webhook-guard\n    enabled: true\n    rollout_percent: 100\n"
    )
    monkeypatch.setenv("ACME_N8N_HOOK_TOKEN", HOOK_TOKEN)
    monkeypatch.setenv("ACME_N8N_WEBHOOK_SECRET", n8n.callback_secret)
    declared = root / "config" / "platform" / "connectors" / "acme.yaml"
    declared.write_text(
        "instances:\n"
        "  - tenant: t1\n    platform: n8n\n    instance_id: declared\n"
        f"    base_url: {n8n.base_url}\n    enabled: true\n"
        "    workflow_ids: {echo: mesh-invoke}\n    default_platform_user_id: u1\n"
        "    credential:\n      secret_headers_env: {X-Mesh-Token: ACME_N8N_HOOK_TOKEN}\n"
        "      webhook_secrets_env: [ACME_N8N_WEBHOOK_SECRET]\n"
    )
    m = await start_mesh(mesh_settings(tmp_path, database_url, config_root=root, connector_config_poll_s=0.1))
    try:
        async with grpc.aio.insecure_channel(m.address) as ch:
            stub = svc_grpc.ConnectorServiceStub(ch)
            assert (await invoke(stub, "n8n", "echo")).invocation.state == SUCCEEDED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await invoke(stub, "n8n", "echo", md=(("x-tenant-id", "t2"),))
            assert error_info(err.value).reason == "FEATURE_DISABLED"
            listed = await stub.ListFeatureFlags(svc.ListFeatureFlagsRequest(), metadata=T1)
            assert [(f.name, f.enabled_for_caller) for f in listed.flags] == [
                ("agent-platform-connectors", True),
                ("platform-webhook-guard", True),
            ]
            # A bad file is rejected with its name, field and reason; the running config stays.
            flags.write_text("flags:\n  - name: agent-platform-connectors\n    rollout_percent: 250\n")
            assert m.connectors is not None
            assert m.connectors.watcher is not None

            async def rejected() -> bool:
                return "rollout_percent" in m.connectors.watcher.last_error  # type: ignore[union-attr]

            await wait_until(rejected)
            assert "platform_connectors.yaml" in m.connectors.watcher.last_error
            assert (await invoke(stub, "n8n", "echo")).invocation.state == SUCCEEDED
            # A good change applies without a restart: the allowlist now has t2 too (but t2 has no instance).
            flags.write_text("flags:\n  - name: agent-platform-connectors\n    enabled: false\n")

            async def off() -> bool:
                try:
                    await invoke(stub, "n8n", "echo")
                except grpc.aio.AioRpcError as e:
                    return error_info(e).reason == "FEATURE_DISABLED"
                return False

            await wait_until(off)
            # Removing the declaration disables the instance (versioned, not deleted).
            declared.unlink()

            async def disabled() -> bool:
                got = await stub.GetConnectorInstance(
                    svc.GetConnectorInstanceRequest(platform="n8n", instance_id="declared"), metadata=T1
                )
                return not got.instance.enabled

            await wait_until(disabled)
    finally:
        await m.stop(0)


async def test_n8n_workflows_and_health_through_its_rest_api(
    stub: svc_grpc.ConnectorServiceStub, n8n: FakeN8n
) -> None:
    n8n.add_workflow("Mesh invoke", webhook_paths=("mesh-invoke",), tags=("mesh",))
    n8n.add_workflow("Dormant", active=False)
    await create(stub, "n8n", "acme", n8n_instance(n8n))
    got = await stub.ListPlatformWorkflows(
        svc.ListPlatformWorkflowsRequest(platform="n8n", instance_id="acme", active_only=True), metadata=T1
    )
    assert [(w.name, list(w.aliases), list(w.webhook_paths)) for w in got.workflows] == [
        ("Mesh invoke", ["echo"], ["mesh-invoke"])
    ]
    health = await stub.CheckPlatformHealth(
        svc.CheckPlatformHealthRequest(platform="n8n", instance_id="acme"), metadata=T1
    )
    assert health.message == "ok"
    assert health.credential_status == connector_pb2.CREDENTIAL_STATUS_ACTIVE
    n8n.api_key = "another"
    health = await stub.CheckPlatformHealth(
        svc.CheckPlatformHealthRequest(platform="n8n", instance_id="acme"), metadata=T1
    )
    assert health.error.error_class == invocation_pb2.ERROR_CLASS_AUTH
