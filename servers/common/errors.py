"""Domain errors and the one table that maps them onto `google.rpc.Status`.

Service code raises these; it never deals with gRPC codes. The interceptor turns them into a status with
`ErrorInfo(reason, domain, metadata)`, `BadRequest` field violations for invalid input and `RetryInfo`
for throttling. Clients rebuild typed errors from `ErrorInfo.reason`, never from message text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


class MeshError(Exception):
    """Base of every error a caller may see. `reason` is UPPER_SNAKE and stable."""

    default_reason = "ERROR"

    def __init__(self, message: str, *, reason: str = "", metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(MeshError):
    """The request is malformed; `violations` names each bad field and why."""

    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Iterable[tuple[str, str]] = (),
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)


class TenantRequired(InvalidArgument):
    """The call carried no (or a malformed) `x-tenant-id`."""

    default_reason = "TENANT_REQUIRED"


class NotFound(MeshError):
    """The resource does not exist in the caller's tenant (or is not visible to it)."""

    default_reason = "NOT_FOUND"


class AlreadyExists(MeshError):
    """The resource exists already."""

    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(MeshError):
    """The system is not in a state that allows the call."""

    default_reason = "FAILED_PRECONDITION"


class OutOfRange(MeshError):
    """A position (revision, sequence, page) is outside what is available."""

    default_reason = "OUT_OF_RANGE"


class Aborted(MeshError):
    """A concurrent change conflicted with the call; it may be retried."""

    default_reason = "ABORTED"


class PermissionDenied(MeshError):
    """The caller is known but not allowed to do this."""

    default_reason = "PERMISSION_DENIED"


class Unauthenticated(MeshError):
    """The caller could not be identified."""

    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(MeshError):
    """A quota or rate limit was hit; `retry_after_s` says when to try again."""

    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float = 1.0,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class Unavailable(MeshError):
    """A dependency is down; the call may be retried (after `retry_after_s` when known)."""

    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float = 0.0,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(MeshError):
    """The call ran out of time."""

    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(MeshError):
    """The RPC exists in the contract but is not served yet."""

    default_reason = "UNIMPLEMENTED"


# The one table: exception class -> google.rpc.Code. Subclasses inherit their parent's code.
ERROR_CODES: dict[type[MeshError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    NotFound: code_pb2.NOT_FOUND,
    AlreadyExists: code_pb2.ALREADY_EXISTS,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    OutOfRange: code_pb2.OUT_OF_RANGE,
    Aborted: code_pb2.ABORTED,
    PermissionDenied: code_pb2.PERMISSION_DENIED,
    Unauthenticated: code_pb2.UNAUTHENTICATED,
    ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
    Unavailable: code_pb2.UNAVAILABLE,
    DeadlineExceeded: code_pb2.DEADLINE_EXCEEDED,
    Unimplemented: code_pb2.UNIMPLEMENTED,
}

INTERNAL_MESSAGE = "internal error; quote the request id to the operator"


def code_of(exc: MeshError) -> int:
    """The google.rpc.Code of a domain error."""
    for cls in type(exc).__mro__:
        if cls in ERROR_CODES:
            return int(ERROR_CODES[cls])
    return int(code_pb2.UNKNOWN)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(exc: MeshError, domain: str) -> status_pb2.Status:
    """Builds the `google.rpc.Status` a caller receives for a domain error."""
    status = status_pb2.Status(code=code_of(exc), message=exc.message)
    status.details.append(
        _pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=domain, metadata=exc.metadata))
    )
    if isinstance(exc, InvalidArgument) and exc.violations:
        status.details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in exc.violations
                    ]
                )
            )
        )
    if isinstance(exc, ResourceExhausted | Unavailable) and exc.retry_after_s > 0:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(exc.retry_after_s * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def internal_status(domain: str, request_id: str) -> status_pb2.Status:
    """The status of an unexpected failure: a generic message, never a stack trace."""
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    status.details.append(
        _pack(
            error_details_pb2.ErrorInfo(reason="INTERNAL", domain=domain, metadata={"request_id": request_id})
        )
    )
    return status
