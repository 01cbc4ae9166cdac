"""The router's MCP transport and ImportMcpServer against real MCP servers.

The servers are `tests/fixtures/mcp_calc_server.py`, served over streamable HTTP by uvicorn in the
test's own event loop (on a pre-bound ephemeral socket) and over stdio as a child process. Imports go
through the real mesh (SQLite, and PostgreSQL when configured).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import uvicorn
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2
from mcp.server import MCPServer
from starlette.applications import Starlette

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from router.transports.base import Call, Target, TransportError
from router.transports.mcp import McpTransport, discover
from servers.mesh import Mesh
from tests.conftest import tenant
from tests.fixtures.mcp_calc_server import build_server
from tests.integration.helpers import bad_fields, error_info

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "mcp_calc_server.py"
STDIO_URI = f"stdio:{shlex.quote(sys.executable)} {shlex.quote(str(SERVER_SCRIPT))}"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
T1 = tenant("t1")
CALC_TOOLS = {"add", "shout", "explode", "GetWeather", "pixel", "echo_headers", "sleep", "pid"}


# ---- servers -------------------------------------------------------------------------------------------


@dataclass
class HttpServer:
    """A server running under uvicorn in this event loop."""

    url: str
    port: int
    app_server: MCPServer | None
    uvicorn_server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.uvicorn_server.should_exit = True
        await asyncio.wait_for(self.task, 10)


async def serve(app: Starlette, mcp_server: MCPServer | None = None, port: int = 0) -> HttpServer:
    """Serves an app on 127.0.0.1 (a given port, to restart a server where it was)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
            await asyncio.sleep(0.01)
    return HttpServer(f"http://127.0.0.1:{port}/mcp", port, mcp_server, server, task)


async def serve_calc(port: int = 0) -> HttpServer:
    mcp_server = build_server()
    return await serve(mcp_server.streamable_http_app(), mcp_server, port)


@pytest.fixture
async def calc() -> AsyncIterator[HttpServer]:
    """The calculator over streamable HTTP."""
    server = await serve_calc()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def transport() -> AsyncIterator[McpTransport]:
    t = McpTransport(stdio_commands={"*"})  # these tests start stdio servers on purpose
    try:
        yield t
    finally:
        await t.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def target(uri: str, tool: str = "", endpoint_id: str = "ep_calc", **metadata: str) -> Target:
    return Target(
        endpoint_id=endpoint_id,
        uri=uri,
        metadata=metadata,
        labels={"mcp.tool": tool} if tool else {},
        provider_id="calc",
        tenant_id="t1",
    )


def call(
    capability_id: str, *, timeout_s: float | None = 10.0, request_id: str = "req-1", **arguments: object
) -> Call:
    args = struct_pb2.Struct()
    args.update(arguments)
    return Call(
        capability_id=capability_id,
        version="1.2.3",
        arguments=args,
        tenant_id="t1",
        actor_id="user-1",
        request_id=request_id,
        traceparent=TRACEPARENT,
        timeout_s=timeout_s,
    )


def as_python(value: struct_pb2.Value) -> object:
    return json_format.MessageToDict(value)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- transport: invoke ---------------------------------------------------------------------------------


async def test_invoke_returns_structured_text_and_content_results(
    calc: HttpServer, transport: McpTransport
) -> None:
    ep = target(calc.url)
    # A plain return value comes back as the structured content the tool declares: {"result": …}.
    assert as_python(await transport.invoke(ep, call("calc/add", a=2, b=3))) == {"result": 5}
    assert as_python(await transport.invoke(ep, call("calc/shout", text="hi"))) == {"text": "HI", "length": 2}
    # The `mcp.tool` label names the tool when the capability id cannot (upper case); unstructured text.
    weather = await transport.invoke(target(calc.url, "GetWeather"), call("calc/getweather", city="Paris"))
    assert weather.string_value == "sunny in Paris"
    pixel = as_python(await transport.invoke(ep, call("calc/pixel")))
    assert isinstance(pixel, list)
    assert [(b["type"], b["mimeType"]) for b in pixel] == [("image", "image/png")]


async def test_tool_errors_are_classified(calc: HttpServer, transport: McpTransport) -> None:
    ep = target(calc.url)
    with pytest.raises(TransportError) as err:
        await transport.invoke(ep, call("calc/explode", reason="x" * 2000))
    assert err.value.code == code_pb2.FAILED_PRECONDITION
    assert err.value.provider_error
    assert not err.value.retryable
    assert err.value.message.startswith("tool explode reported an error: ")
    assert len(err.value.message) <= len("tool explode reported an error: ") + 500

    with pytest.raises(TransportError) as err:
        await transport.invoke(ep, call("calc/add", a="two"))
    assert (err.value.code, err.value.provider_error) == (code_pb2.INVALID_ARGUMENT, True)
    assert "add" in err.value.message

    with pytest.raises(TransportError) as err:
        await transport.invoke(ep, call("calc/nope"))
    assert (err.value.code, err.value.provider_error) == (code_pb2.NOT_FOUND, True)
    assert "nope" in err.value.message

    # The connection survived the tool's errors.
    assert as_python(await transport.invoke(ep, call("calc/add", a=1, b=1))) == {"result": 2}


async def test_headers_propagate_per_call_and_static(
    calc: HttpServer, transport: McpTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ep = target(calc.url, **{"header.Authorization": "Bearer s3cret-token"})
    first, second = await asyncio.gather(
        transport.invoke(ep, call("calc/echo_headers", request_id="req-a")),
        transport.invoke(ep, call("calc/echo_headers", request_id="req-b")),
    )
    for value, request_id in ((first, "req-a"), (second, "req-b")):
        assert as_python(value) == {
            "x-request-id": request_id,
            "traceparent": TRACEPARENT,
            "x-tenant-id": "t1",
            "authorization": "Bearer s3cret-token",
            "meta.traceparent": TRACEPARENT,
        }
    assert "s3cret-token" not in caplog.text


async def test_timeout_is_deadline_exceeded_and_keeps_the_connection(
    calc: HttpServer, transport: McpTransport
) -> None:
    ep = target(calc.url)
    await transport.invoke(ep, call("calc/add", a=1, b=2))  # connected
    with pytest.raises(TransportError) as err:
        await transport.invoke(ep, call("calc/sleep", timeout_s=0.3, seconds=5))
    assert (err.value.code, err.value.sent) == (code_pb2.DEADLINE_EXCEEDED, True)
    async with asyncio.timeout(2):
        assert as_python(await transport.invoke(ep, call("calc/add", a=1, b=2))) == {"result": 3}


async def test_refused_connection_is_unavailable_and_not_sent(transport: McpTransport) -> None:
    with pytest.raises(TransportError) as err:
        await transport.invoke(target(f"http://127.0.0.1:{free_port()}/mcp"), call("calc/add", a=1, b=2))
    assert (err.value.code, err.value.sent, err.value.retryable) == (code_pb2.UNAVAILABLE, False, True)
    probe = await transport.probe(target(f"http://127.0.0.1:{free_port()}/mcp", endpoint_id="ep_x"), 2)
    assert not probe.ok
    assert probe.detail


async def test_failed_connection_is_dropped_and_reopened(transport: McpTransport) -> None:
    server = await serve_calc()
    ep = target(server.url)
    try:
        assert (await transport.probe(ep, 5)).ok
        assert as_python(await transport.invoke(ep, call("calc/add", a=1, b=2))) == {"result": 3}
    finally:
        await server.stop()
    probe = await transport.probe(ep, 5)
    assert not probe.ok
    assert probe.detail
    with pytest.raises(TransportError) as err:
        await transport.invoke(ep, call("calc/add", a=1, b=2))
    assert (err.value.code, err.value.sent) == (code_pb2.UNAVAILABLE, False)

    server = await serve_calc(server.port)  # back at the same address
    try:
        assert as_python(await transport.invoke(ep, call("calc/add", a=2, b=2))) == {"result": 4}
        assert (await transport.probe(ep, 5)).ok
    finally:
        await transport.forget(ep.endpoint_id)
        await server.stop()


async def test_stream_forwards_progress_then_the_result(calc: HttpServer, transport: McpTransport) -> None:
    chunks = [c async for c in transport.stream(target(calc.url), call("calc/shout", text="hey"))]
    kinds = [c.WhichOneof("content") for c in chunks]
    assert kinds == ["text", "text", "data"]
    assert [c.text for c in chunks[:2]] == ["halfway", "done"]
    assert as_python(chunks[-1].data) == {"text": "HEY", "length": 3}
    with pytest.raises(TransportError) as err:
        async for _ in transport.stream(target(calc.url), call("calc/explode", reason="no")):
            pass
    assert err.value.code == code_pb2.FAILED_PRECONDITION


async def test_stdio_server_is_reused_and_its_process_ends_on_forget_and_close(
    transport: McpTransport,
) -> None:
    ep = target(STDIO_URI, endpoint_id="ep_stdio")
    assert as_python(await transport.invoke(ep, call("calc/add", a=20, b=22))) == {"result": 42}
    pid = int(as_python(await transport.invoke(ep, call("calc/pid")))["result"])  # type: ignore[index]
    assert pid != os.getpid()
    assert process_alive(pid)
    assert int(as_python(await transport.invoke(ep, call("calc/pid")))["result"]) == pid  # type: ignore[index]
    # No HTTP headers over stdio; the trace context travels in `_meta`.
    assert as_python(await transport.invoke(ep, call("calc/echo_headers"))) == {
        "meta.traceparent": TRACEPARENT
    }
    assert (await transport.probe(ep, 5)).ok

    await transport.forget("ep_stdio")
    assert not process_alive(pid)

    # A server that dies fails the call in flight or the next one; the call after that starts it anew.
    second = int(as_python(await transport.invoke(ep, call("calc/pid")))["result"])  # type: ignore[index]
    assert second != pid
    os.kill(second, signal.SIGKILL)
    with pytest.raises(TransportError) as err:
        await transport.invoke(ep, call("calc/add", a=1, b=1))
    assert err.value.code == code_pb2.UNAVAILABLE
    third = int(as_python(await transport.invoke(ep, call("calc/pid")))["result"])  # type: ignore[index]
    assert third not in (pid, second)
    assert process_alive(third)
    await transport.close()
    assert not process_alive(third)


async def test_stdio_commands_run_only_when_the_operator_allowed_them() -> None:
    locked = McpTransport()  # the mesh default: no stdio command may run
    try:
        with pytest.raises(TransportError) as err:
            await locked.invoke(target(STDIO_URI, endpoint_id="ep_locked"), call("calc/add", a=1, b=2))
        assert (err.value.code, err.value.sent, err.value.retryable) == (
            code_pb2.PERMISSION_DENIED,
            False,
            False,
        )
        assert "POWERX_MCP_STDIO_COMMANDS" in err.value.message
        assert not (await locked.probe(target(STDIO_URI, endpoint_id="ep_locked"), 2.0)).ok
    finally:
        await locked.close()
    allowed = McpTransport(stdio_commands={sys.executable})
    try:
        value = await allowed.invoke(target(STDIO_URI, endpoint_id="ep_ok"), call("calc/add", a=1, b=2))
        assert json_format.MessageToDict(value) == {"result": 3.0}
    finally:
        await allowed.close()


async def test_bad_stdio_command_is_unavailable(transport: McpTransport) -> None:
    with pytest.raises(TransportError) as err:
        await transport.invoke(target("stdio:/nonexistent/mcp-server --flag"), call("x/add"))
    assert (err.value.code, err.value.sent) == (code_pb2.UNAVAILABLE, False)
    with pytest.raises(TransportError) as err:
        await transport.invoke(target("stdio:'unbalanced", endpoint_id="ep_q"), call("x/add"))
    assert err.value.code == code_pb2.FAILED_PRECONDITION


async def test_discover_reads_server_info_and_tools(calc: HttpServer) -> None:
    info = await discover(calc.url)
    assert (info.name, info.version, info.title) == ("calc-server", "1.2.3", "Calculator")
    assert info.instructions == "Arithmetic and text tools for the mesh tests."
    tools = {t.name: t for t in info.tools}
    assert set(tools) == CALC_TOOLS
    assert tools["add"].input_schema["required"] == ["a", "b"]
    assert tools["add"].output_schema is not None
    assert tools["shout"].title == "Shout"
    assert tools["shout"].annotations == {"readOnlyHint": True}
    assert tools["GetWeather"].output_schema is None


# ---- ImportMcpServer through the mesh ------------------------------------------------------------------


async def _capability(registry: rs_grpc.RegistryServiceStub, capability_id: str, md=T1):
    req = rs.GetCapabilityRequest(capability_id=capability_id)
    return (await registry.GetCapability(req, metadata=md)).capabilities[0]


async def _ids(registry: rs_grpc.RegistryServiceStub, md: tuple[tuple[str, str], ...] = T1) -> set[str]:
    listed = await registry.ListCapabilities(rs.ListCapabilitiesRequest(provider_id="calc"), metadata=md)
    return {c.capability_id for c in listed.capabilities}


async def test_import_creates_one_capability_per_tool(
    registry: rs_grpc.RegistryServiceStub, calc: HttpServer, transport: McpTransport
) -> None:
    req = rs.ImportMcpServerRequest(server_id="calc", uri=calc.url, tenant_scopes=["t3"])
    resp = await registry.ImportMcpServer(req, metadata=T1)
    assert resp.provider.provider_id == "calc"
    assert resp.provider.version == "1.2.3"
    assert resp.provider.display_name == "Calculator"
    assert resp.provider.description == "Arithmetic and text tools for the mesh tests."
    assert resp.provider.labels["mcp.server_name"] == "calc-server"
    expected = {f"calc/{name.lower()}" for name in CALC_TOOLS}
    assert {c.capability_id for c in resp.capabilities} == expected
    assert await _ids(registry) == expected

    add = await _capability(registry, "calc/add")
    assert add.version == "1.2.3"
    assert add.idempotent
    assert add.labels["mcp.tool"] == "add"
    assert add.description == "Add two integers."
    assert json_format.MessageToDict(add.input_schema)["required"] == ["a", "b"]
    assert "result" in json_format.MessageToDict(add.output_schema)["properties"]
    assert [(e.transport, e.uri) for e in add.endpoints] == [(common_pb2.TRANSPORT_MCP, calc.url)]
    shout = await _capability(registry, "calc/shout")
    assert (shout.display_name, shout.idempotent, shout.labels["mcp.read_only"]) == ("Shout", True, "true")
    explode = await _capability(registry, "calc/explode")
    assert not explode.idempotent
    assert (explode.labels["mcp.destructive"], explode.labels["mcp.read_only"]) == ("true", "false")
    weather = await _capability(registry, "calc/getweather")
    assert weather.labels["mcp.tool"] == "GetWeather"
    assert not weather.HasField("output_schema")

    # The router's transport calls what was imported, by the endpoint and labels the registry holds.
    ep = weather.endpoints[0]
    value = await transport.invoke(
        Target(
            endpoint_id=ep.endpoint_id, uri=ep.uri, metadata=dict(ep.metadata), labels=dict(weather.labels)
        ),
        call(weather.capability_id, city="Oslo"),
    )
    assert value.string_value == "sunny in Oslo"

    # Another tenant sees nothing, unless the import shared the tools with it.
    assert await _ids(registry, tenant("t2")) == set()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _capability(registry, "calc/add", tenant("t2"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await _ids(registry, tenant("t3")) == expected

    # The same import again changes nothing.
    revision = (await registry.ListCapabilities(rs.ListCapabilitiesRequest(), metadata=T1)).revision
    await registry.ImportMcpServer(req, metadata=T1)
    assert (await registry.ListCapabilities(rs.ListCapabilitiesRequest(), metadata=T1)).revision == revision

    # A re-import follows the server: a removed tool disappears, colliding names get a suffix.
    assert calc.app_server is not None
    calc.app_server.remove_tool("explode")
    calc.app_server.add_tool(lambda city: f"windy in {city}", name="getWeather", structured_output=False)
    resp = await registry.ImportMcpServer(req, metadata=T1)
    expected = (expected - {"calc/explode"}) | {"calc/getweather-2"}
    assert {c.capability_id for c in resp.capabilities} == expected
    assert await _ids(registry) == expected
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _capability(registry, "calc/explode")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await _capability(registry, "calc/getweather")).labels["mcp.tool"] == "GetWeather"
    assert (await _capability(registry, "calc/getweather-2")).labels["mcp.tool"] == "getWeather"


async def _assert_nothing_written(registry: rs_grpc.RegistryServiceStub) -> None:
    for md in (T1, tenant("t2")):
        assert not (await registry.ListProviders(rs.ListProvidersRequest(), metadata=md)).providers


async def test_import_rejects_bad_requests_and_writes_nothing(
    registry: rs_grpc.RegistryServiceStub, mesh: Mesh
) -> None:
    mesh.registry.mcp_stdio_commands = frozenset({"*"})
    bad = rs.ImportMcpServerRequest(
        server_id="Calc Server!", uri="ftp://h/mcp", tenant_scopes=["t2", "no tenant"]
    )
    bad.lease_ttl.FromMilliseconds(100)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.ImportMcpServer(bad, metadata=T1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "INVALID_ARGUMENT"
    assert bad_fields(err.value) == {"server_id", "uri", "tenant_scopes[1]", "lease_ttl"}

    for uri in ("", "stdio:", "http://user:pw@h/mcp", "http:///mcp"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry.ImportMcpServer(rs.ImportMcpServerRequest(server_id="calc", uri=uri), metadata=T1)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, uri
        assert bad_fields(err.value) == {"uri"}, uri

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.ImportMcpServer(rs.ImportMcpServerRequest(server_id="calc", uri="http://h/mcp"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "TENANT_REQUIRED"
    await _assert_nothing_written(registry)


async def test_import_of_unreachable_or_non_mcp_server_fails_cleanly(
    registry: rs_grpc.RegistryServiceStub, mesh: Mesh
) -> None:
    mesh.registry.mcp_stdio_commands = frozenset({"*"})
    uri = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.ImportMcpServer(rs.ImportMcpServerRequest(server_id="calc", uri=uri), metadata=T1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(err.value)
    assert (info.reason, info.domain, info.metadata["uri"]) == (
        "MCP_SERVER_UNREACHABLE",
        "registry.powerx",
        uri,
    )

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.ImportMcpServer(
            rs.ImportMcpServerRequest(server_id="calc", uri="stdio:/nonexistent/mcp-server"), metadata=T1
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err.value).reason == "MCP_SERVER_UNREACHABLE"

    not_mcp = await serve(Starlette())  # answers 404 to everything
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry.ImportMcpServer(
                rs.ImportMcpServerRequest(server_id="calc", uri=not_mcp.url), metadata=T1
            )
    finally:
        await not_mcp.stop()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).reason == "MCP_HANDSHAKE_FAILED"
    await _assert_nothing_written(registry)


async def test_import_over_stdio_needs_the_operators_permission(
    registry: rs_grpc.RegistryServiceStub, mesh: Mesh
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.ImportMcpServer(
            rs.ImportMcpServerRequest(server_id="calc", uri=f"{STDIO_URI} --token=s3cret"), metadata=T1
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(err.value)
    assert info.reason == "MCP_STDIO_NOT_ALLOWED"
    assert "s3cret" not in str(info.metadata)
    assert "s3cret" not in (err.value.details() or "")
    await _assert_nothing_written(registry)
    mesh.registry.mcp_stdio_commands = frozenset({sys.executable})
    resp = await registry.ImportMcpServer(
        rs.ImportMcpServerRequest(server_id="calc", uri=STDIO_URI), metadata=T1
    )
    assert resp.capabilities


async def test_import_over_stdio(registry: rs_grpc.RegistryServiceStub, mesh: Mesh) -> None:
    mesh.registry.mcp_stdio_commands = frozenset({sys.executable})
    resp = await registry.ImportMcpServer(
        rs.ImportMcpServerRequest(server_id="calc", uri=STDIO_URI), metadata=T1
    )
    assert {c.capability_id for c in resp.capabilities} == {f"calc/{n.lower()}" for n in CALC_TOOLS}
    add = await _capability(registry, "calc/add")
    assert add.endpoints[0].uri == STDIO_URI


# ---- through the router ---------------------------------------------------------------------------------


async def test_imported_tools_are_called_through_the_router(
    calc: HttpServer, registry: rs_grpc.RegistryServiceStub, mesh: Mesh
) -> None:
    from powerx.router.v1 import router_service_pb2 as rt
    from powerx.router.v1 import router_service_pb2_grpc as rt_grpc

    await registry.ImportMcpServer(rs.ImportMcpServerRequest(server_id="calc", uri=calc.url), metadata=T1)
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        router = rt_grpc.RouterServiceStub(ch)
        arguments = struct_pb2.Struct()
        arguments.update({"a": 2, "b": 40})
        resp = await router.Invoke(
            rt.InvokeRequest(capability_id="calc/add", arguments=arguments), metadata=T1, timeout=10
        )
        assert json_format.MessageToDict(resp.result) == {"result": 42.0}
        assert resp.endpoint.transport == common_pb2.TRANSPORT_MCP
        # The tool's input schema came with the import: bad arguments stop at the router.
        bad = struct_pb2.Struct()
        bad.update({"a": "two"})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.Invoke(
                rt.InvokeRequest(capability_id="calc/add", arguments=bad), metadata=T1, timeout=10
            )
        assert error_info(err.value).reason == "ARGUMENTS_INVALID"
        # A tool error (isError) is a call failure the caller sees, not a retried outage.
        reason = struct_pb2.Struct()
        reason.update({"reason": "on purpose"})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router.Invoke(
                rt.InvokeRequest(capability_id="calc/explode", arguments=reason), metadata=T1, timeout=10
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == "PROVIDER_ERROR"
        assert "explode" in (err.value.details() or "")
        # Streaming through the router: the result arrives as one chunk, then the end.
        msgs = [
            m
            async for m in router.InvokeStream(
                rt.InvokeStreamRequest(capability_id="calc/add", arguments=arguments), metadata=T1, timeout=10
            )
        ]
        assert [m.WhichOneof("kind") for m in msgs] == ["chunk", "end"]
        assert json_format.MessageToDict(msgs[0].chunk.data) == {"result": 42.0}
