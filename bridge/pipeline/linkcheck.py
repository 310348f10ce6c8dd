"""The link checker: level-triggered convergence of linked objects.

Webhooks are the fast path, but they can be lost, arrive late or in any order: a Rootly
cancellation dispatched while the escalation it should cancel is still being created finds
nothing to cancel. The checker closes that gap the way Kubernetes controllers do: it reads
the current state of both sides and acts on the difference, whatever happened before.

It visits links (`Store.links_to_check`): links never checked first, as soon as they are
recorded (an action's result, a webhook, an operator), then the least recently checked,
so every link within `scheduler.reconcile_window_hours` is looked at again in turn. For a
link it reads every object of its component (the objects linked to each other, at most
`MAX_COMPONENT` of them), writes each object's current state as the webhook that
announces it (`bridge.platforms.states`), and evaluates the rules in force on it, without
side effects. Actions whose targets are already where they would put them are dropped;
if anything is left (or a link is missing), the state becomes a *synthetic delivery* in
the inbox, with an ID naming the object, its state and what it still needs
(``check:<ref>:<state>:<digest>``), so the same drift is acted on once and flows through
the same dispatcher, rules and echo guard as a real webhook. Then the component's links
are marked checked.

A new link's reads are part of handling the event that recorded it, like a hydration: they
go at once (paced by the client's rate limiter only). Re-checks are background work and
spend a budget per platform (`scheduler.reconcile_calls_per_minute`). A read that keeps
failing defers the component's links. Only the leader runs it: it spends API quota.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from bridge.clock import Clock, utcnow
from bridge.config import SchedulerSettings
from bridge.events import PRIORITIES, DeliveryId, Event, ObjectRef, Platform
from bridge.logging import Logger
from bridge.metrics import Metrics
from bridge.pipeline.dispatcher import CHECK_PREFIX
from bridge.pipeline.ingest import InboxWriter
from bridge.platforms.base import PlatformClient
from bridge.platforms.errors import RateLimited, Retryable, TargetMissing, UpstreamError
from bridge.platforms.ratelimit import DEFAULT_RANK, TokenBucket, request_priority
from bridge.platforms.states import STATE_MODELS
from bridge.platforms.webhooks import EventParser, PayloadError
from bridge.rules import LinkGraph, RuleSet, evaluate
from bridge.store.base import LinkRow, NewInboxEvent, StoreError
from bridge.store.store import Store

MAX_COMPONENT: Final = 24
"""Most objects read for one check (a Rootly incident with its alerts and escalations)."""
_RECHECK_RANK: Final = PRIORITIES.index("update")
"""The class of a budgeted re-check's reads at the rate limiter: after every action."""
BATCH: Final = 20
"""Links taken per round."""
RETRY_SECONDS: Final = 10.0
"""A check that could not read every object is tried again this much later."""
READ_RETRIES: Final = (0.2, 0.5, 1.0)
"""Pauses before reading again after a transient failure (5xx, timeout, 429)."""
MAX_READ_WAIT_SECONDS: Final = 5.0
"""A 429 asking for a longer pause defers the check instead."""
CONCURRENCY: Final = 8
"""Components checked at once (their reads overlap their latency)."""

Pair = tuple[ObjectRef, ObjectRef]


@dataclass(frozen=True)
class Drift:
    """A state that needs acting on: the synthetic delivery written for it."""

    ref: ObjectRef
    event_type: str
    delivery_id: str
    reasons: tuple[str, ...]


class LinkChecker:
    def __init__(
        self,
        *,
        store: Store,
        clients: Mapping[Platform, PlatformClient],
        parsers: Mapping[Platform, EventParser],
        rules: Callable[[], RuleSet],
        writer: InboxWriter,
        settings: SchedulerSettings,
        metrics: Metrics,
        logger: Logger,
        is_leader: Callable[[], bool],
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self._clients = clients
        self._parsers = parsers
        self._rules = rules
        self._writer = writer
        self._settings = settings
        self._metrics = metrics
        self._log = logger
        self._is_leader = is_leader
        self._clock = clock
        rate = settings.reconcile_calls_per_minute / 60
        self._budgets = {p: TokenBucket(rate, max(1.0, min(5.0, rate))) for p in clients}
        self._last_round = 0

    async def run(self) -> None:
        """Check links while leader, forever (a supervised loop)."""
        while True:
            self._last_round = 0
            if self._is_leader() and len(self._clients) == len(STATE_MODELS):
                try:
                    await self.run_once()
                except StoreError as exc:
                    self._log.warning("checks.store_unavailable", error=str(exc))
            if self._last_round < BATCH:  # nothing more due right now
                await asyncio.sleep(self._settings.reconcile_poll_seconds)

    async def run_once(self) -> int:
        """One round: check the links due now, `CONCURRENCY` components at a time; returns
        how many synthetic deliveries it wrote (drift found for the first time)."""
        settings = self._settings
        now = self._clock()
        due = await self._store.links_to_check(
            now,
            now - timedelta(seconds=settings.reconcile_seconds),
            now - timedelta(hours=settings.reconcile_window_hours),
            BATCH,
        )
        self._last_round = len(due)
        busy: set[ObjectRef] = set()  # objects of the components being checked
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(link: LinkRow) -> int:
            async with slots:
                if link.a in busy or link.b in busy:
                    return 0  # its component is being checked (and marked) right now
                return await self.check(link, busy)

        return sum(await asyncio.gather(*(one(link) for link in due)))

    async def check(self, link: LinkRow, busy: set[ObjectRef] | None = None) -> int:
        """Check `link`'s component and mark its links checked (or deferred); how many
        synthetic deliveries it wrote. A new link's reads are part of handling the event
        that made it, like a hydration: only re-checks spend the reconcile budget."""
        objects, pairs = await self._component(link)
        if busy is not None:
            busy |= objects
        states: dict[ObjectRef, Mapping[str, Any] | None] = {}
        # When each read began: what it returns is that object's state as of then at the
        # earliest, so that is when a drift found in it happened (its actions' cause).
        # Stamped when the check ends, a Rootly incident read acknowledged just before a
        # person cancelled it would count as acknowledged after the cancellation: the
        # repair's escalation ack would supersede the cancel, and the page would never be
        # called off.
        read_at: dict[ObjectRef, datetime] = {}
        for ref in sorted(objects):
            read_at[ref] = self._clock()
            try:
                states[ref] = await self._read(ref, budgeted=link.checked_at is not None)
            except UpstreamError as exc:
                until = self._clock() + timedelta(seconds=RETRY_SECONDS)
                await self._store.defer_link_checks(sorted(pairs), until)
                self._metrics.link_checks.labels("deferred").inc()
                self._log.info("checks.read_failed", ref=str(ref), error=str(exc))
                return 0
        graph = LinkGraph(pairs)
        drifts = [
            drift
            for ref, state in states.items()
            if state is not None
            for drift in [self._drift(ref, state, states, graph, read_at[ref])]
            if drift is not None
        ]
        written = 0
        for drift in drifts:
            written += await self._write(drift, states[drift.ref], link, read_at[drift.ref])
        await self._store.mark_links_checked(sorted(pairs), self._clock())
        self._metrics.link_checks.labels("drift" if drifts else "in_step").inc()
        return written

    async def _component(self, link: LinkRow) -> tuple[set[ObjectRef], set[Pair]]:
        """The objects linked to `link`'s, transitively (bounded), and their links."""
        objects = {link.a, link.b}
        pairs: set[Pair] = {(link.a, link.b)}
        frontier = set(objects)
        while frontier and len(objects) < MAX_COMPONENT:
            rows = await self._store.linked(sorted(frontier))
            frontier = set()
            for row in rows:
                pairs.add((row.a, row.b))
                for ref in (row.a, row.b):
                    if ref not in objects and len(objects) < MAX_COMPONENT:
                        objects.add(ref)
                        frontier.add(ref)
        return objects, {(a, b) for a, b in pairs if a in objects and b in objects}

    async def _read(self, ref: ObjectRef, *, budgeted: bool) -> Mapping[str, Any] | None:
        """`ref`'s current state (None: it no longer exists). A transient failure is tried
        again a few times before the check is deferred; a re-check waits for its budget."""
        if budgeted:
            await self._budgets[ref.platform].acquire()
        for pause in (*READ_RETRIES, None):
            self._metrics.link_check_reads.labels(ref.platform).inc()
            # Re-checks are background work: their reads yield rate-limit slots to actions.
            try:
                with request_priority(_RECHECK_RANK if budgeted else DEFAULT_RANK):
                    return await self._clients[ref.platform].fetch(ref)
            except TargetMissing:
                return None
            except (Retryable, RateLimited) as exc:
                if pause is None:
                    raise
                wait = pause
                if isinstance(exc, RateLimited):
                    wait = max(pause, exc.retry_at - self._clock().timestamp())
                if wait > MAX_READ_WAIT_SECONDS:
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _drift(
        self,
        ref: ObjectRef,
        state: Mapping[str, Any],
        states: Mapping[ObjectRef, Mapping[str, Any] | None],
        graph: LinkGraph,
        read_at: datetime,
    ) -> Drift | None:
        """What the rules would still do about `ref`'s state as read at `read_at`, if
        anything."""
        model = STATE_MODELS[ref.platform]
        announced = model.state_event(ref, state, "check", read_at)
        if announced is None:
            return None
        event_type, body = announced
        event = self._event(ref.platform, body, "check")
        rules = self._rules()
        if event is None or not rules.triggered_by(event):
            return None
        evaluation = evaluate(rules, event, graph, read_at)
        needs = [
            f"{action.operation} {action.target or action.params.get('deduplication_key', '')}"
            for action in evaluation.actions
            if STATE_MODELS[action.platform].satisfied(action, states) is not True
        ]
        needs += [
            f"link {change.a} {change.b}"
            for change in evaluation.link_changes
            if change.op == "add" and change.b not in graph.linked(change.a)
        ]
        if not needs:
            return None
        status = str(state.get("status", "unknown"))
        digest = hashlib.sha256("\n".join(sorted(needs)).encode()).hexdigest()[:16]
        delivery = f"{CHECK_PREFIX}{ref}:{status}:{digest}"
        return Drift(ref, event_type, delivery, tuple(sorted(needs)))

    def _event(self, platform: Platform, body: Mapping[str, Any], delivery: str) -> Event | None:
        try:
            return self._parsers[platform](json.dumps(body).encode(), DeliveryId(delivery))
        except PayloadError:
            return None

    async def _write(
        self, drift: Drift, state: Mapping[str, Any] | None, link: LinkRow, read_at: datetime
    ) -> int:
        model = STATE_MODELS[drift.ref.platform]
        announced = model.state_event(drift.ref, state or {}, drift.delivery_id, read_at)
        assert announced is not None
        _event_type, body = announced
        # Read by the dispatcher into the trace: why this delivery exists.
        body["bridge_check"] = {
            "link": f"{link.a} ~ {link.b}",
            "state": str((state or {}).get("status")),
            "needs": list(drift.reasons),
        }
        new_id = await self._writer.write(
            NewInboxEvent(
                source=drift.ref.platform,
                delivery_id=DeliveryId(drift.delivery_id),
                event_type=drift.event_type,
                body=json.dumps(body, separators=(",", ":")).encode(),
                received_at=self._clock(),
            )
        )
        if new_id is None:
            return 0  # the same drift was already written: it is being or was acted on
        self._metrics.link_check_drifts.labels(drift.ref.platform).inc()
        self._log.info(
            "checks.drift",
            ref=str(drift.ref),
            event_type=drift.event_type,
            inbox_id=new_id,
            needs=list(drift.reasons),
        )
        return 1
