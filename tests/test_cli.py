"""The `bridge` command line, run as a real subprocess: exit codes and one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.store.store import Store
from tests import specs
from tests.conftest import SECRET_ENV
from tests.store.factories import action, complete, delivery

ROOT = Path(__file__).resolve().parent.parent


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def test_version() -> None:
    """`bridge --version` prints the version and exits 0."""
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("bridge 0.")


# What the shipped rules need besides the secrets: the escalation path to page, the alert
# source that receives Rootly alerts, the ID of the bridge's API key (echo guard).
COMPLETE_ENV = {
    **SECRET_ENV,
    "BRIDGE_RULE_VAR_ESCALATION_PATH_ID": "01HPATH00000000000000000000",
    "BRIDGE_INCIDENT_IO__ALERT_SOURCE_CONFIG_ID": "01HSOURCE00000000000000000",
    "BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN": "alert-source-token-for-tests",
    "BRIDGE_INCIDENT_IO__API_KEY_ID": "01HKEY00000000000000000000",
}


def test_check_config_ok_prints_summary() -> None:
    """The shipped config and rules with what they need pass check-config (exit 0)."""
    result = run("check-config", env=COMPLETE_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config ok" in result.stdout
    assert "rules ok" in result.stdout
    assert "rootly-incident-opens-escalation" in result.stdout
    assert "flows ok" in result.stdout


def test_check_config_finds_the_dead_flows_of_a_fresh_install() -> None:
    """Secrets only: rule 1 can never fire (empty escalation path) and rules 2, 4 and 14
    have no alert source: exit 2, each with file:line, rule and the variable or key to set."""
    result = run("check-config", env=SECRET_ENV)
    assert result.returncode == 2, result.stdout + result.stderr
    out = result.stdout
    assert (
        "error: config/rules.yaml:61: rule 'rootly-incident-opens-escalation': can never fire"
    ) in out
    assert "fix: set variable 'escalation_path_id' (env BRIDGE_RULE_VAR_ESCALATION_PATH_ID" in out
    assert "rule 'rootly-alert-fires-incident-io-alert': actions[0] sends incident.io alert" in out
    assert "warning: incident_io.api_key_id is not set" in out
    assert result.stderr.strip().endswith("bridge: check-config: 4 errors, 1 warning")
    no_traceback(result)


def test_check_config_rejects_a_field_copied_both_ways_without_an_owner(tmp_path: Path) -> None:
    """The shipped rules with rule 17 switched on beside rule 8 copy title, summary and
    severity both ways: check-config exits 2 naming the rule, the line and the fix; with an
    owner for each field it passes."""
    text = (ROOT / "config" / "rules.yaml").read_text()
    text = text.replace("    enabled: false\n", "")
    both = tmp_path / "both.yaml"
    both.write_text(text)
    result = run("check-config", "--no-secrets", "--rules", str(both))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"bridge: invalid rules: {both}:" in result.stderr
    assert "rule 'rootly-update-syncs-incident-io': incident.severity is written to both" in (
        result.stderr
    )
    assert "name its owner, e.g. 'fields: {incident.severity: {owner: rootly}}'" in result.stderr
    no_traceback(result)
    owners = "".join(
        f"  incident.{name}: {{owner: rootly}}\n" for name in ("title", "summary", "severity")
    )
    owned = tmp_path / "owned.yaml"
    owned.write_text(text.replace("\nfields: {}\n", "\nfields:\n" + owners))
    result = run("check-config", "--no-secrets", "--rules", str(owned))
    assert "invalid rules" not in result.stderr, result.stderr
    assert "rules ok:" in result.stdout


def test_check_config_warnings_exit_0_unless_strict() -> None:
    """Only the echo-guard warning left: printed, exit 0; with --strict, exit 2."""
    env = {k: v for k, v in COMPLETE_ENV.items() if k != "BRIDGE_INCIDENT_IO__API_KEY_ID"}
    result = run("check-config", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: incident_io.api_key_id is not set" in result.stdout
    assert "flows: 0 errors, 1 warning" in result.stdout
    strict = run("check-config", "--strict", env=env)
    assert strict.returncode == 2
    assert "bridge: check-config: 0 errors, 1 warning (--strict)" in strict.stderr


def test_check_config_reports_a_trigger_typo_and_a_field_typo(tmp_path: Path) -> None:
    """A glob matching nothing Rootly sends is an error, a field the payload lacks a
    warning; each suggests the name meant."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - name: r1\n    on: {source: rootly, event: incident.creatd}\n"
        "    links:\n      - add: {a: '{{ subject }}', b: 'rootly:alert:{{ incident.titel }}'}\n"
        "  - name: r2\n    on: {source: rootly, event: incident.resolved}\n"
        "    links:\n      - add: {a: '{{ subject }}', b: 'rootly:alert:{{ incident.titel }}'}\n"
    )
    result = run("check-config", "--rules", str(rules), env=COMPLETE_ENV)
    assert result.returncode == 2
    assert f"error: {rules}:4: rule 'r1': on.event 'incident.creatd' matches no event" in (
        result.stdout
    )
    assert "fix: did you mean 'incident.created'?" in result.stdout
    assert f"warning: {rules}:10: rule 'r2': links[0].add.b reads 'incident.titel'" in (
        result.stdout
    )
    assert "fix: did you mean 'incident.title'?" in result.stdout


def test_check_config_prints_the_subscriptions_the_rules_need() -> None:
    """--print-subscriptions lists, per platform, the event types to subscribe to."""
    result = run("check-config", "--print-subscriptions", env=SECRET_ENV)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "rootly (webhook endpoint: POST /webhooks/rootly):"
    assert lines[1:10] == [
        "  alert.created",
        "  alert.updated",
        "  incident.cancelled",
        "  incident.created",
        "  incident.deleted",
        "  incident.in_triage",
        "  incident.mitigated",
        "  incident.resolved",
        "  incident.updated",
    ]
    assert lines[10] == "incident_io (webhook endpoint: POST /webhooks/incident-io):"
    assert "  public_escalation.escalation_status_updated_v1" in lines
    assert "error" not in result.stdout


def test_check_config_without_secrets_names_each_key() -> None:
    """Missing secrets: exit 2 and a line per key with the env var to set; no traceback."""
    result = run("check-config")
    assert result.returncode == 2
    assert "rootly.api_token" in result.stderr
    assert "BRIDGE_INCIDENT_IO__WEBHOOK_SECRET" in result.stderr
    no_traceback(result)


def test_check_config_bad_yaml_value_names_file_and_line(tmp_path: Path) -> None:
    """A bad value is reported as file:line: key: reason, exit 2."""
    config = tmp_path / "bridge.yaml"
    config.write_text("server:\n  port: 99999\n")
    result = run("check-config", "--config", str(config), env=SECRET_ENV)
    assert result.returncode == 2
    assert f"{config}:2: server.port:" in result.stderr
    no_traceback(result)


def test_check_config_bad_rules_names_file_line_and_rule(tmp_path: Path) -> None:
    """An invalid rules file: exit 2, file:line and the rule named."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - name: r1\n    on: {source: rootly, event: incident.created}\n"
        "    actions:\n      - do: rootly.explode_incident\n"
    )
    result = run("check-config", "--rules", str(rules), env=SECRET_ENV)
    assert result.returncode == 2
    assert f"{rules}:6" in result.stderr
    assert "r1" in result.stderr
    assert "explode_incident" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["links", "add", "rootly:incident:a"],
        ["dlq", "show", "x"],
        ["serve", "--port", "70000"],
    ],
)
def test_bad_arguments_exit_2_without_traceback(args: list[str], tmp_path: Path) -> None:
    """Unknown commands and bad arguments: exit 2 with a usage line, never a traceback."""
    result = run(*args, env={**SECRET_ENV, "BRIDGE_STORE__URL": f"sqlite:///{tmp_path}/x.db"})
    assert result.returncode == 2
    assert "bridge" in result.stderr
    no_traceback(result)


def test_links_and_db_commands_on_a_real_store(tmp_path: Path) -> None:
    """db upgrade and links add/list/remove work on a SQLite file and print JSON (a link
    added by hand is created by `operator`); a bad ref is exit 2."""
    env = {"BRIDGE_STORE__URL": f"sqlite:///{tmp_path}/cli.db"}
    upgrade = run("db", "upgrade", env=env)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "database at schema version" in upgrade.stdout
    added = run("links", "add", "rootly:incident:inc-1", "incident_io:escalation:esc-1", env=env)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["created"] is True
    listed = json.loads(run("links", "list", "--platform", "incident_io", env=env).stdout)
    assert len(listed["links"]) == 1
    assert listed["links"][0]["created_by"] == "operator"
    removed = run(
        "links", "remove", "incident_io:escalation:esc-1", "rootly:incident:inc-1", env=env
    )
    assert removed.returncode == 0
    again = run("links", "remove", "incident_io:escalation:esc-1", "rootly:incident:inc-1", env=env)
    assert again.returncode == 1
    assert "no link" in again.stderr
    bad = run("links", "add", "rootly:ticket:1", "incident_io:escalation:e", env=env)
    assert bad.returncode == 2
    assert "<platform>:<kind>:<id>" in bad.stderr
    dlq = run("dlq", "list", env=env)
    assert json.loads(dlq.stdout) == {"dead_letters": []}
    assert run("dlq", "replay", "42", env=env).returncode == 1


def test_usage_errors_have_one_prefix(tmp_path: Path) -> None:
    """argparse's complaints read `bridge serve: error: ...`, not `bridge: bridge serve: ...`."""
    result = run("serve", "--port", "eighty")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bridge serve: error: argument --port: invalid int value")


def test_unusable_store_is_a_clear_error(tmp_path: Path) -> None:
    """A store path that is a directory: exit 1 with the path in the message."""
    (tmp_path / "dir.db").mkdir()
    result = run("links", "list", env={"BRIDGE_STORE__URL": f"sqlite:///{tmp_path}/dir.db"})
    assert result.returncode == 1
    assert "dir.db" in result.stderr
    no_traceback(result)


def test_adopt_needs_both_platforms_and_a_store(tmp_path: Path) -> None:
    """`bridge adopt` without API credentials: exit 2 naming the variables to set; with
    them but a store that cannot be opened: exit 1 with the store's message, before any
    API call; never a traceback."""
    store = {"BRIDGE_STORE__URL": f"sqlite:///{tmp_path}/a.db"}
    result = run("adopt", "--since", "2026-01-01", env=store)
    assert result.returncode == 2
    assert "BRIDGE_INCIDENT_IO__API_KEY, BRIDGE_ROOTLY__API_TOKEN" in result.stderr
    no_traceback(result)
    (tmp_path / "file").write_text("not a directory")
    broken = {**SECRET_ENV, "BRIDGE_STORE__URL": f"sqlite:///{tmp_path}/file/a.db"}
    result = run("adopt", "--since", "2026-01-01", env=broken)
    assert result.returncode == 1
    assert result.stderr.startswith("bridge: store: ")
    assert f"{tmp_path}/file" in result.stderr
    no_traceback(result)


def test_explain_shows_matching_rules_and_actions(tmp_path: Path) -> None:
    """`bridge explain` on the official ack example shows rule 5 matching and, with links
    absent, why it produced no action; it calls nothing and needs no secrets."""
    example = specs.webhook_example("public_escalation.escalation_status_updated_v1")
    inner = example["public_escalation.escalation_status_updated_v1"]
    inner["previous_status"], inner["new_status"] = "triggered", "acked"
    inner["escalation"]["related_alerts"][0]["deduplication_key"] = "rootly-alert-r42"
    event_file = tmp_path / "ack.json"
    event_file.write_text(json.dumps(example))
    result = run("explain", "--source", "incident-io", "--no-store", str(event_file))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "incident-io-ack-acknowledges-rootly" in report["matched"]
    assert {
        "operation": "rootly.acknowledge_alert",
        "target": "rootly:alert:r42",
    }.items() <= report["actions"][0].items()
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    result = run("explain", "--source", "rootly", "--no-store", str(bad))
    assert result.returncode == 2
    assert "JSON object" in result.stderr


def test_explain_recognises_the_other_platforms_event(tmp_path: Path) -> None:
    """An event given with the wrong --source: exit 2 saying which source it looks like."""
    rootly = tmp_path / "rootly.json"
    rootly.write_text(json.dumps({"event": {"id": "e", "type": "incident.created"}, "data": {}}))
    result = run("explain", "--source", "incident-io", "--no-store", str(rootly))
    assert result.returncode == 2
    assert "this looks like a Rootly event: try --source rootly" in result.stderr
    io = tmp_path / "io.json"
    io.write_text(json.dumps(specs.webhook_example("public_alert.alert_created_v1")))
    result = run("explain", "--source", "rootly", "--no-store", str(io))
    assert result.returncode == 2
    assert "this looks like an incident.io event: try --source incident-io" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[str], timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"bridge exited early: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("bridge did not become ready")


@pytest.mark.parametrize("sandbox", [False, True])
def test_serve_stops_cleanly_on_sigterm_within_grace(tmp_path: Path, sandbox: bool) -> None:
    """A real `bridge serve` (plain, and with --sandbox) becomes ready, and on SIGTERM
    drains and exits 0 within the grace period, logging JSON without tracebacks; start-up
    froze its heap out of the garbage collector's full passes."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(SECRET_ENV)
    env.update(
        {
            "BRIDGE_STORE__URL": f"sqlite:///{tmp_path}/serve.db",
            "BRIDGE_SERVER__PORT": str(port),
            "BRIDGE_SERVER__SHUTDOWN_GRACE_SECONDS": "5",
        }
    )
    args = [sys.executable, "-m", "bridge", "serve"] + (["--sandbox"] if sandbox else [])
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_ready(port, process)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert time.monotonic() - started < 5 + 5  # grace period plus process start/exit slack
    assert "Traceback" not in err + out
    events = [
        json.loads(line)["event"] for line in (err + out).splitlines() if line.startswith("{")
    ]
    assert "bridge.started" in events
    assert "bridge.heap_frozen" in events
    assert "bridge.stopped" in events
    checks = sorted(e for e in events if e.startswith("check."))
    if sandbox:
        # The sandbox wires everything the default rules need: no dead flow.
        assert checks == []
        assert "sandbox.ready" in events
        # The throwaway sandbox credentials are printed for a person, outside the logs.
        assert "bridge sandbox:" in err
        assert "Rootly webhook secret" in err
    else:
        # The same findings as `bridge check-config`, one event each.
        assert checks == [
            "check.missing_alert_source",
            "check.missing_alert_source",
            "check.missing_alert_source",
            "check.missing_api_key_id",
            "check.rule_never_fires",
        ]
    assert SECRET_ENV["BRIDGE_ROOTLY__API_TOKEN"] not in err + out


def test_serve_with_placeholder_secret_refuses_to_start(tmp_path: Path) -> None:
    """`bridge serve` with a placeholder secret exits 2 naming the key, before listening."""
    env = {
        **SECRET_ENV,
        "BRIDGE_ROOTLY__API_TOKEN": "changeme",
        "BRIDGE_STORE__URL": f"sqlite:///{tmp_path}/p.db",
    }
    result = run("serve", env=env)
    assert result.returncode == 2
    assert "rootly.api_token: is a placeholder" in result.stderr
    no_traceback(result)


def test_a_sandbox_run_starts_empty_and_logs_only_json(tmp_path: Path) -> None:
    """`bridge serve --sandbox` (as `make run` starts it) stores nothing where a second run
    would find it (no ./data/bridge.db: each run's store is thrown away), and with JSON logs
    every log line, the simulators' included, is JSON through the bridge's redacting
    pipeline; the banner for a person is the only other output."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        {
            "BRIDGE_CONFIG": str(ROOT / "config" / "bridge.yaml"),
            "BRIDGE_RULES_FILE": str(ROOT / "config" / "rules.yaml"),
            "BRIDGE_SERVER__PORT": str(port),
            "BRIDGE_LOGGING__FORMAT": "json",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--sandbox"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(port, process)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert answer.status == 200
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert not (tmp_path / "data").exists()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    banner = [line for line in lines if line.startswith(("bridge sandbox:", "  "))]
    logged = [json.loads(line) for line in lines if line not in banner]
    assert {e["event"] for e in logged} >= {"sandbox.ready", "bridge.started", "bridge.stopped"}
    assert any(e["event"].startswith("sandbox.") and e["event"] != "sandbox.ready" for e in logged)


def test_dlq_show_shows_dead_letters_only(tmp_path: Path) -> None:
    """`bridge dlq show ID` prints a dead letter; an action that is not one (pending, or
    done after a replay) is exit 1 saying what state it is in, not shown as a dead letter."""
    url = f"sqlite:///{tmp_path}/dlq.db"

    async def one_dead_letter() -> tuple[int, int]:
        store = Store(url)
        await store.open()
        try:
            (inbox_id,) = await store.add_inbox([delivery("d-1", datetime.now(UTC))])
            assert inbox_id is not None
            actions = [action("k-1"), action("k-2")]
            dead, pending = await complete(store, inbox_id, actions, [], {})
            claimed = await store.claim_outbox("w", 1, 30)
            assert [row.id for row in claimed] == [dead]
            assert await store.dead_letter(dead, "w", "incident_io: HTTP 403 forbidden")
            return dead, pending
        finally:
            await store.close()

    dead, pending = asyncio.run(one_dead_letter())
    env = {"BRIDGE_STORE__URL": url}
    shown = run("dlq", "show", str(dead), env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["last_error"] == "incident_io: HTTP 403 forbidden"
    refused = run("dlq", "show", str(pending), env=env)
    assert refused.returncode == 1
    assert f"action {pending} is not a dead letter (state pending" in refused.stderr
    no_traceback(refused)
