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
    """Default values + secrets: the rendered config with the image's rules is valid."""
    _require_cli()
    result = _check_config(default_values(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ha_install_with_custom_rules_passes_check_config(tmp_path: Path) -> None:
    """HA values with rules shipped through the ConfigMap: config and rules are valid."""
    _require_cli()
    values = ha_values() | {"rules": DEFAULT_RULES.read_text(encoding="utf-8")}
    result = _check_config(values, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
