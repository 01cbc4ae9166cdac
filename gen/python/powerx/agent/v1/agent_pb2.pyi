import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from powerx.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_REGISTERING: _ClassVar[AgentState]
    AGENT_STATE_ACTIVE: _ClassVar[AgentState]
    AGENT_STATE_IDLE: _ClassVar[AgentState]
    AGENT_STATE_BUSY: _ClassVar[AgentState]
    AGENT_STATE_DEGRADED: _ClassVar[AgentState]
    AGENT_STATE_DISCONNECTED: _ClassVar[AgentState]
    AGENT_STATE_RETIRED: _ClassVar[AgentState]

class IsolationLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ISOLATION_LEVEL_UNSPECIFIED: _ClassVar[IsolationLevel]
    ISOLATION_LEVEL_PROCESS: _ClassVar[IsolationLevel]
    ISOLATION_LEVEL_CONTAINER: _ClassVar[IsolationLevel]
    ISOLATION_LEVEL_THREAD: _ClassVar[IsolationLevel]
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_REGISTERING: AgentState
AGENT_STATE_ACTIVE: AgentState
AGENT_STATE_IDLE: AgentState
AGENT_STATE_BUSY: AgentState
AGENT_STATE_DEGRADED: AgentState
AGENT_STATE_DISCONNECTED: AgentState
AGENT_STATE_RETIRED: AgentState
ISOLATION_LEVEL_UNSPECIFIED: IsolationLevel
ISOLATION_LEVEL_PROCESS: IsolationLevel
ISOLATION_LEVEL_CONTAINER: IsolationLevel
ISOLATION_LEVEL_THREAD: IsolationLevel

class Agent(_message.Message):
    __slots__ = ("agent_id", "tenant_id", "display_name", "version", "author", "description", "runtime", "skills", "endpoints", "tool_grants", "labels", "roles", "tenant_scopes", "signature", "a2a_card_url", "a2a_card", "state", "state_reason", "state_change_time", "session_id", "last_heartbeat_time", "load", "stats", "token_issue_time", "manifest_digest", "create_time", "update_time", "public_key")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    TOOL_GRANTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    TENANT_SCOPES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    A2A_CARD_URL_FIELD_NUMBER: _ClassVar[int]
    A2A_CARD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ISSUE_TIME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    tenant_id: str
    display_name: str
    version: str
    author: str
    description: str
    runtime: AgentRuntime
    skills: _containers.RepeatedScalarFieldContainer[str]
    endpoints: _containers.RepeatedCompositeFieldContainer[AgentEndpoint]
    tool_grants: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    tenant_scopes: _containers.RepeatedScalarFieldContainer[str]
    signature: str
    a2a_card_url: str
    a2a_card: _struct_pb2.Struct
    state: AgentState
    state_reason: str
    state_change_time: _timestamp_pb2.Timestamp
    session_id: str
    last_heartbeat_time: _timestamp_pb2.Timestamp
    load: AgentLoad
    stats: AgentStats
    token_issue_time: _timestamp_pb2.Timestamp
    manifest_digest: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    public_key: str
    def __init__(self, agent_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., version: _Optional[str] = ..., author: _Optional[str] = ..., description: _Optional[str] = ..., runtime: _Optional[_Union[AgentRuntime, _Mapping]] = ..., skills: _Optional[_Iterable[str]] = ..., endpoints: _Optional[_Iterable[_Union[AgentEndpoint, _Mapping]]] = ..., tool_grants: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., roles: _Optional[_Iterable[str]] = ..., tenant_scopes: _Optional[_Iterable[str]] = ..., signature: _Optional[str] = ..., a2a_card_url: _Optional[str] = ..., a2a_card: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., state: _Optional[_Union[AgentState, str]] = ..., state_reason: _Optional[str] = ..., state_change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_id: _Optional[str] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., load: _Optional[_Union[AgentLoad, _Mapping]] = ..., stats: _Optional[_Union[AgentStats, _Mapping]] = ..., token_issue_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., manifest_digest: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., public_key: _Optional[str] = ...) -> None: ...

class AgentRuntime(_message.Message):
    __slots__ = ("heartbeat_interval", "max_concurrency", "tenant_scope", "isolation_level", "region", "cost_weight")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TENANT_SCOPE_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: _duration_pb2.Duration
    max_concurrency: int
    tenant_scope: str
    isolation_level: IsolationLevel
    region: str
    cost_weight: float
    def __init__(self, heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_concurrency: _Optional[int] = ..., tenant_scope: _Optional[str] = ..., isolation_level: _Optional[_Union[IsolationLevel, str]] = ..., region: _Optional[str] = ..., cost_weight: _Optional[float] = ...) -> None: ...

class AgentEndpoint(_message.Message):
    __slots__ = ("transport", "uri", "protocol", "health")
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    transport: _common_pb2.Transport
    uri: str
    protocol: str
    health: _common_pb2.HealthState
    def __init__(self, transport: _Optional[_Union[_common_pb2.Transport, str]] = ..., uri: _Optional[str] = ..., protocol: _Optional[str] = ..., health: _Optional[_Union[_common_pb2.HealthState, str]] = ...) -> None: ...

class AgentLoad(_message.Message):
    __slots__ = ("cpu_usage", "mem_usage", "active_tasks", "uptime")
    CPU_USAGE_FIELD_NUMBER: _ClassVar[int]
    MEM_USAGE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TASKS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    cpu_usage: float
    mem_usage: float
    active_tasks: int
    uptime: _duration_pb2.Duration
    def __init__(self, cpu_usage: _Optional[float] = ..., mem_usage: _Optional[float] = ..., active_tasks: _Optional[int] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentStats(_message.Message):
    __slots__ = ("run_count", "error_count", "error_rate", "avg_latency")
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    AVG_LATENCY_FIELD_NUMBER: _ClassVar[int]
    run_count: int
    error_count: int
    error_rate: float
    avg_latency: _duration_pb2.Duration
    def __init__(self, run_count: _Optional[int] = ..., error_count: _Optional[int] = ..., error_rate: _Optional[float] = ..., avg_latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
