"""Authentication and permission checks of one call, before the servicer runs.

`Gate.admit` takes the context the interceptor built from metadata and returns it with the principal,
tenant and scopes the credential proves, or raises `Unauthenticated` / `PermissionDenied`:

- API key (`x-api-key`, or `authorization: Bearer pxk_…`): its scopes must grant the method's
  permission (`servers.auth.permissions`). A tenant key acts for its tenant only: an `x-tenant-id`
  naming another tenant is refused. An operator key (tenant `*`) acts for the tenant it names.
- Agent token (`authorization: Bearer agt…`): accepted on the agent runtime methods; the tenant is
  the token's. The agent service still checks that the token is the agent's current one.
- Public methods (webhooks) pass without a credential: their own guard authenticates them.

With authentication off (development), the `x-principal` / `x-scopes` headers are trusted as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from servers.auth import keys
from servers.auth.permissions import Rule, granted
from servers.common.context import CallContext
from servers.common.errors import PermissionDenied, Unauthenticated

API_KEY_HEADER = "x-api-key"
AGENT_TOKEN_SCOPES = frozenset({"agent.runtime", "router.invoke", "agent.run", "agent.read"})


@dataclasses.dataclass(frozen=True, slots=True)
class AgentClaims:
    """Who an agent token names."""

    tenant_id: str
    agent_id: str


def refused(error: PermissionDenied, identified: CallContext) -> PermissionDenied:
    """`error`, carrying who the caller proved to be, so the audit log records the real actor and tenant."""
    error.identified = identified  # type: ignore[attr-defined]
    return error


def identified(error: BaseException) -> CallContext | None:
    """Who a refused caller proved to be (a valid credential without the permission), if known."""
    ctx = getattr(error, "identified", None)
    return ctx if isinstance(ctx, CallContext) else None


class Gate:
    """Admits calls by API key or agent token."""

    def __init__(
        self,
        keys_cache: keys.KeyCache,
        verify_agent_token: Callable[[str], AgentClaims | None],
        *,
        required: bool = True,
    ) -> None:
        self.keys = keys_cache
        self.verify_agent_token = verify_agent_token
        self.required = required

    async def admit(self, ctx: CallContext, rule: Rule | None, method: str, api_key: str) -> CallContext:
        """The call's context with its proven identity; raises when the call may not proceed."""
        if not self.required:
            return ctx
        if rule is None:  # a method missing from the table: refused, never served unguarded
            raise PermissionDenied(
                f"{method} has no permission rule", reason="NO_PERMISSION_RULE", metadata={"method": method}
            )
        bearer_key = ctx.bearer if keys.looks_like_key(ctx.bearer) else ""
        raw = api_key or bearer_key
        if raw:
            admitted = await self._by_key(ctx, rule, raw)
            # An API key sent as the bearer is not also an agent token.
            return dataclasses.replace(admitted, bearer="") if bearer_key else admitted
        if ctx.bearer and rule.agent_token:
            return self._by_agent_token(ctx)
        if rule.public:
            return dataclasses.replace(ctx, principal="anonymous", scopes=frozenset())
        if ctx.bearer:
            raise Unauthenticated(
                f"{method} does not accept an agent token: send an API key in x-api-key",
                reason="API_KEY_REQUIRED",
            )
        raise Unauthenticated(
            "this call needs an API key: send it in the x-api-key header", reason="UNAUTHENTICATED"
        )

    async def _by_key(self, ctx: CallContext, rule: Rule, raw: str) -> CallContext:
        verdict = await self.keys.verify(raw)
        if verdict.key is None:
            messages = {
                "API_KEY_REVOKED": "the API key was revoked",
                "API_KEY_DISABLED": "the API key is disabled",
                "API_KEY_EXPIRED": "the API key has expired",
            }
            raise Unauthenticated(
                messages.get(verdict.reason, "the API key is not valid"), reason=verdict.reason
            )
        key = verdict.key
        scopes = frozenset(key.scopes)
        principal = f"apikey:{key.key_id}"
        tenant = ctx.tenant_id
        if key.tenant_id != keys.ALL_TENANTS:
            if tenant and tenant != key.tenant_id:
                raise refused(
                    PermissionDenied(
                        "the API key belongs to another tenant than x-tenant-id names",
                        reason="TENANT_MISMATCH",
                    ),
                    dataclasses.replace(ctx, tenant_id=key.tenant_id, principal=principal, scopes=scopes),
                )
            tenant = key.tenant_id
        admitted = dataclasses.replace(ctx, tenant_id=tenant, principal=principal, scopes=scopes)
        if not rule.public and not granted(scopes, rule.permission):
            raise refused(
                PermissionDenied(
                    f"this call requires the permission {rule.permission}",
                    reason="PERMISSION_DENIED",
                    metadata={"permission": rule.permission},
                ),
                admitted,
            )
        return admitted

    def _by_agent_token(self, ctx: CallContext) -> CallContext:
        claims = self.verify_agent_token(ctx.bearer)
        if claims is None:
            raise Unauthenticated(
                "the agent token is malformed or was not issued by this mesh", reason="AGENT_TOKEN_INVALID"
            )
        admitted = dataclasses.replace(
            ctx,
            tenant_id=claims.tenant_id,
            principal=f"agent:{claims.tenant_id}/{claims.agent_id}",
            scopes=AGENT_TOKEN_SCOPES,
        )
        if ctx.tenant_id and ctx.tenant_id != claims.tenant_id:
            raise refused(
                PermissionDenied(
                    "the agent token belongs to another tenant than x-tenant-id names",
                    reason="TENANT_MISMATCH",
                ),
                admitted,
            )
        return admitted
