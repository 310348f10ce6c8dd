"""Leadership and work notifications behave on both backends for a single instance."""

from __future__ import annotations

import asyncio

from bridge.store.store import Store


async def test_single_instance_is_leader_and_notify_is_safe(store: Store) -> None:
    """A lone store is leader (SQLite always; PostgreSQL via the lock), re-entrantly;
    notify/listen never fail; release and close are idempotent."""
    calls: list[int] = []
    listening = asyncio.create_task(store.listen_work(lambda: calls.append(1)))
    assert await store.try_acquire_leadership()
    assert await store.try_acquire_leadership()
    await store.notify_work()
    await store.release_leadership()
    await store.release_leadership()
    await store.ping()
    listening.cancel()
    await asyncio.gather(listening, return_exceptions=True)
    await store.close()
    await store.close()
