import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from powerx.connector.v1 import degrade_pb2 as _degrade_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvocationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOCATION_STATE_UNSPECIFIED: _ClassVar[InvocationState]
    INVOCATION_STATE_PENDING: _ClassVar[InvocationState]
    INVOCATION_STATE_RUNNING: _ClassVar[InvocationState]
    INVOCATION_STATE_SUCCEEDED: _ClassVar[InvocationState]
    INVOCATION_STATE_FAILED: _ClassVar[InvocationState]
    INVOCATION_STATE_DEGRADED_LOCAL: _ClassVar[InvocationState]
    INVOCATION_STATE_AWAITING_HUMAN: _ClassVar[InvocationState]
    INVOCATION_STATE_CANCELLED: _ClassVar[InvocationState]

class InvocationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOCATION_MODE_UNSPECIFIED: _ClassVar[InvocationMode]
    INVOCATION_MODE_SYNC: _ClassVar[InvocationMode]
    INVOCATION_MODE_ASYNC: _ClassVar[InvocationMode]
    INVOCATION_MODE_STREAM: _ClassVar[InvocationMode]

class ErrorClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CLASS_UNSPECIFIED: _ClassVar[ErrorClass]
    ERROR_CLASS_RETRYABLE: _ClassVar[ErrorClass]
    ERROR_CLASS_THROTTLED: _ClassVar[ErrorClass]
    ERROR_CLASS_AUTH: _ClassVar[ErrorClass]
    ERROR_CLASS_PERMANENT: _ClassVar[ErrorClass]
INVOCATION_STATE_UNSPECIFIED: InvocationState
INVOCATION_STATE_PENDING: InvocationState
INVOCATION_STATE_RUNNING: InvocationState
INVOCATION_STATE_SUCCEEDED: InvocationState
INVOCATION_STATE_FAILED: InvocationState
INVOCATION_STATE_DEGRADED_LOCAL: InvocationState
INVOCATION_STATE_AWAITING_HUMAN: InvocationState
INVOCATION_STATE_CANCELLED: InvocationState
INVOCATION_MODE_UNSPECIFIED: InvocationMode
INVOCATION_MODE_SYNC: InvocationMode
INVOCATION_MODE_ASYNC: InvocationMode
INVOCATION_MODE_STREAM: InvocationMode
ERROR_CLASS_UNSPECIFIED: ErrorClass
ERROR_CLASS_RETRYABLE: ErrorClass
ERROR_CLASS_THROTTLED: ErrorClass
ERROR_CLASS_AUTH: ErrorClass
ERROR_CLASS_PERMANENT: ErrorClass

class PlatformError(_message.Message):
    __slots__ = ("code", "error_class", "message", "platform_code", "platform_log_id", "http_status", "retry_after")
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_CODE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_LOG_ID_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    code: str
    error_class: ErrorClass
    message: str
    platform_code: str
    platform_log_id: str
    http_status: int
    retry_after: _duration_pb2.Duration
    def __init__(self, code: _Optional[str] = ..., error_class: _Optional[_Union[ErrorClass, str]] = ..., message: _Optional[str] = ..., platform_code: _Optional[str] = ..., platform_log_id: _Optional[str] = ..., http_status: _Optional[int] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Invocation(_message.Message):
    __slots__ = ("invocation_id", "tenant_id", "platform", "instance_id", "workflow_id", "platform_workflow_id", "trace_id", "idempotency_key", "mode", "state", "result", "error", "platform_run_id", "attempts", "degrade_mode", "human_task_id", "user_id", "config_version", "debug_url", "context", "create_time", "update_time", "complete_time", "latency")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEGRADE_MODE_FIELD_NUMBER: _ClassVar[int]
    HUMAN_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEBUG_URL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    tenant_id: str
    platform: str
    instance_id: str
    workflow_id: str
    platform_workflow_id: str
    trace_id: str
    idempotency_key: str
    mode: InvocationMode
    state: InvocationState
    result: _struct_pb2.Value
    error: PlatformError
    platform_run_id: str
    attempts: int
    degrade_mode: _degrade_pb2.DegradeMode
    human_task_id: str
    user_id: str
    config_version: int
    debug_url: str
    context: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    complete_time: _timestamp_pb2.Timestamp
    latency: _duration_pb2.Duration
    def __init__(self, invocation_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., platform_workflow_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., mode: _Optional[_Union[InvocationMode, str]] = ..., state: _Optional[_Union[InvocationState, str]] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[PlatformError, _Mapping]] = ..., platform_run_id: _Optional[str] = ..., attempts: _Optional[int] = ..., degrade_mode: _Optional[_Union[_degrade_pb2.DegradeMode, str]] = ..., human_task_id: _Optional[str] = ..., user_id: _Optional[str] = ..., config_version: _Optional[int] = ..., debug_url: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class InvocationChunk(_message.Message):
    __slots__ = ("invocation_id", "sequence", "event", "data", "text", "node_title", "node_finished")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NODE_TITLE_FIELD_NUMBER: _ClassVar[int]
    NODE_FINISHED_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    sequence: int
    event: str
    data: _struct_pb2.Value
    text: str
    node_title: str
    node_finished: bool
    def __init__(self, invocation_id: _Optional[str] = ..., sequence: _Optional[int] = ..., event: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., text: _Optional[str] = ..., node_title: _Optional[str] = ..., node_finished: _Optional[bool] = ...) -> None: ...
