"""The HTTP side: the JSON wire format the mesh router's http transport speaks (see docs/provider-sdk.md).

`POST {path}` takes a `powerx.provider.v1.InvokeRequest` in proto3 JSON and answers with an
`InvokeResponse`, or streams `InvokeStreamResponse` messages as NDJSON or SSE when the request accepts
them; errors are `google.rpc.Status` JSON bodies with the grpc-gateway HTTP status. `GET {path}/health`
reports whether the provider is serving. Served by uvicorn inside the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sdk._contract import provider_pb2
from sdk.call import CAPABILITY_KEY, TIMEOUT_MS_KEY, build_call_info, timeout_from_header
from sdk.dispatch import Dispatcher
from sdk.errors import ProviderError

log = logging.getLogger("powerx.sdk.http")

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
DEFAULT_PATH = "/invoke"
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # the same limit as a gRPC server's default receive size


def _integral(obj: Any) -> Any:
    """JSON-like data with integral floats as ints, so `1` travels as `1`, not `1.0`.

    Protobuf keeps every number as a double; JSON has one number type, so this only changes the text.
    """
    if isinstance(obj, float) and obj.is_integer() and abs(obj) <= 2**53:
        return int(obj)
    if isinstance(obj, dict):
        return {k: _integral(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_integral(v) for v in obj]
    return obj


def _dumps(message: Message) -> bytes:
    """A message as compact proto3 JSON on one line."""
    return json.dumps(_integral(json_format.MessageToDict(message)), separators=(",", ":")).encode()


def error_response(err: ProviderError) -> Response:
    """A `google.rpc.Status` JSON body with the HTTP status grpc-gateway would use."""
    return Response(_dumps(err.to_status()), status_code=err.http_status, media_type=JSON)


def stream_format(accept: str) -> str | None:
    """NDJSON or SSE when the Accept header asks for a stream (NDJSON wins when both are listed)."""
    types = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    if NDJSON in types:
        return NDJSON
    if SSE in types:
        return SSE
    return None


class ServingState:
    """Whether the provider reports itself as serving on `GET {path}/health`."""

    def __init__(self) -> None:
        self.serving = True


async def _read_body(request: Request) -> bytes:
    """The request body, refusing bodies above MAX_REQUEST_BYTES without reading them whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise _too_large()
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_REQUEST_BYTES:
            raise _too_large()
    return bytes(body)


def _too_large() -> ProviderError:
    return ProviderError(
        code_pb2.INVALID_ARGUMENT,
        f"request body exceeds {MAX_REQUEST_BYTES} bytes",
        reason="REQUEST_TOO_LARGE",
    )


async def _parse(request: Request) -> provider_pb2.InvokeRequest:
    """The InvokeRequest of a POST body (snake_case or camelCase field names)."""
    body = await _read_body(request)
    message = provider_pb2.InvokeRequest()
    try:
        json_format.Parse(body or b"{}", message, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise ProviderError(
            code_pb2.INVALID_ARGUMENT,
            f"body is not a powerx.provider.v1.InvokeRequest in JSON: {exc}",
            reason="INVALID_REQUEST_BODY",
        ) from None
    if not message.capability_id:
        message.capability_id = request.headers.get(CAPABILITY_KEY, "")
    return message


def build_app(dispatcher: Dispatcher, state: ServingState, path: str = DEFAULT_PATH) -> Starlette:
    """The Starlette app serving the HTTP wire format at `path`.

    Args:
        dispatcher: Runs the calls.
        state: What the health route reports.
        path: Path of the invoke route; health is at `{path}/health`.

    Returns:
        The ASGI app.
    """

    async def invoke(request: Request) -> Response:
        try:
            message = await _parse(request)
        except ProviderError as err:
            return error_response(err)
        headers = {k.lower(): v for k, v in request.headers.items()}
        call = build_call_info(
            capability_id=message.capability_id,
            version=message.version,
            context=message.context,
            metadata=headers,
            transport="http",
            time_remaining_s=timeout_from_header(headers.get(TIMEOUT_MS_KEY)),
        )
        media_type = stream_format(headers.get("accept", ""))
        try:
            spec = dispatcher.resolve(
                message.capability_id, message.version, streaming=media_type is not None
            )
            if media_type is None:
                result = await dispatcher.invoke(spec, message.arguments, call)
                return Response(_dumps(provider_pb2.InvokeResponse(result=result)), media_type=JSON)
        except ProviderError as err:
            return error_response(err)

        sse = media_type == SSE

        def frame(data: bytes) -> bytes:
            return b"data: " + data + b"\n\n" if sse else data + b"\n"

        async def body() -> AsyncIterator[bytes]:
            chunks = dispatcher.stream(spec, message.arguments, call)
            try:
                async for chunk in chunks:
                    yield frame(_dumps(chunk))
            except ProviderError as err:
                # The status line is gone already: the failure travels in-band as the last message.
                yield frame(_dumps(provider_pb2.InvokeStreamResponse(error=err.to_status())))
            finally:
                await chunks.aclose()

        return StreamingResponse(
            body(), media_type=media_type, headers={"cache-control": "no-cache", "x-accel-buffering": "no"}
        )

    async def health(_: Request) -> Response:
        status = "SERVING" if state.serving else "NOT_SERVING"
        return Response(
            json.dumps({"status": status}), status_code=200 if state.serving else 503, media_type=JSON
        )

    path = "/" + path.strip("/")
    return Starlette(
        routes=[
            Route(path, invoke, methods=["POST"]),
            Route(path + "/health", health, methods=["GET"]),
        ]
    )


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the program embedding it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (0 = ephemeral), so the port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """The HTTP wire format served by uvicorn on a pre-bound socket in the running event loop."""

    def __init__(self, dispatcher: Dispatcher, path: str = DEFAULT_PATH) -> None:
        self.state = ServingState()
        self.app = build_app(dispatcher, self.state, path)
        self.path = "/" + path.strip("/")
        self.port = 0
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, grace_s: float) -> int:
        """Binds, starts serving and waits until uvicorn accepts connections; returns the port."""
        sock = bind_socket(host, port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            timeout_graceful_shutdown=max(1, round(grace_s)),
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="provider-http")
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what stopped uvicorn
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    def enter_graceful_shutdown(self) -> None:
        """Reports NOT_SERVING on the health route; calls are still served."""
        self.state.serving = False

    async def stop(self) -> None:
        """Stops accepting connections and waits for running requests (up to the grace period)."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        except Exception:
            log.exception("the HTTP server failed while stopping")
        finally:
            self._server = None
            self._task = None
