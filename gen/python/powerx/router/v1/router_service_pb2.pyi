import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from powerx.common.v1 import common_pb2 as _common_pb2
from powerx.registry.v1 import endpoint_pb2 as _endpoint_pb2
from powerx.router.v1 import route_pb2 as _route_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResolveEndpointRequest(_message.Message):
    __slots__ = ("capability_id", "version", "prefer", "only", "region", "explain", "exclude_endpoint_ids")
    CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREFER_FIELD_NUMBER: _ClassVar[int]
    ONLY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ENDPOINT_IDS_FIELD_NUMBER: _ClassVar[int]
    capability_id: str
    version: str
    prefer: _route_pb2.RoutePreference
    only: _route_pb2.RoutePreference
    region: str
    explain: bool
    exclude_endpoint_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, capability_id: _Optional[str] = ..., version: _Optional[str] = ..., prefer: _Optional[_Union[_route_pb2.RoutePreference, _Mapping]] = ..., only: _Optional[_Union[_route_pb2.RoutePreference, _Mapping]] = ..., region: _Optional[str] = ..., explain: _Optional[bool] = ..., exclude_endpoint_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ResolveEndpointResponse(_message.Message):
    __slots__ = ("endpoint", "version", "candidates", "panic", "route_token", "version_fallback")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PANIC_FIELD_NUMBER: _ClassVar[int]
    ROUTE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    endpoint: _endpoint_pb2.Endpoint
    version: str
    candidates: _containers.RepeatedCompositeFieldContainer[_route_pb2.Candidate]
    panic: bool
    route_token: str
    version_fallback: bool
    def __init__(self, endpoint: _Optional[_Union[_endpoint_pb2.Endpoint, _Mapping]] = ..., version: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[_route_pb2.Candidate, _Mapping]]] = ..., panic: _Optional[bool] = ..., route_token: _Optional[str] = ..., version_fallback: _Optional[bool] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("capability_id", "version", "arguments", "prefer", "only", "region", "idempotency_key", "explain")
    CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    PREFER_FIELD_NUMBER: _ClassVar[int]
    ONLY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    capability_id: str
    version: str
    arguments: _struct_pb2.Struct
    prefer: _route_pb2.RoutePreference
    only: _route_pb2.RoutePreference
    region: str
    idempotency_key: str
    explain: bool
    def __init__(self, capability_id: _Optional[str] = ..., version: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., prefer: _Optional[_Union[_route_pb2.RoutePreference, _Mapping]] = ..., only: _Optional[_Union[_route_pb2.RoutePreference, _Mapping]] = ..., region: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., explain: _Optional[bool] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("result", "endpoint", "version", "attempts", "latency", "candidates")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    result: _struct_pb2.Value
    endpoint: _endpoint_pb2.Endpoint
    version: str
    attempts: _containers.RepeatedCompositeFieldContainer[_route_pb2.Attempt]
    latency: _duration_pb2.Duration
    candidates: _containers.RepeatedCompositeFieldContainer[_route_pb2.Candidate]
    def __init__(self, result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., endpoint: _Optional[_Union[_endpoint_pb2.Endpoint, _Mapping]] = ..., version: _Optional[str] = ..., attempts: _Optional[_Iterable[_Union[_route_pb2.Attempt, _Mapping]]] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[_route_pb2.Candidate, _Mapping]]] = ...) -> None: ...

class InvokeStreamRequest(_message.Message):
    __slots__ = ("capability_id", "version", "arguments", "prefer", "only", "region", "idempotency_key")
    CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    PREFER_FIELD_NUMBER: _ClassVar[int]
    ONLY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    capability_id: str
    version: str
    arguments: _struct_pb2.Struct
    prefer: _route_pb2.RoutePreference
    only: _route_pb2.RoutePreference
    region: str
    idempotency_key: str
    def __init__(self, capability_id: _Optional[str] = ..., version: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., prefer: _Optional[_Union[_route_pb2.RoutePreference, _Mapping]] = ..., only: _Optional[_Union[_route_pb2.RoutePreference, _Mapping]] = ..., region: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class InvokeStreamResponse(_message.Message):
    __slots__ = ("chunk", "end")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    chunk: StreamChunk
    end: _common_pb2.StreamEnd
    def __init__(self, chunk: _Optional[_Union[StreamChunk, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.StreamEnd, _Mapping]] = ...) -> None: ...

class StreamChunk(_message.Message):
    __slots__ = ("sequence", "data", "text", "raw", "endpoint_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    data: _struct_pb2.Value
    text: str
    raw: bytes
    endpoint_id: str
    def __init__(self, sequence: _Optional[int] = ..., data: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., text: _Optional[str] = ..., raw: _Optional[bytes] = ..., endpoint_id: _Optional[str] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("endpoint_id", "capability_id", "code", "latency", "route_token")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    capability_id: str
    code: int
    latency: _duration_pb2.Duration
    route_token: str
    def __init__(self, endpoint_id: _Optional[str] = ..., capability_id: _Optional[str] = ..., code: _Optional[int] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., route_token: _Optional[str] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("latency_ewma_ms", "ejected")
    LATENCY_EWMA_MS_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FIELD_NUMBER: _ClassVar[int]
    latency_ewma_ms: float
    ejected: bool
    def __init__(self, latency_ewma_ms: _Optional[float] = ..., ejected: _Optional[bool] = ...) -> None: ...
