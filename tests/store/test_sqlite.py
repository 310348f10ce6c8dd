"""The SQLite driver: what running on the event loop must not cost.

Its statements' results are covered by the whole store suite (every SQLite store test goes
through it). These tests cover what is particular to running inline on the loop: another
process holding the write lock never blocks the loop and ends in a clear error, the WAL is
checkpointed (and rewound when writes never pause) by the driver's own thread rather than
on the loop, and a commit does no file work on the loop beyond writing its WAL frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from bridge.events import DeliveryId, ObjectRef
from bridge.store.base import NewInboxEvent, StoreError, StoreUnavailable
from bridge.store.sqlite import SqliteDriver, encode_time
from bridge.store.store import Store


def _delivery(n: int, body: bytes = b"{}") -> NewInboxEvent:
    return NewInboxEvent(
        source="rootly",
        delivery_id=DeliveryId(f"d-{n}"),
        event_type="incident.created",
        body=body,
        received_at=datetime(2030, 1, 1, tzinfo=UTC),
    )


@pytest.fixture
async def db_path(tmp_path: Path) -> Path:
    """A migrated, otherwise unused SQLite database."""
    path = tmp_path / "bridge.db"
    store = Store(f"sqlite:///{path}")
    await store.open()
    await store.close()
    return path


@pytest.fixture
def other_process_lock(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection (as the CLI would be) holding the database's write lock."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


@contextlib.asynccontextmanager
async def _store(
    path: Path, busy_timeout: float = 5.0, wal_limit_bytes: int | None = None
) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{path}", busy_timeout=busy_timeout)
    if wal_limit_bytes is not None:
        store.driver = SqliteDriver(
            store.url, logger=structlog.get_logger("test"), wal_limit_bytes=wal_limit_bytes
        )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _size(path: Path) -> int:
    return path.stat().st_size


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])


async def test_locked_database_waits_without_blocking_the_loop(
    db_path: Path, other_process_lock: sqlite3.Connection
) -> None:
    """A write while another process holds the lock is retried (not failed, not lost) and
    the loop keeps running meanwhile; it lands once the other process commits."""
    async with _store(db_path, busy_timeout=10.0) as direct:
        ticks = 0
        writing = True

        async def ticker() -> None:
            nonlocal ticks
            while writing:
                ticks += 1
                await asyncio.sleep(0.005)

        ticking = asyncio.create_task(ticker())
        asyncio.get_running_loop().call_later(0.3, other_process_lock.execute, "COMMIT")
        ids = await direct.add_inbox([_delivery(1)])
        writing = False
        await ticking
        assert ids[0] is not None
        assert ticks >= 5, "the event loop was blocked while the database was locked"
    assert _count(db_path) == 1


async def test_locked_database_gives_up_with_a_clear_error(
    db_path: Path, other_process_lock: sqlite3.Connection
) -> None:
    """Locked for longer than the busy timeout: StoreUnavailable naming the store, the
    operation and the reason; nothing is written later behind the caller's back."""
    async with _store(db_path, busy_timeout=0.2) as direct:
        with pytest.raises(StoreUnavailable) as info:
            await direct.add_inbox([_delivery(1)])
        message = str(info.value)
        assert str(db_path) in message
        assert "storing webhook deliveries" in message
        assert "locked" in message
        other_process_lock.execute("COMMIT")
        await asyncio.sleep(0.05)
    assert _count(db_path) == 0


async def test_reads_do_not_wait_for_another_writer(
    db_path: Path, other_process_lock: sqlite3.Connection
) -> None:
    """WAL readers never wait for the writer: lookups answer while the lock is held."""
    async with _store(db_path, busy_timeout=0.0) as direct:
        assert await direct.linked([ObjectRef.parse("rootly:incident:r-1")]) == []
        assert not await direct.find_echo(
            ObjectRef.parse("rootly:incident:r-1"), "status=resolved", datetime.now(UTC)
        )
        await direct.ping()


async def test_writes_reach_the_database_file_within_about_a_second(db_path: Path) -> None:
    """Once writes stop, the checkpointer thread copies (and fsyncs) them into the
    database file within about a second, without any further write or request: what a
    power cut can lose is bounded by that second (docs/guarantees.md)."""
    size_before = _size(db_path)
    body = b"x" * 100_000
    async with _store(db_path) as direct:
        for n in range(5):
            await direct.add_inbox([_delivery(n, body)])
        for _ in range(100):
            if _size(db_path) >= size_before + 5 * len(body):
                break
            await asyncio.sleep(0.05)
        assert _size(db_path) >= size_before + 5 * len(body)


async def test_wal_stays_bounded_under_steady_writes(db_path: Path) -> None:
    """Commits back to back, with no quiet moment between them, still get the WAL rewound
    once it passes its limit (a PASSIVE checkpoint racing the next commit never rewinds
    it): a rewind is reported, and the frames in use after it are fewer than all the
    frames the WAL file has held."""
    with capture_logs() as logs:
        async with _store(db_path, wal_limit_bytes=200_000) as direct:
            written = await _write_until_rewound(direct, logs)
            in_use, capacity = _wal_frames(db_path)
    assert in_use < capacity
    assert _count(db_path) == written


async def test_other_processes_still_see_the_store_open_after_a_rewind(db_path: Path) -> None:
    """Syncing the database file during a rewind must not drop the process's SQLite locks
    (closing any descriptor of a file drops all of a process's POSIX locks on it): after
    rewinds, another process that opens and closes a connection still finds the store
    open, so it neither checkpoints nor deletes the WAL the store is writing to, and rows
    written after that survive."""
    async with _store(db_path, wal_limit_bytes=200_000) as direct:
        with capture_logs() as logs:
            written = await _write_until_rewound(direct, logs)
        # A real other process (as the CLI would be): it reads, so it joins the WAL, and
        # on closing it deletes the WAL if it believes it is the file's last user.
        other = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
            " c.execute('SELECT count(*) FROM inbox').fetchall(); c.close()",
            str(db_path),
            stderr=asyncio.subprocess.PIPE,
        )
        _out, errors = await other.communicate()
        assert other.returncode == 0, errors
        assert db_path.with_name(db_path.name + "-wal").exists()
        await direct.add_inbox([_delivery(written)])
    assert _count(db_path) == written + 1


async def _write_until_rewound(direct: Store, logs: Sequence[Mapping[str, Any]]) -> int:
    """Write 10 kB rows back to back until a WAL rewind is reported (and 20 more rows after
    it); returns how many were written. Bounded: fails after 5,000 rows (50 MB)."""
    body = b"x" * 10_000
    after_rewind = None
    for n in range(5_000):
        await direct.add_inbox([_delivery(n, body)])
        if after_rewind is None and any(e["event"] == "store.wal_restarted" for e in logs):
            after_rewind = n + 20
        if n == after_rewind:
            return n + 1
    raise AssertionError(f"no WAL rewind within 5,000 writes: {logs}")


def _wal_frames(path: Path) -> tuple[int, int]:
    """(frames in use, frames the WAL file has room for) as seen by another connection."""
    with sqlite3.connect(path) as conn:
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        for _ in range(100):
            # Busy while the store's own checkpointer is at work: ask again.
            busy, in_use, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy:
                break
            time.sleep(0.01)
        assert not busy, "the WAL stayed busy with checkpoints for a second"
    file_frames = (_size(path.with_name(path.name + "-wal")) - 32) // (page + 24)
    return in_use, file_frames


async def test_a_pinned_wal_is_not_restarted_and_writers_are_not_held(db_path: Path) -> None:
    """Another connection reading an old snapshot (a backup, a CLI) keeps frames in the
    WAL that no checkpoint may copy: past the limit the RESTART gives up within a fraction
    of a second, is reported, and is not tried again at once (writers are held for at most
    that fraction, once per retry interval)."""
    body = b"x" * 10_000
    reader = sqlite3.connect(db_path, isolation_level=None)
    with capture_logs() as logs:
        async with _store(db_path, wal_limit_bytes=200_000) as direct:
            await direct.add_inbox([_delivery(0, body)])
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM inbox").fetchall()  # pins this snapshot
            for n in range(1, 200):
                await direct.add_inbox([_delivery(n, body)])
            # The rewind runs before the next write once the checkpointer asks for it.
            for n in range(200, 300):
                if any(e["event"] == "store.wal_restart_failed" for e in logs):
                    break
                await direct.add_inbox([_delivery(n, body)])
                await asyncio.sleep(0.05)
            written = n
        reader.execute("ROLLBACK")
        reader.close()
    events = [e["event"] for e in logs]
    assert "store.wal_restart_failed" in events
    assert "store.wal_restarted" not in events
    failed = next(e for e in logs if e["event"] == "store.wal_restart_failed")
    assert failed["reason"] == "another connection holds old WAL frames"
    assert failed["held_ms"] < 1500
    assert _count(db_path) == written


def test_timestamps_are_encoded_as_naive_utc_text_whatever_the_offset() -> None:
    """The same instant encodes to the same naive-UTC text (the form earlier releases stored,
    so their rows read the same) whether given in UTC or another offset; a naive datetime
    is refused rather than guessed."""
    instant = datetime(2026, 11, 23, 16, 0, 0, 120, tzinfo=UTC)
    elsewhere = instant.astimezone(timezone(timedelta(hours=-5)))
    assert encode_time(instant) == "2026-11-23 16:00:00.000120"
    assert encode_time(elsewhere) == encode_time(instant)
    assert encode_time(instant.replace(microsecond=0)) == "2026-11-23 16:00:00.000000"
    with pytest.raises(StoreError, match="naive datetime"):
        encode_time(instant.replace(tzinfo=None))


def _random_deliveries(count: int) -> list[NewInboxEvent]:
    """Deliveries with random IDs (as real ones are): each lands in its own, already
    existing leaf of the delivery-ID index once the index has a few thousand rows."""
    return [
        NewInboxEvent(
            source="incident_io",
            delivery_id=DeliveryId(f"msg_{uuid.uuid4().hex}"),
            event_type="public_incident.incident_created_v2",
            body=b"x" * 600,
            received_at=datetime(2030, 1, 1, tzinfo=UTC),
        )
        for _ in range(count)
    ]


@contextlib.contextmanager
def _sqlite_temp_directory(path: Path) -> Iterator[None]:
    """Make SQLite create its temporary files in `path` (a process-wide setting, restored
    on exit)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"PRAGMA temp_store_directory = '{path}'")
        yield
    finally:
        conn.execute("PRAGMA temp_store_directory = ''")
        conn.close()


async def test_a_large_batch_commits_without_a_temporary_file(
    db_path: Path, tmp_path: Path
) -> None:
    """A batch stored in more than one INSERT (96 rows: 64 then 32) keeps a statement
    journal of the pages its second statement changes, more than SQLite's 64 KiB buffer
    here; it stays in memory, so a commit does not create, write and delete a temporary
    file on the loop (seen as the temporary directory never changing)."""
    temp_dir = tmp_path / "sqlite-temp"
    temp_dir.mkdir()
    async with _store(db_path) as direct:
        for _ in range(40):
            await direct.add_inbox(_random_deliveries(50))
        with _sqlite_temp_directory(temp_dir):
            unchanged = temp_dir.stat().st_mtime_ns
            for _ in range(5):
                ids = await direct.add_inbox(_random_deliveries(96))
                assert None not in ids
            assert temp_dir.stat().st_mtime_ns == unchanged, "a commit used a temporary file"
    assert _count(db_path) == 40 * 50 + 5 * 96
