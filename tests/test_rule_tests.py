"""`bridge test-rules`: rule unit tests in YAML, run by the real command.

The shipped tests in config/tests/ cover every default rule and pass; a wrong expectation
fails with a diff (exit 1); a test file that cannot be run is exit 2 with file:line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_cli import ROOT, no_traceback, run

RULES = ROOT / "config" / "rules.yaml"

TEST_FILE = """\
rules: {rules}
variables: {{escalation_path_id: P1}}
tests:
  - name: pages
    source: rootly
    event:
      event: {{id: d1, type: incident.created}}
      data: {{id: inc-1, title: DB down, severity: {{slug: sev1}}}}
    expect:
      actions:
        - do: incident_io.create_escalation
          params: {{title: {title}, escalation_path_id: P1}}
"""


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_rule_tests_pass_and_make_every_default_rule_fire() -> None:
    """`bridge test-rules` with no argument runs config/tests/ (beside the rules file):
    every test passes, and no default rule is left without a test that makes it fire."""
    result = run("test-rules", env={"BRIDGE_CONFIG": str(ROOT / "config" / "bridge.yaml")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no test makes these rules fire" not in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("test-rules: ") and summary.endswith(" passed, 0 failed")
    assert int(summary.split()[1]) >= 20


def test_a_wrong_expectation_fails_with_a_diff(tmp_path: Path) -> None:
    """A title that differs: exit 1, the test's file:line and name, a diff of the param."""
    path = write(tmp_path, TEST_FILE.format(rules=RULES, title="DB is down"))
    result = run("test-rules", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAIL {path}:4: pages" in result.stdout
    assert "-    title: DB is down" in result.stdout
    assert "+    title: DB down" in result.stdout
    assert "test-rules: 1 tests, 0 passed, 1 failed" in result.stdout
    ok = write(tmp_path, TEST_FILE.format(rules=RULES, title="DB down"), "ok.yaml")
    assert run("test-rules", str(ok)).returncode == 0


def test_unexpected_and_missing_actions_and_links_fail(tmp_path: Path) -> None:
    """Expecting nothing where the rules act, or a link they do not add, is a failure."""
    text = TEST_FILE.format(rules=RULES, title="DB down").split("    expect:")[0]
    text += "    expect:\n      links:\n        - add: [rootly:incident:inc-1, rootly:alert:a1]\n"
    result = run("test-rules", str(write(tmp_path, text)))
    assert result.returncode == 1
    assert "+- do: incident_io.create_escalation" in result.stdout
    assert "-- add rootly:alert:a1 <-> rootly:incident:inc-1" in result.stdout


def test_a_bad_test_file_is_exit_2_with_file_and_line(tmp_path: Path) -> None:
    """An unknown key (with the key meant), an unknown variable, a body that is not the
    source's webhook, a missing event file: exit 2 naming file and line; no traceback."""
    good = TEST_FILE.format(rules=RULES, title="DB down")
    inline_event = good.split("    event:\n")[1].split("    expect:")[0]
    cases = {
        good.replace("    expect:", "    expcet:"): ":9: tests.0.expcet: unknown key "
        "(did you mean 'expect'?)",
        good.replace("escalation_path_id: P1}", "escalation_path: P1}"): ":2: variable "
        "'escalation_path' is not defined in",
        good.replace("source: rootly", "source: incident_io"): ":6: not a webhook body of "
        "incident_io: 'event_type' must be a non-empty string",
        good.replace("    event:\n" + inline_event, "    event_file: nowhere.json\n"): ":6: "
        "event_file ",
    }
    for text, expected in cases.items():
        path = write(tmp_path, text)
        result = run("test-rules", str(path))
        assert result.returncode == 2, (text, result.stdout, result.stderr)
        assert f"bridge: {path}{expected}" in result.stderr, result.stderr
        no_traceback(result)


def test_rules_flag_tests_another_rules_file(tmp_path: Path) -> None:
    """`--rules` runs the tests against another rules file: the shipped tests fail against
    a copy whose rule 1 is switched off."""
    rules = tmp_path / "rules.yaml"
    text = RULES.read_text().replace(
        "on: {source: rootly, event: incident.created}",
        "enabled: false\n    on: {source: rootly, event: incident.created}",
    )
    rules.write_text(text)
    shutil.copytree(ROOT / "config" / "tests", tmp_path / "tests")
    result = run("test-rules", "--rules", str(rules), str(tmp_path / "tests"))
    assert result.returncode == 1
    assert "a new Rootly incident pages the escalation path" in result.stdout


SWITCHED_OFF = """\
rules: {rules}
tests:
  - name: rule 17 on
    source: rootly
    enable: [{enable}]
{fields}    event:
      event: {{id: d1, type: incident.updated}}
      data: {{id: inc-1, status: started, title: New}}
    previous: {{status: started, title: Old}}
    links: [[rootly:incident:inc-1, incident_io:incident:I1]]
    expect:
      actions:
        - {{do: incident_io.edit_incident, target: "incident_io:incident:I1"}}
"""


def test_switched_off_rules_are_tested_with_enable_and_field_owners(tmp_path: Path) -> None:
    """`enable:` switches a shipped-off rule on for a test, `fields:` sets owners over the
    file's: rule 17 then edits the incident.io incident. Switched on beside rule 8 without
    an owner the rules do not load (exit 2, naming the field); an unknown rule to enable and
    a `previous` state for an incident.io event (whose webhooks carry their own) are exit 2
    too."""
    owners = (
        "    fields: {incident.title: {owner: rootly}, incident.summary: {owner: rootly},"
        " incident.severity: {owner: incident_io}}\n"
    )
    ok = SWITCHED_OFF.format(rules=RULES, enable="rootly-update-syncs-incident-io", fields=owners)
    result = run("test-rules", str(write(tmp_path, ok)))
    assert result.returncode == 0, result.stdout + result.stderr
    bad = {
        SWITCHED_OFF.format(
            rules=RULES, enable="rootly-update-syncs-incident-io", fields=""
        ): "incident.severity is written to both platforms",
        SWITCHED_OFF.format(rules=RULES, enable="no-such-rule", fields=""): (
            "no rule to switch on called no-such-rule"
        ),
        ok.replace("source: rootly", "source: incident_io").replace(
            "event:\n      event: {id: d1, type: incident.updated}\n"
            "      data: {id: inc-1, status: started, title: New}",
            "event:\n      event_type: public_incident.incident_updated_v2\n"
            "      public_incident.incident_updated_v2: {id: I1, name: New}",
        ): "previous: the bridge records no state of incident_io:incident:I1",
    }
    for text, words in bad.items():
        path = write(tmp_path, text, "bad.yaml")
        result = run("test-rules", str(path))
        assert result.returncode == 2, (text, result.stdout, result.stderr)
        assert words in result.stderr, result.stderr
        no_traceback(result)
