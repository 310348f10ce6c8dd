"""Field ownership: rules that copy an incident field both ways need an owner, and a field
is never written to the side that owns it."""

from __future__ import annotations

import textwrap

import pytest

from bridge.events import thaw
from bridge.rules import RulesError, RuleSet, evaluate, load_rules_text
from tests.rules.builders import NOW, graph, io_event, ops, rootly_event, rootly_incident

TO_ROOTLY = """\
  - name: to-rootly
    on: {source: incident_io, event: "*incident.incident_updated_v2"}
    actions:
      - do: rootly.update_incident
        for_each: {linked: "rootly:incident"}
        params: {title: "{{ incident.name }}", summary: "{{ incident.summary }}"}
"""
TO_INCIDENT_IO = """\
  - name: to-incident-io
    on: {source: rootly, event: incident.updated}
    enabled: %s
    actions:
      - do: incident_io.edit_incident
        for_each: {linked: "incident_io:incident"}
        params: {name: "{{ incident.title }}"}
"""
LINKS = graph(("rootly:incident:inc-4d1c", "incident_io:incident:01FDAG4SAP5TYPT98WGR2N7W91"))


def load(fields: str = "", enabled: str = "true") -> RuleSet:
    text = "version: 1\n" + fields + "rules:\n" + TO_ROOTLY + TO_INCIDENT_IO % enabled
    return load_rules_text(text, "rules.yaml")


def test_a_field_written_both_ways_needs_an_owner() -> None:
    """Two enabled rules writing `incident.title` to both platforms, with no owner, are a
    load error naming the second writer's line, both rules and the fix; switching one off
    or naming an owner loads."""
    with pytest.raises(RulesError) as caught:
        load()
    message = str(caught.value)
    assert message.startswith("rules.yaml:15: rule 'to-incident-io': incident.title is written")
    assert "rule 'to-rootly' writes it to rootly, this rule to incident_io" in message
    assert "fields: {incident.title: {owner: rootly}}" in message
    assert load(enabled="false").owners == {}
    owned = load("fields:\n  incident.title: {owner: incident_io}\n")
    assert dict(owned.owners) == {"incident.title": "incident_io"}


def test_unknown_synced_field_is_a_load_error() -> None:
    """A field name under `fields:` that rules do not keep in step is refused with the
    closest name."""
    with pytest.raises(RulesError, match=r"'incident\.titel' is not a field .*incident\.title"):
        load("fields:\n  incident.titel: {owner: rootly}\n")


def test_a_field_is_never_written_to_the_side_that_owns_it() -> None:
    """With Rootly owning the title, the incident.io-to-Rootly rule leaves the title out
    (its summary still goes) and says so in the trace; the Rootly-to-incident.io rule
    writes it. With incident.io owning it, the Rootly-to-incident.io edit has nothing left
    to set and is skipped, not sent empty."""
    rootly_owns = load("fields:\n  incident.title: {owner: rootly}\n")
    edited = io_event("public_incident.incident_updated_v2")
    result = evaluate(rootly_owns, edited, LINKS, NOW)
    (update,) = result.actions
    assert set(thaw(update.params)) == {"summary"}
    assert (
        "actions[0]: leaves out title: rootly owns incident.title"
        in (result.trace["rules"]["to-rootly"]["notes"])
    )
    renamed = rootly_event("incident.updated", rootly_incident(title="New title"))
    (edit,) = evaluate(rootly_owns, renamed, LINKS, NOW).actions
    assert thaw(edit.params) == {"name": "New title"}

    incident_io_owns = load("fields:\n  incident.title: {owner: incident_io}\n")
    skipped = evaluate(incident_io_owns, renamed, LINKS, NOW)
    assert ops(skipped.actions) == []
    notes = skipped.trace["rules"]["to-incident-io"]["notes"]
    assert any("nothing to set" in note for note in notes)


def test_an_update_with_every_param_omitted_is_not_sent() -> None:
    """An update whose params all render to `omit` produces no action (it would be refused
    by the platform and dead-lettered)."""
    rules = load_rules_text(
        textwrap.dedent(
            """\
            version: 1
            rules:
              - name: r
                on: {source: rootly, event: incident.updated}
                actions:
                  - do: incident_io.edit_incident
                    for_each: {linked: "incident_io:incident"}
                    params: {summary: "{{ coalesce(incident.nothing, default=omit) }}"}
            """
        ),
        "rules.yaml",
    )
    event = rootly_event("incident.updated", rootly_incident())
    assert evaluate(rules, event, LINKS, NOW).actions == ()
