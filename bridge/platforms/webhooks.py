"""What webhook verification and parsing share across platforms: errors, the envelope result.

Each platform folder's `webhook.py` verifies its own signature scheme and parses its own
payloads into `bridge.events.Event`; both raise the errors defined here so ingest maps them
to HTTP answers in one place.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from bridge.events import DeliveryId, Event, Platform

MAX_JSON_DEPTH = 64
# Delivery IDs and event types are stored in VARCHAR(255) columns; real ones are far shorter.
MAX_KEY_LENGTH = 200
RejectReason = Literal["missing_header", "malformed_header", "timestamp", "signature"]


class SignatureError(Exception):
    """The delivery is not provably from the platform; the reason goes to logs and metrics."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class PayloadError(ValueError):
    """Signed, but not a payload we can store: bad UTF-8, bad JSON, wrong envelope."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """The minimum ingest needs from a body: who sent it, its delivery ID and type."""

    source: Platform
    delivery_id: DeliveryId
    event_type: str
    known_type: bool


def _depth_guard(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise PayloadError(f"JSON nested deeper than {limit} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def storable_text(value: str) -> bool:
    """Whether `value` is text a store column can hold: encodable as UTF-8 (a lone surrogate,
    from a `\\ud800` JSON escape or an undecodable header byte, is not) and free of NUL
    (PostgreSQL refuses it in text and JSON)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return "\x00" not in value


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"body is not valid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise PayloadError(f"body holds a number too large for a float ({text[:20]}...)")
    return value


# Python's decoder takes NaN and Infinity, which are not JSON, and turns 1e400 into an
# infinity: PostgreSQL's JSON refuses all three. One shared decoder that refuses them; the
# float hook runs for numbers with a fraction or an exponent only (rare in webhooks).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
# The only ways a JSON text decoded from valid UTF-8 can carry text no store holds.
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89abcdefABCDEF])")


def _text_guard(value: Any) -> None:
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not storable_text(item):
                raise PayloadError("a JSON string holds a lone surrogate or NUL, not text")
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Strict JSON object from bytes: UTF-8, an object at the top, bounded nesting, no
    NaN, Infinity or number too large for a float, and every string storable text (see
    `storable_text`)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = _DECODER.decode(text)
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"body must be a JSON object, got {type(data).__name__}")
    # Nesting cannot exceed the number of brackets (string contents included): only a body
    # with many of them needs the walk, which is most of the decoding cost otherwise.
    # (a value inside the innermost bracket counts one level deeper, hence >=).
    if text.count("{") + text.count("[") >= MAX_JSON_DEPTH:
        _depth_guard(data)
    # Likewise only a body with such an escape can hold such a string.
    if "\\u" in text and _UNSTORABLE_ESCAPE.search(text):
        _text_guard(data)
    return data


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 / ISO 8601 text to an aware UTC datetime; anything else to None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup over any mapping (aiohttp's is already insensitive)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


EventParser = Callable[[bytes, DeliveryId], Event]
