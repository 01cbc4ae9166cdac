"""Clients of the external platforms (Coze, n8n) behind one interface (`base.PlatformClient`)."""

from __future__ import annotations

from servers.connector.platforms.base import Credentials, PlatformClient
from servers.connector.platforms.coze import CozeClient
from servers.connector.platforms.n8n import N8nClient

PLATFORMS = ("coze", "n8n")


def make_client(platform: str, base_url: str, credentials: Credentials, timeout_s: float) -> PlatformClient:
    """A client for one connector instance and one credential version.

    Args:
        platform: `coze` or `n8n`.
        base_url: The platform's API base URL.
        credentials: The decrypted credential; the client keeps it only as long as it lives.
        timeout_s: HTTP timeout of calls that carry no deadline of their own.

    Raises:
        ValueError: The platform is not one of `PLATFORMS`.
        PlatformFailure: The credential cannot be used at all (a Coze client without a token).
    """
    if platform == "coze":
        return CozeClient(base_url, credentials, timeout_s=timeout_s)
    if platform == "n8n":
        return N8nClient(base_url, credentials, timeout_s=timeout_s)
    raise ValueError(f"unknown platform {platform!r}; expected one of {', '.join(PLATFORMS)}")


__all__ = ["PLATFORMS", "make_client"]
