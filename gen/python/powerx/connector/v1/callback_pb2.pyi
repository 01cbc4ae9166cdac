import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from powerx.connector.v1 import connector_pb2 as _connector_pb2
from powerx.connector.v1 import invocation_pb2 as _invocation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_STATUS_UNSPECIFIED: _ClassVar[SignatureStatus]
    SIGNATURE_STATUS_VERIFIED: _ClassVar[SignatureStatus]
    SIGNATURE_STATUS_INVALID: _ClassVar[SignatureStatus]
    SIGNATURE_STATUS_MISSING: _ClassVar[SignatureStatus]
    SIGNATURE_STATUS_STALE: _ClassVar[SignatureStatus]
    SIGNATURE_STATUS_REPLAYED: _ClassVar[SignatureStatus]
SIGNATURE_STATUS_UNSPECIFIED: SignatureStatus
SIGNATURE_STATUS_VERIFIED: SignatureStatus
SIGNATURE_STATUS_INVALID: SignatureStatus
SIGNATURE_STATUS_MISSING: SignatureStatus
SIGNATURE_STATUS_STALE: SignatureStatus
SIGNATURE_STATUS_REPLAYED: SignatureStatus

class CallbackEvent(_message.Message):
    __slots__ = ("callback_id", "sequence", "tenant_id", "platform", "instance_id", "invocation_id", "signature_status", "signature_scheme", "result", "error_code", "error_message", "trace_id", "platform_run_id", "invocation_state", "receive_time")
    CALLBACK_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_STATUS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_SCHEME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_STATE_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    callback_id: str
    sequence: int
    tenant_id: str
    platform: str
    instance_id: str
    invocation_id: str
    signature_status: SignatureStatus
    signature_scheme: str
    result: _struct_pb2.Value
    error_code: str
    error_message: str
    trace_id: str
    platform_run_id: str
    invocation_state: _invocation_pb2.InvocationState
    receive_time: _timestamp_pb2.Timestamp
    def __init__(self, callback_id: _Optional[str] = ..., sequence: _Optional[int] = ..., tenant_id: _Optional[str] = ..., platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., invocation_id: _Optional[str] = ..., signature_status: _Optional[_Union[SignatureStatus, str]] = ..., signature_scheme: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., trace_id: _Optional[str] = ..., platform_run_id: _Optional[str] = ..., invocation_state: _Optional[_Union[_invocation_pb2.InvocationState, str]] = ..., receive_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FeatureFlag(_message.Message):
    __slots__ = ("name", "description", "enabled", "rollout_percent", "tenant_allowlist", "tenant_denylist", "platforms", "rate_limit", "enabled_for_caller", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TENANT_ALLOWLIST_FIELD_NUMBER: _ClassVar[int]
    TENANT_DENYLIST_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FOR_CALLER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    enabled: bool
    rollout_percent: int
    tenant_allowlist: _containers.RepeatedScalarFieldContainer[str]
    tenant_denylist: _containers.RepeatedScalarFieldContainer[str]
    platforms: _containers.RepeatedScalarFieldContainer[str]
    rate_limit: _connector_pb2.RateLimit
    enabled_for_caller: bool
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., enabled: _Optional[bool] = ..., rollout_percent: _Optional[int] = ..., tenant_allowlist: _Optional[_Iterable[str]] = ..., tenant_denylist: _Optional[_Iterable[str]] = ..., platforms: _Optional[_Iterable[str]] = ..., rate_limit: _Optional[_Union[_connector_pb2.RateLimit, _Mapping]] = ..., enabled_for_caller: _Optional[bool] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
