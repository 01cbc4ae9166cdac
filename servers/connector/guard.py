"""Webhook guard: verifies platform callbacks over the exact bytes received.

Two schemes, chosen by the headers present:

- **Standard Webhooks** (spec v1.0.0; n8n and Composio can send it): `webhook-id`, `webhook-timestamp`
  (unix seconds) and `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` over
  `"{id}.{timestamp}." + body`. Several signatures and several secrets let either side rotate secrets
  without downtime. The `standardwebhooks` package is not used because its tolerance is fixed at 5 minutes
  and it raises a bare `ValueError` on a malformed header.
- **Coze callbacks**: `X-Coze-Signature`, `X-Coze-Timestamp`, `X-Coze-Nonce`; the signature is the
  SHA-1 (not an HMAC) of `timestamp + nonce + verify_token + body`, taken as lower- or upper-case hex.

Checks run in a fixed order so that the verdict tells an operator what to fix: headers missing →
`SIGNATURE_STATUS_MISSING`; headers malformed → `SIGNATURE_STATUS_INVALID` (`MALFORMED_SIGNATURE`);
timestamp outside the tolerance, in either direction → `SIGNATURE_STATUS_STALE`; no signature matches any
secret → `SIGNATURE_STATUS_INVALID`; else `SIGNATURE_STATUS_VERIFIED`. Nothing here raises on hostile
input, and every secret comparison is constant time.

Replay protection is the caller's, because it needs shared state: after a VERIFIED verdict, ask the
`NonceMemory` of `servers.agent.security` (`LocalNonces` in one process, `RedisNonces` when scaled out)::

    if not await memory.first_use(f"{tenant_id}:{instance_id}:{verdict.webhook_id}", 2 * tolerance_s):
        verdict = verdict.replayed()

The TTL of twice the tolerance outlives every timestamp the guard still accepts, so a replay is either
stale or remembered.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import secrets as _random
from collections.abc import Mapping, Sequence

from powerx.connector.v1 import callback_pb2

SCHEME_STANDARD = "standard-webhooks"
SCHEME_COZE = "coze"

VERIFIED = callback_pb2.SIGNATURE_STATUS_VERIFIED
INVALID = callback_pb2.SIGNATURE_STATUS_INVALID
MISSING = callback_pb2.SIGNATURE_STATUS_MISSING
STALE = callback_pb2.SIGNATURE_STATUS_STALE
REPLAYED = callback_pb2.SIGNATURE_STATUS_REPLAYED

# Error codes carried by `CallbackEvent.error_code` when the guard rejects a webhook.
SIGNATURE_MISSING = "SIGNATURE_MISSING"
SIGNATURE_INVALID = "SIGNATURE_INVALID"
MALFORMED_SIGNATURE = "MALFORMED_SIGNATURE"
TIMESTAMP_STALE = "TIMESTAMP_STALE"
WEBHOOK_REPLAYED = "WEBHOOK_REPLAYED"

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
MAX_ID_CHARS = 256
# Bounds on the work a hostile sender can ask for; genuine headers are far smaller (a v1 entry is 47 chars).
MAX_SIGNATURE_HEADER_CHARS = 4096
MAX_SIGNATURES = 16
_MAX_TIMESTAMP_DIGITS = 16  # milliseconds until the year 318857; anything longer is not a time
_MS_THRESHOLD = 10**11  # seconds reach 10^11 in the year 5138; milliseconds passed it in 1973
_SHA256_BYTES = 32
_SHA1_HEX_CHARS = 40
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The guard's decision on one webhook; safe to log and to publish (it holds no secret).

    Attributes:
        status: A `callback_pb2.SIGNATURE_STATUS_*` value.
        scheme: `standard-webhooks` or `coze`.
        webhook_id: The `webhook-id` header, or the Coze nonce; empty when absent or malformed.
        timestamp: The sender's timestamp in unix seconds (Coze milliseconds are converted); 0 when absent
            or malformed.
        error_code: Empty when verified, else `SIGNATURE_MISSING`, `MALFORMED_SIGNATURE`,
            `TIMESTAMP_STALE`, `SIGNATURE_INVALID` or `WEBHOOK_REPLAYED`.
        message: A description for operators.
    """

    status: callback_pb2.SignatureStatus
    scheme: str
    webhook_id: str = ""
    timestamp: int = 0
    error_code: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the webhook may be processed."""
        return self.status == VERIFIED

    def replayed(self) -> Verdict:
        """This verdict turned into `SIGNATURE_STATUS_REPLAYED` (the id was seen within the window)."""
        return dataclasses.replace(
            self,
            status=REPLAYED,
            error_code=WEBHOOK_REPLAYED,
            message="webhook id already received within the dedup window; not processed again",
        )


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    # HTTP header names are case-insensitive; callers usually lower-case them already, this makes sure.
    return {k.lower(): v for k, v in headers.items()}


def _valid_id(value: str, *, allow_dot: bool = False) -> bool:
    # Visible ASCII only: the id becomes part of the replay key and the audit log. Standard Webhooks
    # forbids dots, which would make `id.timestamp.body` ambiguous.
    return 0 < len(value) <= MAX_ID_CHARS and all("!" <= c <= "~" and (allow_dot or c != ".") for c in value)


def _parse_timestamp(value: str) -> int | None:
    if not 0 < len(value) <= _MAX_TIMESTAMP_DIGITS or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret.

    `whsec_<base64>` gives the decoded bytes, as the spec says (padding optional). A secret without the
    prefix is used as its UTF-8 bytes: some senders (hand-written n8n Code nodes among them) sign with
    the literal string. This differs from the `standardwebhooks` package, which base64-decodes an
    unprefixed string; give such secrets the `whsec_` prefix.

    Raises:
        ValueError: Empty, or `whsec_` followed by something that is not base64 (the secret is not echoed).
    """
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook secret after 'whsec_' is not valid base64") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def generate_secret(n_bytes: int = 32) -> str:
    """A new `whsec_` secret of random bytes (the spec asks for 24 to 64)."""
    if not 24 <= n_bytes <= 64:
        raise ValueError("a webhook secret has 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(n_bytes)).decode()


def _standard_mac(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign_standard(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    """The `webhook-signature` entry `v1,<base64>` a Standard Webhooks sender puts on `body`.

    Args:
        secret: `whsec_<base64>` or a raw string (see `secret_key`).
        msg_id: The `webhook-id` header.
        ts: The `webhook-timestamp` header, unix seconds.
        body: The exact bytes sent.
    """
    mac = _standard_mac(secret_key(secret), msg_id, str(ts), body)
    return "v1," + base64.b64encode(mac).decode()


def sign_coze(token: str, timestamp: str | int, nonce: str, body: bytes) -> str:
    """The `X-Coze-Signature` of a callback: lower-case hex SHA-1 of `timestamp + nonce + token + body`."""
    # SHA-1 and a plain hash rather than an HMAC are Coze's choices, not ours.
    return hashlib.sha1(f"{timestamp}{nonce}{token}".encode() + body).hexdigest()  # noqa: S324


def _v1_signatures(header: str) -> list[bytes] | None:
    """The decoded `v1` signatures of a header; None when it is too big to be genuine.

    Entries of other versions (`v1a` is the asymmetric form) and malformed entries are skipped rather than
    rejected, so that a sender may add new forms next to `v1`.
    """
    if len(header) > MAX_SIGNATURE_HEADER_CHARS:
        return None
    entries = header.split()
    if len(entries) > MAX_SIGNATURES:
        return None
    found: list[bytes] = []
    for entry in entries:
        version, comma, encoded = entry.partition(",")
        if not comma or version != "v1":
            continue
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == _SHA256_BYTES:
            found.append(raw)
    return found


def _stale(ts_s: float, now_s: float, tolerance_s: float) -> bool:
    return abs(now_s - ts_s) > tolerance_s


def _stale_message(header: str, ts_s: float, now_s: float, tolerance_s: float) -> str:
    # A timestamp in the future usually means the sender's clock is wrong: say which way it is off.
    where = "in the past" if ts_s <= now_s else "in the future"
    return f"{header} is {abs(now_s - ts_s):.0f}s {where}, beyond the tolerance of {tolerance_s:g}s"


def verify_standard(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now_s: float,
    tolerance_s: float,
) -> Verdict:
    """Verifies a Standard Webhooks delivery.

    Args:
        body: The raw request body, exactly as received.
        headers: The request headers (names are matched case-insensitively).
        secrets: The instance's active secrets (`whsec_<base64>` or raw strings, see `secret_key`); a
            signature by any of them is accepted, which is how secrets rotate. Secrets that do not parse
            are skipped.
        now_s: The current unix time in seconds.
        tolerance_s: How far the timestamp may be from `now_s`, in either direction.

    Returns:
        The verdict; it never raises on hostile input. Replay is the caller's check (module docstring).
    """
    h = _lower(headers)
    msg_id, raw_ts, header = (
        h.get(n, "").strip() for n in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not (msg_id and raw_ts and header):
        absent = [n for n, v in (("id", msg_id), ("timestamp", raw_ts), ("signature", header)) if not v]
        return Verdict(
            MISSING,
            SCHEME_STANDARD,
            error_code=SIGNATURE_MISSING,
            message=f"missing webhook-{', webhook-'.join(absent)}",
        )
    if not _valid_id(msg_id):
        return Verdict(
            INVALID,
            SCHEME_STANDARD,
            error_code=MALFORMED_SIGNATURE,
            message=f"webhook-id must be 1-{MAX_ID_CHARS} printable ASCII characters without '.' or spaces",
        )
    ts = _parse_timestamp(raw_ts)
    if ts is None:
        return Verdict(
            INVALID,
            SCHEME_STANDARD,
            webhook_id=msg_id,
            error_code=MALFORMED_SIGNATURE,
            message="webhook-timestamp must be whole unix seconds",
        )
    given = _v1_signatures(header)
    if not given:
        return Verdict(
            INVALID,
            SCHEME_STANDARD,
            webhook_id=msg_id,
            timestamp=ts,
            error_code=MALFORMED_SIGNATURE,
            message="webhook-signature has no well-formed v1 signature",
        )
    if _stale(ts, now_s, tolerance_s):
        return Verdict(
            STALE,
            SCHEME_STANDARD,
            webhook_id=msg_id,
            timestamp=ts,
            error_code=TIMESTAMP_STALE,
            message=_stale_message("webhook-timestamp", ts, now_s, tolerance_s),
        )
    matched = False
    for secret in secrets:
        try:
            key = secret_key(secret)
        except ValueError:
            continue
        expected = _standard_mac(key, msg_id, raw_ts, body)
        for candidate in given:
            # No early exit: how long this takes must not depend on which secret or signature matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        return Verdict(
            INVALID,
            SCHEME_STANDARD,
            webhook_id=msg_id,
            timestamp=ts,
            error_code=SIGNATURE_INVALID,
            message="no signature matches a configured secret" if secrets else "no webhook secret configured",
        )
    return Verdict(VERIFIED, SCHEME_STANDARD, webhook_id=msg_id, timestamp=ts)


def verify_coze(
    body: bytes,
    headers: Mapping[str, str],
    verify_tokens: Sequence[str],
    *,
    now_s: float,
    tolerance_s: float,
) -> Verdict:
    """Verifies a Coze callback (`X-Coze-Signature`, `X-Coze-Timestamp`, `X-Coze-Nonce`).

    Coze does not document the timestamp's unit, so values above 10^11 are taken as milliseconds and the
    rest as seconds. The signature is compared as hex in either case.

    Args:
        body: The raw request body, exactly as received.
        headers: The request headers (names are matched case-insensitively).
        verify_tokens: The callback app's verify tokens (more than one during a rotation).
        now_s: The current unix time in seconds.
        tolerance_s: How far the timestamp may be from `now_s`, in either direction.

    Returns:
        The verdict, with the nonce as `webhook_id`; it never raises on hostile input.
    """
    h = _lower(headers)
    signature, raw_ts, nonce = (
        h.get(n, "").strip() for n in ("x-coze-signature", "x-coze-timestamp", "x-coze-nonce")
    )
    if not (signature and raw_ts and nonce):
        absent = [n for n, v in (("Signature", signature), ("Timestamp", raw_ts), ("Nonce", nonce)) if not v]
        return Verdict(
            MISSING,
            SCHEME_COZE,
            error_code=SIGNATURE_MISSING,
            message=f"missing X-Coze-{', X-Coze-'.join(absent)}",
        )
    if not _valid_id(nonce, allow_dot=True):
        return Verdict(
            INVALID,
            SCHEME_COZE,
            error_code=MALFORMED_SIGNATURE,
            message=f"X-Coze-Nonce must be 1-{MAX_ID_CHARS} printable ASCII characters without spaces",
        )
    ts = _parse_timestamp(raw_ts)
    if ts is None:
        return Verdict(
            INVALID,
            SCHEME_COZE,
            webhook_id=nonce,
            error_code=MALFORMED_SIGNATURE,
            message="X-Coze-Timestamp must be a whole number",
        )
    ts_s = ts / 1000 if ts > _MS_THRESHOLD else float(ts)
    if len(signature) != _SHA1_HEX_CHARS or not set(signature) <= _HEX:
        return Verdict(
            INVALID,
            SCHEME_COZE,
            webhook_id=nonce,
            timestamp=int(ts_s),
            error_code=MALFORMED_SIGNATURE,
            message="X-Coze-Signature must be a 40-digit hex SHA-1",
        )
    if _stale(ts_s, now_s, tolerance_s):
        return Verdict(
            STALE,
            SCHEME_COZE,
            webhook_id=nonce,
            timestamp=int(ts_s),
            error_code=TIMESTAMP_STALE,
            message=_stale_message("X-Coze-Timestamp", ts_s, now_s, tolerance_s),
        )
    given = signature.lower().encode()
    matched = False
    for token in verify_tokens:
        if token:
            # The header's own digits are signed, not the normalised seconds.
            matched |= hmac.compare_digest(sign_coze(token, raw_ts, nonce, body).encode(), given)
    if not matched:
        return Verdict(
            INVALID,
            SCHEME_COZE,
            webhook_id=nonce,
            timestamp=int(ts_s),
            error_code=SIGNATURE_INVALID,
            message="signature matches no verify token"
            if any(verify_tokens)
            else "no Coze verify token configured",
        )
    return Verdict(VERIFIED, SCHEME_COZE, webhook_id=nonce, timestamp=int(ts_s))


def detect_scheme(headers: Mapping[str, str]) -> str | None:
    """The scheme a request's headers speak: `standard-webhooks`, `coze`, or None when neither.

    Any `webhook-id`/`webhook-timestamp`/`webhook-signature` header means Standard Webhooks (which wins
    when both kinds are present); else any `X-Coze-*` signature header means Coze.
    """
    names = {k.lower() for k in headers}
    if names & {"webhook-id", "webhook-timestamp", "webhook-signature"}:
        return SCHEME_STANDARD
    if names & {"x-coze-signature", "x-coze-timestamp", "x-coze-nonce"}:
        return SCHEME_COZE
    return None


def verify(
    body: bytes,
    headers: Mapping[str, str],
    *,
    secrets: Sequence[str],
    coze_tokens: Sequence[str],
    now_s: float,
    tolerance_s: float,
) -> Verdict:
    """Verifies a webhook with the scheme its headers speak (`detect_scheme`).

    A sender cannot choose a scheme the instance has no secrets for: its signature matches nothing and
    the verdict is INVALID.

    Args:
        body: The raw request body, exactly as received.
        headers: The request headers (names are matched case-insensitively).
        secrets: Standard Webhooks secrets of the instance.
        coze_tokens: Coze verify tokens of the instance.
        now_s: The current unix time in seconds.
        tolerance_s: How far the timestamp may be from `now_s`, in either direction.

    Returns:
        The verdict; with no signature headers at all, MISSING (for the scheme the instance is configured
        for, Standard Webhooks unless it has only Coze tokens).
    """
    scheme = detect_scheme(headers)
    if scheme == SCHEME_COZE:
        return verify_coze(body, headers, coze_tokens, now_s=now_s, tolerance_s=tolerance_s)
    if scheme == SCHEME_STANDARD:
        return verify_standard(body, headers, secrets, now_s=now_s, tolerance_s=tolerance_s)
    expected = SCHEME_COZE if coze_tokens and not secrets else SCHEME_STANDARD
    return Verdict(MISSING, expected, error_code=SIGNATURE_MISSING, message="no webhook signature headers")
