"""Events shaped the way the platform parsers build them, for rule tests.

incident.io events start from the official example payloads in the spec
(`tests.specs.webhook_example`); Rootly events from flat, seed-shaped `data` objects. Both are
turned into `Event`s directly (as `bridge/platforms/*/webhook.py` would), so these tests do
not depend on the parsers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.events import Actor, DeliveryId, Event, ObjectKind, ObjectRef, freeze
from bridge.rules import LinkGraph, RuleSet, load_rules
from tests.specs import ROOT, webhook_example

RULES_FILE = ROOT / "config" / "rules.yaml"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def default_rules(**variables: str) -> RuleSet:
    """The shipped rules with `BRIDGE_RULE_VAR_<NAME>` overrides (never the real env)."""
    env = {f"BRIDGE_RULE_VAR_{k.upper()}": v for k, v in variables.items()}
    return load_rules(Path(RULES_FILE), env=env)


def ref(text: str) -> ObjectRef:
    return ObjectRef.parse(text)


def graph(*pairs: tuple[str, str]) -> LinkGraph:
    return LinkGraph((ref(a), ref(b)) for a, b in pairs)


def rootly_event(
    event_type: str,
    data: dict[str, Any],
    *,
    delivery: str = "rootly-delivery-1",
    issued_at: datetime | None = None,
) -> Event:
    """A Rootly event as the Rootly parser builds it from ``{"event": ..., "data": data}``."""
    kind: ObjectKind = "alert" if event_type.startswith("alert.") else "incident"
    related: list[ObjectRef] = []
    if kind == "incident":
        ids = list(data.get("alert_ids") or []) + [a["id"] for a in data.get("alerts") or []]
        related = [ref(f"rootly:alert:{i}") for i in ids]
    else:
        ids = list(data.get("incident_ids") or []) + [i["id"] for i in data.get("incidents") or []]
        related = [ref(f"rootly:incident:{i}") for i in ids]
    status = data.get("status")
    return Event(
        source="rootly",
        delivery_id=DeliveryId(delivery),
        type=event_type,
        subject=ref(f"rootly:{kind}:{data['id']}"),
        resource=freeze(data),
        occurred_at=issued_at or NOW,
        new_status=status if isinstance(status, str) else None,
        related=tuple(dict.fromkeys(related)),
    )


def rootly_incident(**fields: Any) -> dict[str, Any]:
    """A flat Rootly incident (the `data` of an incident webhook)."""
    data: dict[str, Any] = {
        "id": "inc-4d1c",
        "sequential_id": 42,
        "title": "Checkout API returns 500s",
        "summary": "Error rate above 20% on checkout",
        "status": "started",
        "severity": {"id": "sev-id-1", "name": "SEV1", "slug": "sev1"},
        "url": "https://rootly.com/account/incidents/42",
    }
    data.update(fields)
    return data


def rootly_alert(**fields: Any) -> dict[str, Any]:
    """A flat Rootly alert (the `data` of `alert.created`)."""
    data: dict[str, Any] = {
        "id": "alert-7f2e",
        "source": "datadog",
        "status": "triggered",
        "summary": "p99 latency above 2s on checkout",
        "description": "Datadog monitor 1234 triggered",
        "external_url": "https://app.datadoghq.com/monitors/1234",
        "incident_ids": ["inc-4d1c"],
    }
    data.update(fields)
    return data


def _status(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("category"), str):
        return str(value["category"])
    return None


def io_event(
    event_type: str,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    *,
    delivery: str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    resource_override: dict[str, Any] | None = None,
) -> Event:
    """An incident.io event from the spec's example payload, parsed like the bridge does.

    `mutate` edits the payload (the object under the event-type key) first;
    `resource_override` stands for a hydrated resource (private events).
    """
    example = webhook_example(event_type)
    payload: dict[str, Any] = copy.deepcopy(example[event_type])
    if mutate is not None:
        mutate(payload)
    family = event_type.split(".", 1)[0].partition("_")[2]
    kind: ObjectKind = {"escalation": "escalation", "alert": "alert"}.get(family, "incident")  # type: ignore[assignment]
    resource = payload
    if kind == "escalation" and isinstance(payload.get("escalation"), dict):
        resource = payload["escalation"]
    elif kind == "incident" and isinstance(payload.get("incident"), dict):
        resource = payload["incident"]
    if resource_override is not None:
        resource = resource_override
    previous = new = None
    if "new_status" in payload or "previous_status" in payload:
        previous, new = _status(payload.get("previous_status")), _status(payload.get("new_status"))
    elif kind == "incident":
        new = _status(resource.get("incident_status"))
    elif isinstance(resource.get("status"), str):
        new = resource["status"]
    related: list[ObjectRef] = []
    if kind == "escalation":
        related = [ref(f"incident_io:alert:{a['id']}") for a in resource.get("related_alerts", [])]
        related += [
            ref(f"incident_io:incident:{i['id']}") for i in resource.get("related_incidents", [])
        ]
    actor = Actor()
    if isinstance(payload.get("actor"), dict) and isinstance(payload["actor"].get("user"), dict):
        user = payload["actor"]["user"]
        actor = Actor(kind="user", id=user["id"], name=user["name"])
    stamp = resource.get("updated_at") or resource.get("created_at")
    return Event(
        source="incident_io",
        delivery_id=DeliveryId(delivery),
        type=event_type,
        subject=ref(f"incident_io:{kind}:{resource['id']}"),
        resource=freeze(resource),
        occurred_at=datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None,
        previous_status=previous,
        new_status=new,
        actor=actor,
        related=tuple(dict.fromkeys(related)),
        needs_hydration=event_type.startswith("private_"),
    )


def ops(actions: Iterable[Any]) -> list[tuple[str, str | None]]:
    """(operation, target) pairs, for compact assertions."""
    return [(a.operation, str(a.target) if a.target else None) for a in actions]
