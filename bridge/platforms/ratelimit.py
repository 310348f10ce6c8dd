"""Client-side rate limiting: one token bucket per platform API key.

Both platforms count requests per API key, so the bridge keeps one `TokenBucket` per
(platform, key) in a `RateLimiters` registry owned by the composition root. The bucket paces
requests *before* they leave, and a server 429 pauses the whole bucket until the time the
server named, so every caller of that key backs off together rather than each discovering
the limit with its own 429.

Defaults (see `DEFAULT_LIMITS`):

- incident.io: the server bucket holds 1200 requests and refills at 20/s. Our bucket refills
  at the same 20/s but holds only 20 by default. A 1200 burst would be allowed by the server
  only if nothing else used the key; another process (a second replica, a script, Terraform)
  sharing the key would then see 429s. A small capacity trades a slower start of a large
  backlog (at most 20 requests at once, then 20/s) for never overshooting. Raise `burst` when
  the bridge is the key's only user.
- Rootly: about 3000 writes/min per key = 50/s, capacity 50 for the same reason. (The
  official spec's prose on the exact numbers is garbled; the limit is configurable.)
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bridge.events import Platform

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# (requests per minute, bucket capacity) per platform.
DEFAULT_LIMITS: Final[dict[Platform, tuple[float, float]]] = {
    "incident_io": (1200.0, 20.0),
    "rootly": (3000.0, 50.0),
}


class TokenBucket:
    """A fair, FIFO token bucket for asyncio callers.

    Waiters queue on one `asyncio.Lock` (which wakes waiters in arrival order) and only the
    head of the queue sleeps, for exactly as long as its tokens need to refill: no thundering
    herd, no polling loop. A cancelled waiter takes no tokens.

    `clock` is monotonic seconds; `wall_clock` converts the unix timestamps of `pause_until`
    (server answers are wall-clock) into `clock` time. Both and `sleep` are injectable so tests
    can drive the bucket deterministically.
    """

    def __init__(
        self,
        rate_per_second: float,
        capacity: float,
        clock: Clock = time.monotonic,
        *,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not (rate_per_second > 0 and math.isfinite(rate_per_second)):
            raise ValueError(f"rate_per_second must be a positive number, got {rate_per_second}")
        if not (capacity >= 1 and math.isfinite(capacity)):
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.rate = float(rate_per_second)
        self.capacity = float(capacity)
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        # `clock` time before which no token is handed out (a server 429's retry time).
        self._paused_until = -math.inf
        self._lock = asyncio.Lock()

    @property
    def tokens(self) -> float:
        """Tokens available right now (for metrics and tests)."""
        self._refill(self._clock())
        return self._tokens

    def _refill(self, now: float) -> None:
        # `_updated` may lie in the future after a pause: nothing accrues until then.
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._updated = now

    def _wait_needed(self, tokens: float, now: float) -> float:
        self._refill(now)
        wait = max(0.0, self._paused_until - now)
        if wait > 0:
            return wait
        return max(0.0, tokens - self._tokens) / self.rate

    async def acquire(self, tokens: float = 1.0) -> float:
        """Take `tokens`, waiting in FIFO order as needed; return the seconds waited."""
        if not 0 < tokens <= self.capacity:
            raise ValueError(f"tokens must be in (0, {self.capacity}], got {tokens}")
        start = self._clock()
        async with self._lock:
            # Re-evaluate after every sleep: a 429 may have paused the bucket meanwhile.
            # Each round sleeps exactly what is missing, so this ends after a few rounds.
            while (wait := self._wait_needed(tokens, self._clock())) > 0:
                await self._sleep(wait)
            self._tokens -= tokens
        return max(0.0, self._clock() - start)

    def pause_until(self, unix_ts: float) -> None:
        """Hand out no token before `unix_ts` (a server-side 429 told us when to retry).

        The bucket is also drained: the server's bucket is empty, so after the pause we go
        at the refill rate instead of bursting straight into another 429.
        """
        deadline = self._clock() + (unix_ts - self._wall_clock())
        if deadline <= self._paused_until:
            return
        self._refill(self._clock())
        self._paused_until = deadline
        self._tokens = 0.0
        self._updated = max(self._updated, deadline)

    @property
    def paused_for(self) -> float:
        """Seconds until a server-imposed pause ends (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())


def key_fingerprint(api_key: str) -> str:
    """A short, non-reversible name for an API key (safe in logs and registry keys)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


class RateLimiters:
    """The process's token buckets, one per (platform, API key).

    Owned by the composition root and handed to the clients; the key itself is never stored,
    only its SHA-256 fingerprint. The first `get` for a key fixes its rate and burst.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._buckets: dict[tuple[Platform, str], TokenBucket] = {}

    def get(
        self,
        platform: Platform,
        api_key: str,
        rate_per_minute: float | None = None,
        burst: float | None = None,
    ) -> TokenBucket:
        """The bucket of `api_key` on `platform`, created with the given or default limits."""
        key = (platform, key_fingerprint(api_key))
        bucket = self._buckets.get(key)
        if bucket is None:
            default_rate, default_burst = DEFAULT_LIMITS[platform]
            rate = default_rate if rate_per_minute is None else rate_per_minute
            bucket = TokenBucket(
                rate / 60.0,
                default_burst if burst is None else burst,
                self._clock,
                wall_clock=self._wall_clock,
                sleep=self._sleep,
            )
            self._buckets[key] = bucket
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)
