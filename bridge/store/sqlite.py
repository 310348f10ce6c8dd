"""The SQLite driver: the stdlib `sqlite3` module, run directly on the event loop.

Why on the loop: the store's statements are indexed point reads and small write
transactions that SQLite finishes in tens of microseconds, less than a hop to a worker
thread and back. What makes that safe:

- WAL with ``synchronous=NORMAL``: a commit is a write to the WAL file without an fsync
  (durable against a crash of the process; see docs/guarantees.md for a power cut).
- The loop never syncs: automatic checkpoints are off on its connection, and a thread owned
  by the driver (`store.sqlite-checkpointer`) checkpoints on a connection of its own, PASSIVE
  (holding nobody), every second and every `CHECKPOINT_EVERY` commits, and syncs the
  database file after each. A WAL past `WAL_LIMIT_BYTES` (writes that never pause long
  enough for a checkpoint to catch up) is rewound with a RESTART checkpoint, which holds
  writes while it copies the few frames left.
- No busy wait on the loop: the busy timeout is zero. When another process (the CLI, the
  RESTART above) holds the write lock, BEGIN is retried with an async back-off for up to
  `busy_timeout` seconds, then fails as `StoreUnavailable`. Write transactions of this
  process queue on one asyncio lock and never await between BEGIN and COMMIT.
- Statement journals stay in memory (``temp_store=MEMORY``): a multi-row INSERT keeps the
  pages it changes in a statement journal, which past 64 KiB SQLite would otherwise spill
  to a temporary file created, written and deleted on the loop at every commit.

With `exclusive`, the driver also holds an advisory lock on ``<file>.lock`` holding its PID
while open: one `bridge serve` per SQLite file (SQLite is for one replica); a second one is
refused, naming the holder. CLI commands open the store without it.

Timestamps are stored as naive UTC text with microseconds (``2030-01-01 12:00:00.000000``,
sorting in time order); JSON as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from bridge.store.base import StoreError, StoreUnavailable
from bridge.store.driver import Params, Row, Sql, T, render
from bridge.store.urls import StoreUrl, reason

CHECKPOINT_EVERY: Final = 500
"""Write transactions between checkpoint requests (about 2 MB of WAL at typical sizes)."""
CHECKPOINT_INTERVAL_SECONDS: Final = 1.0
WAL_LIMIT_BYTES: Final = 256 * 1024 * 1024
RESTART_WAIT_SECONDS: Final = 1.0
RESTART_RETRY_SECONDS: Final = 30.0
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def encode_time(value: datetime) -> str:
    """Naive UTC text with microseconds, e.g. ``2030-01-01 12:00:00.000000``."""
    if value.tzinfo is None:
        raise StoreError(f"naive datetime {value.isoformat()} given to the store; use UTC")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:-6]


def _encode(params: Params | None) -> Mapping[str, Any]:
    if not params:
        return {}
    return {k: encode_time(v) if isinstance(v, datetime) else v for k, v in params.items()}


def _decode(cursor: sqlite3.Cursor) -> list[Row]:
    names = [column[0] for column in cursor.description or ()]
    times = [name.endswith("_at") for name in names]
    rows = []
    for values in cursor.fetchall():
        row = {}
        for name, is_time, value in zip(names, times, values, strict=True):
            if is_time and isinstance(value, str):
                value = datetime.fromisoformat(value).replace(tzinfo=UTC)
            row[name] = value
        rows.append(row)
    return rows


def _is_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc).lower() for word in ("locked", "busy")
    )


class SqliteDriver:
    backend: Literal["sqlite"] = "sqlite"

    def __init__(
        self,
        url: StoreUrl,
        *,
        logger: structlog.typing.FilteringBoundLogger,
        exclusive: bool = False,
        busy_timeout: float = 5.0,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
    ) -> None:
        assert url.sqlite_path is not None
        self._url = url
        self._path = url.sqlite_path
        self._log = logger
        self._exclusive = exclusive
        self._busy_timeout = busy_timeout
        self._wal_limit = wal_limit_bytes
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._writer = asyncio.Lock()
        self._sql: dict[Sql, str] = {}
        self._commits = 0
        self._checkpointer: _Checkpointer | None = None

    # -- lifecycle --------------------------------------------------------------------
    async def open(self) -> None:
        if self._conn is not None:
            return
        where = self._url.where()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{where}: cannot create directory {self._path.parent}: {exc.strerror or exc}"
            ) from exc
        if self._exclusive:
            self._lock_fd = self._take_process_lock(where)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{where}: WAL journal mode unavailable (got {mode!r}); the store needs"
                    " a local filesystem that supports it"
                )
            for pragma in ("synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=0",
                           "temp_store=MEMORY"):  # fmt: skip
                conn.execute(f"PRAGMA {pragma}").fetchall()
        except (sqlite3.Error, StoreError) as exc:
            if conn is not None:
                conn.close()
            self._release_process_lock()
            if isinstance(exc, StoreError):
                raise
            raise self._error("opening the store", exc) from exc
        self._conn = conn
        try:
            self._checkpointer = _Checkpointer(self._path, self._log, self._wal_limit)
        except OSError as exc:
            conn.close()
            self._conn = None
            self._release_process_lock()
            raise StoreError(f"{where}: cannot open {self._path}: {exc.strerror}") from exc
        self._checkpointer.start()

    def _take_process_lock(self, where: str) -> int:
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"{where}: cannot create {lock_path}: {exc.strerror or exc}"
                f" (is {self._path.parent} writable?)"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"{where} is in use by another bridge (PID {holder}, lock {lock_path}):"
                " SQLite serves one bridge process; stop the other one, or use PostgreSQL"
                " for several replicas"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _release_process_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            # Joining may wait for a checkpoint in progress: not on the loop.
            await asyncio.to_thread(checkpointer.stop)
        self._release_process_lock()

    # -- statements -------------------------------------------------------------------
    def _error(self, doing: str, exc: sqlite3.Error | ValueError) -> StoreError:
        message = f"{self._url.where()}: {doing} failed: {reason(exc)}"
        # Locks, I/O and a full disk may pass; our bug, a foreign schema or a value that
        # cannot be stored (a constraint, a string SQLite cannot encode) will not.
        if isinstance(exc, sqlite3.OperationalError) and not any(
            word in str(exc) for word in ("syntax error", "no such", "too many")
        ):
            return StoreUnavailable(message)
        return StoreError(message)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self._url.display} is not open (call open() first)")
        return self._conn

    def _text(self, sql: Sql) -> str:
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = render(sql, "sqlite")
        return text

    def _run(self, doing: str, sql: Sql, params: Params | None) -> sqlite3.Cursor:
        try:
            return self._connection().execute(self._text(sql), _encode(params))
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(doing, exc) from exc

    async def fetch(self, sql: Sql, params: Params | None = None) -> list[Row]:
        return _decode(self._run("reading", sql, params))

    async def transact(self, doing: str, work: Callable[[_Tx], Awaitable[T]]) -> T:
        async with self._writer:
            checkpointer = self._checkpointer
            if checkpointer is not None and checkpointer.restart_wanted.is_set():
                # Writes wait (the loop does not) while the WAL is rewound: no writer of
                # ours can hold up the RESTART, so it takes as long as its last frames.
                await asyncio.to_thread(checkpointer.restart)
            await self._begin(doing)
            conn = self._connection()
            try:
                result = await work(_Tx(self, doing))
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(doing, exc) from exc
                raise
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0 and self._checkpointer is not None:
            self._checkpointer.request()
        return result

    async def _begin(self, doing: str) -> None:
        """BEGIN IMMEDIATE; while another process holds the write lock, retry with back-off."""
        deadline: float | None = None
        delay = 0.0005
        while True:
            try:
                self._connection().execute("BEGIN IMMEDIATE")
                return
            except sqlite3.Error as exc:
                now = time.monotonic()
                deadline = now + self._busy_timeout if deadline is None else deadline
                if not _is_busy(exc) or now >= deadline:
                    raise self._error(doing, exc) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01)

    # -- coordination: one process per file (see the module docstring) -----------------
    async def try_lead(self) -> bool:
        return True

    async def release_lead(self) -> None:
        return None

    async def notify(self) -> None:
        return None

    async def listen(self, callback: Callable[[], None]) -> None:
        return None


class _Tx:
    def __init__(self, driver: SqliteDriver, doing: str) -> None:
        self._driver = driver
        self._doing = doing

    async def execute(self, sql: Sql, params: Params | None = None) -> int:
        return self._driver._run(self._doing, sql, params).rowcount

    async def fetch(self, sql: Sql, params: Params | None = None) -> list[Row]:
        return _decode(self._driver._run(self._doing, sql, params))


class _Checkpointer:
    """A thread that checkpoints the WAL on its own connection, so the loop never syncs."""

    def __init__(
        self, path: Path, log: structlog.typing.FilteringBoundLogger, wal_limit: int
    ) -> None:
        self._path = path
        self._wal = path.with_name(path.name + "-wal")
        self._log = log
        self._wal_limit = wal_limit
        self._wanted = threading.Event()
        self._stopping = False
        self._restart_after = 0.0
        self.restart_wanted = threading.Event()
        # A descriptor of the database file for syncing it, open as long as the thread
        # runs: closing any descriptor of a file drops every POSIX lock this process holds
        # on it, SQLite's included, so one is never opened and closed per sync.
        self._fd = os.open(path, os.O_RDONLY)
        self._thread = threading.Thread(
            target=self._run, name="store.sqlite-checkpointer", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        """Stop and wait for the thread (blocking: call it off the loop, after closing the
        loop's connection)."""
        self._stopping = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        os.close(self._fd)

    def _report(self, event: str, **fields: object) -> None:
        with contextlib.suppress(Exception):  # a broken log sink must not stop checkpoints
            self._log.warning(event, **fields)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        copied_before = -1
        try:
            while True:
                self._wanted.wait(CHECKPOINT_INTERVAL_SECONDS)
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
                    _busy, _frames, copied = conn.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                    if copied != copied_before:
                        # SQLite syncs the database file only after a checkpoint that
                        # completes, which writes that never pause never let happen.
                        _datasync(self._fd)
                        copied_before = copied
                    if (
                        self._wal.stat().st_size > self._wal_limit
                        and time.monotonic() >= self._restart_after
                    ):
                        self.restart_wanted.set()
                except Exception as exc:
                    # Never fatal: the next round tries again on a fresh connection; the
                    # WAL only grows meanwhile.
                    self._report("store.checkpoint_failed", error=repr(exc))
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def restart(self) -> None:
        """Rewind a WAL that writes without a pause let grow past its limit (called in a
        worker thread while the driver holds its writes): a RESTART checkpoint copies the
        frames the PASSIVE rounds left, and the next write starts the WAL from its
        beginning. A reader of another process holding an old snapshot makes it wait: it
        gives up after `RESTART_WAIT_SECONDS` and is tried again `RESTART_RETRY_SECONDS`
        later."""
        self.restart_wanted.clear()
        started = time.monotonic()
        size = self._wal.stat().st_size
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=RESTART_WAIT_SECONDS)
            try:
                busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            busy, frames, reason_text = 1, -1, repr(exc)
        else:
            reason_text = "another connection holds old WAL frames"
        held_ms = round((time.monotonic() - started) * 1000, 1)
        if busy:
            self._restart_after = time.monotonic() + RESTART_RETRY_SECONDS
            self._report(
                "store.wal_restart_failed",
                reason=reason_text,
                wal_bytes=size,
                held_ms=held_ms,
                retry_in_seconds=RESTART_RETRY_SECONDS,
            )
            return
        with contextlib.suppress(Exception):
            self._log.info(
                "store.wal_restarted", wal_bytes=size, wal_frames=frames, held_ms=held_ms
            )
