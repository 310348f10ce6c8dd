"""Convergence time: how long after upstream faults clear every object is in its final state.

The chaos workload (shared with tests/reliability/test_convergence.py): 150 Rootly
incidents opened at about 8/s, two thirds cancelled 0.3-4 s later; 50 Rootly alerts, each
on an incident of its own resolved 1-4 s later; both simulated platforms answering 20% of
requests 500, 10% 429, all 0.3 s late, 5% applied and then hung; the bridge (`bridge serve`,
SQLite, default settings but for a 2-s request timeout) SIGKILLed 3 times. The figure is
the time from the faults clearing to every object in its final state (`problems` empty);
the baseline is the same workload without faults or kills, timed from the last human
action.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    Figure,
    Scale,
    free_port,
    sandbox_bridge_env,
    spawn_bridge,
    stop_process,
    wait_http_ok,
)
from bench.store_bench import quiet_logger
from bridge.sandbox import Sandbox

INCIDENTS = 150
ALERTS = 50
KILLS = 3
SEED = 2828
OPEN_EVERY_SECONDS = 0.125
FAULTS: dict[str, Any] = {
    "error_rate": 0.2,
    "rate_429": 0.1,
    "latency_seconds": 0.3,
    "timeout_rate": 0.05,
    "timeout_seconds": 4.0,
    "timeout_applies_change": True,
}
NOT_PAGING = {"cancelled", "resolved", "expired", "acked"}
TARGET_SECONDS = 60.0
GIVE_UP_SECONDS = 300.0


@dataclass
class Workload:
    """What the humans did in Rootly, to check the end state against."""

    cancelled: set[str] = field(default_factory=set)
    resolved: set[str] = field(default_factory=set)
    incidents: list[str] = field(default_factory=list)
    alerts: dict[str, str] = field(default_factory=dict)  # alert ID -> its incident


async def act_as_humans(sandbox: Sandbox, rng: random.Random) -> Workload:
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
            resolve = rootly.resolve_incident(incident["id"])
            later.append(asyncio.create_task(after(rng.uniform(1.0, 4.0), resolve)))
        elif rng.random() < 2 / 3:
            work.cancelled.add(incident["id"])
            cancel = rootly.cancel_incident(incident["id"])
            later.append(asyncio.create_task(after(rng.uniform(0.3, 4.0), cancel)))
        await asyncio.sleep(OPEN_EVERY_SECONDS)
    await asyncio.gather(*later)
    return work


def problems(sandbox: Sandbox, work: Workload) -> list[str]:
    """Every object not yet in its final state (empty: converged)."""
    iio = sandbox.incident_io
    found: list[str] = []
    by_key: dict[str, list[dict[str, Any]]] = {}
    escalations = iio.state()["escalations"]
    by_id = {e["id"]: e for e in escalations}
    for key, escalation_id in iio._idempotency.items():
        by_key.setdefault(key, []).append(by_id[escalation_id])
    for incident in work.incidents:
        mine = by_key.get(f"rootly-incident-{incident}", [])
        if len(mine) != 1:
            found.append(f"incident {incident}: {len(mine)} escalations")
            continue
        status = mine[0]["status"]
        stopped = incident in work.cancelled or incident in work.resolved
        if stopped and status not in NOT_PAGING:
            found.append(f"incident {incident} stopped, its escalation is {status}")
        if not stopped and status != "triggered":
            found.append(f"incident {incident} open, its escalation is {status}")
    alerts = iio.state()["alerts"]
    # An alert resolved before its firing event could be delivered is never sent: its
    # resolving event stops a page, goes first, and supersedes the firing one
    # (bridge.ordering). It converged if that resolving event reached incident.io.
    resolving = {
        c.body.get("deduplication_key")
        for c in iio.calls("POST", "/v2/alert_events/http/*")
        if c.status < 300 and isinstance(c.body, dict) and c.body.get("status") == "resolved"
    }
    for alert in work.alerts:
        key = f"rootly-alert-{alert}"
        opened = [a for a in alerts if a["deduplication_key"] == key]
        if not opened and key in resolving:
            continue
        if len(opened) != 1:
            found.append(f"alert {alert}: {len(opened)} incident.io alerts (paged that often)")
            continue
        if opened[0]["status"] != "resolved":
            found.append(f"alert {alert}: incident.io alert still {opened[0]['status']}")
        for escalation in escalations:
            related = {a["id"] for a in escalation.get("related_alerts", [])}
            if opened[0]["id"] in related and escalation["status"] not in NOT_PAGING:
                found.append(f"alert {alert}: escalation {escalation['id']} still paging")
    return found


async def converge(sandbox: Sandbox, work: Workload, limit: float) -> tuple[float, list[str]]:
    """Seconds until `problems` is empty (or `limit`), and what is left."""
    started = time.monotonic()
    left = problems(sandbox, work)
    while left and time.monotonic() - started < limit:
        await asyncio.sleep(0.5)
        left = problems(sandbox, work)
    return time.monotonic() - started, left


async def _run(faults: bool) -> tuple[float, list[str], int]:
    """One workload against a fresh bridge and sandbox: (convergence seconds, what never
    converged, SIGKILLs)."""
    retries = (0.1, 0.2, 0.5, 1, 1, 2, 2, 3, 5, 5, 10)
    # Escalation creates at the key's rate (incident.io allows 60/min): the workload pages
    # 150 incidents to measure convergence, not pacing; the chaos test shares it.
    async with Sandbox(
        seed=12,
        webhook_retry_delays=retries,
        incident_io_escalation_create_per_minute=1200,
        logger=quiet_logger(),
    ) as sim:
        with tempfile.TemporaryDirectory(prefix="bench-convergence-") as tmp:
            port = free_port()
            env = sandbox_bridge_env(
                sim,
                port,
                f"sqlite:///{Path(tmp) / 'bridge.db'}",
                {
                    "BRIDGE_ROOTLY__REQUEST_TIMEOUT_SECONDS": "2",
                    "BRIDGE_INCIDENT_IO__REQUEST_TIMEOUT_SECONDS": "2",
                    "BRIDGE_INCIDENT_IO__ENDPOINT_LIMITS__ESCALATION_CREATE__PER_MINUTE": "1200",
                    "BRIDGE_INCIDENT_IO__ENDPOINT_LIMITS__ESCALATION_CREATE__BURST": "20",
                },
            )
            url = f"http://127.0.0.1:{port}"
            procs: list[subprocess.Popen[bytes]] = []

            async def start() -> None:
                proc, log = spawn_bridge(env, Path(tmp))
                log.close()
                procs.append(proc)
                await wait_http_ok(f"{url}/readyz", 60, proc)

            async def kill_now_and_then(rng: random.Random) -> int:
                for _ in range(KILLS):
                    await asyncio.sleep(rng.uniform(4.0, 8.0))
                    procs[-1].kill()
                    procs[-1].wait()
                    await start()
                return KILLS

            await start()
            sim.set_webhook_targets(
                rootly=f"{url}/webhooks/rootly", incident_io=f"{url}/webhooks/incident-io"
            )
            try:
                kills = 0
                if faults:
                    for platform in (sim.rootly, sim.incident_io):
                        platform.faults.update(FAULTS)
                    killing = asyncio.create_task(kill_now_and_then(random.Random(SEED + 1)))
                work = await act_as_humans(sim, random.Random(SEED))
                if faults:
                    kills = await asyncio.wait_for(killing, timeout=60)
                    for platform in (sim.rootly, sim.incident_io):
                        platform.faults.reset()
                seconds, left = await converge(sim, work, GIVE_UP_SECONDS)
                return seconds, left, kills
            finally:
                stop_process(procs[-1])


async def run(scale: Scale, progress: Callable[[str], None] = print) -> list[Figure]:
    """The convergence figure with and without faults (one run each; `scale` is ignored:
    the workload is the issue's, and smaller ones converge too fast to tell anything)."""
    del scale
    calm, calm_left, _ = await _run(faults=False)
    progress(f"convergence without faults: {calm:.1f} s ({len(calm_left)} left)")
    chaos, left, kills = await _run(faults=True)
    progress(f"convergence after faults: {chaos:.1f} s ({len(left)} left, {kills} kills)")
    note = (
        f"{INCIDENTS} incidents, {ALERTS} alerts, {kills} SIGKILLs; "
        f"{len(left)} objects never converged"
        + (f" (first: {left[0]})" if left else "")
        + f"; without faults {len(calm_left)} left"
    )
    met = not left and chaos <= TARGET_SECONDS
    return [
        Figure(
            "convergence.chaos",
            "time to converge",
            chaos,
            "s",
            calm,
            "the same workload without faults",
            chaos / calm if calm else None,
            f"<= {TARGET_SECONDS:.0f} s",
            met,
            note,
        )
    ]
