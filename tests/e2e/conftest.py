"""A real mesh behind a real Envoy edge, both on ephemeral ports."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.envoy import EdgeConfig, EnvoyEdge
from servers.mesh import Mesh, start_mesh
from tests.conftest import mesh_settings


@dataclass
class Edge:
    mesh: Mesh
    envoy: EnvoyEdge
    http: httpx.AsyncClient

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.envoy.listen_port}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    # The mesh is told the edge's address (the connectors' callback URLs point at it), so Envoy's
    # port is chosen before the mesh starts rather than by Envoy itself.
    port = _free_port()
    mesh = await start_mesh(mesh_settings(tmp_path, edge_address=f"127.0.0.1:{port}"))
    envoy = EnvoyEdge(
        EdgeConfig(
            listen_port=port,
            admin_port=0,
            upstreams=(("127.0.0.1", mesh.port),),
            max_request_body_bytes=1024 * 1024,
        ),
        log_path=tmp_path / "envoy.log",
    )
    try:
        await asyncio.to_thread(envoy.start)
        await asyncio.to_thread(envoy.wait_healthy_upstreams)
        async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
            yield Edge(mesh, envoy, http)
    finally:
        await asyncio.to_thread(envoy.stop)
        await mesh.stop(0)
