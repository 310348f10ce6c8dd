"""The rules language itself: templating, native values, for_each, conditions, idempotency
keys, traces, variables from env, the sandbox, and the pure link graph."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.events import Action, DeliveryId, Event, ObjectRef, freeze, thaw
from bridge.platforms.states import compared
from bridge.rules import (
    Evaluation,
    LinkGraph,
    RulesError,
    RuleSet,
    evaluate,
    load_rules,
    load_rules_text,
    refs_to_resolve,
)
from tests.rules.builders import NOW, graph, ref, rootly_event, rootly_incident

HEADER = """\
version: 1
variables:
  path_id: "01PATH"
  flag: false
  limit: 3
  table: {sev1: "rootly-sev-1", minor: "rootly-minor"}
  names: []
rules:
"""


def load(rules_yaml: str, env: dict[str, str] | None = None) -> RuleSet:
    """Load HEADER + the given rules (indented under `rules:`)."""
    return load_rules_text(
        HEADER + textwrap.indent(textwrap.dedent(rules_yaml), "  "), "rules.yaml", env
    )


def incident_event(delivery: str = "d-1", **fields: Any) -> Event:
    return rootly_event("incident.created", rootly_incident(**fields), delivery=delivery)


def run(rules: RuleSet, event: Event | None = None, links: LinkGraph | None = None) -> Evaluation:
    return evaluate(rules, event or incident_event(), links or graph(), NOW)


def only(result: Evaluation) -> Action:
    assert result.errors == (), result.errors
    (action,) = result.actions
    return action


# Probe values go into `metadata`, the one free-form parameter (every other parameter name
# is checked against the operation at load time).
CREATE = """\
- name: r
  on: {source: rootly, event: incident.created}
  actions:
    - do: incident_io.send_alert_event
      params:
        title: probe
        status: firing
        deduplication_key: probe
        metadata:
%s
"""


def params_of(params_yaml: str, event: Event | None = None) -> dict[str, Any]:
    rules = load(CREATE % textwrap.indent(textwrap.dedent(params_yaml), " " * 10))
    result: dict[str, Any] = thaw(only(run(rules, event)).params)["metadata"]
    return result


# -- templates and native values -------------------------------------------------------------


def test_single_expression_templates_keep_native_types_and_text_stays_text() -> None:
    """`{{ expr }}` alone yields list/dict/int/bool/null; mixed text yields a string; null in
    text renders as ''; plain YAML values pass through unchanged."""
    params = params_of(
        """\
        a_list: "{{ [incident.id, 2] }}"
        a_dict: "{{ {'k': incident.sequential_id} }}"
        an_int: "{{ incident.sequential_id + 1 }}"
        a_bool: "{{ incident.sequential_id > 40 }}"
        a_null: "{{ none }}"
        text: "#{{ incident.sequential_id }} {{ incident.title }}"
        null_in_text: "[{{ none }}]"
        literal: 7
        nested: {inner: ["{{ vars.limit }}", "x"]}
        """
    )
    assert params == {
        "a_list": ["inc-4d1c", 2],
        "a_dict": {"k": 42},
        "an_int": 43,
        "a_bool": True,
        "a_null": None,
        "text": "#42 Checkout API returns 500s",
        "null_in_text": "[]",
        "literal": 7,
        "nested": {"inner": [3, "x"]},
    }


def test_omit_drops_params_and_list_elements() -> None:
    """A value rendering to `omit` is left out of params and lists."""
    params = params_of(
        """\
        gone: "{{ omit }}"
        kept: "{{ coalesce(incident.missing, default=omit) if false else 'k' }}"
        items: ["a", "{{ omit }}", "b"]
        """
    )
    assert params == {"kept": "k", "items": ["a", "b"]}


def test_helpers_severity_lookup_prefix_time_and_refs() -> None:
    """The documented helpers: map_severity (object or slug, case-insensitive, default),
    lookup by variable name, strip_prefix, truncate, isoformat/format_time, ref, ids."""
    event = incident_event(alert_ids=["a1"], alerts=[{"id": "a2"}])
    params = params_of(
        """\
        sev_object: "{{ map_severity(incident.severity, 'table') }}"
        sev_filter: "{{ 'MINOR' | map_severity('table', default='none') }}"
        sev_missing: "{{ map_severity(incident.nothing, 'table', default='d') }}"
        looked_up: "{{ 'sev1' | lookup('table') }}"
        stripped: "{{ 'rootly-alert-42' | strip_prefix('rootly-alert-') }}"
        short: "{{ 'abcdefghijklmnopqrstuvwxyz' | truncate(10) }}"
        iso: "{{ '2024-05-01T14:00:00+02:00' | isoformat }}"
        formatted: "{{ now | format_time('%Y/%m/%d %H:%M') }}"
        now: "{{ now }}"
        a_ref: "{{ ref('rootly:alert', 'a1') }}"
        ids: "{{ ids_of(incident.alerts) + ref_ids(related, 'rootly:alert') }}"
        sev_name: "{{ incident.severity | severity_name }}"
        """,
        event,
    )
    assert params == {
        "sev_object": "rootly-sev-1",
        "sev_filter": "rootly-minor",
        "sev_missing": "d",
        "looked_up": "rootly-sev-1",
        "stripped": "42",
        "short": "abcdefg...",
        "iso": "2024-05-01T12:00:00Z",
        "formatted": "2024/05/01 12:00",
        "now": "2024-05-01T12:00:00Z",
        "a_ref": "rootly:alert:a1",
        "ids": ["a2", "a1", "a2"],
        "sev_name": "sev1",
    }


def test_template_context_has_event_fields_vars_and_injected_now() -> None:
    """Templates see the Event's context (source, type, subject, actor, ...), `vars` and the
    injected `now` (no clock read: a different `now` gives a different value)."""
    rules = load(
        CREATE % '          ctx: "{{ [source, type, delivery_id, subject, subject_id, new_status, '
        'actor.kind, vars.path_id, now] }}"\n'
    )
    event = incident_event()
    first = thaw(only(evaluate(rules, event, graph(), NOW)).params)["metadata"]
    later = datetime(2030, 1, 1, tzinfo=UTC)
    second = thaw(only(evaluate(rules, event, graph(), later)).params)["metadata"]
    assert first["ctx"] == [
        "rootly",
        "incident.created",
        "d-1",
        "rootly:incident:inc-4d1c",
        "inc-4d1c",
        "started",
        "unknown",
        "01PATH",
        "2024-05-01T12:00:00Z",
    ]
    assert second["ctx"][-1] == "2030-01-01T00:00:00Z"


def test_undefined_field_fails_only_that_rule_and_is_reported() -> None:
    """A typo'd field is an error for its rule (no partial actions, trace + errors say
    where); the next rule still fires, so the event is not lost."""
    rules = load(
        """\
        - name: broken
          on: {source: rootly, event: incident.created}
          actions:
            - do: incident_io.create_escalation
              params: {title: "{{ incident.id }}"}
            - do: incident_io.create_escalation
              params: {title: "{{ incident.titel }}"}
        - name: healthy
          on: {source: rootly, event: "incident.*"}
          actions:
            - do: incident_io.create_escalation
              params: {title: "{{ incident.title }}"}
        """
    )
    result = run(rules)
    assert [a.rule for a in result.actions] == ["healthy"]
    assert result.matched == ("healthy",)
    (error,) = result.errors
    assert error.rule == "broken"
    assert error.where == "actions[1].params"
    assert "titel" in error.message
    assert result.trace["rules"]["broken"]["reason"] == "error"
    assert result.trace["errors"] == [error.as_dict()]
    json.dumps(result.trace)  # the trace is JSON-able as is


# -- sandbox ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "access to private attribute '__mro__'"),
        ("{{ cycler.__init__.__globals__ }}", "access to private attribute '__globals__'"),
        ("{{ incident._secret }}", "access to private attribute '_secret'"),
        ("{{ incident['__class__'] }}", "access to private attribute '__class__'"),
        ("{{ lipsum }}", "unknown name 'lipsum'"),
        ("{{ cycler }}", "unknown name 'cycler'"),
    ],
)
def test_sandbox_escapes_are_refused_at_load(template: str, message: str) -> None:
    """Reaching Python internals, private attributes or Jinja's default globals is a load
    error naming the line and rule."""
    with pytest.raises(RulesError) as info:
        load(CREATE % f'          probe: "{template}"\n')
    assert info.value.line == 18  # the probe's own line inside `metadata`
    assert info.value.rule == "r"
    assert message in info.value.message


@pytest.mark.parametrize(
    "template",
    [
        "{{ incident | attr('_' ~ '_class__') }}",
        "{{ (incident | attr('_' ~ '_class__')) ~ '' }}",
        "{{ 'x' * 10000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ incident.update({'id': 1}) }}",
    ],
)
def test_sandbox_refuses_at_evaluation_what_load_cannot_see(template: str) -> None:
    """Computed private names, huge allocations and mutating the shared context fail at
    evaluation as that rule's error, never as an exception out of `evaluate`."""
    rules = load(CREATE % f'          probe: "{template}"\n')
    result = run(rules)
    assert result.actions == ()
    (error,) = result.errors
    assert error.rule == "r"
    assert "SecurityError" in error.message or "unsafe" in error.message


# -- for_each, targets, links -----------------------------------------------------------------


def test_for_each_linked_with_via_and_from_related() -> None:
    """`linked` finds direct links, `via` adds two-hop ones, `from: related` starts at the
    payload's related objects; targets are de-duplicated and sorted."""
    rules = load(
        """\
        - name: r
          on: {source: rootly, event: incident.created}
          actions:
            - do: incident_io.cancel_escalation
              for_each: {linked: "incident_io:escalation"}
            - do: incident_io.cancel_escalation
              for_each: {linked: "incident_io:escalation", via: "incident_io:alert", from: related}
        """
    )
    links = graph(
        ("rootly:incident:inc-4d1c", "incident_io:escalation:e2"),
        ("rootly:incident:inc-4d1c", "incident_io:escalation:e1"),
        ("rootly:alert:a1", "incident_io:alert:ia"),
        ("incident_io:alert:ia", "incident_io:escalation:e3"),
        ("incident_io:alert:ia", "incident_io:escalation:e1"),
    )
    result = run(rules, incident_event(alert_ids=["a1"]), links)
    targets = [str(a.target) for a in result.actions]
    assert targets == [
        "incident_io:escalation:e1",
        "incident_io:escalation:e2",
        "incident_io:escalation:e3",
    ]
    notes = result.trace["rules"]["r"]["notes"]
    assert any("already produced" in n for n in notes)  # e1 was found by both actions


def test_for_each_items_turn_ids_and_refs_into_targets_and_check_their_type() -> None:
    """Items may be bare IDs (typed by the operation) or full refs; a ref of the wrong type
    is that rule's error."""
    rules = load(
        """\
        - name: r
          on: {source: rootly, event: incident.created}
          actions:
            - do: rootly.acknowledge_alert
              for_each: {items: "{{ ['a1', 'rootly:alert:a2'] }}"}
        - name: wrong
          on: {source: rootly, event: incident.created}
          actions:
            - do: rootly.acknowledge_alert
              for_each: {items: "{{ ['rootly:incident:i1'] }}"}
        """
    )
    result = run(rules)
    assert [str(a.target) for a in result.actions] == ["rootly:alert:a1", "rootly:alert:a2"]
    (error,) = result.errors
    assert error.rule == "wrong"
    assert "rootly:incident:i1 is not a rootly:alert" in error.message


def test_explicit_target_when_and_item_context() -> None:
    """An explicit `target` template, a per-target `when`, and `item`/`target` in params."""
    rules = load(
        """\
        - name: r
          on: {source: rootly, event: incident.created}
          actions:
            - do: rootly.resolve_alert
              for_each: {items: "{{ [1, 2, 3] }}"}
              target: "rootly:alert:a{{ item }}"
              when: "{{ item != 2 }}"
              params: {resolution_message: "{{ target }} #{{ item }}"}
        """
    )
    result = run(rules)
    assert [(str(a.target), thaw(a.params)) for a in result.actions] == [
        ("rootly:alert:a1", {"resolution_message": "rootly:alert:a1 #1"}),
        ("rootly:alert:a3", {"resolution_message": "rootly:alert:a3 #3"}),
    ]
    assert "skipped rootly:alert:a2" in result.trace["rules"]["r"]["notes"][0]


def test_links_add_and_remove_with_for_each_and_when() -> None:
    """`links` produce LinkChanges (created by `rule:<name>`), honour `when`, skip self-links
    and de-duplicate the same pair."""
    rules = load(
        """\
        - name: r
          on: {source: rootly, event: incident.created}
          links:
            - add: {a: "{{ subject }}", b: "{{ item }}"}
              for_each: {items: "{{ related + related + [subject] }}"}
            - remove: {a: "{{ subject }}", b: "incident_io:escalation:old"}
              when: "{{ incident.status == 'started' }}"
            - remove: {a: "{{ subject }}", b: "incident_io:escalation:never"}
              when: "false"
        """
    )
    result = run(rules, incident_event(alert_ids=["a1"]))
    assert [(c.op, str(c.a), str(c.b), c.created_by) for c in result.link_changes] == [
        ("add", "rootly:incident:inc-4d1c", "rootly:alert:a1", "rule:r"),
        ("remove", "rootly:incident:inc-4d1c", "incident_io:escalation:old", "rule:r"),
    ]


def test_result_link_is_rendered_into_the_action() -> None:
    """`link_result` becomes a ResultLink to the rendered ref."""
    rules = load(
        CREATE % "          probe: t\n"
        + '      link_result: {to: "{{ subject }}", kind: escalation}\n'
    )
    action = only(run(rules))
    assert [(str(r.to), r.kind) for r in action.result_links] == [
        ("rootly:incident:inc-4d1c", "escalation")
    ]


# -- conditions and triggers ------------------------------------------------------------------


def test_structured_conditions_and_their_trace_details() -> None:
    """equals / not_equals / in / not_in / exists / matches / any / expr, with a missing
    field reading as null, and the first failing condition named in the trace."""
    rules = load(
        """\
        - name: r
          on: {source: rootly, event: incident.created}
          when:
            - {field: incident.status, equals: started}
            - {field: incident.status, not_equals: resolved}
            - {field: incident.severity.slug, in: [sev0, sev1]}
            - {field: incident.severity.slug, not_in: "{{ vars.names }}"}
            - {field: incident.title, exists: true}
            - {field: incident.nothing.deeper, exists: false}
            - {field: incident.title, matches: "(?i)checkout"}
            - any:
                - {field: incident.status, equals: nope}
                - expr: "{{ incident.sequential_id == 42 }}"
            - {field: related.0, equals: "rootly:alert:a1"}
            - expr: "{{ vars.flag }}"
          actions:
            - do: incident_io.create_escalation
              params: {title: x}
        """
    )
    result = run(rules, incident_event(alert_ids=["a1"]))
    trace = result.trace["rules"]["r"]
    assert trace["reason"] == "condition false"
    assert trace["condition"] == {"index": 9, "detail": "{{ vars.flag }} (value: False)"}
    flagged = load(
        """\
        - name: r
          on: {source: rootly, event: incident.created}
          when:
            - any: [{field: incident.status, equals: a}, {field: incident.status, in: [b]}]
          actions:
            - do: incident_io.create_escalation
              params: {title: x}
        """
    )
    detail = run(flagged).trace["rules"]["r"]["condition"]["detail"]
    assert detail == (
        "none of: incident.status equals 'a' (actual: 'started'); "
        "incident.status in ['b'] (actual: 'started')"
    )


def test_event_globs_match_twins_and_lists_and_disabled_rules_are_skipped() -> None:
    """A glob covers public_/private_ twins, a list of globs any of them, source must match,
    and `enabled: false` rules never fire (trace: disabled)."""
    rules = load(
        """\
        - name: twins
          on: {source: incident_io, event: "*escalation.escalation_status_updated_v1"}
          links: [{add: {a: "{{ subject }}", b: "rootly:alert:x"}}]
        - name: off
          enabled: false
          on: {source: incident_io, event: "*"}
          links: [{add: {a: "{{ subject }}", b: "rootly:alert:y"}}]
        - name: wrong-source
          on: {source: rootly, event: "*"}
          links: [{add: {a: "{{ subject }}", b: "rootly:alert:z"}}]
        """
    )

    def esc(event_type: str) -> Event:
        return Event(
            source="incident_io",
            delivery_id=DeliveryId("m"),
            type=event_type,
            subject=ref("incident_io:escalation:e1"),
            resource=freeze({"id": "e1"}),
        )

    for twin in ("public_", "private_"):
        result = run(rules, esc(twin + "escalation.escalation_status_updated_v1"))
        assert result.matched == ("twins",)
        assert result.trace["rules"]["off"] == {
            "matched": False,
            "fired": False,
            "reason": "disabled",
        }
        assert result.trace["rules"]["wrong-source"]["reason"] == "trigger mismatch"
    assert run(rules, esc("public_escalation.escalation_created_v1")).matched == ()


# -- idempotency keys -------------------------------------------------------------------------


def test_default_idempotency_keys_are_deterministic_per_delivery_and_target() -> None:
    """Same event -> same keys; another delivery -> other keys; each target its own key;
    non-target for_each items get their own keys too."""
    rules = load(
        """\
        - name: r
          on: {source: rootly, event: incident.created}
          actions:
            - do: incident_io.cancel_escalation
              for_each: {linked: "incident_io:escalation"}
            - do: incident_io.send_alert_event
              for_each: {items: "{{ ['a', 'b'] }}"}
              params: {title: "{{ item }}", status: firing, deduplication_key: "{{ item }}"}
        """
    )
    links = graph(
        ("rootly:incident:inc-4d1c", "incident_io:escalation:e1"),
        ("rootly:incident:inc-4d1c", "incident_io:escalation:e2"),
    )
    first = [a.idempotency_key for a in run(rules, incident_event("d-1"), links).actions]
    same = [a.idempotency_key for a in run(rules, incident_event("d-1"), links).actions]
    other = [a.idempotency_key for a in run(rules, incident_event("d-2"), links).actions]
    assert first == same
    assert len(set(first)) == 4
    assert not set(first) & set(other)
    assert all(k.startswith("bridge-") and len(k) == 47 for k in first)


def test_explicit_idempotency_key_and_bad_key_values() -> None:
    """An explicit key template is used as rendered; an empty one is the rule's error."""
    rules = load(
        """\
        - name: good
          on: {source: rootly, event: incident.created}
          actions:
            - do: incident_io.create_escalation
              idempotency_key: "rootly-incident-{{ incident.id }}"
              params: {title: x}
        - name: empty
          on: {source: rootly, event: incident.created}
          actions:
            - do: incident_io.create_escalation
              idempotency_key: "{{ '' }}"
              params: {title: y}
        """
    )
    result = run(rules)
    assert [a.idempotency_key for a in result.actions] == ["rootly-incident-inc-4d1c"]
    assert result.errors[0].rule == "empty"
    assert result.errors[0].where == "actions[0].idempotency_key"


# -- variables from env -----------------------------------------------------------------------


def test_env_overrides_variables_typed_like_their_defaults(tmp_path: Path) -> None:
    """BRIDGE_RULE_VAR_<NAME> overrides: strings raw, maps/lists/bools/numbers as JSON;
    undeclared names are ignored; load_rules reads a real file."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        HEADER + "  - name: r\n    on: {source: rootly, event: incident.created}\n"
        "    actions: [{do: incident_io.create_escalation, params: {title: x}}]\n"
    )
    env = {
        "BRIDGE_RULE_VAR_PATH_ID": "01OTHER",
        "BRIDGE_RULE_VAR_FLAG": "true",
        "BRIDGE_RULE_VAR_LIMIT": "10",
        "BRIDGE_RULE_VAR_TABLE": '{"critical": "c"}',
        "BRIDGE_RULE_VAR_NAMES": '["a"]',
        "BRIDGE_RULE_VAR_UNDECLARED": "x",
    }
    rules = load_rules(path, env=env)
    assert thaw(rules.variables) == {
        "path_id": "01OTHER",
        "flag": True,
        "limit": 10,
        "table": {"critical": "c"},
        "names": ["a"],
    }
    assert rules.source_path == str(path)
    assert thaw(load_rules(path, env={}).variables)["path_id"] == "01PATH"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TABLE", "{not json", "env BRIDGE_RULE_VAR_TABLE: not valid JSON"),
        ("TABLE", '["a"]', "env BRIDGE_RULE_VAR_TABLE: expected JSON dict"),
        ("FLAG", "1", "env BRIDGE_RULE_VAR_FLAG: expected JSON bool"),
        ("LIMIT", "true", "env BRIDGE_RULE_VAR_LIMIT: expected JSON int"),
    ],
)
def test_bad_env_override_names_the_variable_line(name: str, value: str, message: str) -> None:
    """A malformed override is a load error at the variable's line, not a silent default."""
    with pytest.raises(RulesError) as info:
        load(CREATE % "          probe: x\n", env={f"BRIDGE_RULE_VAR_{name}": value})
    line = {"TABLE": 6, "FLAG": 4, "LIMIT": 5}[name]
    assert str(info.value).startswith(f"rules.yaml:{line}: {message}")


# -- link graph -------------------------------------------------------------------------------


def test_link_graph_is_undirected_typed_and_sorted() -> None:
    """`linked` works from either end, filters by type key, ignores self-links and
    duplicates; `refs_to_resolve` is the subject plus related refs."""
    links = LinkGraph(
        [
            (ref("rootly:incident:i"), ref("incident_io:escalation:e2")),
            (ref("incident_io:escalation:e1"), ref("rootly:incident:i")),
            (ref("rootly:incident:i"), ref("incident_io:escalation:e1")),
            (ref("rootly:incident:i"), ref("rootly:incident:i")),
            (ref("rootly:incident:i"), ref("rootly:alert:a")),
        ]
    )
    assert len(links) == 3
    assert links.linked(ref("rootly:incident:i"), "incident_io:escalation") == (
        ref("incident_io:escalation:e1"),
        ref("incident_io:escalation:e2"),
    )
    assert links.linked(ref("incident_io:escalation:e1")) == (ref("rootly:incident:i"),)
    assert links.linked(ref("rootly:alert:zzz")) == ()
    event = incident_event(alert_ids=["a"])
    assert refs_to_resolve(event) == {ref("rootly:incident:inc-4d1c"), ref("rootly:alert:a")}
    no_subject = Event(
        source="rootly", delivery_id=DeliveryId("x"), type="pulse.created", subject=None
    )
    assert refs_to_resolve(no_subject) == set()
    assert isinstance(next(iter(refs_to_resolve(event))), ObjectRef)


def test_field_conditions_compare_list_and_table_variables_as_written() -> None:
    """Variables are frozen inside the rule set; a field test still compares them as the
    plain lists and mappings a rule writes: `equals: []` holds for an empty list variable,
    `not_equals: []` does not, and a table equals its own literal."""
    rules = load(
        """\
        - name: empty
          on: {source: rootly, event: incident.created}
          when: [{field: vars.names, equals: []}]
          links: [{add: {a: "{{ subject }}", b: "rootly:alert:a"}}]
        - name: not-empty
          on: {source: rootly, event: incident.created}
          when: [{field: vars.names, not_equals: []}]
          links: [{add: {a: "{{ subject }}", b: "rootly:alert:b"}}]
        - name: table
          on: {source: rootly, event: incident.created}
          when: [{field: vars.table, equals: {sev1: "rootly-sev-1", minor: "rootly-minor"}}]
          links: [{add: {a: "{{ subject }}", b: "rootly:alert:c"}}]
        """
    )
    assert run(rules).matched == ("empty", "table")


def test_changed_and_previous_compare_with_the_last_state_seen() -> None:
    """`{field: incident.title, changed: true}` holds when the event changes that recorded
    field (`compared` with the subject's last state seen: every field with a value on a
    first sighting); `previous.<field>` and `previous_status` read that state, null when
    nothing was seen; the trace shows what `changed` held."""
    rules = load(
        """\
        - name: renamed
          on: {source: rootly, event: incident.updated}
          when:
            - {field: incident.title, changed: true}
            - {field: incident.summary, changed: false}
          actions:
            - do: incident_io.create_escalation
              params: {title: "{{ previous.title }} -> {{ incident.title }}"}
        - name: acknowledged
          on: {source: rootly, event: incident.updated}
          when:
            - {field: incident.acknowledged_at, exists: true}
            - {field: previous.acknowledged_at, exists: false}
            - {field: previous_status, not_equals: acknowledged}
          actions:
            - do: incident_io.create_escalation
              params: {title: acked}
        """
    )
    data = rootly_incident(summary="s", acknowledged_at="2024-05-01T12:00:00Z")
    event = rootly_event("incident.updated", data)
    seen = {"status": "started", "title": "Old", "summary": "s", "severity": "sev-id-1"}
    fired = run(rules, compared(event, seen))
    assert [thaw(a.params)["title"] for a in fired.actions] == [
        "Old -> Checkout API returns 500s",
        "acked",
    ]
    same = {**seen, "title": data["title"], "acknowledged_at": "2024-05-01T12:00:00Z"}
    quiet = run(rules, compared(event, same))
    assert quiet.actions == ()
    assert quiet.trace["rules"]["renamed"]["condition"]["detail"].startswith(
        "incident.title changed True (changed: [], actual:"
    )
    # A first sighting: every recorded field with a value counts as changed.
    first = run(rules, compared(event, None))
    assert [thaw(a.params)["title"] for a in first.actions] == ["acked"]
    assert first.trace["rules"]["renamed"]["condition"]["index"] == 1
    # Not compared at all (a platform that records nothing): no field reads as changed.
    assert run(rules, event).trace["rules"]["renamed"]["reason"] == "condition false"


@pytest.mark.parametrize(
    ("condition", "source", "message"),
    [
        (
            "{field: incident.name, changed: true}",
            "incident_io",
            "the bridge records no state of incident_io objects",
        ),
        (
            "{field: previous.labels, exists: true}",
            "rootly",
            "the bridge records only acknowledged_at, severity, status, summary, title of"
            " rootly objects",
        ),
        ("{field: incident.titel, changed: true}", "rootly", "(did you mean 'title'?)"),
        ("{field: vars.path_id, changed: true}", "rootly", "'changed' goes with a field of"),
    ],
)
def test_changed_and_previous_need_a_recorded_field(
    condition: str, source: str, message: str
) -> None:
    """`changed` and `previous.<field>` are checked at load: the source's objects must have
    their state recorded (Rootly's), the field must be one the bridge records, and `changed`
    goes with a field of the event's object."""
    event = "incident.updated" if source == "rootly" else "public_incident.incident_updated_v2"
    with pytest.raises(RulesError, match=re.escape(message)):
        load(
            f"""\
            - name: r
              on: {{source: {source}, event: {event}}}
              when:
                - {condition}
              actions:
                - do: incident_io.create_escalation
                  params: {{title: x}}
            """
        )
