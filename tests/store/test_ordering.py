"""Per-object order in the store (bridge.ordering): which actions on one object a claim
hands out, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from bridge.events import Action, ObjectRef
from bridge.ordering import superseded
from bridge.store.base import LEASE_LOST, InboxCompletion, OutboxRow, StoreError
from bridge.store.store import Store
from tests.store.conftest import FakeClock, MakeStore
from tests.store.factories import action, finish, inbox_event

ESC = ObjectRef.parse("incident_io:escalation:e-1")


async def _queue(
    store: Store, at: datetime, actions: list[Action], cause_at: datetime, n: int
) -> list[OutboxRow]:
    inbox_id = await inbox_event(store, at, f"d-{n}")
    (rows,) = await store.complete_inboxes(
        [InboxCompletion(inbox_id, actions, [], {}, cause_at=cause_at)]
    )
    assert not isinstance(rows, StoreError)
    return rows


def _op(key: str) -> Action:
    """A cancel of escalation e-1 with idempotency key `key`."""
    return action(key, operation="incident_io.cancel_escalation", target=ESC, params={})


async def test_one_object_runs_in_cause_order_whatever_the_arrival(
    store: Store, clock: FakeClock
) -> None:
    """An update caused later but stored first waits for one caused earlier on the same
    object that sets another aspect: the claim hands out the earlier cause first, and the
    other only once it finished."""
    t0 = clock()
    inc = ObjectRef.parse("rootly:incident:r-9")
    later = action("k-later", operation="rootly.update_incident", target=inc, params={"title": "x"})
    earlier = action("k-earlier", operation="rootly.cancel_incident", target=inc, params={})
    (late_row,) = await _queue(store, t0, [later], t0 + timedelta(seconds=5), 1)
    (early_row,) = await _queue(store, t0, [earlier], t0, 2)
    (first,) = await store.claim_outbox("w", 10, 60)
    assert first.id == early_row.id
    assert await store.claim_outbox("w", 10, 60) == []  # one at a time on an object
    assert await finish(store, first.id, "w", "done", {})
    (second,) = await store.claim_outbox("w", 10, 60)
    assert second.id == late_row.id


async def test_a_later_cause_of_the_same_aspect_does_not_wait_for_a_retry(
    store: Store, clock: FakeClock
) -> None:
    """An acknowledgement retrying a 503 (due in a minute) does not hold up a cancel of
    the same escalation caused later: both set its status, the later cause wins anyway."""
    t0 = clock()
    (ack,) = await _queue(store, t0, [_op("k-ack")], t0, 1)
    (claimed,) = await store.claim_outbox("w", 10, 60)
    assert await store.retry_action(claimed.id, "w", t0 + timedelta(minutes=1), "503", True)
    (cancel,) = await _queue(store, t0, [_op("k-cancel")], t0 + timedelta(seconds=1), 2)
    (first,) = await store.claim_outbox("w", 10, 600)  # leased past the ack's retry
    assert first.id == cancel.id
    clock.advance(120)
    assert await store.claim_outbox("w", 10, 60) == []  # the cancel is in flight
    assert await finish(store, cancel.id, "w", "done", {})
    (retried,) = await store.claim_outbox("w", 10, 60)
    assert retried.id == ack.id


async def test_a_request_in_doubt_holds_its_object_until_it_can_no_longer_land(
    store: Store, clock: FakeClock
) -> None:
    """An acknowledgement whose request timed out (it may still be applied upstream) holds
    its escalation for the window it was given: a cancel caused later, which would not
    wait for a retry after a 503, waits out that window, through the ack's own retry and
    completion, so the late request cannot land after it. The fast path (actions claimed
    as they are inserted) keeps the hold too; other objects are not held."""
    t0 = clock()
    (ack,) = await _queue(store, t0, [_op("k-ack")], t0, 1)
    (claimed,) = await store.claim_outbox("w", 10, 60)
    doubt = t0 + timedelta(seconds=15)
    retry = t0 + timedelta(seconds=2)
    assert await store.retry_action(claimed.id, "w", retry, "timed out", True, in_doubt_until=doubt)
    inbox_id = await inbox_event(store, t0, "d-2")
    other = action(
        "k-other",
        operation="incident_io.cancel_escalation",
        params={},
        target=ObjectRef.parse("incident_io:escalation:e-2"),
    )
    (rows,) = await store.complete_inboxes(
        [
            InboxCompletion(
                inbox_id,
                [_op("k-cancel"), other],
                [],
                {},
                owner="w",
                cause_at=t0 + timedelta(seconds=1),
            )
        ]
    )
    assert not isinstance(rows, StoreError)
    by_key = {str(row.action.idempotency_key): row for row in rows}
    assert by_key["k-cancel"].state == "pending"  # not claimed by the fast path
    assert by_key["k-other"].state == "claimed"
    assert await store.claim_outbox("w", 10, 60) == []  # the ack's retry is not due yet
    clock.advance(3)
    (retried,) = await store.claim_outbox("w", 10, 60)
    assert retried.id == ack.id
    assert await finish(store, ack.id, "w", "done", {})
    assert await store.claim_outbox("w", 10, 60) == []  # done, but its first try may land
    clock.advance(12)
    (cancel,) = await store.claim_outbox("w", 10, 60)
    assert cancel.id == by_key["k-cancel"].id


async def test_due_earlier_cause_of_the_same_aspect_goes_first(
    store: Store, clock: FakeClock
) -> None:
    """Two actions on one object both due: only the earlier cause is claimed, even in one
    claim of many rows, so two never run at once."""
    t0 = clock()
    rows = await _queue(store, t0, [_op("k-2")], t0 + timedelta(seconds=2), 1)
    rows += await _queue(store, t0, [_op("k-1")], t0 + timedelta(seconds=1), 2)
    claimed = await store.claim_outbox("w", 10, 60)
    assert [r.id for r in claimed] == [rows[1].id]


async def test_fast_path_inserts_claimed_only_what_may_run(store: Store, clock: FakeClock) -> None:
    """The dispatcher's fast path (an owner on the completion) gets a new action claimed
    only when nothing else on its object is in flight; otherwise it is stored pending and
    runs after."""
    t0 = clock()
    inbox_id = await inbox_event(store, t0, "d-1")
    (rows,) = await store.complete_inboxes(
        [InboxCompletion(inbox_id, [_op("k-1")], [], {}, owner="me", cause_at=t0)]
    )
    assert not isinstance(rows, StoreError)
    assert [(r.state, r.lease_owner) for r in rows] == [("claimed", "me")]
    inbox_id = await inbox_event(store, t0, "d-2")
    (rows,) = await store.complete_inboxes(
        [InboxCompletion(inbox_id, [_op("k-2")], [], {}, owner="me", cause_at=t0)]
    )
    assert not isinstance(rows, StoreError)
    assert [(r.state, r.lease_owner) for r in rows] == [("pending", None)]


async def test_alert_events_of_one_deduplication_key_share_an_object(store: Store) -> None:
    """Firing and resolved events of one alert (different idempotency keys) are one object,
    keyed by their deduplication key; another alert's are another."""

    def event(key: str, dedup: str, status: str) -> Action:
        return action(
            key,
            operation="incident_io.send_alert_event",
            target=None,
            params={"title": "t", "status": status, "deduplication_key": dedup},
        )

    now = datetime.now(UTC)
    firing_a = event("f-a", "rootly-alert-a", "firing")
    resolved_a = event("r-a", "rootly-alert-a", "resolved")
    rows = await _queue(
        store, now, [firing_a, resolved_a, event("f-b", "rootly-alert-b", "firing")], now, 1
    )
    keys = [r.object_key for r in rows]
    assert keys[0] == keys[1] != keys[2]
    assert {r.aspect for r in rows} == {"status"}


async def test_replicas_never_claim_two_actions_of_one_object(
    make_store: MakeStore, clock: FakeClock
) -> None:
    """Four stores claiming at once (replicas on PostgreSQL; one process on SQLite) over
    objects with several due actions each never hold two actions of one object at once."""
    stores = [await make_store() for _ in range(4)]
    t0 = clock()
    for n in range(10):
        target = ObjectRef("incident_io", "escalation", f"e-{n}")
        actions = [
            action(
                f"k-{n}-{i}", operation="incident_io.cancel_escalation", target=target, params={}
            )
            for i in range(3)
        ]
        await _queue(stores[0], t0, actions, t0, n)
    held: list[list[OutboxRow]] = await asyncio.gather(
        *(s.claim_outbox(f"w{i}", 50, 60) for i, s in enumerate(stores)),
        return_exceptions=False,
    )
    objects = [row.object_key for rows in held for row in rows]
    assert len(objects) == len(set(objects)) == 10


async def test_an_action_whose_holder_died_does_not_block_the_earlier_cause_it_waits_for(
    store: Store, clock: FakeClock
) -> None:
    """A cancel claimed while an acknowledgement of the same escalation (caused earlier)
    backed off, whose holder then died: once its lease expires it goes back to pending
    (the attempt and the lost holder counted), the acknowledgement now due runs, then the
    cancel. Left claimed, each would wait for the other forever."""
    t0 = clock()
    (ack,) = await _queue(store, t0, [_op("k-ack")], t0, 1)
    (claimed,) = await store.claim_outbox("w", 10, 60)
    assert await store.retry_action(claimed.id, "w", t0 + timedelta(seconds=30), "503", True)
    (cancel,) = await _queue(store, t0, [_op("k-cancel")], t0 + timedelta(seconds=1), 2)
    (first,) = await store.claim_outbox("dead", 10, 60)
    assert first.id == cancel.id
    clock.advance(61)  # the ack is due, the cancel's holder never renewed its lease
    (retried,) = await store.claim_outbox("w", 10, 60)
    assert retried.id == ack.id
    lost = await store.get_action(cancel.id)
    assert lost is not None
    assert (lost.state, lost.attempts, lost.last_error) == ("pending", 1, LEASE_LOST + "dead")
    assert await finish(store, ack.id, "w", "done", {})
    (taken_over,) = await store.claim_outbox("w", 10, 60)
    assert (taken_over.id, taken_over.attempts) == (cancel.id, 1)


async def test_a_later_cause_that_was_tried_makes_an_earlier_one_moot(
    store: Store, clock: FakeClock
) -> None:
    """A "firing" alert event backing off is overtaken by its "resolved" (caused later),
    whose request times out: the resolve may have landed, so when the firing's turn comes
    it is superseded instead of opening a second incident.io alert. A resolve only rate
    limited before it was sent (no attempt counted) supersedes nothing."""
    t0 = clock()

    def event(key: str, status: str) -> Action:
        return action(
            key,
            operation="incident_io.send_alert_event",
            target=None,
            params={"title": "t", "status": status, "deduplication_key": "rootly-alert-a"},
        )

    (firing,) = await _queue(store, t0, [event("k-firing", "firing")], t0, 1)
    (claimed,) = await store.claim_outbox("w", 10, 60)
    assert await store.retry_action(claimed.id, "w", t0 + timedelta(minutes=1), "503", True)
    later = t0 + timedelta(seconds=1)
    (resolved,) = await _queue(store, t0, [event("k-resolved", "resolved")], later, 2)
    (first,) = await store.claim_outbox("w", 10, 60)
    assert first.id == resolved.id
    assert await store.retry_action(resolved.id, "w", t0, "429", False)
    assert firing.object_key is not None
    assert superseded(firing, await store.attempted_actions(firing.object_key)) is None

    (again,) = await store.claim_outbox("w", 10, 60)  # the rate limit is over
    assert again.id == resolved.id
    assert await store.retry_action(resolved.id, "w", t0 + timedelta(minutes=5), "timeout", True)
    clock.advance(90)
    (turn,) = await store.claim_outbox("w", 10, 60)
    assert turn.id == firing.id
    reason = superseded(turn, await store.attempted_actions(firing.object_key))
    assert reason is not None and f"action {resolved.id}" in reason
