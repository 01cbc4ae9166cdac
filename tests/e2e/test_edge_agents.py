"""The agent REST paths of seed 002 through a real Envoy edge: a REST-only agent, streamed run output."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.e2e.conftest import Edge

pytestmark = pytest.mark.envoy
T1 = {"x-tenant-id": "t1"}


async def _register(edge: Edge) -> dict[str, Any]:
    manifest = {
        "agent_id": "com.powerx.agent.sales_copilot",
        "display_name": "Sales Copilot",
        "version": "1.2.0",
        "author": "PowerX Team",
        "skills": ["crm.lead.fetch", "ai.text.generate"],
        "endpoints": [
            {"transport": "TRANSPORT_AGENT", "uri": "agent://session.sales_copilot", "protocol": "ws"}
        ],
        "runtime": {"tenant_scope": "multi", "heartbeat_interval": "10s", "max_concurrency": 4},
    }
    r = await edge.http.post("/api/v1/agents/register", json=manifest, headers=T1)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_rest_only_agent_runs_a_task_streamed_to_a_rest_subscriber(edge: Edge) -> None:
    reg = await _register(edge)
    assert reg["agent_token"].startswith("agt_")
    assert reg["heartbeat_uri"] == "/api/v1/agents/heartbeat"
    auth = {"authorization": f"Bearer {reg['agent_token']}"}
    agent_id = "com.powerx.agent.sales_copilot"
    beat = await edge.http.post(
        "/api/v1/agents/heartbeat",
        json={
            "agent_id": agent_id,
            "session_id": reg["session_id"],
            "load": {"cpu_usage": 0.2, "active_tasks": 0},
        },
        headers=auth,
    )
    assert beat.status_code == 200, beat.text
    assert beat.json()["state"] == "AGENT_STATE_IDLE"
    task = {
        "task": {
            "goal": "生成销售摘要",
            "skill": "crm.lead.fetch",
            "inputs": {"lead": 42},
            "grants": ["crm.lead.fetch"],
        }
    }
    assigned = await edge.http.post(f"/api/v1/agents/{agent_id}/assign", json=task, headers=T1)
    assert assigned.status_code == 200, assigned.text
    run_id = assigned.json()["run"]["run_id"]

    lines: list[dict[str, Any]] = []

    async def subscribe() -> None:
        async with edge.http.stream("GET", f"/api/v1/runs/{run_id}/output", headers=T1) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.strip():
                    lines.append(json.loads(line))

    subscriber = asyncio.create_task(subscribe())
    pulled = await edge.http.post(
        f"/api/v1/agents/{agent_id}/assignments/pull",
        json={"agent_id": agent_id, "session_id": reg["session_id"], "wait": "5s"},
        headers=auth,
    )
    assert pulled.status_code == 200, pulled.text
    assert [r["run_id"] for r in pulled.json()["runs"]] == [run_id]
    for word in ("Ada ", "is ", "hot"):
        r = await edge.http.post(
            f"/api/v1/runs/{run_id}/output", json={"events": [{"token": {"text": word}}]}, headers=auth
        )
        assert r.status_code == 200, r.text
    done = await edge.http.post(
        f"/api/v1/runs/{run_id}/complete", json={"result": {"score": 0.9}}, headers=auth
    )
    assert done.status_code == 200, done.text
    assert done.json()["run"]["state"] == "RUN_STATE_SUCCEEDED"
    await asyncio.wait_for(subscriber, 10)
    tokens = [m["event"]["token"]["text"] for m in lines if "event" in m and "token" in m["event"]]
    assert tokens == ["Ada ", "is ", "hot"]
    assert lines[-2]["event"]["result"] == {"state": "RUN_STATE_SUCCEEDED", "result": {"score": 0.9}}
    assert lines[-1]["end"]["reason"] == "COMPLETED"
    assert lines[-1]["end"]["status"].get("code", 0) == 0
    # A late REST subscriber gets the same output.
    late = await edge.http.get(f"/api/v1/runs/{run_id}/output", headers=T1)
    late_lines = [json.loads(x) for x in late.text.splitlines() if x.strip()]
    assert late_lines[:-1] == lines[:-1]

    listed = await edge.http.get("/api/v1/agents", headers=T1)
    assert [a["agent_id"] for a in listed.json()["agents"]] == [agent_id]
    got = await edge.http.get(f"/api/v1/agents/{agent_id}", headers=T1)
    assert got.json()["agent"]["stats"]["run_count"] == "1"
    off = await edge.http.post(
        f"/api/v1/agents/{agent_id}/disconnect", json={"reason": "maintenance"}, headers=T1
    )
    assert off.json()["agent"]["state"] == "AGENT_STATE_DISCONNECTED"
    gone = await edge.http.delete(f"/api/v1/agents/{agent_id}", headers=T1)
    assert gone.json()["agent"]["state"] == "AGENT_STATE_RETIRED"


async def test_agent_rest_errors_are_json_statuses(edge: Edge) -> None:
    r = await edge.http.post("/api/v1/agents/register", json={"agent_id": "Bad Id"}, headers=T1)
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 3
    fields = {
        v["field"]
        for d in body["details"]
        if d["@type"].endswith("BadRequest")
        for v in d["field_violations"]
    }
    assert {"agent.agent_id", "agent.version"} <= fields
    r = await edge.http.post(
        "/api/v1/agents/heartbeat",
        json={"agent_id": "a", "session_id": "s"},
        headers={"authorization": "Bearer agt_forged.x"},
    )
    assert r.status_code == 401
    assert r.json()["details"][0]["reason"] == "AGENT_TOKEN_INVALID"
    r = await edge.http.get("/api/v1/agents/com.acme.nobody", headers=T1)
    assert r.status_code == 404
    r = await edge.http.post(
        "/api/v1/agents/register", content=b"{not json", headers={**T1, "content-type": "application/json"}
    )
    assert r.status_code == 400
