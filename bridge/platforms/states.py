"""Each platform's knowledge of object states: what the link checker writes and checks, and
what the dispatcher records of each object to tell a change from a repeated state.

Rootly's webhooks carry an object's current state only; incident.io's also say what it was
(`previous_status`). For a platform of the first kind the bridge records the last state it
saw of each object (`observed`, in the store's ``object_states``, written with the decision
on the event) and compares the next event about the object with it (`compared`), so rules
can say "status became X" and a redelivered, unchanged state does nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Protocol

from bridge.events import Action, Event, ObjectKind, ObjectRef, Platform, freeze
from bridge.platforms.incident_io import states as incident_io_states
from bridge.platforms.rootly import states as rootly_states


class StateModel(Protocol):
    def state_event(
        self, ref: ObjectRef, resource: Mapping[str, Any], delivery_id: str, now: datetime
    ) -> tuple[str, dict[str, Any]] | None:
        """(event type, webhook body) that announces `ref`'s current state, or None."""

    def satisfied(
        self, action: Action, states: Mapping[ObjectRef, Mapping[str, Any] | None]
    ) -> bool | None:
        """Whether `action` (on this platform) would change nothing; None if unknown."""

    def tracked(self, kind: ObjectKind) -> tuple[str, ...]:
        """The fields recorded of an object of `kind` (none: nothing is recorded)."""

    def observed(self, kind: ObjectKind, resource: Mapping[str, Any]) -> dict[str, Any]:
        """The recorded fields of `resource`, in one shape whatever read it."""


STATE_MODELS: Final[Mapping[Platform, StateModel]] = {
    "rootly": rootly_states,
    "incident_io": incident_io_states,
}


def tracked_fields(platform: Platform) -> frozenset[str]:
    """Every field recorded of any object of `platform` (what `changed` can be asked of)."""
    model = STATE_MODELS[platform]
    kinds: tuple[ObjectKind, ...] = ("incident", "alert", "escalation")
    return frozenset(name for kind in kinds for name in model.tracked(kind))


def records(platform: Platform, kind: ObjectKind) -> bool:
    """Whether the bridge records the state of `platform`'s objects of `kind`."""
    return bool(STATE_MODELS[platform].tracked(kind))


def observed(event: Event) -> dict[str, Any] | None:
    """The state `event` reports of its subject, to record as the last seen; None when its
    platform's webhooks report transitions themselves (or it has no subject)."""
    if event.subject is None or not records(event.source, event.subject.kind):
        return None
    return STATE_MODELS[event.source].observed(event.subject.kind, event.resource)


def compared(event: Event, last: Mapping[str, Any] | None) -> Event:
    """`event` compared with its subject's last state seen (`last`; None: unknown): its
    `previous` and `previous_status` are that state's, `changed` names the recorded fields
    whose value differs (all that have one when nothing was seen). Unchanged when the
    platform records no state of the subject."""
    current = observed(event)
    if current is None:
        return event
    if last is None:
        changed = frozenset(name for name, value in current.items() if value is not None)
        return dataclasses.replace(event, previous=None, changed=changed)
    changed = frozenset(name for name, value in current.items() if last.get(name) != value)
    status = last.get("status")
    return dataclasses.replace(
        event,
        previous=freeze(dict(last)),
        previous_status=event.previous_status or (status if isinstance(status, str) else None),
        changed=changed,
    )
