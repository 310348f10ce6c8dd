"""Outbox: claims with leases and crash recovery, owner checks, retries, dead letters,
replay and drop, concurrent claimers."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bridge.events import ActionId, LinkChange
from bridge.store.base import LEASE_LOST, EchoRecord
from bridge.store.store import Store
from tests.store.conftest import FakeClock
from tests.store.factories import (
    IIO_INC,
    ROOTLY_INC,
    action,
    complete,
    finish,
    inbox_event,
    link_count,
    queue_actions,
)


async def test_claim_lease_and_expired_lease_reclaim(store: Store, clock: FakeClock) -> None:
    """Due rows are claimed oldest first with a lease; a claimed row is invisible to other
    claimers until its lease expires, then another worker takes it over."""
    ids = await queue_actions(store, clock(), ["k-1", "k-2", "k-3"])
    first = await store.claim_outbox("w1", 2, lease_seconds=10)
    assert [r.id for r in first] == ids[:2]
    assert all(r.state == "claimed" and r.lease_owner == "w1" for r in first)
    assert first[0].lease_expires_at == clock() + timedelta(seconds=10)
    assert first[0].attempts == 0
    assert [r.id for r in await store.claim_outbox("w2", 10, 10)] == ids[2:]
    assert await store.claim_outbox("w2", 10, 10) == []
    clock.advance(11)
    taken_over = await store.claim_outbox("w2", 10, 10)
    assert [r.id for r in taken_over] == ids
    assert {r.lease_owner for r in taken_over} == {"w2"}


async def test_takeover_from_an_expired_lease_counts_an_attempt(
    store: Store, clock: FakeClock
) -> None:
    """A claim of a pending row counts nothing; taking a row over from an expired lease (its
    holder died or stalled without an outcome) counts one attempt and records whose lease
    was lost, so an action that kills the process every time runs out of attempts."""
    (action_id,) = await queue_actions(store, clock(), ["k-1"])
    (first,) = await store.claim_outbox("w1", 1, lease_seconds=10)
    assert (first.attempts, first.last_error) == (0, None)
    clock.advance(11)
    (second,) = await store.claim_outbox("w2", 1, lease_seconds=10)
    assert second.id == action_id
    assert second.attempts == 1
    assert second.last_error == LEASE_LOST + "w1"
    clock.advance(11)
    (third,) = await store.claim_outbox("w3", 1, lease_seconds=10)
    assert (third.attempts, third.last_error) == (2, LEASE_LOST + "w2")
    # A retry after a real failure is counted by retry_action, then claimed as pending.
    assert await store.retry_action(action_id, "w3", clock(), "HTTP 503", count_attempt=True)
    (fourth,) = await store.claim_outbox("w4", 1, lease_seconds=10)
    assert (fourth.attempts, fourth.last_error) == (3, "HTTP 503")
    assert await store.dead_letter(action_id, "w4", "given up", count_attempt=False)
    (dead,) = await store.list_outbox(["dead"], 10)
    assert (dead.attempts, dead.last_error) == (3, "given up")


async def test_renewed_lease_keeps_an_action_from_being_taken_over(
    store: Store, clock: FakeClock
) -> None:
    """A holder that renews keeps its actions past the first lease's end: no takeover, no
    attempt counted. Renewal touches only what `owner` still holds: not another owner's
    row, not a pending one, not a finished one (each missing from the returned IDs), and an
    expired lease nobody took over is still the holder's to renew."""
    held, other, pending = await queue_actions(store, clock(), ["k-1", "k-2", "k-3"])
    await store.claim_outbox("w1", 1, lease_seconds=10)
    await store.claim_outbox("w2", 1, lease_seconds=10)
    clock.advance(8)
    renewed = await store.renew_actions("w1", [held, other, pending], lease_seconds=10)
    assert renewed == [held]
    clock.advance(8)  # 16 s after the claim: past the first lease, within the renewed one
    claimed = await store.claim_outbox("w3", 10, lease_seconds=10)
    # w2 did not renew: its row was taken over (an attempt); w1's was not.
    assert [(r.id, r.attempts) for r in claimed] == [(other, 1), (pending, 0)]
    row = await store.get_action(held)
    assert row is not None
    assert (row.state, row.lease_owner, row.attempts, row.last_error) == ("claimed", "w1", 0, None)
    assert row.lease_expires_at == clock() + timedelta(seconds=2)
    clock.advance(5)  # w1's renewed lease has expired, but nobody took the row over
    assert await store.renew_actions("w1", [held], lease_seconds=10) == [held]
    assert await finish(store, held, "w1", "done", {}, [], [])
    assert await store.renew_actions("w1", [held], lease_seconds=10) == []
    assert await store.renew_actions("w1", [], lease_seconds=10) == []


async def test_claim_by_platform(store: Store, clock: FakeClock) -> None:
    """A claimer for one platform only gets that platform's actions."""
    inbox_id = await inbox_event(store, clock())
    rootly_id, iio_id = await complete(
        store,
        inbox_id,
        [action("r"), action("i", operation="incident_io.edit_incident", target=IIO_INC)],
        [],
        {},
    )
    (row,) = await store.claim_outbox("w", 10, 10, platform="incident_io")
    assert row.id == iio_id
    assert row.action.platform == "incident_io"
    (row,) = await store.claim_outbox("w", 10, 10)
    assert row.id == rootly_id


async def test_finish_checks_owner_and_records_outcome(store: Store, clock: FakeClock) -> None:
    """Only the lease holder may finish; finishing stores state, result, links and echo
    records together; a worker whose lease was taken over is refused."""
    (action_id,) = await queue_actions(store, clock(), ["k-1"])
    await store.claim_outbox("w1", 1, 10)
    echo = EchoRecord(ROOTLY_INC, "status=cancelled", clock() + timedelta(seconds=60))
    link = LinkChange("add", ROOTLY_INC, IIO_INC, "rule")
    assert not await finish(store, action_id, "intruder", "done", {}, [link], [echo])
    assert await link_count(store) == 0

    clock.advance(11)
    await store.claim_outbox("w2", 1, 10)
    assert not await finish(store, action_id, "w1", "done", {}, [], [])
    assert await finish(store, action_id, "w2", "done", {"id": "x"}, [link], [echo])
    row = await store.get_action(action_id)
    assert row is not None
    assert row.state == "done"
    assert row.result == {"id": "x"}
    assert row.finished_at == clock()
    assert row.lease_owner is None
    assert await link_count(store) == 1
    assert await store.find_echo(ROOTLY_INC, "status=cancelled", clock())
    assert not await finish(store, action_id, "w2", "done", {}, [], [])


async def test_retry_counts_attempts_only_when_asked(store: Store, clock: FakeClock) -> None:
    """A retry returns the row to pending at the given time; rate-limit retries do not
    count an attempt; the owner check applies."""
    (action_id,) = await queue_actions(store, clock(), ["k-1"])
    await store.claim_outbox("w", 1, 10)
    assert not await store.retry_action(action_id, "other", clock(), "x", True)
    assert await store.retry_action(action_id, "w", clock() + timedelta(seconds=5), "503", True)
    assert await store.claim_outbox("w", 1, 10) == []
    clock.advance(5)
    (row,) = await store.claim_outbox("w", 1, 10)
    assert row.attempts == 1
    assert row.last_error == "503"
    assert await store.retry_action(action_id, "w", clock(), "429", count_attempt=False)
    (row,) = await store.claim_outbox("w", 1, 10)
    assert row.attempts == 1
    assert row.last_error == "429"


async def test_dead_letter_replay_and_drop(store: Store, clock: FakeClock) -> None:
    """Dead letters are outbox rows in state 'dead': counted, replayable (due now, with a
    fresh budget: `attempts` keeps counting and `attempts_before_replay` marks where the
    budget restarts; `last_error` still describes the latest attempt) and droppable (the
    result says an operator dropped it); replay/drop of a row that is not dead is
    refused."""
    (action_id,) = await queue_actions(store, clock(), ["k-1"])
    assert not await store.replay_action(action_id)
    assert not await store.drop_action(action_id)
    await store.claim_outbox("w", 1, 10)
    assert not await store.dead_letter(action_id, "other", "boom")
    assert await store.dead_letter(action_id, "w", "422 invalid")
    row = await store.get_action(action_id)
    assert row is not None
    assert (row.state, row.attempts, row.last_error) == ("dead", 1, "422 invalid")
    counts = await store.counts()
    assert counts.dead_letters == 1
    assert counts.outbox_by_state["dead"] == 1
    assert [r.id for r in await store.list_outbox(["dead"], 10)] == [action_id]

    assert await store.replay_action(action_id)
    (row,) = await store.claim_outbox("w", 1, 10)
    assert (row.id, row.attempts, row.attempts_before_replay) == (action_id, 1, 1)
    assert (row.attempts_since_replay, row.last_error) == (0, "422 invalid")
    assert await store.dead_letter(action_id, "w", "again")
    assert await store.drop_action(action_id)
    row = await store.get_action(action_id)
    assert row is not None
    assert (row.state, row.attempts, row.last_error) == ("skipped", 2, "again")
    assert row.result == {"skipped": "dropped", "detail": "dropped by an operator"}
    assert (await store.counts()).dead_letters == 0


async def test_list_outbox_filters_and_pages(store: Store, clock: FakeClock) -> None:
    """list_outbox filters by state and pages in id order."""
    ids = await queue_actions(store, clock(), ["k-1", "k-2", "k-3"])
    await store.claim_outbox("w", 1, 10)
    assert [r.id for r in await store.list_outbox(["pending"], 10)] == ids[1:]
    assert [r.id for r in await store.list_outbox(None, 2, offset=1)] == ids[1:]
    assert await store.get_action(ActionId(999_999)) is None


async def test_concurrent_claimers_in_one_process(store: Store, clock: FakeClock) -> None:
    """Eight claimers sharing one store never claim the same row (SQLite: serialised writes;
    PostgreSQL: SKIP LOCKED)."""
    keys = [f"k-{i}" for i in range(200)]
    ids = await queue_actions(store, clock(), keys)

    async def worker(name: str) -> list[ActionId]:
        got: list[ActionId] = []
        for _ in range(100):  # bounded: 200 rows / 8 workers / 5 per claim
            rows = await store.claim_outbox(name, 5, 60)
            if not rows:
                break
            got.extend(r.id for r in rows)
        return got

    results = await asyncio.gather(*(worker(f"w{i}") for i in range(8)))
    claimed = [i for r in results for i in r]
    assert sorted(claimed) == sorted(ids)
    assert len(set(claimed)) == len(claimed)
