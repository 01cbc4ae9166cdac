"""The one permission table: every RPC the mesh serves, the permission it needs, and how it is audited.

The interceptor looks every `powerx.*` call up here. A method missing from the table is refused (and a
test checks that every method of every hosted service is listed), so a new RPC cannot ship unguarded.

Credentials (see `servers.auth.gate`):
- API keys grant the permissions in their scopes: exact names, `prefix.*` wildcards, or `*`.
- Agent tokens authenticate the agent runtime calls marked `agent_token` (heartbeats, the Connect
  stream, run output, agent-to-agent calls); the agent service checks the token's binding itself.
- `public` calls need no credential: webhooks, which the connector service authenticates by their
  signature over the exact bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from powerx.agent.v1 import agent_service_pb2
from powerx.audit.v1 import audit_service_pb2
from powerx.auth.v1 import auth_service_pb2
from powerx.connector.v1 import connector_service_pb2
from powerx.registry.v1 import registry_service_pb2
from powerx.router.v1 import router_service_pb2
from router.policy import scope_allowed


class Kind(Enum):
    """How a call is audited: mutations and invocations always, reads only when refused."""

    READ = "read"
    MUTATION = "mutation"
    INVOCATION = "invocation"


@dataclass(frozen=True, slots=True)
class Rule:
    """What one RPC needs."""

    permission: str
    kind: Kind
    agent_token: bool = False  # an agent token is an accepted credential (the service binds it)
    public: bool = False  # no credential (authenticated by the service, e.g. a webhook signature)


R, M, I = Kind.READ, Kind.MUTATION, Kind.INVOCATION  # noqa: E741 (a table reads better with short names)

# Permission names, one per line of the table's right-hand side (docs/security.md lists them).
REGISTRY_READ = "registry.read"
REGISTRY_WRITE = "registry.provider.write"
REGISTRY_ADMIN = "registry.admin"
ROUTER_INVOKE = "router.invoke"
AGENT_READ = "agent.read"
AGENT_REGISTER = "agent.register"
AGENT_MANAGE = "agent.manage"
AGENT_RUN = "agent.run"
AGENT_RUNTIME = "agent.runtime"
CONNECTOR_READ = "agent.connector.read"
CONNECTOR_MANAGE = "agent.connector.manage"
CONNECTOR_INVOKE = "agent.connector.invoke"
CONNECTOR_HUMAN = "agent.connector.human"
CONNECTOR_WEBHOOK = "agent.connector.webhook"
APIKEY_MANAGE = "auth.apikey.manage"
AUTH_READ = "auth.read"
AUDIT_READ = "audit.read"

_TABLE: dict[str, dict[str, Rule]] = {
    "powerx.registry.v1.RegistryService": {
        "AnnounceProvider": Rule(REGISTRY_WRITE, M),
        "WithdrawProvider": Rule(REGISTRY_WRITE, M),
        "RenewProviderLease": Rule(REGISTRY_WRITE, M),
        "DeleteEndpoint": Rule(REGISTRY_WRITE, M),
        "ImportMcpServer": Rule(REGISTRY_WRITE, M),
        "RefreshRegistry": Rule(REGISTRY_ADMIN, M),
        "GetProvider": Rule(REGISTRY_READ, R),
        "ListProviders": Rule(REGISTRY_READ, R),
        "GetCapability": Rule(REGISTRY_READ, R),
        "ListCapabilities": Rule(REGISTRY_READ, R),
        "ListRuntimeEndpoints": Rule(REGISTRY_READ, R),
        "WatchRegistry": Rule(REGISTRY_READ, R),
    },
    "powerx.router.v1.RouterService": {
        "ResolveEndpoint": Rule(ROUTER_INVOKE, I, agent_token=True),
        "Invoke": Rule(ROUTER_INVOKE, I, agent_token=True),
        "InvokeStream": Rule(ROUTER_INVOKE, I, agent_token=True),
        "ReportOutcome": Rule(ROUTER_INVOKE, I, agent_token=True),
    },
    "powerx.agent.v1.AgentService": {
        "ListAgents": Rule(AGENT_READ, R),
        "GetAgent": Rule(AGENT_READ, R),
        "GetRun": Rule(AGENT_READ, R, agent_token=True),
        "ListRuns": Rule(AGENT_READ, R),
        "StreamRunOutput": Rule(AGENT_READ, R),
        "WatchAgentEvents": Rule(AGENT_READ, R),
        # First registration with an API key; registering again after a restart with the agent's token.
        "RegisterAgent": Rule(AGENT_REGISTER, M, agent_token=True),
        "RegisterExternalAgent": Rule(AGENT_REGISTER, M),
        "DisconnectAgent": Rule(AGENT_MANAGE, M),
        "DeleteAgent": Rule(AGENT_MANAGE, M),
        "RevokeAgentToken": Rule(AGENT_MANAGE, M),
        "AssignTask": Rule(AGENT_RUN, I, agent_token=True),
        "CreateRun": Rule(AGENT_RUN, I, agent_token=True),
        "CancelRun": Rule(AGENT_RUN, M),
        # The agent runtime: only an agent's own token works here (the service checks it).
        "RecordHeartbeat": Rule(AGENT_RUNTIME, R, agent_token=True),
        "Connect": Rule(AGENT_RUNTIME, R, agent_token=True),
        "PullAssignments": Rule(AGENT_RUNTIME, R, agent_token=True),
        "PublishRunOutput": Rule(AGENT_RUNTIME, M, agent_token=True),
        "CompleteRun": Rule(AGENT_RUNTIME, M, agent_token=True),
    },
    "powerx.connector.v1.ConnectorService": {
        "CreateConnectorInstance": Rule(CONNECTOR_MANAGE, M),
        "UpdateConnectorInstance": Rule(CONNECTOR_MANAGE, M),
        "DeleteConnectorInstance": Rule(CONNECTOR_MANAGE, M),
        "RotateCredential": Rule(CONNECTOR_MANAGE, M),
        "RollbackConfig": Rule(CONNECTOR_MANAGE, M),
        "SetDegradeMode": Rule(CONNECTOR_MANAGE, M),
        "GetConnectorInstance": Rule(CONNECTOR_READ, R),
        "ListConnectorInstances": Rule(CONNECTOR_READ, R),
        "ListConfigVersions": Rule(CONNECTOR_READ, R),
        "GetInvocation": Rule(CONNECTOR_READ, R),
        "ListInvocations": Rule(CONNECTOR_READ, R),
        "WatchCallbacks": Rule(CONNECTOR_READ, R),
        "GetDegradeState": Rule(CONNECTOR_READ, R),
        "ListDegradeHistory": Rule(CONNECTOR_READ, R),
        "ListFeatureFlags": Rule(CONNECTOR_READ, R),
        "ListPlatformWorkflows": Rule(CONNECTOR_READ, R),
        "CheckPlatformHealth": Rule(CONNECTOR_READ, R),
        "InvokeConnector": Rule(CONNECTOR_INVOKE, I),
        "InvokeConnectorStream": Rule(CONNECTOR_INVOKE, I),
        "CancelInvocation": Rule(CONNECTOR_INVOKE, M),
        "ListHumanTasks": Rule(CONNECTOR_HUMAN, R),
        "ClaimHumanTask": Rule(CONNECTOR_HUMAN, M),
        "CompleteHumanTask": Rule(CONNECTOR_HUMAN, M),
        # Platforms call this; the guard verifies the signature over the exact bytes.
        "ReceiveWebhook": Rule(CONNECTOR_WEBHOOK, M, public=True),
    },
    "powerx.auth.v1.AuthService": {
        "CreateApiKey": Rule(APIKEY_MANAGE, M),
        "ListApiKeys": Rule(APIKEY_MANAGE, R),
        "GetApiKey": Rule(APIKEY_MANAGE, R),
        "SetApiKeyStatus": Rule(APIKEY_MANAGE, M),
        "WhoAmI": Rule(AUTH_READ, R, agent_token=True),
    },
    "powerx.audit.v1.AuditService": {
        "ListAuditRecords": Rule(AUDIT_READ, R),
        "GetAuditStats": Rule(AUDIT_READ, R),
    },
}

# WhoAmI answers any authenticated caller: every key holds `auth.read` implicitly.
IMPLICIT = frozenset({AUTH_READ})

PERMISSIONS: dict[str, Rule] = {
    f"/{service}/{method}": rule for service, methods in _TABLE.items() for method, rule in methods.items()
}

# The services the table covers, as their descriptors name them (checked against the table by tests).
SERVICES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    router_service_pb2.DESCRIPTOR.services_by_name["RouterService"],
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
    connector_service_pb2.DESCRIPTOR.services_by_name["ConnectorService"],
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
)


def rule_of(method: str) -> Rule | None:
    """The rule of a full method name (`/powerx.x.v1.Service/Method`), or None when it has none."""
    return PERMISSIONS.get(method)


def granted(scopes: frozenset[str], permission: str) -> bool:
    """Whether `scopes` grant `permission`: exactly, by `*`, by a `prefix.*` wildcard, or implicitly."""
    return permission in IMPLICIT or scope_allowed(permission, scopes)


def covers(held: frozenset[str], wanted: str) -> bool:
    """Whether scopes `held` cover the (possibly wildcard) scope `wanted`: a key cannot hand out more."""
    if "*" in held:
        return True
    if wanted == "*":
        return False
    if wanted.endswith(".*"):
        prefix = wanted[:-2]
        parts = prefix.split(".")
        return wanted in held or any(".".join(parts[:i]) + ".*" in held for i in range(1, len(parts)))
    return granted(held, wanted)
