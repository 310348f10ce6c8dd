"""Each platform's knowledge of object states, as the link checker uses it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Protocol

from bridge.events import Action, ObjectRef, Platform
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


STATE_MODELS: Final[Mapping[Platform, StateModel]] = {
    "rootly": rootly_states,
    "incident_io": incident_io_states,
}
