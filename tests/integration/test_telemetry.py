"""Tracing through a real mesh: server spans, trace context to providers, trace ids in audit rows and logs.

SQLite only: tracing does not touch storage beyond the audit row it names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from powerx.connector.v1 import connector_pb2
from powerx.connector.v1 import connector_service_pb2 as cs
from powerx.connector.v1 import connector_service_pb2_grpc as cs_grpc
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from powerx.router.v1 import router_service_pb2 as rt
from powerx.router.v1 import router_service_pb2_grpc as rt_grpc
from sdk import CallInfo, Provider
from servers.auth.store import audit_log_t
from servers.common import telemetry
from servers.common.logs import ContextFilter, JsonFormatter
from servers.common.settings import Settings
from servers.mesh import Mesh, start_mesh
from tests.conftest import announce_request, mesh_settings
from tests.fakes.n8n import FakeN8n

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
UNSAMPLED = f"00-{TRACE_ID}-{CALLER_SPAN}-00"
T1 = (("x-tenant-id", "t1"),)
ANNOUNCE = "/powerx.registry.v1.RegistryService/AnnounceProvider"
INVOKE = "/powerx.router.v1.RouterService/Invoke"


@asynccontextmanager
async def traced_mesh(tmp_path: Path, ratio: float = 1.0) -> AsyncIterator[tuple[Mesh, InMemorySpanExporter]]:
    """A mesh on SQLite whose spans land in memory as each one ends."""
    spans = InMemorySpanExporter()
    settings = mesh_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'mesh.db'}", otel_sample_ratio=ratio, metrics_address=""
    )
    mesh = await start_mesh(settings, span_processor=SimpleSpanProcessor(spans))
    try:
        yield mesh, spans
    finally:
        await mesh.stop(0)


def named(spans: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == method]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


async def audit_rows(mesh: Mesh, action: str) -> list[dict[str, Any]]:
    assert mesh.audit_log is not None
    await mesh.audit_log.flush()
    async with mesh.registry.store.engine.connect() as conn:  # type: ignore[attr-defined]
        result = await conn.execute(sa.select(audit_log_t).where(audit_log_t.c.action == action))
        return [dict(r._mapping) for r in result.all()]


def echo_provider(mesh: Mesh) -> Provider:
    """An in-process gRPC provider whose capability returns the `traceparent` it received."""
    p = Provider("com.test.trace", version="1.0.0", tenant_id="t1", registry=mesh.address, lease_ttl_s=30)

    @p.unary("trace.echo", idempotent=True)
    async def echo(a: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        return {"traceparent": call.traceparent}

    @p.streaming("trace.count", idempotent=True)
    async def count(a: dict[str, Any], call: CallInfo) -> AsyncIterator[Any]:
        for i in range(3):
            yield {"i": i}

    return p


async def test_a_callers_trace_continues_in_the_server_span_the_audit_row_and_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="powerx.rpc")
    caplog.handler.addFilter(ContextFilter())  # as `logs.configure` installs it on the real handler
    async with traced_mesh(tmp_path) as (mesh, spans), grpc.aio.insecure_channel(mesh.address) as ch:
        await rs_grpc.RegistryServiceStub(ch).AnnounceProvider(
            announce_request("com.test.traced"),
            metadata=(*T1, ("traceparent", SAMPLED), ("x-request-id", "req-trace-1"), ("x-principal", "u-7")),
        )
        # Without a caller's trace, the mesh's new trace is the one its audit row names.
        await rs_grpc.RegistryServiceStub(ch).AnnounceProvider(
            announce_request("com.test.untraced"), metadata=(*T1, ("x-request-id", "req-trace-2"))
        )
        rows = await audit_rows(mesh, ANNOUNCE)
    span, new_trace = sorted(named(spans, ANNOUNCE), key=lambda s: s.start_time or 0)
    assert new_trace.parent is None
    assert [(r["request_id"], r["trace_id"]) for r in rows if r["request_id"] == "req-trace-2"] == [
        ("req-trace-2", hex_ids(new_trace)[0])
    ]
    trace_id, span_id = hex_ids(span)
    assert trace_id == TRACE_ID
    assert span.parent is not None
    assert span.parent.is_remote
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert span.kind is SpanKind.SERVER
    assert span.resource.attributes["service.name"] == "powerx-mesh"
    assert span.attributes is not None
    assert span.attributes["rpc.method"] == "AnnounceProvider"
    assert span.status.status_code is StatusCode.UNSET
    # The call context took the span's ids: the audit row names the caller's trace.
    (row,) = [r for r in rows if r["request_id"] == "req-trace-1"]
    assert (row["trace_id"], row["request_id"], row["actor"]) == (TRACE_ID, "req-trace-1", "u-7")
    # Log lines of the call carry the trace id, request id and tenant, also once the call is over.
    (done,) = [
        r for r in caplog.records if r.name == "powerx.rpc" and getattr(r, "request_id", "") == "req-trace-1"
    ]
    assert (done.trace_id, done.request_id, done.tenant) == (TRACE_ID, "req-trace-1", "t1")  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(done))
    assert (line["trace_id"], line["request_id"], line["tenant"]) == (TRACE_ID, "req-trace-1", "t1")
    assert span_id not in (CALLER_SPAN, "0" * 16)


async def test_failed_calls_record_their_status_code_on_the_span(tmp_path: Path) -> None:
    async with traced_mesh(tmp_path) as (mesh, spans), grpc.aio.insecure_channel(mesh.address) as ch:
        registry = rs_grpc.RegistryServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry.GetProvider(rs.GetProviderRequest(provider_id="com.missing"), metadata=T1)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
    (span,) = named(spans, "/powerx.registry.v1.RegistryService/GetProvider")
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status.status_code is StatusCode.UNSET  # a caller's mistake is not a server error


async def test_a_routed_call_carries_the_trace_to_the_provider_with_the_mesh_span_as_parent(
    tmp_path: Path,
) -> None:
    async with traced_mesh(tmp_path) as (mesh, spans), grpc.aio.insecure_channel(mesh.address) as ch:
        router = rt_grpc.RouterServiceStub(ch)
        async with echo_provider(mesh):
            args = struct_pb2.Struct()
            resp = await router.Invoke(
                rt.InvokeRequest(capability_id="trace.echo", arguments=args),
                metadata=(*T1, ("traceparent", SAMPLED)),
                timeout=5,
            )
            chunks = [
                m
                async for m in router.InvokeStream(
                    rt.InvokeStreamRequest(capability_id="trace.count", arguments=args),
                    metadata=(*T1, ("traceparent", SAMPLED)),
                    timeout=5,
                )
            ]
    received = json_format.MessageToDict(resp.result)["traceparent"]
    version, trace_id, parent_id, flags = received.split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert parent_id != CALLER_SPAN
    (server,) = named(spans, INVOKE)
    assert hex_ids(server) == (TRACE_ID, parent_id)  # the provider's parent is the mesh's server span
    assert flags == "01"
    # Server-streaming handlers are traced too, and end with the stream.
    assert len(chunks) >= 3
    (stream_span,) = named(spans, "/powerx.router.v1.RouterService/InvokeStream")
    assert hex_ids(stream_span)[0] == TRACE_ID
    assert stream_span.status.status_code is StatusCode.UNSET


async def test_a_connector_call_carries_the_trace_to_the_platform(tmp_path: Path) -> None:
    async with (
        FakeN8n() as n8n,
        traced_mesh(tmp_path) as (mesh, spans),
        grpc.aio.insecure_channel(mesh.address) as ch,
    ):
        n8n.webhook("mesh-invoke")
        inst = connector_pb2.ConnectorInstance(
            display_name="traced n8n",
            base_url=n8n.base_url,
            workflow_ids={"echo": "mesh-invoke"},
            default_platform_user_id="n8n-user",
            enabled=True,
        )
        inst.credential_input.api_key.token = "n8n_api_key"
        inst.credential_input.secret_headers["X-Mesh-Token"] = "hook-token"
        connectors = cs_grpc.ConnectorServiceStub(ch)
        await connectors.CreateConnectorInstance(
            cs.CreateConnectorInstanceRequest(platform="n8n", instance_id="acme", instance=inst),
            metadata=(*T1, ("x-scopes", "agent.connector.manage"), ("x-principal", "alice")),
        )
        context = struct_pb2.Struct()
        context.update({"q": "hi"})
        await connectors.InvokeConnector(
            cs.InvokeConnectorRequest(platform="n8n", workflow_id="echo", context=context),
            metadata=(*T1, ("x-principal", "alice"), ("traceparent", SAMPLED)),
        )
        sent = n8n.requests[-1].headers
    (server,) = named(spans, "/powerx.connector.v1.ConnectorService/InvokeConnector")
    assert sent["traceparent"] == f"00-{TRACE_ID}-{hex_ids(server)[1]}-01"
    assert sent["x-trace-id"] == TRACE_ID


async def test_health_checks_and_watch_streams_make_no_spans(tmp_path: Path) -> None:
    async with traced_mesh(tmp_path) as (mesh, spans), grpc.aio.insecure_channel(mesh.address) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), metadata=(("traceparent", SAMPLED),)
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        registry = rs_grpc.RegistryServiceStub(ch)
        stream = registry.WatchRegistry(rs.WatchRegistryRequest(), metadata=(*T1, ("traceparent", SAMPLED)))
        assert (await stream.read()).HasField("caught_up")
        stream.cancel()
        await registry.ListProviders(rs.ListProvidersRequest(), metadata=(*T1, ("traceparent", SAMPLED)))
    names = {s.name for s in spans.get_finished_spans()}
    assert "/powerx.registry.v1.RegistryService/ListProviders" in names  # the mesh does trace
    assert not {n for n in names if "Health" in n or "Watch" in n}


async def test_with_ratio_zero_only_a_sampled_caller_gets_spans(tmp_path: Path) -> None:
    async with (
        traced_mesh(tmp_path, ratio=0.0) as (mesh, spans),
        grpc.aio.insecure_channel(mesh.address) as ch,
    ):
        registry = rs_grpc.RegistryServiceStub(ch)
        await registry.AnnounceProvider(announce_request("com.test.a"), metadata=T1)
        assert named(spans, ANNOUNCE) == []  # a new trace at ratio 0
        await registry.AnnounceProvider(
            announce_request("com.test.b"), metadata=(*T1, ("traceparent", UNSAMPLED))
        )
        assert named(spans, ANNOUNCE) == []  # the caller chose not to sample
        await registry.AnnounceProvider(
            announce_request("com.test.c"), metadata=(*T1, ("traceparent", SAMPLED))
        )
        (span,) = named(spans, ANNOUNCE)  # the caller's sampled flag wins over the ratio
        assert hex_ids(span)[0] == TRACE_ID
        rows = await audit_rows(mesh, ANNOUNCE)
    # Unsampled calls still have one trace id everywhere: a fresh one, or the caller's.
    trace_ids = [r["trace_id"] for r in sorted(rows, key=lambda r: r["id"])]
    assert len(trace_ids) == 3
    assert trace_ids[0] not in ("", TRACE_ID)
    assert len(trace_ids[0]) == 32
    assert trace_ids[1:] == [TRACE_ID, TRACE_ID]


class StopRecorder(SimpleSpanProcessor):
    stopped = False

    def shutdown(self) -> None:
        self.stopped = True
        super().shutdown()


async def test_stopping_the_mesh_stops_its_tracing_and_exporter_none_installs_none(tmp_path: Path) -> None:
    processor = StopRecorder(InMemorySpanExporter())
    mesh = await start_mesh(
        mesh_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", metrics_address=""),
        span_processor=processor,
    )
    assert mesh.tracing is not None
    await mesh.stop(0)
    assert processor.stopped  # buffered spans are exported before the process ends
    plain = await start_mesh(mesh_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"))
    try:
        assert plain.tracing is None  # POWERX_OTEL_EXPORTER=none: no provider, no interceptor
    finally:
        await plain.stop(0)


def test_exporter_none_builds_no_provider_and_bad_settings_are_refused() -> None:
    assert telemetry.setup(Settings(otel_exporter="none")) is None
    with pytest.raises(ValueError, match="POWERX_OTEL_EXPORTER"):
        telemetry.setup(Settings(otel_exporter="jaeger"))
    with pytest.raises(ValueError, match="POWERX_OTEL_SAMPLE_RATIO"):
        telemetry.setup(Settings(otel_exporter="console", otel_sample_ratio=1.5))
