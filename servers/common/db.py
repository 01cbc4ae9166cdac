"""Database engine and migrations: SQLite (embedded default) or PostgreSQL through psycopg 3, async."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from servers.common.settings import normalize_database_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_engine(url: str) -> AsyncEngine:
    """Creates the async engine for `url` (SQLite files get WAL, foreign keys and a busy timeout)."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


# Key of the PostgreSQL advisory lock held while migrating, so replicas starting together on an empty
# database migrate one after the other instead of racing to create the same tables.
MIGRATION_LOCK_KEY = 0x706F77657278  # "powerx"


async def migrate(engine: AsyncEngine) -> None:
    """Applies every pending Alembic migration (idempotent; run on every start, by every process)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Transaction-scoped: released when this transaction ends.
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        await conn.run_sync(lambda sync_conn: command.upgrade(_alembic_config(sync_conn), "head"))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
