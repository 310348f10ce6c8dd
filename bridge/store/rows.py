"""Conversions between the store's typed rows and the column values both drivers take
and give (JSON as text, timestamps as aware datetimes): what a row means is decided here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from bridge.events import (
    PRIORITIES,
    Action,
    ActionId,
    DeliveryId,
    IdempotencyKey,
    InboxId,
    ObjectRef,
    Operation,
    ResultLink,
    RuleName,
    freeze,
    thaw,
)
from bridge.operations import OPERATIONS, aspect, object_key, priority_of, priority_rank
from bridge.store.base import (
    EventObject,
    InboxRow,
    LinkRow,
    OutboxRow,
    SeenState,
    StoreError,
)


class Columns(Protocol):
    """A result row read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def encode_json(value: Any) -> str:
    try:
        return json.dumps(thaw(value), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"value cannot be stored as JSON: {exc}") from exc


def _json(text: str | None) -> Any:
    return None if text is None else freeze(json.loads(text))


def canonical_pair(a: ObjectRef, b: ObjectRef) -> tuple[ObjectRef, ObjectRef]:
    """The order a link is stored in: sorted by ``str(ref)``, so (a, b) == (b, a)."""
    return (a, b) if str(a) <= str(b) else (b, a)


def link_kind(type_a: str, type_b: str) -> str:
    """The ``bridge_links{kind}`` label of a link between two ``platform:kind`` types, e.g.
    ``rootly:incident~incident_io:escalation`` (Rootly side first, whatever the order)."""
    return "~".join(sorted((type_a, type_b), reverse=True))


def pair_values(a: ObjectRef, b: ObjectRef) -> dict[str, str]:
    """The six columns naming a link, in canonical order."""
    if a == b:
        raise StoreError(f"cannot link {a} to itself")
    first, second = canonical_pair(a, b)
    return {
        "a_platform": first.platform,
        "a_kind": first.kind,
        "a_id": first.id,
        "b_platform": second.platform,
        "b_kind": second.kind,
        "b_id": second.id,
    }


def pairs_json(pairs: Sequence[tuple[ObjectRef, ObjectRef]]) -> str:
    """Links as a JSON array of six-column rows (for `{json_rows}` statements)."""
    return json.dumps([list(pair_values(a, b).values()) for a, b in pairs])


def action_values(
    action: Action,
    now: datetime,
    inbox_id: InboxId,
    cause_at: datetime,
    lease: tuple[str, float] | None,
    priority_age: float,
) -> dict[str, Any]:
    """An outbox row for `action`, pending and due now (`lease`: owner and seconds to hold
    it claimed; the store decides whether it may be). Its turn comes `priority_age`
    seconds later per class below page-stopping."""
    owner, seconds = lease if lease is not None else (None, 0.0)
    rank = priority_rank(priority_of(action))
    return {
        "operation": action.operation,
        "platform": action.platform,
        "target": str(action.target) if action.target is not None else None,
        "params": encode_json(action.params),
        "rule": action.rule,
        "idempotency_key": action.idempotency_key,
        "result_links": json.dumps(
            [{"to": str(link.to), "kind": link.kind} for link in action.result_links]
        ),
        "result_to": str(action.result_links[0].to) if action.result_links else None,
        "inbox_id": inbox_id,
        "now": now,
        "object_key": object_key(action),
        "aspect": aspect(action),
        "cause_at": cause_at,
        "priority": rank,
        "turn_at": now + timedelta(seconds=rank * priority_age),
        "owner": owner,
        "expires": now + timedelta(seconds=seconds),
    }


def action_from_row(row: Columns) -> Action:
    operation = cast(Operation, row["operation"])
    stored = PRIORITIES[row["priority"]]
    return Action(
        operation=operation,
        target=ObjectRef.parse(row["target"]) if row["target"] is not None else None,
        params=_json(row["params"]),
        rule=RuleName(row["rule"]),
        idempotency_key=IdempotencyKey(row["idempotency_key"]),
        result_links=tuple(
            ResultLink(to=ObjectRef.parse(link["to"]), kind=link["kind"])
            for link in json.loads(row["result_links"])
        ),
        # Only a class other than the operation's came from the rule.
        priority=stored if stored != OPERATIONS[operation].priority else None,
    )


def outbox_row(row: Columns) -> OutboxRow:
    return OutboxRow(
        id=ActionId(row["id"]),
        action=action_from_row(row),
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        last_error=row["last_error"],
        inbox_id=InboxId(row["inbox_id"]) if row["inbox_id"] is not None else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        result=_json(row["result"]),
        event_received_at=row["event_received_at"],
        object_key=row["object_key"],
        aspect=row["aspect"],
        cause_at=row["cause_at"],
        attempts_before_replay=row["attempts_before_replay"],
        priority=PRIORITIES[row["priority"]],
        turn_at=row["turn_at"],
    )


def inbox_row(row: Columns) -> InboxRow:
    return InboxRow(
        id=InboxId(row["id"]),
        source=row["source"],
        delivery_id=DeliveryId(row["delivery_id"]),
        event_type=row["event_type"],
        body=bytes(row["body"]),
        received_at=row["received_at"],
        state=row["state"],
        processed_at=row["processed_at"],
        attempts=row["attempts"],
        trace=_json(row["trace"]),
        error=row["error"],
    )


def event_object(row: Columns) -> EventObject:
    return EventObject(ObjectRef(row["platform"], row["kind"], row["object_id"]), row["role"])


def link_row(row: Columns) -> LinkRow:
    return LinkRow(
        a=ObjectRef(row["a_platform"], row["a_kind"], row["a_id"]),
        b=ObjectRef(row["b_platform"], row["b_kind"], row["b_id"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        checked_at=row["checked_at"],
    )


def seen_state(row: Columns) -> SeenState:
    return SeenState(
        ref=ObjectRef(row["platform"], row["kind"], row["object_id"]),
        state=_json(row["state"]),
        seen_at=row["seen_at"],
    )
