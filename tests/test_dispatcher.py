"""The dispatcher's ordering promise under concurrency, on a real bridge and store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bridge.app import Bridge
from bridge.config import Settings
from bridge.events import DeliveryId, Event, InboxId
from bridge.pipeline import dispatcher as dispatcher_module
from bridge.store.base import EventFilter, InboxRow, NewInboxEvent, OutboxRow, StoreUnavailable
from bridge.store.sqlite import encode_time
from bridge.store.store import Store
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


async def queued_actions(settings: Settings, events: Sequence[NewInboxEvent]) -> list[OutboxRow]:
    """Store `events`, dispatch them all with the executor stopped (no platform behind
    this bridge), and return the actions they left in the outbox."""
    assert None not in await store_events(settings.store.url, events)
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    bridge.executor.stop()
    await bridge.start()
    try:
        await all_dispatched(bridge)
        return await bridge.store.list_outbox(None, 100)
    finally:
        await bridge.stop()


async def dispatched_row(bridge: Bridge, inbox_id: InboxId) -> InboxRow | None:
    """Start `bridge`, wait until everything stored is dispatched, read `inbox_id` back, stop."""
    await bridge.start()
    try:
        await all_dispatched(bridge)
        return await bridge.store.get_inbox(inbox_id)
    finally:
        await bridge.stop()


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
    events = []
    for n in range(8):
        data = {"id": f"inc-{n}", "status": "started", "escalation_id": f"esc-{n}"}
        events.append(rootly_event(f"upd-{n}", "incident.updated", data))
    for n in range(8):
        data = {"id": f"inc-{n}", "status": "cancelled"}
        events.append(rootly_event(f"cxl-{n}", "incident.cancelled", data))
    actions = await queued_actions(settings, events)
    targets = sorted(str(row.action.target) for row in actions)
    assert targets == sorted(f"incident_io:escalation:esc-{n}" for n in range(8))


async def test_handed_over_event_waits_for_older_stored_events(tmp_path: Path) -> None:
    """An event ingest hands to the dispatcher in memory is newer than events already
    stored unclaimed (stored while the dispatcher had no room): it must not overtake them.
    The cancellation, handed over, still sees the link the older stored update records."""
    settings = bridge_settings(tmp_path, rules=RULES, executor={"poll_interval_seconds": 0.05})
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    bridge.executor.stop()
    data = {"id": "inc-1", "status": "started", "escalation_id": "esc-1"}
    await store_events(settings.store.url, [rootly_event("upd-1", "incident.updated", data)])
    (cancel_id,) = await store_events(
        settings.store.url,
        [rootly_event("cxl-1", "incident.cancelled", {"id": "inc-1", "status": "cancelled"})],
        owner=bridge.instance_id,
    )
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


@pytest.mark.parametrize(
    "failure",
    [StoreUnavailable("store blipped"), RuntimeError("a bug in the claim")],
    ids=["store-error", "crash"],
)
async def test_handed_over_event_survives_a_failed_claim(
    tmp_path: Path, failure: Exception
) -> None:
    """A round whose claim fails (the store blipped, or a bug crashed the loop, which the
    supervisor restarts) keeps the events ingest handed over: they are still ours and
    their leases are being renewed, so dropping them would strand them for good. They are
    dispatched on the next round, long before their lease (60 s) could have run out."""
    settings = bridge_settings(tmp_path, rules=RULES, executor={"poll_interval_seconds": 0.05})
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    bridge.executor.stop()
    data = {"id": "inc-1", "status": "started", "escalation_id": "esc-1"}
    (inbox_id,) = await store_events(
        settings.store.url,
        [rootly_event("upd-1", "incident.updated", data)],
        owner=bridge.instance_id,
    )
    assert inbox_id is not None
    bridge.dispatcher.adopt([await stored_row(settings.store.url, inbox_id)])
    real_claim = bridge.store.claim_inbox
    failed: list[Exception] = []

    async def claim_failing_once(owner: str, limit: int, lease_seconds: float) -> list[InboxRow]:
        if not failed:
            failed.append(failure)
            raise failure
        return await real_claim(owner, limit, lease_seconds)

    bridge.store.claim_inbox = claim_failing_once  # type: ignore[method-assign]
    row = await dispatched_row(bridge, inbox_id)
    assert failed
    assert row is not None
    assert row.state == "processed"


async def test_event_whose_parser_crashes_does_not_hold_up_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parser bug on one stored event (an exception, not a PayloadError for a bad body)
    does not crash the dispatcher's loop: the events claimed in the same batch are
    dispatched at once, not a lease (60 s) later, and the crashing one is scheduled for a
    retry with the crash as its error, like any crashed dispatch, which after
    MAX_DISPATCH_ATTEMPTS is failed visibly instead of cycling for ever."""
    real_parse = dispatcher_module.PARSERS["rootly"]

    def parse_with_a_bug(body: bytes, delivery_id: DeliveryId) -> Event:
        if delivery_id == "poison":
            raise KeyError("a bug in the parser")
        return real_parse(body, delivery_id)

    monkeypatch.setitem(dispatcher_module.PARSERS, "rootly", parse_with_a_bug)
    settings = bridge_settings(tmp_path, rules=RULES, executor={"poll_interval_seconds": 0.05})
    ids = await store_events(
        settings.store.url,
        [
            rootly_event(delivery, "incident.updated", {"id": f"inc-{n}", "status": "started"})
            for n, delivery in enumerate(["poison", "ok-1", "ok-2"])
        ],
    )
    poison, *others = [inbox_id for inbox_id in ids if inbox_id is not None]
    assert len(others) == 2
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    await bridge.start()
    try:
        for _ in range(200):
            rows = [await bridge.store.get_inbox(inbox_id) for inbox_id in others]
            if all(row is not None and row.state == "processed" for row in rows):
                break
            await asyncio.sleep(0.05)
        crashed = await bridge.store.get_inbox(poison)
    finally:
        await bridge.stop()
    assert [row.state if row else None for row in rows] == ["processed", "processed"]
    assert crashed is not None
    assert crashed.state == "pending"
    assert crashed.error is not None
    assert "dispatch crashed" in crashed.error
    assert "a bug in the parser" in crashed.error


async def store_events(
    url: str, events: Sequence[NewInboxEvent], owner: str | None = None
) -> list[InboxId | None]:
    """`add_inbox` on the store at `url` (before the bridge under test opens it)."""
    store = Store(url)
    await store.open()
    try:
        return await store.add_inbox(events, owner=owner)
    finally:
        await store.close()


async def stored_row(url: str, inbox_id: InboxId) -> InboxRow:
    store = Store(url)
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
    (inbox_id,) = await store_events(
        settings.store.url,
        [
            NewInboxEvent(
                source="incident_io",
                delivery_id=DeliveryId("status-1"),
                event_type="public_incident.incident_status_updated_v2",
                body=json.dumps(body).encode(),
                received_at=datetime.now(UTC),
            )
        ],
    )
    assert inbox_id is not None
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    row = await dispatched_row(bridge, inbox_id)
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
    data = {"id": "inc-1", "title": "t", "status": "started"}
    (inbox_id,) = await store_events(
        settings.store.url, [rootly_event("u-1", "incident.updated", data)]
    )
    expires = datetime.now(UTC) + timedelta(hours=1)
    with sqlite3.connect(settings.store.url.removeprefix("sqlite:///")) as conn:
        conn.execute(
            "INSERT INTO echo_records (ref, change, expires_at) VALUES (?, ?, ?)",
            ("rootly:incident:inc-1", "updated", encode_time(expires)),
        )
    assert inbox_id is not None
    registry = CollectorRegistry()
    bridge = Bridge(settings, env={}, registry=registry)
    row = await dispatched_row(bridge, inbox_id)
    assert row is not None
    assert row.trace is not None
    assert "echo" not in row.trace
    assert "no enabled rule triggers" in row.trace["skipped"]
    dispatched = {"source": "rootly", "result": "no_match"}
    assert registry.get_sample_value("bridge_events_dispatched_total", dispatched) == 1.0
    echoes = registry.get_sample_value("bridge_echoes_suppressed_total", {"source": "rootly"})
    assert not echoes


async def test_dispatched_events_are_found_by_the_objects_they_name(tmp_path: Path) -> None:
    """The dispatcher records, with its decision, the objects each event names and the
    outcome it counted: both events about an incident are then found by its ID, newest
    first, with their outcomes; and the rules that fired are counted for the console."""
    settings = bridge_settings(tmp_path, rules=RULES, executor={"poll_interval_seconds": 0.05})
    data = {"id": "inc-7", "status": "started", "escalation_id": "esc-7"}
    ids = await store_events(
        settings.store.url,
        [
            rootly_event("upd-7", "incident.updated", data),
            rootly_event("cxl-7", "incident.cancelled", {"id": "inc-7", "status": "cancelled"}),
        ],
    )
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    bridge.executor.stop()
    await bridge.start()
    try:
        await all_dispatched(bridge)
        found = await bridge.store.search_events(EventFilter(object_id="inc-7"))
        cancels = await bridge.store.search_events(
            EventFilter(object_id="inc-7", outcome="actions")
        )
        named = await bridge.store.event_objects([row.id for row in found])
    finally:
        await bridge.stop()
    assert [row.id for row in found] == list(reversed(ids))
    assert [row.delivery_id for row in cancels] == ["cxl-7"]
    assert [(str(o.ref), o.role) for o in named[found[0].id]] == [
        ("rootly:incident:inc-7", "subject")
    ]
    stats = bridge.rule_stats.snapshot(datetime.now(UTC))
    assert (stats["remember-escalation"].fired, stats["cancel-linked"].fired) == (1, 1)


async def test_an_event_is_dispatched_max_attempts_times_then_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dispatch attempts are counted once each (a claim or a hand-over counts the attempt
    it starts): an event whose dispatch crashes every time is tried MAX_DISPATCH_ATTEMPTS
    times, then failed for good with that many attempts recorded."""
    monkeypatch.setattr(dispatcher_module, "MAX_DISPATCH_ATTEMPTS", 2)
    real_parse = dispatcher_module.PARSERS["rootly"]

    def always_crashes(body: bytes, delivery_id: DeliveryId) -> Event:
        if delivery_id == "poison":
            raise KeyError("a bug in the parser")
        return real_parse(body, delivery_id)

    monkeypatch.setitem(dispatcher_module.PARSERS, "rootly", always_crashes)
    settings = bridge_settings(tmp_path, rules=RULES, executor={"poll_interval_seconds": 0.05})
    (poison,) = await store_events(
        settings.store.url, [rootly_event("poison", "incident.updated", {"id": "inc-1"})]
    )
    assert poison is not None
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    await bridge.start()
    try:
        for _ in range(200):
            row = await bridge.store.get_inbox(poison)
            if row is not None and row.state == "failed":
                break
            await asyncio.sleep(0.05)
    finally:
        await bridge.stop()
    assert row is not None
    assert (row.state, row.attempts) == ("failed", 2)


async def test_a_link_check_repeats_an_action_whose_rule_key_is_spent(tmp_path: Path) -> None:
    """A rule with a fixed idempotency key has acted on an incident; a link check later
    finds the same action still needed (what it did was undone upstream) and decides it
    again. The repair is queued under a key of its own, not dropped as a duplicate of the
    spent one, and a webhook delivered twice still collapses into one action."""
    rules = RULES.replace(
        '        for_each: {linked: "incident_io:escalation"}\n',
        '        for_each: {linked: "incident_io:escalation"}\n'
        '        idempotency_key: "cancel-{{ incident.id }}"\n',
    )
    settings = bridge_settings(tmp_path, rules=rules, executor={"poll_interval_seconds": 0.05})
    link = {"id": "inc-1", "status": "started", "escalation_id": "esc-1"}
    cancelled = {"id": "inc-1", "status": "cancelled"}
    check = rootly_event(
        "check:rootly:incident:inc-1:cancelled:0123", "incident.cancelled", cancelled
    )
    events = [
        rootly_event("upd-1", "incident.updated", link),
        rootly_event("cxl-1", "incident.cancelled", cancelled),
        rootly_event("cxl-1-again", "incident.cancelled", cancelled),
        check,
    ]
    actions = await queued_actions(settings, events)
    keys = sorted(str(row.action.idempotency_key) for row in actions)
    assert len(keys) == 2, keys
    assert keys[0] == "cancel-inc-1"
    assert keys[1].startswith("cancel-inc-1~repair:")
    assert {str(row.action.target) for row in actions} == {"incident_io:escalation:esc-1"}
