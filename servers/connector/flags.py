"""Feature flags of the connectors: staged rollout by tenant, tenant allow/deny lists, per-tenant rate limits.

A flag absent from the configuration is ON for everyone: with no flags file (the embedded mesh) both known
flags are on, and a file only has to list the flags it stages. `list` shows the known flags even when the
file does not name them, as the defaults they are.

Evaluation of a configured flag, in order: the master switch (`enabled`); the platforms it is limited to
(a flag naming platforms is off for the others; a check without a platform skips this step); the denylist
(wins over everything else); the allowlist; then the tenant's stable bucket, the first 8 bytes of
`sha256("<flag>:<tenant>")` modulo 100, against `rollout_percent`. A tenant's bucket differs per flag, and
raising the percentage only ever adds tenants.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from powerx.connector.v1 import callback_pb2, connector_pb2
from servers.common.times import timestamp_ms

CONNECTORS_FLAG = "agent-platform-connectors"
WEBHOOK_GUARD_FLAG = "platform-webhook-guard"

DEFAULT_FLAGS: tuple[callback_pb2.FeatureFlag, ...] = (
    callback_pb2.FeatureFlag(
        name=CONNECTORS_FLAG,
        description="Connector instances and invocations of external agent platforms (Coze, n8n).",
        enabled=True,
        rollout_percent=100,
    ),
    callback_pb2.FeatureFlag(
        name=WEBHOOK_GUARD_FLAG,
        description="Platform webhooks: signature, timestamp and replay checks, then callback processing.",
        enabled=True,
        rollout_percent=100,
    ),
)


def bucket(name: str, tenant: str) -> int:
    """The tenant's stable rollout bucket (0 to 99) for a flag."""
    digest = hashlib.sha256(f"{name}:{tenant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


class FlagSet:
    """An immutable set of flags, as loaded from the flags file."""

    def __init__(
        self, flags: Sequence[callback_pb2.FeatureFlag] = (), *, update_time_ms: int | None = None
    ) -> None:
        """Builds the set.

        Args:
            flags: Configured flags (later duplicates of a name replace earlier ones).
            update_time_ms: When the configuration was loaded (Unix ms), shown as each flag's `update_time`;
                None means now.
        """
        self._flags: dict[str, callback_pb2.FeatureFlag] = {}
        for flag in flags:
            copy = callback_pb2.FeatureFlag()
            copy.CopyFrom(flag)
            copy.ClearField("enabled_for_caller")
            copy.ClearField("update_time")
            self._flags[flag.name] = copy
        self.update_time_ms = int(time.time() * 1000) if update_time_ms is None else update_time_ms

    def get(self, name: str) -> callback_pb2.FeatureFlag | None:
        """The configured flag of that name (a copy), or None when the configuration does not name it."""
        flag = self._flags.get(name)
        if flag is None:
            return None
        out = callback_pb2.FeatureFlag()
        out.CopyFrom(flag)
        return out

    def enabled(self, name: str, tenant: str, platform: str = "") -> bool:
        """Whether a flag is on for a tenant (and platform, when given); a flag not configured is on."""
        flag = self._flags.get(name)
        if flag is None:
            return True
        if not flag.enabled:
            return False
        if platform and flag.platforms and platform not in flag.platforms:
            return False
        if tenant in flag.tenant_denylist:
            return False
        if tenant in flag.tenant_allowlist:
            return True
        return bucket(name, tenant) < flag.rollout_percent

    def rate_limit(self, name: str) -> connector_pb2.RateLimit | None:
        """The per-tenant rate limit of a flag's calls, or None when it has none (or is not configured)."""
        flag = self._flags.get(name)
        if flag is None or not flag.HasField("rate_limit") or flag.rate_limit.requests_per_second <= 0:
            return None
        out = connector_pb2.RateLimit()
        out.CopyFrom(flag.rate_limit)
        return out

    def list(self, tenant: str, platform: str = "") -> list[callback_pb2.FeatureFlag]:
        """Every flag, configured ones and the known defaults, by name, with `enabled_for_caller` set."""
        merged = {f.name: f for f in DEFAULT_FLAGS}
        merged.update(self._flags)
        out = []
        for name in sorted(merged):
            flag = callback_pb2.FeatureFlag()
            flag.CopyFrom(merged[name])
            flag.enabled_for_caller = self.enabled(name, tenant, platform)
            flag.update_time.CopyFrom(timestamp_ms(self.update_time_ms))
            out.append(flag)
        return out
