"""Convergence under chaos: every flow ends in the state its last event implies.

The workload (bench/convergence_bench.py, which also times it): 150 Rootly incidents opened
at about 8/s, two thirds of them cancelled 0.3-4 s after they were opened; 50 Rootly
alerts, each on an incident of its own that is resolved 1-4 s after the alert fired;
meanwhile both simulated platforms answer 20% of API requests 500, 10% 429, every one 0.3 s
late, and 5% apply the change and then hang past the bridge's timeout; and the bridge (a
real subprocess) is SIGKILLed 3 times and restarted. Then the faults clear, and the test
waits (bounded) for every object to reach its final state, on SQLite and on PostgreSQL.
About a minute per backend on a 2-core machine.

Final state means: every Rootly incident has exactly one incident.io escalation (none lost,
none doubled); those of cancelled and resolved incidents are no longer paging, those of
open incidents still are (no wrong change); every Rootly alert opened exactly one
incident.io alert (never paged twice), which is resolved (none still firing), and the
escalation it paged is no longer paging, or, resolved before its firing event could be
delivered, none (its resolving event, page-stopping, went first and superseded the firing
one); no action is dead-lettered.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from bench.convergence_bench import FAULTS, KILLS, SEED, act_as_humans, converge
from bridge.sandbox import Sandbox
from tests.ha.conftest import pg_database  # noqa: F401 - fixture
from tests.reliability.conftest import BridgeFactory
from tests.reliability.harness import BridgeProcess, Upstream

pytestmark = pytest.mark.slow

SETTLE_SECONDS = 120.0


async def _kill_now_and_then(bridge: BridgeProcess, rng: random.Random) -> int:
    kills = 0
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(4.0, 8.0))
        await bridge.kill_async()
        kills += 1
        bridge.start()
        await bridge.wait_ready()
    return kills


async def _converges(
    sandbox: Sandbox, bridge_factory: BridgeFactory, store_url: str | None
) -> None:
    upstream = Upstream.from_sandbox(sandbox)
    patient = {"request_timeout_seconds": 2.0}
    bridge = bridge_factory(
        upstream, store_url=store_url, overrides={"rootly": patient, "incident_io": patient}
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
        work = await act_as_humans(sandbox, random.Random(SEED))
        kills = await asyncio.wait_for(killing, timeout=60)
    finally:
        killing.cancel()
        await asyncio.gather(killing, return_exceptions=True)
    for sim in (sandbox.rootly, sandbox.incident_io):
        sim.faults.reset()
    seconds, left = await converge(sandbox, work, SETTLE_SECONDS)
    assert kills == KILLS
    assert left == [], f"not converged {seconds:.0f} s after the faults cleared"
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
