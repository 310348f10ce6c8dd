"""What incident.io objects' current states mean to the rules, for the link checker.

`state_event` writes an object's current state as the webhook incident.io sends when the
object enters it (`bridge.pipeline.linkcheck`); the previous state is unknown, so rules that
need a transition (a re-opened incident) do not fire on it. `satisfied` says whether an
action on incident.io would change nothing, given the current states. incident.io's
webhooks report transitions themselves (`previous_status`), so no state is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from bridge.events import Action, ObjectKind, ObjectRef

_DONE_IN: Final[Mapping[str, frozenset[str]]] = {
    # Resolved and expired escalations cannot be cancelled: nothing is paging.
    "incident_io.cancel_escalation": frozenset({"cancelled", "resolved", "expired"}),
    # Acknowledged already, or no longer paging at all.
    "incident_io.acknowledge_escalation": frozenset({"acked", "resolved", "cancelled", "expired"}),
}


def tracked(kind: ObjectKind) -> tuple[str, ...]:
    """No field is recorded: the webhooks carry `previous_status`."""
    del kind
    return ()


def observed(kind: ObjectKind, resource: Mapping[str, Any]) -> dict[str, Any]:
    """Nothing is recorded (see `tracked`)."""
    del kind, resource
    return {}


def state_event(
    ref: ObjectRef, resource: Mapping[str, Any], delivery_id: str, now: datetime
) -> tuple[str, dict[str, Any]] | None:
    """(event type, webhook body) announcing `ref`'s current state."""
    del delivery_id, now  # incident.io carries both in headers, not in the body
    if ref.kind == "escalation":
        event_type = "public_escalation.escalation_status_updated_v1"
        payload: dict[str, Any] = {
            "escalation": dict(resource),
            "new_status": resource.get("status"),
            "actor": {},
        }
    elif ref.kind == "incident":
        event_type = "public_incident.incident_status_updated_v2"
        payload = {"incident": dict(resource), "new_status": resource.get("incident_status")}
    elif resource.get("status") == "resolved":
        event_type = "public_alert.alert_resolved_v1"
        payload = dict(resource)
    else:
        event_type = "public_alert.alert_created_v1"
        payload = dict(resource)
    return event_type, {"event_type": event_type, event_type: payload}


def satisfied(action: Action, states: Mapping[ObjectRef, Mapping[str, Any] | None]) -> bool | None:
    """True if `action` would change nothing given the current `states`; None if unknown."""
    if action.operation == "incident_io.send_alert_event":
        # Every alert under the key: a late "firing" can open a second one beside a
        # resolved one, and it alone may still page.
        key = action.params.get("deduplication_key")
        statuses = [
            state.get("status")
            for ref, state in states.items()
            if ref.type_key == "incident_io:alert"
            and state
            and state.get("deduplication_key") == key
        ]
        if not statuses:
            return None
        if action.params.get("status") == "resolved":
            return all(status == "resolved" for status in statuses)
        return "firing" in statuses
    state = states.get(action.target) if action.target is not None else None
    if state is None:
        return None
    done_in = _DONE_IN.get(action.operation)
    if done_in is not None:
        return str(state.get("status")) in done_in
    if action.operation == "incident_io.edit_incident":
        fields = {k: v for k, v in action.params.items() if k in ("name", "summary")}
        return bool(fields) and all(state.get(k) == v for k, v in fields.items())
    return None
