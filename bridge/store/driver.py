"""What a database driver gives the store: statements written once, run on either backend.

Every statement is an `Sql`: text with ``:name`` parameters and a few ``{fragment}``
placeholders for the places where SQLite and PostgreSQL truly differ (`DIALECTS`). A
driver renders each statement once into its own form (SQLite keeps ``:name``; asyncpg
wants ``$1``) and caches it. The store (`bridge.store.store`) holds the semantics; the two
drivers (`bridge.store.sqlite`, `bridge.store.postgres`) only run statements, translate
errors and own their connections.

Values cross the boundary in one form on both backends: timezone-aware UTC datetimes,
JSON as text (the store encodes and decodes it), bytes for blobs. Result rows are plain
dicts keyed by column name.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

T = TypeVar("T")
Row = dict[str, Any]
Params = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Sql:
    """One statement: text with ``:name`` parameters and `DIALECTS` fragments."""

    text: str


DIALECTS: Final[Mapping[str, Mapping[str, str]]] = {
    # Table expressions over a JSON array parameter, one row per element in `value`:
    # `{json_values}` gives text elements, `{json_rows}` JSON elements (read `value ->> 0`).
    "sqlite": {
        "skip_locked": "",
        "json_values": "json_each",
        "json_rows": "json_each",
        "id": "INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT",
        "id_plain": "INTEGER NOT NULL PRIMARY KEY",
        "ref_id": "INTEGER",
        "ts": "DATETIME",
        "json": "JSON",
        "blob": "BLOB",
        # One writer at a time already: nothing to lock (the statement only reads `key`).
        "object_lock": "SELECT :key AS locked",
        # A table stored in its primary key's B-tree: one B-tree less to write per row.
        "without_rowid": " WITHOUT ROWID",
        "greatest": "max",
        # The planner would rather sort every due row than walk a partial index in
        # order (10 ms against 20 us per claim with 10,000 actions queued): insist.
        "turn_index": " INDEXED BY ix_outbox_turn",
        "waiting_index": " INDEXED BY ix_outbox_waiting",
        # An UPDATE of rows picked by ID: by rowid, not by scanning an index of its other
        # conditions (which SQLite chose, reading every due row to update one).
        "by_id": " NOT INDEXED",
    },
    # Rows another replica is claiming are skipped, never waited for or claimed twice.
    "postgresql": {
        "skip_locked": " FOR UPDATE SKIP LOCKED",
        "json_values": "jsonb_array_elements_text",
        "json_rows": "jsonb_array_elements",
        "id": "BIGSERIAL PRIMARY KEY",
        "id_plain": "BIGSERIAL PRIMARY KEY",
        "ref_id": "BIGINT",
        "ts": "TIMESTAMP WITH TIME ZONE",
        "json": "JSONB",
        "blob": "BYTEA",
        "object_lock": "SELECT pg_advisory_xact_lock(hashtext(:key))",
        "without_rowid": "",
        "greatest": "GREATEST",
        "turn_index": "",
        "waiting_index": "",
        "by_id": "",
    },
}
_PARAM: Final = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def render(sql: Sql, backend: Literal["sqlite", "postgresql"]) -> str:
    """`sql` with its dialect fragments filled in (parameters left as ``:name``)."""
    return sql.text.format_map(DIALECTS[backend])


def numbered(text: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` parameters as ``$1``, ``$2``, ... and the names in their order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAM.sub(number, text), tuple(names)


class Tx(Protocol):
    """Statements inside one transaction."""

    async def execute(self, sql: Sql, params: Params | None = None) -> int:
        """Run a statement; the number of rows it changed."""

    async def fetch(self, sql: Sql, params: Params | None = None) -> list[Row]: ...


class Driver(Protocol):
    @property
    def backend(self) -> Literal["sqlite", "postgresql"]: ...

    async def open(self) -> None:
        """Connect. Raises `StoreError` (`StoreUnavailable` when it may work later)."""

    async def close(self) -> None: ...

    async def fetch(self, sql: Sql, params: Params | None = None) -> list[Row]:
        """One read outside any write transaction."""

    async def transact(self, doing: str, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work` in one write transaction: committed if it returns, rolled back if it
        raises. Statement failures come out as `StoreError`; those that may pass on a
        retry (connection lost, database locked, disk full) as `StoreUnavailable`."""

    async def try_lead(self) -> bool:
        """True while this process is the leader (see `Store.try_acquire_leadership`)."""

    async def release_lead(self) -> None: ...

    async def notify(self) -> None: ...

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever any process notifies; runs until cancelled."""
