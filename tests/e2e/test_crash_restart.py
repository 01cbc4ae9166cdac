"""Crash and restart under load: a `powerx serve` process is SIGKILLed twice while writers are busy.

Writers (registry announces, connector instance creates, agent runs) call the process without pause,
and an SDK agent serves the runs with a live session. The process is killed with SIGKILL (no clean-up of
any kind) and restarted on the same address, twice. Afterwards:

- every write that was acknowledged (an OK answer) is there: providers, connector instances, runs;
- the agent reconnected on its own (same session) and is online again;
- every acknowledged run finished: the agent service reloads QUEUED runs into its queue, gives ASSIGNED
  runs back to their agent's mailbox and keeps RUNNING ones with their agent, whose SDK delivers their
  output and completion across the reconnect (`AgentService.start`). So each run SUCCEEDS, with its whole
  output exactly once, or FAILS with a stated reason; none stays unfinished.

Both deployments: PostgreSQL + Redis (as scaled out), and SQLite in the data folder (the embedded default).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from powerx.agent.v1 import agent_pb2, run_pb2
from powerx.agent.v1 import agent_service_pb2 as asvc
from powerx.agent.v1 import agent_service_pb2_grpc as asvc_grpc
from powerx.connector.v1 import connector_pb2
from powerx.connector.v1 import connector_service_pb2 as csvc
from powerx.connector.v1 import connector_service_pb2_grpc as csvc_grpc
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from sdk import Agent, TaskContext
from tests.conftest import announce_request
from tests.processes import MeshProcess, Shared, call_metadata, wait_until

pytestmark = pytest.mark.asyncio

KILLS = 2
LOAD_BEFORE_KILL_S = 2.0
CALL_TIMEOUT_S = 3.0
SKILL = "crash.words"
WORDS = "alpha beta gamma delta"
LIVE_STATES = {
    agent_pb2.AGENT_STATE_IDLE,
    agent_pb2.AGENT_STATE_ACTIVE,
    agent_pb2.AGENT_STATE_BUSY,
    agent_pb2.AGENT_STATE_DEGRADED,  # live, with a high load (the test machine's CPU) or errors
}
TERMINAL = {run_pb2.RUN_STATE_SUCCEEDED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED}
# Fail fast while the process is down and reconnect soon after it is back (gRPC's default reconnect
# backoff starts at 1 s and grows to 2 min).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@pytest.fixture(params=["postgres", "sqlite"])
def shared(request: pytest.FixtureRequest) -> Shared:
    """PostgreSQL + Redis (the fixtures' fresh schema), or SQLite in the process's data folder."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        request.applymarker(pytest.mark.redis)
        return Shared(
            database_url=request.getfixturevalue("pg_database_url"),
            redis_url=request.getfixturevalue("redis_url"),
        )
    return Shared()


@dataclass
class Writer:
    """One kind of write, made in a loop: what was acknowledged, and how the other calls ended."""

    name: str
    acknowledged: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return len(self.acknowledged) + sum(self.failures.values())


async def write_loop(
    writer: Writer, write: Callable[[str], Awaitable[str]], stop: asyncio.Event, pause_s: float
) -> None:
    """Calls `write(fresh id)` until `stop`; records the acknowledged ids and the failures by code."""
    n = 0
    while not stop.is_set():
        n += 1
        key = f"{writer.name}{n}"
        try:
            writer.acknowledged.append(await write(key))
        except grpc.aio.AioRpcError as err:
            # Not acknowledged: written or not (killed in flight, timed out), nobody knows.
            writer.failures[err.code().name] += 1
            await asyncio.sleep(0.05)  # the process is down: do not spin
        await asyncio.sleep(pause_s)


def words_agent(address: str, agent_id: str, tenant: str) -> Agent:
    """An SDK agent whose skill streams the words of the goal back, one every 20 ms."""
    agent = Agent(
        agent_id,
        version="1.0.0",
        tenant_id=tenant,
        mesh=address,
        max_concurrency=8,
        heartbeat_interval_s=1.0,
        connect_timeout_s=20.0,
        stop_grace_s=1.0,
        max_backoff_s=0.5,
    )

    @agent.skill(SKILL)
    async def words(task: TaskContext) -> dict[str, int]:
        parts = task.goal.split()
        for word in parts:
            await task.token(word + " ")
            await asyncio.sleep(0.02)
        return {"words": len(parts)}

    return agent


async def all_pages(fetch: Callable[[str], Awaitable[tuple[list[str], str]]]) -> set[str]:
    """Every id of a paginated list."""
    out: set[str] = set()
    token = ""
    while True:
        ids, token = await fetch(token)
        out.update(ids)
        if not token:
            return out


async def attempts_output(
    stub: asvc_grpc.AgentServiceStub, run_id: str, md: tuple[tuple[str, str], ...]
) -> list[list[str]]:
    """The words a finished run's stored output holds, per attempt (an assignment starts one).

    The output log is append-only: a run handed to its agent again (the mesh restarted, the agent missed
    heartbeats) keeps what the earlier attempt sent, and the next attempt's output follows it.
    """
    attempts: list[list[str]] = [[]]
    sequences: list[int] = []
    async for msg in stub.StreamRunOutput(
        asvc.StreamRunOutputRequest(run_id=run_id), metadata=md, timeout=10
    ):
        if msg.HasField("end"):
            break
        event = msg.event
        sequences.append(event.sequence)
        if event.HasField("state_change") and event.state_change.state == run_pb2.RUN_STATE_ASSIGNED:
            if attempts[-1]:
                attempts.append([])
        elif event.HasField("token"):
            attempts[-1].extend(event.token.text.split())
    assert sequences == list(range(1, len(sequences) + 1)), (run_id, sequences)
    return attempts


def output_is_whole(attempts: list[list[str]], goal: list[str]) -> bool:
    """The last attempt sent every word once, in order; earlier ones sent a beginning of them."""
    return attempts[-1] == goal and all(a == goal[: len(a)] for a in attempts[:-1])


async def test_acknowledged_writes_survive_sigkill_and_agents_and_runs_resume(
    tmp_path: Path, shared: Shared
) -> None:
    tenant = f"crash-{uuid.uuid4().hex[:8]}"
    md = call_metadata(tenant)
    manage = call_metadata(tenant, scopes=("agent.connector.manage",))
    mesh = MeshProcess("mesh", tmp_path, shared)
    mesh.start()
    await mesh.wait_ready()
    agent = words_agent(mesh.address, f"com.crash.{uuid.uuid4().hex[:8]}", tenant)
    await agent.start()
    session = agent.session_id
    writers = {name: Writer(name) for name in ("provider", "instance", "run")}
    stop = asyncio.Event()
    downtime: list[float] = []
    reconnect: list[float] = []
    async with grpc.aio.insecure_channel(mesh.address, options=CHANNEL_OPTIONS) as channel:
        registry = rs_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        connectors = csvc_grpc.ConnectorServiceStub(channel)  # type: ignore[no-untyped-call]
        agents = asvc_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]

        async def announce(key: str) -> str:
            provider_id = f"com.crash.{key}"
            await registry.AnnounceProvider(
                announce_request(provider_id), metadata=md, timeout=CALL_TIMEOUT_S
            )
            return provider_id

        async def create_instance(key: str) -> str:
            inst = connector_pb2.ConnectorInstance(
                base_url="http://127.0.0.1:9",
                workflow_ids={"echo": "mesh-invoke"},
                default_platform_user_id="n8n-user",
                enabled=True,
            )
            inst.credential_input.api_key.token = f"secret-{key}"
            resp = await connectors.CreateConnectorInstance(
                csvc.CreateConnectorInstanceRequest(platform="n8n", instance_id=key, instance=inst),
                metadata=manage,
                timeout=CALL_TIMEOUT_S,
            )
            return str(resp.instance.instance_id)

        async def create_run(key: str) -> str:
            resp = await agents.CreateRun(
                asvc.CreateRunRequest(task=run_pb2.Task(skill=SKILL, goal=f"{WORDS} {key}")),
                metadata=md,
                timeout=CALL_TIMEOUT_S,
            )
            return str(resp.run.run_id)

        loops = [
            write_loop(writers["provider"], announce, stop, 0.01),
            write_loop(writers["provider"], announce, stop, 0.01),
            write_loop(writers["instance"], create_instance, stop, 0.02),
            write_loop(writers["run"], create_run, stop, 0.05),
        ]
        tasks = [asyncio.create_task(loop) for loop in loops]
        started = time.monotonic()
        try:
            for _ in range(KILLS):
                await asyncio.sleep(LOAD_BEFORE_KILL_S)
                sessions = agent.stats.connections
                killed = time.monotonic()
                mesh.kill()
                await asyncio.sleep(0.3)
                mesh.start()
                await mesh.wait_ready()
                downtime.append(time.monotonic() - killed)
                # The agent comes back on its own (a new session channel) while the writers go on.
                await agent.wait_connected(count=sessions + 1, timeout_s=30)
                reconnect.append(time.monotonic() - killed - downtime[-1])
            await asyncio.sleep(LOAD_BEFORE_KILL_S)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started

        try:
            # The agent came back on the same session (its token and session survived), and is online.
            assert agent.connected
            assert agent.stats.connections >= KILLS + 1
            assert agent.session_id == session
            got = await agents.GetAgent(
                asvc.GetAgentRequest(agent_id=agent.agent_id), metadata=md, timeout=10
            )
            assert got.agent.state in LIVE_STATES, got.agent.state_reason

            # Every acknowledged write is there.
            async def providers(token: str) -> tuple[list[str], str]:
                resp = await registry.ListProviders(
                    rs.ListProvidersRequest(page_size=1000, page_token=token), metadata=md, timeout=10
                )
                return [p.provider_id for p in resp.providers], resp.next_page_token

            async def instances(token: str) -> tuple[list[str], str]:
                resp = await connectors.ListConnectorInstances(
                    csvc.ListConnectorInstancesRequest(platform="n8n", page_size=1000, page_token=token),
                    metadata=md,
                    timeout=10,
                )
                return [i.instance_id for i in resp.instances], resp.next_page_token

            async def runs(token: str) -> tuple[list[str], str]:
                resp = await agents.ListRuns(
                    asvc.ListRunsRequest(page_size=1000, page_token=token), metadata=md, timeout=10
                )
                return [r.run_id for r in resp.runs], resp.next_page_token

            found = {
                "provider": await all_pages(providers),
                "instance": await all_pages(instances),
                "run": await all_pages(runs),
            }
            lost = {name: sorted(set(w.acknowledged) - found[name]) for name, w in writers.items()}

            # Every acknowledged run finishes: with its whole output once, or failed with a reason.
            run_ids = writers["run"].acknowledged
            states: dict[str, run_pb2.Run] = {}

            async def all_finished() -> bool:
                for run_id in run_ids:
                    if run_id not in states or states[run_id].state not in TERMINAL:
                        resp = await agents.GetRun(asvc.GetRunRequest(run_id=run_id), metadata=md, timeout=10)
                        states[run_id] = resp.run
                return all(r.state in TERMINAL for r in states.values())

            unfinished = ""
            try:
                await wait_until(all_finished, 45.0, interval_s=0.5, what="every acknowledged run finishes")
            except AssertionError:
                unfinished = str(
                    {
                        r.run_id: (run_pb2.RunState.Name(r.state), r.state_reason, r.attempt)
                        for r in states.values()
                        if r.state not in TERMINAL
                    }
                )
            outcome = Counter(run_pb2.RunState.Name(r.state) for r in states.values())
            failed = {
                r.run_id: (r.error.code, r.error.message)
                for r in states.values()
                if r.state != run_pb2.RUN_STATE_SUCCEEDED
            }
            bad_output = {}
            retried = 0
            for run_id, run in states.items():
                if run.state == run_pb2.RUN_STATE_SUCCEEDED:
                    output = await attempts_output(agents, run_id, md)
                    retried += len(output) > 1
                    if not output_is_whole(output, run.task.goal.split()) or len(output) > run.attempt:
                        bad_output[run_id] = (run.attempt, output)

            calls = sum(w.calls for w in writers.values())
            ok = sum(len(w.acknowledged) for w in writers.values())
            print(
                f"\n[{'postgres+redis' if shared.database_url else 'sqlite'}] {KILLS} SIGKILLs (down "
                f"{', '.join(f'{d:.1f}' for d in downtime)} s until SERVING again, the agent reconnected "
                f"{', '.join(f'{d:.1f}' for d in reconnect)} s after that); load "
                f"{calls / elapsed:.0f} calls/s ({ok / elapsed:.0f} acknowledged/s) over {elapsed:.1f} s"
            )
            for name, w in writers.items():
                print(
                    f"  {name}: {len(w.acknowledged)} acknowledged, "
                    f"{len(w.acknowledged) - len(lost[name])} found after the restarts; not acknowledged "
                    f"(written or not) {dict(w.failures)}"
                )
            print(
                f"  runs: {dict(outcome)}, {retried} of them handed to the agent again after a restart; "
                f"agent: {agent.stats}"
            )

            assert all(len(w.acknowledged) > 5 for w in writers.values()), {
                n: w.calls for n, w in writers.items()
            }
            assert not any(lost.values()), lost
            assert not unfinished, unfinished
            assert not failed, failed
            assert not bad_output, bad_output
        finally:
            await agent.stop()
            mesh.stop()
