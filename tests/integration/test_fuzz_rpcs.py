"""Fuzzing every RPC of every mesh service through a real channel, on SQLite and PostgreSQL.

For each RPC the requests come from its input descriptor (`tests.reliability.request_strategy`: right
types, hostile values, unknown enum numbers, random well-known types) and, separately, as raw random
bytes sent in place of the serialized request (which exercises the server's deserializer). Whatever
arrives, the mesh must answer with a deliberate status: never INTERNAL or UNKNOWN, DEADLINE_EXCEEDED only
for streaming RPCs (a watch with nothing to say runs until the deadline), no stack trace in the message,
and it must still answer health checks afterwards.

`POWERX_FUZZ_EXAMPLES` sets the number of inputs per RPC and kind (30 by default). The inputs are
derandomized (the same every run, so a failure reproduces); set `POWERX_FUZZ_RANDOM=1` to explore.
The totals are printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from powerx.connector.v1 import connector_pb2
from powerx.connector.v1 import connector_service_pb2 as csvc
from powerx.connector.v1 import connector_service_pb2_grpc as csvc_grpc
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers.mesh import SERVICE_NAMES, Mesh
from tests.conftest import announce_request
from tests.integration.helpers import CORE_WRITE_RACE
from tests.reliability import Rpc, call_metadata, emit, mesh_methods, raw_request_bytes, request_strategy

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("POWERX_FUZZ_EXAMPLES", "30"))
DERANDOMIZE = os.environ.get("POWERX_FUZZ_RANDOM", "") != "1"
UNARY_DEADLINE_S = 5.0
STREAM_DEADLINE_S = 1.0
STREAM_READ = 3  # messages read from a server stream before the call is cancelled
CONCURRENCY = 24
FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
LEAK_MARKERS = ("Traceback", 'File "/', "Unexpected <class")

# (database, service) -> RPC name -> kind -> count; and the status codes seen per (database, service).
INPUTS: dict[tuple[str, str], dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
CODES: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)


# ---- inputs ----------------------------------------------------------------------------------------------


def _collect(strategy: st.SearchStrategy[Any]) -> list[Any]:
    """Draws up to EXAMPLES values (fewer when the strategy has fewer distinct ones) with hypothesis."""
    out: list[Any] = []

    @settings(
        max_examples=EXAMPLES,
        database=None,
        derandomize=DERANDOMIZE,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def draw(value: Any) -> None:
        out.append(value)

    draw()
    return out


# The mesh runs on two databases; the (deterministic) inputs are drawn once for both.
@functools.cache
def structured_inputs(rpc: Rpc) -> tuple[tuple[bytes, ...], ...]:
    return tuple(tuple(msgs) for msgs in _collect(request_strategy(rpc)))


@functools.cache
def raw_inputs(rpc: Rpc) -> tuple[tuple[bytes, ...], ...]:
    return tuple((b,) for b in _collect(raw_request_bytes(rpc)))


# ---- calls -----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    rpc: Rpc
    kind: str
    payloads: tuple[bytes, ...]
    code: grpc.StatusCode
    details: str

    def problem(self) -> str:
        """Why this outcome breaks the contract, or empty."""
        if self.code in FORBIDDEN:
            return f"status {self.code.name}"
        if self.code == grpc.StatusCode.DEADLINE_EXCEEDED and not self.rpc.streaming:
            return "a unary call ran past its deadline"
        if any(marker in self.details for marker in LEAK_MARKERS):
            return "the message leaks internals"
        return ""

    def describe(self) -> str:
        shown = b"|".join(p[:80] for p in self.payloads)
        size = sum(len(p) for p in self.payloads)
        return (
            f"{self.rpc.name} [{self.kind}] -> {self.code.name} ({self.problem()}): "
            f"{self.details[:300]!r}; request ({size} bytes) {shown!r}"
        )


def _identity(b: bytes) -> bytes:
    return b


async def _read_some(call: Any) -> None:
    """Reads at most STREAM_READ messages of a stream, then cancels it."""
    for _ in range(STREAM_READ):
        if await call.read() is grpc.aio.EOF:
            return
    call.cancel()


async def call_raw(channel: grpc.aio.Channel, rpc: Rpc, payloads: tuple[bytes, ...]) -> tuple[Any, str]:
    """Sends already-serialized request bytes; returns the status code and message.

    A client-streaming call whose status the client lost to grpc/grpc#36066 is sent again (up to 5
    times); any other INTERNAL stands.
    """
    for _ in range(5):
        code, details = await _call_raw_once(channel, rpc, payloads)
        if not (
            rpc.method.client_streaming and code == grpc.StatusCode.INTERNAL and details == CORE_WRITE_RACE
        ):
            break
    return code, details


async def _call_raw_once(channel: grpc.aio.Channel, rpc: Rpc, payloads: tuple[bytes, ...]) -> tuple[Any, str]:
    md = call_metadata()
    kw: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}
    method = rpc.method
    try:
        if not method.server_streaming and not method.client_streaming:
            await channel.unary_unary(rpc.path, **kw)(payloads[0], timeout=UNARY_DEADLINE_S, metadata=md)
            return grpc.StatusCode.OK, ""
        if method.client_streaming:
            if method.server_streaming:
                call: Any = channel.stream_stream(rpc.path, **kw)(
                    iter(payloads), timeout=STREAM_DEADLINE_S, metadata=md
                )
            else:
                call = channel.stream_unary(rpc.path, **kw)(
                    iter(payloads), timeout=STREAM_DEADLINE_S, metadata=md
                )
                await call
                return grpc.StatusCode.OK, ""
        else:
            call = channel.unary_stream(rpc.path, **kw)(payloads[0], timeout=STREAM_DEADLINE_S, metadata=md)
        await _read_some(call)
        if call.cancelled():
            return grpc.StatusCode.OK, "read enough"
        return await call.code(), await call.details()
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""


async def fuzz_service(channel: grpc.aio.Channel, service: str, db: str) -> list[Outcome]:
    """Sends every input of every RPC of `service`; returns the outcomes that break the contract."""
    jobs: list[tuple[Rpc, str, tuple[bytes, ...]]] = []
    for rpc in mesh_methods(service):
        for kind, inputs in (("message", structured_inputs(rpc)), ("bytes", raw_inputs(rpc))):
            INPUTS[db, service][rpc.name][kind] += len(inputs)
            jobs.extend((rpc, kind, payloads) for payloads in inputs)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(rpc: Rpc, kind: str, payloads: tuple[bytes, ...]) -> Outcome:
        async with gate:
            code, details = await call_raw(channel, rpc, payloads)
        CODES[db, service][code.name] += 1
        return Outcome(rpc, kind, payloads, code, details)

    outcomes = await asyncio.gather(*(one(*job) for job in jobs))
    return [o for o in outcomes if o.problem()]


# ---- state worth hitting ---------------------------------------------------------------------------------


async def seed(channel: grpc.aio.Channel) -> None:
    """A provider and two connector instances under the ids the generators like to use, so that some
    fuzzed calls reach the stores, the router and the platform clients (whose platforms refuse
    connections)."""
    md = call_metadata()
    registry = rs_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
    await registry.AnnounceProvider(announce_request(lease_s=600), metadata=md)
    connectors = csvc_grpc.ConnectorServiceStub(channel)  # type: ignore[no-untyped-call]
    for platform, workflow in (("n8n", "mesh-invoke"), ("coze", "7366000000000000001")):
        inst = connector_pb2.ConnectorInstance(
            base_url="http://127.0.0.1:9",
            workflow_ids={"echo": workflow, "summarize": workflow},
            default_platform_user_id="u1",
            enabled=True,
        )
        inst.credential_input.api_key.token = "fuzz-token"
        inst.credential_input.webhook_secrets.append("whsec_" + "A" * 43)
        await connectors.CreateConnectorInstance(
            csvc.CreateConnectorInstanceRequest(platform=platform, instance_id="acme", instance=inst),
            metadata=md,
        )


async def assert_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", *SERVICE_NAMES):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name


# ---- the tests -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = ["", "fuzz_rpcs: inputs tried (structured messages + raw bytes)"]
    grand = 0
    for (db, service), per_rpc in sorted(INPUTS.items()):
        total = sum(sum(c.values()) for c in per_rpc.values())
        grand += total
        codes = ", ".join(f"{k}={v}" for k, v in CODES[db, service].most_common())
        lines.append(f"  {db:8} {service:40} {len(per_rpc):3} RPCs {total:6} inputs  [{codes}]")
        lines.extend(
            f"      {name:45} {c['message']:4} messages {c['bytes']:4} bytes"
            for name, c in sorted(per_rpc.items())
        )
    lines.append(f"  total inputs tried: {grand}")
    emit(request.config, lines)


@pytest.fixture
async def fuzz_channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    # Big enough for the oversized requests: the server, not the client, must be the one refusing.
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(mesh.address, options=options) as ch:
        yield ch


@pytest.mark.parametrize("service", SERVICE_NAMES, ids=[s.rsplit(".", 1)[-1] for s in SERVICE_NAMES])
async def test_fuzzed_requests_get_a_deliberate_status_and_the_mesh_stays_up(
    service: str, database_url: str, fuzz_channel: grpc.aio.Channel
) -> None:
    db = "postgres" if database_url.startswith("postgresql") else "sqlite"
    await seed(fuzz_channel)
    started = time.monotonic()
    bad = await fuzz_service(fuzz_channel, service, db)
    await assert_serving(fuzz_channel)
    tried = sum(sum(c.values()) for c in INPUTS[db, service].values())
    print(f"{db} {service}: {tried} inputs in {time.monotonic() - started:.1f}s, {CODES[db, service]}")
    assert tried >= len(mesh_methods(service)) * 2
    by_rpc = Counter(f"{o.rpc.name} {o.code.name}" for o in bad)
    assert not bad, f"{len(bad)} inputs broke the contract {dict(by_rpc)}:\n" + "\n".join(
        o.describe() for o in bad[:15]
    )


def test_the_generators_cover_every_rpc_and_field_type() -> None:
    """The fuzzer reaches every RPC of every hosted service, and its inputs are not all alike."""
    rpcs = mesh_methods()
    assert {r.service for r in rpcs} == set(SERVICE_NAMES)
    for rpc in rpcs:
        structured = structured_inputs(rpc)
        assert structured, rpc.name
        assert raw_inputs(rpc), rpc.name
        if rpc.method.input_type.fields and len(structured) > 3:
            assert len({b"".join(p) for p in structured}) > 1, rpc.name
