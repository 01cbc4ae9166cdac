"""Validation of announces per seed 001 §4: ids, semver, known transports, well-formed URIs, limits."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from urllib.parse import urlsplit

from google.protobuf import json_format

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, registry_service_pb2
from servers.common.context import valid_tenant
from servers.common.times import seconds_of
from servers.common.validate import SEMVER, Violations

PROVIDER_ID = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
CAPABILITY_ID = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,190}[a-z0-9])?$")
SCOPE = re.compile(r"^[A-Za-z0-9._:*-]{1,128}$")
HOST = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

MAX_CAPABILITIES = 1000
MAX_ENDPOINTS = 1000
MAX_SCHEMA_BYTES = 64 * 1024
MAX_URI = 2048
MIN_LEASE_S = 1.0
MAX_LEASE_S = 24 * 3600.0

TRANSPORT_NAMES = {
    common_pb2.TRANSPORT_GRPC: "grpc",
    common_pb2.TRANSPORT_HTTP: "http",
    common_pb2.TRANSPORT_MCP: "mcp",
    common_pb2.TRANSPORT_AGENT: "agent",
}


def _host_ok(host: str) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOST.match(host))


def _url_problem(uri: str, schemes: tuple[str, ...]) -> str:
    """Empty when `uri` is a well-formed URL with one of `schemes` and a host; else what is wrong."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        return f"is not a well-formed URI ({exc})"
    if parts.scheme not in schemes:
        return f"must use scheme {' or '.join(s + '://' for s in schemes)}"
    if not _host_ok(parts.hostname or ""):
        return "must name a host"
    if port == 0:
        return "port must be 1-65535"
    if parts.username or parts.password:
        return "must not embed credentials (use a secret reference)"
    return ""


def uri_problem(transport: int, uri: str) -> str:
    """Empty when `uri` suits `transport`; otherwise what is wrong with it."""
    if not uri:
        return "is required"
    if len(uri) > MAX_URI:
        return f"is longer than {MAX_URI} characters"
    if any(ch.isspace() for ch in uri) and not uri.startswith("stdio:"):
        return "must not contain white space"
    if transport == common_pb2.TRANSPORT_GRPC:
        problem = _url_problem(uri, ("grpc", "grpcs"))
        if problem:
            return problem
        parts = urlsplit(uri)
        if parts.port is None:
            return "must include a port (grpc://host:port)"
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            return "must be grpc://host:port with no path"
        return ""
    if transport == common_pb2.TRANSPORT_HTTP:
        return _url_problem(uri, ("http", "https"))
    if transport == common_pb2.TRANSPORT_MCP:
        if uri.startswith("stdio:"):
            return "" if uri[len("stdio:") :].strip() else "stdio: must be followed by a command"
        return _url_problem(uri, ("http", "https"))
    if transport == common_pb2.TRANSPORT_AGENT:
        if uri.startswith("agent://"):
            rest = uri[len("agent://") :]
            return (
                ""
                if rest and re.match(r"^[A-Za-z0-9._/-]{1,255}$", rest)
                else "agent://<agent id> needs an id"
            )
        return _url_problem(uri, ("http", "https"))
    return "transport is not known"


def lease_seconds(ttl_seconds: float, field: str, v: Violations) -> None:
    """Checks a lease TTL (0 means the default)."""
    if ttl_seconds and not MIN_LEASE_S <= ttl_seconds <= MAX_LEASE_S:
        v.add(field, f"must be between {MIN_LEASE_S:g} s and {MAX_LEASE_S:g} s (or 0 for the default)")


def _check_capability(cap: capability_pb2.Capability, field: str, v: Violations) -> None:
    v.pattern(
        cap.capability_id,
        f"{field}.capability_id",
        CAPABILITY_ID,
        "lower-case letters, digits, '.', '_', '-', '/' (up to 192)",
    )
    v.pattern(cap.version, f"{field}.version", SEMVER, "a semantic version such as 1.0.0")
    v.text(cap.display_name, f"{field}.display_name", max_len=200)
    v.text(cap.description, f"{field}.description", max_len=4000)
    v.labels(cap.labels, f"{field}.labels")
    if len(cap.tenant_scopes) > 256:
        v.add(f"{field}.tenant_scopes", "has more than 256 entries")
    for j, scope in enumerate(cap.tenant_scopes):
        v.check(
            scope == "*" or valid_tenant(scope), f"{field}.tenant_scopes[{j}]", "must be a tenant id or '*'"
        )
    if cap.security.scope:
        v.pattern(cap.security.scope, f"{field}.security.scope", SCOPE, "a scope such as crm.lead.write")
    if len(cap.security.masked_fields) > 128:
        v.add(f"{field}.security.masked_fields", "has more than 128 entries")
    v.check(math.isfinite(cap.cost) and cap.cost >= 0, f"{field}.cost", "must be a finite number >= 0")
    for name in ("input_schema", "output_schema"):
        if cap.HasField(name):
            size = len(json.dumps(json_format.MessageToDict(getattr(cap, name))))
            v.check(size <= MAX_SCHEMA_BYTES, f"{field}.{name}", f"is larger than {MAX_SCHEMA_BYTES} bytes")
    v.check(not cap.endpoints, f"{field}.endpoints", "is output only; declare endpoints in `endpoints`")
    if cap.HasField("routing"):
        _check_routing(cap.routing, f"{field}.routing", v)


def _check_routing(r: capability_pb2.RoutingPolicy, field: str, v: Violations) -> None:
    for name in ("health_weight", "latency_weight", "cost_weight", "region_weight"):
        value = getattr(r, name)
        v.check(math.isfinite(value) and 0 <= value <= 1, f"{field}.{name}", "must be between 0 and 1")
    v.check(
        math.isfinite(r.candidate_margin) and 0 <= r.candidate_margin <= 1,
        f"{field}.candidate_margin",
        "must be between 0 and 1",
    )
    v.check(
        math.isfinite(r.panic_threshold) and r.panic_threshold <= 1,
        f"{field}.panic_threshold",
        "must be at most 1 (negative disables panic mode)",
    )
    v.check(0 <= r.max_attempts <= 10, f"{field}.max_attempts", "must be between 0 and 10")
    seen: set[int] = set()
    for i, t in enumerate(r.transport_order):
        v.check(
            t in TRANSPORT_NAMES and t not in seen,
            f"{field}.transport_order[{i}]",
            "must be a known transport, listed once",
        )
        seen.add(t)


def _check_endpoint(ep: endpoint_pb2.Endpoint, field: str, cap_ids: set[str], v: Violations) -> None:
    if ep.transport not in TRANSPORT_NAMES:
        v.add(
            f"{field}.transport",
            "must be one of TRANSPORT_GRPC, TRANSPORT_HTTP, TRANSPORT_MCP, TRANSPORT_AGENT",
        )
    else:
        problem = uri_problem(ep.transport, ep.uri)
        if problem:
            v.add(f"{field}.uri", problem)
    v.text(ep.session_id, f"{field}.session_id", max_len=255)
    v.text(ep.region, f"{field}.region", max_len=64)
    v.check(0 <= ep.weight <= 1000, f"{field}.weight", "must be between 0 and 1000")
    v.check(math.isfinite(ep.cost) and ep.cost >= 0, f"{field}.cost", "must be a finite number >= 0")
    if len(ep.metadata) > 32:
        v.add(f"{field}.metadata", "has more than 32 entries")
    for key, value in ep.metadata.items():
        if len(key) > 63 or len(value) > 1024:
            v.add(f"{field}.metadata[{key[:63]}]", "key must be at most 63 and value at most 1024 characters")
    for j, cap_id in enumerate(ep.capability_ids):
        v.check(
            cap_id in cap_ids,
            f"{field}.capability_ids[{j}]",
            f"names {cap_id!r}, which this announce does not declare",
        )


def check_announce(req: registry_service_pb2.AnnounceProviderRequest) -> None:
    """Raises InvalidArgument naming every problem in an announce; nothing is written on failure."""
    v = Violations()
    if not req.HasField("provider"):
        v.add("provider", "is required")
    p = req.provider
    v.pattern(
        p.provider_id,
        "provider.provider_id",
        PROVIDER_ID,
        "lower-case letters, digits, '.', '_', '-' (up to 128), such as com.acme.crm",
    )
    v.pattern(p.version, "provider.version", SEMVER, "a semantic version such as 1.0.0")
    v.text(p.display_name, "provider.display_name", max_len=200)
    v.text(p.author, "provider.author", max_len=200)
    v.text(p.description, "provider.description", max_len=4000)
    v.text(p.signature, "provider.signature", max_len=8192)
    v.labels(p.labels, "provider.labels")
    lease_seconds(seconds_of(req.lease_ttl), "lease_ttl", v)
    if len(req.capabilities) > MAX_CAPABILITIES:
        v.add("capabilities", f"has more than {MAX_CAPABILITIES} entries")
    if len(req.endpoints) > MAX_ENDPOINTS:
        v.add("endpoints", f"has more than {MAX_ENDPOINTS} entries")
    v.raise_if_any("invalid announce")
    seen_caps: set[tuple[str, str]] = set()
    for i, cap in enumerate(req.capabilities):
        _check_capability(cap, f"capabilities[{i}]", v)
        cap_key = (cap.capability_id, cap.version)
        v.check(
            cap_key not in seen_caps,
            f"capabilities[{i}]",
            f"duplicates capability {cap.capability_id} {cap.version}",
        )
        seen_caps.add(cap_key)
    cap_ids = {c for c, _ in seen_caps}
    seen_eps: set[tuple[int, str]] = set()
    for i, ep in enumerate(req.endpoints):
        _check_endpoint(ep, f"endpoints[{i}]", cap_ids, v)
        ep_key = (int(ep.transport), ep.uri)
        v.check(ep_key not in seen_eps, f"endpoints[{i}]", "duplicates another endpoint's transport and uri")
        seen_eps.add(ep_key)
    v.raise_if_any("invalid announce")
