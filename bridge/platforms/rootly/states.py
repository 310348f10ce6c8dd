"""What Rootly objects' current states mean to the rules, for the link checker.

`state_event` writes a Rootly object's current state as the webhook Rootly sends when an
object enters that state, so the rules can be evaluated on it as on a delivery
(`bridge.pipeline.linkcheck`). `satisfied` says whether an action on a Rootly object would
change nothing, given the object's current state.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from bridge.events import Action, ObjectRef

# Incident statuses that a webhook of their own announces.
INCIDENT_STATE_EVENTS: Final = {
    "cancelled": "incident.cancelled",
    "resolved": "incident.resolved",
    "mitigated": "incident.mitigated",
}
# Alert statuses that `alert.updated` announces (a new alert is `alert.created`, which the
# link checker does not write: a linked alert has been mirrored already).
ALERT_STATE_EVENTS: Final = {
    "acknowledged": "alert.updated",
    "resolved": "alert.updated",
}
# Where each operation leaves its target; an incident past it (resolved, for a mitigate)
# needs nothing either: Rootly refuses those transitions as conflicts.
_DONE_IN: Final[Mapping[str, frozenset[str]]] = {
    "rootly.cancel_incident": frozenset({"cancelled", "resolved", "closed"}),
    "rootly.resolve_incident": frozenset({"resolved", "closed", "cancelled"}),
    "rootly.mitigate_incident": frozenset({"mitigated", "resolved", "closed", "cancelled"}),
    "rootly.acknowledge_alert": frozenset({"acknowledged", "resolved"}),
    "rootly.resolve_alert": frozenset({"resolved"}),
}


def state_event(
    ref: ObjectRef, resource: Mapping[str, Any], delivery_id: str, now: datetime
) -> tuple[str, dict[str, Any]] | None:
    """(event type, webhook body) announcing `ref`'s current state; None if no webhook
    announces it."""
    events = INCIDENT_STATE_EVENTS if ref.kind == "incident" else ALERT_STATE_EVENTS
    event_type = events.get(str(resource.get("status")))
    if event_type is None:
        return None
    event = {"id": delivery_id, "type": event_type, "issued_at": now.isoformat()}
    return event_type, {"event": event, "data": dict(resource)}


def satisfied(action: Action, states: Mapping[ObjectRef, Mapping[str, Any] | None]) -> bool | None:
    """True if `action` would change nothing given the current `states`; None if unknown."""
    state = states.get(action.target) if action.target is not None else None
    if state is None:
        return None
    done_in = _DONE_IN.get(action.operation)
    if done_in is not None:
        return str(state.get("status")) in done_in
    if action.operation == "rootly.update_incident":
        # Timestamps (acknowledged_at, ...) are set once: any value means done.
        return all(
            state.get(key) is not None if key.endswith("_at") else state.get(key) == value
            for key, value in action.params.items()
        )
    return None
