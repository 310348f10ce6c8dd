"""The client-side token bucket: pacing, FIFO fairness, server pauses, per-key registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bridge.metrics import Metrics
from bridge.platforms.errors import RateLimited
from bridge.platforms.incident_io.client import IncidentIoClient
from bridge.platforms.ratelimit import DEFAULT_LIMITS, RateLimiters, TokenBucket, key_fingerprint
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


def test_registry_keeps_one_bucket_per_platform_and_key_with_defaults() -> None:
    """Same key -> same bucket; other key or platform -> another; defaults follow the specs."""
    limiters = RateLimiters()
    a = limiters.get("incident_io", "key-a")
    assert limiters.get("incident_io", "key-a") is a
    assert limiters.get("incident_io", "key-b") is not a
    assert limiters.get("rootly", "key-a") is not a
    assert (a.rate, a.capacity) == (20.0, 20.0)
    rootly = limiters.get("rootly", "key-a")
    assert (rootly.rate, rootly.capacity) == (50.0, 50.0)
    custom = limiters.get("rootly", "key-c", rate_per_minute=600, burst=5)
    assert (custom.rate, custom.capacity) == (10.0, 5.0)
    assert DEFAULT_LIMITS["incident_io"] == (1200.0, 20.0)
    assert len(limiters) == 4
    # The registry never holds the key itself.
    assert "key-a" not in repr(vars(limiters))
    assert len(key_fingerprint("key-a")) == 16


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
) -> AsyncIterator[tuple[IncidentIoClient, TokenBucket]]:
    bucket = TokenBucket(20, 20)
    client = IncidentIoClient(
        token=INCIDENT_IO_TOKEN, limiter=bucket, metrics=metrics, base_url=server.url
    )
    await client.start()
    try:
        yield client, bucket
    finally:
        await client.close()


@pytest.mark.timeout(30)
async def test_burst_of_100_through_20_per_second_earns_no_429(
    server: RecordingServer, paced_client: tuple[IncidentIoClient, TokenBucket]
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
    server: RecordingServer, paced_client: tuple[IncidentIoClient, TokenBucket]
) -> None:
    """One 429 with Retry-After pauses the key's bucket for every later caller."""
    client, bucket = paced_client
    server.reply(429, {"type": "too_many_requests"}, {"Retry-After": "3"})
    with pytest.raises(RateLimited) as caught:
        await client.cancel_escalation("esc1")
    assert caught.value.retry_at == pytest.approx(time.time() + 3, abs=0.5)
    assert bucket.paused_for == pytest.approx(3, abs=0.5)
