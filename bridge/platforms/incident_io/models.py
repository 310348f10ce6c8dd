"""Typed views of the incident.io API's answers (escalations, alerts, incidents).

Only the fields the bridge uses are typed; the whole object stays in `raw` (deep-frozen).
incident.io promises to add enum values and fields without notice, so statuses are plain
strings and unknown fields are ignored, never rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.events import freeze, thaw
from bridge.platforms.base import MalformedResponse

UNKNOWN_STATUS = "unknown"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def unwrap(body: Any, key: str) -> Mapping[str, Any]:
    """``body[key]``, an object with a string ``id`` (``{"escalation": {...}}`` answers)."""
    if not isinstance(body, Mapping):
        raise MalformedResponse("incident.io answer is not a JSON object")
    return _object(body.get(key), key)


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("id"), str):
        raise MalformedResponse(f"incident.io answer has no {what!r} object with an 'id'")
    return value


def _ids(items: Any) -> tuple[str, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(str(item["id"]) for item in items if isinstance(item, Mapping) and item.get("id"))


def _nested_text(obj: Mapping[str, Any], key: str, inner: str) -> str | None:
    value = obj.get(key)
    return _text(value.get(inner)) if isinstance(value, Mapping) else None


@dataclass(frozen=True, slots=True)
class Escalation:
    """An On-call escalation (``EscalationV2``)."""

    id: str
    status: str
    title: str | None
    escalation_path_id: str | None
    related_alert_ids: tuple[str, ...]
    related_incident_ids: tuple[str, ...]
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, obj: Any) -> Escalation:
        """Parse one ``EscalationV2`` object (the value under ``escalation``)."""
        obj = _object(obj, "escalation")
        return cls(
            id=obj["id"],
            status=_text(obj.get("status")) or UNKNOWN_STATUS,
            title=_text(obj.get("title")),
            escalation_path_id=_text(obj.get("escalation_path_id")),
            related_alert_ids=_ids(obj.get("related_alerts")),
            related_incident_ids=_ids(obj.get("related_incidents")),
            raw=freeze(obj),
        )

    def flat(self) -> dict[str, Any]:
        """The object as the API shows it (it already has ``id`` and ``status``)."""
        flat: dict[str, Any] = thaw(self.raw)
        flat["status"] = self.status
        return flat


@dataclass(frozen=True, slots=True)
class IncidentIoAlert:
    """An alert (``AlertV2``)."""

    id: str
    status: str
    deduplication_key: str | None
    title: str | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, obj: Any) -> IncidentIoAlert:
        """Parse one ``AlertV2`` object (the value under ``alert``)."""
        obj = _object(obj, "alert")
        return cls(
            id=obj["id"],
            status=_text(obj.get("status")) or UNKNOWN_STATUS,
            deduplication_key=_text(obj.get("deduplication_key")),
            title=_text(obj.get("title")),
            raw=freeze(obj),
        )

    def flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = thaw(self.raw)
        flat["status"] = self.status
        return flat


@dataclass(frozen=True, slots=True)
class IncidentIoIncident:
    """An incident (``IncidentV2``)."""

    id: str
    name: str | None
    summary: str | None
    status_category: str
    status_name: str | None
    severity_name: str | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, obj: Any) -> IncidentIoIncident:
        """Parse one ``IncidentV2`` object (the value under ``incident``)."""
        obj = _object(obj, "incident")
        return cls(
            id=obj["id"],
            name=_text(obj.get("name")),
            summary=_text(obj.get("summary")),
            status_category=_nested_text(obj, "incident_status", "category") or UNKNOWN_STATUS,
            status_name=_nested_text(obj, "incident_status", "name"),
            severity_name=_nested_text(obj, "severity", "name"),
            raw=freeze(obj),
        )

    def flat(self) -> dict[str, Any]:
        """The object plus ``status`` (= the status category, which rules compare against)."""
        flat: dict[str, Any] = thaw(self.raw)
        flat["status"] = self.status_category
        return flat


@dataclass(frozen=True, slots=True)
class AlertEventAccepted:
    """The 202 answer to an HTTP alert source event."""

    status: str
    message: str | None
    deduplication_key: str | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, body: Any) -> AlertEventAccepted:
        """Parse ``AlertEventsCreateHTTPResultV2``; an empty body is tolerated."""
        obj: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
        return cls(
            status=_text(obj.get("status")) or "accepted",
            message=_text(obj.get("message")),
            deduplication_key=_text(obj.get("deduplication_key")),
            raw=freeze(obj),
        )
