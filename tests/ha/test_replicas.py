"""Two bridge processes sharing one PostgreSQL database behave as one bridge.

Each replica is a real `python -m bridge serve` child (config file + secrets by env) on
its own port, against a fresh database on the test server and an in-test sandbox. The
test sends signed Rootly webhooks itself, split across the replicas (some redelivered to
the other one), and reads the truth from the simulator: which escalations exist and every
API call it received. Leadership is read from each replica's `/metrics`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.sandbox import Sandbox
from tests.reliability.conftest import BridgeFactory
from tests.reliability.harness import (
    WEBHOOK_PATHS,
    BridgeProcess,
    Delivery,
    SignedSender,
    Upstream,
    rootly_delivery,
    signed_headers,
    wait_until,
)

pytestmark = pytest.mark.postgres

EVENTS = 1000
REDELIVER_EVERY = 50
FAILOVER_BOUND_SECONDS = 15.0
# Test timeouts, not speed assertions: generous for a loaded CI machine.
DRAIN_BOUND_SECONDS = 150.0
SEND_CONCURRENCY = 16
FAST_LIMITS = {"rate_limit_per_minute": 100_000, "burst": 10_000}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """Both simulators, with rate limits far above the load: this suite is about replicas,
    not pacing. Webhook targets stay unset: the test is the only webhook sender."""
    async with Sandbox(
        seed=21,
        rootly_rate_limit_per_minute=100_000,
        incident_io_rate_limit_per_minute=100_000,
        incident_io_refill_per_second=10_000.0,
        incident_io_bucket_capacity=100_000,
        incident_io_escalation_create_per_minute=100_000,
    ) as sb:
        yield sb


def replica_overrides(
    log_level: str = "info", *, scheduler: Mapping[str, float] = {}
) -> dict[str, Any]:
    """Config of a test replica (on top of the reliability harness's fast defaults)."""
    return {
        "rootly": FAST_LIMITS,
        "incident_io": {
            **FAST_LIMITS,
            "endpoint_limits": {"escalation_create": {"per_minute": 100_000, "burst": 10_000}},
        },
        "scheduler": {"leader_check_seconds": 0.5, **(scheduler or {})},
        "logging": {"level": log_level},
    }


async def start_replicas(
    factory: BridgeFactory,
    sandbox: Sandbox,
    store_url: str,
    overrides: Mapping[str, Mapping[str, Any]],
) -> dict[str, BridgeProcess]:
    """Start one replica per name in `overrides` on the same database; wait until ready."""
    upstream = Upstream.from_sandbox(sandbox)
    replicas = {
        name: factory(upstream, name=name, store_url=store_url, overrides=extra)
        for name, extra in overrides.items()
    }
    for replica in replicas.values():
        replica.start()
    for replica in replicas.values():
        await replica.wait_ready("/readyz")
    return replicas


async def leader_gauge(session: aiohttp.ClientSession, replica: BridgeProcess) -> float:
    """`bridge_leader` as this replica's /metrics reports it."""
    async with session.get(replica.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    for family in text_string_to_metric_families(text):
        if family.name == "bridge_leader":
            return float(family.samples[0].value)
    raise AssertionError(f"no bridge_leader in {replica.url}/metrics")


async def leaders(session: aiohttp.ClientSession, replicas: list[BridgeProcess]) -> list[float]:
    return [await leader_gauge(session, r) for r in replicas]


async def incident_deliveries(sandbox: Sandbox, count: int) -> list[Delivery]:
    """`incident.created` webhooks for `count` incidents that exist in the simulated Rootly."""
    out = []
    for n in range(count):
        incident = await sandbox.rootly.create_incident(f"Replica test incident {n}")
        out.append(rootly_delivery("incident.created", incident))
    return out


async def send_all(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    replica: BridgeProcess,
    deliveries: list[Delivery],
) -> None:
    """POST each delivery once, signed now, `SEND_CONCURRENCY` at a time over keep-alive
    connections; every one must be accepted (2xx) at the first attempt."""
    gate = asyncio.Semaphore(SEND_CONCURRENCY)

    async def one(delivery: Delivery) -> None:
        async with (
            gate,
            session.post(
                replica.url + WEBHOOK_PATHS[delivery.source],
                data=delivery.body,
                headers=signed_headers(delivery, upstream),
            ) as response,
        ):
            assert response.status in (200, 202), (response.status, await response.text())

    await asyncio.gather(*(one(d) for d in deliveries))


def escalation_keys(sandbox: Sandbox) -> list[str]:
    """The idempotency key of every escalation creation request the simulator received."""
    return [
        str(c.body["idempotency_key"]) for c in sandbox.incident_io.calls("POST", "/v2/escalations")
    ]


async def test_two_replicas_act_once_with_one_leader_and_fail_over(
    sandbox: Sandbox, pg_database: str, bridge_factory: BridgeFactory
) -> None:
    """1,000 incidents sent to two replicas (alternating, every 50th redelivered to the other)
    give exactly 1,000 escalation requests, one per idempotency key, and 1,000 escalations;
    exactly one replica leads throughout; SIGKILL of the leader hands leadership to the
    other within a bounded time, and the survivor keeps acting."""
    replicas = await start_replicas(
        bridge_factory,
        sandbox,
        pg_database,
        # Warnings only: 1,000 events' info lines would cost the replicas CPU, not tell more.
        {"a": replica_overrides("warning"), "b": replica_overrides("warning")},
    )
    pair = [replicas["a"], replicas["b"]]
    deliveries = await incident_deliveries(sandbox, EVENTS)
    expected_keys = {
        f"rootly-incident-{incident['id']}" for incident in sandbox.rootly.state()["incidents"]
    }
    assert len(expected_keys) == EVENTS

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        await wait_until(lambda: _sum_is_one(session, pair), timeout=10, what="one leader elected")
        samples: list[list[float]] = []
        sending = True

        async def sample_leadership() -> None:
            while sending:
                samples.append(await leaders(session, pair))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample_leadership(), name="test.sample-leadership")
        try:
            upstream = Upstream.from_sandbox(sandbox)
            await asyncio.gather(
                send_all(session, upstream, pair[0], deliveries[0::2]),
                send_all(session, upstream, pair[1], deliveries[1::2]),
            )
            # Redeliveries (same delivery ID, fresh signature), each to the replica that did
            # not take the original: answered 2xx, stored and acted on once.
            await asyncio.gather(
                send_all(session, upstream, pair[1], deliveries[0 :: REDELIVER_EVERY * 2]),
                send_all(session, upstream, pair[0], deliveries[1 :: REDELIVER_EVERY * 2]),
            )
            await wait_until(
                lambda: len(sandbox.incident_io.state()["escalations"]) >= EVENTS,
                timeout=DRAIN_BOUND_SECONDS,
                what=f"{EVENTS} escalations",
            )
            await asyncio.sleep(0.5)  # a late duplicate request would have arrived by now
        finally:
            sending = False
            await sampler

        keys = escalation_keys(sandbox)
        assert len(keys) == EVENTS, f"{len(keys) - len(set(keys))} duplicate requests"
        assert set(keys) == expected_keys
        assert len(sandbox.incident_io.state()["escalations"]) == EVENTS
        assert samples and all(sum(s) == 1 for s in samples), samples

        leader = next(r for r, v in zip(pair, await leaders(session, pair), strict=True) if v)
        survivor = pair[1] if leader is pair[0] else pair[0]
        await leader.kill_async()
        await wait_until(
            lambda: _is_leader(session, survivor),
            timeout=FAILOVER_BOUND_SECONDS,
            interval=0.1,
            what="the surviving replica to take leadership",
        )
        (late,) = await incident_deliveries(sandbox, 1)
        async with SignedSender(survivor.url, Upstream.from_sandbox(sandbox)) as sender:
            assert await sender.deliver(late) in (200, 202)
        await wait_until(
            lambda: len(escalation_keys(sandbox)) == EVENTS + 1,
            timeout=10,
            what="the survivor to act on a new event",
        )


async def _sum_is_one(session: aiohttp.ClientSession, pair: list[BridgeProcess]) -> bool:
    return sum(await leaders(session, pair)) == 1


async def _is_leader(session: aiohttp.ClientSession, replica: BridgeProcess) -> bool:
    return await leader_gauge(session, replica) == 1


QUIET = {"poll_interval_seconds": 60}
NO_SWEEP = {"retry_sweep_seconds": 3600.0, "reconcile_seconds": 3600.0}
WAKE_BOUND_SECONDS = 10.0  # far below the 60 s poll: only a wake-up can meet it


async def test_work_is_driven_by_wake_ups_not_polling(
    sandbox: Sandbox, pg_database: str, bridge_factory: BridgeFactory
) -> None:
    """With polling and the sweep set to a minute or more, events sent to both replicas are
    all acted on well within that: in-process wake-ups drive the work, not polling."""
    quiet = {**replica_overrides(scheduler=NO_SWEEP), "executor": QUIET}
    replicas = await start_replicas(bridge_factory, sandbox, pg_database, {"a": quiet, "b": quiet})
    deliveries = await incident_deliveries(sandbox, 40)
    upstream = Upstream.from_sandbox(sandbox)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        await asyncio.gather(
            send_all(session, upstream, replicas["a"], deliveries[0::2]),
            send_all(session, upstream, replicas["b"], deliveries[1::2]),
        )
    await wait_until(
        lambda: len(escalation_keys(sandbox)) == len(deliveries),
        timeout=WAKE_BOUND_SECONDS,
        what="every event acted on",
    )


async def test_notify_wakes_the_other_replica_for_actions_it_alone_can_run(
    sandbox: Sandbox, pg_database: str, bridge_factory: BridgeFactory
) -> None:
    """Replica A runs without incident.io (it accepts Rootly webhooks and dispatches them,
    but cannot execute incident.io actions); replica B can. Webhooks accepted by A produce
    escalations through B well within B's 60 s poll: PostgreSQL LISTEN/NOTIFY must wake B
    once A has written the actions."""
    quiet = {**replica_overrides(scheduler=NO_SWEEP), "executor": QUIET}
    no_incident_io = {**quiet, "incident_io": {"enabled": False}}
    replicas = await start_replicas(
        bridge_factory, sandbox, pg_database, {"a": no_incident_io, "b": quiet}
    )
    deliveries = await incident_deliveries(sandbox, 5)
    async with SignedSender(replicas["a"].url, Upstream.from_sandbox(sandbox)) as sender:
        # One at a time, each waited for: no later webhook's wake-up may rescue an earlier one.
        for done, delivery in enumerate(deliveries, start=1):
            assert await sender.deliver(delivery) in (200, 202)
            await wait_until(
                lambda done=done: len(escalation_keys(sandbox)) == done,
                timeout=WAKE_BOUND_SECONDS,
                what=f"replica B to run the action replica A dispatched for event {done}",
            )
