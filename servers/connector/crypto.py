"""Envelope encryption of tenant credentials (AES-256-GCM data keys wrapped by key-encryption keys).

Every record gets its own random 32-byte data key (DEK). The credential is encrypted with the DEK under
AES-256-GCM, with the record's identity (tenant, platform, instance, version…) as associated data: a
ciphertext copied onto another row fails to open, because its AAD no longer matches. The DEK itself is
encrypted ("wrapped") with AES-256-GCM under a key-encryption key (KEK) from the `KeyRing`, and the
record keeps the KEK's id. Rotating the KEK therefore only re-wraps 32-byte DEKs (`KeyRing.rewrap`); the
credential ciphertext is never touched, and old KEKs can be dropped once no record names them.

Python cannot zeroize memory, so callers keep plaintext lifetimes short and never log it; no error
raised here carries key material, plaintext or ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32  # AES-256, for KEKs and DEKs alike
NONCE_BYTES = 12  # the GCM nonce size every implementation handles without an extra GHASH pass
KEYRING_FILE = "connector-credentials.keyring"
LOCAL_KEY_ID = "local1"
_MAX_KEY_ID = 64
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # 64 = _MAX_KEY_ID
# Binds a wrapped DEK to its format and KEK id, so a wrapped DEK cannot be replayed under another id.
_WRAP_AAD_PREFIX = b"powerx.connector.dek.v1\x00"
_FORMAT_VERSION = 1


class CredentialDecryptError(Exception):
    """A sealed credential could not be opened: wrong AAD, tampering, unknown key id or a malformed record.

    The message never contains key material, plaintext or ciphertext.
    """


def canonical_aad(aad: Mapping[str, str]) -> bytes:
    """The associated data of a record: compact JSON with sorted keys, UTF-8.

    Args:
        aad: The record's identity, such as `{"tenant": …, "platform": …, "instance": …, "v": "3"}`.

    Returns:
        The exact bytes authenticated by AES-GCM; equal mappings always give equal bytes.
    """
    return json.dumps(dict(aad), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


@dataclasses.dataclass(frozen=True)
class Sealed:
    """One encrypted credential as stored.

    Attributes:
        key_id: Id of the KEK that wrapped the DEK.
        wrapped_dek: The wrapping nonce followed by the AES-GCM encryption of the DEK under the KEK.
        nonce: The 12-byte nonce of the data encryption.
        ciphertext: AES-GCM ciphertext of the credential with its 16-byte tag.
    """

    key_id: str
    wrapped_dek: bytes = dataclasses.field(repr=False)
    nonce: bytes = dataclasses.field(repr=False)
    ciphertext: bytes = dataclasses.field(repr=False)

    def to_json(self) -> str:
        """The compact storage form: `{"v":1,"kid":…,"dek":…,"n":…,"ct":…}` with unpadded base64url."""
        return json.dumps(
            {
                "v": _FORMAT_VERSION,
                "kid": self.key_id,
                "dek": _b64(self.wrapped_dek),
                "n": _b64(self.nonce),
                "ct": _b64(self.ciphertext),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Sealed:
        """Reads the form written by `to_json`.

        Raises:
            CredentialDecryptError: The text is not such a record (its content is not echoed).
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != _FORMAT_VERSION:
                raise CredentialDecryptError("sealed credential has an unknown format")
            key_id, dek, nonce, ct = data["kid"], data["dek"], data["n"], data["ct"]
            if not all(isinstance(x, str) for x in (key_id, dek, nonce, ct)):
                raise CredentialDecryptError("sealed credential is malformed")
            return cls(key_id=key_id, wrapped_dek=_unb64(dek), nonce=_unb64(nonce), ciphertext=_unb64(ct))
        except (ValueError, KeyError, TypeError, binascii.Error):
            # JSONDecodeError and UnicodeDecodeError are ValueErrors. `from None` keeps the stored text,
            # which a decoder error would quote, out of the error chain.
            raise CredentialDecryptError("sealed credential is malformed") from None


def _check_key_id(key_id: str) -> None:
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError(
            f"key id {key_id[:_MAX_KEY_ID]!r} must be 1-{_MAX_KEY_ID} letters, digits, '-', '_' or '.'"
        )


class KeyRing:
    """The key-encryption keys by id; new records are wrapped under the active one.

    Keep retired keys in the ring until every record has been re-wrapped (`needs_rewrap`, `rewrap`);
    then they can be removed.
    """

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        """Builds a ring.

        Args:
            keys: 32-byte AES-256 keys by key id (letters, digits, `-`, `_`, `.`).
            active_key_id: The id new records are wrapped under; must be in `keys`.

        Raises:
            ValueError: A bad key id, a key that is not 32 bytes, or an active id not in `keys`.
        """
        if not keys:
            raise ValueError("the key ring needs at least one key")
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be {KEY_BYTES} bytes, got {len(key)}")
        if active_key_id not in keys:
            raise ValueError(f"active key id {active_key_id!r} is not in the key ring")
        self._keks = {key_id: AESGCM(bytes(key)) for key_id, key in keys.items()}
        self._active = active_key_id

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active!r}, key_ids={sorted(self._keks)!r})"

    @property
    def active_key_id(self) -> str:
        """The id new records are wrapped under."""
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id the ring can unwrap."""
        return frozenset(self._keks)

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """A ring from a setting such as `k2:<base64 of 32 bytes>,k1:<base64>`; the first key is active.

        Standard or URL-safe base64, padded or not. Error messages name the entry by position and key id
        and never echo key material.

        Raises:
            ValueError: An empty spec, an entry without `id:`, a bad id, a duplicate id, or a key that is
                not base64 of exactly 32 bytes.
        """
        keys: dict[str, bytes] = {}
        active = ""
        entries = [e.strip() for e in spec.split(",")]
        if not any(entries):
            raise ValueError("the key ring setting is empty (expected id:base64key[,id:base64key…])")
        for position, entry in enumerate(entries, start=1):
            if not entry:
                raise ValueError(f"key ring entry {position} is empty")
            key_id, sep, encoded = entry.partition(":")
            key_id = key_id.strip()
            if not sep:
                # The entry may be bare key material: say where it is, not what it is.
                raise ValueError(f"key ring entry {position} has no key id (expected id:base64key)")
            try:
                _check_key_id(key_id)
            except ValueError as exc:
                raise ValueError(f"key ring entry {position}: {exc}") from None
            if key_id in keys:
                raise ValueError(f"key ring entry {position}: key id {key_id!r} appears twice")
            try:
                cleaned = encoded.strip().replace("-", "+").replace("_", "/")
                key = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    f"key ring entry {position} ({key_id!r}): the key is not valid base64"
                ) from None
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"key ring entry {position} ({key_id!r}): the key must be {KEY_BYTES} bytes, "
                    f"got {len(key)}"
                )
            keys[key_id] = key
            active = active or key_id
        return cls(keys, active)

    @classmethod
    def load(cls, configured: str, data_dir: Path) -> KeyRing:
        """The configured ring, else one kept in the data folder (created once with a random key).

        The file holds a spec in the same format as the setting, is created with mode 0600, and
        survives restarts so that stored credentials stay readable. Processes sharing a database must
        share the setting instead.

        Args:
            configured: The setting (`k2:<base64>,k1:<base64>`); empty means use the data folder.
            data_dir: The mesh's data folder.

        Raises:
            ValueError: The setting or the file's content is not a valid spec.
        """
        if configured.strip():
            return cls.parse(configured)
        path = data_dir / KEYRING_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            spec = f"{LOCAL_KEY_ID}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}\n"
            try:
                # O_EXCL: two processes starting at once must not each write their own key.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(spec)
        try:
            return cls.parse(path.read_text().strip())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @staticmethod
    def generate_spec(key_id: str = LOCAL_KEY_ID) -> str:
        """A new `id:base64` entry with a random key, for operators adding a key to the setting."""
        _check_key_id(key_id)
        return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"

    def _wrap(self, dek: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._keks[self._active].encrypt(nonce, dek, _WRAP_AAD_PREFIX + self._active.encode())

    def _unwrap(self, sealed: Sealed) -> bytes:
        kek = self._keks.get(sealed.key_id)
        if kek is None:
            raise CredentialDecryptError(
                f"sealed credential names unknown key id {sealed.key_id[:_MAX_KEY_ID]!r}"
            )
        nonce, wrapped = sealed.wrapped_dek[:NONCE_BYTES], sealed.wrapped_dek[NONCE_BYTES:]
        try:
            dek = kek.decrypt(nonce, wrapped, _WRAP_AAD_PREFIX + sealed.key_id.encode())
        except (InvalidTag, ValueError):
            raise CredentialDecryptError("sealed credential's data key does not verify") from None
        if len(dek) != KEY_BYTES:
            raise CredentialDecryptError("sealed credential's data key has the wrong size")
        return dek

    def seal(self, plaintext: bytes, aad: Mapping[str, str]) -> Sealed:
        """Encrypts a credential under a fresh data key wrapped by the active KEK.

        Args:
            plaintext: The secret.
            aad: The record's identity (tenant, platform, instance, version…); `open` needs the same.

        Returns:
            The record to store.
        """
        dek = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = AESGCM(dek).encrypt(nonce, plaintext, canonical_aad(aad))
        return Sealed(key_id=self._active, wrapped_dek=self._wrap(dek), nonce=nonce, ciphertext=ciphertext)

    def open(self, sealed: Sealed, aad: Mapping[str, str]) -> bytes:
        """Decrypts a credential.

        Args:
            sealed: The stored record.
            aad: The identity it was sealed with.

        Returns:
            The secret.

        Raises:
            CredentialDecryptError: Unknown key id, a tampered record, or AAD that differs from sealing
                (such as a ciphertext moved to another tenant, instance or version).
        """
        dek = self._unwrap(sealed)
        try:
            return AESGCM(dek).decrypt(sealed.nonce, sealed.ciphertext, canonical_aad(aad))
        except (InvalidTag, ValueError):
            # ValueError: a nonce of the wrong length in a tampered record.
            raise CredentialDecryptError(
                "sealed credential does not verify (tampered, or sealed for another record)"
            ) from None

    def needs_rewrap(self, sealed: Sealed) -> bool:
        """Whether the record's data key is wrapped under a key other than the active one."""
        return sealed.key_id != self._active

    def rewrap(self, sealed: Sealed) -> Sealed:
        """The record with its data key wrapped under the active KEK; the ciphertext is unchanged.

        Returns the record itself when it already uses the active key.

        Raises:
            CredentialDecryptError: Unknown key id or a tampered wrapped key.
        """
        if not self.needs_rewrap(sealed):
            return sealed
        return dataclasses.replace(sealed, key_id=self._active, wrapped_dek=self._wrap(self._unwrap(sealed)))
