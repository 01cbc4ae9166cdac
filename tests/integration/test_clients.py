"""The other ways in: the betterproto2 typed client, the `powerx migrate` command, watch bad input."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import grpc
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from powerx_mesh_client.powerx.common import v1 as bp_common
from powerx_mesh_client.powerx.registry import v1 as bp

from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers import cli
from servers.common.db import MIGRATIONS
from servers.mesh import Mesh
from tests.conftest import tenant
from tests.integration.helpers import bad_fields, error_info

_Details = collections.namedtuple(
    "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready")
)


class _Tenant(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """betterproto2's sync stubs take no metadata argument, so the tenant rides on the channel."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        md = [*(details.metadata or ()), ("x-tenant-id", "t1")]
        return continuation(
            _Details(details.method, details.timeout, md, details.credentials, details.wait_for_ready),
            request,
        )


def _typed_client_round_trip(address: str) -> tuple[bool, list[str]]:
    with grpc.insecure_channel(address) as raw:
        stub = bp.RegistryServiceStub(grpc.intercept_channel(raw, _Tenant()))
        announced = stub.announce_provider(
            bp.AnnounceProviderRequest(
                provider=bp.Provider(provider_id="com.typed", version="1.0.0"),
                capabilities=[bp.Capability(capability_id="typed.op", version="1.0.0")],
                endpoints=[bp.Endpoint(transport=bp_common.Transport.HTTP, uri="http://127.0.0.1:9/x")],
            )
        )
        listed = stub.list_capabilities(bp.ListCapabilitiesRequest())
        return announced.changed, [c.capability_id for c in listed.capabilities]


async def test_betterproto_typed_client_calls_the_mesh(mesh: Mesh) -> None:
    changed, ids = await asyncio.to_thread(_typed_client_round_trip, mesh.address)
    assert changed
    assert ids == ["typed.op"]


def test_powerx_migrate_creates_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("POWERX_DATABASE_URL", raising=False)
    assert cli.main(["migrate"]) == 0
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head
    assert f"database at revision {head} " in capsys.readouterr().out  # the latest migration
    assert (tmp_path / "data" / "mesh.db").exists()
    assert cli.main(["migrate"]) == 0  # idempotent


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"since_revision": -1}, "since_revision"),
        ({"max_events": -2}, "max_events"),
        ({"event_types": [42]}, "event_types[0]"),
        ({"capability_ids": [f"c{i}" for i in range(257)]}, "capability_ids"),
    ],
)
async def test_watch_rejects_bad_input(
    registry: rs_grpc.RegistryServiceStub, request_fields: dict, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.WatchRegistry(rs.WatchRegistryRequest(**request_fields), metadata=tenant()).read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_fields(err.value)
    assert error_info(err.value).domain == "registry.powerx"
