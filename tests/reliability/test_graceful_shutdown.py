"""Graceful shutdown: SIGTERM under load finishes what is in flight and loses nothing.

Bound: 240 Rootly incidents streamed 32 at a time; SIGTERM once 60 are accepted; the
bridge (grace period 5 s) is restarted after it exits and the sender, retrying like Rootly,
delivers the rest. About 20 s.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.sandbox import Sandbox
from tests.reliability.conftest import BridgeFactory
from tests.reliability.harness import (
    SignedSender,
    Upstream,
    escalations_by_key,
    rootly_delivery,
    store_snapshot,
    wait_until,
)

pytestmark = pytest.mark.slow

INCIDENTS = 240
TERM_AFTER_ACCEPTED = 60
GRACE_SECONDS = 5.0
# A request started this long before SIGTERM has surely reached the bridge (loopback).
IN_FLIGHT_MARGIN = 0.1


async def test_sigterm_under_load_finishes_in_flight_work_and_loses_nothing(
    sandbox: Sandbox, bridge_factory: BridgeFactory
) -> None:
    """Proves that SIGTERM in the middle of a webhook stream makes the bridge exit 0 within
    its grace period, that every request it had started handling got an answer (200, or 503
    once it stopped accepting; no connection dropped mid-request), that every delivery it
    answered 200 is in the inbox after the restart, and that with the sender retrying, every
    incident is paged exactly once across the two processes."""
    upstream = Upstream.from_sandbox(sandbox)
    bridge = bridge_factory(
        upstream, overrides={"server": {"shutdown_grace_seconds": GRACE_SECONDS}}
    )
    bridge.start()
    await bridge.wait_ready()
    sandbox.set_webhook_targets(rootly=None, incident_io=f"{bridge.url}/webhooks/incident-io")
    incidents = [await sandbox.rootly.create_incident(f"Shutdown {i}") for i in range(INCIDENTS)]
    deliveries = [rootly_delivery("incident.created", inc) for inc in incidents]
    exit_codes: list[int] = []
    signalled_at: list[float] = []
    stopped_at: list[float] = []

    async with SignedSender(bridge.url, upstream, seed=3, give_up_after=60) as sender:

        async def terminate_then_restart() -> None:
            await wait_until(
                lambda: len(sender.accepted) >= TERM_AFTER_ACCEPTED,
                timeout=30,
                interval=0.01,
                what="load before SIGTERM",
            )
            signalled_at.append(time.time())
            exit_codes.append(await bridge.terminate_async(timeout=GRACE_SECONDS + 1))
            stopped_at.append(time.time())
            bridge.start()
            await bridge.wait_ready()

        lifecycle = asyncio.create_task(terminate_then_restart(), name="test.sigterm")
        streaming = asyncio.create_task(
            sender.stream(deliveries, concurrency=32), name="test.stream"
        )
        try:
            # A bridge that does not exit in time fails the test now, not after the retries.
            done, _ = await asyncio.wait(
                {lifecycle, streaming}, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                task.result()
            await streaming
            await lifecycle
        finally:
            for task in (lifecycle, streaming):
                task.cancel()
            await asyncio.gather(lifecycle, streaming, return_exceptions=True)
        await wait_until(
            lambda: len(escalations_by_key(sandbox)) == INCIDENTS, timeout=60, what="escalations"
        )
        await sandbox.wait_idle(timeout=30)

    assert exit_codes == [0], bridge.log_text()[-3000:]
    assert bridge.starts == 2
    stopped = [e for e in bridge.log_events() if e.get("event") == "bridge.stopped"]
    assert stopped and stopped[0]["drained"] is True
    # Requests already sent when SIGTERM arrived were answered (200, or 503 once the bridge
    # stopped accepting), none cut off; later ones may be refused (the sender retries them).
    first_life = [a for a in sender.attempts if a.at <= stopped_at[0]]
    assert {a.status for a in first_life if a.status is not None} <= {200, 503}
    in_flight = [a for a in first_life if a.started < signalled_at[0] - IN_FLIGHT_MARGIN]
    unanswered = [a for a in in_flight if a.status is None]
    assert unanswered == [], unanswered[:5]
    accepted_by_first = {a.delivery_id for a in first_life if a.status == 200}
    assert len(accepted_by_first) >= TERM_AFTER_ACCEPTED
    assert all(sender.final[d.delivery_id] == 200 for d in deliveries)

    by_key = escalations_by_key(sandbox)
    assert len(by_key) == INCIDENTS and all(len(v) == 1 for v in by_key.values())
    assert await bridge.terminate_async() == 0
    snapshot = await store_snapshot(
        bridge.store_url, [(d.source, d.delivery_id) for d in deliveries]
    )
    assert accepted_by_first <= snapshot.inbox_delivery_ids
    assert snapshot.inbox_delivery_ids == {d.delivery_id for d in deliveries}
    assert snapshot.unfinished == [] and snapshot.dead == []
