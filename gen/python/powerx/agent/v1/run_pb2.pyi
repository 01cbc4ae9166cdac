import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_QUEUED: _ClassVar[RunState]
    RUN_STATE_ASSIGNED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]

class SchedulingStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULING_STRATEGY_UNSPECIFIED: _ClassVar[SchedulingStrategy]
    SCHEDULING_STRATEGY_ROUND_ROBIN: _ClassVar[SchedulingStrategy]
    SCHEDULING_STRATEGY_LEAST_LOAD: _ClassVar[SchedulingStrategy]
    SCHEDULING_STRATEGY_REGION_AFFINITY: _ClassVar[SchedulingStrategy]
    SCHEDULING_STRATEGY_COST_WEIGHTED: _ClassVar[SchedulingStrategy]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARNING: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_QUEUED: RunState
RUN_STATE_ASSIGNED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELLED: RunState
SCHEDULING_STRATEGY_UNSPECIFIED: SchedulingStrategy
SCHEDULING_STRATEGY_ROUND_ROBIN: SchedulingStrategy
SCHEDULING_STRATEGY_LEAST_LOAD: SchedulingStrategy
SCHEDULING_STRATEGY_REGION_AFFINITY: SchedulingStrategy
SCHEDULING_STRATEGY_COST_WEIGHTED: SchedulingStrategy
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARNING: LogLevel
LOG_LEVEL_ERROR: LogLevel

class Task(_message.Message):
    __slots__ = ("goal", "inputs", "grants", "actor_id", "trace_id", "skill", "timeout", "idempotency_key", "parent_run_id")
    GOAL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    goal: str
    inputs: _struct_pb2.Struct
    grants: _containers.RepeatedScalarFieldContainer[str]
    actor_id: str
    trace_id: str
    skill: str
    timeout: _duration_pb2.Duration
    idempotency_key: str
    parent_run_id: str
    def __init__(self, goal: _Optional[str] = ..., inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., grants: _Optional[_Iterable[str]] = ..., actor_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., skill: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., parent_run_id: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "tenant_id", "task", "agent_id", "session_id", "state", "state_reason", "strategy", "region", "role", "caller_agent_id", "depth", "attempt", "result", "error", "last_sequence", "create_time", "assign_time", "start_time", "end_time", "deadline_time", "update_time", "caller_signature")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CALLER_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CALLER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    tenant_id: str
    task: Task
    agent_id: str
    session_id: str
    state: RunState
    state_reason: str
    strategy: SchedulingStrategy
    region: str
    role: str
    caller_agent_id: str
    depth: int
    attempt: int
    result: _struct_pb2.Value
    error: _status_pb2.Status
    last_sequence: int
    create_time: _timestamp_pb2.Timestamp
    assign_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    deadline_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    caller_signature: str
    def __init__(self, run_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., agent_id: _Optional[str] = ..., session_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., state_reason: _Optional[str] = ..., strategy: _Optional[_Union[SchedulingStrategy, str]] = ..., region: _Optional[str] = ..., role: _Optional[str] = ..., caller_agent_id: _Optional[str] = ..., depth: _Optional[int] = ..., attempt: _Optional[int] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., last_sequence: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., assign_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller_signature: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("sequence", "run_id", "event_time", "token", "log", "state_change", "result", "artifact")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    run_id: str
    event_time: _timestamp_pb2.Timestamp
    token: RunToken
    log: RunLog
    state_change: RunStateChange
    result: RunResult
    artifact: RunArtifactChunk
    def __init__(self, sequence: _Optional[int] = ..., run_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., token: _Optional[_Union[RunToken, _Mapping]] = ..., log: _Optional[_Union[RunLog, _Mapping]] = ..., state_change: _Optional[_Union[RunStateChange, _Mapping]] = ..., result: _Optional[_Union[RunResult, _Mapping]] = ..., artifact: _Optional[_Union[RunArtifactChunk, _Mapping]] = ...) -> None: ...

class RunToken(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class RunLog(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: LogLevel
    message: str
    def __init__(self, level: _Optional[_Union[LogLevel, str]] = ..., message: _Optional[str] = ...) -> None: ...

class RunStateChange(_message.Message):
    __slots__ = ("previous_state", "state", "reason", "agent_id")
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    previous_state: RunState
    state: RunState
    reason: str
    agent_id: str
    def __init__(self, previous_state: _Optional[_Union[RunState, str]] = ..., state: _Optional[_Union[RunState, str]] = ..., reason: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class RunResult(_message.Message):
    __slots__ = ("state", "result", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: RunState
    result: _struct_pb2.Value
    error: _status_pb2.Status
    def __init__(self, state: _Optional[_Union[RunState, str]] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class RunArtifactChunk(_message.Message):
    __slots__ = ("artifact_id", "name", "mime_type", "text", "data", "json", "append", "last_chunk")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    LAST_CHUNK_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    name: str
    mime_type: str
    text: str
    data: bytes
    json: _struct_pb2.Value
    append: bool
    last_chunk: bool
    def __init__(self, artifact_id: _Optional[str] = ..., name: _Optional[str] = ..., mime_type: _Optional[str] = ..., text: _Optional[str] = ..., data: _Optional[bytes] = ..., json: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., append: _Optional[bool] = ..., last_chunk: _Optional[bool] = ...) -> None: ...

class RunCancellation(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
