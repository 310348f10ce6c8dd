"""Rate limits shared by replicas through the store (GCRA), with the bridge's `SharedQuota`
on two store connections, and the replica heartbeats its fallback share comes from."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from bridge.platforms.ratelimit import SHARED_RETRY_SECONDS, Limit, SharedQuota
from bridge.store.base import RateBucket
from bridge.store.store import Store
from tests.store.conftest import FakeClock, MakeStore

BUCKET = RateBucket("incident_io", "0123456789abcdef", "key")


class FakeTime:
    """Monotonic and wall clocks that move only when a caller sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_900_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def replica(store: Store, time: FakeTime, limit: Limit, replicas: int = 1) -> SharedQuota:
    return SharedQuota(
        store,
        BUCKET,
        limit,
        lambda: replicas,
        clock=time.monotonic,
        wall_clock=time.wall,
        sleep=time.sleep,
        logger=structlog.get_logger("test"),
    )


async def test_two_replicas_share_one_quota(make_store: MakeStore) -> None:
    """Two replicas on their own store connections draw from one quota (60/min, burst 2):
    together they get the burst, then one slot a second, never twice the rate."""
    time = FakeTime()
    limit = Limit(60, 2)
    a = replica(await make_store(), time, limit)
    b = replica(await make_store(), time, limit)
    waits = [await quota.acquire() for quota in (a, b, a, b, a, b)]
    assert waits == pytest.approx([0, 0, 1, 1, 1, 1])


async def test_a_pause_or_correction_one_replica_hears_holds_every_replica(
    make_store: MakeStore,
) -> None:
    """A 429 answered to one replica pauses the quota for the other too, after which slots
    come at the rate (no burst); a server saying 1 remains leaves the other replica 1."""
    time = FakeTime()
    limit = Limit(60, 5)
    a = replica(await make_store(), time, limit)
    b = replica(await make_store(), time, limit)
    await a.pause_until(time.wall() + 10)
    assert await b.acquire() == pytest.approx(10)
    assert await b.acquire() == pytest.approx(1)
    time.now += 60  # the quota refills
    await a.limit_to(1)
    assert await b.acquire() == 0
    assert await b.acquire() == pytest.approx(1)


async def test_store_reserves_slots_in_one_statement_per_request(store: Store) -> None:
    """The store's GCRA: a new quota starts full, `burst` slots come at once, then one per
    interval; raising the floor puts the next slot after it."""
    now = 1_900_000_000.0
    slots = [await store.reserve_rate_slot(BUCKET, now, 0.5, 3) for _ in range(5)]
    assert slots == pytest.approx([now, now, now, now + 0.5, now + 1.0])
    await store.raise_rate_floor(BUCKET, now + 10 + (3 - 1) * 0.5)
    assert await store.reserve_rate_slot(BUCKET, now, 0.5, 3) == pytest.approx(now + 10)
    other = RateBucket("incident_io", "0123456789abcdef", "escalation_create")
    assert await store.reserve_rate_slot(other, now, 1.0, 1) == now


async def test_without_the_store_a_replica_falls_back_to_its_share(
    make_store: MakeStore,
) -> None:
    """While the store cannot be reached a replica paces itself at the rate divided by the
    live replicas (burst too), asks the store again only every few seconds, and returns to
    the shared quota when the store is back."""
    time = FakeTime()
    store = await make_store()
    quota = replica(store, time, Limit(60, 4), replicas=2)
    await store.close()
    waits = [await quota.acquire() for _ in range(4)]
    assert waits == pytest.approx([0, 0, 2, 2])  # 30/min, burst 2
    await store.open()
    # 4 s after the store failed it is not asked again yet: still counting alone.
    assert await quota.acquire() == pytest.approx(2)
    assert quota.fallback is not None
    time.now += SHARED_RETRY_SECONDS
    assert await quota.acquire() == 0
    assert quota.fallback is None


async def test_heartbeats_count_the_live_replicas(make_store: MakeStore, clock: FakeClock) -> None:
    """Each replica's heartbeat returns how many replicas were seen since the cut-off; a
    replica gone quiet is forgotten, one that leaves is gone at once."""
    a, b = await make_store(), await make_store()
    assert await a.heartbeat("a", clock(), clock()) == 1
    assert await b.heartbeat("b", clock(), clock()) == 2
    clock.advance(20)
    assert await a.heartbeat("a", clock(), clock().replace(second=10)) == 1
    await b.heartbeat("b", clock(), clock())
    await b.leave("b")
    assert await a.heartbeat("a", clock(), clock()) == 1
