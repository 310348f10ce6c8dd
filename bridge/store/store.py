"""`Store`: the bridge's one store, its semantics written once over either driver.

The statements are in `bridge.store.queries`; the drivers (`bridge.store.sqlite`,
`bridge.store.postgres`) run them. Times come from the injected clock (UTC), not the
database's, so both backends and the tests agree on "now". Dead letters are outbox rows in
state ``dead``, so a replay is a state change and the action keeps its history.

`Store` is assembled by concern: this module holds its lifecycle and the pipeline's
write paths (the inbox, the outbox, pruning); the operators' reads are in
`bridge.store.reads`, links, echo records and last seen states in `bridge.store.links`,
and the coordination between replicas in `bridge.store.replicas`, all on the driver and
clock of `bridge.store.access`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import structlog

from bridge.clock import Clock, utcnow
from bridge.events import ActionId, InboxId, LinkChange, ObjectRef, Platform
from bridge.store import queries as q
from bridge.store.base import (
    LEASE_LOST,
    ActionOutcome,
    EventObject,
    InboxCompletion,
    InboxRow,
    NewInboxEvent,
    OutboxRow,
    PruneResult,
    StoreError,
    StoreUnavailable,
)
from bridge.store.driver import Driver, Row, Sql, Tx
from bridge.store.links import LinkQueries
from bridge.store.postgres import PostgresDriver
from bridge.store.reads import ReadQueries
from bridge.store.replicas import ReplicaQueries
from bridge.store.rows import action_values, encode_json, inbox_row, outbox_row, pair_values
from bridge.store.schema import migrate
from bridge.store.sqlite import SqliteDriver
from bridge.store.urls import check_schema, parse_store_url

DROPPED: Final = {"skipped": "dropped", "detail": "dropped by an operator"}
"""The result of a dead letter an operator dropped."""
_SAVEPOINT = Sql("SAVEPOINT completion")
_ROLLBACK = Sql("ROLLBACK TO SAVEPOINT completion")
_RELEASE = Sql("RELEASE SAVEPOINT completion")


class Store(ReadQueries, LinkQueries, ReplicaQueries):
    """The bridge's store on SQLite (embedded default) or PostgreSQL (several replicas).

    `url` is what the user configured (``sqlite:///data/bridge.db``,
    ``postgresql://user@host:5432/db``). `schema` (PostgreSQL only) puts every table in that
    schema, created if missing. `clock` returns timezone-aware UTC "now". `exclusive`
    (SQLite): hold the file for this process alone while open (`bridge serve`);
    `busy_timeout` (SQLite): how long a write waits while another process holds the file's
    write lock before failing as unavailable.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 5,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        clock: Clock = utcnow,
        exclusive: bool = False,
        busy_timeout: float = 5.0,
    ) -> None:
        self.url = parse_store_url(url)
        self.backend: Literal["sqlite", "postgresql"] = self.url.backend
        if schema is not None and self.backend != "postgresql":
            raise StoreError("a store schema applies to PostgreSQL only")
        self._schema = check_schema(schema)
        self._log = (logger or structlog.get_logger(__name__)).bind(
            store_backend=self.backend, store=self.url.display
        )
        driver: Driver = (
            SqliteDriver(self.url, logger=self._log, exclusive=exclusive, busy_timeout=busy_timeout)
            if self.backend == "sqlite"
            else PostgresDriver(self.url, schema=schema, pool_size=pool_size, logger=self._log)
        )
        super().__init__(driver, clock)
        self.version: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and migrate to the newest schema (see `bridge.store.schema`)."""
        await self.driver.open()
        try:
            self.version = await migrate(self.driver, self._schema)
        except BaseException:
            await self.driver.close()
            raise
        self._log.info("store.opened", version=self.version)

    async def close(self) -> None:
        await self.driver.close()
        self._log.info("store.closed")

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless a trivial query succeeds."""
        await self.driver.fetch(q.PING)

    # -- inbox ----------------------------------------------------------------------------
    async def add_inbox(
        self,
        events: Sequence[NewInboxEvent],
        owner: str | None = None,
        lease_seconds: float = 60.0,
    ) -> list[InboxId | None]:
        """Persist deliveries in one transaction (group commit).

        Returns, per event, its new ID, or None when (source, delivery_id) was already stored.
        With `owner`, new rows are stored already claimed by it (lease, one attempt), for a
        process that dispatches what it receives without a claim round. An event with a
        `settled_trace` is stored processed (at the store's now) with that trace instead,
        unclaimed, with no attempt counted.
        """
        if not events:
            return []
        now = self._clock()
        expires = now + timedelta(seconds=lease_seconds) if owner is not None else None
        rows = [
            (e.source, e.delivery_id, e.event_type, e.body, e.received_at)
            + (
                ("pending", now, 1 if owner else 0, owner, expires, None, None)
                if e.settled_trace is None
                else ("processed", now, 0, None, None, now, e.settled_trace.text)
            )
            for e in events
        ]

        async def work(tx: Tx) -> dict[tuple[str, str], InboxId]:
            ids: dict[tuple[str, str], InboxId] = {}
            start = 0
            while start < len(rows):
                size = min(q.INBOX_CHUNK, 1 << ((len(rows) - start).bit_length() - 1))
                params = {
                    f"{column}_{i}": value
                    for i, row in enumerate(rows[start : start + size])
                    for column, value in zip(q.INBOX_COLUMNS, row, strict=True)
                }
                for new in await tx.fetch(q.insert_inbox(size), params):
                    ids[(new["source"], new["delivery_id"])] = InboxId(new["id"])
                start += size
            return ids

        ids = await self.driver.transact("storing webhook deliveries", work)
        # pop: a delivery repeated within the batch gets its ID at its first occurrence.
        return [ids.pop((e.source, e.delivery_id), None) for e in events]

    async def claim_inbox(self, owner: str, limit: int, lease_seconds: float) -> list[InboxRow]:
        """Claim due pending rows in id order; each claim counts one attempt, so an event
        that crashes the dispatcher every time is still seen to be failing."""
        now = self._clock()
        # A cheap read first: most polls find nothing, and on SQLite a claim would take
        # the single write lock from ingest for nothing.
        if limit <= 0 or not await self._rows(q.INBOX_ANY_DUE, now=now):
            return []
        params = {"now": now, "owner": owner, "limit": limit}
        params["expires"] = now + timedelta(seconds=lease_seconds)
        rows = await self.driver.transact(
            "claiming inbox events", lambda tx: tx.fetch(q.CLAIM_INBOX, params)
        )
        return sorted((inbox_row(r) for r in rows), key=lambda r: r.id)

    async def renew_inbox(
        self, owner: str, inbox_ids: Sequence[InboxId], lease_seconds: float
    ) -> list[InboxId]:
        """`renew_actions` for inbox events `owner` still holds (pending, leased to it)."""
        renewed = await self._renew(q.RENEW_INBOX, owner, inbox_ids, lease_seconds)
        return [InboxId(i) for i in renewed]

    async def _renew(
        self, sql: Sql, owner: str, ids: Sequence[int], lease_seconds: float
    ) -> list[int]:
        if not ids:
            return []
        params = {
            "ids": json.dumps(list(ids)),
            "owner": owner,
            "expires": self._clock() + timedelta(seconds=lease_seconds),
        }
        rows = await self.driver.transact("renewing leases", lambda tx: tx.fetch(sql, params))
        return sorted(int(r["id"]) for r in rows)

    async def complete_inboxes(
        self, completions: Sequence[InboxCompletion]
    ) -> list[list[OutboxRow] | StoreError]:
        """Record dispatch decisions in one transaction, so one commit serves several events.
        Per completion: insert its actions into the outbox (an idempotency key already
        present is skipped, not an error), apply its link changes in order (adding an
        existing link or removing a missing one is a no-op), store the trace and mark the
        event processed, and record its `seen` states as the last seen of their objects
        (replacing earlier ones). With an `owner`, each new action that may run now (see
        `bridge.ordering`) is inserted claimed by it and returned in full, so the
        dispatching process runs it without a claim round; the others are returned too,
        pending. Each completion is all-or-nothing on its own: one that fails (processed
        elsewhere, unknown, cannot be stored) gets its StoreError in its place and leaves
        nothing, without undoing the others. Raises StoreError only if the batch failed as
        a whole."""
        if not completions:
            return []
        now = self._clock()

        async def work(tx: Tx) -> list[list[OutboxRow] | StoreError]:
            results: list[list[OutboxRow] | StoreError] = []
            for completion in completions:
                # A savepoint each: one event's failure leaves the others' work in place;
                # losing the database fails the whole batch instead.
                await tx.execute(_SAVEPOINT)
                try:
                    results.append(await self._complete(tx, completion, now))
                except StoreUnavailable:
                    raise
                except StoreError as exc:
                    await tx.execute(_ROLLBACK)
                    results.append(exc)
                await tx.execute(_RELEASE)
            return results

        return await self.driver.transact("recording the dispatch of events", work)

    async def _complete(
        self, tx: Tx, completion: InboxCompletion, now: datetime
    ) -> list[OutboxRow]:
        found = await tx.fetch(q.RECEIVED_AT, {"id": completion.inbox_id})
        if not found:
            raise StoreError(f"inbox event {completion.inbox_id} does not exist")
        lease = (
            (completion.owner, completion.lease_seconds) if completion.owner is not None else None
        )
        created: dict[int, OutboxRow] = {}
        for action in completion.actions:
            values = action_values(
                action,
                now,
                completion.inbox_id,
                completion.cause_at or now,
                lease,
                completion.priority_age,
            )
            await tx.execute(q.LOCK_OBJECT, {"key": values["object_key"]})
            values["received_at"] = found[0]["received_at"]
            for row in await tx.fetch(q.INSERT_ACTION, values):
                created[row["id"]] = outbox_row(row)
                inherit = {k: row[k] for k in ("id", "object_key", "turn_at", "cause_at")}
                await tx.execute(q.INHERIT_TURN, inherit)
        if created and completion.owner is not None:
            claim = {
                "ids": json.dumps(sorted(created)),
                "owner": completion.owner,
                "expires": now + timedelta(seconds=completion.lease_seconds),
                "now": now,
                "lost": LEASE_LOST,
            }
            for row in await tx.fetch(q.CLAIM_NEW, claim):
                created[row["id"]] = outbox_row(row)
        await self._apply_links(tx, completion.link_changes, now)
        for seen in completion.seen:
            ref = seen.ref
            await tx.execute(
                q.UPSERT_STATE,
                {
                    "platform": ref.platform,
                    "kind": ref.kind,
                    "object_id": ref.id,
                    "state": encode_json(seen.state),
                    "now": now,
                },
            )
        await self._add_objects(tx, completion.inbox_id, completion.objects)
        params = {"id": completion.inbox_id, "now": now, "trace": encode_json(completion.trace)}
        if await tx.execute(q.PROCESS_INBOX, params) != 1:
            # Another dispatcher completed it first (our lease ran out under us): this
            # event's savepoint rolls back, so nothing is recorded twice.
            raise StoreError(f"inbox event {completion.inbox_id} was already processed elsewhere")
        return [created[i] for i in sorted(created)]

    async def _apply_links(self, tx: Tx, changes: Sequence[LinkChange], now: datetime) -> None:
        # In the order given: a remove then an add leaves the link.
        for change in changes:
            values: dict[str, Any] = pair_values(change.a, change.b)
            if change.op == "add":
                await tx.execute(q.ADD_LINK, values | {"now": now, "created_by": change.created_by})
            else:
                await tx.execute(q.REMOVE_LINK, values)

    async def _add_objects(self, tx: Tx, inbox_id: InboxId, objects: Sequence[EventObject]) -> None:
        for start in range(0, len(objects), q.OBJECTS_CHUNK):
            chunk = objects[start : start + q.OBJECTS_CHUNK]
            params: dict[str, Any] = {"inbox_id": inbox_id}
            for n, named in enumerate(chunk):
                params |= {
                    f"platform_{n}": named.ref.platform,
                    f"kind_{n}": named.ref.kind,
                    f"object_id_{n}": named.ref.id,
                    f"role_{n}": named.role,
                }
            await tx.execute(q.insert_event_objects(len(chunk)), params)

    async def fail_inbox(
        self,
        inbox_id: InboxId,
        error: str,
        retry_at: datetime | None,
        objects: Sequence[EventObject] = (),
    ) -> None:
        """Record a dispatch failure; with `retry_at` the event stays pending until then.
        `objects`: those the event names, when it could be parsed (found by object)."""
        now = self._clock()
        params = {
            "id": inbox_id,
            "error": error,
            "state": "failed" if retry_at is None else "pending",
            "processed_at": now if retry_at is None else None,
            "retry_at": retry_at,
        }

        async def work(tx: Tx) -> None:
            if await tx.execute(q.FAIL_INBOX, params) == 1:
                await self._add_objects(tx, inbox_id, objects)

        await self.driver.transact("recording a dispatch failure", work)

    # -- outbox ---------------------------------------------------------------------------
    async def claim_outbox(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        platform: Platform | None = None,
        *,
        oldest_first: bool = False,
    ) -> list[OutboxRow]:
        """Claim due rows (pending with next_attempt_at <= now, or claimed with an expired
        lease) that may run now (`bridge.ordering`), most urgent first (in turn order), or
        with `oldest_first` in the order they were decided. PostgreSQL: FOR UPDATE SKIP
        LOCKED, so replicas never claim the same row. A row whose lease expired is taken
        over: first back to pending, counting one attempt, with `last_error` set to
        `LEASE_LOST` + the lost holder (so it waits for earlier causes on its object like
        any other, instead of blocking them as if in flight), then claimed when it may run;
        failed attempts are otherwise counted by `retry_action`."""
        now = self._clock()
        if limit <= 0 or not await self._rows(q.OUTBOX_ANY_DUE, now=now, platform=platform):
            return []
        params = {
            "now": now,
            "owner": owner,
            "expires": now + timedelta(seconds=lease_seconds),
            "limit": limit,
            "platform": platform,
            "lost": LEASE_LOST,
        }
        claim = q.CLAIM_OLDEST if oldest_first else q.CLAIM_OUTBOX

        async def work(tx: Tx) -> list[Row]:
            await tx.execute(q.RELEASE_LOST, params)
            return await tx.fetch(claim, params)

        rows = await self.driver.transact("claiming actions", work)
        return sorted((outbox_row(r) for r in rows), key=lambda r: r.id)

    async def renew_actions(
        self, owner: str, action_ids: Sequence[ActionId], lease_seconds: float
    ) -> list[ActionId]:
        """Extend to now + `lease_seconds` the leases `owner` still holds among `action_ids`
        (a holder alive but slow, waiting out a rate-limit pause, is not taken over);
        returns those IDs. An action finished or taken over meanwhile is left alone."""
        renewed = await self._renew(q.RENEW_ACTIONS, owner, action_ids, lease_seconds)
        return [ActionId(i) for i in renewed]

    async def finish_actions(self, outcomes: Sequence[ActionOutcome]) -> list[bool]:
        """Record outcomes in ONE transaction (group commit). Per outcome, all or nothing: the
        final state and result, its link changes, its echo records. True if recorded, False
        if its owner no longer held the lease (that one changes nothing)."""
        if not outcomes:
            return []
        now = self._clock()

        async def work(tx: Tx) -> list[bool]:
            recorded: list[bool] = []
            for outcome in outcomes:
                held = await tx.execute(
                    q.FINISH_ACTION,
                    {
                        "id": outcome.action_id,
                        "owner": outcome.owner,
                        "state": outcome.state,
                        "result": encode_json(outcome.result),
                        "now": now,
                    },
                )
                recorded.append(held == 1)
                if held != 1:
                    continue
                await self._apply_links(tx, outcome.link_changes, now)
                for echo in outcome.echoes:
                    await tx.execute(
                        q.ADD_ECHO,
                        {"ref": str(echo.ref), "change": echo.change, "expires": echo.expires_at},
                    )
            return recorded

        return await self.driver.transact("recording actions' outcomes", work)

    async def retry_action(
        self,
        action_id: ActionId,
        owner: str,
        next_attempt_at: datetime,
        error: str,
        count_attempt: bool,
        *,
        in_doubt_until: datetime | None = None,
    ) -> bool:
        """Back to pending at `next_attempt_at`; `count_attempt` False for rate limits.
        `in_doubt_until`: the attempt's request went unanswered and may land until then,
        so no other action on its object starts before it (`bridge.ordering`)."""
        return await self._release(
            action_id, owner, "pending", error, count_attempt, next_attempt_at, in_doubt_until
        )

    async def dead_letter(
        self,
        action_id: ActionId,
        owner: str,
        error: str,
        *,
        count_attempt: bool = True,
        in_doubt_until: datetime | None = None,
    ) -> bool:
        """To state ``dead``; counts the failed attempt that led here unless `count_attempt`
        is false (an action given up on before trying it again). `in_doubt_until` as for
        `retry_action`."""
        return await self._release(
            action_id, owner, "dead", error, count_attempt, None, in_doubt_until
        )

    async def _release(
        self,
        action_id: ActionId,
        owner: str,
        state: Literal["pending", "dead"],
        error: str,
        count_attempt: bool,
        retry_at: datetime | None,
        in_doubt_until: datetime | None,
    ) -> bool:
        now = self._clock()
        params = {
            "id": action_id,
            "owner": owner,
            "state": state,
            "error": error,
            "added": 1 if count_attempt else 0,
            "now": now,
            "retry_at": retry_at,
            "finished": now if state == "dead" else None,
            "in_doubt_until": in_doubt_until,
        }
        doing = "scheduling a retry" if state == "pending" else "dead-lettering an action"
        updated = await self.driver.transact(doing, lambda tx: tx.execute(q.RELEASE_ACTION, params))
        return updated == 1

    async def attempted_actions(self, object_key: str) -> list[OutboxRow]:
        """The actions on `object_key` that finished (done or skipped) or were tried at
        least once (what they sent may have landed, even after a timeout or a 5xx)."""
        return [outbox_row(r) for r in await self._rows(q.ATTEMPTED_ACTIONS, key=object_key)]

    async def creating(self, refs: Sequence[ObjectRef]) -> list[OutboxRow]:
        """Unfinished actions whose result will be linked to one of `refs` (what an action
        on those objects' linked counterparts waits for)."""
        rows = await self._rows(q.CREATING, refs=json.dumps([str(r) for r in refs]))
        return [outbox_row(r) for r in rows]

    async def replay_action(self, action_id: ActionId) -> bool:
        """Dead letter back to pending, due now, with a fresh budget of attempts (`attempts`
        keeps counting; `last_error` still describes the latest attempt until the next one).
        False if it is not dead."""
        return await self._write_one("replaying a dead letter", q.REPLAY_ACTION, id=action_id)

    async def drop_action(self, action_id: ActionId) -> bool:
        """Dead letter to skipped, its result saying an operator dropped it. False if it is
        not dead."""
        return await self._write_one(
            "dropping a dead letter", q.DROP_ACTION, id=action_id, result=encode_json(DROPPED)
        )

    # -- housekeeping ---------------------------------------------------------------------
    async def prune(
        self, inbox_before: datetime, outbox_before: datetime, now: datetime
    ) -> PruneResult:
        """Delete processed inbox rows and finished (done/skipped) outbox rows older than the
        cut-offs, expired echo records, and the last seen states of objects no longer
        linked that were recorded before `inbox_before`. Dead letters and links are kept."""

        async def work(tx: Tx) -> PruneResult:
            outbox = await tx.execute(q.PRUNE_OUTBOX, {"before": outbox_before})
            inbox = await tx.execute(q.PRUNE_INBOX, {"before": inbox_before})
            echoes = await tx.execute(q.PRUNE_ECHOES, {"now": now})
            states = await tx.execute(q.PRUNE_STATES, {"before": inbox_before})
            return PruneResult(inbox=inbox, outbox=outbox, echoes=echoes, links=0, states=states)

        return await self.driver.transact("pruning old rows", work)
