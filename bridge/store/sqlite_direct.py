"""`DirectSqlite`: the store's hot statements on SQLite, run directly on the event loop.

Why not through SQLAlchemy and aiosqlite like the rest of the store: every statement there
costs a greenlet switch, statement compilation or a cache-key walk, and two thread hops
(loop -> aiosqlite's thread -> loop). Measured under the event-to-action benchmark, that was
most of the bridge's CPU (about 12 statements per event, several milliseconds per event),
and each thread hop can wait for the GIL behind the loop. The statements here are indexed
point reads and small write transactions that SQLite finishes in tens of microseconds,
faster than the hop itself, so they run inline on the loop:

- WAL with ``synchronous=NORMAL``: a commit is a write to the WAL file, no fsync (durable
  against a process crash, like before; fsyncs happen at checkpoints).
- Checkpoints run off the loop: automatic checkpoints are off on this connection, and a
  named thread owned by this object (`store.sqlite-checkpointer`) checkpoints after every
  `CHECKPOINT_EVERY` commits and periodically. Always PASSIVE: nobody is held, and the WAL
  rewinds at the first write after a checkpoint that caught up (any pause in the traffic).
  Under writes with no pause at all a checkpoint never catches up and the WAL would grow
  without end, so beyond `WAL_LIMIT_BYTES` the thread catches up (PASSIVE rounds, each
  followed by a sync of the database file) until little is left, and the loop copies that
  last small tail itself, right before its next write transaction, which then rewinds the
  WAL (`_finish_rewind`; a few milliseconds on the loop, measured 1.8-5.6 ms on this
  project's benchmark machine). Why not a writer-holding RESTART from the thread, as
  before: it held every write for 40-90 ms at each rewind (every 10-20 s at 2,000-2,500
  webhooks/s), for two reasons measured in isolation: SQLite syncs the database file only
  after a checkpoint that completes, so the one complete checkpoint paid for syncing every
  page the incomplete ones had copied (about 60 ms for a 130 MB WAL), and each of the
  thread's returns from SQLite waited for the GIL behind the busy loop. The WAL file keeps
  its largest size (at most about the limit); shrinking it would cost more than it saves.
- The WAL pages the loop writes next are kept in the page cache: after each checkpoint the
  thread asks the kernel to read in the next `WAL_PREFETCH_BYTES` after the last frame and
  at the WAL's start (`_Checkpointer._prefetch_wal`), since a kernel that reclaims idle
  page cache may have dropped pages written a WAL cycle ago, and writing a frame into a
  dropped page reads it from disk first, on the loop.
- Statement journals stay in memory (``temp_store=MEMORY``). A multi-row INSERT inside a
  transaction keeps the pages it changes in a statement journal, so the statement alone can
  be undone; past 64 KiB (a batch of about ten webhooks, each changing a leaf of the
  delivery-ID index at random) SQLite spills it to a temporary file, which it creates,
  writes and deletes on every commit, on the loop: 28 against 19 µs per row in batches of
  20 (measured), 10-15% of the ingest peak. Nothing else on this connection uses
  temporary storage.
- No busy wait on the loop: the connection's busy timeout is zero. When another process (the
  CLI) holds the write lock, the statement is retried with an async back-off until
  `busy_timeout` has passed, then fails as `StoreUnavailable`. Within this process, write
  transactions take the store's writer lock first, so they never collide with the
  SQLAlchemy path's transactions.
- A write transaction runs without awaiting between BEGIN and COMMIT, so no other coroutine
  can observe or interleave with it.

Values use the encodings SQLAlchemy uses for the same columns (naive UTC text timestamps
with microseconds, JSON text), so rows written here read the same through `SqlStore` and
the reverse; `tests/store` runs the whole store suite over both paths together.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import structlog

from bridge.events import (
    ActionId,
    InboxId,
    LinkChange,
    ObjectRef,
    Platform,
    thaw,
)
from bridge.store.base import (
    LEASE_LOST,
    ActionOutcome,
    InboxCompletion,
    InboxRow,
    LinkRow,
    NewInboxEvent,
    OutboxRow,
    StoreError,
    StoreUnavailable,
)
from bridge.store.rows import (
    action_values,
    canonical_pair,
    inbox_row,
    link_row,
    link_values,
    outbox_row,
)

T = TypeVar("T")

# fdatasync where the platform has it (Linux), fsync elsewhere (macOS): same guarantee here.
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
# posix_fadvise is missing on some platforms (macOS): there the WAL is simply not prefetched.
_fadvise: Callable[[int, int, int, int], None] | None = getattr(os, "posix_fadvise", None)

CHECKPOINT_EVERY: Final = 500
"""Write transactions between checkpoint requests (about 2 MB of WAL at typical sizes)."""
CHECKPOINT_INTERVAL_SECONDS: Final = 1.0
"""Also checkpoint this often when anything was written: the first checkpoint after the
writes stop catches up completely, so the next write rewinds the WAL (no WAL growth across
bursts, none of them needing the loop to finish a rewind)."""
CHECKPOINT_WAIT_SECONDS: Final = 5.0
"""Busy timeout of the checkpointer's own connection (it never holds anyone up)."""
RESTART_RETRY_SECONDS: Final = 30.0
"""After a rewind could not be prepared or finished (another connection is reading old
frames), how long before trying again; the WAL only grows meanwhile."""
REWIND_WAIT_SECONDS: Final = 5.0
"""How long a request to the loop to finish a rewind stands before it is withdrawn (reported,
and retried later, if the loop's final checkpoint kept finding another one busy)."""
WAL_LIMIT_BYTES: Final = 256 * 1024 * 1024
"""WAL size beyond which the WAL is rewound during writes (see above)."""
WAL_PREFETCH_BYTES: Final = 16 * 1024 * 1024
"""How much of the WAL the checkpointer asks the kernel to have in the page cache, from
where the next frames go and from its start (see `_Checkpointer._prefetch_wal`): more than
the loop writes between two checkpoints at half of the ingest peak (500 commits of about
six frames each) and about what it writes in a second at the peak."""
WAL_PREFETCH_CHUNK_BYTES: Final = 1024 * 1024
"""One hint per this many bytes: Linux reads at most its readahead or I/O size per hint
(8 MB on this project's benchmark machine, from 128 KB up on others), and ignores the rest
of a larger one."""
WAL_HEADER_BYTES: Final = 32
WAL_FRAME_HEADER_BYTES: Final = 24
CATCH_UP_FRAMES: Final = 256
"""New WAL frames per catch-up round below which the loop is asked to copy the rest."""
LOOP_FRAMES_LIMIT: Final = 4 * CATCH_UP_FRAMES
"""If the last catch-up round still found more new frames than this, the loop is not asked
(copying them would block it too long): the rewind is reported and retried later."""

_INBOX_DATES: Final = ("received_at", "processed_at", "next_attempt_at", "lease_expires_at")
_OUTBOX_DATES: Final = (
    "next_attempt_at",
    "lease_expires_at",
    "created_at",
    "updated_at",
    "finished_at",
    "event_received_at",
)
_OUTBOX_JSON: Final = ("params", "result_links", "result")

_INBOX_INSERT_COLUMNS: Final = (
    "source",
    "delivery_id",
    "event_type",
    "body",
    "received_at",
    "state",
    "next_attempt_at",
    "attempts",
    "lease_owner",
    "lease_expires_at",
    "processed_at",
    "trace",
)
INBOX_INSERT_CHUNK: Final = 64
"""Most rows per INSERT statement. A batch is split into chunks whose sizes are powers of
two up to this, so at most seven statement texts exist (SQLite's statement cache keeps
them all prepared) and a chunk binds at most 768 values (SQLite's oldest limit is 999)."""
# The last inbox ID ever handed out: AUTOINCREMENT gives the next row this plus one.
_INBOX_LAST_ID: Final = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'inbox'), 0),"
    " coalesce((SELECT max(id) FROM inbox), 0))"
)
_INBOX_DUE: Final = (
    "state = 'pending' AND next_attempt_at <= :now"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= :now)"
)
_OUTBOX_DUE: Final = (
    "((state = 'pending' AND next_attempt_at <= :now)"
    " OR (state = 'claimed' AND lease_expires_at <= :now))"
)
_OUTBOX_COLUMNS: Final = (
    "operation",
    "platform",
    "target",
    "params",
    "rule",
    "idempotency_key",
    "result_links",
    "state",
    "attempts",
    "next_attempt_at",
    "inbox_id",
    "created_at",
    "updated_at",
    "event_received_at",
    "lease_owner",
    "lease_expires_at",
)
_OUTBOX_INSERT: Final = (
    f"INSERT INTO outbox ({', '.join(_OUTBOX_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _OUTBOX_COLUMNS)}) RETURNING *"
)
_LINK_COLUMNS: Final = (
    "a_platform",
    "a_kind",
    "a_id",
    "b_platform",
    "b_kind",
    "b_id",
    "created_at",
    "created_by",
)
_LINK_INSERT: Final = (
    f"INSERT INTO links ({', '.join(_LINK_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _LINK_COLUMNS)}) ON CONFLICT DO NOTHING"
)
_LINK_DELETE: Final = (
    "DELETE FROM links WHERE a_platform = ? AND a_kind = ? AND a_id = ?"
    " AND b_platform = ? AND b_kind = ? AND b_id = ?"
)
_HELD: Final = "id = ? AND state = 'claimed' AND lease_owner = ?"


def encode_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text for an aware datetime (naive UTC, microseconds)."""
    if value.tzinfo is UTC:
        # The usual case (the bridge's clocks are UTC): one call, not three; drops "+00:00".
        return value.isoformat(" ", "microseconds")[:-6]
    if value.tzinfo is None:
        raise StoreError(f"naive datetime {value.isoformat()} given to the store; use UTC")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _decode_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _encode_json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"value cannot be stored as JSON: {exc}") from exc


def _decoded(row: sqlite3.Row, dates: Sequence[str], blobs: Sequence[str]) -> dict[str, Any]:
    values = dict(zip(row.keys(), row, strict=True))
    for key in dates:
        values[key] = _decode_time(values[key])
    for key in blobs:
        if values[key] is not None:
            values[key] = json.loads(values[key])
    return values


def _inbox(row: sqlite3.Row) -> InboxRow:
    return inbox_row(_decoded(row, _INBOX_DATES, ("trace",)))


def _outbox(row: sqlite3.Row) -> OutboxRow:
    return outbox_row(_decoded(row, _OUTBOX_DATES, _OUTBOX_JSON))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class _Checkpointer:
    """A thread that checkpoints the WAL on its own connection, so the loop never does."""

    def __init__(
        self,
        path: Path,
        log: structlog.typing.FilteringBoundLogger,
        wal_limit_bytes: int,
        commits: Callable[[], int],
        rewind_due: threading.Event,
    ) -> None:
        self._commits = commits
        self._rewind_due = rewind_due
        # What the loop reports when it finishes a rewind: set before `rewind_due` is.
        self.rewind_wal_bytes = 0
        self.rewind_rounds = 0
        self._asked_at = 0.0
        # Final steps the loop tried since it was asked (each found another checkpoint busy).
        self.final_step_tries = 0
        # A descriptor of the database file for syncing it, opened by the store once and
        # closed only after every connection: closing any descriptor of a file drops all of
        # this process's POSIX locks on it, SQLite's included.
        self.database_fd: int | None = None
        self._checkpointed = 0
        # The WAL, opened by this thread for `_prefetch_wal` and closed when it stops.
        self._wal_fd: int | None = None
        self._page_bytes: int | None = None
        self._restart_after = 0.0
        self._path = path
        self._wal = path.with_name(path.name + "-wal")
        self._wal_limit = wal_limit_bytes
        self._log = log
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="store.sqlite-checkpointer", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        """Stop and wait for the thread (blocking: call it off the loop)."""
        self._stopping = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _report(self, event: str, **fields: object) -> None:
        """Log from this thread; a broken log sink must not stop the checkpoints."""
        with contextlib.suppress(Exception):
            self._log.warning(event, **fields)

    def _page_size(self, conn: sqlite3.Connection) -> int:
        if self._page_bytes is None:
            self._page_bytes = int(conn.execute("PRAGMA page_size").fetchone()[0])
        return self._page_bytes

    def _wal_size(self) -> int:
        try:
            return self._wal.stat().st_size
        except OSError:
            return 0

    def _sync_database(self) -> None:
        """Sync the database file. SQLite does so only after a checkpoint that completes,
        which writers that never pause never let happen: without this, the pages the
        catch-up rounds copied would all be synced by the loop's final checkpoint."""
        if self.database_fd is not None:
            _datasync(self.database_fd)

    def _prefetch_wal(self, frames: int, page_bytes: int) -> None:
        """Ask the kernel to read into the page cache the WAL pages the loop will write next:
        those after the last frame, and those at the WAL's start, where the frames go after
        a rewind. Why: the WAL keeps its size and is written over in cycles, so the page
        ahead of the writer was last touched a cycle ago, and a kernel that reclaims idle
        page cache (DAMON reclaim, a cgroup near its memory limit) may have dropped it. A
        WAL frame (page size + 24 bytes) never covers whole file pages, so writing one
        into a dropped page first reads the page from disk, on the loop: on this project's
        benchmark machine that read is where the loop was blocked in half of the slowest
        windows at a steady load; in a paired probe at half of the peak the hint cut the
        loop's reads from disk from 2-5 MB to 0-2 MB per 5-s run. It only starts reads (not
        waiting for them), costs a page-cache lookup per resident page, and runs on this
        thread; failing, it only leaves the pages to be read when written, as before."""
        if _fadvise is None:
            return
        try:
            if self._wal_fd is None:
                self._wal_fd = os.open(self._wal, os.O_RDONLY)
            # Only pages the file has: writes past its end need nothing read.
            size = os.fstat(self._wal_fd).st_size
            end = WAL_HEADER_BYTES + frames * (page_bytes + WAL_FRAME_HEADER_BYTES)
            for start in {0, end}:
                for offset in range(
                    start, min(start + WAL_PREFETCH_BYTES, size), WAL_PREFETCH_CHUNK_BYTES
                ):
                    _fadvise(self._wal_fd, offset, WAL_PREFETCH_CHUNK_BYTES, os.POSIX_FADV_WILLNEED)
        except OSError:
            return

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Prepare a rewind of the WAL without holding anyone: PASSIVE rounds copy what was
        appended meanwhile until a round finds little new; then the loop is asked to copy
        that small rest before its next write (`DirectSqlite._finish_rewind`)."""
        if time.monotonic() < self._restart_after or self._rewind_due.is_set():
            return
        size = self._wal_size()
        previous: int | None = None
        rounds = 0
        frames = 0
        while rounds < 8:
            rounds += 1
            _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._sync_database()
            if previous is not None and frames - previous <= CATCH_UP_FRAMES:
                break
            previous = frames
        if previous is not None and frames - previous > LOOP_FRAMES_LIMIT:
            # Writes outpace the catch-up: the rest would block the loop for too long.
            self.restart_failed("writes outpace the catch-up", size, frames)
            return
        # Frames left uncopied here may only be the loop's write in progress. Whether a
        # reader pins old frames, the loop's final checkpoint tells: it has no transaction
        # of its own open then, and nothing else writes.
        self.rewind_wal_bytes = size
        self.rewind_rounds = rounds
        self.final_step_tries = 0
        self._asked_at = time.monotonic()
        self._rewind_due.set()

    def _leave_to_loop(self) -> bool:
        """Whether to skip this periodic checkpoint because the loop was asked to finish a
        rewind: only within a checkpoint interval of asking (a checkpoint now would make the
        loop's step busy). Later this thread checkpoints as usual whatever the loop does, so
        writes still reach the database file within about a second; past
        `REWIND_WAIT_SECONDS` the request is withdrawn, and reported if the loop tried and
        always found another checkpoint busy (if it never tried it was idle, and the
        checkpoints since have let the next write rewind the WAL anyway)."""
        if not self._rewind_due.is_set():
            return False
        waited = time.monotonic() - self._asked_at
        if waited < CHECKPOINT_INTERVAL_SECONDS:
            return True
        if waited >= REWIND_WAIT_SECONDS:
            self._rewind_due.clear()
            if self.final_step_tries:
                self.restart_failed("the final checkpoint stayed busy", self.rewind_wal_bytes)
        return False

    def restart_failed(
        self, reason: str, size: int, frames: int | None = None, copied: int | None = None
    ) -> None:
        """Report a rewind that could not be prepared or finished; retry later (called from
        this thread or, for the final step, from the loop)."""
        self._restart_after = time.monotonic() + RESTART_RETRY_SECONDS
        counts = {} if frames is None else {"wal_frames": frames, "frames_copied": copied}
        self._report(
            "store.wal_restart_failed",
            reason=reason,
            wal_bytes=size,
            retry_in_seconds=RESTART_RETRY_SECONDS,
            **counts,
        )

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                asked = self._wanted.wait(CHECKPOINT_INTERVAL_SECONDS)
                self._wanted.clear()
                if self._stopping:
                    return
                written = self._commits()
                if not asked and written == self._checkpointed:
                    continue  # nothing written since the last checkpoint
                if self._leave_to_loop():
                    continue
                self._checkpointed = written
                try:
                    if conn is None:
                        conn = sqlite3.connect(
                            self._path, isolation_level=None, timeout=CHECKPOINT_WAIT_SECONDS
                        )
                    _busy, frames, _copied = conn.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                    self._prefetch_wal(frames, self._page_size(conn))
                    # Frames in use, not the file's size: after a rewind the file keeps its
                    # size while the log starts again from its beginning.
                    if frames * self._page_size(conn) > self._wal_limit:
                        self._catch_up(conn)
                except Exception as exc:
                    # Never fatal (this thread must outlive any one failure): the next
                    # request tries again on a fresh connection; the WAL only grows meanwhile.
                    self._report("store.checkpoint_failed", error=repr(exc))
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
            # After this thread's connection, and (see `stop`) after the loop's: the WAL
            # holds no SQLite lock, but no descriptor of the store's files closes early.
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None


@functools.cache
def _inbox_insert_sql(rows: int) -> str:
    one = "(" + ", ".join("?" * len(_INBOX_INSERT_COLUMNS)) + ")"
    return (
        f"INSERT INTO inbox ({', '.join(_INBOX_INSERT_COLUMNS)}) VALUES "
        + ", ".join([one] * rows)
        + " ON CONFLICT (source, delivery_id) DO NOTHING"
    )


def _insert_inbox(
    conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]
) -> list[InboxId | None]:
    """Insert `rows` (values in `_INBOX_INSERT_COLUMNS` order) in multi-row statements; the
    new ID of each row, None for a delivery already stored or repeated earlier in `rows`
    (the first occurrence wins), in the order given.

    Why not one INSERT ... RETURNING per row: every statement costs its own execution and
    AUTOINCREMENT bookkeeping: batches of ten took 48.5 µs per row that way against 30.0 µs
    in multi-row statements (measured; the benchmark's peak batches hold 10-30). Inside the
    write transaction nobody else inserts, and AUTOINCREMENT numbers new rows from the last
    ID ever given, in insertion order. `total_changes` says whether every row went in (the
    inbox has no triggers, whose inserts it would not count); the table's new maximum says
    their IDs are consecutive (a row skipped as a duplicate can still use up an ID). When
    both hold the IDs follow `last` one by one; any other case reads the new rows back by
    key.
    """
    last = conn.execute(_INBOX_LAST_ID).fetchone()[0]
    changes_before = conn.total_changes
    start = 0
    while start < len(rows):
        size = min(INBOX_INSERT_CHUNK, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + size]
        conn.execute(_inbox_insert_sql(size), [value for row in chunk for value in row])
        start += size
    inserted = conn.total_changes - changes_before
    if (
        inserted == len(rows)
        and conn.execute("SELECT max(id) FROM inbox").fetchone()[0] == last + inserted
    ):
        return [InboxId(last + 1 + offset) for offset in range(inserted)]
    new_ids = {
        (source, delivery_id): new_id
        for new_id, source, delivery_id in conn.execute(
            "SELECT id, source, delivery_id FROM inbox WHERE id > ?", (last,)
        )
    }
    # pop: a key repeated within the batch gets its ID at its first occurrence only.
    return [
        InboxId(new_id) if (new_id := new_ids.pop((row[0], row[1]), None)) is not None else None
        for row in rows
    ]


class DirectSqlite:
    """The SQLite hot path of `SqlStore` (see the module docstring for the why)."""

    def __init__(
        self,
        path: Path,
        *,
        display: str,
        writer_lock: asyncio.Lock,
        clock: Callable[[], datetime],
        logger: structlog.typing.FilteringBoundLogger,
        busy_timeout: float = 5.0,
        checkpoint_every: int = CHECKPOINT_EVERY,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
    ) -> None:
        self._path = path
        self._display = display
        self._writer_lock = writer_lock
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._log = logger
        self._conn: sqlite3.Connection | None = None
        self._commits = 0
        self._checkpoint_every = checkpoint_every
        self._wal_limit = wal_limit_bytes
        self._rewind_due = threading.Event()
        self._checkpointer = _Checkpointer(
            path, logger, wal_limit_bytes, self._commit_count, self._rewind_due
        )
        self._linked_sql: dict[int, str] = {}

    def open(self) -> None:
        if self._conn is not None:
            raise StoreError(f"store {self._display} is already open")
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=0, check_same_thread=True
            )
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"SQLite store {self._display}: WAL journal mode unavailable (got {mode!r});"
                    " the store needs a local filesystem that supports it"
                )
            for pragma in (
                "PRAGMA synchronous=NORMAL",
                "PRAGMA foreign_keys=ON",
                "PRAGMA wal_autocheckpoint=0",
                # Statement journals in memory (see the module docstring).
                "PRAGMA temp_store=MEMORY",
            ):
                conn.execute(pragma).fetchall()
        except (sqlite3.Error, StoreError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, StoreError):
                raise
            raise self._error("opening the store", exc) from exc
        conn.row_factory = sqlite3.Row
        self._conn = conn
        self._checkpointer = _Checkpointer(
            self._path, self._log, self._wal_limit, self._commit_count, self._rewind_due
        )
        # Opened now that SQLite has the file open; closed in close(), after the
        # connections (see `_Checkpointer.database_fd`). Without it the catch-up only
        # skips its syncs, and the loop's final step syncs instead.
        with contextlib.suppress(OSError):
            self._checkpointer.database_fd = os.open(self._path, os.O_RDONLY)
        self._checkpointer.start()

    async def close(self) -> None:
        """Close the connection and stop the checkpointer. Close this last of the process's
        connections to the file (`SqlStore.close` does): it closes a descriptor of it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            # Joining may wait for a checkpoint in progress: not on the loop.
            await asyncio.to_thread(self._checkpointer.stop)
            descriptor, self._checkpointer.database_fd = self._checkpointer.database_fd, None
            if descriptor is not None:
                os.close(descriptor)

    def _commit_count(self) -> int:
        """Write transactions so far (read by the checkpointer thread; an int read is atomic)."""
        return self._commits

    # -- running statements -----------------------------------------------------------------
    def _error(self, doing: str, exc: sqlite3.Error) -> StoreError:
        message = f"SQLite store {self._display}: {doing} failed: {type(exc).__name__}: {exc}"
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and not any(
            # Our bug, a foreign schema or a request too large: retrying will not help.
            permanent in text
            for permanent in ("syntax error", "no such", "too many")
        ):
            return StoreUnavailable(message)
        return StoreError(message)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self._display} is not open (call open() first)")
        return self._conn

    async def _run(self, doing: str, work: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run `work` (synchronous, on the loop), as one transaction if `write`; while the
        database is locked by another process, retry with back-off for `busy_timeout`."""
        deadline: float | None = None
        delay = 0.0005
        while True:
            conn = self._connection()
            try:
                if not write:
                    return work(conn)
                async with self._writer_lock:
                    return self._transaction(conn, work)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise self._error(doing, exc) from exc
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self._busy_timeout
                if now >= deadline:
                    raise self._error(doing, exc) from exc
                await asyncio.sleep(delay)
                # Short steps: another process (the CLI) holds the lock for milliseconds.
                delay = min(delay * 2, 0.01)
            except sqlite3.Error as exc:
                raise self._error(doing, exc) from exc

    def _transaction(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._rewind_due.is_set():
            self._finish_rewind(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self._commits += 1
        if self._commits % self._checkpoint_every == 0:
            self._checkpointer.request()
        return result

    def _finish_rewind(self, conn: sqlite3.Connection) -> None:
        """The last step of a WAL rewind, on the loop, right before a write transaction:
        copy the few frames appended since the checkpointer caught up. With every frame
        copied, the write that follows starts the WAL again from its beginning. The loop
        is the only writer, so nothing can append meanwhile; on its own thread no GIL
        hand-off stands between the steps."""
        started = time.monotonic()
        checkpointer = self._checkpointer
        try:
            # Busy timeout zero: if another checkpoint is running (the thread's periodic
            # one), this answers busy at once; the flag stays and the next write retries.
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # Only the rewind is lost (the WAL keeps growing until the next try), never the
            # write that follows.
            self._rewind_due.clear()
            checkpointer.restart_failed(repr(exc), checkpointer.rewind_wal_bytes)
            return
        if busy:
            checkpointer.final_step_tries += 1
            return
        self._rewind_due.clear()
        if copied < frames:
            checkpointer.restart_failed(
                "a reader holds old WAL frames", checkpointer.rewind_wal_bytes, frames, copied
            )
            return
        self._log.info(
            "store.wal_restarted",
            wal_bytes_before=checkpointer.rewind_wal_bytes,
            catch_up_rounds=checkpointer.rewind_rounds,
            wal_frames=frames,
            loop_blocked_ms=round((time.monotonic() - started) * 1000, 2),
        )

    # -- reads ------------------------------------------------------------------------------
    async def ping(self) -> None:
        await self._run("ping", lambda conn: conn.execute("SELECT 1").fetchall(), write=False)

    async def linked(self, refs: Sequence[ObjectRef]) -> list[LinkRow]:
        if not refs:
            return []
        sql = self._linked_sql.get(len(refs))
        if sql is None:
            values = ", ".join("(?, ?, ?)" for _ in refs)
            sql = self._linked_sql[len(refs)] = (
                f"SELECT * FROM links WHERE (a_platform, a_kind, a_id) IN (VALUES {values})"
                f" OR (b_platform, b_kind, b_id) IN (VALUES {values}) ORDER BY id"
            )
        keys = [part for r in refs for part in (r.platform, r.kind, r.id)]
        rows = await self._run(
            "reading links", lambda conn: conn.execute(sql, keys + keys).fetchall(), write=False
        )
        return [
            link_row(
                {
                    **dict(zip(row.keys(), row, strict=True)),
                    "created_at": _decode_time(row["created_at"]),
                }
            )
            for row in rows
        ]

    async def find_echo(self, ref: ObjectRef, change: str, now: datetime) -> bool:
        params = (str(ref), change, encode_time(now))

        def work(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "SELECT 1 FROM echo_records WHERE ref = ? AND change = ? AND expires_at > ?"
                    " LIMIT 1",
                    params,
                ).fetchone()
                is not None
            )

        return await self._run("looking up echo records", work, write=False)

    async def _any_due(self, table: Literal["inbox", "outbox"], where: str, params: Any) -> bool:
        """Cheap read before a claim: most polls find nothing, and a claim would take the
        write lock for nothing."""
        sql = f"SELECT 1 FROM {table} WHERE {where} LIMIT 1"
        return await self._run(
            "looking for due work",
            lambda conn: conn.execute(sql, params).fetchone() is not None,
            write=False,
        )

    # -- inbox ------------------------------------------------------------------------------
    async def add_inbox(
        self, events: Sequence[NewInboxEvent], owner: str | None, lease_seconds: float
    ) -> list[InboxId | None]:
        now = self._clock()
        now_text = encode_time(now)
        lease_expires = (
            encode_time(now + timedelta(seconds=lease_seconds)) if owner is not None else None
        )
        claimed = (1 if owner is not None else 0, owner, lease_expires, None, None)
        rows = [
            (
                e.source,
                e.delivery_id,
                e.event_type,
                e.body,
                encode_time(e.received_at),
                "pending" if e.settled_trace is None else "processed",
                now_text,
                *(
                    claimed
                    if e.settled_trace is None
                    else (0, None, None, now_text, e.settled_trace.text)
                ),
            )
            for e in events
        ]

        return await self._run(
            "storing webhook deliveries", lambda conn: _insert_inbox(conn, rows), write=True
        )

    async def claim_inbox(self, owner: str, limit: int, lease_seconds: float) -> list[InboxRow]:
        now = self._clock()
        params = {
            "now": encode_time(now),
            "owner": owner,
            "expires": encode_time(now + timedelta(seconds=lease_seconds)),
            "limit": limit,
        }
        if not await self._any_due("inbox", _INBOX_DUE, params):
            return []
        sql = (
            "UPDATE inbox SET lease_owner = :owner, lease_expires_at = :expires,"
            f" attempts = attempts + 1 WHERE id IN (SELECT id FROM inbox WHERE {_INBOX_DUE}"
            " ORDER BY id LIMIT :limit) RETURNING *"
        )
        rows = await self._run(
            "claiming inbox events",
            lambda conn: conn.execute(sql, params).fetchall(),
            write=True,
        )
        return sorted((_inbox(r) for r in rows), key=lambda r: r.id)

    async def complete_inboxes(
        self, completions: Sequence[InboxCompletion]
    ) -> list[list[OutboxRow] | StoreError]:
        now = self._clock()
        now_text = encode_time(now)

        def work(conn: sqlite3.Connection) -> list[list[OutboxRow] | StoreError]:
            results: list[list[OutboxRow] | StoreError] = []
            for completion in completions:
                # A savepoint each: one event's failure leaves the others' work in place.
                conn.execute("SAVEPOINT completion")
                try:
                    results.append(_complete_one(conn, completion, now, now_text))
                except (
                    StoreError,
                    sqlite3.IntegrityError,
                    sqlite3.InterfaceError,
                    sqlite3.ProgrammingError,
                    OverflowError,
                    ValueError,
                ) as exc:
                    # This event's rows cannot be stored; a database failure (disk, lock)
                    # is an OperationalError and fails the whole batch instead.
                    conn.execute("ROLLBACK TO completion")
                    results.append(
                        exc
                        if isinstance(exc, StoreError)
                        else StoreError(
                            f"SQLite store {self._display}: recording inbox event"
                            f" {completion.inbox_id} failed: {type(exc).__name__}: {exc}"
                        )
                    )
                conn.execute("RELEASE completion")
            return results

        return await self._run("recording the dispatch of events", work, write=True)

    async def fail_inbox(self, inbox_id: InboxId, error: str, retry_at: datetime | None) -> None:
        now = encode_time(self._clock())
        if retry_at is None:
            sql = (
                "UPDATE inbox SET error = ?, lease_owner = NULL, lease_expires_at = NULL,"
                " state = 'failed', processed_at = ? WHERE id = ? AND state = 'pending'"
            )
            params: tuple[Any, ...] = (error, now, inbox_id)
        else:
            sql = (
                "UPDATE inbox SET error = ?, lease_owner = NULL, lease_expires_at = NULL,"
                " next_attempt_at = ? WHERE id = ? AND state = 'pending'"
            )
            params = (error, encode_time(retry_at), inbox_id)
        # `state = 'pending'`: never turn a row someone already processed back into work.
        await self._run(
            "recording a dispatch failure", lambda conn: conn.execute(sql, params), write=True
        )

    # -- outbox -----------------------------------------------------------------------------
    async def claim_outbox(
        self, owner: str, limit: int, lease_seconds: float, platform: Platform | None
    ) -> list[OutboxRow]:
        now = self._clock()
        params: dict[str, Any] = {
            "now": encode_time(now),
            "owner": owner,
            "expires": encode_time(now + timedelta(seconds=lease_seconds)),
            "limit": limit,
            "platform": platform,
            "lost": LEASE_LOST,
        }
        due = _OUTBOX_DUE + (" AND platform = :platform" if platform is not None else "")
        if not await self._any_due("outbox", due, params):
            return []
        # A row taken over from an expired lease counts as an attempt (see `LEASE_LOST`).
        sql = (
            "UPDATE outbox SET state = 'claimed', lease_owner = :owner,"
            " lease_expires_at = :expires, updated_at = :now,"
            " attempts = attempts + (state = 'claimed'),"
            " last_error = CASE WHEN state = 'claimed' THEN :lost || lease_owner"
            " ELSE last_error END"
            f" WHERE id IN (SELECT id FROM outbox WHERE {due} ORDER BY id LIMIT :limit)"
            " RETURNING *"
        )
        rows = await self._run(
            "claiming actions", lambda conn: conn.execute(sql, params).fetchall(), write=True
        )
        return sorted((_outbox(r) for r in rows), key=lambda r: r.id)

    async def finish_actions(self, outcomes: Sequence[ActionOutcome]) -> list[bool]:
        now = self._clock()
        now_text = encode_time(now)

        def work(conn: sqlite3.Connection) -> list[bool]:
            recorded: list[bool] = []
            for outcome in outcomes:
                updated = conn.execute(
                    "UPDATE outbox SET state = ?, result = ?, finished_at = ?, updated_at = ?,"
                    f" lease_owner = NULL, lease_expires_at = NULL WHERE {_HELD}",
                    (
                        outcome.state,
                        _encode_json(thaw(outcome.result)),
                        now_text,
                        now_text,
                        outcome.action_id,
                        outcome.owner,
                    ),
                )
                recorded.append(updated.rowcount == 1)
                if updated.rowcount != 1:
                    continue
                _apply_links(conn, outcome.link_changes, now)
                if outcome.echoes:
                    conn.executemany(
                        "INSERT INTO echo_records (ref, change, expires_at) VALUES (?, ?, ?)",
                        [(str(e.ref), e.change, encode_time(e.expires_at)) for e in outcome.echoes],
                    )
            return recorded

        return await self._run("recording actions' outcomes", work, write=True)

    async def release_action(
        self,
        action_id: ActionId,
        owner: str,
        doing: str,
        *,
        state: Literal["pending", "dead"],
        error: str,
        attempts_added: int,
        next_attempt_at: datetime | None = None,
        finished: bool = False,
    ) -> bool:
        """A held action back to `state` (retry: pending and due at `next_attempt_at`;
        dead letter: finished), releasing the lease."""
        now = self._clock()
        now_text = encode_time(now)
        sets = [
            "state = ?",
            "last_error = ?",
            "attempts = attempts + ?",
            "updated_at = ?",
            "lease_owner = NULL",
            "lease_expires_at = NULL",
        ]
        params: list[Any] = [state, error, attempts_added, now_text]
        if next_attempt_at is not None:
            sets.append("next_attempt_at = ?")
            params.append(encode_time(next_attempt_at))
        if finished:
            sets.append("finished_at = ?")
            params.append(now_text)
        sql = f"UPDATE outbox SET {', '.join(sets)} WHERE {_HELD}"
        params += [action_id, owner]
        updated = await self._run(doing, lambda conn: conn.execute(sql, params), write=True)
        return bool(updated.rowcount == 1)


def _outbox_params(
    values: Mapping[str, Any],
    now_text: str,
    received_at_text: str | None,
    lease: tuple[str, str | None, str] | None,
) -> tuple[Any, ...]:
    encoded = {
        **values,
        "params": _encode_json(values["params"]),
        "result_links": _encode_json(values["result_links"]),
        "next_attempt_at": now_text,
        "created_at": now_text,
        "updated_at": now_text,
        "event_received_at": received_at_text,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if lease is not None:
        encoded["state"], encoded["lease_owner"], encoded["lease_expires_at"] = lease
    return tuple(encoded[column] for column in _OUTBOX_COLUMNS)


def _apply_links(conn: sqlite3.Connection, changes: Sequence[LinkChange], now: datetime) -> None:
    """In the order given, like `SqlStore`'s: a remove then an add leaves the link."""
    for change in changes:
        if change.op == "add":
            values = link_values(change.a, change.b, change.created_by, now)
            values["created_at"] = encode_time(now)
            conn.execute(_LINK_INSERT, tuple(values[column] for column in _LINK_COLUMNS))
        else:
            first, second = canonical_pair(change.a, change.b)
            conn.execute(
                _LINK_DELETE,
                (first.platform, first.kind, first.id, second.platform, second.kind, second.id),
            )


def _complete_one(
    conn: sqlite3.Connection, completion: InboxCompletion, now: datetime, now_text: str
) -> list[OutboxRow]:
    inbox_id = completion.inbox_id
    trace_text = _encode_json(thaw(completion.trace))
    lease = (
        (
            "claimed",
            completion.owner,
            encode_time(now + timedelta(seconds=completion.lease_seconds)),
        )
        if completion.owner is not None
        else None
    )
    found = conn.execute("SELECT received_at FROM inbox WHERE id = ?", (inbox_id,)).fetchone()
    if found is None:
        raise StoreError(f"inbox event {inbox_id} does not exist")
    created: list[OutboxRow] = []
    if completion.actions:
        keys = [a.idempotency_key for a in completion.actions]
        existing = {
            row[0]
            for row in conn.execute(
                "SELECT idempotency_key FROM outbox WHERE idempotency_key IN"
                f" ({', '.join('?' for _ in keys)})",
                keys,
            )
        }
        for action in completion.actions:  # the first of repeated keys wins
            if action.idempotency_key in existing:
                continue
            existing.add(action.idempotency_key)
            values = action_values(action, now, inbox_id, None)
            row = _outbox_params(values, now_text, found[0], lease)
            created.append(_outbox(conn.execute(_OUTBOX_INSERT, row).fetchone()))
    _apply_links(conn, completion.link_changes, now)
    completed = conn.execute(
        "UPDATE inbox SET state = 'processed', processed_at = ?, trace = ?,"
        " error = NULL, lease_owner = NULL, lease_expires_at = NULL"
        " WHERE id = ? AND state = 'pending'",
        (now_text, trace_text, inbox_id),
    )
    if completed.rowcount != 1:
        # Another dispatcher completed it first (our lease ran out under us): this event's
        # savepoint rolls back, so nothing is recorded twice.
        raise StoreError(f"inbox event {inbox_id} was already processed elsewhere")
    return sorted(created, key=lambda r: r.id)
