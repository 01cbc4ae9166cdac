"""A fake Coze OpenAPI server that speaks the wire format of the platform notes (§1.2-1.5).

Served by uvicorn on 127.0.0.1 (port 0) inside the test's event loop::

    async with FakeCoze(tokens={"pat_good"}) as coze:
        client = CozeClient(coze.base_url, Credentials(token="pat_good"))

Endpoints: `POST /v1/workflow/run` (sync, and async with `is_async`), `GET
/v1/workflows/{id}/run_histories/{execute_id}`, `POST /v1/workflow/stream_run` (SSE, byte-exact
`id: N\\nevent: X\\ndata: {json}\\n\\n`), `GET /v1/workspaces`, and `POST /api/permission/oauth2/token`
(JWT-bearer exchange verified against configured RS256 public keys with single-use `jti`; refresh-token
grant with rotation). Every response carries `X-Tt-Logid`.

Knobs: `tokens` (bearer token → expiry or None), `workflows` (per-workflow `CozeWorkflow` behaviour),
`fail_next(fault, times)` (scripted answers for the next calls to the API), `async_allowed` (else code
6003), the OAuth settings. Observations: `requests` (every request received: headers, parsed body),
`runs` (how many times each workflow actually ran), `executions` (async runs).

This module also holds what `tests.fakes.n8n` shares: `LocalServer` (uvicorn in the running loop) and
`Fault` (a scripted answer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_TOKEN_TTL_S = 86399

# ---- shared by the fakes --------------------------------------------------------------------------------


class LocalServer:
    """A Starlette app served by uvicorn on 127.0.0.1 (a free port) in the running event loop."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # Protocol IPPROTO_TCP: asyncio turns Nagle off only on sockets whose protocol says TCP; with it on
        # every keep-alive response after the first waits for the peer's delayed ACK (~40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_config=None, lifespan="off", access_log=False, timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass
class Fault:
    """A scripted answer that replaces the normal one.

    Attributes:
        status: HTTP status.
        body: A dict or list is sent as JSON, a str or bytes as it is (`text/html`). None with status 200
            means "no error": after `delay_s` the normal answer follows (a slow platform).
        headers: Extra response headers (`Retry-After`, say).
        delay_s: Sleep before answering (for client timeouts).
        ran: Whether the workflow counts as run although an error is returned (an answer lost after
            the work was done).
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    ran: bool = False

    @property
    def passthrough(self) -> bool:
        return self.body is None and self.status == 200


def coze_error(code: int, msg: str = "injected error", *, status: int = 200, **kw: Any) -> Fault:
    """A Coze error body `{"code": N, "msg": ...}` (Coze sends most of them with HTTP 200)."""
    return Fault(status=status, body={"code": code, "msg": msg}, **kw)


def http_error(status: int, text: str = "<html><body>Bad Gateway</body></html>", **kw: Any) -> Fault:
    """A non-JSON error page, as a gateway in front of the platform sends."""
    return Fault(status=status, body=text, **kw)


def slow(delay_s: float) -> Fault:
    """The normal answer, `delay_s` late."""
    return Fault(delay_s=delay_s)


@dataclass
class Received:
    """A request the fake received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    query: dict[str, str]
    body: Any  # parsed JSON, or None
    raw: bytes


async def record(request: Request, into: list[Received]) -> Received:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    item = Received(
        request.method, request.url.path, dict(request.headers), dict(request.query_params), body, raw
    )
    into.append(item)
    return item


def fault_response(fault: Fault, extra_headers: Mapping[str, str] | None = None) -> Response:
    headers = {**(extra_headers or {}), **fault.headers}
    if isinstance(fault.body, dict | list):
        return JSONResponse(fault.body, status_code=fault.status, headers=headers)
    content = fault.body if fault.body is not None else b""
    return Response(content, status_code=fault.status, headers=headers, media_type="text/html")


# ---- Coze -------------------------------------------------------------------------------------------------


@dataclass
class CozeWorkflow:
    """How one fake workflow behaves.

    Attributes:
        output: The workflow's output for its parameters; by default `{"output": parameters}`.
        data_text: A raw `data` string for the sync run instead of the JSON of `output` (non-JSON output).
        polls_running: How many history reads of an async run answer `Running` before it ends.
        fail: `(error_code, error_message)`: the async run ends `Fail` with these.
        stream_ping: Send a `PING` heartbeat in the stream.
        stream_error: `(error_code, error_message)`: an `Error` event after the first message, then the
            stream ends.
        stream_interrupt: An `Interrupt` event (a question node) instead of the End node's answer.
        stream_delay_s: Pause between stream events.
        fault: Every call to this workflow answers with this.
    """

    output: Callable[[dict[str, Any]], Any] = field(default=lambda params: {"output": params})
    data_text: str | None = None
    polls_running: int = 1
    fail: tuple[int, str] | None = None
    stream_ping: bool = False
    stream_error: tuple[int, str] | None = None
    stream_interrupt: bool = False
    stream_delay_s: float = 0.0
    fault: Fault | None = None


@dataclass
class Execution:
    """An async run."""

    execute_id: str
    workflow_id: str
    parameters: dict[str, Any]
    user_id: str
    polls: int = 0
    create_time: int = field(default_factory=lambda: int(time.time()))


class FakeCoze(LocalServer):
    """The fake Coze server; see the module docstring.

    Args:
        tokens: Valid bearer tokens (no expiry).
        jwt_app_id: The JWT app's client id the exchange expects as `iss` (any when empty).
        jwt_public_keys: Public key id → RSA public key that JWT assertions are checked against.
        oauth_clients: OAuth client id → client secret ("" for PKCE/device apps) for the refresh grant.
        access_ttl_s: Lifetime of the access tokens the OAuth endpoint issues for refresh grants.
    """

    def __init__(
        self,
        tokens: set[str] | frozenset[str] = frozenset({"pat_good"}),
        *,
        jwt_app_id: str = "",
        jwt_public_keys: Mapping[str, rsa.RSAPublicKey] | None = None,
        oauth_clients: Mapping[str, str] | None = None,
        access_ttl_s: int = 900,
    ) -> None:
        super().__init__(
            Starlette(
                routes=[
                    Route("/v1/workflow/run", self._run, methods=["POST"]),
                    Route("/v1/workflow/stream_run", self._stream_run, methods=["POST"]),
                    Route(
                        "/v1/workflows/{workflow_id}/run_histories/{execute_id}",
                        self._history,
                        methods=["GET"],
                    ),
                    Route("/v1/workspaces", self._workspaces, methods=["GET"]),
                    Route("/api/permission/oauth2/token", self._token, methods=["POST"]),
                ]
            )
        )
        # bearer token → unix expiry (None: never)
        self.tokens: dict[str, float | None] = dict.fromkeys(tokens)
        self.workflows: dict[str, CozeWorkflow] = {}
        self.async_allowed = True
        self.jwt_app_id = jwt_app_id
        self.jwt_public_keys: dict[str, rsa.RSAPublicKey] = dict(jwt_public_keys or {})
        self.oauth_clients: dict[str, str] = dict(oauth_clients or {})
        self.access_ttl_s = access_ttl_s
        self.refresh_tokens: dict[str, str] = {}  # live refresh token → client id
        self.used_jtis: set[str] = set()
        self.requests: list[Received] = []
        self.runs: Counter[str] = Counter()
        self.executions: dict[str, Execution] = {}
        self._faults: deque[Fault] = deque()
        self._ids: Iterator[int] = itertools.count(7413647890307280001)
        self._logids: Iterator[int] = itertools.count(1)

    # -- knobs --

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """The next `times` API calls (not the OAuth endpoint) answer with `fault`."""
        self._faults.extend([fault] * times)

    def workflow(self, workflow_id: str, **behaviour: Any) -> CozeWorkflow:
        """Configures (or reconfigures) a workflow; unconfigured ids behave as `CozeWorkflow()`."""
        self.workflows[workflow_id] = CozeWorkflow(**behaviour)
        return self.workflows[workflow_id]

    def issue_refresh_token(self, client_id: str) -> str:
        """A live refresh token for an OAuth client (as the authorization-code flow would give)."""
        token = f"rt_{secrets.token_hex(12)}"
        self.refresh_tokens[token] = client_id
        return token

    def requests_to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    # -- helpers --

    def _logid(self) -> str:
        return f"fake-logid-{next(self._logids)}"

    def _json(
        self, body: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        logid = self._logid()
        body.setdefault("detail", {"logid": logid})
        return JSONResponse(body, status_code=status, headers={"X-Tt-Logid": logid, **(headers or {})})

    def _auth_error(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if token in self.tokens:
            expiry = self.tokens[token]
            if expiry is None or expiry > time.time():
                return None
        return self._json({"code": 4100, "msg": "authentication is invalid"}, status=401)

    async def _gate(
        self, request: Request, behaviour: CozeWorkflow | None
    ) -> tuple[Response | None, Fault | None]:
        """Auth, then scripted faults: an error response to send, or a delay-only fault to honour."""
        denied = self._auth_error(request)
        if denied is not None:
            return denied, None
        fault = self._faults.popleft() if self._faults else (behaviour.fault if behaviour else None)
        if fault is None:
            return None, None
        if fault.delay_s and not fault.passthrough:
            await asyncio.sleep(fault.delay_s)
        if fault.passthrough:
            return None, fault
        logid = self._logid()
        if isinstance(fault.body, dict):
            fault = dataclasses.replace(fault, body={**fault.body, "detail": {"logid": logid}})
        return fault_response(fault, {"X-Tt-Logid": logid}), fault

    def _debug_url(self, workflow_id: str, execute_id: str = "") -> str:
        return f"https://www.coze.cn/work_flow?execute_id={execute_id}&workflow_id={workflow_id}"

    # -- endpoints --

    async def _run(self, request: Request) -> Response:
        received = await record(request, self.requests)
        body = received.body if isinstance(received.body, dict) else {}
        workflow_id = str(body.get("workflow_id", ""))
        behaviour = self.workflows.get(workflow_id, CozeWorkflow())
        answer, fault = await self._gate(request, behaviour)
        if answer is not None:
            if fault is not None and fault.ran:
                self.runs[workflow_id] += 1
            return answer
        if not workflow_id:
            return self._json({"code": 4000, "msg": "workflow_id is required"})
        if body.get("bot_id") and body.get("app_id"):
            return self._json({"code": 4000, "msg": "bot_id and app_id cannot both be set"})
        parameters = body.get("parameters") or {}
        user_id = str((body.get("ext") or {}).get("user_id", ""))
        if body.get("is_async") and not self.async_allowed:
            return self._json({"code": 6003, "msg": "async run is only available on paid plans"})
        self.runs[workflow_id] += 1
        if fault is not None:  # a slow platform: the run happened, the answer is late
            await asyncio.sleep(fault.delay_s)
        if body.get("is_async"):
            execute_id = str(next(self._ids))
            self.executions[execute_id] = Execution(execute_id, workflow_id, parameters, user_id)
            debug_url = self._debug_url(workflow_id, execute_id)
            return self._json({"code": 0, "msg": "", "execute_id": execute_id, "debug_url": debug_url})
        data = (
            behaviour.data_text
            if behaviour.data_text is not None
            else json.dumps(behaviour.output(parameters), ensure_ascii=False)
        )
        return self._json(
            {
                "code": 0,
                "msg": "",
                "data": data,
                "debug_url": self._debug_url(workflow_id),
                "usage": {"input_count": 50, "output_count": 100, "token_count": 150},
            }
        )

    async def _history(self, request: Request) -> Response:
        await record(request, self.requests)
        workflow_id = request.path_params["workflow_id"]
        execution = self.executions.get(request.path_params["execute_id"])
        behaviour = self.workflows.get(workflow_id, CozeWorkflow())
        answer, fault = await self._gate(request, behaviour)
        if answer is not None:
            return answer
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
        if execution is None or execution.workflow_id != workflow_id:
            return self._json({"code": 4200, "msg": "execute record not found"})
        execution.polls += 1
        status, output, error_code, error_message = "Running", "", "", ""
        if execution.polls > behaviour.polls_running:
            if behaviour.fail is not None:
                status, error_code, error_message = "Fail", str(behaviour.fail[0]), behaviour.fail[1]
            else:
                status = "Success"
                output = json.dumps(behaviour.output(execution.parameters), ensure_ascii=False)
        logid = self._logid()
        history = {
            "execute_id": execution.execute_id,
            "execute_status": status,
            "bot_id": "0",
            "connector_id": "1024",
            "connector_uid": execution.user_id or "owner",
            "run_mode": 2,
            "logid": logid,
            "create_time": execution.create_time,
            "update_time": int(time.time()),
            "output": output,
            "error_code": error_code,
            "error_message": error_message,
            "debug_url": self._debug_url(workflow_id, execution.execute_id),
            "token": "0",
            "usage": {"input_count": 50, "output_count": 100, "token_count": 150},
            "is_output_trimmed": False,
        }
        return self._json({"code": 0, "msg": "", "data": [history]}, headers={"X-Tt-Logid": logid})

    async def _stream_run(self, request: Request) -> Response:
        received = await record(request, self.requests)
        body = received.body if isinstance(received.body, dict) else {}
        workflow_id = str(body.get("workflow_id", ""))
        behaviour = self.workflows.get(workflow_id, CozeWorkflow())
        answer, fault = await self._gate(request, behaviour)
        if answer is not None:
            if fault is not None and fault.ran:
                self.runs[workflow_id] += 1
            return answer
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
        self.runs[workflow_id] += 1
        events = self._stream_events(workflow_id, behaviour, body.get("parameters") or {})
        delay = behaviour.stream_delay_s

        async def sse() -> Any:
            for i, (name, data) in enumerate(events):
                if delay and i:
                    await asyncio.sleep(delay)
                yield f"id: {i}\nevent: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"X-Tt-Logid": self._logid()})

    def _stream_events(
        self, workflow_id: str, behaviour: CozeWorkflow, parameters: dict[str, Any]
    ) -> list[tuple[str, dict[str, Any]]]:
        def message(
            content: str, seq: int, finished: bool, title: str = "Message"
        ) -> tuple[str, dict[str, Any]]:
            return (
                "Message",
                {
                    "content": content,
                    "node_is_finish": finished,
                    "node_seq_id": str(seq),
                    "node_title": title,
                },
            )

        events = [message("he", 0, False)]
        if behaviour.stream_error is not None:
            code, text = behaviour.stream_error
            return [*events, ("Error", {"error_code": code, "error_message": text})]
        if behaviour.stream_ping:
            events.append(("PING", {}))
        events.append(message("llo", 1, True))
        if behaviour.stream_interrupt:
            interrupt = {
                "data": "which city?",
                "event_id": "7404830425073352713/2769808280134765896",
                "type": 2,
            }
            events.append(("Interrupt", {"interrupt_data": interrupt, "node_title": "Question"}))
        else:
            answer = message(json.dumps(behaviour.output(parameters), ensure_ascii=False), 0, True, "End")
            answer[1].update({"cost": "0.00", "token": 0})
            events.append(answer)
        events.append(("Done", {"debug_url": self._debug_url(workflow_id)}))
        return events

    async def _workspaces(self, request: Request) -> Response:
        await record(request, self.requests)
        answer, fault = await self._gate(request, None)
        if answer is not None:
            return answer
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
        workspace = {
            "id": "7400000000000000001",
            "name": "Personal",
            "icon_url": "",
            "role_type": "owner",
            "workspace_type": "personal",
            "enterprise_id": "",
        }
        return self._json({"code": 0, "msg": "", "data": {"total_count": 1, "workspaces": [workspace]}})

    async def _token(self, request: Request) -> Response:
        received = await record(request, self.requests)
        body = received.body if isinstance(received.body, dict) else {}
        grant = body.get("grant_type")
        if grant == JWT_GRANT:
            return self._jwt_grant(request, body)
        if grant == "refresh_token":
            return self._refresh_grant(request, body)
        return self._oauth_error("unsupported_grant_type", f"grant_type {grant!r} is not supported", 400)

    def _oauth_error(self, code: str, message: str, status: int = 401) -> Response:
        return self._json({"error_code": code, "error_message": message}, status=status)

    def _jwt_grant(self, request: Request, body: dict[str, Any]) -> Response:
        problem = self._jwt_problem(request.headers.get("authorization", ""))
        if problem:
            return self._oauth_error("invalid_client", problem)
        duration = body.get("duration_seconds", 900)
        if not isinstance(duration, int) or not 0 < duration <= MAX_TOKEN_TTL_S:
            return self._oauth_error("invalid_request", "duration_seconds must be 1..86399", 400)
        token = f"czs_{secrets.token_hex(16)}"
        expires = int(time.time()) + duration
        self.tokens[token] = expires
        return self._json({"access_token": token, "expires_in": expires, "token_type": "Bearer"})

    def _jwt_problem(self, authorization: str) -> str:
        """Why a JWT assertion is refused; empty when it is good (and its `jti` is now spent)."""
        if not authorization.startswith("Bearer "):
            return "missing JWT"
        parts = authorization.removeprefix("Bearer ").split(".")
        if len(parts) != 3:
            return "malformed JWT"
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except ValueError:
            return "malformed JWT"
        if header.get("alg") != "RS256" or header.get("typ") != "JWT":
            return "JWT must be RS256"
        key = self.jwt_public_keys.get(str(header.get("kid")))
        if key is None:
            return "unknown public key id"
        try:
            key.verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "bad JWT signature"
        now = time.time()
        if self.jwt_app_id and claims.get("iss") != self.jwt_app_id:
            return "wrong issuer"
        if claims.get("aud") != f"127.0.0.1:{self.port}":
            return "wrong audience"
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
            return "JWT expired"
        if not isinstance(claims.get("iat"), int) or claims["iat"] > now + 60:
            return "JWT issued in the future"
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "missing jti"
        if jti in self.used_jtis:
            return "jti already used"
        self.used_jtis.add(jti)
        return ""

    def _refresh_grant(self, request: Request, body: dict[str, Any]) -> Response:
        client_id = str(body.get("client_id", ""))
        if client_id not in self.oauth_clients:
            return self._oauth_error("invalid_client", "unknown client")
        secret = self.oauth_clients[client_id]
        if secret and request.headers.get("authorization") != f"Bearer {secret}":
            return self._oauth_error("invalid_client", "bad client secret")
        old = str(body.get("refresh_token", ""))
        if self.refresh_tokens.get(old) != client_id:
            return self._oauth_error("invalid_grant", "refresh token is invalid, expired or already used")
        del self.refresh_tokens[old]  # rotation: the old one dies on use
        access = f"czu_{secrets.token_hex(16)}"
        expires = int(time.time()) + self.access_ttl_s
        self.tokens[access] = expires
        return self._json(
            {
                "access_token": access,
                "expires_in": expires,
                "refresh_token": self.issue_refresh_token(client_id),
                "token_type": "Bearer",
            }
        )


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
