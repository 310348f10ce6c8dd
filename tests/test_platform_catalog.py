"""What each platform sends, as `bridge/platforms/*/catalog.py` lists it, against the specs.

`bridge check-config` judges trigger globs and field paths by these lists and
`--print-subscriptions` prints them, so they must be the official specs' own lists (plus
what DESIGN.md section 7 adds), not a hand-written guess.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.events import DeliveryId
from bridge.platforms.catalog import catalog, parse_webhook, sniff_source
from bridge.platforms.incident_io.catalog import INCIDENT_EXTRA_FIELDS as IO_INCIDENT_EXTRA
from bridge.platforms.rootly.catalog import ALERT_EXTRA_FIELDS, INCIDENT_EXTRA_FIELDS
from tests.specs import load_spec, webhook_event_types, webhook_example


def _props(platform: str, *names: str) -> set[str]:
    schemas: dict[str, Any] = load_spec(platform)["components"]["schemas"]
    return {prop for name in names for prop in schemas[name]["properties"]}


def test_rootly_event_types_are_the_specs_enum_plus_alert_updated() -> None:
    """Rootly's list is the webhook endpoint's `event_types` enum and `alert.updated`."""
    spec = load_spec("rootly")
    enum = spec["components"]["schemas"]["webhooks_endpoint"]["properties"]["event_types"]
    assert catalog("rootly").event_types == {*enum["items"]["enum"], "alert.updated"}


def test_incident_io_event_types_are_the_specs_x_webhooks() -> None:
    """incident.io's list is every `x-webhooks` entry of the spec, including
    `public_alert.alert_resolved_v1`."""
    spec = load_spec("incident_io")
    names = {k.removeprefix("/x-webhooks/") for k in spec["x-webhooks"]}
    names = {n for n in names if not n.startswith("/")}
    assert catalog("incident_io").event_types == names
    assert "public_alert.alert_resolved_v1" in catalog("incident_io").handled


def test_fields_are_the_specs_properties_plus_what_the_bridge_adds() -> None:
    """Each object's fields are its spec schema's properties plus the documented extras."""
    rootly = catalog("rootly").fields
    assert rootly["incident"] == _props("rootly", "incident") | INCIDENT_EXTRA_FIELDS
    assert rootly["alert"] == _props("rootly", "alert") | ALERT_EXTRA_FIELDS
    io = catalog("incident_io").fields
    assert io["escalation"] == _props("incident_io", "EscalationV2")
    assert io["alert"] == _props("incident_io", "AlertV2")
    assert io["incident"] == (
        _props("incident_io", "IncidentV2", "WebhookIncidentV2") | IO_INCIDENT_EXTRA
    )


def test_every_handled_type_is_sent_and_parses_to_its_object() -> None:
    """The types the bridge acts on are types the platform sends, and each official
    incident.io example parses into an event about the object the catalog names."""
    for platform in ("rootly", "incident_io"):
        cat = catalog(platform)
        assert set(cat.handled) <= cat.event_types
    for event_type in webhook_event_types():
        kind = catalog("incident_io").handled.get(event_type)
        if kind is None:
            continue
        body = json.dumps(webhook_example(event_type)).encode()
        event = parse_webhook("incident_io", body, DeliveryId("d"))
        assert event.subject is not None and event.subject.kind == kind, event_type


def test_rootly_alert_updated_is_an_alert_event() -> None:
    """`alert.updated` (DESIGN section 7) parses as an event about the alert, like
    `alert.created`, instead of an unmapped type the bridge ignores."""
    body = json.dumps(
        {
            "event": {"id": "d1", "type": "alert.updated", "issued_at": None},
            "data": {"id": "a1", "status": "acknowledged", "incident_ids": ["i1"]},
        }
    ).encode()
    event = parse_webhook("rootly", body, DeliveryId("d1"))
    assert event.known_type
    assert str(event.subject) == "rootly:alert:a1"
    assert event.new_status == "acknowledged"
    assert [str(r) for r in event.related] == ["rootly:incident:i1"]


def test_sniff_source_tells_the_envelopes_apart() -> None:
    """A Rootly envelope, an incident.io one, and anything else."""
    rootly = {"event": {"id": "e", "type": "incident.created"}, "data": {"id": "x"}}
    io = webhook_example("public_alert.alert_created_v1")
    assert sniff_source(json.dumps(rootly).encode()) == "rootly"
    assert sniff_source(json.dumps(io).encode()) == "incident_io"
    assert sniff_source(b"[1]") is None
    assert sniff_source(b"not json") is None
