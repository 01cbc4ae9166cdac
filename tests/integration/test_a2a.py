"""A2A interop through real sockets, both ways, with the official a2a-sdk.

Mesh -> A2A: in-process A2A agents (a2a-sdk server on uvicorn) registered with RegisterExternalAgent,
run through CreateRun, CancelRun and Router.InvokeStream.
A2A -> mesh: an a2a-sdk client runs a native agent (driven by hand over its Connect stream) through
the card the mesh publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
    TaskStatus,
    a2a_pb2_grpc,
)
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from powerx.agent.v1 import agent_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.agent.v1 import agent_service_pb2_grpc as svc_grpc
from powerx.common.v1 import common_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from powerx.router.v1 import router_service_pb2 as rt
from powerx.router.v1 import router_service_pb2_grpc as rt_grpc
from servers.mesh import Mesh, start_mesh
from tests.conftest import mesh_settings
from tests.integration.helpers import bad_fields, error_info

T1 = (("x-tenant-id", "t1"),)
HOST = "127.0.0.1"


# ---- fixtures: the mesh and its stubs ----------------------------------------------------------------


@pytest.fixture
async def mesh(tmp_path: Path, database_url: str) -> AsyncIterator[Mesh]:
    m = await start_mesh(mesh_settings(tmp_path, database_url, a2a_address=f"{HOST}:0"))
    try:
        yield m
    finally:
        await m.stop(0)


@dataclass
class Stubs:
    agents: svc_grpc.AgentServiceStub
    registry: rs_grpc.RegistryServiceStub
    router: rt_grpc.RouterServiceStub


@pytest.fixture
async def stubs(mesh: Mesh) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield Stubs(
            svc_grpc.AgentServiceStub(ch), rs_grpc.RegistryServiceStub(ch), rt_grpc.RouterServiceStub(ch)
        )


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# ---- in-process A2A agents -----------------------------------------------------------------------------


@dataclass
class Seen:
    """What an A2A agent received, for assertions."""

    messages: list[Message] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    over_grpc: list[bool] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)


async def _submit(context: RequestContext, queue: EventQueue, seen: Seen) -> TaskUpdater:
    assert context.message is not None
    seen.messages.append(context.message)
    seen.headers.append(dict(context.call_context.state.get("headers", {})))
    seen.over_grpc.append("grpc_context" in context.call_context.state)
    if context.current_task is None:  # a Task first, before any status update
        await queue.enqueue_event(
            Task(
                id=context.task_id,
                context_id=context.context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                history=[context.message],
            )
        )
    return TaskUpdater(queue, context.task_id or "", context.context_id or "")


class ChunkExecutor(AgentExecutor):
    """Upper-cases the words of the user's text and streams them as chunks of one artifact."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        up = await _submit(context, event_queue, self.seen)
        await up.start_work(up.new_agent_message([Part(text="working")]))
        words = context.get_user_input().split()
        for i, w in enumerate(words):
            await up.add_artifact(
                [Part(text=w.upper() + " ")],
                artifact_id="out",
                name="echo",
                append=i > 0,
                last_chunk=i == len(words) - 1,
            )
        await up.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()


class FailingExecutor(ChunkExecutor):
    """Fails every task with a reason."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        up = await _submit(context, event_queue, self.seen)
        await up.start_work()
        await up.failed(up.new_agent_message([Part(text="boom: the ledger is down")]))


class AskingExecutor(ChunkExecutor):
    """Asks the caller for more input."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        up = await _submit(context, event_queue, self.seen)
        await up.requires_input(up.new_agent_message([Part(text="which account?")]))


class SlowExecutor(ChunkExecutor):
    """Streams one chunk, then works until cancelled."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        up = await _submit(context, event_queue, self.seen)
        await up.start_work()
        await up.add_artifact([Part(text="first")], artifact_id="out", name="slow")
        self.seen.started.set()
        await asyncio.Event().wait()  # until the SDK cancels this task

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.seen.cancelled.set()
        await super().cancel(context, event_queue)


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


@dataclass
class A2AAgent:
    """An A2A agent served on a free port; `card` may be replaced to change what it publishes."""

    base: str
    card: AgentCard
    seen: Seen

    @property
    def card_url(self) -> str:
        return f"{self.base}/.well-known/agent-card.json"


def make_card(
    base: str, name: str, skills: tuple[str, ...], version: str = "0.1.0", grpc_url: str = ""
) -> AgentCard:
    card = AgentCard(
        name=name,
        description=f"{name} for tests",
        version=version,
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id=s, name=s, description=f"skill {s}", tags=["test"]) for s in skills],
        supported_interfaces=[
            AgentInterface(protocol_binding="JSONRPC", protocol_version="1.0", url=f"{base}/a2a/jsonrpc"),
            AgentInterface(protocol_binding="HTTP+JSON", protocol_version="1.0", url=f"{base}/a2a/rest"),
        ],
    )
    if grpc_url:  # first: the card's order is the server's preference, which the mesh follows
        card.supported_interfaces.insert(
            0, AgentInterface(protocol_binding="GRPC", protocol_version="1.0", url=grpc_url)
        )
    return card


@contextlib.asynccontextmanager
async def a2a_agent(
    executor: type[ChunkExecutor] = ChunkExecutor,
    name: str = "Echo Agent",
    skills: tuple[str, ...] = ("echo",),
    with_grpc: bool = False,
) -> AsyncIterator[A2AAgent]:
    sock = free_socket()
    base = f"http://{HOST}:{sock.getsockname()[1]}"
    gsrv = grpc.aio.server()
    grpc_url = f"{HOST}:{gsrv.add_insecure_port(f'{HOST}:0')}" if with_grpc else ""  # host:port, no scheme
    agent = A2AAgent(base, make_card(base, name, skills, grpc_url=grpc_url), Seen())

    async def current(_: AgentCard) -> AgentCard:
        return agent.card

    handler = DefaultRequestHandler(
        agent_executor=executor(agent.seen), task_store=InMemoryTaskStore(), agent_card=agent.card
    )
    app = Starlette(
        routes=[
            *create_agent_card_routes(agent.card, card_modifier=current),
            *create_jsonrpc_routes(handler, rpc_url="/a2a/jsonrpc"),
            *create_rest_routes(handler, path_prefix="/a2a/rest"),
            Route("/list.json", lambda _: JSONResponse(["not", "a", "card"])),
            Route("/object.json", lambda _: JSONResponse({"hello": "world"})),
            Route("/page.html", lambda _: HTMLResponse("<html>not a card</html>")),
        ]
    )
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", timeout_graceful_shutdown=1))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), gsrv)
    await gsrv.start()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: asyncio.sleep(0, server.started))
    try:
        yield agent
    finally:
        server.should_exit = True
        await task
        await gsrv.stop(0)
        await handler.aclose()


async def register_external(stubs: Stubs, card_url: str, **kw: Any) -> agent_pb2.Agent:
    resp = await stubs.agents.RegisterExternalAgent(
        svc.RegisterExternalAgentRequest(card_url=card_url, **kw), metadata=T1
    )
    return resp.agent


async def collect(stubs: Stubs, run_id: str) -> tuple[list[run_pb2.RunEvent], Any]:
    events = []
    async for item in stubs.agents.StreamRunOutput(svc.StreamRunOutputRequest(run_id=run_id), metadata=T1):
        if item.HasField("end"):
            return events, item.end
        events.append(item.event)
    raise AssertionError("the stream ended without `end`")


def chunks(events: list[run_pb2.RunEvent]) -> list[tuple[str, str, bool, bool]]:
    return [
        (e.artifact.artifact_id, e.artifact.text, e.artifact.append, e.artifact.last_chunk)
        for e in events
        if e.HasField("artifact")
    ]


def as_dict(value: struct_pb2.Value | struct_pb2.Struct) -> Any:
    return json_format.MessageToDict(value)


# ---- mesh -> external A2A agents -----------------------------------------------------------------------


async def test_external_agent_is_registered_from_its_card_and_streams_a_run(stubs: Stubs) -> None:
    async with a2a_agent() as remote:
        agent = await register_external(
            stubs, remote.card_url, roles=["writer"], labels={"team": "docs"}, tenant_scopes=["t2"]
        )
        assert agent.agent_id == "echo-agent"  # from the card's name
        assert agent.tenant_id == "t1"
        assert list(agent.skills) == ["echo-agent/echo"]
        assert agent.version == "0.1.0"
        assert agent.display_name == "Echo Agent"
        assert agent.a2a_card_url == remote.card_url
        assert agent.a2a_card["name"] == "Echo Agent"
        assert agent.labels["powerx.kind"] == "a2a"
        assert agent.labels["team"] == "docs"
        assert list(agent.roles) == ["writer"]
        assert agent.state == agent_pb2.AGENT_STATE_IDLE

        caps = await stubs.registry.GetCapability(
            rs.GetCapabilityRequest(capability_id="echo-agent/echo"), metadata=T1
        )
        assert [c.capability_id for c in caps.capabilities] == ["echo-agent/echo"]
        eps = await stubs.registry.ListRuntimeEndpoints(
            rs.ListRuntimeEndpointsRequest(capability_id="echo-agent/echo"), metadata=T1
        )
        assert [(e.transport, e.uri) for e in eps.endpoints] == [
            (common_pb2.TRANSPORT_AGENT, remote.card_url)
        ]

        created = await stubs.agents.CreateRun(
            svc.CreateRunRequest(task=run_pb2.Task(skill="echo-agent/echo", goal="hello mesh world")),
            metadata=T1,
        )
        events, end = await collect(stubs, created.run.run_id)
        assert chunks(events) == [
            ("out", "HELLO ", False, False),
            ("out", "MESH ", True, False),
            ("out", "WORLD ", True, True),
        ]
        assert [e.log.message for e in events if e.HasField("log")] == ["working"]
        assert events[-1].result.state == run_pb2.RUN_STATE_SUCCEEDED
        assert end.status.code == code_pb2.OK
        run = (await stubs.agents.GetRun(svc.GetRunRequest(run_id=created.run.run_id), metadata=T1)).run
        assert run.state == run_pb2.RUN_STATE_SUCCEEDED
        result = as_dict(run.result)
        assert result["text"] == "HELLO MESH WORLD "
        assert result["artifacts"] == [{"artifact_id": "out", "name": "echo", "text": "HELLO MESH WORLD "}]
        assert result["task_id"]

        # What reached the A2A agent: the goal as text, the card's own skill id, the run's trace.
        message = remote.seen.messages[-1]
        assert message.parts[0].text == "hello mesh world"
        assert as_dict(message.metadata)["skill"] == "echo"
        assert remote.seen.headers[-1]["traceparent"].split("-")[1] == run.task.trace_id
        assert remote.seen.over_grpc == [False]


async def test_assign_task_and_router_invoke_stream_reach_the_external_agent(stubs: Stubs) -> None:
    async with a2a_agent() as remote:
        await register_external(stubs, remote.card_url, agent_id="com.acme.echo")
        assigned = await stubs.agents.AssignTask(
            svc.AssignTaskRequest(agent_id="com.acme.echo", task=run_pb2.Task(goal="one two")), metadata=T1
        )
        events, _ = await collect(stubs, assigned.run.run_id)
        assert [c[1] for c in chunks(events)] == ["ONE ", "TWO "]
        assert events[-1].result.state == run_pb2.RUN_STATE_SUCCEEDED

        # A routed call carries arguments only: their `text` becomes the message's text.
        args = struct_pb2.Struct()
        args.update({"text": "routed call", "n": 2})

        async def routed() -> list[rt.StreamChunk]:
            out = []
            async for item in stubs.router.InvokeStream(
                rt.InvokeStreamRequest(capability_id="com.acme.echo/echo", arguments=args), metadata=T1
            ):
                if item.HasField("chunk"):
                    out.append(item.chunk)
                else:
                    assert item.end.status.code == code_pb2.OK, item.end.status.message
            return out

        got: list[rt.StreamChunk] = []

        async def routable() -> bool:
            nonlocal got
            try:
                got = await routed()
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: the route snapshot catches up
                    raise
                return False
            return True

        await wait_until(routable)
        assert [c.text for c in got if c.WhichOneof("content") == "text"] == ["ROUTED ", "CALL "]
        assert as_dict(got[-1].data)["text"] == "ROUTED CALL "
        data_part = remote.seen.messages[-1].parts[1]
        assert as_dict(data_part.data) == {"text": "routed call", "n": 2}


async def test_external_agent_over_the_grpc_binding(stubs: Stubs) -> None:
    async with a2a_agent(name="Grpc Echo", with_grpc=True) as remote:
        await register_external(stubs, remote.card_url)
        created = await stubs.agents.CreateRun(
            svc.CreateRunRequest(task=run_pb2.Task(skill="grpc-echo/echo", goal="over grpc")), metadata=T1
        )
        events, end = await collect(stubs, created.run.run_id)
        assert [c[1:] for c in chunks(events)] == [("OVER ", False, False), ("GRPC ", True, True)]
        assert end.status.code == code_pb2.OK
        run = (await stubs.agents.GetRun(svc.GetRunRequest(run_id=created.run.run_id), metadata=T1)).run
        assert as_dict(run.result)["text"] == "OVER GRPC "
        assert remote.seen.over_grpc == [True]


async def test_failing_and_interactive_external_agents_fail_the_run(stubs: Stubs) -> None:
    async with (
        a2a_agent(FailingExecutor, name="Ledger") as failing,
        a2a_agent(AskingExecutor, name="Asker") as asking,
    ):
        await register_external(stubs, failing.card_url)
        await register_external(stubs, asking.card_url)
        for skill, code, text in (
            ("ledger/echo", code_pb2.UNKNOWN, "the A2A agent failed the task: boom: the ledger is down"),
            ("asker/echo", code_pb2.FAILED_PRECONDITION, "asked for input: which account?"),
        ):
            created = await stubs.agents.CreateRun(
                svc.CreateRunRequest(task=run_pb2.Task(skill=skill, goal="x")), metadata=T1
            )
            events, end = await collect(stubs, created.run.run_id)
            assert events[-1].result.state == run_pb2.RUN_STATE_FAILED
            assert end.status.code == code
            assert text in end.status.message
        assert "does not continue interactive" in end.status.message


async def test_cancelling_a_run_cancels_the_remote_task(stubs: Stubs) -> None:
    async with a2a_agent(SlowExecutor, name="Slow") as remote:
        await register_external(stubs, remote.card_url)
        created = await stubs.agents.CreateRun(
            svc.CreateRunRequest(task=run_pb2.Task(skill="slow/echo", goal="x")), metadata=T1
        )
        await asyncio.wait_for(remote.seen.started.wait(), 10)
        await stubs.agents.CancelRun(
            svc.CancelRunRequest(run_id=created.run.run_id, reason="enough"), metadata=T1
        )
        await asyncio.wait_for(remote.seen.cancelled.wait(), 10)
        events, end = await collect(stubs, created.run.run_id)
        assert ("out", "first", False, False) in chunks(events)
        assert events[-1].result.state == run_pb2.RUN_STATE_CANCELLED
        assert end.status.code == code_pb2.CANCELLED


async def test_bad_or_unreachable_cards_register_nothing(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register_external(stubs, "ftp://example.com/card.json", agent_id="Bad Id", roles=["Not A Role"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == {"card_url", "agent_id", "roles[0]"}

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register_external(stubs, "", labels={"powerx.kind": "native"})
    assert bad_fields(err.value) == {"card_url", "labels[powerx.kind]"}

    for url in ("http://[::1/card.json", "http://user:secret@example.com/card.json"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register_external(stubs, url)
        assert bad_fields(err.value) == {"card_url"}, url

    closed = free_socket()
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register_external(stubs, f"http://{HOST}:{port}/.well-known/agent-card.json")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err.value).reason == "A2A_CARD_UNREACHABLE"

    async with a2a_agent() as remote:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register_external(stubs, f"{remote.base}/no/such/card.json")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == "A2A_CARD_NOT_FOUND"
        assert "HTTP 404" in (err.value.details() or "")

        for path in ("list.json", "object.json", "page.html"):  # answered, but not with a card
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await register_external(stubs, f"{remote.base}/{path}")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, path
            assert error_info(err.value).reason == "A2A_CARD_INVALID", path

        remote.card = make_card(remote.base, "Echo Agent", ())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register_external(stubs, remote.card_url)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == "A2A_CARD_INVALID"
        assert "no skill" in (err.value.details() or "")

    listed = await stubs.agents.ListAgents(svc.ListAgentsRequest(), metadata=T1)
    assert list(listed.agents) == []
    providers = await stubs.registry.ListProviders(rs.ListProvidersRequest(), metadata=T1)
    assert list(providers.providers) == []


async def test_registering_the_same_card_again_refreshes_the_agent(stubs: Stubs) -> None:
    async with a2a_agent() as remote:
        first = await register_external(stubs, remote.card_url)
        remote.card = make_card(remote.base, "Echo Agent Renamed", ("shout", "Whisper Softly"), version="2.1")
        second = await register_external(stubs, remote.card_url)
        assert second.agent_id == first.agent_id == "echo-agent"  # the URL is known: same agent
        assert list(second.skills) == ["echo-agent/shout", "echo-agent/whisper-softly"]
        assert second.version == "2.1.0"
        assert second.labels["a2a.card_version"] == "2.1"
        assert second.display_name == "Echo Agent Renamed"
        assert second.create_time == first.create_time
        caps = await stubs.registry.ListCapabilities(
            rs.ListCapabilitiesRequest(provider_id="echo-agent"), metadata=T1
        )
        assert sorted(c.capability_id for c in caps.capabilities) == [
            "echo-agent/shout",
            "echo-agent/whisper-softly",
        ]
        listed = await stubs.agents.ListAgents(svc.ListAgentsRequest(), metadata=T1)
        assert [a.agent_id for a in listed.agents] == ["echo-agent"]

        # The run names the card's own id of the sanitized skill.
        created = await stubs.agents.CreateRun(
            svc.CreateRunRequest(task=run_pb2.Task(skill="echo-agent/whisper-softly", goal="psst")),
            metadata=T1,
        )
        events, _ = await collect(stubs, created.run.run_id)
        assert events[-1].result.state == run_pb2.RUN_STATE_SUCCEEDED
        assert as_dict(remote.seen.messages[-1].metadata)["skill"] == "Whisper Softly"


# ---- A2A clients -> native mesh agents -----------------------------------------------------------------


@dataclass
class NativeAgent:
    """A native agent on its Connect stream that answers each assignment with tokens and a result."""

    stub: svc_grpc.AgentServiceStub
    agent_id: str
    token: str = ""
    session_id: str = ""
    assignments: list[run_pb2.Run] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    hold: bool = False  # keep runs open (until cancelled) instead of completing them
    outbox: asyncio.Queue[svc.ConnectRequest | None] = field(default_factory=asyncio.Queue)

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def register(self) -> None:
        manifest = agent_pb2.Agent(
            agent_id=self.agent_id,
            version="1.2.0",
            display_name="Writer",
            description="Writes short texts",
            skills=["text.write", "text.shorten"],
        )
        resp = await self.stub.RegisterAgent(svc.RegisterAgentRequest(agent=manifest), metadata=T1)
        self.token, self.session_id = resp.agent_token, resp.session_id

    async def serve(self) -> None:
        async def requests() -> AsyncIterator[svc.ConnectRequest]:
            yield svc.ConnectRequest(
                hello=svc.ConnectHello(agent_id=self.agent_id, session_id=self.session_id)
            )
            while (item := await self.outbox.get()) is not None:
                yield item

        call = self.stub.Connect(requests(), metadata=self.md)
        try:
            async for msg in call:
                kind = msg.WhichOneof("kind")
                if kind == "assignment":
                    await self.answer(msg.assignment)
                elif kind == "cancel" and msg.cancel.run_id:
                    self.cancels.append(msg.cancel.run_id)
        finally:
            call.cancel()

    async def answer(self, run: run_pb2.Run) -> None:
        self.assignments.append(run)
        send = self.outbox.put
        await send(svc.ConnectRequest(ack=svc.ConnectAck(run_id=run.run_id)))
        tokens = [run_pb2.RunEvent(token=run_pb2.RunToken(text=t)) for t in ("Hello", ", ", "world")]
        log = run_pb2.RunEvent(log=run_pb2.RunLog(level=run_pb2.LOG_LEVEL_INFO, message="drafting"))
        await send(
            svc.ConnectRequest(run_output=svc.ConnectRunOutput(run_id=run.run_id, events=[log, *tokens]))
        )
        if self.hold:
            return
        chart = run_pb2.RunArtifactChunk(
            artifact_id="stats", name="stats.json", mime_type="application/json", last_chunk=True
        )
        chart.json.struct_value.update({"words": 2})
        await send(
            svc.ConnectRequest(
                run_output=svc.ConnectRunOutput(run_id=run.run_id, events=[run_pb2.RunEvent(artifact=chart)])
            )
        )
        result = struct_pb2.Value()
        result.struct_value.update({"summary": "Hello, world"})
        await send(svc.ConnectRequest(run_complete=svc.ConnectRunComplete(run_id=run.run_id, result=result)))


@contextlib.asynccontextmanager
async def native_agent(
    stubs: Stubs, agent_id: str = "com.acme.writer", hold: bool = False
) -> AsyncIterator[NativeAgent]:
    agent = NativeAgent(stubs.agents, agent_id, hold=hold)
    await agent.register()
    task = asyncio.create_task(agent.serve())

    async def live() -> bool:
        got = await stubs.agents.GetAgent(svc.GetAgentRequest(agent_id=agent_id), metadata=T1)
        return got.agent.state == agent_pb2.AGENT_STATE_IDLE

    try:
        await wait_until(live)
        yield agent
    finally:
        await agent.outbox.put(None)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task


def user_request(text: str, **metadata: str) -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)])
    data = Part()
    data.data.struct_value.update({"tone": "friendly"})
    message.parts.append(data)
    message.metadata.update(metadata)
    return SendMessageRequest(message=message)


async def test_a2a_client_runs_a_native_agent_through_its_published_card(mesh: Mesh, stubs: Stubs) -> None:
    async with native_agent(stubs) as native, httpx.AsyncClient(timeout=10) as http:
        base = f"http://{mesh.a2a_address}/a2a/t1/com.acme.writer"
        got = await stubs.agents.GetAgent(svc.GetAgentRequest(agent_id="com.acme.writer"), metadata=T1)
        assert got.agent.a2a_card_url == f"{base}/.well-known/agent-card.json"  # the real port
        card = await A2ACardResolver(http, base).get_agent_card()
        assert card.name == "Writer"
        assert card.version == "1.2.0"
        assert card.capabilities.streaming
        assert [s.id for s in card.skills] == ["text.write", "text.shorten"]
        assert [(i.protocol_binding, i.url, i.protocol_version) for i in card.supported_interfaces] == [
            ("JSONRPC", f"{base}/jsonrpc", "1.0"),
            ("HTTP+JSON", f"{base}/rest", "1.0"),
        ]

        for binding in ("JSONRPC", "HTTP+JSON"):
            client = ClientFactory(
                ClientConfig(
                    streaming=True, supported_protocol_bindings=[binding], use_client_preference=True
                )
            ).create(card)
            events: list[StreamResponse] = []
            async for event in client.send_message(user_request("write a greeting", skill="text.shorten")):
                events.append(event)
            kinds = [e.WhichOneof("payload") for e in events]
            assert kinds[0] == "task", binding
            assert events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
            updates = [e.artifact_update for e in events if e.HasField("artifact_update")]
            text = [
                (u.artifact.parts[0].text, u.append, u.last_chunk)
                for u in updates
                if u.artifact.artifact_id == "powerx.text"
            ]
            assert text == [
                ("Hello", False, False),
                (", ", True, False),
                ("world", True, False),
                ("", True, True),
            ]
            stats = [u for u in updates if u.artifact.artifact_id == "stats"]
            assert len(stats) == 1
            assert stats[0].artifact.name == "stats.json"
            assert as_dict(stats[0].artifact.parts[0].data) == {"words": 2}
            result = [u for u in updates if u.artifact.artifact_id == "powerx.result"]
            assert as_dict(result[0].artifact.parts[0].data) == {"summary": "Hello, world"}
            statuses = [e.status_update.status for e in events if e.HasField("status_update")]
            assert statuses[0].state == TaskState.TASK_STATE_WORKING
            assert any(s.message.parts and s.message.parts[0].text == "drafting" for s in statuses)
            assert statuses[-1].state == TaskState.TASK_STATE_COMPLETED
            task = await client.get_task(GetTaskRequest(id=events[0].task.id))
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            await client.close()

            run = native.assignments[-1]
            assert run.task.goal == "write a greeting"
            assert run.task.skill == "text.shorten"
            assert as_dict(run.task.inputs) == {"tone": "friendly"}
            assert run.task.actor_id == "a2a"
            stored = await stubs.agents.GetRun(svc.GetRunRequest(run_id=run.run_id), metadata=T1)
            assert stored.run.state == run_pb2.RUN_STATE_SUCCEEDED


async def test_a2a_cancel_task_cancels_the_native_run(mesh: Mesh, stubs: Stubs) -> None:
    async with native_agent(stubs, hold=True) as native, httpx.AsyncClient(timeout=10) as http:
        card = await A2ACardResolver(
            http, f"http://{mesh.a2a_address}/a2a/t1/com.acme.writer"
        ).get_agent_card()
        client = ClientFactory(ClientConfig(streaming=True)).create(card)
        events: list[StreamResponse] = []
        async for event in client.send_message(user_request("write forever")):
            events.append(event)
            if event.HasField("artifact_update"):
                break  # the run is producing: cancel it
        task_id = events[0].task.id
        cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        run_id = native.assignments[-1].run_id

        async def run_cancelled() -> bool:
            got = await stubs.agents.GetRun(svc.GetRunRequest(run_id=run_id), metadata=T1)
            return got.run.state == run_pb2.RUN_STATE_CANCELLED and run_id in native.cancels

        await wait_until(run_cancelled)
        await client.close()


async def test_unknown_agents_are_not_served(mesh: Mesh, stubs: Stubs) -> None:
    async with native_agent(stubs), a2a_agent() as remote, httpx.AsyncClient(timeout=10) as http:
        await register_external(stubs, remote.card_url)
        base = f"http://{mesh.a2a_address}/a2a"
        for path in ("t1/com.acme.nobody", "t2/com.acme.writer", "t1/echo-agent", "bad%20tenant/x"):
            card = await http.get(f"{base}/{path}/.well-known/agent-card.json")
            assert card.status_code == 404, path
            rpc = await http.post(
                f"{base}/{path}/jsonrpc",
                json={"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}},
                headers={"A2A-Version": "1.0"},
            )
            assert rpc.status_code == 404, path
        served = await http.get(f"{base}/t1/com.acme.writer/.well-known/agent-card.json")
        assert served.status_code == 200
        again = await http.get(
            f"{base}/t1/com.acme.writer/.well-known/agent-card.json",
            headers={"If-None-Match": served.headers["etag"]},
        )
        assert again.status_code == 304


async def test_a2a_message_for_a_skill_the_agent_lacks_is_rejected(mesh: Mesh, stubs: Stubs) -> None:
    async with native_agent(stubs) as native, httpx.AsyncClient(timeout=10) as http:
        card = await A2ACardResolver(
            http, f"http://{mesh.a2a_address}/a2a/t1/com.acme.writer"
        ).get_agent_card()
        client = ClientFactory(ClientConfig(streaming=True)).create(card)
        events = [e async for e in client.send_message(user_request("x", skill="crm.lead.fetch"))]
        await client.close()
        final = events[-1].status_update.status
        assert final.state == TaskState.TASK_STATE_REJECTED
        assert "crm.lead.fetch is not a skill of com.acme.writer" in final.message.parts[0].text
        assert native.assignments == []  # no run was created
