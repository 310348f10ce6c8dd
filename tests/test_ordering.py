"""Supersession (bridge.ordering.superseded): when an action must not run because of the
finished actions on its object."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.events import Action, ActionId, IdempotencyKey, ObjectRef, Operation, RuleName
from bridge.operations import aspect, object_key
from bridge.ordering import superseded
from bridge.store.base import OutboxRow, OutboxState

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ESC = ObjectRef.parse("incident_io:escalation:e-1")
INC = ObjectRef.parse("rootly:incident:r-1")


def row(
    ident: int,
    operation: Operation,
    *,
    cause: float,
    state: OutboxState = "pending",
    target: ObjectRef | None = ESC,
    **params: Any,
) -> OutboxRow:
    action = Action(operation, target, params, RuleName("r"), IdempotencyKey(f"k-{ident}"))
    return OutboxRow(
        id=ActionId(ident),
        action=action,
        state=state,
        attempts=0,
        next_attempt_at=T0,
        lease_owner=None,
        lease_expires_at=None,
        last_error=None,
        inbox_id=None,
        created_at=T0,
        updated_at=T0,
        finished_at=None,
        result=None,
        event_received_at=None,
        object_key=object_key(action),
        aspect=aspect(action),
        cause_at=T0 + timedelta(seconds=cause),
    )


def alert_event(
    ident: int, status: str, *, cause: float, state: OutboxState = "pending"
) -> OutboxRow:
    return row(
        ident,
        "incident_io.send_alert_event",
        cause=cause,
        state=state,
        target=None,
        title="t",
        status=status,
        deduplication_key="rootly-alert-a",
    )


def test_a_firing_retried_after_a_later_resolved_is_superseded() -> None:
    """A "firing" alert event whose "resolved" (caused later) was already sent is skipped:
    sending it would open a second incident.io alert and page again."""
    firing = alert_event(1, "firing", cause=1)
    resolved = alert_event(2, "resolved", cause=2, state="done")
    reason = superseded(firing, [resolved])
    assert reason is not None and "action 2" in reason


def test_an_earlier_finished_action_does_not_supersede_a_later_one() -> None:
    """The later cause runs: a "resolved" after a finished "firing" is not moot."""
    firing = alert_event(1, "firing", cause=1, state="done")
    resolved = alert_event(2, "resolved", cause=2)
    assert superseded(resolved, [firing]) is None


def test_another_aspect_of_the_object_does_not_supersede() -> None:
    """A title update is not made moot by a later cancellation of the same incident: they
    set different things."""
    update = row(1, "rootly.update_incident", cause=1, target=INC, title="new")
    cancel = row(2, "rootly.cancel_incident", cause=2, state="done", target=INC)
    assert superseded(update, [cancel]) is None


def test_a_terminal_operation_done_once_is_not_done_again() -> None:
    """Cancelling an escalation already cancelled by an earlier action is skipped (an
    escalation is never un-cancelled)."""
    first = row(1, "incident_io.cancel_escalation", cause=1, state="done")
    again = row(2, "incident_io.cancel_escalation", cause=2)
    reason = superseded(again, [first])
    assert reason is not None and "already done" in reason


def test_rows_from_before_ordering_are_never_superseded() -> None:
    """Actions stored before ordering existed (no object key) run as they always did."""
    old = dataclasses.replace(alert_event(1, "firing", cause=1), object_key=None)
    assert superseded(old, [alert_event(2, "resolved", cause=2, state="done")]) is None
