"""`Provider`: declare capabilities, serve them over gRPC and/or HTTP, and stay in the mesh's registry."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf import duration_pb2

from powerx.common.v1 import common_pb2
from powerx.registry.v1 import capability_pb2, endpoint_pb2, provider_pb2
from powerx.registry.v1 import registry_service_pb2 as rs
from sdk.dispatch import (
    CAPABILITY_ID_RE,
    SEMVER_RE,
    CapabilitySpec,
    Dispatcher,
    StreamHandler,
    UnaryHandler,
)
from sdk.grpc_server import GrpcServer
from sdk.http_server import DEFAULT_PATH, HttpServer
from sdk.lease import Registration

log = logging.getLogger("powerx.sdk")

PROVIDER_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MIN_LEASE_TTL_S = 1.0
MAX_LEASE_TTL_S = 24 * 3600.0

UnaryT = TypeVar("UnaryT", bound=UnaryHandler)
StreamT = TypeVar("StreamT", bound=StreamHandler)


def _is_coroutine_function(fn: object) -> bool:
    # A plain bool (not inspect's TypeGuard) keeps the decorated handler's own type.
    return inspect.iscoroutinefunction(fn)


def _is_async_generator_function(fn: object) -> bool:
    return inspect.isasyncgenfunction(fn)


def _host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Provider:
    """A provider of capabilities in the PowerX mesh.

    Declare capabilities with the `unary` and `streaming` decorators, then `start()` (or use
    `async with`, or `run()` in a script). Starting serves `powerx.provider.v1.ProviderService` and
    `grpc.health.v1.Health` over gRPC and, when asked, the HTTP wire format; announces every
    capability with one endpoint per transport; and renews the lease every third of its TTL,
    announcing again whenever the registry has forgotten the provider.

    Args:
        provider_id: Stable identifier, lower case (`[a-z0-9._-]`), such as `com.acme.crm`.
        version: Semantic version of the provider; also the default version of its capabilities.
        tenant_id: Tenant that owns the provider.
        registry: The mesh's gRPC address, `host:port`.
        host: Address the servers bind to.
        grpc_port: gRPC port (0 = ephemeral), or None for no gRPC endpoint.
        http_port: HTTP port (0 = ephemeral), or None (the default) for no HTTP endpoint.
        advertise_host: Host announced in endpoint URIs when it differs from `host` (for example when
            binding `0.0.0.0`); defaults to `host`.
        region: Region announced on the endpoints, for region affinity.
        lease_ttl_s: Lease to hold, 1 s to 24 h; renewed every `lease_ttl_s / 3`.
        display_name: Human-readable name of the provider.
        description: What the provider does.
        labels: Free-form labels of the provider.
        endpoint_metadata: Metadata of every announced endpoint.
        weight: Relative share of load of the endpoints (1 to 1000; 0 means the registry default).
        cost: Relative cost per call of the endpoints (0 means each capability's cost).
        announce_timeout_s: How long `start()` keeps retrying the first announce.
        stop_grace_s: How long `stop()` lets running calls finish.
        withdraw_timeout_s: How long `stop()` waits for the registry to confirm the withdrawal.
        http_path: Path of the HTTP invoke route (the health route is `{http_path}/health`).
        registry_credentials: `grpc.ChannelCredentials` for the registry, or None for plaintext.
        registry_metadata: Extra metadata sent with every registry call (for example authorization).

    Raises:
        ValueError: An argument is malformed (ids, version, lease, or no transport at all).
    """

    def __init__(
        self,
        provider_id: str,
        *,
        version: str,
        tenant_id: str,
        registry: str,
        host: str = "127.0.0.1",
        grpc_port: int | None = 0,
        http_port: int | None = None,
        advertise_host: str | None = None,
        region: str = "",
        lease_ttl_s: float = 30.0,
        display_name: str = "",
        description: str = "",
        labels: Mapping[str, str] | None = None,
        endpoint_metadata: Mapping[str, str] | None = None,
        weight: int = 0,
        cost: float = 0.0,
        announce_timeout_s: float = 10.0,
        stop_grace_s: float = 2.0,
        withdraw_timeout_s: float = 2.0,
        http_path: str = DEFAULT_PATH,
        registry_credentials: Any = None,
        registry_metadata: Mapping[str, str] | None = None,
    ) -> None:
        if not PROVIDER_ID_RE.match(provider_id):
            raise ValueError(f"provider id {provider_id!r} must match {PROVIDER_ID_RE.pattern}")
        if not SEMVER_RE.match(version):
            raise ValueError(f"provider version {version!r} is not a semantic version such as 1.0.0")
        if not TENANT_ID_RE.match(tenant_id):
            raise ValueError(f"tenant id {tenant_id!r} must match {TENANT_ID_RE.pattern}")
        if not MIN_LEASE_TTL_S <= lease_ttl_s <= MAX_LEASE_TTL_S:
            raise ValueError(f"lease_ttl_s must be between 1 and 86400 seconds, not {lease_ttl_s}")
        if grpc_port is None and http_port is None:
            raise ValueError("serve at least one transport: set grpc_port or http_port")
        self.provider_id = provider_id
        self.version = version
        self.tenant_id = tenant_id
        self.registry = registry
        self.host = host
        self.advertise_host = advertise_host or host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.region = region
        self.lease_ttl_s = lease_ttl_s
        self.display_name = display_name
        self.description = description
        self.labels = dict(labels or {})
        self.endpoint_metadata = dict(endpoint_metadata or {})
        self.weight = weight
        self.cost = cost
        self.announce_timeout_s = announce_timeout_s
        self.stop_grace_s = stop_grace_s
        self.withdraw_timeout_s = withdraw_timeout_s
        self.http_path = "/" + http_path.strip("/")
        self._registry_credentials = registry_credentials
        self._registry_metadata = dict(registry_metadata or {})
        self.dispatcher = Dispatcher(provider_id)
        self._grpc: GrpcServer | None = None
        self._http: HttpServer | None = None
        self._registration: Registration | None = None
        self._endpoints: list[endpoint_pb2.Endpoint] = []
        self._stopped: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None

    # Declaring capabilities.

    def unary(
        self,
        capability_id: str,
        *,
        version: str | None = None,
        scope: str = "",
        idempotent: bool = False,
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        description: str = "",
        display_name: str = "",
        cost: float = 0.0,
        labels: Mapping[str, str] | None = None,
        tenant_scopes: Sequence[str] = (),
        routing: capability_pb2.RoutingPolicy | None = None,
    ) -> Callable[[UnaryT], UnaryT]:
        """Declares a unary capability served by the decorated `async def handler(args, call)`.

        The handler gets the arguments as a dict and a `CallInfo`, and returns a JSON-like result.

        Args:
            capability_id: Dotted identifier, such as `crm.lead.create`.
            version: Semantic version; defaults to the provider's version.
            scope: Scope a caller must hold (`security.scope`), or empty for any caller.
            idempotent: Whether calling it twice with the same arguments is safe (the router retries
                only idempotent calls or calls with an idempotency key).
            input_schema: JSON Schema of the arguments.
            output_schema: JSON Schema of the result.
            description: What it does.
            display_name: Human-readable name.
            cost: Relative cost per call.
            labels: Free-form labels.
            tenant_scopes: Tenants allowed to call it besides the owner (`*` for every tenant).
            routing: The router's policy for it (`RoutingPolicy`: weights, margin, panic threshold,
                attempts, transport order), or None for the defaults.

        Returns:
            A decorator that registers the handler and returns it unchanged.
        """

        def register(handler: UnaryT) -> UnaryT:
            if not _is_coroutine_function(handler):
                raise TypeError(f"the handler of {capability_id} must be an `async def` function")
            self._add(
                handler,
                capability_id=capability_id,
                version=version,
                streaming=False,
                scope=scope,
                idempotent=idempotent,
                input_schema=input_schema,
                output_schema=output_schema,
                description=description,
                display_name=display_name,
                cost=cost,
                labels=labels,
                tenant_scopes=tenant_scopes,
                routing=routing,
            )
            return handler

        return register

    def streaming(
        self,
        capability_id: str,
        *,
        version: str | None = None,
        scope: str = "",
        idempotent: bool = False,
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        description: str = "",
        display_name: str = "",
        cost: float = 0.0,
        labels: Mapping[str, str] | None = None,
        tenant_scopes: Sequence[str] = (),
        routing: capability_pb2.RoutingPolicy | None = None,
    ) -> Callable[[StreamT], StreamT]:
        """Declares a streaming capability served by the decorated async generator `handler(args, call)`.

        Each yielded item becomes one chunk: a `str` is sent as text, `bytes` as raw, anything else
        (JSON-like) as data.

        Args:
            capability_id: Dotted identifier, such as `text.generate`.
            version: Semantic version; defaults to the provider's version.
            scope: Scope a caller must hold (`security.scope`), or empty for any caller.
            idempotent: Whether calling it twice with the same arguments is safe.
            input_schema: JSON Schema of the arguments.
            output_schema: JSON Schema of one data chunk.
            description: What it does.
            display_name: Human-readable name.
            cost: Relative cost per call.
            labels: Free-form labels.
            tenant_scopes: Tenants allowed to call it besides the owner (`*` for every tenant).
            routing: The router's policy for it (`RoutingPolicy`: weights, margin, panic threshold,
                attempts, transport order), or None for the defaults.

        Returns:
            A decorator that registers the handler and returns it unchanged.
        """

        def register(handler: StreamT) -> StreamT:
            if not _is_async_generator_function(handler):
                raise TypeError(f"the handler of {capability_id} must be an async generator function")
            self._add(
                handler,
                capability_id=capability_id,
                version=version,
                streaming=True,
                scope=scope,
                idempotent=idempotent,
                input_schema=input_schema,
                output_schema=output_schema,
                description=description,
                display_name=display_name,
                cost=cost,
                labels=labels,
                tenant_scopes=tenant_scopes,
                routing=routing,
            )
            return handler

        return register

    def _add(
        self,
        handler: UnaryHandler | StreamHandler,
        *,
        capability_id: str,
        version: str | None,
        streaming: bool,
        scope: str,
        idempotent: bool,
        input_schema: Mapping[str, Any] | None,
        output_schema: Mapping[str, Any] | None,
        description: str,
        display_name: str,
        cost: float,
        labels: Mapping[str, str] | None,
        tenant_scopes: Sequence[str],
        routing: capability_pb2.RoutingPolicy | None = None,
    ) -> None:
        if self._registration is not None:
            raise RuntimeError("declare capabilities before start(): they are announced once")
        if not CAPABILITY_ID_RE.match(capability_id):
            raise ValueError(f"capability id {capability_id!r} must match {CAPABILITY_ID_RE.pattern}")
        version = version or self.version
        if not SEMVER_RE.match(version):
            raise ValueError(f"version {version!r} of {capability_id} is not a semantic version")
        self.dispatcher.add(
            CapabilitySpec(
                capability_id=capability_id,
                version=version,
                handler=handler,
                streaming=streaming,
                scope=scope,
                idempotent=idempotent,
                display_name=display_name,
                description=description,
                input_schema=input_schema,
                output_schema=output_schema,
                cost=cost,
                labels=dict(labels or {}),
                tenant_scopes=tuple(tenant_scopes),
                routing=routing,
            )
        )

    # Where it is served.

    @property
    def grpc_address(self) -> str | None:
        """`host:port` of the gRPC endpoint once started, or None."""
        if self._grpc is None:
            return None
        return _host_port(self.advertise_host, self._grpc.port)

    @property
    def http_url(self) -> str | None:
        """URL of the HTTP invoke route (`http://host:port/invoke`) once started, or None."""
        if self._http is None:
            return None
        return f"http://{_host_port(self.advertise_host, self._http.port)}{self.http_path}"

    @property
    def endpoints(self) -> list[endpoint_pb2.Endpoint]:
        """The endpoints announced to the registry (copies), empty before `start()`."""
        out = []
        for endpoint in self._endpoints:
            copy = endpoint_pb2.Endpoint()
            copy.CopyFrom(endpoint)
            out.append(copy)
        return out

    @property
    def running(self) -> bool:
        """Whether the provider has started and not stopped."""
        return self._registration is not None

    def announce_request(self) -> rs.AnnounceProviderRequest:
        """The announce the provider makes: every capability and one endpoint per served transport."""
        capability_ids = sorted({spec.capability_id for spec in self.dispatcher.specs})
        ttl = duration_pb2.Duration()
        ttl.FromNanoseconds(int(self.lease_ttl_s * 1e9))
        return rs.AnnounceProviderRequest(
            provider=provider_pb2.Provider(
                provider_id=self.provider_id,
                version=self.version,
                display_name=self.display_name,
                description=self.description,
                labels=self.labels,
            ),
            capabilities=[spec.to_proto() for spec in self.dispatcher.specs],
            endpoints=[
                endpoint_pb2.Endpoint(
                    transport=transport,
                    uri=uri,
                    region=self.region,
                    weight=self.weight,
                    cost=self.cost,
                    capability_ids=capability_ids,
                    metadata=self.endpoint_metadata,
                )
                for transport, uri in self._served_uris()
            ],
            lease_ttl=ttl,
        )

    def _served_uris(self) -> list[tuple[common_pb2.Transport, str]]:
        uris: list[tuple[common_pb2.Transport, str]] = []
        if self.grpc_address is not None:
            uris.append((common_pb2.TRANSPORT_GRPC, f"grpc://{self.grpc_address}"))
        if self.http_url is not None:
            uris.append((common_pb2.TRANSPORT_HTTP, self.http_url))
        return uris

    # Lifecycle.

    async def start(self) -> None:
        """Serves the transports, announces (retrying for `announce_timeout_s`) and starts renewing.

        Raises:
            RuntimeError: The provider is already running.
            AnnounceError: The registry refused the announce or did not accept it in time; the
                servers are stopped again.
            OSError: A port could not be bound.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._registration is not None:
                raise RuntimeError(f"provider {self.provider_id} is already running")
            self._stopped = asyncio.Event()
            try:
                if self.grpc_port is not None:
                    self._grpc = GrpcServer(self.dispatcher)
                    await self._grpc.start(self.host, self.grpc_port)
                if self.http_port is not None:
                    self._http = HttpServer(self.dispatcher, self.http_path)
                    await self._http.start(self.host, self.http_port, self.stop_grace_s)
                request = self.announce_request()
                self._registration = Registration(
                    self.registry,
                    self.tenant_id,
                    request,
                    credentials=self._registry_credentials,
                    metadata=self._registry_metadata,
                )
                await self._registration.announce(self.announce_timeout_s)
            except BaseException:
                await self._shutdown(withdraw=False)
                raise
            self._endpoints = list(request.endpoints)
            self._registration.start_renewal()
            log.info(
                "provider %s serving %s",
                self.provider_id,
                ", ".join(uri for _, uri in self._served_uris()),
                extra={"provider_id": self.provider_id, "tenant_id": self.tenant_id},
            )

    async def stop(self, withdraw: bool = True) -> None:
        """Stops: health NOT_SERVING, withdraw (best effort), then the servers after running calls.

        Args:
            withdraw: Whether to withdraw the provider from the registry; without it the registry keeps
                the announce until the lease runs out.
        """
        if self._lock is None:
            return
        async with self._lock:
            if self._registration is None:
                return
            await self._shutdown(withdraw=withdraw)

    async def _shutdown(self, *, withdraw: bool) -> None:
        registration, self._registration = self._registration, None
        try:
            if self._grpc is not None:
                await self._grpc.enter_graceful_shutdown()
            if self._http is not None:
                self._http.enter_graceful_shutdown()
            if registration is not None:
                await registration.stop_renewal()
                if withdraw:
                    await registration.withdraw(self.withdraw_timeout_s)
            if self._grpc is not None:
                await self._grpc.stop(self.stop_grace_s)
            if self._http is not None:
                await self._http.stop()
        finally:
            self._grpc = None
            self._http = None
            self._endpoints = []
            if registration is not None:
                await registration.close()
            if self._stopped is not None:
                self._stopped.set()

    async def __aenter__(self) -> Provider:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(withdraw=True)

    async def serve_forever(self, on_ready: Callable[[Provider], object] | None = None) -> None:
        """Starts, calls `on_ready(self)`, serves until SIGTERM or SIGINT (or `stop()`), then stops.

        The stop withdraws the provider. Signal handlers are installed only while serving, and only
        where the event loop supports them.

        Args:
            on_ready: Called once the provider is announced, for example to print its address.
        """
        loop = asyncio.get_running_loop()
        await self.start()
        stopped = self._stopped
        assert stopped is not None
        signal_seen = asyncio.Event()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, signal_seen.set)
                installed.append(sig)
        try:
            if on_ready is not None:
                on_ready(self)
            waiters = [asyncio.create_task(signal_seen.wait()), asyncio.create_task(stopped.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop(withdraw=True)

    def run(self, on_ready: Callable[[Provider], object] | None = None) -> None:
        """Blocking helper for scripts: `asyncio.run(self.serve_forever(on_ready))`.

        SIGTERM and SIGINT stop the provider gracefully and withdraw it.
        """
        asyncio.run(self.serve_forever(on_ready))
