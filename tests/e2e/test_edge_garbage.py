"""Garbage through the real Envoy edge: every REST route gets a 4xx, never a 5xx.

The routes come from the `google.api.http` options of the descriptors, so a new route is covered
without a change here. For each one the test sends, with plausible and with garbage path parameters:
random bytes, invalid JSON, arrays / strings / numbers where an object belongs, a wrong-typed value
for every field of the body, unknown fields, deeply nested JSON (top level and inside a Struct),
bodies beyond the edge's limit (with and without a content length), wrong content types, invalid
UTF-8, garbage query parameters, and methods the path does not have. Each probe says what it expects:
`4xx`, or (only where the garbage is legitimately ignored, e.g. a body on a GET) `not 5xx`. The
counts of probes, status codes and error-body content types are printed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import Edge
from tests.reliability import Rpc, emit, mesh_methods, rest_headers

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(300)]

CONCURRENCY = 16
STREAM_READ_S = 1.5  # a server stream's body is read this long, then dropped
STREAM_HEADERS_S = 3.0
# Deterministic random bytes, so a failure reproduces; set POWERX_FUZZ_SEED to explore.
RNG = random.Random(int(os.environ.get("POWERX_FUZZ_SEED", "20240601")))


# ---- routes from the descriptors --------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    rpc: Rpc
    verb: str
    template: str
    body: str  # "" (no body), "*" (the whole request) or the name of the request field in the body

    @property
    def params(self) -> list[str]:
        return [m.group(1) for m in _PARAM.finditer(self.template)]

    def body_message(self) -> Descriptor | None:
        """The message the body decodes into, or None when the route takes no body."""
        if not self.body:
            return None
        request = self.rpc.method.input_type
        if self.body == "*":
            return request
        return request.fields_by_name[self.body].message_type

    def body_fields(self) -> list[FieldDescriptor]:
        """Fields a client may put in the body (path parameters excluded for `*`)."""
        message = self.body_message()
        if message is None:
            return []
        skip = set(self.params) if self.body == "*" else set()
        return [f for f in message.fields if f.name not in skip]

    def path(self, values: dict[str, str]) -> str:
        return _PARAM.sub(lambda m: values[m.group(1)], self.template)


_PARAM = re.compile(r"\{([^}=]+)(?:=[^}]*)?\}")


def rest_routes() -> tuple[list[Route], list[str]]:
    """Every REST binding of every mesh RPC, and the RPCs that have none."""
    routes: list[Route] = []
    without: list[str] = []
    for rpc in mesh_methods():
        rule = rpc.method.GetOptions().Extensions[annotations_pb2.http]
        bound = False
        for binding in (rule, *rule.additional_bindings):
            pattern = binding.WhichOneof("pattern")
            if pattern is None:
                continue
            if pattern == "custom":
                verb, template = binding.custom.kind.upper(), binding.custom.path
            else:
                verb, template = pattern.upper(), getattr(binding, pattern)
            routes.append(Route(rpc, verb, template, binding.body))
            bound = True
        if not bound:
            without.append(rpc.name)
    return routes, without


# ---- probes -----------------------------------------------------------------------------------------------

PLAUSIBLE_PARAMS = {"platform": "n8n", "instance_id": "acme", "provider_id": "com.acme.crm"}
GARBAGE_PARAMS = (
    "%00",
    "%ff%fe",
    "..%2F..%2Fetc%2Fpasswd",
    "a" * 3000,
    quote("😀\u202e"),
    "%20",
    "%25zz",
    "-1",
    quote("' OR 1=1 --"),
)
BAD_JSON = (
    b"{",
    b'{"a":',
    b"nul",
    b'{"a": 1} trailing',
    b"\xef\xbb\xbf{}garbage",
    b'{"a": NaN}',
    b'{"a": 01}',
    b"{{}}",
)
# Bodies Envoy's transcoder accepts as an (empty) request: its JSON parser takes single quotes and a
# trailing comma, an empty body is an empty message, and it drops unknown fields without an option to
# refuse them (envoyproxy/envoy#46623). The mesh then judges the empty request: a 4xx wherever a field
# is required, a 2xx where none is (RefreshRegistry). So these only must not be a 5xx.
LENIENT_JSON = (b"{'single': 'quotes'}", b'{"a": 1,}', b"", b'{"no_such_field_anywhere": 1}')
NOT_OBJECTS = (b"[]", b"[1, 2]", b'"just a string"', b"42", b"true", b"null", b"-1e999")
CONTENT_TYPES = (
    "text/plain",
    "application/xml",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "application/json; charset=latin1",
    "image/png",
)


@dataclass
class Probe:
    route: Route
    label: str
    method: str
    url: str
    content: bytes | None = None
    content_type: str | None = "application/json"
    expect: str = "4xx"  # or "not 5xx"
    chunked: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)


def _wrong_values(f: FieldDescriptor) -> list[Any]:
    """JSON values of the wrong type for a field (none exists for google.protobuf.Value)."""
    if f.is_repeated and not (f.message_type and f.message_type.GetOptions().map_entry):
        return [{"x": 1}, "not a list"]
    if f.message_type is not None:
        name = f.message_type.full_name
        if f.message_type.GetOptions().map_entry:
            return [[1, 2], "not a map"]
        if name == "google.protobuf.Value":
            return []
        if name == "google.protobuf.Timestamp":
            return ["not-a-time", 42, "10000-01-01T00:00:00Z"]
        if name == "google.protobuf.Duration":
            return ["forever", "1h", 42]
        if name == "google.protobuf.FieldMask":
            return [42, {"paths": 1}]
        if name == "google.protobuf.Any":
            return [{"@type": "type.googleapis.com/powerx.nope.v1.Nope"}, 42]
        if name == "google.protobuf.ListValue":
            return [{"x": 1}, 42]
        return [42, "a string", [1]]
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        return [{"x": 1}, [1], 12]
    if t == FieldDescriptor.TYPE_BYTES:
        return ["!!!not base64***", {"x": 1}]
    if t == FieldDescriptor.TYPE_BOOL:
        return ["maybe", 2, {"x": 1}]
    if t == FieldDescriptor.TYPE_ENUM:
        return ["NOT_A_VALUE", 1.5, {"x": 1}]
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return ["abc", {"x": 1}, [1]]
    return ["abc", 1.5, "99999999999999999999999999", {"x": 1}]


def _nested(depth: int) -> bytes:
    return b'{"n":' * depth + b"1" + b"}" * depth


def probes(routes: list[Route], max_body: int) -> tuple[list[Probe], list[str]]:
    """Every probe for every route, and the (route, field) pairs for which no wrong type exists."""
    out: list[Probe] = []
    untestable: list[str] = []
    verbs_at: dict[str, set[str]] = {}
    for r in routes:
        generic = _PARAM.sub("{}", r.template)
        verbs_at.setdefault(generic, set()).add(r.verb)
    for r in routes:
        plausible = r.path({p: PLAUSIBLE_PARAMS.get(p, "x1") for p in r.params})

        def add(label: str, *, route: Route = r, url: str = plausible, **kw: Any) -> None:
            out.append(Probe(route, label, kw.pop("method", route.verb), url, **kw))

        # Garbage in the path, every parameter at once and one at a time.
        for i, garbage in enumerate(GARBAGE_PARAMS):
            if r.params:
                values = {p: GARBAGE_PARAMS[(i + j) % len(GARBAGE_PARAMS)] for j, p in enumerate(r.params)}
                add(
                    f"path:{garbage[:12]}",
                    url=r.path(values),
                    content=b"{}" if r.body else None,
                )
        # A method the path does not have.
        generic = _PARAM.sub("{}", r.template)
        other = next(v for v in ("PUT", "PATCH", "DELETE", "POST", "GET") if v not in verbs_at[generic])
        add("method", method=other, content=b"{}")
        # Query garbage (every route: unknown parameters are rejected on bodies' routes too).
        for q in ("no_such_parameter=1", "%zz=1", "x=%ff%fe", "a" * 62_000 + "=1"):
            add(f"query:{q[:16]}", url=f"{plausible}?{q}", content=b"{}" if r.body else None)
        # Empty parameters are no parameters: the request is whatever the path makes it.
        for q in ("=", "&&&"):
            add(
                f"query-empty:{q}",
                url=f"{plausible}?{q}",
                content=b"{}" if r.body else None,
                expect="not 5xx",
            )
        message = r.body_message()
        if message is None:
            for f in r.rpc.method.input_type.fields:
                if f.name in r.params or f.message_type is not None:
                    continue
                for wrong in ("abc", "99999999999999999999999", "%ff"):
                    if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES) and wrong != "%ff":
                        continue  # any text is a string; only invalid UTF-8 is wrong
                    add(f"query-type:{f.name}", url=f"{plausible}?{f.name}={wrong}")
            # A body where none belongs is ignored: it must not break anything.
            add("get-body", content=RNG.randbytes(64), expect="not 5xx")
            continue
        if message.full_name == "google.api.HttpBody":
            # Any bytes are a valid webhook body; the signature check refuses them.
            for body in (RNG.randbytes(256), *BAD_JSON, *NOT_OBJECTS, b"\xff\xfe\xfd"):
                add("webhook-body", content=body)
            add("webhook-oversized", content=b"x" * (max_body + 1))
            continue
        add("random-bytes", content=RNG.randbytes(64 + RNG.randrange(512)))
        add("random-bytes-big", content=RNG.randbytes(4096))
        for body in BAD_JSON:
            add(f"bad-json:{body[:10]!r}", content=body)
        for body in NOT_OBJECTS:
            add(f"not-object:{body.decode()}", content=body)
        for body in LENIENT_JSON:
            add(f"lenient-json:{body[:10]!r}", content=body, expect="not 5xx")
        add("deep-array", content=b"[" * 20_000 + b"]" * 20_000)
        add("deep-object", content=_nested(20_000))
        add("deep-object-200", content=_nested(200))
        fields = r.body_fields()
        for f in fields:
            if f.message_type is not None and f.message_type.full_name == "google.protobuf.Struct":
                deep = b'{"' + f.name.encode() + b'":' + _nested(150) + b"}"
                add(f"deep-struct:{f.name}", content=deep)
            wrongs = _wrong_values(f)
            if not wrongs:
                untestable.append(f"{r.rpc.name}.{f.name}")
            for wrong in wrongs:
                add(f"wrong-type:{f.name}", content=json.dumps({f.json_name: wrong}).encode())
        strings = [f for f in fields if f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated]
        key = (strings[0].name if strings else "no_such_field").encode()
        add("invalid-utf8", content=b'{"' + key + b'": "\xff\xfe\xc3\x28"}')
        add("invalid-utf8-key", content=b'{"\xff\xfe": 1}')
        oversized = b'{"' + key + b'": "' + b"x" * (max_body + 16) + b'"}'
        add("oversized", content=oversized)
        add("oversized-chunked", content=oversized, chunked=True)
        for ct in CONTENT_TYPES:
            add(f"content-type:{ct}", content=b"<a>1</a>", content_type=ct)
        add("content-type:none", content=b"\x00\x01garbage", content_type=None)
    return out, untestable


# ---- sending ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    probe: Probe
    status: int
    content_type: str
    body: bytes

    def problem(self) -> str:
        if self.status == 0:
            # A valid watch that has nothing to say yet may not have sent its headers.
            idle_stream = self.probe.route.rpc.method.server_streaming and self.probe.expect != "4xx"
            return "" if idle_stream and self.content_type == "timeout" else self.content_type
        if self.status >= 500:
            return "5xx"
        if self.probe.expect == "4xx" and not 400 <= self.status < 500:
            return f"expected 4xx, got {self.status}"
        if self.content_type.startswith("application/json") and self.status >= 400:
            try:
                json.loads(self.body)
            except ValueError:
                return "an application/json error body that is not JSON"
        return ""

    def describe(self) -> str:
        p = self.probe
        shown = (p.content or b"")[:60]
        return (
            f"{p.route.rpc.name} {p.method} {p.url[:120]} [{p.label}] -> {self.status} "
            f"{self.content_type} {self.body[:200]!r} ({self.problem()}); body {shown!r}"
        )


async def send(http: httpx.AsyncClient, probe: Probe) -> Result:
    headers = {**rest_headers(), **probe.extra_headers}
    if probe.content_type is not None:
        headers["content-type"] = probe.content_type
    content: Any = probe.content
    if probe.chunked and content is not None:
        data = content

        async def chunks() -> Any:
            for i in range(0, len(data), 64 * 1024):
                yield data[i : i + 64 * 1024]

        content = chunks()
    streaming = probe.route.rpc.method.server_streaming
    request = http.build_request(
        probe.method,
        probe.url,
        content=content,
        headers=headers,
        timeout=STREAM_HEADERS_S if streaming else 10,
    )
    try:
        resp = await http.send(request, stream=True)
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError) as exc:
        # Envoy may answer an oversized body before reading all of it and close the connection.
        return Result(probe, 0, f"connection error {type(exc).__name__}", b"")
    except httpx.TimeoutException:
        return Result(probe, 0, "timeout", b"")
    body = b""
    try:
        # A server stream that accepted the request keeps going: its first bytes are enough.
        async with asyncio.timeout(STREAM_READ_S if streaming else None):
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > 64 * 1024:
                    break
    except (TimeoutError, httpx.ReadError, httpx.RemoteProtocolError):
        pass
    finally:
        await resp.aclose()
    return Result(probe, resp.status_code, resp.headers.get("content-type", ""), body)


def _report_lines(
    results: list[Result], routes: list[Route], without: list[str], untestable: list[str]
) -> Iterator[str]:
    yield ""
    yield f"edge_garbage: {len(results)} requests over {len(routes)} REST routes"
    yield "  status codes: " + ", ".join(
        f"{k}={v}" for k, v in sorted(Counter(r.status for r in results).items())
    )
    per_type = Counter((r.status, r.content_type.split(";")[0] or "-") for r in results)
    yield "  status / content type: " + ", ".join(f"{s} {c}={n}" for (s, c), n in sorted(per_type.items()))
    labels = Counter(r.probe.label.split(":")[0] for r in results)
    yield "  probes by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    yield f"  RPCs without a REST route (not probed here): {', '.join(without) or 'none'}"
    yield f"  body fields with no wrong JSON type (google.protobuf.Value): {', '.join(untestable) or 'none'}"


async def test_garbage_on_every_rest_route_gets_a_4xx_and_never_a_5xx(
    edge: Edge, request: pytest.FixtureRequest
) -> None:
    routes, without = rest_routes()
    assert len(routes) >= 40, "the descriptors should declare the REST routes"
    max_body = edge.envoy.cfg.max_request_body_bytes
    all_probes, untestable = probes(routes, max_body)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(p: Probe) -> Result:
        async with gate:
            return await send(edge.http, p)

    results = await asyncio.gather(*(one(p) for p in all_probes))
    emit(request.config, list(_report_lines(results, routes, without, untestable)))
    # Every route was probed, and the edge and the mesh still answer.
    assert {p.route for p in all_probes} == set(routes)
    ok = await edge.http.get("/platform/feature-flags", headers=rest_headers())
    assert ok.status_code == 200, ok.text
    async with grpc.aio.insecure_channel(edge.grpc_target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    bad = [r for r in results if r.problem()]
    by_kind = Counter(f"{r.probe.label.split(':')[0]} {r.status}" for r in bad)
    assert not bad, f"{len(bad)} of {len(results)} probes failed {dict(by_kind)}:\n" + "\n".join(
        r.describe() for r in bad[:20]
    )
