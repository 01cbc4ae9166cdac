"""n8n workflows, triggered through production webhooks and listed through the public REST API.

n8n's public API has no "execute workflow" endpoint, so a workflow is called at
`POST {base}/webhook/{path}` (live only while the workflow is active). The mesh sends one JSON body::

    {"invocation_id", "trace_id", "idempotency_key", "user_id", "callback_url", "input": <payload>}

with the instance's webhook auth headers plus `X-Trace-Id` and `Idempotency-Key`.

**Body contract.** In `responseNode` mode a workflow that fails before its Respond node answers HTTP 200
with an *empty body* (n8n 1.123.50; its docs say 500). A 200 therefore proves nothing, and the workflow
must answer `{"ok": true, "result": …, "execution_id": …}`; `{"ok": false, "error": …}` is its own failure
(`WORKFLOW_FAILED`) and anything else is `EMPTY_RESPONSE`. Both are PERMANENT.

**Async.** With `"mode": "async"` in the body the workflow answers at once (`{"message": "Workflow was
started"}` from an `onReceived` webhook, or `{"ok": true, "execution_id": …}`) and later POSTs its result
to `callback_url`, signed in the Standard Webhooks format; the connector service verifies it. `poll`
has nothing to ask and returns None.

Error bodies are never copied into messages: n8n's 404 carries a server stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from servers.connector.platforms.base import (
    AUTH,
    PERMANENT,
    Credentials,
    PlatformCall,
    PlatformFailure,
    PlatformResult,
    StreamChunk,
    WorkflowInfo,
    deadline_failure,
    retry_after_seconds,
    status_failure,
    transport_failure,
)

PLATFORM = "n8n"
API_KEY_HEADER = "X-N8N-API-KEY"
WEBHOOK_NODE_TYPE = "n8n-nodes-base.webhook"
PAGE_LIMIT = 250  # the public API's maximum page size
MAX_PAGES = 1000  # a guard against a server that keeps handing out cursors
_MAX_ERROR_CHARS = 200


class N8nClient:
    """The workflows of one n8n instance (or project).

    Args:
        base_url: The instance's base URL (`http://127.0.0.1:5678`); webhooks live at `/webhook/…`.
        credentials: `secret_headers` are the webhook auth headers (header auth); `token` is the public API
            key, needed only by `list_workflows` (and checked by `check` when set).
        timeout_s: The HTTP timeout of calls that carry none of their own (`list_workflows`, `check`);
            workflow calls use `PlatformCall.timeout_s`.
    """

    def __init__(self, base_url: str, credentials: Credentials, *, timeout_s: float = 30.0) -> None:
        self._base = base_url.rstrip("/")
        self._credentials = credentials
        self._timeout_s = timeout_s
        # n8n answers webhooks itself; a redirect would mean a proxy or a wrong base URL, and following it
        # could send the webhook auth headers to another origin.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)), follow_redirects=False
        )

    async def run(self, call: PlatformCall) -> PlatformResult:
        """Calls the workflow's webhook and waits for its answer.

        Raises:
            PlatformFailure: `EMPTY_RESPONSE` / `WORKFLOW_FAILED` when the body contract is broken,
                `PLATFORM_AUTH_FAILED` on 401/403, `WORKFLOW_NOT_FOUND` on 404 (unknown path or inactive
                workflow), `PLATFORM_THROTTLED` on 429, RETRYABLE on 5xx, timeouts and connection errors.
        """
        response = await self._trigger(call, asynchronous=False)
        body = _json_object(response)
        if body is None or body.get("ok") is not True:
            raise _contract_failure(body, response.status_code)
        output = body["result"] if "result" in body else {k: v for k, v in body.items() if k != "ok"}
        return PlatformResult(output=output, run_id=_execution_id(body))

    async def start(self, call: PlatformCall) -> str:
        """Starts the workflow with `"mode": "async"`; returns its execution id, or "" when n8n gives none.

        The result arrives later as a signed callback to `call.callback_url`.

        Raises:
            PlatformFailure: As for `run`; an empty 200 is `EMPTY_RESPONSE` here too.
        """
        response = await self._trigger(call, asynchronous=True)
        body = _json_object(response)
        # `{"message": "Workflow was started"}` (an onReceived webhook) has no `ok`; a Respond node
        # answering for an async call says `ok`.
        if body is None or ("ok" in body and body["ok"] is not True):
            raise _contract_failure(body, response.status_code)
        return _execution_id(body)

    async def poll(self, workflow_id: str, run_id: str) -> PlatformResult | None:
        """Always None: n8n results arrive by signed callback, there is nothing to ask."""
        return None

    async def stream(self, call: PlatformCall) -> AsyncIterator[StreamChunk | PlatformResult]:
        """n8n webhooks do not stream here: the whole output as one `item` chunk, then the result.

        Raises:
            PlatformFailure: As for `run`.
        """
        result = await self.run(call)
        yield StreamChunk(event="item", data=result.output)
        yield result

    async def list_workflows(self, active_only: bool) -> list[WorkflowInfo]:
        """Lists the workflows through `GET /api/v1/workflows`, following `nextCursor`.

        Args:
            active_only: Only active workflows (the only ones whose production webhooks answer).

        Raises:
            PlatformFailure: AUTH without an API key or when it is refused; RETRYABLE on 5xx and transport
                errors; `PLATFORM_BAD_RESPONSE` on an answer without the documented shape.
        """
        if not self._credentials.token:
            raise PlatformFailure("PLATFORM_AUTH_FAILED", AUTH, "no n8n API key is configured")
        infos: list[WorkflowInfo] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, str | int] = {"limit": PAGE_LIMIT}
            if active_only:
                params["active"] = "true"
            if cursor:
                params["cursor"] = cursor
            body = _json_object(await self._api_get("/api/v1/workflows", params))
            if body is None or not isinstance(body.get("data"), list):
                raise _bad_response("the n8n workflow list has no `data` array")
            infos.extend(_workflow_info(item) for item in body["data"] if isinstance(item, dict))
            next_cursor = body.get("nextCursor")
            if not next_cursor or next_cursor == cursor:
                return infos
            cursor = str(next_cursor)
        raise _bad_response(f"the n8n workflow list did not end after {MAX_PAGES} pages")

    async def check(self) -> None:
        """`GET /healthz/readiness`, then, with an API key, one workflow from the API (an auth check).

        The readiness probe cannot vouch for the webhook credential: only a real trigger could, and a
        check must not run a workflow.

        Raises:
            PlatformFailure: n8n is not ready or not reachable, or the API key is refused.
        """
        ready = await self._request("GET", "/healthz/readiness", timeout_s=self._timeout_s)
        if not ready.is_success:
            raise _status_failure(ready)
        if self._credentials.token:
            await self._api_get("/api/v1/workflows", {"limit": 1})

    async def aclose(self) -> None:
        """Closes the HTTP connections."""
        await self._http.aclose()

    # ---- HTTP ---------------------------------------------------------------------------------------------

    async def _trigger(self, call: PlatformCall, *, asynchronous: bool) -> httpx.Response:
        body: dict[str, Any] = {
            "invocation_id": call.invocation_id,
            "trace_id": call.trace_id,
            "idempotency_key": call.idempotency_key,
            "user_id": call.platform_user_id,
            "callback_url": call.callback_url,
            "input": call.payload,
        }
        if asynchronous:
            body["mode"] = "async"
        headers = {**self._credentials.secret_headers}
        if call.trace_id:
            headers["X-Trace-Id"] = call.trace_id
        if call.traceparent:
            headers["traceparent"] = call.traceparent
        if call.idempotency_key:
            headers["Idempotency-Key"] = call.idempotency_key
        response = await self._request(
            "POST",
            f"/webhook/{quote(call.workflow_id.strip('/'), safe='/:')}",
            json_body=body,
            headers=headers,
            timeout_s=call.timeout_s if call.timeout_s > 0 else self._timeout_s,
        )
        if response.status_code == 404:
            raise PlatformFailure(
                "WORKFLOW_NOT_FOUND",
                PERMANENT,
                f"n8n has no active webhook at POST /webhook/{call.workflow_id} (unknown path or inactive "
                "workflow)",
                platform_code="404",
                http_status=404,
            )
        if not response.is_success:
            raise _status_failure(response)
        return response

    async def _api_get(self, path: str, params: Mapping[str, str | int]) -> httpx.Response:
        response = await self._request(
            "GET",
            path,
            params=params,
            headers={API_KEY_HEADER: self._credentials.token},
            timeout_s=self._timeout_s,
        )
        if not response.is_success:
            raise _status_failure(response)
        return response

    async def _request(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request under an overall deadline (httpx's own timeouts bound each read, not the total)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._http.request(
                    method,
                    f"{self._base}{path}",
                    json=json_body,
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
                )
        except TimeoutError as e:
            raise deadline_failure(PLATFORM, timeout_s) from e
        except httpx.TransportError as e:
            raise transport_failure(PLATFORM, e) from e
        except httpx.HTTPError as e:
            raise _bad_response(f"n8n could not be called ({type(e).__name__})") from e


# ---- conversions ----------------------------------------------------------------------------------------


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:  # empty or not JSON (also bad UTF-8)
        return None
    return body if isinstance(body, dict) else None


def _execution_id(body: Mapping[str, Any]) -> str:
    value = body.get("execution_id", body.get("executionId"))
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""


def _contract_failure(body: Mapping[str, Any] | None, status: int) -> PlatformFailure:
    if body is not None and body.get("ok") is False:
        error = body.get("error")
        if isinstance(error, Mapping):  # n8n error objects: keep their message only
            error = error.get("message")
        detail = str(error)[:_MAX_ERROR_CHARS] if error else "no error given"
        return PlatformFailure(
            "WORKFLOW_FAILED",
            PERMANENT,
            f"the n8n workflow reported a failure: {detail}",
            platform_code=str(status),
            http_status=status,
        )
    return PlatformFailure(
        "EMPTY_RESPONSE",
        PERMANENT,
        f'n8n answered HTTP {status} without the {{"ok": true, …}} body: the workflow probably failed before '
        "its Respond to Webhook node",
        platform_code=str(status),
        http_status=status,
    )


def _status_failure(response: httpx.Response) -> PlatformFailure:
    return status_failure(
        PLATFORM, response.status_code, retry_after_s=retry_after_seconds(response.headers.get("retry-after"))
    )


def _bad_response(message: str) -> PlatformFailure:
    return PlatformFailure("PLATFORM_BAD_RESPONSE", PERMANENT, message, counts_for_breaker=True)


def _workflow_info(item: Mapping[str, Any]) -> WorkflowInfo:
    nodes = item.get("nodes") if isinstance(item.get("nodes"), list) else []
    paths = tuple(
        str(node["parameters"]["path"])
        for node in nodes or ()
        if isinstance(node, dict)
        and node.get("type") == WEBHOOK_NODE_TYPE
        and isinstance(node.get("parameters"), dict)
        and node["parameters"].get("path")
    )
    tags = tuple(
        str(tag.get("name")) if isinstance(tag, dict) else str(tag)
        for tag in item.get("tags") or ()
        if not isinstance(tag, dict) or tag.get("name")
    )
    return WorkflowInfo(
        workflow_id=str(item.get("id", "")),
        name=str(item.get("name", "")),
        active=item.get("active") is True,
        webhook_paths=paths,
        tags=tags,
        update_time_ms=_iso_ms(item.get("updatedAt")),
    )


def _iso_ms(value: Any) -> int:
    if not isinstance(value, str) or not value:
        return 0
    with contextlib.suppress(ValueError):
        when = datetime.datetime.fromisoformat(value)
        if when.tzinfo is None:  # n8n writes UTC with a `Z`; a bare time is taken as UTC too
            when = when.replace(tzinfo=datetime.UTC)
        return int(when.timestamp() * 1000)
    return 0


__all__ = ["N8nClient"]
