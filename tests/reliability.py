"""Shared helpers of the reliability suite (fuzzing, edge garbage, secret scan).

* The identity every reliability call carries, in one place (`call_metadata` / `rest_headers`), so that
  switching the suite from the development headers to an API key is a one-line change.
* The RPCs of the mesh, read from the descriptors (`mesh_methods`), so a new RPC is fuzzed without a
  change here.
* Hypothesis strategies that build any request message from its descriptor (`message_strategy`): right
  types, wrong-but-encodable values (huge, empty, unicode, control characters, extreme numbers, unknown
  enum numbers), nested and repeated fields, and well-known types with random content.
* Strategies for raw bytes sent as a serialized request (`raw_request_bytes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import (
    any_pb2,
    descriptor_pool,
    duration_pb2,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from servers.mesh import SERVICE_NAMES

# ---- the caller's identity -----------------------------------------------------------------------------

TENANT = "t1"
PRINCIPAL = "reliability"


def call_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata of every reliability call: one tenant, every scope.

    Development mode (`auth_required=False`) trusts these headers. When the suite runs with
    authentication on, return `(("authorization", f"Bearer {api_key}"),)` here instead.
    """
    return (("x-tenant-id", TENANT), ("x-principal", PRINCIPAL), ("x-scopes", "*"))


def rest_headers() -> dict[str, str]:
    """The same identity as HTTP headers for REST calls through the edge."""
    return dict(call_metadata())


# ---- reporting -----------------------------------------------------------------------------------------


def emit(config: Any, lines: list[str]) -> None:
    """Writes report lines to the terminal even when output is captured (figures for the notes)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    context = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
    with context:
        print("\n".join(lines), flush=True)


# ---- the RPCs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One RPC of the mesh, as the descriptors declare it."""

    service: str
    method: MethodDescriptor

    @property
    def path(self) -> str:
        """The gRPC path, `/package.Service/Method`."""
        return f"/{self.service}/{self.method.name}"

    @property
    def name(self) -> str:
        """`Service.Method`, short for reports."""
        return f"{self.service.rsplit('.', 1)[-1]}.{self.method.name}"

    @property
    def streaming(self) -> bool:
        """Whether either side streams (a deadline may legitimately end such a call)."""
        return bool(self.method.server_streaming or self.method.client_streaming)


def mesh_methods(service: str | None = None) -> list[Rpc]:
    """Every RPC of every service the mesh hosts (or of one service)."""
    pool = descriptor_pool.Default()
    out: list[Rpc] = []
    for name in SERVICE_NAMES:
        if service is not None and name != service:
            continue
        out.extend(Rpc(name, m) for m in pool.FindServiceByName(name).methods)
    return out


def message_class(descriptor: Descriptor) -> type[Message]:
    """The generated class of a message descriptor."""
    return GetMessageClass(descriptor)


# ---- value pools ---------------------------------------------------------------------------------------

# Identifiers the mesh and the fixtures use, so that some fuzzed requests get past validation and reach
# the stores and the platform clients rather than stopping at the first check.
PLAUSIBLE_STRINGS = (
    "t1",
    "t2",
    "n8n",
    "coze",
    "acme",
    "echo",
    "summarize",
    "mesh-invoke",
    "com.acme.crm",
    "crm.lead.create",
    "1.0.0",
    "2.1.0",
    "agent-1",
    "alice",
    "agent.connector.manage",
    "*",
    "grpc://127.0.0.1:9",
    "http://127.0.0.1:9/x",
    "https://127.0.0.1:9/",
    "mcp+http://127.0.0.1:9/mcp",
    "application/json",
    "ep-1",
    "run-1",
    "task-1",
    "{{context.q}}",
    "timeout",
    "workflow_ids",
    "display_name",
    "instance.base_url",
    "whsec_" + "A" * 43,
)
NASTY_STRINGS = (
    "",
    " ",
    "\x00",
    "\x00\x01\x02\x1b[31m",
    "\r\n\t\x0b\x0c",
    "\u202e\u200b\ufeff",
    "😀" * 16,
    "Ω≈ç√∫˜µ≤≥÷",
    "ﷺ" * 8,
    "../../../../etc/passwd",
    "' OR 1=1; DROP TABLE connector_instances; --",
    "%s%s%n%x",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
    "-1",
    "9" * 40,
    "NaN",
    "a" * 129,
    "a.b" * 100,
    "x" * 4096,
)
# Precomputed: drawing megabytes of text through hypothesis would dominate the run time.
HUGE_STRINGS = ("x" * 70_000, "é" * 300_000, "y" * 1_100_000)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)


def strings(*, huge: bool = False) -> st.SearchStrategy[str]:
    """Plausible, random and hostile strings (and huge ones when asked)."""
    choices = [
        st.sampled_from(PLAUSIBLE_STRINGS),
        st.text(max_size=40),
        st.sampled_from(NASTY_STRINGS),
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=8),
    ]
    if huge:
        choices.append(st.sampled_from(HUGE_STRINGS))
    return st.one_of(choices)


def binaries(*, huge: bool = False) -> st.SearchStrategy[bytes]:
    """Random, invalid UTF-8 and JSON-looking byte strings (and large ones when asked)."""
    fixed = [b"", b"\xff\xfe\xfd", b"\xc3\x28", b'{"invocation_id": "x", "ok": true}', b"[1,2,3]", b"null"]
    if huge:
        fixed += [b"z" * 1_100_000, b"{" * 70_000]
    return st.one_of(st.binary(max_size=64), st.sampled_from(fixed))


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({lo, hi, 0, 1, max(lo, -1), min(hi, 50), min(hi, 1000), min(hi, 1001), min(hi, 10**6)})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}


def _enum_numbers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    assert field.enum_type is not None
    known = [v.number for v in field.enum_type.values]
    unknown = [max(known) + 1, -1, 99, *INT32]
    return st.one_of(st.sampled_from(known), st.sampled_from(unknown), st.integers(*INT32))


def _scalar(field: FieldDescriptor, *, huge: bool = False) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        return _integers(*_INT_RANGES[t])
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return strings(huge=huge)
    if t == FieldDescriptor.TYPE_BYTES:
        return binaries(huge=huge)
    if t == FieldDescriptor.TYPE_ENUM:
        return _enum_numbers(field)
    raise AssertionError(f"no strategy for field type {t} of {field.full_name}")


# ---- well-known types ----------------------------------------------------------------------------------

_json_leaves: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from((0, -1, 2**53, 1e308)),
    strings(),
)
_json: st.SearchStrategy[Any] = st.recursive(
    _json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(strings(), st.just("")), inner, max_size=4)
    ),
    max_leaves=12,
)


def _nested(depth: int) -> dict[str, Any]:
    # Each level is Struct -> FieldsEntry -> Value: three message levels. Deep enough ones exceed the
    # parser's recursion limit (100) on the server.
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        doc = {"n": doc}
    return doc


def _struct() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(doc: dict[str, Any]) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(doc)
        return s

    docs = st.one_of(
        st.dictionaries(st.one_of(strings(), st.just("")), _json, max_size=5),
        st.sampled_from((10, 30, 40)).map(_nested),
    )
    return docs.map(build)


def _value() -> st.SearchStrategy[struct_pb2.Value]:
    def build(item: Any) -> struct_pb2.Value:
        holder = struct_pb2.Struct()
        holder.update({"v": item})
        return holder.fields["v"]

    return _json.map(build)


def _list_value() -> st.SearchStrategy[struct_pb2.ListValue]:
    def build(items: list[Any]) -> struct_pb2.ListValue:
        lv = struct_pb2.ListValue()
        lv.extend(items)
        return lv

    return st.lists(_json, max_size=5).map(build)


def _any() -> st.SearchStrategy[any_pb2.Any]:
    def packed(msg: Message) -> any_pb2.Any:
        a = any_pb2.Any()
        a.Pack(msg)
        return a

    random_any = st.builds(
        any_pb2.Any,
        type_url=st.one_of(
            strings(),
            st.sampled_from(
                (
                    "type.googleapis.com/google.protobuf.Struct",
                    "type.googleapis.com/powerx.nothing.v1.Nope",
                    "type.googleapis.com/google.rpc.ErrorInfo",
                )
            ),
        ),
        value=binaries(),
    )
    return st.one_of(random_any, _struct().map(packed), _seconds_nanos(duration_pb2.Duration).map(packed))


def _seconds_nanos(cls: type[Any]) -> st.SearchStrategy[Any]:
    # Valid, just out of range (Timestamp: 0001..9999, Duration: ±10000 years) and extreme values.
    seconds = st.one_of(
        st.sampled_from((0, 1, -1, 1_700_000_000, 253_402_300_800, -62_135_596_801, 315_576_000_001)),
        st.integers(*INT64),
    )
    nanos = st.one_of(st.sampled_from((0, 999_999_999, 1_000_000_000, -1)), st.integers(*INT32))
    return st.builds(cls, seconds=seconds, nanos=nanos)


def _field_mask() -> st.SearchStrategy[Message]:
    from google.protobuf import field_mask_pb2

    return st.builds(field_mask_pb2.FieldMask, paths=st.lists(strings(), max_size=5))


_WELL_KNOWN: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    "google.protobuf.Struct": _struct,
    "google.protobuf.Value": _value,
    "google.protobuf.ListValue": _list_value,
    "google.protobuf.Any": _any,
    "google.protobuf.Timestamp": lambda: _seconds_nanos(timestamp_pb2.Timestamp),
    "google.protobuf.Duration": lambda: _seconds_nanos(duration_pb2.Duration),
    "google.protobuf.FieldMask": _field_mask,
}


# ---- any message ---------------------------------------------------------------------------------------

MAX_DEPTH = 4
"""Message fields below this depth stay unset (the well-known types nest further on their own)."""


def _message_of(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and bool(_message_of(field).GetOptions().map_entry)


HUGE_DEPTH = 2
"""Singular string and bytes fields down to this depth may get megabyte values (repeated ones never:
a few hundred copies of a megabyte would measure the test's memory, not the server)."""


def _field_value(field: FieldDescriptor, depth: int, *, huge: bool = False) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(_message_of(field), depth + 1)
    return _scalar(field, huge=huge)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _set_field(draw: st.DrawFn, msg: Message, field: FieldDescriptor, depth: int) -> None:
    if _is_map(field):
        key_field = _message_of(field).fields_by_name["key"]
        value_field = _message_of(field).fields_by_name["value"]
        entries = draw(
            st.dictionaries(_scalar(key_field), _field_value(value_field, depth), max_size=4)
            if value_field.type != FieldDescriptor.TYPE_MESSAGE or depth < MAX_DEPTH
            else st.just({})
        )
        target = getattr(msg, field.name)
        for k, v in entries.items():
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE and depth >= MAX_DEPTH:
        return
    if _is_repeated(field):
        long_ok = field.type != FieldDescriptor.TYPE_MESSAGE
        size = (
            draw(st.one_of(st.integers(0, 4), st.sampled_from((50, 300))))
            if long_ok
            else draw(st.integers(0, 4))
        )
        items = draw(st.lists(_field_value(field, depth), min_size=min(size, 4), max_size=min(size, 4)))
        # Long lists repeat drawn items: cheap, and still exercises per-item limits and validation.
        while items and len(items) < size:
            items.extend(items[: size - len(items)])
        target = getattr(msg, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in items:  # not extend(): upb copies through a parse that caps the depth
                target.add().CopyFrom(item)
        else:
            target.extend(items)
        return
    value = draw(_field_value(field, depth, huge=depth <= HUGE_DEPTH))
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(msg, field.name).CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with a random subset of fields set to random values."""
    if descriptor.full_name in _WELL_KNOWN:
        return _WELL_KNOWN[descriptor.full_name]()
    cls = message_class(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for field in descriptor.fields:
            if field.containing_oneof is not None:
                continue  # set below, at most one per oneof
            if draw(st.booleans()):
                _set_field(draw, msg, field, depth)
        for oneof in descriptor.oneofs:
            if oneof.name.startswith("_"):  # proto3 `optional`: a synthetic oneof of one field
                for field in oneof.fields:
                    if draw(st.booleans()):
                        _set_field(draw, msg, field, depth)
                continue
            choice = draw(st.none() | st.sampled_from(list(oneof.fields)))
            if choice is not None:
                _set_field(draw, msg, choice, depth)
        return msg

    return build()


MAX_REQUEST_BYTES = 6 * 1024 * 1024
"""Generated requests stay below this (above the mesh's 4 MiB limit, so that one is tested too)."""


def request_strategy(rpc: Rpc) -> st.SearchStrategy[list[bytes]]:
    """Serialized requests for an RPC: one message, or a few for a client stream."""
    messages = (
        message_strategy(rpc.method.input_type)
        .filter(lambda m: m.ByteSize() <= MAX_REQUEST_BYTES)
        .map(lambda m: m.SerializeToString())
    )
    if rpc.method.client_streaming:
        return st.lists(messages, max_size=3)
    return messages.map(lambda b: [b])


# ---- raw bytes -----------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _hostile_wire() -> Iterator[bytes]:
    yield b""
    yield b"\xff" * 12  # a varint that never ends
    yield b"\x08" + b"\x80" * 11 + b"\x01"  # an over-long varint
    yield b"\x0a" + _varint(2**31)  # a length far beyond the buffer
    yield b"\x0a\x05ab"  # a truncated length-delimited field
    yield b"\x0a\x02\xc3\x28"  # invalid UTF-8 in field 1 (a string in most requests)
    yield b"\x0b" * 200 + b"\x0c" * 200  # nested start/end groups beyond the recursion limit
    yield b"\x0b"  # an unterminated group
    yield b"\x0c"  # an end-group without a start
    yield b"\x07"  # wire type 7 does not exist
    yield b"\x00\x01"  # field number 0 is invalid
    yield b"\xfa\xff\xff\xff\x0f\x00"  # the largest field number, empty
    yield b"\x0a\x80\x80\x80\x80\x10"  # length overflowing 32 bits
    depth = b""
    for _ in range(120):  # field 1 nested 120 times as a message
        depth = b"\x0a" + _varint(len(depth)) + depth
    yield depth


HOSTILE_WIRE = tuple(_hostile_wire())


def raw_request_bytes(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Byte strings sent as the serialized request: random, hostile, and mutated valid encodings."""

    def mutate(args: tuple[bytes, int, int, bool]) -> bytes:
        data, pos, byte, truncate = args
        if not data:
            return bytes([byte])
        pos %= len(data)
        if truncate:
            return data[:pos]
        return data[:pos] + bytes([byte]) + data[pos + 1 :]

    valid = request_strategy(rpc).map(lambda msgs: msgs[0] if msgs else b"")
    return st.one_of(
        st.binary(max_size=256),
        st.sampled_from(HOSTILE_WIRE),
        st.tuples(valid, st.integers(0, 10_000), st.integers(0, 255), st.booleans()).map(mutate),
    )
