"""A fake n8n (1.123.x) that behaves as the platform notes describe (§2.1-2.4).

Served by uvicorn on 127.0.0.1 (port 0) inside the test's event loop::

    async with FakeN8n(header_auth=("X-Mesh-Token", "tenant-a-token")) as n8n:
        n8n.webhook("mesh-invoke")
        client = N8nClient(n8n.base_url, Credentials(secret_headers={"X-Mesh-Token": "tenant-a-token"}))

- `POST /webhook/{path}`: header auth (wrong or missing → `403 Authorization data is wrong!` with
  `WWW-Authenticate: Basic realm="Webhook"`); an unknown or inactive path → 404 JSON with a server stack
  trace, as n8n sends. Per-webhook modes (`N8nWebhook.mode`):
  `respond` (a Respond-to-Webhook node: `{"ok":true,"result":…,"trace_id":…,"execution_id":…}` and an
  `X-Trace-Id` header), `fail_before_respond` (200 with an empty body, the trap of the notes),
  `last_node_error` (500 `{"message":"Error in workflow"}`), `ok_false` (`{"ok":false,"error":…}`) and
  `on_received` (`{"message":"Workflow was started"}`).
  A body with `"mode":"async"` is answered at once with `{"message":"Workflow was started"}`; after
  `callback_delay_s` the workflow POSTs a Standard-Webhooks-signed callback to the body's `callback_url`
  (`{"invocation_id","execution_id","ok":true,"result":…,"trace_id"}`; `ok:false` for `ok_false` and
  `last_node_error`; none at all for `fail_before_respond`, whose workflow dies before its callback node).
- `GET /api/v1/workflows` with `X-N8N-API-KEY` (401 `{"message":"unauthorized"}`), `active`, `limit`
  (≤250) and an opaque `cursor`; lists as `{"data":[…],"nextCursor":…}`.
- `GET /healthz`, `GET /healthz/readiness` (503 while `ready` is False).

Knobs: `webhook(path, …)`, `add_workflow(…)`, `fail_next(fault, times)` (webhook calls), `ready`,
`callback_secret`. Observations: `requests`, `runs` (per webhook path, how many executions started),
`callbacks` (every callback sent, with the answer it got).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.coze import Fault, LocalServer, Received, fault_response, record

RESPOND = "respond"
FAIL_BEFORE_RESPOND = "fail_before_respond"
LAST_NODE_ERROR = "last_node_error"
OK_FALSE = "ok_false"
ON_RECEIVED = "on_received"
WEBHOOK_NODE = "n8n-nodes-base.webhook"
DEFAULT_SECRET = "whsec_" + base64.b64encode(b"fake-n8n-callback-secret-32bytes").decode()
FAKE_STACK = (
    "ResponseError: The requested webhook is not registered.\n"
    "    at WebhookService.findWebhook (/usr/lib/node_modules/n8n/dist/webhooks/webhook.service.js:101:19)\n"
    "    at LiveWebhooks.executeWebhook (/usr/lib/node_modules/n8n/dist/webhooks/live-webhooks.js:73:29)"
)


def sign_standard_webhook(secret: str | bytes, msg_id: str, timestamp: int | str, body: bytes | str) -> str:
    """The Standard Webhooks v1 signature: `v1,<base64 HMAC-SHA256(key, f"{id}.{ts}.{body}")>`.

    Args:
        secret: `whsec_<base64>` (the key is the decoded bytes) or the raw key bytes.
        msg_id: The `webhook-id`.
        timestamp: The `webhook-timestamp` (unix seconds).
        body: The exact bytes sent.
    """
    key = base64.b64decode(secret.removeprefix("whsec_")) if isinstance(secret, str) else secret
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


@dataclass
class N8nWebhook:
    """A production webhook of an active (or not) workflow.

    Attributes:
        path: The webhook path (`/webhook/<path>`).
        mode: One of `respond`, `fail_before_respond`, `last_node_error`, `ok_false`, `on_received`.
        result: The workflow's result for the body's `input`; by default `{"echo": input}`.
        error: The `error` of an `ok_false` answer.
        active: An inactive workflow's webhook answers 404.
        method: The HTTP method it listens to.
        delay_s: Time the workflow takes before answering (for client timeouts).
        callback_delay_s: Time before the callback of an async call.
        fault: Every call answers with this.
    """

    path: str
    mode: str = RESPOND
    result: Callable[[Any], Any] = field(default=lambda data: {"echo": data})
    error: str = "Error in workflow"
    active: bool = True
    method: str = "POST"
    delay_s: float = 0.0
    callback_delay_s: float = 0.05
    fault: Fault | None = None


@dataclass
class SentCallback:
    """A callback the fake sent, and what the receiver answered (status 0: no answer)."""

    url: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response: bytes = b""


class FakeN8n(LocalServer):
    """The fake n8n; see the module docstring.

    Args:
        header_auth: `(header name, value)` every webhook demands; None for no auth.
        api_key: The public API key (`X-N8N-API-KEY`).
        callback_secret: The `whsec_…` secret that signs callbacks.
    """

    def __init__(
        self,
        header_auth: tuple[str, str] | None = ("X-Mesh-Token", "tenant-a-token"),
        *,
        api_key: str = "n8n_api_key",
        callback_secret: str = DEFAULT_SECRET,
    ) -> None:
        super().__init__(
            Starlette(
                routes=[
                    Route(
                        "/webhook/{path:path}",
                        self._webhook,
                        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                    ),
                    Route("/api/v1/workflows", self._list_workflows, methods=["GET"]),
                    Route("/healthz", self._healthz, methods=["GET"]),
                    Route("/healthz/readiness", self._readiness, methods=["GET"]),
                ]
            )
        )
        self.header_auth = header_auth
        self.api_key = api_key
        self.callback_secret = callback_secret
        self.ready = True
        self.webhooks: dict[str, N8nWebhook] = {}
        self.workflows: list[dict[str, Any]] = []
        self.requests: list[Received] = []
        self.runs: Counter[str] = Counter()
        self.callbacks: list[SentCallback] = []
        self._faults: deque[Fault] = deque()
        self._executions: Iterator[int] = itertools.count(1)
        self._messages: Iterator[int] = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._callback_sent = asyncio.Condition()
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=10, headers={"User-Agent": "axios/1.16.1"})
        await super().start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().stop()
        if self._http is not None:
            await self._http.aclose()

    # -- knobs --

    def webhook(self, path: str, **behaviour: Any) -> N8nWebhook:
        """Registers (or replaces) a production webhook."""
        self.webhooks[path] = N8nWebhook(path, **behaviour)
        return self.webhooks[path]

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """The next `times` webhook calls answer with `fault`."""
        self._faults.extend([fault] * times)

    def add_workflow(
        self,
        name: str,
        *,
        active: bool = True,
        webhook_paths: tuple[str, ...] = (),
        tags: tuple[str, ...] = (),
        updated_at: str = "2026-11-20T10:00:00.000Z",
    ) -> dict[str, Any]:
        """Adds a workflow to the public API's list, shaped as n8n 1.x returns it."""
        workflow_id = f"wf{len(self.workflows) + 1:04d}"
        nodes: list[dict[str, Any]] = [
            {
                "id": f"{workflow_id}-hook{i}",
                "name": f"Webhook{i or ''}",
                "type": WEBHOOK_NODE,
                "typeVersion": 2,
                "position": [0, 0],
                "parameters": {"httpMethod": "POST", "path": path, "responseMode": "responseNode"},
                "webhookId": f"{workflow_id}-{i}",
            }
            for i, path in enumerate(webhook_paths)
        ]
        nodes.append(
            {
                "id": f"{workflow_id}-respond",
                "name": "Respond to Webhook",
                "type": "n8n-nodes-base.respondToWebhook",
                "typeVersion": 1.1,
                "position": [200, 0],
                "parameters": {"respondWith": "json"},
            }
        )
        workflow = {
            "id": workflow_id,
            "name": name,
            "active": active,
            "createdAt": "2026-11-01T09:00:00.000Z",
            "updatedAt": updated_at,
            "nodes": nodes,
            "connections": {},
            "settings": {"executionOrder": "v1"},
            "staticData": None,
            "tags": [
                {"id": f"tag{i}", "name": tag, "createdAt": updated_at, "updatedAt": updated_at}
                for i, tag in enumerate(tags)
            ],
        }
        self.workflows.append(workflow)
        return workflow

    async def wait_callbacks(self, count: int, timeout_s: float = 5.0) -> list[SentCallback]:
        """Waits until `count` callbacks were sent (and answered, or failed)."""
        async with asyncio.timeout(timeout_s), self._callback_sent:
            await self._callback_sent.wait_for(lambda: len(self.callbacks) >= count)
        return self.callbacks

    async def send_callback(
        self,
        url: str,
        payload: Mapping[str, Any] | bytes,
        *,
        msg_id: str | None = None,
        timestamp: int | None = None,
        secret: str | bytes | None = None,
        signature: str | None = None,
        sent_body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SentCallback:
        """Sends a Standard-Webhooks-signed callback, possibly tampered with.

        Args:
            url: Where to POST it.
            payload: A JSON object, or the exact bytes to sign.
            msg_id: The `webhook-id` (a fresh `msg_N` by default).
            timestamp: The `webhook-timestamp` (now by default; pass an old one for staleness tests).
            secret: The signing secret (the fake's `callback_secret` by default).
            signature: A `webhook-signature` header to send instead of the computed one.
            sent_body: Bytes to send instead of the signed ones (a body tampered with in transit).
            headers: Extra headers, or replacements of the signature headers.
        """
        assert self._http is not None, "the fake is not started"
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        msg_id = msg_id or f"msg_{next(self._messages)}"
        timestamp = int(time.time()) if timestamp is None else timestamp
        sig = signature or sign_standard_webhook(secret or self.callback_secret, msg_id, timestamp, body)
        all_headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sig,
            **(headers or {}),
        }
        sent = SentCallback(url, all_headers, sent_body if sent_body is not None else body)
        try:
            response = await self._http.post(url, content=sent.body, headers=all_headers)
            sent.status, sent.response = response.status_code, response.content
        except httpx.HTTPError:
            sent.status = 0
        async with self._callback_sent:
            self.callbacks.append(sent)
            self._callback_sent.notify_all()
        return sent

    # -- endpoints --

    async def _webhook(self, request: Request) -> Response:
        received = await record(request, self.requests)
        path = request.path_params["path"]
        hook = self.webhooks.get(path)
        if hook is None or not hook.active or hook.method != request.method:
            return JSONResponse(
                {
                    "code": 404,
                    "message": f'The requested webhook "{request.method} {path}" is not registered.',
                    "hint": "The workflow must be active for a production URL to run successfully.",
                    "stacktrace": FAKE_STACK,
                },
                status_code=404,
            )
        if self.header_auth is not None:
            name, value = self.header_auth
            if not hmac.compare_digest(request.headers.get(name, ""), value):
                return Response(
                    "Authorization data is wrong!",
                    status_code=403,
                    headers={"WWW-Authenticate": 'Basic realm="Webhook"'},
                    media_type="text/plain",
                )
        fault = self._faults.popleft() if self._faults else hook.fault
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
            if not fault.passthrough:
                if fault.ran:
                    self.runs[path] += 1
                return fault_response(fault)
        body = received.body if isinstance(received.body, dict) else {}
        trace_id = request.headers.get("x-trace-id") or str(body.get("trace_id", ""))
        execution_id = str(next(self._executions))
        self.runs[path] += 1
        if body.get("mode") == "async":
            self._spawn(self._callback_later(hook, body, execution_id, trace_id))
            return JSONResponse({"message": "Workflow was started"})
        await asyncio.sleep(hook.delay_s)
        if hook.mode == FAIL_BEFORE_RESPOND:
            return Response(b"", status_code=200)
        if hook.mode == LAST_NODE_ERROR:
            return JSONResponse({"message": "Error in workflow"}, status_code=500)
        if hook.mode == OK_FALSE:
            return JSONResponse({"ok": False, "error": hook.error, "trace_id": trace_id})
        if hook.mode == ON_RECEIVED:
            return JSONResponse({"message": "Workflow was started"})
        return JSONResponse(
            {
                "ok": True,
                "result": hook.result(body.get("input")),
                "trace_id": trace_id,
                "execution_id": execution_id,
            },
            headers={"X-Trace-Id": trace_id},
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _callback_later(
        self, hook: N8nWebhook, body: dict[str, Any], execution_id: str, trace_id: str
    ) -> None:
        await asyncio.sleep(hook.callback_delay_s)
        url = str(body.get("callback_url", ""))
        if not url or hook.mode == FAIL_BEFORE_RESPOND:
            return
        payload: dict[str, Any] = {
            "invocation_id": body.get("invocation_id", ""),
            "execution_id": execution_id,
            "trace_id": trace_id,
        }
        if hook.mode in (OK_FALSE, LAST_NODE_ERROR):
            payload.update(ok=False, error=hook.error)
        else:
            payload.update(ok=True, result=hook.result(body.get("input")))
        await self.send_callback(url, payload)

    async def _list_workflows(self, request: Request) -> Response:
        await record(request, self.requests)
        if not self.api_key or request.headers.get("x-n8n-api-key") != self.api_key:
            return JSONResponse({"message": "unauthorized"}, status_code=401)
        query = request.query_params
        try:
            limit = int(query.get("limit", "100"))
            offset = (
                int(json.loads(base64.urlsafe_b64decode(query["cursor"]))["offset"])
                if "cursor" in query
                else 0
            )
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"message": "request/query/cursor is invalid"}, status_code=400)
        if not 1 <= limit <= 250:
            return JSONResponse({"message": "request/query/limit must be <= 250"}, status_code=400)
        items = self.workflows
        if "active" in query:
            wanted = query["active"] == "true"
            items = [w for w in items if w["active"] == wanted]
        page = items[offset : offset + limit]
        more = offset + limit < len(items)
        cursor = (
            base64.urlsafe_b64encode(json.dumps({"offset": offset + limit}).encode()).decode()
            if more
            else None
        )
        return JSONResponse({"data": page, "nextCursor": cursor})

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readiness(self, request: Request) -> Response:
        await record(request, self.requests)
        if not self.ready:
            return JSONResponse({"status": "error"}, status_code=503)
        return JSONResponse({"status": "ok"})


def iso_to_ms(value: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time (the way tests state expectations)."""
    return int(datetime.fromisoformat(value).astimezone(UTC).timestamp() * 1000)
