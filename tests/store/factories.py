"""Small builders for store tests: refs, actions, deliveries, an inbox event with actions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bridge.events import (
    Action,
    ActionId,
    DeliveryId,
    IdempotencyKey,
    InboxId,
    ObjectRef,
    Operation,
    Platform,
    ResultLink,
    RuleName,
    freeze,
)
from bridge.store.base import NewInboxEvent
from bridge.store.sql import SqlStore

ROOTLY_INC = ObjectRef.parse("rootly:incident:r-1")
IIO_INC = ObjectRef.parse("incident_io:incident:i-1")
IIO_ESC = ObjectRef.parse("incident_io:escalation:e-1")


def action(
    key: str,
    *,
    operation: Operation = "rootly.cancel_incident",
    target: ObjectRef | None = ROOTLY_INC,
    params: Mapping[str, Any] | None = None,
    result_links: tuple[ResultLink, ...] = (),
) -> Action:
    return Action(
        operation=operation,
        target=target,
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


async def inbox_event(store: SqlStore, at: datetime, delivery_id: str = "d-1") -> InboxId:
    (inbox_id,) = await store.add_inbox([delivery(delivery_id, at)])
    assert inbox_id is not None
    return inbox_id


async def queue_actions(
    store: SqlStore, at: datetime, keys: Sequence[str], delivery_id: str = "d-1"
) -> list[ActionId]:
    """Store one delivery and dispatch it into outbox actions with the given keys."""
    inbox_id = await inbox_event(store, at, delivery_id)
    return await store.complete_inbox(inbox_id, [action(k) for k in keys], [], {"rules": []})
