"""Platform clients against local fakes that speak the platforms' wire formats (no mesh).

Coze: the `cozepy`-based client for sync runs, async runs with polling, streams, the error table, trace
and idempotency headers, JWT-app token minting and OAuth refresh rotation. n8n: the webhook body
contract, auth / not-found / server errors, signed async callbacks (checked with `standardwebhooks`, an
independent verifier), the workflow list and the health check.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.connector.platforms import make_client
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
    retry_after_seconds,
)
from servers.connector.platforms.coze import (
    CozeAPIError,  # imported from here: cozepy's own import warns unless filtered
    CozeClient,
    classify_coze_code,
    coze_failure,
    mint_jwt_token,
    refresh_oauth_token,
)
from servers.connector.platforms.n8n import N8nClient
from tests.fakes.coze import FakeCoze, Fault, LocalServer, coze_error, http_error, slow
from tests.fakes.n8n import (
    FAIL_BEFORE_RESPOND,
    LAST_NODE_ERROR,
    OK_FALSE,
    ON_RECEIVED,
    FakeN8n,
    iso_to_ms,
    sign_standard_webhook,
)

PAT = "pat_good_secret_value"
MESH_HEADER = ("X-Mesh-Token", "tenant-a-token")


def kind(failure: PlatformFailure) -> tuple[str, int]:
    """What a caller branches on: the mesh code and the error class."""
    return failure.code, failure.error_class


def call(workflow_id: str = "7366000000000000001", **kw: Any) -> PlatformCall:
    values: dict[str, Any] = {
        "invocation_id": "inv_1",
        "workflow_id": workflow_id,
        "payload": {"q": "hello", "n": 21},
        "platform_user_id": "user-42",
        "trace_id": "trace-abc-123",
        "idempotency_key": "idem-42",
        "timeout_s": 5.0,
    }
    values.update(kw)
    return PlatformCall(**values)


async def collect(stream: AsyncIterator[StreamChunk | PlatformResult]) -> list[StreamChunk | PlatformResult]:
    return [item async for item in stream]


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- Coze -------------------------------------------------------------------------------------------------


@pytest.fixture
async def coze() -> AsyncIterator[FakeCoze]:
    async with FakeCoze(tokens={PAT}) as fake:
        yield fake


@pytest.fixture
async def client(coze: FakeCoze) -> AsyncIterator[CozeClient]:
    c = CozeClient(coze.base_url, Credentials(token=PAT), timeout_s=5)
    try:
        yield c
    finally:
        await c.aclose()


async def test_coze_sync_run_parses_data_and_carries_user_trace_and_idempotency(
    coze: FakeCoze, client: CozeClient
) -> None:
    result = await client.run(call())

    assert result.output == {"output": {"q": "hello", "n": 21}}
    assert result.debug_url.startswith("https://www.coze.cn/work_flow")
    assert result.log_id.startswith("fake-logid-")
    assert coze.runs["7366000000000000001"] == 1
    [seen] = coze.requests_to("/v1/workflow/run")
    assert seen.headers["authorization"] == f"Bearer {PAT}"
    assert seen.headers["x-trace-id"] == "trace-abc-123"
    assert seen.headers["idempotency-key"] == "idem-42"
    assert seen.body["ext"] == {"user_id": "user-42"}
    assert seen.body["parameters"] == {"q": "hello", "n": 21}
    assert seen.body["is_async"] is False


async def test_coze_sync_run_keeps_text_data_as_text(coze: FakeCoze, client: CozeClient) -> None:
    coze.workflow("wf_text", data_text="plain words, not JSON")
    assert (await client.run(call("wf_text"))).output == "plain words, not JSON"


async def test_coze_headers_belong_to_their_own_call_when_calls_run_concurrently(
    coze: FakeCoze, client: CozeClient
) -> None:
    calls = [call(payload={"i": i}, trace_id=f"trace-{i}", idempotency_key=f"idem-{i}") for i in range(20)]
    results = await asyncio.gather(*(client.run(c) for c in calls))

    assert [r.output["output"]["i"] for r in results] == list(range(20))
    for seen in coze.requests_to("/v1/workflow/run"):
        i = seen.body["parameters"]["i"]
        assert (seen.headers["x-trace-id"], seen.headers["idempotency-key"]) == (f"trace-{i}", f"idem-{i}")


async def test_coze_headers_are_not_sent_outside_a_call(coze: FakeCoze, client: CozeClient) -> None:
    await client.run(call())
    await client.check()
    seen = coze.requests_to("/v1/workspaces")[0]
    assert "x-trace-id" not in seen.headers
    assert "idempotency-key" not in seen.headers


async def test_coze_async_run_is_polled_until_it_succeeds(coze: FakeCoze, client: CozeClient) -> None:
    coze.workflow("wf_async", polls_running=2)

    execute_id = await client.start(call("wf_async"))

    assert execute_id == next(iter(coze.executions))
    assert coze.requests_to("/v1/workflow/run")[0].body["is_async"] is True
    assert await client.poll("wf_async", execute_id) is None
    assert await client.poll("wf_async", execute_id) is None
    done = await client.poll("wf_async", execute_id)
    assert done is not None
    assert done.output == {"output": {"q": "hello", "n": 21}}
    assert done.run_id == execute_id
    assert done.log_id.startswith("fake-logid-")
    assert coze.runs["wf_async"] == 1


@pytest.mark.parametrize(
    ("fail", "code", "error_class"),
    [
        ((5000, "internal error"), "PLATFORM_UNAVAILABLE", RETRYABLE),
        ((4101, "no permission"), "PLATFORM_PERMISSION_DENIED", PERMANENT),
        ((0, "the code node crashed"), "WORKFLOW_FAILED", PERMANENT),
    ],
)
async def test_coze_failed_async_run_is_classified_by_its_error_code(
    coze: FakeCoze, client: CozeClient, fail: tuple[int, str], code: str, error_class: int
) -> None:
    coze.workflow("wf_fail", polls_running=0, fail=fail)
    execute_id = await client.start(call("wf_fail"))

    with pytest.raises(PlatformFailure) as err:
        await client.poll("wf_fail", execute_id)

    assert kind(err.value) == (code, error_class)
    assert fail[1] in err.value.message


async def test_coze_async_run_on_a_free_plan_is_permanent(coze: FakeCoze, client: CozeClient) -> None:
    coze.async_allowed = False
    with pytest.raises(PlatformFailure) as err:
        await client.start(call())
    assert (err.value.code, err.value.error_class, err.value.platform_code) == (
        "PLATFORM_PLAN_REQUIRED",
        PERMANENT,
        "6003",
    )
    assert coze.runs == {}


async def test_coze_poll_of_an_unknown_run_fails(client: CozeClient) -> None:
    with pytest.raises(PlatformFailure) as err:
        await client.poll("wf", "123")
    assert err.value.code == "WORKFLOW_NOT_FOUND"


async def test_coze_stream_relays_messages_skips_heartbeats_and_ends_with_the_result(
    coze: FakeCoze, client: CozeClient
) -> None:
    coze.workflow("wf_stream", stream_ping=True)

    items = await collect(client.stream(call("wf_stream")))

    *chunks, result = items
    assert all(isinstance(c, StreamChunk) for c in chunks)
    assert [(c.event, c.text, c.node_finished) for c in chunks if isinstance(c, StreamChunk)] == [
        ("Message", "he", False),
        ("Message", "llo", True),
        ("Message", json.dumps({"output": {"q": "hello", "n": 21}}), True),
    ]
    assert isinstance(chunks[-1], StreamChunk)
    assert chunks[-1].data == {"output": {"q": "hello", "n": 21}}  # JSON content is also given as data
    assert isinstance(chunks[0], StreamChunk)
    assert chunks[0].data is None
    assert isinstance(result, PlatformResult)
    assert result.output == {"output": {"q": "hello", "n": 21}}  # the last finished message, parsed
    assert result.log_id.startswith("fake-logid-")
    seen = coze.requests_to("/v1/workflow/stream_run")[0]
    assert (seen.headers["x-trace-id"], seen.headers["idempotency-key"]) == ("trace-abc-123", "idem-42")
    assert seen.body["ext"] == {"user_id": "user-42"}
    assert coze.runs["wf_stream"] == 1


async def test_coze_stream_relays_an_interrupt(coze: FakeCoze, client: CozeClient) -> None:
    coze.workflow("wf_question", stream_interrupt=True)

    *chunks, result = await collect(client.stream(call("wf_question")))

    interrupt = chunks[-1]
    assert isinstance(interrupt, StreamChunk)
    assert interrupt.event == "Interrupt"
    assert interrupt.data == {"event_id": "7404830425073352713/2769808280134765896", "type": 2}
    assert interrupt.node_title == "Question"
    assert isinstance(result, PlatformResult)
    assert result.output == "llo"  # no End node answered: the last finished message


async def test_coze_stream_error_event_fails_after_the_chunks_before_it(
    coze: FakeCoze, client: CozeClient
) -> None:
    coze.workflow("wf_broken", stream_error=(4009, "system busy"))
    got: list[StreamChunk | PlatformResult] = []

    async def consume() -> None:
        async for item in client.stream(call("wf_broken")):
            got.append(item)

    with pytest.raises(PlatformFailure) as err:
        await consume()

    assert [c.text for c in got if isinstance(c, StreamChunk)] == ["he"]
    assert kind(err.value) == ("PLATFORM_BUSY", RETRYABLE)
    assert err.value.platform_code == "4009"
    assert err.value.counts_for_breaker


async def test_coze_stream_abandoned_early_leaves_the_client_usable(
    coze: FakeCoze, client: CozeClient
) -> None:
    coze.workflow("wf_long", stream_delay_s=0.05)
    stream = client.stream(call("wf_long", trace_id="trace-first"))
    first = await anext(stream)
    assert isinstance(first, StreamChunk)
    await stream.aclose()  # type: ignore[attr-defined]

    assert (await client.run(call(trace_id="trace-second"))).output is not None
    assert coze.requests_to("/v1/workflow/run")[0].headers["x-trace-id"] == "trace-second"


async def test_coze_stream_with_a_bad_token_is_an_auth_failure(coze: FakeCoze) -> None:
    bad = CozeClient(coze.base_url, Credentials(token="pat_revoked_token"), timeout_s=5)
    try:
        with pytest.raises(PlatformFailure) as err:
            await collect(bad.stream(call()))
    finally:
        await bad.aclose()
    assert kind(err.value) == ("PLATFORM_AUTH_FAILED", AUTH)
    assert "pat_revoked_token" not in err.value.message
    assert coze.runs == {}


async def test_coze_stream_deadline(coze: FakeCoze, client: CozeClient) -> None:
    coze.workflow("wf_slow_stream", stream_delay_s=0.5)
    with pytest.raises(PlatformFailure) as err:
        await collect(client.stream(call("wf_slow_stream", timeout_s=0.3)))
    assert kind(err.value) == ("PLATFORM_TIMEOUT", RETRYABLE)


@pytest.mark.parametrize(
    ("fault", "code", "error_class", "retry_after", "breaker"),
    [
        (coze_error(4009, "system busy"), "PLATFORM_BUSY", RETRYABLE, None, True),
        (coze_error(4013, "model error"), "PLATFORM_MODEL_ERROR", RETRYABLE, None, True),
        (coze_error(5000, "internal"), "PLATFORM_UNAVAILABLE", RETRYABLE, None, True),
        (
            coze_error(4020, "rpm exceeded", status=429, headers={"Retry-After": "7"}),
            "PLATFORM_THROTTLED",
            THROTTLED,
            7.0,
            False,
        ),
        (coze_error(4008, "daily limit"), "PLATFORM_THROTTLED", THROTTLED, None, False),
        (coze_error(4200, "workflow not published"), "WORKFLOW_NOT_FOUND", PERMANENT, None, False),
        (coze_error(4000, "bad params"), "PLATFORM_BAD_REQUEST", PERMANENT, None, False),
        (coze_error(4011, "out of balance"), "PLATFORM_OUT_OF_BALANCE", PERMANENT, None, True),
        (http_error(500), "PLATFORM_UNAVAILABLE", RETRYABLE, None, True),
        (http_error(502), "PLATFORM_UNAVAILABLE", RETRYABLE, None, True),
        (
            http_error(429, "slow down", headers={"Retry-After": "3"}),
            "PLATFORM_THROTTLED",
            THROTTLED,
            3.0,
            False,
        ),
        (http_error(403, "forbidden"), "PLATFORM_AUTH_FAILED", AUTH, None, False),
        (http_error(200, "not json at all"), "PLATFORM_BAD_RESPONSE", PERMANENT, None, True),
    ],
)
async def test_coze_errors_are_classified(
    coze: FakeCoze,
    client: CozeClient,
    fault: Fault,
    code: str,
    error_class: int,
    retry_after: float | None,
    breaker: bool,
) -> None:
    coze.fail_next(fault)

    with pytest.raises(PlatformFailure) as err:
        await client.run(call())

    failure = err.value
    assert (failure.code, failure.error_class, failure.retry_after_s) == (code, error_class, retry_after)
    assert failure.counts_for_breaker is breaker
    assert failure.log_id.startswith("fake-logid-")  # kept for support requests
    assert "<html>" not in failure.message
    assert coze.runs == {}
    # The next call is not affected.
    assert (await client.run(call())).output == {"output": {"q": "hello", "n": 21}}


async def test_coze_bad_token_is_auth_and_the_token_is_never_in_the_message(coze: FakeCoze) -> None:
    bad = CozeClient(coze.base_url, Credentials(token="pat_wrong_secret"), timeout_s=5)
    try:
        failures = []
        for attempt in (bad.run(call()), bad.check()):
            with pytest.raises(PlatformFailure) as err:
                await attempt
            failures.append(err.value)
    finally:
        await bad.aclose()
    for failure in failures:
        assert (failure.code, failure.error_class, failure.platform_code) == (
            "PLATFORM_AUTH_FAILED",
            AUTH,
            "4100",
        )
        assert "pat_wrong_secret" not in str(failure)
        assert not failure.counts_for_breaker


async def test_coze_timeout_is_retryable_and_the_platform_still_ran_it(
    coze: FakeCoze, client: CozeClient
) -> None:
    coze.fail_next(slow(0.6))
    with pytest.raises(PlatformFailure) as err:
        await client.run(call(timeout_s=0.2))
    assert kind(err.value) == ("PLATFORM_TIMEOUT", RETRYABLE)
    assert coze.runs["7366000000000000001"] == 1  # why the mesh, not a blind retry, must dedup


async def test_coze_call_timeout_overrides_the_client_default(coze: FakeCoze) -> None:
    short = CozeClient(coze.base_url, Credentials(token=PAT), timeout_s=0.1)
    try:
        coze.fail_next(slow(0.4))
        assert (await short.run(call(timeout_s=3))).output is not None
    finally:
        await short.aclose()


async def test_coze_unreachable() -> None:
    c = CozeClient(f"http://127.0.0.1:{closed_port()}", Credentials(token=PAT), timeout_s=2)
    try:
        with pytest.raises(PlatformFailure) as err:
            await c.run(call())
    finally:
        await c.aclose()
    assert kind(err.value) == ("PLATFORM_UNREACHABLE", RETRYABLE)


async def test_coze_check_and_unsupported_listing(client: CozeClient) -> None:
    await client.check()
    with pytest.raises(PlatformFailure) as err:
        await client.list_workflows(active_only=True)
    assert kind(err.value) == ("UNSUPPORTED", PERMANENT)


def test_coze_client_without_a_token_is_an_auth_failure() -> None:
    with pytest.raises(PlatformFailure) as err:
        CozeClient("http://127.0.0.1:1", Credentials())
    assert err.value.error_class == AUTH


@pytest.mark.parametrize(
    ("code", "mesh_code", "error_class", "breaker"),
    [
        (4000, "PLATFORM_BAD_REQUEST", PERMANENT, False),
        (4100, "PLATFORM_AUTH_FAILED", AUTH, False),
        (700012006, "PLATFORM_AUTH_FAILED", AUTH, False),
        (4101, "PLATFORM_PERMISSION_DENIED", PERMANENT, False),
        (4200, "WORKFLOW_NOT_FOUND", PERMANENT, False),
        (6003, "PLATFORM_PLAN_REQUIRED", PERMANENT, False),
        (4008, "PLATFORM_THROTTLED", THROTTLED, False),
        (4020, "PLATFORM_THROTTLED", THROTTLED, False),
        (4009, "PLATFORM_BUSY", RETRYABLE, True),
        (4013, "PLATFORM_MODEL_ERROR", RETRYABLE, True),
        (5000, "PLATFORM_UNAVAILABLE", RETRYABLE, True),
        (4011, "PLATFORM_OUT_OF_BALANCE", PERMANENT, True),
        (4019, "PLATFORM_OUT_OF_BALANCE", PERMANENT, True),
        (4022, "PLATFORM_OUT_OF_BALANCE", PERMANENT, True),
        (5001, "PLATFORM_UNAVAILABLE", RETRYABLE, True),  # unknown server-side code
        (4999, "PLATFORM_ERROR", PERMANENT, False),  # unknown client-side code
    ],
)
def test_coze_code_table(code: int, mesh_code: str, error_class: int, breaker: bool) -> None:
    failure = classify_coze_code(code, "why", log_id="log-1", retry_after_s=2.0)
    assert (failure.code, failure.error_class, failure.counts_for_breaker) == (
        mesh_code,
        error_class,
        breaker,
    )
    assert (failure.platform_code, failure.log_id) == (str(code), "log-1")
    assert failure.retry_after_s == (2.0 if error_class == THROTTLED else None)
    assert failure.to_proto().code == mesh_code


def test_coze_failure_of_sdk_and_transport_errors() -> None:
    request = httpx.Request("POST", "http://coze.test/v1/workflow/run")
    throttled = httpx.Response(429, headers={"Retry-After": "4", "X-Tt-Logid": "L1"}, request=request)
    cases: list[tuple[Exception, httpx.Response | None, str, int]] = [
        (CozeAPIError(503, "<html>gateway</html>", None), None, "PLATFORM_UNAVAILABLE", RETRYABLE),
        (CozeAPIError(429, "too many", None), throttled, "PLATFORM_THROTTLED", THROTTLED),
        (CozeAPIError(401, "no", None), None, "PLATFORM_AUTH_FAILED", AUTH),
        (CozeAPIError(4200, "not published", "L2"), None, "WORKFLOW_NOT_FOUND", PERMANENT),
        (httpx.ReadTimeout("read timed out", request=request), None, "PLATFORM_TIMEOUT", RETRYABLE),
        (httpx.ConnectError("refused", request=request), None, "PLATFORM_UNREACHABLE", RETRYABLE),
        (httpx.RemoteProtocolError("cut off", request=request), None, "PLATFORM_UNREACHABLE", RETRYABLE),
        (ValueError("validation error"), None, "PLATFORM_BAD_RESPONSE", PERMANENT),
    ]
    for error, response, code, error_class in cases:
        failure = coze_failure(error, response)
        assert (failure.code, failure.error_class) == (code, error_class), error
        assert "<html>" not in failure.message
    assert coze_failure(CozeAPIError(429, "too many", None), throttled).retry_after_s == 4.0
    assert coze_failure(CozeAPIError(429, "too many", None), throttled).log_id == "L1"
    assert coze_failure(CozeAPIError(4200, "x", "L2")).log_id == "L2"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("soon", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < (retry_after_seconds(when) or 0) <= 120


# ---- Coze credentials -----------------------------------------------------------------------------------


def rsa_pair() -> tuple[str, rsa.RSAPublicKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    return tuple(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in (head, body))  # type: ignore[return-value]


async def test_jwt_app_token_is_minted_and_works(coze: FakeCoze) -> None:
    pem, public = rsa_pair()
    coze.jwt_app_id, coze.jwt_public_keys = "app-1", {"kid-1": public}

    before = int(time.time())
    token, expires = await mint_jwt_token(coze.base_url, "app-1", "kid-1", pem, 3600)
    token2, _ = await mint_jwt_token(coze.base_url + "/", "app-1", "kid-1", pem, 100000)

    assert token.startswith("czs_")
    assert token2 != token
    assert before + 3600 <= expires <= int(time.time()) + 3600  # absolute unix time
    exchange = coze.requests_to("/api/permission/oauth2/token")
    assert exchange[1].body["duration_seconds"] == 86399  # capped at Coze's maximum
    header, claims = jwt_parts(exchange[0].headers["authorization"].removeprefix("Bearer "))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
    assert claims["iss"] == "app-1"
    assert claims["aud"] == f"127.0.0.1:{coze.port}"
    assert claims["jti"] != jwt_parts(exchange[1].headers["authorization"].removeprefix("Bearer "))[1]["jti"]
    minted = CozeClient(coze.base_url, Credentials(token=token), timeout_s=5)
    try:
        await minted.check()
    finally:
        await minted.aclose()


async def test_jwt_assertion_is_single_use(coze: FakeCoze) -> None:
    pem, public = rsa_pair()
    coze.jwt_public_keys = {"kid-1": public}
    await mint_jwt_token(coze.base_url, "app-1", "kid-1", pem, 900)
    used = coze.requests_to("/api/permission/oauth2/token")[0]

    async with httpx.AsyncClient() as http:
        replay = await http.post(
            f"{coze.base_url}/api/permission/oauth2/token",
            json=used.body,
            headers={"Authorization": used.headers["authorization"]},
        )
    assert replay.status_code == 401
    assert replay.json()["error_message"] == "jti already used"


async def test_jwt_signed_with_the_wrong_key_is_an_auth_failure(coze: FakeCoze) -> None:
    _, public = rsa_pair()
    other_pem, _ = rsa_pair()
    coze.jwt_public_keys = {"kid-1": public}

    with pytest.raises(PlatformFailure) as err:
        await mint_jwt_token(coze.base_url, "app-1", "kid-1", other_pem, 900)

    assert (err.value.code, err.value.error_class, err.value.platform_code) == (
        "PLATFORM_AUTH_FAILED",
        AUTH,
        "invalid_client",
    )
    assert "PRIVATE KEY" not in str(err.value)


async def test_jwt_with_an_unreadable_key_is_an_auth_failure() -> None:
    with pytest.raises(PlatformFailure) as err:
        await mint_jwt_token("http://127.0.0.1:1", "app-1", "kid-1", "-----BEGIN PRIVATE KEY-----\nnope", 900)
    assert err.value.error_class == AUTH
    assert "nope" not in str(err.value)


async def test_oauth_refresh_rotates_and_the_old_refresh_token_dies(coze: FakeCoze) -> None:
    coze.oauth_clients = {"client-1": "client-secret-1"}
    first = coze.issue_refresh_token("client-1")
    token_url = f"{coze.base_url}/api/permission/oauth2/token"

    access, second, expires = await refresh_oauth_token(token_url, "client-1", "client-secret-1", first)

    assert second != first
    assert expires >= int(time.time()) + coze.access_ttl_s - 5
    sent = coze.requests_to("/api/permission/oauth2/token")[0]
    assert sent.body == {"grant_type": "refresh_token", "client_id": "client-1", "refresh_token": first}
    assert sent.headers["authorization"] == "Bearer client-secret-1"
    with pytest.raises(PlatformFailure) as err:
        await refresh_oauth_token(token_url, "client-1", "client-secret-1", first)
    assert (err.value.error_class, err.value.platform_code) == (AUTH, "invalid_grant")
    assert first not in str(err.value)
    assert "client-secret-1" not in str(err.value)
    _, third, _ = await refresh_oauth_token(token_url, "client-1", "client-secret-1", second)
    assert third not in (first, second)
    fresh = CozeClient(coze.base_url, Credentials(token=access), timeout_s=5)
    try:
        await fresh.check()
    finally:
        await fresh.aclose()


async def test_oauth_endpoint_outage_is_retryable() -> None:
    async def broken(request: Request) -> Response:
        return Response("<html>upstream down</html>", status_code=502)

    async with LocalServer(Starlette(routes=[Route("/token", broken, methods=["POST"])])) as server:
        with pytest.raises(PlatformFailure) as err:
            await refresh_oauth_token(f"{server.base_url}/token", "c", "", "rt")
    assert kind(err.value) == ("PLATFORM_UNAVAILABLE", RETRYABLE)


# ---- n8n --------------------------------------------------------------------------------------------------


class Receiver(LocalServer):
    """A callback receiver that keeps the raw bytes and headers it got."""

    def __init__(self) -> None:
        super().__init__(Starlette(routes=[Route("/callbacks", self._receive, methods=["POST"])]))
        self.got: list[tuple[dict[str, str], bytes]] = []

    async def _receive(self, request: Request) -> Response:
        self.got.append((dict(request.headers), await request.body()))
        return JSONResponse({"received": True})

    @property
    def url(self) -> str:
        return f"{self.base_url}/callbacks"


@pytest.fixture
async def n8n() -> AsyncIterator[FakeN8n]:
    async with FakeN8n(header_auth=MESH_HEADER, api_key="n8n_api_key") as fake:
        fake.webhook("mesh-invoke")
        yield fake


def n8n_client(fake: FakeN8n, *, token: str = "n8n_api_key", secret: str = MESH_HEADER[1]) -> N8nClient:
    return N8nClient(
        fake.base_url, Credentials(token=token, secret_headers={MESH_HEADER[0]: secret}), timeout_s=5
    )


@pytest.fixture
async def n8n_c(n8n: FakeN8n) -> AsyncIterator[N8nClient]:
    c = n8n_client(n8n)
    try:
        yield c
    finally:
        await c.aclose()


async def test_n8n_run_sends_the_mesh_body_and_reads_the_contract(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    result = await n8n_c.run(call("mesh-invoke", callback_url="https://mesh.test/cb"))

    assert result.output == {"echo": {"q": "hello", "n": 21}}
    assert result.run_id == "1"
    [seen] = n8n.requests
    assert seen.path == "/webhook/mesh-invoke"
    assert seen.body == {
        "invocation_id": "inv_1",
        "trace_id": "trace-abc-123",
        "idempotency_key": "idem-42",
        "user_id": "user-42",
        "callback_url": "https://mesh.test/cb",
        "input": {"q": "hello", "n": 21},
    }
    assert seen.headers["x-mesh-token"] == "tenant-a-token"
    assert seen.headers["x-trace-id"] == "trace-abc-123"
    assert seen.headers["idempotency-key"] == "idem-42"
    assert n8n.runs["mesh-invoke"] == 1


async def test_n8n_ok_body_without_result_is_the_whole_object(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    n8n.fail_next(Fault(body={"ok": True, "answer": 42, "execution_id": 9}))
    result = await n8n_c.run(call("mesh-invoke"))
    assert result.output == {"answer": 42, "execution_id": 9}
    assert result.run_id == "9"


@pytest.mark.parametrize("mode", [FAIL_BEFORE_RESPOND, ON_RECEIVED])
async def test_n8n_200_without_the_ok_body_is_a_failure(n8n: FakeN8n, n8n_c: N8nClient, mode: str) -> None:
    n8n.webhook("mesh-invoke", mode=mode)

    with pytest.raises(PlatformFailure) as err:
        await n8n_c.run(call("mesh-invoke"))

    assert kind(err.value) == ("EMPTY_RESPONSE", PERMANENT)
    assert err.value.http_status == 200
    assert n8n.runs["mesh-invoke"] == 1


async def test_n8n_ok_false_is_a_workflow_failure(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    n8n.webhook("mesh-invoke", mode=OK_FALSE, error="customer not found")
    with pytest.raises(PlatformFailure) as err:
        await n8n_c.run(call("mesh-invoke"))
    assert kind(err.value) == ("WORKFLOW_FAILED", PERMANENT)
    assert "customer not found" in err.value.message


@pytest.mark.parametrize("secret", ["wrong-token", ""])
async def test_n8n_wrong_or_missing_webhook_auth_is_auth(n8n: FakeN8n, secret: str) -> None:
    c = (
        n8n_client(n8n, secret=secret)
        if secret
        else N8nClient(n8n.base_url, Credentials(token="n8n_api_key"), timeout_s=5)
    )
    try:
        with pytest.raises(PlatformFailure) as err:
            await c.run(call("mesh-invoke"))
    finally:
        await c.aclose()
    assert kind(err.value) == ("PLATFORM_AUTH_FAILED", AUTH)
    assert err.value.http_status == 403
    assert "wrong-token" not in err.value.message
    assert n8n.runs == {}


@pytest.mark.parametrize("path", ["no-such-hook", "inactive-hook"])
async def test_n8n_unknown_or_inactive_webhook_is_not_found_without_the_stack_trace(
    n8n: FakeN8n, n8n_c: N8nClient, path: str
) -> None:
    n8n.webhook("inactive-hook", active=False)

    with pytest.raises(PlatformFailure) as err:
        await n8n_c.run(call(path))

    assert kind(err.value) == ("WORKFLOW_NOT_FOUND", PERMANENT)
    assert err.value.http_status == 404
    assert "stack" not in err.value.message.lower()
    assert "WebhookService" not in err.value.message
    assert ".js:" not in err.value.message
    assert n8n.runs == {}


async def test_n8n_last_node_error_is_retryable(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    n8n.webhook("mesh-invoke", mode=LAST_NODE_ERROR)
    with pytest.raises(PlatformFailure) as err:
        await n8n_c.run(call("mesh-invoke"))
    assert (err.value.error_class, err.value.http_status, err.value.platform_code) == (RETRYABLE, 500, "500")
    assert err.value.counts_for_breaker


async def test_n8n_throttled_carries_retry_after(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    n8n.fail_next(Fault(status=429, body={"message": "slow down"}, headers={"Retry-After": "3"}))
    with pytest.raises(PlatformFailure) as err:
        await n8n_c.run(call("mesh-invoke"))
    assert kind(err.value) == ("PLATFORM_THROTTLED", THROTTLED)
    assert err.value.retry_after_s == 3.0
    assert not err.value.counts_for_breaker


async def test_n8n_timeout_and_unreachable_are_retryable(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    n8n.webhook("slow-hook", delay_s=0.6)
    with pytest.raises(PlatformFailure) as err:
        await n8n_c.run(call("slow-hook", timeout_s=0.2))
    assert kind(err.value) == ("PLATFORM_TIMEOUT", RETRYABLE)

    gone = N8nClient(f"http://127.0.0.1:{closed_port()}", Credentials(), timeout_s=2)
    try:
        with pytest.raises(PlatformFailure) as err:
            await gone.run(call("mesh-invoke"))
    finally:
        await gone.aclose()
    assert kind(err.value) == ("PLATFORM_UNREACHABLE", RETRYABLE)


async def test_n8n_stream_is_one_item_then_the_result(n8n_c: N8nClient) -> None:
    items = await collect(n8n_c.stream(call("mesh-invoke")))
    assert items == [
        StreamChunk(event="item", data={"echo": {"q": "hello", "n": 21}}),
        PlatformResult(output={"echo": {"q": "hello", "n": 21}}, run_id="1"),
    ]


async def test_n8n_async_start_and_a_signed_callback_that_verifies(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    async with Receiver() as receiver:
        run_id = await n8n_c.start(call("mesh-invoke", callback_url=receiver.url))
        assert run_id == ""  # `{"message":"Workflow was started"}` names no execution
        assert await n8n_c.poll("mesh-invoke", run_id) is None
        assert n8n.requests[0].body["mode"] == "async"
        [sent] = await n8n.wait_callbacks(1)

    assert sent.status == 200
    [(headers, body)] = receiver.got
    payload = Webhook(n8n.callback_secret).verify(body, headers)
    assert payload == {
        "invocation_id": "inv_1",
        "execution_id": "1",
        "trace_id": "trace-abc-123",
        "ok": True,
        "result": {"echo": {"q": "hello", "n": 21}},
    }
    assert headers["webhook-signature"] == sign_standard_webhook(
        n8n.callback_secret, headers["webhook-id"], headers["webhook-timestamp"], body
    )
    assert n8n.runs["mesh-invoke"] == 1


async def test_n8n_async_failure_arrives_as_an_ok_false_callback(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    n8n.webhook("mesh-invoke", mode=OK_FALSE, error="boom")
    async with Receiver() as receiver:
        await n8n_c.start(call("mesh-invoke", callback_url=receiver.url))
        await n8n.wait_callbacks(1)
    payload = Webhook(n8n.callback_secret).verify(receiver.got[0][1], receiver.got[0][0])
    assert (payload["ok"], payload["error"]) == (False, "boom")


async def test_n8n_async_start_with_an_ok_body_returns_its_execution_id(
    n8n: FakeN8n, n8n_c: N8nClient
) -> None:
    n8n.fail_next(Fault(body={"ok": True, "execution_id": "77"}))
    assert await n8n_c.start(call("mesh-invoke")) == "77"
    n8n.fail_next(Fault(body=b""))
    with pytest.raises(PlatformFailure) as err:
        await n8n_c.start(call("mesh-invoke"))
    assert err.value.code == "EMPTY_RESPONSE"


async def test_n8n_tampered_or_foreign_callbacks_fail_verification(n8n: FakeN8n) -> None:
    payload = {"invocation_id": "inv_1", "ok": True, "result": 1}
    async with Receiver() as receiver:
        await n8n.send_callback(
            receiver.url, payload, sent_body=json.dumps({**payload, "result": 2}).encode()
        )
        await n8n.send_callback(receiver.url, payload, secret="whsec_" + base64.b64encode(b"x" * 32).decode())
        await n8n.send_callback(receiver.url, payload, timestamp=int(time.time()) - 3600)
        await n8n.send_callback(receiver.url, payload)
    verifier = Webhook(n8n.callback_secret)
    for headers, body in receiver.got[:3]:
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body, headers)
    assert verifier.verify(receiver.got[3][1], receiver.got[3][0]) == payload


async def test_n8n_list_workflows_pages_and_filters(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    for i in range(300):
        n8n.add_workflow(
            f"flow {i}",
            active=i % 3 != 0,
            webhook_paths=(f"hook-{i}", f"hook-{i}-b") if i == 1 else (f"hook-{i}",),
            tags=("sales", "prod") if i == 1 else (),
            updated_at="2026-11-20T10:00:00.123Z",
        )

    everything = await n8n_c.list_workflows(active_only=False)
    active = await n8n_c.list_workflows(active_only=True)

    assert len(everything) == 300
    assert len({w.workflow_id for w in everything}) == 300
    assert len(active) == 200
    assert all(w.active for w in active)
    one = next(w for w in everything if w.name == "flow 1")
    assert one.webhook_paths == ("hook-1", "hook-1-b")
    assert one.tags == ("sales", "prod")
    assert one.update_time_ms == iso_to_ms("2026-11-20T10:00:00.123Z")
    pages = [r for r in n8n.requests if r.path == "/api/v1/workflows"]
    assert len(pages) == 3  # all 300: 250 + 50; the 200 active ones: one page
    assert pages[0].headers["x-n8n-api-key"] == "n8n_api_key"
    assert "cursor" not in pages[0].query
    assert "cursor" in pages[1].query
    assert "active" not in pages[0].query
    assert pages[2].query["active"] == "true"


async def test_n8n_list_workflows_needs_a_good_api_key(n8n: FakeN8n) -> None:
    for token in ("bad-key", ""):
        c = n8n_client(n8n, token=token)
        try:
            with pytest.raises(PlatformFailure) as err:
                await c.list_workflows(active_only=False)
        finally:
            await c.aclose()
        assert kind(err.value) == ("PLATFORM_AUTH_FAILED", AUTH)
        assert "bad-key" not in err.value.message


async def test_n8n_check(n8n: FakeN8n, n8n_c: N8nClient) -> None:
    await n8n_c.check()
    assert [r.path for r in n8n.requests] == ["/healthz/readiness", "/api/v1/workflows"]

    n8n.ready = False
    with pytest.raises(PlatformFailure) as err:
        await n8n_c.check()
    assert kind(err.value) == ("PLATFORM_UNAVAILABLE", RETRYABLE)

    n8n.ready = True
    bad = n8n_client(n8n, token="bad-key")
    no_key = N8nClient(n8n.base_url, Credentials(), timeout_s=5)
    try:
        with pytest.raises(PlatformFailure) as err:
            await bad.check()
        assert err.value.error_class == AUTH
        n8n.requests.clear()
        await no_key.check()  # without an API key there is nothing more to check
        assert [r.path for r in n8n.requests] == ["/healthz/readiness"]
    finally:
        await bad.aclose()
        await no_key.aclose()


async def test_make_client() -> None:
    coze_client = make_client("coze", "http://127.0.0.1:1", Credentials(token=PAT), 5)
    n8n_c = make_client("n8n", "http://127.0.0.1:1", Credentials(), 5)
    try:
        assert isinstance(coze_client, CozeClient)
        assert isinstance(n8n_c, N8nClient)
    finally:
        await coze_client.aclose()
        await n8n_c.aclose()
    with pytest.raises(ValueError, match="unknown platform"):
        make_client("zapier", "http://127.0.0.1:1", Credentials(), 5)
