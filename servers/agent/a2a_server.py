"""The mesh as an A2A server: every native agent gets an agent card and A2A endpoints.

Under `/a2a/{tenant}/{agent_id}`:

    GET  /.well-known/agent-card.json   the agent's card (its skills; streaming; ETag)
    POST /jsonrpc                       JSON-RPC binding (SendMessage, SendStreamingMessage, GetTask…)
    …    /rest/…                        HTTP+JSON binding (/rest/message:stream, /rest/tasks/{id}…)

One a2a-sdk `DefaultRequestHandler` with one executor serves every agent (rather than a handler per
agent): the route factories take path parameters, a context builder puts the tenant and agent of the
path into the call context, and the task store is scoped by that pair, so a task id of one agent is
unknown at another's URL. Nothing has to be built, cached or invalidated per agent, and a card always
shows the agent as it is registered now. Unknown, retired and external agents answer 404.

A message becomes a run on the agent (`AgentService.create_run_for`), whose output maps to A2A:

    Task SUBMITTED first (the SDK requires a Task before any status update), then WORKING
    token            -> artifact update `powerx.text` (append after the first chunk; an empty last
                        chunk closes it when the run ends)
    artifact chunk   -> artifact update with the chunk's id, name, append and last_chunk
    log              -> status update WORKING with the line as the agent's message
    SUCCEEDED        -> artifact `powerx.result` (the result as a data part, when there is one), then
                        COMPLETED
    FAILED           -> FAILED with the error message;  CANCELLED -> CANCELED
    CancelTask       -> the run is cancelled

The goal is the message's text, the inputs its data parts (objects merged, other values under `data`,
files under `files`), the skill the message's (or request's) metadata `skill`, else the first skill.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.owner_resolver import OwnerResolver
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import DefaultServerCallContextBuilder, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    Task,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from powerx.agent.v1 import agent_pb2, run_pb2
from servers.agent import validation
from servers.agent.a2a_external import WELL_KNOWN_CARD
from servers.agent.lifecycle import RETIRED
from servers.agent.live import LiveAgent, LiveRun
from servers.agent.service import AgentService, RunRequest
from servers.agent.store import KIND_NATIVE
from servers.common.context import CallContext, from_metadata, valid_tenant
from servers.common.errors import InvalidArgument, MeshError
from servers.common.validate import Violations

log = logging.getLogger("powerx.agent.a2a")

PREFIX = "/a2a/{powerx_tenant}/{agent_id}"
# Not `tenant`: the SDK's REST dispatcher reads a `tenant` path parameter as the A2A tenant field.
TENANT_PARAM = "powerx_tenant"
AGENT_PARAM = "agent_id"
STATE_TENANT = "powerx.tenant"
STATE_AGENT = "powerx.agent_id"
STATE_OWNER = "powerx.owner"
TEXT_ARTIFACT = "powerx.text"
RESULT_ARTIFACT = "powerx.result"
MODES = ["text/plain", "application/json"]
# Tasks the in-memory task store keeps (oldest dropped first); the runs themselves are stored.
MAX_TASKS = 10_000


def _owner(context: ServerCallContext) -> str:
    return str(context.state.get(STATE_OWNER, ""))


class _ContextBuilder(DefaultServerCallContextBuilder):
    """Puts the tenant and agent of the path into the call context (and scopes tasks by them)."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        tenant, agent_id = request.path_params[TENANT_PARAM], request.path_params[AGENT_PARAM]
        context.state.update(
            {STATE_TENANT: tenant, STATE_AGENT: agent_id, STATE_OWNER: f"{tenant}/{agent_id}"}
        )
        return context


class _BoundedTaskStore(InMemoryTaskStore):
    """The SDK's in-memory task store, dropping the oldest tasks beyond `max_tasks`."""

    def __init__(self, owner_resolver: OwnerResolver, max_tasks: int) -> None:
        super().__init__(owner_resolver=owner_resolver)
        self._owner_of = owner_resolver
        self._max = max_tasks
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def save(self, task: Task, context: ServerCallContext) -> None:
        """Saves a task; drops the oldest ones when there are too many."""
        await super().save(task, context)
        key = (self._owner_of(context), task.id)
        self._order[key] = None
        self._order.move_to_end(key)
        while len(self._order) > self._max:
            (owner, task_id), _ = self._order.popitem(last=False)
            await super().delete(task_id, ServerCallContext(state={STATE_OWNER: owner}))

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        """Deletes a task."""
        self._order.pop((self._owner_of(context), task_id), None)
        await super().delete(task_id, context)


def agent_card(agent: agent_pb2.Agent, base_url: str) -> AgentCard:
    """The A2A card of a native agent whose endpoints are under `base_url`."""
    name = agent.display_name or agent.agent_id
    card = AgentCard(
        name=name,
        description=agent.description or f"{name}, an agent of the PowerX Integration Mesh",
        version=agent.version,
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=MODES,
        default_output_modes=MODES,
        skills=[
            AgentSkill(
                id=skill,
                name=skill,
                description=f"{skill}, a skill of {name}",
                tags=list(agent.roles) or ["powerx"],
            )
            for skill in agent.skills
        ],
        supported_interfaces=[
            AgentInterface(
                protocol_binding=TransportProtocol.JSONRPC,
                protocol_version=PROTOCOL_VERSION_CURRENT,
                url=f"{base_url}/jsonrpc",
            ),
            AgentInterface(
                protocol_binding=TransportProtocol.HTTP_JSON,
                protocol_version=PROTOCOL_VERSION_CURRENT,
                url=f"{base_url}/rest",
            ),
        ],
    )
    if agent.author:
        card.provider.organization = agent.author
        card.provider.url = base_url
    return card


# The handler only reads a card's capabilities (streaming, push notifications); every agent's are these.
_HANDLER_CARD = AgentCard(
    name="PowerX mesh agents",
    description="Native agents of the PowerX Integration Mesh",
    version="1.0.0",
    capabilities=AgentCapabilities(streaming=True, push_notifications=False),
    default_input_modes=MODES,
    default_output_modes=MODES,
    skills=[AgentSkill(id="any", name="any", description="any skill of the agent", tags=["powerx"])],
    supported_interfaces=[
        AgentInterface(protocol_binding=TransportProtocol.JSONRPC, protocol_version="1.0", url="http://mesh")
    ],
)


def _served(service: AgentService, tenant: str, agent_id: str) -> LiveAgent | None:
    """The native agent the path names, or None when the mesh does not serve it over A2A."""
    if not valid_tenant(tenant) or not validation.AGENT_ID.match(agent_id):
        return None
    live = service.agents.get((tenant, agent_id))
    if live is None or live.stored.kind != KIND_NATIVE or live.agent.state == RETIRED:
        return None
    return live


def _not_found(tenant: str, agent_id: str) -> JSONResponse:
    message = f"no agent {agent_id} of tenant {tenant} is served over A2A here"
    return JSONResponse({"error": {"code": 404, "status": "NOT_FOUND", "message": message}}, status_code=404)


def _agent_message(updater: TaskUpdater, text: str) -> Message:
    return updater.new_agent_message([Part(text=text)])


def _part(chunk: run_pb2.RunArtifactChunk) -> Part:
    kind = chunk.WhichOneof("content")
    part = Part()
    if kind == "data":
        part.raw = chunk.data
    elif kind == "json":
        part.data.CopyFrom(chunk.json)
    else:
        part.text = chunk.text
    if chunk.mime_type:
        part.media_type = chunk.mime_type
    return part


def task_from_message(context: RequestContext, agent: agent_pb2.Agent) -> run_pb2.Task:
    """The mesh task an A2A message asks for (validated; the skill must be one of the agent's).

    Raises:
        InvalidArgument: The message names a skill the agent lacks, or the task is malformed.
    """
    message = context.message or Message()
    skill = ""
    for metadata in (json_format.MessageToDict(message.metadata), context.metadata):
        value = metadata.get("skill")
        if isinstance(value, str) and value:
            skill = value
            break
    skill = skill or (agent.skills[0] if agent.skills else "")
    v = Violations()
    if not skill:
        v.add("metadata.skill", f"agent {agent.agent_id} offers no skill")
    elif skill not in agent.skills:
        v.add(
            "metadata.skill",
            f"{skill} is not a skill of {agent.agent_id}; it offers {', '.join(agent.skills)}",
        )
    inputs: dict[str, Any] = {}
    extra: list[Any] = []
    files: list[dict[str, str]] = []
    for part in message.parts:
        kind = part.WhichOneof("content")
        if kind == "data":
            value = json_format.MessageToDict(part.data)
            if isinstance(value, dict):
                inputs.update(value)
            else:
                extra.append(value)
        elif kind == "url":
            files.append({"url": part.url, "filename": part.filename, "media_type": part.media_type})
        elif kind == "raw":
            # Bytes travel base64-encoded in JSON, exactly as ProtoJSON writes them.
            raw = json_format.MessageToDict(Part(raw=part.raw))["raw"]
            files.append({"base64": raw, "filename": part.filename, "media_type": part.media_type})
    if extra:
        inputs["data"] = extra if len(extra) > 1 else extra[0]
    if files:
        inputs["files"] = files
    task = run_pb2.Task(goal=context.get_user_input(), skill=skill)
    try:
        json_format.ParseDict(inputs, task.inputs)
    except json_format.ParseError:
        v.add("parts", "data parts must be JSON")
    validation.check_task(task, v, skill_required=True)
    v.raise_if_any("the message is not a task this agent can run")
    return task


@dataclass
class _Job:
    """An A2A task being served by a run."""

    live_run: LiveRun
    updater: TaskUpdater
    # Set once a terminal status was written (by the relay or by cancel), so only one is.
    ended: bool = False


class MeshAgentExecutor(AgentExecutor):
    """Runs A2A tasks as runs of the native agent the request's path names."""

    def __init__(self, service: AgentService) -> None:
        self.service = service
        self._jobs: dict[str, _Job] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Creates the run and relays its output until it ends."""
        task_id, context_id = context.task_id or "", context.context_id or ""
        updater = TaskUpdater(event_queue, task_id, context_id)
        if context.current_task is not None:
            # The mesh never leaves a task waiting for input, so a message cannot continue one.
            await updater.reject(
                _agent_message(updater, "the mesh does not continue tasks; send a new message")
            )
            return
        history = [context.message] if context.message is not None else []
        submitted = Task(
            id=task_id,
            context_id=context_id,
            status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
            history=history,
        )
        await event_queue.enqueue_event(submitted)  # before any status update, as the SDK requires
        state = context.call_context.state
        tenant, agent_id = str(state.get(STATE_TENANT, "")), str(state.get(STATE_AGENT, ""))
        live = _served(self.service, tenant, agent_id)
        if live is None:
            await updater.reject(_agent_message(updater, f"agent {agent_id} is not registered"))
            return
        headers = state.get("headers") or {}
        traced = from_metadata(list(headers.items()), None)
        ctx = CallContext(
            tenant_id=tenant,
            principal="a2a",
            request_id=traced.request_id,
            trace_id=traced.trace_id,
            span_id=traced.span_id,
        )
        try:
            task = task_from_message(context, live.agent)
            run = await self.service.create_run_for(RunRequest(tenant_id=tenant, task=task, agent=live), ctx)
        except InvalidArgument as exc:
            await updater.reject(_agent_message(updater, exc.message))
            return
        except MeshError as exc:
            await updater.failed(_agent_message(updater, exc.message))
            return
        live_run = self.service.runs.get(run.run_id)
        if live_run is None:  # only a run finished and forgotten at once could be missing
            await updater.failed(_agent_message(updater, f"run {run.run_id} is no longer available"))
            return
        job = _Job(live_run, updater)
        self._jobs[task_id] = job
        try:
            await updater.update_status(
                TaskState.TASK_STATE_WORKING,
                message=_agent_message(updater, f"running as {run.run_id} on {agent_id}"),
                metadata={"powerx.run_id": run.run_id},
            )
            await self._relay(job)
        except asyncio.CancelledError:
            # CancelTask, a server shutdown: the caller can no longer see the run's outcome.
            if not live_run.finished:
                await self.service.cancel(live_run, "the A2A task was cancelled")
            raise
        finally:
            self._jobs.pop(task_id, None)

    async def _relay(self, job: _Job) -> None:
        updater = job.updater
        text_started = False
        async for item in self.service.follow(job.live_run, 1):
            if job.ended:  # cancelled through A2A: nothing may follow the CANCELED status
                return
            if item.HasField("end"):
                break
            event = item.event
            kind = event.WhichOneof("kind")
            if kind == "token":
                await updater.add_artifact(
                    [Part(text=event.token.text)],
                    artifact_id=TEXT_ARTIFACT,
                    name="text",
                    append=text_started,
                    last_chunk=False,
                )
                text_started = True
            elif kind == "artifact":
                chunk = event.artifact
                await updater.add_artifact(
                    [_part(chunk)],
                    artifact_id=chunk.artifact_id,
                    name=chunk.name or None,
                    append=chunk.append,
                    last_chunk=chunk.last_chunk,
                )
            elif kind == "log":
                await updater.update_status(
                    TaskState.TASK_STATE_WORKING,
                    message=_agent_message(updater, event.log.message),
                    metadata={"powerx.log_level": run_pb2.LogLevel.Name(event.log.level)},
                )
            elif kind == "result":
                if text_started:
                    await updater.add_artifact(
                        [Part(text="")], artifact_id=TEXT_ARTIFACT, name="text", append=True, last_chunk=True
                    )
                await self._end(job, event.result)
                return
        if not job.ended:
            job.ended = True
            await updater.failed(_agent_message(updater, "the run's output ended before the run finished"))

    async def _end(self, job: _Job, result: run_pb2.RunResult) -> None:
        if job.ended:  # cancelled through A2A: CANCELED is written already
            return
        job.ended = True
        updater = job.updater
        if result.state == run_pb2.RUN_STATE_SUCCEEDED:
            value = result.result
            if result.HasField("result") and value.WhichOneof("kind") not in (None, "null_value"):
                part = Part(media_type="application/json")
                part.data.CopyFrom(value)
                await updater.add_artifact(
                    [part], artifact_id=RESULT_ARTIFACT, name="result", last_chunk=True
                )
            await updater.complete()
        elif result.state == run_pb2.RUN_STATE_CANCELLED:
            await updater.cancel(_agent_message(updater, result.error.message or "the run was cancelled"))
        else:
            await updater.failed(_agent_message(updater, result.error.message or "the run failed"))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Cancels the task's run (the SDK then stops `execute`)."""
        task_id = context.task_id or ""
        job = self._jobs.get(task_id)
        if job is None:
            await TaskUpdater(event_queue, task_id, context.context_id or "").cancel()
            return
        if job.ended:
            return
        job.ended = True
        # The status goes first: the SDK stops `execute` right after this returns.
        await job.updater.cancel(_agent_message(job.updater, "cancelled by the caller"))
        await self.service.cancel(job.live_run, "cancelled through A2A")


def _whole_seconds(grace_s: float) -> int:
    # uvicorn takes whole seconds, and with 0 it reports an exceeded timeout even with nothing open.
    return max(1, math.ceil(grace_s))


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the mesh process owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def bind(address: str) -> socket.socket:
    """A listening socket on `host:port` (port 0 picks a free one), bound before anything is served.

    Raises:
        OSError: The address is malformed or cannot be bound.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise OSError(f"POWERX_A2A_ADDRESS must be host:port, not {address!r}")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (an empty host means every interface, as for gRPC)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def base_url(sock: socket.socket) -> str:
    """`http://host:port/a2a` of a bound socket: where the cards of the mesh's agents are published."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/a2a"


class A2AServer:
    """The mesh's A2A HTTP server (Starlette routes of the a2a-sdk, served by uvicorn)."""

    def __init__(self, service: AgentService, *, max_tasks: int = MAX_TASKS) -> None:
        self.service = service
        self.executor = MeshAgentExecutor(service)
        self.handler = DefaultRequestHandler(
            agent_executor=self.executor,
            task_store=_BoundedTaskStore(_owner, max_tasks),
            agent_card=_HANDLER_CARD,
        )
        builder = _ContextBuilder()
        sdk_routes = [
            *create_jsonrpc_routes(self.handler, rpc_url=f"{PREFIX}/jsonrpc", context_builder=builder),
            *create_rest_routes(self.handler, context_builder=builder, path_prefix=f"{PREFIX}/rest"),
        ]
        routes: list[BaseRoute] = [Route(f"{PREFIX}{WELL_KNOWN_CARD}", self._card, methods=["GET"])]
        # The REST factory also mounts every route under `/{tenant}` (the A2A tenant field); the mesh's
        # tenant is in the path already, so only the plain routes are served.
        routes += [
            Route(r.path, self._guard(r.endpoint), methods=sorted(r.methods or ()))
            for r in sdk_routes
            if isinstance(r, Route)
        ]
        self.app = Starlette(routes=routes)
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self.address = ""

    def _guard(self, endpoint: Callable[..., Any]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            tenant, agent_id = request.path_params[TENANT_PARAM], request.path_params[AGENT_PARAM]
            if _served(self.service, tenant, agent_id) is None:
                return _not_found(tenant, agent_id)
            response: Response = await endpoint(request)
            return response

        return guarded

    async def _card(self, request: Request) -> Response:
        tenant, agent_id = request.path_params[TENANT_PARAM], request.path_params[AGENT_PARAM]
        live = _served(self.service, tenant, agent_id)
        if live is None:
            return _not_found(tenant, agent_id)
        # Interfaces are built from the URL the card was fetched at, so they are right behind proxies
        # and for every name the listener is reached by.
        url = str(request.url.replace(query="", fragment=""))
        body = agent_card_to_dict(agent_card(live.agent, url.removesuffix(WELL_KNOWN_CARD)))
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        headers = {"ETag": f'W/"{digest}"', "Cache-Control": "no-cache"}
        seen = {tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")}
        if f'"{digest}"' in seen:
            return Response(status_code=304, headers=headers)
        return JSONResponse(body, headers=headers)

    async def start(self, sock: socket.socket, *, grace_s: float = 5.0) -> None:
        """Serves on a socket from `bind`; returns once the server accepts connections."""
        host, port = sock.getsockname()[:2]
        self.address = f"{f'[{host}]' if ':' in host else host}:{port}"
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,  # the mesh configured logging already
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=_whole_seconds(grace_s),
        )
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="a2a-http")
        deadline = asyncio.get_running_loop().time() + 10
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the A2A server on {self.address} stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise OSError(f"the A2A server on {self.address} did not start")
            await asyncio.sleep(0.01)
        log.info("A2A server listening", extra={"address": self.address})

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops accepting calls, ends open streams after the grace period, cancels A2A tasks' runs."""
        if self._server is not None and self._task is not None:
            if grace_s is not None:
                self._server.config.timeout_graceful_shutdown = _whole_seconds(grace_s)
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._task
        await self.handler.aclose()


__all__ = ["A2AServer", "MeshAgentExecutor", "agent_card", "base_url", "bind", "task_from_message"]
