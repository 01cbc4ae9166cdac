import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from powerx.agent.v1 import agent_pb2 as _agent_pb2
from powerx.agent.v1 import run_pb2 as _run_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_EVENT_TYPE_UNSPECIFIED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_REGISTERED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_HEARTBEAT: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_ASSIGNED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_COMPLETED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_FAILED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_DISCONNECTED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_RECONNECTED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_STATE_CHANGED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_RETIRED: _ClassVar[AgentEventType]
    AGENT_EVENT_TYPE_RUN_OUTPUT: _ClassVar[AgentEventType]

class AgentEventTopic(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_EVENT_TOPIC_UNSPECIFIED: _ClassVar[AgentEventTopic]
    AGENT_EVENT_TOPIC_STATE: _ClassVar[AgentEventTopic]
    AGENT_EVENT_TOPIC_LOG: _ClassVar[AgentEventTopic]
    AGENT_EVENT_TOPIC_TOKEN: _ClassVar[AgentEventTopic]
AGENT_EVENT_TYPE_UNSPECIFIED: AgentEventType
AGENT_EVENT_TYPE_REGISTERED: AgentEventType
AGENT_EVENT_TYPE_HEARTBEAT: AgentEventType
AGENT_EVENT_TYPE_ASSIGNED: AgentEventType
AGENT_EVENT_TYPE_COMPLETED: AgentEventType
AGENT_EVENT_TYPE_FAILED: AgentEventType
AGENT_EVENT_TYPE_DISCONNECTED: AgentEventType
AGENT_EVENT_TYPE_RECONNECTED: AgentEventType
AGENT_EVENT_TYPE_STATE_CHANGED: AgentEventType
AGENT_EVENT_TYPE_RETIRED: AgentEventType
AGENT_EVENT_TYPE_RUN_OUTPUT: AgentEventType
AGENT_EVENT_TOPIC_UNSPECIFIED: AgentEventTopic
AGENT_EVENT_TOPIC_STATE: AgentEventTopic
AGENT_EVENT_TOPIC_LOG: AgentEventTopic
AGENT_EVENT_TOPIC_TOKEN: AgentEventTopic

class AgentEvent(_message.Message):
    __slots__ = ("event_id", "type", "topic", "event_time", "tenant_id", "agent_id", "session_id", "state", "previous_state", "reason", "run_id", "load", "agent", "run", "run_event", "trace_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    RUN_EVENT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: AgentEventType
    topic: AgentEventTopic
    event_time: _timestamp_pb2.Timestamp
    tenant_id: str
    agent_id: str
    session_id: str
    state: _agent_pb2.AgentState
    previous_state: _agent_pb2.AgentState
    reason: str
    run_id: str
    load: _agent_pb2.AgentLoad
    agent: _agent_pb2.Agent
    run: _run_pb2.Run
    run_event: _run_pb2.RunEvent
    trace_id: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[_Union[AgentEventType, str]] = ..., topic: _Optional[_Union[AgentEventTopic, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., session_id: _Optional[str] = ..., state: _Optional[_Union[_agent_pb2.AgentState, str]] = ..., previous_state: _Optional[_Union[_agent_pb2.AgentState, str]] = ..., reason: _Optional[str] = ..., run_id: _Optional[str] = ..., load: _Optional[_Union[_agent_pb2.AgentLoad, _Mapping]] = ..., agent: _Optional[_Union[_agent_pb2.Agent, _Mapping]] = ..., run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., run_event: _Optional[_Union[_run_pb2.RunEvent, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...
