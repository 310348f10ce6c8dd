"""Render the Helm chart with the real Helm engine (helm-python-sdk) for the deploy tests.

Owns the fixture values (test secrets, the HA values file) and turns a rendered release
into parsed manifests, so each test reads objects rather than YAML text.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "bridge"
HA_VALUES_FILE = Path(__file__).resolve().parent / "values-ha.yaml"
RELEASE = "rel"
NAMESPACE = "bridge-test"

# Realistic-looking test fixtures (the bridge refuses placeholders such as "changeme").
TEST_SECRETS: dict[str, str] = {
    "rootlyApiToken": "rootly-test-token-9c8b7a6f5e",
    "rootlyWebhookSecret": "rootly-test-webhook-secret-1d2e",
    "incidentIoApiKey": "inc-test-api-key-0a1b2c3d4e",
    "incidentIoWebhookSecret": "whsec_dGVzdC13ZWJob29rLXNlY3JldC1kZWZhdWx0",
    "adminToken": "admin-test-token-7e6d5c4b3a",
}


def default_values() -> dict[str, Any]:
    """The chart defaults plus the secrets an install must provide."""
    return {"secrets": dict(TEST_SECRETS)}


def ha_values() -> dict[str, Any]:
    """tests/deploy/values-ha.yaml: PostgreSQL, 3 replicas, HPA, monitoring on."""
    loaded = yaml.safe_load(HA_VALUES_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@dataclass(frozen=True)
class Release:
    """A rendered release: template path -> text, and the parsed manifests."""

    files: dict[str, str]
    manifests: tuple[dict[str, Any], ...]

    def kinds(self) -> list[str]:
        """Kinds of every manifest, in render order."""
        return [str(m["kind"]) for m in self.manifests]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        """The single manifest of `kind` (whose name ends with `name_suffix`)."""
        found = [
            m
            for m in self.manifests
            if m["kind"] == kind and str(m["metadata"]["name"]).endswith(name_suffix)
        ]
        assert len(found) == 1, f"expected one {kind}*{name_suffix}, got {len(found)}"
        return found[0]

    def has(self, kind: str) -> bool:
        """Whether any manifest of `kind` was rendered."""
        return kind in self.kinds()

    def container(self) -> dict[str, Any]:
        """The bridge container of the Deployment."""
        containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        assert isinstance(containers, list)
        assert len(containers) == 1
        container: dict[str, Any] = containers[0]
        return container

    def config_data(self) -> dict[str, str]:
        """The `data` of the bridge ConfigMap (bridge.yaml, maybe rules.yaml)."""
        data: dict[str, str] = self.one("ConfigMap", f"{RELEASE}-bridge")["data"]
        return data

    def secret_env(self) -> dict[str, str]:
        """The chart-created Secret, decoded: env var name -> value."""
        data: dict[str, str] = self.one("Secret", f"{RELEASE}-bridge")["data"]
        return {key: base64.b64decode(value).decode() for key, value in data.items()}


def render(values: dict[str, Any]) -> Release:
    """Render the chart offline with `values`; raises helm_python.HelmError on refusal."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    manifests: list[dict[str, Any]] = []
    for path in sorted(files):
        if not path.endswith(".yaml"):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(files[path]):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                manifests.append(doc)
    return Release(files=files, manifests=tuple(manifests))
