"""The PostgreSQL server tests use: where it is, and a throwaway schema per test.

`BRIDGE_TEST_PG_URL` names it (default ``postgresql://postgres@127.0.0.1:5432/test``). When
it cannot be reached the test is skipped with the reason, except on CI (``CI=true``), where
a missing database must fail loudly instead of silently skipping half the suite.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from typing import NoReturn

import asyncpg
import pytest

from bridge.store.urls import scrub_text

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_url() -> str:
    """The test server's URL as a user would configure it."""
    return os.environ.get("BRIDGE_TEST_PG_URL", DEFAULT_PG_URL)


def pg_unavailable(reason: str) -> NoReturn:
    """Skip the calling test, or fail it on CI, saying why PostgreSQL is not usable."""
    message = f"PostgreSQL at {scrub_text(pg_url())} unavailable ({reason}); set BRIDGE_TEST_PG_URL"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


async def pg_connect() -> asyncpg.Connection:
    """A raw connection to the test server, or skip/fail via `pg_unavailable`."""
    try:
        return await asyncpg.connect(pg_url(), timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        pg_unavailable(f"{type(exc).__name__}: {exc}")


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """Create a uniquely named schema, yield its name, drop it (with everything in it)."""
    name = f"t_{secrets.token_hex(6)}"
    conn = await pg_connect()
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()
