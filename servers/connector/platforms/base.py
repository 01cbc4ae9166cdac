"""The one interface every platform client implements, and the failure type they raise.

A client is built for one connector instance and one credential version (`make_client`); it never
stores or logs the credential beyond the lifetime of the object. Every call carries the invocation's
trace id and idempotency key to the platform. Failures are `PlatformFailure` with a mesh error code and
an `ErrorClass` that decides retries, throttling and the circuit breaker.
"""

from __future__ import annotations

import datetime
import email.utils
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from powerx.connector.v1 import invocation_pb2

RETRYABLE = invocation_pb2.ERROR_CLASS_RETRYABLE
THROTTLED = invocation_pb2.ERROR_CLASS_THROTTLED
AUTH = invocation_pb2.ERROR_CLASS_AUTH
PERMANENT = invocation_pb2.ERROR_CLASS_PERMANENT


@dataclass(frozen=True)
class Credentials:
    """What a client authenticates with; decrypted just before use and never logged."""

    # Bearer token (Coze PAT / OAuth / minted JWT-app token) or n8n API key (`X-N8N-API-KEY`).
    token: str = field(default="", repr=False)
    # Headers sent on every trigger call (n8n Webhook node header auth), name → value.
    secret_headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class PlatformCall:
    """One workflow call, as the service prepared it (templates applied, user mapped)."""

    invocation_id: str
    workflow_id: str  # platform workflow id (Coze) or production webhook path (n8n)
    payload: dict[str, Any]  # Coze `parameters`, or the n8n webhook body's `input`
    platform_user_id: str
    trace_id: str
    idempotency_key: str
    timeout_s: float
    callback_url: str = ""
    account_id: str = ""  # Coze space / n8n project; informational
    traceparent: str = ""  # W3C `traceparent` of the invoking call (its span as parent), or empty


@dataclass(frozen=True)
class PlatformResult:
    """A finished workflow run."""

    output: Any  # JSON value (Coze `data` parsed when it is JSON text; n8n `result`)
    run_id: str = ""  # Coze execute_id, n8n execution id
    debug_url: str = ""
    log_id: str = ""


@dataclass(frozen=True)
class StreamChunk:
    """One relayed piece of streamed output (heartbeats are not relayed)."""

    event: str  # platform event name: `Message`, `Interrupt`, …
    data: Any = None  # structured payload, when the content is JSON
    text: str | None = None  # text payload (a message delta)
    node_title: str = ""
    node_finished: bool = False


@dataclass(frozen=True)
class WorkflowInfo:
    """A workflow as the platform lists it."""

    workflow_id: str
    name: str
    active: bool
    webhook_paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    update_time_ms: int = 0


class PlatformFailure(Exception):
    """A platform call failed. `message` never contains a secret."""

    def __init__(
        self,
        code: str,
        error_class: int,
        message: str,
        *,
        platform_code: str = "",
        log_id: str = "",
        http_status: int = 0,
        retry_after_s: float | None = None,
        counts_for_breaker: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.error_class = error_class
        self.message = message
        self.platform_code = platform_code
        self.log_id = log_id
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        # Whether the circuit breaker counts it: RETRYABLE always; PERMANENT only for out-of-balance
        # (Coze 4011/4019/4022); THROTTLED and AUTH never. None means "by class".
        self._counts = counts_for_breaker

    @property
    def counts_for_breaker(self) -> bool:
        """Whether this failure is the platform's fault (a breaker failure) rather than the caller's."""
        if self._counts is not None:
            return self._counts
        return self.error_class == RETRYABLE

    def to_proto(self) -> invocation_pb2.PlatformError:
        """The `PlatformError` an invocation carries."""
        err = invocation_pb2.PlatformError(
            code=self.code,
            error_class=self.error_class,  # type: ignore[arg-type]
            message=self.message,
            platform_code=self.platform_code,
            platform_log_id=self.log_id,
            http_status=self.http_status,
        )
        if self.retry_after_s is not None:
            err.retry_after.FromMilliseconds(int(self.retry_after_s * 1000))
        return err


class PlatformClient(Protocol):
    """A platform account reached with one credential."""

    async def run(self, call: PlatformCall) -> PlatformResult:
        """Runs a workflow and waits for its result (Coze sync run; n8n webhook with the body contract)."""
        ...

    async def start(self, call: PlatformCall) -> str:
        """Starts a workflow without waiting; returns the platform run id.

        The id may be empty for n8n, whose result arrives by signed callback.
        """
        ...

    async def poll(self, workflow_id: str, run_id: str) -> PlatformResult | None:
        """The result of a started run, None while it runs; raises PlatformFailure when it failed.

        Clients whose results arrive by callback (n8n) return None.
        """
        ...

    def stream(self, call: PlatformCall) -> AsyncIterator[StreamChunk | PlatformResult]:
        """Runs a workflow streaming its output: chunks, then exactly one PlatformResult last."""
        ...

    async def list_workflows(self, active_only: bool) -> list[WorkflowInfo]:
        """Workflows of the account (n8n REST API); Coze raises PlatformFailure(UNSUPPORTED)."""
        ...

    async def check(self) -> None:
        """A cheap authenticated call; raises PlatformFailure when the platform or credential fails."""
        ...

    async def aclose(self) -> None:
        """Releases connections."""
        ...


def retry_after_seconds(value: str | None) -> float | None:
    """The wait an HTTP `Retry-After` header asks for, in seconds; None when absent or unreadable.

    The header is either delta-seconds or an HTTP date (RFC 9110 §10.2.3); a date in the past means "now".
    """
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an obsolete date form without a zone; HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def status_failure(
    platform: str, status: int, *, retry_after_s: float | None = None, log_id: str = ""
) -> PlatformFailure:
    """What an HTTP error status means when the body says nothing the mesh can trust.

    The body is never copied into the message: error pages may carry stack traces or echo the request.

    Args:
        platform: The platform's name, for the message (`Coze`, `n8n`).
        status: The HTTP status, not 2xx.
        retry_after_s: The response's `Retry-After`, kept for 429 and 503.
        log_id: The platform's log id of the response, if any.
    """
    if status in (401, 403):
        code, error_class, what = "PLATFORM_AUTH_FAILED", AUTH, "rejected the credential"
    elif status == 429:
        code, error_class, what = "PLATFORM_THROTTLED", THROTTLED, "asked to slow down"
    elif status == 408:
        code, error_class, what = "PLATFORM_TIMEOUT", RETRYABLE, "timed out"
    elif status >= 500:
        code, error_class, what = "PLATFORM_UNAVAILABLE", RETRYABLE, "failed"
    else:
        code, error_class, what = "PLATFORM_REJECTED", PERMANENT, "refused the call"
    return PlatformFailure(
        code,
        error_class,
        f"{platform} {what} (HTTP {status})",
        platform_code=str(status),
        log_id=log_id,
        http_status=status,
        retry_after_s=retry_after_s if status in (429, 503) else None,
    )


def transport_failure(platform: str, error: httpx.TransportError) -> PlatformFailure:
    """A call that got no HTTP answer: timeouts and connection failures, both worth retrying."""
    detail = f"{type(error).__name__}: {error}"[:200]
    if isinstance(error, httpx.TimeoutException):
        return PlatformFailure("PLATFORM_TIMEOUT", RETRYABLE, f"{platform} did not answer in time ({detail})")
    return PlatformFailure("PLATFORM_UNREACHABLE", RETRYABLE, f"{platform} could not be reached ({detail})")


def deadline_failure(platform: str, timeout_s: float) -> PlatformFailure:
    """The call's own deadline passed before the platform finished."""
    return PlatformFailure(
        "PLATFORM_TIMEOUT", RETRYABLE, f"{platform} did not finish within the call's {timeout_s:g} s"
    )
