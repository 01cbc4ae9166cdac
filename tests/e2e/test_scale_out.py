"""Scaled out: two `powerx serve` processes on one PostgreSQL schema and one Redis, behind one Envoy.

What one process writes the other reads; a watch on one sees a change made on the other; heartbeats,
quotas and webhook replay memory are shared; killing one process leaves the service up through the
other (with the failures during the kill counted and bounded).

Every process is a real subprocess (`tests/processes.py`); calls go through Envoy, or straight to one
process when the test needs to say which.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from google.api import httpbody_pb2
from google.protobuf import struct_pb2

from powerx.agent.v1 import agent_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as asvc
from powerx.agent.v1 import agent_service_pb2_grpc as asvc_grpc
from powerx.common.v1 import common_pb2
from powerx.connector.v1 import connector_service_pb2 as csvc
from powerx.connector.v1 import connector_service_pb2_grpc as csvc_grpc
from powerx.connector.v1 import invocation_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers.common.db import create_engine
from servers.connector import guard
from servers.connector.store import callbacks_t
from tests.conftest import REDIS_URL, _pg_schema, _skip_or_fail, announce_request
from tests.fakes.n8n import FakeN8n
from tests.integration.helpers import error_info
from tests.integration.test_connectors import HOOK_TOKEN, n8n_instance
from tests.processes import Deployment, Shared, call_metadata, rest_headers, wait_until

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.asyncio(loop_scope="module"),
]

MANAGE = ("agent.connector.manage",)
LIVE_STATES = {
    agent_pb2.AGENT_STATE_IDLE,
    agent_pb2.AGENT_STATE_ACTIVE,
    agent_pb2.AGENT_STATE_BUSY,
    agent_pb2.AGENT_STATE_DEGRADED,  # live, with a high load (the test machine's CPU) or errors
}
WATCH_BOUND_S = 3.0
# Envoy: health check every 0.5 s, 2 failures to eject, 1 s probe timeout.
HC_INTERVAL_S = 0.5
DETECTION_BOUND_S = 2 * HC_INTERVAL_S + 1.0 + 1.5  # two failed probes (+ a timeout) + slack for the box
CLIENTS = 4


def unique(prefix: str) -> str:
    """An id no earlier run used (Redis outlives test runs, and its memory is what is tested)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Stubs:
    """The mesh's services over one channel (to one process, or to the edge)."""

    registry: rs_grpc.RegistryServiceStub
    agents: asvc_grpc.AgentServiceStub
    connectors: csvc_grpc.ConnectorServiceStub


def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(
        rs_grpc.RegistryServiceStub(channel),  # type: ignore[no-untyped-call]
        asvc_grpc.AgentServiceStub(channel),  # type: ignore[no-untyped-call]
        csvc_grpc.ConnectorServiceStub(channel),  # type: ignore[no-untyped-call]
    )


QUOTA_ENV = {
    # Low quotas with a refill slow enough that no token comes back during a test. Only the quota test
    # creates runs, each test has a tenant of its own, so the other tests sharing the deployment are
    # not affected.
    "POWERX_TENANT_RUN_QUOTA": "rate=0.02,burst=3",
    "POWERX_AGENT_QUOTA": "rate=0.02,burst=2",
}


@dataclass
class Cluster:
    """A deployment of two processes behind an edge, with stubs to process A, process B and the edge."""

    deployment: Deployment
    a: Stubs
    b: Stubs
    edge: Stubs


@asynccontextmanager
async def deployed(
    tmp_path: Path, database_url: str, redis_url: str, *, env: dict[str, str] | None = None
) -> AsyncIterator[Cluster]:
    """Two processes behind an edge, and stubs to each."""
    shared = Shared(database_url=database_url, redis_url=redis_url, env=env or {})
    async with (
        Deployment(tmp_path, shared, count=2, health_check_interval_s=HC_INTERVAL_S) as d,
        grpc.aio.insecure_channel(d.processes[0].address) as ca,
        grpc.aio.insecure_channel(d.processes[1].address) as cb,
        grpc.aio.insecure_channel(d.edge_target) as ce,
    ):
        yield Cluster(d, stubs(ca), stubs(cb), stubs(ce))


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for the module's deployment (as the `pg_database_url` fixture)."""
    yield from _pg_schema()


@pytest.fixture(scope="module")
def module_redis_url() -> str:
    """The test Redis (as the `redis_url` fixture)."""
    if not REDIS_URL:
        _skip_or_fail("POWERX_TEST_REDIS_URL is not set")
    return REDIS_URL


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str, module_redis_url: str
) -> AsyncIterator[Cluster]:
    """One deployment shared by the tests that do not harm it (starting one takes several seconds)."""
    async with deployed(
        tmp_path_factory.mktemp("scale-out"), module_pg_url, module_redis_url, env=QUOTA_ENV
    ) as c:
        yield c


def manifest(
    agent_id: str, *, skills: tuple[str, ...] = ("sx.work",), heartbeat_s: int = 10
) -> agent_pb2.Agent:
    agent = agent_pb2.Agent(agent_id=agent_id, version="1.0.0", display_name="scale-out agent", skills=skills)
    agent.endpoints.add(transport=common_pb2.TRANSPORT_AGENT, uri=f"agent://{agent_id}")
    agent.runtime.heartbeat_interval.FromSeconds(heartbeat_s)
    agent.runtime.max_concurrency = 1
    return agent


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata of a call an agent makes with its token."""
    return (("authorization", f"Bearer {token}"),)


async def outcome_of(call: Awaitable[object]) -> tuple[str, str, str]:
    """(status code name, ErrorInfo reason, its `quota` metadata) of a call; ("OK", "", "") on success."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        info = error_info(err)
        return err.code().name, info.reason, info.metadata.get("quota", "")
    return "OK", "", ""


def context(**kw: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


# ---- durable and shared state ----------------------------------------------------------------------


async def test_what_one_process_writes_the_other_reads(cluster: Cluster) -> None:
    a, b, edge = cluster.a, cluster.b, cluster.edge
    tenant = unique("sx")
    md = call_metadata(tenant)
    manage = call_metadata(tenant, scopes=MANAGE)
    instance_id = unique("acme")
    async with FakeN8n() as n8n, httpx.AsyncClient(base_url=cluster.deployment.edge_url, timeout=10) as http:
        n8n.webhook("mesh-invoke")
        # Registry: A announces, B reads; B announces, A lists both.
        announced = await a.registry.AnnounceProvider(announce_request("com.sx.crm"), metadata=md, timeout=10)
        got = await b.registry.GetProvider(
            rs.GetProviderRequest(provider_id="com.sx.crm"), metadata=md, timeout=10
        )
        assert [e.endpoint_id for e in got.endpoints] == [e.endpoint_id for e in announced.endpoints]
        assert [c.capability_id for c in got.capabilities] == ["crm.lead.create"]
        await b.registry.AnnounceProvider(
            announce_request("com.sx.erp", caps=(("erp.order.create", "1.0.0"),)), metadata=md, timeout=10
        )
        listed = await a.registry.ListProviders(rs.ListProvidersRequest(), metadata=md, timeout=10)
        assert sorted(p.provider_id for p in listed.providers) == ["com.sx.crm", "com.sx.erp"]
        # Through the edge (REST and gRPC), whichever process answers, the answer is the same.
        headers = rest_headers(tenant)
        answers = []
        for _ in range(6):
            r = await http.get("/api/v1/integration/capabilities", headers=headers)
            assert r.status_code == 200, r.text
            answers.append(sorted(c["capability_id"] for c in r.json()["capabilities"]))
        assert answers == [["crm.lead.create", "erp.order.create"]] * 6
        caps = await edge.registry.ListCapabilities(rs.ListCapabilitiesRequest(), metadata=md, timeout=10)
        assert sorted(c.capability_id for c in caps.capabilities) == ["crm.lead.create", "erp.order.create"]

        # Connectors: A creates (sealing the credential with the shared key), B reads and invokes with it.
        created = await a.connectors.CreateConnectorInstance(
            csvc.CreateConnectorInstanceRequest(
                platform="n8n", instance_id=instance_id, instance=n8n_instance(n8n)
            ),
            metadata=manage,
            timeout=10,
        )
        seen = await b.connectors.GetConnectorInstance(
            csvc.GetConnectorInstanceRequest(platform="n8n", instance_id=instance_id), metadata=md, timeout=10
        )
        assert seen.instance == created.instance
        inv = await b.connectors.InvokeConnector(
            csvc.InvokeConnectorRequest(platform="n8n", workflow_id="echo", context=context(q="hi")),
            metadata=md,
            timeout=15,
        )
        assert inv.invocation.state == invocation_pb2.INVOCATION_STATE_SUCCEEDED, inv.invocation.error
        assert n8n.requests[-1].headers["x-mesh-token"] == HOOK_TOKEN  # B unsealed what A sealed
        got_inv = await a.connectors.GetInvocation(
            csvc.GetInvocationRequest(platform="n8n", invocation_id=inv.invocation.invocation_id),
            metadata=md,
            timeout=10,
        )
        assert got_inv.invocation.state == invocation_pb2.INVOCATION_STATE_SUCCEEDED
        r = await http.get(f"/platform/connectors/n8n/instances/{instance_id}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["instance"]["credential"]["status"] == "CREDENTIAL_STATUS_ACTIVE"

        # Agents: registered on A, read on B; B accepts the token A issued.
        agent_id = unique("com.sx.agent")
        reg = await a.agents.RegisterAgent(
            asvc.RegisterAgentRequest(agent=manifest(agent_id)), metadata=md, timeout=10
        )
        other = await b.agents.GetAgent(asvc.GetAgentRequest(agent_id=agent_id), metadata=md, timeout=10)
        assert other.agent.session_id == reg.session_id
        assert other.agent.state == agent_pb2.AGENT_STATE_REGISTERING
        beat = await b.agents.RecordHeartbeat(
            asvc.RecordHeartbeatRequest(agent_id=agent_id, session_id=reg.session_id),
            metadata=bearer(reg.agent_token),
            timeout=10,
        )
        assert beat.state == agent_pb2.AGENT_STATE_IDLE
        back = await a.agents.GetAgent(asvc.GetAgentRequest(agent_id=agent_id), metadata=md, timeout=10)
        assert back.agent.state == agent_pb2.AGENT_STATE_IDLE
        r = await http.get("/api/v1/agents", headers=headers)
        assert [x["agent_id"] for x in r.json()["agents"]] == [agent_id]


async def test_a_watch_on_one_process_sees_a_change_made_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    md = call_metadata(unique("sx"))
    first = await a.registry.AnnounceProvider(announce_request("com.sx.one"), metadata=md, timeout=10)
    watch = b.registry.WatchRegistry(rs.WatchRegistryRequest(since_revision=first.revision), metadata=md)
    try:
        lags: list[float] = []
        for i, name in enumerate(("com.sx.two", "com.sx.three")):
            await asyncio.sleep(0.3)  # the watch is idle, waiting, when the change is made
            sent = time.monotonic()
            changed = await a.registry.AnnounceProvider(
                announce_request(name, caps=((f"sx.cap{i}", "1.0.0"),)), metadata=md, timeout=10
            )
            while True:
                msg = await asyncio.wait_for(watch.read(), WATCH_BOUND_S)
                assert msg is not grpc.aio.EOF
                if msg.HasField("event") and msg.event.revision >= changed.revision:
                    break
            lags.append(time.monotonic() - sent)
            assert msg.event.revision == changed.revision
            assert msg.event.provider_id == name
        print(f"\nwatch on B saw A's changes after {', '.join(f'{x * 1000:.0f} ms' for x in lags)}")
    finally:
        watch.cancel()


async def test_heartbeats_sent_to_one_process_keep_the_agent_online_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    md = call_metadata(unique("sx"))
    agent_id = unique("com.sx.beater")
    reg = await a.agents.RegisterAgent(
        asvc.RegisterAgentRequest(agent=manifest(agent_id, heartbeat_s=1)), metadata=md, timeout=10
    )
    beat = asvc.RecordHeartbeatRequest(agent_id=agent_id, session_id=reg.session_id)
    beat.load.cpu_usage = 0.25
    # Heartbeats for 4 s, every one to B: A's sweeper disconnects an agent after 3 missed intervals
    # (3 s here) unless it learns of them.
    until = time.monotonic() + 4.0
    while time.monotonic() < until:
        resp = await b.agents.RecordHeartbeat(beat, metadata=bearer(reg.agent_token), timeout=5)
        assert resp.state in LIVE_STATES
        await asyncio.sleep(0.3)
    seen = (await a.agents.GetAgent(asvc.GetAgentRequest(agent_id=agent_id), metadata=md, timeout=10)).agent
    assert seen.state == agent_pb2.AGENT_STATE_IDLE, seen.state_reason
    assert time.time() - seen.last_heartbeat_time.ToMilliseconds() / 1000 < 2.0
    assert seen.load.cpu_usage == pytest.approx(0.25)
    assert all(e.health == common_pb2.HEALTH_STATE_HEALTHY for e in seen.endpoints)
    # When the heartbeats stop, A notices: the check above could not pass by A ignoring time.
    stopped = time.monotonic()

    async def disconnected() -> bool:
        got = await a.agents.GetAgent(asvc.GetAgentRequest(agent_id=agent_id), metadata=md, timeout=5)
        return bool(got.agent.state == agent_pb2.AGENT_STATE_DISCONNECTED)

    await wait_until(disconnected, 10.0, interval_s=0.2, what="A marks the silent agent DISCONNECTED")
    assert time.monotonic() - stopped >= 2.0  # not before 3 intervals (less the last beat's age)


async def test_quotas_and_webhook_replay_memory_are_shared(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    tenant = unique("sx")
    md = call_metadata(tenant)
    # The tenant run quota (burst 3): 8 runs asked for, alternately on A and B; 3 are created.
    agent_id = unique("com.sx.worker")
    await a.agents.RegisterAgent(asvc.RegisterAgentRequest(agent=manifest(agent_id)), metadata=md, timeout=10)
    await b.agents.GetAgent(asvc.GetAgentRequest(agent_id=agent_id), metadata=md, timeout=10)
    runs = [
        await outcome_of(
            (a, b)[i % 2].agents.CreateRun(
                asvc.CreateRunRequest(task=run_pb2.Task(skill="sx.work", goal=f"run {i}")),
                metadata=md,
                timeout=10,
            )
        )
        for i in range(8)
    ]
    exhausted = ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "tenant")
    assert runs == [("OK", "", "")] * 3 + [exhausted] * 5  # per-process buckets would have let 6 through

    # The agent quota (burst 2): tasks for one agent of another tenant, alternately on A and B.
    omd = call_metadata(unique("sx"))
    target = unique("com.sx.target")
    await b.agents.RegisterAgent(asvc.RegisterAgentRequest(agent=manifest(target)), metadata=omd, timeout=10)
    tasks = [
        await outcome_of(
            (a, b)[i % 2].agents.AssignTask(
                asvc.AssignTaskRequest(agent_id=target, task=run_pb2.Task(goal=f"task {i}")),
                metadata=omd,
                timeout=10,
            )
        )
        for i in range(5)
    ]
    # The third call spends the tenant's last token and finds the agent's bucket empty; then the
    # tenant's is empty too.
    assert [t[2] or t[0] for t in tasks] == ["OK", "OK", "agent", "tenant", "tenant"], tasks

    # Webhook replay memory: one signed callback delivered to A and then, byte for byte, to B.
    instance_id = unique("acme")
    async with FakeN8n() as n8n:
        n8n.webhook("mesh-invoke", mode="on_received", callback_delay_s=60)
        await a.connectors.CreateConnectorInstance(
            csvc.CreateConnectorInstanceRequest(
                platform="n8n", instance_id=instance_id, instance=n8n_instance(n8n)
            ),
            metadata=call_metadata(tenant, scopes=MANAGE),
            timeout=10,
        )
        inv = await a.connectors.InvokeConnector(
            csvc.InvokeConnectorRequest(
                platform="n8n",
                workflow_id="echo",
                context=context(q="hi"),
                mode=invocation_pb2.INVOCATION_MODE_ASYNC,
            ),
            metadata=md,
            timeout=15,
        )
        raw = json.dumps({"invocation_id": inv.invocation.invocation_id, "ok": True, "result": "r"}).encode()
        msg_id = unique("twice")
        stamp = int(time.time())
        signature = guard.sign_standard(n8n.callback_secret, msg_id, stamp, raw)
        hook_md = (
            ("webhook-id", msg_id),
            ("webhook-timestamp", str(stamp)),
            ("webhook-signature", signature),
        )
        req = csvc.ReceiveWebhookRequest(
            platform="n8n",
            instance_id=instance_id,
            body=httpbody_pb2.HttpBody(content_type="application/json", data=raw),
        )
        first = await a.connectors.ReceiveWebhook(req, metadata=hook_md, timeout=10)
        second = await b.connectors.ReceiveWebhook(req, metadata=hook_md, timeout=10)
    assert (first.duplicate, second.duplicate) == (False, True)
    done = await b.connectors.GetInvocation(
        csvc.GetInvocationRequest(platform="n8n", invocation_id=inv.invocation.invocation_id),
        metadata=md,
        timeout=10,
    )
    assert done.invocation.state == invocation_pb2.INVOCATION_STATE_SUCCEEDED
    engine = create_engine(cluster.deployment.shared.database_url)
    try:
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(callbacks_t)
                    .where(callbacks_t.c.tenant_id == tenant, callbacks_t.c.instance_id == instance_id)
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert stored == 1


# ---- losing a process ------------------------------------------------------------------------------


@dataclass
class Outcome:
    at: float
    ok: bool
    code: str
    details: str = ""


async def test_killing_one_process_keeps_the_service_up_through_the_other(
    tmp_path: Path, pg_database_url: str, redis_url: str
) -> None:
    tenant = unique("sx")
    md = call_metadata(tenant)
    async with deployed(tmp_path, pg_database_url, redis_url) as c:
        edge_proc = c.deployment.edge
        assert edge_proc is not None
        await c.a.registry.AnnounceProvider(announce_request("com.sx.kept"), metadata=md, timeout=10)
        outcomes: list[Outcome] = []
        acknowledged: set[str] = set()
        stop = asyncio.Event()

        async def client(k: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 5 == 0:  # one write in five
                        provider_id = f"com.sx.w{k}n{n}"
                        await c.edge.registry.AnnounceProvider(
                            announce_request(provider_id), metadata=md, timeout=5
                        )
                        acknowledged.add(provider_id)
                    else:
                        await c.edge.registry.GetProvider(
                            rs.GetProviderRequest(provider_id="com.sx.kept"), metadata=md, timeout=5
                        )
                    outcomes.append(Outcome(time.monotonic(), True, "OK"))
                except grpc.aio.AioRpcError as err:
                    outcomes.append(Outcome(time.monotonic(), False, err.code().name, err.details() or ""))
                await asyncio.sleep(0.005)

        def after(t: float) -> list[Outcome]:
            return [o for o in outcomes if o.at > t]

        clients = [asyncio.create_task(client(k)) for k in range(CLIENTS)]
        try:
            await wait_until(lambda: asyncio.sleep(0, len(outcomes) >= 100), 20.0, what="100 calls before")
            killed_at = time.monotonic()
            c.deployment.processes[1].kill()
            detected = await wait_until(
                lambda: asyncio.to_thread(lambda: edge_proc.healthy_upstreams() == 1),
                DETECTION_BOUND_S + 2,
                interval_s=0.05,
                what="Envoy marks the killed process unhealthy",
            )
            settled_at = killed_at + detected + 0.5
            await wait_until(
                lambda: asyncio.sleep(0, len(after(settled_at)) >= 200), 30.0, what="200 calls after"
            )
        finally:
            stop.set()
            await asyncio.gather(*clients)
        before = [o for o in outcomes if o.at < killed_at]
        failed = [o for o in after(killed_at) if not o.ok]
        reasons = Counter(f"{o.code}: {o.details[:90]}" for o in failed)
        window = [o for o in outcomes if killed_at <= o.at <= settled_at]
        print(
            f"\nkill of one of two processes: {len(before)} calls before, all OK: "
            f"{all(o.ok for o in before)}; "
            f"Envoy marked it unhealthy after {detected * 1000:.0f} ms; {len(failed)} of {len(window)} calls "
            f"failed in the {(settled_at - killed_at) * 1000:.0f} ms after the kill, the last "
            f"{max((o.at - killed_at for o in failed), default=0) * 1000:.0f} ms after it; "
            f"{len(after(settled_at))} calls after that; {len(acknowledged)} writes acknowledged; "
            f"failures: {dict(reasons)}"
        )
        assert before
        assert all(o.ok for o in before)
        assert detected <= DETECTION_BOUND_S
        # Calls in flight on the killed process end with a reset (INTERNAL or UNAVAILABLE): at most one per
        # client. Calls Envoy sends it afterwards fail fast with UNAVAILABLE (connection refused) until the
        # health check takes it out: the edge does not retry connect failures, so callers see these.
        assert {o.code for o in failed} <= {"UNAVAILABLE", "INTERNAL"}, reasons
        assert sum(o.code == "INTERNAL" for o in failed) <= CLIENTS, reasons
        # No failure once Envoy has taken the dead process out; the survivor serves every call.
        assert all(o.ok for o in after(settled_at)), reasons
        # Every acknowledged write (whichever process took it) is there, read through the edge.
        listed = await c.edge.registry.ListProviders(
            rs.ListProvidersRequest(page_size=1000), metadata=md, timeout=10
        )
        assert acknowledged <= {p.provider_id for p in listed.providers}
        async with httpx.AsyncClient(base_url=c.deployment.edge_url, timeout=10) as http:
            for _ in range(4):
                r = await http.get("/api/v1/integration/providers/com.sx.kept", headers=rest_headers(tenant))
                assert r.status_code == 200, r.text
        assert edge_proc.healthy_upstreams() == 1
