"""Harness of the reliability suite: a bridge in a subprocess, signed senders, store probes.

What the reliability tests share and nothing else:

- `Upstream`: the platform URLs and every secret a bridge needs, taken from an in-test
  `Sandbox` or generated (pointing at a closed port) when no simulator is wanted;
- `write_config` / `bridge_env`: a YAML config file plus the secrets passed by environment,
  as an operator deploys it (secrets never in the file);
- `BridgeProcess`: `python -m bridge serve --config ...` as a real child process on a fixed
  port, restartable on the same port and database, SIGKILL/SIGTERM, its stdout+stderr
  captured to one log file across restarts, RSS and listening sockets read from /proc;
- `SignedSender`: signs deliveries with the product's own `sign` functions and retries
  like Rootly / Svix (same delivery ID, fresh timestamp and signature per attempt, backoff),
  recording every attempt's answer;
- `store_snapshot`: opens the store with `Store` after the bridge stopped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yaml

from bridge.events import DeliveryId
from bridge.platforms.incident_io import webhook as incident_io_webhook
from bridge.platforms.rootly import webhook as rootly_webhook
from bridge.sandbox import Sandbox
from bridge.store.base import OutboxRow
from bridge.store.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = REPO_ROOT / "config" / "rules.yaml"
Source = Literal["rootly", "incident_io"]
WEBHOOK_PATHS: Mapping[Source, str] = {
    "rootly": "/webhooks/rootly",
    "incident_io": "/webhooks/incident-io",
}


def free_port() -> int:
    """A TCP port nobody listens on right now (the bridge binds it with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Upstream:
    """Where the bridge's platforms are and every credential it is given."""

    rootly_url: str
    rootly_api_token: str
    rootly_webhook_secret: str
    incident_io_url: str
    incident_io_api_key: str
    incident_io_api_key_id: str
    incident_io_webhook_secret: str
    alert_source_config_id: str
    alert_source_token: str
    escalation_path_id: str

    @classmethod
    def from_sandbox(cls, sandbox: Sandbox) -> Upstream:
        return cls(
            rootly_url=sandbox.rootly_url,
            rootly_api_token=sandbox.rootly_api_token,
            rootly_webhook_secret=sandbox.rootly_webhook_secret,
            incident_io_url=sandbox.incident_io_url,
            incident_io_api_key=sandbox.incident_io_api_key,
            incident_io_api_key_id=sandbox.incident_io_api_key_id,
            incident_io_webhook_secret=sandbox.incident_io_webhook_secret,
            alert_source_config_id=sandbox.alert_source_config_id,
            alert_source_token=sandbox.alert_source_token,
            escalation_path_id=sandbox.incident_io.default_escalation_path_id,
        )

    @classmethod
    def unreachable(cls) -> Upstream:
        """Fresh secrets; both APIs at a loopback port nothing listens on (calls fail fast)."""
        dead = f"http://127.0.0.1:{free_port()}"
        return cls(
            rootly_url=dead,
            rootly_api_token="rootly_" + secrets.token_hex(24),
            rootly_webhook_secret=secrets.token_hex(32),
            incident_io_url=dead,
            incident_io_api_key="inc_" + secrets.token_urlsafe(32),
            incident_io_api_key_id="01HTESTKEY" + secrets.token_hex(8).upper(),
            incident_io_webhook_secret="whsec_"
            + base64.b64encode(secrets.token_bytes(24)).decode(),
            alert_source_config_id="01HTESTSRC" + secrets.token_hex(8).upper(),
            alert_source_token=secrets.token_urlsafe(32),
            escalation_path_id="01HTESTPATH" + secrets.token_hex(8).upper(),
        )

    def secret_values(self) -> list[str]:
        """Every credential value, plus the key material inside the `whsec_` secret."""
        whsec_body = self.incident_io_webhook_secret.removeprefix("whsec_")
        return [
            self.rootly_api_token,
            self.rootly_webhook_secret,
            self.incident_io_api_key,
            self.incident_io_webhook_secret,
            whsec_body,
            self.alert_source_token,
        ]


FAST_ESCALATIONS = 1200
"""Escalation creates per minute the test sandboxes allow (incident.io allows 60)."""


def new_admin_token() -> str:
    return "adm_" + secrets.token_urlsafe(32)


def bridge_env(
    upstream: Upstream,
    *,
    admin_token: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's environment: secrets and rule variables by env, like a Kubernetes pod."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        {
            "BRIDGE_ROOTLY__API_URL": upstream.rootly_url,
            "BRIDGE_ROOTLY__API_TOKEN": upstream.rootly_api_token,
            "BRIDGE_ROOTLY__WEBHOOK_SECRET": upstream.rootly_webhook_secret,
            "BRIDGE_INCIDENT_IO__API_URL": upstream.incident_io_url,
            "BRIDGE_INCIDENT_IO__API_KEY": upstream.incident_io_api_key,
            "BRIDGE_INCIDENT_IO__API_KEY_ID": upstream.incident_io_api_key_id,
            "BRIDGE_INCIDENT_IO__WEBHOOK_SECRET": upstream.incident_io_webhook_secret,
            "BRIDGE_INCIDENT_IO__ALERT_SOURCE_CONFIG_ID": upstream.alert_source_config_id,
            "BRIDGE_INCIDENT_IO__ALERT_SOURCE_TOKEN": upstream.alert_source_token,
            "BRIDGE_RULE_VAR_ESCALATION_PATH_ID": upstream.escalation_path_id,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if admin_token is not None:
        env["BRIDGE_ADMIN_TOKEN"] = admin_token
    env.update(extra or {})
    return env


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def write_config(
    directory: Path,
    *,
    port: int,
    store_url: str,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """A config file for a test bridge: fast polling and leases, JSON logs, no secrets."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_seconds": 5},
        "store": {"url": store_url},
        "rules": {"file": str(RULES_FILE), "reload": False},
        "executor": {
            "poll_interval_seconds": 0.2,
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 1.0,
            # A SIGKILLed owner's claims come back quickly (min allowed is 1 s).
            "lease_seconds": 3,
        },
        "scheduler": {"retry_sweep_seconds": 0.5},
        "logging": {"level": "info", "format": "json"},
        # These suites page hundreds of incidents to test crashes, not pacing: escalation
        # creates go at the key's rate (the sandbox allows as much, `FAST_ESCALATIONS`).
        "incident_io": {
            "endpoint_limits": {"escalation_create": {"per_minute": 1200, "burst": 20}}
        },
    }
    config = _deep_merge(config, overrides or {})
    path = directory / "bridge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# The bridge as a child process


class BridgeExited(AssertionError):
    """The child exited while the test expected it to serve."""


class BridgeProcess:
    """`python -m bridge serve` as a child process; restartable on the same port and store."""

    def __init__(
        self,
        *,
        config: Path,
        env: Mapping[str, str],
        port: int,
        log_path: Path,
        args: Sequence[str] = (),
        store_url: str = "",
    ) -> None:
        self.config = config
        self.store_url = store_url
        self.env = dict(env)
        self.port = port
        self.log_path = log_path
        self.args = tuple(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Launch the child (does not wait for it to listen)."""
        assert not self.alive(), "already running"
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts + 1} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve", "--config", str(self.config), *self.args],
                env=self.env,
                cwd=self.config.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

    def _exited(self) -> BridgeExited:
        assert self.proc is not None
        return BridgeExited(
            f"bridge exited with {self.proc.returncode}; log tail:\n{self.log_text()[-3000:]}"
        )

    async def wait_ready(self, path: str = "/healthz", timeout: float = 30.0) -> None:
        """Poll `path` until it answers 200 (without blocking the test's event loop)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if not self.alive():
                    raise self._exited()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url + path) as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bridge not ready at {self.url}{path} in {timeout} s")
                await asyncio.sleep(0.05)

    def wait_ready_sync(self, path: str = "/healthz", timeout: float = 30.0) -> None:
        """`wait_ready` for synchronous tests (hypothesis)."""
        import http.client

        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise self._exited()
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                try:
                    conn.request("GET", path)
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"bridge not ready at {self.url}{path} in {timeout} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code (raises TimeoutExpired past `timeout`)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    async def terminate_async(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for exit without blocking the event loop (the sandbox runs there)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bridge did not exit within {timeout} s of SIGTERM")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def kill_async(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        # Polling a child's exit status: there is no event to wait on.
        while self.proc.poll() is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def cleanup(self) -> None:
        """Make sure no child outlives the test."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines (other lines, such as `--- start` markers, are skipped)."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def rss_bytes(self) -> int:
        """Resident set size of the child, from /proc."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def listening_ports(self) -> set[int]:
        """TCP ports the child listens on (its socket inodes matched to /proc/net/tcp*)."""
        inodes = set()
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError):
                for line in Path(table).read_text().splitlines()[1:]:
                    parts = line.split()
                    # st == 0A is LISTEN
                    if parts[3] == "0A" and parts[9] in inodes:
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        return ports


# ---------------------------------------------------------------------------------------
# Deliveries and the retrying signed sender


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery: its body is fixed, its signature is made per attempt."""

    source: Source
    delivery_id: str
    event_type: str
    body: bytes


def rootly_delivery(
    event_type: str, data: Mapping[str, Any], *, delivery_id: str | None = None
) -> Delivery:
    """A Rootly webhook as Rootly sends it: `{"event": {id, type, issued_at}, "data": ...}`."""
    event_id = delivery_id or str(uuid.uuid4())
    body = {
        "event": {
            "id": event_id,
            "type": event_type,
            "issued_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        },
        "data": dict(data),
    }
    return Delivery("rootly", event_id, event_type, json.dumps(body).encode())


def incident_io_delivery(
    event_type: str, payload: Mapping[str, Any], *, delivery_id: str | None = None
) -> Delivery:
    """An incident.io webhook: `{"event_type": T, T: payload}`, delivered with a `msg_` ID."""
    msg_id = delivery_id or f"msg_{secrets.token_hex(12)}"
    body = {"event_type": event_type, event_type: dict(payload)}
    return Delivery("incident_io", msg_id, event_type, json.dumps(body).encode())


def signed_headers(
    delivery: Delivery, upstream: Upstream, timestamp: int | None = None
) -> dict[str, str]:
    """The headers the platform would send for `delivery` at `timestamp` (default: now)."""
    ts = int(time.time()) if timestamp is None else timestamp
    if delivery.source == "rootly":
        return {
            "Content-Type": "application/json",
            rootly_webhook.SIGNATURE_HEADER: rootly_webhook.sign(
                upstream.rootly_webhook_secret, ts, delivery.body
            ),
        }
    return {
        "Content-Type": "application/json",
        "webhook-id": delivery.delivery_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": incident_io_webhook.sign(
            upstream.incident_io_webhook_secret, delivery.delivery_id, ts, delivery.body
        ),
    }


@dataclass(frozen=True)
class Attempt:
    """One POST of one delivery and what came back (status None: no HTTP answer)."""

    delivery_id: str
    status: int | None
    error: str | None
    at: float
    started: float = 0.0


@dataclass
class SignedSender:
    """Delivers webhooks to a bridge the way Rootly and Svix do: retry until 2xx.

    Each attempt re-signs with a fresh timestamp and keeps the delivery ID. Connection
    errors, timeouts, 5xx and 429 are retried with backoff until `give_up_after` seconds;
    any other 4xx is final (a real sender would retry it too, but here it means the test
    built a bad delivery, which should fail loudly rather than time out).
    """

    base_url: str
    upstream: Upstream
    give_up_after: float = 90.0
    attempt_timeout: float = 10.0
    retry_delays: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
    seed: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    final: dict[str, int | None] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _rng: random.Random = field(default_factory=random.Random)

    async def __aenter__(self) -> SignedSender:
        self._rng = random.Random(self.seed)
        # force_close: one connection per attempt, so a restart never races a pooled socket.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=64),
            timeout=aiohttp.ClientTimeout(total=self.attempt_timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def accepted(self) -> set[str]:
        """Delivery IDs the bridge answered 2xx to at least once."""
        return {a.delivery_id for a in self.attempts if a.status is not None and a.status < 300}

    def statuses(self) -> list[int]:
        return [a.status for a in self.attempts if a.status is not None]

    async def post_once(
        self,
        delivery: Delivery,
        *,
        timestamp: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int | None, str]:
        """One attempt; returns (status, body text) or (None, error)."""
        assert self._session is not None, "use `async with SignedSender(...)`"
        started = time.time()
        all_headers = {**signed_headers(delivery, self.upstream, timestamp), **(headers or {})}
        try:
            async with self._session.post(
                self.base_url + WEBHOOK_PATHS[delivery.source],
                data=delivery.body,
                headers=all_headers,
            ) as response:
                text = await response.text()
                self.attempts.append(
                    Attempt(delivery.delivery_id, response.status, None, time.time(), started)
                )
                return response.status, text
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.attempts.append(Attempt(delivery.delivery_id, None, error, time.time(), started))
            return None, error

    async def deliver(self, delivery: Delivery) -> int | None:
        """Retry until 2xx, a final 4xx, or `give_up_after`; returns the last status."""
        deadline = time.monotonic() + self.give_up_after
        attempt = 0
        status: int | None = None
        while True:
            status, _ = await self.post_once(delivery)
            if status is not None and (status < 300 or (400 <= status < 500 and status != 429)):
                break
            if time.monotonic() > deadline:
                break
            delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            attempt += 1
        self.final[delivery.delivery_id] = status
        return status

    async def stream(
        self,
        deliveries: Iterable[Delivery],
        *,
        concurrency: int = 8,
        pace_seconds: float = 0.0,
    ) -> None:
        """Deliver all, `concurrency` at a time, starting one every `pace_seconds`."""
        gate = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[int | None]] = set()

        async def one(delivery: Delivery) -> int | None:
            try:
                return await self.deliver(delivery)
            finally:
                gate.release()

        try:
            for delivery in deliveries:
                await gate.acquire()
                tasks.add(asyncio.create_task(one(delivery), name=f"send.{delivery.delivery_id}"))
                if pace_seconds:
                    await asyncio.sleep(pace_seconds)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------
# Looking at the results


@dataclass(frozen=True)
class StoreSnapshot:
    """The store's state as `Store` reports it, read after the bridge stopped."""

    outbox_by_state: Mapping[str, int]
    inbox_pending: int
    dead: list[OutboxRow]
    unfinished: list[OutboxRow]
    links: list[tuple[str, str]]
    inbox_delivery_ids: set[str]


async def store_snapshot(
    url: str, delivery_ids: Iterable[tuple[Source, str]] = ()
) -> StoreSnapshot:
    """Open the store with `Store` and read counts, dead letters, links and deliveries."""
    from bridge.store.base import LinkFilter

    store = Store(url, pool_size=2)
    await store.open()
    try:
        counts = await store.counts()
        dead = await store.list_outbox(["dead"], 10_000)
        unfinished = await store.list_outbox(["pending", "claimed"], 10_000)
        links = [(str(r.a), str(r.b)) for r in await store.list_links(LinkFilter(limit=100_000))]
        found = set()
        for source, delivery_id in delivery_ids:
            if await store.find_inbox(source, DeliveryId(delivery_id)) is not None:
                found.add(delivery_id)
        return StoreSnapshot(
            outbox_by_state=dict(counts.outbox_by_state),
            inbox_pending=counts.inbox_pending,
            dead=dead,
            unfinished=unfinished,
            links=links,
            inbox_delivery_ids=found,
        )
    finally:
        await store.close()


async def wait_until(
    condition: Any,
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> None:
    """Await `condition()` (sync or async, truthy = done) until true or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def admin_get(
    session: aiohttp.ClientSession, base_url: str, token: str, path: str
) -> tuple[int, Any]:
    """GET an admin API path with the bearer token; (status, JSON body or None)."""
    async with session.get(
        base_url + path, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = None
        return response.status, body


def escalations_by_key(sandbox: Sandbox) -> dict[str, list[dict[str, Any]]]:
    """The simulated incident.io's escalations grouped by the idempotency key they came from."""
    sim = sandbox.incident_io
    keys: dict[str, str] = dict(sim._idempotency)
    by_id = {e["id"]: e for e in sim.state()["escalations"]}
    out: dict[str, list[dict[str, Any]]] = {}
    for key, esc_id in keys.items():
        out.setdefault(key, []).append(by_id[esc_id])
    return out


# ---------------------------------------------------------------------------------------
# A PostgreSQL server the test owns (so it may stop it)


class PostgresUnavailable(Exception):
    """No way to run a private PostgreSQL server here; the message says why."""


def find_pg_bin() -> Path:
    """The newest `/usr/lib/postgresql/*/bin` with initdb and pg_ctl, or the one on PATH."""
    import shutil

    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    raise PostgresUnavailable("initdb/pg_ctl not found in /usr/lib/postgresql/*/bin or PATH")


class TempPostgres:
    """`initdb` + `pg_ctl` in a temporary directory on a free port, trust auth, loopback only.

    PostgreSQL refuses to run as root; when the tests run as root the server runs as the
    `postgres` system user through `runuser` (the data directory is chowned to it and lives
    directly under the system temp directory, which that user can traverse).
    """

    def __init__(self) -> None:
        import tempfile

        self.bin = find_pg_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd
            import shutil

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run the server as"
                ) from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PostgresUnavailable("running as root and runuser(1) is missing")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._prefix = [runuser, "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [*self._prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-500:]}"
            )

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, as in a failover or restart."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        import shutil

        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
                )
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Raw HTTP for hostile requests (no client-side normalisation)


def raw_request(
    port: int,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One request through `http.client` exactly as given; (status, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None and not any(n.lower() == "content-length" for n, _ in headers):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class RawAnswer:
    """What came back on a raw connection: the status (None if the server closed without
    answering), the headers (lower-case names), the body, and whether the server closed
    the connection after answering (within the read's timeout)."""

    status: int | None
    headers: Mapping[str, str]
    body: bytes
    closed: bool

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    method: str | bytes,
    path: str | bytes,
    headers: Sequence[tuple[str | bytes, str | bytes]] = (),
    body: bytes | None = None,
    *,
    close: bool = True,
) -> bytes:
    """An HTTP/1.1 request as bytes, exactly as given (any byte in a header value), with a
    Host header, a Content-Length for `body` unless one is given, and `Connection: close`
    when `close`."""

    def raw(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode("utf-8")

    lines = [raw(method) + b" " + raw(path) + b" HTTP/1.1", b"Host: bridge.test"]
    lines += [raw(name) + b": " + raw(value) for name, value in headers]
    names = {raw(name).lower() for name, _ in headers}
    if body is not None and b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def raw_exchange(port: int, request: bytes, *, timeout: float = 30.0) -> RawAnswer:
    """Send `request` on a new connection and read the answer (after any interim 1xx) until
    the server closes the connection or `timeout` passes without a byte."""
    data = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # Refused mid-request (answered early, then closed): read what came back.
        with contextlib.suppress(OSError):
            sock.sendall(request)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue): the next one
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2) if head else []
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return RawAnswer(status, headers, body, closed)


def inbox_rows(db_path: Path) -> set[tuple[str, str]]:
    """(source, delivery ID) of every stored delivery, read from a running bridge's SQLite
    file through a read-only connection (WAL lets it read beside the bridge)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT source, delivery_id FROM inbox").fetchall()
    finally:
        conn.close()
    return {(str(source), str(delivery_id)) for source, delivery_id in rows}
