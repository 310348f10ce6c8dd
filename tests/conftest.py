"""Shared fixtures: a real bridge on loopback with a real SQLite store, and signed senders."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from bridge.app import Bridge
from bridge.config import Settings, load_settings
from bridge.platforms.incident_io import webhook as incident_io_webhook
from bridge.platforms.rootly import webhook as rootly_webhook

ROOT = Path(__file__).resolve().parents[1]
ROOTLY_SECRET = "rootly-signing-secret-for-tests"
INCIDENT_IO_SECRET = "whsec_" + base64.b64encode(b"incident-io-signing-key-tests").decode()
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
SECRET_ENV = {
    "BRIDGE_ROOTLY__API_TOKEN": "rootly-api-token-for-tests",
    "BRIDGE_ROOTLY__WEBHOOK_SECRET": ROOTLY_SECRET,
    "BRIDGE_INCIDENT_IO__API_KEY": "incident-io-api-key-for-tests",
    "BRIDGE_INCIDENT_IO__WEBHOOK_SECRET": INCIDENT_IO_SECRET,
}


@pytest.fixture(autouse=True)
def _quiet_structlog() -> None:
    """Each test starts from structlog's defaults (a test that configured logging must not
    leak its stream into the next one)."""
    structlog.reset_defaults()


async def bridge_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the real `python -m bridge ARGS` from the project root in `env` (bounded at a
    minute, the event loop free meanwhile): its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def rootly_delivery(
    event_type: str = "incident.created",
    data: dict[str, Any] | None = None,
    *,
    delivery_id: str | None = None,
    secret: str = ROOTLY_SECRET,
    ts: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A Rootly webhook body and headers, signed as Rootly signs."""
    body = json.dumps(
        {
            "event": {
                "id": delivery_id or str(uuid.uuid4()),
                "type": event_type,
                "issued_at": "2026-11-23T08:00:00Z",
            },
            "data": data
            if data is not None
            else {"id": str(uuid.uuid4()), "title": "t", "status": "started"},
        }
    ).encode()
    stamp = int(time.time()) if ts is None else ts
    return body, {
        "Content-Type": "application/json",
        "X-Rootly-Signature": rootly_webhook.sign(secret, stamp, body),
    }


def incident_io_delivery(
    event_type: str = "public_alert.alert_created_v1",
    payload: dict[str, Any] | None = None,
    *,
    msg_id: str | None = None,
    secret: str = INCIDENT_IO_SECRET,
    ts: int | None = None,
    raw: bytes | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An incident.io webhook body and Standard Webhooks headers."""
    body = (
        raw
        if raw is not None
        else json.dumps(
            {"event_type": event_type, event_type: payload or {"id": "01ALERT", "status": "firing"}}
        ).encode()
    )
    ident = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time()) if ts is None else ts
    return body, {
        "Content-Type": "application/json",
        "webhook-id": ident,
        "webhook-timestamp": str(stamp),
        "webhook-signature": incident_io_webhook.sign(secret, ident, stamp, body),
    }


def bridge_settings(
    tmp_path: Path, rules: str = "version: 1\nrules: []\n", **groups: Any
) -> Settings:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    overrides: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 3},
        "store": {"url": f"sqlite:///{tmp_path}/bridge.db"},
        "rules": {"file": str(rules_file), "reload": False},
        "admin": {"token": ADMIN_TOKEN},
        # Nothing listens there: these tests never reach a platform API.
        "rootly": {"api_url": "http://127.0.0.1:9"},
        "incident_io": {"api_url": "http://127.0.0.1:9"},
    }
    for key, value in groups.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return load_settings(
        None, environ={**SECRET_ENV, "BRIDGE_CONFIG": "/dev/null"}, overrides=overrides
    )


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    """A running bridge with no rules, on loopback, SQLite in tmp_path, admin API on."""
    running = Bridge(bridge_settings(tmp_path), env={}, registry=CollectorRegistry())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
