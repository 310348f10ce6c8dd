"""Retention: the scheduler's `prune` job removes only what it should, on both backends.

Rows are written through the real store with an injected clock set in the past (old rows)
and then at the present (recent rows); the scheduler derives its cut-offs from
`keep_inbox_hours` / `keep_outbox_hours` and the real "now", as in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from bridge.config import SchedulerSettings
from bridge.events import ActionId, LinkChange
from bridge.logging import get_logger
from bridge.metrics import create_metrics
from bridge.scheduler import Scheduler
from bridge.store.base import EchoRecord
from bridge.store.store import Store
from tests.store.conftest import FakeClock
from tests.store.factories import (
    IIO_ESC,
    IIO_INC,
    ROOTLY_INC,
    action,
    complete,
    delivery,
    link_count,
)
from tests.store.factories import finish as finish_one

KEEP_INBOX_HOURS = 24.0
KEEP_OUTBOX_HOURS = 48.0


@pytest.fixture
def scheduler(store: Store) -> Scheduler:
    """A scheduler on `store` (not started: the test calls its job directly)."""
    log = get_logger("test.ha.retention")
    settings = SchedulerSettings(
        keep_inbox_hours=KEEP_INBOX_HOURS, keep_outbox_hours=KEEP_OUTBOX_HOURS
    )
    return Scheduler(
        store=store,
        settings=settings,
        metrics=create_metrics(CollectorRegistry()),
        logger=log,
        wake=lambda: None,
    )


async def processed(
    store: Store, delivery_id: str, at: datetime, keys: list[str]
) -> list[ActionId]:
    """A delivery stored and dispatched at `at` into actions with `keys`."""
    (inbox_id,) = await store.add_inbox([delivery(delivery_id, at)])
    assert inbox_id is not None
    return await complete(store, inbox_id, [action(k) for k in keys], [], {"rules": []})


async def finish(
    store: Store,
    ids: list[ActionId],
    state: Literal["done", "skipped", "dead"],
    echoes: Sequence[EchoRecord] = (),
) -> None:
    """Move `ids` to `state`; every other action claimed on the way goes back to pending."""
    claimed = {row.id for row in await store.claim_outbox("w", 100, 60)}
    for action_id in ids:
        assert action_id in claimed
        if state == "dead":
            assert await store.dead_letter(action_id, "w", "gave up")
        else:
            assert await finish_one(store, action_id, "w", state, {}, [], echoes)
    for other in claimed - set(ids):
        assert await store.retry_action(other, "w", datetime(2000, 1, 1, tzinfo=UTC), "", False)


async def test_prune_removes_only_old_finished_rows(
    store: Store,
    clock: FakeClock,
    scheduler: Scheduler,
) -> None:
    """Processed inbox rows older than keep_inbox_hours and done/skipped actions older than
    keep_outbox_hours are deleted, and expired echoes; pending/failed inbox rows,
    pending/dead actions, recent rows of every kind, unexpired echoes and links stay."""
    now = datetime.now(UTC)
    # Old enough for the inbox cut-off (24 h) but not for the outbox one (48 h).
    clock.current = now - timedelta(hours=36)
    (mid_done,) = await processed(store, "mid", clock(), ["mid-done"])
    await finish(store, [mid_done], "done")
    # Older than both cut-offs.
    clock.current = now - timedelta(hours=72)
    old_done, old_skipped, old_pending, old_dead = await processed(
        store, "old", clock(), ["old-done", "old-skipped", "old-pending", "old-dead"]
    )
    await finish(store, [old_done], "done")
    await finish(store, [old_skipped], "skipped")
    await finish(store, [old_dead], "dead")
    await store.add_inbox([delivery("old-pending", clock())])
    (old_failed_inbox,) = await store.add_inbox([delivery("old-failed", clock())])
    assert old_failed_inbox is not None
    await store.fail_inbox(old_failed_inbox, "unparseable", None)
    (linker,) = await store.add_inbox([delivery("linker", clock())])
    assert linker is not None
    await complete(
        store, linker, [], [LinkChange("add", ROOTLY_INC, IIO_ESC, "test-rule")], {"rules": []}
    )
    (echo_action,) = await processed(store, "echoes", clock(), ["echoes"])
    await finish(
        store,
        [echo_action],
        "done",
        [
            EchoRecord(IIO_INC, "status=expired", now - timedelta(seconds=1)),
            EchoRecord(IIO_INC, "status=live", now + timedelta(hours=1)),
        ],
    )
    # Recent rows.
    clock.current = now - timedelta(minutes=5)
    (recent_done,) = await processed(store, "recent", clock(), ["recent-done"])
    await finish(store, [recent_done], "done")

    report = await scheduler.prune()
    # Inbox: "old", "linker", "echoes", "mid" (36 h > 24 h). Outbox: old done/skipped, echoes.
    assert report == "inbox=4 outbox=3 echoes=1 states=0"

    for gone in ("old", "linker", "echoes", "mid"):
        assert await store.find_inbox("rootly", delivery(gone, now).delivery_id) is None
    for kept, inbox_state in (
        ("recent", "processed"),
        ("old-pending", "pending"),
        ("old-failed", "failed"),
    ):
        row = await store.find_inbox("rootly", delivery(kept, now).delivery_id)
        assert row is not None and row.state == inbox_state, kept
    for gone_id in (old_done, old_skipped, echo_action):
        assert await store.get_action(gone_id) is None, gone_id
    for kept_id, state in (
        (old_pending, "pending"),
        (old_dead, "dead"),
        (mid_done, "done"),
        (recent_done, "done"),
    ):
        kept_action = await store.get_action(kept_id)
        assert kept_action is not None and kept_action.state == state, (kept_id, state)
    assert await link_count(store) == 1
    assert await store.find_echo(IIO_INC, "status=live", now)
    assert not await store.find_echo(IIO_INC, "status=expired", now - timedelta(hours=1))
    assert await scheduler.prune() == "inbox=0 outbox=0 echoes=0 states=0"


async def test_periodic_jobs_are_counted_not_logged_at_info(store: Store) -> None:
    """Jobs that run every few seconds forever (gauges here) leave no `job.done` line in an
    info log: each run is counted in bridge_scheduler_job_runs_total, and logged at debug."""
    metrics = create_metrics(CollectorRegistry())
    scheduler = Scheduler(
        store=store,
        settings=SchedulerSettings(gauges_seconds=0.05),
        metrics=metrics,
        logger=get_logger("test.ha.retention"),
        wake=lambda: None,
    )
    runs = metrics.scheduler_job_runs.labels("gauges", "ok")
    with capture_logs() as logs:
        scheduler.start()
        try:
            for _ in range(200):
                if runs._value.get() >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            await scheduler.stop()
    assert runs._value.get() >= 2
    done = [e for e in logs if e["event"] == "job.done"]
    assert done and {e["log_level"] for e in done} == {"debug"}
