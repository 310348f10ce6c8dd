"""Typed views of the Rootly API's JSON:API answers, and the JSON:API flattening helpers.

Only the fields the bridge uses are typed; everything else stays in `raw` (deep-frozen).
Statuses are plain strings: Rootly may add enum values at any time and an unknown value must
flow through, not break parsing. Unknown fields are ignored.
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


def _data(document: Any) -> Mapping[str, Any]:
    if not isinstance(document, Mapping):
        raise MalformedResponse("Rootly answer is not a JSON object")
    data = document.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str | int):
        raise MalformedResponse("Rootly answer has no 'data' resource with an 'id'")
    return data


def flatten_resource(resource: Mapping[str, Any]) -> dict[str, Any]:
    """One JSON:API resource as a flat dict: its attributes plus ``id`` (as webhooks show it)."""
    attributes = resource.get("attributes")
    flat = dict(attributes) if isinstance(attributes, Mapping) else {}
    flat["id"] = str(resource["id"])
    return flat


def flatten_document(document: Any) -> dict[str, Any]:
    """The primary resource of ``{"data": {id, type, attributes, relationships}, ...}``, flat."""
    return flatten_resource(_data(document))


def related_ids(document: Any, name: str, resource_type: str) -> tuple[str, ...]:
    """IDs of the objects related to the primary resource under `name`, in first-seen order.

    Looks in every place Rootly puts them: ``relationships.<name>.data``, the ``included``
    resources of `resource_type` (with ``?include=<name>``) and an ``attributes.<name>`` list
    of embedded objects (as alert answers carry their incidents).
    """
    data = _data(document)
    found: list[str] = []

    def add(item: Any) -> None:
        if isinstance(item, Mapping) and isinstance(item.get("id"), str | int):
            found.append(str(item["id"]))

    relationships = data.get("relationships")
    if isinstance(relationships, Mapping):
        relation = relationships.get(name)
        linkage = relation.get("data") if isinstance(relation, Mapping) else None
        for item in linkage if isinstance(linkage, list) else [linkage]:
            add(item)
    included = document.get("included")
    if isinstance(included, list):
        for item in included:
            if isinstance(item, Mapping) and item.get("type") == resource_type:
                add(item)
    attributes = data.get("attributes")
    embedded = attributes.get(name) if isinstance(attributes, Mapping) else None
    if isinstance(embedded, list):
        for item in embedded:
            add(item)
    return tuple(dict.fromkeys(found))


def severity_of(attributes: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(id, slug, name) of the incident's severity, nested JSON:API or flat."""
    severity = attributes.get("severity")
    severity_id = _text(attributes.get("severity_id"))
    if isinstance(severity, Mapping):
        data = severity.get("data")
        inner: Mapping[str, Any] = data if isinstance(data, Mapping) else severity
        nested = inner.get("attributes")
        attrs: Mapping[str, Any] = nested if isinstance(nested, Mapping) else inner
        return (
            _text(inner.get("id")) or severity_id,
            _text(attrs.get("slug")),
            _text(attrs.get("name")),
        )
    return severity_id, None, None


@dataclass(frozen=True, slots=True)
class RootlyIncident:
    """A Rootly incident as the API returns it."""

    id: str
    status: str
    title: str | None
    summary: str | None
    severity_id: str | None
    severity_slug: str | None
    severity_name: str | None
    acknowledged_at: str | None
    alert_ids: tuple[str, ...]
    raw: Mapping[str, Any]

    @classmethod
    def from_document(cls, document: Any) -> RootlyIncident:
        """Parse an ``incident_response`` document (``{"data": ..., "included": ...}``)."""
        flat = flatten_document(document)
        severity_id, severity_slug, severity_name = severity_of(flat)
        return cls(
            id=flat["id"],
            status=_text(flat.get("status")) or UNKNOWN_STATUS,
            title=_text(flat.get("title")),
            summary=_text(flat.get("summary")),
            severity_id=severity_id,
            severity_slug=severity_slug,
            severity_name=severity_name,
            acknowledged_at=_text(flat.get("acknowledged_at")),
            alert_ids=related_ids(document, "alerts", "alerts"),
            raw=freeze(document),
        )

    def flat(self) -> dict[str, Any]:
        """Attributes + ``id`` + ``alert_ids``: the shape webhooks and rules use."""
        flat = flatten_document(thaw(self.raw))
        flat["status"] = self.status
        flat["alert_ids"] = list(self.alert_ids)
        return flat


@dataclass(frozen=True, slots=True)
class RootlyAlert:
    """A Rootly alert as the API returns it."""

    id: str
    status: str
    summary: str | None
    incident_ids: tuple[str, ...]
    raw: Mapping[str, Any]

    @classmethod
    def from_document(cls, document: Any) -> RootlyAlert:
        """Parse an ``alert_response`` document."""
        flat = flatten_document(document)
        return cls(
            id=flat["id"],
            status=_text(flat.get("status")) or UNKNOWN_STATUS,
            summary=_text(flat.get("summary")),
            incident_ids=related_ids(document, "incidents", "incidents"),
            raw=freeze(document),
        )

    def flat(self) -> dict[str, Any]:
        """Attributes + ``id`` + ``incident_ids``."""
        flat = flatten_document(thaw(self.raw))
        flat["status"] = self.status
        flat["incident_ids"] = list(self.incident_ids)
        return flat
