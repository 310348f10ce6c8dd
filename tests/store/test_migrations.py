"""Migrations: empty database to head, idempotent re-runs, schema equals the code's tables,
and refusal to run against a schema migrated by a newer bridge."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from bridge.store import migrate
from bridge.store.base import SchemaTooNew, StoreError
from bridge.store.sql import SqlStore
from bridge.store.tables import metadata
from bridge.store.urls import create_store_engine, parse_store_url
from tests.store.conftest import MakeStore, Target


async def test_open_migrates_empty_database_to_head(make_store: MakeStore, target: Target) -> None:
    """Opening a store on an empty database creates every table and stamps the head."""
    store = await make_store()
    assert store.revision == migrate.head_revision() == "0001"
    assert await migrate.current_revision(target.url, target.schema) == "0001"
    tables = {"links", "inbox", "outbox", "echo_records", "alembic_version"}
    if target.backend == "sqlite":
        rows = await target.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await target.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = :s", s=target.schema
        )
    assert tables <= {r[0] for r in rows}


async def test_upgrade_is_idempotent(make_store: MakeStore, target: Target) -> None:
    """`bridge db upgrade` and re-opening on an up-to-date database change nothing."""
    assert await migrate.upgrade(target.url, target.schema) == "0001"
    assert await migrate.upgrade(target.url, target.schema) == "0001"
    first = await make_store()
    second = await make_store()
    assert first.revision == second.revision == "0001"
    assert await target.execute("SELECT version_num FROM alembic_version") == [("0001",)]


async def test_migrated_schema_matches_table_definitions(
    make_store: MakeStore, target: Target
) -> None:
    """What the migrations build is exactly what `bridge.store.tables` declares."""
    await make_store()
    engine = create_store_engine(parse_store_url(target.url), schema=target.schema, pool_size=1)

    def diff(conn: Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_schema_newer_than_code_is_refused(make_store: MakeStore, target: Target) -> None:
    """A database stamped with an unknown (newer) revision makes open() raise SchemaTooNew
    naming both revisions, and the stamp is left alone."""
    store = await make_store()
    await store.close()
    await target.execute("UPDATE alembic_version SET version_num = '0099_future'")
    with pytest.raises(SchemaTooNew) as info:
        await make_store()
    assert "'0099_future'" in str(info.value)
    assert "'0001'" in str(info.value)
    with pytest.raises(SchemaTooNew):
        await migrate.upgrade(target.url, target.schema)
    assert await target.execute("SELECT version_num FROM alembic_version") == [("0099_future",)]


async def test_unopened_store_is_a_clear_error(target: Target) -> None:
    """Using a store that was never opened is a clear StoreError, not an AttributeError."""
    store = SqlStore(target.url, schema=target.schema)
    with pytest.raises(StoreError, match="is not open"):
        await store.ping()
