"""Dead flows: `bridge.checks.check_setup` on real settings and real rules files.

Each test builds settings with `load_settings` and rules with the real loader, and checks
what `bridge check-config` (and `bridge serve` at start) will report: the finding's code,
severity, file:line, rule and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.checks import Finding, check_setup, subscriptions
from bridge.config import Settings, load_settings
from bridge.rules import RuleSet, load_rules, load_rules_text
from tests.conftest import SECRET_ENV

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = ROOT / "config" / "rules.yaml"
# What the default rules need besides the secrets (see the README's quick start).
COMPLETE_ENV = {
    **SECRET_ENV,
    "BRIDGE_INCIDENT_IO__API_KEY_ID": "01HKEY00000000000000000000",
    "BRIDGE_INCIDENT_IO__ALERT_SOURCE_CONFIG_ID": "01HSOURCE00000000000000000",
    "BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN": "alert-source-token-for-tests",
}


def settings(
    env: dict[str, str] | None = None, *, require_secrets: bool = True, **overrides: Any
) -> Settings:
    return load_settings(
        None,
        environ={"BRIDGE_CONFIG": "/dev/null", **(env or COMPLETE_ENV)},
        overrides=overrides,
        require_secrets=require_secrets,
    )


def codes(findings: tuple[Finding, ...]) -> list[tuple[str, str, str | None]]:
    return [(f.severity, f.code, f.rule) for f in findings]


RULE = """version: 1
variables: {{path: "P1"}}
rules:
  - name: r
    on: {{source: {source}, event: {event}}}
    {body}
"""


def rules(event: str = "incident.created", source: str = "rootly", body: str = "") -> RuleSet:
    text = RULE.format(
        source=source,
        event=event,
        body=body
        or "actions:\n      - do: incident_io.create_escalation\n"
        '        params: {title: "{{ incident.title }}", escalation_path_id: "{{ vars.path }}"}',
    )
    return load_rules_text(text, "rules.yaml")


def test_default_rules_on_a_fresh_install_name_each_dead_flow_and_its_fix() -> None:
    """The shipped rules with only the secrets set: rule 1 never fires (empty escalation
    path), rules 2 and 4 send alert events to no alert source, and the echo guard lacks the
    key's ID (a warning). Each names file:line and the setting to set."""
    found = check_setup(settings(SECRET_ENV), load_rules(DEFAULT_RULES, {}))
    assert codes(found) == [
        ("error", "rule_never_fires", "rootly-incident-opens-escalation"),
        ("error", "missing_alert_source", "rootly-alert-fires-incident-io-alert"),
        ("error", "missing_alert_source", "rootly-incident-resolved-stops-paging"),
        ("error", "missing_alert_source", "rootly-alert-resolved-resolves-incident-io-alert"),
        ("warning", "missing_api_key_id", None),
    ]
    never = found[0]
    text = (DEFAULT_RULES).read_text().splitlines()
    assert never.file == str(DEFAULT_RULES) and never.line is not None
    assert "vars.escalation_path_id" in text[never.line - 1]
    assert "BRIDGE_RULE_VAR_ESCALATION_PATH_ID" in never.fix
    assert "BRIDGE_INCIDENT_IO__ALERT_SOURCE_CONFIG_ID" in found[1].fix
    assert "BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN" in found[1].fix
    assert "BRIDGE_INCIDENT_IO__API_KEY_ID" in found[4].fix


def test_default_rules_with_what_they_need_have_no_dead_flow() -> None:
    """Secrets, the escalation path, the alert source and the key's ID: nothing to report."""
    env = {"BRIDGE_RULE_VAR_ESCALATION_PATH_ID": "01HPATH"}
    assert check_setup(settings(), load_rules(DEFAULT_RULES, env)) == ()


def test_alert_source_token_may_come_at_deploy_time() -> None:
    """With --no-secrets only the alert source's ID is required, not its token."""
    env = {**SECRET_ENV, "BRIDGE_INCIDENT_IO__ALERT_SOURCE_CONFIG_ID": "01HSRC"}
    ruleset = load_rules(DEFAULT_RULES, {"BRIDGE_RULE_VAR_ESCALATION_PATH_ID": "p"})
    loaded = settings(env, require_secrets=False)
    strict = check_setup(loaded, ruleset)
    assert "missing_alert_source" in [f.code for f in strict]
    relaxed = check_setup(loaded, ruleset, require_secrets=False)
    assert "missing_alert_source" not in [f.code for f in relaxed]


def test_a_trigger_glob_typo_is_an_error_with_the_closest_event_type() -> None:
    """`incident.creatd` matches nothing Rootly sends: error, 'did you mean incident.created'."""
    (finding,) = check_setup(settings(), rules("incident.creatd"))
    assert (finding.severity, finding.code) == ("error", "unknown_event_type")
    assert finding.line == 5
    assert "'incident.creatd' matches no event type Rootly sends" in finding.message
    assert finding.fix == "did you mean 'incident.created'?"


def test_a_glob_on_types_the_bridge_ignores_is_an_error() -> None:
    """`pulse.created` is sent by Rootly but carries no object the bridge can act on."""
    (finding,) = check_setup(settings(), rules("pulse.created"))
    assert finding.code == "event_type_not_handled"
    assert "incident.created" in finding.fix


def test_a_glob_list_is_judged_glob_by_glob() -> None:
    """One bad glob of a list is reported even when the others are fine."""
    found = check_setup(settings(), rules("[incident.created, incident.resolvd]"))
    assert codes(found) == [("error", "unknown_event_type", "r")]
    assert "incident.resolvd" in found[0].message


def test_a_field_the_payload_does_not_have_is_a_warning_with_a_suggestion() -> None:
    """`incident.titel` in a template and `incident.sumary` in a condition: warnings naming
    the closest field; `alert.id` on incident events: the object is not in these events."""
    body = (
        "when:\n"
        "      - {field: incident.sumary, exists: true}\n"
        "      - {field: alert.id, exists: true}\n"
        "    actions:\n"
        "      - do: incident_io.create_escalation\n"
        '        params: {title: "{{ incident.titel }}", escalation_path_id: "{{ vars.path }}"}'
    )
    found = check_setup(settings(), rules(body=body))
    assert [(f.severity, f.code) for f in found] == [
        ("warning", "unknown_field"),
        ("warning", "object_not_in_event"),
        ("warning", "unknown_field"),
    ]
    assert found[0].fix == "did you mean 'incident.summary'?"
    assert found[0].line == 7
    assert found[2].fix == "did you mean 'incident.title'?"
    assert "carry an incident, not an alert" in found[1].message


def test_incident_io_fields_are_judged_by_the_object_of_the_event() -> None:
    """On escalation events `escalation.related_alerts` is known and `escalation.stauts`
    is not; `resource.x` is judged against every object the rule's events carry."""
    body = (
        "when:\n"
        "      - {field: escalation.stauts, equals: acked}\n"
        "      - {field: resource.related_alerts, exists: true}\n"
        "    links:\n"
        '      - add: {a: "{{ subject }}", b: "{{ escalation.related_alerts[0] }}"}'
    )
    found = check_setup(
        settings(), rules('"*escalation.escalation_status_updated_v1"', "incident_io", body)
    )
    assert [(f.code, f.fix) for f in found] == [
        ("unknown_field", "did you mean 'escalation.status'?")
    ]


def test_acting_on_a_disabled_platform_is_an_error() -> None:
    """A rule that calls incident.io while incident_io.enabled is false."""
    found = check_setup(settings(incident_io={"enabled": False}), rules())
    assert codes(found) == [("error", "platform_disabled", "r")]
    assert "incident_io.enabled" in found[0].message


def test_disabled_rules_are_not_checked() -> None:
    """A rule switched off with enabled: false is what the fixes suggest: nothing to report."""
    ruleset = rules("incident.creatd", body="enabled: false\n    links:\n      - add: {a: x, b: y}")
    assert check_setup(settings(), ruleset) == ()


def test_subscriptions_list_the_handled_types_of_the_enabled_rules() -> None:
    """The shipped rules need every Rootly type that reports an incident's or an alert's
    state (the bridge records the last one seen of each, for rules that ask what changed),
    and the incident.io types they trigger on (public and private twins); a disabled
    platform gets no list."""
    ruleset = load_rules(DEFAULT_RULES, {})
    subs = subscriptions(settings(), ruleset)
    assert subs["rootly"] == (
        "alert.created",
        "alert.updated",
        "incident.cancelled",
        "incident.created",
        "incident.deleted",
        "incident.in_triage",
        "incident.mitigated",
        "incident.resolved",
        "incident.updated",
    )
    assert "public_alert.alert_resolved_v1" in subs["incident_io"]
    assert "private_alert.alert_resolved_v1" in subs["incident_io"]
    assert "public_escalation.escalation_status_updated_v1" in subs["incident_io"]
    assert "private_escalation.escalation_status_updated_v1" in subs["incident_io"]
    assert "public_incident.incident_created_v2" not in subs["incident_io"]
    assert set(subscriptions(settings(rootly={"enabled": False}), ruleset)) == {"incident_io"}


def test_only_conditions_the_variables_alone_decide_can_make_a_rule_dead() -> None:
    """An `expr` or `any` over variables only is decided (false: the rule never fires,
    naming each variable); one that also reads the event is left to the event."""
    text = """version: 1
variables: {{flag: false, sevs: []}}
rules:
  - name: r
    on: {{source: rootly, event: incident.created}}
    when:
      - {cond}
    links:
      - add: {{a: "{{{{ subject }}}}", b: "rootly:alert:x"}}
"""
    dead = [
        'expr: "{{ vars.flag }}"',
        'any: [{expr: "{{ vars.flag }}"}, {field: vars.sevs, not_equals: []}]',
    ]
    for cond in dead:
        (finding,) = check_setup(settings(), load_rules_text(text.format(cond=cond), "r.yaml"))
        assert finding.code == "rule_never_fires", cond
        assert finding.line == 7
        assert "env BRIDGE_RULE_VAR_FLAG" in finding.fix
    alive = [
        'expr: "{{ vars.flag or incident.severity }}"',
        'expr: "{{ not vars.flag }}"',
        "{field: incident.title, equals: x}",
    ]
    for cond in alive:
        assert check_setup(settings(), load_rules_text(text.format(cond=cond), "r.yaml")) == ()


def test_an_update_of_fields_its_target_owns_only_is_a_dead_flow() -> None:
    """A rule that copies the title to Rootly while Rootly owns the title never acts: a
    warning naming the owned field and the fix."""
    text = (
        "version: 1\nfields:\n  incident.title: {owner: rootly}\nrules:\n"
        "  - name: r\n"
        '    on: {source: incident_io, event: "*incident.incident_updated_v2"}\n'
        "    actions:\n"
        "      - do: rootly.update_incident\n"
        '        for_each: {linked: "rootly:incident"}\n'
        '        params: {title: "{{ incident.name }}"}\n'
    )
    (finding,) = check_setup(settings(), load_rules_text(text, "rules.yaml"))
    assert (finding.severity, finding.code, finding.line) == (
        "warning",
        "fields_owned_by_target",
        8,
    )
    assert "sets only fields that rootly owns (incident.title)" in finding.message
