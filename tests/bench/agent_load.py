"""A heartbeat load generator of the agent benchmark (one process of possibly several).

`python -m tests.bench.agent_load --mesh ADDR --bare ADDR --index K --of N --agents TOTAL` owns the
agents `bench.hb.NNNNN` whose number is K modulo N. Commands (JSON lines on stdin, one answer each):

- `register {first, end, concurrency, skills}`: RegisterAgent for each of its agents numbered in
  [first, end) (tenant `bench-agents`; one shared skill, or one skill each, or none), then one
  RecordHeartbeat each (REGISTERING -> IDLE, a state change the mesh stores).
- `seed {database, secret}`: writes its other agents straight into the mesh's `agents` table, as a
  registration followed by a first heartbeat leaves them (state IDLE, a session, the SHA-256 of a token
  issued with the mesh's own secret), in one transaction; their skills are not announced to the
  registry. `load {concurrency}` then sends one RecordHeartbeat for each, which makes the mesh read the
  agent from the database into memory (no state change, no write).
- `unary {target, in_flight, count_from_ns, count_to_ns}`: RecordHeartbeat round-robin over its agents
  with `in_flight` calls at a time against `mesh` or `bare`, from now until `count_to_ns`; counts the
  calls that completed OK inside [count_from_ns, count_to_ns] and their latencies.
- `connect {target, count}`: opens a Connect session stream (hello, welcome) for `count` of its agents.
- `stream {target, count_from_ns, count_to_ns}`: every stream open to the target writes heartbeats as
  fast as flow control lets it until `count_to_ns`; counts the writes inside the window.
- `disconnect`: ends the streams (done writing, then cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import duration_pb2

from powerx.agent.v1 import agent_pb2
from powerx.agent.v1 import agent_service_pb2 as svc
from sdk import signing
from servers.agent.security import TokenSigner, token_hash
from servers.agent.store import KIND_NATIVE, agents_t
from tests.bench.agent_common import (
    AGENT_TENANT,
    SERVICE,
    TENANT_MD,
    bearer,
    manifest,
    self_cpu,
    serve_commands,
)
from tests.bench.common import percentile

SKILL = "bench.hb.work"
HEARTBEAT_S = 60  # the sweeper disconnects an agent after 3 missed intervals: 3 minutes here


def agent_id(i: int) -> str:
    """Id of heartbeat agent number i."""
    return f"bench.hb.{i:05d}"


class Agent:
    """One registered agent: its heartbeat request and metadata, built once."""

    __slots__ = ("agent_id", "md", "request", "session_id", "token")

    def __init__(self, agent_id: str, token: str, session_id: str) -> None:
        self.agent_id = agent_id
        self.token = token
        self.session_id = session_id
        self.md = bearer(token)
        load = agent_pb2.AgentLoad(cpu_usage=0.1, mem_usage=0.2, active_tasks=0)
        self.request = svc.RecordHeartbeatRequest(agent_id=agent_id, session_id=session_id, load=load)


class LoadGen:
    """The agents of this process and its channels."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.numbers = list(range(opts.index, opts.agents, opts.of))
        self.agents: list[Agent] = []
        self.seeded: list[Agent] = []
        self.channels = {
            "mesh": grpc.aio.insecure_channel(opts.mesh),
            "bare": grpc.aio.insecure_channel(opts.bare) if opts.bare else None,
        }
        self.streams: dict[str, list[Any]] = {"mesh": [], "bare": []}

    def _unary(self, target: str, method: str, req_cls: Any, resp_cls: Any) -> Any:
        ch = self.channels[target]
        assert ch is not None
        return ch.unary_unary(
            SERVICE + method,
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )

    async def register(self, msg: dict[str, Any]) -> dict[str, Any]:
        concurrency = int(msg.get("concurrency", 16))
        skill_mode = msg.get("skills", "shared")
        reg = self._unary("mesh", "RegisterAgent", svc.RegisterAgentRequest, svc.RegisterAgentResponse)
        hb = self._unary("mesh", "RecordHeartbeat", svc.RecordHeartbeatRequest, svc.RecordHeartbeatResponse)
        todo = [i for i in self.numbers if int(msg["first"]) <= i < int(msg["end"])]
        done: list[Agent] = []
        states: dict[int, int] = {}
        reg_lat: list[float] = []
        hb_lat: list[float] = []
        started = time.perf_counter()
        cpu0 = self_cpu()
        tenth = max(1, len(todo) // 10)
        progress: list[float] = []
        todo.reverse()

        async def worker() -> None:
            while todo:
                i = todo.pop()
                aid = agent_id(i)
                skills = {"shared": [SKILL], "own": [f"{SKILL}.s{i:05d}"], "none": []}[skill_mode]
                t0 = time.perf_counter()
                resp = await reg(
                    svc.RegisterAgentRequest(agent=manifest(aid, skills, heartbeat_s=HEARTBEAT_S)),
                    metadata=TENANT_MD,
                    timeout=60,
                )
                t1 = time.perf_counter()
                agent = Agent(aid, resp.agent_token, resp.session_id)
                first = await hb(agent.request, metadata=agent.md, timeout=60)
                t2 = time.perf_counter()
                reg_lat.append(t1 - t0)
                hb_lat.append(t2 - t1)
                states[first.state] = states.get(first.state, 0) + 1
                done.append(agent)
                if len(done) % tenth == 0:
                    progress.append(round(time.perf_counter() - started, 2))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        self.agents = sorted([*self.agents, *done], key=lambda a: a.agent_id)
        reg_lat.sort()
        hb_lat.sort()
        return {
            "registered": len(done),
            "seconds": time.perf_counter() - started,
            "cpu_s": self_cpu() - cpu0,
            "states": {agent_pb2.AgentState.Name(k): v for k, v in states.items()},
            "register_p50_ms": percentile(reg_lat, 50) * 1e3,
            "register_p99_ms": percentile(reg_lat, 99) * 1e3,
            "first_heartbeat_p50_ms": percentile(hb_lat, 50) * 1e3,
            "progress_s": progress,
        }

    async def seed(self, msg: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._seed, msg)

    def _seed(self, msg: dict[str, Any]) -> dict[str, Any]:
        registered = {a.agent_id for a in self.agents}
        signer = TokenSigner(Path(msg["secret"]).read_bytes().strip())
        started = time.perf_counter()
        now = int(time.time() * 1000)
        rows = []
        for i in self.numbers:
            aid = agent_id(i)
            if aid in registered:
                continue
            agent = manifest(aid, [SKILL], heartbeat_s=HEARTBEAT_S)
            agent.tenant_id = AGENT_TENANT
            agent.manifest_digest = hashlib.sha256(signing.canonical_manifest(agent)).hexdigest()
            agent.session_id = "sess_" + secrets.token_hex(12)
            agent.state = agent_pb2.AGENT_STATE_IDLE
            agent.state_reason = "first heartbeat"
            for ts in (agent.create_time, agent.token_issue_time, agent.state_change_time, agent.update_time):
                ts.FromMilliseconds(now)
            token = signer.issue(AGENT_TENANT, aid, now)
            rows.append(
                {
                    "tenant_id": AGENT_TENANT,
                    "agent_id": aid,
                    "kind": KIND_NATIVE,
                    "state": int(agent.state),
                    "session_id": agent.session_id,
                    "token_hash": token_hash(token),
                    "spec": agent.SerializeToString(deterministic=True),
                    "created_ms": now,
                    "updated_ms": now,
                }
            )
            self.seeded.append(Agent(aid, token, agent.session_id))
        engine = sa.create_engine(f"sqlite:///{msg['database']}", connect_args={"timeout": 60})
        try:
            with engine.begin() as conn:
                if rows:
                    conn.execute(sa.insert(agents_t), rows)
        finally:
            engine.dispose()
        return {"seeded": len(rows), "seconds": time.perf_counter() - started}

    async def load(self, msg: dict[str, Any]) -> dict[str, Any]:
        hb = self._unary("mesh", "RecordHeartbeat", svc.RecordHeartbeatRequest, svc.RecordHeartbeatResponse)
        todo = list(reversed(self.seeded))
        states: dict[str, int] = {}
        started = time.perf_counter()

        async def worker() -> None:
            while todo:
                agent = todo.pop()
                resp = await hb(agent.request, metadata=agent.md, timeout=60)
                name = agent_pb2.AgentState.Name(resp.state)
                states[name] = states.get(name, 0) + 1

        await asyncio.gather(*(worker() for _ in range(int(msg.get("concurrency", 32)))))
        self.agents = sorted([*self.agents, *self.seeded], key=lambda a: a.agent_id)
        self.seeded = []
        return {"loaded": sum(states.values()), "seconds": time.perf_counter() - started, "states": states}

    async def unary(self, msg: dict[str, Any]) -> dict[str, Any]:
        hb = self._unary(
            msg["target"], "RecordHeartbeat", svc.RecordHeartbeatRequest, svc.RecordHeartbeatResponse
        )
        count_from, count_to = int(msg["count_from_ns"]), int(msg["count_to_ns"])
        agents = self.agents
        n = len(agents)
        nxt = 0
        ok = 0
        errors: dict[str, int] = {}
        latencies: list[int] = []
        clock = time.monotonic_ns
        cpu0 = self_cpu()

        async def worker() -> None:
            nonlocal nxt, ok
            while True:
                t0 = clock()
                if t0 >= count_to:
                    return
                agent = agents[nxt % n]
                nxt += 1
                try:
                    await hb(agent.request, metadata=agent.md, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                t1 = clock()
                if count_from <= t1 <= count_to:
                    ok += 1
                    latencies.append(t1 - t0)

        await asyncio.gather(*(worker() for _ in range(int(msg["in_flight"]))))
        latencies.sort()
        return {
            "ok": ok,
            "errors": errors,
            "cpu_s": self_cpu() - cpu0,
            "p50_us": percentile(latencies, 50) / 1e3,
            "p99_us": percentile(latencies, 99) / 1e3,
            "mean_us": statistics.fmean(latencies) / 1e3 if latencies else float("nan"),
        }

    async def connect(self, msg: dict[str, Any]) -> dict[str, Any]:
        target = msg["target"]
        ch = self.channels[target]
        assert ch is not None
        connect = ch.stream_stream(
            SERVICE + "Connect",
            request_serializer=svc.ConnectRequest.SerializeToString,
            response_deserializer=svc.ConnectResponse.FromString,
        )
        count = int(msg["count"])
        started = time.perf_counter()
        states: dict[str, int] = {}

        async def open_one(agent: Agent) -> None:
            call = connect(metadata=agent.md)
            hello = svc.ConnectRequest()
            hello.hello.agent_id = agent.agent_id
            hello.hello.session_id = agent.session_id
            hello.hello.load.cpu_usage = 0.1
            await call.write(hello)
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise RuntimeError(f"{agent.agent_id}: no welcome on Connect ({first})")
            name = agent_pb2.AgentState.Name(first.welcome.state)
            states[name] = states.get(name, 0) + 1
            self.streams[target].append(call)

        todo = self.agents[:count]
        for i in range(0, len(todo), 100):  # 100 at a time
            await asyncio.gather(*(open_one(a) for a in todo[i : i + 100]))
        return {
            "streams": len(self.streams[target]),
            "seconds": time.perf_counter() - started,
            "states": states,
        }

    async def stream(self, msg: dict[str, Any]) -> dict[str, Any]:
        count_from, count_to = int(msg["count_from_ns"]), int(msg["count_to_ns"])
        sent = 0
        clock = time.monotonic_ns
        cpu0 = self_cpu()
        beat = svc.ConnectRequest()
        beat.heartbeat.load.cpu_usage = 0.1
        beat.heartbeat.load.mem_usage = 0.2
        beat.heartbeat.load.uptime.CopyFrom(duration_pb2.Duration(seconds=60))

        async def pump(call: Any) -> None:
            nonlocal sent
            while True:
                now = clock()
                if now >= count_to:
                    return
                await call.write(beat)
                if count_from <= clock() <= count_to:
                    sent += 1

        await asyncio.gather(*(pump(c) for c in self.streams[msg["target"]]))
        return {"sent": sent, "cpu_s": self_cpu() - cpu0}

    async def disconnect(self, _msg: dict[str, Any]) -> dict[str, Any]:
        closed = 0
        for calls in self.streams.values():
            for call in calls:
                with contextlib.suppress(Exception):
                    await call.done_writing()
                call.cancel()
                closed += 1
            calls.clear()
        return {"closed": closed}


async def _main(opts: argparse.Namespace) -> None:
    gen = LoadGen(opts)
    try:
        await serve_commands(
            {"agents": len(gen.numbers)},
            {
                "register": gen.register,
                "seed": gen.seed,
                "load": gen.load,
                "unary": gen.unary,
                "connect": gen.connect,
                "stream": gen.stream,
                "disconnect": gen.disconnect,
            },
        )
    finally:
        for ch in gen.channels.values():
            if ch is not None:
                await ch.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.agent_load")
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--bare", default="")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--agents", type=int, required=True)
    opts = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
