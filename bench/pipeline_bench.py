"""Benchmarks 2 and 3: event to action latency, and draining a burst at the rate limit.

Both run a `SandboxStack` (simulated Rootly and incident.io plus a real bridge with the
default rules, SQLite store, in one process) and post signed Rootly `alert.created`
webhooks straight to the bridge; default rule 2 turns each into an incident.io alert event
(`POST /v2/alert_events/http/{config_id}`, alert-source token). incident.io's own webhooks
back to the bridge are switched off so only the measured path runs.

- Event to action: webhooks at a fixed rate; latency = the simulator's record of the
  upstream call (taken when its handler finished) minus the moment the bridge's 200 reached
  the sender. Both simulators' and the bridge's rate limits are raised far above the rate,
  since this measures the pipeline, not the limiter. Baseline: the same alert-event call
  made directly with a bare aiohttp client, i.e. one loopback round trip to the simulator.
- Rate-limit drain: N webhooks at once; the drain time is first to last upstream call. The
  theoretical minimum follows from the two token buckets (client: config burst and rate;
  server: capacity and refill): after the first call, max((N - burst) / rate,
  (N - capacity) / refill). Both rates are multiplied by `drain_speedup` to keep the run
  short; the parameters are printed. 429s are counted from the simulator's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    Figure,
    Scale,
    free_port,
    paced,
    percentile,
    ratio,
    rootly_alert_created,
    sandbox_bridge_env,
    spawn_bridge,
    stop_process,
    wait_http_ok,
)
from bench.store_bench import quiet_logger
from bridge.platforms.rootly.webhook import sign as sign_rootly
from bridge.sandbox import Sandbox
from bridge.sandbox.stack import SandboxStack

ALERT_PATH = "/v2/alert_events/http/*"


def alert_webhook(secret: str, n: int, run: str) -> tuple[bytes, dict[str, str], str]:
    """A signed Rootly alert.created delivery; returns (body, headers, dedup key)."""
    alert_id = f"al-{run}-{n}"
    body = rootly_alert_created(alert_id, n)
    headers = {
        "Content-Type": "application/json",
        "X-Rootly-Signature": sign_rootly(secret, int(time.time()), body),
    }
    return body, headers, f"rootly-alert-{alert_id}"


@contextlib.asynccontextmanager
async def stack(
    overrides: dict[str, Any], sandbox_kwargs: dict[str, Any], store_url: str | None = None
) -> AsyncIterator[SandboxStack]:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'bridge.db'}"
        base = {"executor": {"poll_interval_seconds": 0.2}, "logging": {"level": "warning"}}
        async with SandboxStack(
            store_url=url,
            overrides={**base, **overrides},
            logger=quiet_logger(),
            sandbox_kwargs={**sandbox_kwargs, "logger": quiet_logger()},
        ) as running:
            running.sandbox.incident_io.set_webhook_target(None)
            yield running


@dataclass
class RemoteBridge:
    """A `bridge serve` process wired to an in-process sandbox (the production topology:
    the platforms are not on the bridge's event loop)."""

    url: str
    sandbox: Sandbox


@contextlib.asynccontextmanager
async def bridge_beside_sandbox(
    env_overrides: dict[str, str], sandbox_kwargs: dict[str, Any]
) -> AsyncIterator[RemoteBridge]:
    async with Sandbox(logger=quiet_logger(), **sandbox_kwargs) as sim:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            port = free_port()
            store_url = f"sqlite:///{Path(tmp) / 'bridge.db'}"
            extra = {"BRIDGE_EXECUTOR__POLL_INTERVAL_SECONDS": "0.2", **env_overrides}
            env = sandbox_bridge_env(sim, port, store_url, extra)
            proc, log = spawn_bridge(env, Path(tmp))
            url = f"http://127.0.0.1:{port}"
            try:
                await wait_http_ok(f"{url}/readyz", 60, proc)
                sim.set_webhook_targets(rootly=f"{url}/webhooks/rootly", incident_io=None)
                yield RemoteBridge(url, sim)
            finally:
                stop_process(proc)
                log.close()


async def queue_alert_actions(n: int, run: str, store_url: str) -> None:
    """Fill the store at `store_url` with `n` incident.io alert-event actions: Rootly
    `alert.created` webhooks into a bridge whose incident.io side is disabled, so rule 2's
    actions pile up in the outbox; returns once every webhook is dispatched. A drain is
    then limited by neither how fast webhooks arrive nor how fast they dispatch."""
    async with stack({"incident_io": {"enabled": False}}, {}, store_url=store_url) as running:
        sim = running.sandbox
        target = f"{running.url}/webhooks/rootly"
        semaphore = asyncio.Semaphore(32)
        async with aiohttp.ClientSession() as session:

            async def send(i: int) -> None:
                body, headers, _ = alert_webhook(sim.rootly_webhook_secret, i, run)
                async with semaphore, session.post(target, data=body, headers=headers) as answer:
                    await answer.read()

            await asyncio.gather(*(send(i) for i in range(n)))
        await _wait_dispatched(running, timeout=120)


async def _wait_dispatched(running: SandboxStack, timeout: float) -> None:
    assert running.bridge is not None
    deadline = time.monotonic() + timeout
    # Polling the store and the simulator's records: there is no event to wait on.
    while (await running.bridge.store.counts()).inbox_pending and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def _wait_calls(sim: Sandbox, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = sim.incident_io.calls("POST", ALERT_PATH)
        if sum(1 for c in calls if c.status < 300) >= count:
            return
        await asyncio.sleep(0.05)


async def event_to_action(scale: Scale, progress: Callable[[str], None] = print) -> list[Figure]:
    fast = {"rate_limit_per_minute": 100_000, "burst": 10_000}
    sandbox_kwargs: dict[str, Any] = {
        "incident_io_rate_limit_per_minute": 1_000_000,
        "incident_io_refill_per_second": 100_000.0,
        "incident_io_bucket_capacity": 100_000,
        "rootly_rate_limit_per_minute": 1_000_000,
    }
    n, rate = scale.e2a_events, scale.e2a_rate
    env = {
        f"BRIDGE_{platform}__{key.upper()}": str(value)
        for platform in ("ROOTLY", "INCIDENT_IO")
        for key, value in fast.items()
    }
    async with bridge_beside_sandbox(env, sandbox_kwargs) as running:
        sim = running.sandbox
        accepted: dict[str, float] = {}
        statuses: list[int] = []
        target = f"{running.url}/webhooks/rootly"
        async with aiohttp.ClientSession() as session:

            async def send(i: int) -> None:
                body, headers, key = alert_webhook(sim.rootly_webhook_secret, i, "e2a")
                async with session.post(target, data=body, headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)
                accepted[key] = time.time()

            await paced(n, rate, send, "bench.e2a.send")
            await _wait_calls(sim, n, timeout=max(30.0, n / 5))
            done = {
                c.body["deduplication_key"]: c.at
                for c in sim.incident_io.calls("POST", ALERT_PATH)
                if c.status < 300
            }
            latencies = [(done[k] - t) * 1000 for k, t in accepted.items() if k in done]

            # Baseline: the same upstream call made directly, at the same rate.
            url = f"{sim.incident_io_url}/v2/alert_events/http/{sim.alert_source_config_id}"
            auth = {"Authorization": f"Bearer {sim.alert_source_token}"}
            base: list[float] = []

            async def direct(i: int) -> None:
                payload = {
                    "status": "firing",
                    "title": f"direct {i}",
                    "deduplication_key": f"direct-{i}",
                }
                t0 = time.perf_counter()
                async with session.post(url, json=payload, headers=auth) as response:
                    await response.read()
                base.append((time.perf_counter() - t0) * 1000)

            await paced(n, rate, direct, "bench.e2a.direct")
        async with aiohttp.ClientSession() as scrape, scrape.get(f"{running.url}/metrics") as r:
            exposition = await r.text()
        samples = {
            s.name: s.value
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
            if s.name.startswith("bridge_event_to_action_seconds")
        }
        count = samples.get("bridge_event_to_action_seconds_count", 0.0)
        total = samples.get("bridge_event_to_action_seconds_sum", 0.0)
    note = f"{n} events at {rate:.0f}/s, {len(latencies)} completed"
    if any(s != 200 for s in statuses):
        note += f"; {sum(s != 200 for s in statuses)} webhooks not answered 200"
    if count:
        note += f"; bridge_event_to_action_seconds mean {total / count * 1000:.1f} ms"
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    b50, b99 = percentile(base, 50), percentile(base, 99)
    progress(f"event_to_action: p50 {p50:.1f} ms p99 {p99:.1f} ms")
    complete = len(latencies) == n
    return [
        Figure(
            "event_to_action",
            "p50",
            p50,
            "ms",
            b50,
            "direct call",
            ratio(p50, b50),
            "<=5 ms",
            complete and p50 <= 5,
            note,
        ),
        Figure(
            "event_to_action",
            "p99",
            p99,
            "ms",
            b99,
            "direct call",
            ratio(p99, b99),
            "<=50 ms",
            complete and p99 <= 50,
            note,
        ),
    ]


async def drain(scale: Scale, progress: Callable[[str], None] = print) -> list[Figure]:
    k = scale.drain_speedup
    client_rate, client_burst = 20.0 * k, 20.0  # config: 1200/min, burst 20
    server_refill, server_capacity = 20.0 * k, 1200.0  # incident.io: 1200 bucket, 20/s
    n = scale.drain_actions
    overrides = {
        "incident_io": {"rate_limit_per_minute": int(client_rate * 60), "burst": int(client_burst)}
    }
    sandbox_kwargs = {
        "incident_io_rate_limit_per_minute": int(server_refill * 60),
        "incident_io_refill_per_second": server_refill,
        "incident_io_bucket_capacity": int(server_capacity),
    }
    theoretical = max((n - client_burst) / client_rate, (n - server_capacity) / server_refill, 0.0)
    params = (
        f"{n} actions; client {client_rate:.0f}/s burst {client_burst:.0f}; "
        f"server {server_refill:.0f}/s capacity {server_capacity:.0f} (rates x{k:g})"
    )
    progress(f"drain: {params}; theoretical minimum {theoretical:.2f} s")
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bridge.db'}"
        await queue_alert_actions(n, "drain", url)  # phase 1: the backlog
        # Phase 2: the same store with incident.io enabled: the executor drains the backlog.
        async with stack(overrides, sandbox_kwargs, store_url=url) as running:
            await _wait_calls(running.sandbox, n, timeout=theoretical * 3 + 30)
            calls = running.sandbox.incident_io.calls("POST", ALERT_PATH)
    ok_calls = [c for c in calls if c.status < 300]
    too_many = sum(1 for c in calls if c.status == 429)
    elapsed = (max(c.at for c in calls) - min(c.at for c in calls)) if calls else 0.0
    complete = len(ok_calls) == n
    note = params
    if not complete:
        note += f"; only {len(ok_calls)} of {n} actions completed"
    progress(f"drain: {elapsed:.2f} s, {too_many} x 429")
    r = ratio(elapsed, theoretical)
    return [
        Figure(
            "ratelimit.drain",
            "time",
            elapsed,
            "s",
            theoretical,
            "theoretical min",
            r,
            "<=1.05",
            complete and r is not None and r <= 1.05,
            note,
        ),
        Figure(
            "ratelimit.drain",
            "429s",
            float(too_many),
            "",
            target="0",
            ok=complete and too_many == 0,
        ),
    ]
