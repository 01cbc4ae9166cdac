"""Keeping a provider in the registry: announce (with retries), lease renewal, re-announce, withdraw."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from powerx.registry.v1 import registry_service_pb2 as rs
from powerx.registry.v1 import registry_service_pb2_grpc as rs_grpc
from sdk.errors import AnnounceError

log = logging.getLogger("powerx.sdk.lease")

TENANT_KEY = "x-tenant-id"
# Failures that say nothing about the announce itself: the registry may answer a later attempt.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
MAX_CALL_TIMEOUT_S = 5.0


def error_reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed registry call, or empty when it carries none."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # a status whose code or message disagrees with the call's
        return ""
    if status is None:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def registry_forgot(err: grpc.aio.AioRpcError) -> bool:
    """Whether a renewal failed because the registry no longer holds the provider's announce."""
    code = err.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return True
    return bool(code == grpc.StatusCode.FAILED_PRECONDITION and error_reason(err) == "PROVIDER_WITHDRAWN")


def backoff_s(failures: int, cap: float = MAX_BACKOFF_S) -> float:
    """Exponential backoff with jitter after `failures` consecutive failures (1, 2, ...)."""
    base: float = min(cap, FIRST_BACKOFF_S * 2 ** min(failures - 1, 16))
    return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography


class Registration:
    """One provider's presence in the registry of one mesh.

    Args:
        target: The mesh's gRPC address, `host:port`.
        tenant_id: Tenant that owns the provider; sent as `x-tenant-id`.
        request: The announce to make and repeat.
        credentials: Channel credentials, or None for a plaintext channel.
        metadata: Extra metadata for every registry call (for example an authorization header).
    """

    def __init__(
        self,
        target: str,
        tenant_id: str,
        request: rs.AnnounceProviderRequest,
        *,
        credentials: Any = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.request = request
        self.provider_id = request.provider.provider_id
        self.lease_ttl_s = request.lease_ttl.ToTimedelta().total_seconds()
        self._metadata = ((TENANT_KEY, tenant_id), *sorted((metadata or {}).items()))
        if credentials is None:
            self._channel: Any = grpc.aio.insecure_channel(target)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials)
        self._stub: Any = rs_grpc.RegistryServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._task: asyncio.Task[None] | None = None
        self.announced = False
        self.announce_count = 0

    async def announce_once(self, timeout_s: float) -> rs.AnnounceProviderResponse:
        """Sends the announce once.

        Raises:
            grpc.aio.AioRpcError: The registry refused it or could not be reached.
        """
        response: rs.AnnounceProviderResponse = await self._stub.AnnounceProvider(
            self.request, metadata=self._metadata, timeout=timeout_s
        )
        self.announced = True
        self.announce_count += 1
        return response

    async def announce(self, timeout_s: float) -> rs.AnnounceProviderResponse:
        """Announces, retrying transient failures with backoff for up to `timeout_s` seconds.

        Raises:
            AnnounceError: The registry refused the announce, or did not accept it in time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        failures = 0
        while True:
            left = deadline - loop.time()
            try:
                return await self.announce_once(max(0.05, min(MAX_CALL_TIMEOUT_S, left)))
            except grpc.aio.AioRpcError as err:
                failures += 1
                code = err.code()
                if code not in TRANSIENT_CODES:
                    raise AnnounceError(
                        f"the registry refused provider {self.provider_id}: {code.name} {err.details()}", code
                    ) from None
                pause = min(backoff_s(failures), deadline - loop.time())
                if pause <= 0:
                    raise AnnounceError(
                        f"could not announce provider {self.provider_id} within {timeout_s:g} s "
                        f"({failures} attempts, last: {code.name} {err.details()})",
                        code,
                    ) from None
                log.warning(
                    "announce of %s failed (%s), retrying in %.2f s",
                    self.provider_id,
                    code.name,
                    pause,
                    extra={"provider_id": self.provider_id},
                )
                await asyncio.sleep(pause)

    async def renew_once(self, timeout_s: float) -> rs.RenewProviderLeaseResponse:
        """Renews the lease once, asking for the announced lease again.

        Raises:
            grpc.aio.AioRpcError: The registry refused it or could not be reached.
        """
        request = rs.RenewProviderLeaseRequest(provider_id=self.provider_id, lease_ttl=self.request.lease_ttl)
        response: rs.RenewProviderLeaseResponse = await self._stub.RenewProviderLease(
            request, metadata=self._metadata, timeout=timeout_s
        )
        return response

    def start_renewal(self) -> None:
        """Starts renewing the lease every third of its TTL, in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_lease(), name=f"lease:{self.provider_id}")

    async def _keep_lease(self) -> None:
        """Renews forever; re-announces when the registry forgot the provider or was unreachable.

        A registry that was unreachable may have restarted on an empty database, so the first call
        after an outage is an announce (an unchanged announce is a no-op for the registry).
        """
        interval = self.lease_ttl_s / 3
        call_timeout = max(0.2, min(MAX_CALL_TIMEOUT_S, interval))
        must_announce = False
        failures = 0
        delay = interval
        while True:
            await asyncio.sleep(delay)
            delay = interval
            try:
                if must_announce:
                    await self.announce_once(call_timeout)
                    log.info(
                        "re-announced provider %s", self.provider_id, extra={"provider_id": self.provider_id}
                    )
                    must_announce = False
                else:
                    await self.renew_once(call_timeout)
                failures = 0
            except grpc.aio.AioRpcError as err:
                failures += 1
                if not must_announce and registry_forgot(err):
                    log.warning(
                        "the registry no longer holds provider %s (%s); announcing it again",
                        self.provider_id,
                        err.code().name,
                        extra={"provider_id": self.provider_id},
                    )
                    must_announce = True
                    delay = 0.0
                else:
                    if err.code() in TRANSIENT_CODES:
                        must_announce = True
                    delay = min(interval, backoff_s(failures))
                    log.warning(
                        "lease %s of provider %s failed: %s %s; retrying in %.2f s",
                        "announce" if must_announce else "renewal",
                        self.provider_id,
                        err.code().name,
                        err.details(),
                        delay,
                        extra={"provider_id": self.provider_id},
                    )
            except Exception:
                failures += 1
                delay = min(interval, backoff_s(failures))
                log.exception("lease renewal of provider %s failed", self.provider_id)

    async def withdraw(self, timeout_s: float, reason: str = "provider stopped") -> bool:
        """Withdraws the provider (best effort); returns whether the registry confirmed it."""
        if not self.announced:
            return False
        try:
            await self._stub.WithdrawProvider(
                rs.WithdrawProviderRequest(provider_id=self.provider_id, reason=reason),
                metadata=self._metadata,
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            log.warning(
                "withdraw of provider %s failed: %s %s",
                self.provider_id,
                err.code().name,
                err.details(),
                extra={"provider_id": self.provider_id},
            )
            return False
        self.announced = False
        return True

    async def stop_renewal(self) -> None:
        """Stops renewing, keeping the channel open (for the withdraw that follows)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def close(self) -> None:
        """Stops renewing and closes the channel."""
        await self.stop_renewal()
        await self._channel.close()
