"""Transport-free core: declared capabilities, their handlers, and how a call runs.

The gRPC servicer and the HTTP app are thin adapters over `Dispatcher`: they parse a request, build a
`CallInfo`, ask the dispatcher, and turn its answer or its `ProviderError` into their wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2

from powerx.registry.v1 import capability_pb2
from sdk._contract import provider_pb2
from sdk.call import CallInfo
from sdk.errors import ProviderError, internal_error

log = logging.getLogger("powerx.sdk")

UnaryHandler = Callable[[dict[str, Any], CallInfo], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any], CallInfo], AsyncIterator[Any]]

CAPABILITY_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,190}[a-z0-9])?$")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
# Largest integer a double holds exactly: integral numbers up to it reach handlers as int.
_MAX_EXACT_INT = 2**53


def semver_key(version: str) -> tuple[int, int, int, int, str]:
    """Sort key of a semantic version: releases after their pre-releases."""
    match = SEMVER_RE.match(version)
    if match is None:
        return (-1, -1, -1, 0, version)
    major, minor, patch, pre = match.group(1), match.group(2), match.group(3), match.group(4)
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


@dataclass(frozen=True)
class CapabilitySpec:
    """One declared capability: what is announced and the handler that serves it.

    Attributes:
        capability_id: Dotted identifier, such as `crm.lead.create`.
        version: Semantic version, such as `1.0.0`.
        handler: The async function (unary) or async generator function (streaming).
        streaming: Whether the handler yields chunks.
        scope: Scope a caller must hold (`security.scope`), or empty.
        idempotent: Whether calling it twice with the same arguments is safe.
        display_name: Human-readable name.
        description: What it does.
        input_schema: JSON Schema of the arguments, or None.
        output_schema: JSON Schema of the result, or None.
        cost: Relative cost per call.
        labels: Free-form labels.
        tenant_scopes: Tenants allowed to call it besides the owner (`*` for all).
        routing: How the router chooses among its endpoints (weights, margin, panic threshold,
            attempts, transport order), or None for the router's defaults.
    """

    capability_id: str
    version: str
    handler: UnaryHandler | StreamHandler
    streaming: bool
    scope: str = ""
    idempotent: bool = False
    display_name: str = ""
    description: str = ""
    input_schema: Mapping[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None
    cost: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    tenant_scopes: Sequence[str] = ()
    routing: capability_pb2.RoutingPolicy | None = None

    def to_proto(self) -> capability_pb2.Capability:
        """The capability as announced to the registry."""
        cap = capability_pb2.Capability(
            capability_id=self.capability_id,
            version=self.version,
            display_name=self.display_name,
            description=self.description,
            security=capability_pb2.CapabilitySecurity(scope=self.scope),
            idempotent=self.idempotent,
            streaming=self.streaming,
            cost=self.cost,
            labels=dict(self.labels),
            tenant_scopes=list(self.tenant_scopes),
        )
        if self.routing is not None:
            cap.routing.CopyFrom(self.routing)
        if self.input_schema is not None:
            json_format.ParseDict(dict(self.input_schema), cap.input_schema)
        if self.output_schema is not None:
            json_format.ParseDict(dict(self.output_schema), cap.output_schema)
        return cap


def to_python(value: struct_pb2.Value) -> Any:
    """A protobuf Value as plain JSON-like Python; integral numbers become int."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= _MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A protobuf Struct as a plain dict (see `to_python`)."""
    return {key: to_python(v) for key, v in struct.fields.items()}


def to_value(result: Any) -> struct_pb2.Value:
    """A JSON-like Python result (or a protobuf message) as a protobuf Value.

    Raises:
        TypeError: The result is not JSON-like (for example bytes or a set).
    """
    if isinstance(result, struct_pb2.Value):
        return result
    if isinstance(result, Message):
        result = json_format.MessageToDict(result)
    value = struct_pb2.Value()
    try:
        json_format.ParseDict(result, value)
    except json_format.ParseError as exc:
        raise TypeError(f"result of type {type(result).__name__} is not JSON-like: {exc}") from exc
    return value


def to_chunk(item: Any) -> provider_pb2.InvokeStreamResponse:
    """One yielded item as a stream chunk: str -> text, bytes -> raw, anything else -> data."""
    if isinstance(item, provider_pb2.InvokeStreamResponse):
        return item
    if isinstance(item, str):
        return provider_pb2.InvokeStreamResponse(text=item)
    if isinstance(item, bytes | bytearray | memoryview):
        return provider_pb2.InvokeStreamResponse(raw=bytes(item))
    return provider_pb2.InvokeStreamResponse(data=to_value(item))


def _deadline_error(call: CallInfo) -> ProviderError:
    return ProviderError(
        code_pb2.DEADLINE_EXCEEDED,
        f"capability {call.capability_id} did not finish before the caller's deadline",
        reason="DEADLINE_EXCEEDED",
    )


def _loop_deadline(call: CallInfo) -> float | None:
    """The call's deadline on the event loop's clock, for asyncio.timeout_at."""
    if call.deadline is None:
        return None
    return asyncio.get_running_loop().time() + (call.deadline - time.monotonic())


class Dispatcher:
    """Holds the declared capabilities and runs calls against them."""

    def __init__(self, provider_id: str) -> None:
        self.provider_id = provider_id
        self._specs: dict[str, dict[str, CapabilitySpec]] = {}

    def add(self, spec: CapabilitySpec) -> None:
        """Declares a capability.

        Raises:
            ValueError: The same capability id and version is declared twice.
        """
        versions = self._specs.setdefault(spec.capability_id, {})
        if spec.version in versions:
            raise ValueError(f"capability {spec.capability_id} {spec.version} is declared twice")
        versions[spec.version] = spec

    @property
    def specs(self) -> list[CapabilitySpec]:
        """Every declared capability, ordered by id and version."""
        return [
            self._specs[cap_id][version]
            for cap_id in sorted(self._specs)
            for version in sorted(self._specs[cap_id], key=semver_key)
        ]

    def resolve(self, capability_id: str, version: str, *, streaming: bool) -> CapabilitySpec:
        """Finds the capability a call names; without a version, the highest one.

        Raises:
            ProviderError: INVALID_ARGUMENT without a capability id, NOT_FOUND for an unknown capability
                or version, FAILED_PRECONDITION for a unary capability called as a stream or the reverse.
        """
        if not capability_id:
            raise ProviderError(
                code_pb2.INVALID_ARGUMENT, "capability_id is required", reason="INVALID_ARGUMENT"
            )
        versions = self._specs.get(capability_id)
        if not versions:
            raise ProviderError(
                code_pb2.NOT_FOUND,
                f"capability {capability_id} is not served by provider {self.provider_id}",
                reason="CAPABILITY_NOT_FOUND",
                metadata={"capability_id": capability_id},
            )
        if version:
            spec = versions.get(version)
            if spec is None:
                raise ProviderError(
                    code_pb2.NOT_FOUND,
                    f"capability {capability_id} {version} is not served by provider {self.provider_id}",
                    reason="CAPABILITY_VERSION_NOT_FOUND",
                    metadata={"capability_id": capability_id, "version": version},
                )
        else:
            spec = versions[max(versions, key=semver_key)]
        if spec.streaming != streaming:
            kind, how = ("streaming", "InvokeStream") if spec.streaming else ("unary", "Invoke")
            raise ProviderError(
                code_pb2.FAILED_PRECONDITION,
                f"capability {capability_id} is {kind}; call it with {how}",
                reason="STREAMING_MISMATCH",
                metadata={"capability_id": capability_id, "streaming": str(spec.streaming).lower()},
            )
        return spec

    async def invoke(
        self, spec: CapabilitySpec, arguments: struct_pb2.Struct, call: CallInfo
    ) -> struct_pb2.Value:
        """Runs a unary handler within the caller's deadline and returns its result as a Value.

        Raises:
            ProviderError: The handler's own, DEADLINE_EXCEEDED, or INTERNAL for anything unexpected.
        """
        handler: UnaryHandler = spec.handler  # type: ignore[assignment]
        args = struct_to_dict(arguments)
        timeout = asyncio.timeout_at(_loop_deadline(call))
        try:
            async with timeout:
                result = await handler(args, call)
            return to_value(result)
        except ProviderError:
            raise
        except TimeoutError:
            if timeout.expired():
                raise _deadline_error(call) from None
            raise self.unexpected(call) from None
        except Exception:
            raise self.unexpected(call) from None

    async def stream(
        self, spec: CapabilitySpec, arguments: struct_pb2.Struct, call: CallInfo
    ) -> AsyncGenerator[provider_pb2.InvokeStreamResponse, None]:
        """Runs a streaming handler, yielding its items as chunks, each within the caller's deadline.

        The handler's generator is closed however the stream ends (completion, error or the caller
        going away), so its `finally` blocks run.

        Raises:
            ProviderError: The handler's own, DEADLINE_EXCEEDED, or INTERNAL for anything unexpected.
        """
        handler: StreamHandler = spec.handler  # type: ignore[assignment]
        items = handler(struct_to_dict(arguments), call)
        deadline = _loop_deadline(call)
        try:
            while True:
                # A timeout per step, not around the loop: the consumer runs between steps.
                timeout = asyncio.timeout_at(deadline)
                try:
                    async with timeout:
                        item = await anext(items)
                    chunk = to_chunk(item)
                except StopAsyncIteration:
                    return
                except ProviderError:
                    raise
                except TimeoutError:
                    if timeout.expired():
                        raise _deadline_error(call) from None
                    raise self.unexpected(call) from None
                except Exception:
                    raise self.unexpected(call) from None
                yield chunk
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def unexpected(self, call: CallInfo) -> ProviderError:
        """Logs the exception being handled and returns the generic INTERNAL error for the caller."""
        log.exception(
            "capability %s failed",
            call.capability_id,
            extra={
                "provider_id": self.provider_id,
                "capability_id": call.capability_id,
                "request_id": call.request_id,
                "tenant_id": call.tenant_id,
                "trace_id": call.trace_id,
            },
        )
        return internal_error(call.request_id)
