"""Client-side rate limits, layered as the platforms count them and shared by replicas.

A platform counts each request against one or more quotas of the API key that sent it:
incident.io every request against the key's 1200/min and `POST /v2/escalations` also against
its own 60/min; Rootly writes and reads against separate per-key limits. Each platform's
table of quotas and which request counts against which is platform knowledge, in
`bridge/platforms/<platform>/limits.py` (`PlatformLimits`); this module is the machinery.

- `KeyLimiter`: the quotas of one (platform, API key). A request waits for a slot in every
  quota it counts against, the narrowest first (an escalation create waits for its 60/min
  slot before it queues for the key's): a request held up by a narrow quota never holds a
  slot of the wide one that requests of other endpoints could use.
- Each quota admits one waiter at a time through a `PriorityGate`: alternately the most
  urgent class (`request_priority`: page-stopping before creates before updates) and the
  waiter waiting longest. Only the holder of the gate takes or reserves a slot, so a
  page-stopping request that arrives behind a backlog waits for at most two slots (the
  one being waited for, and one handed to the oldest waiter), and other classes still
  get every other slot when urgent requests never stop coming.
- A quota is a `LocalQuota` (an in-process `TokenBucket`: SQLite, one replica) or a
  `SharedQuota` (PostgreSQL: one row per quota in the store, GCRA: one statement per request
  reserves the next slot and says when it comes; no lock is held across the API call). While
  the store is unreachable a shared quota falls back to an in-process bucket at its share of
  the rate: the rate divided by the live replicas last seen.
- The server's answers correct the quotas. `X-RateLimit-Limit` names the binding quota (its
  first number; the quota of the request whose limit is nearest), `X-RateLimit-Remaining`
  caps what that quota hands out (never more than the server says remains), and a
  remaining of 0 pauses it until `X-RateLimit-Reset`. A 429 pauses the quota it names
  (every quota the request counted against when it names none) until its retry time, so one
  429 on escalation creates does not stop the cancels that stop pages.

Local defaults are deliberately below the servers' bucket sizes (incident.io holds 1200
requests; the bridge bursts 20): other users of the key (another tool, Terraform) then
still find room, at the cost of a slower start of a large backlog. Raise `burst` when the
bridge is the key's only user.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from bridge.events import PRIORITIES, Platform
from bridge.store.base import RateBucket, StoreError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_RANK: Final = PRIORITIES.index("create")
"""The class of requests made outside any action (hydration reads): between page-stopping
actions and updates."""
_RANK: ContextVar[int] = ContextVar("bridge_request_rank", default=DEFAULT_RANK)
SHARED_TIMEOUT_SECONDS: Final = 2.0
"""Longest a shared quota waits for the store before it falls back to its local share."""
SHARED_RETRY_SECONDS: Final = 5.0
"""How long a shared quota that fell back counts alone before it asks the store again."""


@contextlib.contextmanager
def request_priority(rank: int) -> Iterator[None]:
    """Requests made inside this block wait in every quota as class `rank` (an index of
    `bridge.events.PRIORITIES`: 0 is page-stopping, the most urgent)."""
    token = _RANK.set(rank)
    try:
        yield
    finally:
        _RANK.reset(token)


@dataclass(frozen=True, slots=True)
class Limit:
    """A quota's size on our side: requests per minute, and how many may go at once."""

    per_minute: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_minute > 0 and math.isfinite(self.per_minute)):
            raise ValueError(f"per_minute must be a positive number, got {self.per_minute}")
        if not (self.burst >= 1 and math.isfinite(self.burst)):
            raise ValueError(f"burst must be at least 1, got {self.burst}")

    @property
    def interval(self) -> float:
        """Seconds between two requests at the full rate."""
        return 60.0 / self.per_minute


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """One quota a platform counts requests against, with our default size for it."""

    name: str
    default: Limit
    counts: str
    """Which requests count against it (for documentation)."""


@dataclass(frozen=True)
class PlatformLimits:
    """A platform's quotas and which request counts against which.

    `primary` is the quota the platform settings' `rate_limit_per_minute` and `burst`
    size; the others are endpoint classes, sized by its `endpoint_limits`. `classify` maps
    (method, path) to the names of the quotas a request counts against, narrowest first.
    """

    platform: Platform
    quotas: tuple[QuotaSpec, ...]
    primary: str
    classify: Callable[[str, str], tuple[str, ...]]

    @property
    def endpoint_classes(self) -> tuple[str, ...]:
        """The quotas other than the primary one (the keys of `endpoint_limits`)."""
        return tuple(q.name for q in self.quotas if q.name != self.primary)

    def spec(self, name: str) -> QuotaSpec:
        for quota in self.quotas:
            if quota.name == name:
                return quota
        raise KeyError(f"{self.platform} has no quota {name!r}")

    def sized(
        self,
        primary: Limit | None = None,
        endpoint_limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> dict[str, Limit]:
        """Every quota's `Limit`: the defaults, with `primary` for the primary quota and
        (per_minute, burst) from `endpoint_limits` where given (None keeps the default)."""
        sizes = {q.name: q.default for q in self.quotas}
        if primary is not None:
            sizes[self.primary] = primary
        for name, (per_minute, burst) in (endpoint_limits or {}).items():
            default = self.spec(name).default
            sizes[name] = Limit(
                default.per_minute if per_minute is None else per_minute,
                default.burst if burst is None else burst,
            )
        return sizes


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

    def limit_tokens(self, remaining: float) -> None:
        """Hold no more than `remaining` tokens: the server says that many requests are left
        (its `X-RateLimit-Remaining`), so more would earn a 429 however full we think we are."""
        self._refill(self._clock())
        self._tokens = min(self._tokens, max(0.0, remaining))


class Quota(Protocol):
    """One quota's slots, as a `KeyLimiter` takes and corrects them."""

    @property
    def limit(self) -> Limit: ...

    async def acquire(self) -> float:
        """Wait for the next slot and take it; the seconds waited."""

    async def pause_until(self, unix_ts: float) -> None:
        """No slot before `unix_ts`, and after it only at the rate (the server's is empty)."""

    async def limit_to(self, remaining: float) -> None:
        """At most `remaining` slots from now on before the rate applies again."""


class LocalQuota:
    """A quota counted in this process alone (a `TokenBucket`)."""

    def __init__(self, limit: Limit, clock: Clock, wall_clock: Clock, sleep: Sleep) -> None:
        self.limit = limit
        self.bucket = TokenBucket(
            limit.per_minute / 60.0, limit.burst, clock, wall_clock=wall_clock, sleep=sleep
        )

    async def acquire(self) -> float:
        return await self.bucket.acquire()

    async def pause_until(self, unix_ts: float) -> None:
        self.bucket.pause_until(unix_ts)

    async def limit_to(self, remaining: float) -> None:
        self.bucket.limit_tokens(remaining)


class SharedSlots(Protocol):
    """Where replicas share their quotas (the store, `bridge.store.base.Store`)."""

    async def reserve_rate_slot(
        self, bucket: RateBucket, now: float, interval: float, burst: float
    ) -> float:
        """Reserve the next slot of `bucket`; the unix time the reserved request may go."""

    async def raise_rate_floor(self, bucket: RateBucket, floor: float) -> None:
        """Let no slot of `bucket` be reserved earlier than `floor` allows."""


class SharedQuota:
    """A quota every replica counts against, kept in the store (GCRA).

    The store keeps the quota's theoretical arrival time (TAT): one statement per request
    moves it on by one interval (from now, if it lies in the past) and reserves the slot
    `burst` intervals before it (now, while the burst lasts), so replicas share the quota
    without a lock held across their API calls. A pause or a correction from the server
    raises the TAT for every replica. While the store cannot be reached (`StoreError`, or
    no answer within `SHARED_TIMEOUT_SECONDS`) the quota falls back to an in-process bucket
    at its share: rate and burst divided by `replicas()`, the live replicas last seen, and
    asks the store again `SHARED_RETRY_SECONDS` later (a store that hangs costs one request
    the timeout, not every one); `ratelimit.shared_unavailable` is logged once per outage.
    """

    def __init__(
        self,
        slots: SharedSlots,
        bucket: RateBucket,
        limit: Limit,
        replicas: Callable[[], int],
        *,
        clock: Clock,
        wall_clock: Clock,
        sleep: Sleep,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.limit = limit
        self._slots = slots
        self._bucket = bucket
        self._replicas = replicas
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._log = logger.bind(quota=bucket.endpoint_class)
        self._paused_until = -math.inf  # `clock` time
        self._store_again_at = -math.inf  # `clock` time
        self.fallback: TokenBucket | None = None

    def _fallback_bucket(self) -> TokenBucket:
        if self.fallback is None:
            share = max(1, self._replicas())
            self.fallback = TokenBucket(
                self.limit.per_minute / 60.0 / share,
                max(1.0, self.limit.burst / share),
                self._clock,
                wall_clock=self._wall_clock,
                sleep=self._sleep,
            )
            if math.isfinite(self._paused_until):
                self.fallback.pause_until(self._wall_clock() + self.paused_for)
        return self.fallback

    @property
    def paused_for(self) -> float:
        """Seconds until a pause this replica knows of ends (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    async def _shared(self, work: Callable[[], Awaitable[float]]) -> float | None:
        """`work()` against the store; None when the store did not answer in time (or did
        not lately: then it is not asked before `SHARED_RETRY_SECONDS` have passed)."""
        if self.fallback is not None and self._clock() < self._store_again_at:
            return None
        try:
            async with asyncio.timeout(SHARED_TIMEOUT_SECONDS):
                result = await work()
        except (StoreError, TimeoutError) as exc:
            if self.fallback is None:
                self._log.warning(
                    "ratelimit.shared_unavailable",
                    replicas=max(1, self._replicas()),
                    error=str(exc) or type(exc).__name__,
                )
            self._fallback_bucket()
            self._store_again_at = self._clock() + SHARED_RETRY_SECONDS
            return None
        if self.fallback is not None:
            self._log.info("ratelimit.shared_restored")
            self.fallback = None
        return result

    async def acquire(self) -> float:
        start = self._clock()
        now = self._wall_clock()
        slot = await self._shared(
            lambda: self._slots.reserve_rate_slot(
                self._bucket, now, self.limit.interval, self.limit.burst
            )
        )
        if slot is None:
            await self._fallback_bucket().acquire()
        elif (wait := slot - now) > 0:
            await self._sleep(wait)
        # A pause may have come in while we waited (a 429 on a request in flight).
        while (paused := self.paused_for) > 0:
            await self._sleep(paused)
        return max(0.0, self._clock() - start)

    async def pause_until(self, unix_ts: float) -> None:
        deadline = self._clock() + (unix_ts - self._wall_clock())
        self._paused_until = max(self._paused_until, deadline)
        if self.fallback is not None:
            self.fallback.pause_until(unix_ts)
        # The next slot comes at `unix_ts`, the ones after it at the rate (no burst).
        await self._raise(unix_ts + (self.limit.burst - 1) * self.limit.interval)

    async def limit_to(self, remaining: float) -> None:
        if self.fallback is not None:
            self.fallback.limit_tokens(remaining)
        if remaining >= self.limit.burst:
            return  # more than we would ever send at once: nothing to correct
        # `remaining` slots now, the next one an interval later.
        lead = self.limit.burst - max(0.0, remaining)
        await self._raise(self._wall_clock() + lead * self.limit.interval)

    async def _raise(self, floor: float) -> None:
        async def work() -> float:
            await self._slots.raise_rate_floor(self._bucket, floor)
            return floor

        await self._shared(work)


class PriorityGate:
    """Lets one holder in at a time; of those waiting, alternately the most urgent (lowest
    rank, then first come) and the one waiting longest.

    Alternating bounds both waits: a page-stopping waiter enters after at most two others,
    and under a steady stream of urgent waiters the others still get every other turn
    (strict priority starved creates for seconds while 429s kept the key paused). A waiter
    cancelled before its turn leaves the queue; one cancelled as its turn came passes the
    gate on.
    """

    def __init__(self) -> None:
        self._busy = False
        self._urgent: list[tuple[int, int, asyncio.Future[None]]] = []
        self._oldest: list[tuple[int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._oldest_next = False

    @contextlib.asynccontextmanager
    async def hold(self, rank: int) -> AsyncIterator[None]:
        await self._enter(rank)
        try:
            yield
        finally:
            self._leave()

    async def _enter(self, rank: int) -> None:
        if not self._busy:
            self._busy = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        arrival = next(self._arrivals)
        heapq.heappush(self._urgent, (rank, arrival, turn))
        heapq.heappush(self._oldest, (arrival, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._leave()  # our turn had come: hand it on
            raise

    def _next(self, oldest: bool) -> asyncio.Future[None] | None:
        """The next waiter still waiting by one order (waiters done by the other order, or
        cancelled, are dropped as they surface)."""
        while True:
            if oldest:
                if not self._oldest:
                    return None
                _, turn = heapq.heappop(self._oldest)
            else:
                if not self._urgent:
                    return None
                _, _, turn = heapq.heappop(self._urgent)
            if not turn.done():
                return turn

    def _leave(self) -> None:
        oldest, self._oldest_next = self._oldest_next, not self._oldest_next
        turn = self._next(oldest)
        if turn is not None:
            turn.set_result(None)
        else:
            self._busy = False

    @property
    def waiting(self) -> int:
        """Waiters queued for the gate (for tests and metrics)."""
        return sum(1 for _, _, turn in self._urgent if not turn.done())


@dataclass(frozen=True, slots=True)
class RateLimitAnswer:
    """What a server's `X-RateLimit-*` headers say about its binding quota."""

    limit: float | None
    """The binding quota's size: the first number of `X-RateLimit-Limit`."""
    window: float | None
    """Its window in seconds, when the header names it (``60, 60;window=60``)."""
    remaining: float | None
    reset: float | None
    """When it resets, unix seconds."""


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_ratelimit_headers(headers: Mapping[str, str], now: float) -> RateLimitAnswer | None:
    """The `X-RateLimit-*` headers of an answer (None when it has none).

    `X-RateLimit-Limit` is the binding quota's limit, then every policy that applied, e.g.
    ``60, 1200;window=60, 60;window=60``; `X-RateLimit-Reset` is unix seconds (a small
    number is read as a delay from `now`).
    """
    limit_header = headers.get("X-RateLimit-Limit")
    remaining_header = headers.get("X-RateLimit-Remaining")
    if limit_header is None and remaining_header is None:
        return None
    limit = window = None
    if limit_header:
        items = [item.strip() for item in limit_header.split(",") if item.strip()]
        parsed = []
        for item in items:
            number, *params = (part.strip() for part in item.split(";"))
            windows = [_number(p.split("=", 1)[1]) for p in params if p.startswith("window=")]
            parsed.append((_number(number), windows[0] if windows else None))
        if parsed:
            limit, window = parsed[0]
            if window is None:
                window = next((w for n, w in parsed[1:] if n == limit and w), None)
    remaining = _number(remaining_header) if remaining_header else None
    reset = None
    if reset_header := headers.get("X-RateLimit-Reset"):
        value = _number(reset_header)
        if value is not None:
            reset = value if value >= 1e9 else now + value
    return RateLimitAnswer(limit, window, remaining, reset)


class KeyLimiter:
    """The quotas of one API key on one platform, and which requests count against which.

    `acquire` waits in every quota a request counts against (narrowest first), each behind
    a `PriorityGate` that serves the most urgent class first (`request_priority`);
    `observe` and `rate_limited` apply what the server answered.
    """

    def __init__(
        self,
        limits: PlatformLimits,
        quotas: Mapping[str, Quota],
        wall_clock: Clock = time.time,
    ) -> None:
        missing = sorted({q.name for q in limits.quotas} - set(quotas))
        if missing:
            raise ValueError(f"{limits.platform}: no quota given for {', '.join(missing)}")
        self.platform: Platform = limits.platform
        self.quotas: Mapping[str, Quota] = dict(quotas)
        self._classify = limits.classify
        self._gates = {name: PriorityGate() for name in quotas}
        self._wall_clock = wall_clock

    def counted_against(self, method: str, path: str) -> tuple[str, ...]:
        """The quotas a request counts against, narrowest first."""
        return self._classify(method.upper(), path)

    async def acquire(self, used: Sequence[str]) -> float:
        """Wait for a slot in each of `used`, in order; the seconds waited in all."""
        rank = _RANK.get()
        waited = 0.0
        for name in used:
            async with self._gates[name].hold(rank):
                waited += await self.quotas[name].acquire()
        return waited

    def _binding(self, used: Sequence[str], answer: RateLimitAnswer | None) -> str | None:
        """The quota among `used` the answer's `X-RateLimit-Limit` names: the one whose
        limit over the answer's window (a minute when it names none) is nearest; the only
        one when the request counted against one."""
        if answer is None or answer.limit is None or answer.limit <= 0:
            return used[0] if len(used) == 1 else None
        window = answer.window or 60.0
        limit = answer.limit

        def distance(name: str) -> float:
            ours = self.quotas[name].limit.per_minute * window / 60.0
            return abs(math.log(ours / limit))

        return min(used, key=distance)

    async def observe(self, used: Sequence[str], headers: Mapping[str, str]) -> None:
        """Correct the binding quota from a successful answer's headers: never more than
        the server says remains; none at all until the reset when nothing remains."""
        now = self._wall_clock()
        answer = parse_ratelimit_headers(headers, now)
        name = self._binding(used, answer)
        if answer is None or answer.remaining is None or name is None:
            return
        quota = self.quotas[name]
        if answer.remaining < 1 and answer.reset is not None and answer.reset > now:
            await quota.pause_until(answer.reset)
        else:
            await quota.limit_to(answer.remaining)

    async def rate_limited(
        self, used: Sequence[str], headers: Mapping[str, str], retry_at: float
    ) -> None:
        """A 429: pause the quota it names until `retry_at` (all of `used` if it names
        none, since any of them may be the one that ran out)."""
        answer = parse_ratelimit_headers(headers, self._wall_clock())
        named = self._binding(used, answer) if answer is not None and answer.limit else None
        for name in [named] if named is not None else used:
            await self.quotas[name].pause_until(retry_at)


def key_fingerprint(api_key: str) -> str:
    """A short, non-reversible name for an API key (safe in logs, registry and store keys)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


class RateLimiters:
    """The process's `KeyLimiter`s, one per (platform, API key fingerprint).

    Owned by the composition root and handed to the clients; the key itself is never
    stored. With `shared` (the store, on PostgreSQL) quotas are `SharedQuota`s every replica
    counts against; without it (SQLite: one replica) `LocalQuota`s. The first `get` for a
    key fixes its sizes. `set_replicas` tells the shared quotas how many replicas share
    them, for their fallback while the store is unreachable.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        shared: SharedSlots | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._shared = shared
        self._log = logger or structlog.get_logger(__name__)
        self._limiters: dict[tuple[Platform, str], KeyLimiter] = {}
        self.replicas = 1

    def set_replicas(self, count: int) -> None:
        """The live replicas last seen (at least this one)."""
        self.replicas = max(1, count)

    def get(
        self,
        limits: PlatformLimits,
        api_key: str,
        sizes: Mapping[str, Limit] | None = None,
    ) -> KeyLimiter:
        """The limiter of `api_key` on `limits.platform`, with the given or default sizes."""
        fingerprint = key_fingerprint(api_key)
        found = self._limiters.get((limits.platform, fingerprint))
        if found is not None:
            return found
        resolved = {**limits.sized(), **(sizes or {})}
        quotas: dict[str, Quota] = {}
        for name, limit in resolved.items():
            if self._shared is None:
                quotas[name] = LocalQuota(limit, self._clock, self._wall_clock, self._sleep)
            else:
                quotas[name] = SharedQuota(
                    self._shared,
                    RateBucket(limits.platform, fingerprint, name),
                    limit,
                    lambda: self.replicas,
                    clock=self._clock,
                    wall_clock=self._wall_clock,
                    sleep=self._sleep,
                    logger=self._log.bind(platform=limits.platform),
                )
        limiter = KeyLimiter(limits, quotas, self._wall_clock)
        self._limiters[(limits.platform, fingerprint)] = limiter
        return limiter

    def __len__(self) -> int:
        return len(self._limiters)
