import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from powerx.common.v1 import common_pb2 as _common_pb2
from powerx.connector.v1 import callback_pb2 as _callback_pb2
from powerx.connector.v1 import connector_pb2 as _connector_pb2
from powerx.connector.v1 import degrade_pb2 as _degrade_pb2
from powerx.connector.v1 import invocation_pb2 as _invocation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateConnectorInstanceRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "instance", "reason")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    instance: _connector_pb2.ConnectorInstance
    reason: str
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., instance: _Optional[_Union[_connector_pb2.ConnectorInstance, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class CreateConnectorInstanceResponse(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: _connector_pb2.ConnectorInstance
    def __init__(self, instance: _Optional[_Union[_connector_pb2.ConnectorInstance, _Mapping]] = ...) -> None: ...

class UpdateConnectorInstanceRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "instance", "update_mask", "reason")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    instance: _connector_pb2.ConnectorInstance
    update_mask: _field_mask_pb2.FieldMask
    reason: str
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., instance: _Optional[_Union[_connector_pb2.ConnectorInstance, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class UpdateConnectorInstanceResponse(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: _connector_pb2.ConnectorInstance
    def __init__(self, instance: _Optional[_Union[_connector_pb2.ConnectorInstance, _Mapping]] = ...) -> None: ...

class GetConnectorInstanceRequest(_message.Message):
    __slots__ = ("platform", "instance_id")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...

class GetConnectorInstanceResponse(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: _connector_pb2.ConnectorInstance
    def __init__(self, instance: _Optional[_Union[_connector_pb2.ConnectorInstance, _Mapping]] = ...) -> None: ...

class ListConnectorInstancesRequest(_message.Message):
    __slots__ = ("platform", "page_size", "page_token")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    platform: str
    page_size: int
    page_token: str
    def __init__(self, platform: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConnectorInstancesResponse(_message.Message):
    __slots__ = ("instances", "next_page_token")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[_connector_pb2.ConnectorInstance]
    next_page_token: str
    def __init__(self, instances: _Optional[_Iterable[_Union[_connector_pb2.ConnectorInstance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteConnectorInstanceRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "reason")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    reason: str
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteConnectorInstanceResponse(_message.Message):
    __slots__ = ("instance", "cancelled_invocation_count")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_INVOCATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    instance: _connector_pb2.ConnectorInstance
    cancelled_invocation_count: int
    def __init__(self, instance: _Optional[_Union[_connector_pb2.ConnectorInstance, _Mapping]] = ..., cancelled_invocation_count: _Optional[int] = ...) -> None: ...

class RotateCredentialRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "credential_input", "reason")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_INPUT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    credential_input: _connector_pb2.CredentialInput
    reason: str
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., credential_input: _Optional[_Union[_connector_pb2.CredentialInput, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class RotateCredentialResponse(_message.Message):
    __slots__ = ("credential", "config_version")
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    credential: _connector_pb2.CredentialInfo
    config_version: int
    def __init__(self, credential: _Optional[_Union[_connector_pb2.CredentialInfo, _Mapping]] = ..., config_version: _Optional[int] = ...) -> None: ...

class ListConfigVersionsRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "page_size", "page_token")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    page_size: int
    page_token: str
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConfigVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_connector_pb2.ConfigVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[_connector_pb2.ConfigVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RollbackConfigRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "version", "restore_credential", "reason")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTORE_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    version: int
    restore_credential: bool
    reason: str
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., version: _Optional[int] = ..., restore_credential: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackConfigResponse(_message.Message):
    __slots__ = ("instance", "version")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    instance: _connector_pb2.ConnectorInstance
    version: _connector_pb2.ConfigVersion
    def __init__(self, instance: _Optional[_Union[_connector_pb2.ConnectorInstance, _Mapping]] = ..., version: _Optional[_Union[_connector_pb2.ConfigVersion, _Mapping]] = ...) -> None: ...

class InvokeConnectorRequest(_message.Message):
    __slots__ = ("platform", "tenant", "instance_id", "workflow_id", "context", "trace_id", "idempotency_key", "mode", "user_id", "timeout")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    platform: str
    tenant: str
    instance_id: str
    workflow_id: str
    context: _struct_pb2.Struct
    trace_id: str
    idempotency_key: str
    mode: _invocation_pb2.InvocationMode
    user_id: str
    timeout: _duration_pb2.Duration
    def __init__(self, platform: _Optional[str] = ..., tenant: _Optional[str] = ..., instance_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., trace_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., mode: _Optional[_Union[_invocation_pb2.InvocationMode, str]] = ..., user_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class InvokeConnectorResponse(_message.Message):
    __slots__ = ("invocation", "replayed")
    INVOCATION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    invocation: _invocation_pb2.Invocation
    replayed: bool
    def __init__(self, invocation: _Optional[_Union[_invocation_pb2.Invocation, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class InvokeConnectorStreamRequest(_message.Message):
    __slots__ = ("platform", "tenant", "instance_id", "workflow_id", "context", "trace_id", "idempotency_key", "user_id", "timeout")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    platform: str
    tenant: str
    instance_id: str
    workflow_id: str
    context: _struct_pb2.Struct
    trace_id: str
    idempotency_key: str
    user_id: str
    timeout: _duration_pb2.Duration
    def __init__(self, platform: _Optional[str] = ..., tenant: _Optional[str] = ..., instance_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., trace_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., user_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class InvokeConnectorStreamResponse(_message.Message):
    __slots__ = ("chunk", "final", "end")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    chunk: _invocation_pb2.InvocationChunk
    final: _invocation_pb2.Invocation
    end: _common_pb2.StreamEnd
    def __init__(self, chunk: _Optional[_Union[_invocation_pb2.InvocationChunk, _Mapping]] = ..., final: _Optional[_Union[_invocation_pb2.Invocation, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.StreamEnd, _Mapping]] = ...) -> None: ...

class GetInvocationRequest(_message.Message):
    __slots__ = ("platform", "invocation_id")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    platform: str
    invocation_id: str
    def __init__(self, platform: _Optional[str] = ..., invocation_id: _Optional[str] = ...) -> None: ...

class GetInvocationResponse(_message.Message):
    __slots__ = ("invocation",)
    INVOCATION_FIELD_NUMBER: _ClassVar[int]
    invocation: _invocation_pb2.Invocation
    def __init__(self, invocation: _Optional[_Union[_invocation_pb2.Invocation, _Mapping]] = ...) -> None: ...

class ListInvocationsRequest(_message.Message):
    __slots__ = ("platform", "page_size", "page_token", "state", "instance_id", "workflow_id", "trace_id")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    platform: str
    page_size: int
    page_token: str
    state: _invocation_pb2.InvocationState
    instance_id: str
    workflow_id: str
    trace_id: str
    def __init__(self, platform: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[_invocation_pb2.InvocationState, str]] = ..., instance_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., trace_id: _Optional[str] = ...) -> None: ...

class ListInvocationsResponse(_message.Message):
    __slots__ = ("invocations", "next_page_token")
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invocations: _containers.RepeatedCompositeFieldContainer[_invocation_pb2.Invocation]
    next_page_token: str
    def __init__(self, invocations: _Optional[_Iterable[_Union[_invocation_pb2.Invocation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelInvocationRequest(_message.Message):
    __slots__ = ("platform", "invocation_id", "reason")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    platform: str
    invocation_id: str
    reason: str
    def __init__(self, platform: _Optional[str] = ..., invocation_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelInvocationResponse(_message.Message):
    __slots__ = ("invocation",)
    INVOCATION_FIELD_NUMBER: _ClassVar[int]
    invocation: _invocation_pb2.Invocation
    def __init__(self, invocation: _Optional[_Union[_invocation_pb2.Invocation, _Mapping]] = ...) -> None: ...

class ReceiveWebhookRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "body")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    body: _httpbody_pb2.HttpBody
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., body: _Optional[_Union[_httpbody_pb2.HttpBody, _Mapping]] = ...) -> None: ...

class ReceiveWebhookResponse(_message.Message):
    __slots__ = ("callback_id", "duplicate", "invocation_id")
    CALLBACK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    callback_id: str
    duplicate: bool
    invocation_id: str
    def __init__(self, callback_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., invocation_id: _Optional[str] = ...) -> None: ...

class WatchCallbacksRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "since_sequence", "max_events", "idle_timeout")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    since_sequence: int
    max_events: int
    idle_timeout: _duration_pb2.Duration
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., since_sequence: _Optional[int] = ..., max_events: _Optional[int] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchCallbacksResponse(_message.Message):
    __slots__ = ("event", "end")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    event: _callback_pb2.CallbackEvent
    end: _common_pb2.StreamEnd
    def __init__(self, event: _Optional[_Union[_callback_pb2.CallbackEvent, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.StreamEnd, _Mapping]] = ...) -> None: ...

class SetDegradeModeRequest(_message.Message):
    __slots__ = ("platform", "tenant", "mode", "timeout", "reason", "local_capability_id")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    platform: str
    tenant: str
    mode: _degrade_pb2.DegradeMode
    timeout: _duration_pb2.Duration
    reason: str
    local_capability_id: str
    def __init__(self, platform: _Optional[str] = ..., tenant: _Optional[str] = ..., mode: _Optional[_Union[_degrade_pb2.DegradeMode, str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ..., local_capability_id: _Optional[str] = ...) -> None: ...

class SetDegradeModeResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _degrade_pb2.DegradeState
    def __init__(self, state: _Optional[_Union[_degrade_pb2.DegradeState, _Mapping]] = ...) -> None: ...

class GetDegradeStateRequest(_message.Message):
    __slots__ = ("platform", "tenant")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    platform: str
    tenant: str
    def __init__(self, platform: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class GetDegradeStateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _degrade_pb2.DegradeState
    def __init__(self, state: _Optional[_Union[_degrade_pb2.DegradeState, _Mapping]] = ...) -> None: ...

class ListDegradeHistoryRequest(_message.Message):
    __slots__ = ("platform", "tenant", "page_size", "page_token", "start_time")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    platform: str
    tenant: str
    page_size: int
    page_token: str
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, platform: _Optional[str] = ..., tenant: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDegradeHistoryResponse(_message.Message):
    __slots__ = ("states", "next_page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedCompositeFieldContainer[_degrade_pb2.DegradeState]
    next_page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_degrade_pb2.DegradeState, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListHumanTasksRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "platform", "assignee")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    ASSIGNEE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: _degrade_pb2.HumanTaskState
    platform: str
    assignee: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[_degrade_pb2.HumanTaskState, str]] = ..., platform: _Optional[str] = ..., assignee: _Optional[str] = ...) -> None: ...

class ListHumanTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_degrade_pb2.HumanTask]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_degrade_pb2.HumanTask, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ClaimHumanTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ClaimHumanTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _degrade_pb2.HumanTask
    def __init__(self, task: _Optional[_Union[_degrade_pb2.HumanTask, _Mapping]] = ...) -> None: ...

class CompleteHumanTaskRequest(_message.Message):
    __slots__ = ("task_id", "answer", "note")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    answer: _struct_pb2.Value
    note: str
    def __init__(self, task_id: _Optional[str] = ..., answer: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class CompleteHumanTaskResponse(_message.Message):
    __slots__ = ("task", "invocation")
    TASK_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_FIELD_NUMBER: _ClassVar[int]
    task: _degrade_pb2.HumanTask
    invocation: _invocation_pb2.Invocation
    def __init__(self, task: _Optional[_Union[_degrade_pb2.HumanTask, _Mapping]] = ..., invocation: _Optional[_Union[_invocation_pb2.Invocation, _Mapping]] = ...) -> None: ...

class ListFeatureFlagsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "name_prefix")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    name_prefix: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., name_prefix: _Optional[str] = ...) -> None: ...

class ListFeatureFlagsResponse(_message.Message):
    __slots__ = ("flags", "next_page_token")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[_callback_pb2.FeatureFlag]
    next_page_token: str
    def __init__(self, flags: _Optional[_Iterable[_Union[_callback_pb2.FeatureFlag, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListPlatformWorkflowsRequest(_message.Message):
    __slots__ = ("platform", "instance_id", "page_size", "page_token", "active_only")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    page_size: int
    page_token: str
    active_only: bool
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., active_only: _Optional[bool] = ...) -> None: ...

class ListPlatformWorkflowsResponse(_message.Message):
    __slots__ = ("workflows", "next_page_token")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[_connector_pb2.PlatformWorkflow]
    next_page_token: str
    def __init__(self, workflows: _Optional[_Iterable[_Union[_connector_pb2.PlatformWorkflow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CheckPlatformHealthRequest(_message.Message):
    __slots__ = ("platform", "instance_id")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    platform: str
    instance_id: str
    def __init__(self, platform: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...

class CheckPlatformHealthResponse(_message.Message):
    __slots__ = ("health", "message", "latency", "check_time", "error", "credential_status", "breaker_state")
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    health: _common_pb2.HealthState
    message: str
    latency: _duration_pb2.Duration
    check_time: _timestamp_pb2.Timestamp
    error: _invocation_pb2.PlatformError
    credential_status: _connector_pb2.CredentialStatus
    breaker_state: _degrade_pb2.BreakerState
    def __init__(self, health: _Optional[_Union[_common_pb2.HealthState, str]] = ..., message: _Optional[str] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[_invocation_pb2.PlatformError, _Mapping]] = ..., credential_status: _Optional[_Union[_connector_pb2.CredentialStatus, str]] = ..., breaker_state: _Optional[_Union[_degrade_pb2.BreakerState, str]] = ...) -> None: ...
