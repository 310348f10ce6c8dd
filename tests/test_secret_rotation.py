"""Secrets rotate without a restart: a running `bridge serve` picks up changed secret files.

The secrets directory is laid out as the kubelet lays out a mounted Secret (each key a
symlink into `..data`, which points at a timestamped directory) and rotated as the kubelet
rotates it: a new timestamped directory, then an atomic swap of the `..data` symlink.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.events import ObjectRef
from bridge.platforms.errors import UpstreamError
from bridge.sandbox import Sandbox
from tests.conftest import INCIDENT_IO_SECRET, SECRET_ENV, rootly_delivery
from tests.served import ServedBridge

OLD = "rootly-signing-secret-before-rotation"
NEW = "rootly-signing-secret-after-rotation-2"


def write_secret_volume(directory: Path, values: dict[str, str]) -> None:
    """Write `values` as the kubelet's atomic writer does (a new `..data` target)."""
    directory.mkdir(exist_ok=True)
    stamp = directory / f"..{time.time_ns()}"
    stamp.mkdir()
    for key, value in values.items():
        (stamp / key).write_text(value, encoding="utf-8")
    link = directory / "..data_tmp"
    link.symlink_to(stamp.name)
    link.rename(directory / "..data")
    for key in values:
        entry = directory / key
        if not entry.is_symlink():
            entry.symlink_to(f"..data/{key}")


def deliver(bridge: ServedBridge, secret: str) -> int:
    """POST one Rootly delivery signed with `secret`; the HTTP status."""
    body, headers = rootly_delivery(secret=secret)
    request = urllib.request.Request(
        f"{bridge.url}/webhooks/rootly", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServedBridge, Path, dict[str, str]]]:
    """`bridge serve` (no sandbox) whose secrets all come from a kubelet-style directory."""
    secrets = {**SECRET_ENV, "BRIDGE_ROOTLY__WEBHOOK_SECRET": OLD}
    secrets["BRIDGE_INCIDENT_IO__WEBHOOK_SECRET"] = INCIDENT_IO_SECRET
    directory = tmp_path / "secrets"
    write_secret_volume(directory, secrets)
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules: []\n", encoding="utf-8")
    config = {
        "server": {"host": "127.0.0.1", "shutdown_grace_seconds": 3},
        "store": {"url": f"sqlite:///{tmp_path}/bridge.db"},
        "rules": {"file": str(rules), "reload": False},
        "rootly": {"api_url": "http://127.0.0.1:9"},
        "incident_io": {"api_url": "http://127.0.0.1:9"},
        "logging": {"level": "info", "format": "json"},
    }
    bridge = ServedBridge(
        tmp_path, config, sandbox=False, env={"BRIDGE_SECRETS_DIR": str(directory)}
    ).start()
    try:
        yield bridge, directory, secrets
    finally:
        bridge.stop()


def _until_accepted(bridge: ServedBridge, secret: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if deliver(bridge, secret) == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"the rotated secret was never accepted:\n{bridge.log()}")


def test_rotated_rootly_webhook_secret_is_used_without_a_restart(
    served: tuple[ServedBridge, Path, dict[str, str]],
) -> None:
    """After the Secret's files change, deliveries signed with the new Rootly secret are
    accepted and those signed with the old one refused, by the same process; a rotation
    to an unusable value is refused and the secret in use stays."""
    bridge, directory, secrets = served
    assert deliver(bridge, OLD) == 200
    assert deliver(bridge, NEW) == 401

    write_secret_volume(directory, {**secrets, "BRIDGE_ROOTLY__WEBHOOK_SECRET": NEW})
    _until_accepted(bridge, NEW)
    assert deliver(bridge, OLD) == 401
    reloaded = bridge.events("secrets.reloaded")
    assert reloaded and reloaded[-1]["changed"] == ["rootly.webhook_secret"]
    assert len(bridge.events("bridge.started")) == 1, "no restart"
    assert bridge.running()

    # A half-done rotation (an empty file) is refused; the new secret keeps working.
    write_secret_volume(directory, {**secrets, "BRIDGE_ROOTLY__WEBHOOK_SECRET": ""})
    deadline = time.monotonic() + 30
    while not bridge.events("secrets.reload_failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    failed = bridge.events("secrets.reload_failed")
    assert failed, bridge.log()
    assert "rootly.webhook_secret" in " ".join(failed[-1]["problems"])
    assert deliver(bridge, NEW) == 200
    assert NEW not in bridge.log() and OLD not in bridge.log(), "secrets are never logged"


async def test_rotated_api_tokens_are_used_by_the_running_clients(tmp_path: Path) -> None:
    """A bridge started with stale API credentials is refused by both simulated platforms;
    after `apply_secrets` with the rotated ones (what the watcher does on a file change)
    the same clients are accepted. The admin token rotates too."""
    async with Sandbox() as sandbox:
        rules = tmp_path / "rules.yaml"
        rules.write_text("version: 1\nrules: []\n", encoding="utf-8")

        def settings(rootly_token: str, incident_io_key: str, admin: str) -> Any:
            return load_settings(
                None,
                environ={"BRIDGE_CONFIG": "/dev/null"},
                overrides={
                    "server": {"port": 0},
                    "store": {"url": f"sqlite:///{tmp_path}/bridge.db"},
                    "rules": {"file": str(rules), "reload": False},
                    "admin": {"token": admin},
                    "rootly": {
                        "api_url": sandbox.rootly_url,
                        "api_token": rootly_token,
                        "webhook_secret": sandbox.rootly_webhook_secret,
                    },
                    "incident_io": {
                        "api_url": sandbox.incident_io_url,
                        "api_key": incident_io_key,
                        "webhook_secret": sandbox.incident_io_webhook_secret,
                    },
                },
            )

        stale = settings("rootly-stale-token-0001", "inc-stale-key-0001", "admin-token-before-1")
        bridge = Bridge(stale, env={}, registry=CollectorRegistry())
        await bridge.start()
        try:
            incident = await sandbox.rootly.create_incident("DB down")
            ref = ObjectRef.parse(f"rootly:incident:{incident['id']}")
            escalations = ObjectRef.parse("incident_io:escalation:01HNOSUCHESCALATION0000000")
            with pytest.raises(UpstreamError, match="401"):
                await bridge.clients["rootly"].fetch(ref)
            with pytest.raises(UpstreamError, match="401"):
                await bridge.clients["incident_io"].fetch(escalations)

            fresh = settings(
                sandbox.rootly_api_token, sandbox.incident_io_api_key, "admin-token-after-2"
            )
            changed = bridge.apply_secrets(fresh)
            assert sorted(changed) == ["admin.token", "incident_io.api_key", "rootly.api_token"]
            assert (await bridge.clients["rootly"].fetch(ref))["id"] == incident["id"]
            with pytest.raises(UpstreamError, match="404"):
                await bridge.clients["incident_io"].fetch(escalations)
        finally:
            await bridge.stop()
