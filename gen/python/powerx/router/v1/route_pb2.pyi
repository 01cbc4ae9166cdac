import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from powerx.common.v1 import common_pb2 as _common_pb2
from powerx.registry.v1 import endpoint_pb2 as _endpoint_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoutePreference(_message.Message):
    __slots__ = ("transports", "regions")
    TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    transports: _containers.RepeatedScalarFieldContainer[_common_pb2.Transport]
    regions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, transports: _Optional[_Iterable[_Union[_common_pb2.Transport, str]]] = ..., regions: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreParts(_message.Message):
    __slots__ = ("health", "latency", "cost", "region")
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    health: float
    latency: float
    cost: float
    region: float
    def __init__(self, health: _Optional[float] = ..., latency: _Optional[float] = ..., cost: _Optional[float] = ..., region: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("endpoint", "version", "score", "parts", "selected", "dropped_reason")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_REASON_FIELD_NUMBER: _ClassVar[int]
    endpoint: _endpoint_pb2.Endpoint
    version: str
    score: float
    parts: ScoreParts
    selected: bool
    dropped_reason: str
    def __init__(self, endpoint: _Optional[_Union[_endpoint_pb2.Endpoint, _Mapping]] = ..., version: _Optional[str] = ..., score: _Optional[float] = ..., parts: _Optional[_Union[ScoreParts, _Mapping]] = ..., selected: _Optional[bool] = ..., dropped_reason: _Optional[str] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("endpoint_id", "transport", "code", "message", "latency")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    transport: _common_pb2.Transport
    code: int
    message: str
    latency: _duration_pb2.Duration
    def __init__(self, endpoint_id: _Optional[str] = ..., transport: _Optional[_Union[_common_pb2.Transport, str]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
