"""Webhook guard (servers/connector/guard.py): Standard Webhooks and Coze callback signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from powerx.connector.v1 import callback_pb2
from servers.agent.security import LocalNonces
from servers.connector import guard
from servers.connector.guard import (
    MALFORMED_SIGNATURE,
    SCHEME_COZE,
    SCHEME_STANDARD,
    SIGNATURE_INVALID,
    SIGNATURE_MISSING,
    TIMESTAMP_STALE,
    WEBHOOK_REPLAYED,
    detect_scheme,
    secret_key,
    sign_coze,
    sign_standard,
    verify,
    verify_coze,
    verify_standard,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
NOW = 1_760_000_000
TOL = 300.0
BODY = b'{"type":"workflow.finished","data":{"ok":true,"n":"\xc3\xa9"}}'
MSG = "msg_2Lx1"


def std_headers(sig: str, msg_id: str = MSG, ts: int | str = NOW) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def check(
    body: bytes, headers: dict[str, str], secrets: list[str] | None = None, now: float = NOW
) -> guard.Verdict:
    return verify_standard(
        body, headers, [SECRET] if secrets is None else secrets, now_s=now, tolerance_s=TOL
    )


# --- Standard Webhooks: agreement with the reference implementation -------------------------------


def test_signature_equals_standardwebhooks_package() -> None:
    ours = sign_standard(SECRET, MSG, NOW, BODY)
    theirs = Webhook(SECRET).sign(MSG, datetime.fromtimestamp(NOW, tz=UTC), BODY.decode())
    assert ours == theirs
    assert ours.startswith("v1,")


def test_verifies_what_the_package_signs_and_vice_versa() -> None:
    now = int(time.time())
    theirs = Webhook(SECRET).sign(MSG, datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    verdict = verify_standard(BODY, std_headers(theirs, ts=now), [SECRET], now_s=now, tolerance_s=TOL)
    assert verdict.ok
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_VERIFIED
    assert (verdict.scheme, verdict.webhook_id, verdict.timestamp, verdict.error_code) == (
        SCHEME_STANDARD,
        MSG,
        now,
        "",
    )
    # The package checks against the real clock, hence the real `now` here.
    Webhook(SECRET).verify(BODY, std_headers(sign_standard(SECRET, MSG, now, BODY), ts=now))


def test_signature_is_the_documented_hmac() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{MSG}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert sign_standard(SECRET, MSG, NOW, BODY) == "v1," + base64.b64encode(mac).decode()


def test_header_names_are_case_insensitive() -> None:
    sig = sign_standard(SECRET, MSG, NOW, BODY)
    headers = {"Webhook-Id": MSG, "WEBHOOK-TIMESTAMP": str(NOW), "Webhook-Signature": sig}
    assert check(BODY, headers).ok


# --- rotation --------------------------------------------------------------------------------------


def test_rotation_either_secret_verifies() -> None:
    sig_new = sign_standard(OTHER, MSG, NOW, BODY)
    assert check(BODY, std_headers(sig_new), [SECRET, OTHER]).ok
    assert check(BODY, std_headers(sig_new), [OTHER]).ok
    assert not check(BODY, std_headers(sig_new), [SECRET]).ok


def test_rotation_two_signatures_one_secret() -> None:
    both = f"{sign_standard(OTHER, MSG, NOW, BODY)} {sign_standard(SECRET, MSG, NOW, BODY)}"
    assert check(BODY, std_headers(both), [SECRET]).ok
    assert check(BODY, std_headers(both), [OTHER]).ok
    third = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert check(BODY, std_headers(both), [third]).error_code == SIGNATURE_INVALID


def test_unknown_versions_and_junk_entries_are_skipped() -> None:
    good = sign_standard(SECRET, MSG, NOW, BODY)
    header = f"v1a,{base64.b64encode(b'e' * 64).decode()} nocomma v1,!!! v2,abc {good}"
    assert check(BODY, std_headers(header)).ok


def test_v1a_only_is_malformed() -> None:
    verdict = check(BODY, std_headers(f"v1a,{base64.b64encode(b'e' * 64).decode()}"))
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_INVALID
    assert verdict.error_code == MALFORMED_SIGNATURE


def test_unparseable_secrets_are_skipped_not_raised() -> None:
    sig = sign_standard(SECRET, MSG, NOW, BODY)
    assert check(BODY, std_headers(sig), ["whsec_***", "", SECRET]).ok
    verdict = check(BODY, std_headers(sig), ["whsec_***"])
    assert verdict.error_code == SIGNATURE_INVALID


def test_raw_secret_without_prefix_is_its_utf8_bytes() -> None:
    assert secret_key("plain-text-secret") == b"plain-text-secret"
    mac = hmac.new(b"plain-text-secret", f"{MSG}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    header = "v1," + base64.b64encode(mac).decode()
    assert check(BODY, std_headers(header), ["plain-text-secret"]).ok
    assert sign_standard("plain-text-secret", MSG, NOW, BODY) == header


def test_secret_key_errors_do_not_echo_the_secret() -> None:
    with pytest.raises(ValueError) as err:
        secret_key("whsec_sup3r*secret")
    assert "sup3r" not in str(err.value)
    with pytest.raises(ValueError, match="empty"):
        secret_key("")
    with pytest.raises(ValueError, match="empty"):
        secret_key("whsec_")


def test_generated_secrets_verify_with_the_package() -> None:
    secret = guard.generate_secret()
    assert secret.startswith("whsec_")
    assert len(secret_key(secret)) == 32
    assert sign_standard(secret, MSG, NOW, BODY) == Webhook(secret).sign(
        MSG, datetime.fromtimestamp(NOW, tz=UTC), BODY.decode()
    )
    with pytest.raises(ValueError):
        guard.generate_secret(8)


# --- tampering -------------------------------------------------------------------------------------


def test_tampered_body_id_or_timestamp_is_invalid() -> None:
    sig = sign_standard(SECRET, MSG, NOW, BODY)
    for body, headers in (
        (BODY + b" ", std_headers(sig)),
        (BODY.replace(b"true", b"false"), std_headers(sig)),
        (b"", std_headers(sig)),
        (BODY, std_headers(sig, msg_id="msg_2Lx2")),
        (BODY, std_headers(sig, ts=NOW + 1)),
    ):
        verdict = check(body, headers)
        assert verdict.status == callback_pb2.SIGNATURE_STATUS_INVALID
        assert verdict.error_code == SIGNATURE_INVALID


def test_every_flipped_signature_bit_is_invalid() -> None:
    raw = bytearray(base64.b64decode(sign_standard(SECRET, MSG, NOW, BODY)[3:]))
    for i in range(len(raw)):
        raw[i] ^= 0x80
        assert (
            check(BODY, std_headers("v1," + base64.b64encode(raw).decode())).error_code == SIGNATURE_INVALID
        )
        raw[i] ^= 0x80


def test_timestamp_with_leading_zero_is_signed_as_sent() -> None:
    # The header's own text is signed; re-formatting it would break senders and let a sender's
    # signature over one text verify for another.
    sig = sign_standard(SECRET, MSG, NOW, BODY)
    assert check(BODY, std_headers(sig, ts="0" + str(NOW))).error_code == SIGNATURE_INVALID


# --- missing and malformed headers -----------------------------------------------------------------


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(drop: str) -> None:
    headers = std_headers(sign_standard(SECRET, MSG, NOW, BODY))
    del headers[drop]
    verdict = check(BODY, headers)
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_MISSING
    assert verdict.error_code == SIGNATURE_MISSING
    assert drop in verdict.message


def test_empty_header_counts_as_missing() -> None:
    verdict = check(BODY, std_headers("   "))
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_MISSING


@pytest.mark.parametrize(
    "signature",
    [
        "v1",
        "v1,",
        ",",
        "nocomma",
        "v1,not base64!",
        "v1,====",
        "v1,YWJj",  # valid base64, wrong length
        "v1," + "A" * 100_000,
        "v1,abc,def",
        " ".join(["v1,YWJj"] * 1000),
        "\x00\x01\x02",
        "v1,\u00e9\u00e9",
    ],
)
def test_malformed_signature_header_never_raises(signature: str) -> None:
    verdict = check(BODY, std_headers(signature))
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_INVALID
    assert verdict.error_code == MALFORMED_SIGNATURE


def test_valid_signature_hidden_in_a_huge_header_is_rejected() -> None:
    good = sign_standard(SECRET, MSG, NOW, BODY)
    verdict = check(BODY, std_headers(" ".join([good] * 200)))
    assert verdict.error_code == MALFORMED_SIGNATURE


@pytest.mark.parametrize(
    "msg_id",
    ["msg.1", "a" * 257, "msg 1", "msg\t1", "m\u00e9g", "\x00"],
)
def test_malformed_id(msg_id: str) -> None:
    verdict = check(BODY, std_headers(sign_standard(SECRET, "x", NOW, BODY), msg_id=msg_id))
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_INVALID
    assert verdict.error_code == MALFORMED_SIGNATURE
    assert verdict.webhook_id == ""


def test_id_of_256_visible_characters_is_accepted() -> None:
    msg_id = "a" * 255 + "~"
    assert check(BODY, std_headers(sign_standard(SECRET, msg_id, NOW, BODY), msg_id=msg_id)).ok


@pytest.mark.parametrize("ts", ["-1", "1.5", "1e9", "abc", "0x10", "9" * 40, "\u0661\u0662", "+17"])
def test_malformed_timestamp(ts: str) -> None:
    verdict = check(BODY, std_headers(sign_standard(SECRET, MSG, NOW, BODY), ts=ts))
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_INVALID
    assert verdict.error_code == MALFORMED_SIGNATURE


def test_malformed_comes_before_stale() -> None:
    verdict = check(BODY, std_headers("nocomma", ts=NOW - 10_000))
    assert verdict.error_code == MALFORMED_SIGNATURE


# --- tolerance -------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-300, 300, 0, -299, 299])
def test_within_tolerance_boundaries(offset: int) -> None:
    ts = NOW + offset
    assert check(BODY, std_headers(sign_standard(SECRET, MSG, ts, BODY), ts=ts)).ok


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 10**9])
def test_stale_past_and_future(offset: int) -> None:
    ts = NOW + offset
    verdict = check(BODY, std_headers(sign_standard(SECRET, MSG, ts, BODY), ts=ts))
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_STALE
    assert verdict.error_code == TIMESTAMP_STALE
    assert ("future" if offset > 0 else "past") in verdict.message


def test_stale_wins_over_a_bad_signature() -> None:
    verdict = check(BODY, std_headers(sign_standard(OTHER, MSG, NOW, BODY), ts=NOW - 1000))
    assert verdict.error_code == TIMESTAMP_STALE


def test_fractional_now_boundary() -> None:
    sig = sign_standard(SECRET, MSG, NOW, BODY)
    assert check(BODY, std_headers(sig), now=NOW + 300.0).ok
    assert check(BODY, std_headers(sig), now=NOW + 300.001).error_code == TIMESTAMP_STALE


def test_no_secrets_configured() -> None:
    verdict = check(BODY, std_headers(sign_standard(SECRET, MSG, NOW, BODY)), [])
    assert verdict.error_code == SIGNATURE_INVALID
    assert "no webhook secret" in verdict.message


def test_messages_never_contain_secrets() -> None:
    cases = [
        std_headers(sign_standard(SECRET, MSG, NOW, BODY)),
        std_headers(sign_standard(OTHER, MSG, NOW, BODY)),
        std_headers("nocomma"),
        std_headers(sign_standard(SECRET, MSG, NOW, BODY), ts=NOW - 1000),
    ]
    for headers in cases:
        verdict = check(BODY, headers)
        for text in (SECRET, SECRET.removeprefix("whsec_"), sign_standard(SECRET, MSG, NOW, BODY)[3:]):
            assert text not in repr(verdict)


# --- replay (the caller's step with NonceMemory) ---------------------------------------------------


async def test_replay_with_nonce_memory() -> None:
    memory = LocalNonces(clock=lambda: 0.0)
    verdict = check(BODY, std_headers(sign_standard(SECRET, MSG, NOW, BODY)))
    assert verdict.ok
    key = f"t1:ci_1:{verdict.webhook_id}"
    assert await memory.first_use(key, 2 * TOL)
    assert not await memory.first_use(key, 2 * TOL)
    replayed = verdict.replayed()
    assert replayed.status == callback_pb2.SIGNATURE_STATUS_REPLAYED
    assert replayed.error_code == WEBHOOK_REPLAYED
    assert not replayed.ok
    assert replayed.webhook_id == MSG


# --- Coze ------------------------------------------------------------------------------------------

TOKEN = "coze-verify-token"
NONCE = "n0nce-abc"


def coze_headers(sig: str, ts: int | str = NOW, nonce: str = NONCE) -> dict[str, str]:
    return {"X-Coze-Signature": sig, "X-Coze-Timestamp": str(ts), "X-Coze-Nonce": nonce}


def coze(
    body: bytes, headers: dict[str, str], tokens: list[str] | None = None, now: float = NOW
) -> guard.Verdict:
    return verify_coze(body, headers, [TOKEN] if tokens is None else tokens, now_s=now, tolerance_s=TOL)


def test_coze_signature_is_sha1_of_the_concatenation() -> None:
    expected = hashlib.sha1(f"{NOW}{NONCE}{TOKEN}".encode() + BODY).hexdigest()
    assert sign_coze(TOKEN, NOW, NONCE, BODY) == expected
    verdict = coze(BODY, coze_headers(expected))
    assert verdict.ok
    assert (verdict.scheme, verdict.webhook_id, verdict.timestamp) == (SCHEME_COZE, NONCE, NOW)


def test_coze_hex_case_does_not_matter() -> None:
    assert coze(BODY, coze_headers(sign_coze(TOKEN, NOW, NONCE, BODY).upper())).ok


def test_coze_milliseconds_timestamp() -> None:
    ms = NOW * 1000 + 250
    sig = sign_coze(TOKEN, ms, NONCE, BODY)
    verdict = coze(BODY, coze_headers(sig, ts=ms))
    assert verdict.ok
    assert verdict.timestamp == NOW
    stale_ms = (NOW - 400) * 1000
    assert coze(BODY, coze_headers(sign_coze(TOKEN, stale_ms, NONCE, BODY), ts=stale_ms)).error_code == (
        TIMESTAMP_STALE
    )


def test_coze_token_rotation_and_wrong_token() -> None:
    sig = sign_coze("old-token", NOW, NONCE, BODY)
    assert coze(BODY, coze_headers(sig), ["new-token", "old-token"]).ok
    verdict = coze(BODY, coze_headers(sig), ["new-token"])
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_INVALID
    assert verdict.error_code == SIGNATURE_INVALID
    assert "new-token" not in verdict.message
    assert coze(BODY, coze_headers(sig), []).message == "no Coze verify token configured"


def test_coze_tampering() -> None:
    sig = sign_coze(TOKEN, NOW, NONCE, BODY)
    assert coze(BODY + b"x", coze_headers(sig)).error_code == SIGNATURE_INVALID
    assert coze(BODY, coze_headers(sig, nonce="other")).error_code == SIGNATURE_INVALID
    assert coze(BODY, coze_headers(sig, ts=NOW + 1)).error_code == SIGNATURE_INVALID


def test_coze_missing_malformed_stale() -> None:
    sig = sign_coze(TOKEN, NOW, NONCE, BODY)
    headers = coze_headers(sig)
    del headers["X-Coze-Nonce"]
    assert coze(BODY, headers).status == callback_pb2.SIGNATURE_STATUS_MISSING
    for bad in ("zz" * 20, sig[:-1], sig + "0", "", "x"):
        verdict = coze(BODY, coze_headers(bad))
        assert verdict.status in (
            callback_pb2.SIGNATURE_STATUS_INVALID,
            callback_pb2.SIGNATURE_STATUS_MISSING,
        )
    assert coze(BODY, coze_headers("zz" * 20)).error_code == MALFORMED_SIGNATURE
    assert coze(BODY, coze_headers(sig, ts="soon")).error_code == MALFORMED_SIGNATURE
    assert coze(BODY, coze_headers(sig, nonce="a b")).error_code == MALFORMED_SIGNATURE
    old = NOW - 301
    verdict = coze(BODY, coze_headers(sign_coze(TOKEN, old, NONCE, BODY), ts=old))
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_STALE


# --- dispatch --------------------------------------------------------------------------------------


def test_detect_scheme() -> None:
    assert detect_scheme({"Webhook-Signature": "x"}) == SCHEME_STANDARD
    assert detect_scheme({"x-coze-nonce": "x"}) == SCHEME_COZE
    assert detect_scheme({"webhook-id": "x", "x-coze-signature": "y"}) == SCHEME_STANDARD
    assert detect_scheme({"content-type": "application/json"}) is None


def test_verify_dispatches_by_headers() -> None:
    std = std_headers(sign_standard(SECRET, MSG, NOW, BODY))
    cz = coze_headers(sign_coze(TOKEN, NOW, NONCE, BODY))
    for headers, scheme in ((std, SCHEME_STANDARD), (cz, SCHEME_COZE)):
        verdict = verify(BODY, headers, secrets=[SECRET], coze_tokens=[TOKEN], now_s=NOW, tolerance_s=TOL)
        assert verdict.ok
        assert verdict.scheme == scheme


def test_verify_cannot_pick_an_unconfigured_scheme() -> None:
    cz = coze_headers(sign_coze(TOKEN, NOW, NONCE, BODY))
    verdict = verify(BODY, cz, secrets=[SECRET], coze_tokens=[], now_s=NOW, tolerance_s=TOL)
    assert verdict.status == callback_pb2.SIGNATURE_STATUS_INVALID


def test_verify_without_headers_is_missing_for_the_configured_scheme() -> None:
    verdict = verify(BODY, {}, secrets=[SECRET], coze_tokens=[], now_s=NOW, tolerance_s=TOL)
    assert (verdict.status, verdict.scheme) == (callback_pb2.SIGNATURE_STATUS_MISSING, SCHEME_STANDARD)
    verdict = verify(BODY, {}, secrets=[], coze_tokens=[TOKEN], now_s=NOW, tolerance_s=TOL)
    assert (verdict.status, verdict.scheme) == (callback_pb2.SIGNATURE_STATUS_MISSING, SCHEME_COZE)
