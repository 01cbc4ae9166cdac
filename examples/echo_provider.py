r"""A real provider process for trying the mesh and for the router's tests.

Run it against a mesh:

    python -m examples.echo_provider --registry 127.0.0.1:50051 --tenant t1
        --provider-id com.example.echo --http-port 0

Once announced it prints one JSON line to stdout, `{"ready": true, "pid": …, "grpc": "grpc://…" | null,
"http": "http://…/invoke" | null}`, and serves until SIGTERM or SIGINT, which withdraw it. Logs go to
stderr. Capabilities:

- `echo.say` (unary, idempotent): returns the arguments with what the provider saw of the call.
- `echo.count` (streaming, idempotent): `{"n", "interval_ms"}` -> n data chunks `{"i", "provider"}`, then
  the text chunk `done`.
- `echo.create` (unary, not idempotent): counts how often this process saw each idempotency key.
- `echo.fail` (unary, idempotent): `{"code", "message"}` -> fails with that google.rpc code.
- `echo.sleep` (unary, idempotent): `{"ms"}` -> sleeps, then reports the time left before the deadline.
- `echo.text` (streaming): `{"text"}` -> one text chunk per word.

`--latency-ms` is added before every call, to play a slow provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sdk import CallInfo, Provider, ProviderError

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def build_provider(opts: argparse.Namespace) -> Provider:
    """The echo provider described by the command line options."""
    provider = Provider(
        opts.provider_id,
        version=opts.version,
        tenant_id=opts.tenant,
        registry=opts.registry,
        host=opts.host,
        grpc_port=None if opts.no_grpc else opts.grpc_port,
        http_port=opts.http_port,
        region=opts.region,
        lease_ttl_s=opts.lease_ttl,
        display_name="Echo",
        description="Echoes calls back, for trying and testing the mesh",
        announce_timeout_s=opts.announce_timeout,
    )
    pid = os.getpid()
    latency_s = opts.latency_ms / 1000.0
    scope = opts.scope
    seen_keys: Counter[str] = Counter()

    async def slow_down() -> None:
        if latency_s > 0:
            await asyncio.sleep(latency_s)

    @provider.unary("echo.say", scope=scope, idempotent=True, input_schema=ANY_OBJECT)
    async def say(args: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        await slow_down()
        return {
            "echo": args,
            "provider": provider.provider_id,
            "pid": pid,
            "transport": call.transport,
            "request_id": call.request_id,
            "traceparent": call.traceparent,
            "tenant": call.tenant_id,
            "attempt": call.attempt,
        }

    @provider.streaming("echo.count", scope=scope, idempotent=True, input_schema=ANY_OBJECT)
    async def count(args: dict[str, Any], call: CallInfo) -> AsyncIterator[Any]:
        await slow_down()
        n = _number(args, "n", 3)
        interval_s = _number(args, "interval_ms", 0) / 1000.0
        for i in range(int(n)):
            if i and interval_s > 0:
                await asyncio.sleep(interval_s)
            yield {"i": i, "provider": provider.provider_id}
        yield "done"

    @provider.unary("echo.create", scope=scope, idempotent=False, input_schema=ANY_OBJECT)
    async def create(args: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        await slow_down()
        seen_keys[call.idempotency_key] += 1
        return {
            "created": True,
            "provider": provider.provider_id,
            "key": call.idempotency_key,
            "count": seen_keys[call.idempotency_key],
        }

    @provider.unary("echo.fail", scope=scope, idempotent=True, input_schema=ANY_OBJECT)
    async def fail(args: dict[str, Any], call: CallInfo) -> None:
        await slow_down()
        raise ProviderError(
            int(_number(args, "code", 2)), str(args.get("message", "echo.fail was asked to fail"))
        )

    @provider.unary("echo.sleep", scope=scope, idempotent=True, input_schema=ANY_OBJECT)
    async def sleep(args: dict[str, Any], call: CallInfo) -> dict[str, Any]:
        await slow_down()
        ms = _number(args, "ms", 0)
        await asyncio.sleep(ms / 1000.0)
        return {"slept_ms": ms, "time_remaining": call.time_remaining()}

    @provider.streaming("echo.text", scope=scope, idempotent=False, input_schema=ANY_OBJECT)
    async def text(args: dict[str, Any], call: CallInfo) -> AsyncIterator[str]:
        await slow_down()
        for word in str(args.get("text", "")).split():
            yield word

    return provider


def _number(args: dict[str, Any], key: str, default: float) -> float:
    """A numeric argument, or INVALID_ARGUMENT when it is not a number."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProviderError(3, f"{key} must be a number")
    return float(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line options."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.echo_provider", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--registry", required=True, help="the mesh's gRPC address, HOST:PORT")
    parser.add_argument("--tenant", required=True, help="tenant that owns the provider")
    parser.add_argument("--provider-id", required=True, help="provider id, such as com.example.echo")
    grpc_group = parser.add_mutually_exclusive_group()
    grpc_group.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: 0, ephemeral)")
    grpc_group.add_argument("--no-grpc", action="store_true", help="serve no gRPC endpoint")
    parser.add_argument(
        "--http-port", type=int, default=None, help="also serve HTTP on this port (0: ephemeral)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind and announce (default: 127.0.0.1)"
    )
    parser.add_argument("--region", default="", help="region announced on the endpoints")
    parser.add_argument("--lease-ttl", type=float, default=30.0, help="lease TTL in seconds (default: 30)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added before every call")
    parser.add_argument("--version", default="1.0.0", help="provider and capability version (default: 1.0.0)")
    parser.add_argument("--scope", default="", help="security scope of every capability (default: none)")
    parser.add_argument(
        "--announce-timeout", type=float, default=10.0, help="seconds to keep retrying the first announce"
    )
    opts = parser.parse_args(argv)
    if opts.no_grpc and opts.http_port is None:
        parser.error("--no-grpc needs --http-port: the provider must serve some transport")
    return opts


def _print_ready(provider: Provider) -> None:
    grpc_address = provider.grpc_address
    line = {
        "ready": True,
        "pid": os.getpid(),
        "grpc": f"grpc://{grpc_address}" if grpc_address else None,
        "http": provider.http_url,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the echo provider until SIGTERM or SIGINT; returns the exit status."""
    opts = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        build_provider(opts).run(on_ready=_print_ready)
    except Exception as exc:
        logging.getLogger("echo_provider").error("echo provider failed: %s", exc)  # noqa: TRY400
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
