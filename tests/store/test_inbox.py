"""Inbox: delivery-ID dedupe per source, batches, claims with leases, completion atomicity."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bridge.events import DeliveryId, InboxId, LinkChange, freeze
from bridge.store.base import InboxCompletion, StoredTrace, StoreError
from bridge.store.store import Store
from tests.store.conftest import FakeClock, MakeStore
from tests.store.factories import (
    IIO_INC,
    ROOTLY_INC,
    action,
    complete,
    delivery,
    inbox_event,
    link_count,
)


async def test_delivery_id_is_unique_per_source(store: Store, clock: FakeClock) -> None:
    """The same delivery ID twice from one source is stored once; from the other source it
    is a different delivery."""
    (first,) = await store.add_inbox([delivery("d-1", clock())])
    assert first is not None
    assert await store.add_inbox([delivery("d-1", clock(), body=b"again")]) == [None]
    (other,) = await store.add_inbox([delivery("d-1", clock(), source="incident_io")])
    assert other is not None
    assert other != first
    row = await store.find_inbox("rootly", DeliveryId("d-1"))
    assert row is not None
    assert row.id == first
    assert row.body == b"{}"


async def test_batch_with_duplicates(store: Store, clock: FakeClock) -> None:
    """One batch: duplicates of stored rows and repeats within the batch get None (the
    first occurrence wins) while the rest of the batch is stored."""
    await store.add_inbox([delivery("old", clock())])
    ids = await store.add_inbox(
        [
            delivery("a", clock(), body=b"first"),
            delivery("old", clock()),
            delivery("a", clock(), body=b"second"),
            delivery("b", clock()),
        ]
    )
    assert ids[1] is None
    assert ids[2] is None
    assert ids[0] is not None
    assert ids[3] is not None
    assert ids[0] < ids[3]
    row = await store.get_inbox(ids[0])
    assert row is not None
    assert row.body == b"first"
    assert row.state == "pending"
    assert row.received_at == clock()
    assert await store.add_inbox([]) == []


async def test_large_batches_map_each_id_to_its_own_delivery(
    store: Store, clock: FakeClock
) -> None:
    """Batches larger than one INSERT statement (SQLite splits them into chunks) answer, for
    each delivery in the order given, the ID of its own row, with and without duplicates
    among them: reading each ID back finds that delivery's body."""
    first = [delivery(f"big-{i}", clock(), body=f"body {i}".encode()) for i in range(100)]
    ids = await store.add_inbox(first)
    assert None not in ids
    assert len(set(ids)) == 100
    mixed = [
        delivery(f"big-{i}", clock(), body=f"again {i}".encode())
        if i % 3 == 0
        else delivery(f"more-{i}", clock(), body=f"more {i}".encode())
        for i in range(100)
    ]
    # A repeat within the batch whose copies land in different chunks (64 + 32 + 4 rows).
    mixed[90] = delivery("more-10", clock(), body=b"repeat of 10")
    mixed_ids = await store.add_inbox(mixed)
    expected_none = [i % 3 == 0 or i == 90 for i in range(100)]
    assert [new_id is None for new_id in mixed_ids] == expected_none
    for event, new_id in [*zip(first, ids, strict=True), *zip(mixed, mixed_ids, strict=True)]:
        if new_id is None:
            continue
        row = await store.get_inbox(new_id)
        assert row is not None
        assert (row.delivery_id, row.body) == (event.delivery_id, event.body)


async def test_claim_lease_and_expiry(store: Store, clock: FakeClock) -> None:
    """Claims come in arrival order with a lease; leased rows are not claimable until the
    lease expires (a crashed dispatcher), and every claim counts an attempt."""
    ids = await store.add_inbox([delivery(f"d-{i}", clock()) for i in range(3)])
    first = await store.claim_inbox("w1", 2, lease_seconds=30)
    assert [r.id for r in first] == ids[:2]
    assert all(r.attempts == 1 for r in first)
    rest = await store.claim_inbox("w2", 10, lease_seconds=30)
    assert [r.id for r in rest] == ids[2:]
    assert await store.claim_inbox("w2", 10, lease_seconds=30) == []
    clock.advance(31)
    again = await store.claim_inbox("w2", 10, lease_seconds=30)
    assert [r.id for r in again] == ids
    assert [r.attempts for r in again] == [2, 2, 2]


async def test_renewed_inbox_lease_keeps_an_event_from_being_claimed_again(
    store: Store, clock: FakeClock
) -> None:
    """A holder that renews keeps its events past the first lease's end: no other claim,
    no attempt counted. Renewal touches only what `owner` still holds: not another owner's
    event, not an unclaimed one, not a processed one (each missing from the returned IDs),
    and an expired lease nobody took over is still the holder's to renew."""
    held, other, unclaimed = await store.add_inbox([delivery(f"d-{i}", clock()) for i in range(3)])
    assert held is not None and other is not None and unclaimed is not None
    await store.claim_inbox("w1", 1, lease_seconds=10)
    await store.claim_inbox("w2", 1, lease_seconds=10)
    clock.advance(8)
    assert await store.renew_inbox("w1", [held, other, unclaimed], lease_seconds=10) == [held]
    clock.advance(8)  # 16 s after the claims: past the first lease, within the renewed one
    claimed = await store.claim_inbox("w3", 10, lease_seconds=10)
    # w2 did not renew: its event was claimed again (a second attempt); w1's was not.
    assert [(r.id, r.attempts) for r in claimed] == [(other, 2), (unclaimed, 1)]
    row = await store.get_inbox(held)
    assert row is not None
    assert (row.state, row.attempts) == ("pending", 1)
    clock.advance(5)  # w1's renewed lease has expired, but nobody claimed the event
    assert await store.renew_inbox("w1", [held], lease_seconds=10) == [held]
    assert await store.claim_inbox("w3", 10, lease_seconds=10) == []
    await complete(store, held, [], [], {})
    assert await store.renew_inbox("w1", [held], lease_seconds=10) == []
    assert await store.renew_inbox("w1", [], lease_seconds=10) == []


async def test_fail_inbox_with_and_without_retry(store: Store, clock: FakeClock) -> None:
    """A failure with retry_at keeps the event pending until then; without, it is failed."""
    retried, failed = await store.add_inbox([delivery("r", clock()), delivery("f", clock())])
    assert retried is not None
    assert failed is not None
    await store.claim_inbox("w", 10, 30)
    await store.fail_inbox(retried, "upstream 503", clock() + timedelta(seconds=60))
    await store.fail_inbox(failed, "bad payload", None)
    assert await store.claim_inbox("w", 10, 30) == []
    clock.advance(61)
    (row,) = await store.claim_inbox("w", 10, 30)
    assert row.id == retried
    assert row.error == "upstream 503"
    dead = await store.get_inbox(failed)
    assert dead is not None
    assert dead.state == "failed"
    assert dead.error == "bad payload"
    assert dead.processed_at == clock() - timedelta(seconds=61)
    assert (await store.counts()).inbox_pending == 1


async def test_complete_inbox_records_everything(store: Store, clock: FakeClock) -> None:
    """Actions, links, trace and the processed mark are stored together; an idempotency key
    already in the outbox is skipped, not an error; every Action field round-trips."""
    inbox_id = await inbox_event(store, clock())
    full = action(
        "k-1",
        operation="incident_io.create_escalation",
        target=None,
        params={"title": "Sev1", "tags": ["a", "b"], "nested": {"n": 1, "none": None}},
        result_links=(),
    )
    created = await complete(
        store,
        inbox_id,
        [full, action("k-2"), action("k-1")],
        [LinkChange("add", ROOTLY_INC, IIO_INC, "rule")],
        {"matched": ["r1"], "echo": False},
    )
    assert len(created) == 2
    row = await store.get_inbox(inbox_id)
    assert row is not None
    assert row.state == "processed"
    assert row.processed_at == clock()
    assert row.trace == freeze({"matched": ["r1"], "echo": False})
    actions = await store.actions_for_inbox(inbox_id)
    assert [a.id for a in actions] == created
    assert actions[0].action == full
    assert actions[0].event_received_at == clock()
    assert actions[0].inbox_id == inbox_id
    assert await link_count(store) == 1

    later = await inbox_event(store, clock(), "d-2")
    (only,) = await complete(store, later, [action("k-1"), action("k-3")], [], {})
    row_k3 = await store.get_action(only)
    assert row_k3 is not None
    assert row_k3.action.idempotency_key == "k-3"


@pytest.mark.parametrize("poison", ["trace", "action"])
async def test_complete_inbox_is_all_or_nothing(
    store: Store, clock: FakeClock, poison: str
) -> None:
    """A failure mid-transaction (an unserialisable trace after the outbox rows and links
    were written, or an unserialisable action) leaves no rows, no links, event pending."""
    inbox_id = await inbox_event(store, clock())
    await store.claim_inbox("w", 1, 30)
    bad = {"oops": object()}
    actions = [action("k-1"), action("k-2", params=bad if poison == "action" else None)]
    with pytest.raises(StoreError, match="not JSON serializable"):
        await complete(
            store,
            inbox_id,
            actions,
            [LinkChange("add", ROOTLY_INC, IIO_INC, "r")],
            bad if poison == "trace" else {},
        )
    assert await store.list_outbox(None, 10) == []
    assert await link_count(store) == 0
    row = await store.get_inbox(inbox_id)
    assert row is not None
    assert row.state == "pending"
    assert row.trace is None


async def test_complete_unknown_inbox_event(store: Store) -> None:
    """Completing an inbox ID that does not exist is a StoreError and stores nothing."""
    with pytest.raises(StoreError, match="does not exist"):
        await complete(store, InboxId(424242), [action("k")], [], {})
    assert await store.list_outbox(None, 10) == []


async def test_times_are_utc_whatever_zone_goes_in(store: Store, clock: FakeClock) -> None:
    """An aware non-UTC time comes back as the same instant in UTC; naive times are refused."""
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2030, 6, 1, 14, 0, tzinfo=plus2)
    (inbox_id,) = await store.add_inbox([delivery("tz", local)])
    assert inbox_id is not None
    row = await store.get_inbox(inbox_id)
    assert row is not None
    assert row.received_at == local
    assert row.received_at.tzinfo == UTC
    with pytest.raises(StoreError, match="naive datetime"):
        await store.fail_inbox(inbox_id, "x", datetime(2030, 1, 1))


async def test_an_event_is_completed_once_and_never_reopened(
    store: Store, clock: FakeClock
) -> None:
    """A second completion of an already processed event (a dispatcher whose lease ran out
    under it) fails and records nothing; failing it afterwards does not make it pending."""
    inbox_id = await inbox_event(store, clock())
    await complete(store, inbox_id, [action("k-1")], [], {"first": True})
    with pytest.raises(StoreError, match="already processed"):
        await complete(
            store, inbox_id, [action("k-2")], [LinkChange("add", ROOTLY_INC, IIO_INC, "rule")], {}
        )
    assert [a.action.idempotency_key for a in await store.actions_for_inbox(inbox_id)] == ["k-1"]
    assert await link_count(store) == 0
    await store.fail_inbox(inbox_id, "late failure from a stale dispatcher", clock())
    row = await store.get_inbox(inbox_id)
    assert row is not None
    assert (row.state, row.error, row.trace) == ("processed", None, freeze({"first": True}))


async def test_a_batch_of_completions_fails_one_event_alone(store: Store, clock: FakeClock) -> None:
    """`complete_inboxes` records several decisions in one transaction; an event that was
    already processed, one that does not exist and one whose trace cannot be stored each get
    their error in place, leave nothing behind, and do not undo the others."""
    done = await inbox_event(store, clock(), "done")
    await complete(store, done, [], [], {"first": True})
    first = await inbox_event(store, clock(), "first")
    last = await inbox_event(store, clock(), "last")
    poisoned = await inbox_event(store, clock(), "poisoned")
    results = await store.complete_inboxes(
        [
            InboxCompletion(
                first, [action("k-1")], [LinkChange("add", ROOTLY_INC, IIO_INC, "r")], {}
            ),
            InboxCompletion(done, [action("k-2")], [], {"second": True}),
            InboxCompletion(InboxId(424242), [action("k-3")], [], {}),
            InboxCompletion(poisoned, [action("k-4")], [], {"oops": object()}),
            InboxCompletion(last, [action("k-5")], [], {}, owner="me", lease_seconds=30),
        ]
    )
    ok_first, processed, missing, unstorable, ok_last = results
    assert not isinstance(ok_first, StoreError)
    assert [r.action.idempotency_key for r in ok_first] == ["k-1"]
    assert isinstance(processed, StoreError)
    assert "already processed" in str(processed)
    assert isinstance(missing, StoreError)
    assert "does not exist" in str(missing)
    assert isinstance(unstorable, StoreError)
    assert not isinstance(ok_last, StoreError)
    assert [(r.state, r.lease_owner) for r in ok_last] == [("claimed", "me")]
    keys = sorted(r.action.idempotency_key for r in await store.list_outbox(None, 10))
    assert keys == ["k-1", "k-5"]
    assert await link_count(store) == 1
    states = {i: (await store.get_inbox(i)) for i in (first, done, poisoned, last)}
    assert {i: row.state for i, row in states.items() if row is not None} == {
        first: "processed",
        done: "processed",
        poisoned: "pending",
        last: "processed",
    }
    done_row = states[done]
    assert done_row is not None
    assert done_row.trace == freeze({"first": True})


async def test_settled_event_is_stored_processed_and_never_claimed(
    store: Store, clock: FakeClock
) -> None:
    """An event stored with a settled trace is processed at once, with that trace and no
    attempt; it is never claimed, while the unsettled event of the same batch is pending."""
    trace = StoredTrace.of({"event": {"source": "rootly"}, "skipped": "no rule"})
    settled = dataclasses.replace(delivery("quiet", clock()), settled_trace=trace)
    settled_id, pending_id = await store.add_inbox([settled, delivery("busy", clock())])
    assert settled_id is not None
    assert pending_id is not None
    row = await store.get_inbox(settled_id)
    assert row is not None
    assert (row.state, row.attempts, row.processed_at) == ("processed", 0, clock())
    assert row.trace == trace.value
    assert [r.id for r in await store.claim_inbox("w", 10, 30)] == [pending_id]
    clock.advance(3600)
    # Past every lease only the unsettled event comes back.
    assert [r.id for r in await store.claim_inbox("w", 10, 30)] == [pending_id]
    assert (await store.counts()).inbox_pending == 1


async def test_settled_event_is_not_claimed_for_the_owner(store: Store, clock: FakeClock) -> None:
    """Stored with an owner (ingest's local hand-off), a settled event is still processed,
    unleased, while the unsettled one is claimed by that owner."""
    trace = StoredTrace.of({"skipped": "no rule"})
    settled = dataclasses.replace(delivery("quiet", clock()), settled_trace=trace)
    settled_id, owned_id = await store.add_inbox(
        [settled, delivery("busy", clock())], owner="w1", lease_seconds=30
    )
    assert settled_id is not None
    assert owned_id is not None
    settled_row = await store.get_inbox(settled_id)
    owned_row = await store.get_inbox(owned_id)
    assert settled_row is not None
    assert owned_row is not None
    assert (settled_row.state, settled_row.attempts) == ("processed", 0)
    assert (owned_row.state, owned_row.attempts) == ("pending", 1)
    clock.advance(31)
    assert [r.id for r in await store.claim_inbox("w2", 10, 30)] == [owned_id]


async def test_a_batch_keeps_arrival_order(store: Store, clock: FakeClock) -> None:
    """Deliveries stored in one batch get IDs in the order they arrived (the dispatcher
    works in ID order), not in the order of their delivery IDs."""
    names = ["d-zz", "d-aa", "d-mm", "d-bb"]
    ids = [i for i in await store.add_inbox([delivery(name, clock()) for name in names]) if i]
    assert len(ids) == len(names)
    assert ids == sorted(ids)
    rows = [await store.get_inbox(i) for i in ids]
    assert [r.delivery_id for r in rows if r is not None] == names


async def test_replicas_inserting_one_idempotency_key_at_once(
    make_store: MakeStore, clock: FakeClock
) -> None:
    """Two replicas recording, at the same moment, events whose actions share an
    idempotency key: one action is created, the other event is recorded without it, and
    neither gets an error (nothing waits for a lease to expire)."""
    first, second = await make_store(), await make_store()
    a = await inbox_event(first, clock(), "d-1")
    b = await inbox_event(first, clock(), "d-2")
    results = await asyncio.gather(
        first.complete_inboxes([InboxCompletion(a, [action("same-key")], [], {})]),
        second.complete_inboxes([InboxCompletion(b, [action("same-key")], [], {})]),
    )
    created = [rows for (rows,) in results if not isinstance(rows, StoreError)]
    assert sorted(len(rows) for rows in created) == [0, 1]
    states = [row.state for i in (a, b) if (row := await first.get_inbox(i)) is not None]
    assert states == ["processed", "processed"]
