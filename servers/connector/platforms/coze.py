"""Coze workflows through the official SDK (`cozepy` 0.20.0, async client).

Calls:

- `run`: `POST /v1/workflow/run` (sync). Coze returns `data` as a JSON *string*; it is parsed when it is
  JSON and kept as text otherwise.
- `start` / `poll`: the same endpoint with `is_async=true` (paid plans; else code 6003), then
  `GET /v1/workflows/{id}/run_histories/{execute_id}`. Coze has no completion callback for workflows, so
  polling is the only way to learn the result.
- `stream`: `POST /v1/workflow/stream_run` (SSE). `Message` and `Interrupt` events are relayed, heartbeats
  (`PING`) are not, an `Error` event fails the call, and the end of the stream yields one `PlatformResult`.
- `check`: `GET /v1/workspaces` (one page of one), the cheapest authenticated call.

The SDK needs help in three places, all handled here:

- It builds bare `httpx.Request`s, so client default headers never reach the wire. The trace id and the
  idempotency key travel through a context variable that an httpx `request` event hook reads; the client
  is shared by concurrent calls and each asyncio task sees only its own call. Coze documents no
  idempotency key: the header is informational and deduplication lives in the mesh.
- Those bare requests carry no timeout of their own, so the client's (or the SDK's 600 s) default
  applies; the same hook gives each request the call's timeout, and every call also runs under its own
  deadline.
- Errors: Coze reports them in the body (`{"code": N, "msg": ...}`) whatever the HTTP status, and a body
  that is not JSON becomes `CozeAPIError(http_status, text)`. `classify_coze_code` and `coze_failure`
  turn both, and transport errors, into `PlatformFailure`; a `response` event hook keeps the last response
  so that `Retry-After` and `X-Tt-Logid` are not lost.

Credential freshness helpers (`mint_jwt_token`, `refresh_oauth_token`) talk to the OAuth token endpoint
directly rather than through the SDK's OAuth apps, for reasons given on `mint_jwt_token`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import dataclasses
import importlib
import json
import secrets
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from servers.connector.platforms.base import (
    AUTH,
    PERMANENT,
    RETRYABLE,
    THROTTLED,
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

# cozepy imports `authlib.jose`, which warns on import; only the SDK's OAuth apps use it, and this module
# does not, so the warning would be noise in every process's log. Loading `authlib.deprecate` installs an
# "always" filter for its warnings in front of any other, so it is loaded first and then overruled; the
# filters (authlib's included) are restored when the block ends.
with warnings.catch_warnings():
    importlib.import_module("authlib.deprecate")
    warnings.simplefilter("ignore", DeprecationWarning)
    from cozepy import AsyncCoze, AsyncHTTPClient, AsyncTokenAuth, CozeAPIError, CozeError
    from cozepy.exception import CozeInvalidEventError, CozePKCEAuthError
    from cozepy.workflows.runs import WorkflowEvent, WorkflowEventType
    from cozepy.workflows.runs.run_histories import WorkflowExecuteStatus, WorkflowRunHistory

PLATFORM = "Coze"
TRACE_HEADER = "X-Trace-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
TOKEN_PATH = "/api/permission/oauth2/token"  # noqa: S105 - an endpoint path, not a secret
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_TOKEN_TTL_S = 86399  # the longest `duration_seconds` Coze grants a JWT-app token
JWT_LIFETIME_S = 600  # the signed assertion is single-use; it only has to outlive the exchange
_MAX_MESSAGE_CHARS = 300
# `expires_in` is documented as an absolute unix time; a value below this (2001-09-09) can only be a
# lifetime in seconds, which is how every other OAuth server uses the field.
_ABSOLUTE_TIME_FLOOR = 10**9
# Coze's own codes are four digits or more; a smaller `CozeAPIError.code` is the HTTP status of a
# response whose body was not JSON.
_FIRST_COZE_CODE = 1000

# code → (mesh code, class, counts for the breaker; None = by class). Coze error codes, §1.5 of the notes.
_COZE_CODES: dict[int, tuple[str, int, bool | None]] = {
    4000: ("PLATFORM_BAD_REQUEST", PERMANENT, None),
    4100: ("PLATFORM_AUTH_FAILED", AUTH, None),
    700012006: ("PLATFORM_AUTH_FAILED", AUTH, None),  # "access token invalid", the docs' 4100 example
    4101: ("PLATFORM_PERMISSION_DENIED", PERMANENT, None),
    4200: ("WORKFLOW_NOT_FOUND", PERMANENT, None),
    6003: ("PLATFORM_PLAN_REQUIRED", PERMANENT, None),
    4008: ("PLATFORM_THROTTLED", THROTTLED, None),
    4020: ("PLATFORM_THROTTLED", THROTTLED, None),
    4009: ("PLATFORM_BUSY", RETRYABLE, None),
    4013: ("PLATFORM_MODEL_ERROR", RETRYABLE, None),
    5000: ("PLATFORM_UNAVAILABLE", RETRYABLE, None),
    # Out of balance: retrying cannot help, but the platform account is unusable for every caller, so the
    # breaker counts it and degradation can take over.
    4011: ("PLATFORM_OUT_OF_BALANCE", PERMANENT, True),
    4019: ("PLATFORM_OUT_OF_BALANCE", PERMANENT, True),
    4022: ("PLATFORM_OUT_OF_BALANCE", PERMANENT, True),
}
_FIRST_SERVER_CODE = 5000


def classify_coze_code(
    code: int,
    message: str,
    *,
    log_id: str = "",
    http_status: int = 0,
    retry_after_s: float | None = None,
) -> PlatformFailure:
    """The failure a Coze error code means (a body `code`, a stream `Error` or a run's `error_code`).

    Unknown codes from 5000 up are taken as server-side and retryable, anything else as permanent.

    Args:
        code: The Coze code, non-zero.
        message: Coze's message for it (`msg` / `error_message`); it holds no secret of ours.
        log_id: Coze's log id (`X-Tt-Logid` or the body's `logid`), for support requests.
        http_status: The HTTP status of the response, when there was one.
        retry_after_s: The response's `Retry-After`, kept for throttling codes.
    """
    mesh_code, error_class, counts = _COZE_CODES.get(
        code,
        ("PLATFORM_UNAVAILABLE", RETRYABLE, None)
        if code >= _FIRST_SERVER_CODE
        else ("PLATFORM_ERROR", PERMANENT, None),
    )
    return PlatformFailure(
        mesh_code,
        error_class,
        _clip(f"Coze error {code}: {message}" if message else f"Coze error {code}"),
        platform_code=str(code),
        log_id=log_id,
        http_status=http_status,
        retry_after_s=retry_after_s if error_class == THROTTLED else None,
        counts_for_breaker=counts,
    )


def coze_failure(error: Exception, response: httpx.Response | None = None) -> PlatformFailure:
    """The `PlatformFailure` for anything a cozepy call raised.

    Args:
        error: What the SDK raised: `CozeAPIError` (a body code, or the HTTP status of a body that is
            not JSON), a stream or auth error of the SDK, an httpx error, or a parse error of a response
            that does not have the documented shape.
        response: The last HTTP response of the call, when one arrived; it supplies `Retry-After` and
            the log id.
    """
    if isinstance(error, PlatformFailure):
        return error
    log_id = _log_id(response)
    status = response.status_code if response is not None else 0
    retry_after = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
    if isinstance(error, CozeAPIError):
        log_id = error.logid or log_id
        if error.code is None:  # an OAuth-style `error_message` without a code
            return PlatformFailure(
                "PLATFORM_ERROR", PERMANENT, _clip(f"Coze refused the call: {error.msg}"), log_id=log_id
            )
        if error.code < _FIRST_COZE_CODE:
            return _non_json_failure(error.code, retry_after, log_id)
        return classify_coze_code(
            error.code, error.msg, log_id=log_id, http_status=status, retry_after_s=retry_after
        )
    if isinstance(error, CozePKCEAuthError):
        return PlatformFailure(
            "PLATFORM_AUTH_FAILED", AUTH, f"Coze OAuth: {error.error.value}", log_id=error.logid or log_id
        )
    if isinstance(error, httpx.TransportError):
        return transport_failure(PLATFORM, error)
    if isinstance(error, CozeInvalidEventError):
        return _bad_response("Coze sent a malformed stream event", log_id, status)
    # Anything else raised while the SDK parsed a response: a body without the documented shape.
    return _bad_response(f"Coze answered in an unexpected shape ({type(error).__name__})", log_id, status)


class CozeClient:
    """Coze workflows of one account and one bearer token (PAT, OAuth or JWT-app token).

    Args:
        base_url: The API base, such as `https://api.coze.com`, `https://api.coze.cn` or a local fake.
        credentials: `token` is the bearer token; `secret_headers` are not used by Coze.
        timeout_s: The HTTP timeout of calls that carry none of their own (`poll`, `check`); workflow
            calls use `PlatformCall.timeout_s`.

    Raises:
        PlatformFailure: AUTH when no token is configured.
    """

    def __init__(self, base_url: str, credentials: Credentials, *, timeout_s: float = 30.0) -> None:
        if not credentials.token:
            raise PlatformFailure("PLATFORM_AUTH_FAILED", AUTH, "no Coze token is configured")
        self._timeout_s = timeout_s
        self._http = AsyncHTTPClient(  # type: ignore[no-untyped-call]
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            event_hooks={"request": [_stamp_request], "response": [_keep_response]},
        )
        self._coze = AsyncCoze(
            auth=AsyncTokenAuth(credentials.token), base_url=base_url.rstrip("/"), http_client=self._http
        )

    async def run(self, call: PlatformCall) -> PlatformResult:
        """Runs a workflow synchronously (Coze drops the connection after 90 s without an answer).

        Raises:
            PlatformFailure: The call failed; see `classify_coze_code`.
        """
        scope = _Scope.of(call, self._call_timeout(call))
        async with _calling(scope):
            result = await self._coze.workflows.runs.create(
                workflow_id=call.workflow_id, parameters=call.payload, ext=_ext(call)
            )
        return PlatformResult(
            output=_json_or_text(result.data),
            run_id=result.execute_id or "",
            debug_url=result.debug_url or "",
            log_id=_log_id(scope.response),
        )

    async def start(self, call: PlatformCall) -> str:
        """Starts an asynchronous run and returns its `execute_id` (Coze allows this on paid plans only).

        Raises:
            PlatformFailure: The call failed (code 6003 on a free plan), or no `execute_id` came back.
        """
        scope = _Scope.of(call, self._call_timeout(call))
        async with _calling(scope):
            result = await self._coze.workflows.runs.create(
                workflow_id=call.workflow_id, parameters=call.payload, ext=_ext(call), is_async=True
            )
        if not result.execute_id:
            raise PlatformFailure(
                "EMPTY_RESPONSE",
                PERMANENT,
                "Coze accepted the asynchronous run without an execute_id",
                log_id=_log_id(scope.response),
                counts_for_breaker=True,
            )
        return result.execute_id

    async def poll(self, workflow_id: str, run_id: str) -> PlatformResult | None:
        """Reads the run history of a started run: None while `Running`.

        Raises:
            PlatformFailure: The run failed (classified by its `error_code`; `WORKFLOW_FAILED` when it has
                none), or the history could not be read.
        """
        scope = _Scope(timeout_s=self._timeout_s)
        async with _calling(scope):
            history = await self._coze.workflows.runs.run_histories.retrieve(
                workflow_id=workflow_id, execute_id=run_id
            )
        log_id = history.logid or _log_id(scope.response)
        if history.execute_status == WorkflowExecuteStatus.RUNNING:
            return None
        if history.execute_status == WorkflowExecuteStatus.SUCCESS:
            return PlatformResult(
                output=_json_or_text(history.output),
                run_id=history.execute_id,
                debug_url=history.debug_url,
                log_id=log_id,
            )
        raise _run_failure(history, log_id)

    async def stream(self, call: PlatformCall) -> AsyncIterator[StreamChunk | PlatformResult]:
        """Runs a workflow streaming: a chunk per `Message` and `Interrupt`, then one `PlatformResult`.

        The result's output is the content of the last `Message` with `node_is_finish` (the End node's
        answer), parsed when it is JSON; when no node finished, the concatenated text of all messages;
        None when there were none. cozepy consumes `Done` itself and stops at the end of the body, so a
        stream the server closes cleanly without `Done` looks finished; a cut-off body raises an httpx
        error (RETRYABLE).

        Raises:
            PlatformFailure: An `Error` event (classified by its `error_code`), a rejected call, a
                malformed event, or the call's deadline passed.
        """
        timeout_s = self._call_timeout(call)
        scope = _Scope.of(call, timeout_s)
        deadline = asyncio.get_running_loop().time() + timeout_s
        events = self._coze.workflows.runs.stream(
            workflow_id=call.workflow_id, parameters=call.payload, ext=_ext(call)
        )
        final: str | None = None
        texts: list[str] = []
        try:
            while True:
                # The context variable is set only while the SDK runs (never across a `yield`), so the
                # consumer's context is untouched between chunks and the reset always matches the set.
                try:
                    async with _calling(scope, deadline=deadline):
                        event = await anext(events)
                except StopAsyncIteration:
                    break
                chunk = _chunk(event, scope)
                if chunk is None:
                    continue
                if chunk.event == WorkflowEventType.MESSAGE.value and chunk.text is not None:
                    texts.append(chunk.text)
                    if chunk.node_finished:
                        final = chunk.text
                yield chunk
        finally:
            await cast("AsyncGenerator[WorkflowEvent, None]", events).aclose()
            # cozepy never closes a stream it stopped reading; hand the connection back now.
            if scope.response is not None:
                await scope.response.aclose()
        output = _json_or_text(final) if final is not None else ("".join(texts) if texts else None)
        yield PlatformResult(output=output, log_id=_log_id(scope.response))

    async def list_workflows(self, active_only: bool) -> list[WorkflowInfo]:
        """Not offered: the mesh names Coze workflows by id in the connector configuration.

        Raises:
            PlatformFailure: Always, `UNSUPPORTED` (PERMANENT).
        """
        raise PlatformFailure("UNSUPPORTED", PERMANENT, "listing workflows is not supported for Coze")

    async def check(self) -> None:
        """Lists one workspace: proves the base URL answers and the token is accepted.

        Raises:
            PlatformFailure: The platform or the token failed.
        """
        async with _calling(_Scope(timeout_s=self._timeout_s)):
            await self._coze.workspaces.list(page_size=1)

    async def aclose(self) -> None:
        """Closes the HTTP connections."""
        await self._http.aclose()

    def _call_timeout(self, call: PlatformCall) -> float:
        return call.timeout_s if call.timeout_s > 0 else self._timeout_s


# ---- per-call context for the shared HTTP client ------------------------------------------------------


@dataclasses.dataclass
class _Scope:
    """What the event hooks need to know about the call whose request is being sent."""

    timeout_s: float
    trace_id: str = ""
    idempotency_key: str = ""
    traceparent: str = ""
    response: httpx.Response | None = None  # the last response received, set by `_keep_response`

    @classmethod
    def of(cls, call: PlatformCall, timeout_s: float) -> _Scope:
        return cls(
            timeout_s=timeout_s,
            trace_id=call.trace_id,
            idempotency_key=call.idempotency_key,
            traceparent=call.traceparent,
        )


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("powerx_coze_call", default=None)
_SDK_ERRORS = (CozeError, httpx.HTTPError, ValueError, KeyError, IndexError, AttributeError, TypeError)


async def _stamp_request(request: httpx.Request) -> None:
    """An httpx `request` hook: the call's trace id, idempotency key and timeout on every request."""
    scope = _SCOPE.get()
    if scope is None:
        return
    if scope.trace_id:
        request.headers[TRACE_HEADER] = scope.trace_id
    if scope.idempotency_key:
        request.headers[IDEMPOTENCY_HEADER] = scope.idempotency_key
    if scope.traceparent:
        request.headers["traceparent"] = scope.traceparent
    timeout = httpx.Timeout(scope.timeout_s, connect=min(scope.timeout_s, 10.0))
    request.extensions = {**request.extensions, "timeout": timeout.as_dict()}


async def _keep_response(response: httpx.Response) -> None:
    """An httpx `response` hook: remembers the response (headers for errors, the stream for closing)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.response = response


@contextlib.asynccontextmanager
async def _calling(scope: _Scope, *, deadline: float | None = None) -> AsyncIterator[_Scope]:
    """Runs SDK calls for one platform call: hooks see `scope`, errors become `PlatformFailure`.

    Args:
        scope: The call's context.
        deadline: An absolute loop time to stop at; by default `scope.timeout_s` from now.
    """
    token = _SCOPE.set(scope)
    try:
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + scope.timeout_s
        async with asyncio.timeout_at(deadline):
            yield scope
    except TimeoutError as e:
        raise deadline_failure(PLATFORM, scope.timeout_s) from e
    except _SDK_ERRORS as e:
        raise coze_failure(e, scope.response) from e
    finally:
        _SCOPE.reset(token)


# ---- conversions ----------------------------------------------------------------------------------------


def _ext(call: PlatformCall) -> dict[str, Any] | None:
    return {"user_id": call.platform_user_id} if call.platform_user_id else None


def _json_or_text(text: str | None) -> Any:
    """Coze output strings: JSON values parsed, other text kept as it is, nothing as None."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_container(text: str) -> Any:
    """Structured data of a streamed message: JSON objects and arrays only.

    A delta such as `42` or `true` is text that happens to parse, and stays text.
    """
    if text[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _chunk(event: WorkflowEvent, scope: _Scope) -> StreamChunk | None:
    """The chunk to relay for a stream event; None for heartbeats and unknown events.

    Raises:
        PlatformFailure: For an `Error` event.
    """
    if event.event == WorkflowEventType.MESSAGE and event.message is not None:
        message = event.message
        return StreamChunk(
            event=WorkflowEventType.MESSAGE.value,
            data=_json_container(message.content),
            text=message.content,
            node_title=message.node_title,
            node_finished=message.node_is_finish,
        )
    if event.event == WorkflowEventType.INTERRUPT and event.interrupt is not None:
        return StreamChunk(
            event=WorkflowEventType.INTERRUPT.value,
            data=event.interrupt.interrupt_data.model_dump(),
            node_title=event.interrupt.node_title,
        )
    if event.event == WorkflowEventType.ERROR and event.error is not None:
        raise classify_coze_code(
            event.error.error_code,
            event.error.error_message,
            log_id=_log_id(scope.response),
            http_status=scope.response.status_code if scope.response is not None else 0,
        )
    return None  # PING and events this SDK version does not know


def _run_failure(history: WorkflowRunHistory, log_id: str) -> PlatformFailure:
    if history.error_code:
        return classify_coze_code(history.error_code, history.error_message or "", log_id=log_id)
    return PlatformFailure(
        "WORKFLOW_FAILED",
        PERMANENT,
        _clip(f"the Coze run failed: {history.error_message}" if history.error_message else "the run failed"),
        log_id=log_id,
    )


def _non_json_failure(status: int, retry_after_s: float | None, log_id: str) -> PlatformFailure:
    """A response whose body is not JSON (a gateway's error page, say): the HTTP status is all there is."""
    if 200 <= status < 400:
        return _bad_response(f"Coze answered HTTP {status} with a body that is not JSON", log_id, status)
    return status_failure(PLATFORM, status, retry_after_s=retry_after_s, log_id=log_id)


def _bad_response(message: str, log_id: str, status: int) -> PlatformFailure:
    # Not the caller's fault and not worth repeating blindly (a sync run may have run), but it is the
    # platform misbehaving, so the breaker counts it.
    return PlatformFailure(
        "PLATFORM_BAD_RESPONSE",
        PERMANENT,
        message,
        log_id=log_id,
        http_status=status,
        platform_code=str(status) if status else "",
        counts_for_breaker=True,
    )


def _log_id(response: httpx.Response | None) -> str:
    return response.headers.get("x-tt-logid", "") if response is not None else ""


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[: _MAX_MESSAGE_CHARS - 1] + "…"


# ---- credential freshness ------------------------------------------------------------------------------


async def mint_jwt_token(
    base_url: str,
    app_id: str,
    public_key_id: str,
    private_key_pem: str | bytes,
    ttl_s: int,
    *,
    timeout_s: float = 10.0,
    session_name: str | None = None,
) -> tuple[str, int]:
    """Mints an access token for a Coze OAuth JWT app (server to server; there is no refresh token).

    A fresh RS256 JWT (`kid` = the public key id, `iss` = the app id, `aud` = the API host, a single-use
    random `jti`) is exchanged at `POST {base_url}/api/permission/oauth2/token`. The request matches the
    one cozepy's `AsyncJWTOAuthApp` sends, but is made here because the SDK's app opens its own HTTP
    client that is never closed and has a 600 s timeout, drops the endpoint's `error_code`, signs with the
    deprecated `authlib.jose`, and fixes the assertion's lifetime at one hour.

    Args:
        base_url: The API base; its host is the JWT audience (`api.coze.cn` for the China site).
        app_id: The OAuth app's client id.
        public_key_id: The id (fingerprint) of the public key registered with the app.
        private_key_pem: The matching RSA private key, PEM, unencrypted.
        ttl_s: The token lifetime to ask for, 1..86399 s (longer values are capped).
        timeout_s: HTTP timeout of the exchange.
        session_name: Optional session isolation (`session_name` claim).

    Returns:
        `(access_token, expire_unix_s)`; Coze's `expires_in` is already an absolute unix time.

    Raises:
        ValueError: `ttl_s` is not positive.
        PlatformFailure: AUTH when the key cannot be used or Coze refuses the assertion; RETRYABLE or
            THROTTLED when the endpoint fails or asks to slow down.
    """
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    base = base_url.rstrip("/")
    assertion = _sign_jwt(
        app_id, public_key_id, private_key_pem, audience=urlsplit(base).netloc, session_name=session_name
    )
    body = {"duration_seconds": min(ttl_s, MAX_TOKEN_TTL_S), "grant_type": JWT_GRANT, "scope": None}
    data = await _token_call(f"{base}{TOKEN_PATH}", body, bearer=assertion, timeout_s=timeout_s)
    return _token_text(data, "access_token"), _expiry(data)


async def refresh_oauth_token(
    token_url: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    *,
    timeout_s: float = 10.0,
) -> tuple[str, str, int]:
    """Refreshes a Coze OAuth (auth code, PKCE or device) access token.

    Coze rotates refresh tokens: the one passed in is dead once this returns, so the caller must store
    the new one before anything else (and must not retry with the old one after a lost answer).

    Args:
        token_url: The token endpoint, `{base}/api/permission/oauth2/token`.
        client_id: The OAuth app's client id.
        client_secret: The app's secret for web apps (sent as a bearer token, as cozepy does); empty for
            PKCE and device apps.
        refresh_token: The current refresh token.
        timeout_s: HTTP timeout of the call.

    Returns:
        `(access_token, new_refresh_token, expire_unix_s)`.

    Raises:
        PlatformFailure: AUTH when Coze refuses the refresh token or the client; RETRYABLE or THROTTLED
            when the endpoint fails or asks to slow down.
    """
    body = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": refresh_token}
    data = await _token_call(token_url, body, bearer=client_secret, timeout_s=timeout_s)
    return _token_text(data, "access_token"), _token_text(data, "refresh_token"), _expiry(data)


def _sign_jwt(
    app_id: str,
    public_key_id: str,
    private_key_pem: str | bytes,
    *,
    audience: str,
    session_name: str | None,
) -> str:
    pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # The parser's own error could quote key material, so it is not chained.
        raise PlatformFailure(
            "PLATFORM_AUTH_FAILED", AUTH, "the Coze JWT app's private key is not an unencrypted PEM key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PlatformFailure("PLATFORM_AUTH_FAILED", AUTH, "the Coze JWT app's private key is not RSA")
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": public_key_id}
    claims: dict[str, Any] = {
        "iss": app_id,
        "aud": audience,
        "iat": now,
        "exp": now + JWT_LIFETIME_S,
        "jti": secrets.token_hex(16),  # Coze accepts each assertion once
    }
    if session_name:
        claims["session_name"] = session_name
    signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64url(signature)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(value: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


async def _token_call(url: str, body: dict[str, Any], *, bearer: str, timeout_s: float) -> dict[str, Any]:
    """POSTs to the OAuth token endpoint; the parsed answer, or a failure that never quotes a secret."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        try:
            response = await http.post(url, json=body, headers=headers)
        except httpx.TransportError as e:
            raise transport_failure("Coze OAuth", e) from e
    log_id = _log_id(response)
    status = response.status_code
    try:
        data = response.json()
    except ValueError:
        data = None
    if status == 429 or status >= 500:
        raise status_failure(
            "Coze OAuth",
            status,
            retry_after_s=retry_after_seconds(response.headers.get("retry-after")),
            log_id=log_id,
        )
    if isinstance(data, dict):
        if data.get("error_code") or data.get("error_message"):
            error_code = str(data.get("error_code") or "")
            what = ": ".join(str(part) for part in (error_code, data.get("error_message")) if part)
            raise PlatformFailure(
                "PLATFORM_AUTH_FAILED",
                AUTH,
                _clip(f"Coze refused the token request: {what}"),
                platform_code=error_code,
                log_id=log_id,
                http_status=status,
            )
        code = data.get("code")
        if isinstance(code, int) and code != 0:
            raise classify_coze_code(code, str(data.get("msg") or ""), log_id=log_id, http_status=status)
        if response.is_success and isinstance(data.get("access_token"), str):
            return data
    if not response.is_success:
        raise status_failure("Coze OAuth", status, log_id=log_id)
    raise _bad_response("the Coze token endpoint answered without an access token", log_id, status)


def _token_text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise _bad_response(f"the Coze token endpoint answered without {name}", "", 200)
    return value


def _expiry(data: Mapping[str, Any]) -> int:
    value = data.get("expires_in")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _bad_response("the Coze token endpoint answered without expires_in", "", 200)
    return value if value >= _ABSOLUTE_TIME_FLOOR else int(time.time()) + value


__all__ = [
    "CozeClient",
    "classify_coze_code",
    "coze_failure",
    "mint_jwt_token",
    "refresh_oauth_token",
]
