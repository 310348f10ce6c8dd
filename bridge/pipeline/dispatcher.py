"""The dispatcher: inbox event -> typed event -> (hydrate, echo guard, rules) -> outbox.

For each stored delivery, in arrival order: parse it; drop it (with a trace) if it is an
echo of the bridge's own write; fetch fresh state from the platform when the event is
`private_*`, when a matching rule asks for it, or when it reports a status change (incident.io
does not order webhooks: if the object's current status is no longer the one the event
reports, the event is stale and must not undo the newer state); evaluate the rules against
the links around the event's objects; and write the resulting actions and link changes to
the store together with "processed", in one transaction.

Transitions: for a platform whose webhooks carry the current state only (Rootly), the event
is compared with the last state of its subject the bridge saw (`bridge.platforms.states`),
which gives it `previous_status`, `previous` and `changed`, and the state it reports is
recorded as the new last seen in the transaction that records the decision, whatever the
decision (an echo, no rule matching). A redelivered, unchanged state so changes nothing,
and a rule that asks "did it become X?" fires once per change.

The link checker's synthetic deliveries (``check:...``) do not read the last state seen:
each announces a state just read from the platform, for which the checker found actions
still needed, so it is evaluated as a first sighting (previous unknown) and "became X"
rules fire on it, whatever earlier webhooks recorded; this is what lets it heal an effect
that a webhook's decision lost. What it announces is recorded like any state seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bridge.clock import Clock, utcnow
from bridge.events import Event, InboxId, ObjectKind, ObjectRef, Platform, freeze, thaw
from bridge.logging import Logger
from bridge.metrics import LabelledCounters, Metrics
from bridge.operations import repair
from bridge.pipeline.batching import GroupCommit
from bridge.pipeline.echo import EchoGuard
from bridge.pipeline.leases import LeaseKeeper
from bridge.pipeline.rulestats import RuleStats
from bridge.pipeline.triage import NO_RULE_TRIGGERS, UNMAPPED
from bridge.platforms.base import PlatformClient
from bridge.platforms.errors import RateLimited, Retryable, TargetMissing, UpstreamError
from bridge.platforms.incident_io import webhook as incident_io_webhook
from bridge.platforms.rootly import webhook as rootly_webhook
from bridge.platforms.states import compared, observed, records
from bridge.platforms.webhooks import EventParser, PayloadError
from bridge.rules import LinkGraph, RuleSet, evaluate, refs_to_resolve
from bridge.store.base import (
    EventObject,
    InboxCompletion,
    InboxRow,
    OutboxRow,
    SeenState,
    StoreError,
)
from bridge.store.store import Store
from bridge.tasks import Supervisor


class ActionHandoff(Protocol):
    """The local executor, as far as the dispatcher's fast path needs it."""

    def free_slots(self, platform: Platform) -> int: ...

    def adopt(self, rows: Sequence[OutboxRow]) -> None: ...


PARSERS: Mapping[Platform, EventParser] = {
    "rootly": rootly_webhook.parse,
    "incident_io": incident_io_webhook.parse,
}
MAX_DISPATCH_ATTEMPTS = 8
_RELATED_KEYS: tuple[tuple[str, ObjectKind], ...] = (
    ("related_alerts", "alert"),
    ("related_incidents", "incident"),
)


def _status_of(platform: Platform, resource: Mapping[str, Any]) -> str | None:
    if platform == "incident_io":
        status = resource.get("incident_status")
        if isinstance(status, Mapping) and isinstance(status.get("category"), str):
            return str(status["category"])
    value = resource.get("status")
    return value if isinstance(value, str) else None


CHECK_PREFIX = "check:"


def check_note(body: bytes) -> Any:
    """Why the link checker wrote a synthetic delivery (see `bridge.pipeline.linkcheck`)."""
    try:
        return json.loads(body).get("bridge_check")
    except (ValueError, AttributeError):
        return None


def _seen(event: Event) -> tuple[SeenState, ...]:
    """The state `event` reports, to record as its subject's last seen (if recorded)."""
    state = observed(event)
    if state is None or event.subject is None:
        return ()
    return (SeenState(event.subject, freeze(state)),)


def objects_named(event: Event) -> tuple[EventObject, ...]:
    """The objects `event` names, its subject first, each once (recorded with it)."""
    named: dict[ObjectRef, EventObject] = {}
    if event.subject is not None:
        named[event.subject] = EventObject(event.subject, "subject")
    for ref in event.related:
        named.setdefault(ref, EventObject(ref, "related"))
    return tuple(named.values())


def is_status_event(event: Event) -> bool:
    return event.source == "incident_io" and "status_updated" in event.type


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        rules: Callable[[], RuleSet],
        clients: Mapping[Platform, PlatformClient],
        echo_guard: EchoGuard,
        metrics: Metrics,
        logger: Logger,
        owner: str,
        on_actions: Callable[[set[Platform]], None],
        batch_size: int = 50,
        lease_seconds: float = 60.0,
        priority_age: float = 900.0,
        poll_interval: float = 1.0,
        rng: random.Random | None = None,
        handoff: ActionHandoff | None = None,
        supervisor: Supervisor,
        concurrency: int = 8,
        clock: Clock = utcnow,
        rule_stats: RuleStats | None = None,
    ) -> None:
        self._store = store
        self._rule_stats = rule_stats
        self._clock = clock
        # Concurrent dispatches finish close together: one transaction records them all.
        self._completions: GroupCommit[InboxCompletion, list[OutboxRow] | StoreError] = GroupCommit(
            "dispatcher.completions", store.complete_inboxes, supervisor
        )
        self._handoff = handoff
        self._rules = rules
        self._clients = clients
        self._echo = echo_guard
        self._metrics = metrics
        self._counters = LabelledCounters()
        self._log = logger
        self._owner = owner
        self._on_actions = on_actions
        self._batch = batch_size
        self._lease = lease_seconds
        self._priority_age = priority_age
        self._poll = poll_interval
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._adopted: list[InboxRow] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._stopping = False
        # Events in hand (handed over, claimed, being dispatched) keep their leases, so one
        # whose hydration waits out a long rate-limit pause is not claimed and fetched again
        # (see bridge.pipeline.leases).
        self._leases: LeaseKeeper[InboxId] = LeaseKeeper(
            "dispatcher.lease-renewal",
            functools.partial(store.renew_inbox, owner),
            lease_seconds,
            supervisor,
            logger,
        )

    def start(self) -> None:
        """Start the helpers `run` relies on (decision writer, lease renewal)."""
        self._completions.start()
        self._leases.start()

    def wake(self) -> None:
        self._wake.set()

    def room(self) -> int:
        """How many more handed-over events this dispatcher takes now (see `adopt`)."""
        return 0 if self._stopping else self._batch - len(self._adopted)

    def adopt(self, rows: Sequence[InboxRow]) -> None:
        """Events ingest stored already leased to us: dispatched next, in arrival order."""
        for row in rows:
            self._leases.hold(row.id)
        self._adopted.extend(rows)
        self._wake.set()

    def stop(self) -> None:
        """Finish the event in hand, then stop claiming."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Claim events and dispatch them, several at a time. Events that name a common
        object (subject or related) are dispatched one after another in arrival order, so
        links one of them records are there for the next; unrelated events overlap, since
        each mostly waits on the store and the platforms."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    # Rows handed over by ingest are newer than anything stored unclaimed
                    # (when we had no room, or retries that came due), so the store is
                    # always asked too and the union runs in arrival (id) order. The claim
                    # is one cheap read when nothing is waiting.
                    # Taken off `_adopted` only once the claim has answered: if it fails
                    # (or this loop crashes), the handed-over rows, still ours and renewed,
                    # are there for the next round instead of stranded.
                    adopted = self._adopted[:]
                    claimed = await self._store.claim_inbox(
                        self._owner, max(1, self._batch - len(adopted)), self._lease
                    )
                    del self._adopted[: len(adopted)]
                except StoreError as exc:
                    self._log.warning("dispatcher.store_unavailable", error=str(exc))
                    rows = []
                    await asyncio.sleep(self._poll)
                else:
                    # A claimed row already in hand is one whose lease lapsed while renewals
                    # failed: the dispatch in hand finishes it, once.
                    claimed = [row for row in claimed if self._leases.hold(row.id)]
                    rows = sorted(adopted + claimed, key=lambda r: r.id)
                started = 0
                try:
                    for index, row in enumerate(rows):
                        if self.stopping:
                            # Claimed but not started: released at shutdown with the adopted.
                            self._adopted.extend(rows[index:])
                            started = len(rows)
                            break
                        event = self._parse_or_defer(row)
                        keys = self._serial_keys(row, event)
                        await self._slots.acquire()
                        # Taken here, in arrival order (asyncio locks are FIFO), not in the
                        # task.
                        for key in keys:
                            await self._object_lock(key).acquire()
                        task = asyncio.create_task(
                            self._dispatch_one(row, event, keys),
                            name=f"dispatcher.event-{row.id}",
                        )
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                        started = index + 1
                except BaseException:
                    # A bug (the supervisor restarts this loop) or cancellation: the rows not
                    # started are let go, to be claimed again when their leases run out,
                    # rather than held and renewed with nobody working on them.
                    for row in rows[started:]:
                        self._leases.release(row.id)
                    raise
                if not rows:
                    self._idle.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
                    self._idle.clear()
        finally:
            # Events in hand are finished (the caller bounds how long it waits for us).
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    def _parse(self, row: InboxRow) -> Event | PayloadError:
        try:
            return PARSERS[row.source](row.body, row.delivery_id)
        except PayloadError as exc:
            return exc

    def _parse_or_defer(self, row: InboxRow) -> Event | PayloadError | None:
        """`_parse`, or None if the parser crashed (a bug, not a bad body): the dispatch
        parses again inside `_process_guarded`, where a crash is logged, retried with
        backoff and, after MAX_DISPATCH_ATTEMPTS, failed visibly. Raised here, it would
        crash this loop and hold up every event claimed with it, once per lease, forever."""
        try:
            return self._parse(row)
        except Exception:
            return None

    @staticmethod
    def _serial_keys(row: InboxRow, event: Event | PayloadError | None) -> list[str]:
        refs = refs_to_resolve(event) if isinstance(event, Event) and event.subject else set()
        return sorted(str(ref) for ref in refs) or [f"inbox:{row.id}"]

    def _object_lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        self._lock_users[key] = self._lock_users.get(key, 0) + 1
        return lock

    async def _dispatch_one(
        self, row: InboxRow, event: Event | PayloadError | None, keys: list[str]
    ) -> None:
        try:
            await self._process_guarded(row, event)
        finally:
            self._leases.release(row.id)
            for key in keys:
                self._locks[key].release()
                users = self._lock_users[key] - 1
                if users:
                    self._lock_users[key] = users
                else:  # nobody holds or waits for it: forget it, the map stays small
                    del self._lock_users[key]
                    del self._locks[key]
            self._slots.release()

    async def release_adopted(self) -> int:
        """At shutdown: hand events we were given but did not dispatch back to the queue
        now, rather than leaving them leased until their lease runs out."""
        rows, self._adopted = self._adopted, []
        now = self._clock()
        # Let go first: if the store fails part-way, the rest are left to their leases.
        for row in rows:
            self._leases.release(row.id)
        for row in rows:
            await self._store.fail_inbox(row.id, "released at shutdown before dispatch", now)
        return len(rows)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def _process_guarded(
        self, row: InboxRow, parsed: Event | PayloadError | None = None
    ) -> None:
        """One event's failure must not stop the others: it is retried later, visibly."""
        try:
            await self.process(row, parsed)
        except StoreError as exc:
            # The row stays claimed until its lease ends, then it is processed again.
            self._log.warning("dispatcher.store_unavailable", inbox_id=row.id, error=str(exc))
            await asyncio.sleep(self._poll)
        except Exception as exc:
            self._log.exception("event.dispatch_crashed", inbox_id=row.id, error=repr(exc))
            await self._retry_later(row, f"dispatch crashed: {exc!r}", exc)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def _count(self, source: Platform, result: str) -> None:
        self._counters.inc(self._metrics.events_dispatched, source, result)

    async def process(self, row: InboxRow, parsed: Event | PayloadError | None = None) -> None:
        """Decide what one stored delivery means; never raises for a bad event."""
        now = self._clock()
        event_or_error = parsed if parsed is not None else self._parse(row)
        if isinstance(event_or_error, PayloadError):
            exc = event_or_error
            # Ingest checked the envelope, so this is a body we cannot use at all.
            await self._store.fail_inbox(row.id, f"unparseable: {exc}", None)
            self._count(row.source, "error")
            self._log.error("event.unparseable", inbox_id=row.id, error=str(exc))
            return
        event = event_or_error
        base: dict[str, Any] = {
            "event_type": event.type,
            "subject": str(event.subject) if event.subject else None,
        }
        is_check = row.delivery_id.startswith(CHECK_PREFIX)
        if is_check:
            base["check"] = check_note(row.body)
        if not event.known_type or event.subject is None:
            await self._complete(row, event, "ignored", {**base, "ignored": UNMAPPED})
            return
        rules = self._rules()
        if not rules.triggered_by(event):
            # Nothing can act on it (ingest settles most such events itself; this one was
            # stored while a rule looked at its type): no links, fresh state or echo verdict,
            # since an echo nothing would act on is not a loop to suppress.
            evaluation = evaluate(rules, event, LinkGraph(set()), now)
            trace = {**base, **dict(evaluation.trace), "skipped": NO_RULE_TRIGGERS}
            await self._complete(row, event, "no_match", trace, seen=_seen(event))
            return
        # The echo verdict, the links around the event and the last state seen of its
        # subject are independent reads: together.
        echo, links, last = await asyncio.gather(
            self._echo.verdict(event, now, durable=is_check),
            self._links_around(refs_to_resolve(event)),
            self._last_seen(event, is_check),
        )
        if echo is not None:
            self._metrics.echoes_suppressed.labels(event.source).inc()
            await self._complete(row, event, "echo", {**base, "echo": echo}, seen=_seen(event))
            return
        related_before = event.related
        try:
            if event.needs_hydration or rules.needs_hydration(event) or is_status_event(event):
                fresh = await self._hydrate(event)
                if fresh is None:
                    await self._complete(
                        row,
                        event,
                        "ignored",
                        {**base, "ignored": f"{event.subject} no longer exists"},
                    )
                    return
                if event.needs_hydration and not is_check:
                    # A private event said nothing but its ID: what the bridge itself made
                    # shows only now (its new status, an alert's deduplication key).
                    late_echo = await self._echo.verdict(fresh, now)
                    if late_echo is not None:
                        self._metrics.echoes_suppressed.labels(event.source).inc()
                        trace = {**base, "echo": late_echo}
                        await self._complete(row, fresh, "echo", trace, seen=_seen(fresh))
                        return
                if (
                    is_status_event(event)
                    and event.new_status
                    and fresh.new_status != event.new_status
                ):
                    reason = (
                        f"stale: reports {event.new_status!r}"
                        f" but {event.subject} is now {fresh.new_status!r}"
                    )
                    await self._complete(row, event, "stale", {**base, "ignored": reason})
                    return
                event = fresh
        except (Retryable, RateLimited) as exc:
            await self._retry_later(row, f"hydration failed: {exc}", exc, objects_named(event))
            return
        except UpstreamError as exc:
            await self._store.fail_inbox(
                row.id, f"hydration failed: {exc}", None, objects_named(event)
            )
            self._count(row.source, "error")
            self._log.error("event.hydration_failed", inbox_id=row.id, error=str(exc))
            return
        if event.related != related_before:
            # Hydration named more related objects: look again around the fresh event.
            links = await self._links_around(refs_to_resolve(event))
        event = compared(event, last)
        if event.changed is not None:
            base["last_seen"] = (
                "not read: a link check evaluates the state it read as a first sighting"
                if is_check
                else thaw(last)
            )
            base["changed"] = sorted(event.changed)
        evaluation = evaluate(rules, event, links, now)
        if self._rule_stats is not None:
            self._rule_stats.record(evaluation.matched, evaluation.errors, now)
        trace = {**base, **dict(evaluation.trace)}
        if any(r.get("reason") == "no targets" for r in evaluation.trace["rules"].values()):
            waiting = await self._waiting_for(refs_to_resolve(event))
            if waiting:
                trace["waiting"] = waiting
        result = "actions" if evaluation.actions else "no_match"
        actions = evaluation.actions
        if is_check:
            # Repairs: the actions they repeat may be done under the same rule keys.
            actions = tuple(repair(action, row.delivery_id) for action in actions)
        await self._complete(
            row,
            event,
            result,
            trace,
            actions,
            evaluation.link_changes,
            seen=_seen(event),
        )

    async def _waiting_for(self, refs: set[ObjectRef]) -> list[dict[str, Any]]:
        """Actions still in flight that will link objects to `refs` (a create not done yet):
        a rule that found nothing to act on may find it then. The link checker applies it
        when the link is recorded (bridge.pipeline.linkcheck); the trace says so."""
        return [
            {
                "action_id": row.id,
                "operation": row.action.operation,
                "links_to": str(link.to),
                "state": row.state,
                "note": "rules acting on what it creates are applied when its link is "
                "recorded (link check)",
            }
            for row in await self._store.creating(sorted(refs))
            for link in row.action.result_links
        ]

    async def _complete(
        self,
        row: InboxRow,
        event: Event,
        result: str,
        trace: Mapping[str, Any],
        actions: tuple[Any, ...] = (),
        link_changes: tuple[Any, ...] = (),
        *,
        seen: tuple[SeenState, ...] = (),
    ) -> None:
        handoff = self._handoff
        platforms = {action.platform for action in actions}
        cause_at = event.occurred_at or row.received_at
        fast = handoff is not None and all(
            handoff.free_slots(p) >= sum(1 for a in actions if a.platform == p) for p in platforms
        )
        # Fast path: the actions that may run now (bridge.ordering) are inserted already
        # claimed by this process and run at once, saving a claim transaction and a wake-up
        # each. A crash leaves them leased; they are claimed again when the lease expires.
        rows = await self._record(
            InboxCompletion(
                row.id,
                actions,
                link_changes,
                # The outcome is the result counted below (searchable, see `EVENT_OUTCOMES`).
                {**trace, "outcome": result},
                self._owner if fast and actions else None,
                self._lease,
                cause_at,
                seen,
                objects_named(event),
                self._priority_age,
            )
        )
        mine = [r for r in rows if r.state == "claimed" and r.lease_owner == self._owner]
        if mine and handoff is not None:
            handoff.adopt(mine)
        if len(mine) < len(rows):
            self._on_actions({r.action.platform for r in rows if r not in mine})
        self._count(row.source, result)
        # Info when the event changed something; events that led to nothing (no rule
        # matched, echo, stale, ignored) are debug: at full rate their lines cost a tenth of
        # the CPU, bridge_events_dispatched_total{result} counts them, and `bridge explain`
        # shows each one's stored trace.
        log = self._log.info if rows or link_changes else self._log.debug
        log(
            "event.dispatched",
            inbox_id=row.id,
            source=row.source,
            event_type=event.type,
            subject=str(event.subject) if event.subject else None,
            result=result,
            actions=len(rows),
            links=len(link_changes),
        )

    async def _record(self, completion: InboxCompletion) -> list[OutboxRow]:
        """Record one decision, group-committed with whatever other events finish now."""
        result = await self._completions.submit(completion)
        if isinstance(result, StoreError):
            raise result
        return result

    async def _retry_later(
        self, row: InboxRow, error: str, exc: Exception, objects: Sequence[EventObject] = ()
    ) -> None:
        # `attempts` already counts this one (a claim or a hand-over counts it).
        if row.attempts >= MAX_DISPATCH_ATTEMPTS:
            await self._store.fail_inbox(row.id, error, None, objects)
            self._count(row.source, "error")
            self._log.error("event.failed", inbox_id=row.id, error=error, attempts=row.attempts)
            return
        if isinstance(exc, RateLimited):
            retry_at = datetime.fromtimestamp(exc.retry_at, UTC)
        else:
            delay = self._rng.uniform(0, min(60.0, 0.5 * 2**row.attempts))
            retry_at = self._clock() + timedelta(seconds=delay)
        await self._store.fail_inbox(row.id, error, retry_at, objects)
        self._log.warning(
            "event.retry_later", inbox_id=row.id, error=error, retry_at=retry_at.isoformat()
        )

    async def _hydrate(self, event: Event) -> Event | None:
        """The event with its object's current state, or None if the object is gone."""
        assert event.subject is not None
        client = self._clients[event.source]
        try:
            fresh = await client.fetch(event.subject)
        except TargetMissing:
            return None
        new_status = _status_of(event.source, fresh)
        related = event.related
        if event.subject.kind == "escalation":
            related = tuple(
                dict.fromkeys(
                    related
                    + tuple(
                        ObjectRef("incident_io", kind, str(item["id"]))
                        for key, kind in _RELATED_KEYS
                        for item in fresh.get(key) or ()
                        if isinstance(item, Mapping) and item.get("id")
                    )
                )
            )
        return dataclasses.replace(
            event,
            resource=freeze(dict(fresh)),
            new_status=new_status
            if event.needs_hydration or is_status_event(event)
            else event.new_status,
            related=related,
            needs_hydration=False,
        )

    async def _last_seen(self, event: Event, is_check: bool) -> Mapping[str, Any] | None:
        """The subject's last state seen, when its platform's events are compared with it
        (not for a link check's delivery: see the module docstring)."""
        subject = event.subject
        if is_check or subject is None or not records(event.source, subject.kind):
            return None
        rows = await self._store.last_seen([subject])
        return rows[0].state if rows else None

    async def _links_around(self, refs: set[ObjectRef]) -> LinkGraph:
        """Links touching `refs` and their direct neighbours (two hops, for `via` rules)."""
        first = await self._store.linked(sorted(refs))
        pairs = {(row.a, row.b) for row in first}
        neighbours = {ref for pair in pairs for ref in pair} - refs
        if neighbours:
            pairs |= {(row.a, row.b) for row in await self._store.linked(sorted(neighbours))}
        return LinkGraph(pairs)
