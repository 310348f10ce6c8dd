"""Client-side rate limits: the token bucket, quotas layered per endpoint class, priority
classes, corrections from the servers' X-RateLimit headers and 429s, the per-key registry."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from aiohttp import web

from bridge.metrics import Metrics
from bridge.platforms.errors import RateLimited
from bridge.platforms.incident_io.client import IncidentIoClient
from bridge.platforms.incident_io.limits import ESCALATION_CREATE, KEY
from bridge.platforms.incident_io.limits import LIMITS as INCIDENT_IO_LIMITS
from bridge.platforms.ratelimit import (
    KeyLimiter,
    Limit,
    LocalQuota,
    PriorityGate,
    RateLimiters,
    TokenBucket,
    key_fingerprint,
    parse_ratelimit_headers,
    request_priority,
)
from bridge.platforms.rootly.limits import LIMITS as ROOTLY_LIMITS
from bridge.platforms.rootly.limits import READS, WRITES
from tests.clients.conftest import INCIDENT_IO_TOKEN, Recorded, RecordingServer, json_response


class FakeTime:
    """A clock that only moves when a waiter sleeps; counts the sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_offset = 1_700_000_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def fake_bucket(rate: float, capacity: float) -> tuple[TokenBucket, FakeTime]:
    fake = FakeTime()
    bucket = TokenBucket(rate, capacity, fake.monotonic, wall_clock=fake.wall, sleep=fake.sleep)
    return bucket, fake


async def test_burst_is_free_then_paced_at_the_rate() -> None:
    """Up to `capacity` acquisitions return at once; the next waits exactly 1/rate."""
    bucket, fake = fake_bucket(rate=10, capacity=3)
    waits = [await bucket.acquire() for _ in range(3)]
    assert waits == [0.0, 0.0, 0.0]
    assert await bucket.acquire() == pytest.approx(0.1)
    assert fake.sleeps == [pytest.approx(0.1)]


async def test_concurrent_waiters_are_served_in_arrival_order_without_polling() -> None:
    """Waiters get tokens FIFO, and only the head of the queue ever sleeps (no herd)."""
    bucket, fake = fake_bucket(rate=5, capacity=1)
    order: list[int] = []

    async def worker(n: int) -> None:
        await bucket.acquire()
        order.append(n)

    tasks = [asyncio.create_task(worker(n), name=f"worker-{n}") for n in range(10)]
    await asyncio.gather(*tasks)
    assert order == list(range(10))
    # One sleep per token that had to refill: 9 tokens at 0.2 s each, no extra wake-ups.
    assert len(fake.sleeps) == 9
    assert sum(fake.sleeps) == pytest.approx(9 * 0.2)


async def test_pause_until_blocks_every_caller_and_drains_the_burst() -> None:
    """A server 429 pauses the key until the named time, then requests go at the rate only."""
    bucket, fake = fake_bucket(rate=10, capacity=10)
    bucket.pause_until(fake.wall() + 2.0)
    assert bucket.paused_for == pytest.approx(2.0)
    first = await bucket.acquire()
    assert first == pytest.approx(2.1)  # the pause, then one refill: the burst is gone
    assert await bucket.acquire() == pytest.approx(0.1)
    # An earlier pause never shortens a longer one.
    bucket.pause_until(fake.wall() + 5)
    bucket.pause_until(fake.wall() + 1)
    assert bucket.paused_for == pytest.approx(5)


async def test_pause_arriving_while_a_caller_waits_is_honoured() -> None:
    """A waiter already sleeping for a token re-checks and also waits out a new pause."""
    fake = FakeTime()
    gate = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await gate.wait()
        await fake.sleep(seconds)

    bucket = TokenBucket(1, 1, fake.monotonic, wall_clock=fake.wall, sleep=slow_sleep)
    await bucket.acquire()
    waiter = asyncio.create_task(bucket.acquire(), name="waiter")
    await asyncio.sleep(0)
    bucket.pause_until(fake.wall() + 10)
    gate.set()
    waited = await waiter
    assert waited >= 10


async def test_cancelled_waiter_takes_no_token() -> None:
    """Cancelling a queued acquisition leaves its token to the caller behind it."""
    fake = FakeTime()
    gate = asyncio.Event()

    async def gated_sleep(seconds: float) -> None:
        await gate.wait()

    bucket = TokenBucket(1, 1, fake.monotonic, wall_clock=fake.wall, sleep=gated_sleep)
    await bucket.acquire()
    doomed = asyncio.create_task(bucket.acquire(), name="doomed")
    await asyncio.sleep(0)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    fake.now += 1.0  # one token refills
    assert await bucket.acquire() == 0.0


def test_bad_configuration_is_refused() -> None:
    """Zero or negative rates and capacities, and over-sized requests, are clear errors."""
    with pytest.raises(ValueError, match="rate_per_second"):
        TokenBucket(0, 1)
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(1, 0)


async def test_acquire_more_than_capacity_is_refused() -> None:
    """Asking for more tokens than the bucket can ever hold raises instead of hanging."""
    with pytest.raises(ValueError, match="tokens"):
        await TokenBucket(1, 2).acquire(3)


def test_limit_tokens_caps_the_bucket_at_what_the_server_says_remains() -> None:
    """A server's X-RateLimit-Remaining below our tokens lowers them; above, changes nothing."""
    bucket, _ = fake_bucket(rate=10, capacity=10)
    bucket.limit_tokens(50)
    assert bucket.tokens == pytest.approx(10)
    bucket.limit_tokens(3)
    assert bucket.tokens == pytest.approx(3)


class SimTime:
    """Simulated time for many concurrent waiters: `sleep` parks its caller until `run` moves
    the clock to the caller's wake-up time. Nothing waits in real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + 1_700_000_000.0

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._order), wake))
        await wake

    async def run(self, *work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` concurrently to the end, moving the clock from timer to timer."""
        tasks = [asyncio.create_task(w, name=f"sim-{n}") for n, w in enumerate(work)]
        while not all(t.done() for t in tasks):
            for _ in range(50):  # let every task that can run, run
                await asyncio.sleep(0)
            if self._timers:
                at, _, wake = heapq.heappop(self._timers)
                self.now = max(self.now, at)
                if not wake.done():
                    wake.set_result(None)
            elif not all(t.done() for t in tasks):
                raise AssertionError("waiters stuck with no timer to wake them")
        for task in tasks:
            task.result()

    def limiter(self, sizes: dict[str, Limit]) -> KeyLimiter:
        """An incident.io key's limiter on this clock."""
        return RateLimiters(self.monotonic, wall_clock=self.wall, sleep=self.sleep).get(
            INCIDENT_IO_LIMITS, "key", sizes
        )


def escalation_create_quota(limiter: KeyLimiter) -> tuple[str, ...]:
    return limiter.counted_against("POST", "/v2/escalations")


async def test_a_request_waits_for_every_quota_it_counts_against() -> None:
    """Escalation creates are paced by their own 60/min quota (burst 2) inside the key's:
    the first two go at once, then one a second, though the key would allow far more."""
    sim = SimTime()
    limiter = sim.limiter({KEY: Limit(1200, 20), ESCALATION_CREATE: Limit(60, 2)})
    assert escalation_create_quota(limiter) == (ESCALATION_CREATE, KEY)
    assert limiter.counted_against("post", "/v2/escalations/e1/actions/cancel") == (KEY,)
    sent: list[float] = []

    async def create() -> None:
        await limiter.acquire(escalation_create_quota(limiter))
        sent.append(sim.now - 1000.0)

    await sim.run(*(create() for _ in range(5)))
    assert sent == pytest.approx([0, 0, 1, 2, 3])


async def test_a_slow_endpoint_class_does_not_hold_up_other_requests() -> None:
    """While escalation creates queue for their 60/min quota, requests that count against
    the key alone go at the key's rate: the narrow quota holds no slot of the wide one."""
    sim = SimTime()
    limiter = sim.limiter({KEY: Limit(600, 1), ESCALATION_CREATE: Limit(6, 1)})
    creates: list[float] = []
    cancels: list[float] = []

    async def create() -> None:
        await limiter.acquire(escalation_create_quota(limiter))
        creates.append(sim.now - 1000.0)

    async def cancel() -> None:
        await limiter.acquire(limiter.counted_against("POST", "/v2/escalations/e/actions/cancel"))
        cancels.append(sim.now - 1000.0)

    await sim.run(*(create() for _ in range(3)), *(cancel() for _ in range(10)))
    assert creates == pytest.approx([0, 10, 20])
    # The key's 10/s is shared with the creates that reached it, never idle behind them.
    assert max(cancels) == pytest.approx(1.0)


async def test_page_stopping_request_waits_at_most_two_slots_behind_a_backlog() -> None:
    """Ten update-class requests queue for a 1/s quota; a page-stopping one arriving after
    them goes within two slots after the one being waited for (at most one other goes to
    the oldest waiter), not after the whole backlog; the updates keep arrival order."""
    sim = SimTime()
    limiter = sim.limiter({KEY: Limit(60, 1), ESCALATION_CREATE: Limit(60, 1)})
    order: list[tuple[str, float]] = []
    key_only = limiter.counted_against("GET", "/v2/incidents/x")

    async def request(name: str, rank: int, delay: float) -> None:
        await sim.sleep(delay)
        with request_priority(rank):
            await limiter.acquire(key_only)
        order.append((name, sim.now - 1000.0))

    updates = [request(f"update-{n}", 2, 0) for n in range(10)]
    await sim.run(*updates, request("page", 0, 2.5))
    sent = dict(order)
    # Arrived at 2.5 s: the slot at 3 s was being waited for, the one at 4 s may go to the
    # oldest waiter, the one at 5 s at the latest is its own (the backlog ends at 10 s).
    assert sent["page"] <= 5.0
    assert [name for name, _ in order if name != "page"] == [f"update-{n}" for n in range(10)]
    assert sent["update-9"] == pytest.approx(10.0)


async def test_priority_gate_alternates_the_most_urgent_and_the_oldest_waiter() -> None:
    """Waiters queued at a busy gate enter alternately by (class, arrival) and by arrival
    alone; a cancelled waiter drops out and one cancelled as its turn came passes the gate
    on."""
    gate = PriorityGate()
    entered: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.hold(1):
            await release.wait()

    async def waiter(name: str, rank: int) -> None:
        async with gate.hold(rank):
            entered.append(name)

    first = asyncio.create_task(holder(), name="holder")
    await asyncio.sleep(0)
    tasks = [
        asyncio.create_task(waiter(name, rank), name=name)
        for name, rank in [("u1", 2), ("c1", 1), ("p1", 0), ("u2", 2), ("doomed", 0), ("p2", 0)]
    ]
    await asyncio.sleep(0)
    assert gate.waiting == 6
    tasks[4].cancel()
    release.set()
    await asyncio.gather(first, *tasks, return_exceptions=True)
    assert entered == ["p1", "u1", "p2", "c1", "u2"]
    assert gate.waiting == 0
    async with gate.hold(2):  # free again
        pass


def test_ratelimit_headers_are_read_in_both_platforms_forms() -> None:
    """incident.io's layered X-RateLimit-Limit names the binding quota first, with its
    window in the policies after it; Rootly's carries one policy; a small reset is a delay."""
    incident_io = parse_ratelimit_headers(
        {
            "X-RateLimit-Limit": "60, 1200;window=60, 60;window=60",
            "X-RateLimit-Remaining": "7",
            "X-RateLimit-Used": "53",
            "X-RateLimit-Reset": "1700000100",
        },
        now=1_700_000_000.0,
    )
    assert incident_io is not None
    assert (incident_io.limit, incident_io.window) == (60, 60)
    assert (incident_io.remaining, incident_io.reset) == (7, 1_700_000_100)
    rootly = parse_ratelimit_headers(
        {"X-RateLimit-Limit": "1000, 1000;window=3600", "X-RateLimit-Remaining": "0",
         "X-RateLimit-Reset": "30"},
        now=1_700_000_000.0,
    )  # fmt: skip
    assert rootly is not None
    assert (rootly.limit, rootly.window, rootly.remaining) == (1000, 3600, 0)
    assert rootly.reset == 1_700_000_030
    assert parse_ratelimit_headers({"Content-Type": "application/json"}, 0.0) is None


async def test_remaining_corrects_the_binding_quota_and_zero_pauses_until_reset() -> None:
    """The quota the headers name (60 of the escalation create's, not the key's 1200) holds
    no more than the server says remains; a remaining of 0 pauses it until the reset."""
    fake = FakeTime()
    limiter = RateLimiters(fake.monotonic, wall_clock=fake.wall, sleep=fake.sleep).get(
        INCIDENT_IO_LIMITS, "key", {KEY: Limit(1200, 20), ESCALATION_CREATE: Limit(60, 10)}
    )
    used = limiter.counted_against("POST", "/v2/escalations")
    escalations = limiter.quotas[ESCALATION_CREATE]
    key = limiter.quotas[KEY]
    assert isinstance(escalations, LocalQuota) and isinstance(key, LocalQuota)
    headers = {"X-RateLimit-Limit": "60, 1200;window=60, 60;window=60"}
    await limiter.observe(used, {**headers, "X-RateLimit-Remaining": "2"})
    assert escalations.bucket.tokens == pytest.approx(2)
    assert key.bucket.tokens == pytest.approx(20)
    reset = fake.wall() + 30
    await limiter.observe(
        used, {**headers, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(reset))}
    )
    assert escalations.bucket.paused_for == pytest.approx(int(reset) - fake.wall())
    assert key.bucket.paused_for == 0
    # Without X-RateLimit-Limit, an answer to a request of one quota corrects that one.
    await limiter.observe(
        limiter.counted_against("GET", "/v2/alerts/a"), {"X-RateLimit-Remaining": "4"}
    )
    assert key.bucket.tokens == pytest.approx(4)


async def test_a_429_pauses_the_quota_it_names_else_every_quota_of_the_request() -> None:
    """A 429 naming the escalation create's quota leaves the key (and so cancels) running; a
    429 that names none pauses every quota the request counted against."""
    fake = FakeTime()
    limiters = RateLimiters(fake.monotonic, wall_clock=fake.wall, sleep=fake.sleep)
    limiter = limiters.get(INCIDENT_IO_LIMITS, "key")
    used = limiter.counted_against("POST", "/v2/escalations")
    named = {"X-RateLimit-Limit": "60, 1200;window=60, 60;window=60"}
    await limiter.rate_limited(used, named, fake.wall() + 5)
    escalations, key = limiter.quotas[ESCALATION_CREATE], limiter.quotas[KEY]
    assert isinstance(escalations, LocalQuota) and isinstance(key, LocalQuota)
    assert escalations.bucket.paused_for == pytest.approx(5)
    assert key.bucket.paused_for == 0
    await limiter.rate_limited(used, {}, fake.wall() + 8)
    assert escalations.bucket.paused_for == pytest.approx(8)
    assert key.bucket.paused_for == pytest.approx(8)


def test_registry_keeps_one_limiter_per_platform_and_key_with_the_platforms_quotas() -> None:
    """Same key -> same limiter; another key or platform -> another. Default sizes come
    from each platform's table; given sizes replace them; the key itself is never held."""
    limiters = RateLimiters()
    a = limiters.get(INCIDENT_IO_LIMITS, "key-a")
    assert limiters.get(INCIDENT_IO_LIMITS, "key-a") is a
    assert limiters.get(INCIDENT_IO_LIMITS, "key-b") is not a
    assert limiters.get(ROOTLY_LIMITS, "key-a") is not a
    assert {name: q.limit for name, q in a.quotas.items()} == {
        KEY: Limit(1200, 20),
        ESCALATION_CREATE: Limit(60, 10),
    }
    rootly = limiters.get(ROOTLY_LIMITS, "key-c", {READS: Limit(600, 5)})
    assert {name: q.limit for name, q in rootly.quotas.items()} == {
        WRITES: Limit(3000, 50),
        READS: Limit(600, 5),
    }
    assert rootly.counted_against("GET", "/v1/incidents/1") == (READS,)
    assert rootly.counted_against("PUT", "/v1/incidents/1") == (WRITES,)
    assert len(limiters) == 4
    assert "key-a" not in repr(vars(limiters))
    assert len(key_fingerprint("key-a")) == 16
    with pytest.raises(ValueError, match="per_minute"):
        Limit(0, 1)
    with pytest.raises(ValueError, match="burst"):
        Limit(1, 0.5)


class BucketServer:
    """incident.io's documented server side: a 20/s bucket holding 20 requests per key."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = time.monotonic()
        self.rejected = 0

    async def handle(self, _: Recorded) -> web.StreamResponse:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        # The server's bucket starts refilling at the first *arrival*, the client's at the
        # first *departure*: any client needs slack of rate x latency. Admitting at half a
        # token tolerates 25 ms of loopback latency and event-loop jitter, no more.
        if self.tokens < 0.5:
            self.rejected += 1
            return json_response(
                429,
                {"type": "too_many_requests"},
                {"Retry-After": "1"},
                content_type="application/json",
            )
        self.tokens -= 1
        return web.Response(status=200)


@pytest.fixture
async def paced_client(
    server: RecordingServer, metrics: Metrics
) -> AsyncIterator[tuple[IncidentIoClient, KeyLimiter]]:
    limiter = RateLimiters().get(INCIDENT_IO_LIMITS, INCIDENT_IO_TOKEN, {KEY: Limit(1200, 20)})
    client = IncidentIoClient(
        token=INCIDENT_IO_TOKEN, limiter=limiter, metrics=metrics, base_url=server.url
    )
    await client.start()
    try:
        yield client, limiter
    finally:
        await client.close()


@pytest.mark.timeout(30)
async def test_burst_of_100_through_20_per_second_earns_no_429(
    server: RecordingServer, paced_client: tuple[IncidentIoClient, KeyLimiter]
) -> None:
    """100 concurrent calls through a 20/s, capacity-20 limiter never trip a server bucket of
    the same size, and the limiter (not luck) is what paces them: >= (100 - 20) / 20 s."""
    client, _ = paced_client
    # Open 20 keep-alive connections first so connection setup does not skew arrival times,
    # then let the client's bucket refill before the measured burst.
    server.reply(200, times=20)
    await asyncio.gather(*(client.cancel_escalation(f"warm{n}") for n in range(20)))
    await asyncio.sleep(1.05)
    server.requests.clear()
    bucket_server = BucketServer(rate=20, capacity=20)
    server.default = bucket_server.handle
    started = time.monotonic()
    results = await asyncio.gather(
        *(client.cancel_escalation(f"esc{n}") for n in range(100)), return_exceptions=True
    )
    elapsed = time.monotonic() - started
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert bucket_server.rejected == 0
    assert len(server.requests) == 100
    assert elapsed >= (100 - 20) / 20 - 0.05


async def test_server_429_pauses_the_shared_bucket(
    server: RecordingServer, paced_client: tuple[IncidentIoClient, KeyLimiter]
) -> None:
    """One 429 with Retry-After pauses the key's bucket for every later caller."""
    client, limiter = paced_client
    quota = limiter.quotas[KEY]
    assert isinstance(quota, LocalQuota)
    bucket = quota.bucket
    server.reply(429, {"type": "too_many_requests"}, {"Retry-After": "3"})
    with pytest.raises(RateLimited) as caught:
        await client.cancel_escalation("esc1")
    assert caught.value.retry_at == pytest.approx(time.time() + 3, abs=0.5)
    assert bucket.paused_for == pytest.approx(3, abs=0.5)
