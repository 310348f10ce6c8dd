"""What happened to an event, or to an object on both platforms: for the admin API and the
operator console.

An event's *outcome* is one word (`EVENT_OUTCOMES`): ``pending`` until it is dispatched,
then the dispatcher's result, as counted in ``bridge_events_dispatched_total{result}``.
Its *compact trace* puts the rules that fired and their actions first and folds the rules
that did not look at it into one list. An object's *timeline* is every event that names
it or an object linked to it (transitively, as the link checker sees a component), the
actions on those objects with their attempts and outcomes, and the links between them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from bridge.events import PLATFORMS, InboxId, InvalidRef, ObjectRef, Platform, thaw
from bridge.pipeline.linkcheck import MAX_COMPONENT
from bridge.store.base import (
    EVENT_OUTCOMES,
    EventFilter,
    EventObject,
    EventOutcome,
    InboxRow,
    LinkRow,
    OutboxRow,
)
from bridge.store.store import Store

MAX_LIMIT: Final = 500
DEFAULT_LIMIT: Final = 50
TIMELINE_LIMIT: Final = 200
"""Most events (and most actions) a timeline shows: the newest."""
_BARE_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_SOURCES: Final[Mapping[str, Platform]] = {
    "rootly": "rootly",
    "incident_io": "incident_io",
    "incident-io": "incident_io",
}


class BadQuery(ValueError):
    """A filter that cannot be used; the message says which and why."""


# -- events --------------------------------------------------------------------------------


def event_outcome(row: InboxRow) -> EventOutcome:
    """`row`'s outcome (see the module docstring)."""
    if row.state == "pending":
        return "pending"
    if row.state == "failed":
        return "error"
    trace = row.trace or {}
    stored = trace.get("outcome")
    if stored in EVENT_OUTCOMES:
        return cast(EventOutcome, stored)
    # Traces written before outcomes were stored: the same verdicts, read back.
    if "echo" in trace:
        return "echo"
    ignored = trace.get("ignored")
    if isinstance(ignored, str):
        return "stale" if ignored.startswith("stale") else "ignored"
    rules = trace.get("rules")
    if isinstance(rules, Mapping) and any(
        isinstance(r, Mapping) and r.get("actions") for r in rules.values()
    ):
        return "actions"
    return "no_match"


def _reason_detail(rule: Mapping[str, Any]) -> str | None:
    condition = rule.get("condition")
    if isinstance(condition, Mapping):
        detail = condition.get("detail")
        return f"when[{condition.get('index')}]: {detail}" if detail else None
    error = rule.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('where')}: {error.get('message')}"
    return None


def compact_trace(trace: Mapping[str, Any] | None) -> dict[str, Any]:
    """`trace` with the rules that fired (and their actions and links) first, the rules
    that matched without effect next, and those that did not look at the event last."""
    trace = trace or {}
    fired: list[dict[str, Any]] = []
    matched: list[dict[str, Any]] = []
    not_matched: list[dict[str, Any]] = []
    rules = trace.get("rules")
    for name, rule in rules.items() if isinstance(rules, Mapping) else ():
        if not isinstance(rule, Mapping):
            continue
        notes = [str(n) for n in rule.get("notes") or ()]
        if rule.get("fired"):
            fired.append(
                {
                    "rule": name,
                    "actions": [
                        {"do": a.get("do"), "target": a.get("target")}
                        for a in rule.get("actions") or ()
                        if isinstance(a, Mapping)
                    ],
                    "links": [str(x) for x in rule.get("links") or ()],
                    "notes": notes,
                }
            )
        elif rule.get("matched"):
            matched.append(
                {
                    "rule": name,
                    "reason": rule.get("reason"),
                    "detail": _reason_detail(rule),
                    "notes": notes,
                }
            )
        else:
            not_matched.append(
                {"rule": name, "reason": rule.get("reason"), "detail": _reason_detail(rule)}
            )
    return {
        "verdict": verdict(trace),
        "fired": fired,
        "matched": matched,
        "not_matched": not_matched,
        "errors": [thaw(e) for e in trace.get("errors") or ()],
        "check": check_reason(trace),
    }


def verdict(trace: Mapping[str, Any]) -> str | None:
    """Why the rules did not decide this event, when they did not: an echo of the bridge's
    own write, a stale or ignored event, one nothing looks at."""
    if trace.get("echo"):
        return f"echo of the bridge's own write: {trace['echo']}"
    if trace.get("ignored"):
        return str(trace["ignored"])
    if trace.get("skipped"):
        settled = f" (settled {trace['settled']})" if trace.get("settled") else ""
        return f"{trace['skipped']}{settled}"
    return None


def check_reason(trace: Mapping[str, Any]) -> str | None:
    """For a synthetic delivery of the link checker (``check:`` delivery IDs): why it was
    written, i.e. why what follows is applied late."""
    check = trace.get("check")
    if not isinstance(check, Mapping):
        return None
    needs = "; ".join(str(n) for n in check.get("needs") or ()) or "nothing listed"
    return (
        f"the link checker found {trace.get('subject') or 'the object'} in state"
        f" {check.get('state')} while the linked objects ({check.get('link')}) still"
        f" needed: {needs}"
    )


def event_json(
    row: InboxRow, objects: Sequence[EventObject] = (), *, with_trace: bool = False
) -> dict[str, Any]:
    """An event for the API: what it was, what became of it, the objects it names."""
    trace = row.trace or {}
    out: dict[str, Any] = {
        "id": row.id,
        "source": row.source,
        "delivery_id": row.delivery_id,
        "event_type": row.event_type,
        "received_at": row.received_at.isoformat(),
        "state": row.state,
        "outcome": event_outcome(row),
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
        "attempts": row.attempts,
        "error": row.error,
        "subject": trace.get("subject"),
        "objects": [{"ref": str(o.ref), "role": o.role} for o in objects],
        "summary": compact_trace(trace),
    }
    if with_trace:
        out["trace"] = thaw(row.trace) if row.trace is not None else None
    return out


def parse_time(name: str, raw: str) -> datetime:
    """ISO 8601 (``Z`` or an offset; none means UTC), or `BadQuery`."""
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):  # not a time, or one UTC cannot hold (year 1, +01:00)
        raise BadQuery(f"{name} must be an ISO 8601 time, e.g. 2030-01-01T12:00:00Z") from None


def parse_object(raw: str) -> tuple[Platform | None, str | None, str]:
    """A ``platform:kind:id`` ref or a bare ID: (platform, kind, id), or `BadQuery`."""
    text = raw.strip()
    if ":" in text:
        try:
            ref = ObjectRef.parse(text)
        except InvalidRef as exc:
            raise BadQuery(f"object: {exc}") from None
        return ref.platform, ref.kind, ref.id
    if not _BARE_ID.match(text):
        raise BadQuery(
            "object must be a platform:kind:id ref or an ID (letters, digits, . _ -; at most 128)"
        )
    return None, None, text


def event_filter(query: Mapping[str, str]) -> EventFilter:
    """The filter a query string asks for (``source, type, object, outcome, since, until,
    limit, cursor``); `BadQuery` for a value that cannot be used. Empty values are unset."""
    values = {k: v for k, v in query.items() if v.strip()}
    source = values.get("source")
    if source is not None and source not in _SOURCES:
        raise BadQuery(f"source must be one of {', '.join(PLATFORMS)}")
    event_type = values.get("type")
    if event_type is not None and len(event_type) > 255:
        raise BadQuery("type must be at most 255 characters")
    outcome = values.get("outcome")
    if outcome is not None and outcome not in EVENT_OUTCOMES:
        raise BadQuery(f"outcome must be one of {', '.join(EVENT_OUTCOMES)}")
    platform, kind, object_id = (
        parse_object(values["object"]) if "object" in values else (None, None, None)
    )
    since = parse_time("since", values["since"]) if "since" in values else None
    until = parse_time("until", values["until"]) if "until" in values else None
    if since is not None and until is not None and since >= until:
        raise BadQuery("since must be before until")
    return EventFilter(
        source=_SOURCES[source] if source is not None else None,
        event_type=event_type,
        object_platform=platform,
        object_kind=kind,
        object_id=object_id,
        outcome=outcome,
        since=since,
        until=until,
        before=_bounded(values, "cursor", 1, 2**63 - 1),
        limit=_bounded(values, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT,
    )


def _bounded(values: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = values.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}")
    return value


@dataclass(frozen=True)
class EventPage:
    events: list[InboxRow]
    objects: dict[InboxId, list[EventObject]]
    next_cursor: int | None


async def search(store: Store, flt: EventFilter) -> EventPage:
    """One page of events for `flt`, newest first, with the cursor of the next page."""
    rows = await store.search_events(flt)
    objects = await store.event_objects([r.id for r in rows])
    more = len(rows) == flt.limit and rows[-1].id > 1
    return EventPage(rows, objects, rows[-1].id if more else None)


def page_json(page: EventPage) -> dict[str, Any]:
    return {
        "events": [event_json(r, page.objects.get(r.id, ())) for r in page.events],
        "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None,
    }


# -- objects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """What happened to `subject` and the objects linked to it, oldest first."""

    subject: ObjectRef
    objects: list[ObjectRef]
    links: list[LinkRow]
    events: list[InboxRow]
    objects_named: dict[InboxId, list[EventObject]]
    actions: list[OutboxRow]
    truncated: bool

    @property
    def empty(self) -> bool:
        return not (self.links or self.events or self.actions)


async def component(store: Store, ref: ObjectRef) -> tuple[list[ObjectRef], list[LinkRow]]:
    """`ref` and the objects linked to it, transitively (at most `MAX_COMPONENT`, like the
    link checker), and the links between them."""
    objects = {ref}
    links: dict[tuple[ObjectRef, ObjectRef], LinkRow] = {}
    frontier = {ref}
    while frontier and len(objects) < MAX_COMPONENT:
        rows = await store.linked(sorted(frontier))
        frontier = set()
        for row in rows:
            links[(row.a, row.b)] = row
            for other in (row.a, row.b):
                if other not in objects and len(objects) < MAX_COMPONENT:
                    objects.add(other)
                    frontier.add(other)
    kept = [row for row in links.values() if row.a in objects and row.b in objects]
    ordered = sorted(objects, key=lambda o: (o != ref, o.platform, o.kind, o.id))
    return ordered, sorted(kept, key=lambda row: (row.created_at, str(row.a), str(row.b)))


async def timeline(store: Store, ref: ObjectRef, limit: int = TIMELINE_LIMIT) -> Timeline:
    objects, links = await component(store, ref)
    events = await store.events_naming(objects, limit)
    truncated = len(events) == limit
    actions = await store.actions_on(objects, [e.id for e in events], limit)
    truncated = truncated or len(actions) == limit
    # The events that caused actions on these objects without naming them.
    known = {e.id for e in events}
    for inbox_id in sorted({a.inbox_id for a in actions if a.inbox_id is not None} - known):
        row = await store.get_inbox(inbox_id)
        if row is not None:
            events.append(row)
    events.sort(key=lambda e: e.id)
    actions.sort(key=lambda a: a.id)
    named = await store.event_objects([e.id for e in events])
    return Timeline(ref, objects, links, events, named, actions, truncated)


def timeline_json(
    tl: Timeline,
    action_json: Callable[[OutboxRow], dict[str, Any]],
    link_json: Callable[[LinkRow], dict[str, Any]],
) -> dict[str, Any]:
    """`tl` for the API, actions and links rendered as the rest of the API renders them."""
    entries: list[tuple[datetime, int, dict[str, Any]]] = []
    for event in tl.events:
        entries.append((event.received_at, 0, {"type": "event", "id": event.id}))
    for action in tl.actions:
        entries.append((action.created_at, 1, {"type": "action", "id": action.id}))
        if action.finished_at is not None:
            entries.append((action.finished_at, 2, {"type": "action_finished", "id": action.id}))
    for link in tl.links:
        entries.append((link.created_at, 3, {"type": "link", "a": str(link.a), "b": str(link.b)}))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return {
        "object": str(tl.subject),
        "objects": [
            {"ref": str(o), "platform": o.platform, "kind": o.kind, "id": o.id} for o in tl.objects
        ],
        "links": [link_json(row) for row in tl.links],
        "events": [event_json(e, tl.objects_named.get(e.id, ())) for e in tl.events],
        "actions": [action_json(a) for a in tl.actions],
        "entries": [{"at": at.isoformat(), **entry} for at, _, entry in entries],
        "truncated": tl.truncated,
    }
