"""The examples the docs point at (docs/examples/) render, validate and do what they say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bridge import __version__
from bridge.config import load_settings
from bridge.doctor import rule_findings
from bridge.rules import load_rules
from tests.deploy.chart import ROOT, render

EXAMPLES = ROOT / "docs" / "examples"
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def _values(*names: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in names:
        loaded = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
        merged.update(loaded)
    return merged


def test_production_values_set_what_the_default_rules_need(tmp_path: Path) -> None:
    """docs/kubernetes.md's install (values-production.yaml) uses the pushed image, an
    existing Secret, and sets api_key_id, the alert source and the escalation path: the
    rendered config and environment pass the doctor's rule checks with no failure."""
    release = render(_values("values-production.yaml"))
    container = release.container()
    assert container["image"] == f"registry.example.com/platform/bridge:{__version__}"
    bridge_yaml = tmp_path / "bridge.yaml"
    bridge_yaml.write_text(release.config_data()["bridge.yaml"], encoding="utf-8")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["BRIDGE_RULE_VAR_ESCALATION_PATH_ID"]
    secrets = {
        "BRIDGE_ROOTLY__API_TOKEN": "rootly-token-example-0123",
        "BRIDGE_ROOTLY__WEBHOOK_SECRET": "rootly-webhook-secret-0123",
        "BRIDGE_INCIDENT_IO__API_KEY": "inc-api-key-example-0123",
        "BRIDGE_INCIDENT_IO__WEBHOOK_SECRET": "whsec_ZXhhbXBsZS13ZWJob29rLXNlY3JldA==",
        "BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN": "alert-source-token-0123",
    }
    settings = load_settings(
        bridge_yaml,
        environ=secrets,
        overrides={"rules": {"file": str(ROOT / "config" / "rules.yaml")}},
    )
    rules = load_rules(settings.rules.file, env)
    failures = [f.message for f in rule_findings(settings, rules) if f.level == "fail"]
    assert failures == []
    bare = load_rules(settings.rules.file, {})
    assert [f for f in rule_findings(settings, bare) if f.level == "fail"], (
        "without the escalation path the doctor fails: the check above is real"
    )


def test_cert_manager_example_gives_an_https_endpoint() -> None:
    """values-cert-manager.yaml: the Ingress asks cert-manager for a certificate for its
    host, serves it from the tls Secret, and the install notes print https URLs."""
    release = render(_values("values-production.yaml", "values-cert-manager.yaml"))
    ingress = release.one("Ingress")
    assert "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"]
    [tls] = ingress["spec"]["tls"]
    assert tls["hosts"] == [r["host"] for r in ingress["spec"]["rules"]]
    notes = release.files["bridge/templates/NOTES.txt"]
    assert "https://bridge.example.com/webhooks/rootly" in notes
    assert "no TLS" not in notes


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_backup_cronjob_example_is_valid_and_matches_the_chart(kube_version: str) -> None:
    """backup-cronjob.yaml validates (strict) against Kubernetes, runs `bridge db backup`
    from the chart's default image on the chart's data volume, next to the bridge pod."""
    documents = list(yaml.safe_load_all((EXAMPLES / "backup-cronjob.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, kube_version, strict=True)
    cronjob = next(d for d in documents if d["kind"] == "CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "bridge db backup /backups" in " ".join(container["args"])
    release = render({"secrets": {"existingSecret": "bridge-credentials"}})
    # The example assumes release "bridge"; the chart names things after the release.
    assert container["image"] == release.container()["image"] == f"bridge:{__version__}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "bridge-data"
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "bridge",
        "app.kubernetes.io/instance": "bridge",
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_docs_build_the_image_the_chart_installs_by_default() -> None:
    """docs/kubernetes.md builds `bridge:$VERSION` with VERSION the package version, which
    is the chart's default image (repository `bridge`, tag = appVersion)."""
    text = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    assert f"VERSION={__version__}" in text
    assert 'docker build -t "bridge:$VERSION"' in text
    chart = yaml.safe_load((ROOT / "helm" / "bridge" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    release = render({"secrets": {"existingSecret": "x"}})
    assert release.container()["image"] == f"bridge:{__version__}"
