"""Executor behaviour the end-to-end suites cannot provoke on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.clock import ShiftedClock, utcnow
from bridge.config import ExecutorSettings
from bridge.events import (
    Action,
    ActionResult,
    DeliveryId,
    IdempotencyKey,
    ObjectRef,
    Platform,
    RuleName,
)
from bridge.logging import get_logger
from bridge.metrics import create_metrics
from bridge.pipeline.executor import Executor
from bridge.platforms.errors import Retryable
from bridge.store.base import LEASE_LOST, NewInboxEvent, OutboxRow
from bridge.store.store import Store
from bridge.tasks import Supervisor
from tests.store.factories import complete


class FlakyClient:
    """A platform client with a bug: its first call raises a programming error. Records
    every call, as the simulators do."""

    platform: Platform = "incident_io"

    def __init__(self) -> None:
        self.calls: list[Action] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def perform(self, action: Action) -> ActionResult:
        self.calls.append(action)
        if len(self.calls) == 1:
            raise RuntimeError("Session is closed")
        return ActionResult(object_id=action.target.id if action.target else None)

    async def fetch(self, ref: ObjectRef) -> Mapping[str, Any]:
        return {"id": ref.id}


async def queue_cancel_action(store: Store) -> None:
    """Store one Rootly cancellation whose decision is one incident.io cancel action."""
    received = datetime.now(UTC)
    (inbox_id,) = await store.add_inbox(
        [NewInboxEvent("rootly", DeliveryId("d-1"), "incident.cancelled", b"{}", received)]
    )
    assert inbox_id is not None
    action = Action(
        operation="incident_io.cancel_escalation",
        target=ObjectRef("incident_io", "escalation", "esc-1"),
        params={},
        rule=RuleName("r"),
        idempotency_key=IdempotencyKey("k-1"),
    )
    await complete(store, inbox_id, [action], [], {})


def build_executor(
    store: Store, client: FlakyClient, settings: ExecutorSettings, supervisor: Supervisor
) -> Executor:
    """An executor owned by "tester" with `client` as its only (incident.io) platform."""
    return Executor(
        store=store,
        clients={"incident_io": client},
        settings=settings,
        concurrency={"incident_io": 4},
        metrics=create_metrics(CollectorRegistry()),
        logger=get_logger("test"),
        owner="tester",
        supervisor=supervisor,
    )


@contextlib.asynccontextmanager
async def running_executor(
    tmp_path: Path,
    client: FlakyClient,
    settings: ExecutorSettings,
    *,
    clock: Callable[[], datetime] = utcnow,
    before_start: Callable[[Store], Awaitable[None]] | None = None,
) -> AsyncIterator[Store]:
    """A real SQLite store (on `clock`) holding one cancel action, and an executor loop
    working on it with `client`, started after `before_start(store)`; stopped (loop, group
    commit, store) on exit."""
    store = Store(f"sqlite:///{tmp_path}/x.db", clock=clock)
    await store.open()
    supervisor = Supervisor(get_logger("test"))
    executor = build_executor(store, client, settings, supervisor)
    executor.start()
    await queue_cancel_action(store)
    if before_start is not None:
        await before_start(store)
    loop = asyncio.create_task(executor.run("incident_io"))
    try:
        yield store
    finally:
        executor.stop()
        await loop
        await supervisor.stop()
        await store.close()


async def done_actions(store: Store) -> list[OutboxRow]:
    for _ in range(200):
        rows = await store.list_outbox(["done"], 10)
        if rows:
            return rows
        await asyncio.sleep(0.02)
    return []


async def test_unexpected_client_failure_is_retried_not_orphaned(tmp_path: Path) -> None:
    """An exception outside the error taxonomy (a bug, a closed session) does not leave the
    action claimed until its lease runs out: it is retried like a transient failure and
    finishes, with both attempts counted; `last_error` describes the latest attempt, which
    succeeded."""
    client = FlakyClient()
    settings = ExecutorSettings(
        backoff_base_seconds=0.01, backoff_max_seconds=0.02, poll_interval_seconds=0.05
    )
    async with running_executor(tmp_path, client, settings) as store:
        rows = await done_actions(store)
    assert len(client.calls) == 2
    (row,) = rows
    assert (row.state, row.attempts, row.last_error) == ("done", 2, None)


class UnbuildableClient(FlakyClient):
    """A client that cannot build the request from the action's params: raises the
    TypeError the JSON encoder raises for a value of no JSON type. Records every call."""

    async def perform(self, action: Action) -> ActionResult:
        self.calls.append(action)
        raise TypeError("Object of type mappingproxy is not JSON serializable")


async def test_a_request_that_cannot_be_built_is_dead_lettered_on_the_first_attempt(
    tmp_path: Path,
) -> None:
    """A TypeError from the client (the action's params cannot make a request: a value of
    the wrong type) cannot succeed on a retry: the action is dead-lettered after its first
    attempt with the error as its reason, not retried `max_attempts` times as a crash."""
    client = UnbuildableClient()
    settings = ExecutorSettings(
        backoff_base_seconds=0.01, backoff_max_seconds=0.02, poll_interval_seconds=0.05
    )
    async with running_executor(tmp_path, client, settings) as store:
        for _ in range(200):
            dead = await store.list_outbox(["dead"], 10)
            if dead:
                break
            await asyncio.sleep(0.02)
    assert len(client.calls) == 1
    (row,) = dead
    assert row.attempts == 1
    assert row.last_error == "TypeError: Object of type mappingproxy is not JSON serializable"


class SlowClient(FlakyClient):
    """Holds every call until the test sets `release` (a request stuck behind a long 429
    pause). Records every call."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def perform(self, action: Action) -> ActionResult:
        self.calls.append(action)
        await self.release.wait()
        return ActionResult(object_id=action.target.id if action.target else None)


async def test_action_outliving_its_lease_is_not_sent_twice_by_its_own_process(
    tmp_path: Path,
) -> None:
    """While an action waits longer than its lease, the executor claims it again (the lease
    expired); it must not start a second call: one call, then done once released."""
    client = SlowClient()
    clock = ShiftedClock()
    settings = ExecutorSettings(lease_seconds=10, poll_interval_seconds=0.05)
    async with running_executor(tmp_path, client, settings, clock=clock) as store:
        for _ in range(200):
            if client.calls:
                break
            await asyncio.sleep(0.01)
        clock.advance(30)  # past the lease, before its renewal (every third of a lease)
        for _ in range(200):  # until the executor's own poll has claimed it again
            (row,) = await store.list_outbox(["claimed"], 10)
            if row.last_error is not None and LEASE_LOST in row.last_error:
                break
            await asyncio.sleep(0.02)
        assert row.last_error is not None and LEASE_LOST in row.last_error
        assert len(client.calls) == 1
        client.release.set()
        rows = await done_actions(store)
    assert len(client.calls) == 1
    assert [r.state for r in rows] == ["done"]


async def test_action_whose_holders_keep_dying_is_dead_lettered_not_tried_again(
    tmp_path: Path,
) -> None:
    """Three holders took the action in turn and died without an outcome (their leases
    expired). Each takeover counts an attempt: two between them, the third the executor's
    own; with three allowed, the executor dead-letters the action without calling the
    platform, naming the holder whose lease was lost last."""
    now = [datetime.now(UTC)]
    lease = ExecutorSettings().lease_seconds

    async def two_holders_die(store: Store) -> None:
        for holder in ("crashed-1", "crashed-2", "crashed-3"):
            assert len(await store.claim_outbox(holder, 1, lease)) == 1
            now[0] += timedelta(seconds=lease + 1)

    client = FlakyClient()
    settings = ExecutorSettings(max_attempts=3, poll_interval_seconds=0.05)
    async with running_executor(
        tmp_path, client, settings, clock=lambda: now[0], before_start=two_holders_die
    ) as store:
        for _ in range(200):
            dead = await store.list_outbox(["dead"], 10)
            if dead:
                break
            await asyncio.sleep(0.02)
    assert client.calls == []
    (row,) = dead
    assert row.attempts == 3
    assert row.last_error == f"gave up after 3 attempts: {LEASE_LOST}crashed-3"


async def test_action_in_flight_longer_than_its_lease_is_not_taken_over(tmp_path: Path) -> None:
    """An action whose call outlasts three leases (a long rate-limit pause) stays with its
    live holder, which renews the lease: another replica claiming all the while never gets
    it, the holder does not claim it again, and it is performed once and finished with its
    one attempt counted (no takeover charged against it)."""
    client = SlowClient()
    settings = ExecutorSettings(lease_seconds=1, poll_interval_seconds=0.05)
    async with running_executor(tmp_path, client, settings) as store:
        for _ in range(200):
            if client.calls:
                break
            await asyncio.sleep(0.01)
        assert len(client.calls) == 1
        loop = asyncio.get_running_loop()
        until = loop.time() + 3 * settings.lease_seconds
        taken: list[OutboxRow] = []
        while loop.time() < until:
            taken += await store.claim_outbox("other-replica", 10, settings.lease_seconds)
            await asyncio.sleep(0.05)
        assert taken == []
        client.release.set()
        (row,) = await done_actions(store)
    assert len(client.calls) == 1
    assert (row.attempts, row.last_error, row.lease_owner) == (1, None, None)


async def test_stop_during_a_claim_does_not_hand_back_an_action_still_running(
    tmp_path: Path,
) -> None:
    """Stopped while a claim is in flight, the executor gives back what that claim brought
    that it has not started, but not an action it is still running whose lease had lapsed
    (renewals failed) and that the claim brought back to it: handed back, that action
    would be pending while its call is still out, and run a second time. The running call
    finishes it, once."""
    now = [datetime.now(UTC)]
    settings = ExecutorSettings(poll_interval_seconds=0.05)
    store = Store(f"sqlite:///{tmp_path}/x.db", clock=lambda: now[0])
    await store.open()
    supervisor = Supervisor(get_logger("test"))
    client = SlowClient()
    executor = build_executor(store, client, settings, supervisor)
    executor.start()
    await queue_cancel_action(store)
    real_claim = store.claim_outbox
    stop_on_next_claim = asyncio.Event()

    async def claim(
        owner: str,
        limit: int,
        lease_seconds: float,
        platform: Platform | None = None,
        *,
        oldest_first: bool = False,
    ) -> list[OutboxRow]:
        if stop_on_next_claim.is_set():
            executor.stop()
        return await real_claim(owner, limit, lease_seconds, platform, oldest_first=oldest_first)

    store.claim_outbox = claim  # type: ignore[method-assign]
    loop = asyncio.create_task(executor.run("incident_io"))
    try:
        for _ in range(200):
            if client.calls:
                break
            await asyncio.sleep(0.01)
        assert len(client.calls) == 1
        now[0] += timedelta(seconds=settings.lease_seconds + 1)  # no renewal in between
        stop_on_next_claim.set()
        await asyncio.wait_for(loop, timeout=10)
        client.release.set()
        assert await executor.drain(10)
        (row,) = await store.list_outbox(None, 10)
    finally:
        client.release.set()
        executor.stop()
        await supervisor.stop()
        await store.close()
    assert len(client.calls) == 1
    assert (row.state, row.lease_owner) == ("done", None)


class DownClient(FlakyClient):
    """Answers 503 to the first `failures` calls, then succeeds. Records every call."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def perform(self, action: Action) -> ActionResult:
        self.calls.append(action)
        if len(self.calls) <= self.failures:
            raise Retryable("incident_io", "service unavailable", status=503)
        return ActionResult(object_id=action.target.id if action.target else None)


async def test_a_replayed_dead_letter_gets_a_fresh_budget_and_keeps_counting(
    tmp_path: Path,
) -> None:
    """Attempts are counted one way: every call counts, before and after a replay. An
    action dead-lettered after `max_attempts` (2) failures is replayed by an operator: it
    gets two more attempts (the budget restarts), fails once more, then succeeds; it ends
    done after 4 attempts, 2 of them before the replay, and `last_error` describes the
    latest attempt (none: it succeeded)."""
    client = DownClient(failures=3)
    settings = ExecutorSettings(
        max_attempts=2,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.02,
        poll_interval_seconds=0.05,
    )
    async with running_executor(tmp_path, client, settings) as store:
        for _ in range(200):
            dead = await store.list_outbox(["dead"], 10)
            if dead:
                break
            await asyncio.sleep(0.02)
        (row,) = dead
        assert (row.attempts, len(client.calls)) == (2, 2)
        assert row.last_error is not None and "gave up after 2 attempts" in row.last_error
        assert await store.replay_action(row.id)
        rows = await done_actions(store)
    assert len(client.calls) == 4
    (row,) = rows
    assert (row.state, row.attempts, row.attempts_before_replay, row.last_error) == (
        "done",
        4,
        2,
        None,
    )
