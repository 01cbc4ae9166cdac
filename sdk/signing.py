r"""Signatures agents make and the mesh verifies: the manifest, and every call to another agent.

Both use Ed25519. The agent keeps the private key; the manifest carries the public key
(`Agent.public_key`, base64 of the 32 raw bytes), and the mesh verifies with it. The byte strings that
get signed are defined here once, for the SDK and the mesh alike:

- **Manifest**: the manifest fields (not `signature`, not the output-only ones) as ProtoJSON with proto
  field names, keys sorted, no spaces, UTF-8.
- **Agent-to-agent call**: the lines of `call_string`, joined by `\\n`. It binds the tenant, the calling
  agent, the run the call is part of, the capability, a SHA-256 of the arguments (canonical JSON), a
  Unix time and a nonce; the mesh rejects a time more than 5 minutes off and a nonce seen before.
  Metadata: `x-powerx-agent-signature: t=<unix seconds>,n=<nonce>,s=<base64 signature>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import json_format, struct_pb2

from powerx.agent.v1 import agent_pb2

SIGNATURE_HEADER = "x-powerx-agent-signature"
PARENT_RUN_HEADER = "x-powerx-parent-run"
CALL_DEPTH_HEADER = "x-powerx-call-depth"
CALLER_AGENT_HEADER = "x-powerx-caller-agent"

# Manifest fields an agent declares; everything else on `Agent` is the mesh's.
MANIFEST_FIELDS = (
    "agent_id",
    "display_name",
    "version",
    "author",
    "description",
    "runtime",
    "skills",
    "endpoints",
    "tool_grants",
    "labels",
    "roles",
    "tenant_scopes",
    "public_key",
)
_HEADER = re.compile(r"^t=(\d{1,12}),n=([0-9A-Za-z_-]{8,64}),s=([0-9A-Za-z+/=_-]{40,200})$")


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_manifest(agent: agent_pb2.Agent) -> bytes:
    """The bytes a manifest signature covers."""
    manifest = agent_pb2.Agent()
    manifest.CopyFrom(agent)
    for field in agent_pb2.Agent.DESCRIPTOR.fields:
        if field.name not in MANIFEST_FIELDS:
            manifest.ClearField(field.name)
    for endpoint in manifest.endpoints:
        endpoint.ClearField("health")  # the mesh's view, not the agent's declaration
    return _canonical_json(json_format.MessageToDict(manifest, preserving_proto_field_name=True))


def arguments_digest(arguments: struct_pb2.Struct) -> str:
    """SHA-256 (hex) of the canonical JSON of a call's arguments."""
    return hashlib.sha256(_canonical_json(json_format.MessageToDict(arguments))).hexdigest()


def call_string(
    *,
    tenant_id: str,
    caller_agent_id: str,
    parent_run_id: str,
    capability_id: str,
    digest: str,
    t: int,
    nonce: str,
) -> bytes:
    """The bytes an agent-to-agent call signature covers."""
    return "\n".join(
        (
            "powerx-agent-call/v1",
            tenant_id,
            caller_agent_id,
            parent_run_id,
            capability_id,
            digest,
            str(t),
            nonce,
        )
    ).encode()


@dataclass(frozen=True)
class CallSignature:
    """A parsed `x-powerx-agent-signature` header."""

    t: int
    nonce: str
    signature: bytes

    @classmethod
    def parse(cls, header: str) -> CallSignature | None:
        """The header's parts, or None when it is malformed."""
        match = _HEADER.match(header.strip())
        if not match:
            return None
        try:
            sig = base64.b64decode(match.group(3) + "=" * (-len(match.group(3)) % 4), altchars=b"-_")
        except (binascii.Error, ValueError):
            return None
        if len(sig) != 64:
            return None
        return cls(int(match.group(1)), match.group(2), sig)


def public_key_of(encoded: str) -> Ed25519PublicKey | None:
    """The Ed25519 key of a base64 `public_key`, or None when it is not one."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 32:
        return None
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is the key's signature of `data`."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def decode_signature(encoded: str) -> bytes | None:
    """The raw bytes of a base64 signature, or None."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None


class AgentKey:
    """An agent's Ed25519 key pair: signs its manifest and its calls to other agents."""

    def __init__(self, private_key: Ed25519PrivateKey | None = None) -> None:
        self.private_key = private_key or Ed25519PrivateKey.generate()

    @classmethod
    def from_seed(cls, seed: bytes) -> AgentKey:
        """The key of a 32-byte seed (for an agent that keeps its key across restarts)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> str:
        """The base64 public key to put in the manifest."""
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def sign_manifest(self, agent: agent_pb2.Agent) -> None:
        """Sets `agent.public_key` and `agent.signature`."""
        agent.public_key = self.public_key
        agent.signature = base64.b64encode(self.private_key.sign(canonical_manifest(agent))).decode()

    def sign_call(
        self,
        *,
        tenant_id: str,
        caller_agent_id: str,
        parent_run_id: str,
        capability_id: str,
        arguments: struct_pb2.Struct,
        now: float | None = None,
    ) -> str:
        """The `x-powerx-agent-signature` value for one call."""
        t = int(time.time() if now is None else now)
        nonce = secrets.token_urlsafe(12)
        data = call_string(
            tenant_id=tenant_id,
            caller_agent_id=caller_agent_id,
            parent_run_id=parent_run_id,
            capability_id=capability_id,
            digest=arguments_digest(arguments),
            t=t,
            nonce=nonce,
        )
        sig = base64.urlsafe_b64encode(self.private_key.sign(data)).decode()
        return f"t={t},n={nonce},s={sig}"
