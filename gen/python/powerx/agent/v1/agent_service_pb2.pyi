import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from powerx.agent.v1 import agent_pb2 as _agent_pb2
from powerx.agent.v1 import event_pb2 as _event_pb2
from powerx.agent.v1 import run_pb2 as _run_pb2
from powerx.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListAgentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "skill", "role")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: _agent_pb2.AgentState
    skill: str
    role: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[_agent_pb2.AgentState, str]] = ..., skill: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_agent_pb2.Agent]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[_agent_pb2.Agent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class GetAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class RegisterAgentRequest(_message.Message):
    __slots__ = ("agent", "resume_session_id")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    resume_session_id: str
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ..., resume_session_id: _Optional[str] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("agent", "agent_token", "session_id", "heartbeat_uri", "heartbeat_interval")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_URI_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    agent_token: str
    session_id: str
    heartbeat_uri: str
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ..., agent_token: _Optional[str] = ..., session_id: _Optional[str] = ..., heartbeat_uri: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RecordHeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "session_id", "load")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    session_id: str
    load: _agent_pb2.AgentLoad
    def __init__(self, agent_id: _Optional[str] = ..., session_id: _Optional[str] = ..., load: _Optional[_Union[_agent_pb2.AgentLoad, _Mapping]] = ...) -> None: ...

class RecordHeartbeatResponse(_message.Message):
    __slots__ = ("state", "server_time", "pending_assignment_count", "heartbeat_interval")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    PENDING_ASSIGNMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    state: _agent_pb2.AgentState
    server_time: _timestamp_pb2.Timestamp
    pending_assignment_count: int
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, state: _Optional[_Union[_agent_pb2.AgentState, str]] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pending_assignment_count: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AssignTaskRequest(_message.Message):
    __slots__ = ("agent_id", "task")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    task: _run_pb2.Task
    def __init__(self, agent_id: _Optional[str] = ..., task: _Optional[_Union[_run_pb2.Task, _Mapping]] = ...) -> None: ...

class AssignTaskResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("task", "strategy", "region", "role")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    task: _run_pb2.Task
    strategy: _run_pb2.SchedulingStrategy
    region: str
    role: str
    def __init__(self, task: _Optional[_Union[_run_pb2.Task, _Mapping]] = ..., strategy: _Optional[_Union[_run_pb2.SchedulingStrategy, str]] = ..., region: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class CreateRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "agent_id", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    agent_id: str
    state: _run_pb2.RunState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., agent_id: _Optional[str] = ..., state: _Optional[_Union[_run_pb2.RunState, str]] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class StreamRunOutputRequest(_message.Message):
    __slots__ = ("run_id", "from_sequence", "max_events", "idle_timeout")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_sequence: int
    max_events: int
    idle_timeout: _duration_pb2.Duration
    def __init__(self, run_id: _Optional[str] = ..., from_sequence: _Optional[int] = ..., max_events: _Optional[int] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamRunOutputResponse(_message.Message):
    __slots__ = ("event", "end")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    event: _run_pb2.RunEvent
    end: _common_pb2.StreamEnd
    def __init__(self, event: _Optional[_Union[_run_pb2.RunEvent, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.StreamEnd, _Mapping]] = ...) -> None: ...

class DisconnectAgentRequest(_message.Message):
    __slots__ = ("agent_id", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DisconnectAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class DeleteAgentRequest(_message.Message):
    __slots__ = ("agent_id", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class RevokeAgentTokenRequest(_message.Message):
    __slots__ = ("agent_id", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeAgentTokenResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class RegisterExternalAgentRequest(_message.Message):
    __slots__ = ("card_url", "agent_id", "tenant_scopes", "roles", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CARD_URL_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_SCOPES_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    card_url: str
    agent_id: str
    tenant_scopes: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, card_url: _Optional[str] = ..., agent_id: _Optional[str] = ..., tenant_scopes: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterExternalAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: _agent_pb2.Agent
    def __init__(self, agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ...) -> None: ...

class WatchAgentEventsRequest(_message.Message):
    __slots__ = ("agent_id", "topics", "event_types", "max_events", "idle_timeout")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    topics: _containers.RepeatedScalarFieldContainer[_event_pb2.AgentEventTopic]
    event_types: _containers.RepeatedScalarFieldContainer[_event_pb2.AgentEventType]
    max_events: int
    idle_timeout: _duration_pb2.Duration
    def __init__(self, agent_id: _Optional[str] = ..., topics: _Optional[_Iterable[_Union[_event_pb2.AgentEventTopic, str]]] = ..., event_types: _Optional[_Iterable[_Union[_event_pb2.AgentEventType, str]]] = ..., max_events: _Optional[int] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchAgentEventsResponse(_message.Message):
    __slots__ = ("event", "end")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.AgentEvent
    end: _common_pb2.StreamEnd
    def __init__(self, event: _Optional[_Union[_event_pb2.AgentEvent, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.StreamEnd, _Mapping]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "run_output", "run_complete", "ack")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RUN_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    hello: ConnectHello
    heartbeat: ConnectHeartbeat
    run_output: ConnectRunOutput
    run_complete: ConnectRunComplete
    ack: ConnectAck
    def __init__(self, hello: _Optional[_Union[ConnectHello, _Mapping]] = ..., heartbeat: _Optional[_Union[ConnectHeartbeat, _Mapping]] = ..., run_output: _Optional[_Union[ConnectRunOutput, _Mapping]] = ..., run_complete: _Optional[_Union[ConnectRunComplete, _Mapping]] = ..., ack: _Optional[_Union[ConnectAck, _Mapping]] = ...) -> None: ...

class ConnectHello(_message.Message):
    __slots__ = ("agent_id", "session_id", "load")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    session_id: str
    load: _agent_pb2.AgentLoad
    def __init__(self, agent_id: _Optional[str] = ..., session_id: _Optional[str] = ..., load: _Optional[_Union[_agent_pb2.AgentLoad, _Mapping]] = ...) -> None: ...

class ConnectHeartbeat(_message.Message):
    __slots__ = ("load",)
    LOAD_FIELD_NUMBER: _ClassVar[int]
    load: _agent_pb2.AgentLoad
    def __init__(self, load: _Optional[_Union[_agent_pb2.AgentLoad, _Mapping]] = ...) -> None: ...

class ConnectRunOutput(_message.Message):
    __slots__ = ("run_id", "events", "idempotency_key")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    events: _containers.RepeatedCompositeFieldContainer[_run_pb2.RunEvent]
    idempotency_key: str
    def __init__(self, run_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[_run_pb2.RunEvent, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ConnectRunComplete(_message.Message):
    __slots__ = ("run_id", "result", "error")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    result: _struct_pb2.Value
    error: _status_pb2.Status
    def __init__(self, run_id: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ConnectAck(_message.Message):
    __slots__ = ("run_id", "status")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: _status_pb2.Status
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "assignment", "cancel", "ping", "receipt", "end")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    welcome: ConnectWelcome
    assignment: _run_pb2.Run
    cancel: _run_pb2.RunCancellation
    ping: ConnectPing
    receipt: ConnectReceipt
    end: _common_pb2.StreamEnd
    def __init__(self, welcome: _Optional[_Union[ConnectWelcome, _Mapping]] = ..., assignment: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., cancel: _Optional[_Union[_run_pb2.RunCancellation, _Mapping]] = ..., ping: _Optional[_Union[ConnectPing, _Mapping]] = ..., receipt: _Optional[_Union[ConnectReceipt, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.StreamEnd, _Mapping]] = ...) -> None: ...

class ConnectWelcome(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    state: _agent_pb2.AgentState
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., state: _Optional[_Union[_agent_pb2.AgentState, str]] = ...) -> None: ...

class ConnectPing(_message.Message):
    __slots__ = ("server_time",)
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConnectReceipt(_message.Message):
    __slots__ = ("run_id", "last_sequence", "status")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    last_sequence: int
    status: _status_pb2.Status
    def __init__(self, run_id: _Optional[str] = ..., last_sequence: _Optional[int] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class PullAssignmentsRequest(_message.Message):
    __slots__ = ("agent_id", "session_id", "wait", "max_count")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    session_id: str
    wait: _duration_pb2.Duration
    max_count: int
    def __init__(self, agent_id: _Optional[str] = ..., session_id: _Optional[str] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_count: _Optional[int] = ...) -> None: ...

class PullAssignmentsResponse(_message.Message):
    __slots__ = ("runs", "cancellations")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    CANCELLATIONS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    cancellations: _containers.RepeatedCompositeFieldContainer[_run_pb2.RunCancellation]
    def __init__(self, runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., cancellations: _Optional[_Iterable[_Union[_run_pb2.RunCancellation, _Mapping]]] = ...) -> None: ...

class PublishRunOutputRequest(_message.Message):
    __slots__ = ("run_id", "events", "idempotency_key")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    events: _containers.RepeatedCompositeFieldContainer[_run_pb2.RunEvent]
    idempotency_key: str
    def __init__(self, run_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[_run_pb2.RunEvent, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PublishRunOutputResponse(_message.Message):
    __slots__ = ("last_sequence",)
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    last_sequence: int
    def __init__(self, last_sequence: _Optional[int] = ...) -> None: ...

class CompleteRunRequest(_message.Message):
    __slots__ = ("run_id", "result", "error")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    result: _struct_pb2.Value
    error: _status_pb2.Status
    def __init__(self, run_id: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class CompleteRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...
