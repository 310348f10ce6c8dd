"""Echo records, counts and pruning."""

from __future__ import annotations

from datetime import timedelta

from bridge.events import LinkChange
from bridge.store.base import EchoRecord
from bridge.store.store import Store
from tests.store.conftest import FakeClock
from tests.store.factories import IIO_INC, ROOTLY_INC, delivery, finish, link_count, queue_actions


async def test_find_echo_respects_expiry(store: Store, clock: FakeClock) -> None:
    """An echo record matches its (ref, change) until it expires, and nothing else."""
    (action_id,) = await queue_actions(store, clock(), ["k-1"])
    await store.claim_outbox("w", 1, 10)
    expires = clock() + timedelta(seconds=60)
    await finish(
        store, action_id, "w", "done", {}, [], [EchoRecord(ROOTLY_INC, "status=resolved", expires)]
    )
    assert await store.find_echo(ROOTLY_INC, "status=resolved", clock())
    assert not await store.find_echo(ROOTLY_INC, "status=cancelled", clock())
    assert not await store.find_echo(IIO_INC, "status=resolved", clock())
    assert not await store.find_echo(ROOTLY_INC, "status=resolved", expires)


async def test_counts(store: Store, clock: FakeClock) -> None:
    """counts() reports every outbox state (zeros included), dead letters, pending inbox."""
    await queue_actions(store, clock(), ["k-1", "k-2"])
    await store.add_inbox([delivery("waiting", clock())])
    await store.claim_outbox("w", 1, 10)
    counts = await store.counts()
    assert dict(counts.outbox_by_state) == {
        "pending": 1,
        "claimed": 1,
        "done": 0,
        "skipped": 0,
        "dead": 0,
    }
    assert counts.dead_letters == 0
    assert counts.inbox_pending == 1
    assert dict(counts.links_by_kind) == {}


async def test_prune_keeps_dead_letters_links_and_recent_rows(
    store: Store, clock: FakeClock
) -> None:
    """prune deletes old processed inbox rows, old finished actions and expired echoes;
    dead letters (their inbox reference cleared), links and recent rows stay."""
    start = clock()
    done_id, dead_id = await queue_actions(store, start, ["done", "dead"])
    await store.claim_outbox("w", 2, 10)
    await finish(
        store,
        done_id,
        "w",
        "done",
        {},
        [LinkChange("add", ROOTLY_INC, IIO_INC, "r")],
        [EchoRecord(ROOTLY_INC, "c", start + timedelta(seconds=30))],
    )
    await store.dead_letter(dead_id, "w", "gave up")
    clock.advance(3600)
    (recent_id,) = await queue_actions(store, clock(), ["recent"], delivery_id="d-2")
    await store.claim_outbox("w", 1, 10)
    await finish(store, recent_id, "w", "done", {}, [], [])

    cutoff = start + timedelta(seconds=60)
    result = await store.prune(inbox_before=cutoff, outbox_before=cutoff, now=clock())
    assert (result.inbox, result.outbox, result.echoes, result.links) == (1, 1, 1, 0)
    assert await store.get_action(done_id) is None
    dead = await store.get_action(dead_id)
    assert dead is not None
    assert dead.state == "dead"
    assert dead.inbox_id is None
    assert await store.get_action(recent_id) is not None
    assert await link_count(store) == 1
    again = await store.prune(inbox_before=cutoff, outbox_before=cutoff, now=clock())
    assert (again.inbox, again.outbox, again.echoes) == (0, 0, 0)
