"""The dispatcher's ordering promise under concurrency, on a real bridge and store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from bridge.app import Bridge
from bridge.events import DeliveryId, InboxId
from bridge.store.base import InboxRow, NewInboxEvent
from bridge.store.sql import SqlStore
from bridge.store.sqlite_direct import encode_time
from tests.conftest import bridge_settings

RULES = """\
version: 1
rules:
  - name: remember-escalation
    on: {source: rootly, event: incident.updated}
    links:
      - add: {a: "{{ subject }}", b: "incident_io:escalation:{{ incident.escalation_id }}"}
  - name: cancel-linked
    on: {source: rootly, event: incident.cancelled}
    actions:
      - do: incident_io.cancel_escalation
        for_each: {linked: "incident_io:escalation"}
"""


async def all_dispatched(bridge: Bridge) -> None:
    """Wait (bounded) until the bridge has dispatched every stored event."""
    for _ in range(200):
        if (await bridge.store.counts()).inbox_pending == 0:
            return
        await asyncio.sleep(0.05)


def rootly_event(delivery: str, event_type: str, data: dict[str, str]) -> NewInboxEvent:
    body = {"event": {"id": delivery, "type": event_type, "issued_at": None}, "data": data}
    return NewInboxEvent(
        source="rootly",
        delivery_id=DeliveryId(delivery),
        event_type=event_type,
        body=json.dumps(body).encode(),
        received_at=datetime.now(UTC),
    )


async def test_events_about_one_object_keep_their_order_in_one_batch(tmp_path: Path) -> None:
    """Eight unrelated incidents each get a link-recording event then a cancellation, all
    stored before the dispatcher starts, so they are claimed in one batch and dispatched
    concurrently. Each cancellation still sees the link its own earlier event recorded:
    exactly one cancel per incident, aimed at that incident's escalation."""
    settings = bridge_settings(tmp_path, rules=RULES, executor={"poll_interval_seconds": 0.05})
    seed = SqlStore(settings.store.url)
    await seed.open()
    events = []
    for n in range(8):
        data = {"id": f"inc-{n}", "status": "started", "escalation_id": f"esc-{n}"}
        events.append(rootly_event(f"upd-{n}", "incident.updated", data))
    for n in range(8):
        data = {"id": f"inc-{n}", "status": "cancelled"}
        events.append(rootly_event(f"cxl-{n}", "incident.cancelled", data))
    assert None not in await seed.add_inbox(events)
    await seed.close()

    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    bridge.executor.stop()  # no platform behind this bridge: keep actions in the outbox
    await bridge.start()
    try:
        await all_dispatched(bridge)
        actions = await bridge.store.list_outbox(None, 100)
    finally:
        await bridge.stop()
    targets = sorted(str(row.action.target) for row in actions)
    assert targets == sorted(f"incident_io:escalation:esc-{n}" for n in range(8))


async def test_handed_over_event_waits_for_older_stored_events(tmp_path: Path) -> None:
    """An event ingest hands to the dispatcher in memory is newer than events already
    stored unclaimed (stored while the dispatcher had no room): it must not overtake them.
    The cancellation, handed over, still sees the link the older stored update records."""
    settings = bridge_settings(tmp_path, rules=RULES, executor={"poll_interval_seconds": 0.05})
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    bridge.executor.stop()
    seed = SqlStore(settings.store.url)
    await seed.open()
    data = {"id": "inc-1", "status": "started", "escalation_id": "esc-1"}
    await seed.add_inbox([rootly_event("upd-1", "incident.updated", data)])
    (cancel_id,) = await seed.add_inbox(
        [rootly_event("cxl-1", "incident.cancelled", {"id": "inc-1", "status": "cancelled"})],
        owner=bridge.instance_id,
    )
    await seed.close()
    assert cancel_id is not None
    row = await stored_row(settings.store.url, cancel_id)
    bridge.dispatcher.adopt([row])
    await bridge.start()
    try:
        await all_dispatched(bridge)
        actions = await bridge.store.list_outbox(None, 10)
    finally:
        await bridge.stop()
    assert [str(a.action.target) for a in actions] == ["incident_io:escalation:esc-1"]


async def stored_row(url: str, inbox_id: InboxId) -> InboxRow:
    store = SqlStore(url)
    await store.open()
    try:
        row = await store.get_inbox(inbox_id)
    finally:
        await store.close()
    assert row is not None
    return row


async def test_event_no_rule_handles_is_recorded_without_lookups(tmp_path: Path) -> None:
    """An incident.io status change that no enabled rule triggers on is recorded at once
    as no_match with every rule's reason, without asking the platform for fresh state
    (the platforms here are unreachable: a hydration would leave the event pending for a
    retry) and without consulting links or the echo guard."""
    settings = bridge_settings(tmp_path, rules=RULES, executor={"poll_interval_seconds": 0.05})
    body = {
        "event_type": "public_incident.incident_status_updated_v2",
        "public_incident.incident_status_updated_v2": {
            "incident": {"id": "inc-9", "name": "x", "incident_status": {"category": "closed"}},
            "new_status": {"category": "closed"},
            "previous_status": {"category": "active"},
        },
    }
    seed = SqlStore(settings.store.url)
    await seed.open()
    (inbox_id,) = await seed.add_inbox(
        [
            NewInboxEvent(
                source="incident_io",
                delivery_id=DeliveryId("status-1"),
                event_type="public_incident.incident_status_updated_v2",
                body=json.dumps(body).encode(),
                received_at=datetime.now(UTC),
            )
        ]
    )
    await seed.close()
    assert inbox_id is not None
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    await bridge.start()
    try:
        await all_dispatched(bridge)
        row = await bridge.store.get_inbox(inbox_id)
    finally:
        await bridge.stop()
    assert row is not None
    assert row.state == "processed"
    assert row.trace is not None
    assert "no enabled rule triggers" in row.trace["skipped"]
    assert row.trace["rules"]["cancel-linked"]["reason"] == "trigger mismatch"


async def test_echo_no_rule_handles_is_not_counted_as_suppressed(tmp_path: Path) -> None:
    """A Rootly `incident.updated` echoing the bridge's own write, of a type no rule
    handles, is recorded as no_match and not counted in `bridge_echoes_suppressed_total`:
    nothing would have acted on it, so no loop was prevented (the metric counts loops)."""
    cancel_only = (
        "version: 1\nrules:\n  - name: cancel-linked" + RULES.split("  - name: cancel-linked")[1]
    )
    settings = bridge_settings(tmp_path, rules=cancel_only)
    seed = SqlStore(settings.store.url)
    await seed.open()
    data = {"id": "inc-1", "title": "t", "status": "started"}
    (inbox_id,) = await seed.add_inbox([rootly_event("u-1", "incident.updated", data)])
    await seed.close()
    expires = datetime.now(UTC) + timedelta(hours=1)
    with sqlite3.connect(settings.store.url.removeprefix("sqlite:///")) as conn:
        conn.execute(
            "INSERT INTO echo_records (ref, change, expires_at) VALUES (?, ?, ?)",
            ("rootly:incident:inc-1", "updated", encode_time(expires)),
        )
    assert inbox_id is not None
    registry = CollectorRegistry()
    bridge = Bridge(settings, env={}, registry=registry)
    await bridge.start()
    try:
        await all_dispatched(bridge)
        row = await bridge.store.get_inbox(inbox_id)
    finally:
        await bridge.stop()
    assert row is not None
    assert row.trace is not None
    assert "echo" not in row.trace
    assert "no enabled rule triggers" in row.trace["skipped"]
    dispatched = {"source": "rootly", "result": "no_match"}
    assert registry.get_sample_value("bridge_events_dispatched_total", dispatched) == 1.0
    echoes = registry.get_sample_value("bridge_echoes_suppressed_total", {"source": "rootly"})
    assert not echoes
