"""Connector storage, one SQLAlchemy Core implementation for SQLite and PostgreSQL.

Rows keep the columns that queries filter and order on, plus the resource's protobuf bytes (`spec`).
Every read of tenant data names the tenant; instances are keyed by (platform, instance id) because a
webhook URL carries no tenant, and the service checks the owner. Credentials are stored only sealed
(`crypto.Sealed`); their metadata (`CredentialInfo`, no secret) sits beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from powerx.connector.v1 import callback_pb2, connector_pb2, degrade_pb2, invocation_pb2
from servers.auth.store import audit_log_t
from servers.common.validate import Page

md = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")

instances_t = sa.Table(
    "connector_instances",
    md,
    sa.Column("platform", sa.String(16), primary_key=True),
    sa.Column("instance_id", sa.String(63), primary_key=True),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("enabled", sa.Boolean),
    sa.Column("deleted", sa.Boolean),
    sa.Column("config_version", sa.BigInteger),
    sa.Column("credential_version", sa.BigInteger),
    sa.Column("source", sa.String(1024)),
    sa.Column("digest", sa.String(64)),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
)
versions_t = sa.Table(
    "connector_config_versions",
    md,
    sa.Column("platform", sa.String(16), primary_key=True),
    sa.Column("instance_id", sa.String(63), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("credential_version", sa.BigInteger),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
)
credentials_t = sa.Table(
    "connector_credentials",
    md,
    sa.Column("platform", sa.String(16), primary_key=True),
    sa.Column("instance_id", sa.String(63), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("key_id", sa.String(64)),
    sa.Column("sealed", sa.LargeBinary),
    sa.Column("info", sa.LargeBinary),
    sa.Column("expire_ms", sa.BigInteger),
    sa.Column("destroyed", sa.Boolean),
    sa.Column("created_ms", sa.BigInteger),
)
invocations_t = sa.Table(
    "connector_invocations",
    md,
    sa.Column("invocation_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("platform", sa.String(16)),
    sa.Column("instance_id", sa.String(63)),
    sa.Column("state", sa.SmallInteger),
    sa.Column("mode", sa.SmallInteger),
    sa.Column("idempotency_key", sa.String(128)),
    sa.Column("request_hash", sa.String(64)),
    sa.Column("key_expire_ms", sa.BigInteger),
    sa.Column("next_poll_ms", sa.BigInteger),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
)
replay_t = sa.Table(
    "connector_replay_keys",
    md,
    sa.Column("replay_key", sa.String(512), primary_key=True),
    sa.Column("expire_ms", sa.BigInteger),
)
callbacks_t = sa.Table(
    "connector_callbacks",
    md,
    sa.Column("sequence", _ID, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("platform", sa.String(16)),
    sa.Column("instance_id", sa.String(63)),
    sa.Column("payload", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
)
outbox_t = sa.Table(
    "connector_outbox",
    md,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("kind", sa.String(32)),
    sa.Column("payload", sa.LargeBinary),
    sa.Column("state", sa.String(16)),
    sa.Column("attempts", sa.Integer),
    sa.Column("next_attempt_ms", sa.BigInteger),
    sa.Column("last_error", sa.String(1024)),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
)
degrade_t = sa.Table(
    "connector_degrade",
    md,
    sa.Column("tenant_id", sa.String(63), primary_key=True),
    sa.Column("platform", sa.String(16), primary_key=True),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("updated_ms", sa.BigInteger),
)
degrade_history_t = sa.Table(
    "connector_degrade_history",
    md,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("platform", sa.String(16)),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
)
human_tasks_t = sa.Table(
    "connector_human_tasks",
    md,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(63)),
    sa.Column("platform", sa.String(16)),
    sa.Column("invocation_id", sa.String(64)),
    sa.Column("state", sa.SmallInteger),
    sa.Column("assignee", sa.String(255)),
    sa.Column("spec", sa.LargeBinary),
    sa.Column("created_ms", sa.BigInteger),
    sa.Column("updated_ms", sa.BigInteger),
)
TERMINAL_STATES = frozenset(
    {
        invocation_pb2.INVOCATION_STATE_SUCCEEDED,
        invocation_pb2.INVOCATION_STATE_FAILED,
        invocation_pb2.INVOCATION_STATE_DEGRADED_LOCAL,
        invocation_pb2.INVOCATION_STATE_CANCELLED,
    }
)


@dataclass
class StoredInstance:
    """An instance row: the instance (no credential view, no input) and bookkeeping columns."""

    instance: connector_pb2.ConnectorInstance
    credential_version: int
    source: str  # `api`, or the file that declares it
    digest: str  # hash of the declared content (declared instances), to detect changes
    deleted: bool = False


@dataclass
class StoredCredential:
    """One sealed credential version with its metadata."""

    tenant_id: str
    platform: str
    instance_id: str
    version: int
    sealed: bytes
    key_id: str
    info: connector_pb2.CredentialInfo
    destroyed: bool = False


@dataclass
class StoredInvocation:
    """An invocation with the columns the service needs to dedup and poll."""

    invocation: invocation_pb2.Invocation
    request_hash: str
    key_expire_ms: int
    next_poll_ms: int = 0


@dataclass
class OutboxItem:
    """A callback whose processing is pending (or failed and waits for its next attempt)."""

    item_id: int
    tenant_id: str
    kind: str
    payload: bytes
    attempts: int


def _instance(row: sa.Row[tuple[object, ...]]) -> StoredInstance:
    inst = connector_pb2.ConnectorInstance.FromString(row.spec)
    return StoredInstance(inst, row.credential_version, row.source, row.digest, row.deleted)


def _credential(row: sa.Row[tuple[object, ...]]) -> StoredCredential:
    return StoredCredential(
        row.tenant_id,
        row.platform,
        row.instance_id,
        row.version,
        row.sealed,
        row.key_id,
        connector_pb2.CredentialInfo.FromString(row.info),
        row.destroyed,
    )


def _invocation(row: sa.Row[tuple[object, ...]]) -> StoredInvocation:
    return StoredInvocation(
        invocation_pb2.Invocation.FromString(row.spec), row.request_hash, row.key_expire_ms, row.next_poll_ms
    )


class ConnectorStore:
    """Reads and writes the connector tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # ---- instances, versions, credentials ------------------------------------------------------------

    async def instance(self, platform: str, instance_id: str) -> StoredInstance | None:
        """An instance by platform and id, whatever its tenant (the caller checks the owner)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(instances_t).where(
                        instances_t.c.platform == platform, instances_t.c.instance_id == instance_id
                    )
                )
            ).first()
        return _instance(row) if row else None

    async def instances(
        self, tenant_id: str, platform: str, after_id: str, limit: int
    ) -> list[StoredInstance]:
        """Live instances of a tenant and platform ordered by id, after `after_id`."""
        q = (
            sa.select(instances_t)
            .where(
                instances_t.c.tenant_id == tenant_id,
                instances_t.c.platform == platform,
                instances_t.c.instance_id > after_id,
                instances_t.c.deleted.is_(False),
            )
            .order_by(instances_t.c.instance_id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_instance(r) for r in (await conn.execute(q)).all()]

    async def declared_instances(self) -> list[StoredInstance]:
        """Live instances declared by configuration files (to reconcile them on reload)."""
        q = sa.select(instances_t).where(instances_t.c.source != "api", instances_t.c.deleted.is_(False))
        async with self.engine.connect() as conn:
            return [_instance(r) for r in (await conn.execute(q)).all()]

    async def save_instance(
        self,
        stored: StoredInstance,
        version: connector_pb2.ConfigVersion,
        now_ms: int,
        *,
        create: bool,
        expect_version: int,
        credential: StoredCredential | None = None,
    ) -> None:
        """Writes an instance, its new configuration version and maybe a new credential version.

        One transaction. `expect_version` guards against a concurrent change (Aborted-style conflict is
        raised as `ConcurrentChange`); creation of an existing id raises `IntegrityError`.
        """
        inst = stored.instance
        values = {
            "tenant_id": inst.tenant_id,
            "enabled": inst.enabled,
            "deleted": stored.deleted,
            "config_version": inst.config_version,
            "credential_version": stored.credential_version,
            "source": stored.source,
            "digest": stored.digest,
            "spec": inst.SerializeToString(deterministic=True),
            "updated_ms": now_ms,
        }
        async with self.engine.begin() as conn:
            if create:
                await conn.execute(
                    sa.insert(instances_t).values(
                        platform=inst.platform, instance_id=inst.instance_id, created_ms=now_ms, **values
                    )
                )
            else:
                done = await conn.execute(
                    sa.update(instances_t)
                    .where(
                        instances_t.c.platform == inst.platform,
                        instances_t.c.instance_id == inst.instance_id,
                        instances_t.c.config_version == expect_version,
                    )
                    .values(**values)
                )
                if done.rowcount != 1:
                    raise ConcurrentChange(inst.instance_id)
            await conn.execute(
                sa.insert(versions_t).values(
                    platform=inst.platform,
                    instance_id=inst.instance_id,
                    version=version.version,
                    tenant_id=inst.tenant_id,
                    credential_version=version.credential_version,
                    spec=version.SerializeToString(deterministic=True),
                    created_ms=now_ms,
                )
            )
            if credential is not None:
                await self._insert_credential(conn, credential, now_ms)

    async def purge_deleted(self, platform: str, instance_id: str) -> None:
        """Removes a deleted instance's row so its id can be used again (versions and invocations stay)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.delete(instances_t).where(
                    instances_t.c.platform == platform,
                    instances_t.c.instance_id == instance_id,
                    instances_t.c.deleted.is_(True),
                )
            )

    async def versions(
        self, tenant_id: str, platform: str, instance_id: str, page: Page
    ) -> list[ConfigVersionRow]:
        """Configuration versions of an instance, newest first, before the page's keyset."""
        q = sa.select(versions_t).where(
            versions_t.c.tenant_id == tenant_id,
            versions_t.c.platform == platform,
            versions_t.c.instance_id == instance_id,
        )
        if page.after:
            q = q.where(versions_t.c.version < int(page.after[0]))
        q = q.order_by(versions_t.c.version.desc()).limit(page.size + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            ConfigVersionRow(connector_pb2.ConfigVersion.FromString(r.spec), r.credential_version)
            for r in rows
        ]

    async def version(
        self, tenant_id: str, platform: str, instance_id: str, version: int
    ) -> ConfigVersionRow | None:
        """One configuration version."""
        q = sa.select(versions_t).where(
            versions_t.c.tenant_id == tenant_id,
            versions_t.c.platform == platform,
            versions_t.c.instance_id == instance_id,
            versions_t.c.version == version,
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return (
            ConfigVersionRow(connector_pb2.ConfigVersion.FromString(row.spec), row.credential_version)
            if row
            else None
        )

    async def _insert_credential(self, conn: AsyncConnection, cred: StoredCredential, now_ms: int) -> None:
        await conn.execute(
            sa.insert(credentials_t).values(
                platform=cred.platform,
                instance_id=cred.instance_id,
                version=cred.version,
                tenant_id=cred.tenant_id,
                key_id=cred.key_id,
                sealed=cred.sealed,
                info=cred.info.SerializeToString(deterministic=True),
                expire_ms=cred.info.expire_time.ToMilliseconds() if cred.info.HasField("expire_time") else 0,
                destroyed=cred.destroyed,
                created_ms=now_ms,
            )
        )

    async def credential(
        self, tenant_id: str, platform: str, instance_id: str, version: int
    ) -> StoredCredential | None:
        """One credential version of a tenant's instance."""
        q = sa.select(credentials_t).where(
            credentials_t.c.tenant_id == tenant_id,
            credentials_t.c.platform == platform,
            credentials_t.c.instance_id == instance_id,
            credentials_t.c.version == version,
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return _credential(row) if row else None

    async def update_credential(self, cred: StoredCredential) -> None:
        """Replaces a credential version's metadata (status) and, after a key rotation, its sealed form."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(credentials_t)
                .where(
                    credentials_t.c.tenant_id == cred.tenant_id,
                    credentials_t.c.platform == cred.platform,
                    credentials_t.c.instance_id == cred.instance_id,
                    credentials_t.c.version == cred.version,
                )
                .values(
                    key_id=cred.key_id,
                    sealed=cred.sealed,
                    info=cred.info.SerializeToString(deterministic=True),
                    destroyed=cred.destroyed,
                )
            )

    async def live_credentials(self) -> list[StoredCredential]:
        """Every credential version not destroyed (for refresh, expiry alerts and key rotation)."""
        q = sa.select(credentials_t).where(credentials_t.c.destroyed.is_(False))
        async with self.engine.connect() as conn:
            return [_credential(r) for r in (await conn.execute(q)).all()]

    async def destroy_credentials(
        self, tenant_id: str, platform: str, instance_id: str, keep: Sequence[int] = ()
    ) -> None:
        """Destroys an instance's sealed credentials except the versions in `keep` (metadata stays)."""
        q = sa.update(credentials_t).where(
            credentials_t.c.tenant_id == tenant_id,
            credentials_t.c.platform == platform,
            credentials_t.c.instance_id == instance_id,
        )
        if keep:
            q = q.where(credentials_t.c.version.not_in(list(keep)))
        async with self.engine.begin() as conn:
            await conn.execute(q.values(destroyed=True, sealed=b""))

    # ---- invocations -----------------------------------------------------------------------------------

    async def insert_invocation(self, stored: StoredInvocation, now_ms: int) -> StoredInvocation | None:
        """Inserts a new invocation, or returns the one holding its idempotency key.

        When the key is taken (and still valid) nothing is inserted. Concurrent duplicates meet the
        unique index.
        """
        inv = stored.invocation
        key = inv.idempotency_key
        for _ in range(3):
            if key:
                existing = await self.invocation_by_key(inv.tenant_id, inv.platform, key)
                if existing is not None:
                    if existing.key_expire_ms > now_ms:
                        return existing
                    await self._release_key(existing.invocation.invocation_id)
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(
                        sa.insert(invocations_t).values(**self._inv_values(stored, now_ms), created_ms=now_ms)
                    )
                return None
            except IntegrityError:
                if not key:
                    raise
        raise ConcurrentChange(key)

    def _inv_values(self, stored: StoredInvocation, now_ms: int) -> dict[str, object]:
        inv = stored.invocation
        return {
            "invocation_id": inv.invocation_id,
            "tenant_id": inv.tenant_id,
            "platform": inv.platform,
            "instance_id": inv.instance_id,
            "state": int(inv.state),
            "mode": int(inv.mode),
            "idempotency_key": inv.idempotency_key,
            "request_hash": stored.request_hash,
            "key_expire_ms": stored.key_expire_ms,
            "next_poll_ms": stored.next_poll_ms,
            "spec": inv.SerializeToString(deterministic=True),
            "updated_ms": now_ms,
        }

    async def _release_key(self, invocation_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(invocations_t)
                .where(invocations_t.c.invocation_id == invocation_id)
                .values(idempotency_key="")
            )

    async def invocation_by_key(self, tenant_id: str, platform: str, key: str) -> StoredInvocation | None:
        """The invocation a tenant made with an idempotency key."""
        q = sa.select(invocations_t).where(
            invocations_t.c.tenant_id == tenant_id,
            invocations_t.c.platform == platform,
            invocations_t.c.idempotency_key == key,
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return _invocation(row) if row else None

    async def invocation(self, invocation_id: str) -> StoredInvocation | None:
        """An invocation by id, whatever its tenant (the caller checks it)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(invocations_t).where(invocations_t.c.invocation_id == invocation_id)
                )
            ).first()
        return _invocation(row) if row else None

    async def update_invocation(
        self, stored: StoredInvocation, now_ms: int, *, only_if_unfinished: bool = True
    ) -> bool:
        """Writes an invocation's new state; False when nothing was written.

        With `only_if_unfinished` it changes nothing once the stored one is terminal, so a late
        callback or a second writer never overwrites a finished invocation.
        """
        q = sa.update(invocations_t).where(invocations_t.c.invocation_id == stored.invocation.invocation_id)
        if only_if_unfinished:
            q = q.where(invocations_t.c.state.not_in([int(s) for s in TERMINAL_STATES]))
        values = self._inv_values(stored, now_ms)
        del (
            values["invocation_id"],
            values["idempotency_key"],
            values["request_hash"],
            values["key_expire_ms"],
        )
        async with self.engine.begin() as conn:
            done = await conn.execute(q.values(**values))
        return bool(done.rowcount)

    async def list_invocations(
        self,
        tenant_id: str,
        platform: str,
        page: Page,
        *,
        state: int,
        instance_id: str,
        workflow_id: str,
        trace_id: str,
    ) -> list[invocation_pb2.Invocation]:
        """A tenant's invocations of a platform, newest first (workflow and trace filtered in Python)."""
        q = sa.select(invocations_t.c.spec, invocations_t.c.created_ms, invocations_t.c.invocation_id).where(
            invocations_t.c.tenant_id == tenant_id, invocations_t.c.platform == platform
        )
        if state:
            q = q.where(invocations_t.c.state == state)
        if instance_id:
            q = q.where(invocations_t.c.instance_id == instance_id)
        if page.after:
            created, inv_id = int(page.after[0]), str(page.after[1])
            q = q.where(
                sa.or_(
                    invocations_t.c.created_ms < created,
                    sa.and_(invocations_t.c.created_ms == created, invocations_t.c.invocation_id < inv_id),
                )
            )
        q = q.order_by(invocations_t.c.created_ms.desc(), invocations_t.c.invocation_id.desc())
        out: list[invocation_pb2.Invocation] = []
        batch, offset = max(page.size * 2, 100), 0
        async with self.engine.connect() as conn:
            while len(out) <= page.size:
                rows = (await conn.execute(q.limit(batch).offset(offset))).all()
                for r in rows:
                    inv = invocation_pb2.Invocation.FromString(r.spec)
                    if workflow_id and inv.workflow_id != workflow_id:
                        continue
                    if trace_id and inv.trace_id != trace_id:
                        continue
                    out.append(inv)
                if len(rows) < batch:
                    break
                offset += batch
        return out[: page.size + 1]

    async def unfinished_invocations(
        self, tenant_id: str, platform: str, instance_id: str
    ) -> list[StoredInvocation]:
        """An instance's invocations that have not finished."""
        q = sa.select(invocations_t).where(
            invocations_t.c.tenant_id == tenant_id,
            invocations_t.c.platform == platform,
            invocations_t.c.instance_id == instance_id,
            invocations_t.c.state.not_in([int(s) for s in TERMINAL_STATES]),
        )
        async with self.engine.connect() as conn:
            return [_invocation(r) for r in (await conn.execute(q)).all()]

    async def due_polls(self, now_ms: int, limit: int = 100) -> list[StoredInvocation]:
        """Running asynchronous invocations whose next poll is due."""
        q = (
            sa.select(invocations_t)
            .where(
                invocations_t.c.state == invocation_pb2.INVOCATION_STATE_RUNNING,
                invocations_t.c.next_poll_ms > 0,
                invocations_t.c.next_poll_ms <= now_ms,
            )
            .order_by(invocations_t.c.next_poll_ms)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_invocation(r) for r in (await conn.execute(q)).all()]

    async def claim_poll(self, invocation_id: str, seen_next_ms: int, next_ms: int) -> bool:
        """Moves an invocation's next poll forward if no other process did: the one that succeeds polls."""
        q = (
            sa.update(invocations_t)
            .where(
                invocations_t.c.invocation_id == invocation_id, invocations_t.c.next_poll_ms == seen_next_ms
            )
            .values(next_poll_ms=next_ms)
        )
        async with self.engine.begin() as conn:
            return bool((await conn.execute(q)).rowcount)

    # ---- webhook replay memory, callback events, outbox ----------------------------------------------

    async def first_use(self, key: str, ttl_s: float, now_ms: int) -> bool:
        """Remembers a replay key for `ttl_s`; False when it was remembered and has not expired.

        The primary key makes this atomic across mesh processes sharing the database.
        """
        expire = now_ms + int(ttl_s * 1000)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(sa.insert(replay_t).values(replay_key=key, expire_ms=expire))
            return True
        except IntegrityError:
            async with self.engine.begin() as conn:
                taken = await conn.execute(
                    sa.update(replay_t)
                    .where(replay_t.c.replay_key == key, replay_t.c.expire_ms <= now_ms)
                    .values(expire_ms=expire)
                )
            return bool(taken.rowcount)

    async def forget(self, key: str) -> None:
        """Drops a replay key (its webhook could not be recorded, so the platform's retry must pass)."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(replay_t).where(replay_t.c.replay_key == key))

    async def expire_replay_keys(self, now_ms: int) -> int:
        """Deletes expired replay keys."""
        async with self.engine.begin() as conn:
            return int(
                (await conn.execute(sa.delete(replay_t).where(replay_t.c.expire_ms <= now_ms))).rowcount
            )

    async def add_callback(self, event: callback_pb2.CallbackEvent, now_ms: int) -> int:
        """Stores a callback event and returns its sequence (set into the stored payload too)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.insert(callbacks_t).values(
                    tenant_id=event.tenant_id,
                    platform=event.platform,
                    instance_id=event.instance_id,
                    payload=b"",
                    created_ms=now_ms,
                )
            )
            seq = int(result.inserted_primary_key[0])  # type: ignore[index]
            event.sequence = seq
            await conn.execute(
                sa.update(callbacks_t)
                .where(callbacks_t.c.sequence == seq)
                .values(payload=event.SerializeToString(deterministic=True))
            )
        return seq

    async def callbacks_after(
        self, tenant_id: str, platform: str, instance_id: str, after: int, limit: int
    ) -> list[callback_pb2.CallbackEvent]:
        """A tenant's stored callback events after a sequence, oldest first."""
        q = sa.select(callbacks_t.c.payload).where(
            callbacks_t.c.tenant_id == tenant_id,
            callbacks_t.c.platform == platform,
            callbacks_t.c.sequence > after,
        )
        if instance_id:
            q = q.where(callbacks_t.c.instance_id == instance_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(callbacks_t.c.sequence).limit(limit))).all()
        return [callback_pb2.CallbackEvent.FromString(r.payload) for r in rows]

    async def add_outbox(
        self, tenant_id: str, kind: str, payload: bytes, now_ms: int, *, claimed_until_ms: int = 0
    ) -> int:
        """Queues a callback for processing (already claimed until `claimed_until_ms` when given)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.insert(outbox_t).values(
                    tenant_id=tenant_id,
                    kind=kind,
                    payload=payload,
                    state="pending",
                    attempts=1 if claimed_until_ms else 0,
                    next_attempt_ms=claimed_until_ms or now_ms,
                    last_error="",
                    created_ms=now_ms,
                    updated_ms=now_ms,
                )
            )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def claim_outbox(self, item_id: int, now_ms: int, lease_ms: int) -> OutboxItem | None:
        """Takes a pending item for `lease_ms` if it is due and nobody holds it; None otherwise."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(outbox_t).where(
                        outbox_t.c.id == item_id,
                        outbox_t.c.state == "pending",
                        outbox_t.c.next_attempt_ms <= now_ms,
                    )
                )
            ).first()
            if row is None:
                return None
            done = await conn.execute(
                sa.update(outbox_t)
                .where(outbox_t.c.id == item_id, outbox_t.c.next_attempt_ms == row.next_attempt_ms)
                .values(next_attempt_ms=now_ms + lease_ms, attempts=row.attempts + 1, updated_ms=now_ms)
            )
            if done.rowcount != 1:
                return None
        return OutboxItem(row.id, row.tenant_id, row.kind, row.payload, row.attempts + 1)

    async def due_outbox(self, now_ms: int, limit: int = 100) -> list[int]:
        """Ids of pending items whose next attempt is due."""
        q = (
            sa.select(outbox_t.c.id)
            .where(outbox_t.c.state == "pending", outbox_t.c.next_attempt_ms <= now_ms)
            .order_by(outbox_t.c.next_attempt_ms)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [int(r.id) for r in (await conn.execute(q)).all()]

    async def finish_outbox(
        self, item_id: int, now_ms: int, *, state: str, next_attempt_ms: int = 0, error: str = ""
    ) -> None:
        """Marks an item done or dead, or schedules its next attempt (state `pending`)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(outbox_t)
                .where(outbox_t.c.id == item_id)
                .values(
                    state=state, next_attempt_ms=next_attempt_ms, last_error=error[:1024], updated_ms=now_ms
                )
            )

    async def outbox_counts(self) -> dict[str, int]:
        """Items by state."""
        q = sa.select(outbox_t.c.state, sa.func.count()).group_by(outbox_t.c.state)
        async with self.engine.connect() as conn:
            return {str(s): int(n) for s, n in (await conn.execute(q)).all()}

    # ---- degrade switches, human tasks ------------------------------------------------------------------

    async def degrade(self, tenant_id: str, platform: str) -> degrade_pb2.DegradeState | None:
        """The stored degrade switch of a tenant's platform."""
        q = sa.select(degrade_t.c.spec).where(
            degrade_t.c.tenant_id == tenant_id, degrade_t.c.platform == platform
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return degrade_pb2.DegradeState.FromString(row.spec) if row else None

    async def all_degrades(self) -> list[degrade_pb2.DegradeState]:
        """Every stored switch (to expire timed modes)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(degrade_t.c.spec))).all()
        return [degrade_pb2.DegradeState.FromString(r.spec) for r in rows]

    async def put_degrade(self, state: degrade_pb2.DegradeState, now_ms: int) -> None:
        """Stores a switch and appends it to the history."""
        spec = state.SerializeToString(deterministic=True)
        async with self.engine.begin() as conn:
            done = await conn.execute(
                sa.update(degrade_t)
                .where(degrade_t.c.tenant_id == state.tenant_id, degrade_t.c.platform == state.platform)
                .values(spec=spec, updated_ms=now_ms)
            )
            if done.rowcount == 0:
                await conn.execute(
                    sa.insert(degrade_t).values(
                        tenant_id=state.tenant_id, platform=state.platform, spec=spec, updated_ms=now_ms
                    )
                )
            await conn.execute(
                sa.insert(degrade_history_t).values(
                    tenant_id=state.tenant_id, platform=state.platform, spec=spec, created_ms=now_ms
                )
            )

    async def degrade_history(
        self, tenant_id: str, platform: str, page: Page, since_ms: int
    ) -> list[tuple[int, degrade_pb2.DegradeState]]:
        """A tenant's switch changes, newest first, with their row ids (the page keyset)."""
        q = sa.select(degrade_history_t.c.id, degrade_history_t.c.spec).where(
            degrade_history_t.c.tenant_id == tenant_id,
            degrade_history_t.c.platform == platform,
            degrade_history_t.c.created_ms >= since_ms,
        )
        if page.after:
            q = q.where(degrade_history_t.c.id < int(page.after[0]))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(degrade_history_t.c.id.desc()).limit(page.size + 1))).all()
        return [(int(r.id), degrade_pb2.DegradeState.FromString(r.spec)) for r in rows]

    async def put_human_task(
        self, task: degrade_pb2.HumanTask, now_ms: int, *, create: bool = False, expect_state: int = 0
    ) -> bool:
        """Inserts a task, or updates it when it is still in `expect_state` (False when it was not)."""
        values = {
            "state": int(task.state),
            "assignee": task.assignee,
            "spec": task.SerializeToString(deterministic=True),
            "updated_ms": now_ms,
        }
        async with self.engine.begin() as conn:
            if create:
                await conn.execute(
                    sa.insert(human_tasks_t).values(
                        task_id=task.task_id,
                        tenant_id=task.tenant_id,
                        platform=task.platform,
                        invocation_id=task.invocation_id,
                        created_ms=now_ms,
                        **values,
                    )
                )
                return True
            q = sa.update(human_tasks_t).where(human_tasks_t.c.task_id == task.task_id)
            if expect_state:
                q = q.where(human_tasks_t.c.state == expect_state)
            return bool((await conn.execute(q.values(**values))).rowcount)

    async def human_task(self, tenant_id: str, task_id: str) -> degrade_pb2.HumanTask | None:
        """A tenant's human task."""
        q = sa.select(human_tasks_t.c.spec).where(
            human_tasks_t.c.tenant_id == tenant_id, human_tasks_t.c.task_id == task_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return degrade_pb2.HumanTask.FromString(row.spec) if row else None

    async def human_tasks(
        self, tenant_id: str, page: Page, *, state: int, platform: str, assignee: str
    ) -> list[degrade_pb2.HumanTask]:
        """A tenant's human tasks, oldest first."""
        q = sa.select(human_tasks_t.c.spec).where(human_tasks_t.c.tenant_id == tenant_id)
        if state:
            q = q.where(human_tasks_t.c.state == state)
        if platform:
            q = q.where(human_tasks_t.c.platform == platform)
        if assignee:
            q = q.where(human_tasks_t.c.assignee == assignee)
        if page.after:
            created, task_id = int(page.after[0]), str(page.after[1])
            q = q.where(
                sa.or_(
                    human_tasks_t.c.created_ms > created,
                    sa.and_(human_tasks_t.c.created_ms == created, human_tasks_t.c.task_id > task_id),
                )
            )
        q = q.order_by(human_tasks_t.c.created_ms, human_tasks_t.c.task_id).limit(page.size + 1)
        async with self.engine.connect() as conn:
            return [degrade_pb2.HumanTask.FromString(r.spec) for r in (await conn.execute(q)).all()]

    async def human_task_for(self, invocation_id: str) -> degrade_pb2.HumanTask | None:
        """The human task of an invocation."""
        q = sa.select(human_tasks_t.c.spec).where(human_tasks_t.c.invocation_id == invocation_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return degrade_pb2.HumanTask.FromString(row.spec) if row else None

    # ---- audit ---------------------------------------------------------------------------------------

    async def audit_rows(self, tenant_id: str, limit: int = 1000) -> list[dict[str, object]]:
        """A tenant's newest connector events of the audit log (for tests and operators)."""
        q = (
            sa.select(audit_log_t)
            .where(audit_log_t.c.tenant_id == tenant_id, audit_log_t.c.action.like("connector.%"))
            .order_by(audit_log_t.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(q)).all()]


@dataclass
class ConfigVersionRow:
    """A configuration version and the credential version it referred to."""

    version: connector_pb2.ConfigVersion
    credential_version: int


class ConcurrentChange(Exception):
    """Another writer changed the row first; the caller retries or reports ABORTED."""
