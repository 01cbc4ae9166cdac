"""The `powerx` command: `up` (mesh + Envoy edge), `serve` (gRPC only), `migrate`, `keys`, `degrade`.

`keys` manages API keys directly in the database (the way to the first key of a scaled-out mesh);
`degrade` is the operator's switch of a platform's connector degradation, set over gRPC on a running mesh
with an API key (`--api-key` or POWERX_API_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import re
import signal
import sys
from dataclasses import replace
from typing import Any

from servers.common import logs
from servers.common.db import create_engine, current_revision, migrate
from servers.common.settings import Settings

log = logging.getLogger("powerx.cli")


DEFAULT_UP_A2A_ADDRESS = "127.0.0.1:8081"
DEGRADE_MODES = ("local", "human", "off")
DEGRADE_PLATFORMS = ("coze", "n8n")
MANAGE_SCOPE = "agent.connector.manage"
DEGRADE_CALL_TIMEOUT_S = 10.0
_DURATION = re.compile(r"^(\d+)([smhd])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"not a host:port address: {address!r}")
    return host, int(port)


async def _run(settings: Settings, with_edge: bool) -> int:
    from gateway.envoy import EdgeConfig, EnvoyEdge  # noqa: PLC0415  (imported only when serving)
    from servers.mesh import first_key, start_mesh  # noqa: PLC0415

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
        if mesh.metrics_address:
            print(f"  Metrics      http://{mesh.metrics_address}/metrics   (Prometheus)", flush=True)
        if mesh.a2a_address:
            print(
                f"  A2A          http://{mesh.a2a_address}/a2a/<tenant>/<agent>/.well-known/agent-card.json",
                flush=True,
            )
        first = await first_key(mesh)
        if first is not None:
            # Shown once, here, like a key made through CreateApiKey; only its hash is stored.
            print(
                "  Authentication is on. This is the first API key (an operator key, every scope); it is\n"
                "  shown only now, so keep it:\n"
                f"    export POWERX_API_KEY={first}\n"
                "  Send it as the x-api-key header. Make narrower keys with AuthService.CreateApiKey or\n"
                "  `powerx keys create --tenant <tenant> --scopes '<scope> …'`.",
                flush=True,
            )
        elif settings.auth_required:
            print(
                "  Authentication is on: send an API key in x-api-key "
                "(`powerx keys create --tenant '*' --scopes '*'` makes one).",
                flush=True,
            )
        else:
            print("  Authentication is OFF (POWERX_AUTH_REQUIRED=0): development only.", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        await stop.wait()
        print("stopping…", flush=True)
    finally:
        if edge is not None:
            await asyncio.to_thread(edge.stop)
        await mesh.stop()
    return 0


def parse_duration(text: str) -> int:
    """Seconds of a duration written `30s`, `30m`, `2h` or `1d` (a bare number is seconds).

    Raises:
        argparse.ArgumentTypeError: The text is not such a duration.
    """
    value = text.strip().lower()
    if value.isdigit():
        return int(value)
    match = _DURATION.match(value)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number followed by s, m, h or d (30s, 30m, 2h, 1d)"
        )
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _client_address(address: str) -> str:
    """The address to dial for a listen address (a wildcard host means this machine)."""
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):  # noqa: S104 - a listen address, not a bind
        host = "127.0.0.1"
    return f"{host}:{port}"


def _rpc_error_text(err: Any) -> str:
    """`CODE: message (reason: R; field: why, …)` of a failed call, from its `google.rpc.Status`."""
    from google.rpc import error_details_pb2  # noqa: PLC0415
    from grpc_status import rpc_status  # noqa: PLC0415

    text = f"{err.code().name}: {err.details()}"
    extra: list[str] = []
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            extra.insert(0, f"reason: {info.reason}")
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            extra.extend(f"{v.field}: {v.description}" for v in bad.field_violations)
    return f"{text} ({'; '.join(extra)})" if extra else text


async def _degrade(args: argparse.Namespace, address: str) -> int:
    """Sets (or reads) a platform's degrade switch through a running mesh and prints it as JSON."""
    import grpc  # noqa: PLC0415  (imported only for this command)
    from google.protobuf import json_format  # noqa: PLC0415

    from powerx.connector.v1 import connector_service_pb2 as svc  # noqa: PLC0415
    from powerx.connector.v1 import connector_service_pb2_grpc as svc_grpc  # noqa: PLC0415

    api_key = args.api_key or os.environ.get("POWERX_API_KEY", "")
    metadata = (
        *((("x-api-key", api_key),) if api_key else ()),
        ("x-tenant-id", args.tenant),
        ("x-scopes", MANAGE_SCOPE),
        ("x-principal", args.principal),
    )
    out: dict[str, Any]
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = svc_grpc.ConnectorServiceStub(channel)  # type: ignore[no-untyped-call]
            if args.history:
                history = await stub.ListDegradeHistory(
                    svc.ListDegradeHistoryRequest(platform=args.platform, tenant=args.tenant),
                    metadata=metadata,
                    timeout=DEGRADE_CALL_TIMEOUT_S,
                )
                out = json_format.MessageToDict(history, preserving_proto_field_name=True)
            elif args.status:
                got = await stub.GetDegradeState(
                    svc.GetDegradeStateRequest(platform=args.platform, tenant=args.tenant),
                    metadata=metadata,
                    timeout=DEGRADE_CALL_TIMEOUT_S,
                )
                out = json_format.MessageToDict(got.state, preserving_proto_field_name=True)
            else:
                req = svc.SetDegradeModeRequest(
                    platform=args.platform,
                    tenant=args.tenant,
                    mode=f"DEGRADE_MODE_{args.mode.upper()}",
                    reason=args.reason,
                    local_capability_id=args.capability,
                )
                if args.timeout:
                    req.timeout.FromSeconds(args.timeout)
                resp = await stub.SetDegradeMode(req, metadata=metadata, timeout=DEGRADE_CALL_TIMEOUT_S)
                out = json_format.MessageToDict(resp.state, preserving_proto_field_name=True)
    except grpc.aio.AioRpcError as err:
        print(f"powerx degrade: {address}: {_rpc_error_text(err)}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, ensure_ascii=False, sort_keys=True))
    return 0


def _add_degrade_parser(sub: Any) -> None:
    degrade = sub.add_parser(
        "degrade",
        help="set or show a platform's connector degrade switch on a running mesh",
        description="Sets the degrade switch of a connector platform for a tenant (LOCAL answers through "
        "a local capability, HUMAN opens human tasks, OFF recovers) and prints the switch as JSON.",
    )
    degrade.add_argument("--platform", required=True, choices=DEGRADE_PLATFORMS, help="coze or n8n")
    action = degrade.add_mutually_exclusive_group(required=True)
    action.add_argument("--mode", type=str.lower, choices=DEGRADE_MODES, help="the mode to set")
    action.add_argument("--status", action="store_true", help="print the current switch instead")
    action.add_argument("--history", action="store_true", help="print the switch's changes, newest first")
    degrade.add_argument("--tenant", required=True, help="tenant the switch is for")
    degrade.add_argument(
        "--timeout",
        type=parse_duration,
        default=0,
        help="how long the mode holds before it reverts to OFF (30s, 30m, 2h, 1d); default: until changed",
    )
    degrade.add_argument("--reason", default="", help="why (kept in the degrade history and audit log)")
    degrade.add_argument(
        "--capability", default="", help="router capability answering in LOCAL mode (e.g. local.x)"
    )
    degrade.add_argument(
        "--address", help="the mesh's gRPC address (default: POWERX_GRPC_ADDRESS, else 127.0.0.1:50051)"
    )
    degrade.add_argument(
        "--api-key", default="", help="API key with agent.connector.manage (default: POWERX_API_KEY)"
    )
    degrade.add_argument(
        "--principal",
        default="",
        help="who makes the change when authentication is off (x-principal; default: the login name)",
    )


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "powerx-cli"


async def _migrate(settings: Settings) -> int:
    engine = create_engine(settings.effective_database_url)
    try:
        await migrate(engine)
        print(f"database at revision {await current_revision(engine)} ({engine.dialect.name})")
    finally:
        await engine.dispose()
    return 0


async def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from powerx.auth.v1 import auth_service_pb2 as pb  # noqa: PLC0415
    from servers.auth.keys import KeyCache  # noqa: PLC0415
    from servers.auth.service import AuthService  # noqa: PLC0415
    from servers.auth.store import AuthStore  # noqa: PLC0415
    from servers.common.bus import make_bus  # noqa: PLC0415
    from servers.common.context import CallContext  # noqa: PLC0415
    from servers.common.errors import MeshError  # noqa: PLC0415

    engine = create_engine(settings.effective_database_url)
    bus = make_bus(settings.redis_url)
    try:
        await migrate(engine)
        store = AuthStore(engine)
        service = AuthService(store, KeyCache(store), bus, auth_required=settings.auth_required)
        ctx = CallContext(tenant_id=args.tenant or "", principal=f"cli:{_login_name()}")
        try:
            if args.keys_command == "create":
                created = await service.create_key(
                    pb.CreateApiKeyRequest(
                        tenant_id=args.tenant, name=args.name, scopes=args.scopes.replace(",", " ").split()
                    ),
                    ctx,
                    bootstrap=True,  # direct database access is the operator's own authority
                )
                print(f"key_id {created.api_key.key_id}  tenant {created.api_key.tenant_id}")
                print(f"api key (shown once): {created.secret}")
            elif args.keys_command == "list":
                listed = await service.list_keys(pb.ListApiKeysRequest(page_size=1000), ctx)
                for k in listed.api_keys:
                    print(
                        f"{k.key_id}  {pb.ApiKeyStatus.Name(k.status).removeprefix('API_KEY_STATUS_'):8}"
                        f"  {k.name}  scopes={' '.join(k.scopes)}"
                    )
            else:
                status = {
                    "revoke": pb.API_KEY_STATUS_REVOKED,
                    "disable": pb.API_KEY_STATUS_DISABLED,
                    "enable": pb.API_KEY_STATUS_ACTIVE,
                }[args.keys_command]
                changed = await service.set_status(
                    pb.SetApiKeyStatusRequest(key_id=args.key_id, status=status, reason=args.reason), ctx
                )
                print(f"{changed.api_key.key_id}  {pb.ApiKeyStatus.Name(changed.api_key.status)}")
        except MeshError as exc:
            print(f"powerx keys: {exc.message}", file=sys.stderr)
            return 1
    finally:
        await bus.close()
        await engine.dispose()
    return 0


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list, disable, enable or revoke API keys (in the database)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key and print it once")
    create.add_argument("--tenant", required=True, help="tenant of the key, or '*' for an operator key")
    create.add_argument("--scopes", required=True, help="space- or comma-separated scopes, e.g. 'agent.*'")
    create.add_argument("--name", default="cli", help="name of the key")
    listing = ksub.add_parser("list", help="list a tenant's keys")
    listing.add_argument("--tenant", required=True)
    for name in ("revoke", "disable", "enable"):
        p = ksub.add_parser(name, help=f"{name} a key")
        p.add_argument("key_id")
        p.add_argument("--tenant", required=True, help="tenant of the key ('*' for operator keys)")
        p.add_argument("--reason", default="", help="why (kept with the key)")


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
    _add_keys_parser(sub)
    _add_degrade_parser(sub)
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    if args.command == "degrade":
        if not args.mode and (args.timeout or args.capability or args.reason):
            parser.error("degrade: --timeout, --reason and --capability go with --mode")
        address = _client_address(args.address or settings.grpc_address)
        args.principal = args.principal or _login_name()
        return asyncio.run(_degrade(args, address))
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
    if args.command == "keys":
        return asyncio.run(_keys(args, settings))
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(settings, with_edge=args.command == "up"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
