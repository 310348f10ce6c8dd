"""`SqlStore`: the `Store` protocol on SQLAlchemy 2 Core (async), for SQLite and PostgreSQL.

One code path for both backends; where they differ it is said next to the difference:

- Claims are one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
  RETURNING ...``. PostgreSQL skips rows another replica is claiming; SQLite renders no
  ``FOR UPDATE`` and relies on a single writer (below).
- SQLite allows one writer at a time. Write transactions here take an in-process
  `asyncio.Lock` and start with ``BEGIN IMMEDIATE``: concurrent claimers in one process
  queue up instead of failing with "database is locked", and a second process (the CLI)
  waits up to the busy timeout. Reads need no lock (WAL).
- Duplicate-tolerant inserts use ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, which both
  backends support (SQLite >= 3.35).

Times come from the injected clock (UTC) rather than the database's, so both backends and
the tests agree on "now". Dead letters are outbox rows in state ``dead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import structlog
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.events import (
    Action,
    ActionId,
    DeliveryId,
    InboxId,
    LinkChange,
    ObjectRef,
    Platform,
    freeze,
    thaw,
)
from bridge.store.base import (
    LEASE_LOST,
    ActionOutcome,
    EchoRecord,
    InboxCompletion,
    InboxRow,
    LinkFilter,
    LinkRow,
    NewInboxEvent,
    OutboxRow,
    OutboxState,
    PruneResult,
    StoreCounts,
    StoreError,
    StoreUnavailable,
)
from bridge.store.migrate import upgrade_engine
from bridge.store.postgres_direct import DirectPostgres
from bridge.store.rows import (
    action_values,
    canonical_pair,
    inbox_row,
    link_kind,
    link_row,
    link_values,
    outbox_row,
)
from bridge.store.sqlite_direct import DirectSqlite
from bridge.store.tables import OUTBOX_STATES, echo_records, inbox, links, outbox
from bridge.store.urls import (
    check_schema,
    create_store_engine,
    is_store_failure,
    lock_keys,
    parse_store_url,
    translate_error,
)

WORK_CHANNEL = "bridge_work"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# Hot-path statements built once; their parameters are bound per call.
_PING = text("SELECT 1")
_LINK_KEYS: BindParameter[Any] = bindparam("keys", expanding=True)
_LINKED = (
    select(links)
    .where(
        or_(
            tuple_(links.c.a_platform, links.c.a_kind, links.c.a_id).in_(_LINK_KEYS),
            tuple_(links.c.b_platform, links.c.b_kind, links.c.b_id).in_(_LINK_KEYS),
        )
    )
    .order_by(links.c.id)
)
_EXISTING_KEYS = select(outbox.c.idempotency_key).where(
    outbox.c.idempotency_key.in_(bindparam("keys", expanding=True))
)
_OUTBOX_INSERT = outbox.insert().returning(*outbox.c)
_FIND_ECHO = (
    select(literal(1))
    .select_from(echo_records)
    .where(
        echo_records.c.ref == bindparam("ref"),
        echo_records.c.change == bindparam("change"),
        echo_records.c.expires_at > bindparam("now"),
    )
    .limit(1)
)


class SqlStore:
    """The bridge's store on SQLite (embedded default) or PostgreSQL (several replicas).

    `url` is what the user configured (``sqlite:///data/bridge.db``,
    ``postgresql://user@host:5432/db``). `schema` (PostgreSQL only) puts every table in that
    schema, created if missing. `clock` returns timezone-aware UTC "now" (tests inject one).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 5,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._url = parse_store_url(url)
        self.backend: Literal["sqlite", "postgresql"] = self._url.backend
        if schema is not None and self.backend != "postgresql":
            raise StoreError("a store schema applies to PostgreSQL only")
        self._schema = check_schema(schema)
        self._pool_size = pool_size
        self._log = (logger or structlog.get_logger(__name__)).bind(
            store_backend=self.backend, store=self._url.display
        )
        self._clock = clock or _utcnow
        self._engine: AsyncEngine | None = None
        # SQLite: the hot statements bypass SQLAlchemy (see `bridge.store.sqlite_direct`).
        self._direct: DirectSqlite | None = None
        # Both backends: per-event reads (on PostgreSQL also storing webhooks) skip SQLAlchemy.
        self._fast_path: DirectSqlite | DirectPostgres | None = None
        self.revision: str | None = None
        # SQLite has one writer; serialising writes in-process is honest and cheap.
        self._sqlite_writer = asyncio.Lock()
        self._read_options: dict[str, Any] = (
            {"bridge_read": True} if self.backend == "sqlite" else {"isolation_level": "AUTOCOMMIT"}
        )
        self._leader_guard = asyncio.Lock()
        self._leader_conn: asyncpg.Connection | None = None
        self._listen_conn: asyncpg.Connection | None = None
        self._work_callbacks: list[Callable[[], None]] = []

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the SQLite directory, connect, migrate to head (PostgreSQL: under a lock)."""
        if self._engine is not None:
            return
        path = self._url.sqlite_path
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"SQLite store {self._url.display}: cannot create directory "
                    f"{path.parent}: {exc.strerror or exc}"
                ) from exc
            # Opened once here first, synchronously, so that a file SQLite cannot open fails
            # before the async driver is involved: aiosqlite's failed connect queues the stop
            # of its worker thread without waiting for it, and that thread then calls back
            # into a loop that may be closed by then (a traceback from a thread at exit).
            try:
                sqlite3.connect(path, timeout=0).close()
            except sqlite3.Error as exc:
                raise translate_error(self._url, exc, "opening the store") from exc
        engine = create_store_engine(self._url, schema=self._schema, pool_size=self._pool_size)
        try:
            self.revision = await upgrade_engine(engine, self._url, self._schema)
        except BaseException as exc:
            await engine.dispose()
            if isinstance(exc, Exception) and is_store_failure(exc):
                raise translate_error(self._url, exc, "opening the store") from exc
            raise
        if path is not None:
            direct = DirectSqlite(
                path,
                display=self._url.display,
                writer_lock=self._sqlite_writer,
                clock=self._clock,
                logger=self._log,
            )
            try:
                direct.open()
            except BaseException:
                await engine.dispose()
                raise
            self._direct = self._fast_path = direct
        else:
            reads = DirectPostgres(self._url, schema=self._schema, pool_size=self._pool_size)
            try:
                await reads.open()
            except BaseException:
                await engine.dispose()
                raise
            self._fast_path = reads
        self._engine = engine
        self._log.info("store.opened", revision=self.revision)

    async def close(self) -> None:
        await self.release_leadership()
        listen_conn, self._listen_conn = self._listen_conn, None
        self._work_callbacks.clear()
        if listen_conn is not None:
            await _close_quietly(listen_conn)
        reads, self._fast_path, self._direct = self._fast_path, None, None
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()
        # Last: on SQLite it closes a descriptor of the database file, which drops every
        # POSIX lock this process holds on it (see `DirectSqlite.close`).
        if reads is not None:
            await reads.close()
        if engine is not None:
            self._log.info("store.closed")

    async def ping(self) -> None:
        if self._fast_path is not None:
            return await self._fast_path.ping()
        await self._read("ping", _PING)

    # -- transactions -----------------------------------------------------------------------
    def _require_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError(f"store {self._url.display} is not open (call open() first)")
        return self._engine

    @contextlib.asynccontextmanager
    async def _reading(self, doing: str) -> AsyncIterator[AsyncConnection]:
        """A connection for reads: no transaction around them (see `create_store_engine`)."""
        engine = self._require_engine()
        try:
            async with engine.connect() as conn:
                yield await conn.execution_options(**self._read_options)
        except Exception as exc:
            if is_store_failure(exc):
                raise translate_error(self._url, exc, doing) from exc
            raise

    async def _read(
        self, doing: str, statement: Any, params: Mapping[str, Any] | None = None
    ) -> Any:
        """Run one read, retried once if the pooled connection turned out to be dead (the
        database restarted since it was opened; the pool has invalidated it by now)."""
        for attempt in (1, 2):
            try:
                async with self._reading(doing) as conn:
                    return await conn.execute(statement, params or {})
            except StoreUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _writing(self, doing: str) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on normal exit, rolled back on any exception."""
        engine = self._require_engine()
        guard: contextlib.AbstractAsyncContextManager[Any] = (
            self._sqlite_writer if self.backend == "sqlite" else contextlib.nullcontext()
        )
        try:
            async with guard, engine.connect() as conn:
                if self.backend == "sqlite":
                    conn = await conn.execution_options(bridge_write=True)
                async with conn.begin():
                    yield conn
        except Exception as exc:
            if is_store_failure(exc):
                raise translate_error(self._url, exc, doing) from exc
            raise

    def _insert(self, table: Any) -> pg_dialect.Insert | sqlite_dialect.Insert:
        if self.backend == "postgresql":
            return pg_dialect.insert(table)
        return sqlite_dialect.insert(table)

    # -- inbox ----------------------------------------------------------------------------
    async def add_inbox(
        self,
        events: Sequence[NewInboxEvent],
        owner: str | None = None,
        lease_seconds: float = 60.0,
    ) -> list[InboxId | None]:
        if not events:
            return []
        # Both backends' hot path (one statement per event on the loop's SQLite connection,
        # one unnest INSERT on PostgreSQL); there is no SQLAlchemy twin to keep in step.
        if self._direct is not None:
            return await self._direct.add_inbox(events, owner, lease_seconds)
        if isinstance(self._fast_path, DirectPostgres):
            return await self._fast_path.add_inbox(events, owner, lease_seconds, self._clock())
        raise StoreError(f"store {self._url.display} is not open (call open() first)")

    async def claim_inbox(self, owner: str, limit: int, lease_seconds: float) -> list[InboxRow]:
        """Claim due pending rows in id order; each claim counts one attempt, so an event
        that crashes the dispatcher every time is still seen to be failing."""
        if limit <= 0:
            return []
        if self._direct is not None:
            return await self._direct.claim_inbox(owner, limit, lease_seconds)
        now = self._clock()
        due = and_(
            inbox.c.state == "pending",
            inbox.c.next_attempt_at <= now,
            or_(inbox.c.lease_expires_at.is_(None), inbox.c.lease_expires_at <= now),
        )
        pick = (
            select(inbox.c.id)
            .where(due)
            .order_by(inbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("picked")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        stmt = (
            update(inbox)
            .where(inbox.c.id.in_(select(pick.c.id)), due)
            .values(
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=inbox.c.attempts + 1,
            )
            .returning(*inbox.c)
        )
        if not await self._any(inbox, due, "looking for pending events"):
            return []
        async with self._writing("claiming inbox events") as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return sorted((inbox_row(r) for r in rows), key=lambda r: r.id)

    async def renew_inbox(
        self, owner: str, inbox_ids: Sequence[InboxId], lease_seconds: float
    ) -> list[InboxId]:
        held = and_(inbox.c.state == "pending", inbox.c.lease_owner == owner)
        renewed = await self._renew(inbox, held, inbox_ids, lease_seconds, "inbox events")
        return [InboxId(inbox_id) for inbox_id in renewed]

    async def complete_inbox(
        self,
        inbox_id: InboxId,
        actions: Sequence[Action],
        link_changes: Sequence[LinkChange],
        trace: Mapping[str, Any],
    ) -> list[ActionId]:
        rows = await self._complete_single(InboxCompletion(inbox_id, actions, link_changes, trace))
        return sorted(row.id for row in rows)

    async def complete_inbox_claiming(
        self,
        inbox_id: InboxId,
        actions: Sequence[Action],
        link_changes: Sequence[LinkChange],
        trace: Mapping[str, Any],
        owner: str,
        lease_seconds: float,
    ) -> list[OutboxRow]:
        return await self._complete_single(
            InboxCompletion(inbox_id, actions, link_changes, trace, owner, lease_seconds)
        )

    async def _complete_single(self, completion: InboxCompletion) -> list[OutboxRow]:
        (result,) = await self.complete_inboxes([completion])
        if isinstance(result, StoreError):
            raise result
        return result

    async def complete_inboxes(
        self, completions: Sequence[InboxCompletion]
    ) -> list[list[OutboxRow] | StoreError]:
        if not completions:
            return []
        if self._direct is not None:
            return await self._direct.complete_inboxes(completions)
        now = self._clock()
        results: list[list[OutboxRow] | StoreError] = []
        async with self._writing("recording the dispatch of events") as conn:
            for completion in completions:
                try:
                    # A savepoint each: one event's failure leaves the others' work in place.
                    async with conn.begin_nested():
                        results.append(await self._complete_one(conn, completion, now))
                except sa_exc.StatementError as exc:
                    # This event's rows cannot be stored (a replica won the race on an
                    # idempotency key, a value is not serialisable); a lost connection
                    # fails the whole batch instead.
                    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
                        raise
                    results.append(
                        translate_error(
                            self._url, exc, f"recording inbox event {completion.inbox_id}"
                        )
                    )
                except StoreError as exc:
                    results.append(exc)
        return results

    async def _complete_one(
        self, conn: AsyncConnection, completion: InboxCompletion, now: datetime
    ) -> list[OutboxRow]:
        inbox_id, actions, owner = completion.inbox_id, completion.actions, completion.owner
        created: list[OutboxRow] = []
        received_at = (
            await conn.execute(select(inbox.c.received_at).where(inbox.c.id == inbox_id))
        ).scalar_one_or_none()
        if received_at is None:
            raise StoreError(f"inbox event {inbox_id} does not exist")
        # Keys already in the outbox are skipped. A SELECT and a plain INSERT instead of
        # INSERT ... ON CONFLICT: SQLAlchemy compiles ON CONFLICT anew on every call,
        # which was a tenth of the dispatcher's CPU. On SQLite the write lock makes the
        # pair atomic; on PostgreSQL a replica racing on the same key makes this
        # transaction fail on the unique index, and the event is dispatched again.
        if actions:
            keys = [a.idempotency_key for a in actions]
            existing = set((await conn.execute(_EXISTING_KEYS, {"keys": keys})).scalars().all())
            fresh: list[Action] = []
            for a in actions:  # the first of repeated keys wins, as ON CONFLICT would
                if a.idempotency_key not in existing:
                    existing.add(a.idempotency_key)
                    fresh.append(a)
            actions = fresh
        if actions:
            stmt = _OUTBOX_INSERT
            rows = [action_values(a, now, inbox_id, received_at) for a in actions]
            if owner is not None:
                # Inserted already claimed: the dispatching process runs them at once.
                lease = {
                    "state": "claimed",
                    "lease_owner": owner,
                    "lease_expires_at": now + timedelta(seconds=completion.lease_seconds),
                }
                rows = [row | lease for row in rows]
            result = await conn.execute(stmt, rows)
            created = sorted((outbox_row(m) for m in result.mappings()), key=lambda r: r.id)
        await self._apply_links(conn, completion.link_changes, now)
        completed = await conn.execute(
            update(inbox)
            .where(inbox.c.id == inbox_id, inbox.c.state == "pending")
            .values(
                state="processed",
                processed_at=now,
                trace=thaw(completion.trace),
                error=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if completed.rowcount != 1:
            # Another dispatcher completed it first (our lease ran out under us): this
            # event's savepoint rolls back, so nothing is recorded twice.
            raise StoreError(f"inbox event {inbox_id} was already processed elsewhere")
        return created

    async def fail_inbox(self, inbox_id: InboxId, error: str, retry_at: datetime | None) -> None:
        if self._direct is not None:
            return await self._direct.fail_inbox(inbox_id, error, retry_at)
        now = self._clock()
        values: dict[str, Any] = {"error": error, "lease_owner": None, "lease_expires_at": None}
        if retry_at is None:
            values |= {"state": "failed", "processed_at": now}
        else:
            values |= {"state": "pending", "next_attempt_at": retry_at}
        async with self._writing("recording a dispatch failure") as conn:
            # Never turn a row someone already processed back into pending work.
            await conn.execute(
                update(inbox)
                .where(inbox.c.id == inbox_id, inbox.c.state == "pending")
                .values(**values)
            )

    async def get_inbox(self, inbox_id: InboxId) -> InboxRow | None:
        return await self._one_inbox(inbox.c.id == inbox_id)

    async def find_inbox(self, source: Platform, delivery_id: DeliveryId) -> InboxRow | None:
        return await self._one_inbox(
            and_(inbox.c.source == source, inbox.c.delivery_id == delivery_id)
        )

    async def _one_inbox(self, where: ColumnElement[bool]) -> InboxRow | None:
        async with self._reading("reading an inbox event") as conn:
            row = (await conn.execute(select(inbox).where(where))).mappings().first()
        return inbox_row(row) if row is not None else None

    async def actions_for_inbox(self, inbox_id: InboxId) -> list[OutboxRow]:
        return await self.outbox_rows(
            select(outbox).where(outbox.c.inbox_id == inbox_id).order_by(outbox.c.id)
        )

    # -- outbox ---------------------------------------------------------------------------
    async def claim_outbox(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        platform: Platform | None = None,
    ) -> list[OutboxRow]:
        if limit <= 0:
            return []
        if self._direct is not None:
            return await self._direct.claim_outbox(owner, limit, lease_seconds, platform)
        now = self._clock()
        due: ColumnElement[bool] = or_(
            and_(outbox.c.state == "pending", outbox.c.next_attempt_at <= now),
            # An expired lease means the claimer died (or stalled): crash recovery.
            and_(outbox.c.state == "claimed", outbox.c.lease_expires_at <= now),
        )
        if platform is not None:
            due = and_(due, outbox.c.platform == platform)
        pick = (
            select(outbox.c.id)
            .where(due)
            .order_by(outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("picked")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        # The pick is a MATERIALIZED CTE: as a plain IN-subquery PostgreSQL may re-run it per
        # row and claim more than `limit`. `due` is repeated on the UPDATE as a second guard.
        stmt = (
            update(outbox)
            .where(outbox.c.id.in_(select(pick.c.id)), due)
            .values(
                state="claimed",
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
                # Taken over from an expired lease: an attempt (see `LEASE_LOST`). SET
                # expressions read the row as it was before this update.
                attempts=outbox.c.attempts + case((outbox.c.state == "claimed", 1), else_=0),
                last_error=case(
                    (outbox.c.state == "claimed", literal(LEASE_LOST) + outbox.c.lease_owner),
                    else_=outbox.c.last_error,
                ),
            )
            .returning(*outbox.c)
        )
        if not await self._any(outbox, due, "looking for due actions"):
            return []
        async with self._writing("claiming actions") as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return sorted((outbox_row(r) for r in rows), key=lambda r: r.id)

    async def _any(self, table: Any, where: ColumnElement[bool], doing: str) -> bool:
        """Cheap read before a claim: most polls find nothing, and on SQLite a claim is a
        write transaction that would take the single writer lock from ingest for nothing."""
        found = await self._read(doing, select(table.c.id).where(where).limit(1))
        return found.first() is not None

    def _held(self, action_id: ActionId, owner: str) -> ColumnElement[bool]:
        return and_(
            outbox.c.id == action_id,
            outbox.c.state == "claimed",
            outbox.c.lease_owner == owner,
        )

    async def renew_actions(
        self, owner: str, action_ids: Sequence[ActionId], lease_seconds: float
    ) -> list[ActionId]:
        held = and_(outbox.c.state == "claimed", outbox.c.lease_owner == owner)
        renewed = await self._renew(outbox, held, action_ids, lease_seconds, "actions")
        return [ActionId(action_id) for action_id in renewed]

    async def _renew(
        self,
        table: Any,
        held: ColumnElement[bool],
        ids: Sequence[int],
        lease_seconds: float,
        what: str,
    ) -> list[int]:
        """Extend the leases of the rows among `ids` that match `held`; their IDs, sorted.
        Not on the hot path (one statement per holder every third of a lease), so one
        SQLAlchemy statement serves both backends. An expired lease nobody took over is
        still the holder's."""
        if not ids:
            return []
        stmt = (
            update(table)
            .where(table.c.id.in_(list(ids)), held)
            .values(lease_expires_at=self._clock() + timedelta(seconds=lease_seconds))
            .returning(table.c.id)
        )
        async with self._writing(f"renewing the leases of {what}") as conn:
            renewed = (await conn.execute(stmt)).scalars().all()
        return sorted(renewed)

    async def finish_action(
        self,
        action_id: ActionId,
        owner: str,
        state: Literal["done", "skipped"],
        result: Mapping[str, Any],
        link_changes: Sequence[LinkChange],
        echoes: Sequence[EchoRecord],
    ) -> bool:
        outcome = ActionOutcome(action_id, owner, state, result, link_changes, echoes)
        return (await self.finish_actions([outcome]))[0]

    async def finish_actions(self, outcomes: Sequence[ActionOutcome]) -> list[bool]:
        if not outcomes:
            return []
        if self._direct is not None:
            return await self._direct.finish_actions(outcomes)
        now = self._clock()
        recorded: list[bool] = []
        async with self._writing("recording actions' outcomes") as conn:
            for outcome in outcomes:
                updated = await conn.execute(
                    update(outbox)
                    .where(self._held(outcome.action_id, outcome.owner))
                    .values(
                        state=outcome.state,
                        result=thaw(outcome.result),
                        finished_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                )
                if updated.rowcount != 1:
                    recorded.append(False)
                    continue
                recorded.append(True)
                await self._apply_links(conn, outcome.link_changes, now)
                if outcome.echoes:
                    await conn.execute(
                        echo_records.insert(),
                        [
                            {"ref": str(e.ref), "change": e.change, "expires_at": e.expires_at}
                            for e in outcome.echoes
                        ],
                    )
        return recorded

    async def retry_action(
        self,
        action_id: ActionId,
        owner: str,
        next_attempt_at: datetime,
        error: str,
        count_attempt: bool,
    ) -> bool:
        if self._direct is not None:
            return await self._direct.release_action(
                action_id,
                owner,
                "scheduling a retry",
                state="pending",
                error=error,
                attempts_added=1 if count_attempt else 0,
                next_attempt_at=next_attempt_at,
            )
        return await self._release(
            action_id,
            owner,
            "scheduling a retry",
            state="pending",
            next_attempt_at=next_attempt_at,
            last_error=error,
            attempts=outbox.c.attempts + (1 if count_attempt else 0),
        )

    async def dead_letter(
        self, action_id: ActionId, owner: str, error: str, *, count_attempt: bool = True
    ) -> bool:
        """To state ``dead``; counts the failed attempt that led here unless `count_attempt`
        is false."""
        added = 1 if count_attempt else 0
        if self._direct is not None:
            return await self._direct.release_action(
                action_id,
                owner,
                "dead-lettering an action",
                state="dead",
                error=error,
                attempts_added=added,
                finished=True,
            )
        return await self._release(
            action_id,
            owner,
            "dead-lettering an action",
            state="dead",
            last_error=error,
            attempts=outbox.c.attempts + added,
            finished_at=self._clock(),
        )

    async def _release(self, action_id: ActionId, owner: str, doing: str, **values: Any) -> bool:
        values |= {"updated_at": self._clock(), "lease_owner": None, "lease_expires_at": None}
        async with self._writing(doing) as conn:
            updated = await conn.execute(
                update(outbox).where(self._held(action_id, owner)).values(**values)
            )
        return bool(updated.rowcount == 1)

    async def list_outbox(
        self, states: Sequence[OutboxState] | None, limit: int, offset: int = 0
    ) -> list[OutboxRow]:
        """Oldest first (id order)."""
        query = select(outbox).order_by(outbox.c.id).limit(limit).offset(offset)
        if states is not None:
            query = query.where(outbox.c.state.in_(list(states)))
        return await self.outbox_rows(query)

    async def get_action(self, action_id: ActionId) -> OutboxRow | None:
        rows = await self.outbox_rows(select(outbox).where(outbox.c.id == action_id))
        return rows[0] if rows else None

    async def outbox_rows(self, query: Any) -> list[OutboxRow]:
        async with self._reading("reading actions") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [outbox_row(r) for r in rows]

    async def replay_action(self, action_id: ActionId) -> bool:
        """Dead letter back to pending, due now, attempts reset (the last error is kept)."""
        now = self._clock()
        return await self._from_dead(
            action_id,
            "replaying a dead letter",
            state="pending",
            attempts=0,
            next_attempt_at=now,
            finished_at=None,
            updated_at=now,
        )

    async def drop_action(self, action_id: ActionId) -> bool:
        now = self._clock()
        return await self._from_dead(
            action_id, "dropping a dead letter", state="skipped", finished_at=now, updated_at=now
        )

    async def _from_dead(self, action_id: ActionId, doing: str, **values: Any) -> bool:
        async with self._writing(doing) as conn:
            updated = await conn.execute(
                update(outbox)
                .where(outbox.c.id == action_id, outbox.c.state == "dead")
                .values(**values)
            )
        return bool(updated.rowcount == 1)

    # -- links ----------------------------------------------------------------------------
    async def add_link(self, a: ObjectRef, b: ObjectRef, created_by: str) -> bool:
        stmt = (
            self._insert(links)
            .values(link_values(a, b, created_by, self._clock()))
            .on_conflict_do_nothing()
            .returning(links.c.id)
        )
        async with self._writing("adding a link") as conn:
            return (await conn.execute(stmt)).first() is not None

    async def remove_link(self, a: ObjectRef, b: ObjectRef) -> bool:
        async with self._writing("removing a link") as conn:
            return bool((await conn.execute(_delete_link(a, b))).rowcount > 0)

    async def _apply_links(
        self, conn: AsyncConnection, changes: Sequence[LinkChange], now: datetime
    ) -> None:
        # In the order given (a remove then an add leaves the link), as `DirectSqlite` does.
        for change in changes:
            if change.op == "add":
                await conn.execute(
                    self._insert(links).on_conflict_do_nothing(),
                    link_values(change.a, change.b, change.created_by, now),
                )
            else:
                await conn.execute(_delete_link(change.a, change.b))

    async def linked(self, refs: Sequence[ObjectRef]) -> list[LinkRow]:
        if not refs:
            return []
        if self._fast_path is not None:
            return await self._fast_path.linked(refs)
        keys = [(r.platform, r.kind, r.id) for r in refs]
        # Prebuilt statement with an expanding parameter: compiled once, not per call.
        return await self.link_rows(_LINKED, {"keys": keys})

    async def list_links(self, flt: LinkFilter) -> list[LinkRow]:
        """Links with a side matching every given field of `flt`, oldest first."""
        query = select(links).order_by(links.c.id).limit(flt.limit).offset(flt.offset)
        sides = []
        for platform, kind, ident in (
            (links.c.a_platform, links.c.a_kind, links.c.a_id),
            (links.c.b_platform, links.c.b_kind, links.c.b_id),
        ):
            conds: list[ColumnElement[bool]] = []
            if flt.platform is not None:
                conds.append(platform == flt.platform)
            if flt.kind is not None:
                conds.append(kind == flt.kind)
            if flt.external_id is not None:
                conds.append(ident == flt.external_id)
            if conds:
                sides.append(and_(*conds))
        if sides:
            query = query.where(or_(*sides))
        return await self.link_rows(query)

    async def link_rows(self, query: Any, params: Mapping[str, Any] | None = None) -> list[LinkRow]:
        rows = (await self._read("reading links", query, params)).mappings().all()
        return [link_row(r) for r in rows]

    async def count_links(self) -> int:
        async with self._reading("counting links") as conn:
            return int((await conn.execute(select(func.count()).select_from(links))).scalar_one())

    # -- echo guard -----------------------------------------------------------------------
    async def find_echo(self, ref: ObjectRef, change: str, now: datetime) -> bool:
        if now.tzinfo is None:
            raise StoreError(f"naive datetime {now.isoformat()} given to the store; use UTC")
        if self._fast_path is not None:
            return await self._fast_path.find_echo(ref, change, now)
        found = await self._read(
            "looking up echo records", _FIND_ECHO, {"ref": str(ref), "change": change, "now": now}
        )
        return found.first() is not None

    # -- housekeeping ---------------------------------------------------------------------
    async def counts(self) -> StoreCounts:
        by_state = dict.fromkeys(OUTBOX_STATES, 0)
        by_kind: dict[str, int] = {}
        async with self._reading("counting rows") as conn:
            for state, n in await conn.execute(
                select(outbox.c.state, func.count()).group_by(outbox.c.state)
            ):
                by_state[state] = int(n)
            kinds = select(
                links.c.a_platform, links.c.a_kind, links.c.b_platform, links.c.b_kind, func.count()
            ).group_by(links.c.a_platform, links.c.a_kind, links.c.b_platform, links.c.b_kind)
            for a_platform, a_kind, b_platform, b_kind, n in await conn.execute(kinds):
                label = link_kind(f"{a_platform}:{a_kind}", f"{b_platform}:{b_kind}")
                by_kind[label] = by_kind.get(label, 0) + int(n)
            pending = (
                await conn.execute(
                    select(func.count()).select_from(inbox).where(inbox.c.state == "pending")
                )
            ).scalar_one()
        return StoreCounts(
            outbox_by_state=freeze(by_state),
            dead_letters=by_state["dead"],
            links_by_kind=freeze(by_kind),
            inbox_pending=int(pending),
        )

    async def prune(
        self,
        inbox_before: datetime,
        outbox_before: datetime,
        now: datetime,
    ) -> PruneResult:
        async with self._writing("pruning old rows") as conn:
            # Outbox first: its rows point at inbox rows (the FK would null them anyway).
            done = await conn.execute(
                delete(outbox).where(
                    outbox.c.state.in_(["done", "skipped"]), outbox.c.finished_at < outbox_before
                )
            )
            processed = await conn.execute(
                delete(inbox).where(
                    inbox.c.state == "processed", inbox.c.processed_at < inbox_before
                )
            )
            expired = await conn.execute(
                delete(echo_records).where(echo_records.c.expires_at <= now)
            )
        return PruneResult(
            inbox=int(processed.rowcount),
            outbox=int(done.rowcount),
            echoes=int(expired.rowcount),
            links=0,
        )

    # -- coordination between replicas ----------------------------------------------------
    async def try_acquire_leadership(self) -> bool:
        if self.backend == "sqlite":
            return True  # one process owns an SQLite file
        async with self._leader_guard:
            conn = self._leader_conn
            if conn is not None:
                if await _alive(conn):
                    return True
                self._leader_conn = None
                conn.terminate()
                self._log.warning("store.leadership.lost")
            conn = await self._raw_connect("taking leadership")
            key1, key2 = lock_keys(self._schema, "leader")
            try:
                got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", key1, key2))
            except Exception as exc:
                conn.terminate()
                if is_store_failure(exc):
                    raise translate_error(self._url, exc, "taking leadership") from exc
                raise
            if not got:
                await _close_quietly(conn)
                return False
            self._leader_conn = conn
            self._log.info("store.leadership.acquired")
            return True

    async def release_leadership(self) -> None:
        async with self._leader_guard:
            conn, self._leader_conn = self._leader_conn, None
            if conn is None:
                return
            # Closing the session releases the lock; unlock first so it is released even if
            # a pooler kept the server session alive.
            with contextlib.suppress(Exception):
                key1, key2 = lock_keys(self._schema, "leader")
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", key1, key2)
            await _close_quietly(conn)
            self._log.info("store.leadership.released")

    async def notify_work(self) -> None:
        if self.backend == "sqlite":
            return
        async with self._writing("notifying workers") as conn:
            await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": WORK_CHANNEL})

    async def listen_work(self, callback: Callable[[], None]) -> None:
        if self.backend == "sqlite":
            return
        if callback not in self._work_callbacks:
            self._work_callbacks.append(callback)
        if self._listen_conn is not None:
            return
        conn = await self._raw_connect("listening for work")
        try:
            await conn.add_listener(WORK_CHANNEL, self._on_work)
        except Exception as exc:
            conn.terminate()
            if is_store_failure(exc):
                raise translate_error(self._url, exc, "listening for work") from exc
            raise
        conn.add_termination_listener(self._on_listen_lost)
        self._listen_conn = conn

    def _on_work(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        for callback in list(self._work_callbacks):
            try:
                callback()
            except Exception:
                self._log.exception("store.listen.callback_failed")

    def _on_listen_lost(self, _conn: object) -> None:
        if self._listen_conn is not None:
            self._listen_conn = None
            self._log.warning("store.listen.lost")

    async def _raw_connect(self, doing: str) -> asyncpg.Connection:
        """A dedicated asyncpg connection outside the pool (kept open by its owner)."""
        try:
            return await asyncpg.connect(
                self._url.asyncpg_dsn(),
                timeout=10,
                server_settings={"application_name": "bridge"},
            )
        except Exception as exc:
            if is_store_failure(exc):
                raise translate_error(self._url, exc, doing) from exc
            raise


async def _alive(conn: asyncpg.Connection) -> bool:
    if conn.is_closed():
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=5)
    except Exception:
        return False
    return True


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:
        conn.terminate()


def _delete_link(a: ObjectRef, b: ObjectRef) -> Any:
    first, second = canonical_pair(a, b)
    return delete(links).where(
        links.c.a_platform == first.platform,
        links.c.a_kind == first.kind,
        links.c.a_id == first.id,
        links.c.b_platform == second.platform,
        links.c.b_kind == second.kind,
        links.c.b_id == second.id,
    )
