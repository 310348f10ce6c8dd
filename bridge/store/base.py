"""The store's vocabulary: the typed rows it returns, the values it records, its errors.

`bridge.store.store.Store` takes and returns these; the pipeline, web and CLI layers build
and read them without touching a database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

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
