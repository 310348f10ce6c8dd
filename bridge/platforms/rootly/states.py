"""What Rootly objects' current states mean to the rules, for the link checker.

`state_event` writes a Rootly object's current state as the webhook Rootly sends when an
object enters that state, so the rules can be evaluated on it as on a delivery
(`bridge.pipeline.linkcheck`). `satisfied` says whether an action on a Rootly object would
change nothing, given the object's current state.

Rootly's webhooks carry an object's current state only, never what it was, so the bridge
records the last state it saw of each (`observed`: the fields rules compare, in one shape
whether they come from a webhook or the API) and compares the next event with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from bridge.events import Action, ObjectKind, ObjectRef
from bridge.platforms.rootly.models import severity_of

# Incident statuses that a webhook of their own announces, and `acknowledged`, which Rootly
# reports as `incident.updated`.
INCIDENT_STATE_EVENTS: Final = {
    "cancelled": "incident.cancelled",
    "resolved": "incident.resolved",
    "mitigated": "incident.mitigated",
    "acknowledged": "incident.updated",
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


# The fields recorded of each object: what rules ask "did this change?" of.
TRACKED: Final[Mapping[ObjectKind, tuple[str, ...]]] = {
    "incident": ("status", "title", "summary", "severity", "acknowledged_at"),
    "alert": ("status",),
}


def tracked(kind: ObjectKind) -> tuple[str, ...]:
    """The fields recorded of a `kind` (none: its webhooks say what changed)."""
    return TRACKED.get(kind, ())


def observed(kind: ObjectKind, resource: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded fields of `resource`; the severity as its ID (webhooks send it flat,
    the API as a JSON:API document)."""
    state = {name: resource.get(name) for name in tracked(kind)}
    if "severity" in state:
        state["severity"] = severity_of(resource)[0]
    return state


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
