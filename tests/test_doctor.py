"""`bridge doctor` against the simulated platforms: a real subprocess, real HTTP calls."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from bridge.sandbox import Sandbox
from bridge.sandbox.stack import DEFAULT_RULES
from tests.conftest import bridge_cli


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """Both simulators on loopback."""
    async with Sandbox() as running:
        yield running


def healthy_env(sandbox: Sandbox) -> dict[str, str]:
    """A complete, correct setup for the default rules against the sandbox."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return base | {
        "BRIDGE_CONFIG": "/dev/null",
        "BRIDGE_RULES_FILE": str(DEFAULT_RULES),
        "BRIDGE_ROOTLY__API_URL": sandbox.rootly_url,
        "BRIDGE_ROOTLY__API_TOKEN": sandbox.rootly_api_token,
        "BRIDGE_ROOTLY__WEBHOOK_SECRET": sandbox.rootly_webhook_secret,
        "BRIDGE_INCIDENT_IO__API_URL": sandbox.incident_io_url,
        "BRIDGE_INCIDENT_IO__API_KEY": sandbox.incident_io_api_key,
        "BRIDGE_INCIDENT_IO__API_KEY_ID": sandbox.incident_io_api_key_id,
        "BRIDGE_INCIDENT_IO__WEBHOOK_SECRET": sandbox.incident_io_webhook_secret,
        "BRIDGE_INCIDENT_IO__ALERT_SOURCE_CONFIG_ID": sandbox.alert_source_config_id,
        "BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN": sandbox.alert_source_token,
        "BRIDGE_RULE_VAR_ESCALATION_PATH_ID": sandbox.incident_io.default_escalation_path_id,
    }


async def doctor(env: dict[str, str]) -> tuple[int, str, str]:
    """Run `bridge doctor` (the sandbox keeps serving meanwhile)."""
    return await bridge_cli("doctor", env=env)


def lines(out: str, level: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{level} ")]


async def test_a_complete_setup_passes_with_one_read_per_platform(sandbox: Sandbox) -> None:
    """Right credentials, roles, alert source, api_key_id and escalation path: exit 0,
    each platform confirmed, and only read-only calls reached the platforms."""
    code, out, err = await doctor(healthy_env(sandbox))
    assert code == 0, out + err
    assert lines(out, "fail") == []
    assert any("rootly" in line and "accepted" in line for line in lines(out, "ok"))
    assert any("incident_io" in line and "roles:" in line for line in lines(out, "ok"))
    assert "doctor: no problems" in out
    calls = [(r.method, r.path) for r in sandbox.rootly.received + sandbox.incident_io.received]
    assert calls == [("GET", "/v1/incidents"), ("GET", "/v1/identity")]


async def test_each_problem_is_named_and_exits_1(sandbox: Sandbox) -> None:
    """A revoked Rootly token, an incident.io key without the escalation role, an empty
    escalation path and no api_key_id: exit 1, one fail line for each, saying the fix."""
    sandbox.incident_io.api_key_roles = ["viewer", "on_call_viewer"]
    env = healthy_env(sandbox) | {
        "BRIDGE_ROOTLY__API_TOKEN": "rootly_revoked_token_0123456789",
        "BRIDGE_RULE_VAR_ESCALATION_PATH_ID": "",
    }
    del env["BRIDGE_INCIDENT_IO__API_KEY_ID"]
    code, out, err = await doctor(env)
    assert code == 1, out + err
    failed = "\n".join(lines(out, "fail"))
    assert "GET /v1/incidents refused (401)" in failed
    assert "incident_io.create_escalation" in failed and "escalation_creator" in failed
    assert "BRIDGE_RULE_VAR_ESCALATION_PATH_ID" in failed
    assert "incident_io.api_key_id is not set" in failed
    assert "rootly_revoked_token" not in out + err


async def test_unreachable_platform_and_bad_config(sandbox: Sandbox) -> None:
    """A platform that does not answer is a failure (exit 1); a placeholder secret is a
    configuration error (exit 2); neither prints a traceback."""
    env = healthy_env(sandbox) | {"BRIDGE_ROOTLY__API_URL": "http://127.0.0.1:9"}
    code, out, err = await doctor(env)
    assert code == 1 and "unreachable" in out and "Traceback" not in out + err
    env = healthy_env(sandbox) | {"BRIDGE_INCIDENT_IO__API_KEY": "changeme"}
    code, out, err = await doctor(env)
    assert code == 2 and "incident_io.api_key" in err and "Traceback" not in out + err
