"""The MCP transport: calls an MCP server's tools over streamable HTTP or a stdio child process.

An endpoint's uri is either a streamable-HTTP URL (`http(s)://host:port/mcp`) or `stdio:<command line>`
(split like a shell would, run without a shell). The tool called is the capability's `mcp.tool` label
(the original tool name, set by ImportMcpServer) or else the part of the capability id after its last
`/`.

Connections are kept open per endpoint, for HTTP too: a fresh `Client` pays for `server/discover` and
the `tools/list` the SDK needs to validate structured results (about 120 ms on loopback against 4 ms for
a call on an open connection). Because an anyio context must be entered and left by one task, each
connection is held open by an owner task that enters `async with Client(...)` and waits for its stop
signal; callers use the entered client from their own tasks (the SDK's session is safe for concurrent
requests). A connection is trusted only while it answers: any failure other than the caller's own
deadline drops it, and the next call opens a new one.

Per-call headers (`x-request-id`, `traceparent`, `x-tenant-id`) reach the HTTP request through a
context variable: the SDK runs each outbound POST in a copy of the sending task's context, and the
connection's httpx2 transport adds the headers of the call found there. Static headers come from the
endpoint's metadata keys `header.<Name>` (for example `header.Authorization`). Header values are never
logged. stdio servers get the trace context in the request's `_meta.traceparent` (the OpenTelemetry
convention for MCP), having no headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import shlex
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import httpx2
import mcp_types
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2
from jsonschema import validators
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from powerx.provider.v1 import provider_service_pb2 as provider_pb2
from router.transports.base import Call, ProbeResult, Target, TransportError

log = logging.getLogger("powerx.router.mcp")

STDIO_PREFIX = "stdio:"
# Metadata keys of an endpoint that name a static HTTP header (`header.Authorization`).
HEADER_METADATA_PREFIX = "header."
TOOL_LABEL = "mcp.tool"
MAX_ERROR_TEXT = 500
# Opening a connection (spawn + handshake) gives up after this long even when no caller waits any more.
DEFAULT_CONNECT_TIMEOUT_S = 30.0
# Closing waits this long for a connection to wind down (a stdio server gets 2 s to exit on its own,
# then its process tree is killed) before its owner task is cancelled.
CLOSE_GRACE_S = 6.0


@dataclass(frozen=True)
class McpTool:
    """One tool as an MCP server lists it (wire names inside the schemas and annotations).

    Attributes:
        name: The tool's name, case-sensitive.
        title: Human-readable title, if any (the annotations' title when the tool has none).
        description: What the tool does, if said.
        input_schema: JSON Schema of the arguments (always an object schema).
        output_schema: JSON Schema of the structured result, if the tool declares one.
        annotations: Behaviour hints (`readOnlyHint`, `destructiveHint`, `idempotentHint`,
            `openWorldHint`, `title`), only those the server sent.
    """

    name: str
    title: str | None
    description: str | None
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any]


@dataclass(frozen=True)
class McpServerInfo:
    """What an MCP server says about itself, and its tools.

    Attributes:
        name: Server name (empty when a 2026-era server does not identify itself).
        version: Server version as reported (not necessarily semver).
        title: Human-readable title, if any.
        instructions: The server's instructions for models, if any.
        protocol_version: The negotiated MCP protocol version.
        tools: Every tool the server lists, in its order.
    """

    name: str
    version: str
    title: str | None
    instructions: str | None
    protocol_version: str
    tools: tuple[McpTool, ...] = ()


# ---- targets and headers ---------------------------------------------------------------------------------


class StdioNotAllowed(ValueError):
    """A `stdio:` uri names a command this mesh may not run (see POWERX_MCP_STDIO_COMMANDS)."""


def redacted(uri: str) -> str:
    """A uri safe to show in errors: a `stdio:` command line loses its arguments (they may hold secrets)."""
    if uri.startswith(STDIO_PREFIX):
        try:
            argv = shlex.split(uri[len(STDIO_PREFIX) :])
        except ValueError:
            argv = []
        return f"{STDIO_PREFIX}{argv[0] if argv else ''} …"
    return uri


def server_target(uri: str, stdio_commands: Collection[str] = ()) -> str | StdioServerParameters:
    """What `mcp.Client` connects to for an endpoint uri: the URL itself, or a command to run.

    A `stdio:` uri makes the mesh start a process, so only commands the operator allowed run:
    `stdio_commands` lists the allowed executables (exactly as written in the uri), `*` allows any.

    Raises:
        StdioNotAllowed: The command is not in `stdio_commands`.
        ValueError: A `stdio:` uri names no command, or cannot be split (unbalanced quotes).
    """
    if uri.startswith(STDIO_PREFIX):
        argv = shlex.split(uri[len(STDIO_PREFIX) :])
        if not argv:
            raise ValueError("stdio: names no command")
        if "*" not in stdio_commands and argv[0] not in stdio_commands:
            raise StdioNotAllowed(
                f"this mesh does not run the stdio MCP command {argv[0]!r} "
                "(an operator allows commands with POWERX_MCP_STDIO_COMMANDS)"
            )
        return StdioServerParameters(command=argv[0], args=argv[1:])
    return uri


def tool_name(target: Target, call: Call) -> str:
    """The MCP tool a call goes to: the `mcp.tool` label, else the capability id after its last `/`."""
    return target.labels.get(TOOL_LABEL) or call.capability_id.rsplit("/", 1)[-1]


def static_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    """HTTP headers an endpoint's metadata asks for on every request (`header.<Name>` keys)."""
    return {
        key[len(HEADER_METADATA_PREFIX) :]: value
        for key, value in metadata.items()
        if key.startswith(HEADER_METADATA_PREFIX) and len(key) > len(HEADER_METADATA_PREFIX)
    }


def _call_headers(call: Call) -> dict[str, str]:
    headers = {
        "x-request-id": call.request_id,
        "traceparent": call.traceparent,
        "x-tenant-id": call.tenant_id,
    }
    return {k: v for k, v in headers.items() if v}


@dataclass
class _Outbound:
    """What one call adds to its HTTP requests, and what the HTTP layer learnt while sending them."""

    headers: dict[str, str]
    connect_failed: bool = False


_OUTBOUND: contextvars.ContextVar[_Outbound | None] = contextvars.ContextVar(
    "powerx_mcp_outbound", default=None
)


class _PropagatingTransport(httpx2.AsyncBaseTransport):
    """Adds the current call's headers to each request and notes requests that never left."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        outbound = _OUTBOUND.get()
        if outbound is not None:
            for key, value in outbound.headers.items():
                request.headers[key] = value
        try:
            return await self._inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout):
            if outbound is not None:
                outbound.connect_failed = True
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


def _http_client(headers: Mapping[str, str]) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        headers=dict(headers),
        transport=_PropagatingTransport(),
        timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
    )


@contextlib.asynccontextmanager
async def _open(target: str | StdioServerParameters, headers: Mapping[str, str]) -> AsyncIterator[Client]:
    """An entered `Client` for a server (enter and leave it in one task)."""
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(target, str):
            http = await stack.enter_async_context(_http_client(headers))
            client = Client(streamable_http_client(target, http_client=http))
        else:
            client = Client(target)
        yield await stack.enter_async_context(client)


# ---- errors ----------------------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or the exception itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _describe(exc: BaseException) -> str:
    """A short description of a failure (the first real cause), without payloads."""
    leaf = next(_leaves(exc), exc)
    text = str(leaf.message if isinstance(leaf, MCPError) else leaf).strip()
    return f"{type(leaf).__name__}: {text[:200]}" if text else type(leaf).__name__


def _unreachable(exc: BaseException) -> bool:
    """Whether a failure to connect means nothing answered (as opposed to something not speaking MCP)."""
    return any(
        isinstance(leaf, httpx2.TransportError | OSError) and not isinstance(leaf, httpx2.UnsupportedProtocol)
        for leaf in _leaves(exc)
    )


def _truncate(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text_of(result: mcp_types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, mcp_types.TextContent))


def _to_value(obj: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(obj, value)
    return value


def result_value(result: mcp_types.CallToolResult) -> struct_pb2.Value:
    """The value of a successful tool result.

    The structured content when the tool returned some (as is: a tool returning a plain value gives
    `{"result": value}`, which is what its output schema declares); otherwise the text blocks joined by
    newlines as a string; otherwise (images, audio, resources) the list of content blocks as their wire
    dictionaries.
    """
    if result.structured_content is not None:
        return _to_value(result.structured_content)
    if all(isinstance(block, mcp_types.TextContent) for block in result.content):
        return struct_pb2.Value(string_value=_text_of(result))
    return _to_value(
        [block.model_dump(by_alias=True, exclude_none=True, mode="json") for block in result.content]
    )


def _arguments_fit(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> bool:
    """Whether arguments satisfy a tool's input schema (True when the schema cannot be used)."""
    try:
        validator = validators.validator_for(schema)(schema)
        return bool(validator.is_valid(dict(arguments)))
    except Exception:
        return True


# ---- connections -----------------------------------------------------------------------------------------


class _Connection:
    """One open MCP connection, held by an owner task that entered its `Client` and waits to stop."""

    def __init__(
        self,
        endpoint_id: str,
        uri: str,
        server: str | StdioServerParameters,
        headers: Mapping[str, str],
        connect_timeout_s: float,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.uri = uri
        self.server = server
        self.headers = dict(headers)
        self.connect_timeout_s = connect_timeout_s
        self.broken = False
        self._stop = asyncio.Event()
        self._ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        # Nobody may be waiting when the connection fails; retrieving the exception keeps asyncio quiet.
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        # The owner must not inherit the headers of the call that happened to open the connection.
        context = contextvars.copy_context()
        context.run(_OUTBOUND.set, None)
        self._task = asyncio.create_task(self._own(), name=f"mcp-connection-{endpoint_id}", context=context)

    def matches(self, uri: str, headers: Mapping[str, str]) -> bool:
        """Whether this connection was opened for this address and these static headers."""
        return not self.broken and self.uri == uri and self.headers == dict(headers)

    async def client(self) -> Client:
        """The entered client, once the connection is open; raises what opening it raised."""
        return await asyncio.shield(self._ready)

    async def _own(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(self.connect_timeout_s):
                    client = await stack.enter_async_context(_open(self.server, self.headers))
                self._ready.set_result(client)
                await self._stop.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                log.info("MCP connection to endpoint %s ended: %s", self.endpoint_id, _describe(exc))
        finally:
            self.broken = True
            if not self._ready.done():
                self._ready.set_exception(ConnectionError("the MCP connection was closed"))

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Leaves the client's context (ending a stdio child process) and waits for the owner to finish."""
        self.broken = True
        self._stop.set()
        done, _ = await asyncio.wait({self._task}, timeout=grace_s)
        if not done:
            # Only when the SDK's own bounded shutdown hangs: a cancel may leave a child behind.
            log.warning("MCP connection to endpoint %s did not close in %.0f s", self.endpoint_id, grace_s)
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


# ---- the transport ---------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    """Where a call got to, for telling apart failures before and after the request was sent."""

    outbound: _Outbound
    connection: _Connection
    sent: bool = False


class McpTransport:
    """Calls MCP tools; one connection per endpoint, kept open and replaced when it fails."""

    def __init__(
        self, *, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, stdio_commands: Collection[str] = ()
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self.stdio_commands = frozenset(stdio_commands)
        self._connections: dict[str, _Connection] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _connection(self, target: Target) -> _Connection:
        """The endpoint's open (or opening) connection; a new one when there is none or it failed.

        Raises:
            TransportError: FAILED_PRECONDITION when the endpoint's uri cannot be used.
        """
        headers = static_headers(target.metadata)
        conn = self._connections.get(target.endpoint_id)
        if conn is not None and conn.matches(target.uri, headers):
            return conn
        try:
            server = server_target(target.uri, self.stdio_commands)
        except StdioNotAllowed as exc:
            raise TransportError(
                code_pb2.PERMISSION_DENIED, str(exc), sent=False, provider_error=True
            ) from None
        except ValueError as exc:
            raise TransportError(
                code_pb2.FAILED_PRECONDITION, f"bad MCP endpoint uri: {exc}", sent=False
            ) from None
        if conn is not None:
            self._discard(target.endpoint_id, conn)
        conn = _Connection(target.endpoint_id, target.uri, server, headers, self._connect_timeout_s)
        self._connections[target.endpoint_id] = conn
        return conn

    def _discard(self, endpoint_id: str, conn: _Connection) -> None:
        """Forgets a failed connection and closes it in the background (callers need not wait for it)."""
        conn.broken = True
        if self._connections.get(endpoint_id) is conn:
            del self._connections[endpoint_id]
        task = asyncio.create_task(conn.close(), name=f"mcp-close-{endpoint_id}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def invoke(self, target: Target, call: Call) -> struct_pb2.Value:
        """Calls the tool once and returns its result (see `result_value`); raises TransportError."""
        return await self._call(target, call, None)

    async def stream(self, target: Target, call: Call) -> AsyncIterator[provider_pb2.InvokeStreamResponse]:
        """MCP tools do not stream: yields the server's progress messages as text, then the result."""
        chunks: asyncio.Queue[str] = asyncio.Queue()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            chunks.put_nowait(message or (f"{progress:g}/{total:g}" if total else f"{progress:g}"))

        task = asyncio.create_task(self._call(target, call, on_progress))
        getter: asyncio.Future[str] | None = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(chunks.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield provider_pb2.InvokeStreamResponse(text=getter.result())
                else:
                    getter.cancel()  # before anything else runs, so a late chunk stays in the queue
            while not chunks.empty():
                yield provider_pb2.InvokeStreamResponse(text=chunks.get_nowait())
            yield provider_pb2.InvokeStreamResponse(data=task.result())
        finally:
            # The consumer may stop early (or be cancelled): nothing of this call may outlive it.
            if getter is not None:
                getter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _call(self, target: Target, call: Call, on_progress: ProgressFnT | None) -> struct_pb2.Value:
        name = tool_name(target, call)
        arguments: dict[str, Any] = json_format.MessageToDict(call.arguments)
        meta = (
            cast(mcp_types.RequestParamsMeta, {"traceparent": call.traceparent}) if call.traceparent else None
        )
        attempt = _Attempt(_Outbound(_call_headers(call)), connection=self._connection(target))
        token = _OUTBOUND.set(attempt.outbound)
        try:
            async with asyncio.timeout(call.timeout_s) as deadline:
                client = await attempt.connection.client()
                attempt.sent = True
                result = await client.call_tool(name, arguments, progress_callback=on_progress, meta=meta)
                if not result.is_error:
                    return result_value(result)
                error = await self._tool_error(client, name, arguments, result)
        except TimeoutError as exc:
            if deadline.expired():
                if not attempt.sent:
                    self._discard(target.endpoint_id, attempt.connection)
                raise TransportError(
                    code_pb2.DEADLINE_EXCEEDED,
                    f"MCP tool {name} did not answer within {call.timeout_s:g} s",
                    sent=attempt.sent,
                ) from None
            raise self._failed(target, attempt, exc) from None
        except MCPError as exc:
            raise self._rpc_error(target, attempt, name, exc) from None
        except Exception as exc:
            raise self._failed(target, attempt, exc) from None
        finally:
            _OUTBOUND.reset(token)
        raise error

    def _failed(self, target: Target, attempt: _Attempt, exc: BaseException) -> TransportError:
        """A connection-level failure: the connection is dropped and the endpoint reported unavailable."""
        self._discard(target.endpoint_id, attempt.connection)
        if not attempt.sent:
            return TransportError(
                code_pb2.UNAVAILABLE,
                f"could not connect to MCP endpoint {target.endpoint_id}: {_describe(exc)}",
                sent=False,
            )
        return TransportError(
            code_pb2.UNAVAILABLE,
            f"MCP endpoint {target.endpoint_id} failed during the call: {_describe(exc)}",
            sent=not attempt.outbound.connect_failed,
        )

    def _rpc_error(self, target: Target, attempt: _Attempt, name: str, exc: MCPError) -> TransportError:
        """A JSON-RPC error: the server's verdict on the request, or the SDK reporting a lost connection."""
        if not attempt.sent or exc.code in (mcp_types.CONNECTION_CLOSED, mcp_types.REQUEST_TIMEOUT):
            return self._failed(target, attempt, exc)
        # The server answered, but a JSON-RPC error may also be an HTTP error turned into one (an expired
        # legacy session is a 404): start afresh on the next call.
        self._discard(target.endpoint_id, attempt.connection)
        text = _truncate(exc.message)
        if exc.code == mcp_types.METHOD_NOT_FOUND:
            return TransportError(
                code_pb2.NOT_FOUND, f"MCP server does not serve tool {name}: {text}", provider_error=True
            )
        if exc.code == mcp_types.INVALID_PARAMS:
            return TransportError(
                code_pb2.INVALID_ARGUMENT, f"MCP tool {name} rejected the call: {text}", provider_error=True
            )
        if exc.code == mcp_types.INTERNAL_ERROR:
            return TransportError(code_pb2.INTERNAL, f"MCP tool {name} failed: {text}", provider_error=True)
        return TransportError(
            code_pb2.UNKNOWN, f"MCP tool {name} failed with error {exc.code}: {text}", provider_error=True
        )

    async def _tool_error(
        self, client: Client, name: str, arguments: Mapping[str, Any], result: mcp_types.CallToolResult
    ) -> TransportError:
        """Classifies an `isError` result.

        Servers built with the SDK report an unknown tool and arguments that fail validation as tool
        errors too, so the tool listing decides: a tool the server does not list is NOT_FOUND, arguments
        its input schema rejects are INVALID_ARGUMENT, anything else is the tool's own failure
        (FAILED_PRECONDITION). All three are the provider's answer, not worth another endpoint.
        """
        text = _truncate(_text_of(result) or "no details")
        schema: dict[str, Any] | None = None
        try:
            cursor: str | None = None
            listed = False
            for _ in range(100):
                page = await client.list_tools(cursor=cursor, cache_mode="refresh")
                for tool in page.tools:
                    if tool.name == name:
                        schema, listed = tool.input_schema, True
                cursor = page.next_cursor
                if listed or cursor is None:
                    break
        except Exception:
            listed = True  # cannot tell: report the tool's error as it is
        if not listed:
            return TransportError(
                code_pb2.NOT_FOUND, f"MCP server has no tool {name}: {text}", provider_error=True
            )
        if schema is not None and not _arguments_fit(schema, arguments):
            return TransportError(
                code_pb2.INVALID_ARGUMENT,
                f"arguments do not match the input schema of tool {name}: {text}",
                provider_error=True,
            )
        return TransportError(
            code_pb2.FAILED_PRECONDITION, f"tool {name} reported an error: {text}", provider_error=True
        )

    async def probe(self, target: Target, timeout_s: float) -> ProbeResult:
        """Asks the server whether it serves: `server/discover` (2026 era) or `ping` (older servers).

        `ping` no longer exists in the 2026-07-28 protocol; `server/discover` is its nearest stateless
        equivalent. The probe uses (and opens, when needed) the endpoint's cached connection, so a
        failed probe also drops a dead connection.
        """
        try:
            conn = self._connection(target)
        except TransportError as exc:
            return ProbeResult(ok=False, detail=exc.message)
        try:
            async with asyncio.timeout(timeout_s):
                client = await conn.client()
                version = client.protocol_version
                if version in MODERN_PROTOCOL_VERSIONS:
                    await client.session.send_discover(version)
                else:
                    await client.session.send_ping()
            return ProbeResult(ok=True)
        except TimeoutError:
            detail = f"no answer within {timeout_s:g} s"
        except Exception as exc:
            detail = _describe(exc)
        self._discard(target.endpoint_id, conn)
        return ProbeResult(ok=False, detail=detail)

    async def forget(self, endpoint_id: str) -> None:
        """Closes the endpoint's connection (and ends its stdio process), if any."""
        conn = self._connections.pop(endpoint_id, None)
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        """Closes every connection and waits for every stdio process to end."""
        conns = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(c.close() for c in conns), *list(self._closing), return_exceptions=True)


# ---- discovery -------------------------------------------------------------------------------------------


async def discover(
    uri: str,
    timeout_s: float = 10.0,
    headers: Mapping[str, str] | None = None,
    stdio_commands: Collection[str] = (),
) -> McpServerInfo:
    """Connects to an MCP server once and reads what it says about itself and every tool it lists.

    Args:
        uri: A streamable-HTTP URL or `stdio:<command line>`.
        timeout_s: Time allowed for the whole exchange (spawn, handshake, listing).
        headers: Static HTTP headers to send (for example Authorization).
        stdio_commands: Executables a `stdio:` uri may run (`*`: any); see `server_target`.

    Raises:
        StdioNotAllowed: The `stdio:` command is not allowed on this mesh.
        TransportError: UNAVAILABLE (sent=False) when nothing answered (connection refused, unknown
            host, a command that cannot be run), DEADLINE_EXCEEDED when the server did not finish in
            time, FAILED_PRECONDITION when something answered that does not speak MCP or the uri is bad.
    """
    try:
        server = server_target(uri, stdio_commands)
    except StdioNotAllowed:
        raise  # the caller turns it into a permission error
    except ValueError as exc:
        raise TransportError(code_pb2.FAILED_PRECONDITION, f"bad MCP uri: {exc}", sent=False) from None
    try:
        async with asyncio.timeout(timeout_s), _open(server, headers or {}) as client:
            tools: list[McpTool] = []
            cursor: str | None = None
            for _ in range(1000):
                page = await client.list_tools(cursor=cursor)
                tools.extend(_tool(t) for t in page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
            info = client.server_info
            return McpServerInfo(
                name=info.name if info else "",
                version=info.version if info else "",
                title=info.title if info else None,
                instructions=client.instructions or (info.description if info else None),
                protocol_version=client.protocol_version,
                tools=tuple(tools),
            )
    except TimeoutError:
        raise TransportError(
            code_pb2.DEADLINE_EXCEEDED, f"the MCP server did not answer within {timeout_s:g} s", sent=False
        ) from None
    except Exception as exc:
        if _unreachable(exc):
            raise TransportError(
                code_pb2.UNAVAILABLE, f"the MCP server is unreachable: {_describe(exc)}", sent=False
            ) from None
        raise TransportError(
            code_pb2.FAILED_PRECONDITION, f"the MCP handshake failed: {_describe(exc)}", sent=False
        ) from None


def _tool(tool: mcp_types.Tool) -> McpTool:
    annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else {}
    return McpTool(
        name=tool.name,
        title=tool.title or annotations.get("title"),
        description=tool.description,
        input_schema=dict(tool.input_schema),
        output_schema=dict(tool.output_schema) if tool.output_schema is not None else None,
        annotations=annotations,
    )
