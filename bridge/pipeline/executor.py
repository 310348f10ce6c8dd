"""The executor: performs outbox actions against the platforms, exactly as often as needed.

One worker loop per platform, so a rate-limited or failing platform never holds up the
other. Each loop keeps up to `max_concurrency` actions in flight, claimed from the store
with a lease. Outcomes:

- success: `done`, with the result; the action's result links and echo records are written
  in the same transaction;
- `RateLimited`: back to pending at the platform's time; not a failed attempt;

- `Retryable` (5xx, timeout, connection): exponential backoff with full jitter, capped;
  after `max_attempts` failures it is dead-lettered (an operator's replay grants a fresh
  `max_attempts`; `attempts` keeps counting every attempt, the successful one included);
- `TargetMissing` / `StateConflict`: `skipped`, with the reason (the target is gone or
  already where we wanted it; retrying cannot change that);
- `Permanent` (other 4xx), a bad parameter, or any `ValueError` / `TypeError` (a request
  that cannot be built from the action: retrying builds the same one): dead-lettered at
  once, with the platform's message or the error;
- no outcome at all (the holder's lease expired: the process died or stalled mid-action;
  a live holder renews the leases of its in-flight actions every third of a lease, see
  `bridge.pipeline.leases`, so a long rate-limit wait is not mistaken for a death):
  the store counts the takeover as an attempt, and an action taken over with
  `max_attempts` already used is dead-lettered without another try, so an action that
  kills the bridge every time cannot crash-loop it.

Claims alternate: the most urgent actions first (in turn order, `bridge.ordering`), then
the oldest waiting, and so on. Each action's requests wait for rate-limit slots as its
class. So a cancel that stops a page overtakes a backlog of creates and updates at the
claim (waiting for at most two freed slots) and at the limiter (for at most the slot
already being waited for), while under a steady stream of urgent work the oldest of the
rest still gets every other slot: nothing starves, and no class falls far behind.

Idempotency: actions carry deterministic keys (the outbox refuses a second row with the
same key) and the operations are idempotent upstream (create_escalation sends the key;
cancel and acknowledge of an object already in that state are no-ops), so a retry after a
timeout whose request did land has one effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bridge.clock import Clock, utcnow
from bridge.config import ExecutorSettings
from bridge.events import (
    Action,
    ActionId,
    ActionResult,
    LinkChange,
    ObjectRef,
    Platform,
    rule_origin,
)
from bridge.logging import Logger
from bridge.metrics import Metrics
from bridge.ordering import rank_now, superseded
from bridge.pipeline.batching import GroupCommit
from bridge.pipeline.echo import echo_records_for
from bridge.pipeline.leases import LeaseKeeper
from bridge.platforms.base import PlatformClient
from bridge.platforms.errors import (
    RateLimited,
    Retryable,
    StateConflict,
    TargetMissing,
    UpstreamError,
)
from bridge.platforms.ratelimit import request_priority
from bridge.store.base import ActionOutcome, EchoRecord, OutboxRow, StoreError
from bridge.store.store import Store
from bridge.tasks import Supervisor


def result_link_changes(action: Action, result: ActionResult) -> list[LinkChange]:
    """Links an action's success creates (the new escalation <-> the Rootly incident)."""
    changes = []
    for link in action.result_links:
        object_id = result.object_id or (action.target.id if action.target else None)
        if object_id is None:
            continue
        created = ObjectRef(action.platform, link.kind, object_id)
        if created != link.to:
            changes.append(LinkChange("add", link.to, created, rule_origin(action.rule)))
    return changes


class Executor:
    def __init__(
        self,
        *,
        store: Store,
        clients: Mapping[Platform, PlatformClient],
        settings: ExecutorSettings,
        concurrency: Mapping[Platform, int],
        metrics: Metrics,
        logger: Logger,
        owner: str,
        supervisor: Supervisor,
        rng: random.Random | None = None,
        clock: Clock = utcnow,
        in_doubt: Mapping[Platform, float] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        # Outcomes of concurrent actions share transactions (see bridge.pipeline.batching).
        self._outcomes: GroupCommit[ActionOutcome, bool] = GroupCommit(
            "executor.outcome-writer", store.finish_actions, supervisor
        )
        self._clients = clients
        self._settings = settings
        self._concurrency = concurrency
        # Seconds an object stays held after a request on it went unanswered, per platform.
        self._in_doubt: Mapping[Platform, float] = in_doubt or {}
        self._metrics = metrics
        self._log = logger
        self._owner = owner
        self._rng = rng or random.Random()
        self._wakes = {platform: asyncio.Event() for platform in clients}
        self._oldest_next = dict.fromkeys(clients, False)
        self._in_flight: dict[Platform, set[asyncio.Task[None]]] = {p: set() for p in clients}
        # In-flight actions keep their leases (see bridge.pipeline.leases).
        self._leases: LeaseKeeper[ActionId] = LeaseKeeper(
            "executor.lease-renewal",
            functools.partial(store.renew_actions, owner),
            settings.lease_seconds,
            supervisor,
            logger,
        )
        self._stopping = False

    def start(self) -> None:
        """Start the helpers `run` relies on (outcome writer, lease renewal)."""
        self._outcomes.start()
        self._leases.start()

    @property
    def platforms(self) -> list[Platform]:
        return list(self._clients)

    def wake(self, platforms: Iterable[Platform] | None = None) -> None:
        """New or due work: wake the loops of `platforms` (all when None)."""
        for platform in self._wakes if platforms is None else platforms:
            if platform in self._wakes:
                self._wakes[platform].set()

    def stop(self) -> None:
        """Stop claiming; actions in flight finish (see `drain`)."""
        self._stopping = True
        self.wake()

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight actions (including any started while waiting); True if they
        all finished within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tasks = [t for tasks in self._in_flight.values() for t in tasks]
            if not tasks:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait(tasks, timeout=remaining)

    async def _release(self, rows: Sequence[OutboxRow]) -> None:
        now = self._clock()
        for row in rows:
            await self._store.retry_action(
                row.id, self._owner, now, "released at shutdown", count_attempt=False
            )

    @property
    def stopping(self) -> bool:
        return self._stopping

    def free_slots(self, platform: Platform) -> int:
        """How many more actions toward `platform` this process would run right now."""
        if self._stopping or platform not in self._in_flight:
            return 0
        return self._concurrency.get(platform, 8) - len(self._in_flight[platform])

    def adopt(self, rows: Sequence[OutboxRow]) -> None:
        """Run rows the dispatcher inserted already claimed by us (see `free_slots`)."""
        for row in rows:
            self._start(row)

    def _start(self, row: OutboxRow) -> None:
        if not self._leases.hold(row.id):
            # Our own lease ran out while the action was still in flight (its renewals
            # failed for a whole lease: the store was unreachable) and we claimed it
            # again: the task in hand finishes it, once.
            return
        platform = row.action.platform
        task = asyncio.create_task(self._held(row), name=f"executor.{platform}.action-{row.id}")
        self._in_flight[platform].add(task)
        task.add_done_callback(self._finished(platform))

    async def _held(self, row: OutboxRow) -> None:
        try:
            await self.execute(row)
        finally:
            # Let go in the task, right after its outcome is written, not in a done
            # callback a loop step later: a claim in between would find the row (retried
            # and already due) still held here and leave it to nobody.
            self._leases.release(row.id)

    def in_flight(self) -> int:
        return sum(len(t) for t in self._in_flight.values())

    async def run(self, platform: Platform) -> None:
        limit = self._concurrency.get(platform, 8)
        in_flight = self._in_flight[platform]
        wake = self._wakes[platform]
        while not self._stopping:
            wake.clear()
            free = limit - len(in_flight)
            rows: list[OutboxRow] = []
            if free > 0:
                oldest = self._oldest_next[platform]
                self._oldest_next[platform] = not oldest
                try:
                    rows = await self._store.claim_outbox(
                        self._owner,
                        min(free, self._settings.batch_size),
                        self._settings.lease_seconds,
                        platform,
                        oldest_first=oldest,
                    )
                except StoreError as exc:
                    self._log.warning(
                        "executor.store_unavailable", platform=platform, error=str(exc)
                    )
            if self.stopping and rows:
                # Claimed while we were told to stop: give them back now rather than run
                # them against clients about to close (or leave them leased for a restart);
                # not one still running here (re-claimed after its lease lapsed), which
                # would then run twice.
                await self._release([row for row in rows if row.id not in self._leases])
                break
            for row in rows:
                self._start(row)
            if rows and len(rows) == free:
                # Saturated: wait for a slot rather than polling the store.
                await asyncio.wait(list(in_flight), return_when=asyncio.FIRST_COMPLETED)
                continue
            if rows:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self._settings.poll_interval_seconds)

    def _finished(self, platform: Platform) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._in_flight[platform].discard(task)
            if not task.cancelled() and task.exception() is not None:
                self._log.error(
                    "action.crashed", task=task.get_name(), error=repr(task.exception())
                )
            # No wake here: a saturated loop is already waiting on its in-flight tasks, and
            # an idle one has nothing new to claim because one action finished.

        return done

    def _backoff(self, attempts: int) -> float:
        cap = min(
            self._settings.backoff_max_seconds, self._settings.backoff_base_seconds * 2**attempts
        )
        return self._rng.uniform(0, cap)

    async def execute(self, row: OutboxRow) -> None:
        """Perform one action this process holds (claimed by it) and record its outcome;
        the loops run each claimed row through it."""
        action = row.action
        labels = (action.platform, action.name)
        started = time.monotonic()
        log = self._log.bind(
            action_id=row.id,
            operation=action.operation,
            target=str(action.target) if action.target else None,
            rule=action.rule,
        )
        if row.attempts_since_replay >= self._settings.max_attempts:
            # Attempts used up at claim time: every failed attempt is judged when it fails,
            # so what used the last one was a takeover from an expired lease (counted by
            # the claim): its holders died or stalled mid-action, perhaps because of this
            # action. Not tried again.
            error = row.last_error or "lease expired"
            await self._dead_letter(
                row, error, log, row.attempts, gave_up=True, count_attempt=False
            )
            return
        if row.object_key is not None:
            moot = superseded(row, await self._store.attempted_actions(row.object_key))
            if moot is not None:
                await self._finish(
                    row, "skipped", {"skipped": "superseded", "detail": moot}, [], []
                )
                self._metrics.actions.labels(*labels, "skipped").inc()
                log.info("action.superseded", detail=moot)
                return
        rank = rank_now(row, self._clock(), self._settings.priority_age_seconds)
        try:
            # Its requests wait for rate-limit slots as its class (page-stopping first).
            with request_priority(rank):
                result = await self._clients[action.platform].perform(action)
        except RateLimited as exc:
            retry_at = max(datetime.fromtimestamp(exc.retry_at, UTC), self._clock())
            await self._store.retry_action(
                row.id, self._owner, retry_at, str(exc), count_attempt=False
            )
            self._metrics.actions.labels(*labels, "rate_limited").inc()
            log.info("action.rate_limited", retry_at=retry_at.isoformat())
            return
        except Retryable as exc:
            await self._retry_or_dead(row, str(exc), log, in_doubt=exc.in_doubt)
            return
        except (TargetMissing, StateConflict) as exc:
            reason = "target_missing" if isinstance(exc, TargetMissing) else "state_conflict"
            await self._finish(row, "skipped", {"skipped": reason, "detail": str(exc)}, [], [])
            self._metrics.actions.labels(*labels, "skipped").inc()
            log.info("action.skipped", reason=reason, detail=str(exc))
            return
        except (UpstreamError, ValueError, TypeError) as exc:
            # Cannot succeed on a retry: a 4xx, or a request that cannot be built from these
            # params (a bad parameter, a value of the wrong type or not JSON).
            error = f"{type(exc).__name__}: {exc}" if isinstance(exc, TypeError) else str(exc)
            await self._dead_letter(row, error, log, row.attempts + 1)
            return
        except Exception as exc:  # a bug or a closed client: retried, counted, never orphaned
            log.exception("action.crashed", error=repr(exc))
            await self._retry_or_dead(row, f"unexpected {exc!r}", log)
            return
        finally:
            self._metrics.action_duration.labels(*labels).observe(time.monotonic() - started)
        now = self._clock()
        outcome: dict[str, Any] = {"object_id": result.object_id, "status": result.status}
        if result.noop:
            outcome["noop"] = True
        if result.detail:
            outcome["detail"] = result.detail
        echoes = echo_records_for(action, now, self._settings.echo_ttl_seconds)
        await self._finish(row, "done", outcome, result_link_changes(action, result), echoes)
        self._metrics.actions.labels(*labels, "done").inc()
        if row.event_received_at is not None:
            self._metrics.event_to_action.observe((now - row.event_received_at).total_seconds())
        log.info("action.done", object_id=result.object_id, attempts=row.attempts + 1)

    async def _finish(
        self,
        row: OutboxRow,
        state: Literal["done", "skipped"],
        result: Mapping[str, Any],
        links: list[LinkChange],
        echoes: list[EchoRecord],
    ) -> None:
        outcome = ActionOutcome(row.id, self._owner, state, result, links, echoes)
        if not await self._outcomes.submit(outcome):
            # Our lease expired and someone else holds the row now; their outcome stands.
            self._log.warning("action.lease_lost", action_id=row.id)

    async def _dead_letter(
        self,
        row: OutboxRow,
        error: str,
        log: Logger,
        attempts: int,
        *,
        gave_up: bool = False,
        count_attempt: bool = True,
        in_doubt_until: datetime | None = None,
    ) -> None:
        """Dead-letter `row` for `error` (stored as "gave up after N attempts: ..." when the
        attempts ran out), counted in the metrics and logged as `action.dead_lettered`."""
        stored = f"gave up after {attempts} attempts: {error}" if gave_up else error
        await self._store.dead_letter(
            row.id,
            self._owner,
            stored,
            count_attempt=count_attempt,
            in_doubt_until=in_doubt_until,
        )
        self._metrics.actions.labels(row.action.platform, row.action.name, "dead_lettered").inc()
        log.error("action.dead_lettered", error=error, attempts=attempts)

    async def _retry_or_dead(
        self, row: OutboxRow, error: str, log: Logger, *, in_doubt: bool = False
    ) -> None:
        """Retry `row` after a back-off, or dead-letter it when its attempts ran out. With
        `in_doubt` (its request went unanswered and may still land), its object is held
        for the platform's `in_doubt_seconds` from now."""
        labels = (row.action.platform, row.action.name)
        attempts = row.attempts + 1
        now = self._clock()
        held = self._in_doubt.get(row.action.platform, 0.0) if in_doubt else 0.0
        until = now + timedelta(seconds=held) if held > 0 else None
        if until is not None:
            log.info("action.in_doubt", held_until=until.isoformat())
        if row.attempts_since_replay + 1 >= self._settings.max_attempts:
            await self._dead_letter(row, error, log, attempts, gave_up=True, in_doubt_until=until)
            return
        delay = self._backoff(row.attempts_since_replay)
        retry_at = now + timedelta(seconds=delay)
        await self._store.retry_action(
            row.id, self._owner, retry_at, error, count_attempt=True, in_doubt_until=until
        )
        self._metrics.actions.labels(*labels, "retried").inc()
        log.warning("action.retry", error=error, attempts=attempts, retry_in=round(delay, 3))
