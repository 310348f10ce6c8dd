"""Failures read as clear `StoreError`s naming the path or host and the reason, never a
traceback from the driver, and never a password."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.store.base import StoreError, StoreUnavailable
from bridge.store.store import Store
from tests.pg import pg_connect, pg_url
from tests.store.factories import link_count


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u:hunter2@db/bridge", "scheme 'mysql' is not supported"),
        ("sqlite://", "names no SQLite file"),
        ("sqlite:///:memory:", "names no SQLite file"),
        ("postgresql+psycopg2://u:hunter2@db/bridge", "postgresql+psycopg2 is not supported"),
        ("::not a url::", "cannot parse store URL"),
    ],
)
def test_bad_url_names_supported_schemes(url: str, expected: str) -> None:
    """An unsupported or malformed URL is refused up front, saying what is supported."""
    with pytest.raises(StoreError) as info:
        Store(url)
    message = str(info.value)
    assert expected in message
    assert "hunter2" not in message
    if "parse" not in expected:
        assert "sqlite:///path/to/bridge.db" in message


def test_bad_schema_arguments() -> None:
    """A schema with SQLite, or a schema name unsafe for DDL, is refused."""
    with pytest.raises(StoreError, match="PostgreSQL only"):
        Store("sqlite:///x.db", schema="s")
    with pytest.raises(StoreError, match="schema name"):
        Store(pg_url(), schema='x"; DROP TABLE links; --')


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Drop to an unprivileged effective user while inside (root ignores file modes).

    The SQLite library is loaded before dropping: the interpreter may live where that user
    cannot read (a root-owned pyenv), which is beside the point of these tests.
    """
    assert sqlite3.sqlite_version
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def readonly_dir() -> Iterator[Path]:
    """A read-only directory an unprivileged user can reach (tmp_path's parents are 0700)."""
    with tempfile.TemporaryDirectory(prefix="bridge-ro-") as base:
        os.chmod(base, 0o755)  # noqa: S103 - the unprivileged user must traverse it
        ro = Path(base) / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            yield ro
        finally:
            ro.chmod(0o755)


def _set_modes(path: Path, mode: int) -> None:
    path.chmod(mode)


async def test_sqlite_readonly_directory(readonly_dir: Path) -> None:
    """A database file that cannot be created in a read-only directory (or below it) gives a
    StoreError with the path and the reason."""
    for path in (readonly_dir / "bridge.db", readonly_dir / "sub" / "bridge.db"):
        store = Store(f"sqlite:///{path}")
        with unprivileged(), pytest.raises(StoreError) as info:
            await store.open()
        message = str(info.value)
        assert str(path) in message
        assert "unable to open database file" in message or "Permission denied" in message


def test_failed_sqlite_open_leaves_no_thread_behind(readonly_dir: Path) -> None:
    """A store that cannot open its file starts no checkpointer thread and leaves nothing
    running after the failure."""
    for _ in range(5):
        loop = asyncio.new_event_loop()
        try:
            with unprivileged(), pytest.raises(StoreError, match="unable to open"):
                loop.run_until_complete(Store(f"sqlite:///{readonly_dir / 'x.db'}").open())
        finally:
            loop.close()
    assert [t.name for t in threading.enumerate() if t.name.startswith("store.")] == []


async def test_second_exclusive_store_on_one_file_is_refused(tmp_path: Path) -> None:
    """SQLite serves one bridge: while one store holds the file exclusively (`bridge
    serve`), a second exclusive open is refused naming the file and the holder's PID, and
    succeeds once the first is closed. Stores opened without it (CLI commands) still work."""
    url = f"sqlite:///{tmp_path / 'bridge.db'}"
    first = Store(url, exclusive=True)
    await first.open()
    try:
        with pytest.raises(StoreError) as info:
            await Store(url, exclusive=True).open()
        message = str(info.value)
        assert str(tmp_path / "bridge.db") in message
        assert f"PID {os.getpid()}" in message
        reader = Store(url)
        await reader.open()
        assert await link_count(reader) == 0
        await reader.close()
    finally:
        await first.close()
    again = Store(url, exclusive=True)
    await again.open()
    await again.close()


async def test_exclusive_store_in_a_readonly_directory(readonly_dir: Path) -> None:
    """Where the lock file cannot be created the error says so and asks whether the
    directory is writable."""
    store = Store(f"sqlite:///{readonly_dir / 'bridge.db'}", exclusive=True)
    with unprivileged(), pytest.raises(StoreError) as info:
        await store.open()
    assert f"is {readonly_dir} writable?" in str(info.value)


async def test_sqlite_readonly_file(readonly_dir: Path) -> None:
    """An existing database the bridge may not write is refused with path and reason."""
    _set_modes(readonly_dir, 0o755)
    path = readonly_dir / "bridge.db"
    store = Store(f"sqlite:///{path}")
    await store.open()
    await store.close()
    _set_modes(path, 0o444)
    _set_modes(readonly_dir, 0o555)
    store = Store(f"sqlite:///{path}")
    with unprivileged(), pytest.raises(StoreError) as info:
        await store.open()
    assert str(path) in str(info.value)
    assert "readonly" in str(info.value) or "unable to open" in str(info.value)


async def test_sqlite_corrupt_file(tmp_path: Path) -> None:
    """A file that is not an SQLite database gives a StoreError with path and reason."""
    path = tmp_path / "bridge.db"
    path.write_bytes(b"definitely not sqlite " * 200)
    with pytest.raises(StoreError) as info:
        await Store(f"sqlite:///{path}").open()
    assert str(path) in str(info.value)
    assert "file is not a database" in str(info.value)


async def test_sqlite_parent_is_a_file(tmp_path: Path) -> None:
    """A path whose parent is a regular file cannot get its directory created."""
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "afile" / "bridge.db"
    with pytest.raises(StoreError, match="cannot create directory") as info:
        await Store(f"sqlite:///{path}").open()
    assert str(tmp_path / "afile") in str(info.value)


async def test_postgres_unreachable_is_unavailable_without_password() -> None:
    """Nothing listening: StoreUnavailable naming host and port, the password scrubbed."""
    url = "postgresql://bridge:hunter2@127.0.0.1:1/bridge"
    with pytest.raises(StoreUnavailable) as info:
        await Store(url).open()
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert "hunter2" not in message


@pytest.mark.postgres
async def test_postgres_unknown_database_is_unavailable() -> None:
    """A reachable server without the named database is StoreUnavailable with the reason."""
    conn = await pg_connect()
    await conn.close()
    url = pg_url().rsplit("/", 1)[0] + "/bridge_no_such_db"
    with pytest.raises(StoreUnavailable, match="bridge_no_such_db"):
        await Store(url).open()
