"""The `powerx` command: `up` (mesh + Envoy edge), `serve` (gRPC only), `migrate`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import replace

from servers.common import logs
from servers.common.db import create_engine, current_revision, migrate
from servers.common.settings import Settings

log = logging.getLogger("powerx.cli")


DEFAULT_UP_A2A_ADDRESS = "127.0.0.1:8081"


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"not a host:port address: {address!r}")
    return host, int(port)


async def _run(settings: Settings, with_edge: bool) -> int:
    from gateway.envoy import EdgeConfig, EnvoyEdge  # noqa: PLC0415  (imported only when serving)
    from servers.mesh import start_mesh  # noqa: PLC0415

    mesh = await start_mesh(settings)
    edge: EnvoyEdge | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if with_edge:
            edge_host, edge_port = _split_address(settings.edge_address)
            admin_host, admin_port = _split_address(settings.envoy_admin_address)
            grpc_host = settings.grpc_address.rpartition(":")[0]
            edge = EnvoyEdge(
                EdgeConfig(
                    listen_host=edge_host,
                    listen_port=edge_port,
                    admin_host=admin_host,
                    admin_port=admin_port,
                    upstreams=(("127.0.0.1" if grpc_host in ("0.0.0.0", "") else grpc_host, mesh.port),),  # noqa: S104
                    max_request_body_bytes=settings.edge_max_body_bytes,
                ),
                log_path=settings.data_dir / "envoy.log",
            )
            await asyncio.to_thread(edge.start)
        print(
            f"PowerX mesh is up (database: {settings.effective_database_url.split('://')[0]}, "
            f"bus: {'redis' if settings.redis_url else 'in-process'})",
            flush=True,
        )
        print(
            f"  gRPC         {mesh.address}   (reflection: grpcurl -plaintext {mesh.address} list)",
            flush=True,
        )
        if edge is not None:
            print(f"  REST + gRPC  {edge.url}   (Envoy edge)", flush=True)
            print(
                f"  Envoy admin  http://{settings.envoy_admin_address.rpartition(':')[0]}:{edge.admin_port}",
                flush=True,
            )
        if mesh.a2a_address:
            print(
                f"  A2A          http://{mesh.a2a_address}/a2a/<tenant>/<agent>/.well-known/agent-card.json",
                flush=True,
            )
        print("Press Ctrl-C to stop.", flush=True)
        await stop.wait()
        print("stopping…", flush=True)
    finally:
        if edge is not None:
            await asyncio.to_thread(edge.stop)
        await mesh.stop()
    return 0


async def _migrate(settings: Settings) -> int:
    engine = create_engine(settings.effective_database_url)
    try:
        await migrate(engine)
        print(f"database at revision {await current_revision(engine)} ({engine.dialect.name})")
    finally:
        await engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `powerx` command."""
    parser = argparse.ArgumentParser(prog="powerx", description="PowerX Integration Mesh")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the mesh and its Envoy edge on the embedded default")
    serve = sub.add_parser("serve", help="run only the gRPC server (scaled-out deployments)")
    for p in (up, serve):
        p.add_argument("--grpc-address", help="gRPC listen address (POWERX_GRPC_ADDRESS)")
        p.add_argument("--data-dir", help="data folder (POWERX_DATA_DIR)")
    up.add_argument("--edge-address", help="REST/gRPC edge address (POWERX_EDGE_ADDRESS)")
    up.add_argument("--admin-address", help="Envoy admin address (POWERX_ENVOY_ADMIN_ADDRESS)")
    for p in (up, serve):
        p.add_argument(
            "--a2a-address", help="A2A listener address (POWERX_A2A_ADDRESS; `up`: 127.0.0.1:8081)"
        )
    sub.add_parser("migrate", help="apply database migrations and exit")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    if args.command == "up" and not settings.a2a_address:
        # The embedded mesh publishes its agents over A2A by default; scaled-out deployments opt in.
        settings = replace(settings, a2a_address=DEFAULT_UP_A2A_ADDRESS)
    overrides = {
        "grpc_address": getattr(args, "grpc_address", None),
        "edge_address": getattr(args, "edge_address", None),
        "envoy_admin_address": getattr(args, "admin_address", None),
        "a2a_address": getattr(args, "a2a_address", None),
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v})
    if getattr(args, "data_dir", None):
        from pathlib import Path  # noqa: PLC0415

        settings = replace(settings, data_dir=Path(args.data_dir))
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(settings, with_edge=args.command == "up"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
