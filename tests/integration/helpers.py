"""Helpers for asserting on rich gRPC errors."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call (fails the test if there is none)."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo detail")


def bad_fields(err: grpc.aio.AioRpcError) -> set[str]:
    """Fields named by the BadRequest detail of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            return {v.field for v in br.field_violations}
    return set()


# grpc.aio reports INTERNAL "Internal error from Core" instead of the server's status when the server
# ends a client-streaming call before the client's write of the request lands (grpc/grpc#36066). The
# server answered correctly; tests of client-streaming calls try such a call again.
CORE_WRITE_RACE = "Internal error from Core"
