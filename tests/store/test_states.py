"""The last state seen of objects: recorded with the decision on the event that reported
it, replaced by the next one, and pruned once nothing links the object; on both backends."""

from __future__ import annotations

from datetime import timedelta

from bridge.events import LinkChange, ObjectRef
from bridge.store.base import InboxCompletion, SeenState, StoreError
from bridge.store.store import Store
from tests.store.conftest import FakeClock
from tests.store.factories import IIO_ESC, ROOTLY_INC, action, delivery, inbox_event

ALERT = ObjectRef.parse("rootly:alert:al-1")


async def test_a_decision_records_the_states_it_saw_and_the_next_replaces_them(
    store: Store, clock: FakeClock
) -> None:
    """`complete_inboxes` records each completion's seen states (JSON kept as written, the
    store's now as `seen_at`); a later event's state replaces the object's row; objects
    never seen have none."""
    assert await store.last_seen([ROOTLY_INC, ALERT]) == []
    first = await inbox_event(store, clock(), "d-1")
    seen = SeenState(ROOTLY_INC, {"status": "started", "title": "DB down", "severity": None})
    (result,) = await store.complete_inboxes(
        [InboxCompletion(first, [action("k1")], [], {}, seen=[seen])]
    )
    assert not isinstance(result, StoreError)
    (row,) = await store.last_seen([ROOTLY_INC, ALERT])
    assert (row.ref, dict(row.state), row.seen_at) == (ROOTLY_INC, dict(seen.state), clock())

    clock.advance(60)
    second = await inbox_event(store, clock(), "d-2")
    later = SeenState(ROOTLY_INC, {"status": "acknowledged", "title": "DB down"})
    alert = SeenState(ALERT, {"status": "acknowledged"})
    await store.complete_inboxes([InboxCompletion(second, [], [], {}, seen=[later, alert])])
    rows = {r.ref: r for r in await store.last_seen([ROOTLY_INC, ALERT])}
    assert dict(rows[ROOTLY_INC].state) == {"status": "acknowledged", "title": "DB down"}
    assert rows[ROOTLY_INC].seen_at == clock()
    assert dict(rows[ALERT].state) == {"status": "acknowledged"}


async def test_a_decision_that_cannot_be_recorded_records_no_state(
    store: Store, clock: FakeClock
) -> None:
    """The state goes in the decision's transaction: an event completed twice (its second
    decision refused) leaves the first decision's state, not the second's."""
    inbox_id = await inbox_event(store, clock())
    done = SeenState(ALERT, {"status": "triggered"})
    await store.complete_inboxes([InboxCompletion(inbox_id, [], [], {}, seen=[done])])
    again = SeenState(ALERT, {"status": "resolved"})
    (result,) = await store.complete_inboxes(
        [InboxCompletion(inbox_id, [action("k2")], [], {}, seen=[again])]
    )
    assert isinstance(result, StoreError)
    (row,) = await store.last_seen([ALERT])
    assert dict(row.state) == {"status": "triggered"}
    assert await store.list_outbox(None, 10) == []


async def test_prune_drops_the_states_of_objects_no_longer_linked(
    store: Store, clock: FakeClock
) -> None:
    """Old states of unlinked objects go; a linked object's state stays however old, and
    so does a recent one (its links may not be recorded yet)."""
    start = clock()
    linked, lonely, recent = (ObjectRef.parse(f"rootly:alert:{n}") for n in ("a", "b", "c"))
    inbox_id = await inbox_event(store, start)
    await store.complete_inboxes(
        [
            InboxCompletion(
                inbox_id,
                [],
                [LinkChange("add", linked, IIO_ESC, "r")],
                {},
                seen=[SeenState(linked, {"status": "x"}), SeenState(lonely, {"status": "x"})],
            )
        ]
    )
    clock.advance(7200)
    (fresh,) = await store.add_inbox([delivery("d-2", clock())])
    assert fresh is not None
    await store.complete_inboxes(
        [InboxCompletion(fresh, [], [], {}, seen=[SeenState(recent, {"status": "x"})])]
    )
    cutoff = start + timedelta(hours=1)
    result = await store.prune(inbox_before=cutoff, outbox_before=cutoff, now=clock())
    assert result.states == 1
    assert {r.ref for r in await store.last_seen([linked, lonely, recent])} == {linked, recent}
    await store.remove_link(linked, IIO_ESC)
    again = await store.prune(inbox_before=cutoff, outbox_before=cutoff, now=clock())
    assert again.states == 1
    assert {r.ref for r in await store.last_seen([linked, lonely, recent])} == {recent}
