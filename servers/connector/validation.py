"""Input checks of connector instances, credentials and update masks. Each collects every violation at once.

Descriptions of credential violations never quote the value: a secret must not reach an error, a log or an
audit row even when it is malformed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from powerx.connector.v1 import connector_pb2
from servers.common.times import seconds_of
from servers.common.validate import Violations
from servers.connector import templates
from servers.registry.validation import CAPABILITY_ID

PLATFORMS = ("coze", "n8n")

INSTANCE_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
WORKFLOW_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FIELD_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# RFC 7230 `token`: the characters a header name may have.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_WHITESPACE = re.compile(r"\s")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 2000
MAX_URL = 2048
MAX_WORKFLOWS = 256
MAX_WORKFLOW_ID = 256
MAX_USER_MAPPINGS = 1000
MAX_USER_ID = 255
MAX_TEMPLATE_BYTES = 64 * 1024
MAX_TEMPLATE_DEPTH = 32
MAX_FIELD_PATHS = 100
MAX_FIELD_PATH = 256
MAX_RPS = 100_000.0
MAX_BURST = 1_000_000
MAX_ATTEMPTS = 10
MAX_BACKOFF_S = 3600.0
MAX_MULTIPLIER = 10.0
MAX_TIMEOUT_S = 600.0
MAX_WEBHOOK_TOLERANCE_S = 86_400.0
MAX_TOKEN = 4096
MAX_WEBHOOK_SECRETS = 5
MAX_SECRET_HEADERS = 10
MAX_HEADER_VALUE = 4096
MAX_VERIFY_TOKEN = 512
MAX_TOKEN_TTL_S = 86_399.0
MAX_SCOPES = 64
MIN_RSA_BITS = 2048
MIN_PLAIN_WEBHOOK_SECRET = 16
MAX_PLAIN_WEBHOOK_SECRET = 256
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105  (a prefix, not a secret)

# Headers the HTTP client sets itself; a secret header must not replace them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"}
)

OUTPUT_ONLY_FIELDS = (
    "instance_id",
    "tenant_id",
    "platform",
    "secret_ref",
    "credential",
    "config_version",
    "create_time",
    "update_time",
)
INPUT_ONLY_FIELDS = ("credential_input",)
# Fields an update mask may name (every field that is neither output-only nor the credential).
UPDATABLE_FIELDS = tuple(
    f.name
    for f in connector_pb2.ConnectorInstance.DESCRIPTOR.fields
    if f.name not in OUTPUT_ONLY_FIELDS and f.name not in INPUT_ONLY_FIELDS
)
# Message fields whose own fields an update mask may name one by one (`rate_limit.burst`).
_NESTED_UPDATABLE = {
    "rate_limit": frozenset(f.name for f in connector_pb2.RateLimit.DESCRIPTOR.fields),
    "retry_policy": frozenset(f.name for f in connector_pb2.RetryPolicy.DESCRIPTOR.fields),
}


def check_platform(v: Violations, platform: str, field: str = "platform") -> bool:
    """Checks a platform name (`coze` or `n8n`); returns whether it is one."""
    if not platform:
        v.add(field, "is required")
        return False
    return v.check(platform in PLATFORMS, field, "must be coze or n8n")


def url_problem(url: str, *, allow_query: bool = True) -> str:
    """Empty when `url` is an absolute http(s) URL with a host and no user info; else what is wrong."""
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    if _WHITESPACE.search(url) or _CONTROL.search(url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "is not a well-formed URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        # A URL is logged and stored in plain text; credentials go into credential_input.
        return "must not carry user info (put credentials in credential_input)"
    if parts.fragment:
        return "must not have a #fragment"
    if not allow_query and parts.query:
        return "must not have a ?query"
    return ""


def _check_url(v: Violations, url: str, field: str, *, required: bool, allow_query: bool = True) -> None:
    if not url:
        v.check(not required, field, "is required")
        return
    problem = url_problem(url, allow_query=allow_query)
    if problem:
        v.add(field, problem)


def _duration(v: Violations, d: duration_pb2.Duration, field: str, max_s: float, what: str) -> float:
    s = seconds_of(d)
    if (d.seconds < 0 < d.nanos) or (d.nanos < 0 < d.seconds) or abs(d.nanos) >= 1_000_000_000:
        v.add(field, "is not a valid duration")
    elif not 0 <= s <= max_s:
        v.add(field, f"must be between 0 and {what}")
    return s


def _timestamp(v: Violations, ts: timestamp_pb2.Timestamp, field: str) -> None:
    # Timestamp's own range: 0001-01-01 to 9999-12-31; before the Unix epoch is no plausible expiry.
    if not 0 <= ts.seconds <= 253_402_300_799 or not 0 <= ts.nanos < 1_000_000_000:
        v.add(field, "must be a time between 1970 and 9999")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(x) for x in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(x) for x in value), default=0)
    return 0


def _check_template(v: Violations, template: struct_pb2.Struct, field: str, root: str) -> None:
    if not template.fields:
        return
    doc = json_format.MessageToDict(template)
    if len(json.dumps(doc, separators=(",", ":"))) > MAX_TEMPLATE_BYTES:
        v.add(field, f"is larger than {MAX_TEMPLATE_BYTES // 1024} KiB as JSON")
        return
    if _depth(doc) > MAX_TEMPLATE_DEPTH:
        v.add(field, f"is nested deeper than {MAX_TEMPLATE_DEPTH} levels")
        return
    for problem in templates.template_problems(doc, root)[:20]:
        where, _, why = problem.partition(": ")
        v.add(f"{field}.{where}" if not where.startswith("(") else field, why)


def _check_paths(v: Violations, paths: Sequence[str], field: str) -> None:
    if not v.check(len(paths) <= MAX_FIELD_PATHS, field, f"has more than {MAX_FIELD_PATHS} entries"):
        return
    for i, p in enumerate(paths):
        if len(p) > MAX_FIELD_PATH:
            v.add(f"{field}[{i}]", f"is longer than {MAX_FIELD_PATH} characters")
        else:
            v.pattern(
                p, f"{field}[{i}]", FIELD_PATH, "a dotted path of letters, digits, '_', '-' such as a.b"
            )


def _check_workflow_id(v: Violations, wid: str, field: str, platform: str) -> None:
    if not wid:
        v.add(field, "is required")
    elif len(wid) > MAX_WORKFLOW_ID:
        v.add(field, f"is longer than {MAX_WORKFLOW_ID} characters")
    elif _WHITESPACE.search(wid) or _CONTROL.search(wid):
        v.add(field, "must not contain whitespace")
    elif platform == "n8n":
        # The id is the path after `/webhook/` and must stay below it: trigger calls carry secret headers.
        if wid.startswith("/") or "?" in wid or "#" in wid or "\\" in wid:
            v.add(field, "must be the webhook path after /webhook/, without a leading '/', '?', '#' or '\\'")
        elif any(seg in (".", "..") for seg in wid.split("/")):
            v.add(field, "must not contain '.' or '..' path segments")


def check_output_only(inst: connector_pb2.ConnectorInstance, v: Violations, field: str = "instance") -> None:
    """Records a violation for every output-only field set in an input instance."""
    for name in OUTPUT_ONLY_FIELDS:
        desc = inst.DESCRIPTOR.fields_by_name[name]
        is_set = (
            inst.HasField(name)
            if desc.message_type is not None
            else getattr(inst, name) != desc.default_value
        )
        if is_set:
            v.add(f"{field}.{name}", "is output only and must not be set")


def validate_instance(
    inst: connector_pb2.ConnectorInstance,
    platform: str,
    v: Violations,
    *,
    field: str = "instance",
    creating: bool,
) -> None:
    """Checks a connector instance given as input (collects violations; the caller raises).

    Args:
        inst: The instance as given: at creation, or the stored settings with an update's fields merged in
            (`apply_update_mask`). Output-only fields must be unset.
        platform: `coze` or `n8n` (checked by the caller with `check_platform`).
        v: Collector of the violations.
        field: Name of the instance in violation paths (`instance`, `instances[0]`).
        creating: Whether this is a creation, the only time `credential_input` is accepted; later credential
            changes go through RotateCredential.
    """
    check_output_only(inst, v, field)
    v.text(inst.display_name, f"{field}.display_name", max_len=MAX_DISPLAY_NAME)
    v.text(inst.description, f"{field}.description", max_len=MAX_DESCRIPTION)
    _check_url(v, inst.base_url, f"{field}.base_url", required=platform == "n8n", allow_query=False)
    if not inst.workflow_ids:
        v.add(f"{field}.workflow_ids", "is required: map at least one alias to a platform workflow id")
    elif len(inst.workflow_ids) > MAX_WORKFLOWS:
        v.add(f"{field}.workflow_ids", f"has more than {MAX_WORKFLOWS} entries")
    else:
        for alias, wid in sorted(inst.workflow_ids.items()):
            key = f"{field}.workflow_ids.{alias[:128]}"
            if not WORKFLOW_ALIAS.match(alias):
                v.add(
                    key,
                    "alias must be 1-128 letters, digits, '.', '_', '-' (starting with a letter or digit)",
                )
            _check_workflow_id(v, wid, key, platform)
    v.text(inst.platform_account_id, f"{field}.platform_account_id", max_len=MAX_USER_ID)
    v.text(inst.default_platform_user_id, f"{field}.default_platform_user_id", max_len=MAX_USER_ID)
    _check_user_mappings(inst, v, field)
    _check_template(v, inst.input_template, f"{field}.input_template", "context")
    _check_template(v, inst.output_template, f"{field}.output_template", "result")
    _check_paths(v, inst.required_context_fields, f"{field}.required_context_fields")
    _check_paths(v, inst.sensitive_fields, f"{field}.sensitive_fields")
    _check_url(v, inst.callback_url, f"{field}.callback_url", required=False)
    check_rate_limit(inst.rate_limit, v, f"{field}.rate_limit")
    _check_retry(inst.retry_policy, v, f"{field}.retry_policy")
    _duration(v, inst.timeout, f"{field}.timeout", MAX_TIMEOUT_S, "600 s (0 means 30 s)")
    _duration(
        v,
        inst.webhook_tolerance,
        f"{field}.webhook_tolerance",
        MAX_WEBHOOK_TOLERANCE_S,
        "24 h (0 means 300 s)",
    )
    if inst.local_capability_id:
        v.pattern(
            inst.local_capability_id,
            f"{field}.local_capability_id",
            CAPABILITY_ID,
            "a capability id: lower-case letters, digits, '.', '_', '-', '/' (up to 192)",
        )
    v.labels(inst.labels, f"{field}.labels")
    if inst.HasField("credential_input"):
        if creating:
            validate_credential_input(
                inst.credential_input, platform, v, f"{field}.credential_input", required=False
            )
        else:
            v.add(f"{field}.credential_input", "is only accepted at creation: use RotateCredential")


def _check_user_mappings(inst: connector_pb2.ConnectorInstance, v: Violations, field: str) -> None:
    f = f"{field}.user_mappings"
    if not v.check(
        len(inst.user_mappings) <= MAX_USER_MAPPINGS, f, f"has more than {MAX_USER_MAPPINGS} entries"
    ):
        return
    seen: set[str] = set()
    for i, m in enumerate(inst.user_mappings):
        v.text(m.user_id, f"{f}[{i}].user_id", max_len=MAX_USER_ID, required=True)
        v.text(m.platform_user_id, f"{f}[{i}].platform_user_id", max_len=MAX_USER_ID, required=True)
        if m.user_id:
            v.check(m.user_id not in seen, f"{f}[{i}].user_id", "is mapped twice")
            seen.add(m.user_id)
        for j, alias in enumerate(m.workflow_aliases[: MAX_WORKFLOWS + 1]):
            v.check(
                alias in inst.workflow_ids,
                f"{f}[{i}].workflow_aliases[{j}]",
                "is not an alias of workflow_ids",
            )


def check_rate_limit(rl: connector_pb2.RateLimit, v: Violations, field: str) -> None:
    """Checks a token bucket: a finite rate of 0 to 100,000 per second and a burst of 0 to 1,000,000."""
    rps = rl.requests_per_second
    v.check(
        math.isfinite(rps) and 0 <= rps <= MAX_RPS,
        f"{field}.requests_per_second",
        f"must be a number from 0 to {MAX_RPS:,.0f} (0 means no limit)",
    )
    v.check(0 <= rl.burst <= MAX_BURST, f"{field}.burst", f"must be 0 to {MAX_BURST:,}")


def _check_retry(rp: connector_pb2.RetryPolicy, v: Violations, field: str) -> None:
    v.check(
        0 <= rp.max_attempts <= MAX_ATTEMPTS,
        f"{field}.max_attempts",
        f"must be 0 to {MAX_ATTEMPTS} (0 means 3, 1 means no retry)",
    )
    initial = _duration(v, rp.initial_backoff, f"{field}.initial_backoff", MAX_BACKOFF_S, "1 h")
    maximum = _duration(v, rp.max_backoff, f"{field}.max_backoff", MAX_BACKOFF_S, "1 h")
    if initial > 0 and maximum > 0:
        v.check(initial <= maximum, f"{field}.initial_backoff", "must not be longer than max_backoff")
    m = rp.backoff_multiplier
    v.check(
        math.isfinite(m) and (m == 0 or 1 <= m <= MAX_MULTIPLIER),
        f"{field}.backoff_multiplier",
        f"must be 0 (meaning 2) or from 1 to {MAX_MULTIPLIER:g}",
    )


# --- credentials ----------------------------------------------------------------------------------------


def webhook_secret_ok(secret: str) -> bool:
    """Whether a webhook signing secret is acceptable input.

    A Standard Webhooks secret is `whsec_` followed by the base64 of 24 to 64 random bytes (the key is those
    bytes). Any other string of 16 to 256 characters without whitespace is accepted too: the guard then signs
    with its UTF-8 bytes (`guard.secret_key`), for senders that sign with a typed string (n8n Code nodes).
    """
    if secret.startswith(WEBHOOK_SECRET_PREFIX):
        body = secret[len(WEBHOOK_SECRET_PREFIX) :]
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            return False
        return 24 <= len(key) <= 64
    return (
        MIN_PLAIN_WEBHOOK_SECRET <= len(secret) <= MAX_PLAIN_WEBHOOK_SECRET
        and not _WHITESPACE.search(secret)
        and not _CONTROL.search(secret)
    )


def _token(v: Violations, value: str, field: str, *, required: bool) -> None:
    if not value:
        v.check(not required, field, "is required")
    elif len(value) > MAX_TOKEN:
        v.add(field, f"is longer than {MAX_TOKEN} characters")
    elif _WHITESPACE.search(value) or _CONTROL.search(value):
        v.add(field, "must not contain whitespace or control characters")


def _rsa_key_problem(pem: str) -> str:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The library's message is not quoted: it may echo part of the key.
        return "must be an unencrypted RSA private key in PEM"
    if not isinstance(key, rsa.RSAPrivateKey):
        return "must be an RSA private key (Coze signs RS256)"
    if key.key_size < MIN_RSA_BITS:
        return f"must be an RSA key of at least {MIN_RSA_BITS} bits"
    return ""


def validate_credential_input(
    ci: connector_pb2.CredentialInput,
    platform: str,
    v: Violations,
    field: str = "credential_input",
    *,
    required: bool,
) -> None:
    """Checks a credential input (collects violations; never quotes a secret).

    Args:
        ci: The credential input.
        platform: `coze` or `n8n`; a Coze JWT app is only valid for Coze.
        v: Collector of the violations.
        field: Name of the input in violation paths.
        required: Whether something must be given (at least one part).
    """
    kind = ci.WhichOneof("credential")
    has_any = (
        kind is not None or bool(ci.webhook_secrets) or bool(ci.secret_headers) or bool(ci.coze_verify_token)
    )
    if required and not has_any:
        v.add(field, "is required: give api_key, oauth, coze_jwt, webhook_secrets or secret_headers")
    if kind == "api_key":
        k = ci.api_key
        _token(v, k.token, f"{field}.api_key.token", required=True)
        if k.HasField("expire_time"):
            _timestamp(v, k.expire_time, f"{field}.api_key.expire_time")
    elif kind == "oauth":
        o = ci.oauth
        _token(v, o.access_token, f"{field}.oauth.access_token", required=True)
        _token(v, o.refresh_token, f"{field}.oauth.refresh_token", required=False)
        _token(v, o.client_secret, f"{field}.oauth.client_secret", required=False)
        if o.HasField("expire_time"):
            _timestamp(v, o.expire_time, f"{field}.oauth.expire_time")
        _check_url(v, o.token_url, f"{field}.oauth.token_url", required=False)
        v.text(o.client_id, f"{field}.oauth.client_id", max_len=255)
        if v.check(
            len(o.scopes) <= MAX_SCOPES, f"{field}.oauth.scopes", f"has more than {MAX_SCOPES} entries"
        ):
            for i, s in enumerate(o.scopes):
                v.check(
                    bool(s) and len(s) <= 255 and not _WHITESPACE.search(s),
                    f"{field}.oauth.scopes[{i}]",
                    "must be 1-255 characters without whitespace",
                )
    elif kind == "coze_jwt":
        j = ci.coze_jwt
        f = f"{field}.coze_jwt"
        if platform != "coze":
            v.add(f, "is only for platform coze")
        v.text(j.app_id, f"{f}.app_id", max_len=255, required=True)
        v.text(j.public_key_id, f"{f}.public_key_id", max_len=255, required=True)
        if not j.private_key_pem:
            v.add(f"{f}.private_key_pem", "is required")
        elif len(j.private_key_pem) > 16 * 1024:
            v.add(f"{f}.private_key_pem", "is larger than 16 KiB")
        else:
            problem = _rsa_key_problem(j.private_key_pem)
            if problem:
                v.add(f"{f}.private_key_pem", problem)
        _duration(v, j.token_ttl, f"{f}.token_ttl", MAX_TOKEN_TTL_S, "86,399 s (0 means 900 s)")
    if v.check(
        len(ci.webhook_secrets) <= MAX_WEBHOOK_SECRETS,
        f"{field}.webhook_secrets",
        f"has more than {MAX_WEBHOOK_SECRETS} entries",
    ):
        for i, s in enumerate(ci.webhook_secrets):
            v.check(
                webhook_secret_ok(s),
                f"{field}.webhook_secrets[{i}]",
                "must be whsec_ followed by the base64 of 24 to 64 bytes, "
                f"or {MIN_PLAIN_WEBHOOK_SECRET} to {MAX_PLAIN_WEBHOOK_SECRET} characters without whitespace",
            )
    if v.check(
        len(ci.secret_headers) <= MAX_SECRET_HEADERS,
        f"{field}.secret_headers",
        f"has more than {MAX_SECRET_HEADERS} entries",
    ):
        for name, value in sorted(ci.secret_headers.items()):
            if not HEADER_NAME.match(name):
                v.add(
                    f"{field}.secret_headers", "has a name that is not an HTTP header name (RFC 7230 token)"
                )
                continue
            hf = f"{field}.secret_headers[{name}]"
            if name.lower() in RESERVED_HEADERS:
                v.add(hf, "is set by the HTTP client and cannot be a secret header")
            elif not value:
                v.add(hf, "is required: give the header a value")
            elif len(value) > MAX_HEADER_VALUE:
                v.add(hf, f"is longer than {MAX_HEADER_VALUE} characters")
            elif "\r" in value or "\n" in value or "\x00" in value:
                v.add(hf, "must not contain CR, LF or NUL")
    v.text(ci.coze_verify_token, f"{field}.coze_verify_token", max_len=MAX_VERIFY_TOKEN)


# --- update masks ---------------------------------------------------------------------------------------


def check_update_mask(paths: Sequence[str], v: Violations, field: str = "update_mask") -> None:
    """Checks the paths of an update mask of a ConnectorInstance.

    Top-level settable fields (`UPDATABLE_FIELDS`), fields of `rate_limit` and `retry_policy`
    (`rate_limit.burst`), or `*` alone for every settable field. Output-only fields and `credential_input`
    are violations, as are unknown names and an empty mask.
    """
    if not paths:
        v.add(field, "is required: name the fields to change, or * for all")
        return
    if "*" in paths and len(paths) > 1:
        v.add(field, "* replaces every settable field and must be the only path")
        return
    for i, path in enumerate(paths):
        f = f"{field}.paths[{i}]"
        head, _, rest = path.partition(".")
        if path == "*":
            continue
        if head in OUTPUT_ONLY_FIELDS:
            v.add(f, f"{path[:64]} is output only")
        elif head in INPUT_ONLY_FIELDS:
            v.add(f, "credential_input changes only through RotateCredential")
        elif head not in UPDATABLE_FIELDS:
            v.add(f, f"{path[:64]!r} is not a field of ConnectorInstance")
        elif rest and (head not in _NESTED_UPDATABLE or rest not in _NESTED_UPDATABLE[head]):
            v.add(f, f"{path[:64]!r} is not a field that can be updated on its own")


def apply_update_mask(
    base: connector_pb2.ConnectorInstance, patch: connector_pb2.ConnectorInstance, paths: Sequence[str]
) -> connector_pb2.ConnectorInstance:
    """A copy of `base` with the fields named by a checked update mask taken from `patch`.

    Named maps and lists are replaced, not merged; a named message is replaced whole (`rate_limit`) or
    field by field (`rate_limit.burst`).
    """
    out = connector_pb2.ConnectorInstance()
    out.CopyFrom(base)
    mask = field_mask_pb2.FieldMask(paths=list(UPDATABLE_FIELDS) if "*" in paths else list(paths))
    mask.MergeMessage(patch, out, replace_message_field=True, replace_repeated_field=True)
    return out


def settings_of(inst: connector_pb2.ConnectorInstance) -> connector_pb2.ConnectorInstance:
    """A copy of an instance with only its settable fields (output-only and credential fields cleared)."""
    out = connector_pb2.ConnectorInstance()
    out.CopyFrom(inst)
    for name in (*OUTPUT_ONLY_FIELDS, *INPUT_ONLY_FIELDS):
        out.ClearField(name)
    return out
