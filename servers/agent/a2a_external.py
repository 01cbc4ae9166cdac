"""External A2A agents: registered from their agent card, run through the official a2a-sdk client.

Registration (`register_external_agent`) fetches the card once, maps it onto an agent and hands it to
`AgentService.register_external`, which stores it and publishes its skills:

    agent_id: the request's, else the id of the agent already registered from the same card URL in the
        tenant (so registering a URL again refreshes it), else the card's name lower-cased with other
        characters than [a-z0-9._-] as '-'.
    version: the card's version when it is semver (`1.2` becomes `1.2.0`), else 0.0.0 with the
        original in label `a2a.card_version`.
    skills: one capability per card skill, `<agent_id>/<skill id lower-cased, other characters than
        [a-z0-9._-] as '-'>` (`-2`, `-3`… when two ids collide), exactly as MCP tools are named.
    a2a_card: the card as ProtoJSON (0.3 cards are converted to the 1.0 shape by the SDK).

Runs (`A2ARunner`) are sent as one user message on the streaming binding the card prefers among
JSON-RPC, HTTP+JSON and gRPC; the A2A events become run output:

    artifact update        -> RunArtifactChunk per part (text, raw bytes as data, data as json, a url
                              as text/uri-list), with the artifact's id, name, append and last_chunk
    status update message  -> RunLog INFO (progress notes, not output: tokens are reserved for text the
                              caller should see as the answer, which A2A agents send as artifacts)
    a reply Message        -> an artifact `message`, then SUCCEEDED
    COMPLETED              -> SUCCEEDED with {text, artifacts, task_id, context_id}
    FAILED / REJECTED      -> FAILED (UNKNOWN / FAILED_PRECONDITION) with the agent's status message
    CANCELED               -> CANCELLED
    INPUT_/AUTH_REQUIRED   -> FAILED (FAILED_PRECONDITION): the mesh does not continue interactive
                              tasks; the remote task is cancelled
    stream error or end    -> FAILED (UNAVAILABLE)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
from a2a.client import A2ACardResolver, Client, ClientCallContext, ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.client.errors import AgentCardResolutionError
from a2a.types import (
    AgentCard,
    Artifact,
    CancelTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, VERSION_HEADER, TransportProtocol
from a2a.utils.errors import A2AError
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import code_pb2, status_pb2

from powerx.agent.v1 import agent_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from powerx.common.v1 import common_pb2
from servers.agent import validation
from servers.agent.lifecycle import RETIRED
from servers.agent.service import AgentService, error_status
from servers.agent.store import KIND_A2A
from servers.common.context import CallContext, valid_tenant
from servers.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from servers.common.validate import SEMVER, Violations
from servers.registry import validation as registry_validation
from servers.registry.mcp_import import capability_ids

log = logging.getLogger("powerx.agent.a2a")

WELL_KNOWN_CARD = "/.well-known/agent-card.json"
# Time allowed to fetch a card when the call itself has more (or no deadline).
CARD_TIMEOUT_S = 10.0
# Time allowed for the CancelTask sent when a run ends early.
REMOTE_CANCEL_TIMEOUT_S = 5.0
MAX_CARD_URL = 2048
MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 4096
MAX_LABEL_VALUE = 256
# Bindings the runner speaks, in the order it would pick them if the card stated no preference.
BINDINGS = (TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON, TransportProtocol.GRPC)
# Keys of a run's inputs that stand in for the goal when a routed call carries no goal.
GOAL_KEYS = ("goal", "text", "prompt", "message", "query", "input")
# Text and raw bytes larger than this are split across chunks (a chunk may carry 1 MiB).
CHUNK_TEXT = 256 * 1024
CHUNK_BYTES = 768 * 1024
_NOT_ID_CHAR = re.compile(r"[^a-z0-9._-]+")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_TERMINAL = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
    }
)
_INTERRUPTED = frozenset({TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED})


# ---- registration ----------------------------------------------------------------------------------


def card_location(card_url: str) -> str:
    """The URL to fetch: `card_url`, or its well-known card path when it names only an origin."""
    parts = urlsplit(card_url)
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN_CARD, parts.query, ""))
    return card_url


def check_request(req: svc.RegisterExternalAgentRequest) -> None:
    """Raises InvalidArgument naming every bad field of a registration (nothing is contacted)."""
    v = Violations()
    if not req.card_url:
        v.add("card_url", "is required")
    elif len(req.card_url) > MAX_CARD_URL:
        v.add("card_url", f"is longer than {MAX_CARD_URL} characters")
    elif not req.card_url.lower().startswith(("http://", "https://")):
        v.add("card_url", "must be an http:// or https:// URL")
    else:
        problem = registry_validation.uri_problem(common_pb2.TRANSPORT_HTTP, req.card_url)
        if problem:  # also every URL urlsplit cannot take apart
            v.add("card_url", problem)
        elif urlsplit(req.card_url).fragment:
            v.add("card_url", "must not have a fragment")
    if req.agent_id:
        v.pattern(
            req.agent_id,
            "agent_id",
            validation.AGENT_ID,
            "lower-case letters, digits, '.', '_', '-' (up to 128)",
        )
    v.check(len(req.tenant_scopes) <= 64, "tenant_scopes", "has more than 64 entries")
    for i, t in enumerate(req.tenant_scopes[:65]):
        v.check(t == "*" or valid_tenant(t), f"tenant_scopes[{i}]", "must be a tenant id or *")
    if v.check(
        len(req.roles) <= validation.MAX_ROLES, "roles", f"has more than {validation.MAX_ROLES} entries"
    ):
        for i, r in enumerate(req.roles):
            v.pattern(
                r, f"roles[{i}]", validation.ROLE, "lower-case letters, digits, '.', '_', '-' (up to 63)"
            )
    v.labels(req.labels, "labels", max_items=60)  # room for the labels the mesh adds
    for key in req.labels:
        v.check(not key.startswith(("powerx.", "a2a.")), f"labels[{key[:64]}]", "is reserved for the mesh")
    v.raise_if_any("invalid external agent registration")


def skill_capabilities(agent_id: str, card: AgentCard) -> dict[str, str]:
    """Capability id of each skill id of a card (the same names whenever the card is the same)."""
    return capability_ids(agent_id, sorted({s.id for s in card.skills if s.id}))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _version(card_version: str) -> str:
    if SEMVER.match(card_version):
        return card_version
    if re.fullmatch(r"(0|[1-9]\d{0,8})(\.(0|[1-9]\d{0,8}))?", card_version):
        return card_version + ".0" * (2 - card_version.count("."))
    return "0.0.0"


def _derived_id(name: str) -> str:
    return _NOT_ID_CHAR.sub("-", name.lower()).strip("._-")[:128].rstrip("._-")


def check_card(card: AgentCard, card_url: str) -> None:
    """Raises FailedPrecondition (A2A_CARD_INVALID) naming what a card misses for the mesh to run it."""
    problems = []
    if not card.name:
        problems.append("it has no name")
    if not any(s.id for s in card.skills):
        problems.append("it lists no skill with an id")
    elif len(card.skills) > validation.MAX_SKILLS:
        problems.append(f"it lists {len(card.skills)} skills; an agent may have {validation.MAX_SKILLS}")
    if not any(i.protocol_binding in BINDINGS for i in card.supported_interfaces):
        problems.append("it offers no JSONRPC, HTTP+JSON or GRPC interface")
    if problems:
        raise FailedPrecondition(
            f"the agent card at {card_url} cannot be used: " + "; ".join(problems),
            reason="A2A_CARD_INVALID",
            metadata={"card_url": card_url},
        )


def agent_from_card(
    req: svc.RegisterExternalAgentRequest, card: AgentCard, agent_id: str, card_url: str
) -> agent_pb2.Agent:
    """The agent a card describes, as `AgentService.register_external` expects it.

    Raises:
        FailedPrecondition: A2A_CARD_INVALID, the card misses what the mesh needs to run it.
    """
    check_card(card, card_url)
    version = _version(card.version)
    agent = agent_pb2.Agent(
        agent_id=agent_id,
        display_name=_clip(card.name, MAX_DISPLAY_NAME),
        version=version,
        author=_clip(card.provider.organization, MAX_DISPLAY_NAME),
        description=_clip(card.description, MAX_DESCRIPTION),
        skills=sorted(skill_capabilities(agent_id, card).values()),
        endpoints=[
            agent_pb2.AgentEndpoint(transport=common_pb2.TRANSPORT_AGENT, uri=card_url, protocol="a2a")
        ],
        tenant_scopes=list(req.tenant_scopes),
        roles=list(req.roles),
        labels=dict(req.labels),
        a2a_card_url=card_url,
    )
    agent.labels["a2a.name"] = _clip(card.name, MAX_LABEL_VALUE)
    if version != card.version:
        agent.labels["a2a.card_version"] = _clip(card.version, MAX_LABEL_VALUE)
    json_format.ParseDict(json_format.MessageToDict(card), agent.a2a_card)
    return agent


async def fetch_card(card_url: str, timeout_s: float) -> AgentCard:
    """Fetches and parses an agent card.

    Raises:
        Unavailable: A2A_CARD_UNREACHABLE, nothing answered (in time) or the server failed (5xx).
        FailedPrecondition: A2A_CARD_NOT_FOUND (another HTTP error), A2A_CARD_INVALID (not a card).
    """
    metadata = {"card_url": card_url}
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as http:
            # The resolver joins base URL and path; an empty path fetches the URL as given.
            return await A2ACardResolver(http, card_url, agent_card_path="").get_agent_card()
    except AgentCardResolutionError as exc:
        status = exc.status_code
        if status is None and isinstance(exc.__cause__, httpx.RequestError):
            raise Unavailable(
                f"the agent card at {card_url} could not be fetched: {_describe(exc.__cause__)}",
                reason="A2A_CARD_UNREACHABLE",
                metadata=metadata,
                retry_after_s=1.0,
            ) from None
        if status is not None and status >= 500:
            raise Unavailable(
                f"the agent card at {card_url} could not be fetched: HTTP {status}",
                reason="A2A_CARD_UNREACHABLE",
                metadata={**metadata, "http_status": str(status)},
                retry_after_s=1.0,
            ) from None
        if status is not None:
            raise FailedPrecondition(
                f"the agent card at {card_url} could not be fetched: HTTP {status}",
                reason="A2A_CARD_NOT_FOUND",
                metadata={**metadata, "http_status": str(status)},
            ) from None
        raise FailedPrecondition(
            f"{card_url} does not serve a valid A2A agent card", reason="A2A_CARD_INVALID", metadata=metadata
        ) from None
    except (ValueError, TypeError, json_format.ParseError):
        # A JSON document that is not a card object (for example a list) fails inside the parser.
        raise FailedPrecondition(
            f"{card_url} does not serve a valid A2A agent card", reason="A2A_CARD_INVALID", metadata=metadata
        ) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


async def register_external_agent(
    service: AgentService, req: svc.RegisterExternalAgentRequest, ctx: CallContext
) -> svc.RegisterExternalAgentResponse:
    """Fetches the card at `req.card_url` and registers (or refreshes) the agent it describes.

    Raises:
        TenantRequired: The call carries no valid tenant.
        InvalidArgument: A field is malformed (nothing is contacted or written).
        Unavailable: A2A_CARD_UNREACHABLE, the card could not be fetched (nothing is written).
        FailedPrecondition: A2A_CARD_NOT_FOUND or A2A_CARD_INVALID (nothing is written).
        AlreadyExists: AGENT_EXISTS, a native agent has the id.
    """
    tenant = service.tenant_of(ctx)  # the same tenant rules as every agent RPC, checked before any fetch
    check_request(req)
    card_url = card_location(req.card_url)
    remaining = ctx.time_remaining()
    timeout_s = CARD_TIMEOUT_S if remaining is None else max(0.1, min(CARD_TIMEOUT_S, remaining - 0.2))
    card = await fetch_card(card_url, timeout_s)
    check_card(card, card_url)
    agent_id = req.agent_id or _known_id(service, tenant, card_url) or _derived_id(card.name)
    if not agent_id:
        raise InvalidArgument(
            "invalid external agent registration: agent_id is required",
            [("agent_id", "is required: the card's name gives no usable agent id")],
        )
    agent = agent_from_card(req, card, agent_id, card_url)
    stored = await service.register_external(agent, ctx)
    log.info(
        "external A2A agent registered",
        extra={"agent_id": agent_id, "tenant_id": tenant, "card_url": card_url, "skills": len(agent.skills)},
    )
    return svc.RegisterExternalAgentResponse(agent=stored)


def _known_id(service: AgentService, tenant: str, card_url: str) -> str:
    """The id of the agent of the tenant already registered from `card_url`, or empty."""
    for (t, agent_id), live in service.agents.items():
        a = live.agent
        if t == tenant and live.stored.kind == KIND_A2A and a.a2a_card_url == card_url and a.state != RETIRED:
            return agent_id
    return ""


# ---- runs ------------------------------------------------------------------------------------------


def _grpc_channel(url: str) -> grpc.aio.Channel:
    # A card's gRPC url is host:port without a scheme or TLS flag: plaintext is all it can say.
    return grpc.aio.insecure_channel(url)


def _text_of(parts: list[Part] | Any) -> str:
    return "\n".join(p.text for p in parts if p.WhichOneof("content") == "text")


def _value(obj: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(obj, value)
    return value


def _to_dict(message: ProtoMessage) -> Any:
    return json_format.MessageToDict(message)


def user_message(run: run_pb2.Run, skill_id: str) -> Message:
    """The A2A message that carries a run's task: the goal as text, the inputs as a data part."""
    task = run.task
    goal = task.goal
    if not goal:
        # Routed calls carry arguments only, while most A2A agents read text: use a text argument.
        for key in GOAL_KEYS:
            item = task.inputs.fields.get(key)
            if item is not None and item.WhichOneof("kind") == "string_value" and item.string_value:
                goal = item.string_value
                break
    parts = []
    if goal:
        parts.append(Part(text=goal))
    if task.inputs.fields:
        part = Part(media_type="application/json")
        part.data.struct_value.CopyFrom(task.inputs)
        parts.append(part)
    if not parts:
        parts.append(Part(text=""))
    message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=parts)
    message.metadata.update({"skill": skill_id, "powerx.run_id": run.run_id})
    return message


def artifact_chunks(artifact: Artifact, append: bool, last_chunk: bool) -> list[run_pb2.RunEvent]:
    """Run events for one A2A artifact update: a chunk per part (large parts split)."""
    pieces: list[run_pb2.RunArtifactChunk] = []
    artifact_id = artifact.artifact_id[:128] or "artifact"
    for part in artifact.parts:
        kind = part.WhichOneof("content")
        base = run_pb2.RunArtifactChunk(artifact_id=artifact_id, name=artifact.name[:255])
        if kind == "text":
            base.mime_type = part.media_type or "text/plain"
            text = part.text
            for start in range(0, max(len(text), 1), CHUNK_TEXT):
                chunk = run_pb2.RunArtifactChunk()
                chunk.CopyFrom(base)
                chunk.text = text[start : start + CHUNK_TEXT]
                pieces.append(chunk)
        elif kind == "raw":
            base.mime_type = part.media_type or "application/octet-stream"
            raw = part.raw
            for start in range(0, max(len(raw), 1), CHUNK_BYTES):
                chunk = run_pb2.RunArtifactChunk()
                chunk.CopyFrom(base)
                chunk.data = raw[start : start + CHUNK_BYTES]
                pieces.append(chunk)
        elif kind == "url":
            base.mime_type = "text/uri-list"
            base.text = part.url
            pieces.append(base)
        elif kind == "data":
            base.mime_type = part.media_type or "application/json"
            base.json.CopyFrom(part.data)
            pieces.append(base)
    if not pieces:  # an empty update still says something (for example the last chunk)
        pieces.append(run_pb2.RunArtifactChunk(artifact_id=artifact_id, name=artifact.name[:255], text=""))
    events = []
    for i, chunk in enumerate(pieces):
        chunk.append = append or i > 0
        chunk.last_chunk = last_chunk and i == len(pieces) - 1
        events.append(run_pb2.RunEvent(artifact=chunk))
    return events


@dataclass
class _Collected:
    """What an A2A task produced so far, for the run's result."""

    order: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    parts: dict[str, list[Part]] = field(default_factory=dict)

    def add(self, artifact: Artifact, append: bool) -> None:
        aid = artifact.artifact_id
        if aid not in self.parts:
            self.order.append(aid)
        if not append or aid not in self.parts:
            self.parts[aid] = []
        self.parts[aid].extend(artifact.parts)
        if artifact.name:
            self.names[aid] = artifact.name

    def result(self, task_id: str, context_id: str) -> struct_pb2.Value:
        """{text: all text joined, artifacts: [{artifact_id, name, text, data}], task_id, context_id}."""
        artifacts = []
        texts = []
        for aid in self.order:
            text = "".join(p.text for p in self.parts[aid] if p.WhichOneof("content") == "text")
            data = [_to_dict(p.data) for p in self.parts[aid] if p.WhichOneof("content") == "data"]
            entry: dict[str, Any] = {"artifact_id": aid, "name": self.names.get(aid, "")}
            if text:
                entry["text"] = text
                texts.append(text)
            if data:
                entry["data"] = data
            artifacts.append(entry)
        return _value(
            {"text": "".join(texts), "artifacts": artifacts, "task_id": task_id, "context_id": context_id}
        )


@dataclass
class _Job:
    """A run the runner executes: its asyncio task and what is known of the remote task."""

    run_id: str
    task: asyncio.Task[None] | None = None
    remote_task_id: str = ""
    context_id: str = ""
    collected: _Collected = field(default_factory=_Collected)
    # Set once the runner reports the run's end itself, so the cancel that reporting may trigger
    # (a CANCELLED run) does not cancel the reporting task.
    finishing: bool = False


class A2ARunner:
    """Runs runs of external A2A agents with the a2a-sdk client (implements `ExternalRunner`)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 10.0,
    ) -> None:
        # One pool for every run: A2A-Version is set once, streams only hold a connection while open.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout_s, read=None, write=connect_timeout_s, pool=None),
            headers={VERSION_HEADER: PROTOCOL_VERSION_CURRENT},
        )
        self._factory = self._default_factory(self._http)
        self._jobs: dict[str, _Job] = {}

    @staticmethod
    def _default_factory(http: httpx.AsyncClient) -> ClientFactory:
        return ClientFactory(
            ClientConfig(
                streaming=True,
                supported_protocol_bindings=[str(b.value) for b in BINDINGS],
                grpc_channel_factory=_grpc_channel,
                httpx_client=http,
            )
        )

    @property
    def running(self) -> int:
        """Runs being executed now."""
        return len(self._jobs)

    def start(self, service: AgentService, run: run_pb2.Run, agent: agent_pb2.Agent) -> None:
        """Starts executing `run` on the external agent; the outcome goes to `service.mesh_finish`."""
        job = _Job(run.run_id)
        self._jobs[run.run_id] = job
        job.task = asyncio.create_task(self._execute(service, run, agent, job), name=f"a2a-run:{run.run_id}")

    def cancel(self, run_id: str) -> None:
        """Stops a run: its stream is closed and the remote task cancelled (when its id is known)."""
        job = self._jobs.get(run_id)
        if job is not None and not job.finishing and job.task is not None:
            job.task.cancel()

    async def close(self) -> None:
        """Stops every run (their remote tasks are cancelled) and releases the connection pool."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    async def _execute(
        self, service: AgentService, run: run_pb2.Run, agent: agent_pb2.Agent, job: _Job
    ) -> None:
        client: Client | None = None
        try:
            try:
                card = parse_agent_card(json_format.MessageToDict(agent.a2a_card))
                skill_id = _skill_id(agent.agent_id, card, run.task.skill)
                client = self._factory.create(card)
            except (ValueError, json_format.ParseError) as exc:
                await self._fail(
                    service, job, code_pb2.FAILED_PRECONDITION, f"the agent card cannot be used: {exc}"
                )
                return
            if skill_id is None:
                await self._fail(
                    service,
                    job,
                    code_pb2.FAILED_PRECONDITION,
                    f"the agent card no longer offers {run.task.skill}; register the agent again",
                )
                return
            await self._stream(service, run, client, skill_id, job)
        except asyncio.CancelledError:
            if client is not None and job.remote_task_id:
                await _cancel_remote(client, job.remote_task_id)
            raise
        except A2AError as exc:
            await self._fail(
                service, job, code_pb2.UNAVAILABLE, f"the A2A agent could not be reached: {_a2a_text(exc)}"
            )
        except Exception:
            log.exception(
                "running an A2A task failed", extra={"run_id": run.run_id, "agent_id": agent.agent_id}
            )
            await self._fail(service, job, code_pb2.INTERNAL, "internal error while running the A2A task")
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            if self._jobs.get(run.run_id) is job:  # not a later attempt of the same run
                del self._jobs[run.run_id]

    async def _stream(
        self, service: AgentService, run: run_pb2.Run, client: Client, skill_id: str, job: _Job
    ) -> None:
        request = SendMessageRequest(message=user_message(run, skill_id))
        headers = {}
        if _TRACE_ID.match(run.task.trace_id):
            headers["traceparent"] = f"00-{run.task.trace_id}-{secrets.token_hex(8)}-01"
        remaining_ms = run.deadline_time.ToMilliseconds() - int(time.time() * 1000)
        call = ClientCallContext(service_parameters=headers, timeout=max(1.0, remaining_ms / 1000))
        collected = job.collected
        stream = cast(AsyncGenerator[StreamResponse, None], client.send_message(request, context=call))
        async with contextlib.aclosing(stream):
            async for event in stream:
                kind = event.WhichOneof("payload")
                status: TaskStatus | None = None
                if kind == "task":
                    job.remote_task_id, job.context_id = event.task.id, event.task.context_id
                    status = event.task.status
                    out: list[run_pb2.RunEvent] = []
                    for artifact in event.task.artifacts:  # a non-streaming agent's whole output
                        if artifact.artifact_id not in collected.parts:
                            collected.add(artifact, append=False)
                            out += artifact_chunks(artifact, append=False, last_chunk=True)
                    if out:
                        await service.mesh_output(run.run_id, out)
                elif kind == "status_update":
                    update = event.status_update
                    job.remote_task_id = update.task_id or job.remote_task_id
                    job.context_id = update.context_id or job.context_id
                    status = update.status
                elif kind == "artifact_update":
                    update_a = event.artifact_update
                    collected.add(update_a.artifact, append=update_a.append)
                    await service.mesh_output(
                        run.run_id, artifact_chunks(update_a.artifact, update_a.append, update_a.last_chunk)
                    )
                elif kind == "message":  # a plain reply without a task: the whole answer
                    reply = Artifact(artifact_id="message", name="reply", parts=event.message.parts)
                    collected.add(reply, append=False)
                    await service.mesh_output(
                        run.run_id, artifact_chunks(reply, append=False, last_chunk=True)
                    )
                    await self._finish(
                        service, job, collected.result(event.message.task_id, event.message.context_id), None
                    )
                    return
                if status is None:
                    continue
                note = _text_of(status.message.parts)
                if status.state in _TERMINAL or status.state in _INTERRUPTED:
                    await self._end(service, client, job, status.state, note)
                    return
                if note:
                    log_event = run_pb2.RunEvent(
                        log=run_pb2.RunLog(level=run_pb2.LOG_LEVEL_INFO, message=note[:16000])
                    )
                    await service.mesh_output(run.run_id, [log_event])
        await self._fail(service, job, code_pb2.UNAVAILABLE, "the A2A stream ended before the task finished")

    async def _end(
        self,
        service: AgentService,
        client: Client,
        job: _Job,
        state: int,
        note: str,
    ) -> None:
        said = f": {note}" if note else ""
        if state == TaskState.TASK_STATE_COMPLETED:
            await self._finish(service, job, job.collected.result(job.remote_task_id, job.context_id), None)
        elif state == TaskState.TASK_STATE_FAILED:
            await self._fail(service, job, code_pb2.UNKNOWN, f"the A2A agent failed the task{said}")
        elif state == TaskState.TASK_STATE_REJECTED:
            await self._fail(
                service, job, code_pb2.FAILED_PRECONDITION, f"the A2A agent rejected the task{said}"
            )
        elif state == TaskState.TASK_STATE_CANCELED:
            job.finishing = True
            live_run = service.runs.get(job.run_id)
            if live_run is not None:
                await service.cancel(live_run, "the A2A agent cancelled the task")
        else:
            job.finishing = True
            if job.remote_task_id:  # it would wait for input forever
                await _cancel_remote(client, job.remote_task_id)
            wants = "input" if state == TaskState.TASK_STATE_INPUT_REQUIRED else "authentication"
            await self._fail(
                service,
                job,
                code_pb2.FAILED_PRECONDITION,
                f"the A2A agent asked for {wants}{said}; the mesh does not continue interactive A2A tasks",
            )

    async def _finish(
        self,
        service: AgentService,
        job: _Job,
        result: struct_pb2.Value | None,
        error: status_pb2.Status | None,
    ) -> None:
        job.finishing = True
        await service.mesh_finish(job.run_id, result, error)

    async def _fail(self, service: AgentService, job: _Job, code: int, message: str) -> None:
        await self._finish(service, job, None, error_status(code, message))


def _skill_id(agent_id: str, card: AgentCard, capability_id: str) -> str | None:
    """The card skill a run exercises: by its capability id, or the first skill when the run names none."""
    ids = skill_capabilities(agent_id, card)
    if not capability_id:
        return next(iter(ids), None)
    return next((sid for sid, cap in ids.items() if cap == capability_id), None)


async def _cancel_remote(client: Client, task_id: str) -> None:
    """Best-effort CancelTask: the run has ended here whatever the remote agent answers."""
    try:
        await asyncio.wait_for(client.cancel_task(CancelTaskRequest(id=task_id)), REMOTE_CANCEL_TIMEOUT_S)
    except Exception as exc:  # anything: it must not replace the cancellation or outcome being reported
        log.info("could not cancel the remote A2A task", extra={"task_id": task_id, "error": _a2a_text(exc)})


def _a2a_text(exc: BaseException) -> str:
    if isinstance(exc, A2AError):
        return exc.message
    return str(exc) or type(exc).__name__
