"""ImportMcpServer: turns an MCP server's tools into a provider with one capability per tool.

The server is discovered once (server info and every tool it lists), then the result is announced
like any other provider, so an import is idempotent and a re-import replaces the whole state: tools
the server no longer lists disappear with their capabilities.

Mapping:
    provider: `provider_id` = the server id; version = the server's version when it is semver, else
        0.0.0; display name = the server's title or name; description = its instructions; label
        `mcp.server_name`.
    capability per tool: `<server_id>/<tool name lower-cased, other characters than [a-z0-9._-] as
        '-'>` (`-2`, `-3`… when two names collide; tools are taken in name order so the suffixes stay
        put); the tool's title, description and schemas; idempotent when the tool says it is
        idempotent or read-only; labels `mcp.tool` (the original name, which the router's MCP transport
        calls), `mcp.read_only` and `mcp.destructive` (when hinted) and `mcp.schema_omitted` (a schema
        over the registry's size limit is left out).
    endpoint: one, transport MCP at the uri, serving every capability.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from router.transports.base import TransportError
from router.transports.mcp import McpServerInfo, McpTool, StdioNotAllowed, discover, redacted
from servers.common.context import CallContext, valid_tenant
from servers.common.errors import FailedPrecondition, PermissionDenied, Unavailable
from servers.common.times import seconds_of
from servers.common.validate import SEMVER, Violations
from servers.registry import validation
from servers.registry.service import RegistryService, require_tenant

# Time allowed to discover a server when the call itself has more (or no deadline).
DISCOVER_TIMEOUT_S = 10.0
MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 4000
MAX_LABEL_VALUE = 256
MAX_TENANT_SCOPES = 256
_NOT_ID_CHAR = re.compile(r"[^a-z0-9._-]")
# Discovery failures meaning nothing answered (in time), as opposed to something not speaking MCP.
_UNREACHABLE_CODES = frozenset({code_pb2.UNAVAILABLE, code_pb2.DEADLINE_EXCEEDED})
# Longest capability id the registry accepts (validation.CAPABILITY_ID).
MAX_CAPABILITY_ID = 192


def _clip(text: str | None, limit: int) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_import(req: rs.ImportMcpServerRequest) -> None:
    """Raises InvalidArgument naming every bad field of an import request."""
    v = Violations()
    v.pattern(
        req.server_id,
        "server_id",
        validation.PROVIDER_ID,
        "lower-case letters, digits, '.', '_', '-' (up to 128), such as com.acme.calc",
    )
    problem = validation.uri_problem(common_pb2.TRANSPORT_MCP, req.uri)
    if problem:
        v.add("uri", problem)
    if len(req.tenant_scopes) > MAX_TENANT_SCOPES:
        v.add("tenant_scopes", f"has more than {MAX_TENANT_SCOPES} entries")
    for i, scope in enumerate(req.tenant_scopes):
        v.check(scope == "*" or valid_tenant(scope), f"tenant_scopes[{i}]", "must be a tenant id or '*'")
    validation.lease_seconds(seconds_of(req.lease_ttl), "lease_ttl", v)
    v.raise_if_any("invalid MCP server import")


def capability_ids(server_id: str, tool_names: list[str]) -> dict[str, str]:
    """The capability id of each tool: `<server_id>/<normalized name>`, unique, within the id limits.

    Names are taken in sorted order, so which of two colliding tools gets the `-2` does not depend
    on the order the server lists them in.
    """
    room = MAX_CAPABILITY_ID - len(f"{server_id}/") - len(f"-{validation.MAX_CAPABILITIES}")
    ids: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(tool_names):
        base = _NOT_ID_CHAR.sub("-", name.lower())[:room].rstrip("._-") or "tool"
        candidate, n = base, 2
        while candidate in used:
            candidate, n = f"{base}-{n}", n + 1
        used.add(candidate)
        ids[name] = f"{server_id}/{candidate}"
    return ids


def _schema(schema: dict[str, Any] | None) -> struct_pb2.Struct | None:
    """A JSON Schema as a Struct, or None when it does not fit the registry's limit."""
    if schema is None:
        return None
    struct = struct_pb2.Struct()
    try:
        json_format.ParseDict(schema, struct)
    except json_format.ParseError:
        return None
    # Measured as validation measures it (a Struct's numbers come back as floats).
    if len(json.dumps(json_format.MessageToDict(struct))) > validation.MAX_SCHEMA_BYTES:
        return None
    return struct


def _capability(
    tool: McpTool, capability_id: str, version: str, scopes: list[str]
) -> capability_pb2.Capability:
    hints = tool.annotations
    labels = {"mcp.tool": tool.name}
    if isinstance(hints.get("readOnlyHint"), bool):
        labels["mcp.read_only"] = str(hints["readOnlyHint"]).lower()
    if isinstance(hints.get("destructiveHint"), bool):
        labels["mcp.destructive"] = str(hints["destructiveHint"]).lower()
    cap = capability_pb2.Capability(
        capability_id=capability_id,
        version=version,
        tenant_scopes=scopes,
        display_name=_clip(tool.title or tool.name, MAX_DISPLAY_NAME),
        description=_clip(tool.description, MAX_DESCRIPTION),
        idempotent=hints.get("idempotentHint") is True or hints.get("readOnlyHint") is True,
        labels=labels,
    )
    omitted = []
    for field, schema in (("input_schema", tool.input_schema), ("output_schema", tool.output_schema)):
        struct = _schema(schema)
        if struct is not None:
            getattr(cap, field).CopyFrom(struct)
        elif schema is not None:
            omitted.append(field)
    if omitted:
        cap.labels["mcp.schema_omitted"] = (
            ",".join(omitted) + f" (larger than {validation.MAX_SCHEMA_BYTES} bytes)"
        )
    return cap


def announce_request(req: rs.ImportMcpServerRequest, info: McpServerInfo) -> rs.AnnounceProviderRequest:
    """The announce that states an MCP server's whole state as a provider."""
    version = info.version if SEMVER.match(info.version) else "0.0.0"
    provider = provider_pb2.Provider(
        provider_id=req.server_id,
        version=version,
        display_name=_clip(info.title or info.name or req.server_id, MAX_DISPLAY_NAME),
        description=_clip(info.instructions, MAX_DESCRIPTION),
    )
    if info.name:
        provider.labels["mcp.server_name"] = _clip(info.name, MAX_LABEL_VALUE)
    ids = capability_ids(req.server_id, [t.name for t in info.tools])
    scopes = list(req.tenant_scopes)
    capabilities = [_capability(t, ids[t.name], version, scopes) for t in info.tools]
    announce = rs.AnnounceProviderRequest(
        provider=provider,
        capabilities=capabilities,
        endpoints=[
            endpoint_pb2.Endpoint(
                transport=common_pb2.TRANSPORT_MCP,
                uri=req.uri,
                capability_ids=[c.capability_id for c in capabilities],
            )
        ],
    )
    if req.HasField("lease_ttl"):
        announce.lease_ttl.CopyFrom(req.lease_ttl)
    return announce


async def import_mcp_server(
    service: RegistryService, req: rs.ImportMcpServerRequest, ctx: CallContext
) -> rs.ImportMcpServerResponse:
    """Discovers an MCP server and announces it as a provider with one capability per tool.

    Raises:
        TenantRequired: The call carries no valid tenant.
        InvalidArgument: A field is malformed (nothing is contacted or written).
        Unavailable: MCP_SERVER_UNREACHABLE, nothing answered at the uri.
        FailedPrecondition: MCP_HANDSHAKE_FAILED, something answered that does not speak MCP;
            MCP_TOO_MANY_TOOLS, the server lists more tools than a provider may have.
    """
    require_tenant(ctx)
    check_import(req)
    remaining = ctx.time_remaining()
    timeout_s = DISCOVER_TIMEOUT_S if remaining is None else max(0.1, min(DISCOVER_TIMEOUT_S, remaining))
    try:
        info = await discover(req.uri, timeout_s, stdio_commands=service.mcp_stdio_commands)
    except StdioNotAllowed as exc:
        raise PermissionDenied(
            str(exc), reason="MCP_STDIO_NOT_ALLOWED", metadata={"uri": redacted(req.uri)}
        ) from None
    except TransportError as exc:
        metadata = {"uri": redacted(req.uri)}
        if exc.code in _UNREACHABLE_CODES:
            raise Unavailable(
                exc.message,
                reason="MCP_SERVER_UNREACHABLE",
                metadata=metadata,
            ) from None
        raise FailedPrecondition(
            exc.message,
            reason="MCP_HANDSHAKE_FAILED",
            metadata=metadata,
        ) from None
    if len(info.tools) > validation.MAX_CAPABILITIES:
        raise FailedPrecondition(
            f"the MCP server lists {len(info.tools)} tools; "
            f"a provider may have {validation.MAX_CAPABILITIES}",
            reason="MCP_TOO_MANY_TOOLS",
            metadata={"uri": redacted(req.uri), "tool_count": str(len(info.tools))},
        )
    announced = await service.announce_provider(announce_request(req, info), ctx)
    return rs.ImportMcpServerResponse(provider=announced.provider, capabilities=announced.capabilities)
