"""LeaseKeeper: what it renews, and that a failed renewal neither stops it nor goes unseen."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from bridge.logging import get_logger
from bridge.pipeline.leases import LeaseKeeper
from bridge.store.base import StoreUnavailable
from bridge.tasks import Supervisor


class RecordingStore:
    """Stands in for the store's renew call: records each call; fails the ones listed in
    `failures` (by call number, from 1); renews everything it is asked about otherwise."""

    def __init__(self, failures: Sequence[int] = ()) -> None:
        self.calls: list[tuple[list[int], float]] = []
        self._failures = set(failures)

    async def renew(self, ids: Sequence[int], lease_seconds: float) -> list[int]:
        self.calls.append((list(ids), lease_seconds))
        if len(self.calls) in self._failures:
            raise StoreUnavailable("store blipped")
        return list(ids)


async def test_renews_what_is_held_until_it_is_released() -> None:
    """Only held IDs are renewed, with the configured lease; a second hold of an ID in hand
    is refused (the caller is told it is already working on it); a released ID is no
    longer renewed, and nothing held means no store call at all."""
    store = RecordingStore()
    supervisor = Supervisor(get_logger("test"))
    keeper: LeaseKeeper[int] = LeaseKeeper("t", store.renew, 60.0, supervisor, get_logger("t"))
    keeper.start()
    try:
        assert await keeper.renew() == []
        assert store.calls == []
        assert keeper.hold(7)
        assert keeper.hold(3)
        assert not keeper.hold(7)
        assert len(keeper) == 2
        assert await keeper.renew() == [3, 7]
        keeper.release(7)
        keeper.release(7)  # releasing twice is harmless
        assert await keeper.renew() == [3]
        assert store.calls == [([3, 7], 60.0), ([3], 60.0)]
    finally:
        await supervisor.stop()


async def test_failed_renewal_is_logged_and_the_next_one_still_runs() -> None:
    """The background loop renews every third of a lease; a renewal the store refuses is
    logged as `lease.renewal_failed` (with how many leases are at risk) and the loop goes
    on: the next round renews again."""
    store = RecordingStore(failures=[1])
    supervisor = Supervisor(get_logger("test"))
    lease = 0.06
    with structlog.testing.capture_logs() as logs:
        keeper: LeaseKeeper[int] = LeaseKeeper("t", store.renew, lease, supervisor, get_logger("t"))
        keeper.start()
        keeper.hold(1)
        try:
            for _ in range(200):
                if len(store.calls) >= 3:
                    break
                await asyncio.sleep(lease / 3)
        finally:
            await supervisor.stop()
    assert len(store.calls) >= 3
    assert all(call == ([1], lease) for call in store.calls)
    failures = [e for e in logs if e["event"] == "lease.renewal_failed"]
    assert len(failures) == 1
    assert failures[0]["held"] == 1
    assert "store blipped" in failures[0]["error"]
    assert not [e for e in logs if e["event"] == "task.crashed"]
