"""The final message every server stream of the mesh ends with."""

from __future__ import annotations

from google.rpc import code_pb2, status_pb2

from powerx.common.v1 import common_pb2


def stream_end(
    reason: str, last_sequence: int, status: status_pb2.Status | None = None
) -> common_pb2.StreamEnd:
    """A `StreamEnd` stating why the stream ended, what was sent last, and its status (OK by default)."""
    end = common_pb2.StreamEnd(
        reason=reason, status=status or status_pb2.Status(code=code_pb2.OK), last_sequence=last_sequence
    )
    end.end_time.GetCurrentTime()
    return end
