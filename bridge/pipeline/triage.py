"""Which accepted webhooks need no dispatch, decided from the envelope alone (pure).

Most webhooks a busy platform sends are of types no rule looks at (incident updates,
follow-ups, alert noise). Dispatching one would only parse it again and record "no rule
matched" in a second write transaction. Ingest instead stores such an event already
processed, with the trace the dispatcher would have written, in the same transaction that
makes it durable: one store write per webhook instead of two, and no dispatcher work.

The decision uses the rules in force when the webhook is accepted; an event stored pending
(a rule looked at its type) is evaluated against the rules in force when it is dispatched.

One exception: an event of a type no rule looks at is still dispatched when the bridge
records the state it reports (a Rootly object's) and some rule looks at other events of the
same kind of object: otherwise a change it reports (an incident back in triage) would be
missing from the last state seen, and the next event would be compared with an older one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bridge.platforms.catalog import catalog
from bridge.platforms.states import records
from bridge.platforms.webhooks import Envelope
from bridge.rules import RuleSet
from bridge.store.base import StoredTrace

UNMAPPED = "event type not mapped"
NO_RULE_TRIGGERS = (
    "no enabled rule triggers on this event; links, fresh state and the echo guard not"
    " consulted (so it is not checked for being stale)"
)
SETTLED_AT_INGEST = "at ingest, from the envelope (the body was stored, not parsed)"
# Distinct (source, type) pairs remembered per rules version; a platform sends dozens.
MAX_REMEMBERED_TYPES = 1024


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcome of an event that needs no dispatch: its result label and trace."""

    result: Literal["ignored", "no_match"]
    trace: StoredTrace


def settle(rules: RuleSet, envelope: Envelope) -> Settled | None:
    """The outcome of `envelope`'s event if nothing can act on it; None if it must be
    dispatched (some enabled rule triggers on its source and type).

    The trace depends on the source and type only (the delivery ID is the row's own
    column), so one encoded trace serves every event of a type. It is deliberately small:
    which rules did not look at the event follows from its type and the rules file.
    """
    trace = {
        "event": {"source": envelope.source, "type": envelope.event_type},
        "settled": SETTLED_AT_INGEST,
    }
    # `outcome`: the result label, as the dispatcher stores it (`EVENT_OUTCOMES`).
    if not envelope.known_type:
        return Settled(
            "ignored", StoredTrace.of({**trace, "ignored": UNMAPPED, "outcome": "ignored"})
        )
    if rules.triggered_on(envelope.source, envelope.event_type):
        return None
    handled = catalog(envelope.source).handled
    kind = handled.get(envelope.event_type)
    # Its state is recorded for the rules that look at other events of this kind.
    if (
        kind is not None
        and records(envelope.source, kind)
        and any(k == kind and rules.triggered_on(envelope.source, t) for t, k in handled.items())
    ):
        return None
    return Settled(
        "no_match", StoredTrace.of({**trace, "skipped": NO_RULE_TRIGGERS, "outcome": "no_match"})
    )


class Triage:
    """`settle` remembered per event type for the rules in force; a reload starts afresh."""

    def __init__(self, rules: Callable[[], RuleSet]) -> None:
        self._rules = rules
        self._for: RuleSet | None = None
        self._known: dict[tuple[str, str, bool], Settled | None] = {}

    def settle(self, envelope: Envelope) -> Settled | None:
        rules = self._rules()
        if rules is not self._for or len(self._known) >= MAX_REMEMBERED_TYPES:
            self._for = rules
            self._known.clear()
        key = (envelope.source, envelope.event_type, envelope.known_type)
        if key in self._known:
            return self._known[key]
        settled = self._known[key] = settle(rules, envelope)
        return settled
