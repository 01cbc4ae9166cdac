"""PowerX SDK: providers serve capabilities over gRPC and HTTP; agents run tasks and call each other.

Providers (`Provider`) serve capabilities and stay in the mesh's registry; agents (`Agent`, see
`sdk.agent`) register with the agent service, take runs over their session channel and call other
agents' skills through the router.

Example:
    ```python
    from sdk import CallInfo, Provider, ProviderError

    provider = Provider("com.acme.crm", version="1.0.0", tenant_id="t-001", registry="127.0.0.1:50051")


    @provider.unary("crm.lead.create", scope="crm.lead.write")
    async def create(args: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        if "email" not in args:
            raise ProviderError(grpc.StatusCode.INVALID_ARGUMENT, "email is required")
        return {"id": "lead-1"}


    provider.run()
    ```
"""

from sdk._agent_errors import (
    AgentError,
    AgentExistsError,
    AgentRevokedError,
    AgentSignatureError,
    CallDepthExceededError,
    QuotaExceededError,
    SessionNotFoundError,
    TaskError,
    ToolNotGrantedError,
)
from sdk._agent_task import TaskContext
from sdk.agent import Agent, AgentStats
from sdk.call import CallInfo
from sdk.dispatch import CapabilitySpec
from sdk.errors import AnnounceError, ProviderError
from sdk.provider import Provider
from sdk.signing import AgentKey

__all__ = [
    "Agent",
    "AgentError",
    "AgentExistsError",
    "AgentKey",
    "AgentRevokedError",
    "AgentSignatureError",
    "AgentStats",
    "AnnounceError",
    "CallDepthExceededError",
    "CallInfo",
    "CapabilitySpec",
    "Provider",
    "ProviderError",
    "QuotaExceededError",
    "SessionNotFoundError",
    "TaskContext",
    "TaskError",
    "ToolNotGrantedError",
]
