"""Small builders for store tests: refs, actions, deliveries, an inbox event with actions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from bridge.events import (
    Action,
    ActionId,
    DeliveryId,
    IdempotencyKey,
    InboxId,
    LinkChange,
    ObjectRef,
    Operation,
    Platform,
    ResultLink,
    RuleName,
    freeze,
)
from bridge.store.base import ActionOutcome, EchoRecord, InboxCompletion, NewInboxEvent, StoreError
from bridge.store.store import Store

ROOTLY_INC = ObjectRef.parse("rootly:incident:r-1")
IIO_INC = ObjectRef.parse("incident_io:incident:i-1")
IIO_ESC = ObjectRef.parse("incident_io:escalation:e-1")


_OWN_TARGET: Any = object()


def action(
    key: str,
    *,
    operation: Operation = "rootly.cancel_incident",
    target: ObjectRef | None = _OWN_TARGET,
    params: Mapping[str, Any] | None = None,
    result_links: tuple[ResultLink, ...] = (),
) -> Action:
    """An action with idempotency key `key`; by default on an incident of its own
    (``rootly:incident:r-<key>``), so that actions of different keys are independent (see
    `bridge.ordering` for actions on one object)."""
    return Action(
        operation=operation,
        target=ObjectRef("rootly", "incident", f"r-{key}") if target is _OWN_TARGET else target,
        params=freeze(dict(params) if params is not None else {"reason": "from incident.io"}),
        rule=RuleName("test-rule"),
        idempotency_key=IdempotencyKey(key),
        result_links=result_links,
    )


def delivery(
    delivery_id: str, at: datetime, *, source: Platform = "rootly", body: bytes = b"{}"
) -> NewInboxEvent:
    return NewInboxEvent(
        source=source,
        delivery_id=DeliveryId(delivery_id),
        event_type="incident.updated",
        body=body,
        received_at=at,
    )


async def inbox_event(store: Store, at: datetime, delivery_id: str = "d-1") -> InboxId:
    (inbox_id,) = await store.add_inbox([delivery(delivery_id, at)])
    assert inbox_id is not None
    return inbox_id


async def queue_actions(
    store: Store, at: datetime, keys: Sequence[str], delivery_id: str = "d-1"
) -> list[ActionId]:
    """Store one delivery and dispatch it into outbox actions with the given keys."""
    inbox_id = await inbox_event(store, at, delivery_id)
    return await complete(store, inbox_id, [action(k) for k in keys], [], {"rules": []})


async def complete(
    store: Store,
    inbox_id: InboxId,
    actions: Sequence[Action],
    link_changes: Sequence[LinkChange],
    trace: Mapping[str, Any],
) -> list[ActionId]:
    """Record one dispatch decision; the IDs of the actions it created (raises StoreError)."""
    (result,) = await store.complete_inboxes(
        [InboxCompletion(inbox_id, actions, link_changes, trace)]
    )
    if isinstance(result, StoreError):
        raise result
    return [row.id for row in result]


async def finish(
    store: Store,
    action_id: ActionId,
    owner: str,
    state: Literal["done", "skipped"],
    result: Mapping[str, Any],
    link_changes: Sequence[LinkChange] = (),
    echoes: Sequence[EchoRecord] = (),
) -> bool:
    """Record one action's outcome; False if `owner` no longer held it."""
    outcome = ActionOutcome(action_id, owner, state, result, link_changes, echoes)
    (recorded,) = await store.finish_actions([outcome])
    return recorded


async def link_count(store: Store) -> int:
    """How many links the store holds (the sum of its `bridge_links` gauge's kinds)."""
    return sum((await store.counts()).links_by_kind.values())
