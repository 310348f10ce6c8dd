"""What each platform sends: its webhook event types and the fields of the objects they carry.

`bridge check-config` uses this to find dead flows (a trigger glob that matches no event
type the platform sends, a field the payload does not have) and to list the webhook
subscriptions the rules in force need; `bridge explain` uses `sniff_source` to say when an
event file comes from the other platform. The lists live in each platform's own folder
(`rootly/catalog.py`, `incident_io/catalog.py`), taken from the official specs and
DESIGN.md; `tests/test_platform_catalog.py` checks them against the specs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from bridge.events import PLATFORMS, DeliveryId, Event, ObjectKind, Platform


@dataclass(frozen=True)
class PlatformCatalog:
    """One platform's webhook vocabulary."""

    platform: Platform
    label: str  # how people write the platform's name
    cli_name: str  # the `--source` value and webhook path segment
    event_types: frozenset[str]  # every event type the platform sends
    handled: Mapping[str, ObjectKind]  # the types the bridge acts on -> the object they carry
    fields: Mapping[ObjectKind, frozenset[str]]  # top-level fields of each object, as rules see it

    @property
    def webhook_path(self) -> str:
        return f"/webhooks/{self.cli_name}"


def catalog(platform: Platform) -> PlatformCatalog:
    """The catalog of `platform`."""
    return catalogs()[platform]


def parse_webhook(platform: Platform, body: bytes, delivery_id: DeliveryId) -> Event:
    """Parse a (verified) webhook body of `platform`; raises `PayloadError`."""
    from bridge.platforms.incident_io import webhook as incident_io_webhook
    from bridge.platforms.rootly import webhook as rootly_webhook

    if platform == "rootly":
        return rootly_webhook.parse(body, delivery_id)
    return incident_io_webhook.parse(body, delivery_id)


def platform_named(name: str) -> Platform | None:
    """`rootly`, `incident_io` or `incident-io` (as users type it) to a platform."""
    normalized = name.strip().lower().replace("-", "_").replace(".", "_")
    for platform in PLATFORMS:
        if normalized == platform:
            return platform
    return None


def sniff_source(body: bytes) -> Platform | None:
    """Which platform's envelope `body` has, if it has one: Rootly's ``{"event": {"type"}}``
    or incident.io's ``{"event_type": ...}``. None for anything else."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    event = data.get("event")
    if isinstance(event, dict) and isinstance(event.get("type"), str) and "data" in data:
        return "rootly"
    if isinstance(data.get("event_type"), str):
        return "incident_io"
    return None


@functools.cache
def catalogs() -> Mapping[Platform, PlatformCatalog]:
    """Both platforms' catalogs (imported on first use: each lives in its platform's folder,
    which imports this module for `PlatformCatalog`)."""
    from bridge.platforms.incident_io.catalog import CATALOG as INCIDENT_IO
    from bridge.platforms.rootly.catalog import CATALOG as ROOTLY

    return MappingProxyType({"rootly": ROOTLY, "incident_io": INCIDENT_IO})
