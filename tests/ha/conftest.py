"""Fixtures of the HA suite: an in-process stack for reconciliation, and a fresh PostgreSQL
database per test for bridges running as separate processes.

A whole database (not a schema) because `bridge serve` takes its store from a URL, and a
URL names a database: two processes given the same URL share it, as replicas do.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bridge.sandbox.stack import SandboxStack
from tests.pg import pg_connect, pg_url

# Subprocess bridges that never outlive the test (`python -m bridge serve`, own directory).
from tests.reliability.conftest import bridge_factory  # noqa: F401

# The store suite's backend-parametrised fixtures (SQLite and PostgreSQL, injected clock).
from tests.store.conftest import clock, make_store, store, target  # noqa: F401


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SandboxStack]:
    """A real bridge (SQLite) wired to both simulators; its link checker looks for links
    only once, at start (a long poll interval), so the test decides when checks run. A
    link is checked again 30 s after its last check, which `advance_checks` jumps over
    (staying well within the webhooks' 300-s signature tolerance)."""
    async with SandboxStack(
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        overrides={"scheduler": {"reconcile_poll_seconds": 3600, "reconcile_seconds": 30}},
    ) as running:
        yield running


def database_url(name: str) -> str:
    """`BRIDGE_TEST_PG_URL` with its database replaced by `name`."""
    parts = urlsplit(pg_url())
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database on the test server; yields its URL, drops it after
    (terminating sessions a SIGKILLed bridge may have left behind)."""
    name = f"ha_{secrets.token_hex(5)}"
    admin = await pg_connect()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield database_url(name)
    finally:
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await admin.close()
