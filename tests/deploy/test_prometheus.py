"""A real Prometheus scrapes a real `bridge serve --sandbox` and evaluates the chart's rules.

The alert rules are the ones the chart renders (tests/deploy/values-ha.yaml), loaded
unchanged: same expressions, same `for:`. Only Prometheus' scrape and evaluation intervals
are short (1 s), so a condition shows up within seconds. Each condition is caused the way
it happens in production, through the sandbox: deliveries with a bad signature, a broken
rules file, an incident.io outage (5xx) that ends in dead letters, and no replica left to
lead. The assertion is that each alert becomes active (pending; `BridgeRulesReloadFailed`,
which has no `for:`, fires at once) from the first occurrences, which needs the counters
to start at 0.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.sandbox.stack import DEFAULT_RULES
from tests.deploy.chart import NAMESPACE, RELEASE, Release, ha_values, render
from tests.served import ServedBridge, http_json
from tests.tools import free_port, tool

pytestmark = pytest.mark.slow

JOB = f"{RELEASE}-bridge"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": NAMESPACE, "$job": JOB}


class Prometheus:
    """A Prometheus server on loopback with its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query; the whole answer (status, data or error)."""
        try:
            answer: dict[str, Any] = self.api("/api/v1/query", query=expr)
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read())
        return answer

    def active_alerts(self) -> dict[str, str]:
        """alertname -> state (pending or firing) of every active alert."""
        alerts = self.api("/api/v1/alerts")["data"]["alerts"]
        return {a["labels"]["alertname"]: a["state"] for a in alerts}

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 90) -> None:
        """Poll `check` (bounded) until it holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()}")
            if check():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; alerts: {self.active_alerts()}")


def _rules(release: Release) -> dict[str, Any]:
    return {"groups": release.one("PrometheusRule")["spec"]["groups"]}


def _dashboard_queries(release: Release) -> list[str]:
    dashboard = json.loads(release.one("ConfigMap", "-dashboard")["data"]["bridge.json"])
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries


@pytest.fixture
def bridge_process(tmp_path: Path) -> Iterator[ServedBridge]:
    """`bridge serve --sandbox` with a rules file of its own (reloaded on change), two
    attempts before dead-lettering, and gauges refreshed every second."""
    rules_file = tmp_path / "rules.yaml"
    shutil.copyfile(DEFAULT_RULES, rules_file)
    config = {
        "server": {"host": "127.0.0.1", "shutdown_grace_seconds": 5},
        "store": {"url": f"sqlite:///{tmp_path}/bridge.db"},
        "rules": {"file": str(rules_file), "reload": True},
        "executor": {
            "max_attempts": 2,
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.2,
            "poll_interval_seconds": 0.2,
        },
        "scheduler": {"gauges_seconds": 1, "retry_sweep_seconds": 0.5},
        "logging": {"level": "info", "format": "json"},
    }
    served = ServedBridge(tmp_path, config).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def prometheus(tmp_path: Path, bridge_process: ServedBridge) -> Iterator[Prometheus]:
    """Debian's Prometheus scraping the bridge every second as job rel-bridge in namespace
    bridge-test (the labels the chart's rules select on), with the chart's rules loaded."""
    binary = tool("prometheus", "prometheus")
    release = render(ha_values())
    rules_file = tmp_path / "bridge-rules.yaml"
    rules_file.write_text(yaml.safe_dump(_rules(release)), encoding="utf-8")
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules_file)],
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "static_configs": [
                            {
                                "targets": [f"127.0.0.1:{bridge_process.port}"],
                                "labels": {"namespace": NAMESPACE},
                            }
                        ],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:

        def scraping() -> bool:
            try:
                targets = server.api("/api/v1/targets")["data"]["activeTargets"]
            except OSError:
                return False
            return any(t["health"] == "up" for t in targets)

        server.wait_for("the first successful scrape", scraping, timeout=60)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _active(prometheus: Prometheus, alert: str) -> bool:
    return alert in prometheus.active_alerts()


def _bad_signature_delivery(bridge: ServedBridge) -> int:
    body = json.dumps(
        {"event": {"id": "probe", "type": "incident.created", "issued_at": "now"}, "data": {}}
    ).encode()
    stamp = int(time.time())
    wrong = hmac.new(b"not-the-secret", str(stamp).encode() + body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"{bridge.url}/webhooks/rootly",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Rootly-Signature": f"t={stamp},v1={wrong}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_each_alert_goes_active_from_its_first_occurrences(
    bridge_process: ServedBridge, prometheus: Prometheus, tmp_path: Path
) -> None:
    """Signature failures, a failed rules reload, upstream 5xx with dead letters, and no
    leader each make the chart's alert for them active; every dashboard query evaluates
    without error; the scheduler counter keeps its `task` label (no `exported_job`)."""
    bridge = bridge_process
    # Until the first scrape that sees leadership, "no leader" is true; then all is quiet.
    prometheus.wait_for("a quiet start", lambda: prometheus.active_alerts() == {})

    # 1. Someone sends deliveries with a wrong signature (a rotated secret, a probe).
    def signature_alert() -> bool:
        assert _bad_signature_delivery(bridge) == 401
        return "BridgeWebhookSignatureFailures" in prometheus.active_alerts()

    prometheus.wait_for("BridgeWebhookSignatureFailures", signature_alert)

    # 2. A broken rules file is deployed: the reload fails, the old rules stay.
    (tmp_path / "rules.yaml").write_text("version: 1\nrules: [\n", encoding="utf-8")
    prometheus.wait_for(
        "BridgeRulesReloadFailed",
        lambda: "BridgeRulesReloadFailed" in prometheus.active_alerts(),
    )

    # 3. incident.io fails every API call; a Rootly incident's escalation is retried, then
    #    dead-lettered.
    http_json("PUT", f"{bridge.incident_io_url}/_sandbox/faults", {"error_rate": 1.0})
    http_json("POST", f"{bridge.rootly_url}/_sandbox/incidents", {"title": "DB down"})
    for alert in ("BridgeUpstreamErrors", "BridgeDeadLetters"):
        prometheus.wait_for(alert, partial(_active, prometheus, alert))

    # The dashboard's queries all evaluate, now that every kind of series exists.
    failures = {
        expr: answer.get("error")
        for expr in _dashboard_queries(render(ha_values()))
        if (answer := prometheus.query(expr))["status"] != "success"
    }
    assert failures == {}
    runs = prometheus.query(f'bridge_scheduler_job_runs_total{{job="{JOB}"}}')["data"]["result"]
    assert runs, "the scheduler counter is scraped"
    assert all("task" in r["metric"] and "exported_job" not in r["metric"] for r in runs)
    assert not prometheus.query("count({__name__=~'bridge_.*_created'})")["data"]["result"]

    states = prometheus.active_alerts()
    for alert in ("BridgeWebhookSignatureFailures", "BridgeUpstreamErrors", "BridgeDeadLetters"):
        assert states.get(alert) == "pending", (alert, states)
    assert states.get("BridgeRulesReloadFailed") == "firing", states

    # 4. The last replica goes away: nobody leads the scheduler.
    assert bridge.stop() == 0
    prometheus.wait_for(
        "BridgeNoLeader", lambda: prometheus.active_alerts().get("BridgeNoLeader") == "pending"
    )
