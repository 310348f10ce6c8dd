"""Property: whatever order causes arrive in and whatever the calls answer, each object ends
in the state its last cause implies, and an alert never pages twice.

Hypothesis generates, per run, alert events (firing / resolved) for two Rootly alerts and
title edits of one incident, each with its own cause time; the order they reach the
outbox; and the answer to every call (success, applied upstream then a timeout, 5xx, 429).
The scenario runs the real store (SQLite, moved by a fake clock) and the real executor
against a fake platform that keeps the objects' state and counts incident.io alerts opened.
Events arrive, actions are claimed, executed and retried in the order Hypothesis picks, with
new causes arriving while others are in flight.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from bridge.config import ExecutorSettings
from bridge.events import (
    Action,
    ActionResult,
    IdempotencyKey,
    ObjectRef,
    Platform,
    RuleName,
)
from bridge.logging import get_logger
from bridge.metrics import create_metrics
from bridge.pipeline.executor import Executor
from bridge.platforms.errors import RateLimited, Retryable
from bridge.store.base import InboxCompletion, OutboxRow, StoreError
from bridge.store.store import Store
from bridge.tasks import Supervisor
from tests.store.conftest import FakeClock
from tests.store.factories import delivery

ALERTS = ("a", "b")
INCIDENT = ObjectRef.parse("rootly:incident:r-1")
OUTCOMES = ("ok", "applied_then_timeout", "error", "rate_limited")


@dataclass(frozen=True)
class Cause:
    """One event that asks for a change: an alert's status, or the incident's title."""

    number: int
    object: str  # "a", "b" or "title"
    value: str
    at: float  # seconds after the start: the cause's own time

    def action(self) -> Action:
        if self.object == "title":
            return Action(
                "rootly.update_incident",
                INCIDENT,
                {"title": self.value},
                RuleName("edit"),
                IdempotencyKey(f"title-{self.number}"),
            )
        params = {
            "title": "t",
            "status": self.value,
            "deduplication_key": f"rootly-alert-{self.object}",
        }
        return Action(
            "incident_io.send_alert_event",
            None,
            params,
            RuleName("alert"),
            IdempotencyKey(f"alert-{self.number}"),
        )


@dataclass
class FakePlatform:
    """Both platforms as far as these actions go: a firing event opens an incident.io
    alert unless one is open for its key (a page), resolved closes it; titles are set."""

    outcomes: list[str]
    now: FakeClock
    open_alerts: dict[str, bool] = field(default_factory=dict)
    pages: dict[str, int] = field(default_factory=dict)
    title: str | None = None

    platform: Platform = "incident_io"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def fetch(self, ref: ObjectRef) -> Mapping[str, Any]:
        raise AssertionError("not used")

    async def perform(self, action: Action) -> ActionResult:
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if outcome == "error":
            raise Retryable("incident_io", "injected 503", status=503)
        if outcome == "rate_limited":
            retry_at = (self.now() + timedelta(seconds=1)).timestamp()
            raise RateLimited("incident_io", "injected 429", retry_at=retry_at)
        if action.operation == "rootly.update_incident":
            self.title = str(action.params["title"])
        else:
            key = str(action.params["deduplication_key"])
            if action.params["status"] == "firing":
                if not self.open_alerts.get(key):
                    self.pages[key] = self.pages.get(key, 0) + 1
                self.open_alerts[key] = True
            else:
                self.open_alerts[key] = False
        if outcome == "applied_then_timeout":
            raise Retryable("incident_io", "timed out (the change was applied)")
        return ActionResult()


causes = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(ALERTS), st.sampled_from(("firing", "resolved"))),
        st.tuples(st.just("title"), st.sampled_from(("t1", "t2", "t3"))),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    raw=causes,
    data=st.data(),
    outcomes=st.lists(st.sampled_from(OUTCOMES), max_size=20),
)
def test_each_object_ends_as_its_last_cause_says(
    raw: list[tuple[str, str]], data: st.DataObject, outcomes: list[str]
) -> None:
    """For any arrival order of causes and any answers to the calls, once everything has
    run: each alert is open exactly when its last-caused event was "firing", it was never
    opened more often than its events, in cause order, go from not firing to firing, and
    the incident's title is the last-caused one."""
    times = data.draw(st.permutations(range(len(raw))), label="cause times")
    arrival = data.draw(st.permutations(range(len(raw))), label="arrival order")
    all_causes = [Cause(n, obj, value, float(times[n])) for n, (obj, value) in enumerate(raw)]
    with tempfile.TemporaryDirectory() as tmp:
        platform = asyncio.run(
            _run(Path(tmp), [all_causes[i] for i in arrival], data, list(outcomes))
        )
    by_time = sorted(all_causes, key=lambda c: c.at)
    for key in ALERTS:
        mine = [c for c in by_time if c.object == key]
        if not mine:
            continue
        dedup = f"rootly-alert-{key}"
        assert platform.open_alerts.get(dedup, False) == (mine[-1].value == "firing")
        rising = sum(
            1
            for i, c in enumerate(mine)
            if c.value == "firing" and (i == 0 or mine[i - 1].value != "firing")
        )
        assert platform.pages.get(dedup, 0) <= rising
    titles = [c for c in by_time if c.object == "title"]
    if titles:
        assert platform.title == titles[-1].value


async def _run(
    tmp: Path, arriving: list[Cause], data: st.DataObject, outcomes: list[str]
) -> FakePlatform:
    clock = FakeClock()
    start = clock()
    store = Store(f"sqlite:///{tmp}/bridge.db", clock=clock)
    await store.open()
    platform = FakePlatform(outcomes, clock)
    supervisor = Supervisor(get_logger("test"))
    executor = Executor(
        store=store,
        clients={"incident_io": platform, "rootly": platform},
        settings=ExecutorSettings(
            max_attempts=1000, backoff_base_seconds=1, backoff_max_seconds=30
        ),
        concurrency={"incident_io": 8, "rootly": 8},
        metrics=create_metrics(CollectorRegistry()),
        logger=get_logger("test"),
        owner="me",
        supervisor=supervisor,
        rng=random.Random(7),
        clock=clock,
    )
    executor.start()
    in_flight: list[OutboxRow] = []
    try:
        for step in range(200):
            moves = ["advance"]
            if arriving:
                moves.append("arrive")
            if in_flight:
                moves.append("execute")
            moves.append("claim")
            move = data.draw(st.sampled_from(moves), label=f"step {step}")
            if move == "arrive":
                await _arrive(store, arriving.pop(0), start)
            elif move == "claim":
                in_flight += await store.claim_outbox("me", 10, 3600)
            elif move == "execute":
                index = data.draw(st.integers(0, len(in_flight) - 1), label="which")
                await executor.execute(in_flight.pop(index))
            else:
                clock.advance(data.draw(st.integers(1, 40), label="seconds"))
            if not arriving and not in_flight and await _settled(store):
                break
        # Then let everything finish: the remaining answers are all successes.
        platform.outcomes.clear()
        for cause in arriving:
            await _arrive(store, cause, start)
        for row in in_flight:
            await executor.execute(row)
        for _ in range(100):
            if await _settled(store):
                break
            clock.advance(60)
            for row in await store.claim_outbox("me", 50, 3600):
                await executor.execute(row)
        assert await _settled(store)
        assert await store.list_outbox(["dead"], 10) == []
    finally:
        await supervisor.stop()
        await store.close()
    return platform


async def _arrive(store: Store, cause: Cause, start: datetime) -> None:
    (inbox_id,) = await store.add_inbox([delivery(f"d-{cause.number}", datetime.now(UTC))])
    assert inbox_id is not None
    (result,) = await store.complete_inboxes(
        [
            InboxCompletion(
                inbox_id, [cause.action()], [], {}, cause_at=start + timedelta(seconds=cause.at)
            )
        ]
    )
    assert not isinstance(result, StoreError)


async def _settled(store: Store) -> bool:
    counts = await store.counts()
    return not (counts.outbox_by_state["pending"] or counts.outbox_by_state["claimed"])
