"""The composition root: builds every part from `Settings`, runs it, stops it cleanly.

Nothing else in the package constructs long-lived objects or reads the environment; this
module does, once, and passes each part what it needs. Start-up order: store (migrations),
rules, clients, pipeline workers, scheduler, and last the HTTP listener, so a webhook is
never accepted before the bridge can act on it. Shutdown runs the other way: stop
accepting webhooks (503, senders retry), let the dispatcher finish the event in hand and
the executor its in-flight actions within the grace period, stop the scheduler, close
clients and the store. Unfinished actions stay leased in the outbox and are picked up
again after the lease expires: a drain that runs out of time loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics
from pydantic import SecretStr

from bridge import __version__
from bridge.clock import Clock, utcnow
from bridge.config import Settings
from bridge.console import Console, HealthProbe
from bridge.events import Platform
from bridge.logging import Logger, Redactor, get_logger
from bridge.metrics import Metrics, create_metrics
from bridge.pipeline.dispatcher import PARSERS, Dispatcher
from bridge.pipeline.echo import EchoGuard
from bridge.pipeline.executor import Executor
from bridge.pipeline.ingest import InboxWriter, Ingest, SourceConfig
from bridge.pipeline.linkcheck import LinkChecker
from bridge.pipeline.rulebook import Rulebook
from bridge.pipeline.rulestats import RuleStats
from bridge.platforms.base import PlatformClient
from bridge.platforms.incident_io.client import IncidentIoClient
from bridge.platforms.incident_io.limits import LIMITS as INCIDENT_IO_LIMITS
from bridge.platforms.ratelimit import RateLimiters
from bridge.platforms.rootly.client import RootlyClient
from bridge.platforms.rootly.limits import LIMITS as ROOTLY_LIMITS
from bridge.scheduler import Scheduler
from bridge.secrets import SecretRotation
from bridge.store.base import StoreError
from bridge.store.store import Store
from bridge.tasks import Supervisor
from bridge.web import AdminApi, BridgeRunner, Readiness, build_app

USER_AGENT = f"bridge/{__version__} (+https://github.com/bridge-sre/bridge)"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def build_clients(
    settings: Settings, metrics: Metrics, limiters: RateLimiters, logger: Logger
) -> dict[Platform, PlatformClient]:
    clients: dict[Platform, PlatformClient] = {}
    if settings.rootly.enabled and settings.rootly.api_token is not None:
        r = settings.rootly
        token = r.api_token.get_secret_value() if r.api_token else ""
        clients["rootly"] = RootlyClient(
            token=token,
            limiter=limiters.get(ROOTLY_LIMITS, token, r.quota_sizes(ROOTLY_LIMITS)),
            metrics=metrics,
            base_url=str(r.api_url).rstrip("/"),
            connect_timeout=r.connect_timeout_seconds,
            total_timeout=r.request_timeout_seconds,
            user_agent=USER_AGENT,
            logger=logger.bind(platform="rootly"),
        )
    if settings.incident_io.enabled and settings.incident_io.api_key is not None:
        i = settings.incident_io
        key = i.api_key.get_secret_value() if i.api_key else ""
        source_token = i.alert_source_token.get_secret_value() if i.alert_source_token else None
        sizes = i.quota_sizes(INCIDENT_IO_LIMITS)
        clients["incident_io"] = IncidentIoClient(
            token=key,
            limiter=limiters.get(INCIDENT_IO_LIMITS, key, sizes),
            metrics=metrics,
            base_url=str(i.api_url).rstrip("/"),
            alert_source_config_id=i.alert_source_config_id,
            alert_source_token=source_token,
            alert_source_limiter=(
                limiters.get(INCIDENT_IO_LIMITS, source_token, sizes) if source_token else None
            ),
            connect_timeout=i.connect_timeout_seconds,
            total_timeout=i.request_timeout_seconds,
            user_agent=USER_AGENT,
            logger=logger.bind(platform="incident_io"),
        )
    return clients


class Bridge:
    """One running bridge: every part, built from settings, owned here."""

    def __init__(
        self,
        settings: Settings,
        *,
        env: Mapping[str, str] | None = None,
        registry: CollectorRegistry | None = None,
        logger: Logger | None = None,
        instance_id: str | None = None,
        clock: Clock = utcnow,
        reload_settings: Callable[[], Settings] | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """`reload_settings` loads the settings again as they were loaded for this bridge;
        with it and `BRIDGE_SECRETS_DIR` in `env`, rotated secret files are picked up
        while running. `redactor` (the log's) learns the rotated secrets."""
        self.settings = settings
        self.clock = clock
        self.log = logger or get_logger("bridge")
        self.instance_id = (
            instance_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.metrics = create_metrics(registry or CollectorRegistry())
        self.supervisor = Supervisor(self.log)
        self.store: Store = Store(
            settings.store.url,
            pool_size=settings.store.pool_size,
            logger=self.log.bind(component="store"),
            clock=clock,
            exclusive=True,
        )
        environ = dict(os.environ if env is None else env)
        self.rulebook = Rulebook(
            settings.rules.file,
            environ,
            self.metrics,
            self.log.bind(component="rules"),
        )
        self.readiness = Readiness()
        # On PostgreSQL every replica counts against the same quotas, kept in the store;
        # SQLite has one replica, whose quotas are counted in this process. Server answers
        # name wall-clock times (a 429's reset): read on the bridge's clock.
        self.limiters = RateLimiters(
            wall_clock=lambda: clock().timestamp(),
            shared=self.store if self.store.backend == "postgresql" else None,
            logger=self.log.bind(component="ratelimit"),
        )
        self.clients = build_clients(settings, self.metrics, self.limiters, self.log)
        self.executor = Executor(
            store=self.store,
            clients=self.clients,
            settings=settings.executor,
            concurrency={
                "rootly": settings.rootly.max_concurrency,
                "incident_io": settings.incident_io.max_concurrency,
            },
            metrics=self.metrics,
            logger=self.log.bind(component="executor"),
            owner=self.instance_id,
            supervisor=self.supervisor,
            clock=clock,
            in_doubt={
                "rootly": settings.rootly.in_doubt(),
                "incident_io": settings.incident_io.in_doubt(),
            },
        )
        # How often each rule fired lately (the console's rules page).
        self.rule_stats = RuleStats()
        self.dispatcher = Dispatcher(
            store=self.store,
            rules=self.rulebook.current,
            clients=self.clients,
            echo_guard=EchoGuard(self.store, settings.incident_io.api_key_id),
            metrics=self.metrics,
            logger=self.log.bind(component="dispatcher"),
            owner=self.instance_id,
            on_actions=self._wake_executor,
            lease_seconds=settings.executor.lease_seconds,
            priority_age=settings.executor.priority_age_seconds,
            poll_interval=settings.executor.poll_interval_seconds,
            handoff=self.executor,
            supervisor=self.supervisor,
            clock=clock,
            rule_stats=self.rule_stats,
        )
        self.writer = InboxWriter(
            self.store,
            self.supervisor,
            self._on_inbox_write,
            owner=self.instance_id,
            lease_seconds=settings.executor.lease_seconds,
            handoff=self.dispatcher,
        )
        sources: dict[Platform, SourceConfig] = {}
        if settings.rootly.enabled:
            sources["rootly"] = SourceConfig(
                "rootly",
                tuple(settings.rootly.webhook_secrets()),
                settings.rootly.signature_tolerance_seconds,
            )
        if settings.incident_io.enabled:
            sources["incident_io"] = SourceConfig(
                "incident_io",
                tuple(settings.incident_io.webhook_secrets()),
                settings.incident_io.signature_tolerance_seconds,
            )
        self.ingest = Ingest(
            sources=sources,
            writer=self.writer,
            rules=self.rulebook.current,
            metrics=self.metrics,
            logger=self.log.bind(component="ingest"),
            max_body_bytes=settings.server.max_body_bytes,
            body_timeout_seconds=settings.server.body_timeout_seconds,
            clock=clock,
        )
        self.scheduler = Scheduler(
            store=self.store,
            settings=settings.scheduler,
            metrics=self.metrics,
            logger=self.log.bind(component="scheduler"),
            wake=self.wake,
            clock=clock,
            instance=self.instance_id,
            on_replicas=self.limiters.set_replicas,
        )
        self.checker = LinkChecker(
            store=self.store,
            clients=self.clients,
            parsers=PARSERS,
            rules=self.rulebook.current,
            writer=self.writer,
            settings=settings.scheduler,
            metrics=self.metrics,
            logger=self.log.bind(component="checks"),
            is_leader=lambda: self.scheduler.is_leader,
            clock=clock,
        )
        self._redactor = redactor
        self._secrets_in_use = settings
        self.secret_rotation: SecretRotation | None = None
        if environ.get("BRIDGE_SECRETS_DIR") and reload_settings is not None:
            self.secret_rotation = SecretRotation(
                Path(environ["BRIDGE_SECRETS_DIR"]),
                load=reload_settings,
                apply=self.apply_secrets,
                metrics=self.metrics,
                logger=self.log.bind(component="secrets"),
            )
        admin = None
        console = None
        if settings.admin.token is not None:
            admin = AdminApi(
                self.store,
                settings.admin.token.get_secret_value(),
                self.log.bind(component="admin"),
                self._wake_executor,
            )
            console = self._console(settings.admin.token.get_secret_value())
        self.admin = admin
        self.app = build_app(
            ingest=self.ingest,
            store=self.store,
            metrics=self.metrics,
            readiness=self.readiness,
            logger=self.log,
            admin=admin,
            console=console,
        )
        self._runner: BridgeRunner | None = None
        self._dispatcher_task: asyncio.Task[Any] | None = None
        self.endpoint: Endpoint | None = None
        self._stopped = asyncio.Event()
        self._started = False

    def _console(self, token: str) -> Console:
        """The operator console (served with the admin API, behind the same token)."""
        return Console(
            store=self.store,
            admin_token=token,
            rules=self.rulebook.current,
            rule_stats=self.rule_stats,
            metrics=self.metrics,
            health=HealthProbe(
                instance=self.instance_id,
                is_leader=lambda: self.scheduler.is_leader,
                accepting=lambda: self.readiness.accepting,
                rules_loaded=lambda: self.readiness.rules_loaded,
                schema_version=lambda: getattr(self.store, "version", None),
            ),
            logger=self.log.bind(component="console"),
            wake_executor=self._wake_executor,
            clock=self.clock,
            session_minutes=self.settings.admin.session_minutes,
        )

    # -- wiring -----------------------------------------------------------------------
    def _on_inbox_write(self) -> None:
        self.dispatcher.wake()
        # Other replicas learn about new work through LISTEN/NOTIFY (PostgreSQL only).
        self.supervisor.spawn("store.notify", self._notify())

    async def _notify(self) -> None:
        await self.store.notify_work()

    def _wake_executor(self, platforms: set[Platform] | None = None) -> None:
        self.executor.wake(platforms)
        # New or replayed actions: a replica that cannot run them now (saturated, platform
        # disabled, about to die) relies on the others hearing about them.
        self.supervisor.spawn("store.notify", self._notify())

    def wake(self) -> None:
        self.dispatcher.wake()
        self.executor.wake()

    def apply_secrets(self, fresh: Settings) -> list[str]:
        """Hand the secrets of `fresh` that differ from those in use to the running parts;
        the names of the ones changed. A platform that had no client at start (no token)
        gets none now: that needs a restart, and is logged."""
        old, changed = self._secrets_in_use, []

        def differs(a: SecretStr | None, b: SecretStr | None) -> bool:
            return (a and a.get_secret_value()) != (b and b.get_secret_value())

        platforms: tuple[tuple[Platform, Any, Any], ...] = (
            ("rootly", old.rootly, fresh.rootly),
            ("incident_io", old.incident_io, fresh.incident_io),
        )
        for source, before, after in platforms:
            if differs(before.webhook_secret, after.webhook_secret) and self.ingest.set_secrets(
                source, tuple(after.webhook_secrets())
            ):
                changed.append(f"{source}.webhook_secret")
        rootly = self.clients.get("rootly")
        token = fresh.rootly.api_token
        if differs(old.rootly.api_token, token) and token is not None:
            if isinstance(rootly, RootlyClient):
                rootly.set_credentials(token.get_secret_value())
                changed.append("rootly.api_token")
            else:
                self.log.warning("secrets.restart_needed", key="rootly.api_token")
        incident_io = self.clients.get("incident_io")
        key, source_token = fresh.incident_io.api_key, fresh.incident_io.alert_source_token
        key_changed = differs(old.incident_io.api_key, key)
        source_changed = differs(old.incident_io.alert_source_token, source_token)
        if (key_changed or source_changed) and key is not None:
            if isinstance(incident_io, IncidentIoClient):
                incident_io.set_credentials(
                    key.get_secret_value(),
                    source_token.get_secret_value() if source_token else None,
                )
                changed += ["incident_io.api_key"] * key_changed
                changed += ["incident_io.alert_source_token"] * source_changed
            else:
                self.log.warning("secrets.restart_needed", key="incident_io.api_key")
        admin_token = fresh.admin.token
        if differs(old.admin.token, admin_token) and admin_token is not None:
            if self.admin is not None:
                self.admin.set_token(admin_token.get_secret_value())
                changed.append("admin.token")
            else:
                self.log.warning("secrets.restart_needed", key="admin.token")
        if self._redactor is not None:
            self._redactor.add(fresh.secret_values())
        self._secrets_in_use = fresh
        return changed

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Bring everything up; raises StoreError / RulesError with a clear message."""
        # Counters export no `*_created` series: nothing charts or alerts on them, and they
        # double the series count. prometheus_client's switch is process-wide, so it is
        # thrown here, once per start, never at import time.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        await self.store.open()
        self.rulebook.load()
        self.readiness.rules_loaded = True
        for client in self.clients.values():
            await client.start()
        self.writer.start()
        self.dispatcher.start()
        self.executor.start()
        self.supervisor.spawn_loop("store.listen", self._listen)
        self._dispatcher_task = self.supervisor.spawn_loop("dispatcher", self.dispatcher.run)
        for platform in self.executor.platforms:
            self.supervisor.spawn_loop(f"executor.{platform}", self._executor_loop(platform))
        if self.settings.rules.reload:
            self.supervisor.spawn_loop("rules.watch", self.rulebook.watch)
        self.supervisor.spawn_loop("checks", self.checker.run)
        if self.secret_rotation is not None:
            self.secret_rotation.remember()
            self.supervisor.spawn_loop("secrets.watch", self.secret_rotation.watch)
        self.scheduler.start()
        # When the listener closes, the deliveries that matter have been stored (stop()
        # waits for them first); what is left is idle keep-alives or clients still sending
        # a body, which retry. Waiting the whole grace period for them would starve the drain.
        self._runner = BridgeRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.server.host, self.settings.server.port, reuse_address=True
        )
        await site.start()
        # With port 0 the OS picks the port; the runner knows which one it got.
        address = self._runner.addresses[0]
        self.endpoint = Endpoint(str(address[0]), int(address[1]))
        self._started = True
        self.log.info(
            "bridge.started",
            version=__version__,
            url=self.endpoint.url,
            store=self.store.backend,
            platforms=sorted(self.clients),
            instance=self.instance_id,
        )

    async def _listen(self) -> None:
        await self.store.listen_work(self.wake)

    def _executor_loop(self, platform: Platform) -> Any:
        async def loop() -> None:
            await self.executor.run(platform)

        return loop

    async def stop(self) -> None:
        """Graceful stop within `server.shutdown_grace_seconds`."""
        if not self._started:
            # start() failed part-way: whatever it got running must not outlive the store.
            await self.scheduler.stop()
            self.dispatcher.stop()
            self.executor.stop()
            await self.supervisor.stop(timeout=2.0)
            if self._runner is not None:
                await self._runner.cleanup()
            await self._close_resources()
            return
        self._started = False
        grace = self.settings.server.shutdown_grace_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.log.info("bridge.stopping", grace_seconds=grace)
        # 1. New webhooks get 503 (senders retry); readiness fails so traffic moves away.
        self.readiness.accepting = False
        self.ingest.stop_accepting()
        await self.scheduler.stop()

        def remaining() -> float:
            return max(0.1, deadline - loop.time())

        # 2. Webhooks already being handled finish: their inbox writes must complete
        #    before the writer task stops, or their senders would see an aborted request.
        while self.ingest.in_flight and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        # 3. Stop listening (responses still being written are waited for).
        if self._runner is not None:
            await self._runner.cleanup()
        # 4. The dispatcher finishes the event in hand (its loop checks `stopping` between
        #    events); events handed to it but not started go back to the queue at once.
        self.dispatcher.stop()
        if self._dispatcher_task is not None:
            await asyncio.wait({self._dispatcher_task}, timeout=remaining())
        try:
            await self.dispatcher.release_adopted()
        except StoreError as exc:
            # Still leased: picked up when the lease expires. Nothing is lost either way.
            self.log.warning("bridge.release_failed", error=str(exc))
        # 5. Actions in flight finish; unfinished ones stay leased in the outbox.
        self.executor.stop()
        drained = await self.executor.drain(remaining())
        if not drained:
            self.log.warning("bridge.drain_timeout", in_flight=self.executor.in_flight())
        await self.supervisor.stop(timeout=max(0.5, deadline - loop.time()))
        await self._close_resources()
        self._stopped.set()
        self.log.info("bridge.stopped", drained=drained)

    async def _close_resources(self) -> None:
        for client in self.clients.values():
            await client.close()
        await self.store.close()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM/SIGINT, then stop gracefully. SIGHUP reloads the rules."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.rulebook.reload)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        await self.stop()
