"""Convergence under chaos: every flow ends in the state its last event implies.

Bound: 150 Rootly incidents opened at about 8/s, two thirds of them cancelled 0.3-4 s
after they were opened; 50 Rootly alerts, each on an incident of its own that is resolved
1-4 s after the alert fired; meanwhile both simulated platforms answer 20% of API requests
500, 10% 429, every one 0.3 s late, and 5% apply the change and then hang past the
bridge's timeout; and the bridge (a real subprocess) is SIGKILLed 3 times and restarted.
Then the faults clear, and the test waits (bounded) for every object to reach its final
state, on SQLite and on PostgreSQL. About a minute per backend on a 2-core machine.

Final state means: every Rootly incident has exactly one incident.io escalation (none lost,
none doubled); those of cancelled and resolved incidents are no longer paging, those of
open incidents still are (no wrong change); every Rootly alert opened exactly one
incident.io alert (never paged twice), which is resolved (none still firing), and the
escalation it paged is no longer paging; no action is dead-lettered.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.sandbox import Sandbox
from tests.ha.conftest import pg_database  # noqa: F401 - fixture
from tests.reliability.conftest import BridgeFactory
from tests.reliability.harness import BridgeProcess, Upstream, escalations_by_key

pytestmark = pytest.mark.slow

INCIDENTS = 150
ALERTS = 50
KILLS = 3
SEED = 2828
OPEN_EVERY_SECONDS = 0.125
SETTLE_SECONDS = 120.0
FAULTS = {
    "error_rate": 0.2,
    "rate_429": 0.1,
    "latency_seconds": 0.3,
    "timeout_rate": 0.05,
    "timeout_seconds": 4.0,
    "timeout_applies_change": True,
}
NOT_PAGING = {"cancelled", "resolved", "expired", "acked"}


@dataclass
class Workload:
    """What the humans did in Rootly, as the test will check it."""

    cancelled: set[str] = field(default_factory=set)
    resolved: set[str] = field(default_factory=set)
    incidents: list[str] = field(default_factory=list)
    alerts: dict[str, str] = field(default_factory=dict)  # alert ID -> its incident


async def _act_as_humans(sandbox: Sandbox, rng: random.Random) -> Workload:
    """Open incidents and alerts at a steady pace; cancel or resolve them a moment later."""
    rootly = sandbox.rootly
    work = Workload()
    later: list[asyncio.Task[Any]] = []

    async def after(delay: float, action: Any) -> None:
        await asyncio.sleep(delay)
        await action

    alert_slots = set(rng.sample(range(INCIDENTS + ALERTS), ALERTS))
    for n in range(INCIDENTS + ALERTS):
        incident = await rootly.create_incident(f"Chaos incident {n}")
        work.incidents.append(incident["id"])
        if n in alert_slots:
            alert = await rootly.create_alert(f"Chaos alert {n}", incident_id=incident["id"])
            work.alerts[alert["id"]] = incident["id"]
            work.resolved.add(incident["id"])
            delay = rng.uniform(1.0, 4.0)
            later.append(asyncio.create_task(after(delay, rootly.resolve_incident(incident["id"]))))
        elif rng.random() < 2 / 3:
            work.cancelled.add(incident["id"])
            delay = rng.uniform(0.3, 4.0)
            later.append(asyncio.create_task(after(delay, rootly.cancel_incident(incident["id"]))))
        await asyncio.sleep(OPEN_EVERY_SECONDS)
    await asyncio.gather(*later)
    return work


async def _kill_now_and_then(bridge: BridgeProcess, rng: random.Random) -> int:
    kills = 0
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(4.0, 8.0))
        await bridge.kill_async()
        kills += 1
        bridge.start()
        await bridge.wait_ready()
    return kills


def _problems(sandbox: Sandbox, work: Workload) -> list[str]:
    """Everything not yet in its final state (empty: converged)."""
    iio = sandbox.incident_io
    problems: list[str] = []
    by_key = escalations_by_key(sandbox)
    for incident in work.incidents:
        escalations = by_key.get(f"rootly-incident-{incident}", [])
        if len(escalations) != 1:
            problems.append(f"incident {incident}: {len(escalations)} escalations")
            continue
        status = escalations[0]["status"]
        stopped = incident in work.cancelled or incident in work.resolved
        if stopped and status not in NOT_PAGING:
            problems.append(f"incident {incident} stopped, its escalation is {status}")
        if not stopped and status != "triggered":
            problems.append(f"incident {incident} open, its escalation is {status}")
    alerts = iio.state()["alerts"]
    escalations = iio.state()["escalations"]
    for alert in work.alerts:
        mine = [a for a in alerts if a["deduplication_key"] == f"rootly-alert-{alert}"]
        if len(mine) != 1:
            problems.append(f"alert {alert}: {len(mine)} incident.io alerts (paged that often)")
            continue
        if mine[0]["status"] != "resolved":
            problems.append(f"alert {alert}: incident.io alert still {mine[0]['status']}")
        for escalation in escalations:
            related = {a["id"] for a in escalation.get("related_alerts", [])}
            if mine[0]["id"] in related and escalation["status"] not in NOT_PAGING:
                problems.append(f"alert {alert}: escalation {escalation['id']} still paging")
    return problems


async def _converges(
    sandbox: Sandbox, bridge_factory: BridgeFactory, store_url: str | None
) -> None:
    rng = random.Random(SEED)
    upstream = Upstream.from_sandbox(sandbox)
    patient = {"request_timeout_seconds": 2.0}
    bridge = bridge_factory(
        upstream,
        store_url=store_url,
        overrides={"rootly": patient, "incident_io": patient},
    )
    bridge.start()
    await bridge.wait_ready()
    sandbox.set_webhook_targets(
        rootly=f"{bridge.url}/webhooks/rootly", incident_io=f"{bridge.url}/webhooks/incident-io"
    )
    for sim in (sandbox.rootly, sandbox.incident_io):
        sim.faults.update(FAULTS)
    killing = asyncio.create_task(_kill_now_and_then(bridge, random.Random(SEED + 1)))
    try:
        work = await _act_as_humans(sandbox, rng)
        kills = await asyncio.wait_for(killing, timeout=60)
    finally:
        killing.cancel()
        await asyncio.gather(killing, return_exceptions=True)
    for sim in (sandbox.rootly, sandbox.incident_io):
        sim.faults.reset()
    cleared = time.monotonic()
    problems = _problems(sandbox, work)
    while problems and time.monotonic() - cleared < SETTLE_SECONDS:
        await asyncio.sleep(1.0)
        problems = _problems(sandbox, work)
    converged_in = time.monotonic() - cleared
    assert kills == KILLS
    assert problems == [], f"not converged {converged_in:.0f} s after the faults cleared"
    dead = [e for e in bridge.log_events() if e.get("event") == "action.dead_lettered"]
    assert dead == []
    assert await bridge.terminate_async(timeout=30) == 0, bridge.log_text()[-3000:]


async def test_chaos_converges_on_sqlite(sandbox: Sandbox, bridge_factory: BridgeFactory) -> None:
    """On SQLite, with upstream faults and 3 SIGKILLs, every incident, escalation and alert
    ends in the state the last human action implies (see the module docstring)."""
    await _converges(sandbox, bridge_factory, None)


@pytest.mark.postgres
async def test_chaos_converges_on_postgresql(
    sandbox: Sandbox,
    bridge_factory: BridgeFactory,
    pg_database: str,  # noqa: F811 - the fixture
) -> None:
    """The same on PostgreSQL."""
    await _converges(sandbox, bridge_factory, pg_database)
