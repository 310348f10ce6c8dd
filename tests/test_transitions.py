"""Transitions from webhooks that carry the current state only (Rootly), on a real bridge.

The dispatcher compares each Rootly event with the last state it saw of the object (stored
with the decision on the event before): `previous_status`, `previous` and `changed` let a
rule fire once per change, a redelivered unchanged state does nothing, and the link
checker's synthetic deliveries are evaluated as first sightings so they can still heal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.app import Bridge
from bridge.events import DeliveryId, ObjectRef
from bridge.store.base import InboxRow, NewInboxEvent
from tests.conftest import bridge_settings

RULES = """\
version: 1
rules:
  - name: ack-became
    on: {source: rootly, event: alert.updated}
    when:
      - {field: new_status, equals: acknowledged}
      - {field: previous_status, not_equals: acknowledged}
    actions:
      - do: incident_io.acknowledge_escalation
        target: "incident_io:escalation:esc-{{ alert.id }}"
  - name: title-changed
    on: {source: rootly, event: incident.updated}
    when:
      - {field: incident.title, changed: true}
    actions:
      - do: incident_io.edit_incident
        target: "incident_io:incident:iio-{{ incident.id }}"
        params: {name: "{{ incident.title }}"}
"""


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    """A bridge with the rules above whose executor does not run (its actions stay in the
    outbox to be counted)."""
    settings = bridge_settings(tmp_path, rules=RULES)
    running = Bridge(settings, env={}, registry=CollectorRegistry())
    running.executor.stop()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def rootly(delivery: str, event_type: str, data: dict[str, Any]) -> NewInboxEvent:
    body: dict[str, Any] = {
        "event": {"id": delivery, "type": event_type, "issued_at": "2030-01-01T00:00:00Z"},
        "data": data,
    }
    if delivery.startswith("check:"):
        body["bridge_check"] = {"link": "x ~ y", "state": data.get("status"), "needs": []}
    return NewInboxEvent(
        source="rootly",
        delivery_id=DeliveryId(delivery),
        event_type=event_type,
        body=json.dumps(body).encode(),
        received_at=datetime.now(UTC),
    )


async def deliver(bridge: Bridge, event: NewInboxEvent) -> tuple[InboxRow, list[str]]:
    """Store `event`, wait (bounded) for its dispatch; its row and the operations it queued."""
    (inbox_id,) = await bridge.store.add_inbox([event])
    assert inbox_id is not None
    bridge.wake()
    for _ in range(200):
        row = await bridge.store.get_inbox(inbox_id)
        assert row is not None
        if row.state != "pending":
            actions = await bridge.store.actions_for_inbox(inbox_id)
            return row, [f"{a.action.operation} {a.action.target}" for a in actions]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{event.delivery_id} was not dispatched")


async def test_status_became_fires_once_per_change_and_not_on_a_repeat(bridge: Bridge) -> None:
    """An alert acknowledged fires the "became acknowledged" rule; the same state again in
    a new delivery (Rootly reports other changes with the same status) does not; after
    the alert left that status, acknowledging it again fires again. Each decision records
    the state it saw, so the next event is compared with it."""
    ack = "incident_io.acknowledge_escalation incident_io:escalation:esc-a1"
    acked = {"id": "a1", "status": "acknowledged"}
    _, first = await deliver(bridge, rootly("d1", "alert.updated", acked))
    assert first == [ack]
    row, repeat = await deliver(bridge, rootly("d2", "alert.updated", acked))
    assert repeat == []
    assert row.trace is not None
    assert row.trace["last_seen"] == {"status": "acknowledged"}
    assert list(row.trace["changed"]) == []
    assert row.trace["rules"]["ack-became"]["reason"] == "condition false"
    _, triggered = await deliver(bridge, rootly("d3", "alert.updated", {**acked, "status": "x"}))
    assert triggered == []
    _, again = await deliver(bridge, rootly("d4", "alert.updated", acked))
    assert again == [ack]
    (seen,) = await bridge.store.last_seen([ObjectRef.parse("rootly:alert:a1")])
    assert dict(seen.state) == {"status": "acknowledged"}


async def test_a_link_check_delivery_is_a_first_sighting_and_still_heals(bridge: Bridge) -> None:
    """A synthetic delivery of the link checker is not compared with the last state seen:
    although the alert was already seen acknowledged, the checker's delivery announcing
    that state fires the rule (the checker wrote it because the effect is missing)."""
    acked = {"id": "a2", "status": "acknowledged"}
    await deliver(bridge, rootly("d1", "alert.updated", acked))
    row, healed = await deliver(
        bridge, rootly("check:rootly:alert:a2:acknowledged:abc", "alert.updated", acked)
    )
    assert healed == ["incident_io.acknowledge_escalation incident_io:escalation:esc-a2"]
    assert row.trace is not None
    assert row.trace["last_seen"].startswith("not read")


async def test_changed_compares_the_recorded_fields_in_one_shape(bridge: Bridge) -> None:
    """`changed` holds for a field whose value differs from the last state seen: a first
    sighting with a title counts as a change; a later event with the same title and the
    severity in the API's JSON:API shape instead of the webhook's flat one does not (the
    severity is recorded by ID); a new title does. Events no rule triggers on (the
    incident's creation) still record the state they report."""
    flat = {"id": "sev-2", "slug": "sev2", "name": "SEV2"}
    nested = {"data": {"id": "sev-2", "type": "severities", "attributes": {"slug": "sev2"}}}
    edit = "incident_io.edit_incident incident_io:incident:iio-i1"
    base = {"id": "i1", "status": "started", "title": "DB down", "severity": flat}
    _, created = await deliver(bridge, rootly("c1", "incident.created", base))
    assert created == []
    (seen,) = await bridge.store.last_seen([ObjectRef.parse("rootly:incident:i1")])
    assert seen.state["severity"] == "sev-2"
    _, same = await deliver(bridge, rootly("u1", "incident.updated", {**base, "severity": nested}))
    assert same == []
    _, renamed = await deliver(bridge, rootly("u2", "incident.updated", {**base, "title": "DB"}))
    assert renamed == [edit]
    _, unseen = await deliver(bridge, rootly("u3", "incident.updated", {**base, "id": "i2"}))
    assert unseen == ["incident_io.edit_incident incident_io:incident:iio-i2"]
