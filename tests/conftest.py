"""Shared fixtures: databases (SQLite always, PostgreSQL when POWERX_TEST_DATABASE_URL is set), Redis
(when POWERX_TEST_REDIS_URL is set), a real mesh on port 0, and channels to it."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from servers.common.settings import Settings
from servers.mesh import Mesh, start_mesh

PG_URL = os.environ.get("POWERX_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("POWERX_TEST_REDIS_URL", "")
# Set by .ci/run: a missing or unreachable PostgreSQL or Redis fails the run instead of skipping tests.
REQUIRE_SERVICES = os.environ.get("POWERX_TEST_REQUIRE_SERVICES", "") == "1"


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (POWERX_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def pytest_sessionstart(session: pytest.Session) -> None:
    """With POWERX_TEST_REQUIRE_SERVICES=1, checks both servers answer before any test runs."""
    if not REQUIRE_SERVICES:
        return
    import psycopg
    import redis

    if not PG_URL or not REDIS_URL:
        raise pytest.UsageError("POWERX_TEST_DATABASE_URL and POWERX_TEST_REDIS_URL must both be set")
    with psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    redis.from_url(REDIS_URL, socket_timeout=5).ping()


def _pg_schema_url(schema: str) -> str:
    """A URL of the test database whose connections use their own schema."""
    import psycopg

    plain = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _pg_schema() -> Iterator[str]:
    """Yields the URL of a fresh schema of the test PostgreSQL, dropped afterwards."""
    if not PG_URL:
        _skip_or_fail("POWERX_TEST_DATABASE_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield _pg_schema_url(schema)
    _drop_schema(schema)


DB_PARAMS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DB_PARAMS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'mesh.db'}"
        return
    yield from _pg_schema()


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (for tests that need a server shared by several processes)."""
    yield from _pg_schema()


@pytest.fixture
def redis_url() -> str:
    """The test Redis, with this test's keys removed afterwards."""
    if not REDIS_URL:
        _skip_or_fail("POWERX_TEST_REDIS_URL is not set")
    return REDIS_URL


def mesh_settings(tmp_path: Path, database_url: str = "", redis_url: str = "", **kw: object) -> Settings:
    """Settings for a test mesh on an ephemeral port."""
    values: dict[str, object] = {
        "watch_poll_interval_s": 0.2,
        "shutdown_grace_s": 0.5,
        "config_root": tmp_path / "root",  # no connector files unless a test writes them
        # The functional suites test behaviour with the development mode (trusted `x-principal` /
        # `x-scopes` headers); the auth, tenant-isolation, scale-out and edge auth suites turn it on.
        "auth_required": False,
        **kw,
    }
    return Settings(
        grpc_address="127.0.0.1:0",
        data_dir=tmp_path / "data",
        database_url=database_url,
        redis_url=redis_url,
        **values,  # type: ignore[arg-type]
    )


@pytest.fixture
async def mesh(tmp_path: Path, database_url: str) -> AsyncIterator[Mesh]:
    """A running mesh on the parametrized database."""
    m = await start_mesh(mesh_settings(tmp_path, database_url))
    try:
        yield m
    finally:
        await m.stop(0)


@pytest.fixture
async def channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    """A real channel to the mesh."""
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield ch


@pytest.fixture
def registry(channel: grpc.aio.Channel) -> rs_grpc.RegistryServiceStub:
    """A registry stub over the real channel."""
    return rs_grpc.RegistryServiceStub(channel)


def tenant(t: str = "t1") -> tuple[tuple[str, str], ...]:
    """Call metadata for a tenant."""
    return (("x-tenant-id", t),)


def announce_request(
    provider_id: str = "com.acme.crm",
    *,
    version: str = "1.0.0",
    caps: tuple[tuple[str, str], ...] = (("crm.lead.create", "1.0.0"),),
    endpoints: tuple[tuple[int, str], ...] = ((common_pb2.TRANSPORT_GRPC, "grpc://127.0.0.1:51043"),),
    scopes: tuple[str, ...] = (),
    lease_s: int = 0,
) -> rs.AnnounceProviderRequest:
    """A valid announce with the given shape."""
    req = rs.AnnounceProviderRequest(
        provider=provider_pb2.Provider(provider_id=provider_id, version=version, display_name="CRM Plus"),
        capabilities=[
            capability_pb2.Capability(
                capability_id=c,
                version=v,
                tenant_scopes=list(scopes),
                security=capability_pb2.CapabilitySecurity(scope="crm.lead.write"),
            )
            for c, v in caps
        ],
        endpoints=[endpoint_pb2.Endpoint(transport=t, uri=u) for t, u in endpoints],  # type: ignore[arg-type]
    )
    if lease_s:
        req.lease_ttl.FromSeconds(lease_s)
    return req
