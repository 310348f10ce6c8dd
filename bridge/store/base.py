"""Typed rows and the `Store` protocol: everything the rest of the bridge may ask of storage.

The pipeline, web and CLI layers depend on this protocol only; `bridge.store.store.SqlStore`
implements it for SQLite and PostgreSQL. Every method that changes more than one row does
so in one transaction: the dispatcher's decision (actions + link changes + "event
processed") and the executor's outcome (state + links + echo records) are all-or-nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, get_args

from bridge.events import (
    Action,
    ActionId,
    DeliveryId,
    InboxId,
    LinkChange,
    ObjectRef,
    Platform,
    Priority,
)

InboxState = Literal["pending", "processed", "failed"]
OutboxState = Literal["pending", "claimed", "done", "skipped", "dead"]
OUTBOX_STATES: tuple[OutboxState, ...] = get_args(OutboxState)
"""Every outbox state, in a row's life order (the gauges', the API's and the console's)."""

# `last_error` of an action taken over from an expired lease, followed by the holder's name.
# Its holder died or stalled without an outcome: the attempt counts, so an action that
# crashes the process every time is dead-lettered after `max_attempts` instead of
# crash-looping the bridge forever.
LEASE_LOST = "lease expired without an outcome; holder "


class StoreError(Exception):
    """Storage is unreachable or refused the operation; the message says which and why."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now (ingest answers 503 so senders retry)."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer bridge than this one."""


@dataclass(frozen=True, slots=True)
class StoredTrace:
    """A trace to store with events, JSON-encoded once: one such object is shared by every
    event it describes (see `bridge.pipeline.triage`)."""

    value: Mapping[str, Any]
    text: str

    @staticmethod
    def of(value: Mapping[str, Any]) -> StoredTrace:
        return StoredTrace(value, json.dumps(value))


@dataclass(frozen=True, slots=True)
class NewInboxEvent:
    """A verified webhook delivery to persist before answering 2xx."""

    source: Platform
    delivery_id: DeliveryId
    event_type: str
    body: bytes
    received_at: datetime
    # Set when the event needs no dispatch (no enabled rule looks at its type): it is
    # stored already processed, with this trace, and never claimed.
    settled_trace: StoredTrace | None = None


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: InboxId
    source: Platform
    delivery_id: DeliveryId
    event_type: str
    body: bytes
    received_at: datetime
    state: InboxState
    processed_at: datetime | None
    attempts: int
    trace: Mapping[str, Any] | None
    """What the dispatcher decided: rules matched / not matched and why, echo verdict."""
    error: str | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: ActionId
    action: Action
    state: OutboxState
    attempts: int
    next_attempt_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    inbox_id: InboxId | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    result: Mapping[str, Any] | None
    event_received_at: datetime | None
    """When the webhook that caused the action was accepted (for event-to-action latency)."""
    object_key: str | None = None
    """The object the action changes (see `bridge.ordering`); None for rows older than it."""
    aspect: str | None = None
    cause_at: datetime | None = None
    """When the action's cause happened: actions on one object run in this order."""
    attempts_before_replay: int = 0
    """`attempts` when an operator last replayed it: the budget counts from here."""
    priority: Priority = "create"
    """How urgent the action is (its rule's class, else its operation's), as stored."""
    turn_at: datetime | None = None
    """When its turn comes: claims take actions in this order (see `bridge.ordering`)."""

    @property
    def attempts_since_replay(self) -> int:
        """Attempts made since the last replay (or since it was created), which
        `executor.max_attempts` bounds."""
        return self.attempts - self.attempts_before_replay


@dataclass(frozen=True, slots=True)
class RateBucket:
    """One quota shared by every replica: an endpoint class of one API key on a platform
    (the key named by its fingerprint, never the key itself)."""

    platform: Platform
    key_fingerprint: str
    endpoint_class: str


@dataclass(frozen=True, slots=True)
class LinkRow:
    a: ObjectRef
    b: ObjectRef
    created_at: datetime
    created_by: str
    checked_at: datetime | None = None
    """When the link checker last compared both sides (None: never)."""


@dataclass(frozen=True, slots=True)
class EchoRecord:
    """A write the bridge made: `ref` was changed to `change` (e.g. ``status=cancelled``).

    `ref` is the object changed, or, for a write that names its object by a key instead
    (an alert event's deduplication key), that object's key (`bridge.operations.object_key`).
    """

    ref: ObjectRef | str
    change: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SeenState:
    """An object's state as a webhook reported it: the fields its platform's state model
    records (`bridge.platforms.states`). `seen_at` is when the bridge recorded it (the
    store's now; None on one not stored yet)."""

    ref: ObjectRef
    state: Mapping[str, Any]
    seen_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """The final outcome of one claimed action, to record with `Store.finish_actions`."""

    action_id: ActionId
    owner: str
    state: Literal["done", "skipped"]
    result: Mapping[str, Any]
    link_changes: Sequence[LinkChange] = ()
    echoes: Sequence[EchoRecord] = ()


ObjectRole = Literal["subject", "related"]


@dataclass(frozen=True, slots=True)
class EventObject:
    """An object an event names: its subject, or another object its payload names."""

    ref: ObjectRef
    role: ObjectRole


@dataclass(frozen=True, slots=True)
class InboxCompletion:
    """The dispatcher's decision on one inbox event, to record with `Store.complete_inboxes`.

    With an `owner`, the new outbox rows are inserted already claimed by it (leased for
    `lease_seconds`), so the dispatching process runs them without a claim round."""

    inbox_id: InboxId
    actions: Sequence[Action]
    link_changes: Sequence[LinkChange]
    trace: Mapping[str, Any]
    owner: str | None = None
    lease_seconds: float = 60.0
    cause_at: datetime | None = None
    """When the event happened (its platform timestamp); the store's now when None."""
    seen: Sequence[SeenState] = ()
    """Object states the event reported, recorded as the last seen of each."""
    objects: Sequence[EventObject] = ()
    """The objects the event names, recorded with it so it is found by object."""
    priority_age: float = 900.0
    """Seconds by which each class below page-stopping puts an action's turn later
    (`executor.priority_age_seconds`): claims take actions in turn order."""


@dataclass(frozen=True, slots=True)
class LinkFilter:
    platform: Platform | None = None
    kind: str | None = None
    external_id: str | None = None
    limit: int = 100
    offset: int = 0


EventOutcome = Literal["pending", "actions", "no_match", "echo", "stale", "ignored", "error"]
EVENT_OUTCOMES: tuple[EventOutcome, ...] = get_args(EventOutcome)
"""What became of an event: not dispatched yet, then the dispatch result of
``bridge_events_dispatched_total{result}`` (``error``: failed for good)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events `Store.search_events` returns, newest first. `object_id` with
    `object_platform` and `object_kind` names one object; `object_id` alone, any object
    with that ID on either platform. `before` is the cursor: only IDs below it."""

    source: Platform | None = None
    event_type: str | None = None
    object_platform: Platform | None = None
    object_kind: str | None = None
    object_id: str | None = None
    outcome: EventOutcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class StoreCounts:
    outbox_by_state: Mapping[str, int]
    dead_letters: int
    links_by_kind: Mapping[str, int]
    inbox_pending: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    inbox: int
    outbox: int
    echoes: int
    links: int
    states: int = 0


class Store(Protocol):
    """What the bridge may ask of its storage. All times are timezone-aware UTC."""

    backend: Literal["sqlite", "postgresql"]

    async def open(self) -> None:
        """Connect, apply migrations (under a lock on PostgreSQL) and verify the schema."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless a trivial query succeeds."""

    # -- inbox --------------------------------------------------------------------------
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

    async def claim_inbox(self, owner: str, limit: int, lease_seconds: float) -> list[InboxRow]:
        """Claim pending inbox rows in arrival order (id order), with a lease."""

    async def renew_inbox(
        self, owner: str, inbox_ids: Sequence[InboxId], lease_seconds: float
    ) -> list[InboxId]:
        """`renew_actions` for inbox events `owner` still holds (pending, leased to it)."""

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

    async def fail_inbox(
        self,
        inbox_id: InboxId,
        error: str,
        retry_at: datetime | None,
        objects: Sequence[EventObject] = (),
    ) -> None:
        """Record a dispatch failure; with `retry_at` the event stays pending until then.
        `objects`: those the event names, when it could be parsed (found by object)."""

    async def get_inbox(self, inbox_id: InboxId) -> InboxRow | None: ...

    async def find_inbox(self, source: Platform, delivery_id: DeliveryId) -> InboxRow | None: ...

    async def actions_for_inbox(self, inbox_id: InboxId) -> list[OutboxRow]: ...

    # -- history: what happened to an event, an object (operator console) ---------------
    async def search_events(self, flt: EventFilter) -> list[InboxRow]:
        """Events matching every given field of `flt`, newest (highest ID) first. Events
        settled at ingest name no objects: they are found by the other fields."""

    async def event_objects(self, inbox_ids: Sequence[InboxId]) -> dict[InboxId, list[EventObject]]:
        """The objects each of `inbox_ids` names (subject first)."""

    async def events_naming(self, refs: Sequence[ObjectRef], limit: int) -> list[InboxRow]:
        """The newest `limit` events that name any of `refs`, newest first."""

    async def actions_on(
        self, refs: Sequence[ObjectRef], inbox_ids: Sequence[InboxId], limit: int
    ) -> list[OutboxRow]:
        """The newest `limit` actions that change one of `refs`, create what is linked to
        one of them, or were caused by one of `inbox_ids`; newest first."""

    async def find_objects(self, object_id: str) -> list[ObjectRef]:
        """Every object with ID `object_id` (either platform, any kind) that an event
        names or a link joins."""

    async def dead_letters_by_rule(self) -> dict[str, int]:
        """How many dead letters each rule's actions left."""

    # -- outbox -------------------------------------------------------------------------
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

    async def renew_actions(
        self, owner: str, action_ids: Sequence[ActionId], lease_seconds: float
    ) -> list[ActionId]:
        """Extend to now + `lease_seconds` the leases `owner` still holds among `action_ids`
        (a holder alive but slow, waiting out a rate-limit pause, is not taken over);
        returns those IDs. An action finished or taken over meanwhile is left alone."""

    async def finish_actions(self, outcomes: Sequence[ActionOutcome]) -> list[bool]:
        """Record outcomes in ONE transaction (group commit). Per outcome, all or nothing: the
        final state and result, its link changes, its echo records. True if recorded, False
        if its owner no longer held the lease (that one changes nothing)."""

    async def attempted_actions(self, object_key: str) -> list[OutboxRow]:
        """The actions on `object_key` that finished (done or skipped) or were tried at
        least once (what they sent may have landed, even after a timeout or a 5xx)."""

    async def creating(self, refs: Sequence[ObjectRef]) -> list[OutboxRow]:
        """Unfinished actions whose result will be linked to one of `refs` (what an action
        on those objects' linked counterparts waits for)."""

    async def retry_action(
        self,
        action_id: ActionId,
        owner: str,
        next_attempt_at: datetime,
        error: str,
        count_attempt: bool,
    ) -> bool:
        """Back to pending at `next_attempt_at`; `count_attempt` False for rate limits."""

    async def dead_letter(
        self, action_id: ActionId, owner: str, error: str, *, count_attempt: bool = True
    ) -> bool:
        """To state ``dead``; counts the failed attempt that led here unless `count_attempt`
        is false (an action given up on before trying it again)."""

    async def list_outbox(
        self, states: Sequence[OutboxState] | None, limit: int, offset: int = 0
    ) -> list[OutboxRow]: ...

    async def get_action(self, action_id: ActionId) -> OutboxRow | None: ...

    async def replay_action(self, action_id: ActionId) -> bool:
        """Dead letter back to pending, due now, with a fresh budget of attempts (`attempts`
        keeps counting; `last_error` still describes the latest attempt until the next one).
        False if it is not dead."""

    async def drop_action(self, action_id: ActionId) -> bool:
        """Dead letter to skipped, its result saying an operator dropped it. False if it is
        not dead."""

    # -- links --------------------------------------------------------------------------
    async def add_link(self, a: ObjectRef, b: ObjectRef, created_by: str) -> bool:
        """True if created, False if it already existed."""

    async def remove_link(self, a: ObjectRef, b: ObjectRef) -> bool: ...

    async def linked(self, refs: Sequence[ObjectRef]) -> list[LinkRow]:
        """Every link touching any of `refs` (either side), by index."""

    async def list_links(self, flt: LinkFilter) -> list[LinkRow]: ...

    async def count_links(self) -> int: ...

    async def links_to_check(
        self, now: datetime, checked_before: datetime, created_since: datetime, limit: int
    ) -> list[LinkRow]:
        """Links due for a check: never-checked ones first (oldest first), then, among
        links created since `created_since`, those last checked before `checked_before`,
        least recently checked first. A deferred check is not due before its
        `check_after`."""

    async def mark_links_checked(
        self, pairs: Sequence[tuple[ObjectRef, ObjectRef]], now: datetime
    ) -> None: ...

    async def defer_link_checks(
        self, pairs: Sequence[tuple[ObjectRef, ObjectRef]], until: datetime
    ) -> None:
        """Not before `until` (a check that could not read both sides)."""

    # -- echo guard ---------------------------------------------------------------------
    async def find_echo(self, ref: ObjectRef | str, change: str, now: datetime) -> bool:
        """True if an unexpired echo record for (ref, change) exists (`ref`: an object or
        an object key, see `EchoRecord`)."""

    # -- last state seen ------------------------------------------------------------------
    async def last_seen(self, refs: Sequence[ObjectRef]) -> list[SeenState]:
        """The state last recorded (`InboxCompletion.seen`) of each of `refs` that has one."""

    # -- housekeeping -------------------------------------------------------------------
    async def counts(self) -> StoreCounts: ...

    async def prune(
        self,
        inbox_before: datetime,
        outbox_before: datetime,
        now: datetime,
    ) -> PruneResult:
        """Delete processed inbox rows and finished (done/skipped) outbox rows older than the
        cut-offs, expired echo records, and the last seen states of objects no longer
        linked that were recorded before `inbox_before`. Dead letters and links are kept."""

    # -- coordination between replicas --------------------------------------------------
    async def reserve_rate_slot(
        self, bucket: RateBucket, now: float, interval: float, burst: float
    ) -> float:
        """Reserve the next slot of a quota every replica shares (GCRA, one statement, no
        lock held after it): the unix time at which the reserved request may go, never
        before `now` (unix seconds). `interval` is the seconds between slots at the full
        rate, `burst` how many may go at once after a quiet spell. A quota not seen
        before starts full."""

    async def raise_rate_floor(self, bucket: RateBucket, floor: float) -> None:
        """Reserve no slot of the quota earlier than its theoretical arrival time `floor`
        allows (a 429 or a server's correction: see `bridge.platforms.ratelimit`)."""

    async def heartbeat(self, instance: str, now: datetime, live_since: datetime) -> int:
        """Record that replica `instance` is alive at `now`, forget replicas not seen since
        `live_since`, and return how many are alive (this one included)."""

    async def leave(self, instance: str) -> None:
        """Forget replica `instance` (it is stopping), so the others' count drops now."""

    async def try_acquire_leadership(self) -> bool:
        """True while this instance is the leader (scheduler jobs run on the leader only).

        PostgreSQL: a session advisory lock on a dedicated connection kept open while
        leading; calling again while leading returns True; if that connection died,
        leadership is lost and the call tries to take it again. SQLite: always True.
        """

    async def release_leadership(self) -> None: ...

    async def notify_work(self) -> None:
        """Wake other replicas' workers (PostgreSQL ``NOTIFY``); SQLite: no-op."""

    async def listen_work(self, callback: Callable[[], None]) -> None:
        """Call `callback` when any replica calls `notify_work` (PostgreSQL ``LISTEN``),
        until cancelled; a lost connection is reconnected with back-off, and `callback` is
        called once after each (re)connect. Workers still poll, so a gap only costs
        latency. SQLite: returns at once."""
