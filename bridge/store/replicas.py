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
        """Reserve the next slot of a quota every replica shares (GCRA, one statement, no
        lock held after it): the unix time at which the reserved request may go, never
        before `now` (unix seconds). `interval` is the seconds between slots at the full
        rate, `burst` how many may go at once after a quiet spell. A quota not seen
        before starts full."""
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
        """Reserve no slot of the quota earlier than its theoretical arrival time `floor`
        allows (a 429 or a server's correction: see `bridge.platforms.ratelimit`)."""
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
        """Record that replica `instance` is alive at `now`, forget replicas not seen since
        `live_since`, and return how many are alive (this one included)."""

        async def work(tx: Tx) -> int:
            await tx.execute(q.HEARTBEAT, {"instance": instance, "now": now})
            await tx.execute(q.FORGET_REPLICAS, {"since": live_since})
            return int((await tx.fetch(q.COUNT_REPLICAS))[0]["n"])

        return await self.driver.transact("recording a heartbeat", work)

    async def leave(self, instance: str) -> None:
        """Forget replica `instance` (it is stopping), so the others' count drops now."""
        await self.driver.transact(
            "leaving the replicas", lambda tx: tx.execute(q.LEAVE, {"instance": instance})
        )

    async def try_acquire_leadership(self) -> bool:
        """True while this instance is the leader (scheduler jobs run on the leader only).

        PostgreSQL: a session advisory lock on a dedicated connection kept open while
        leading; calling again while leading returns True; if that connection died,
        leadership is lost and the call tries to take it again. SQLite: always True.
        """
        return await self.driver.try_lead()

    async def release_leadership(self) -> None:
        await self.driver.release_lead()

    async def notify_work(self) -> None:
        """Wake other replicas' workers (PostgreSQL ``NOTIFY``); SQLite: no-op."""
        await self.driver.notify()

    async def listen_work(self, callback: Callable[[], None]) -> None:
        """Call `callback` when any replica calls `notify_work` (PostgreSQL ``LISTEN``),
        until cancelled; a lost connection is reconnected with back-off, and `callback` is
        called once after each (re)connect. Workers still poll, so a gap only costs
        latency. SQLite: returns at once."""
        await self.driver.listen(callback)
