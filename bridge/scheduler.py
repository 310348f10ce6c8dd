"""Scheduled jobs and leader election.

Jobs (APScheduler 3, `AsyncIOScheduler`, intervals from `scheduler.*` settings):
- `sweep` (every replica): wakes the local dispatcher and executor so due retries and
  rows whose lease expired (a crashed replica's) are picked up without a new webhook;
- `leader` (every replica): tries to take or keep leadership (PostgreSQL advisory lock on a
  dedicated connection; SQLite: the single process always leads); `bridge_leader`;
- `gauges`, `retention`, `reconcile` (leader only): they touch shared state or spend API
  budget, so one replica runs them.

Reconciliation heals what a lost webhook would have done. For recent links it reads both
sides from the APIs (at most `reconcile_max_calls` reads per run) and, where the states
disagree in a way a rule acts on, writes a *synthetic delivery* into the inbox. Its
delivery ID names the object and the state observed (`reconcile:<ref>:<status>`), so the
same drift is acted on once, and it flows through the same dispatcher, rules and echo
guard as a real webhook: there is no second code path to keep right.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bridge.config import SchedulerSettings
from bridge.events import DeliveryId, ObjectRef, Platform
from bridge.logging import Logger
from bridge.metrics import OUTBOX_STATES, Metrics
from bridge.pipeline.ingest import InboxWriter
from bridge.platforms.base import PlatformClient
from bridge.platforms.errors import UpstreamError
from bridge.store.base import LinkFilter, NewInboxEvent, Store, StoreError

ROOTLY_CLOSED = {
    "cancelled": "incident.cancelled",
    "resolved": "incident.resolved",
    "mitigated": "incident.mitigated",
}
ESCALATION_PAGING = {"pending", "triggered", "snoozed", "delayed", "pending_repeat"}
ALERT_UNACKED = {"open", "triggered"}
RECONCILE_LINKS = 1000
"""Links one pass considers (the newest ones)."""


class Reconciler:
    """Finds drift between linked objects and feeds it back as synthetic deliveries."""

    def __init__(
        self,
        *,
        store: Store,
        clients: Mapping[Platform, PlatformClient],
        writer: InboxWriter,
        settings: SchedulerSettings,
        logger: Logger,
    ) -> None:
        self._store = store
        self._clients = clients
        self._writer = writer
        self._settings = settings
        self._log = logger

    async def run_once(self) -> int:
        """One pass; returns how many synthetic deliveries were written."""
        if "rootly" not in self._clients or "incident_io" not in self._clients:
            return 0
        budget = self._settings.reconcile_max_calls
        cutoff = datetime.now(UTC) - timedelta(hours=self._settings.reconcile_window_hours)
        # The newest links, newest first: `list_links` pages oldest first, and recent drift
        # matters most when the call budget runs out before every link was checked.
        newest = max(0, await self._store.count_links() - RECONCILE_LINKS)
        links = [
            row
            for row in reversed(
                await self._store.list_links(LinkFilter(limit=RECONCILE_LINKS, offset=newest))
            )
            if row.created_at >= cutoff
        ]
        cache: dict[ObjectRef, Mapping[str, Any] | None] = {}
        written = 0

        async def state(ref: ObjectRef) -> Mapping[str, Any] | None:
            nonlocal budget
            if ref in cache:
                return cache[ref]
            if budget <= 0:
                return None
            budget -= 1
            try:
                cache[ref] = await self._clients[ref.platform].fetch(ref)
            except UpstreamError as exc:
                self._log.info("reconcile.fetch_failed", ref=str(ref), error=str(exc))
                cache[ref] = None
            return cache[ref]

        # The default rules link an escalation to its incident.io alert and that alert to
        # the Rootly alert (rules 9 and 10), never the escalation to the Rootly alert
        # directly: follow both shapes, as the rules' `via: incident_io:alert` does.
        graph: dict[ObjectRef, set[ObjectRef]] = {}
        for row in links:
            graph.setdefault(row.a, set()).add(row.b)
            graph.setdefault(row.b, set()).add(row.a)

        def neighbours(ref: ObjectRef, type_key: str) -> list[ObjectRef]:
            return sorted((r for r in graph.get(ref, ()) if r.type_key == type_key), key=str)

        def rootly_alerts(escalation: ObjectRef) -> list[ObjectRef]:
            found = set(neighbours(escalation, "rootly:alert"))
            for iio_alert in neighbours(escalation, "incident_io:alert"):
                found.update(neighbours(iio_alert, "rootly:alert"))
            return sorted(found, key=str)

        # Newest first (dicts keep insertion order; `links` is newest first).
        escalations = [r for r in graph if r.type_key == "incident_io:escalation"]
        for escalation in escalations:
            if budget <= 0:
                break
            for incident in neighbours(escalation, "rootly:incident"):
                rootly_state = await state(incident)
                esc_state = await state(escalation)
                if rootly_state and esc_state:
                    status = str(rootly_state.get("status"))
                    if status in ROOTLY_CLOSED and esc_state.get("status") in ESCALATION_PAGING:
                        written += await self._synthesise_rootly(
                            incident, ROOTLY_CLOSED[status], rootly_state
                        )
            alerts = rootly_alerts(escalation)
            if not alerts:
                continue
            esc_state = await state(escalation)
            if not esc_state or esc_state.get("status") != "acked":
                continue
            for alert in alerts:
                alert_state = await state(alert)
                if alert_state and alert_state.get("status") in ALERT_UNACKED:
                    # One synthetic ack per escalation: the rule acknowledges every alert.
                    written += await self._synthesise_escalation(escalation, esc_state)
                    break
        return written

    async def _write(
        self, source: Platform, delivery_id: str, event_type: str, body: dict[str, Any]
    ) -> int:
        new_id = await self._writer.write(
            NewInboxEvent(
                source=source,
                delivery_id=DeliveryId(delivery_id),
                event_type=event_type,
                body=json.dumps(body, separators=(",", ":")).encode(),
                received_at=datetime.now(UTC),
            )
        )
        if new_id is None:
            return 0
        self._log.info(
            "reconcile.drift", delivery_id=delivery_id, event_type=event_type, inbox_id=new_id
        )
        return 1

    async def _synthesise_rootly(
        self, ref: ObjectRef, event_type: str, resource: Mapping[str, Any]
    ) -> int:
        delivery_id = f"reconcile:{ref}:{resource.get('status')}"
        body = {
            "event": {
                "id": delivery_id,
                "type": event_type,
                "issued_at": datetime.now(UTC).isoformat(),
            },
            "data": dict(resource),
        }
        return await self._write("rootly", delivery_id, event_type, body)

    async def _synthesise_escalation(self, ref: ObjectRef, resource: Mapping[str, Any]) -> int:
        event_type = "public_escalation.escalation_status_updated_v1"
        delivery_id = f"reconcile:{ref}:{resource.get('status')}"
        body = {
            "event_type": event_type,
            event_type: {
                "escalation": dict(resource),
                "previous_status": "triggered",
                "new_status": resource.get("status"),
                "actor": {},
            },
        }
        return await self._write("incident_io", delivery_id, event_type, body)


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
        reconciler: Reconciler,
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._log = logger
        self._wake = wake
        self._reconciler = reconciler
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self.is_leader = False

    def start(self) -> None:
        s = self._settings
        add = self._scheduler.add_job
        now = datetime.now(UTC)
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
        add(
            self._guard("reconcile", self._reconciler.run_once),
            "interval",
            seconds=s.reconcile_seconds,
            id="reconcile",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
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
                self._log.info(
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

    async def reconcile_now(self) -> int:
        """One reconciliation pass now, leader or not (operators, tests); returns how many
        synthetic deliveries were written. Safe to repeat: their delivery IDs dedupe."""
        return await self._reconciler.run_once()

    async def refresh_gauges(self) -> None:
        counts = await self._store.counts()
        for state in OUTBOX_STATES:
            self._metrics.outbox_depth.labels(state).set(counts.outbox_by_state.get(state, 0))
        self._metrics.dead_letters.set(counts.dead_letters)
        for kind, value in counts.links_by_kind.items():
            self._metrics.links.labels(kind).set(value)

    async def prune(self) -> str:
        now = datetime.now(UTC)
        result = await self._store.prune(
            inbox_before=now - timedelta(hours=self._settings.keep_inbox_hours),
            outbox_before=now - timedelta(hours=self._settings.keep_outbox_hours),
            now=now,
        )
        return f"inbox={result.inbox} outbox={result.outbox} echoes={result.echoes}"
