"""Load-time validation: every problem is a `RulesError` naming file, line and rule.

Each case is a small file whose offending line is known; the assertion is on the full
``file:line: rule 'name': message`` text a user sees from `bridge check-config`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.rules import RulesError, load_rules, load_rules_text

FILE = "config/rules.yaml"

GOOD_RULE = """\
version: 1
variables:
  path_id: "p"
rules:
  - name: first
    on: {source: rootly, event: incident.created}
    actions:
      - do: incident_io.create_escalation
        params:
          title: "{{ incident.title }}"
"""


CREATE_ACTION = (
    "      - do: incident_io.create_escalation\n"
    "        params:\n"
    '          title: "{{ incident.title }}"'
)


def error_for(text: str) -> RulesError:
    with pytest.raises(RulesError) as info:
        load_rules_text(text, FILE, {})
    return info.value


def test_good_rule_loads() -> None:
    """The base file of these cases is valid (so each case shows exactly one problem)."""
    assert load_rules_text(GOOD_RULE, FILE, {}).names == ("first",)


CASES = [
    pytest.param(
        GOOD_RULE.replace("event: incident.created}", "event: incident.created"),
        "config/rules.yaml:7: YAML syntax error: expected ',' or '}', but got ':' "
        "(while parsing a flow mapping started on line 6)",
        id="yaml-syntax",
    ),
    pytest.param(
        GOOD_RULE.replace("      - do:", "      - paramz: {}\n        do:"),
        "config/rules.yaml:8: rule 'first': actions[0].paramz: unknown key 'paramz' (allowed: "
        "do, params, target, for_each, when, idempotency_key, link_result, priority)",
        id="unknown-key",
    ),
    pytest.param(
        GOOD_RULE.replace("      - do:", "      - priority: urgent\n        do:"),
        "config/rules.yaml:8: rule 'first': actions[0].priority: Input should be 'page',"
        " 'create' or 'update'",
        id="bad-priority",
    ),
    pytest.param(
        GOOD_RULE.replace("incident_io.create_escalation", "rootly.frobnicate"),
        "config/rules.yaml:8: rule 'first': unknown operation 'rootly.frobnicate' (known: "
        "rootly.cancel_incident, rootly.update_incident, rootly.restart_incident, "
        "rootly.resolve_incident, rootly.mitigate_incident, rootly.acknowledge_alert, "
        "rootly.resolve_alert, incident_io.create_escalation, incident_io.cancel_escalation, "
        "incident_io.acknowledge_escalation, incident_io.send_alert_event, "
        "incident_io.edit_incident)",
        id="unknown-operation",
    ),
    pytest.param(
        GOOD_RULE.replace("source: rootly", "source: pagerduty"),
        "config/rules.yaml:6: rule 'first': on.source: Input should be 'rootly' or "
        "'incident_io' (got 'pagerduty')",
        id="unknown-source",
    ),
    pytest.param(
        GOOD_RULE.replace("event: incident.created", 'event: "incident.[created"'),
        "config/rules.yaml:6: rule 'first': bad event glob 'incident.[created': use letters, "
        "digits, '_', '.', '-' and the wildcards * ? [...]",
        id="bad-glob",
    ),
    pytest.param(
        GOOD_RULE.replace("{{ incident.title }}", "{{ incident.title | }}"),
        "config/rules.yaml:10: rule 'first': actions[0].params.title: template syntax error: "
        "expected token 'name', got 'end of print statement'",
        id="template-syntax",
    ),
    pytest.param(
        GOOD_RULE.replace("{{ incident.title }}", "{{ incident.title | shout }}"),
        "config/rules.yaml:10: rule 'first': actions[0].params.title: template error: "
        "No filter named 'shout'.",
        id="unknown-filter",
    ),
    pytest.param(
        GOOD_RULE.replace("{{ incident.title }}", "{{ vars.escalation_path }}"),
        "config/rules.yaml:10: rule 'first': actions[0].params.title: variable "
        "'escalation_path' is not defined (variables: path_id)",
        id="undefined-variable",
    ),
    pytest.param(
        GOOD_RULE.replace("{{ incident.title }}", "{{ map_severity(incident.severity, 'sevs') }}"),
        "config/rules.yaml:10: rule 'first': actions[0].params.title: variable 'sevs' is not "
        "defined (variables: path_id)",
        id="undefined-table-variable",
    ),
    pytest.param(
        GOOD_RULE.replace("{{ incident.title }}", "{{ item }}"),
        "config/rules.yaml:10: rule 'first': actions[0].params.title: unknown name 'item'",
        id="item-outside-for-each",
    ),
    pytest.param(
        GOOD_RULE.replace(
            CREATE_ACTION,
            '      - do: rootly.acknowledge_alert\n        for_each: {linked: "rootly:incident"}',
        ),
        "config/rules.yaml:9: rule 'first': for_each.linked 'rootly:incident' does not fit "
        "operation rootly.acknowledge_alert (it acts on rootly:alert)",
        id="linked-type-mismatch",
    ),
    pytest.param(
        GOOD_RULE.replace(
            CREATE_ACTION,
            '      - do: rootly.acknowledge_alert\n        for_each: {linked: "rootly:thing"}',
        ),
        "config/rules.yaml:9: rule 'first': actions[0].for_each.linked: String should "
        "match pattern '^(rootly|incident_io):(incident|alert|escalation)$' (got 'rootly:thing')",
        id="linked-bad-type-key",
    ),
    pytest.param(
        GOOD_RULE.replace(
            CREATE_ACTION,
            '      - do: rootly.cancel_incident\n        target: "rootly:alert:{{ subject_id }}"',
        ),
        "config/rules.yaml:9: rule 'first': target type 'rootly:alert' does not fit operation "
        "rootly.cancel_incident (it acts on rootly:incident)",
        id="target-type-mismatch",
    ),
    pytest.param(
        GOOD_RULE.replace(
            CREATE_ACTION,
            "      - do: rootly.cancel_incident",
        ),
        "config/rules.yaml:8: rule 'first': operation rootly.cancel_incident acts on a "
        "rootly:incident: give 'target' or 'for_each'",
        id="missing-target",
    ),
    pytest.param(
        GOOD_RULE.replace("        params:", '        target: "{{ subject }}"\n        params:'),
        "config/rules.yaml:9: rule 'first': operation incident_io.create_escalation creates an "
        "object and takes no 'target'",
        id="target-on-create",
    ),
    pytest.param(
        GOOD_RULE + GOOD_RULE.split("rules:\n", 1)[1],
        "config/rules.yaml:11: rule 'first': duplicate rule name (first defined as rule #1)",
        id="duplicate-rule-name",
    ),
    pytest.param(
        GOOD_RULE.replace("    on:", "    enabled: true\n    enabled: false\n    on:"),
        "config/rules.yaml:7: duplicate key 'enabled'",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        GOOD_RULE.replace("  - name: first", "  - name: First_Rule"),
        "config/rules.yaml:5: rule 'First_Rule': name: String should match pattern "
        "'^[a-z0-9][a-z0-9-]{0,79}$' (got 'First_Rule')",
        id="bad-rule-name",
    ),
    pytest.param(
        GOOD_RULE.replace(
            "    actions:",
            '    when:\n      - {field: incident.title, matches: "([a-z"}\n    actions:',
        ),
        "config/rules.yaml:8: rule 'first': bad regex '([a-z': unterminated character set at "
        "position 1",
        id="bad-regex",
    ),
    pytest.param(
        GOOD_RULE.replace(
            "    actions:", "    when:\n      - {field: incdent.title, exists: true}\n    actions:"
        ),
        "config/rules.yaml:8: rule 'first': field 'incdent.title' must start with one of:",
        id="bad-field-root",
    ),
    pytest.param(
        GOOD_RULE.replace(
            "    actions:",
            "    when:\n      - {field: incident.title, equals: a, in: [b]}\n    actions:",
        ),
        "config/rules.yaml:8: rule 'first': when[0]: a 'field' condition needs exactly "
        "one test: equals, not_equals, in, not_in, exists, matches or changed",
        id="two-tests-in-condition",
    ),
    pytest.param(
        GOOD_RULE.replace("version: 1", "version: 2"),
        "config/rules.yaml:1: version: Input should be 1 (got 2)",
        id="version",
    ),
    pytest.param(
        "- just a list\n",
        "config/rules.yaml:1: a rules file is a mapping with 'version' and 'rules'",
        id="not-a-mapping",
    ),
    pytest.param(
        GOOD_RULE.split("    actions:")[0],
        "config/rules.yaml:5: rule 'first': rule does nothing: give it 'actions' or 'links'",
        id="rule-without-effect",
    ),
    pytest.param(
        GOOD_RULE.replace(
            "    actions:", '    when:\n      - {field: vars.path_di, not_equals: ""}\n    actions:'
        ),
        "config/rules.yaml:8: rule 'first': field 'vars.path_di': variable 'path_di' is not"
        " defined (did you mean 'path_id'?)",
        id="field-on-undefined-variable",
    ),
    pytest.param(
        GOOD_RULE.replace("{{ incident.title }}", "{{ vars.path_d }}"),
        "config/rules.yaml:10: rule 'first': actions[0].params.title: variable 'path_d' is"
        " not defined (did you mean 'path_id'?)",
        id="template-on-misspelt-variable",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_each_problem_names_file_line_and_rule(text: str, expected: str) -> None:
    """The error text starts with the exact `file:line: rule 'x': message` expected."""
    assert str(error_for(text)).startswith(expected)


def test_on_is_a_key_not_a_boolean_and_yes_is_a_string() -> None:
    """YAML 1.2 booleans: `on:` stays the key 'on' (PyYAML's 1.1 default would make it
    True), so rules load; `yes` is the string 'yes', caught as a bad boolean."""
    bad = GOOD_RULE.replace("  - name: first", "  - name: first\n    hydrate: [yes]")
    error = error_for(bad)
    assert error.line == 6
    assert "hydrate" in error.message


def test_several_problems_are_all_reported() -> None:
    """Problems in different rules are all collected; the first leads the message."""
    text = GOOD_RULE.replace("incident_io.create_escalation", "nope.one") + (
        "  - name: second\n"
        "    on: {source: rootly, event: incident.created}\n"
        "    actions:\n"
        "      - do: nope.two\n"
    )
    error = error_for(text)
    assert [(p.line, p.rule) for p in error.problems] == [(8, "first"), (14, "second")]
    assert str(error).endswith("(and 1 more problem)")
    assert error.file == FILE


def test_missing_file_is_a_rules_error(tmp_path: Path) -> None:
    """An unreadable path is a RulesError naming the file, without a line."""
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path / "absent.yaml", env={})
    assert info.value.line is None
    assert str(info.value).startswith(f"{tmp_path / 'absent.yaml'}: cannot read rules file")
