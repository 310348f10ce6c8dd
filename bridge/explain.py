"""What `bridge explain` shows for an event, calling nothing: the rules it matches, why the
others do not, and the exact actions and link changes that would follow.

Shared by the CLI and the console's dry-run box, so both answer the same for the same
webhook body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bridge.events import DeliveryId, Event, Platform, thaw
from bridge.pipeline.dispatcher import PARSERS
from bridge.platforms.catalog import catalog, sniff_source
from bridge.platforms.webhooks import PayloadError
from bridge.rules import LinkGraph, RuleSet, evaluate, refs_to_resolve
from bridge.store.store import Store


def parse_event(source: Platform, body: bytes, name: str, *, cli: bool = True) -> Event:
    """`body` as a webhook of `source`; raises `PayloadError` saying what is wrong (and
    which platform the body looks like it came from, when it is the other one; with `cli`,
    the option to pass)."""
    try:
        return PARSERS[source](body, DeliveryId(f"explain:{name}"))
    except PayloadError as exc:
        raise PayloadError(f"{exc}{other_source_hint(source, body, cli=cli)}") from None


def other_source_hint(source: Platform, body: bytes, *, cli: bool = True) -> str:
    sniffed = sniff_source(body)
    if sniffed is None or sniffed == source:
        return ""
    other = catalog(sniffed)
    article = "an" if other.label[0].lower() in "aeiou" else "a"
    hint = f"; this looks like {article} {other.label} event"
    return hint + (f": try --source {other.cli_name}" if cli else "")


async def links_around(store: Store, event: Event) -> LinkGraph:
    """The links the dispatcher would load for `event` (two hops, for `via` rules)."""
    refs = refs_to_resolve(event)
    pairs = {(row.a, row.b) for row in await store.linked(sorted(refs))}
    neighbours = {ref for pair in pairs for ref in pair} - refs
    if neighbours:
        pairs |= {(row.a, row.b) for row in await store.linked(sorted(neighbours))}
    return LinkGraph(pairs)


def explanation(rules: RuleSet, event: Event, links: LinkGraph, now: datetime) -> dict[str, Any]:
    """The rules' verdict on `event` as plain JSON data (what `bridge explain` prints)."""
    evaluation = evaluate(rules, event, links, now)
    return {
        "event": {
            "source": event.source,
            "type": event.type,
            "subject": str(event.subject) if event.subject else None,
            "new_status": event.new_status,
            "previous_status": event.previous_status,
            "previous": thaw(event.previous) if event.previous is not None else None,
            "changed": sorted(event.changed) if event.changed is not None else None,
            "needs_hydration": event.needs_hydration,
        },
        "matched": list(evaluation.matched),
        "actions": [
            {
                "operation": a.operation,
                "target": str(a.target) if a.target else None,
                "params": thaw(a.params),
                "rule": a.rule,
                "idempotency_key": a.idempotency_key,
                "link_result": [{"to": str(r.to), "kind": r.kind} for r in a.result_links],
            }
            for a in evaluation.actions
        ],
        "link_changes": [
            {"op": c.op, "a": str(c.a), "b": str(c.b), "by": c.created_by}
            for c in evaluation.link_changes
        ],
        "trace": thaw(evaluation.trace),
    }
