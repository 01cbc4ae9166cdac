import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Transport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSPORT_UNSPECIFIED: _ClassVar[Transport]
    TRANSPORT_GRPC: _ClassVar[Transport]
    TRANSPORT_HTTP: _ClassVar[Transport]
    TRANSPORT_MCP: _ClassVar[Transport]
    TRANSPORT_AGENT: _ClassVar[Transport]

class HealthState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATE_UNSPECIFIED: _ClassVar[HealthState]
    HEALTH_STATE_HEALTHY: _ClassVar[HealthState]
    HEALTH_STATE_WARNING: _ClassVar[HealthState]
    HEALTH_STATE_UNREACHABLE: _ClassVar[HealthState]
    HEALTH_STATE_STALE: _ClassVar[HealthState]
    HEALTH_STATE_UNKNOWN: _ClassVar[HealthState]
    HEALTH_STATE_OFFLINE: _ClassVar[HealthState]
TRANSPORT_UNSPECIFIED: Transport
TRANSPORT_GRPC: Transport
TRANSPORT_HTTP: Transport
TRANSPORT_MCP: Transport
TRANSPORT_AGENT: Transport
HEALTH_STATE_UNSPECIFIED: HealthState
HEALTH_STATE_HEALTHY: HealthState
HEALTH_STATE_WARNING: HealthState
HEALTH_STATE_UNREACHABLE: HealthState
HEALTH_STATE_STALE: HealthState
HEALTH_STATE_UNKNOWN: HealthState
HEALTH_STATE_OFFLINE: HealthState

class StreamEnd(_message.Message):
    __slots__ = ("reason", "status", "end_time", "last_sequence")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    status: _status_pb2.Status
    end_time: _timestamp_pb2.Timestamp
    last_sequence: int
    def __init__(self, reason: _Optional[str] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_sequence: _Optional[int] = ...) -> None: ...
