"""AgentService through a real channel: every RPC, the session channel, agent-to-agent calls, security.

Agents here are driven by hand over the raw contract (Connect stream or unary calls), so that each
test says exactly what goes over the wire; the SDK has its own tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from prometheus_client import generate_latest

from powerx.agent.v1 import agent_pb2, event_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import agent_service_pb2_grpc as svc_grpc
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from powerx.router.v1 import router_service_pb2 as rt
from powerx.router.v1 import router_service_pb2_grpc as rt_grpc
from sdk import signing
from servers.agent.store import agents_t, runs_t
from servers.common.db import create_engine
from servers.mesh import Mesh, start_mesh
from tests.conftest import mesh_settings
from tests.integration.helpers import bad_fields, error_info

T1 = (("x-tenant-id", "t1"),)
T2 = (("x-tenant-id", "t2"),)
SKILL = "crm.lead.fetch"


@pytest.fixture
async def mesh(tmp_path: Path, database_url: str) -> AsyncIterator[Mesh]:
    m = await start_mesh(
        mesh_settings(tmp_path, database_url, agent_quota="rate=1000,burst=1000", tenant_run_quota="")
    )
    try:
        yield m
    finally:
        await m.stop(0)


@pytest.fixture
async def stub(mesh: Mesh) -> AsyncIterator[svc_grpc.AgentServiceStub]:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield svc_grpc.AgentServiceStub(ch)


@dataclass
class Reg:
    agent_id: str
    token: str
    session_id: str
    key: signing.AgentKey | None = None

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


def manifest(
    agent_id: str,
    *,
    skills: tuple[str, ...] = (SKILL,),
    grants: tuple[str, ...] = ("*",),
    max_c: int = 4,
    key: signing.AgentKey | None = None,
) -> agent_pb2.Agent:
    a = agent_pb2.Agent(
        agent_id=agent_id,
        version="1.0.0",
        display_name=agent_id,
        skills=list(skills),
        tool_grants=list(grants),
    )
    a.runtime.max_concurrency = max_c
    a.runtime.heartbeat_interval.FromSeconds(5)
    if key is not None:
        key.sign_manifest(a)
    return a


async def register(stub: svc_grpc.AgentServiceStub, agent_id: str, tenant: str = "t1", **kw: Any) -> Reg:
    key = kw.pop("key", None)
    resp = await stub.RegisterAgent(
        svc.RegisterAgentRequest(agent=manifest(agent_id, key=key, **kw)), metadata=(("x-tenant-id", tenant),)
    )
    reg = Reg(agent_id, resp.agent_token, resp.session_id, key)
    await stub.RecordHeartbeat(
        svc.RecordHeartbeatRequest(agent_id=agent_id, session_id=reg.session_id), metadata=reg.md
    )
    return reg


@dataclass
class Session:
    """An agent holding its Connect stream, answering assignments as the test tells it."""

    stub: svc_grpc.AgentServiceStub
    reg: Reg
    outbox: asyncio.Queue[svc.ConnectRequest | None] = field(default_factory=asyncio.Queue)
    inbox: asyncio.Queue[svc.ConnectResponse] = field(default_factory=asyncio.Queue)
    call: Any = None
    reader: asyncio.Task[None] | None = None

    async def open(self) -> svc.ConnectResponse:
        async def requests() -> AsyncIterator[svc.ConnectRequest]:
            yield svc.ConnectRequest(
                hello=svc.ConnectHello(agent_id=self.reg.agent_id, session_id=self.reg.session_id)
            )
            while (item := await self.outbox.get()) is not None:
                yield item

        self.call = self.stub.Connect(requests(), metadata=self.reg.md)
        welcome = await self.call.read()

        async def read() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                # read() only: grpc.aio does not allow mixing read() and iteration on one call.
                while (msg := await self.call.read()) is not grpc.aio.EOF:
                    await self.inbox.put(msg)

        self.reader = asyncio.create_task(read())
        return welcome

    async def next(self, kind: str, wait_s: float = 5) -> svc.ConnectResponse:
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), wait_s)
            if msg.WhichOneof("kind") == kind:
                return msg

    async def send(self, **kw: Any) -> None:
        await self.outbox.put(svc.ConnectRequest(**kw))

    async def close(self) -> None:
        await self.outbox.put(None)
        if self.reader is not None:
            self.reader.cancel()
        if self.call is not None:
            self.call.cancel()


@contextlib.asynccontextmanager
async def session(stub: svc_grpc.AgentServiceStub, reg: Reg) -> AsyncIterator[Session]:
    s = Session(stub, reg)
    welcome = await s.open()
    assert welcome.welcome.session_id == reg.session_id
    try:
        yield s
    finally:
        await s.close()


def tok(text: str) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(token=run_pb2.RunToken(text=text))


async def create_run(
    stub: svc_grpc.AgentServiceStub, skill: str = SKILL, md: Any = T1, **task: Any
) -> run_pb2.Run:
    resp = await stub.CreateRun(
        svc.CreateRunRequest(task=run_pb2.Task(skill=skill, goal="go", **task)), metadata=md
    )
    return resp.run


async def collect(
    stub: svc_grpc.AgentServiceStub, run_id: str, md: Any = T1, **kw: Any
) -> tuple[list[run_pb2.RunEvent], Any]:
    events = []
    async for item in stub.StreamRunOutput(svc.StreamRunOutputRequest(run_id=run_id, **kw), metadata=md):
        if item.HasField("end"):
            return events, item.end
        events.append(item.event)
    raise AssertionError("the stream ended without `end`")


async def count(mesh: Mesh, table: sa.Table) -> int:
    engine = create_engine(mesh.settings.effective_database_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() or 0)
    finally:
        await engine.dispose()


# ---- registration, heartbeats, reads ----------------------------------------------------------------


async def test_register_heartbeat_get_list_and_registry_alignment(
    stub: svc_grpc.AgentServiceStub, mesh: Mesh
) -> None:
    resp = await stub.RegisterAgent(svc.RegisterAgentRequest(agent=manifest("com.acme.sales")), metadata=T1)
    assert resp.agent_token.startswith("agt_")
    assert resp.session_id.startswith("sess_")
    assert resp.heartbeat_uri == "/api/v1/agents/heartbeat"
    assert resp.heartbeat_interval.seconds == 5
    assert resp.agent.state == agent_pb2.AGENT_STATE_REGISTERING
    assert not resp.agent.signature
    md = (("authorization", f"Bearer {resp.agent_token}"),)
    hb = svc.RecordHeartbeatRequest(agent_id="com.acme.sales", session_id=resp.session_id)
    hb.load.cpu_usage, hb.load.active_tasks = 0.25, 0
    beat = await stub.RecordHeartbeat(hb, metadata=md)
    assert beat.state == agent_pb2.AGENT_STATE_IDLE
    got = (await stub.GetAgent(svc.GetAgentRequest(agent_id="com.acme.sales"), metadata=T1)).agent
    assert got.load.cpu_usage == 0.25
    assert got.last_heartbeat_time.seconds > 0
    assert len(got.manifest_digest) == 64
    await register(stub, "com.acme.ops", skills=("ops.page",))
    listed = await stub.ListAgents(svc.ListAgentsRequest(), metadata=T1)
    assert [a.agent_id for a in listed.agents] == ["com.acme.ops", "com.acme.sales"]
    assert [
        a.agent_id
        for a in (await stub.ListAgents(svc.ListAgentsRequest(skill="ops.page"), metadata=T1)).agents
    ] == ["com.acme.ops"]
    page = await stub.ListAgents(svc.ListAgentsRequest(page_size=1), metadata=T1)
    assert [a.agent_id for a in page.agents] == ["com.acme.ops"]
    assert page.next_page_token
    page2 = await stub.ListAgents(
        svc.ListAgentsRequest(page_size=1, page_token=page.next_page_token), metadata=T1
    )
    assert [a.agent_id for a in page2.agents] == ["com.acme.sales"]
    assert not page2.next_page_token
    # Skills are capabilities of provider `agent_id` with an agent endpoint.
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        cap = await rs_grpc.RegistryServiceStub(ch).GetCapability(
            rs.GetCapabilityRequest(capability_id=SKILL), metadata=T1
        )
    assert [c.provider_id for c in cap.capabilities] == ["com.acme.sales"]
    assert [e.uri for e in cap.capabilities[0].endpoints] == ["agent://com.acme.sales"]
    assert (await stub.ListAgents(svc.ListAgentsRequest(), metadata=T2)).agents == []


async def test_bad_manifests_are_rejected_with_field_violations_and_write_nothing(
    stub: svc_grpc.AgentServiceStub, mesh: Mesh
) -> None:
    bad = manifest("Not An Id")
    bad.version = "1.x"
    bad.skills.append(SKILL)  # twice
    bad.runtime.heartbeat_interval.FromMilliseconds(10)
    bad.runtime.max_concurrency = 5000
    bad.tool_grants.append("crm.**")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterAgent(svc.RegisterAgentRequest(agent=bad), metadata=T1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {
        "agent.agent_id",
        "agent.version",
        "agent.skills[1]",
        "agent.runtime.heartbeat_interval",
        "agent.runtime.max_concurrency",
        "agent.tool_grants[1]",
    } <= bad_fields(err.value)
    signed = manifest("com.acme.signed", key=signing.AgentKey())
    signed.description = "changed after signing"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterAgent(svc.RegisterAgentRequest(agent=signed), metadata=T1)
    assert bad_fields(err.value) == {"agent.signature"}
    with pytest.raises(grpc.aio.AioRpcError) as err:  # no tenant
        await stub.RegisterAgent(svc.RegisterAgentRequest(agent=manifest("com.acme.x")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "TENANT_REQUIRED"
    huge = manifest("com.acme.huge")
    huge.description = "x" * (5 * 1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterAgent(svc.RegisterAgentRequest(agent=huge), metadata=T1)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await count(mesh, agents_t) == 0


async def test_tokens_unique_ids_revocation_and_tenants(stub: svc_grpc.AgentServiceStub) -> None:
    a = await register(stub, "com.acme.a")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the id is taken: only its token may register it again
        await stub.RegisterAgent(svc.RegisterAgentRequest(agent=manifest("com.acme.a")), metadata=T1)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    hb = svc.RecordHeartbeatRequest(agent_id="com.acme.a", session_id=a.session_id)
    for md, code, reason in [
        ((), grpc.StatusCode.UNAUTHENTICATED, "AGENT_TOKEN_REQUIRED"),
        ((("authorization", "Bearer agt_forged.x"),), grpc.StatusCode.UNAUTHENTICATED, "AGENT_TOKEN_INVALID"),
        (
            (("authorization", f"Bearer {a.token[:-4]}AAAA"),),
            grpc.StatusCode.UNAUTHENTICATED,
            "AGENT_TOKEN_INVALID",
        ),
        ((*a.md, ("x-tenant-id", "t2")), grpc.StatusCode.PERMISSION_DENIED, "TENANT_MISMATCH"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordHeartbeat(hb, metadata=md)
        assert (err.value.code(), error_info(err.value).reason) == (code, reason)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another agent's id
        await stub.RecordHeartbeat(
            svc.RecordHeartbeatRequest(agent_id="com.acme.b", session_id=a.session_id), metadata=a.md
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordHeartbeat(
            svc.RecordHeartbeatRequest(agent_id="com.acme.a", session_id="sess_nope"), metadata=a.md
        )
    assert (err.value.code(), error_info(err.value).reason) == (
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another tenant does not see it
        await stub.GetAgent(svc.GetAgentRequest(agent_id="com.acme.a"), metadata=T2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RevokeAgentToken(svc.RevokeAgentTokenRequest(agent_id="com.acme.a"), metadata=T2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    revoked = await stub.RevokeAgentToken(
        svc.RevokeAgentTokenRequest(agent_id="com.acme.a", reason="leaked"), metadata=T1
    )
    assert revoked.agent.state == agent_pb2.AGENT_STATE_DISCONNECTED
    assert not revoked.agent.HasField("token_issue_time")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordHeartbeat(hb, metadata=a.md)
    assert (err.value.code(), error_info(err.value).reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "AGENT_TOKEN_REVOKED",
    )
    again = await register(stub, "com.acme.a")  # revoked: registering anew needs no token
    assert again.token != a.token


# ---- the session channel and runs ------------------------------------------------------------------


async def test_session_channel_runs_and_streamed_output_for_many_subscribers(
    stub: svc_grpc.AgentServiceStub, mesh: Mesh
) -> None:
    reg = await register(stub, "com.acme.a")
    async with session(stub, reg) as s:
        run = await create_run(stub)
        assert run.state == run_pb2.RUN_STATE_ASSIGNED
        assigned = await s.next("assignment")
        assert assigned.assignment.run_id == run.run_id
        assert assigned.assignment.task.trace_id  # filled from the caller's trace
        early = [asyncio.create_task(collect(stub, run.run_id)) for _ in range(2)]
        await s.send(ack=svc.ConnectAck(run_id=run.run_id))
        for i in range(5):
            await s.send(run_output=svc.ConnectRunOutput(run_id=run.run_id, events=[tok(f"w{i} ")]))
        await s.send(
            run_output=svc.ConnectRunOutput(
                run_id=run.run_id,
                idempotency_key="k1",
                events=[
                    run_pb2.RunEvent(log=run_pb2.RunLog(level=run_pb2.LOG_LEVEL_INFO, message="halfway"))
                ],
            )
        )
        receipts = [await s.next("receipt") for _ in range(6)]
        assert all(r.receipt.status.code == 0 for r in receipts)
        assert sorted(r.receipt.last_sequence for r in receipts) == [3, 4, 5, 6, 7, 8]
        # The same batch again is stored once.
        await s.send(
            run_output=svc.ConnectRunOutput(
                run_id=run.run_id,
                idempotency_key="k1",
                events=[
                    run_pb2.RunEvent(log=run_pb2.RunLog(level=run_pb2.LOG_LEVEL_INFO, message="halfway"))
                ],
            )
        )
        assert (await s.next("receipt")).receipt.last_sequence == 8
        result = struct_pb2.Value()
        result.struct_value.update({"leads": 3})
        await s.send(run_complete=svc.ConnectRunComplete(run_id=run.run_id, result=result))
        done = await s.next("receipt")
        assert done.receipt.status.code == 0
        late = await collect(stub, run.run_id)
        first, second = [await t for t in early]
    assert first[0] == second[0] == late[0]  # the same events, whenever the subscriber came
    assert {(x[1].reason, x[1].status.code, x[1].last_sequence) for x in (first, second, late)} == {
        ("COMPLETED", 0, 9)
    }
    events, end = late
    assert [e.sequence for e in events] == list(range(1, 10))
    assert "".join(e.token.text for e in events if e.HasField("token")) == "w0 w1 w2 w3 w4 "
    assert events[-1].result.state == run_pb2.RUN_STATE_SUCCEEDED
    assert json_format.MessageToDict(events[-1].result.result) == {"leads": 3}
    assert (end.reason, end.status.code) == ("COMPLETED", 0)
    resumed, _ = await collect(stub, run.run_id, from_sequence=8)
    assert [e.sequence for e in resumed] == [8, 9]
    got = (await stub.GetRun(svc.GetRunRequest(run_id=run.run_id), metadata=T1)).run
    assert (got.state, got.last_sequence, got.attempt) == (run_pb2.RUN_STATE_SUCCEEDED, 9, 1)
    listed = await stub.ListRuns(svc.ListRunsRequest(agent_id="com.acme.a"), metadata=T1)
    assert [r.run_id for r in listed.runs] == [run.run_id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetRun(svc.GetRunRequest(run_id=run.run_id), metadata=T2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, run.run_id, md=T2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unary_agent_pull_publish_complete_and_cancel(stub: svc_grpc.AgentServiceStub) -> None:
    reg = await register(stub, "com.acme.a")
    run = (
        await stub.AssignTask(
            svc.AssignTaskRequest(agent_id="com.acme.a", task=run_pb2.Task(goal="x")), metadata=T1
        )
    ).run
    pulled = await stub.PullAssignments(
        svc.PullAssignmentsRequest(agent_id="com.acme.a", session_id=reg.session_id), metadata=reg.md
    )
    assert [r.run_id for r in pulled.runs] == [run.run_id]
    assert pulled.runs[0].state == run_pb2.RUN_STATE_RUNNING
    last = await stub.PublishRunOutput(
        svc.PublishRunOutputRequest(run_id=run.run_id, events=[tok("a"), tok("b")]), metadata=reg.md
    )
    assert last.last_sequence == 4
    with pytest.raises(grpc.aio.AioRpcError) as err:  # agents may not write results or state changes
        await stub.PublishRunOutput(
            svc.PublishRunOutputRequest(
                run_id=run.run_id,
                events=[run_pb2.RunEvent(result=run_pb2.RunResult(state=run_pb2.RUN_STATE_SUCCEEDED))],
            ),
            metadata=reg.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    waiter = asyncio.ensure_future(
        stub.PullAssignments(
            svc.PullAssignmentsRequest(agent_id="com.acme.a", session_id=reg.session_id, wait={"seconds": 5}),
            metadata=reg.md,
        )
    )
    await asyncio.sleep(0.2)
    cancelled = await stub.CancelRun(
        svc.CancelRunRequest(run_id=run.run_id, reason="changed my mind"), metadata=T1
    )
    assert cancelled.run.state == run_pb2.RUN_STATE_CANCELLED
    woke = await asyncio.wait_for(waiter, 5)  # the long poll returns with the cancellation
    assert [c.run_id for c in woke.cancellations] == [run.run_id]
    again = await stub.CancelRun(svc.CancelRunRequest(run_id=run.run_id), metadata=T1)
    assert again.run.state_reason == "changed my mind"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CompleteRun(
            svc.CompleteRunRequest(run_id=run.run_id, result=struct_pb2.Value(bool_value=True)),
            metadata=reg.md,
        )
    assert (err.value.code(), error_info(err.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RUN_ALREADY_FINISHED",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PublishRunOutput(
            svc.PublishRunOutputRequest(run_id=run.run_id, events=[tok("late")]), metadata=reg.md
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    events, end = await collect(stub, run.run_id)
    assert end.status.code == code_pb2.CANCELLED
    assert [e.token.text for e in events if e.HasField("token")] == ["a", "b"]


async def test_bad_run_requests(stub: svc_grpc.AgentServiceStub, mesh: Mesh) -> None:
    reg = await register(stub, "com.acme.a")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(svc.CreateRunRequest(task=run_pb2.Task(goal="x")), metadata=T1)
    assert bad_fields(err.value) == {"task.skill"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create_run(stub, skill="nobody.has.this")
    assert (err.value.code(), error_info(err.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_AGENT_FOR_SKILL",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another tenant's agents are not candidates
        await create_run(stub, md=T2)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    big = run_pb2.Task(skill=SKILL)
    big.inputs.update({"blob": "x" * (1024 * 1024 + 10)})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(svc.CreateRunRequest(task=big), metadata=T1)
    assert bad_fields(err.value) == {"task.inputs"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AssignTask(
            svc.AssignTaskRequest(agent_id="com.acme.a", task=run_pb2.Task(skill="other.skill")), metadata=T1
        )
    assert error_info(err.value).reason == "SKILL_NOT_OFFERED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AssignTask(
            svc.AssignTaskRequest(agent_id="com.acme.a", task=run_pb2.Task(goal="x")), metadata=T2
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetRun(svc.GetRunRequest(run_id="nope"), metadata=T1)
    assert bad_fields(err.value) == {"run_id"}
    assert await count(mesh, runs_t) == 0
    first = await create_run(stub, idempotency_key="order-1")
    second = await create_run(stub, idempotency_key="order-1")
    assert first.run_id == second.run_id
    other_tenant_agent = await register(stub, "com.acme.a", tenant="t2")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # an agent can't read another tenant's runs
        await stub.GetRun(svc.GetRunRequest(run_id=first.run_id), metadata=other_tenant_agent.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await count(mesh, runs_t) == 1
    assert reg.agent_id == "com.acme.a"


async def test_disconnect_hands_runs_to_another_agent_and_ends_the_session(
    stub: svc_grpc.AgentServiceStub,
) -> None:
    a = await register(stub, "com.acme.a", max_c=1)
    b = await register(stub, "com.acme.b", max_c=1)
    async with session(stub, a) as sa_, session(stub, b) as sb:
        run = await create_run(stub)
        holder, other = (sa_, sb) if run.agent_id == "com.acme.a" else (sb, sa_)
        await holder.next("assignment")
        await holder.send(ack=svc.ConnectAck(run_id=run.run_id))
        await holder.send(run_output=svc.ConnectRunOutput(run_id=run.run_id, events=[tok("before ")]))
        await holder.next("receipt")
        await stub.DisconnectAgent(
            svc.DisconnectAgentRequest(agent_id=holder.reg.agent_id, reason="maintenance"), metadata=T1
        )
        assert (await holder.next("end")).end.reason == "SESSION_ENDED"
        moved = await other.next("assignment")
        assert (moved.assignment.run_id, moved.assignment.attempt) == (run.run_id, 2)
        await other.send(ack=svc.ConnectAck(run_id=run.run_id))
        await other.send(run_output=svc.ConnectRunOutput(run_id=run.run_id, events=[tok("after")]))
        await other.send(
            run_complete=svc.ConnectRunComplete(run_id=run.run_id, result=struct_pb2.Value(string_value="ok"))
        )
        events, end = await collect(stub, run.run_id)
    assert "".join(e.token.text for e in events if e.HasField("token")) == "before after"
    assert end.status.code == 0
    gone = (await stub.GetAgent(svc.GetAgentRequest(agent_id=holder.reg.agent_id), metadata=T1)).agent
    assert (gone.state, gone.state_reason) == (agent_pb2.AGENT_STATE_DISCONNECTED, "maintenance")


async def test_watch_agent_events(stub: svc_grpc.AgentServiceStub) -> None:
    reg = await register(stub, "com.acme.a")
    seen: list[event_pb2.AgentEvent] = []

    async def watch() -> None:
        req = svc.WatchAgentEventsRequest(
            agent_id="com.acme.a",
            max_events=3,
            idle_timeout={"seconds": 5},
            event_types=[
                event_pb2.AGENT_EVENT_TYPE_ASSIGNED,
                event_pb2.AGENT_EVENT_TYPE_HEARTBEAT,
                event_pb2.AGENT_EVENT_TYPE_DISCONNECTED,
            ],
        )
        async for item in stub.WatchAgentEvents(req, metadata=T1):
            if item.HasField("event"):
                seen.append(item.event)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    await stub.RecordHeartbeat(
        svc.RecordHeartbeatRequest(agent_id="com.acme.a", session_id=reg.session_id), metadata=reg.md
    )
    await create_run(stub)
    await stub.DisconnectAgent(svc.DisconnectAgentRequest(agent_id="com.acme.a"), metadata=T1)
    await asyncio.wait_for(watcher, 5)
    assert [e.type for e in seen] == [
        event_pb2.AGENT_EVENT_TYPE_HEARTBEAT,
        event_pb2.AGENT_EVENT_TYPE_ASSIGNED,
        event_pb2.AGENT_EVENT_TYPE_DISCONNECTED,
    ]
    assert all(e.tenant_id == "t1" and e.agent_id == "com.acme.a" for e in seen)
    assert seen[2].previous_state != seen[2].state == agent_pb2.AGENT_STATE_DISCONNECTED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.WatchAgentEvents(svc.WatchAgentEventsRequest(agent_id="com.acme.a"), metadata=T2):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_agent_retires_it(stub: svc_grpc.AgentServiceStub) -> None:
    reg = await register(stub, "com.acme.a")
    deleted = await stub.DeleteAgent(
        svc.DeleteAgentRequest(agent_id="com.acme.a", reason="superseded"), metadata=T1
    )
    assert deleted.agent.state == agent_pb2.AGENT_STATE_RETIRED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordHeartbeat(
            svc.RecordHeartbeatRequest(agent_id="com.acme.a", session_id=reg.session_id), metadata=reg.md
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create_run(stub)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---- agent-to-agent calls -------------------------------------------------------------------------


async def running(stub: svc_grpc.AgentServiceStub, reg: Reg) -> run_pb2.Run:
    pulled = await stub.PullAssignments(
        svc.PullAssignmentsRequest(agent_id=reg.agent_id, session_id=reg.session_id, wait={"seconds": 5}),
        metadata=reg.md,
    )
    (run,) = pulled.runs
    return run


def signed_md(
    reg: Reg, capability: str, args: struct_pb2.Struct, parent: str = "", tenant: str = "t1"
) -> tuple[tuple[str, str], ...]:
    assert reg.key is not None
    sig = reg.key.sign_call(
        tenant_id=tenant,
        caller_agent_id=reg.agent_id,
        parent_run_id=parent,
        capability_id=capability,
        arguments=args,
    )
    md = [*reg.md, (signing.SIGNATURE_HEADER, sig)]
    if parent:
        md.append((signing.PARENT_RUN_HEADER, parent))
    return tuple(md)


async def test_agent_to_agent_depth_grants_and_signatures(
    stub: svc_grpc.AgentServiceStub, mesh: Mesh
) -> None:
    key = signing.AgentKey()
    a = await register(stub, "com.acme.a", skills=("chain.step",), grants=("chain.*",), max_c=10, key=key)
    root = await create_run(stub, skill="chain.step")
    current = await running(stub, a)
    assert (current.run_id, current.depth) == (root.run_id, 0)
    for depth in (1, 2, 3):
        args = struct_pb2.Struct()
        args.update({"depth": depth})
        task = run_pb2.Task(skill="chain.step", inputs=args)
        child = (
            await stub.CreateRun(
                svc.CreateRunRequest(task=task), metadata=signed_md(a, "chain.step", args, current.run_id)
            )
        ).run
        assert (child.depth, child.caller_agent_id, child.task.parent_run_id) == (
            depth,
            "com.acme.a",
            current.run_id,
        )
        assert child.caller_signature.startswith("t=")
        current = await running(stub, a)
        assert current.run_id == child.run_id
    args = struct_pb2.Struct()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(
            svc.CreateRunRequest(task=run_pb2.Task(skill="chain.step")),
            metadata=signed_md(a, "chain.step", args, current.run_id),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).reason == "AGENT_CALL_DEPTH_EXCEEDED"
    # Not granted: crm.* is outside chain.*.
    await register(stub, "com.acme.crm", skills=(SKILL,))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(
            svc.CreateRunRequest(task=run_pb2.Task(skill=SKILL)),
            metadata=signed_md(a, SKILL, args, root.run_id),
        )
    assert (err.value.code(), error_info(err.value).reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "TOOL_NOT_GRANTED",
    )
    # Unsigned, tampered and replayed calls.
    task = run_pb2.Task(skill="chain.step")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(
            svc.CreateRunRequest(task=task), metadata=(*a.md, (signing.PARENT_RUN_HEADER, root.run_id))
        )
    assert error_info(err.value).reason == "AGENT_SIGNATURE_MISSING"
    other = struct_pb2.Struct()
    other.update({"x": 1})
    with pytest.raises(grpc.aio.AioRpcError) as err:  # signed for other arguments
        await stub.CreateRun(
            svc.CreateRunRequest(task=task), metadata=signed_md(a, "chain.step", other, root.run_id)
        )
    assert (err.value.code(), error_info(err.value).reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "AGENT_SIGNATURE_INVALID",
    )
    md = signed_md(a, "chain.step", args, root.run_id)
    await stub.CreateRun(svc.CreateRunRequest(task=task), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(svc.CreateRunRequest(task=task), metadata=md)
    assert error_info(err.value).reason == "AGENT_SIGNATURE_REPLAYED"
    unsigned_agent = await register(stub, "com.acme.nokey", skills=("x.y",))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(svc.CreateRunRequest(task=task), metadata=unsigned_agent.md)
    assert (err.value.code(), error_info(err.value).reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "AGENT_KEY_REQUIRED",
    )


async def test_agent_calls_agent_through_the_router(stub: svc_grpc.AgentServiceStub, mesh: Mesh) -> None:
    caller = await register(
        stub, "com.acme.caller", skills=("sales.summarize",), grants=(SKILL,), key=signing.AgentKey()
    )
    callee = await register(stub, "com.acme.callee", skills=(SKILL,))
    root = await create_run(stub, skill="sales.summarize")
    parent = await running(stub, caller)
    assert parent.run_id == root.run_id
    args = struct_pb2.Struct()
    args.update({"id": 7})
    async with grpc.aio.insecure_channel(mesh.address) as ch, session(stub, callee) as s:
        router = rt_grpc.RouterServiceStub(ch)

        async def serve() -> None:
            msg = await s.next("assignment")
            run = msg.assignment
            assert (run.caller_agent_id, run.depth) == ("com.acme.caller", 1)
            assert json_format.MessageToDict(run.task.inputs) == {"id": 7}
            await s.send(ack=svc.ConnectAck(run_id=run.run_id))
            await s.send(
                run_output=svc.ConnectRunOutput(run_id=run.run_id, events=[tok("lead "), tok("seven")])
            )
            value = struct_pb2.Value()
            value.struct_value.update({"name": "Ada"})
            await s.send(run_complete=svc.ConnectRunComplete(run_id=run.run_id, result=value))

        server = asyncio.create_task(serve())
        resp = await router.Invoke(
            rt.InvokeRequest(capability_id=SKILL, arguments=args),
            metadata=signed_md(caller, SKILL, args, parent.run_id),
        )
        await server
        assert json_format.MessageToDict(resp.result) == {"name": "Ada"}
        assert resp.endpoint.uri == "agent://com.acme.callee"
        server = asyncio.create_task(serve())
        chunks = []
        async for item in router.InvokeStream(
            rt.InvokeStreamRequest(capability_id=SKILL, arguments=args),
            metadata=signed_md(caller, SKILL, args, parent.run_id),
        ):
            chunks.append(item)
        await server
    texts = [c.chunk.text for c in chunks if c.HasField("chunk") and c.chunk.WhichOneof("content") == "text"]
    assert texts == ["lead ", "seven"]
    assert chunks[-1].end.reason == "COMPLETED"
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the router enforces grants too
        async with grpc.aio.insecure_channel(mesh.address) as ch:
            await rt_grpc.RouterServiceStub(ch).Invoke(
                rt.InvokeRequest(capability_id="sales.summarize", arguments=args),
                metadata=signed_md(caller, "sales.summarize", args, parent.run_id),
            )
    assert error_info(err.value).reason == "TOOL_NOT_GRANTED"
    runs = (await stub.ListRuns(svc.ListRunsRequest(agent_id="com.acme.callee"), metadata=T1)).runs
    assert [(r.caller_agent_id, r.state) for r in runs] == [
        ("com.acme.caller", run_pb2.RUN_STATE_SUCCEEDED)
    ] * 2
    for _ in range(100):  # the run's end reaches the caller just before its bookkeeping is done
        text = generate_latest(mesh.metrics).decode()
        if "agent_to_agent_latency_ms_count 2.0" in text:
            break
        await asyncio.sleep(0.02)
    assert 'agent_invocations_total{caller="agent"} 2.0' in text
    assert "agent_to_agent_latency_ms_count 2.0" in text
    assert "agent_registered_total 2.0" in text


async def test_quotas_answer_resource_exhausted_with_retry_info(tmp_path: Path, database_url: str) -> None:
    m = await start_mesh(mesh_settings(tmp_path, database_url, tenant_run_quota="rate=1,burst=2"))
    try:
        async with grpc.aio.insecure_channel(m.address) as ch:
            stub = svc_grpc.AgentServiceStub(ch)
            await register(stub, "com.acme.a", max_c=10)
            await create_run(stub)
            await create_run(stub)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await create_run(stub)
            assert (err.value.code(), error_info(err.value).reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "QUOTA_EXCEEDED",
            )
            status = rpc_status.from_call(err.value)
            assert status is not None
            retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
            assert retry
            info = error_details_pb2.RetryInfo()
            retry[0].Unpack(info)
            assert 0 < info.retry_delay.ToMilliseconds() <= 1000
    finally:
        await m.stop(0)


async def test_restarted_mesh_accepts_the_agents_token(tmp_path: Path, database_url: str) -> None:
    settings = mesh_settings(tmp_path, database_url)
    m = await start_mesh(settings)
    try:
        async with grpc.aio.insecure_channel(m.address) as ch:
            reg = await register(svc_grpc.AgentServiceStub(ch), "com.acme.a")
    finally:
        await m.stop(0)
    m = await start_mesh(settings)  # same data folder (token secret) and database
    try:
        async with grpc.aio.insecure_channel(m.address) as ch:
            stub = svc_grpc.AgentServiceStub(ch)
            known = (await stub.GetAgent(svc.GetAgentRequest(agent_id="com.acme.a"), metadata=T1)).agent
            assert known.state == agent_pb2.AGENT_STATE_IDLE  # it has three intervals to show up
            again = await stub.RegisterAgent(
                svc.RegisterAgentRequest(agent=manifest("com.acme.a"), resume_session_id=reg.session_id),
                metadata=reg.md,
            )
            assert again.agent_token != reg.token
    finally:
        await m.stop(0)


async def test_quotas_and_replay_memory_are_shared_through_redis(
    tmp_path: Path, pg_database_url: str, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    for key in await client.keys("powerx:quota:tenant:t-shared*"):
        await client.delete(key)
    await client.aclose()
    meshes = [
        await start_mesh(
            mesh_settings(
                tmp_path / str(i),
                pg_database_url,
                redis_url,
                tenant_run_quota="rate=0.5,burst=2",
                agent_token_secret="shared-secret-for-the-test-0123456789",
            )
        )
        for i in range(2)
    ]
    tenant = (("x-tenant-id", "t-shared"),)
    try:
        async with (
            grpc.aio.insecure_channel(meshes[0].address) as c0,
            grpc.aio.insecure_channel(meshes[1].address) as c1,
        ):
            s0, s1 = svc_grpc.AgentServiceStub(c0), svc_grpc.AgentServiceStub(c1)
            key = signing.AgentKey()
            a = await register(
                s0, "com.acme.a", tenant="t-shared", skills=("x.step",), grants=("x.*",), key=key, max_c=10
            )
            other = meshes[1].agents
            assert other is not None
            for _ in range(100):  # the other process learns of the agent from the shared bus
                if ("t-shared", "com.acme.a") in other.agents:
                    break
                await asyncio.sleep(0.05)
            assert other.agents[("t-shared", "com.acme.a")].agent.state == agent_pb2.AGENT_STATE_IDLE
            await create_run(s0, skill="x.step", md=tenant)
            await create_run(
                s1, skill="x.step", md=tenant
            )  # the second token, taken through the other process
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await create_run(s1, skill="x.step", md=tenant)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # A signed call accepted by one process is a replay on the other.
            args = struct_pb2.Struct()
            md = signed_md(a, "x.step", args, tenant="t-shared")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s0.CreateRun(svc.CreateRunRequest(task=run_pb2.Task(skill="x.step")), metadata=md)
            assert (
                error_info(err.value).reason == "QUOTA_EXCEEDED"
            )  # admitted (nonce used), then the tenant quota
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s1.CreateRun(svc.CreateRunRequest(task=run_pb2.Task(skill="x.step")), metadata=md)
            assert error_info(err.value).reason == "AGENT_SIGNATURE_REPLAYED"
    finally:
        for m in meshes:
            await m.stop(0)


async def test_overlong_reasons_and_session_ids_are_rejected(stub: svc_grpc.AgentServiceStub) -> None:
    reg = await register(stub, "com.acme.a")
    long = "x" * 501
    for call, req in [
        (stub.DisconnectAgent, svc.DisconnectAgentRequest(agent_id="com.acme.a", reason=long)),
        (stub.DeleteAgent, svc.DeleteAgentRequest(agent_id="com.acme.a", reason=long)),
        (stub.RevokeAgentToken, svc.RevokeAgentTokenRequest(agent_id="com.acme.a", reason=long)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=T1)
        assert bad_fields(err.value) == {"reason"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterAgent(
            svc.RegisterAgentRequest(agent=manifest("com.acme.a"), resume_session_id="s" * 65),
            metadata=reg.md,
        )
    assert bad_fields(err.value) == {"resume_session_id"}
    got = (await stub.GetAgent(svc.GetAgentRequest(agent_id="com.acme.a"), metadata=T1)).agent
    assert (got.state, got.session_id) == (agent_pb2.AGENT_STATE_IDLE, reg.session_id)  # nothing changed
