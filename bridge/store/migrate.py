"""Alembic, driven from code: upgrade to head, read the current revision, refuse newer schemas.

The migration scripts ship inside the package (`bridge/store/migrations`). The store's
`open()` upgrades automatically; `bridge db upgrade` calls `upgrade(url)`. On PostgreSQL the
upgrade runs under a session advisory lock so replicas starting together do not race; on
SQLite the migration transaction starts with ``BEGIN IMMEDIATE``, which serialises too.
A database stamped with a revision this code does not know was migrated by a newer bridge:
running against it could corrupt data, so we refuse with `SchemaTooNew`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.store.base import SchemaTooNew, StoreError
from bridge.store.urls import (
    StoreUrl,
    check_schema,
    create_store_engine,
    is_store_failure,
    lock_keys,
    parse_store_url,
    translate_error,
)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise StoreError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _read_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade_sync(connection: Connection, config: Config) -> str:
    script = ScriptDirectory.from_config(config)
    current = _read_revision(connection)
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(
            f"the database schema is at revision {current!r}, which this bridge does not "
            f"know (its newest is {script.get_current_head()!r}): it was migrated by a newer "
            "bridge; run that version or restore a matching backup"
        )
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    revision = _read_revision(connection)
    assert revision is not None  # upgrade to head always stamps
    return revision


async def _pg_lock(conn: AsyncConnection, schema: str | None, take: bool) -> None:
    key1, key2 = lock_keys(schema, "migration")
    fn = "pg_advisory_lock" if take else "pg_advisory_unlock"
    await conn.execute(text(f"SELECT {fn}(:k1, :k2)"), {"k1": key1, "k2": key2})
    await conn.commit()


async def upgrade_engine(engine: AsyncEngine, parsed: StoreUrl, schema: str | None) -> str:
    """Upgrade the database behind `engine` to head (creating `schema` if missing).

    Raises `SchemaTooNew`, or the driver's own exceptions (callers word them with
    `bridge.store.urls.translate_error`).
    """
    config = alembic_config()
    async with engine.connect() as conn:
        if parsed.backend == "sqlite":
            conn = await conn.execution_options(bridge_write=True)
            revision = await conn.run_sync(_upgrade_sync, config)
            await conn.commit()
            return revision
        await _pg_lock(conn, schema, take=True)
        try:
            if schema is not None:
                # Inside the lock: concurrent CREATE SCHEMA IF NOT EXISTS can still collide.
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                await conn.commit()
            revision = await conn.run_sync(_upgrade_sync, config)
            await conn.commit()
        finally:
            if conn.in_transaction():
                await conn.rollback()
            try:
                await _pg_lock(conn, schema, take=False)
            except Exception:
                # Never hand a connection still holding the lock back to the pool: a dead
                # session releases it, so drop this one instead.
                await conn.invalidate()
        return revision


async def read_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is stamped with (None for an empty database)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_read_revision)


def _prepare(url: str, schema: str | None) -> StoreUrl:
    parsed = parse_store_url(url)
    check_schema(schema)
    if parsed.sqlite_path is not None:
        try:
            parsed.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"SQLite store {parsed.display}: cannot create directory "
                f"{parsed.sqlite_path.parent}: {exc.strerror or exc}"
            ) from exc
    return parsed


async def upgrade(url: str, schema: str | None = None) -> str:
    """Upgrade the store at `url` to head and return the resulting revision.

    This is `bridge db upgrade`. Errors come as `StoreError` / `StoreUnavailable` /
    `SchemaTooNew` with a message fit for the terminal.
    """
    parsed = _prepare(url, schema)
    engine = create_store_engine(parsed, schema=schema, pool_size=1)
    try:
        return await upgrade_engine(engine, parsed, schema)
    except Exception as exc:
        if is_store_failure(exc):
            raise translate_error(parsed, exc, "migration") from exc
        raise
    finally:
        await engine.dispose()


async def current_revision(url: str, schema: str | None = None) -> str | None:
    """The revision the store at `url` is stamped with, without changing anything."""
    parsed = _prepare(url, schema)
    engine = create_store_engine(parsed, schema=schema, pool_size=1)
    try:
        return await read_revision(engine)
    except Exception as exc:
        if is_store_failure(exc):
            raise translate_error(parsed, exc, "reading the schema revision") from exc
        raise
    finally:
        await engine.dispose()
