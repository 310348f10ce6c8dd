"""Nothing doubled, nothing looped, nothing lost: the pipeline under redelivery, timeouts,
two-way rules and injected upstream faults, asserted on what the simulators received."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from bridge.platforms.rootly import webhook as rootly_webhook
from bridge.sandbox.stack import SandboxStack
from tests.e2e.conftest import add_link
from tests.e2e.test_flows import fire_rootly_alert, open_incident_with_escalation


async def test_webhook_delivered_three_times_acts_once(stack: SandboxStack) -> None:
    """The same Rootly delivery POSTed three times creates one escalation with one call."""
    import json
    import time

    body = json.dumps(
        {
            "event": {
                "id": "dup-evt-1",
                "type": "incident.created",
                "issued_at": "2026-11-23T08:00:00Z",
            },
            "data": {"id": "inc-dup", "title": "Replayed", "status": "started"},
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Rootly-Signature": rootly_webhook.sign(
            stack.sandbox.rootly_webhook_secret, int(time.time()), body
        ),
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(
                f"{stack.url}/webhooks/rootly", data=body, headers=headers
            ) as r:
                assert r.status == 200
    await stack.settle()
    calls = stack.sandbox.incident_io.calls("POST", "/v2/escalations")
    assert [c.body["idempotency_key"] for c in calls] == ["rootly-incident-inc-dup"]


async def test_ack_while_first_attempt_timed_out_is_acknowledged_once(tmp_path: Path) -> None:
    """The first acknowledge request lands upstream but its answer never arrives (client
    timeout): the retry finds the alert acknowledged, and the alert was acknowledged once."""
    async with SandboxStack(
        store_url=f"sqlite:///{tmp_path}/b.db",
        overrides={"rootly": {"request_timeout_seconds": 0.5}},
    ) as stack:
        rootly = stack.sandbox.rootly
        alert_id, _, escalation_id = await fire_rootly_alert(stack)
        rootly.faults.timeout_rate = 1.0
        rootly.faults.timeout_seconds = 2.0
        rootly.faults.timeout_applies_change = True
        await stack.sandbox.incident_io.ack_escalation(escalation_id, user="Alice")
        # Let the first attempt time out, then heal the platform.
        for _ in range(100):
            if rootly.calls("POST", f"/v1/alerts/{alert_id}/acknowledge"):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)
        rootly.faults.timeout_rate = 0.0
        await stack.settle(timeout=30)
        attempts = rootly.calls("POST", f"/v1/alerts/{alert_id}/acknowledge")
        assert len(attempts) >= 2  # the timed-out attempt and its retry
        assert rootly.get_alert(alert_id)["status"] == "acknowledged"
        assert stack.bridge is not None
        acks = [
            row
            for row in await stack.bridge.store.list_outbox(None, 100)
            if row.action.operation == "rootly.acknowledge_alert"
        ]
        # One action, retried on its own outbox row (same idempotency key), finished once.
        assert [(row.state, row.attempts >= 1) for row in acks] == [("done", True)]
        assert await stack.bridge.store.list_outbox(["dead"], 10) == []


async def test_two_way_cancel_settles_without_loop(stack: SandboxStack) -> None:
    """Cancel in incident.io cancels Rootly, whose cancellation would cancel escalations: the
    exchange settles with one cancel each way, no matter how many webhooks flow."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident_id, escalation_id = await open_incident_with_escalation(stack)
    iio_incident = await iio.create_incident("Both sides")
    await stack.settle()
    await add_link(
        stack, f"rootly:incident:{incident_id}", f"incident_io:incident:{iio_incident['id']}"
    )
    await iio.set_incident_status(iio_incident["id"], "canceled")
    await stack.settle()
    before = (len(rootly.received), len(iio.received))
    await asyncio.sleep(1.0)
    await stack.settle()
    assert (len(rootly.received), len(iio.received)) == before, "traffic continued: a loop"
    assert len(rootly.calls("PUT", f"/v1/incidents/{incident_id}/cancel")) == 1
    assert len(iio.calls("POST", f"/v2/escalations/{escalation_id}/actions/cancel")) <= 1


async def test_burst_with_injected_5xx_and_429_completes_exactly_once(tmp_path: Path) -> None:
    """500 Rootly incidents while incident.io answers 20% 5xx and 10% 429: every escalation
    is created exactly once (one per incident), nothing is dead-lettered."""
    async with SandboxStack(
        store_url=f"sqlite:///{tmp_path}/b.db",
        overrides={
            "executor": {
                "max_attempts": 50,
                "backoff_base_seconds": 0.01,
                "backoff_max_seconds": 0.2,
            },
            "incident_io": {
                "rate_limit_per_minute": 100_000,
                "burst": 1000,
                "max_concurrency": 16,
                "endpoint_limits": {"escalation_create": {"per_minute": 100_000, "burst": 1000}},
            },
        },
        sandbox_kwargs={
            "incident_io_rate_limit_per_minute": 600_000,
            "incident_io_refill_per_second": 10_000.0,
            "incident_io_bucket_capacity": 10_000,
            "incident_io_escalation_create_per_minute": 600_000,
        },
    ) as stack:
        iio = stack.sandbox.incident_io
        iio.faults.error_rate = 0.2
        iio.faults.rate_429 = 0.1
        # Injected 429s say "retry now": a real 429 pauses every caller of the key, which
        # with random injection would only make this test slow, not more telling.
        iio.faults.retry_after_seconds = 0
        ids = []
        for n in range(500):
            incident = await stack.sandbox.rootly.create_incident(title=f"Burst {n}")
            ids.append(incident["id"])
        await stack.settle(timeout=120)
        iio.faults.error_rate = iio.faults.rate_429 = 0.0
        escalations = iio.state()["escalations"]
        assert len(escalations) == 500
        keys = sorted(
            c.body["idempotency_key"]
            for c in iio.calls("POST", "/v2/escalations")
            if c.status == 201
        )
        assert sorted(set(keys)) == sorted(f"rootly-incident-{i}" for i in ids)
        statuses = {c.status for c in iio.calls("POST", "/v2/escalations")}
        assert {500, 429} <= statuses  # the faults really happened
        assert await stack.bridge.store.list_outbox(["dead"], 10) == []  # type: ignore[union-attr]
