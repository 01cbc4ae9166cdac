"""Errors of the agent SDK: the mesh's `google.rpc.Status` rebuilt as typed exceptions.

The mesh names every failure with a stable `ErrorInfo.reason`; the SDK picks the exception class by that
reason (never by message text), falling back to the status code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# Domain of the ErrorInfo the SDK attaches to errors it produces itself (for example a handler's crash).
ERROR_DOMAIN = "agent-sdk.powerx"

_STATUS_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}

# Codes after which the same request may succeed later (the mesh restarting, a dropped connection).
TRANSIENT_CODES = frozenset(
    {
        code_pb2.UNAVAILABLE,
        code_pb2.DEADLINE_EXCEEDED,
        code_pb2.ABORTED,
        code_pb2.INTERNAL,
        code_pb2.UNKNOWN,
        code_pb2.CANCELLED,
    }
)


def _code_number(code: grpc.StatusCode | int) -> int:
    number = code.value[0] if isinstance(code, grpc.StatusCode) else int(code)
    if number == code_pb2.OK or number not in _STATUS_CODES:
        return int(code_pb2.UNKNOWN)
    return number


class AgentError(Exception):
    """A failure reported by the mesh, or one a skill handler raises on purpose.

    Raised from a handler, it fails the run with its code, message and reason; any other exception fails
    the run with code UNKNOWN and the exception's type and text.

    Attributes:
        code: google.rpc.Code number (1-16); OK or an unknown number is stored as UNKNOWN.
        message: What went wrong.
        reason: UPPER_SNAKE `ErrorInfo.reason`, or empty when the status carried none.
        domain: `ErrorInfo.domain`, such as `agent.powerx` or `router.powerx`.
        metadata: `ErrorInfo.metadata`.
        retry_after_s: Seconds to wait before trying again (`RetryInfo`), or None.
    """

    # ErrorInfo reasons this class stands for (used to pick the class of a status).
    reasons: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        code: grpc.StatusCode | int,
        message: str,
        *,
        reason: str = "",
        domain: str = ERROR_DOMAIN,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = _code_number(code)
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s

    @property
    def status_code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return _STATUS_CODES[self.code]

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed when tried again later."""
        return self.code in TRANSIENT_CODES or self.retry_after_s is not None

    def to_status(self) -> status_pb2.Status:
        """The `google.rpc.Status` that carries this error (with ErrorInfo and RetryInfo when set)."""
        status = status_pb2.Status(code=self.code, message=self.message[:4096])
        if self.reason:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.ErrorInfo(reason=self.reason, domain=self.domain, metadata=self.metadata)
            )
            status.details.append(detail)
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            status.details.append(detail)
        return status

    @staticmethod
    def from_status(status: status_pb2.Status) -> AgentError:
        """The typed error of a failed status, chosen by its ErrorInfo reason, else by its code."""
        reason, domain, metadata, retry = "", ERROR_DOMAIN, {}, None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry_info = error_details_pb2.RetryInfo()
                detail.Unpack(retry_info)
                retry = retry_info.retry_delay.ToNanoseconds() / 1e9
        cls = _BY_REASON.get(reason) or _BY_CODE.get(status.code, AgentError)
        return cls(
            status.code,
            status.message,
            reason=reason,
            domain=domain,
            metadata=metadata,
            retry_after_s=retry,
        )

    @staticmethod
    def from_rpc_error(err: grpc.aio.AioRpcError) -> AgentError:
        """The typed error of a failed gRPC call, from its rich status when it has one."""
        try:
            status = rpc_status.from_call(err)
        except ValueError:  # a rich status that disagrees with the call's code or message
            status = None
        if status is None:
            status = status_pb2.Status(code=err.code().value[0], message=err.details() or "")
        return AgentError.from_status(status)

    def __repr__(self) -> str:
        reason = f", reason={self.reason!r}" if self.reason else ""
        return f"{type(self).__name__}({code_pb2.Code.Name(self.code)}, {self.message!r}{reason})"


class TaskError(AgentError):
    """Raise from a skill handler to fail the run with a chosen code, message and reason."""


class AgentExistsError(AgentError):
    """The agent is registered already; registering it again needs its current token."""

    reasons = frozenset({"AGENT_EXISTS"})


class AgentRevokedError(AgentError):
    """The agent's token no longer works: revoked, the agent retired, or a newer registration took over."""

    reasons = frozenset({"AGENT_TOKEN_REVOKED", "AGENT_RETIRED"})


class SessionNotFoundError(AgentError):
    """The mesh does not know the agent's session (any more); the agent must register again."""

    reasons = frozenset({"SESSION_NOT_FOUND"})


class ToolNotGrantedError(AgentError):
    """The agent (or the run it calls from) is not granted the capability it called."""

    reasons = frozenset({"TOOL_NOT_GRANTED"})


class CallDepthExceededError(AgentError):
    """The agent-to-agent call would nest deeper than the mesh allows (3)."""

    reasons = frozenset({"AGENT_CALL_DEPTH_EXCEEDED"})


class QuotaExceededError(AgentError):
    """A quota of the agent or the tenant is spent; `retry_after_s` says when to try again."""

    reasons = frozenset({"QUOTA_EXCEEDED"})


class AgentSignatureError(AgentError):
    """The mesh did not accept the signature of an agent-to-agent call (or the agent has no key)."""

    reasons = frozenset(
        {
            "AGENT_KEY_REQUIRED",
            "AGENT_SIGNATURE_MISSING",
            "AGENT_SIGNATURE_STALE",
            "AGENT_SIGNATURE_INVALID",
            "AGENT_SIGNATURE_REPLAYED",
        }
    )


_CLASSES: tuple[type[AgentError], ...] = (
    AgentExistsError,
    AgentRevokedError,
    SessionNotFoundError,
    ToolNotGrantedError,
    CallDepthExceededError,
    QuotaExceededError,
    AgentSignatureError,
)
_BY_REASON: dict[str, type[AgentError]] = {reason: cls for cls in _CLASSES for reason in cls.reasons}
_BY_CODE: dict[int, type[AgentError]] = {code_pb2.RESOURCE_EXHAUSTED: QuotaExceededError}

__all__ = [
    "ERROR_DOMAIN",
    "AgentError",
    "AgentExistsError",
    "AgentRevokedError",
    "AgentSignatureError",
    "CallDepthExceededError",
    "QuotaExceededError",
    "SessionNotFoundError",
    "TaskError",
    "ToolNotGrantedError",
]
