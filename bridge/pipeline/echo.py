"""The echo guard: a change the bridge made must not come back as a new event to mirror.

Three signals, any of which marks an event as an echo:
1. incident.io says who acted: `actor.api_key.id` equal to the bridge's own key ID.
2. The bridge recorded its own write (object, change, expiry) when the executor succeeded;
   an event reporting that same change on that object before expiry is its echo. An alert
   event names its incident.io alert by deduplication key, not ID: its write is recorded
   under that key (`bridge.operations.keyed_object`), and an incident.io alert event is
   looked up under its key as well as its ID.
3. (In the executor) a target already in the desired state answers as a no-op / conflict,
   recorded as skipped, so even an unrecognised echo cannot ping-pong.

`changes_of_event` and `changes_of_action` speak the same small vocabulary
(`status=<value>`, `updated`), which is what makes 2 work across both platforms.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bridge.events import Action, Event, ObjectRef, Operation
from bridge.operations import keyed_object, object_key
from bridge.store.base import EchoRecord
from bridge.store.store import Store

_ROOTLY_STATUS_EVENTS = {
    "incident.cancelled": "status=cancelled",
    "incident.resolved": "status=resolved",
    "incident.mitigated": "status=mitigated",
    "incident.in_triage": "status=in_triage",
}

# What each write looks like when the platform reports it back. Rootly reports a status
# change both as `incident.<status>` and as `incident.updated`.
_ACTION_CHANGES: dict[Operation, tuple[str, ...]] = {
    "rootly.cancel_incident": ("status=cancelled", "updated"),
    "rootly.update_incident": ("updated",),
    "rootly.restart_incident": ("status=started", "status=in_triage", "updated"),
    "rootly.resolve_incident": ("status=resolved", "updated"),
    "rootly.mitigate_incident": ("status=mitigated", "updated"),
    "rootly.acknowledge_alert": ("status=acknowledged",),
    "rootly.resolve_alert": ("status=resolved",),
    "incident_io.cancel_escalation": ("status=cancelled",),
    "incident_io.acknowledge_escalation": ("status=acked",),
    "incident_io.edit_incident": ("updated",),
    # Escalations the bridge creates are not echoes: their `escalation_created` webhook is
    # what completes the links to related alerts (default flow 9).
    "incident_io.create_escalation": (),
    "incident_io.send_alert_event": (),
}


def changes_of_event(event: Event) -> tuple[str, ...]:
    """The change vocabulary entries an incoming event reports."""
    if event.source == "rootly":
        if event.type in _ROOTLY_STATUS_EVENTS:
            return (_ROOTLY_STATUS_EVENTS[event.type],)
        if event.type == "incident.updated":
            return ("updated",)
        if event.type == "alert.updated" and event.new_status:
            # An alert's acknowledgement or resolution, reported with its current status.
            return (f"status={event.new_status}",)
        return ()
    if event.type.endswith("escalation_status_updated_v1") and event.new_status:
        return (f"status={event.new_status}",)
    if event.type.endswith("incident_status_updated_v2") and event.new_status:
        return (f"status={event.new_status}",)
    if event.type.endswith("incident_updated_v2"):
        return ("updated",)
    if event.type.endswith("alert_resolved_v1"):
        return ("status=resolved",)
    return ()


def echo_keys(event: Event) -> tuple[ObjectRef | str, ...]:
    """The names under which the bridge's writes to `event`'s subject are recorded: the
    subject, and for an incident.io alert its deduplication key (alert events name it so)."""
    if event.subject is None:
        return ()
    keys: tuple[ObjectRef | str, ...] = (event.subject,)
    dedup = event.resource.get("deduplication_key")
    if event.source == "incident_io" and event.subject.kind == "alert" and dedup:
        keys += (keyed_object("incident_io.send_alert_event", dedup),)
    return keys


def changes_of_action(action: Action) -> tuple[str, ...]:
    """The change vocabulary entries `action` makes on its object (`object_key`)."""
    if action.target is None:
        # A resolved alert event resolves the incident.io alert of its deduplication key;
        # a firing one creates it, whose webhook must not be taken for an echo (it is what
        # links the new alert, default flow 10).
        if (
            action.operation == "incident_io.send_alert_event"
            and action.params.get("status") == "resolved"
        ):
            return ("status=resolved",)
        return ()
    return _ACTION_CHANGES[action.operation]


def echo_records_for(action: Action, now: datetime, ttl_seconds: float) -> list[EchoRecord]:
    """The echo records to write after `action` succeeded."""
    expires = now + timedelta(seconds=ttl_seconds)
    key: ObjectRef | str = action.target if action.target is not None else object_key(action)
    return [EchoRecord(key, change, expires) for change in changes_of_action(action)]


class EchoGuard:
    def __init__(self, store: Store, incident_io_api_key_id: str | None) -> None:
        self._store = store
        self._key_id = incident_io_api_key_id

    async def verdict(self, event: Event, now: datetime, *, durable: bool = False) -> str | None:
        """Why `event` is an echo of the bridge's own write, or None if it is not.

        `durable` (a link check's delivery: a state read at any time after the write, long
        after its echo record expired) also asks the outbox: the state is the bridge's own
        when the last action done on the object made that change. So a check mirrors what
        a person did and the webhook would have, not what the bridge did (an incident.io
        alert the bridge resolved with its Rootly incident resolves no Rootly alert)."""
        if (
            event.source == "incident_io"
            and self._key_id
            and event.actor.kind == "api_key"
            and event.actor.id == self._key_id
        ):
            return "actor is the bridge's own incident.io API key"
        for change in changes_of_event(event):
            for key in echo_keys(event):
                if await self._store.find_echo(key, change, now):
                    return f"the bridge itself made '{change}' on {key}"
        if durable:
            return await self._made_by_bridge(event)
        return None

    async def _made_by_bridge(self, event: Event) -> str | None:
        changes = set(changes_of_event(event))
        for key in echo_keys(event) if changes else ():
            done = [r for r in await self._store.attempted_actions(str(key)) if r.state == "done"]
            if not done:
                continue
            last = max(done, key=lambda r: (r.finished_at or r.updated_at, r.id))
            made = changes.intersection(changes_of_action(last.action))
            if made:
                return f"the bridge itself made '{min(made)}' on {key} (action {last.id})"
        return None
