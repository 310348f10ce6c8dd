"""A bridge wired to a sandbox, in one process: for `bridge demo`, end-to-end tests, benchmarks.

`SandboxStack` starts both simulators, then a real `Bridge` (real HTTP listener on loopback,
real store) configured with the simulators' URLs and generated credentials, and points the
simulators' webhooks at the bridge. `settle()` waits until every webhook was delivered,
every stored event dispatched and every action finished, repeatedly, because actions cause
new webhooks (the echoes) that must be processed too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.app import Bridge
from bridge.clock import ShiftedClock
from bridge.config import Settings, deep_merge, load_settings
from bridge.logging import Logger, get_logger
from bridge.sandbox.sandbox import Sandbox

DEFAULT_RULES = Path(__file__).resolve().parent.parent.parent / "config" / "rules.yaml"


def sandbox_overrides(sandbox: Sandbox) -> dict[str, Any]:
    """Settings that point the bridge at a running sandbox."""
    return {
        "rootly": {
            "enabled": True,
            "api_url": sandbox.rootly_url,
            "api_token": sandbox.rootly_api_token,
            "webhook_secret": sandbox.rootly_webhook_secret,
        },
        "incident_io": {
            "enabled": True,
            "api_url": sandbox.incident_io_url,
            "api_key": sandbox.incident_io_api_key,
            "api_key_id": sandbox.incident_io_api_key_id,
            "webhook_secret": sandbox.incident_io_webhook_secret,
            "alert_source_config_id": sandbox.alert_source_config_id,
            "alert_source_token": sandbox.alert_source_token,
        },
    }


def sandbox_rule_env(sandbox: Sandbox) -> dict[str, str]:
    """Rule variables the default rules need to work against the sandbox."""
    return {"BRIDGE_RULE_VAR_ESCALATION_PATH_ID": sandbox.incident_io.default_escalation_path_id}


class SandboxStack:
    def __init__(
        self,
        *,
        store_url: str,
        rules_file: Path | None = None,
        overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        seed: int | None = 7,
        webhook_retry_delays: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1, 2),
        logger: Logger | None = None,
        sandbox_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.sandbox = Sandbox(
            seed=seed, webhook_retry_delays=webhook_retry_delays, **(sandbox_kwargs or {})
        )
        self._store_url = store_url
        self._rules_file = rules_file or DEFAULT_RULES
        self._overrides = overrides or {}
        self._env = env or {}
        self._log = logger or get_logger("bridge")
        self.bridge: Bridge | None = None
        self.registry = CollectorRegistry()
        # The bridge's clock: real time that a test can move forward (`advance_checks`).
        self.clock = ShiftedClock()

    @property
    def url(self) -> str:
        assert self.bridge is not None and self.bridge.endpoint is not None
        return self.bridge.endpoint.url

    def settings(self) -> Settings:
        base = {
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 5},
            "store": {"url": self._store_url},
            "rules": {"file": str(self._rules_file), "reload": False},
            "executor": {
                "poll_interval_seconds": 0.2,
                "backoff_base_seconds": 0.05,
                "backoff_max_seconds": 1.0,
            },
            "scheduler": {"retry_sweep_seconds": 0.5},
        }
        overrides = deep_merge(deep_merge(base, sandbox_overrides(self.sandbox)), self._overrides)
        # No config file: a stack is fully described by its overrides.
        return load_settings(
            None, environ={**self._env, "BRIDGE_CONFIG": "/dev/null"}, overrides=overrides
        )

    async def start(self) -> SandboxStack:
        await self.sandbox.start()
        env = {**sandbox_rule_env(self.sandbox), **self._env}
        self.bridge = Bridge(
            self.settings(), env=env, registry=self.registry, logger=self._log, clock=self.clock
        )
        try:
            await self.bridge.start()
        except BaseException:
            await self.bridge.stop()
            await self.sandbox.stop()
            raise
        self.sandbox.set_webhook_targets(
            rootly=f"{self.url}/webhooks/rootly",
            incident_io=f"{self.url}/webhooks/incident-io",
        )
        return self

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        await self.sandbox.stop()

    async def __aenter__(self) -> SandboxStack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def now(self) -> datetime:
        """The bridge's now."""
        return self.clock()

    def advance_checks(self) -> None:
        """Move the bridge's clock past `scheduler.reconcile_seconds`: every link is due for
        its next check."""
        assert self.bridge is not None
        self.clock.advance(self.bridge.settings.scheduler.reconcile_seconds + 1)

    async def busy(self) -> bool:
        assert self.bridge is not None
        counts = await self.bridge.store.counts()
        return bool(
            counts.inbox_pending
            or counts.outbox_by_state.get("pending", 0)
            or counts.outbox_by_state.get("claimed", 0)
        )

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until webhooks, events and actions have all come to rest (twice in a row)."""
        assert self.bridge is not None
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the bridge and sandbox did not settle in time")
            self.bridge.wake()
            await self.sandbox.wait_idle(max(0.1, deadline - time.monotonic()))
            if await self.busy():
                quiet = 0
                await asyncio.sleep(0.05)
                continue
            quiet += 1
            await asyncio.sleep(0.1)
