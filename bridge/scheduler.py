"""Scheduled jobs and leader election.

Jobs (APScheduler 3, `AsyncIOScheduler`, intervals from `scheduler.*` settings):
- `sweep` (every replica): wakes the local dispatcher and executor so due retries and
  rows whose lease expired (a crashed replica's) are picked up without a new webhook;
- `leader` (every replica): tries to take or keep leadership (PostgreSQL advisory lock on a
  dedicated connection; SQLite: the single process always leads); `bridge_leader`. It also
  records the replica's heartbeat and learns how many replicas are alive (seen within three
  intervals), which shared rate limits fall back to dividing by while the store is down;
- `gauges`, `retention` (leader only): they touch shared state, so one replica runs them.

Reconciliation is not a job here: the link checker (`bridge.pipeline.linkcheck`) runs
continuously on the leader, paced by its read budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bridge.clock import Clock, utcnow
from bridge.config import SchedulerSettings
from bridge.logging import Logger
from bridge.metrics import Metrics
from bridge.store.base import OUTBOX_STATES, StoreError
from bridge.store.store import Store


class Scheduler:
    """Owns the APScheduler instance, leadership, and the jobs."""

    def __init__(
        self,
        *,
        store: Store,
        settings: SchedulerSettings,
        metrics: Metrics,
        logger: Logger,
        wake: Callable[[], None],
        clock: Clock = utcnow,
        instance: str = "bridge",
        on_replicas: Callable[[int], None] | None = None,
    ) -> None:
        """`instance` names this replica in the heartbeats; `on_replicas` hears how many
        replicas are alive after each."""
        self._clock = clock
        self._instance = instance
        self._on_replicas = on_replicas
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._log = logger
        self._wake = wake
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self.is_leader = False

    def start(self) -> None:
        s = self._settings
        add = self._scheduler.add_job
        now = self._clock()
        # Leadership first, immediately, so the leader-only jobs can run on their first tick.
        add(
            self._guard("leader", self.check_leadership, leader_only=False),
            "interval",
            seconds=s.leader_check_seconds,
            id="leader",
            next_run_time=now,
            max_instances=1,
            coalesce=True,
        )
        add(
            self._guard("sweep", self._sweep, leader_only=False),
            "interval",
            seconds=s.retry_sweep_seconds,
            id="sweep",
            max_instances=1,
            coalesce=True,
        )
        add(
            self._guard("gauges", self.refresh_gauges),
            "interval",
            seconds=s.gauges_seconds,
            id="gauges",
            next_run_time=now + timedelta(seconds=1),
            max_instances=1,
            coalesce=True,
        )
        add(
            self._guard("retention", self.prune),
            "interval",
            seconds=s.retention_seconds,
            id="retention",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        try:
            await self._store.leave(self._instance)
        except StoreError as exc:
            self._log.warning("replicas.leave_failed", error=str(exc))
        if self.is_leader:
            try:
                await self._store.release_leadership()
            except StoreError as exc:
                self._log.warning("leader.release_failed", error=str(exc))
            self.is_leader = False
            self._metrics.leader.set(0)

    def _guard(
        self, name: str, job: Callable[[], Any], leader_only: bool = True
    ) -> Callable[[], Any]:
        async def run() -> None:
            if leader_only and not self.is_leader:
                return
            started = time.monotonic()
            try:
                result = job()
                if hasattr(result, "__await__"):
                    result = await result
            except Exception as exc:
                self._metrics.scheduler_job_runs.labels(name, "failed").inc()
                self._log.warning("job.failed", job=name, error=repr(exc))
                return
            self._metrics.scheduler_job_runs.labels(name, "ok").inc()
            if name not in ("sweep", "leader"):
                # Debug: these run every few seconds forever; the counter above counts them.
                self._log.debug(
                    "job.done",
                    job=name,
                    seconds=round(time.monotonic() - started, 3),
                    result=result if isinstance(result, int | str) else None,
                )

        run.__name__ = f"job_{name}"
        return run

    def _sweep(self) -> None:
        self._wake()

    async def check_leadership(self) -> bool:
        await self.heartbeat()
        try:
            leader = await self._store.try_acquire_leadership()
        except StoreError as exc:
            leader = False
            self._log.warning("leader.check_failed", error=str(exc))
        if leader != self.is_leader:
            self._log.info("leader.changed", leader=leader)
        self.is_leader = leader
        self._metrics.leader.set(1 if leader else 0)
        return leader

    async def heartbeat(self) -> int | None:
        """Record this replica as alive; how many are (None when the store is down)."""
        now = self._clock()
        since = now - timedelta(seconds=3 * self._settings.leader_check_seconds)
        try:
            alive = await self._store.heartbeat(self._instance, now, since)
        except StoreError as exc:
            self._log.warning("replicas.heartbeat_failed", error=str(exc))
            return None
        if self._on_replicas is not None:
            self._on_replicas(alive)
        return alive

    async def refresh_gauges(self) -> None:
        counts = await self._store.counts()
        for state in OUTBOX_STATES:
            self._metrics.outbox_depth.labels(state).set(counts.outbox_by_state.get(state, 0))
        self._metrics.dead_letters.set(counts.dead_letters)
        for kind, value in counts.links_by_kind.items():
            self._metrics.links.labels(kind).set(value)

    async def prune(self) -> str:
        now = self._clock()
        result = await self._store.prune(
            inbox_before=now - timedelta(hours=self._settings.keep_inbox_hours),
            outbox_before=now - timedelta(hours=self._settings.keep_outbox_hours),
            now=now,
        )
        return (
            f"inbox={result.inbox} outbox={result.outbox} echoes={result.echoes}"
            f" states={result.states}"
        )
