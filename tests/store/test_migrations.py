"""Migrations: empty database to the newest version, idempotent re-runs, databases made by
the Alembic-based releases adopted, and refusal to run against a newer schema."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.store.base import SchemaTooNew, StoreError
from bridge.store.driver import Sql, Tx
from bridge.store.schema import HEAD, MIGRATIONS
from bridge.store.store import Store
from tests.store.conftest import MakeStore, Target
from tests.store.factories import link_count


async def _columns(target: Target) -> dict[str, set[str]]:
    """Every table's column names."""
    if target.backend == "sqlite":
        tables = await target.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {
            name: {
                row[0]
                for row in await target.execute("SELECT name FROM pragma_table_info(:t)", t=name)
            }
            for (name,) in tables
            if name != "sqlite_sequence"
        }
    rows = await target.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = :s",
        s=target.schema,
    )
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    return columns


async def _alembic_era_database(target: Target) -> None:
    """What the last Alembic-based release left: the version-1 tables, stamped '0001'."""
    driver = target.driver()
    await driver.open()

    async def build(tx: Tx) -> None:
        if target.schema is not None:
            await tx.execute(Sql(f'CREATE SCHEMA IF NOT EXISTS "{target.schema}"'))
        for statement in MIGRATIONS[0].statements:
            await tx.execute(Sql(statement))
        await tx.execute(Sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        await tx.execute(Sql("INSERT INTO alembic_version (version_num) VALUES ('0001')"))

    try:
        await driver.transact("building", build)
    finally:
        await driver.close()


async def test_open_migrates_empty_database_to_head(make_store: MakeStore, target: Target) -> None:
    """Opening a store on an empty database creates every table and records the newest
    version."""
    store = await make_store()
    assert store.version == HEAD == len(MIGRATIONS)
    columns = await _columns(target)
    assert {"links", "inbox", "outbox", "echo_records", "bridge_schema_version"} <= set(columns)
    assert {"object_key", "aspect", "cause_at", "result_to"} <= columns["outbox"]
    assert await target.execute("SELECT version FROM bridge_schema_version") == [(HEAD,)]


async def test_upgrade_is_idempotent(make_store: MakeStore, target: Target) -> None:
    """Opening again on an up-to-date database changes nothing."""
    first = await make_store()
    before = await _columns(target)
    second = await make_store()
    assert first.version == second.version == HEAD
    assert await _columns(target) == before
    assert await target.execute("SELECT version FROM bridge_schema_version") == [(HEAD,)]


async def test_alembic_era_database_is_adopted(make_store: MakeStore, target: Target) -> None:
    """A database the Alembic-based releases created (revision 0001) is taken as version 1,
    migrated to the newest, and ends with exactly the tables and columns of a fresh one;
    rows stored before the upgrade stay readable."""
    await _alembic_era_database(target)
    await target.execute(
        "INSERT INTO links (a_platform, a_kind, a_id, b_platform, b_kind, b_id, created_at,"
        " created_by) VALUES ('incident_io', 'escalation', 'e', 'rootly', 'incident', 'r',"
        " :at, 'rule:x')",
        at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    store = await make_store()
    assert store.version == HEAD
    adopted = await _columns(target)
    assert "alembic_version" not in adopted
    assert await link_count(store) == 1
    fresh = Target(target.backend, target.url.replace("bridge.db", "fresh.db"), None)
    if target.backend == "sqlite":
        fresh_store = Store(fresh.url)
        await fresh_store.open()
        await fresh_store.close()
        assert await _columns(fresh) == adopted


async def test_schema_newer_than_code_is_refused(make_store: MakeStore, target: Target) -> None:
    """A database at a version this code does not know makes open() raise SchemaTooNew
    naming both versions, and the database is left alone."""
    store = await make_store()
    await store.close()
    await target.execute("UPDATE bridge_schema_version SET version = :v", v=HEAD + 7)
    with pytest.raises(SchemaTooNew) as info:
        await make_store()
    assert f"version {HEAD + 7}" in str(info.value)
    assert f"newest is {HEAD}" in str(info.value)
    assert await target.execute("SELECT version FROM bridge_schema_version") == [(HEAD + 7,)]


async def test_unknown_alembic_revision_is_refused(make_store: MakeStore, target: Target) -> None:
    """An Alembic stamp other than the one release this code adopts is a newer schema."""
    await _alembic_era_database(target)
    await target.execute("UPDATE alembic_version SET version_num = '0099_future'")
    with pytest.raises(SchemaTooNew, match="'0099_future'"):
        await make_store()


async def test_unopened_store_is_a_clear_error(target: Target) -> None:
    """Using a store that was never opened is a clear StoreError, not an AttributeError."""
    store = Store(target.url, schema=target.schema)
    with pytest.raises(StoreError, match="is not open"):
        await store.ping()
