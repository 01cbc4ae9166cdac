"""The connector REST paths through a real Envoy edge: an n8n instance whose signed callbacks come back
through the edge, the webhook guard, human degradation and recovery, Coze streaming, the callback watch."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import sqlalchemy as sa

from servers.auth.store import audit_log_t
from tests.e2e.conftest import Edge
from tests.fakes.coze import FakeCoze
from tests.fakes.n8n import ON_RECEIVED, FakeN8n

pytestmark = pytest.mark.envoy

MANAGE = {"x-tenant-id": "t1", "x-scopes": "agent.connector.manage", "x-principal": "alice"}
N8N_TOKEN = "tenant-a-token"  # the fake's webhook header auth
COZE_WORKFLOW = "7400000000000000123"


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


async def _invocation(edge: Edge, platform: str, invocation_id: str) -> dict[str, Any]:
    r = await edge.http.get(f"/platform/connectors/{platform}/invocations/{invocation_id}", headers=MANAGE)
    assert r.status_code == 200, r.text
    return dict(r.json()["invocation"])


async def _until_state(edge: Edge, platform: str, invocation_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        inv = await _invocation(edge, platform, invocation_id)
        if inv["state"] == state or time.monotonic() > deadline:
            assert inv["state"] == state, inv
            return inv
        await asyncio.sleep(0.05)


async def _audit_rows(edge: Edge) -> list[sa.Row[Any]]:
    connectors = edge.mesh.connectors
    assert connectors is not None
    await connectors.audit_log.flush()
    async with connectors.service.store.engine.connect() as conn:
        q = sa.select(audit_log_t).where(audit_log_t.c.action.like("connector.%")).order_by(audit_log_t.c.id)
        return list((await conn.execute(q)).all())


async def _invoke(edge: Edge, platform: str, **body: Any) -> dict[str, Any]:
    r = await edge.http.post(f"/platform/connectors/{platform}/invoke", json=body, headers=MANAGE)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_n8n_through_the_edge_callbacks_guard_human_degradation_and_recovery(edge: Edge) -> None:
    async with FakeN8n() as n8n:
        n8n.webhook("mesh-invoke", mode=ON_RECEIVED, result=lambda data: {"answer": data})
        secret = n8n.callback_secret

        # -- an instance: the answer names the sealed secret, never the secret itself --
        created = await edge.http.post(
            "/platform/connectors/n8n/instances",
            json={
                "instance_id": "n8n-main",
                "reason": "e2e",
                "instance": {
                    "display_name": "n8n main",
                    "base_url": n8n.base_url,
                    "workflow_ids": {"echo": "mesh-invoke"},
                    "default_platform_user_id": "u1",
                    "enabled": True,
                    "credential_input": {
                        "secret_headers": {"X-Mesh-Token": N8N_TOKEN},
                        "webhook_secrets": [secret],
                    },
                },
            },
            headers=MANAGE,
        )
        assert created.status_code == 200, created.text
        instance = created.json()["instance"]
        assert instance["secret_ref"]
        assert instance["tenant_id"] == "t1"
        assert instance["credential"]["webhook_secret_count"] == 1
        assert "credential_input" not in instance
        for leaked in (N8N_TOKEN, secret, secret.removeprefix("whsec_")):
            assert leaked not in created.text

        # -- ASYNC: n8n calls back through Envoy, signed, as raw bytes --
        started = await _invoke(
            edge,
            "n8n",
            workflow_id="echo",
            context={"q": "hi"},
            mode="INVOCATION_MODE_ASYNC",
            idempotency_key="async-1",
        )
        inv_id = started["invocation"]["invocation_id"]
        assert started["invocation"]["state"] in ("INVOCATION_STATE_PENDING", "INVOCATION_STATE_RUNNING")
        [call] = [r for r in n8n.requests if r.path == "/webhook/mesh-invoke"]
        callback_url = f"{edge.envoy.url}/platform/connectors/n8n/webhooks/n8n-main"
        assert call.body["callback_url"] == callback_url
        assert call.body["mode"] == "async"
        assert call.headers["x-mesh-token"] == N8N_TOKEN
        [sent] = await n8n.wait_callbacks(1)
        assert sent.url == callback_url
        assert sent.status == 200, sent.response
        answered = json.loads(sent.response)
        assert answered["invocation_id"] == inv_id
        assert answered.get("duplicate", False) is False
        done = await _until_state(edge, "n8n", inv_id, "INVOCATION_STATE_SUCCEEDED")
        assert done["result"] == {"answer": {"q": "hi"}}

        # -- every step is audited --
        rows = await _audit_rows(edge)
        actions = {(r.action, r.outcome) for r in rows}
        assert {
            ("connector.instance.create", "OK"),
            ("connector.invoke", "ACCEPTED"),
            ("connector.callback", "VERIFIED"),
        } <= actions, actions
        [create_row] = [r for r in rows if r.action == "connector.instance.create"]
        created = (create_row.tenant_id, create_row.actor, create_row.resource)
        assert created == ("t1", "alice", "n8n/n8n-main")
        callback_rows = [r for r in rows if r.action == "connector.callback"]
        assert json.loads(callback_rows[0].summary)["invocation_id"] == inv_id
        for r in rows:
            for leaked in (N8N_TOKEN, secret):
                assert leaked not in r.summary

        # -- the guard: a body changed in transit is refused, a replayed id is acknowledged only --
        signed = sent.body
        altered = signed.replace(b'"ok": true', b'"ok": false')
        assert altered != signed
        tampered = await n8n.send_callback(callback_url, signed, sent_body=altered)
        assert tampered.status == 401, tampered.response
        assert json.loads(tampered.response)["code"] == 16
        replayed = await n8n.send_callback(
            callback_url,
            signed,
            msg_id=sent.headers["webhook-id"],
            timestamp=int(sent.headers["webhook-timestamp"]),
        )
        assert replayed.status == 200, replayed.response
        assert json.loads(replayed.response)["duplicate"] is True
        assert (await _invocation(edge, "n8n", inv_id))["result"] == {"answer": {"q": "hi"}}
        guarded = [r.outcome for r in await _audit_rows(edge) if r.action == "connector.webhook"]
        assert len(guarded) == 2, guarded
        assert guarded[1] == "REPLAYED", guarded

        # -- degraded to HUMAN: a SYNC call waits for a person, who answers it --
        r = await edge.http.post(
            "/platform/connectors/n8n/degrade",
            json={"mode": "DEGRADE_MODE_HUMAN", "reason": "n8n maintenance", "timeout": "3600s"},
            headers=MANAGE,
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"]["mode"] == "DEGRADE_MODE_HUMAN"
        runs_before = n8n.runs["mesh-invoke"]
        waiting = (await _invoke(edge, "n8n", workflow_id="echo", context={"q": "who?"}))["invocation"]
        assert waiting["state"] == "INVOCATION_STATE_AWAITING_HUMAN"
        assert waiting["degrade_mode"] == "DEGRADE_MODE_HUMAN"
        task_id = waiting["human_task_id"]
        assert task_id
        assert n8n.runs["mesh-invoke"] == runs_before

        listed = await edge.http.get("/platform/connectors/human-tasks", headers=MANAGE)
        assert listed.status_code == 200, listed.text
        [task] = listed.json()["tasks"]
        assert task["task_id"] == task_id
        assert task["invocation_id"] == waiting["invocation_id"]
        assert task["state"] == "HUMAN_TASK_STATE_OPEN"
        assert task["context"] == {"q": "who?"}
        claimed = await edge.http.post(
            f"/platform/connectors/human-tasks/{task_id}/claim", json={}, headers=MANAGE
        )
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["task"]["state"] == "HUMAN_TASK_STATE_CLAIMED"
        assert claimed.json()["task"]["assignee"] == "alice"
        other = await edge.http.post(
            f"/platform/connectors/human-tasks/{task_id}/claim",
            json={},
            headers={**MANAGE, "x-principal": "bob"},
        )
        assert other.status_code == 400, other.text  # FAILED_PRECONDITION
        completed = await edge.http.post(
            f"/platform/connectors/human-tasks/{task_id}/complete",
            json={"answer": {"who": "Ada"}, "note": "answered by hand"},
            headers=MANAGE,
        )
        assert completed.status_code == 200, completed.text
        assert completed.json()["task"]["state"] == "HUMAN_TASK_STATE_COMPLETED"
        assert completed.json()["invocation"]["state"] == "INVOCATION_STATE_SUCCEEDED"
        answered_inv = await _invocation(edge, "n8n", waiting["invocation_id"])
        assert answered_inv["state"] == "INVOCATION_STATE_SUCCEEDED"
        assert answered_inv["result"] == {"who": "Ada"}

        # -- recovery: the platform is called again --
        r = await edge.http.post(
            "/platform/connectors/n8n/degrade",
            json={"mode": "DEGRADE_MODE_OFF", "reason": "n8n is back"},
            headers=MANAGE,
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"]["mode"] == "DEGRADE_MODE_OFF"
        n8n.webhook("mesh-invoke", result=lambda data: {"answer": data})  # now answers synchronously
        back = (await _invoke(edge, "n8n", workflow_id="echo", context={"q": "again"}))["invocation"]
        assert back["state"] == "INVOCATION_STATE_SUCCEEDED", back
        assert back["result"] == {"answer": {"q": "again"}}
        assert back["degrade_mode"] == "DEGRADE_MODE_OFF"
        assert n8n.runs["mesh-invoke"] == runs_before + 1

        history = await edge.http.get("/platform/connectors/n8n/degrade/history", headers=MANAGE)
        assert history.status_code == 200, history.text
        states = history.json()["states"]
        assert [s["mode"] for s in states] == ["DEGRADE_MODE_OFF", "DEGRADE_MODE_HUMAN"]
        assert [s["reason"] for s in states] == ["n8n is back", "n8n maintenance"]
        assert all(s["actor"] == "alice" for s in states)
        state = await edge.http.get("/platform/connectors/n8n/degrade", headers=MANAGE)
        assert state.json()["state"]["mode"] == "DEGRADE_MODE_OFF"

        # -- the callback events replay over REST as NDJSON ending with `end` --
        # Sequence 1 is n8n's callback, 2 the human answer: replay after 1, one event.
        watched = await edge.http.get(
            "/platform/connectors/n8n/callbacks/watch",
            params={"since_sequence": 1, "max_events": 1},
            headers=MANAGE,
        )
        assert watched.status_code == 200, watched.text
        events = _lines(watched.text)
        assert len(events) == 2, events
        event = events[0]["event"]
        assert event["invocation_id"] == waiting["invocation_id"]
        assert event["signature_scheme"] == "human-task"
        assert event["invocation_state"] == "INVOCATION_STATE_SUCCEEDED"
        assert events[-1]["end"]["reason"] == "MAX_EVENTS"

        # -- the callbacks of the whole test, as ListInvocations sees them --
        invs = await edge.http.get("/platform/connectors/n8n/invocations", headers=MANAGE)
        assert invs.status_code == 200, invs.text
        assert [i["invocation_id"] for i in invs.json()["invocations"]] == [
            back["invocation_id"],
            waiting["invocation_id"],
            inv_id,
        ]


async def test_callback_watch_delivers_a_live_callback_over_rest(edge: Edge) -> None:
    async with FakeN8n() as n8n:
        n8n.webhook("mesh-invoke", mode=ON_RECEIVED, callback_delay_s=0.5)
        created = await edge.http.post(
            "/platform/connectors/n8n/instances",
            json={
                "instance_id": "n8n-live",
                "instance": {
                    "base_url": n8n.base_url,
                    "workflow_ids": {"echo": "mesh-invoke"},
                    "default_platform_user_id": "u1",
                    "enabled": True,
                    "credential_input": {
                        "secret_headers": {"X-Mesh-Token": N8N_TOKEN},
                        "webhook_secrets": [n8n.callback_secret],
                    },
                },
            },
            headers=MANAGE,
        )
        assert created.status_code == 200, created.text

        async def watch() -> list[dict[str, Any]]:
            r = await edge.http.get(
                "/platform/connectors/n8n/callbacks/watch",
                params={"since_sequence": 0, "max_events": 1, "idle_timeout": "10s"},
                headers=MANAGE,
            )
            assert r.status_code == 200, r.text
            return _lines(r.text)

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.sleep(0.3)  # the watch subscribes before the callback (sent 0.5 s after the call)
            started = await _invoke(
                edge, "n8n", workflow_id="echo", context={"q": 1}, mode="INVOCATION_MODE_ASYNC"
            )
            events = await asyncio.wait_for(watcher, 15)
        finally:
            watcher.cancel()
        assert [list(e) for e in events] == [["event"], ["end"]], events
        assert events[0]["event"]["invocation_id"] == started["invocation"]["invocation_id"]
        assert events[0]["event"]["signature_status"] == "SIGNATURE_STATUS_VERIFIED"
        assert events[0]["event"]["result"] == {"echo": {"q": 1}}
        assert events[1]["end"]["reason"] == "MAX_EVENTS"


async def test_coze_streams_ndjson_chunks_then_final_then_end(edge: Edge) -> None:
    async with FakeCoze(tokens={"pat_good"}) as coze:
        coze.workflow(COZE_WORKFLOW, output=lambda params: {"reply": f"hello {params.get('name')}"})
        created = await edge.http.post(
            "/platform/connectors/coze/instances",
            json={
                "instance_id": "coze-main",
                "instance": {
                    "base_url": coze.base_url,
                    "workflow_ids": {"greet": COZE_WORKFLOW},
                    "default_platform_user_id": "u1",
                    "enabled": True,
                    "credential_input": {"api_key": {"token": "pat_good"}},
                },
            },
            headers=MANAGE,
        )
        assert created.status_code == 200, created.text
        assert "pat_good" not in created.text
        assert created.json()["instance"]["credential"]["kind"] == "CREDENTIAL_KIND_API_KEY"

        lines: list[dict[str, Any]] = []
        async with edge.http.stream(
            "POST",
            "/platform/connectors/coze/invoke/stream",
            json={"workflow_id": "greet", "context": {"name": "Ada"}},
            headers=MANAGE,
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.strip():
                    lines.append(json.loads(line))
        kinds = [next(iter(m)) for m in lines]
        assert kinds[-2:] == ["final", "end"], kinds
        assert kinds[:-2] == ["chunk"] * 3, kinds
        chunks = [m["chunk"] for m in lines[:-2]]
        assert [int(c.get("sequence", 0)) for c in chunks] == list(range(len(chunks)))
        assert "".join(c.get("text", "") for c in chunks[:2]) == "hello"
        final = lines[-2]["final"]
        assert final["state"] == "INVOCATION_STATE_SUCCEEDED"
        assert final["result"] == {"reply": "hello Ada"}
        assert lines[-1]["end"]["reason"] == "SUCCEEDED"
        assert coze.runs[COZE_WORKFLOW] == 1
        assert coze.requests_to("/v1/workflow/stream_run")[0].headers["authorization"] == "Bearer pat_good"
