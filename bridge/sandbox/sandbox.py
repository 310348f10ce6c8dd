"""`Sandbox`: both simulators served on loopback with fresh credentials, started together.

Start it from the composition root in three lines:

    sandbox = Sandbox(seed=1)
    await sandbox.start()                      # sandbox.rootly_url, sandbox.incident_io_url
    sandbox.set_webhook_targets(rootly=f"{base}/webhooks/rootly", incident_io=f"{base}/...")

and `await sandbox.stop()` on shutdown (or use it as an async context manager).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Sequence
from types import TracebackType

import structlog
from aiohttp import web

from bridge.sandbox.incident_io import IncidentIoSimulator
from bridge.sandbox.rootly import RootlySimulator


class Sandbox:
    """Simulated Rootly and incident.io, each an aiohttp server on its own loopback port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        seed: int | None = None,
        webhook_retry_delays: Sequence[float] = (0.2, 0.5, 1, 2, 5, 10, 30),
        rootly_rate_limit_per_minute: int = 3000,
        incident_io_rate_limit_per_minute: int = 1200,
        incident_io_refill_per_second: float = 20.0,
        incident_io_bucket_capacity: int = 1200,
        incident_io_escalation_create_per_minute: int = 60,
        incident_io_escalation_create_capacity: int | None = None,
        private_incident_io_webhooks: bool = False,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._host = host
        self._log = logger or structlog.get_logger(__name__)
        self.rootly_api_token = "rootly_" + secrets.token_hex(24)
        self.rootly_webhook_secret = secrets.token_hex(32)
        self.incident_io_api_key = "inc_" + secrets.token_urlsafe(32)
        self.incident_io_api_key_id = "01HSANDBOXKEY" + secrets.token_hex(7).upper()[:13]
        self.incident_io_webhook_secret = (
            "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        )
        self.alert_source_config_id = "01HSANDBOXSRC" + secrets.token_hex(7).upper()[:13]
        self.alert_source_token = secrets.token_urlsafe(32)
        self.rootly = RootlySimulator(
            api_token=self.rootly_api_token,
            webhook_secret=self.rootly_webhook_secret,
            rate_limit_per_minute=rootly_rate_limit_per_minute,
            seed=seed,
            webhook_retry_delays=webhook_retry_delays,
            logger=self._log,
        )
        self.incident_io = IncidentIoSimulator(
            api_key=self.incident_io_api_key,
            api_key_id=self.incident_io_api_key_id,
            webhook_secret=self.incident_io_webhook_secret,
            alert_source_config_id=self.alert_source_config_id,
            alert_source_token=self.alert_source_token,
            rate_limit_per_minute=incident_io_rate_limit_per_minute,
            refill_per_second=incident_io_refill_per_second,
            bucket_capacity=incident_io_bucket_capacity,
            escalation_create_per_minute=incident_io_escalation_create_per_minute,
            escalation_create_capacity=incident_io_escalation_create_capacity,
            private_webhooks=private_incident_io_webhooks,
            seed=seed,
            webhook_retry_delays=webhook_retry_delays,
            logger=self._log,
        )
        self.rootly_url = ""
        self.incident_io_url = ""
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        """Serve both simulators on loopback (port 0 each) and start their webhook senders."""
        if self._runners:
            return
        try:
            self.rootly_url = await self._serve(self.rootly.app)
            self.incident_io_url = await self._serve(self.incident_io.app)
            await self.rootly.start()
            await self.incident_io.start()
        except BaseException:
            await self.stop()
            raise
        self._log.info(
            "sandbox.started", rootly_url=self.rootly_url, incident_io_url=self.incident_io_url
        )

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        # Port 0 lets the OS choose; read the bound port back from the runner's addresses.
        _host, port = runner.addresses[-1][:2]
        return f"http://{self._host}:{port}"

    async def stop(self) -> None:
        """Stop webhook senders, release hung requests, close both servers."""
        await self.rootly.stop()
        await self.incident_io.stop()
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        self._log.info("sandbox.stopped")

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def set_webhook_targets(self, *, rootly: str | None, incident_io: str | None) -> None:
        """Where each simulator POSTs its webhooks (the bridge's URLs); None: send none."""
        self.rootly.set_webhook_target(rootly)
        self.incident_io.set_webhook_target(incident_io)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every webhook delivery finished or gave up (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        await self.rootly.webhooks.wait_idle(max(0.0, deadline - time.monotonic()))
        await self.incident_io.webhooks.wait_idle(max(0.0, deadline - time.monotonic()))
