"""Replica heartbeats: every replica's leadership check records it as alive and tells the
rate limiters how many replicas share the quotas, on both backends."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from bridge.config import SchedulerSettings
from bridge.logging import get_logger
from bridge.metrics import create_metrics
from bridge.platforms.ratelimit import RateLimiters
from bridge.scheduler import Scheduler
from bridge.store.store import Store
from tests.store.conftest import FakeClock, MakeStore


def replica(store: Store, name: str, clock: FakeClock, limiters: RateLimiters) -> Scheduler:
    """A replica's scheduler (not started: the test runs its leadership job)."""
    return Scheduler(
        store=store,
        settings=SchedulerSettings(leader_check_seconds=5),
        metrics=create_metrics(CollectorRegistry()),
        logger=get_logger(f"test.{name}"),
        wake=lambda: None,
        clock=clock,
        instance=name,
        on_replicas=limiters.set_replicas,
    )


async def test_leadership_checks_count_the_live_replicas(
    make_store: MakeStore, clock: FakeClock
) -> None:
    """Two replicas checking leadership see two; one that stops leaves at once; one that
    goes quiet for three check intervals is no longer counted."""
    a_limits, b_limits = RateLimiters(), RateLimiters()
    a = replica(await make_store(), "a", clock, a_limits)
    b = replica(await make_store(), "b", clock, b_limits)
    await a.check_leadership()
    await b.check_leadership()
    await a.check_leadership()
    assert (a_limits.replicas, b_limits.replicas) == (2, 2)
    await b.stop()
    await a.check_leadership()
    assert a_limits.replicas == 1
    await b.check_leadership()
    clock.advance(16)
    await a.check_leadership()
    assert a_limits.replicas == 1
