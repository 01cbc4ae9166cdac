"""Tenant isolation: every RPC of the mesh, called by another tenant against tenant A's resources.

Tenant A gets one of everything through the real API (a registry provider with private and shared
capabilities and its endpoints, a route token, an agent with a running and a finished run, an n8n
connector instance with running, finished and human-handled invocations, a callback, a degrade switch,
API keys and audit records). Then tenant B, holding a key with every scope (`*`), calls every method of
`servers.auth.permissions.PERMISSIONS` with a request naming A's identifiers:

1. with the token of one of B's agents (its calls signed with its registered key, so they get past the
   signature check) on the agent-token methods (the agent runtime, router calls, agent-to-agent runs,
   A's run as the parent run): NOT_FOUND / PERMISSION_DENIED;
2. the same token with `x-tenant-id: A`: PERMISSION_DENIED / TENANT_MISMATCH;
3. B's key without `x-tenant-id` (B's own tenant applies): each call must be refused (NOT_FOUND,
   PERMISSION_DENIED, or INVALID_ARGUMENT / FAILED_PRECONDITION where the request cannot apply; the
   agent runtime calls answer UNAUTHENTICATED, a key being no agent token; unreachable MCP servers and
   agent cards UNAVAILABLE), or, for lists, watches and stats, answer OK with none of A's identifiers,
   or, for the calls that create in the caller's own namespace (announce a provider, register an
   agent), answer OK with a resource of tenant B that carries nothing of A's;
4. B's key with `x-tenant-id: A`: every call, the webhook included, PERMISSION_DENIED / TENANT_MISMATCH;
5. B's watches (registry, agent events, callbacks) held open while A makes live events: B sees none,
   A's own watches (the control) see them.

Around each phase every table is snapshotted: no row of A changes, no new row names A (its tenant or
one of its generated ids), a phase refused at the gate writes nothing at all, and the audit rows the
refusals add are B's (tenant and principal). The webhook (public, authenticated by its signature) is
sent for A's instance signed with a wrong secret and must change nothing of A's; `Connect` with B's
credentials cannot attach to A's agent or session. Set POWERX_ISOLATION_VERBOSE=1 for one line per
call in the printed summary.

Tenancy by design (documented here, handled in the cases):
- Registry capabilities without `tenant_scopes` are private to their tenant; with `tenant_scopes` they
  are shared with the tenants named (`*` = everyone), a deliberate shared catalog. A's capabilities are
  private, except one shared with a third tenant C only, which B must not see either.
- Connector instance ids are one namespace per platform (webhooks address `platform/instance_id`
  without a tenant), so B creating an instance with A's id gets ALREADY_EXISTS: B learns that the id
  is taken, nothing of A's instance.
- A refused webhook for A's instance is audited in A's tenant (A's operators see who knocked), with
  the caller's principal.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.api import httpbody_pb2
from google.protobuf import (
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    struct_pb2,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from powerx.agent.v1 import agent_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as asvc
from powerx.agent.v1 import agent_service_pb2_grpc as asvc_grpc
from powerx.audit.v1 import audit_service_pb2 as apb
from powerx.auth.v1 import auth_service_pb2 as kpb
from powerx.auth.v1 import auth_service_pb2_grpc as kpb_grpc
from powerx.common.v1 import common_pb2
from powerx.connector.v1 import connector_pb2, degrade_pb2, invocation_pb2
from powerx.connector.v1 import connector_service_pb2 as csvc
from powerx.connector.v1 import connector_service_pb2_grpc as csvc_grpc
from powerx.registry.v1 import capability_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from powerx.router.v1 import router_service_pb2 as rt
from powerx.router.v1 import router_service_pb2_grpc as rt_grpc
from sdk import signing
from servers.auth.permissions import PERMISSIONS
from servers.connector import guard
from servers.mesh import Mesh, start_mesh
from tests.conftest import announce_request, mesh_settings
from tests.fakes.n8n import FakeN8n
from tests.integration.helpers import CORE_WRITE_RACE

OPERATOR_KEY = "pxk_0123456789abcdef_" + "o" * 43
OPERATOR = "apikey:0123456789abcdef"
A = "tenant-acme"
B = "tenant-bolt"
C = "tenant-cove"
MARK = "acmeonly"  # every name A chooses contains it, so an answer naming one of them is caught
SKILL = f"{MARK}.skill.summarize"
B_SKILL = "bolt.skill.summarize"
WRONG_SECRET = "whsec_" + base64.b64encode(b"not-the-instance-secret-32-bytes").decode()
STREAM_DEADLINE_S = 1.5
UNARY_DEADLINE_S = 10.0
VERBOSE = os.environ.get("POWERX_ISOLATION_VERBOSE", "") == "1"  # one line per call in the summary

SC = grpc.StatusCode
DENY = frozenset({SC.NOT_FOUND, SC.PERMISSION_DENIED})
CANNOT_APPLY = frozenset({SC.INVALID_ARGUMENT, SC.FAILED_PRECONDITION})
# The agent runtime calls want the agent's own token: an API key, even B's full-power one, is no agent.
NOT_AN_AGENT = DENY | {SC.UNAUTHENTICATED}

# How an OK answer is judged.
NEVER = "never"  # OK is a leak (or a write into A's resources)
CLEAN = "clean"  # a list, watch or stats: OK when nothing of A's appears
OWN = "own"  # creates in the caller's namespace under a name A also uses: OK when it is B's, not A's
# The audit log: B's own records quote B's refused requests (A's ids among them), so an OK answer is
# judged by whose records it holds: B's tenant and B's principals only.
AUDIT_OF_B = "audit"


def key_md(key: str, tenant: str = "") -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),) if not tenant else (("x-api-key", key), ("x-tenant-id", tenant))


def bearer_md(token: str, tenant: str = "") -> tuple[tuple[str, str], ...]:
    md = (("authorization", f"Bearer {token}"),)
    return md if not tenant else (*md, ("x-tenant-id", tenant))


def dur(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return d


def struct(**kw: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


def value(text: str) -> struct_pb2.Value:
    v = struct_pb2.Value()
    v.string_value = text
    return v


# ---- tenant A's world --------------------------------------------------------------------------------


@dataclass
class World:
    """Tenant A's resources (and B's credentials)."""

    a_key: str = ""
    a_key_id: str = ""
    a_reader_key_id: str = ""
    b_key: str = ""
    b_key_id: str = ""
    provider_id: str = f"com.{MARK}.crm"
    capability_id: str = f"{MARK}.lead.fetch"
    shared_capability_id: str = f"{MARK}.lead.shared"  # shared with tenant C only
    endpoint_ids: list[str] = field(default_factory=list)
    route_token: str = ""
    agent_id: str = f"{MARK}-agent"
    agent_token: str = ""
    session_id: str = ""
    run_id: str = ""  # RUNNING, with output
    done_run_id: str = ""  # SUCCEEDED
    instance_id: str = f"{MARK}-n8n"
    invocation_id: str = ""  # ASYNC, RUNNING (waiting for its callback)
    invocation_key: str = f"{MARK}-order-1"
    done_invocation_id: str = ""  # finished by a verified callback
    human_invocation_id: str = ""  # AWAITING_HUMAN
    task_id: str = ""  # the human task, PENDING
    b_agent_id: str = "bolt-agent"
    b_agent_key: signing.AgentKey = field(default_factory=signing.AgentKey)  # B's agent signs its calls
    b_agent_token: str = ""
    b_session_id: str = ""

    def opaque(self) -> set[str]:
        """A's generated identifiers (its chosen names all contain MARK)."""
        ids = {
            self.a_key_id,
            self.a_reader_key_id,
            *self.endpoint_ids,
            self.route_token,
            self.agent_token,
            self.session_id,
            self.run_id,
            self.done_run_id,
            self.invocation_id,
            self.done_invocation_id,
            self.human_invocation_id,
            self.task_id,
        }
        return {i for i in ids if i}

    def b_principals(self) -> set[str]:
        """Who B's calls are recorded as."""
        return {f"apikey:{self.b_key_id}", f"agent:{B}/{self.b_agent_id}"}

    def markers(self, own: bool) -> set[str]:
        """What must not appear in an OK answer to B (A's names are B's own too in an OWN case)."""
        return {A, *self.opaque()} | (set() if own else {MARK})


def placeholder_world() -> World:
    """A world with made-up ids, for checking the factory without a mesh."""
    return World(
        a_key="pxk_a",
        a_key_id="a" * 16,
        b_key="pxk_b",
        b_key_id="b" * 16,
        endpoint_ids=["ep1"],
        route_token="rt",
        agent_token="agt",
        session_id="s",
        run_id="run_1",
        done_run_id="run_2",
        invocation_id="inv1",
        done_invocation_id="inv2",
        human_invocation_id="inv3",
        task_id="task1",
    )


def manifest(agent_id: str, skill: str, key: signing.AgentKey | None = None) -> agent_pb2.Agent:
    a = agent_pb2.Agent(
        agent_id=agent_id, version="1.0.0", display_name=agent_id, skills=[skill], tool_grants=["*"]
    )
    a.runtime.max_concurrency = 4
    # Long enough that no sweeper touches the agents while the test runs.
    a.runtime.heartbeat_interval.FromSeconds(300)
    if key is not None:
        key.sign_manifest(a)
    return a


def n8n_instance(n8n: FakeN8n) -> connector_pb2.ConnectorInstance:
    inst = connector_pb2.ConnectorInstance(
        display_name=f"{MARK} n8n",
        base_url=n8n.base_url,
        workflow_ids={"echo": "mesh-invoke"},
        default_platform_user_id=f"{MARK}-user",
        enabled=True,
    )
    inst.credential_input.api_key.token = "n8n_api_key"
    inst.credential_input.secret_headers["X-Mesh-Token"] = "tenant-a-token"
    inst.credential_input.webhook_secrets.append(n8n.callback_secret)
    return inst


def signed_webhook(
    world: World, secret: str, invocation_id: str, msg_id: str
) -> tuple[csvc.ReceiveWebhookRequest, tuple[tuple[str, str], ...]]:
    raw = json.dumps({"invocation_id": invocation_id, "ok": True, "result": {"by": msg_id}}).encode()
    stamp = int(time.time())
    sig = guard.sign_standard(secret, msg_id, stamp, raw)
    req = csvc.ReceiveWebhookRequest(
        platform="n8n",
        instance_id=world.instance_id,
        body=httpbody_pb2.HttpBody(content_type="application/json", data=raw),
    )
    return req, (("webhook-id", msg_id), ("webhook-timestamp", str(stamp)), ("webhook-signature", sig))


async def build_world(ch: grpc.aio.Channel, n8n: FakeN8n) -> World:
    """Tenant A's resources, made through the API with A's key; B's key and agent."""
    w = World()
    auth = kpb_grpc.AuthServiceStub(ch)
    op_a = key_md(OPERATOR_KEY, A)
    a = await auth.CreateApiKey(kpb.CreateApiKeyRequest(name=f"{MARK} admin", scopes=["*"]), metadata=op_a)
    w.a_key, w.a_key_id = a.secret, a.api_key.key_id
    reader = await auth.CreateApiKey(
        kpb.CreateApiKeyRequest(name=f"{MARK} reader", scopes=["registry.read"]), metadata=key_md(w.a_key)
    )
    w.a_reader_key_id = reader.api_key.key_id
    b = await auth.CreateApiKey(
        kpb.CreateApiKeyRequest(name="bolt admin", scopes=["*"]), metadata=key_md(OPERATOR_KEY, B)
    )
    w.b_key, w.b_key_id = b.secret, b.api_key.key_id
    amd = key_md(w.a_key)

    # Registry: a provider with a private capability, one shared with tenant C only, two endpoints.
    announce = announce_request(
        w.provider_id,
        caps=((w.capability_id, "1.0.0"),),
        endpoints=(
            (common_pb2.TRANSPORT_GRPC, "grpc://127.0.0.1:51043"),
            (common_pb2.TRANSPORT_HTTP, "http://127.0.0.1:51044/acmeonly"),
        ),
        lease_s=3600,
    )
    announce.capabilities.append(
        capability_pb2.Capability(
            capability_id=w.shared_capability_id,
            version="1.0.0",
            tenant_scopes=[C],
            security=capability_pb2.CapabilitySecurity(scope="crm.lead.read"),
        )
    )
    announced = await rs_grpc.RegistryServiceStub(ch).AnnounceProvider(announce, metadata=amd)
    w.endpoint_ids = [e.endpoint_id for e in announced.endpoints]
    assert len(w.endpoint_ids) == 2
    resolved = await rt_grpc.RouterServiceStub(ch).ResolveEndpoint(
        rt.ResolveEndpointRequest(capability_id=w.capability_id), metadata=amd
    )
    w.route_token = resolved.route_token

    # Agents: A's agent holds a running run (with output) and finished another.
    agents = asvc_grpc.AgentServiceStub(ch)
    reg = await agents.RegisterAgent(
        asvc.RegisterAgentRequest(agent=manifest(w.agent_id, SKILL)), metadata=amd
    )
    w.agent_token, w.session_id = reg.agent_token, reg.session_id
    token = bearer_md(w.agent_token)
    await agents.RecordHeartbeat(
        asvc.RecordHeartbeatRequest(agent_id=w.agent_id, session_id=w.session_id), metadata=token
    )
    run_ids = []
    for goal in ("first", "second"):
        created = await agents.CreateRun(
            asvc.CreateRunRequest(task=run_pb2.Task(skill=SKILL, goal=f"{MARK} {goal}")), metadata=amd
        )
        run_ids.append(created.run.run_id)
    started: set[str] = set()
    deadline = time.monotonic() + 10
    while started != set(run_ids):
        assert time.monotonic() < deadline, "A's agent was not assigned its runs"
        pulled = await agents.PullAssignments(
            asvc.PullAssignmentsRequest(
                agent_id=w.agent_id, session_id=w.session_id, wait=dur(1), max_count=2
            ),
            metadata=token,
        )
        started |= {r.run_id for r in pulled.runs}
    w.run_id, w.done_run_id = run_ids
    for run_id in run_ids:
        await agents.PublishRunOutput(
            asvc.PublishRunOutputRequest(
                run_id=run_id, events=[run_pb2.RunEvent(token=run_pb2.RunToken(text=f"{MARK} secret"))]
            ),
            metadata=token,
        )
    await agents.CompleteRun(
        asvc.CompleteRunRequest(run_id=w.done_run_id, result=value(f"{MARK} result")), metadata=token
    )

    # Connector: an instance; a running async invocation; one finished by a verified callback; a
    # degrade switch to HUMAN and an invocation waiting for a person.
    conn = csvc_grpc.ConnectorServiceStub(ch)
    n8n.webhook("mesh-invoke", mode="on_received", callback_delay_s=3600)
    await conn.CreateConnectorInstance(
        csvc.CreateConnectorInstanceRequest(
            platform="n8n", instance_id=w.instance_id, instance=n8n_instance(n8n)
        ),
        metadata=amd,
    )

    async def invoke(**kw: Any) -> invocation_pb2.Invocation:
        resp = await conn.InvokeConnector(
            csvc.InvokeConnectorRequest(platform="n8n", workflow_id="echo", context=struct(q=MARK), **kw),
            metadata=amd,
        )
        return resp.invocation

    running = await invoke(mode=invocation_pb2.INVOCATION_MODE_ASYNC, idempotency_key=w.invocation_key)
    assert running.state == invocation_pb2.INVOCATION_STATE_RUNNING
    w.invocation_id = running.invocation_id
    called_back = await invoke(mode=invocation_pb2.INVOCATION_MODE_ASYNC)
    w.done_invocation_id = called_back.invocation_id
    req, md = signed_webhook(w, n8n.callback_secret, w.done_invocation_id, f"{MARK}-callback-1")
    answer = await conn.ReceiveWebhook(req, metadata=md)
    assert answer.invocation_id == w.done_invocation_id
    await conn.SetDegradeMode(
        csvc.SetDegradeModeRequest(
            platform="n8n", mode=degrade_pb2.DEGRADE_MODE_HUMAN, timeout=dur(3600), reason=f"{MARK} upgrade"
        ),
        metadata=amd,
    )
    human = await invoke()
    assert human.state == invocation_pb2.INVOCATION_STATE_AWAITING_HUMAN
    w.human_invocation_id, w.task_id = human.invocation_id, human.human_task_id

    # Tenant B: an agent of its own (for the agent-token phase); B has nothing else.
    breg = await agents.RegisterAgent(
        asvc.RegisterAgentRequest(agent=manifest(w.b_agent_id, B_SKILL, w.b_agent_key)),
        metadata=key_md(w.b_key),
    )
    w.b_agent_token, w.b_session_id = breg.agent_token, breg.session_id
    await agents.RecordHeartbeat(
        asvc.RecordHeartbeatRequest(agent_id=w.b_agent_id, session_id=w.b_session_id),
        metadata=bearer_md(w.b_agent_token),
    )
    return w


# ---- the request factory -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request of B against A's resources, and what answers are acceptable."""

    method: str
    request: Message
    allow: frozenset[grpc.StatusCode] = DENY
    ok: str = NEVER
    # 0: lists (before B's refusals fill B's audit log with A's ids), 1: the rest, 2-3: creates in B's
    # namespace (last, so the other calls cannot find B's namesakes; runs before agents, so no agent of
    # B has the skill when B creates its run)
    order: int = 1
    extra_md: tuple[tuple[str, str], ...] = ()
    note: str = ""

    @property
    def name(self) -> str:
        return self.method.rsplit("/", 1)[-1]


REG = "/powerx.registry.v1.RegistryService/"
RTR = "/powerx.router.v1.RouterService/"
AGT = "/powerx.agent.v1.AgentService/"
CON = "/powerx.connector.v1.ConnectorService/"
AUT = "/powerx.auth.v1.AuthService/"
AUD = "/powerx.audit.v1.AuditService/"


def cases_for(w: World) -> list[Case]:
    """Requests naming A's resources, for every method of the permission table."""
    n8n = "n8n"
    idle = dur(0.3)
    run_event = run_pb2.RunEvent(token=run_pb2.RunToken(text="bolt"))
    other_announce = announce_request(
        w.provider_id,
        caps=((w.capability_id, "1.0.0"),),
        endpoints=((common_pb2.TRANSPORT_GRPC, "grpc://127.0.0.1:51099"),),
        lease_s=3600,
    )
    update = connector_pb2.ConnectorInstance(display_name="bolt was here")
    rotate = connector_pb2.CredentialInput()
    rotate.api_key.token = "bolt-token"
    unreachable_card = "http://127.0.0.1:9/.well-known/agent-card.json"
    out = [
        # Registry.
        Case(REG + "AnnounceProvider", other_announce, ok=OWN, order=2, note="provider ids are per tenant"),
        Case(REG + "WithdrawProvider", rs.WithdrawProviderRequest(provider_id=w.provider_id, reason="bolt")),
        Case(REG + "RenewProviderLease", rs.RenewProviderLeaseRequest(provider_id=w.provider_id)),
        *(Case(REG + "DeleteEndpoint", rs.DeleteEndpointRequest(endpoint_id=e)) for e in w.endpoint_ids),
        Case(
            REG + "ImportMcpServer",
            rs.ImportMcpServerRequest(server_id=w.provider_id, uri="http://127.0.0.1:9/mcp"),
            allow=DENY | CANNOT_APPLY | {SC.UNAVAILABLE, SC.DEADLINE_EXCEEDED},
            ok=OWN,
            order=2,
            note="the server cannot be reached: nothing may be written",
        ),
        Case(REG + "RefreshRegistry", rs.RefreshRegistryRequest(provider_id=w.provider_id)),
        Case(REG + "GetProvider", rs.GetProviderRequest(provider_id=w.provider_id)),
        Case(REG + "ListProviders", rs.ListProvidersRequest(), ok=CLEAN, order=0),
        Case(
            REG + "GetCapability",
            rs.GetCapabilityRequest(capability_id=w.capability_id, provider_id=w.provider_id),
        ),
        Case(REG + "GetCapability", rs.GetCapabilityRequest(capability_id=w.shared_capability_id)),
        Case(REG + "ListCapabilities", rs.ListCapabilitiesRequest(), ok=CLEAN, order=0),
        Case(
            REG + "ListCapabilities", rs.ListCapabilitiesRequest(capability_id_prefix=MARK), ok=CLEAN, order=0
        ),
        Case(
            REG + "ListCapabilities", rs.ListCapabilitiesRequest(provider_id=w.provider_id), ok=CLEAN, order=0
        ),
        Case(
            REG + "ListRuntimeEndpoints",
            rs.ListRuntimeEndpointsRequest(provider_id=w.provider_id),
            ok=CLEAN,
            order=0,
        ),
        Case(
            REG + "ListRuntimeEndpoints",
            rs.ListRuntimeEndpointsRequest(capability_id=w.capability_id),
            ok=CLEAN,
            order=0,
        ),
        Case(
            REG + "WatchRegistry",
            rs.WatchRegistryRequest(since_revision=0, idle_timeout=idle),
            ok=CLEAN,
            order=0,
        ),
        Case(
            REG + "WatchRegistry",
            rs.WatchRegistryRequest(since_revision=0, provider_ids=[w.provider_id], idle_timeout=idle),
            ok=CLEAN,
            order=0,
        ),
        # Router.
        Case(RTR + "ResolveEndpoint", rt.ResolveEndpointRequest(capability_id=w.capability_id)),
        Case(RTR + "ResolveEndpoint", rt.ResolveEndpointRequest(capability_id=w.shared_capability_id)),
        Case(RTR + "Invoke", rt.InvokeRequest(capability_id=w.capability_id, arguments=struct(id="1"))),
        Case(RTR + "InvokeStream", rt.InvokeStreamRequest(capability_id=w.capability_id, arguments=struct())),
        Case(
            RTR + "ReportOutcome",
            rt.ReportOutcomeRequest(
                endpoint_id=w.endpoint_ids[0],
                capability_id=w.capability_id,
                code=14,
                route_token=w.route_token,
            ),
            allow=DENY | {SC.INVALID_ARGUMENT},
            note="A's route token and endpoint: an outcome from B must not count against A's endpoint",
        ),
        Case(
            RTR + "ReportOutcome",
            rt.ReportOutcomeRequest(endpoint_id=w.endpoint_ids[0], capability_id=w.capability_id, code=14),
            allow=DENY | {SC.INVALID_ARGUMENT},
        ),
        # Agents.
        Case(AGT + "ListAgents", asvc.ListAgentsRequest(), ok=CLEAN, order=0),
        Case(AGT + "ListAgents", asvc.ListAgentsRequest(skill=SKILL), ok=CLEAN, order=0),
        Case(AGT + "GetAgent", asvc.GetAgentRequest(agent_id=w.agent_id)),
        Case(AGT + "GetRun", asvc.GetRunRequest(run_id=w.run_id)),
        Case(AGT + "GetRun", asvc.GetRunRequest(run_id=w.done_run_id)),
        Case(AGT + "ListRuns", asvc.ListRunsRequest(), ok=CLEAN, order=0),
        Case(AGT + "ListRuns", asvc.ListRunsRequest(agent_id=w.agent_id), ok=CLEAN, order=0),
        Case(AGT + "StreamRunOutput", asvc.StreamRunOutputRequest(run_id=w.run_id, idle_timeout=idle)),
        Case(AGT + "StreamRunOutput", asvc.StreamRunOutputRequest(run_id=w.done_run_id)),
        Case(
            AGT + "WatchAgentEvents",
            asvc.WatchAgentEventsRequest(agent_id=w.agent_id, idle_timeout=idle),
            ok=CLEAN,
            order=0,
        ),
        Case(
            AGT + "WatchAgentEvents",
            asvc.WatchAgentEventsRequest(agent_id="-", idle_timeout=idle),
            ok=CLEAN,
            order=0,
        ),
        Case(
            AGT + "RegisterAgent",
            asvc.RegisterAgentRequest(agent=manifest(w.agent_id, SKILL), resume_session_id=w.session_id),
            allow=DENY | CANNOT_APPLY,
            ok=OWN,
            order=3,
            note="agent ids are per tenant; A's session id does not carry over",
        ),
        Case(
            AGT + "RegisterExternalAgent",
            asvc.RegisterExternalAgentRequest(card_url=unreachable_card, agent_id=w.agent_id),
            allow=DENY | CANNOT_APPLY | {SC.UNAVAILABLE, SC.DEADLINE_EXCEEDED},
            ok=OWN,
            order=3,
            note="the card cannot be fetched: nothing may be written",
        ),
        Case(AGT + "DisconnectAgent", asvc.DisconnectAgentRequest(agent_id=w.agent_id, reason="bolt")),
        Case(AGT + "DeleteAgent", asvc.DeleteAgentRequest(agent_id=w.agent_id, reason="bolt")),
        Case(AGT + "RevokeAgentToken", asvc.RevokeAgentTokenRequest(agent_id=w.agent_id, reason="bolt")),
        Case(
            AGT + "AssignTask",
            asvc.AssignTaskRequest(agent_id=w.agent_id, task=run_pb2.Task(skill=SKILL, goal="bolt")),
        ),
        Case(
            AGT + "CreateRun",
            asvc.CreateRunRequest(task=run_pb2.Task(skill=SKILL, goal="bolt")),
            allow=DENY | CANNOT_APPLY | {SC.UNAVAILABLE},
            ok=OWN,
            order=2,
            note="A's agent has the skill but is not shared with B: it must never get B's run",
        ),
        Case(AGT + "CancelRun", asvc.CancelRunRequest(run_id=w.run_id, reason="bolt")),
        Case(
            AGT + "RecordHeartbeat",
            asvc.RecordHeartbeatRequest(agent_id=w.agent_id, session_id=w.session_id),
            allow=NOT_AN_AGENT,
        ),
        Case(
            AGT + "Connect",
            asvc.ConnectRequest(hello=asvc.ConnectHello(agent_id=w.agent_id, session_id=w.session_id)),
            allow=NOT_AN_AGENT,
            note="bidi: the hello for A's agent, then held open",
        ),
        Case(
            AGT + "PullAssignments",
            asvc.PullAssignmentsRequest(agent_id=w.agent_id, session_id=w.session_id),
            allow=NOT_AN_AGENT,
        ),
        Case(
            AGT + "PublishRunOutput",
            asvc.PublishRunOutputRequest(run_id=w.run_id, events=[run_event]),
            allow=NOT_AN_AGENT,
        ),
        Case(
            AGT + "CompleteRun",
            asvc.CompleteRunRequest(run_id=w.run_id, result=value("bolt")),
            allow=NOT_AN_AGENT,
        ),
        # Connectors.
        Case(
            CON + "CreateConnectorInstance",
            csvc.CreateConnectorInstanceRequest(
                platform=n8n,
                instance_id=w.instance_id,
                instance=connector_pb2.ConnectorInstance(
                    base_url="http://127.0.0.1:9", workflow_ids={"echo": "x"}, enabled=True
                ),
            ),
            allow=DENY | {SC.ALREADY_EXISTS},
            note="instance ids are one namespace per platform (webhook addresses): ALREADY_EXISTS",
        ),
        Case(
            CON + "UpdateConnectorInstance",
            csvc.UpdateConnectorInstanceRequest(
                platform=n8n,
                instance_id=w.instance_id,
                instance=update,
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
        ),
        Case(
            CON + "DeleteConnectorInstance",
            csvc.DeleteConnectorInstanceRequest(platform=n8n, instance_id=w.instance_id),
        ),
        Case(
            CON + "RotateCredential",
            csvc.RotateCredentialRequest(platform=n8n, instance_id=w.instance_id, credential_input=rotate),
        ),
        Case(
            CON + "RollbackConfig",
            csvc.RollbackConfigRequest(platform=n8n, instance_id=w.instance_id, version=1),
        ),
        Case(
            CON + "SetDegradeMode",
            csvc.SetDegradeModeRequest(platform=n8n, tenant=A, mode=degrade_pb2.DEGRADE_MODE_OFF),
        ),
        Case(
            CON + "GetConnectorInstance",
            csvc.GetConnectorInstanceRequest(platform=n8n, instance_id=w.instance_id),
        ),
        Case(
            CON + "ListConnectorInstances",
            csvc.ListConnectorInstancesRequest(platform=n8n),
            ok=CLEAN,
            order=0,
        ),
        Case(
            CON + "ListConfigVersions",
            csvc.ListConfigVersionsRequest(platform=n8n, instance_id=w.instance_id),
        ),
        *(
            Case(CON + "GetInvocation", csvc.GetInvocationRequest(platform=n8n, invocation_id=i))
            for i in (w.invocation_id, w.done_invocation_id, w.human_invocation_id)
        ),
        Case(CON + "ListInvocations", csvc.ListInvocationsRequest(platform=n8n), ok=CLEAN, order=0),
        Case(
            CON + "ListInvocations",
            csvc.ListInvocationsRequest(platform=n8n, instance_id=w.instance_id),
            allow=DENY | CANNOT_APPLY,
            ok=CLEAN,
            order=0,
        ),
        Case(
            CON + "WatchCallbacks",
            csvc.WatchCallbacksRequest(platform=n8n, instance_id=w.instance_id, idle_timeout=idle),
            ok=CLEAN,
            order=0,
        ),
        Case(
            CON + "WatchCallbacks",
            csvc.WatchCallbacksRequest(platform=n8n, idle_timeout=idle),
            ok=CLEAN,
            order=0,
        ),
        Case(CON + "GetDegradeState", csvc.GetDegradeStateRequest(platform=n8n, tenant=A)),
        Case(CON + "GetDegradeState", csvc.GetDegradeStateRequest(platform=n8n), ok=CLEAN, order=0),
        Case(CON + "ListDegradeHistory", csvc.ListDegradeHistoryRequest(platform=n8n, tenant=A)),
        Case(CON + "ListDegradeHistory", csvc.ListDegradeHistoryRequest(platform=n8n), ok=CLEAN, order=0),
        Case(CON + "ListFeatureFlags", csvc.ListFeatureFlagsRequest(), ok=CLEAN, order=0),
        Case(
            CON + "ListPlatformWorkflows",
            csvc.ListPlatformWorkflowsRequest(platform=n8n, instance_id=w.instance_id),
        ),
        Case(
            CON + "CheckPlatformHealth",
            csvc.CheckPlatformHealthRequest(platform=n8n, instance_id=w.instance_id),
        ),
        Case(
            CON + "InvokeConnector",
            csvc.InvokeConnectorRequest(platform=n8n, tenant=A, workflow_id="echo", context=struct(q="bolt")),
        ),
        Case(
            CON + "InvokeConnector",
            csvc.InvokeConnectorRequest(
                platform=n8n, instance_id=w.instance_id, workflow_id="echo", context=struct(q="bolt")
            ),
        ),
        Case(
            CON + "InvokeConnector",
            csvc.InvokeConnectorRequest(
                platform=n8n,
                workflow_id="echo",
                context=struct(q=MARK),
                idempotency_key=w.invocation_key,
                mode=invocation_pb2.INVOCATION_MODE_ASYNC,
            ),
            note="A's idempotency key must not replay A's invocation",
        ),
        Case(
            CON + "InvokeConnectorStream",
            csvc.InvokeConnectorStreamRequest(
                platform=n8n, instance_id=w.instance_id, workflow_id="echo", context=struct(q="bolt")
            ),
        ),
        Case(
            CON + "InvokeConnectorStream",
            csvc.InvokeConnectorStreamRequest(platform=n8n, tenant=A, workflow_id="echo", context=struct()),
        ),
        Case(
            CON + "CancelInvocation",
            csvc.CancelInvocationRequest(platform=n8n, invocation_id=w.invocation_id),
        ),
        Case(CON + "ListHumanTasks", csvc.ListHumanTasksRequest(), ok=CLEAN, order=0),
        Case(CON + "ClaimHumanTask", csvc.ClaimHumanTaskRequest(task_id=w.task_id)),
        Case(
            CON + "CompleteHumanTask", csvc.CompleteHumanTaskRequest(task_id=w.task_id, answer=value("bolt"))
        ),
        # Auth and audit.
        Case(
            AUT + "CreateApiKey",
            kpb.CreateApiKeyRequest(tenant_id=A, name="bolt in acme", scopes=["*"]),
        ),
        Case(AUT + "ListApiKeys", kpb.ListApiKeysRequest(), ok=CLEAN, order=0),
        Case(AUT + "GetApiKey", kpb.GetApiKeyRequest(key_id=w.a_key_id)),
        Case(
            AUT + "SetApiKeyStatus",
            kpb.SetApiKeyStatusRequest(key_id=w.a_reader_key_id, status=kpb.API_KEY_STATUS_REVOKED),
        ),
        Case(AUT + "WhoAmI", kpb.WhoAmIRequest(), ok=CLEAN, order=0),
        Case(AUD + "ListAuditRecords", apb.ListAuditRecordsRequest(), ok=AUDIT_OF_B, order=0),
        Case(
            AUD + "ListAuditRecords",
            apb.ListAuditRecordsRequest(actor=f"apikey:{w.a_key_id}"),
            ok=AUDIT_OF_B,
            order=0,
        ),
        Case(AUD + "GetAuditStats", apb.GetAuditStatsRequest(), ok=AUDIT_OF_B, order=0),
    ]
    # The webhook: public, authenticated by its signature; a wrong secret must change nothing of A's.
    req, md = signed_webhook(w, WRONG_SECRET, w.invocation_id, "bolt-forged-1")
    out.append(
        Case(
            CON + "ReceiveWebhook",
            req,
            allow=frozenset({SC.UNAUTHENTICATED}),
            extra_md=md,
            note="signed with a wrong secret, completing A's running invocation",
        )
    )
    return sorted(out, key=lambda c: c.order)


def _signed(
    w: World, capability_id: str, arguments: struct_pb2.Struct, parent: str = ""
) -> tuple[tuple[str, str], ...]:
    """The headers of an agent-to-agent call of B's agent (signed, so the call gets past the signature)."""
    sig = w.b_agent_key.sign_call(
        tenant_id=B,
        caller_agent_id=w.b_agent_id,
        parent_run_id=parent,
        capability_id=capability_id,
        arguments=arguments,
    )
    md = ((signing.SIGNATURE_HEADER, sig),)
    return md if not parent else (*md, (signing.PARENT_RUN_HEADER, parent))


def agent_token_cases(w: World) -> list[Case]:
    """The agent-token methods, with B's (signed) agent token against A's agent, runs and capabilities."""
    out = []
    for c in cases_for(w):
        if not PERMISSIONS[c.method].agent_token:
            continue
        extra_md = c.extra_md
        req: Any = c.request
        if c.name in ("Invoke", "InvokeStream"):
            extra_md = _signed(w, req.capability_id, req.arguments)
        elif c.name in ("CreateRun", "AssignTask"):
            extra_md = _signed(w, req.task.skill, req.task.inputs)
        # Creates in B's namespace and WhoAmI keep their outcomes; the rest must be refused.
        allow = c.allow if c.ok != NEVER else DENY
        out.append(Case(c.method, c.request, allow, c.ok, c.order, extra_md, c.note))
    # B's own agent presenting A's session, and A's run as the parent of its calls.
    hello = asvc.ConnectHello(agent_id=w.b_agent_id, session_id=w.session_id)
    b_task = run_pb2.Task(skill=B_SKILL, goal="bolt")
    args = struct(id="1")
    out += [
        Case(AGT + "Connect", asvc.ConnectRequest(hello=hello), note="B's agent with A's session id"),
        Case(
            AGT + "PullAssignments",
            asvc.PullAssignmentsRequest(agent_id=w.b_agent_id, session_id=w.session_id),
        ),
        Case(
            AGT + "RecordHeartbeat",
            asvc.RecordHeartbeatRequest(agent_id=w.b_agent_id, session_id=w.session_id),
        ),
        Case(
            AGT + "CreateRun",
            asvc.CreateRunRequest(task=b_task),
            extra_md=_signed(w, b_task.skill, b_task.inputs, parent=w.run_id),
            note="A's run as the parent run",
        ),
        Case(
            RTR + "Invoke",
            rt.InvokeRequest(capability_id=w.capability_id, arguments=args),
            extra_md=_signed(w, w.capability_id, args, parent=w.run_id),
            note="A's run as the parent run",
        ),
    ]
    return sorted(out, key=lambda c: c.order)


# ---- calling ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    code: grpc.StatusCode
    reason: str
    answers: list[Message]

    def text(self) -> str:
        return "\n".join(json_format.MessageToJson(m) + str(m) for m in self.answers)


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


async def _bidi_once(
    bidi: Any, case: Case, metadata: tuple[tuple[str, str], ...], deadline_s: float
) -> Outcome | None:
    """One Connect call (None when the client lost the server's status to grpc/grpc#36066)."""
    hold = asyncio.Event()

    async def requests() -> AsyncIterator[Message]:
        yield case.request
        await hold.wait()

    call = bidi(requests(), metadata=metadata, timeout=deadline_s)
    try:
        first = await call.read()
        answers = [] if first is grpc.aio.EOF else [first]
        code = SC.OK if answers else await call.code()
        details = "" if answers else await call.details()
    except grpc.aio.AioRpcError as err:
        answers, code, details = [], err.code(), err.details() or ""
        reason = _reason(err)
    else:
        reason = ""
    finally:
        hold.set()
        call.cancel()
    if code == SC.INTERNAL and details == CORE_WRITE_RACE:
        return None
    return Outcome(case, code, reason, answers)


async def call(
    ch: grpc.aio.Channel, case: Case, md: tuple[tuple[str, str], ...], deadline_s: float = STREAM_DEADLINE_S
) -> Outcome:
    """Calls the case's method over the raw channel, whatever its kind; collects what came back."""
    svc_name, name = case.method[1:].split("/")
    desc = descriptor_pool.Default().FindServiceByName(svc_name).FindMethodByName(name)
    response = message_factory.GetMessageClass(desc.output_type)
    ser, de = type(case.request).SerializeToString, response.FromString
    metadata = (*md, *case.extra_md)
    answers: list[Message] = []
    try:
        if desc.client_streaming:  # Connect: the hello, then the stream is held open
            bidi = ch.stream_stream(case.method, request_serializer=ser, response_deserializer=de)
            for _ in range(5):
                outcome = await _bidi_once(bidi, case, metadata, deadline_s)
                if outcome is not None:
                    return outcome
            raise AssertionError(f"{case.name}: the client kept losing the server's status")
        if desc.server_streaming:
            stream = ch.unary_stream(case.method, request_serializer=ser, response_deserializer=de)(
                case.request, metadata=metadata, timeout=deadline_s
            )
            try:
                async for item in stream:
                    answers.append(item)
            except grpc.aio.AioRpcError as err:
                # A watch with nothing more to say runs until the deadline: what it sent counts.
                if err.code() != SC.DEADLINE_EXCEEDED or (case.ok == NEVER and not answers):
                    raise
            return Outcome(case, SC.OK, "", answers)
        unary = ch.unary_unary(case.method, request_serializer=ser, response_deserializer=de)
        answers.append(await unary(case.request, metadata=metadata, timeout=UNARY_DEADLINE_S))
        return Outcome(case, SC.OK, "", answers)
    except grpc.aio.AioRpcError as err:
        return Outcome(case, err.code(), _reason(err), answers)


def judge(o: Outcome, w: World, *, mismatch: bool = False) -> str:
    """Why an outcome is not acceptable, or ''."""
    c = o.case
    if mismatch:
        if (o.code, o.reason) == (SC.PERMISSION_DENIED, "TENANT_MISMATCH"):
            return ""
        return f"expected PERMISSION_DENIED/TENANT_MISMATCH, got {o.code.name}/{o.reason}"
    if o.code == SC.OK:
        if c.ok == NEVER:
            return "answered OK: " + o.text()[:600]
        if c.ok == AUDIT_OF_B:
            records = [r for m in o.answers for r in getattr(m, "records", ())]
            tenants = {r.tenant_id for r in records} | {
                t.tenant_id for m in o.answers for t in getattr(m, "tenants", ())
            }
            actors = {r.actor for r in records}
            # The operator's key made B's key in B's tenant: that record is B's too.
            if tenants - {B} or actors - w.b_principals() - {OPERATOR}:
                return f"answered OK with others' audit records: tenants {tenants}, actors {actors}"
            return ""
        text = o.text()
        found = sorted(m for m in w.markers(own=c.ok == OWN) if m in text)
        if found:
            return f"answered OK with A's identifiers {found}: " + text[:600]
        return ""
    if o.code in c.allow:
        return ""
    return f"unexpected {o.code.name}/{o.reason}"


# ---- the database, before and after ------------------------------------------------------------------

AUDIT = "audit_log"
# A global counter (the registry's revision): B's own announce moves it.
COUNTERS = frozenset({"registry_state"})


@dataclass
class Snapshot:
    tables: dict[str, dict[str, tuple[dict[str, Any], str]]]  # table -> key -> (row, digest)


def _plain(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex() + "|" + bytes(v).decode("latin-1")
    return v


async def snapshot(mesh: Mesh) -> Snapshot:
    """Every row of every table, keyed by primary key, with a digest."""
    if mesh.audit_log is not None:
        await mesh.audit_log.flush()
    engine = mesh.registry.store.engine
    meta = sa.MetaData()
    async with engine.connect() as conn:
        await conn.run_sync(meta.reflect)
        out: dict[str, dict[str, tuple[dict[str, Any], str]]] = {}
        for name, table in meta.tables.items():
            pk = [c.name for c in table.primary_key.columns] or [c.name for c in table.columns]
            rows: dict[str, tuple[dict[str, Any], str]] = {}
            for r in (await conn.execute(sa.select(table))).all():
                row = {k: _plain(v) for k, v in r._mapping.items()}
                key = json.dumps([row[k] for k in pk], default=str)
                rows[key] = (
                    row,
                    hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest(),
                )
            out[name] = rows
    return Snapshot(out)


def _tenants(row: dict[str, Any]) -> set[str]:
    return {str(v) for k, v in row.items() if ("tenant" in k or k == "grantee") and v}


def touches_a(row: dict[str, Any], w: World) -> bool:
    """Whether a row belongs to A: its tenant, or one of A's generated ids inside it."""
    if A in _tenants(row):
        return True
    text = json.dumps(row, default=str)
    return any(i in text for i in w.opaque())


def diff(
    before: Snapshot, after: Snapshot, w: World, *, creates_allowed: bool
) -> tuple[list[str], Counter[str]]:
    """Changes that break isolation, and the rows B added (per table)."""
    bad: list[str] = []
    added: Counter[str] = Counter()
    for name in sorted(set(before.tables) | set(after.tables)):
        if name == AUDIT:
            continue
        old, new = before.tables.get(name, {}), after.tables.get(name, {})
        for key, (row, digest) in old.items():
            if key in new and new[key][1] == digest:
                continue
            b_only = _tenants(row) == {B}
            if (b_only and creates_allowed) or (name in COUNTERS and creates_allowed):
                continue
            what = "removed" if key not in new else f"changed to {new[key][0]}"
            bad.append(f"{name}: row {row} {what}")
        for key in new.keys() - old.keys():
            row = new[key][0]
            if touches_a(row, w):
                bad.append(f"{name}: new row naming tenant A: {row}")
            elif not creates_allowed:
                bad.append(f"{name}: new row although every call was refused: {row}")
            else:
                added[name] += 1
    return bad, added


def new_audit(before: Snapshot, after: Snapshot) -> list[dict[str, Any]]:
    old = before.tables.get(AUDIT, {})
    return [row for key, (row, _) in after.tables.get(AUDIT, {}).items() if key not in old]


# ---- the suite ---------------------------------------------------------------------------------------


async def live_watches(ch: grpc.aio.Channel, w: World) -> tuple[list[str], Counter[str]]:
    """B's watches stay open while A makes registry, agent and callback events: B sees none of them.

    The watches filter live events in memory (the bus carries every tenant's), so this is checked apart
    from the replayed history. A watches too, as the control that the events were sent.
    """
    # Long enough that a loaded CI machine still delivers A's events before the streams go idle.
    idle = dur(8)
    watches = [
        Case(REG + "WatchRegistry", rs.WatchRegistryRequest(since_revision=0, idle_timeout=idle), ok=CLEAN),
        Case(
            AGT + "WatchAgentEvents", asvc.WatchAgentEventsRequest(agent_id="-", idle_timeout=idle), ok=CLEAN
        ),
        Case(CON + "WatchCallbacks", csvc.WatchCallbacksRequest(platform="n8n", idle_timeout=idle), ok=CLEAN),
    ]
    b_tasks = [asyncio.create_task(call(ch, c, key_md(w.b_key), deadline_s=30)) for c in watches]
    a_tasks = [asyncio.create_task(call(ch, c, key_md(w.a_key), deadline_s=30)) for c in watches]
    await asyncio.sleep(1.0)  # subscribed
    amd, token = key_md(w.a_key), bearer_md(w.agent_token)
    live_cap = f"{MARK}.lead.live"
    announce = announce_request(
        w.provider_id,
        caps=((w.capability_id, "1.0.0"), (live_cap, "1.0.0")),
        endpoints=((common_pb2.TRANSPORT_GRPC, "grpc://127.0.0.1:51043"),),
        lease_s=3600,
    )
    await rs_grpc.RegistryServiceStub(ch).AnnounceProvider(announce, metadata=amd)
    agents = asvc_grpc.AgentServiceStub(ch)
    await agents.RecordHeartbeat(
        asvc.RecordHeartbeatRequest(agent_id=w.agent_id, session_id=w.session_id), metadata=token
    )
    await agents.PublishRunOutput(
        asvc.PublishRunOutputRequest(
            run_id=w.run_id, events=[run_pb2.RunEvent(token=run_pb2.RunToken(text=f"{MARK} live"))]
        ),
        metadata=token,
    )
    await agents.CompleteRun(
        asvc.CompleteRunRequest(run_id=w.run_id, result=value(f"{MARK} done")), metadata=token
    )
    req, md = signed_webhook(w, FakeN8n().callback_secret, w.invocation_id, f"{MARK}-callback-live")
    answer = await csvc_grpc.ConnectorServiceStub(ch).ReceiveWebhook(req, metadata=md)
    assert answer.invocation_id == w.invocation_id
    b_seen = await asyncio.gather(*b_tasks)
    a_seen = await asyncio.gather(*a_tasks)
    problems = []
    for o in a_seen:  # the control: A's own watches saw A's live events
        text = o.text()
        assert o.code == SC.OK, (o.case.name, o.code)
        wanted = {
            "WatchRegistry": live_cap,
            "WatchAgentEvents": w.run_id,
            "WatchCallbacks": f"{MARK}-callback-live",
        }
        assert wanted[o.case.name] in text, f"A's {o.case.name} did not see A's live event"
    # B's own history names A's provider and agent ids (B created them in its namespace in phase 1), so
    # the search is for A's tenant, A's generated ids and what A sent live.
    markers = w.markers(own=True) | {live_cap, f"{MARK}-callback-live", f"{MARK} live", f"{MARK} done"}
    for o in b_seen:
        text = o.text()
        found = sorted(m for m in markers if m in text)
        if o.code != SC.OK or found:
            problems.append(f"live {o.case.name}: {o.code.name}, A's identifiers {found}: {text[:600]}")
    return problems, Counter(o.code.name for o in b_seen)


@pytest.fixture
async def mesh(tmp_path: Path, database_url: str) -> AsyncIterator[Mesh]:
    m = await start_mesh(
        mesh_settings(
            tmp_path,
            database_url,
            auth_required=True,
            bootstrap_api_key=OPERATOR_KEY,
            health_monitor=False,  # nothing probes A's (unreachable) endpoints while the test runs
            agent_quota="rate=1000,burst=1000",
            tenant_run_quota="",
        )
    )
    try:
        yield m
    finally:
        await m.stop(0)


@pytest.fixture
async def channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield ch


@pytest.fixture
async def n8n() -> AsyncIterator[FakeN8n]:
    async with FakeN8n() as fake:
        yield fake


def test_the_factory_covers_every_rpc_of_the_permission_table() -> None:
    """A new RPC without an isolation case fails here."""
    w = placeholder_world()
    assert {c.method for c in cases_for(w)} == set(PERMISSIONS)
    assert {c.method for c in agent_token_cases(w)} == {m for m, r in PERMISSIONS.items() if r.agent_token}
    for c in cases_for(w):
        assert isinstance(c.request, message_factory.GetMessageClass(_input(c.method))), c.method


def _input(method: str) -> Any:
    svc_name, name = method[1:].split("/")
    return descriptor_pool.Default().FindServiceByName(svc_name).FindMethodByName(name).input_type


async def run_phase(
    ch: grpc.aio.Channel,
    cases: list[Case],
    md: tuple[tuple[str, str], ...],
    w: World,
    *,
    mismatch: bool = False,
) -> tuple[list[Outcome], list[str]]:
    outcomes = []
    for c in cases:
        outcomes.append(await call(ch, c, md))
    problems = [
        f"{o.case.name} [{o.case.note or o.case.request}]: {why}"
        for o in outcomes
        if (why := judge(o, w, mismatch=mismatch))
    ]
    return outcomes, problems


def report(capsys: pytest.CaptureFixture[str], lines: list[str]) -> None:
    """Prints the figures past pytest's capture, so they show in every run."""
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def summary(lines: list[str], phase: str, outcomes: list[Outcome]) -> None:
    codes = Counter(o.code.name + (f"/{o.reason}" if o.reason else "") for o in outcomes)
    methods = {o.case.method for o in outcomes}
    lines.append(f"  {phase}: {len(methods)} methods, {len(outcomes)} calls")
    lines.extend(f"      {n:4}  {code}" for code, n in codes.most_common())
    if VERBOSE:
        lines.extend(
            f"        {o.case.name:26} {o.code.name}{'/' + o.reason if o.reason else ''}  {o.case.note}"
            for o in outcomes
        )


async def test_another_tenant_cannot_reach_tenant_a_through_any_rpc(
    mesh: Mesh, channel: grpc.aio.Channel, n8n: FakeN8n, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    w = await build_world(channel, n8n)
    cases = cases_for(w)
    assert {c.method for c in cases} == set(PERMISSIONS)
    lines = [f"tenant isolation ({'postgres' if database_url.startswith('postgresql') else 'sqlite'}):"]

    # Each phase: (name, cases, metadata, refused at the gate for naming A). The agent token goes first,
    # before B's key creates namesakes of A's provider and agent in B's tenant.
    token_cases = agent_token_cases(w)
    phases = [
        ("B agent token, own tenant", token_cases, bearer_md(w.b_agent_token), False),
        ("B agent token, x-tenant-id A", token_cases, bearer_md(w.b_agent_token, A), True),
        ("B key, own tenant", cases, key_md(w.b_key), False),
        ("B key, x-tenant-id A", cases, key_md(w.b_key, A), True),
    ]
    problems: list[str] = []
    writes: list[str] = []
    audit: list[dict[str, Any]] = []
    added: Counter[str] = Counter()
    total = 0
    before = await snapshot(mesh)
    for name, phase_cases, md, mismatch in phases:
        outcomes, wrong = await run_phase(channel, phase_cases, md, w, mismatch=mismatch)
        after = await snapshot(mesh)
        bad, new_rows = diff(before, after, w, creates_allowed=not mismatch)
        rows = new_audit(before, after)
        assert rows, f"{name}: the refusals were not audited"
        problems += [f"{name}: {p}" for p in wrong]
        writes += [f"{name}: {b}" for b in bad]
        audit += rows
        added += new_rows
        total += len(outcomes)
        summary(lines, name, outcomes)
        before = after
    lines.append(f"  methods covered: {len({c.method for c in cases})}/{len(PERMISSIONS)}; calls: {total}")
    lines.append(f"  rows B created in its own tenant: {dict(added)}")
    report(capsys, lines)

    failures = [*(["B reached A:", *problems] if problems else []), *(["writes:", *writes] if writes else [])]
    assert not failures, "\n".join(failures)

    # The refusals are audited under B's principals and tenant. The one row in A's tenant is the webhook
    # guard's own record of the forged webhook for A's instance (A's operators see someone knocked).
    principals = w.b_principals()
    for row in audit:
        if row["tenant_id"] == A:
            assert (row["action"], row["ok"], row["outcome"]) == (
                "connector.webhook",
                False,
                "SIGNATURE_INVALID",
            ), row
            continue
        assert row["tenant_id"] == B, row
        assert row["actor"] in principals, row
    mismatches = Counter(r["actor"] for r in audit if r["reason"] == "TENANT_MISMATCH")
    assert set(mismatches) == principals, mismatches

    # A's world is as A left it, seen by A.
    amd = key_md(w.a_key)
    agents = asvc_grpc.AgentServiceStub(channel)
    run = (await agents.GetRun(asvc.GetRunRequest(run_id=w.run_id), metadata=amd)).run
    assert run.state == run_pb2.RUN_STATE_RUNNING
    conn = csvc_grpc.ConnectorServiceStub(channel)
    inv = await conn.GetInvocation(
        csvc.GetInvocationRequest(platform="n8n", invocation_id=w.invocation_id), metadata=amd
    )
    assert inv.invocation.state == invocation_pb2.INVOCATION_STATE_RUNNING
    who = await kpb_grpc.AuthServiceStub(channel).GetApiKey(
        kpb.GetApiKeyRequest(key_id=w.a_reader_key_id), metadata=amd
    )
    assert who.api_key.status == kpb.API_KEY_STATUS_ACTIVE

    # 4. Live events of A while B's watches are open.
    live_problems, live_codes = await live_watches(channel, w)
    report(capsys, [f"  live watches of B while A made events: {dict(live_codes)}"])
    assert not live_problems, "\n".join(live_problems)
