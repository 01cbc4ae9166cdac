import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from powerx.common.v1 import common_pb2 as _common_pb2
from powerx.registry.v1 import capability_pb2 as _capability_pb2
from powerx.registry.v1 import endpoint_pb2 as _endpoint_pb2
from powerx.registry.v1 import provider_pb2 as _provider_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegistryEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRY_EVENT_TYPE_UNSPECIFIED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_PROVIDER_ANNOUNCED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_PROVIDER_WITHDRAWN: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_PROVIDER_EXPIRED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_CAPABILITY_UPSERTED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_CAPABILITY_REMOVED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_ENDPOINT_UPSERTED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_ENDPOINT_REMOVED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_ENDPOINT_HEALTH_CHANGED: _ClassVar[RegistryEventType]
REGISTRY_EVENT_TYPE_UNSPECIFIED: RegistryEventType
REGISTRY_EVENT_TYPE_PROVIDER_ANNOUNCED: RegistryEventType
REGISTRY_EVENT_TYPE_PROVIDER_WITHDRAWN: RegistryEventType
REGISTRY_EVENT_TYPE_PROVIDER_EXPIRED: RegistryEventType
REGISTRY_EVENT_TYPE_CAPABILITY_UPSERTED: RegistryEventType
REGISTRY_EVENT_TYPE_CAPABILITY_REMOVED: RegistryEventType
REGISTRY_EVENT_TYPE_ENDPOINT_UPSERTED: RegistryEventType
REGISTRY_EVENT_TYPE_ENDPOINT_REMOVED: RegistryEventType
REGISTRY_EVENT_TYPE_ENDPOINT_HEALTH_CHANGED: RegistryEventType

class RegistryEvent(_message.Message):
    __slots__ = ("revision", "type", "event_time", "tenant_id", "provider_id", "capability_id", "endpoint_id", "provider", "capability", "endpoint", "previous_health", "reason", "request_id")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_HEALTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: RegistryEventType
    event_time: _timestamp_pb2.Timestamp
    tenant_id: str
    provider_id: str
    capability_id: str
    endpoint_id: str
    provider: _provider_pb2.Provider
    capability: _capability_pb2.Capability
    endpoint: _endpoint_pb2.Endpoint
    previous_health: _common_pb2.HealthState
    reason: str
    request_id: str
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[_Union[RegistryEventType, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant_id: _Optional[str] = ..., provider_id: _Optional[str] = ..., capability_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., capability: _Optional[_Union[_capability_pb2.Capability, _Mapping]] = ..., endpoint: _Optional[_Union[_endpoint_pb2.Endpoint, _Mapping]] = ..., previous_health: _Optional[_Union[_common_pb2.HealthState, str]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
