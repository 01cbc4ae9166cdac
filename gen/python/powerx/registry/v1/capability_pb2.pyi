import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from powerx.common.v1 import common_pb2 as _common_pb2
from powerx.registry.v1 import endpoint_pb2 as _endpoint_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capability(_message.Message):
    __slots__ = ("capability_id", "version", "provider_id", "tenant_id", "tenant_scopes", "display_name", "description", "security", "input_schema", "output_schema", "idempotent", "streaming", "cost", "observability", "labels", "endpoints", "create_time", "update_time", "revision", "routing")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_SCOPES_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    OBSERVABILITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    capability_id: str
    version: str
    provider_id: str
    tenant_id: str
    tenant_scopes: _containers.RepeatedScalarFieldContainer[str]
    display_name: str
    description: str
    security: CapabilitySecurity
    input_schema: _struct_pb2.Struct
    output_schema: _struct_pb2.Struct
    idempotent: bool
    streaming: bool
    cost: float
    observability: ObservabilityOptions
    labels: _containers.ScalarMap[str, str]
    endpoints: _containers.RepeatedCompositeFieldContainer[_endpoint_pb2.Endpoint]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    revision: int
    routing: RoutingPolicy
    def __init__(self, capability_id: _Optional[str] = ..., version: _Optional[str] = ..., provider_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., tenant_scopes: _Optional[_Iterable[str]] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., security: _Optional[_Union[CapabilitySecurity, _Mapping]] = ..., input_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., idempotent: _Optional[bool] = ..., streaming: _Optional[bool] = ..., cost: _Optional[float] = ..., observability: _Optional[_Union[ObservabilityOptions, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., endpoints: _Optional[_Iterable[_Union[_endpoint_pb2.Endpoint, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., routing: _Optional[_Union[RoutingPolicy, _Mapping]] = ...) -> None: ...

class RoutingPolicy(_message.Message):
    __slots__ = ("health_weight", "latency_weight", "cost_weight", "region_weight", "candidate_margin", "panic_threshold", "max_attempts", "transport_order")
    HEALTH_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REGION_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    PANIC_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_ORDER_FIELD_NUMBER: _ClassVar[int]
    health_weight: float
    latency_weight: float
    cost_weight: float
    region_weight: float
    candidate_margin: float
    panic_threshold: float
    max_attempts: int
    transport_order: _containers.RepeatedScalarFieldContainer[_common_pb2.Transport]
    def __init__(self, health_weight: _Optional[float] = ..., latency_weight: _Optional[float] = ..., cost_weight: _Optional[float] = ..., region_weight: _Optional[float] = ..., candidate_margin: _Optional[float] = ..., panic_threshold: _Optional[float] = ..., max_attempts: _Optional[int] = ..., transport_order: _Optional[_Iterable[_Union[_common_pb2.Transport, str]]] = ...) -> None: ...

class CapabilitySecurity(_message.Message):
    __slots__ = ("scope", "masked_fields")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    scope: str
    masked_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scope: _Optional[str] = ..., masked_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class ObservabilityOptions(_message.Message):
    __slots__ = ("tracing", "metrics")
    TRACING_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    tracing: bool
    metrics: bool
    def __init__(self, tracing: _Optional[bool] = ..., metrics: _Optional[bool] = ...) -> None: ...
