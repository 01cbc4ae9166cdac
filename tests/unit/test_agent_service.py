"""Agent service domain logic on a real SQLite file with controllable clocks and no network."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from powerx.agent.v1 import agent_pb2, event_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.registry.v1 import registry_service_pb2 as rs
from servers.agent.lifecycle import ACTIVE, BUSY, DEGRADED, DISCONNECTED, IDLE, REGISTERING, RETIRED
from servers.agent.security import TokenSigner
from servers.agent.service import AgentConfig, AgentService, event_topic_name
from servers.agent.store import AgentStore
from servers.common.bus import InProcessBus
from servers.common.context import CallContext
from servers.common.db import create_engine, migrate
from servers.common.errors import FailedPrecondition, NotFound, Unauthenticated
from servers.registry.service import RegistryService
from servers.registry.store import RegistryStore

T1 = CallContext(tenant_id="t1", request_id="r1", trace_id="a" * 32)


class Clocks:
    """Wall clock (ms) and monotonic clock (s), moved together by the test."""

    def __init__(self) -> None:
        self.wall_ms = 1_800_000_000_000
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall_ms += int(seconds * 1000)
        self.mono += seconds


@dataclass
class Env:
    service: AgentService
    registry: RegistryService
    bus: InProcessBus
    clocks: Clocks


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    await migrate(engine)
    clocks = Clocks()
    bus = InProcessBus()
    registry = RegistryService(
        RegistryStore(engine), bus, default_lease_ttl_s=30, clock_ms=lambda: clocks.wall_ms
    )
    service = AgentService(
        AgentStore(engine),
        bus,
        registry,
        TokenSigner(b"k" * 32),
        config=AgentConfig(default_heartbeat_s=10),
        clock_ms=lambda: clocks.wall_ms,
        monotonic=lambda: clocks.mono,
    )
    await service.start()
    try:
        yield Env(service, registry, bus, clocks)
    finally:
        await service.close()
        await engine.dispose()


@dataclass
class Registered:
    agent_id: str
    token: str
    session_id: str

    @property
    def ctx(self) -> CallContext:
        return CallContext(bearer=self.token, request_id="r")


async def register(env: Env, agent_id: str, *, skills: tuple[str, ...] = ("crm.lead.fetch",), max_c: int = 1,
                   token: str = "", resume: str = "") -> Registered:  # fmt: skip
    agent = agent_pb2.Agent(agent_id=agent_id, version="1.0.0", skills=list(skills), tool_grants=["*"])
    agent.runtime.max_concurrency = max_c
    ctx = CallContext(tenant_id="t1", bearer=token, request_id="r")
    resp = await env.service.register_agent(
        svc.RegisterAgentRequest(agent=agent, resume_session_id=resume), ctx
    )
    return Registered(agent_id, resp.agent_token, resp.session_id)


async def beat(env: Env, a: Registered, cpu: float = 0.1) -> int:
    req = svc.RecordHeartbeatRequest(agent_id=a.agent_id, session_id=a.session_id)
    req.load.cpu_usage = cpu
    return (await env.service.record_heartbeat(req, a.ctx)).state


async def state(env: Env, agent_id: str) -> int:
    return (await env.service.get_agent(svc.GetAgentRequest(agent_id=agent_id), T1)).agent.state


async def pull(env: Env, a: Registered, n: int = 10) -> list[run_pb2.Run]:
    req = svc.PullAssignmentsRequest(agent_id=a.agent_id, session_id=a.session_id, max_count=n)
    return list((await env.service.pull_assignments(req, a.ctx)).runs)


async def tokens(env: Env, a: Registered, run_id: str, *texts: str) -> int:
    req = svc.PublishRunOutputRequest(
        run_id=run_id, events=[run_pb2.RunEvent(token=run_pb2.RunToken(text=t)) for t in texts]
    )
    return (await env.service.publish_run_output(req, a.ctx)).last_sequence


async def output(env: Env, run_id: str) -> list[run_pb2.RunEvent]:
    events = []
    async for item in env.service.stream_run_output(svc.StreamRunOutputRequest(run_id=run_id), T1):
        if item.HasField("end"):
            break
        events.append(item.event)
    return events


async def create(env: Env, skill: str = "crm.lead.fetch", **task: object) -> run_pb2.Run:
    t = run_pb2.Task(skill=skill, goal="do it", **task)  # type: ignore[arg-type]
    return (await env.service.create_run(svc.CreateRunRequest(task=t), T1)).run


async def test_lifecycle_through_heartbeats_misses_and_resume(env: Env) -> None:
    events: list[event_pb2.AgentEvent] = []
    async with env.bus.subscribe(event_topic_name(event_pb2.AGENT_EVENT_TYPE_DISCONNECTED)) as disc, \
            env.bus.subscribe(event_topic_name(event_pb2.AGENT_EVENT_TYPE_RECONNECTED)) as reco:  # fmt: skip
        a = await register(env, "a1")
        assert await state(env, "a1") == REGISTERING
        assert await beat(env, a) == IDLE
        env.clocks.advance(29)  # under three 10 s intervals
        await env.service.sweep()
        assert await state(env, "a1") == IDLE
        env.clocks.advance(2)  # 31 s without a heartbeat
        await env.service.sweep()
        assert await state(env, "a1") == DISCONNECTED
        payload = await disc.get(1)
        assert payload is not None
        events.append(event_pb2.AgentEvent.FromString(payload))
        assert await beat(env, a) == IDLE  # the same session comes back
        payload = await reco.get(1)
        assert payload is not None
        events.append(event_pb2.AgentEvent.FromString(payload))
    assert [(e.previous_state, e.state) for e in events] == [(IDLE, DISCONNECTED), (DISCONNECTED, IDLE)]
    assert events[0].reason == "missed 3 heartbeats"


async def test_a_registering_agent_that_never_beats_is_disconnected(env: Env) -> None:
    await register(env, "a1")
    env.clocks.advance(31)
    await env.service.sweep()
    assert await state(env, "a1") == DISCONNECTED


async def test_busy_when_runs_reach_capacity_and_queued_runs_wait(env: Env) -> None:
    a = await register(env, "a1", max_c=1)
    await beat(env, a)
    first = await create(env)
    assert first.state == run_pb2.RUN_STATE_ASSIGNED
    assert await state(env, "a1") == BUSY
    second = await create(env)
    assert second.state == run_pb2.RUN_STATE_QUEUED
    (taken,) = await pull(env, a)
    assert taken.run_id == first.run_id
    await env.service.complete_run(
        svc.CompleteRunRequest(run_id=first.run_id, result=struct_pb2.Value(string_value="ok")), a.ctx
    )
    got = await env.service.get_run(svc.GetRunRequest(run_id=second.run_id), T1)
    assert got.run.state == run_pb2.RUN_STATE_ASSIGNED  # handed on as soon as the slot freed
    assert await state(env, "a1") == BUSY


async def test_active_with_free_slots_then_idle(env: Env) -> None:
    a = await register(env, "a1", max_c=2)
    await beat(env, a)
    run = await create(env)
    assert await state(env, "a1") == ACTIVE
    await pull(env, a)
    await env.service.complete_run(
        svc.CompleteRunRequest(run_id=run.run_id, result=struct_pb2.Value(bool_value=True)), a.ctx
    )
    assert await state(env, "a1") == IDLE


async def test_degraded_on_error_rate_and_back(env: Env) -> None:
    a = await register(env, "a1", max_c=1)
    await beat(env, a)
    for _ in range(5):
        run = await create(env)
        await pull(env, a)
        err = svc.CompleteRunRequest(run_id=run.run_id)
        err.error.code = code_pb2.INTERNAL
        err.error.message = "boom"
        await env.service.complete_run(err, a.ctx)
    assert await state(env, "a1") == DEGRADED
    for _ in range(8):
        run = await create(env)
        await pull(env, a)
        await env.service.complete_run(
            svc.CompleteRunRequest(run_id=run.run_id, result=struct_pb2.Value(number_value=1)), a.ctx
        )
    assert await state(env, "a1") == IDLE
    stats = (await env.service.get_agent(svc.GetAgentRequest(agent_id="a1"), T1)).agent.stats
    assert (stats.run_count, stats.error_count) == (13, 5)
    assert stats.error_rate < 0.2


async def test_reassignment_after_disconnect_keeps_all_output(env: Env) -> None:
    a = await register(env, "a1")
    b = await register(env, "b1")
    await beat(env, a)
    run = await create(env)
    assert run.agent_id in ("a1", "b1")
    first, second = (a, b) if run.agent_id == "a1" else (b, a)
    await pull(env, first)
    await tokens(env, first, run.run_id, "one ", "two ")
    env.clocks.advance(20)
    await beat(env, second)  # the other agent stays alive
    env.clocks.advance(11)
    await env.service.sweep()  # first missed three heartbeats
    moved = (await env.service.get_run(svc.GetRunRequest(run_id=run.run_id), T1)).run
    assert moved.agent_id == second.agent_id
    assert moved.attempt == 2
    with pytest.raises(NotFound):  # the old holder may no longer write to it
        await tokens(env, first, run.run_id, "late")
    (taken,) = await pull(env, second)
    assert taken.run_id == run.run_id
    await tokens(env, second, run.run_id, "three")
    await env.service.complete_run(
        svc.CompleteRunRequest(run_id=run.run_id, result=struct_pb2.Value(string_value="done")), second.ctx
    )
    events = await output(env, run.run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert "".join(e.token.text for e in events if e.HasField("token")) == "one two three"
    moves = [e.state_change for e in events if e.HasField("state_change")]
    assert [(m.state, m.agent_id) for m in moves if m.state == run_pb2.RUN_STATE_ASSIGNED] == [
        (run_pb2.RUN_STATE_ASSIGNED, first.agent_id),
        (run_pb2.RUN_STATE_ASSIGNED, second.agent_id),
    ]
    assert events[-1].result.state == run_pb2.RUN_STATE_SUCCEEDED


async def test_reregistration_with_token_and_resume_keeps_runs(env: Env) -> None:
    a = await register(env, "a1", max_c=2)
    await beat(env, a)
    run = await create(env)
    await pull(env, a)
    with pytest.raises(Exception, match="register it again with its token"):
        await register(env, "a1")
    again = await register(env, "a1", token=a.token, resume=a.session_id)
    assert again.session_id != a.session_id
    with pytest.raises(Unauthenticated):  # the old token was replaced
        await beat(env, a)
    await beat(env, again)
    await tokens(env, again, run.run_id, "still mine")
    got = (await env.service.get_run(svc.GetRunRequest(run_id=run.run_id), T1)).run
    assert (got.state, got.agent_id, got.attempt) == (run_pb2.RUN_STATE_RUNNING, "a1", 1)


async def test_restart_lets_agents_reregister_with_their_token(env: Env, tmp_path: Path) -> None:
    a = await register(env, "a1")
    await beat(env, a)
    # A second service on the same database and secret: what a restarted mesh sees.
    restarted = AgentService(
        env.service.store, env.bus, env.registry, TokenSigner(b"k" * 32), monotonic=lambda: env.clocks.mono
    )
    await restarted.start()
    try:
        ctx = CallContext(tenant_id="t1", bearer=a.token, request_id="r")
        agent = agent_pb2.Agent(agent_id="a1", version="1.0.1", skills=["crm.lead.fetch"])
        resp = await restarted.register_agent(
            svc.RegisterAgentRequest(agent=agent, resume_session_id=a.session_id), ctx
        )
        assert resp.agent.version == "1.0.1"
        assert resp.agent.state == REGISTERING
    finally:
        await restarted.close()


async def test_run_deadline_fails_the_run(env: Env) -> None:
    a = await register(env, "a1")
    await beat(env, a)
    run = await create(env, timeout={"seconds": 5})
    await pull(env, a)
    env.clocks.advance(6)
    await beat(env, a)
    await env.service.sweep()
    got = (await env.service.get_run(svc.GetRunRequest(run_id=run.run_id), T1)).run
    assert got.state == run_pb2.RUN_STATE_FAILED
    assert got.error.code == code_pb2.DEADLINE_EXCEEDED
    assert await state(env, "a1") == IDLE


async def test_retire_revokes_and_withdraws_skills(env: Env) -> None:
    a = await register(env, "a1")
    await beat(env, a)
    caps = await env.registry.list_capabilities(rs.ListCapabilitiesRequest(), T1)
    assert [c.capability_id for c in caps.capabilities] == ["crm.lead.fetch"]
    await env.service.delete_agent(svc.DeleteAgentRequest(agent_id="a1", reason="bye"), T1)
    assert await state(env, "a1") == RETIRED
    with pytest.raises(Unauthenticated):
        await beat(env, a)
    caps = await env.registry.list_capabilities(rs.ListCapabilitiesRequest(), T1)
    assert list(caps.capabilities) == []
    with pytest.raises(FailedPrecondition):
        await env.service.assign_task(svc.AssignTaskRequest(agent_id="a1", task=run_pb2.Task(goal="x")), T1)
    again = await register(env, "a1")  # a retired agent may be registered anew, without a token
    assert await beat(env, again) == IDLE
