"""`promtool test rules` unit tests (tests/deploy/alerts_test.yaml) for every shipped alert."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.deploy.chart import ha_values, render
from tests.tools import tool

ALERT_TESTS = Path(__file__).resolve().parent / "alerts_test.yaml"


def _shipped_alerts() -> set[str]:
    groups = render(ha_values()).one("PrometheusRule")["spec"]["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_shipped_alert_has_a_unit_test() -> None:
    """Each alert in the chart's PrometheusRule is exercised by alerts_test.yaml, which
    tests no alert that does not exist."""
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == _shipped_alerts()


def test_promtool_unit_tests_pass_on_the_rendered_rules(tmp_path: Path) -> None:
    """`promtool test rules` passes against the rules exactly as the chart renders them:
    each alert stays quiet when healthy and fires, with its labels and annotations, once
    its condition has held for its `for:`."""
    promtool = tool("promtool", "prometheus")
    groups = render(ha_values()).one("PrometheusRule")["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    shutil.copyfile(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
