"""The bridge.yaml and rules the chart renders are accepted by `bridge check-config`.

The pod paths (/app/config/rules.yaml in the image, /etc/bridge/rules.yaml from the
ConfigMap) are mapped onto the repository's files; secrets come from the rendered Secret,
exactly as the pod's envFrom would provide them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import ROOT, default_values, ha_values, render

DEFAULT_RULES = ROOT / "config" / "rules.yaml"
# What the shipped rules need besides the chart's secrets, set the way an install sets it:
# the escalation path to page (a rule variable, as extra env), the alert source that
# receives Rootly alerts (its ID in config, its token as a secret) and the API key's ID.
NEEDED: dict[str, Any] = {
    "config": {
        "incident_io": {
            "alert_source_config_id": "01HTESTALERTSOURCE0000000000",
            "api_key_id": "01HTESTAPIKEY000000000000000",
        }
    },
    "secrets": {"incidentIoAlertSourceToken": "inc-test-alert-source-token-9z8y"},
    "extraEnv": [{"name": "BRIDGE_RULE_VAR_ESCALATION_PATH_ID", "value": "01HTESTPATH0000"}],
}


def merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def _require_cli() -> None:
    if importlib.util.find_spec("bridge.__main__") is None:
        pytest.skip("bridge CLI (bridge/__main__.py, bridge check-config) is not written yet")
    if not DEFAULT_RULES.is_file():
        pytest.skip(f"default rules {DEFAULT_RULES} are not written yet")


def _check_config(values: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    release = render(values)
    data = release.config_data()
    rules_path = tmp_path / "rules.yaml"
    if "rules.yaml" in data:
        rules_path.write_text(data["rules.yaml"], encoding="utf-8")
    else:
        rules_path.write_text(DEFAULT_RULES.read_text(encoding="utf-8"), encoding="utf-8")
    config = yaml.safe_load(data["bridge.yaml"])
    config["rules"]["file"] = str(rules_path)  # the pod path, mapped onto this machine
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env |= release.secret_env()
    # The container's literal env entries (extraEnv), except the pod paths: the config and
    # rules are mapped above, and the Secret's values (mounted as files in the pod) come
    # as environment variables here.
    pod_paths = ("BRIDGE_CONFIG", "BRIDGE_RULES_FILE", "BRIDGE_SECRETS_DIR")
    env |= {
        entry["name"]: entry["value"]
        for entry in release.container().get("env", [])
        if "value" in entry and entry["name"] not in pod_paths
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "check-config",
            "--config",
            str(config_path),
            "--rules",
            str(rules_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_default_install_config_passes_check_config(tmp_path: Path) -> None:
    """Default values + secrets + what the default rules need: the rendered config with the
    image's rules is valid and every flow can fire."""
    _require_cli()
    result = _check_config(merged(default_values(), NEEDED), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flows ok" in result.stdout


def test_default_install_without_the_escalation_path_names_the_fix(tmp_path: Path) -> None:
    """Default values + secrets only: check-config exits 2 and says which rule variable and
    which settings the default rules still need."""
    _require_cli()
    result = _check_config(default_values(), tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "BRIDGE_RULE_VAR_ESCALATION_PATH_ID" in result.stdout
    assert "incident_io.alert_source_config_id" in result.stdout


def test_ha_install_with_custom_rules_passes_check_config(tmp_path: Path) -> None:
    """HA values with rules shipped through the ConfigMap: config and rules are valid."""
    _require_cli()
    values = merged(ha_values(), NEEDED) | {"rules": DEFAULT_RULES.read_text(encoding="utf-8")}
    result = _check_config(values, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
