"""Claims take the most urgent actions first: page-stopping before creates before updates,
aged lower classes before fresh higher ones; the class survives the round trip."""

from __future__ import annotations

from bridge.events import Action, ObjectKind, ObjectRef, Operation, Priority, RuleName
from bridge.events import IdempotencyKey as Key
from bridge.store.base import InboxCompletion
from bridge.store.store import Store
from tests.store.conftest import FakeClock
from tests.store.factories import finish, inbox_event

AGE = 600.0


def act(key: str, operation: Operation, priority: Priority | None = None) -> Action:
    kind: ObjectKind = "escalation" if operation == "incident_io.cancel_escalation" else "incident"
    target = None if operation == "incident_io.create_escalation" else f"i-{key}"
    return Action(
        operation=operation,
        target=ObjectRef("incident_io", kind, target) if target else None,
        params={"title": "t"} if target is None else {},
        rule=RuleName("test-rule"),
        idempotency_key=Key(key),
        priority=priority,
    )


async def decide(store: Store, clock: FakeClock, delivery: str, *actions: Action) -> None:
    inbox_id = await inbox_event(store, clock(), delivery)
    await store.complete_inboxes([InboxCompletion(inbox_id, actions, [], {}, priority_age=AGE)])


async def take_one(store: Store) -> str:
    """Claim the next action and finish it; its idempotency key."""
    (row,) = await store.claim_outbox("w", 1, 60, "incident_io")
    assert await finish(store, row.id, "w", "done", {})
    return str(row.action.idempotency_key)


async def test_claims_take_page_stopping_actions_before_creates_before_updates(
    store: Store, clock: FakeClock
) -> None:
    """Updates and creates decided first, a cancel decided last: one at a time, the claim
    hands out the cancel, then the creates, then the updates, each class in arrival order."""
    await decide(
        store,
        clock,
        "d-1",
        act("update-1", "incident_io.edit_incident"),
        act("create-1", "incident_io.create_escalation"),
        act("update-2", "incident_io.edit_incident"),
    )
    clock.advance(1)
    await decide(store, clock, "d-2", act("create-2", "incident_io.create_escalation"))
    clock.advance(1)
    await decide(store, clock, "d-3", act("cancel", "incident_io.cancel_escalation"))
    order = [await take_one(store) for _ in range(5)]
    assert order == ["cancel", "create-1", "create-2", "update-1", "update-2"]


async def test_a_rule_priority_overrides_the_operations_and_survives_the_store(
    store: Store, clock: FakeClock
) -> None:
    """An edit a rule marks `page` goes before a plain cancel decided after it; read back,
    the action carries the rule's class and the row the class it was taken by."""
    await decide(store, clock, "d-1", act("cancel", "incident_io.cancel_escalation"))
    clock.advance(1)
    await decide(store, clock, "d-2", act("urgent-edit", "incident_io.edit_incident", "page"))
    await decide(store, clock, "d-3", act("slow-cancel", "incident_io.cancel_escalation", "update"))
    rows = await store.claim_outbox("w", 3, 60, "incident_io")
    by_key = {str(r.action.idempotency_key): r for r in rows}
    assert by_key["urgent-edit"].action.priority == "page"
    assert by_key["urgent-edit"].priority == "page"
    assert by_key["cancel"].action.priority is None  # the operation's own class
    assert by_key["cancel"].priority == "page"
    assert by_key["slow-cancel"].priority == "update"


async def test_an_action_waiting_one_age_counts_one_class_more_urgent(
    store: Store, clock: FakeClock
) -> None:
    """Lower classes are not starved: an update decided more than one priority age before a
    create goes before it, and one decided two ages before a cancel goes before that."""
    await decide(store, clock, "d-1", act("old-update", "incident_io.edit_incident"))
    clock.advance(AGE + 1)
    await decide(store, clock, "d-2", act("create", "incident_io.create_escalation"))
    assert await take_one(store) == "old-update"
    await decide(store, clock, "d-3", act("older-update", "incident_io.edit_incident"))
    clock.advance(2 * AGE + 1)
    await decide(store, clock, "d-4", act("cancel", "incident_io.cancel_escalation"))
    assert [await take_one(store) for _ in range(3)] == [
        "create",
        "older-update",
        "cancel",
    ]


def alert_event(key: str, status: str, priority: Priority | None = None) -> Action:
    return Action(
        operation="incident_io.send_alert_event",
        target=None,
        params={"title": "t", "status": status, "deduplication_key": "alert-1"},
        rule=RuleName("test-rule"),
        idempotency_key=Key(key),
        priority=priority,
    )


async def test_an_urgent_action_passes_its_turn_to_earlier_causes_on_its_object(
    store: Store, clock: FakeClock
) -> None:
    """A resolving alert event (page) decided after its firing one (create) does not
    overtake it: the firing event inherits the urgent turn and goes first, ahead of an
    unrelated create decided before both; then the resolving one."""
    await decide(store, clock, "d-0", act("other-create", "incident_io.create_escalation"))
    clock.advance(1)
    await decide(store, clock, "d-1", alert_event("firing", "firing"))
    clock.advance(1)
    await decide(store, clock, "d-2", alert_event("resolved", "resolved", "page"))
    assert [await take_one(store) for _ in range(3)] == ["firing", "resolved", "other-create"]


async def test_an_oldest_first_claim_takes_the_action_decided_first(
    store: Store, clock: FakeClock
) -> None:
    """Claims the executor alternates with: oldest first takes the update decided first,
    the usual claim the cancel decided after it."""
    await decide(store, clock, "d-1", act("update", "incident_io.edit_incident"))
    clock.advance(1)
    await decide(store, clock, "d-2", act("cancel", "incident_io.cancel_escalation"))
    (oldest,) = await store.claim_outbox("w", 1, 60, "incident_io", oldest_first=True)
    (urgent,) = await store.claim_outbox("w", 1, 60, "incident_io")
    assert (oldest.action.idempotency_key, urgent.action.idempotency_key) == ("update", "cancel")


async def test_an_action_in_flight_inherits_the_turn_for_its_retry(
    store: Store, clock: FakeClock
) -> None:
    """A firing alert event in flight when its resolving one is decided takes that urgent
    turn too, for when it fails and comes back: its retry is not a priority age behind."""
    await decide(store, clock, "d-1", alert_event("firing", "firing"))
    (firing,) = await store.claim_outbox("w", 1, 60, "incident_io")
    clock.advance(1)
    await decide(store, clock, "d-2", alert_event("resolved", "resolved", "page"))
    assert await store.retry_action(firing.id, "w", clock(), "HTTP 503", count_attempt=True)
    retried = await store.get_action(firing.id)
    assert retried is not None and retried.turn_at == clock()
    assert [await take_one(store) for _ in range(2)] == ["firing", "resolved"]
