"""`DirectPostgres`: PostgreSQL's per-webhook statements on a plain asyncpg pool.

Why beside SQLAlchemy: every event costs two or three small indexed reads (links around its
objects, the echo guard), and through SQLAlchemy's asyncpg adaptation each cost about
0.6 ms of CPU and latency (greenlet switch, compilation cache walk, pool reset) against
about 0.3 ms for the round trip itself, measured by `bench/store_bench.py`. Storing a
batch of webhooks is one prepared statement here too (SQLAlchemy compiles its ON CONFLICT
insert anew each time). The other writes stay on SQLAlchemy: they are group-committed and
rarer, so its overhead is paid once per batch.

The pool never resets connections on release (asyncpg's default runs a reset query, a round
trip each time): its connections are only ever used for these single-statement autocommit
transactions, never for session state (advisory locks and LISTEN have their own dedicated
connections).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from bridge.events import InboxId, ObjectRef
from bridge.store.base import LinkRow, NewInboxEvent, StoreError, StoreUnavailable
from bridge.store.rows import link_row
from bridge.store.urls import StoreUrl, is_store_failure, translate_error

_INBOX_INSERT: Final = (
    "INSERT INTO inbox (source, delivery_id, event_type, body, received_at, state,"
    " next_attempt_at, attempts, lease_owner, lease_expires_at, processed_at, trace)"
    # A row with a trace is settled (needs no dispatch): processed now, never claimed.
    " SELECT s, d, t, b, r, CASE WHEN tr IS NULL THEN 'pending' ELSE 'processed' END,"
    " $7::timestamptz, CASE WHEN tr IS NULL THEN $8::integer ELSE 0 END,"
    " CASE WHEN tr IS NULL THEN $9::text END, CASE WHEN tr IS NULL THEN $10::timestamptz END,"
    " CASE WHEN tr IS NOT NULL THEN $7::timestamptz END, tr::jsonb"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::timestamptz[],"
    " $6::text[])"
    # In key order: two replicas inserting overlapping batches lock the same keys in the same
    # order instead of deadlocking; n keeps the first of a key repeated in the batch first.
    " WITH ORDINALITY AS batch (s, d, t, b, r, tr, n) ORDER BY s, d, n"
    " ON CONFLICT (source, delivery_id) DO NOTHING RETURNING id, source, delivery_id"
)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise StoreError(f"naive datetime {value.isoformat()} given to the store; use UTC")
    return value


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset (see the module docstring)."""


class DirectPostgres:
    def __init__(self, url: StoreUrl, *, schema: str | None, pool_size: int) -> None:
        self._url = url
        self._schema = schema
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._linked_sql: dict[int, str] = {}

    async def open(self) -> None:
        settings = {"application_name": "bridge"}
        if self._schema is not None:
            settings["search_path"] = self._schema
        try:
            self._pool = await asyncpg.create_pool(
                self._url.asyncpg_dsn(),
                min_size=1,
                max_size=self._pool_size,
                reset=_keep_session,
                timeout=10,
                server_settings=settings,
            )
        except Exception as exc:
            if is_store_failure(exc) or isinstance(exc, asyncpg.PostgresError):
                raise translate_error(self._url, exc, "opening the store") from exc
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:
                pool.terminate()

    async def _fetch(
        self, doing: str, sql: str, *args: Any, retry: bool = True
    ) -> list[asyncpg.Record]:
        """One statement in its own transaction; with `retry` (reads), run again once on a
        fresh connection if its pooled one died (the server restarted or dropped the
        session). Writes are not retried: whether a lost one committed is unknown, and the
        caller's own retry (the sender's, after a 503) is the one that is safe."""
        for attempt in (1, 2) if retry else (2,):
            pool = self._pool
            if pool is None:
                raise StoreError(f"store {self._url.display} is not open (call open() first)")
            try:
                async with pool.acquire() as conn:
                    try:
                        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                    except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError):
                        # Its session is gone or its protocol state is unknown: never hand
                        # it out again (the pool replaces a closed connection on release).
                        conn.terminate()
                        raise
                    return rows
            except Exception as exc:
                if isinstance(exc, asyncpg.InternalClientError):
                    error: StoreError = StoreUnavailable(
                        f"PostgreSQL store {self._url.display}: {doing} failed:"
                        f" connection lost ({exc})"
                    )
                elif is_store_failure(exc) or isinstance(exc, asyncpg.PostgresError):
                    error = translate_error(self._url, exc, doing)
                else:
                    raise
                if attempt == 2 or not isinstance(error, StoreUnavailable):
                    raise error from exc
        raise AssertionError("unreachable")

    async def add_inbox(
        self,
        events: Sequence[NewInboxEvent],
        owner: str | None,
        lease_seconds: float,
        now: datetime,
    ) -> list[InboxId | None]:
        """`Store.add_inbox` in one statement (one round trip and commit per batch)."""
        lease_expires = now + timedelta(seconds=lease_seconds) if owner is not None else None
        rows = await self._fetch(
            "storing webhook deliveries",
            _INBOX_INSERT,
            [e.source for e in events],
            [e.delivery_id for e in events],
            [e.event_type for e in events],
            [e.body for e in events],
            [_aware(e.received_at) for e in events],
            [None if e.settled_trace is None else e.settled_trace.text for e in events],
            _aware(now),
            1 if owner is not None else 0,
            owner,
            lease_expires,
            retry=False,
        )
        created = {(r["source"], r["delivery_id"]): InboxId(r["id"]) for r in rows}
        # Per event its new ID; a key repeated within the batch: the first occurrence wins.
        return [created.pop((e.source, e.delivery_id), None) for e in events]

    async def ping(self) -> None:
        await self._fetch("ping", "SELECT 1")

    async def linked(self, refs: Sequence[ObjectRef]) -> list[LinkRow]:
        if not refs:
            return []
        sql = self._linked_sql.get(len(refs))
        if sql is None:
            # An explicit row list per size (not unnest): the planner turns it into index
            # scans on both sides for every plan it may cache.
            values = ", ".join(
                f"(${3 * i + 1}, ${3 * i + 2}, ${3 * i + 3})" for i in range(len(refs))
            )
            sql = self._linked_sql[len(refs)] = (
                f"SELECT * FROM links WHERE (a_platform, a_kind, a_id) IN ({values})"
                f" OR (b_platform, b_kind, b_id) IN ({values}) ORDER BY id"
            )
        keys = [part for r in refs for part in (r.platform, r.kind, r.id)]
        return [link_row(row) for row in await self._fetch("reading links", sql, *keys)]

    async def find_echo(self, ref: ObjectRef, change: str, now: datetime) -> bool:
        rows = await self._fetch(
            "looking up echo records",
            "SELECT 1 FROM echo_records WHERE ref = $1 AND change = $2 AND expires_at > $3 LIMIT 1",
            str(ref),
            change,
            now,
        )
        return bool(rows)
