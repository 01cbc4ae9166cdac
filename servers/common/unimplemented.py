"""Servicers for contracts whose service is not built yet: every RPC answers UNIMPLEMENTED clearly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from servers.common.errors import Unimplemented


def unimplemented_servicer(servicer_base: type, service: ServiceDescriptor, note: str) -> Any:
    """Returns an instance of `servicer_base` whose every method raises `Unimplemented`.

    Args:
        servicer_base: The generated `…Servicer` class.
        service: Its service descriptor (tells which methods stream).
        note: What the caller should know, such as which piece of work brings the service.
    """

    def make(name: str, server_streaming: bool) -> Any:
        message = f"{service.full_name}/{name} is part of the contract but not served yet: {note}"

        async def unary(self: Any, request: Any, context: Any) -> Any:
            raise Unimplemented(message, metadata={"method": f"{service.full_name}/{name}"})

        async def streaming(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            raise Unimplemented(message, metadata={"method": f"{service.full_name}/{name}"})
            yield  # pragma: no cover  (makes this an async generator)

        return streaming if server_streaming else unary

    methods = {m.name: make(m.name, m.server_streaming) for m in service.methods}
    cls = type(f"Unimplemented{servicer_base.__name__}", (servicer_base,), methods)
    return cls()
