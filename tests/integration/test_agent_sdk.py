"""The agent SDK against a real mesh: runs, output, errors, cancellation, agent-to-agent calls, reconnects.

Runs are created and watched by a separate client over a real channel (CreateRun, StreamRunOutput,
GetRun), as users and workflows do; the SDK agents run in-process, and the example agent as a process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, error_details_pb2

from powerx.agent.v1 import agent_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import agent_service_pb2_grpc as svc_grpc
from sdk import (
    Agent,
    AgentError,
    AgentExistsError,
    AgentRevokedError,
    CallDepthExceededError,
    TaskContext,
    TaskError,
    ToolNotGrantedError,
)
from servers.mesh import Mesh, start_mesh
from tests.conftest import mesh_settings

ROOT = Path(__file__).resolve().parents[2]
TENANT = "t1"
T1 = (("x-tenant-id", TENANT),)
LIVE = {agent_pb2.AGENT_STATE_IDLE, agent_pb2.AGENT_STATE_ACTIVE, agent_pb2.AGENT_STATE_BUSY}
SUCCEEDED = run_pb2.RUN_STATE_SUCCEEDED
FAILED = run_pb2.RUN_STATE_FAILED
CANCELLED = run_pb2.RUN_STATE_CANCELLED


@pytest.fixture
async def mesh(tmp_path: Path, database_url: str) -> AsyncIterator[Mesh]:
    m = await start_mesh(mesh_settings(tmp_path, database_url))
    try:
        yield m
    finally:
        await m.stop(0)


@pytest.fixture
async def runs(mesh: Mesh) -> AsyncIterator[svc_grpc.AgentServiceStub]:
    """The agent service as a user sees it (no agent token)."""
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield svc_grpc.AgentServiceStub(ch)


def make_agent(address: str, agent_id: str, **kw: Any) -> Agent:
    options: dict[str, Any] = {
        "heartbeat_interval_s": 1.0,
        "stop_grace_s": 0.5,
        "connect_timeout_s": 10.0,
        **kw,
    }
    return Agent(agent_id, version="1.0.0", tenant_id=TENANT, mesh=address, **options)


def echo_agent(address: str, agent_id: str = "com.test.echo", skill: str = "echo.words", **kw: Any) -> Agent:
    """An agent whose skill streams the words of the goal back and returns how many there were."""
    agent = make_agent(address, agent_id, **kw)

    @agent.skill(skill)
    async def words(task: TaskContext) -> dict[str, Any]:
        parts = task.goal.split()
        for word in parts:
            await task.token(word + " ")
        return {"words": len(parts), "agent": agent.agent_id, "attempt": task.attempt}

    return agent


async def create_run(stub: svc_grpc.AgentServiceStub, skill: str, goal: str = "", **task: Any) -> run_pb2.Run:
    req = svc.CreateRunRequest(task=run_pb2.Task(skill=skill, goal=goal, **task))
    resp = await stub.CreateRun(req, metadata=T1, timeout=10)
    return resp.run


async def follow(stub: svc_grpc.AgentServiceStub, run_id: str) -> tuple[list[run_pb2.RunEvent], Any]:
    """Every output event of a run, and the stream's end."""
    events: list[run_pb2.RunEvent] = []
    async for msg in stub.StreamRunOutput(svc.StreamRunOutputRequest(run_id=run_id), metadata=T1, timeout=30):
        if msg.HasField("end"):
            return events, msg.end
        events.append(msg.event)
    raise AssertionError("the output stream ended without an end message")


async def get_run(stub: svc_grpc.AgentServiceStub, run_id: str) -> run_pb2.Run:
    resp = await stub.GetRun(svc.GetRunRequest(run_id=run_id), metadata=T1, timeout=10)
    return resp.run


async def get_agent(stub: svc_grpc.AgentServiceStub, agent_id: str) -> agent_pb2.Agent:
    resp = await stub.GetAgent(svc.GetAgentRequest(agent_id=agent_id), metadata=T1, timeout=10)
    return resp.agent


def tokens(events: list[run_pb2.RunEvent]) -> list[str]:
    return [e.token.text for e in events if e.HasField("token")]


def result_of(run: run_pb2.Run) -> Any:
    return json_format.MessageToDict(run.result)


def reason_of(status: Any) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


# Runs and their output.


async def test_tokens_stream_in_order_and_the_run_succeeds(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub
) -> None:
    async with echo_agent(mesh.address) as agent:
        assert agent.connected
        assert agent.token.startswith("agt_")
        goal = "the quick brown fox jumps over the lazy dog"
        run = await create_run(runs, "echo.words", goal)

        events, end = await follow(runs, run.run_id)

        assert tokens(events) == [w + " " for w in goal.split()]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[-1].HasField("result")
        assert events[-1].result.state == SUCCEEDED
        assert end.reason == "COMPLETED"
        assert end.status.code == code_pb2.OK
        done = await get_run(runs, run.run_id)
        assert done.state == SUCCEEDED
        assert done.agent_id == agent.agent_id
        assert result_of(done) == {"words": 9, "agent": agent.agent_id, "attempt": 1}

        # The manifest was signed and the heartbeats carry the load.
        stored = await get_agent(runs, agent.agent_id)
        assert stored.public_key == agent.key.public_key
        assert stored.runtime.heartbeat_interval.seconds == 1
        assert list(stored.skills) == ["echo.words"]
        assert stored.state in LIVE
        assert stored.last_heartbeat_time.seconds > 0
        assert 0 <= stored.load.cpu_usage <= 1
        assert 0 <= stored.load.mem_usage <= 1


async def test_output_produced_faster_than_sent_is_batched_in_order(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub
) -> None:
    agent = make_agent(mesh.address, "com.test.burst")
    n = 2000

    @agent.skill("burst.count")
    async def count(task: TaskContext) -> int:
        await task.log("info", "counting")
        for i in range(n):
            await task.token(f"{i},")
        await task.artifact("numbers", {"n": n}, name="numbers.json", mime_type="application/json")
        await task.flush()
        return n

    async with agent:
        run = await create_run(runs, "burst.count")
        events, end = await follow(runs, run.run_id)

    assert end.status.code == code_pb2.OK
    assert tokens(events) == [f"{i}," for i in range(n)]
    logs = [e.log for e in events if e.HasField("log")]
    assert [(log.level, log.message) for log in logs] == [(run_pb2.LOG_LEVEL_INFO, "counting")]
    artifacts = [e.artifact for e in events if e.HasField("artifact")]
    assert len(artifacts) == 1
    assert json_format.MessageToDict(artifacts[0].json) == {"n": n}
    assert artifacts[0].last_chunk
    # 2,002 events in batches of at most 100: far fewer messages than events.
    assert agent.stats.output_events == n + 2
    assert (n + 2) / 100 <= agent.stats.output_batches < (n + 2) / 4


async def test_a_failing_handler_fails_the_run_with_its_error(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub
) -> None:
    agent = make_agent(mesh.address, "com.test.failing")

    @agent.skill("fail.crash")
    async def crash(task: TaskContext) -> None:
        await task.token("about to fail")
        raise ValueError(f"no lead {task.inputs['id']}")

    @agent.skill("fail.typed")
    async def typed(task: TaskContext) -> None:
        raise TaskError(
            grpc.StatusCode.INVALID_ARGUMENT, "the lead id is malformed", reason="LEAD_ID_INVALID"
        )

    async with agent:
        crashed = await create_run(runs, "fail.crash", inputs=_struct(id=7))
        events, end = await follow(runs, crashed.run_id)
        assert tokens(events) == ["about to fail"]
        assert end.status.code == code_pb2.UNKNOWN
        assert end.status.message == "ValueError: no lead 7"
        done = await get_run(runs, crashed.run_id)
        assert done.state == FAILED
        assert done.error.code == code_pb2.UNKNOWN
        assert done.error.message == "ValueError: no lead 7"

        refused = await create_run(runs, "fail.typed")
        _, end = await follow(runs, refused.run_id)
        done = await get_run(runs, refused.run_id)
        assert done.state == FAILED
        assert done.error.code == code_pb2.INVALID_ARGUMENT
        assert done.error.message == "the lead id is malformed"
        assert reason_of(done.error) == "LEAD_ID_INVALID"
    assert agent.stats.runs_failed == 2


async def test_cancelling_a_run_cancels_its_handler(mesh: Mesh, runs: svc_grpc.AgentServiceStub) -> None:
    agent = make_agent(mesh.address, "com.test.slow")
    started = asyncio.Event()
    stopped = asyncio.Event()
    seen: dict[str, Any] = {}

    @agent.skill("slow.wait")
    async def wait(task: TaskContext) -> str:
        await task.token("working")
        await task.flush()
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen["cancelled"] = task.cancelled
            seen["reason"] = task.cancel_reason
            stopped.set()
            raise
        return "never"

    async with agent:
        run = await create_run(runs, "slow.wait")
        await asyncio.wait_for(started.wait(), 10)
        assert agent.active_runs == [run.run_id]

        await runs.CancelRun(svc.CancelRunRequest(run_id=run.run_id, reason="user gave up"), metadata=T1)

        await asyncio.wait_for(stopped.wait(), 10)
        assert seen == {"cancelled": True, "reason": "user gave up"}
        done = await get_run(runs, run.run_id)
        assert done.state == CANCELLED
        assert done.error.code == code_pb2.CANCELLED
        events, end = await follow(runs, run.run_id)
        assert tokens(events) == ["working"]
        assert end.status.code == code_pb2.CANCELLED
        assert agent.stats.runs_cancelled == 1
        # The slot is free again: the next run is taken.
        started.clear()
        again = await create_run(runs, "slow.wait")
        await asyncio.wait_for(started.wait(), 10)
        assert agent.active_runs == [again.run_id]


async def test_runs_beyond_max_concurrency_wait(mesh: Mesh, runs: svc_grpc.AgentServiceStub) -> None:
    agent = make_agent(mesh.address, "com.test.pool", max_concurrency=2)
    gate = asyncio.Event()
    running = 0
    peak = 0
    both = asyncio.Event()

    @agent.skill("pool.work")
    async def work(task: TaskContext) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            both.set()
        try:
            await gate.wait()
        finally:
            running -= 1
        return task.attempt

    async with agent:
        created = [await create_run(runs, "pool.work") for _ in range(5)]
        await asyncio.wait_for(both.wait(), 10)
        assert len(agent.active_runs) == 2
        gate.set()
        for run in created:
            _, end = await follow(runs, run.run_id)
            assert end.status.code == code_pb2.OK
    assert peak == 2
    assert agent.stats.runs_succeeded == 5


async def test_runs_without_a_declared_skill(mesh: Mesh, runs: svc_grpc.AgentServiceStub) -> None:
    plain = echo_agent(mesh.address, "com.test.plain")
    catchall = echo_agent(mesh.address, "com.test.catchall", skill="catch.words")

    @catchall.on_task
    async def anything(task: TaskContext) -> dict[str, Any]:
        return {"skill": task.skill, "goal": task.goal}

    async with plain, catchall:
        for agent_id in ("com.test.plain", "com.test.catchall"):
            resp = await runs.AssignTask(
                svc.AssignTaskRequest(agent_id=agent_id, task=run_pb2.Task(goal="no skill named")),
                metadata=T1,
            )
            await follow(runs, resp.run.run_id)
            done = await get_run(runs, resp.run.run_id)
            if agent_id == "com.test.plain":
                assert done.state == FAILED
                assert done.error.code == code_pb2.UNIMPLEMENTED
                assert reason_of(done.error) == "SKILL_NOT_IMPLEMENTED"
            else:
                assert done.state == SUCCEEDED
                assert result_of(done) == {"skill": "", "goal": "no skill named"}


async def test_output_the_mesh_refuses_fails_the_run(mesh: Mesh, runs: svc_grpc.AgentServiceStub) -> None:
    agent = make_agent(mesh.address, "com.test.sloppy")
    cancelled = asyncio.Event()

    @agent.skill("sloppy.write")
    async def write(task: TaskContext) -> str:
        with pytest.raises(ValueError, match="artifact id"):
            await task.artifact("an id with spaces", "text")
        await task.token("fine")
        await task.flush()
        await task.artifact("report", "text", mime_type="x" * 300)  # the mesh takes at most 255
        try:
            await task.flush()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    async with agent:
        run = await create_run(runs, "sloppy.write")
        events, end = await follow(runs, run.run_id)
        assert cancelled.is_set()
        assert tokens(events) == ["fine"]
        assert end.status.code == code_pb2.INTERNAL
        assert "refused the run's output" in end.status.message
        assert "mime_type" in end.status.message


async def test_stopping_hands_unfinished_runs_to_another_agent(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub
) -> None:
    slow = make_agent(mesh.address, "com.test.leaving", stop_grace_s=0.2)
    started = asyncio.Event()
    seen: dict[str, Any] = {}

    @slow.skill("shared.job")
    async def job(task: TaskContext) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen["reason"] = task.cancel_reason
            raise
        return "never"

    await slow.start()
    try:
        run = await create_run(runs, "shared.job")
        await asyncio.wait_for(started.wait(), 10)
    finally:
        await slow.stop()
    assert seen == {"reason": "the agent is stopping"}
    # Signed off: DISCONNECTED at once, and the run is back in the queue for the next agent.
    assert (await get_agent(runs, "com.test.leaving")).state == agent_pb2.AGENT_STATE_DISCONNECTED
    assert (await get_run(runs, run.run_id)).state == run_pb2.RUN_STATE_QUEUED

    async with echo_agent(mesh.address, "com.test.staying", skill="shared.job"):
        _, end = await follow(runs, run.run_id)
        done = await get_run(runs, run.run_id)
    assert end.status.code == code_pb2.OK
    assert done.agent_id == "com.test.staying"
    assert done.attempt == 2


# Agent-to-agent calls.


async def test_an_agent_calls_another_agents_skill_through_the_router(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub
) -> None:
    b = make_agent(mesh.address, "com.test.b")

    @b.skill("b.lookup")
    async def lookup(task: TaskContext) -> dict[str, Any]:
        await task.token("looking ")
        await task.token("up")
        return {
            "id": task.inputs["id"],
            "name": "Ada",
            "caller": task.caller_agent_id,
            "depth": task.depth,
            "signed": bool(task.run.caller_signature),
        }

    a = make_agent(mesh.address, "com.test.a", tool_grants=["b.*"])

    @a.skill("a.summarize")
    async def summarize(task: TaskContext) -> dict[str, Any]:
        lead = await task.call("b.lookup", {"id": task.inputs["id"]})
        chunks = [chunk async for chunk in task.call_stream("b.lookup", {"id": 2})]
        await task.token(f"Lead {lead['name']}")
        return {"lead": lead, "chunks": chunks}

    async with b, a:
        run = await create_run(runs, "a.summarize", inputs=_struct(id=1))
        events, end = await follow(runs, run.run_id)

        assert end.status.code == code_pb2.OK, end.status.message
        assert tokens(events) == ["Lead Ada"]
        result = result_of(await get_run(runs, run.run_id))
        assert result["lead"] == {"id": 1, "name": "Ada", "caller": "com.test.a", "depth": 1, "signed": True}
        assert result["chunks"] == [
            "looking ",
            "up",
            {"id": 2, "name": "Ada", "caller": "com.test.a", "depth": 1, "signed": True},
        ]
        listed = await runs.ListRuns(svc.ListRunsRequest(agent_id="com.test.b"), metadata=T1)
        assert {r.task.parent_run_id for r in listed.runs} == {run.run_id}
        assert {r.caller_agent_id for r in listed.runs} == {"com.test.a"}

        # Outside a run the agent calls as itself (depth 1, no parent).
        direct = await a.call("b.lookup", {"id": 3})
        assert direct == {"id": 3, "name": "Ada", "caller": "com.test.a", "depth": 1, "signed": True}


async def test_a_chain_of_agents_fails_at_depth_four(mesh: Mesh, runs: svc_grpc.AgentServiceStub) -> None:
    failures: dict[int, AgentError] = {}
    depths: dict[int, int] = {}
    chain: list[Agent] = []
    for level in range(1, 6):
        agent = make_agent(mesh.address, f"com.test.chain{level}", tool_grants=["chain.*"])

        def declare(level: int, agent: Agent) -> None:
            @agent.skill(f"chain.l{level}")
            async def step(task: TaskContext) -> Any:
                depths[level] = task.depth
                try:
                    return {"below": await task.call(f"chain.l{level + 1}", {"from": level})}
                except AgentError as exc:
                    failures[level] = exc
                    raise

        declare(level, agent)
        chain.append(agent)

    for agent in chain:
        await agent.start()
    try:
        run = await create_run(runs, "chain.l1")
        _, end = await follow(runs, run.run_id)
    finally:
        for agent in chain:
            await agent.stop()

    assert depths == {1: 0, 2: 1, 3: 2, 4: 3}  # chain5 never ran
    deepest = failures[4]
    assert isinstance(deepest, CallDepthExceededError)
    assert deepest.code == code_pb2.FAILED_PRECONDITION
    assert deepest.reason == "AGENT_CALL_DEPTH_EXCEEDED"
    assert deepest.metadata == {"depth": "4", "max_depth": "3"}
    # Every level above fails in turn, and the run the user created fails with it.
    assert set(failures) == {1, 2, 3, 4}
    assert end.status.code == code_pb2.FAILED_PRECONDITION
    assert (await get_run(runs, run.run_id)).state == FAILED


async def test_a_call_outside_the_agents_grants_is_refused(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub
) -> None:
    c = echo_agent(mesh.address, "com.test.c", skill="c.secret")
    b = echo_agent(mesh.address, "com.test.b", skill="b.public")
    a = make_agent(mesh.address, "com.test.a", tool_grants=["b.*"])
    outcome: dict[str, Any] = {}

    @a.skill("a.try")
    async def attempt(task: TaskContext) -> str:
        try:
            await task.call(str(task.inputs["target"]), {})
        except ToolNotGrantedError as exc:
            outcome[task.run_id] = exc
            raise
        return "called"

    async with c, b, a:
        with pytest.raises(ToolNotGrantedError) as caught:
            await a.call("c.secret")
        assert caught.value.code == code_pb2.PERMISSION_DENIED
        assert caught.value.reason == "TOOL_NOT_GRANTED"
        assert caught.value.metadata["capability_id"] == "c.secret"

        denied = await create_run(runs, "a.try", inputs=_struct(target="c.secret"))
        _, end = await follow(runs, denied.run_id)
        assert end.status.code == code_pb2.PERMISSION_DENIED
        assert reason_of(end.status) == "TOOL_NOT_GRANTED"
        assert isinstance(outcome[denied.run_id], ToolNotGrantedError)

        # The run's own grants narrow the agent's: b.* is the agent's, but not this run's.
        narrowed = await create_run(runs, "a.try", inputs=_struct(target="b.public"), grants=["x.*"])
        _, end = await follow(runs, narrowed.run_id)
        assert end.status.code == code_pb2.PERMISSION_DENIED
        allowed = await create_run(runs, "a.try", inputs=_struct(target="b.public"))
        _, end = await follow(runs, allowed.run_id)
        assert end.status.code == code_pb2.OK
        assert c.stats.runs_started == 0


async def test_an_unsigned_agent_cannot_call_other_agents(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub
) -> None:
    async with (
        echo_agent(mesh.address, "com.test.b", skill="b.public"),
        make_agent(mesh.address, "com.test.a", tool_grants=["*"], sign=False) as a,
    ):
        assert (await get_agent(runs, "com.test.a")).public_key == ""
        with pytest.raises(AgentError) as caught:
            await a.call("b.public")
        assert caught.value.reason == "AGENT_KEY_REQUIRED"


# Surviving the channel.


async def test_the_agent_reconnects_after_being_disconnected(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub
) -> None:
    agent = make_agent(mesh.address, "com.test.sturdy")
    first_started = asyncio.Event()
    attempts: list[int] = []

    @agent.skill("sturdy.work")
    async def work(task: TaskContext) -> int:
        attempts.append(task.attempt)
        if task.attempt == 1:
            await task.token("first try")
            await task.flush()
            first_started.set()
            await asyncio.Event().wait()  # until the mesh takes the run back
        await task.token("second try")
        return task.attempt

    async with agent:
        run = await create_run(runs, "sturdy.work")
        await asyncio.wait_for(first_started.wait(), 10)
        session = agent.session_id

        resp = await runs.DisconnectAgent(
            svc.DisconnectAgentRequest(agent_id=agent.agent_id, reason="maintenance"), metadata=T1
        )
        assert resp.agent.state == agent_pb2.AGENT_STATE_DISCONNECTED

        # The session channel ended; the agent comes back on the same session and gets its run again.
        await agent.wait_connected(count=2, timeout_s=10)
        assert agent.session_id == session
        events, end = await follow(runs, run.run_id)
        assert end.status.code == code_pb2.OK
        assert tokens(events) == ["first try", "second try"]
        done = await get_run(runs, run.run_id)
        assert done.state == SUCCEEDED
        assert done.attempt == 2
        assert attempts == [1, 2]
        assert (await get_agent(runs, agent.agent_id)).state in LIVE
        assert agent.stats.runs_cancelled == 1


async def test_a_revoked_agent_stops(mesh: Mesh, runs: svc_grpc.AgentServiceStub) -> None:
    agent = echo_agent(mesh.address, "com.test.revoked")
    await agent.start()
    try:
        await runs.RevokeAgentToken(
            svc.RevokeAgentTokenRequest(agent_id=agent.agent_id, reason="compromised"), metadata=T1
        )
        with pytest.raises(AgentRevokedError) as caught:
            await asyncio.wait_for(agent.wait_stopped(), 10)
        assert caught.value.reason == "AGENT_TOKEN_REVOKED"
        assert not agent.connected
    finally:
        await agent.stop()
    assert (await get_agent(runs, agent.agent_id)).state == agent_pb2.AGENT_STATE_DISCONNECTED


async def test_a_restarted_agent_needs_its_token(
    mesh: Mesh, runs: svc_grpc.AgentServiceStub, tmp_path: Path
) -> None:
    state = tmp_path / "agent" / "state.json"
    first = echo_agent(mesh.address, "com.test.restart", state_path=state)
    async with first:
        token, key = first.token, first.key.public_key
    assert os.stat(state).st_mode & 0o777 == 0o600
    # Signing off made it DISCONNECTED at once.
    assert (await get_agent(runs, "com.test.restart")).state == agent_pb2.AGENT_STATE_DISCONNECTED

    with pytest.raises(AgentExistsError):
        await echo_agent(mesh.address, "com.test.restart").start()

    second = echo_agent(mesh.address, "com.test.restart", state_path=state)
    async with second:
        assert second.token != token
        assert second.key.public_key == key  # the key came back from the state file too
        run = await create_run(runs, "echo.words", "back again")
        _, end = await follow(runs, run.run_id)
        assert end.status.code == code_pb2.OK


async def test_the_agent_reconnects_after_the_mesh_restarts(tmp_path: Path, database_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = dataclasses.replace(mesh_settings(tmp_path, database_url), grpc_address=f"127.0.0.1:{port}")
    mesh = await start_mesh(settings)
    agent = echo_agent(mesh.address, "com.test.phoenix")
    try:
        await agent.start()
        session = agent.session_id
        await mesh.stop(0)
        mesh = await start_mesh(settings)

        await agent.wait_connected(count=2, timeout_s=15)
        assert agent.session_id == session  # the token and session survived the restart
        async with grpc.aio.insecure_channel(mesh.address) as ch:
            stub = svc_grpc.AgentServiceStub(ch)
            run = await create_run(stub, "echo.words", "still here")
            events, end = await follow(stub, run.run_id)
        assert end.status.code == code_pb2.OK
        assert tokens(events) == ["still ", "here "]
    finally:
        await agent.stop()
        await mesh.stop(0)


# The unary fallback.


async def test_unary_mode_runs_streams_and_cancels(mesh: Mesh, runs: svc_grpc.AgentServiceStub) -> None:
    agent = make_agent(mesh.address, "com.test.poller", mode="unary", poll_wait_s=2.0, max_concurrency=2)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @agent.skill("poll.echo")
    async def echo(task: TaskContext) -> dict[str, Any]:
        for word in task.goal.split():
            await task.token(word)
        return {"words": len(task.goal.split())}

    @agent.skill("poll.wait")
    async def wait(task: TaskContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async with agent:
        assert (await get_agent(runs, agent.agent_id)).state in LIVE
        run = await create_run(runs, "poll.echo", "one two three")
        events, end = await follow(runs, run.run_id)
        assert tokens(events) == ["one", "two", "three"]
        assert end.status.code == code_pb2.OK
        assert result_of(await get_run(runs, run.run_id)) == {"words": 3}

        slow = await create_run(runs, "poll.wait")
        await asyncio.wait_for(started.wait(), 10)
        await runs.CancelRun(svc.CancelRunRequest(run_id=slow.run_id), metadata=T1)
        await asyncio.wait_for(cancelled.wait(), 10)
        assert (await get_run(runs, slow.run_id)).state == CANCELLED


# The example agent process.


async def test_the_example_agent_process(mesh: Mesh, runs: svc_grpc.AgentServiceStub) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.echo_agent",
        "--mesh",
        mesh.address,
        "--tenant",
        TENANT,
        "--agent-id",
        "com.example.echo-agent",
        "--skill",
        "echo.words",
        "--skill",
        "echo.shout",
        "--heartbeat",
        "1",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, (await proc.stderr.read()).decode()
        ready = json.loads(line)
        assert ready["ready"] is True
        assert ready["pid"] == proc.pid
        assert ready["agent_id"] == "com.example.echo-agent"
        assert ready["session_id"].startswith("sess_")
        assert ready["skills"] == ["echo.shout", "echo.words"]

        run = await create_run(runs, "echo.words", "hello from the mesh")
        events, end = await follow(runs, run.run_id)
        assert tokens(events) == ["hello ", "from ", "the ", "mesh"]
        assert end.status.code == code_pb2.OK
        assert result_of(await get_run(runs, run.run_id)) == {
            "text": "hello from the mesh",
            "words": 4,
            "agent": "com.example.echo-agent",
            "skill": "echo.words",
            "attempt": 1,
        }
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0
    # SIGTERM signed the agent off.
    assert (await get_agent(runs, "com.example.echo-agent")).state == agent_pb2.AGENT_STATE_DISCONNECTED


def _struct(**kw: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s
