"""Conversions between Python numbers and the protobuf Timestamp and Duration messages."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2


def timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    """The Timestamp of a Unix time in milliseconds."""
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def duration_s(seconds: float) -> duration_pb2.Duration:
    """The Duration of a number of seconds (to the nanosecond, truncated)."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def seconds_of(d: duration_pb2.Duration) -> float:
    """A Duration in seconds."""
    return d.seconds + d.nanos / 1e9
