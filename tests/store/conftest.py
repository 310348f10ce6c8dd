"""Fixtures for the store tests: every store test runs on SQLite and on PostgreSQL.

`target` names a fresh database (an SQLite file in `tmp_path`, or a fresh PostgreSQL
schema); `make_store` opens more `Store`s on it (separate pools, like replicas) and
closes them all afterwards; `store` is the usual single one. All of them share a
`FakeClock`, so leases and expiry are tested by moving time, not by sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import structlog

from bridge.store.driver import Driver, Sql, Tx
from bridge.store.postgres import PostgresDriver
from bridge.store.sqlite import SqliteDriver
from bridge.store.store import Store
from bridge.store.urls import parse_store_url
from tests.pg import fresh_schema, pg_url

MakeStore = Callable[..., Awaitable[Store]]


class FakeClock:
    """A UTC clock that only moves when told to."""

    def __init__(self) -> None:
        self.current = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


@dataclass(frozen=True)
class Target:
    """One empty database to run a store test against."""

    backend: Literal["sqlite", "postgresql"]
    url: str
    schema: str | None

    def driver(self) -> Driver:
        """A driver of its own on this database (not opened)."""
        url = parse_store_url(self.url)
        log = structlog.get_logger("test")
        if url.backend == "sqlite":
            return SqliteDriver(url, logger=log)
        return PostgresDriver(url, schema=self.schema, pool_size=1, logger=log)

    async def execute(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run raw SQL outside the store (to tamper with or inspect the database); the
        rows it returns, as tuples."""
        driver = self.driver()
        await driver.open()

        async def run(tx: Tx) -> list[tuple[Any, ...]]:
            if sql.lstrip().upper().startswith(("SELECT", "WITH")) or "RETURNING" in sql.upper():
                return [tuple(row.values()) for row in await tx.fetch(Sql(sql), params)]
            await tx.execute(Sql(sql), params)
            return []

        try:
            return await driver.transact("testing", run)
        finally:
            await driver.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    if request.param == "sqlite":
        yield Target("sqlite", f"sqlite:///{tmp_path}/data/bridge.db", None)
        return
    async with fresh_schema() as schema:
        yield Target("postgresql", pg_url(), schema)


@pytest.fixture
async def pg_target() -> AsyncIterator[Target]:
    """A PostgreSQL-only target, for replica behaviour SQLite does not have."""
    async with fresh_schema() as schema:
        yield Target("postgresql", pg_url(), schema)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _opener(target: Target, clock: FakeClock, opened: list[Store]) -> MakeStore:
    async def make(**kwargs: Any) -> Store:
        store = Store(target.url, schema=target.schema, clock=clock, **kwargs)
        opened.append(store)
        await store.open()
        return store

    return make


@pytest.fixture
async def make_store(target: Target, clock: FakeClock) -> AsyncIterator[MakeStore]:
    opened: list[Store] = []
    yield _opener(target, clock, opened)
    for store in opened:
        await store.close()


@pytest.fixture
async def make_pg_store(pg_target: Target, clock: FakeClock) -> AsyncIterator[MakeStore]:
    opened: list[Store] = []
    yield _opener(pg_target, clock, opened)
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()
