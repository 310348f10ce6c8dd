"""`bridge db backup PATH`: a consistent copy of the SQLite store, taken while it runs.

SQLite's online backup API (`sqlite3.Connection.backup`) copies the database page by page
inside one read transaction: in WAL mode writers carry on meanwhile, and the copy is the
database as of one instant, including what only the WAL holds so far (a plain `cp` of the
file would miss that, or copy it half-written). The copy is written beside its destination
under a temporary name, checked with `PRAGMA quick_check`, switched to a rollback journal
(one self-contained file) and only then renamed into place, so a failed backup never leaves
a truncated file under the final name.

PostgreSQL stores are backed up with PostgreSQL's own tools (pg_dump); this command refuses
them with a message that says so.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bridge.store.urls import parse_store_url

PG_DUMP_HINT = (
    "the store is PostgreSQL: back it up with pg_dump, e.g."
    ' pg_dump --format=custom --file=bridge.dump "$BRIDGE_STORE__URL"'
    " (restore with pg_restore); bridge db backup copies SQLite stores"
)


class BackupError(Exception):
    """The backup cannot be made; the message says why and what to do."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Backup:
    path: Path
    bytes: int
    pages: int


def destination_for(target: Path, now: datetime | None = None) -> Path:
    """`target` itself, or a timestamped file in it when it is a directory."""
    if target.is_dir():
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        return target / f"bridge-{stamp}.db"
    return target


def backup_store(store_url: str, target: Path) -> Backup:
    """Copy the SQLite store named by `store_url` to `target` (a file or a directory)."""
    try:
        parsed = parse_store_url(store_url)
    except Exception as exc:  # the store's own error type; its message names the fix
        raise BackupError(str(exc), usage=True) from None
    if parsed.backend != "sqlite" or parsed.sqlite_path is None:
        raise BackupError(PG_DUMP_HINT, usage=True)
    source = parsed.sqlite_path
    if not source.is_file():
        raise BackupError(f"no SQLite store at {source} (store.url {parsed.display})")
    destination = destination_for(target)
    if destination.exists():
        raise BackupError(f"{destination} exists; choose a new file or a directory")
    if not destination.parent.is_dir():
        raise BackupError(f"{destination.parent} is not a directory")
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        pages = _copy(source, partial)
        os.replace(partial, destination)
    except (sqlite3.Error, OSError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise BackupError(f"backup of {source} to {destination} failed: {exc}") from None
    return Backup(destination, destination.stat().st_size, pages)


def _copy(source: Path, destination: Path) -> int:
    # A generous busy timeout: the running bridge may hold a write lock for a moment.
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(destination)
        try:
            src.backup(dst)
            checked = dst.execute("PRAGMA quick_check").fetchone()
            if checked is None or checked[0] != "ok":
                raise sqlite3.DatabaseError(f"the copy fails quick_check: {checked}")
            dst.execute("PRAGMA journal_mode=DELETE")
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
        finally:
            dst.close()
    finally:
        src.close()
    with open(destination, "rb") as handle:
        os.fsync(handle.fileno())
    return pages
