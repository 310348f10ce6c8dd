"""Rules-engine throughput: 10,000 realistic events through the default rules.

Prints events/second for `evaluate` and, for a machine-independent number, the ratio to a
baseline measured in the same run over the same events: a trivial loop that looks each
event's (source, type) up in a dict of rule names, i.e. the least any router must do.

Run: ``python -m bench.rules_bench`` (or call `run()`, which returns the numbers).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.events import DeliveryId, Event, ObjectKind, ObjectRef, freeze
from bridge.rules import LinkGraph, RuleSet, evaluate, load_rules

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _rootly(i: int, event_type: str) -> Event:
    is_alert = event_type.startswith("alert.")
    data: dict[str, Any] = {
        "id": f"{'al' if is_alert else 'inc'}-{i}",
        "title": f"Checkout errors #{i}",
        "summary": "Error rate above 20%",
        "status": "started",
        "severity": {"slug": "sev1", "name": "SEV1"} if i % 2 else "sev2",
        "alert_ids": [f"al-{i}"],
        "incident_ids": [f"inc-{i}"],
        "external_url": f"https://example.com/{i}",
    }
    kind: ObjectKind = "alert" if is_alert else "incident"
    related = ObjectRef(
        "rootly", "incident" if is_alert else "alert", f"{'inc' if is_alert else 'al'}-{i}"
    )
    return Event(
        source="rootly",
        delivery_id=DeliveryId(f"rootly-{i}"),
        type=event_type,
        subject=ObjectRef("rootly", kind, data["id"]),
        resource=freeze(data),
        occurred_at=NOW,
        new_status="started",
        related=(related,),
    )


def _incident_io(i: int, event_type: str) -> Event:
    if "escalation" in event_type:
        resource: dict[str, Any] = {
            "id": f"esc-{i}",
            "status": "acked",
            "title": "Database CPU is high",
            "related_alerts": [{"id": f"ia-{i}", "deduplication_key": f"rootly-alert-al-{i}"}],
            "related_incidents": [],
        }
        return Event(
            source="incident_io",
            delivery_id=DeliveryId(f"msg-{i}"),
            type=event_type,
            subject=ObjectRef("incident_io", "escalation", f"esc-{i}"),
            resource=freeze(resource),
            occurred_at=NOW,
            previous_status="triggered",
            new_status="acked",
            related=(ObjectRef("incident_io", "alert", f"ia-{i}"),),
        )
    resource = {
        "id": f"ioinc-{i}",
        "name": "Our database is sad",
        "summary": "It is",
        "reference": f"INC-{i}",
        "severity": {"name": "Minor"},
    }
    return Event(
        source="incident_io",
        delivery_id=DeliveryId(f"msg-{i}"),
        type=event_type,
        subject=ObjectRef("incident_io", "incident", f"ioinc-{i}"),
        resource=freeze(resource),
        occurred_at=NOW,
        previous_status="live",
        new_status="canceled" if "status" in event_type else "live",
    )


TYPES = [
    ("rootly", "incident.created"),
    ("rootly", "alert.created"),
    ("rootly", "incident.cancelled"),
    ("rootly", "incident.resolved"),
    ("rootly", "incident.updated"),
    ("incident_io", "public_escalation.escalation_status_updated_v1"),
    ("incident_io", "public_escalation.escalation_created_v1"),
    ("incident_io", "public_incident.incident_status_updated_v2"),
    ("incident_io", "public_incident.incident_updated_v2"),
]


def make_events(count: int) -> list[tuple[Event, LinkGraph]]:
    """`count` events cycling through the types the default rules handle, with links."""
    out = []
    for i in range(count):
        source, event_type = TYPES[i % len(TYPES)]
        event = _rootly(i, event_type) if source == "rootly" else _incident_io(i, event_type)
        links = LinkGraph(
            [
                (
                    ObjectRef("rootly", "incident", f"inc-{i}"),
                    ObjectRef("incident_io", "escalation", f"esc-{i}"),
                ),
                (
                    ObjectRef("rootly", "alert", f"al-{i}"),
                    ObjectRef("incident_io", "alert", f"ia-{i}"),
                ),
                (
                    ObjectRef("incident_io", "alert", f"ia-{i}"),
                    ObjectRef("incident_io", "escalation", f"esc-{i}"),
                ),
                (
                    ObjectRef("incident_io", "incident", f"ioinc-{i}"),
                    ObjectRef("rootly", "incident", f"inc-{i}"),
                ),
            ]
        )
        out.append((event, links))
    return out


def _baseline(rules: RuleSet, events: list[tuple[Event, LinkGraph]]) -> tuple[float, int]:
    table: dict[tuple[str, str], list[str]] = {}
    for source, event_type in TYPES:
        table[(source, event_type)] = [
            r.name for r in rules.rules if r.source == source and r.event_pattern.match(event_type)
        ]
    hits = 0
    start = time.perf_counter()
    for event, _ in events:
        hits += len(table.get((event.source, event.type), ()))
    return time.perf_counter() - start, hits


def run(count: int = 10_000) -> dict[str, Any]:
    """Evaluate `count` events through config/rules.yaml; return the measurements."""
    rules = load_rules(
        ROOT / "config" / "rules.yaml",
        env={
            "BRIDGE_RULE_VAR_ESCALATION_PATH_ID": "01PATH",
            "BRIDGE_RULE_VAR_SEVERITY_MAP": '{"minor": "s"}',
        },
    )
    events = make_events(count)
    for event, links in events[:200]:  # warm-up
        evaluate(rules, event, links, NOW)
    actions = errors = 0
    start = time.perf_counter()
    for event, links in events:
        result = evaluate(rules, event, links, NOW)
        actions += len(result.actions)
        errors += len(result.errors)
    elapsed = time.perf_counter() - start
    base_elapsed, _ = _baseline(rules, events)
    rate = count / elapsed
    base_rate = count / base_elapsed if base_elapsed > 0 else float("inf")
    return {
        "events": count,
        "seconds": round(elapsed, 4),
        "events_per_second": round(rate, 1),
        "actions": actions,
        "errors": errors,
        "mean_us_per_event": round(elapsed / count * 1e6, 1),
        "baseline_events_per_second": round(base_rate, 1),
        "ratio_to_baseline": round(rate / base_rate, 5),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
