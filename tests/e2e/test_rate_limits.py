"""Rate limits end to end: the simulated incident.io counts escalation creates against a
limit of their own, and a page-stopping action overtakes a backlog at the executor and at
the rate limiter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.events import Action, DeliveryId, IdempotencyKey, ObjectRef, RuleName
from bridge.sandbox.stack import SandboxStack
from bridge.store.base import InboxCompletion, NewInboxEvent


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_a_burst_of_escalation_creates_earns_no_429(tmp_path: Path) -> None:
    """25 Rootly incidents opened at once page through incident.io, whose escalation creates
    have their own limit (10/s, holding 5) inside the key's: the bridge paces the creates by
    that limit, so every incident is paged and not one create is answered 429. (Paced by the
    key's 20/s alone, 20 creates go at once into a bucket of 5.)"""
    count = 25
    async with SandboxStack(
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        overrides={
            "incident_io": {
                "endpoint_limits": {"escalation_create": {"per_minute": 600, "burst": 3}}
            }
        },
        sandbox_kwargs={
            "incident_io_escalation_create_per_minute": 600,
            "incident_io_escalation_create_capacity": 5,
        },
    ) as stack:
        iio = stack.sandbox.incident_io
        await asyncio.gather(
            *(stack.sandbox.rootly.create_incident(title=f"Outage {n}") for n in range(count))
        )

        async def all_paged() -> bool:
            return len(iio.state()["escalations"]) == count

        await until(all_paged, 45, "every incident to be paged")
        creates = iio.calls("POST", "/v2/escalations")
    assert [c.status for c in creates if c.status == 429] == []
    assert len(creates) == count


@pytest.mark.timeout(60)
async def test_a_cancel_overtakes_a_backlog_of_updates(tmp_path: Path) -> None:
    """With 40 incident.io updates queued behind a 5/s key, a Rootly cancellation's cancel
    of the linked escalation, decided last, is sent within the next few requests: it is
    claimed ahead of them and waits for no update at the rate limiter. (In arrival order it
    would be the 41st, eight seconds later.)"""
    async with SandboxStack(
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        overrides={"incident_io": {"rate_limit_per_minute": 300, "burst": 1}},
    ) as stack:
        assert stack.bridge is not None
        rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
        incident = await rootly.create_incident(title="Checkout is down")
        await stack.settle()
        (escalation,) = iio.state()["escalations"]
        store = stack.bridge.store
        now = datetime.now(UTC)
        (inbox_id,) = await store.add_inbox(
            [NewInboxEvent("incident_io", DeliveryId("backlog"), "test.backlog", b"{}", now)]
        )
        assert inbox_id is not None
        updates = [
            Action(
                operation="incident_io.edit_incident",
                target=ObjectRef("incident_io", "incident", f"inc-{n}"),
                params={"name": f"Renamed {n}"},
                rule=RuleName("backlog"),
                idempotency_key=IdempotencyKey(f"backlog-{n}"),
            )
            for n in range(40)
        ]
        await store.complete_inboxes([InboxCompletion(inbox_id, updates, [], {})])
        stack.bridge.wake()

        async def backlog_started() -> bool:
            return len(iio.calls("POST", "/v2/incidents/*/actions/edit")) >= 2

        await until(backlog_started, 20, "the backlog to drain")
        before = len(iio.calls("POST", "/v2/incidents/*/actions/edit"))
        await rootly.cancel_incident(incident["id"])
        cancel_path = f"/v2/escalations/{escalation['id']}/actions/cancel"

        async def cancelled() -> bool:
            return bool(iio.calls("POST", cancel_path))

        await until(cancelled, 20, "the cancel")
        sent = [r.path for r in iio.received]
    edits_first = sum(1 for path in sent[: sent.index(cancel_path)] if path.endswith("/edit"))
    # Updates sent while the cancellation's webhook was on its way, plus at most the one
    # holding the key's slot when the cancel reached it and one handed to the oldest
    # waiter, at the claim and at the limiter alike (one slot is 0.2 s).
    assert edits_first <= before + 5
