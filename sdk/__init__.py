"""PowerX provider SDK: serve capabilities to the mesh over gRPC and HTTP and stay in its registry.

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

from sdk.call import CallInfo
from sdk.dispatch import CapabilitySpec
from sdk.errors import AnnounceError, ProviderError
from sdk.provider import Provider

__all__ = ["AnnounceError", "CallInfo", "CapabilitySpec", "Provider", "ProviderError"]
