"""`SqlStore`: the `Store` protocol, its semantics written once over either driver.

The statements are in `bridge.store.queries`; the drivers (`bridge.store.sqlite`,
`bridge.store.postgres`) run them. Times come from the injected clock (UTC), not the
database's, so both backends and the tests agree on "now". Dead letters are outbox rows in
state ``dead``, so a replay is a state change and the action keeps its history.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import structlog

from bridge.clock import Clock, utcnow
from bridge.events import (
    OBJECT_KINDS,
    PLATFORMS,
    ActionId,
    DeliveryId,
    InboxId,
    LinkChange,
    ObjectRef,
    Platform,
    freeze,
)
from bridge.store import queries as q
from bridge.store.base import (
    LEASE_LOST,
    ActionOutcome,
    EventFilter,
    EventObject,
    InboxCompletion,
    InboxRow,
    LinkFilter,
    LinkRow,
    NewInboxEvent,
    OutboxRow,
    OutboxState,
    PruneResult,
    RateBucket,
    SeenState,
    StoreCounts,
    StoreError,
    StoreUnavailable,
)
from bridge.store.driver import Driver, Row, Sql, Tx
from bridge.store.postgres import PostgresDriver
from bridge.store.rows import (
    action_values,
    encode_json,
    event_object,
    inbox_row,
    link_kind,
    link_row,
    outbox_row,
    pair_values,
    pairs_json,
    seen_state,
)
from bridge.store.schema import migrate
from bridge.store.sqlite import SqliteDriver
from bridge.store.urls import check_schema, parse_store_url

OUTBOX_STATES = ("pending", "claimed", "done", "skipped", "dead")
DROPPED: Final = {"skipped": "dropped", "detail": "dropped by an operator"}
"""The result of a dead letter an operator dropped."""
# Open bounds of `search_events`' filters (timestamps are compared as values: no NULLs).
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)
_NO_CURSOR: Final = 2**63 - 1
_SAVEPOINT = Sql("SAVEPOINT completion")
_ROLLBACK = Sql("ROLLBACK TO SAVEPOINT completion")
_RELEASE = Sql("RELEASE SAVEPOINT completion")


def _ref_rows(refs: Sequence[ObjectRef]) -> str:
    return json.dumps([[r.platform, r.kind, r.id] for r in refs])


class SqlStore:
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
        self._clock = clock
        self.driver: Driver = (
            SqliteDriver(self.url, logger=self._log, exclusive=exclusive, busy_timeout=busy_timeout)
            if self.backend == "sqlite"
            else PostgresDriver(self.url, schema=schema, pool_size=pool_size, logger=self._log)
        )
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
        await self.driver.fetch(q.PING)

    async def _rows(self, sql: Sql, **params: Any) -> list[Row]:
        return await self.driver.fetch(sql, params)

    # -- inbox ----------------------------------------------------------------------------
    async def add_inbox(
        self,
        events: Sequence[NewInboxEvent],
        owner: str | None = None,
        lease_seconds: float = 60.0,
    ) -> list[InboxId | None]:
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

    async def get_inbox(self, inbox_id: InboxId) -> InboxRow | None:
        rows = await self._rows(q.GET_INBOX, id=inbox_id)
        return inbox_row(rows[0]) if rows else None

    async def find_inbox(self, source: Platform, delivery_id: DeliveryId) -> InboxRow | None:
        rows = await self._rows(q.FIND_INBOX, source=source, delivery=delivery_id)
        return inbox_row(rows[0]) if rows else None

    async def actions_for_inbox(self, inbox_id: InboxId) -> list[OutboxRow]:
        return [outbox_row(r) for r in await self._rows(q.INBOX_ACTIONS, id=inbox_id)]

    # -- history ----------------------------------------------------------------------------
    async def search_events(self, flt: EventFilter) -> list[InboxRow]:
        rows = await self._rows(
            q.SEARCH_EVENTS,
            source=flt.source,
            event_type=flt.event_type,
            since=flt.since or _EARLIEST,
            until=flt.until or _LATEST,
            before=_NO_CURSOR if flt.before is None else flt.before,
            outcome=flt.outcome,
            object_id=flt.object_id,
            object_platform=flt.object_platform,
            object_kind=flt.object_kind,
            limit=flt.limit,
        )
        return [inbox_row(r) for r in rows]

    async def event_objects(self, inbox_ids: Sequence[InboxId]) -> dict[InboxId, list[EventObject]]:
        found: dict[InboxId, list[EventObject]] = {}
        if inbox_ids:
            for row in await self._rows(q.EVENT_OBJECTS, ids=json.dumps(list(inbox_ids))):
                found.setdefault(InboxId(row["inbox_id"]), []).append(event_object(row))
        return found

    async def events_naming(self, refs: Sequence[ObjectRef], limit: int) -> list[InboxRow]:
        if not refs:
            return []
        rows = await self._rows(q.EVENTS_NAMING, refs=_ref_rows(refs), limit=limit)
        return [inbox_row(r) for r in rows]

    async def actions_on(
        self, refs: Sequence[ObjectRef], inbox_ids: Sequence[InboxId], limit: int
    ) -> list[OutboxRow]:
        if not refs and not inbox_ids:
            return []
        rows = await self._rows(
            q.ACTIONS_ON,
            keys=json.dumps([str(r) for r in refs]),
            ids=json.dumps(list(inbox_ids)),
            limit=limit,
        )
        return [outbox_row(r) for r in rows]

    async def find_objects(self, object_id: str) -> list[ObjectRef]:
        found = {
            ObjectRef(row["platform"], row["kind"], row["object_id"])
            for row in await self._rows(q.OBJECTS_WITH_ID, id=object_id)
        }
        # Links are indexed by full ref on both sides: ask for every ref the ID can be.
        candidates = [
            ObjectRef(platform, kind, object_id) for platform in PLATFORMS for kind in OBJECT_KINDS
        ]
        for link in await self.linked(candidates):
            found.update(ref for ref in (link.a, link.b) if ref.id == object_id)
        return sorted(found)

    async def dead_letters_by_rule(self) -> dict[str, int]:
        return {row["rule"]: int(row["n"]) for row in await self._rows(q.DEAD_BY_RULE)}

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
        renewed = await self._renew(q.RENEW_ACTIONS, owner, action_ids, lease_seconds)
        return [ActionId(i) for i in renewed]

    async def finish_actions(self, outcomes: Sequence[ActionOutcome]) -> list[bool]:
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
    ) -> bool:
        """Back to pending at `next_attempt_at`; `count_attempt` False for rate limits."""
        return await self._release(
            action_id, owner, "pending", error, count_attempt, next_attempt_at
        )

    async def dead_letter(
        self, action_id: ActionId, owner: str, error: str, *, count_attempt: bool = True
    ) -> bool:
        return await self._release(action_id, owner, "dead", error, count_attempt, None)

    async def _release(
        self,
        action_id: ActionId,
        owner: str,
        state: Literal["pending", "dead"],
        error: str,
        count_attempt: bool,
        retry_at: datetime | None,
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
        }
        doing = "scheduling a retry" if state == "pending" else "dead-lettering an action"
        updated = await self.driver.transact(doing, lambda tx: tx.execute(q.RELEASE_ACTION, params))
        return updated == 1

    async def list_outbox(
        self, states: Sequence[OutboxState] | None, limit: int, offset: int = 0
    ) -> list[OutboxRow]:
        """Oldest first (id order)."""
        rows = await self._rows(
            q.LIST_OUTBOX,
            every_state=states is None,
            states=json.dumps(list(states or ())),
            limit=limit,
            offset=offset,
        )
        return [outbox_row(r) for r in rows]

    async def get_action(self, action_id: ActionId) -> OutboxRow | None:
        rows = await self._rows(q.GET_ACTION, id=action_id)
        return outbox_row(rows[0]) if rows else None

    async def settled_actions(self, object_key: str) -> list[OutboxRow]:
        return [outbox_row(r) for r in await self._rows(q.SETTLED_ACTIONS, key=object_key)]

    async def creating(self, refs: Sequence[ObjectRef]) -> list[OutboxRow]:
        rows = await self._rows(q.CREATING, refs=json.dumps([str(r) for r in refs]))
        return [outbox_row(r) for r in rows]

    async def replay_action(self, action_id: ActionId) -> bool:
        """Dead letter back to pending, due now, attempts reset."""
        return await self._write_one("replaying a dead letter", q.REPLAY_ACTION, id=action_id)

    async def drop_action(self, action_id: ActionId) -> bool:
        return await self._write_one(
            "dropping a dead letter", q.DROP_ACTION, id=action_id, result=encode_json(DROPPED)
        )

    async def _write_one(self, doing: str, sql: Sql, **params: Any) -> bool:
        params["now"] = self._clock()
        return await self.driver.transact(doing, lambda tx: tx.execute(sql, params)) > 0

    # -- links ----------------------------------------------------------------------------
    async def add_link(self, a: ObjectRef, b: ObjectRef, created_by: str) -> bool:
        values: dict[str, Any] = pair_values(a, b)
        values |= {"now": self._clock(), "created_by": created_by}
        rows = await self.driver.transact("adding a link", lambda tx: tx.fetch(q.ADD_LINK, values))
        return bool(rows)

    async def remove_link(self, a: ObjectRef, b: ObjectRef) -> bool:
        values = pair_values(a, b)
        removed = await self.driver.transact(
            "removing a link", lambda tx: tx.execute(q.REMOVE_LINK, values)
        )
        return removed > 0

    async def linked(self, refs: Sequence[ObjectRef]) -> list[LinkRow]:
        if not refs:
            return []
        return [link_row(r) for r in await self._rows(q.LINKED, refs=_ref_rows(refs))]

    async def list_links(self, flt: LinkFilter) -> list[LinkRow]:
        """Links with a side matching every given field of `flt`, oldest first."""
        rows = await self._rows(
            q.LIST_LINKS,
            platform=flt.platform,
            kind=flt.kind,
            external_id=flt.external_id,
            limit=flt.limit,
            offset=flt.offset,
        )
        return [link_row(r) for r in rows]

    async def count_links(self) -> int:
        return int((await self._rows(q.COUNT_LINKS))[0]["n"])

    async def links_to_check(
        self, now: datetime, checked_before: datetime, created_since: datetime, limit: int
    ) -> list[LinkRow]:
        rows = await self._rows(q.UNCHECKED_LINKS, now=now, limit=limit)
        if len(rows) < limit:
            rows += await self._rows(
                q.LEAST_RECENTLY_CHECKED,
                now=now,
                stale=checked_before,
                since=created_since,
                limit=limit - len(rows),
            )
        return [link_row(r) for r in rows]

    async def mark_links_checked(
        self, pairs: Sequence[tuple[ObjectRef, ObjectRef]], now: datetime
    ) -> None:
        await self._mark(q.MARK_CHECKED, pairs, now=now)

    async def defer_link_checks(
        self, pairs: Sequence[tuple[ObjectRef, ObjectRef]], until: datetime
    ) -> None:
        await self._mark(q.DEFER_CHECK, pairs, until=until)

    async def _mark(
        self, sql: Sql, pairs: Sequence[tuple[ObjectRef, ObjectRef]], **params: Any
    ) -> None:
        if pairs:
            params["pairs"] = pairs_json(pairs)
            await self.driver.transact("recording link checks", lambda tx: tx.execute(sql, params))

    # -- echo guard -----------------------------------------------------------------------
    async def find_echo(self, ref: ObjectRef | str, change: str, now: datetime) -> bool:
        return bool(await self._rows(q.FIND_ECHO, ref=str(ref), change=change, now=now))

    # -- last state seen ------------------------------------------------------------------
    async def last_seen(self, refs: Sequence[ObjectRef]) -> list[SeenState]:
        if not refs:
            return []
        return [seen_state(r) for r in await self._rows(q.LAST_SEEN, refs=_ref_rows(refs))]

    # -- housekeeping ---------------------------------------------------------------------
    async def counts(self) -> StoreCounts:
        by_state = dict.fromkeys(OUTBOX_STATES, 0)
        for row in await self._rows(q.OUTBOX_BY_STATE):
            by_state[row["state"]] = int(row["n"])
        by_kind: dict[str, int] = {}
        for row in await self._rows(q.LINKS_BY_KIND):
            label = link_kind(
                f"{row['a_platform']}:{row['a_kind']}", f"{row['b_platform']}:{row['b_kind']}"
            )
            by_kind[label] = by_kind.get(label, 0) + int(row["n"])
        pending = (await self._rows(q.INBOX_PENDING))[0]["n"]
        return StoreCounts(
            outbox_by_state=freeze(by_state),
            dead_letters=by_state["dead"],
            links_by_kind=freeze(by_kind),
            inbox_pending=int(pending),
        )

    async def prune(
        self, inbox_before: datetime, outbox_before: datetime, now: datetime
    ) -> PruneResult:
        async def work(tx: Tx) -> PruneResult:
            outbox = await tx.execute(q.PRUNE_OUTBOX, {"before": outbox_before})
            inbox = await tx.execute(q.PRUNE_INBOX, {"before": inbox_before})
            echoes = await tx.execute(q.PRUNE_ECHOES, {"now": now})
            states = await tx.execute(q.PRUNE_STATES, {"before": inbox_before})
            return PruneResult(inbox=inbox, outbox=outbox, echoes=echoes, links=0, states=states)

        return await self.driver.transact("pruning old rows", work)

    # -- coordination between replicas ----------------------------------------------------
    async def reserve_rate_slot(
        self, bucket: RateBucket, now: float, interval: float, burst: float
    ) -> float:
        params = {
            "platform": bucket.platform,
            "key": bucket.key_fingerprint,
            "endpoint_class": bucket.endpoint_class,
            "now": now,
            "interval": interval,
        }
        rows = await self.driver.transact(
            "reserving a rate-limit slot", lambda tx: tx.fetch(q.RESERVE_RATE, params)
        )
        return max(now, float(rows[0]["tat"]) - burst * interval)

    async def raise_rate_floor(self, bucket: RateBucket, floor: float) -> None:
        params = {
            "platform": bucket.platform,
            "key": bucket.key_fingerprint,
            "endpoint_class": bucket.endpoint_class,
            "floor": floor,
        }
        await self.driver.transact(
            "pausing a shared rate limit", lambda tx: tx.execute(q.RAISE_RATE, params)
        )

    async def heartbeat(self, instance: str, now: datetime, live_since: datetime) -> int:
        async def work(tx: Tx) -> int:
            await tx.execute(q.HEARTBEAT, {"instance": instance, "now": now})
            await tx.execute(q.FORGET_REPLICAS, {"since": live_since})
            return int((await tx.fetch(q.COUNT_REPLICAS))[0]["n"])

        return await self.driver.transact("recording a heartbeat", work)

    async def leave(self, instance: str) -> None:
        await self.driver.transact(
            "leaving the replicas", lambda tx: tx.execute(q.LEAVE, {"instance": instance})
        )

    async def try_acquire_leadership(self) -> bool:
        return await self.driver.try_lead()

    async def release_leadership(self) -> None:
        await self.driver.release_lead()

    async def notify_work(self) -> None:
        await self.driver.notify()

    async def listen_work(self, callback: Callable[[], None]) -> None:
        await self.driver.listen(callback)
