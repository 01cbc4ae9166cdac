import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DegradeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEGRADE_MODE_UNSPECIFIED: _ClassVar[DegradeMode]
    DEGRADE_MODE_OFF: _ClassVar[DegradeMode]
    DEGRADE_MODE_LOCAL: _ClassVar[DegradeMode]
    DEGRADE_MODE_HUMAN: _ClassVar[DegradeMode]

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_STATE_CLOSED: _ClassVar[BreakerState]
    BREAKER_STATE_OPEN: _ClassVar[BreakerState]
    BREAKER_STATE_HALF_OPEN: _ClassVar[BreakerState]

class HumanTaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HUMAN_TASK_STATE_UNSPECIFIED: _ClassVar[HumanTaskState]
    HUMAN_TASK_STATE_OPEN: _ClassVar[HumanTaskState]
    HUMAN_TASK_STATE_CLAIMED: _ClassVar[HumanTaskState]
    HUMAN_TASK_STATE_COMPLETED: _ClassVar[HumanTaskState]
    HUMAN_TASK_STATE_CANCELLED: _ClassVar[HumanTaskState]
DEGRADE_MODE_UNSPECIFIED: DegradeMode
DEGRADE_MODE_OFF: DegradeMode
DEGRADE_MODE_LOCAL: DegradeMode
DEGRADE_MODE_HUMAN: DegradeMode
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_STATE_CLOSED: BreakerState
BREAKER_STATE_OPEN: BreakerState
BREAKER_STATE_HALF_OPEN: BreakerState
HUMAN_TASK_STATE_UNSPECIFIED: HumanTaskState
HUMAN_TASK_STATE_OPEN: HumanTaskState
HUMAN_TASK_STATE_CLAIMED: HumanTaskState
HUMAN_TASK_STATE_COMPLETED: HumanTaskState
HUMAN_TASK_STATE_CANCELLED: HumanTaskState

class DegradeState(_message.Message):
    __slots__ = ("platform", "tenant_id", "mode", "previous_mode", "reason", "actor", "automatic", "breaker_state", "consecutive_failures", "failure_rate", "local_capability_id", "set_time", "expire_time")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIC_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    SET_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    platform: str
    tenant_id: str
    mode: DegradeMode
    previous_mode: DegradeMode
    reason: str
    actor: str
    automatic: bool
    breaker_state: BreakerState
    consecutive_failures: int
    failure_rate: float
    local_capability_id: str
    set_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, platform: _Optional[str] = ..., tenant_id: _Optional[str] = ..., mode: _Optional[_Union[DegradeMode, str]] = ..., previous_mode: _Optional[_Union[DegradeMode, str]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., automatic: _Optional[bool] = ..., breaker_state: _Optional[_Union[BreakerState, str]] = ..., consecutive_failures: _Optional[int] = ..., failure_rate: _Optional[float] = ..., local_capability_id: _Optional[str] = ..., set_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HumanTask(_message.Message):
    __slots__ = ("task_id", "invocation_id", "tenant_id", "platform", "instance_id", "workflow_id", "trace_id", "state", "assignee", "context", "answer", "reason", "note", "create_time", "claim_time", "complete_time")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ASSIGNEE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CLAIM_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    invocation_id: str
    tenant_id: str
    platform: str
    instance_id: str
    workflow_id: str
    trace_id: str
    state: HumanTaskState
    assignee: str
    context: _struct_pb2.Struct
    answer: _struct_pb2.Value
    reason: str
    note: str
    create_time: _timestamp_pb2.Timestamp
    claim_time: _timestamp_pb2.Timestamp
    complete_time: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[str] = ..., invocation_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., state: _Optional[_Union[HumanTaskState, str]] = ..., assignee: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., answer: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., reason: _Optional[str] = ..., note: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., claim_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
