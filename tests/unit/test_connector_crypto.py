"""Envelope encryption of connector credentials (servers/connector/crypto.py)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import stat
from pathlib import Path

import pytest

from servers.connector.crypto import (
    KEYRING_FILE,
    CredentialDecryptError,
    KeyRing,
    Sealed,
    canonical_aad,
)

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
AAD = {"tenant": "t1", "platform": "coze", "instance": "ci_1", "v": "1"}
SECRET = b"pat_very-secret-token"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def ring(*ids: str) -> KeyRing:
    keys = {"k1": K1, "k2": K2}
    return KeyRing({i: keys[i] for i in ids}, ids[0])


# --- seal / open ---------------------------------------------------------------------------------


def test_round_trip_and_fresh_randomness() -> None:
    kr = ring("k1")
    a, b = kr.seal(SECRET, AAD), kr.seal(SECRET, AAD)
    assert kr.open(a, AAD) == SECRET
    assert a.key_id == "k1"
    assert len(a.nonce) == 12
    # A fresh data key and nonce per record: equal secrets never give equal ciphertexts.
    assert a.ciphertext != b.ciphertext
    assert a.wrapped_dek != b.wrapped_dek
    assert SECRET not in a.ciphertext


def test_empty_plaintext_round_trips() -> None:
    kr = ring("k1")
    assert kr.open(kr.seal(b"", AAD), AAD) == b""


def test_aad_key_order_does_not_matter() -> None:
    kr = ring("k1")
    sealed = kr.seal(SECRET, AAD)
    assert kr.open(sealed, dict(reversed(list(AAD.items())))) == SECRET
    assert canonical_aad({"b": "2", "a": "1"}) == b'{"a":"1","b":"2"}'


@pytest.mark.parametrize(
    ("field_name", "value"),
    [("tenant", "t2"), ("platform", "n8n"), ("instance", "ci_2"), ("v", "2")],
)
def test_ciphertext_moved_to_another_record_fails(field_name: str, value: str) -> None:
    kr = ring("k1")
    sealed = kr.seal(SECRET, AAD)
    with pytest.raises(CredentialDecryptError) as err:
        kr.open(sealed, {**AAD, field_name: value})
    assert SECRET.decode() not in str(err.value)


def test_extra_or_missing_aad_field_fails() -> None:
    kr = ring("k1")
    sealed = kr.seal(SECRET, AAD)
    with pytest.raises(CredentialDecryptError):
        kr.open(sealed, {**AAD, "extra": "x"})
    with pytest.raises(CredentialDecryptError):
        kr.open(sealed, {k: v for k, v in AAD.items() if k != "v"})


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("part", ["ciphertext", "nonce", "wrapped_dek"])
def test_every_tampered_byte_fails(part: str) -> None:
    kr = ring("k1")
    sealed = kr.seal(SECRET, AAD)
    data: bytes = getattr(sealed, part)
    for i in range(len(data)):
        tampered = dataclasses.replace(sealed, **{part: flip(data, i)})
        with pytest.raises(CredentialDecryptError):
            kr.open(tampered, AAD)


def test_truncated_parts_fail_cleanly() -> None:
    kr = ring("k1")
    sealed = kr.seal(SECRET, AAD)
    for broken in (
        dataclasses.replace(sealed, ciphertext=b""),
        dataclasses.replace(sealed, nonce=b""),
        dataclasses.replace(sealed, nonce=sealed.nonce[:5]),
        dataclasses.replace(sealed, wrapped_dek=b""),
        dataclasses.replace(sealed, wrapped_dek=sealed.wrapped_dek[:12]),
    ):
        with pytest.raises(CredentialDecryptError):
            kr.open(broken, AAD)


def test_unknown_key_id_fails() -> None:
    sealed = ring("k2").seal(SECRET, AAD)
    with pytest.raises(CredentialDecryptError, match="unknown key id"):
        ring("k1").open(sealed, AAD)


def test_wrapped_dek_is_bound_to_its_key_id() -> None:
    # The same key under two ids: relabelling the record must still fail, because the id is in the AAD.
    kr = KeyRing({"a": K1, "b": K1}, "a")
    sealed = kr.seal(SECRET, AAD)
    with pytest.raises(CredentialDecryptError):
        kr.open(dataclasses.replace(sealed, key_id="b"), AAD)


def test_wrong_key_under_the_same_id_fails() -> None:
    sealed = KeyRing({"k1": K1}, "k1").seal(SECRET, AAD)
    with pytest.raises(CredentialDecryptError):
        KeyRing({"k1": K2}, "k1").open(sealed, AAD)


# --- rotation ------------------------------------------------------------------------------------


def test_kek_rotation_rewrap_then_drop_old_key() -> None:
    old = ring("k1")
    sealed = old.seal(SECRET, AAD)

    rotated = KeyRing({"k2": K2, "k1": K1}, "k2")  # new key active, old kept for reading
    assert rotated.needs_rewrap(sealed)
    assert rotated.open(sealed, AAD) == SECRET
    assert rotated.seal(SECRET, AAD).key_id == "k2"

    rewrapped = rotated.rewrap(sealed)
    assert rewrapped.key_id == "k2"
    assert not rotated.needs_rewrap(rewrapped)
    # Only the data key was re-wrapped: the credential ciphertext is untouched.
    assert (rewrapped.nonce, rewrapped.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert rewrapped.wrapped_dek != sealed.wrapped_dek

    only_new = ring("k2")
    assert only_new.open(rewrapped, AAD) == SECRET
    with pytest.raises(CredentialDecryptError):
        only_new.open(sealed, AAD)


def test_rewrap_of_current_record_is_identity() -> None:
    kr = ring("k1")
    sealed = kr.seal(SECRET, AAD)
    assert kr.rewrap(sealed) is sealed


def test_rewrap_keeps_the_aad_binding() -> None:
    rotated = KeyRing({"k2": K2, "k1": K1}, "k2")
    rewrapped = rotated.rewrap(ring("k1").seal(SECRET, AAD))
    with pytest.raises(CredentialDecryptError):
        rotated.open(rewrapped, {**AAD, "tenant": "t2"})


def test_rewrap_with_unknown_key_fails() -> None:
    sealed = ring("k1").seal(SECRET, AAD)
    with pytest.raises(CredentialDecryptError):
        ring("k2").rewrap(sealed)


# --- storage form --------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    kr = ring("k1")
    sealed = kr.seal(SECRET, AAD)
    text = sealed.to_json()
    assert json.loads(text)["kid"] == "k1"
    assert SECRET.decode() not in text
    again = Sealed.from_json(text)
    assert again == sealed
    assert kr.open(Sealed.from_json(text.encode()), AAD) == SECRET


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"v":2,"kid":"k1","dek":"","n":"","ct":""}',
        '{"v":1,"kid":"k1"}',
        '{"v":1,"kid":"k1","dek":1,"n":"","ct":""}',
        '{"v":1,"kid":"k1","dek":"!!!","n":"AA","ct":"AA"}',
        b"\xff\xfe",
    ],
)
def test_malformed_storage_form_raises_decrypt_error(text: str | bytes) -> None:
    with pytest.raises(CredentialDecryptError):
        Sealed.from_json(text)


def test_repr_shows_no_material() -> None:
    sealed = ring("k1").seal(SECRET, AAD)
    assert repr(sealed) == "Sealed(key_id='k1')"
    assert b64(K1) not in repr(ring("k1"))


# --- key ring ------------------------------------------------------------------------------------


def test_parse_first_key_is_active() -> None:
    kr = KeyRing.parse(f"k2:{b64(K2)}, k1:{b64(K1)}")
    assert kr.active_key_id == "k2"
    assert kr.key_ids == {"k1", "k2"}
    sealed = ring("k1").seal(SECRET, AAD)
    assert kr.open(sealed, AAD) == SECRET


def test_parse_accepts_urlsafe_and_unpadded_base64() -> None:
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode().rstrip("=")
    kr = KeyRing.parse(f"k1:{urlsafe}")
    assert kr.open(KeyRing({"k1": b"\xfb\xff" * 16}, "k1").seal(SECRET, AAD), AAD) == SECRET


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (f"k1:{b64(K1)},", "entry 2 is empty"),
        (b64(K1), "entry 1 has no key id"),
        (f"k1:{b64(K1)},{b64(K2)}", "entry 2 has no key id"),
        (f":{b64(K1)}", "entry 1"),
        (f"bad id:{b64(K1)}", "entry 1"),
        (f"k1:{b64(K1)},k1:{b64(K2)}", "'k1' appears twice"),
        ("k1:not*base64", "entry 1 ('k1'): the key is not valid base64"),
        (f"k1:{b64(K1[:16])}", "entry 1 ('k1'): the key must be 32 bytes, got 16"),
    ],
)
def test_parse_errors_name_the_entry_not_the_key(spec: str, expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)) as err:
        KeyRing.parse(spec)
    for key in (K1, K2, K1[:16]):
        assert b64(key) not in str(err.value)
        assert b64(key)[:20] not in str(err.value)


def test_constructor_rejects_bad_keys() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing({"k1": b"short"}, "k1")
    with pytest.raises(ValueError, match="not in the key ring"):
        KeyRing({"k1": K1}, "k2")
    with pytest.raises(ValueError, match="at least one"):
        KeyRing({}, "k1")


def test_generate_spec_parses() -> None:
    kr = KeyRing.parse(KeyRing.generate_spec("k9"))
    assert kr.active_key_id == "k9"


def test_load_prefers_the_setting(tmp_path: Path) -> None:
    kr = KeyRing.load(f"k1:{b64(K1)}", tmp_path)
    assert kr.active_key_id == "k1"
    assert not (tmp_path / KEYRING_FILE).exists()


def test_load_creates_a_private_key_file_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = KeyRing.load("", data_dir)
    path = data_dir / KEYRING_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    sealed = first.seal(SECRET, AAD)
    # A restart reads the same key, so stored credentials stay readable.
    second = KeyRing.load("", data_dir)
    assert second.open(sealed, AAD) == SECRET
    assert path.read_text().startswith(f"{first.active_key_id}:")


def test_load_reports_a_corrupt_key_file(tmp_path: Path) -> None:
    (tmp_path / KEYRING_FILE).write_text("garbage-without-id")
    with pytest.raises(ValueError, match="entry 1 has no key id"):
        KeyRing.load("", tmp_path)
