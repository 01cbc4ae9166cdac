"""Errors of the provider SDK and the one table that maps them to gRPC and HTTP statuses."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

# Domain of the ErrorInfo the SDK attaches to failures it produces itself.
ERROR_DOMAIN = "provider.powerx"

INTERNAL_MESSAGE = "internal error in the provider; quote the request id to its operator"

_STATUS_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}

# google.rpc.Code -> HTTP status, exactly as grpc-gateway maps them (runtime.HTTPStatusFromCode).
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}


def _code_number(code: grpc.StatusCode | int) -> int:
    """The google.rpc.Code number of a gRPC status code or of a plain int.

    OK and unknown numbers are not errors a handler can mean, so they become UNKNOWN.
    """
    number = code.value[0] if isinstance(code, grpc.StatusCode) else int(code)
    if number == code_pb2.OK or number not in _STATUS_CODES:
        return int(code_pb2.UNKNOWN)
    return number


class ProviderError(Exception):
    """A deliberate failure of a capability, passed to the caller with its code and message.

    Raise it from a handler to answer with a specific status; any other exception becomes INTERNAL
    with a generic message, so a stack trace never reaches a caller.

    Attributes:
        code: google.rpc.Code number (1-16); OK or an unknown number is stored as UNKNOWN.
        message: What went wrong, shown to the caller; keep secrets and payloads out of it.
        reason: UPPER_SNAKE reason for an attached `google.rpc.ErrorInfo`, or empty for none.
        domain: Domain of that ErrorInfo.
        metadata: Metadata of that ErrorInfo.
    """

    def __init__(
        self,
        code: grpc.StatusCode | int,
        message: str,
        *,
        reason: str = "",
        domain: str = ERROR_DOMAIN,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = _code_number(code)
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})

    @property
    def status_code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return _STATUS_CODES[self.code]

    @property
    def http_status(self) -> int:
        """The HTTP status the HTTP transport answers with."""
        return HTTP_STATUS.get(self.code, 500)

    def to_status(self) -> status_pb2.Status:
        """The `google.rpc.Status` a caller receives."""
        status = status_pb2.Status(code=self.code, message=self.message)
        if self.reason:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.ErrorInfo(reason=self.reason, domain=self.domain, metadata=self.metadata)
            )
            status.details.append(detail)
        return status

    def __repr__(self) -> str:
        return f"ProviderError({code_pb2.Code.Name(self.code)}, {self.message!r})"


class AnnounceError(RuntimeError):
    """The provider could not announce itself to the registry, so it did not start.

    Attributes:
        code: The gRPC status code of the last failed attempt, or None when it never got an answer.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def internal_error(request_id: str) -> ProviderError:
    """The error a caller sees for an unexpected exception: generic text, the request id to quote."""
    return ProviderError(
        code_pb2.INTERNAL,
        INTERNAL_MESSAGE,
        reason="INTERNAL",
        metadata={"request_id": request_id} if request_id else None,
    )
