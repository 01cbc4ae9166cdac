"""Input checks of the agent service: manifests and tasks. Each collects every violation at once."""

from __future__ import annotations

import math
import re

from google.protobuf import struct_pb2

from powerx.agent.v1 import agent_pb2, run_pb2
from powerx.common.v1 import common_pb2
from sdk import signing
from servers.common.context import valid_tenant
from servers.common.times import seconds_of
from servers.common.validate import SEMVER, Violations
from servers.registry import validation as registry_validation

AGENT_ID = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
GRANT = re.compile(r"^(\*|[a-z0-9][a-z0-9._/-]{0,190}(\.\*)?)$")
ROLE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
REGION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
RUN_ID = re.compile(r"^run_[0-9a-f]{32}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
ARTIFACT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

MAX_SKILLS = 256
MAX_ENDPOINTS = 16
MAX_GRANTS = 256
MAX_ROLES = 32
MAX_GOAL = 16 * 1024
MAX_INPUTS_BYTES = 1024 * 1024
MAX_EVENTS = 1000
MAX_TOKEN = 64 * 1024
MAX_LOG = 16 * 1024
MAX_CHUNK = 1024 * 1024
MAX_TIMEOUT_S = 24 * 3600
MIN_HEARTBEAT_S = 1.0
MAX_HEARTBEAT_S = 300.0


def grant_allows(grants: list[str] | tuple[str, ...], capability_id: str) -> bool:
    """Whether a grant list (`crm.lead.fetch`, `crm.lead.*`, `*`) allows a capability."""
    for g in grants:
        if g in ("*", capability_id):
            return True
        if g.endswith(".*") and capability_id.startswith(g[:-1]):
            return True
    return False


def check_manifest(agent: agent_pb2.Agent, *, require_signature: bool) -> None:
    """Checks a manifest; raises InvalidArgument naming every bad field."""
    v = Violations()
    v.pattern(
        agent.agent_id, "agent.agent_id", AGENT_ID, "lower-case letters, digits, '.', '_', '-' (up to 128)"
    )
    if not agent.version:
        v.add("agent.version", "is required")
    elif not SEMVER.match(agent.version):
        v.add("agent.version", "must be a semantic version such as 1.2.0")
    v.text(agent.display_name, "agent.display_name", max_len=200)
    v.text(agent.author, "agent.author", max_len=200)
    v.text(agent.description, "agent.description", max_len=4096)
    rt = agent.runtime
    hb = seconds_of(rt.heartbeat_interval)
    v.check(
        hb == 0 or MIN_HEARTBEAT_S <= hb <= MAX_HEARTBEAT_S,
        "agent.runtime.heartbeat_interval",
        "must be between 1 s and 5 min (or 0 for 10 s)",
    )
    v.check(0 <= rt.max_concurrency <= 1000, "agent.runtime.max_concurrency", "must be 0 to 1,000")
    v.check(
        rt.tenant_scope in ("", "single", "multi"), "agent.runtime.tenant_scope", "must be single or multi"
    )
    v.check(
        rt.isolation_level in agent_pb2.IsolationLevel.values(),
        "agent.runtime.isolation_level",
        "is not a known isolation level",
    )
    if rt.region:
        v.check(
            bool(REGION.match(rt.region)),
            "agent.runtime.region",
            "must be 1-64 letters, digits, '.', '_', '-'",
        )
    v.check(
        math.isfinite(rt.cost_weight) and rt.cost_weight >= 0,
        "agent.runtime.cost_weight",
        "must be a finite number >= 0",
    )
    if v.check(len(agent.skills) <= MAX_SKILLS, "agent.skills", f"has more than {MAX_SKILLS} entries"):
        seen: set[str] = set()
        for i, skill in enumerate(agent.skills):
            v.pattern(skill, f"agent.skills[{i}]", registry_validation.CAPABILITY_ID, "a capability id")
            v.check(skill not in seen, f"agent.skills[{i}]", "is listed twice")
            seen.add(skill)
    if v.check(
        len(agent.endpoints) <= MAX_ENDPOINTS, "agent.endpoints", f"has more than {MAX_ENDPOINTS} entries"
    ):
        for i, e in enumerate(agent.endpoints):
            if e.transport not in registry_validation.TRANSPORT_NAMES:
                v.add(f"agent.endpoints[{i}].transport", "is not a known transport")
                continue
            problem = registry_validation.uri_problem(e.transport, e.uri)
            if problem:
                v.add(f"agent.endpoints[{i}].uri", problem)
            v.text(e.protocol, f"agent.endpoints[{i}].protocol", max_len=32)
    if v.check(
        len(agent.tool_grants) <= MAX_GRANTS, "agent.tool_grants", f"has more than {MAX_GRANTS} entries"
    ):
        for i, g in enumerate(agent.tool_grants):
            v.pattern(
                g, f"agent.tool_grants[{i}]", GRANT, "a capability id, a prefix such as crm.lead.*, or *"
            )
    v.labels(agent.labels, "agent.labels")
    if v.check(len(agent.roles) <= MAX_ROLES, "agent.roles", f"has more than {MAX_ROLES} entries"):
        for i, r in enumerate(agent.roles):
            v.pattern(r, f"agent.roles[{i}]", ROLE, "lower-case letters, digits, '.', '_', '-' (up to 63)")
    for i, t in enumerate(agent.tenant_scopes[:65]):
        v.check(t == "*" or valid_tenant(t), f"agent.tenant_scopes[{i}]", "must be a tenant id or *")
    v.check(len(agent.tenant_scopes) <= 64, "agent.tenant_scopes", "has more than 64 entries")
    _check_signature(agent, require_signature, v)
    v.raise_if_any("invalid agent manifest")


def _check_signature(agent: agent_pb2.Agent, required: bool, v: Violations) -> None:
    if not agent.public_key:
        v.check(not required, "agent.public_key", "is required: this mesh only accepts signed manifests")
        v.check(not agent.signature, "agent.signature", "needs agent.public_key to be checked against")
        return
    key = signing.public_key_of(agent.public_key)
    if key is None:
        v.add("agent.public_key", "must be a base64 Ed25519 public key (32 bytes)")
        return
    if not agent.signature:
        v.add("agent.signature", "is required with agent.public_key")
        return
    sig = signing.decode_signature(agent.signature)
    if sig is None or not signing.verify(key, sig, signing.canonical_manifest(agent)):
        v.add("agent.signature", "does not verify against agent.public_key over the canonical manifest")


def check_task(task: run_pb2.Task, v: Violations, *, skill_required: bool) -> None:
    """Checks a task (collects violations; the caller raises)."""
    if skill_required and not task.skill:
        v.add("task.skill", "is required")
    elif task.skill:
        v.pattern(task.skill, "task.skill", registry_validation.CAPABILITY_ID, "a capability id")
    v.text(task.goal, "task.goal", max_len=MAX_GOAL)
    if task.ByteSize() > MAX_INPUTS_BYTES + MAX_GOAL + 64 * 1024:
        v.add("task", "is larger than 1 MiB")
    elif task.inputs.ByteSize() > MAX_INPUTS_BYTES:
        v.add("task.inputs", "is larger than 1 MiB encoded")
    if v.check(len(task.grants) <= MAX_GRANTS, "task.grants", f"has more than {MAX_GRANTS} entries"):
        for i, g in enumerate(task.grants):
            v.pattern(g, f"task.grants[{i}]", GRANT, "a capability id, a prefix such as crm.lead.*, or *")
    v.text(task.actor_id, "task.actor_id", max_len=255)
    if task.trace_id:
        v.check(bool(TRACE_ID.match(task.trace_id)), "task.trace_id", "must be 32 lower-case hex digits")
    timeout = seconds_of(task.timeout)
    v.check(0 <= timeout <= MAX_TIMEOUT_S, "task.timeout", "must be between 0 and 24 h")
    if task.idempotency_key:
        v.check(
            bool(IDEMPOTENCY_KEY.match(task.idempotency_key)),
            "task.idempotency_key",
            "must be 1-128 printable ASCII characters without spaces",
        )
    if task.parent_run_id:
        v.check(bool(RUN_ID.match(task.parent_run_id)), "task.parent_run_id", "is not a run id")


def check_output_events(events: list[run_pb2.RunEvent] | tuple[run_pb2.RunEvent, ...], field: str) -> None:
    """Checks events an agent appends: tokens, logs and artifact chunks only, within their limits."""
    v = Violations()
    v.check(bool(events), field, "is required")
    v.check(len(events) <= MAX_EVENTS, field, f"has more than {MAX_EVENTS} events")
    for i, e in enumerate(events[:MAX_EVENTS]):
        kind = e.WhichOneof("kind")
        f = f"{field}[{i}]"
        if kind == "token":
            v.check(bool(e.token.text), f"{f}.token.text", "is required")
            v.check(len(e.token.text) <= MAX_TOKEN, f"{f}.token.text", "is longer than 64 KiB")
        elif kind == "log":
            v.check(e.log.level in (1, 2, 3, 4), f"{f}.log.level", "is required")
            v.check(bool(e.log.message), f"{f}.log.message", "is required")
            v.check(len(e.log.message) <= MAX_LOG, f"{f}.log.message", "is longer than 16 KiB")
        elif kind == "artifact":
            a = e.artifact
            v.pattern(a.artifact_id, f"{f}.artifact.artifact_id", ARTIFACT_ID, "1-128 printable characters")
            v.check(a.ByteSize() <= MAX_CHUNK + 4096, f"{f}.artifact", "is larger than 1 MiB")
            v.text(a.name, f"{f}.artifact.name", max_len=255)
            v.text(a.mime_type, f"{f}.artifact.mime_type", max_len=255)
        elif kind is None:
            v.add(f, "carries nothing: set token, log or artifact")
        else:
            v.add(f"{f}.{kind}", "is written by the mesh; agents publish token, log and artifact events")
    v.raise_if_any("invalid run output")


def check_outcome(result: struct_pb2.Value | None, has_error: bool, v: Violations) -> None:
    """A completion carries exactly one of result and error."""
    v.check(result is not None or has_error, "outcome", "set result or error")


TRANSPORT_AGENT = common_pb2.TRANSPORT_AGENT
