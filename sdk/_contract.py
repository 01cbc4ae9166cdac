"""The generated modules of the provider contract (`powerx.provider.v1`).

The contract is generated from `proto/powerx/provider/v1/provider_service.proto`; if that file is
renamed `provider.proto`, the modules become `provider_pb2`. Both names are accepted so the SDK keeps
working across the rename.
"""

from __future__ import annotations

try:
    from powerx.provider.v1 import provider_service_pb2 as provider_pb2
    from powerx.provider.v1 import provider_service_pb2_grpc as provider_pb2_grpc
except ImportError:  # pragma: no cover - only after the proto file is renamed
    from powerx.provider.v1 import (  # type: ignore[no-redef, import-not-found, attr-defined, unused-ignore]
        provider_pb2,
        provider_pb2_grpc,
    )

SERVICE_NAME: str = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name

__all__ = ["SERVICE_NAME", "provider_pb2", "provider_pb2_grpc"]
