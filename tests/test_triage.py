"""Settling events at ingest: which envelopes need no dispatch, and the memo of that answer."""

from __future__ import annotations

import textwrap

from prometheus_client import CollectorRegistry, Counter

from bridge.events import DeliveryId, Platform
from bridge.metrics import LabelledCounters
from bridge.pipeline.triage import MAX_REMEMBERED_TYPES, NO_RULE_TRIGGERS, UNMAPPED, Triage, settle
from bridge.platforms.webhooks import Envelope
from bridge.rules import RuleSet, load_rules_text


def rules(*specs: tuple[Platform, str, bool]) -> RuleSet:
    """One rule per (source, event glob, enabled), each creating an escalation."""
    body = "".join(
        textwrap.dedent(
            f"""\
            - name: rule-{n}
              on: {{source: {source}, event: "{glob}"}}
              enabled: {"true" if enabled else "false"}
              actions:
                - do: incident_io.create_escalation
                  params: {{title: "t"}}
            """
        )
        for n, (source, glob, enabled) in enumerate(specs)
    )
    return load_rules_text("version: 1\nrules:\n" + textwrap.indent(body, "  "), "rules.yaml")


def envelope(source: Platform, event_type: str, *, known: bool = True) -> Envelope:
    return Envelope(source, DeliveryId("d-1"), event_type, known)


def test_triggered_on_follows_source_glob_and_enabled() -> None:
    """Only an enabled rule whose source matches and whose glob matches the type counts."""
    ruleset = rules(("rootly", "incident.*", True), ("incident_io", "public_alert.*", False))
    assert ruleset.triggered_on("rootly", "incident.created")
    assert ruleset.triggered_on("rootly", "incident.updated")
    assert not ruleset.triggered_on("rootly", "alert.created")
    assert not ruleset.triggered_on("incident_io", "incident.created")
    # The only rule for this type is disabled.
    assert not ruleset.triggered_on("incident_io", "public_alert.alert_created_v1")


def test_settle_decides_from_type_and_rules() -> None:
    """A type some enabled rule triggers on is left to dispatch; a known type no rule
    triggers on settles as no_match; an unmapped type settles as ignored. The traces name
    the event, why, and the outcome the event is searched by (the result label), and no
    delivery ID (they are shared by every event of a type)."""
    ruleset = rules(("rootly", "incident.created", True))
    assert settle(ruleset, envelope("rootly", "incident.created")) is None
    quiet = settle(ruleset, envelope("rootly", "alert.updated"))
    assert quiet is not None
    assert quiet.result == "no_match"
    assert quiet.trace.value["event"] == {"source": "rootly", "type": "alert.updated"}
    assert quiet.trace.value["skipped"] == NO_RULE_TRIGGERS
    assert quiet.trace.value["outcome"] == "no_match"
    assert "d-1" not in quiet.trace.text
    unknown = settle(ruleset, envelope("rootly", "widget.spun", known=False))
    assert unknown is not None
    assert unknown.result == "ignored"
    assert unknown.trace.value["ignored"] == UNMAPPED
    assert unknown.trace.value["outcome"] == "ignored"


def test_events_whose_state_is_recorded_are_dispatched_for_rules_on_their_kind() -> None:
    """A Rootly event no rule triggers on is still dispatched when a rule looks at other
    events of the same kind of object (its state must reach the last state seen, or the
    next event of that object would be compared with an older one); not when no rule looks
    at that kind, and never for incident.io, whose webhooks carry their own transitions."""
    ruleset = rules(
        ("rootly", "incident.updated", True),
        ("incident_io", "public_incident.incident_updated_v2", True),
    )
    assert settle(ruleset, envelope("rootly", "incident.in_triage")) is None
    assert settle(ruleset, envelope("rootly", "alert.updated")) is not None
    assert settle(ruleset, envelope("rootly", "pulse.created")) is not None
    iio = settle(ruleset, envelope("incident_io", "public_incident.incident_status_updated_v2"))
    assert iio is not None


def test_unmapped_type_is_ignored_even_if_a_glob_matches_it() -> None:
    """An event type the parser does not map cannot be dispatched, whatever the globs say."""
    settled = settle(rules(("rootly", "*", True)), envelope("rootly", "widget.spun", known=False))
    assert settled is not None
    assert settled.result == "ignored"


def test_triage_forgets_on_rules_reload() -> None:
    """The memo belongs to one rules version: after a reload that adds a rule for a type,
    that type is no longer settled (and one that loses its rule is)."""
    current = [rules(("rootly", "incident.created", True))]
    triage = Triage(lambda: current[0])
    updated = envelope("rootly", "alert.updated")
    created = envelope("rootly", "incident.created")
    assert triage.settle(updated) is not None
    assert triage.settle(created) is None
    current[0] = rules(("rootly", "alert.updated", True))
    assert triage.settle(updated) is None
    assert triage.settle(created) is not None


def test_triage_memo_is_bounded_and_stays_correct() -> None:
    """A flood of distinct types never grows the memo past its cap (it starts afresh when
    full), and answers stay right throughout."""
    ruleset = rules(("rootly", "incident.created", True))
    triage = Triage(lambda: ruleset)
    sizes = []
    for n in range(MAX_REMEMBERED_TYPES * 2 + 5):
        assert triage.settle(envelope("rootly", f"incident.t{n}")) is not None
        sizes.append(len(triage._known))
    assert max(sizes) == MAX_REMEMBERED_TYPES
    assert sizes[MAX_REMEMBERED_TYPES] == 1  # full: emptied before remembering the next
    assert triage.settle(envelope("rootly", "incident.created")) is None


def test_labelled_counters_increment_their_own_child() -> None:
    """Each label set increments its own child, across families, as `labels().inc()` would."""
    registry = CollectorRegistry()
    first = Counter("first_total", "first", ["source", "result"], registry=registry)
    second = Counter("second_total", "second", ["source", "result"], registry=registry)
    counters = LabelledCounters()
    counters.inc(first, "rootly", "no_match")
    counters.inc(first, "rootly", "no_match")
    counters.inc(first, "incident_io", "no_match")
    counters.inc(second, "rootly", "no_match")

    def value(name: str, source: str) -> float | None:
        return registry.get_sample_value(name, {"source": source, "result": "no_match"})

    assert value("first_total", "rootly") == 2
    assert value("first_total", "incident_io") == 1
    assert value("second_total", "rootly") == 1
    assert value("second_total", "incident_io") is None
