"""A bare grpc.aio pass-through proxy, the baseline of a Python hop (reference §3, "raw proxy").

`python -m tests.bench.raw_proxy --upstream HOST:PORT` serves ProviderService/Invoke and InvokeStream
on an ephemeral port and forwards the request bytes unchanged to the upstream (identity serializers,
one cached multicallable per method, one channel, no metadata forwarded, the caller's deadline kept),
then prints `{"ready": true, "pid": …, "address": "127.0.0.1:PORT"}` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

INVOKE = "/powerx.provider.v1.ProviderService/Invoke"
INVOKE_STREAM = "/powerx.provider.v1.ProviderService/InvokeStream"


class Forward(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Forwards the two ProviderService methods as raw bytes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._invoke = channel.unary_unary(INVOKE)
        self._stream = channel.unary_stream(INVOKE_STREAM)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method == INVOKE:
            return grpc.unary_unary_rpc_method_handler(self.invoke)
        if method == INVOKE_STREAM:
            return grpc.unary_stream_rpc_method_handler(self.stream)
        return None

    async def invoke(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        reply: bytes = await self._invoke(request, timeout=context.time_remaining())
        return reply

    async def stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for chunk in self._stream(request, timeout=context.time_remaining()):
            yield chunk


async def _serve(upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Forward(channel),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(json.dumps({"ready": True, "pid": os.getpid(), "address": f"127.0.0.1:{port}"}) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)
        await channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.raw_proxy")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the provider")
    opts = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(opts.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
