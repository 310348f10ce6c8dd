"""`ReplicaQueries`: how replicas sharing one database coordinate through it.

Rate-limit quotas every replica draws from, heartbeats that count the live replicas,
leadership for the jobs only one replica runs, and the wake-up signal one replica sends the
others when it adds work. On SQLite, one process owns the file: leadership is always held
and the signal is a no-op (see the drivers).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bridge.store import queries as q
from bridge.store.access import StoreAccess
from bridge.store.base import RateBucket
from bridge.store.driver import Tx


class ReplicaQueries(StoreAccess):
    """Shared rate limits, heartbeats, leadership and work notifications."""

    # -- rate limits shared by replicas ---------------------------------------------------
    async def reserve_rate_slot(
        self, bucket: RateBucket, now: float, interval: float, burst: float
    ) -> float:
        params = {
            "platform": bucket.platform,
            "key": bucket.key_fingerprint,
            "endpoint_class": bucket.endpoint_class,
            "now": now,
            "interval": interval,
        }
        rows = await self.driver.transact(
            "reserving a rate-limit slot", lambda tx: tx.fetch(q.RESERVE_RATE, params)
        )
        return max(now, float(rows[0]["tat"]) - burst * interval)

    async def raise_rate_floor(self, bucket: RateBucket, floor: float) -> None:
        params = {
            "platform": bucket.platform,
            "key": bucket.key_fingerprint,
            "endpoint_class": bucket.endpoint_class,
            "floor": floor,
        }
        await self.driver.transact(
            "pausing a shared rate limit", lambda tx: tx.execute(q.RAISE_RATE, params)
        )

    # -- replicas -------------------------------------------------------------------------
    async def heartbeat(self, instance: str, now: datetime, live_since: datetime) -> int:
        async def work(tx: Tx) -> int:
            await tx.execute(q.HEARTBEAT, {"instance": instance, "now": now})
            await tx.execute(q.FORGET_REPLICAS, {"since": live_since})
            return int((await tx.fetch(q.COUNT_REPLICAS))[0]["n"])

        return await self.driver.transact("recording a heartbeat", work)

    async def leave(self, instance: str) -> None:
        await self.driver.transact(
            "leaving the replicas", lambda tx: tx.execute(q.LEAVE, {"instance": instance})
        )

    async def try_acquire_leadership(self) -> bool:
        return await self.driver.try_lead()

    async def release_leadership(self) -> None:
        await self.driver.release_lead()

    async def notify_work(self) -> None:
        await self.driver.notify()

    async def listen_work(self, callback: Callable[[], None]) -> None:
        await self.driver.listen(callback)
