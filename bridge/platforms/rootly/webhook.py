"""Rootly webhooks: `X-Rootly-Signature` verification and parsing into `Event`s.

Rootly signs `HMAC-SHA256(secret, <t> + <raw body>)` (no separator) and sends
`X-Rootly-Signature: t=<unix seconds>,v1=<hex>`. It documents no replay window, so we apply
our own tolerance. The envelope is `{"event": {"id", "type", "issued_at"}, "data": {...}}`
with a flat resource in `data`; `event.id` is the delivery's idempotency key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final

from bridge.events import Actor, DeliveryId, Event, ObjectRef, freeze
from bridge.platforms.webhooks import (
    MAX_KEY_LENGTH,
    Envelope,
    PayloadError,
    SignatureError,
    decode_json_object,
    header,
    parse_time,
)

SIGNATURE_HEADER: Final = "X-Rootly-Signature"

INCIDENT_EVENTS: Final = frozenset(
    {
        "incident.created",
        "incident.updated",
        "incident.in_triage",
        "incident.mitigated",
        "incident.resolved",
        "incident.cancelled",
        "incident.deleted",
    }
)
# `alert.updated` is not in the official spec yet; Rootly's SDK lists it (DESIGN section 7):
# a flat alert like `alert.created`, sent when its status changes (acknowledged, resolved).
ALERT_EVENTS: Final = frozenset({"alert.created", "alert.updated"})
OTHER_KNOWN_PREFIXES: Final = (
    "incident.scheduled.",
    "incident_post_mortem.",
    "incident_status_page_event.",
    "incident_event.",
    "genius_workflow_run.",
)
OTHER_KNOWN: Final = frozenset({"pulse.created", "shift.started", "audit_log.created"})


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value Rootly would send for `body` at `timestamp`."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    tolerance_seconds: int,
    now: float,
) -> None:
    """Raise `SignatureError` unless one of `secrets` signed `body` within the window."""
    raw = header(headers, SIGNATURE_HEADER)
    if not raw:
        raise SignatureError("missing_header", f"missing {SIGNATURE_HEADER} header")
    if not raw.isascii():
        # Hex digits and a decimal timestamp are ASCII; anything else cannot be compared.
        raise SignatureError("malformed_header", f"{SIGNATURE_HEADER} holds non-ASCII characters")
    fields: dict[str, list[str]] = {}
    for part in raw.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(
                "malformed_header", f"{SIGNATURE_HEADER}: {part.strip()!r} is not key=value"
            )
        fields.setdefault(key.strip(), []).append(value.strip())
    if "t" not in fields or "v1" not in fields:
        raise SignatureError("malformed_header", f"{SIGNATURE_HEADER} needs t= and v1=")
    try:
        timestamp = int(fields["t"][0])
    except ValueError:
        raise SignatureError(
            "malformed_header", f"{SIGNATURE_HEADER}: t is not an integer"
        ) from None
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureError(
            "timestamp", f"timestamp {timestamp} is more than {tolerance_seconds}s from now"
        )
    signed = str(timestamp).encode() + body
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        # Compare against every v1 given; compare_digest keeps the check constant-time.
        if any(hmac.compare_digest(expected, candidate.lower()) for candidate in fields["v1"]):
            return
    raise SignatureError("signature", "no v1 signature matches a configured secret")


def envelope(data: Mapping[str, Any]) -> Envelope:
    """Check the Rootly envelope shape and pull out the delivery ID and type."""
    event = data.get("event")
    if not isinstance(event, dict):
        raise PayloadError("missing object 'event'")
    delivery_id = event.get("id")
    event_type = event.get("type")
    if not isinstance(delivery_id, str) or not delivery_id or len(delivery_id) > MAX_KEY_LENGTH:
        raise PayloadError(
            f"'event.id' must be a non-empty string of at most {MAX_KEY_LENGTH} characters"
        )
    if not isinstance(event_type, str) or not event_type or len(event_type) > MAX_KEY_LENGTH:
        raise PayloadError(
            f"'event.type' must be a non-empty string of at most {MAX_KEY_LENGTH} characters"
        )
    if not isinstance(data.get("data"), dict):
        raise PayloadError("missing object 'data'")
    known = (
        event_type in INCIDENT_EVENTS
        or event_type in ALERT_EVENTS
        or event_type in OTHER_KNOWN
        or event_type.startswith(OTHER_KNOWN_PREFIXES)
    )
    return Envelope("rootly", DeliveryId(delivery_id), event_type, known)


def _ids(value: Any) -> list[str]:
    """IDs from a list of strings or of objects with an `id` (Rootly uses both shapes)."""
    out: list[str] = []
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str) and item:
                out.append(item)
            elif isinstance(item, dict) and isinstance(item.get("id"), str | int):
                out.append(str(item["id"]))
    return out


def _ref(platform_kind: str, ident: Any) -> ObjectRef | None:
    if not isinstance(ident, str | int) or str(ident) == "":
        return None
    try:
        return ObjectRef.parse(f"rootly:{platform_kind}:{ident}")
    except ValueError:
        return None


def parse(body: bytes, delivery_id: DeliveryId | None = None) -> Event:
    """Parse a verified Rootly delivery into an `Event` (unknown types: `known_type=False`)."""
    data = decode_json_object(body)
    env = envelope(data)
    resource: dict[str, Any] = data["data"]
    subject: ObjectRef | None = None
    related: list[ObjectRef] = []
    if env.event_type in INCIDENT_EVENTS:
        subject = _ref("incident", resource.get("id"))
        related = [
            r
            for i in _ids(resource.get("alert_ids")) + _ids(resource.get("alerts"))
            if (r := _ref("alert", i))
        ]
    elif env.event_type in ALERT_EVENTS:
        subject = _ref("alert", resource.get("id"))
        related = [
            r
            for i in _ids(resource.get("incident_ids")) + _ids(resource.get("incidents"))
            if (r := _ref("incident", i))
        ]
    status = resource.get("status")
    return Event(
        source="rootly",
        delivery_id=delivery_id or env.delivery_id,
        type=env.event_type,
        subject=subject,
        resource=freeze(resource),
        occurred_at=parse_time(data["event"].get("issued_at")),
        new_status=status if isinstance(status, str) else None,
        actor=Actor(),
        related=tuple(dict.fromkeys(related)),
        known_type=env.known_type,
    )
