"""Rate-limit benchmarks: quotas per endpoint, shared by replicas, pages first.

- `ratelimit.burst`: a burst of Rootly `incident.created` (each a new page: an incident.io
  `POST /v2/escalations`, which has a limit of its own inside the key's) into a bridge wired
  to the sandbox (SQLite, in one process). First to last create call, against the minimum
  that every bucket on the way allows (client and server, escalation creates and key, each
  `max(0, N - burst) / rate` after the first call); 429s counted from the simulator.
- `ratelimit.replicas`: a backlog of incident.io actions (default rule 2's alert events)
  drained by several `bridge serve` processes sharing one PostgreSQL store, so one quota:
  first to last call against the minimum for one bucket of that rate; 429s counted. The
  server's bucket holds 10 s of its rate, so replicas each going at the full rate run it
  dry within seconds (measured with each replica counting alone: 47 x 429).
- `ratelimit.priority`: cancels (Rootly `incident.cancelled`, each cancelling the linked
  escalation) sent one after another while lower-class actions (incident.io incident
  edits) are queued behind the key's 20/s: from the Rootly change to the simulator's
  record of the cancel. Baseline: one slot of the key (1/rate) plus a direct call's round
  trip, the least a cancel can wait behind a request already holding the slot.

The burst and replica runs scale every rate by a speedup (printed) to stay short; the
priority run uses incident.io's real 20/s.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.common import (
    Figure,
    Scale,
    free_port,
    fresh_pg_database,
    percentile,
    pg_reachable,
    ratio,
    sandbox_bridge_env,
    skipped,
    spawn_bridge,
    stop_process,
    wait_http_ok,
)
from bench.pipeline_bench import ALERT_PATH, queue_alert_actions, stack
from bench.store_bench import quiet_logger
from bridge.events import Action, DeliveryId, IdempotencyKey, ObjectRef, RuleName
from bridge.sandbox import Sandbox
from bridge.sandbox.common import RecordedRequest
from bridge.store.base import InboxCompletion, NewInboxEvent

KEY_RATE = 20.0  # incident.io: 1200/min per key
KEY_CAPACITY = 1200.0
KEY_BURST = 20.0  # the bridge's default
# The replicas' server bucket holds 10 s of its rate, not incident.io's 1200: a shared
# quota overshot by the replicas together then earns 429s within seconds instead of
# hiding in a deep bucket.
REPLICA_SERVER_CAPACITY = 200.0
ESCALATION_RATE = 1.0  # POST /v2/escalations: 60/min
ESCALATION_CAPACITY = 60.0
ESCALATION_BURST = 10.0  # the bridge's default


def _minimum(n: int, buckets: list[tuple[float, float]]) -> float:
    """Least time from the first to the last of `n` calls through every (burst, rate)."""
    return max(max(0.0, n - burst) / rate for burst, rate in buckets)


async def _until(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    # Polling the simulator's records: there is no event to wait on.
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def burst(scale: Scale, progress: Callable[[str], None] = print) -> list[Figure]:
    k, n = scale.burst_speedup, scale.burst_incidents
    escalations, key = ESCALATION_RATE * k, KEY_RATE * k
    overrides = {
        "incident_io": {
            "rate_limit_per_minute": int(key * 60),
            "burst": int(KEY_BURST),
            "endpoint_limits": {
                "escalation_create": {"per_minute": escalations * 60, "burst": ESCALATION_BURST}
            },
        }
    }
    sandbox_kwargs = {
        "incident_io_rate_limit_per_minute": int(key * 60),
        "incident_io_refill_per_second": key,
        "incident_io_bucket_capacity": int(KEY_CAPACITY),
        "incident_io_escalation_create_per_minute": int(escalations * 60),
        "incident_io_escalation_create_capacity": int(ESCALATION_CAPACITY),
    }
    theoretical = _minimum(
        n,
        [
            (ESCALATION_BURST, escalations),
            (KEY_BURST, key),
            (ESCALATION_CAPACITY, escalations),
            (KEY_CAPACITY, key),
        ],
    )
    params = (
        f"{n} incidents; escalation creates {escalations:g}/s burst {ESCALATION_BURST:g} "
        f"(server holds {ESCALATION_CAPACITY:g}) inside the key's {key:g}/s burst "
        f"{KEY_BURST:g} (server holds {KEY_CAPACITY:g}); rates x{k:g}"
    )
    progress(f"burst: {params}; theoretical minimum {theoretical:.2f} s")
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bridge.db'}"
        async with stack(overrides, sandbox_kwargs, store_url=url) as running:
            sim = running.sandbox
            await asyncio.gather(
                *(sim.rootly.create_incident(f"Burst incident {i}") for i in range(n))
            )

            def paged() -> bool:
                calls = sim.incident_io.calls("POST", "/v2/escalations")
                return sum(1 for c in calls if c.status < 300) >= n

            await _until(paged, theoretical * 3 + 30)
            calls = sim.incident_io.calls("POST", "/v2/escalations")
    return _drain_figures("ratelimit.burst", calls, n, theoretical, params, progress)


def _drain_figures(
    name: str,
    calls: list[RecordedRequest],
    n: int,
    theoretical: float,
    params: str,
    progress: Callable[[str], None],
) -> list[Figure]:
    ok = sum(1 for c in calls if c.status < 300)
    too_many = sum(1 for c in calls if c.status == 429)
    elapsed = (max(c.at for c in calls) - min(c.at for c in calls)) if calls else 0.0
    complete = ok == n
    note = params if complete else f"{params}; only {ok} of {n} calls succeeded"
    progress(f"{name}: {elapsed:.2f} s, {too_many} x 429")
    r = ratio(elapsed, theoretical)
    # Faster than the minimum means the quota was overshot (replicas each at full rate).
    return [
        Figure(
            name,
            "time",
            elapsed,
            "s",
            theoretical,
            "theoretical min",
            r,
            "0.95-1.05",
            complete and r is not None and 0.95 <= r <= 1.05,
            note,
        ),
        Figure(name, "429s", float(too_many), "", target="0", ok=complete and too_many == 0),
    ]


def _replica_env(sim: Sandbox, store_url: str, port: int, rate: float) -> dict[str, str]:
    return sandbox_bridge_env(
        sim,
        port,
        store_url,
        {
            "BRIDGE_EXECUTOR__POLL_INTERVAL_SECONDS": "0.2",
            "BRIDGE_INCIDENT_IO__RATE_LIMIT_PER_MINUTE": str(int(rate * 60)),
            "BRIDGE_INCIDENT_IO__BURST": str(int(KEY_BURST)),
        },
    )


async def replicas(scale: Scale, progress: Callable[[str], None] = print) -> list[Figure]:
    name = "ratelimit.replicas"
    unreachable = await pg_reachable()
    if unreachable is not None:
        return [skipped(name, "time", unreachable)]
    k, n, count = scale.replica_speedup, scale.replica_actions, scale.replicas
    rate = KEY_RATE * k
    theoretical = _minimum(n, [(KEY_BURST, rate), (REPLICA_SERVER_CAPACITY, rate)])
    params = (
        f"{n} actions, {count} replicas on one PostgreSQL; key {rate:g}/s burst "
        f"{KEY_BURST:g} (server holds {REPLICA_SERVER_CAPACITY:g}); rates x{k:g}"
    )
    progress(f"replicas: {params}; theoretical minimum {theoretical:.2f} s")
    async with fresh_pg_database() as url:
        await queue_alert_actions(n, "replicas", url)  # phase 1: the backlog
        # Phase 2: `count` bridge processes with incident.io enabled drain it together.
        async with Sandbox(
            logger=quiet_logger(),
            incident_io_rate_limit_per_minute=int(rate * 60),
            incident_io_refill_per_second=rate,
            incident_io_bucket_capacity=int(REPLICA_SERVER_CAPACITY),
        ) as sim:
            with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
                procs = []
                try:
                    for i in range(count):
                        port = free_port()
                        home = Path(tmp) / f"replica-{i}"
                        home.mkdir()
                        proc, log = spawn_bridge(_replica_env(sim, url, port, rate), home)
                        log.close()
                        procs.append((proc, f"http://127.0.0.1:{port}"))
                    await asyncio.gather(
                        *(wait_http_ok(f"{base}/readyz", 60, proc) for proc, base in procs)
                    )

                    def drained() -> bool:
                        calls = sim.incident_io.calls("POST", ALERT_PATH)
                        return sum(1 for c in calls if c.status < 300) >= n

                    await _until(drained, theoretical * 3 + 60)
                finally:
                    for proc, _ in procs:
                        stop_process(proc)
            calls = sim.incident_io.calls("POST", ALERT_PATH)
    return _drain_figures(name, calls, n, theoretical, params, progress)


async def priority(scale: Scale, progress: Callable[[str], None] = print) -> list[Figure]:
    name = "ratelimit.priority"
    backlog, cancels = scale.priority_backlog, scale.priority_cancels
    # The incidents to cancel are paged first, quickly: this run is about the cancels.
    overrides = {
        "incident_io": {
            "endpoint_limits": {"escalation_create": {"per_minute": 6000, "burst": 100}}
        }
    }
    sandbox_kwargs = {"incident_io_escalation_create_per_minute": 6000}
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-priority-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bridge.db'}"
        async with stack(overrides, sandbox_kwargs, store_url=url) as running:
            sim, bridge = running.sandbox, running.bridge
            assert bridge is not None
            incidents = [
                (await sim.rootly.create_incident(f"Paging {i}"))["id"] for i in range(cancels)
            ]
            await running.settle(timeout=60)
            escalation_of = {}
            for incident_id in incidents:
                links = await bridge.store.linked([ObjectRef("rootly", "incident", incident_id)])
                (escalation,) = [
                    ref.id for link in links for ref in (link.a, link.b) if ref.kind == "escalation"
                ]
                escalation_of[incident_id] = escalation
            # The backlog: lower-class actions (incident edits), decided now.
            now = datetime.now(UTC)
            (inbox_id,) = await bridge.store.add_inbox(
                [NewInboxEvent("incident_io", DeliveryId("bench-backlog"), "bench", b"{}", now)]
            )
            assert inbox_id is not None
            edits = [
                Action(
                    operation="incident_io.edit_incident",
                    target=ObjectRef("incident_io", "incident", f"bench-{i}"),
                    params={"name": f"Renamed {i}"},
                    rule=RuleName("bench-backlog"),
                    idempotency_key=IdempotencyKey(f"bench-backlog-{i}"),
                )
                for i in range(backlog)
            ]
            age = bridge.settings.executor.priority_age_seconds
            await bridge.store.complete_inboxes(
                [InboxCompletion(inbox_id, edits, [], {}, priority_age=age)]
            )
            bridge.wake()
            edit_path = "/v2/incidents/*/actions/edit"
            await _until(lambda: len(sim.incident_io.calls("POST", edit_path)) >= 10, 30)
            for incident_id in incidents:
                path = f"/v2/escalations/{escalation_of[incident_id]}/actions/cancel"
                started = time.time()
                await sim.rootly.cancel_incident(incident_id)

                def cancelled(path: str = path) -> bool:
                    return bool(sim.incident_io.calls("POST", path))

                await _until(cancelled, 30)
                done = sim.incident_io.calls("POST", path)
                if done:
                    latencies.append(done[0].at - started)
                await asyncio.sleep(0.25)
            sent_edits = len(sim.incident_io.calls("POST", edit_path))
            too_many = sum(1 for r in sim.incident_io.received if r.status == 429)
            # Baseline: a direct call's round trip, beside one slot of the key.
            direct = f"{sim.incident_io_url}/v2/escalations/{escalation_of[incidents[0]]}"
            auth = {"Authorization": f"Bearer {sim.incident_io_api_key}"}
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                async with session.get(direct, headers=auth) as response:
                    await response.read()
                round_trip = time.perf_counter() - started
    p99 = percentile(latencies, 99) * 1000
    baseline = (1 / KEY_RATE + round_trip) * 1000
    waiting = backlog - sent_edits
    note = (
        f"{len(latencies)} of {cancels} cancels, p50 {percentile(latencies, 50) * 1000:.0f} ms,"
        f" max {max(latencies, default=0) * 1000:.0f} ms; {backlog} edits queued at"
        f" {KEY_RATE:g}/s, {sent_edits} sent meanwhile ({waiting} still queued: in arrival"
        f" order a cancel would wait {waiting / KEY_RATE:.0f} s); {too_many} x 429"
    )
    progress(f"priority: p99 {p99:.0f} ms")
    complete = len(latencies) == cancels
    return [
        Figure(
            name,
            "p99",
            p99,
            "ms",
            baseline,
            "one slot + direct call",
            ratio(p99, baseline),
            "<=1000 ms",
            complete and p99 <= 1000 and too_many == 0,
            note,
        )
    ]
