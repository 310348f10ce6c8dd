"""The Helm chart renders to valid, hardened Kubernetes objects and refuses unsafe values."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import (
    CHART_DIR,
    Release,
    default_values,
    ha_values,
    render,
)
from tests.deploy.crds import crd_problems

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema
# kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
CRD_GROUPS = ("monitoring.coreos.com/",)


def _variants() -> dict[str, dict[str, Any]]:
    return {"default": default_values(), "ha": ha_values()}


@pytest.fixture(scope="module")
def default_release() -> Release:
    """The chart rendered with its defaults plus the required secrets."""
    return render(default_values())


@pytest.fixture(scope="module")
def ha_release() -> Release:
    """The chart rendered with tests/deploy/values-ha.yaml."""
    return render(ha_values())


@pytest.mark.parametrize("variant", ["default", "ha"])
def test_helm_lint_strict_passes(variant: str) -> None:
    """`helm lint --strict` reports no warning or error for the default and the HA values."""
    for kube_version in (None, "v1.27.0"):
        report = helm_python.lint(
            CHART_DIR, values=_variants()[variant], strict=True, kube_version=kube_version
        )
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [], report
        assert problems == [], problems


def test_default_render_is_one_hardened_sqlite_pod(default_release: Release) -> None:
    """Defaults give one SQLite pod on a kept PVC, recreated (never two) on rollout."""
    release = default_release
    assert sorted(release.kinds()) == sorted(
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "Secret",
            "Service",
            "ServiceAccount",
        ]
    )
    deployment = release.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pvc = release.one("PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "emptyDir" in volumes["tmp"]
    bridge_yaml = yaml.safe_load(release.config_data()["bridge.yaml"])
    assert bridge_yaml["store"]["url"] == "sqlite:////data/bridge.db"
    assert bridge_yaml["server"]["host"] == "0.0.0.0"
    assert bridge_yaml["rules"]["file"] == "/app/config/rules.yaml"
    assert "rules.yaml" not in release.config_data()


@pytest.mark.parametrize("variant", ["default", "ha"])
def test_pod_is_hardened_and_probed(variant: str) -> None:
    """Non-root, read-only root FS, no capabilities, RuntimeDefault seccomp, three probes."""
    release = render(_variants()[variant])
    pod = release.one("Deployment")["spec"]["template"]["spec"]
    container = release.container()
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/etc/bridge", "/data", "/tmp", "/var/run/secrets/bridge"}
    assert mounts["/etc/bridge"]["readOnly"] is True
    assert mounts["/var/run/secrets/bridge"]["readOnly"] is True
    bridge_yaml = yaml.safe_load(release.config_data()["bridge.yaml"])
    grace = bridge_yaml["server"]["shutdown_grace_seconds"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace


def test_ha_render_scales_on_postgresql(ha_release: Release) -> None:
    """HA values: PostgreSQL URL only in the Secret, HPA owns replicas, PDB and monitoring on."""
    release = ha_release
    deployment = release.one("Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    hpa = release.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 6)
    assert release.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    for kind in ("ServiceMonitor", "PrometheusRule", "Ingress"):
        assert release.has(kind), kind
    assert not release.has("PersistentVolumeClaim")
    bridge_yaml = yaml.safe_load(release.config_data()["bridge.yaml"])
    assert "store" not in bridge_yaml, "the PostgreSQL URL (with password) belongs in the Secret"
    env = release.secret_env()
    assert env["BRIDGE_STORE__URL"].startswith("postgresql://")
    assert env["BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN"]
    egress_ports = {
        p["port"] for rule in release.one("NetworkPolicy")["spec"]["egress"] for p in rule["ports"]
    }
    assert egress_ports == {53, 443, 5432}
    paths = release.one("Ingress")["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == ["/webhooks/"], "only webhooks are public"


def test_ha_without_autoscaling_sets_replicas() -> None:
    """PostgreSQL without an HPA renders the requested replica count."""
    values = ha_values()
    values["autoscaling"] = {"enabled": False}
    assert render(values).one("Deployment")["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"replicaCount": 2}, "store.type=sqlite supports exactly one replica (replicaCount=2)"),
        ({"autoscaling": {"enabled": True}}, "autoscaling.enabled=true is refused"),
    ],
)
def test_sqlite_refuses_more_than_one_replica(override: dict[str, Any], message: str) -> None:
    """SQLite with replicas > 1 or an HPA fails to render, naming the fix (PostgreSQL)."""
    values = default_values() | override
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(values)
    assert message in str(caught.value)
    assert "store.type=postgresql" in str(caught.value)


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({}, "secrets.adminToken is required"),
        ({"adminToken": "changeme"}, 'secrets.adminToken is a placeholder ("changeme")'),
    ],
)
def test_secrets_are_required_and_not_placeholders(secrets: dict[str, str], message: str) -> None:
    """Without an existingSecret, missing or placeholder secrets refuse to render."""
    values = default_values()
    values["secrets"] = values["secrets"] | secrets if secrets else {}
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(values)
    assert message in str(caught.value)


def test_postgresql_requires_a_store_url() -> None:
    """store.type=postgresql without secrets.storeUrl fails with a clear message."""
    values = default_values() | {"store": {"type": "postgresql"}}
    with pytest.raises(helm_python.HelmRenderError, match=r"secrets\.storeUrl is required"):
        render(values)


def test_existing_secret_replaces_the_chart_secret() -> None:
    """With secrets.existingSecret the chart creates no Secret and mounts the named one."""
    release = render({"secrets": {"existingSecret": "bridge-creds"}})
    assert not release.has("Secret")
    volumes = release.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    secret_volume = next(v for v in volumes if v["name"] == "secrets")
    assert secret_volume["secret"]["secretName"] == "bridge-creds"


@pytest.mark.parametrize("variant", ["default", "ha"])
def test_secrets_are_mounted_as_files_that_rotate_without_a_restart(variant: str) -> None:
    """The Secret is a whole-directory volume (no subPath: the kubelet updates it in place)
    named by BRIDGE_SECRETS_DIR, not environment variables (those never change in a running
    process and would shadow the files); a secret change rolls no pods."""
    release = render(_variants()[variant])
    container = release.container()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BRIDGE_SECRETS_DIR"] == "/var/run/secrets/bridge"
    assert not any("secretRef" in source for source in container.get("envFrom", []))
    mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
    assert mount["mountPath"] == "/var/run/secrets/bridge" and "subPath" not in mount
    annotations = release.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


@pytest.mark.parametrize(
    ("tls", "scheme"), [([], "http"), ([{"secretName": "t", "hosts": ["b.example.com"]}], "https")]
)
def test_notes_print_https_only_when_tls_is_set(tls: list[dict[str, Any]], scheme: str) -> None:
    """The webhook URLs in NOTES use https only for hosts that ingress.tls covers, and warn
    about a host without TLS."""
    values = default_values() | {
        "ingress": {"enabled": True, "hosts": [{"host": "b.example.com"}], "tls": tls}
    }
    notes = render(values).files["bridge/templates/NOTES.txt"]
    assert f"Rootly:      {scheme}://b.example.com/webhooks/rootly" in notes
    assert f"incident.io: {scheme}://b.example.com/webhooks/incident-io" in notes
    assert ("no TLS for b.example.com" in notes) == (scheme == "http")


def test_chart_owned_config_keys_are_refused() -> None:
    """Setting a key the chart manages (here a secret) under `config` fails, naming the value."""
    values = default_values() | {"config": {"rootly": {"api_token": "tok-123"}}}
    with pytest.raises(helm_python.HelmRenderError, match=r"set secrets\.rootlyApiToken"):
        render(values)


def test_schema_rejects_unknown_top_level_keys() -> None:
    """values.schema.json catches a typo such as `replicas` for `replicaCount`."""
    values = default_values() | {"replicas": 3}
    with pytest.raises(helm_python.HelmValuesError, match="replicas"):
        render(values)


def test_custom_rules_ship_in_the_configmap_and_roll_the_pods() -> None:
    """A `rules` value lands in rules.yaml, becomes the rules file, and changes the checksum."""
    base = render(default_values())
    values = default_values() | {"rules": "rules: []\n"}
    custom = render(values)
    assert custom.config_data()["rules.yaml"] == "rules: []\n"
    assert yaml.safe_load(custom.config_data()["bridge.yaml"])["rules"]["file"] == (
        "/etc/bridge/rules.yaml"
    )
    env = {e["name"]: e.get("value") for e in custom.container()["env"]}
    assert env["BRIDGE_RULES_FILE"] == "/etc/bridge/rules.yaml"

    def checksum(release: Release) -> str:
        annotations = release.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum(base) != checksum(custom)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", ["default", "ha"])
def test_manifests_match_kubernetes_schemas(variant: str, kube_version: str) -> None:
    """Every rendered object validates (strict: no unknown fields) against the k8s schemas,
    the ServiceMonitor and PrometheusRule against the prometheus-operator CRD schemas."""
    release = render(_variants()[variant])
    problems: list[str] = []
    for manifest in release.manifests:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if str(manifest["apiVersion"]).startswith(CRD_GROUPS):
            problems += [f"{name}: {p}" for p in crd_problems(manifest)]
            continue
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{name}: {str(error).splitlines()[0]}")
    assert problems == []


def test_crd_validation_catches_what_the_api_server_would_refuse(ha_release: Release) -> None:
    """The CRD check is real: a misspelt endpoint field, a bad `for:` duration and a rule
    with no expression are each reported; the rendered resources are clean."""
    import copy

    monitor = copy.deepcopy(ha_release.one("ServiceMonitor"))
    assert crd_problems(monitor) == []
    monitor["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    assert any("scrapeTimout" in p for p in crd_problems(monitor))
    rule = copy.deepcopy(ha_release.one("PrometheusRule"))
    assert crd_problems(rule) == []
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    del rule["spec"]["groups"][0]["rules"][1]["expr"]
    problems = crd_problems(rule)
    assert any("ten minutes" in p for p in problems), problems
    assert any("'expr' is a required property" in p for p in problems), problems


def test_values_schema_config_is_generated_from_the_settings_models() -> None:
    """The committed values.schema.json is what `make schema` writes: its `config` subtree
    is the settings models' schema (run `make schema` after changing bridge/config.py)."""
    import json

    from bridge.chartschema import render as render_schema

    path = CHART_DIR / "values.schema.json"
    committed = path.read_text(encoding="utf-8")
    assert render_schema(json.loads(committed)) == committed


@pytest.mark.parametrize(
    ("config", "word"),
    [
        ({"executor": {"max_attempt": 5}}, "max_attempt"),
        ({"scheduler": {"reconcile_seconds": "often"}}, "reconcile_seconds"),
        ({"logging": {"level": "verbose"}}, "level"),
        ({"rootly": {"max_concurrency": 0}}, "max_concurrency"),
    ],
)
def test_nested_config_mistakes_fail_at_install(config: dict[str, Any], word: str) -> None:
    """A typo or bad value deep in `config` fails `helm install`, naming the key, instead
    of installing a bridge that refuses to start."""
    values = default_values() | {"config": config}
    with pytest.raises(helm_python.HelmValuesError, match=word):
        render(values)


def test_postgresql_upgrades_the_schema_in_a_hook_job_before_new_pods(
    ha_release: Release,
) -> None:
    """PostgreSQL: a pre-install/pre-upgrade hook Job runs `bridge db upgrade` with the
    store URL from a hook Secret made before it, hardened like the Deployment, with labels
    the Service does not select; SQLite renders no Job."""
    job = ha_release.one("Job")
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert container["image"] == ha_release.container()["image"]
    assert container["securityContext"] == ha_release.container()["securityContext"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BRIDGE_CONFIG"] == "/dev/null"
    secret = ha_release.one("Secret", "-migrate")
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == hooks["helm.sh/hook"]
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        hooks["helm.sh/hook-weight"]
    )
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert set(secret["data"]) == {"BRIDGE_STORE__URL"}
    selector = ha_release.one("Service")["spec"]["selector"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= labels.items(), "the Service must not route to the Job"
    assert "serviceAccountName" not in pod, "the chart's account does not exist at pre-install"
    existing = ha_values() | {"secrets": {"existingSecret": "creds"}}
    release = render(existing)
    assert not release.has("Secret")
    assert any(
        v.get("secret", {}).get("secretName") == "creds"
        for v in release.one("Job")["spec"]["template"]["spec"]["volumes"]
    )


def test_sqlite_has_no_migration_job(default_release: Release) -> None:
    """SQLite (one pod, migrated at start) renders no hook Job."""
    assert not default_release.has("Job")
