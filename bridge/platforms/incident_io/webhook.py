"""incident.io webhooks: Standard Webhooks (Svix) verification and parsing into `Event`s.

Signed content is `<webhook-id>.<webhook-timestamp>.<raw body>`, HMAC-SHA256 keyed with the
base64-decoded part of a `whsec_` secret; `webhook-signature` carries one or more
space-separated `v1,<base64>` entries during rotation. This is a small independent
implementation; the tests prove it against the `standardwebhooks` reference library.
The envelope is `{"event_type": T, T: {...}}`; `private_*` events carry only `{"id"}` and are
marked as needing hydration from the API.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from bridge.events import Actor, DeliveryId, Event, ObjectKind, ObjectRef, freeze
from bridge.platforms.webhooks import (
    MAX_KEY_LENGTH,
    Envelope,
    PayloadError,
    SignatureError,
    decode_json_object,
    header,
    parse_time,
    storable_text,
)

KNOWN_FAMILIES: Final[dict[str, ObjectKind]] = {
    "escalation": "escalation",
    "alert": "alert",
    "incident": "incident",
}


@functools.lru_cache(maxsize=64)
def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (cached: decoded once per secret, not per
    delivery; a handful of secrets are configured at a time)."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("incident.io webhook secret must be 'whsec_' + base64") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A `webhook-signature` value for `body`, as Svix would send it."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    tolerance_seconds: int,
    now: float,
) -> DeliveryId:
    """Return the delivery ID if one of `secrets` signed `body` within the window; raise
    `SignatureError` if not, and `PayloadError` for a `webhook-id` no store could hold."""
    msg_id = header(headers, "webhook-id")
    raw_ts = header(headers, "webhook-timestamp")
    raw_sig = header(headers, "webhook-signature")
    missing = [
        n
        for n, v in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", raw_ts),
            ("webhook-signature", raw_sig),
        )
        if not v
    ]
    if missing or msg_id is None or raw_ts is None or raw_sig is None:
        raise SignatureError("missing_header", f"missing header(s): {', '.join(missing)}")
    if not storable_text(msg_id):
        # Undecodable bytes (or NUL) in the delivery ID: it could never be stored.
        raise PayloadError("webhook-id is not valid UTF-8 text")
    if len(msg_id) > MAX_KEY_LENGTH:
        raise SignatureError(
            "malformed_header", f"webhook-id longer than {MAX_KEY_LENGTH} characters"
        )
    if not (raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 20):
        raise SignatureError("malformed_header", "webhook-timestamp is not an integer")
    if not raw_sig.isascii():
        # Base64 signatures are ASCII; anything else cannot be compared.
        raise SignatureError("malformed_header", "webhook-signature holds non-ASCII characters")
    timestamp = int(raw_ts)
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureError(
            "timestamp", f"timestamp {timestamp} is more than {tolerance_seconds}s from now"
        )
    candidates = []
    for entry in raw_sig.split():
        version, _, value = entry.partition(",")
        if version == "v1" and value:
            candidates.append(value)
    if not candidates:
        raise SignatureError("malformed_header", "webhook-signature has no v1 entry")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    for secret in secrets:
        expected = base64.b64encode(
            hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
        ).decode()
        if any(hmac.compare_digest(expected, c) for c in candidates):
            return DeliveryId(msg_id)
    raise SignatureError("signature", "no v1 signature matches a configured secret")


def _family(event_type: str) -> tuple[bool, ObjectKind | None]:
    """(private?, object kind) of `public_escalation.escalation_created_v1` and the like."""
    head = event_type.split(".", 1)[0]
    visibility, _, family = head.partition("_")
    if visibility not in ("public", "private"):
        return False, None
    return visibility == "private", KNOWN_FAMILIES.get(family)


KNOWN_TYPES: Final = frozenset(
    f"{vis}_{name}"
    for vis in ("public", "private")
    for name in (
        "escalation.escalation_created_v1",
        "escalation.escalation_status_updated_v1",
        "alert.alert_created_v1",
        "alert.alert_resolved_v1",
        "incident.incident_created_v2",
        "incident.incident_updated_v2",
        "incident.incident_status_updated_v2",
    )
) - {"private_incident.incident_status_updated_v2"}


def envelope(data: Mapping[str, Any], delivery_id: DeliveryId) -> Envelope:
    event_type = data.get("event_type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > MAX_KEY_LENGTH:
        raise PayloadError(
            f"'event_type' must be a non-empty string of at most {MAX_KEY_LENGTH} characters"
        )
    if not isinstance(data.get(event_type), dict):
        raise PayloadError(f"missing object {event_type!r} (the event's payload)")
    return Envelope("incident_io", delivery_id, event_type, event_type in KNOWN_TYPES)


def _status(value: Any) -> str | None:
    """Escalations use plain strings; incidents send objects with a `category`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("category"), str):
        return str(value["category"])
    return None


def _actor(value: Any) -> Actor:
    if not isinstance(value, dict):
        return Actor()
    kinds: tuple[Literal["api_key", "user", "workflow", "alert"], ...] = (
        "api_key",
        "user",
        "workflow",
        "alert",
    )
    for kind in kinds:
        item = value.get(kind)
        if isinstance(item, dict):
            ident = item.get("id")
            name = item.get("name") or item.get("title")
            return Actor(
                kind=kind,
                id=str(ident) if ident is not None else None,
                name=str(name) if name is not None else None,
            )
    return Actor()


def _ref(kind: ObjectKind, ident: Any) -> ObjectRef | None:
    if not isinstance(ident, str) or not ident:
        return None
    try:
        return ObjectRef.parse(f"incident_io:{kind}:{ident}")
    except ValueError:
        return None


def _related(kind: ObjectKind, items: Any) -> list[ObjectRef]:
    refs = []
    if isinstance(items, list):
        for item in items:
            ref = _ref(kind, item.get("id") if isinstance(item, dict) else None)
            if ref is not None:
                refs.append(ref)
    return refs


def parse(body: bytes, delivery_id: DeliveryId) -> Event:
    """Parse a verified incident.io delivery into an `Event`."""
    data = decode_json_object(body)
    env = envelope(data, delivery_id)
    payload: dict[str, Any] = data[env.event_type]
    private, kind = _family(env.event_type)
    previous_status = new_status = None
    resource: dict[str, Any] = payload
    actor = _actor(payload.get("actor"))
    related: list[ObjectRef] = []
    if kind == "escalation" and isinstance(payload.get("escalation"), dict):
        resource = payload["escalation"]
    elif kind == "incident" and isinstance(payload.get("incident"), dict):
        resource = payload["incident"]
    if "new_status" in payload or "previous_status" in payload:
        previous_status = _status(payload.get("previous_status"))
        new_status = _status(payload.get("new_status"))
    elif kind == "incident":
        new_status = _status(resource.get("incident_status"))
    elif isinstance(resource.get("status"), str):
        new_status = resource["status"]
    if kind == "escalation":
        related = _related("alert", resource.get("related_alerts")) + _related(
            "incident", resource.get("related_incidents")
        )
    if actor.kind == "unknown" and kind == "incident":
        actor = _actor(resource.get("creator")) if env.event_type.endswith("created_v2") else actor
    # Only the event families we know name their object by `id`; an action or follow-up
    # event's `id` is not an incident's, so unknown types carry no subject.
    subject = _ref(kind, resource.get("id")) if kind and env.known_type else None
    occurred = parse_time(resource.get("updated_at")) or parse_time(resource.get("created_at"))
    return Event(
        source="incident_io",
        delivery_id=delivery_id,
        type=env.event_type,
        subject=subject,
        resource=freeze(resource),
        occurred_at=occurred,
        previous_status=previous_status,
        new_status=new_status,
        actor=actor,
        related=tuple(dict.fromkeys(related)),
        needs_hydration=private,
        known_type=env.known_type,
    )
