import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from powerx.common.v1 import common_pb2 as _common_pb2
from powerx.registry.v1 import capability_pb2 as _capability_pb2
from powerx.registry.v1 import endpoint_pb2 as _endpoint_pb2
from powerx.registry.v1 import event_pb2 as _event_pb2
from powerx.registry.v1 import provider_pb2 as _provider_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnnounceProviderRequest(_message.Message):
    __slots__ = ("provider", "capabilities", "endpoints", "lease_ttl")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    provider: _provider_pb2.Provider
    capabilities: _containers.RepeatedCompositeFieldContainer[_capability_pb2.Capability]
    endpoints: _containers.RepeatedCompositeFieldContainer[_endpoint_pb2.Endpoint]
    lease_ttl: _duration_pb2.Duration
    def __init__(self, provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., capabilities: _Optional[_Iterable[_Union[_capability_pb2.Capability, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[_endpoint_pb2.Endpoint, _Mapping]]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AnnounceProviderResponse(_message.Message):
    __slots__ = ("provider", "capabilities", "endpoints", "changed", "revision")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    provider: _provider_pb2.Provider
    capabilities: _containers.RepeatedCompositeFieldContainer[_capability_pb2.Capability]
    endpoints: _containers.RepeatedCompositeFieldContainer[_endpoint_pb2.Endpoint]
    changed: bool
    revision: int
    def __init__(self, provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., capabilities: _Optional[_Iterable[_Union[_capability_pb2.Capability, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[_endpoint_pb2.Endpoint, _Mapping]]] = ..., changed: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class WithdrawProviderRequest(_message.Message):
    __slots__ = ("provider_id", "reason")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    reason: str
    def __init__(self, provider_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WithdrawProviderResponse(_message.Message):
    __slots__ = ("provider", "revision")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    provider: _provider_pb2.Provider
    revision: int
    def __init__(self, provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class RenewProviderLeaseRequest(_message.Message):
    __slots__ = ("provider_id", "lease_ttl")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    lease_ttl: _duration_pb2.Duration
    def __init__(self, provider_id: _Optional[str] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RenewProviderLeaseResponse(_message.Message):
    __slots__ = ("provider", "revision")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    provider: _provider_pb2.Provider
    revision: int
    def __init__(self, provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetProviderRequest(_message.Message):
    __slots__ = ("provider_id",)
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    def __init__(self, provider_id: _Optional[str] = ...) -> None: ...

class GetProviderResponse(_message.Message):
    __slots__ = ("provider", "capabilities", "endpoints")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    provider: _provider_pb2.Provider
    capabilities: _containers.RepeatedCompositeFieldContainer[_capability_pb2.Capability]
    endpoints: _containers.RepeatedCompositeFieldContainer[_endpoint_pb2.Endpoint]
    def __init__(self, provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., capabilities: _Optional[_Iterable[_Union[_capability_pb2.Capability, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[_endpoint_pb2.Endpoint, _Mapping]]] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: _provider_pb2.ProviderState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[_provider_pb2.ProviderState, str]] = ...) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("providers", "next_page_token")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[_provider_pb2.Provider]
    next_page_token: str
    def __init__(self, providers: _Optional[_Iterable[_Union[_provider_pb2.Provider, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCapabilityRequest(_message.Message):
    __slots__ = ("capability_id", "version", "provider_id")
    CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    capability_id: str
    version: str
    provider_id: str
    def __init__(self, capability_id: _Optional[str] = ..., version: _Optional[str] = ..., provider_id: _Optional[str] = ...) -> None: ...

class GetCapabilityResponse(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[_capability_pb2.Capability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[_capability_pb2.Capability, _Mapping]]] = ...) -> None: ...

class ListCapabilitiesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "provider_id", "transport", "health", "capability_id_prefix")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    provider_id: str
    transport: _common_pb2.Transport
    health: _common_pb2.HealthState
    capability_id_prefix: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., provider_id: _Optional[str] = ..., transport: _Optional[_Union[_common_pb2.Transport, str]] = ..., health: _Optional[_Union[_common_pb2.HealthState, str]] = ..., capability_id_prefix: _Optional[str] = ...) -> None: ...

class ListCapabilitiesResponse(_message.Message):
    __slots__ = ("capabilities", "next_page_token", "revision")
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[_capability_pb2.Capability]
    next_page_token: str
    revision: int
    def __init__(self, capabilities: _Optional[_Iterable[_Union[_capability_pb2.Capability, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ListRuntimeEndpointsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "provider_id", "capability_id", "transport", "health")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    provider_id: str
    capability_id: str
    transport: _common_pb2.Transport
    health: _common_pb2.HealthState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., provider_id: _Optional[str] = ..., capability_id: _Optional[str] = ..., transport: _Optional[_Union[_common_pb2.Transport, str]] = ..., health: _Optional[_Union[_common_pb2.HealthState, str]] = ...) -> None: ...

class ListRuntimeEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "next_page_token", "revision")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[_endpoint_pb2.Endpoint]
    next_page_token: str
    revision: int
    def __init__(self, endpoints: _Optional[_Iterable[_Union[_endpoint_pb2.Endpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class RefreshRegistryRequest(_message.Message):
    __slots__ = ("provider_id",)
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    def __init__(self, provider_id: _Optional[str] = ...) -> None: ...

class RefreshRegistryResponse(_message.Message):
    __slots__ = ("revision", "expired_provider_count", "stale_endpoint_count")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_PROVIDER_COUNT_FIELD_NUMBER: _ClassVar[int]
    STALE_ENDPOINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    revision: int
    expired_provider_count: int
    stale_endpoint_count: int
    def __init__(self, revision: _Optional[int] = ..., expired_provider_count: _Optional[int] = ..., stale_endpoint_count: _Optional[int] = ...) -> None: ...

class DeleteEndpointRequest(_message.Message):
    __slots__ = ("endpoint_id", "reason")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    reason: str
    def __init__(self, endpoint_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteEndpointResponse(_message.Message):
    __slots__ = ("endpoint", "revision")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    endpoint: _endpoint_pb2.Endpoint
    revision: int
    def __init__(self, endpoint: _Optional[_Union[_endpoint_pb2.Endpoint, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ImportMcpServerRequest(_message.Message):
    __slots__ = ("server_id", "uri", "tenant_scopes", "lease_ttl")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    TENANT_SCOPES_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    uri: str
    tenant_scopes: _containers.RepeatedScalarFieldContainer[str]
    lease_ttl: _duration_pb2.Duration
    def __init__(self, server_id: _Optional[str] = ..., uri: _Optional[str] = ..., tenant_scopes: _Optional[_Iterable[str]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ImportMcpServerResponse(_message.Message):
    __slots__ = ("provider", "capabilities")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    provider: _provider_pb2.Provider
    capabilities: _containers.RepeatedCompositeFieldContainer[_capability_pb2.Capability]
    def __init__(self, provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., capabilities: _Optional[_Iterable[_Union[_capability_pb2.Capability, _Mapping]]] = ...) -> None: ...

class WatchRegistryRequest(_message.Message):
    __slots__ = ("since_revision", "capability_ids", "provider_ids", "event_types", "max_events", "idle_timeout")
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_IDS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_IDS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    since_revision: int
    capability_ids: _containers.RepeatedScalarFieldContainer[str]
    provider_ids: _containers.RepeatedScalarFieldContainer[str]
    event_types: _containers.RepeatedScalarFieldContainer[_event_pb2.RegistryEventType]
    max_events: int
    idle_timeout: _duration_pb2.Duration
    def __init__(self, since_revision: _Optional[int] = ..., capability_ids: _Optional[_Iterable[str]] = ..., provider_ids: _Optional[_Iterable[str]] = ..., event_types: _Optional[_Iterable[_Union[_event_pb2.RegistryEventType, str]]] = ..., max_events: _Optional[int] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchRegistryResponse(_message.Message):
    __slots__ = ("event", "caught_up", "end")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    event: _event_pb2.RegistryEvent
    caught_up: WatchCaughtUp
    end: _common_pb2.StreamEnd
    def __init__(self, event: _Optional[_Union[_event_pb2.RegistryEvent, _Mapping]] = ..., caught_up: _Optional[_Union[WatchCaughtUp, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.StreamEnd, _Mapping]] = ...) -> None: ...

class WatchCaughtUp(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...
