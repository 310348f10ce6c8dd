"""Upstream faults: 5xx, 429, timeouts and latency in both platforms still give one effect.

The bridge runs in-process (`SandboxStack`: real HTTP listener, real SQLite file, the
simulators delivering their own signed webhooks with retries), with its request timeout
cut to 1 s while the simulators hang 3 s on a "timeout" fault, so timeouts really happen.

Bounds: 16 Rootly incidents, 8 human acknowledgements, 4 cancellations under faults
(about 10 s); one dead letter replayed (a few seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.sandbox.stack import SandboxStack
from tests.reliability.harness import admin_get, escalations_by_key, new_admin_token, wait_until

pytestmark = pytest.mark.slow

INCIDENTS = 16
ACKED = range(0, 8)
CANCELLED = range(8, 12)
FAULTS: dict[str, Any] = {
    "error_rate": 0.20,
    "rate_429": 0.10,
    "timeout_rate": 0.05,
    "timeout_seconds": 3.0,
    "latency_seconds": 0.2,
}
FAST_TIMEOUTS = {"request_timeout_seconds": 1.0, "connect_timeout_seconds": 1.0}
SANDBOX_RETRIES = (0.05, 0.1, 0.2, 0.5, 1, 2, 2, 5)


def _stack(tmp_path: Path, **kwargs: Any) -> SandboxStack:
    overrides = {
        "rootly": FAST_TIMEOUTS,
        "incident_io": FAST_TIMEOUTS,
        # Enough attempts that 35 % failures never exhaust them (0.35**30 is nil).
        "executor": {"max_attempts": 30, "lease_seconds": 5},
        **kwargs.pop("overrides", {}),
    }
    return SandboxStack(
        store_url=f"sqlite:///{tmp_path / 'bridge.db'}",
        overrides=overrides,
        seed=1200,
        webhook_retry_delays=SANDBOX_RETRIES,
        **kwargs,
    )


async def test_faults_in_both_platforms_still_give_exactly_one_effect(tmp_path: Path) -> None:
    """Proves that with 20 % 5xx, 10 % 429 (with Retry-After / X-RateLimit-Reset), 5 %
    timeouts (applied upstream, answer never seen) and 200 ms latency injected into both
    simulators, every action completes with one effect: one escalation per Rootly incident
    (idempotency key), each human ack in incident.io stamps `acknowledged_at` on its linked
    Rootly incident with one consistent value, each Rootly cancellation cancels its
    escalation once, and nothing ends dead-lettered, pending or claimed."""
    async with _stack(tmp_path) as stack:
        sandbox = stack.sandbox
        for sim in (sandbox.rootly, sandbox.incident_io):
            sim.faults.update(FAULTS)
        incidents = [
            await sandbox.rootly.create_incident(f"Faulty incident {i}") for i in range(INCIDENTS)
        ]
        await wait_until(
            lambda: len(escalations_by_key(sandbox)) == INCIDENTS, timeout=90, what="escalations"
        )
        await stack.settle(timeout=90)
        by_key = escalations_by_key(sandbox)
        escalation_of = {
            inc["id"]: by_key[f"rootly-incident-{inc['id']}"][0]["id"] for inc in incidents
        }
        for i in ACKED:
            await sandbox.incident_io.ack_escalation(
                escalation_of[incidents[i]["id"]], user="Alice"
            )
        for i in CANCELLED:
            await sandbox.rootly.cancel_incident(incidents[i]["id"], "faults test")
        await stack.settle(timeout=120)
        assert stack.bridge is not None
        counts = await stack.bridge.store.counts()

        # The faults did happen on both sides, timeouts included.
        for sim in (sandbox.rootly, sandbox.incident_io):
            statuses = {r.status for r in sim.received}
            assert {500, 429} <= statuses, (sim.platform, statuses)
        timeouts = stack.registry.get_sample_value(
            "bridge_upstream_requests_total", {"platform": "incident_io", "status": "timeout"}
        )
        assert timeouts is not None and timeouts >= 1

        # One escalation per incident, whatever was re-sent.
        by_key = escalations_by_key(sandbox)
        assert len(by_key) == INCIDENTS
        assert all(len(v) == 1 for v in by_key.values())
        assert len(sandbox.incident_io.state()["escalations"]) == INCIDENTS
        for i, inc in enumerate(incidents):
            escalation = sandbox.incident_io.get_escalation(escalation_of[inc["id"]])
            expected = "acked" if i in ACKED else "cancelled" if i in CANCELLED else "triggered"
            assert escalation["status"] == expected, (i, escalation["status"])
            rootly_incident = sandbox.rootly.get_incident(inc["id"])
            if i in ACKED:
                assert rootly_incident["acknowledged_at"] is not None, i
                # Re-sent updates (after a timeout) all carry the same value: one effect.
                sent = {
                    r.body["data"]["attributes"]["acknowledged_at"]
                    for r in sandbox.rootly.calls("PUT", f"/v1/incidents/{inc['id']}")
                    if r.status == 200
                }
                assert len(sent) == 1, sent
            else:
                assert rootly_incident["acknowledged_at"] is None, i
                assert sandbox.rootly.calls("PUT", f"/v1/incidents/{inc['id']}") == []
        assert counts.dead_letters == 0
        assert counts.inbox_pending == 0
        assert not counts.outbox_by_state.get("pending") and not counts.outbox_by_state.get(
            "claimed"
        )


async def test_permanent_4xx_is_dead_lettered_with_the_platform_message_and_replay_works(
    tmp_path: Path,
) -> None:
    """Proves that a permanent 4xx (incident.io 422: the rule names an escalation path the
    platform does not know) is not retried forever but dead-lettered with the platform's own
    message, visible in the admin API; that replaying it (`POST /api/v1/dead-letters/{id}/
    replay`) once the cause is fixed upstream performs it exactly once and links the result;
    and that the same dead letter cannot be replayed twice."""
    token = new_admin_token()
    missing_path = "01HMISSINGPATH0000000000000"
    stack = _stack(
        tmp_path,
        overrides={"admin": {"token": token}},
        env={"BRIDGE_RULE_VAR_ESCALATION_PATH_ID": missing_path},
    )
    async with stack, aiohttp.ClientSession() as session:
        sandbox = stack.sandbox
        incident = await sandbox.rootly.create_incident("Pages a path that does not exist")

        async def dead_letters() -> list[dict[str, Any]]:
            status, body = await admin_get(session, stack.url, token, "/api/v1/dead-letters")
            assert status == 200, body
            letters: list[dict[str, Any]] = body["dead_letters"]
            return letters

        await wait_until(dead_letters, timeout=30, what="a dead letter")
        await stack.settle(timeout=30)
        [letter] = await dead_letters()
        assert letter["operation"] == "incident_io.create_escalation"
        assert f"escalation path {missing_path} not found" in letter["last_error"]
        attempts = sandbox.incident_io.calls("POST", "/v2/escalations")
        assert [r.status for r in attempts] == [422]  # permanent: tried once, not retried
        assert escalations_by_key(sandbox) == {}

        # The operator creates the missing escalation path upstream, then replays.
        sandbox.incident_io.default_escalation_path_id = missing_path
        replay_url = f"{stack.url}/api/v1/dead-letters/{letter['id']}/replay"
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(replay_url, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["state"] == "pending"
        await wait_until(
            lambda: len(escalations_by_key(sandbox)) == 1, timeout=30, what="replayed action"
        )
        await stack.settle(timeout=30)
        status, action = await admin_get(
            session, stack.url, token, f"/api/v1/outbox/{letter['id']}"
        )
        assert status == 200
        assert action["state"] == "done"
        assert await dead_letters() == []
        [escalation] = escalations_by_key(sandbox)[f"rootly-incident-{incident['id']}"]
        status, links = await admin_get(
            session, stack.url, token, f"/api/v1/links?id={incident['id']}"
        )
        assert status == 200
        assert {(link["a"], link["b"]) for link in links["links"]} & {
            (f"rootly:incident:{incident['id']}", f"incident_io:escalation:{escalation['id']}"),
            (f"incident_io:escalation:{escalation['id']}", f"rootly:incident:{incident['id']}"),
        }
        async with session.post(replay_url, headers=headers) as response:
            assert response.status == 404
        assert len(sandbox.incident_io.calls("POST", "/v2/escalations")) == 2


async def test_platform_slower_than_the_lease_gets_each_call_once(tmp_path: Path) -> None:
    """Proves that a live bridge keeps what it is working on while the platforms answer
    more slowly than its leases last (1-s leases, every API call answered after 3 s, as in
    a long rate-limit pause): a human's acknowledgement in incident.io is hydrated with one
    GET of the escalation and mirrored onto the Rootly incident with one PUT; no other
    claimer gets the event or the action while they are in flight; and neither is charged
    an attempt it did not use (the event is claimed once, the action never taken over:
    its one attempt is the call that succeeded)."""
    patient = {"request_timeout_seconds": 10.0}
    overrides = {
        "executor": {"lease_seconds": 1},
        "rootly": patient,
        "incident_io": patient,
        # No link checks during the test: only the dispatcher reads the escalation.
        "scheduler": {"reconcile_poll_seconds": 3600},
    }
    async with _stack(tmp_path, overrides=overrides) as stack:
        sandbox = stack.sandbox
        assert stack.bridge is not None
        store = stack.bridge.store
        incident = await sandbox.rootly.create_incident("Slow platform")
        await stack.settle(timeout=30)
        ((escalation,),) = escalations_by_key(sandbox).values()
        fetch_path = f"/v2/escalations/{escalation['id']}"
        mirror_path = f"/v1/incidents/{incident['id']}"
        fetched_before = len(sandbox.incident_io.calls("GET", fetch_path))
        for sim in (sandbox.rootly, sandbox.incident_io):
            sim.faults.update({"latency_seconds": 3.0})
        await sandbox.incident_io.ack_escalation(escalation["id"], user="Alice")
        taken: list[object] = []

        async def mirrored_while_another_replica_claims() -> bool:
            taken.extend(await store.claim_inbox("other-replica", 10, 1))
            taken.extend(await store.claim_outbox("other-replica", 10, 1))
            return bool(sandbox.rootly.calls("PUT", mirror_path)) and not await stack.busy()

        await wait_until(
            mirrored_while_another_replica_claims, timeout=60, interval=0.05, what="the mirror"
        )
        (action,) = [
            row for row in await store.list_outbox(None, 100) if row.action.platform == "rootly"
        ]
        assert action.inbox_id is not None
        event = await store.get_inbox(action.inbox_id)
        assert event is not None
    assert taken == []
    assert len(sandbox.incident_io.calls("GET", fetch_path)) - fetched_before == 1
    assert len(sandbox.rootly.calls("PUT", mirror_path)) == 1
    assert sandbox.rootly.get_incident(incident["id"])["acknowledged_at"] is not None
    assert (event.state, event.attempts) == ("processed", 1)
    assert (action.state, action.attempts, action.last_error) == ("done", 1, None)
