"""Alert rules and the Grafana dashboard use only metrics the bridge really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from bridge.metrics import create_metrics
from tests.deploy.chart import CHART_DIR, Release, ha_values, render
from tests.tools import tool

METRIC_NAME = re.compile(r"\bbridge_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _exported() -> tuple[set[str], set[str]]:
    """(metric family names as exposed, histogram family names) from create_metrics."""
    registry = CollectorRegistry()
    create_metrics(registry)
    families: dict[str, str] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            # prometheus_client's *_created series are creation timestamps, not metrics
            # anyone charts or alerts on.
            if not name.endswith("_created"):
                families[name] = kind
    histograms = {name for name, kind in families.items() if kind == "histogram"}
    return set(families), histograms


def _unknown(names: set[str]) -> set[str]:
    families, histograms = _exported()
    unknown = set()
    for name in names:
        if name in families:
            continue
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), "")
        if base not in histograms:
            unknown.add(name)
    return unknown


@pytest.fixture(scope="module")
def release() -> Release:
    """The HA render, which switches on the ServiceMonitor, rules and dashboard."""
    return render(ha_values())


def _rules(release: Release) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = release.one("PrometheusRule")["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard(release: Release) -> dict[str, Any]:
    configmap = release.one("ConfigMap", "-dashboard")
    dashboard: dict[str, Any] = json.loads(configmap["data"]["bridge.json"])
    return dashboard


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [
        str(target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    queries += [
        str(v["query"]["query"])
        for v in dashboard["templating"]["list"]
        if "query" in v and isinstance(v["query"], dict)
    ]
    return queries


def test_alert_expressions_use_exported_metrics(release: Release) -> None:
    """Every bridge_* name in an alert expression is exported by create_metrics()."""
    names = {n for rule in _rules(release) for n in METRIC_NAME.findall(rule["expr"])}
    assert names, "no metric found in the alert rules"
    assert _unknown(names) == set()


def test_required_alerts_exist_and_select_this_release(release: Release) -> None:
    """Dead letters, signatures, outbox lag, upstream errors and leadership are alerted on."""
    rules = {rule["alert"]: rule for rule in _rules(release)}
    for alert in (
        "BridgeDeadLetters",
        "BridgeWebhookSignatureFailures",
        "BridgeOutboxBacklog",
        "BridgeEventToActionSlow",
        "BridgeUpstreamErrors",
        "BridgeNoLeader",
    ):
        assert alert in rules, alert
        assert 'job="rel-bridge"' in rules[alert]["expr"], alert
        assert rules[alert]["labels"]["team"] == "sre"
    assert 'reason="signature"' in rules["BridgeWebhookSignatureFailures"]["expr"]
    assert "absent(bridge_leader" in rules["BridgeNoLeader"]["expr"]
    assert rules["BridgeDeadLetters"]["for"] == "10m"


def test_dashboard_uses_exported_metrics_and_covers_them(release: Release) -> None:
    """Dashboard queries name only exported metrics, and every exported family is charted."""
    dashboard = _dashboard(release)
    names = {n for q in _dashboard_queries(dashboard) for n in METRIC_NAME.findall(q)}
    assert _unknown(names) == set()
    families, _ = _exported()
    charted = {n.removesuffix("_bucket") for n in names}
    assert families - charted == set(), "add the new metric to helm/bridge/files/dashboard.json"


def test_dashboard_configmap_is_picked_up_by_the_grafana_sidecar(release: Release) -> None:
    """The dashboard ConfigMap carries grafana_dashboard="1" and well-formed, unique panels."""
    configmap = release.one("ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = _dashboard(release)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "bridge-overview"
    shipped = json.loads((CHART_DIR / "files" / "dashboard.json").read_text(encoding="utf-8"))
    assert shipped == dashboard


def test_promtool_accepts_the_rules(release: Release, tmp_path: Path) -> None:
    """`promtool check rules` accepts the rule groups from the PrometheusRule."""
    promtool = tool("promtool", "prometheus")
    rules_file = tmp_path / "rules.yaml"
    groups = release.one("PrometheusRule")["spec"]["groups"]
    rules_file.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_dashboard_queries(release: Release, tmp_path: Path) -> None:
    """Every dashboard query parses as PromQL (checked as recording rules by promtool)."""
    promtool = tool("promtool", "prometheus")
    grafana_vars = {"$__rate_interval": "5m", "$namespace": "ns", "$job": "job"}
    records = []
    for index, target in enumerate(
        t for panel in _dashboard(release)["panels"] for t in panel.get("targets", [])
    ):
        expr = str(target["expr"])
        for variable, value in grafana_vars.items():
            expr = expr.replace(variable, value)
        records.append({"record": f"dashboard:query_{index}", "expr": expr})
    rules_file = tmp_path / "dashboard.yaml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}), encoding="utf-8"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
