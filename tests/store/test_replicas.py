"""Several replicas on one PostgreSQL: exactly-once claims, one leader, work notifications,
and surviving connections killed under the store."""

from __future__ import annotations

import asyncio

import pytest

from bridge.events import ActionId
from bridge.store.store import Store
from bridge.store.urls import LOCK_NAMESPACE, lock_keys
from tests.pg import pg_connect
from tests.store.conftest import FakeClock, MakeStore, Target
from tests.store.factories import queue_actions

pytestmark = pytest.mark.postgres


async def test_four_replicas_claim_each_row_exactly_once(
    make_pg_store: MakeStore, clock: FakeClock
) -> None:
    """Four stores (four pools, like four replicas) drain 1,000 actions concurrently; every
    action is claimed exactly once (FOR UPDATE SKIP LOCKED)."""
    stores = [await make_pg_store(pool_size=2) for _ in range(4)]
    ids = await queue_actions(stores[0], clock(), [f"k-{i}" for i in range(1000)])
    assert len(ids) == 1000

    async def replica(store: Store, name: str) -> list[ActionId]:
        got: list[ActionId] = []
        for _ in range(1000):  # bounded; ends when the outbox is drained
            rows = await store.claim_outbox(name, 10, 60)
            if not rows:
                break
            got.extend(r.id for r in rows)
        return got

    results = await asyncio.gather(*(replica(s, f"r{i}") for i, s in enumerate(stores)))
    claimed = [i for r in results for i in r]
    assert len(claimed) == 1000
    assert set(claimed) == set(ids)
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            assert not set(a) & set(b)


async def test_only_one_leader_until_released(make_pg_store: MakeStore) -> None:
    """Of two replicas only one becomes leader; asking again keeps it; releasing (or
    closing) lets the other take over."""
    first, second = await make_pg_store(), await make_pg_store()
    assert await first.try_acquire_leadership()
    assert await first.try_acquire_leadership()
    assert not await second.try_acquire_leadership()
    await first.release_leadership()
    assert await second.try_acquire_leadership()
    assert not await first.try_acquire_leadership()
    await second.close()
    assert await first.try_acquire_leadership()


async def test_leadership_lost_with_its_connection(
    make_pg_store: MakeStore, pg_target: Target
) -> None:
    """If the leader's dedicated connection dies, the lock is gone: the next call notices,
    reconnects and competes again, and a rival may win in between."""
    leader, rival = await make_pg_store(), await make_pg_store()
    assert await leader.try_acquire_leadership()
    _, key2 = lock_keys(pg_target.schema, "leader")
    admin = await pg_connect()
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
            "WHERE locktype = 'advisory' AND classid = $1::bigint::oid "
            "AND objid = $2::bigint::oid AND objsubid = 2",
            LOCK_NAMESPACE,
            key2 & 0xFFFFFFFF,
        )
    finally:
        await admin.close()
    assert killed == 1
    assert await rival.try_acquire_leadership()
    assert not await leader.try_acquire_leadership()
    await rival.release_leadership()
    assert await leader.try_acquire_leadership()


async def _listening(store: Store, calls: asyncio.Queue[None]) -> asyncio.Task[None]:
    """`store.listen_work` running, its connect-time call already received."""
    task = asyncio.create_task(store.listen_work(lambda: calls.put_nowait(None)))
    await asyncio.wait_for(calls.get(), timeout=10)
    return task


async def test_notify_wakes_listeners_on_other_replicas(make_pg_store: MakeStore) -> None:
    """notify_work on one replica calls listen_work callbacks on another."""
    listener, notifier = await make_pg_store(), await make_pg_store()
    calls: asyncio.Queue[None] = asyncio.Queue()
    task = await _listening(listener, calls)
    try:
        await notifier.notify_work()
        await asyncio.wait_for(calls.get(), timeout=5)
    finally:
        task.cancel()


async def test_listen_reconnects_after_its_connection_is_killed(
    make_pg_store: MakeStore,
) -> None:
    """A LISTEN connection the server terminates (a failover, an admin's
    pg_terminate_backend) is reconnected by itself: the callback fires once for the gap,
    and notifications from another replica wake the listener again."""
    listener, notifier = await make_pg_store(), await make_pg_store()
    calls: asyncio.Queue[None] = asyncio.Queue()
    task = await _listening(listener, calls)
    admin = await pg_connect()
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'bridge-listen' AND datname = current_database()"
        )
        assert killed == 1
        await asyncio.wait_for(calls.get(), timeout=10)  # reconnected: one wake for the gap
        await notifier.notify_work()
        await asyncio.wait_for(calls.get(), timeout=5)
    finally:
        await admin.close()
        task.cancel()


async def test_pool_survives_killed_connections(
    make_pg_store: MakeStore, pg_target: Target, clock: FakeClock
) -> None:
    """Connections killed under the store (a database restart, say) are replaced on next
    use (pool pre-ping), so the store keeps working."""
    store = await make_pg_store()
    await queue_actions(store, clock(), ["k-1"])
    admin = await pg_connect()
    try:
        # Tests run one at a time, so every 'bridge' session here is this store's pool.
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'bridge' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert killed >= 1
    (row,) = await store.claim_outbox("w", 10, 10)
    assert row.action.idempotency_key == "k-1"
