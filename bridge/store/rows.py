"""Conversions between the store's typed rows and plain column mappings, for every backend.

Both `SqlStore` (SQLAlchemy) and `DirectSqlite` (the SQLite hot path) read and write the
same columns; what a row means is decided here once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, cast

from bridge.events import (
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
from bridge.store.base import InboxRow, LinkRow, OutboxRow, StoreError


class Columns(Protocol):
    """A result row read by column name (SQLAlchemy's RowMapping, sqlite3.Row, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


def canonical_pair(a: ObjectRef, b: ObjectRef) -> tuple[ObjectRef, ObjectRef]:
    """The order a link is stored in: sorted by ``str(ref)``, so (a, b) == (b, a)."""
    return (a, b) if str(a) <= str(b) else (b, a)


def link_kind(type_a: str, type_b: str) -> str:
    """The ``bridge_links{kind}`` label of a link between two ``platform:kind`` types, e.g.
    ``rootly:incident~incident_io:escalation`` (Rootly side first, whatever the order)."""
    return "~".join(sorted((type_a, type_b), reverse=True))


def link_values(a: ObjectRef, b: ObjectRef, created_by: str, now: datetime) -> dict[str, Any]:
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
        "created_at": now,
        "created_by": created_by,
    }


def action_values(
    action: Action, now: datetime, inbox_id: InboxId | None, received_at: datetime | None
) -> dict[str, Any]:
    return {
        "operation": action.operation,
        "platform": action.platform,
        "target": str(action.target) if action.target is not None else None,
        "params": thaw(action.params),
        "rule": action.rule,
        "idempotency_key": action.idempotency_key,
        "result_links": [{"to": str(link.to), "kind": link.kind} for link in action.result_links],
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "inbox_id": inbox_id,
        "created_at": now,
        "updated_at": now,
        "event_received_at": received_at,
    }


def action_from_row(row: Columns) -> Action:
    return Action(
        operation=cast(Operation, row["operation"]),
        target=ObjectRef.parse(row["target"]) if row["target"] is not None else None,
        params=freeze(row["params"]),
        rule=RuleName(row["rule"]),
        idempotency_key=IdempotencyKey(row["idempotency_key"]),
        result_links=tuple(
            ResultLink(to=ObjectRef.parse(link["to"]), kind=link["kind"])
            for link in row["result_links"]
        ),
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
        result=freeze(row["result"]) if row["result"] is not None else None,
        event_received_at=row["event_received_at"],
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
        trace=freeze(row["trace"]) if row["trace"] is not None else None,
        error=row["error"],
    )


def link_row(row: Columns) -> LinkRow:
    return LinkRow(
        a=ObjectRef(row["a_platform"], row["a_kind"], row["a_id"]),
        b=ObjectRef(row["b_platform"], row["b_kind"], row["b_id"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
    )
