"""The races the bridge used to lose, played deterministically through the sandbox: a
cancellation that overtakes the create it depends on, and an alert's "firing" retried
after its "resolved" was decided."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.events import DeliveryId
from bridge.sandbox.stack import SandboxStack
from bridge.store.base import InboxRow, OutboxRow
from bridge.store.driver import Sql
from bridge.store.store import Store


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 30
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited 30 s for {what}")
        await asyncio.sleep(0.05)


def _store(stack: SandboxStack) -> Store:
    assert stack.bridge is not None and isinstance(stack.bridge.store, Store)
    return stack.bridge.store


async def _inbox(store: Store, where: str) -> list[InboxRow]:
    rows = await store.driver.fetch(Sql(f"SELECT id FROM inbox WHERE {where} ORDER BY id"))
    found = [await store.get_inbox(row["id"]) for row in rows]
    return [row for row in found if row is not None]


async def test_a_cancel_that_overtakes_its_create_is_applied_once_the_link_exists(
    stack: SandboxStack,
) -> None:
    """incident.io fails every call while a Rootly incident is opened and cancelled: the
    cancellation finds no escalation to cancel (its create is still being retried) and its
    trace says what it waits for. Once incident.io answers, the create lands, its link is
    recorded, the link checker applies the cancellation, once, and the synthetic delivery
    that did it says why."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    store = _store(stack)
    iio.faults.update({"error_rate": 1.0})
    incident = await rootly.create_incident("Checkout is down")
    await rootly.cancel_incident(incident["id"])

    async def cancellation_dispatched() -> bool:
        rows = await _inbox(store, "event_type = 'incident.cancelled'")
        return bool(rows) and rows[0].state == "processed"

    await _until(cancellation_dispatched, "the cancellation's dispatch")
    (cancelled,) = await _inbox(store, "event_type = 'incident.cancelled'")
    assert cancelled.trace is not None
    (waiting,) = cancelled.trace["waiting"]
    assert waiting["operation"] == "incident_io.create_escalation"
    assert waiting["links_to"] == f"rootly:incident:{incident['id']}"
    assert iio.state()["escalations"] == []

    iio.faults.reset()

    async def escalation_cancelled() -> bool:
        escalations = iio.state()["escalations"]
        return bool(escalations) and escalations[0]["status"] == "cancelled"

    await _until(escalation_cancelled, "the late cancellation")
    await stack.settle()
    (escalation,) = iio.state()["escalations"]
    assert len(iio.calls("POST", f"/v2/escalations/{escalation['id']}/actions/cancel")) == 1
    (check,) = await _inbox(store, "delivery_id LIKE 'check:%'")
    synthetic = await store.find_inbox("rootly", DeliveryId(check.delivery_id))
    assert synthetic is not None and synthetic.trace is not None
    assert synthetic.trace["check"]["state"] == "cancelled"
    assert f"rootly:incident:{incident['id']}" in synthetic.trace["check"]["link"]


async def test_a_firing_retried_after_its_resolved_never_pages_again(
    stack: SandboxStack,
) -> None:
    """A Rootly alert's "firing" event to incident.io fails, and its incident is resolved
    meanwhile. Whichever way the retries fall (the "resolved" event waits for a "firing"
    that is due, or supersedes one still backing off), incident.io ends with no alert
    firing and at most one alert, and never accepts a "firing" after the "resolved": the
    alert pages at most once and stops."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    store = _store(stack)
    incident = await rootly.create_incident("Latency")
    await stack.settle()
    iio.faults.update({"error_rate": 1.0})
    alert = await rootly.create_alert("p99 above 2 s", incident_id=incident["id"])
    await rootly.resolve_incident(incident["id"])
    key = f"rootly-alert-{alert['id']}"

    async def both_decided() -> bool:
        rows: list[OutboxRow] = await store.list_outbox(None, 100)
        return {
            r.action.params.get("status")
            for r in rows
            if r.action.params.get("deduplication_key") == key
        } == {"firing", "resolved"}

    await _until(both_decided, "both alert events decided")
    iio.faults.reset()
    await stack.settle()
    mine = [a for a in iio.state()["alerts"] if a["deduplication_key"] == key]
    assert len(mine) <= 1
    assert [a["status"] for a in mine] in ([], ["resolved"])
    accepted = [
        r.body["status"]
        for r in iio.calls("POST", "/v2/alert_events/http/*")
        if r.status < 300 and r.body["deduplication_key"] == key
    ]
    assert "resolved" in accepted
    assert "firing" not in accepted[accepted.index("resolved") :]
    assert (mine == []) == ("firing" not in accepted)


async def test_a_firing_that_lands_after_its_timeout_is_resolved_after_it(
    tmp_path: Path,
) -> None:
    """incident.io applies a "firing" alert event two seconds after it was sent, a second
    after the bridge gave up waiting (its request timeout), and Rootly resolves the alert
    in between. The request is in doubt, so the "resolved" waits for the alert's hold
    (`incident_io.in_doubt_seconds`) to pass instead of going at once and being overtaken
    by the late "firing": incident.io accepts no "firing" after the "resolved", opens one
    alert and ends with it resolved. Without the hold, the late "firing" opens a second
    alert after the first was resolved, and pages again."""
    async with SandboxStack(
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        overrides={"incident_io": {"request_timeout_seconds": 1.0, "in_doubt_seconds": 3.0}},
    ) as stack:
        rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
        store = _store(stack)
        iio.faults.latency_seconds = 2.0
        alert = await rootly.create_alert("Error rate above 5%")
        key = f"rootly-alert-{alert['id']}"

        async def firing_timed_out() -> bool:
            rows = await store.list_outbox(["pending"], 100)
            return any(r.attempts >= 1 and "timed out" in (r.last_error or "") for r in rows)

        await _until(firing_timed_out, "the firing's first request timed out")
        iio.faults.latency_seconds = 0.0  # the first request is still on its way
        await rootly.resolve_alert(alert["id"])
        await stack.settle(timeout=30)
        await asyncio.sleep(2.5)  # anything still on its way has landed by now
        accepted = [
            r.body["status"]
            for r in iio.calls("POST", "/v2/alert_events/http/*")
            if r.status < 300 and r.body["deduplication_key"] == key
        ]
        assert accepted.count("resolved") >= 1
        assert "firing" not in accepted[accepted.index("resolved") :], accepted
        mine = [a for a in iio.state()["alerts"] if a["deduplication_key"] == key]
        assert [a["status"] for a in mine] == ["resolved"]
