"""`bridge adopt`: link the objects that belong together but were created before the bridge.

A team that installs the bridge while incidents are open has escalations paging for Rootly
incidents, and incident.io alerts raised from Rootly alerts, that no link connects: the
bridge never saw them created. Cancelling such an incident would page on. The default
rules name what they create after the Rootly object (rule 1's idempotency key
``rootly-incident-<id>``, rule 2's deduplication key ``rootly-alert-<id>``), so the pairs
can be found again by reading both platforms:

1. incident.io escalations created since `since` whose idempotency key starts with
   ``rootly-incident-`` (the list filter ``idempotency_key[starts_with]``). The API does not
   show an escalation's key, so each one is paired with its Rootly incident by asking, for
   each Rootly incident created since `since`, for the escalation with exactly its key
   (``idempotency_key[is]``), until every escalation found in step 1 is paired. Each pair
   is the link rule 1 would have recorded (``rootly:incident`` to ``incident_io:escalation``).
2. incident.io alerts created since `since` whose deduplication key starts with
   ``rootly-alert-`` (the API filters deduplication keys by exact value only, so the
   prefix is checked here): rule 10's link to the Rootly alert.
3. Those escalations' related alerts and incidents, and the escalations the alerts of step
   2 raised (``alert[one_of]``): rule 9's links.

Every call goes through the clients, so through the API key's rate limiter. Finding is
read-only; `record` adds the links (``created_by`` "adopt"), and a link already recorded is
left as it is, so adopting twice adds nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final, TextIO

from bridge.events import BY_ADOPT, InvalidRef, ObjectRef
from bridge.platforms.incident_io.client import IncidentIoClient
from bridge.platforms.incident_io.models import Escalation
from bridge.platforms.rootly.client import RootlyClient
from bridge.store.store import Store

INCIDENT_KEY_PREFIX: Final = "rootly-incident-"
ALERT_KEY_PREFIX: Final = "rootly-alert-"
CREATED_BY: Final = BY_ADOPT
_ALERTS_PER_QUERY: Final = 20


@dataclass(frozen=True, slots=True)
class FoundLink:
    """A link adoption would record, why, and whether the store already has it."""

    a: ObjectRef
    b: ObjectRef
    reason: str
    recorded: bool = False

    @property
    def pair(self) -> frozenset[ObjectRef]:
        return frozenset((self.a, self.b))


@dataclass(frozen=True, slots=True)
class Adoption:
    """What `find` found: the links, the escalations it could not pair, what it read."""

    links: tuple[FoundLink, ...]
    unpaired_escalations: tuple[str, ...]
    escalations: int
    alerts: int
    rootly_incidents: int

    @property
    def new(self) -> tuple[FoundLink, ...]:
        return tuple(link for link in self.links if not link.recorded)


class Progress:
    """One status line on stderr, redrawn in place; silent unless the stream is a TTY."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._width = 0

    def show(self, text: str, done: int | None = None, total: int | None = None) -> None:
        if not self._enabled:
            return
        if done is not None and total:
            filled = min(20, 20 * done // total)
            text = f"{text} [{'#' * filled}{'.' * (20 - filled)}] {done}/{total}"
        line = f"adopt: {text}"
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)

    def close(self) -> None:
        if self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()


def _ref(text: str) -> ObjectRef | None:
    try:
        return ObjectRef.parse(text)
    except InvalidRef:
        return None


class _Finder:
    def __init__(
        self,
        incident_io: IncidentIoClient,
        rootly: RootlyClient,
        since: str,
        limit: int | None,
        progress: Progress,
    ) -> None:
        self.incident_io = incident_io
        self.rootly = rootly
        self.since = since
        self.limit = limit
        self.progress = progress
        self.links: dict[frozenset[ObjectRef], FoundLink] = {}
        self.escalations: dict[str, Escalation] = {}
        self.alerts = 0
        self.rootly_incidents = 0

    def add(self, a: ObjectRef | None, b: ObjectRef | None, reason: str) -> None:
        if a is None or b is None or a == b:
            return
        self.links.setdefault(frozenset((a, b)), FoundLink(a, b, reason))

    def related(self, escalation: Escalation) -> None:
        """Rule 9: an escalation's related alerts and incidents (and their Rootly alerts)."""
        esc = ObjectRef("incident_io", "escalation", escalation.id)
        for item in escalation.raw.get("related_alerts") or ():
            alert = _ref(f"incident_io:alert:{item.get('id')}")
            self.add(esc, alert, "escalation's related alert")
            key = item.get("deduplication_key")
            if isinstance(key, str) and key.startswith(ALERT_KEY_PREFIX):
                rootly = _ref(f"rootly:alert:{key.removeprefix(ALERT_KEY_PREFIX)}")
                self.add(alert, rootly, f"deduplication key {key}")
        for incident_id in escalation.related_incident_ids:
            self.add(esc, _ref(f"incident_io:incident:{incident_id}"), "escalation's incident")

    def full(self, count: int) -> bool:
        return self.limit is not None and count >= self.limit

    async def keyed_escalations(self) -> None:
        async for escalation in self.incident_io.iter_escalations(
            idempotency_key={"starts_with": [INCIDENT_KEY_PREFIX]},
            created_at={"gte": [self.since]},
        ):
            self.escalations[escalation.id] = escalation
            self.related(escalation)
            self.progress.show(f"escalations keyed {INCIDENT_KEY_PREFIX}*: {len(self.escalations)}")
            if self.full(len(self.escalations)):
                break

    async def pair_with_rootly(self) -> set[str]:
        """Pair step 1's escalations with Rootly incidents; return those left unpaired."""
        unpaired = set(self.escalations)
        if not unpaired:
            return unpaired
        async for incident, total in self.rootly.iter_incidents(created_since=self.since):
            self.rootly_incidents += 1
            self.progress.show("pairing with Rootly incidents", self.rootly_incidents, total)
            key = INCIDENT_KEY_PREFIX + incident.id
            page, _ = await self.incident_io.list_escalations(
                page_size=1, idempotency_key={"is": [key]}
            )
            for escalation in page:
                self.add(
                    _ref(f"rootly:incident:{incident.id}"),
                    ObjectRef("incident_io", "escalation", escalation.id),
                    f"idempotency key {key}",
                )
                unpaired.discard(escalation.id)
            if not unpaired:
                break
        return unpaired

    async def keyed_alerts(self) -> list[str]:
        found: list[str] = []
        seen = 0
        async for alert in self.incident_io.iter_alerts(created_at={"gte": [self.since]}):
            seen += 1
            self.progress.show(f"alerts read: {seen}, keyed {ALERT_KEY_PREFIX}*: {len(found)}")
            key = alert.deduplication_key or ""
            if key.startswith(ALERT_KEY_PREFIX):
                found.append(alert.id)
                self.add(
                    ObjectRef("incident_io", "alert", alert.id),
                    _ref(f"rootly:alert:{key.removeprefix(ALERT_KEY_PREFIX)}"),
                    f"deduplication key {key}",
                )
                if self.full(len(found)):
                    break
        self.alerts = len(found)
        return found

    async def escalations_of(self, alert_ids: Sequence[str]) -> None:
        for start in range(0, len(alert_ids), _ALERTS_PER_QUERY):
            chunk = list(alert_ids[start : start + _ALERTS_PER_QUERY])
            self.progress.show("escalations of those alerts", start, len(alert_ids))
            async for escalation in self.incident_io.iter_escalations(alert={"one_of": chunk}):
                for alert_id in escalation.related_alert_ids:
                    if alert_id in chunk:
                        self.add(
                            ObjectRef("incident_io", "escalation", escalation.id),
                            ObjectRef("incident_io", "alert", alert_id),
                            "escalation raised by the alert",
                        )
                self.related(escalation)


async def find(
    incident_io: IncidentIoClient,
    rootly: RootlyClient,
    *,
    since: str,
    limit: int | None = None,
    progress: Progress | None = None,
) -> Adoption:
    """Read both platforms (nothing is written) and return the links that belong there.

    `since` is a date or ISO 8601 time (objects created on or after it); `limit` caps the
    escalations of step 1 and the alerts of step 2 that are read.
    """
    progress = progress or Progress(enabled=False)
    finder = _Finder(incident_io, rootly, since, limit, progress)
    try:
        await finder.keyed_escalations()
        unpaired = await finder.pair_with_rootly()
        alert_ids = await finder.keyed_alerts()
        await finder.escalations_of(alert_ids)
    finally:
        progress.close()
    return Adoption(
        links=tuple(sorted(finder.links.values(), key=lambda link: (str(link.a), str(link.b)))),
        unpaired_escalations=tuple(sorted(unpaired)),
        escalations=len(finder.escalations),
        alerts=finder.alerts,
        rootly_incidents=finder.rootly_incidents,
    )


async def mark_recorded(store: Store, adoption: Adoption) -> Adoption:
    """`adoption` with each link's `recorded` saying whether the store already has it."""
    refs = sorted({ref for link in adoption.links for ref in (link.a, link.b)})
    existing = {frozenset((row.a, row.b)) for row in await store.linked(refs)} if refs else set()
    return replace(
        adoption,
        links=tuple(replace(link, recorded=link.pair in existing) for link in adoption.links),
    )


async def record(
    store: Store, adoption: Adoption, on_link: Callable[[int, int], None] | None = None
) -> int:
    """Add every link not recorded yet (``created_by`` "adopt"); return how many were new."""
    added = 0
    todo = adoption.new
    for done, link in enumerate(todo, start=1):
        if await store.add_link(link.a, link.b, CREATED_BY):
            added += 1
        if on_link is not None:
            on_link(done, len(todo))
    return added
