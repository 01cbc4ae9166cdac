"""Tenant credentials: sealed at rest, opened just before use, kept fresh, and described without secrets.

A credential version is the whole secret material of an instance (platform token, refresh token or JWT
app key, webhook secrets, trigger headers) as one JSON document sealed by `crypto.KeyRing` with the
tenant, platform, instance and version as associated data, so a ciphertext copied to another row does
not open. Its `CredentialInfo` (kind, expiry, status, key id, counts) is stored beside it in clear.
Plaintext lives only in `Secret` objects for the length of a call; nothing here logs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from cozepy import COZE_COM_BASE_URL

from powerx.connector.v1 import connector_pb2
from servers.common.times import timestamp_ms
from servers.connector.crypto import KeyRing, Sealed
from servers.connector.platforms import coze
from servers.connector.platforms.base import AUTH, PlatformFailure

API_KEY = connector_pb2.CREDENTIAL_KIND_API_KEY
OAUTH = connector_pb2.CREDENTIAL_KIND_OAUTH
COZE_JWT = connector_pb2.CREDENTIAL_KIND_COZE_JWT

ACTIVE = connector_pb2.CREDENTIAL_STATUS_ACTIVE
EXPIRING = connector_pb2.CREDENTIAL_STATUS_EXPIRING
EXPIRED = connector_pb2.CREDENTIAL_STATUS_EXPIRED
REFRESH_FAILED = connector_pb2.CREDENTIAL_STATUS_REFRESH_FAILED
REJECTED = connector_pb2.CREDENTIAL_STATUS_REJECTED

DEFAULT_JWT_TTL_S = 900


@dataclass
class Secret:
    """Decrypted credential material of one version. Never logged: its repr hides every value."""

    kind: int = 0
    token: str = field(default="", repr=False)
    expire_ms: int = 0
    refresh_token: str = field(default="", repr=False)
    token_url: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    scopes: list[str] = field(default_factory=list)
    app_id: str = ""
    public_key_id: str = ""
    private_key_pem: str = field(default="", repr=False)
    token_ttl_s: int = 0
    webhook_secrets: list[str] = field(default_factory=list, repr=False)
    secret_headers: dict[str, str] = field(default_factory=dict, repr=False)
    coze_verify_token: str = field(default="", repr=False)

    def dumps(self) -> bytes:
        """The JSON document that gets sealed."""
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, data: bytes) -> Secret:
        """The inverse of `dumps`."""
        raw: dict[str, Any] = json.loads(data)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    @property
    def refreshable(self) -> bool:
        """Whether the mesh can get a new token itself (OAuth with a refresh token, or a JWT app)."""
        return (self.kind == OAUTH and bool(self.refresh_token)) or self.kind == COZE_JWT


def is_empty(ci: connector_pb2.CredentialInput) -> bool:
    """Whether a credential input carries nothing (a rotation without input refreshes instead)."""
    return not (
        ci.WhichOneof("credential") or ci.webhook_secrets or ci.secret_headers or ci.coze_verify_token
    )


def merge(ci: connector_pb2.CredentialInput, base: Secret | None) -> Secret:
    """The secret a credential input describes; parts it leaves unset keep `base`'s values."""
    s = replace(base) if base is not None else Secret()
    which = ci.WhichOneof("credential")
    if which == "api_key":
        s = replace(s, kind=API_KEY, token=ci.api_key.token, refresh_token="", private_key_pem="")
        s.expire_ms = ci.api_key.expire_time.ToMilliseconds() if ci.api_key.HasField("expire_time") else 0
    elif which == "oauth":
        o = ci.oauth
        s = replace(
            s,
            kind=OAUTH,
            token=o.access_token,
            refresh_token=o.refresh_token,
            token_url=o.token_url,
            client_id=o.client_id,
            client_secret=o.client_secret,
            scopes=list(o.scopes),
            private_key_pem="",
        )
        s.expire_ms = o.expire_time.ToMilliseconds() if o.HasField("expire_time") else 0
    elif which == "coze_jwt":
        j = ci.coze_jwt
        ttl = int(j.token_ttl.seconds) or DEFAULT_JWT_TTL_S
        s = replace(
            s,
            kind=COZE_JWT,
            app_id=j.app_id,
            public_key_id=j.public_key_id,
            private_key_pem=j.private_key_pem,
            token_ttl_s=ttl,
            token="",
            expire_ms=0,
            refresh_token="",
        )
    if ci.webhook_secrets:
        s.webhook_secrets = list(ci.webhook_secrets)
    if ci.secret_headers:
        s.secret_headers = dict(ci.secret_headers)
    if ci.coze_verify_token:
        s.coze_verify_token = ci.coze_verify_token
    return s


def aad(tenant: str, platform: str, instance_id: str, version: int) -> dict[str, str]:
    """Associated data binding a sealed credential to its row."""
    return {"tenant": tenant, "platform": platform, "instance": instance_id, "version": str(version)}


def secret_ref(tenant: str, platform: str, instance_id: str, version: int = 0) -> str:
    """The reference callers see instead of a secret."""
    ref = f"secret://tenants/{tenant}/platforms/{platform}/instances/{instance_id}/credential"
    return f"{ref}/versions/{version}" if version else ref


class Vault:
    """Seals, opens and refreshes credentials with the mesh's key ring."""

    def __init__(self, keyring: KeyRing, *, warning_s: float, refresh_margin_s: float) -> None:
        self.keyring = keyring
        self.warning_ms = int(warning_s * 1000)
        self.refresh_margin_ms = int(refresh_margin_s * 1000)

    def seal(self, secret: Secret, tenant: str, platform: str, instance_id: str, version: int) -> Sealed:
        """Encrypts a secret for its row."""
        return self.keyring.seal(secret.dumps(), aad(tenant, platform, instance_id, version))

    def open(self, sealed: bytes, tenant: str, platform: str, instance_id: str, version: int) -> Secret:
        """Decrypts a row's secret (CredentialDecryptError when it was moved, tampered or its key is gone)."""
        return Secret.loads(
            self.keyring.open(Sealed.from_json(sealed), aad(tenant, platform, instance_id, version))
        )

    def info(
        self,
        secret: Secret,
        *,
        tenant: str,
        platform: str,
        instance_id: str,
        version: int,
        key_id: str,
        now_ms: int,
        previous_version: int = 0,
        status: int = 0,
        message: str = "",
    ) -> connector_pb2.CredentialInfo:
        """The secret-free description of a credential version."""
        info = connector_pb2.CredentialInfo(
            secret_ref=secret_ref(tenant, platform, instance_id, version),
            kind=secret.kind or connector_pb2.CREDENTIAL_KIND_UNSPECIFIED,  # type: ignore[arg-type]
            version=version,
            key_id=key_id,
            previous_version=previous_version,
            has_refresh_token=bool(secret.refresh_token),
            webhook_secret_count=len(secret.webhook_secrets),
            status_message=message,
        )
        info.rotate_time.CopyFrom(timestamp_ms(now_ms))
        if secret.expire_ms:
            info.expire_time.CopyFrom(timestamp_ms(secret.expire_ms))
            if secret.refreshable:
                info.next_refresh_time.CopyFrom(timestamp_ms(self.refresh_at(secret)))
        elif secret.kind == COZE_JWT:
            info.next_refresh_time.CopyFrom(timestamp_ms(now_ms))
        info.status = status or self.status(info, now_ms)  # type: ignore[assignment]
        return info

    def refresh_at(self, secret: Secret) -> int:
        """When to refresh a token: a margin before expiry (at most a fifth of a short token's life)."""
        return secret.expire_ms - self.refresh_margin_ms

    def status(self, info: connector_pb2.CredentialInfo, now_ms: int) -> int:
        """The status a credential has now: expiry wins; REJECTED and REFRESH_FAILED stick until rotation."""
        expire = info.expire_time.ToMilliseconds() if info.HasField("expire_time") else 0
        if expire and now_ms >= expire:
            # A refreshable token that expired is not dead while a refresh can still mint a new one.
            if info.kind == COZE_JWT or (info.kind == OAUTH and info.has_refresh_token):
                return REFRESH_FAILED if info.status == REFRESH_FAILED else EXPIRED
            return EXPIRED
        if info.status in (REJECTED, REFRESH_FAILED):
            return int(info.status)
        if expire and info.kind == API_KEY and now_ms >= expire - self.warning_ms:
            return EXPIRING
        return ACTIVE

    def needs_refresh(self, secret: Secret, now_ms: int) -> bool:
        """Whether a refreshable token is missing or due."""
        if not secret.refreshable:
            return False
        return not secret.token or (secret.expire_ms > 0 and now_ms >= self.refresh_at(secret))

    async def refreshed(self, secret: Secret, base_url: str) -> Secret:
        """A copy of a refreshable secret with a new token (Coze JWT re-mint or OAuth refresh).

        Raises:
            PlatformFailure: The platform refused or could not be reached; the caller marks the
                credential REFRESH_FAILED and keeps using the current token until it expires.
        """
        if secret.kind == COZE_JWT:
            token, expire_s = await coze.mint_jwt_token(
                base_url or COZE_COM_BASE_URL,
                secret.app_id,
                secret.public_key_id,
                secret.private_key_pem,
                secret.token_ttl_s or DEFAULT_JWT_TTL_S,
            )
            return replace(secret, token=token, expire_ms=int(expire_s * 1000))
        if secret.kind == OAUTH and secret.refresh_token:
            url = (
                secret.token_url
                or f"{(base_url or COZE_COM_BASE_URL).rstrip('/')}/api/permission/oauth2/token"
            )
            token, refresh, expire_s = await coze.refresh_oauth_token(
                url, secret.client_id, secret.client_secret, secret.refresh_token
            )
            return replace(
                secret,
                token=token,
                refresh_token=refresh or secret.refresh_token,
                expire_ms=int(expire_s * 1000),
            )
        raise PlatformFailure(
            "CREDENTIAL_NOT_REFRESHABLE", AUTH, "an API key cannot be refreshed, only replaced by a rotation"
        )
