"""Webhook delivery (retries, give-up, faults) and the control API of both simulators."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bridge.sandbox import Sandbox
from tests.sandbox.conftest import Receiver, call


async def test_retry_reuses_delivery_id(sandbox: Sandbox, receiver: Receiver) -> None:
    """A 500 then 200: two attempts with the same webhook-id / event id, then delivered."""
    receiver.statuses = [500, 500]
    made = await sandbox.incident_io.create_incident("x")
    await sandbox.rootly.create_incident("y")
    await sandbox.wait_idle(5)
    ids = [r.headers["webhook-id"] for r in receiver.of("incident_io")]
    rootly_ids = [r.body["event"]["id"] for r in receiver.of("rootly")]
    assert len(ids) + len(rootly_ids) == 4
    assert len(set(ids)) == 1
    assert len(set(rootly_ids)) == 1
    outcomes = [(d.attempt, d.outcome) for d in sandbox.incident_io.deliveries]
    assert outcomes[-1] == (2, "delivered")
    assert made["id"]


async def test_gives_up_after_delays(sandbox: Sandbox, receiver: Receiver) -> None:
    """Always 503: one attempt per delay plus the first, then a gave_up record."""
    receiver.statuses = [503] * 10
    await sandbox.rootly.create_incident("x")
    await sandbox.wait_idle(5)
    records = sandbox.rootly.deliveries
    assert [r.outcome for r in records] == ["failed", "failed", "failed", "gave_up"]
    assert len(receiver.got) == 3


async def test_no_target_skips_and_connection_error_retries(receiver: Receiver) -> None:
    """No target: recorded as skipped. A dead target: connection errors, then gave_up."""
    async with Sandbox(webhook_retry_delays=(0.01,)) as sb:
        await sb.rootly.create_incident("x")
        assert sb.rootly.deliveries[0].outcome == "skipped"
        sb.set_webhook_targets(rootly="http://127.0.0.1:9/", incident_io=None)
        await sb.rootly.create_incident("y")
        await sb.wait_idle(5)
        assert [d.outcome for d in sb.rootly.deliveries[1:]] == ["failed", "failed", "gave_up"]
        assert sb.rootly.deliveries[1].error


async def test_drop_and_duplicate_faults(sandbox: Sandbox, receiver: Receiver) -> None:
    """Drop rate 1 sends nothing; duplicate rate 1 sends the same delivery twice."""
    sandbox.rootly.faults.webhook_drop_rate = 1.0
    await sandbox.rootly.create_incident("dropped")
    sandbox.rootly.faults.webhook_drop_rate = 0.0
    sandbox.rootly.faults.webhook_duplicate_rate = 1.0
    sandbox.rootly.faults.webhook_reorder_max_delay = 0.05
    await sandbox.rootly.create_incident("doubled")
    await sandbox.wait_idle(5)
    assert sandbox.rootly.deliveries[0].outcome == "dropped"
    assert len(receiver.got) == 2
    assert receiver.got[0].body["event"]["id"] == receiver.got[1].body["event"]["id"]


async def test_faults_are_deterministic(http: aiohttp.ClientSession) -> None:
    """The same seed gives the same sequence of injected errors and 429s."""
    runs = []
    for _ in range(2):
        async with Sandbox(seed=42) as sb:
            sb.incident_io.faults.update({"error_rate": 0.3, "rate_429": 0.3})
            statuses = [
                (
                    await call(
                        http,
                        "GET",
                        sb.incident_io_url + "/v2/escalations",
                        token=sb.incident_io_api_key,
                    )
                ).status
                for _ in range(12)
            ]
        runs.append(statuses)
    assert runs[0] == runs[1]
    assert {500, 429, 200} <= set(runs[0])


async def test_timeout_fault_applies_change(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    """With timeout_applies_change the change lands although the client times out."""
    made = await sandbox.incident_io.create_incident("x")
    esc = await call(
        http,
        "POST",
        sandbox.incident_io_url + "/v2/escalations",
        token=sandbox.incident_io_api_key,
        body={"idempotency_key": "t", "title": "t", "user_ids": ["U"]},
    )
    eid = esc.body["escalation"]["id"]
    sandbox.incident_io.faults.update({"timeout_rate": 1.0, "timeout_seconds": 2.0})
    url = f"{sandbox.incident_io_url}/v2/escalations/{eid}/actions/cancel"
    headers = {"Authorization": f"Bearer {sandbox.incident_io_api_key}"}
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(url, headers=headers, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    assert sandbox.incident_io.get_escalation(eid)["status"] == "cancelled"
    assert made["id"]


async def test_control_api(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    """Faults, requests, state and reset over HTTP; bad input is a 4xx with a reason."""
    for base in (sandbox.rootly_url, sandbox.incident_io_url):
        bad = await call(http, "PUT", base + "/_sandbox/faults", body={"nope": 1})
        assert bad.status == 400
        assert "nope" in bad.body["message"]
        worse = await call(http, "PUT", base + "/_sandbox/faults", body={"error_rate": 2})
        assert worse.status == 400
        ok = await call(http, "PUT", base + "/_sandbox/faults", body={"latency_seconds": 0.01})
        assert ok.body["latency_seconds"] == 0.01
    await call(http, "GET", sandbox.rootly_url + "/v1/incidents/x", token="t")
    requests = await call(http, "GET", sandbox.rootly_url + "/_sandbox/requests")
    assert requests.body["requests"][0]["headers"]["Authorization"] == "<redacted>"
    assert sandbox.rootly.calls("GET", "/v1/incidents/*")[0].status == 401
    made = await call(http, "POST", sandbox.rootly_url + "/_sandbox/alerts", body={"summary": "a"})
    assert made.status == 201
    missing = await call(http, "POST", sandbox.rootly_url + "/_sandbox/incidents", body={})
    assert missing.status == 422
    gone = await call(http, "POST", sandbox.rootly_url + "/_sandbox/incidents/x/cancel")
    assert gone.status == 404
    junk = await call(http, "POST", sandbox.incident_io_url + "/_sandbox/incidents", body=[1])
    assert junk.status == 400
    state = await call(http, "GET", sandbox.rootly_url + "/_sandbox/state")
    assert len(state.body["alerts"]) == 1
    await call(http, "POST", sandbox.rootly_url + "/_sandbox/reset")
    assert sandbox.rootly.state()["alerts"] == []
    assert sandbox.rootly.received == []
    assert sandbox.rootly.faults.latency_seconds == 0
    deliveries = await call(http, "GET", sandbox.incident_io_url + "/_sandbox/deliveries")
    assert deliveries.body == {"deliveries": []}
