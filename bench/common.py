"""Shared parts of the benchmark suite: figures, scales, percentiles, processes, databases.

A benchmark returns `Figure`s: one measured value, the baseline measured in the same run,
their ratio and the target from issue 11. Benchmarks never fail: a missed target is printed
as `MISS`, a benchmark that cannot run here (no PostgreSQL) as `SKIP` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import asyncpg

if TYPE_CHECKING:
    from bridge.sandbox import Sandbox

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
# What `asyncpg.connect` raises for a server that is down, refuses or rejects us.
PG_CONNECT_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True)
class Scale:
    """How big each benchmark is. `FULL` is `make bench`; `TINY` only proves they run."""

    name: str
    ingest_seconds: float  # one throughput run per target (bare, bridge) and endpoint
    latency_seconds: float  # one fixed-rate run per target, endpoint and round
    connections: int
    e2a_events: int  # event-to-action: events sent at `e2a_rate`
    e2a_rate: float
    drain_actions: int
    drain_speedup: float  # rate-limit drain: both buckets' rates multiplied by this
    links: int
    lookups: int
    rules_events: int
    backends: tuple[str, ...]
    # Alternating bare/bridge runs, the best of each kept: peak throughput, then p99 at half
    # of it. More throughput rounds than latency ones, as they are shorter: the best of three
    # ranged from 0.40 to 0.61 of bare across four benchmarks on this project's machine, and
    # more rounds bring the best of each side closer to what its code can do.
    ingest_rounds: int = 1
    latency_rounds: int = 1
    # Rate limits (bench/ratelimit_bench.py): a burst of Rootly incidents paging through
    # incident.io's escalation-create limit, replicas draining a backlog on PostgreSQL, and
    # cancels sent while lower-class actions are queued. Rates are scaled by the speedups.
    burst_incidents: int = 100
    burst_speedup: float = 4.0
    replicas: int = 3
    replica_actions: int = 3000
    replica_speedup: float = 4.0
    priority_backlog: int = 10_000
    priority_cancels: int = 20


FULL = Scale(
    "full",
    3.0,
    5.0,
    32,
    500,
    100.0,
    3000,
    4.0,
    1_000_000,
    5000,
    10_000,
    ("sqlite", "postgresql"),
    ingest_rounds=5,
    latency_rounds=3,
)
QUICK = Scale(
    "quick",
    2.0,
    3.0,
    32,
    300,
    100.0,
    1000,
    10.0,
    100_000,
    2000,
    3000,
    ("sqlite", "postgresql"),
    ingest_rounds=2,
    latency_rounds=2,
    burst_speedup=10.0,
    replica_actions=1000,
    replica_speedup=10.0,
    priority_cancels=10,
)
TINY = Scale(
    "tiny",
    0.5,
    0.5,
    4,
    10,
    50.0,
    60,
    10.0,
    500,
    50,
    100,
    ("sqlite",),
    burst_incidents=20,
    burst_speedup=20.0,
    replicas=2,
    replica_actions=100,
    replica_speedup=20.0,
    priority_backlog=200,
    priority_cancels=3,
)


@dataclass(frozen=True)
class Figure:
    """One reported number, its same-run baseline, and the issue's target for it."""

    name: str  # e.g. "ingest.sqlite.incident_io"
    metric: str  # e.g. "throughput"
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = "bare"
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None  # None: informational, or skipped
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "SKIP"
        if self.ok is None:
            return "-"
        return "OK" if self.ok else "MISS"

    def line(self) -> str:
        parts = [f"{self.name:<30}", f"{self.metric} {fmt(self.value)} {self.unit}".rstrip()]
        if self.baseline is not None:
            parts.append(f"{self.baseline_label} {fmt(self.baseline)} {self.unit}".rstrip())
        if self.ratio is not None:
            parts.append(f"ratio {self.ratio:.3g}")
        if self.target:
            parts.append(f"target {self.target}")
        parts.append(self.verdict)
        if self.note:
            parts.append(f"({self.note})")
        return "  ".join(parts)


def skipped(name: str, metric: str, reason: str) -> Figure:
    """A figure that could not be measured on this machine."""
    return Figure(name, metric, None, "", note=reason)


def fmt(value: float | None) -> str:
    """Three significant digits, no exponent for everyday magnitudes."""
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


def ratio(value: float, baseline: float) -> float | None:
    return value / baseline if baseline > 0 else None


class Rated(Protocol):
    """A load run, as far as comparing rates needs it."""

    @property
    def rps(self) -> float: ...


def paired_ratios(runs: Sequence[Rated], baselines: Sequence[Rated]) -> str:
    """Each run's rate over its baseline run's (paired by round), and their median, e.g.
    "0.49 / 0.58 / 0.55 (median 0.55)"; a round whose baseline measured 0 shows "n/a"."""
    ratios = [ratio(run.rps, base.rps) for run, base in zip(runs, baselines, strict=True)]
    shown = " / ".join("n/a" if r is None else f"{r:.2f}" for r in ratios)
    known = [r for r in ratios if r is not None]
    if not known:
        return shown
    return f"{shown} (median {statistics.median(known):.2f})"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def free_port() -> int:
    """A loopback TCP port free right now (for a server started in another process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_port() -> int:
    """A loopback port nothing listens on: API calls to it fail fast (connection refused)."""
    return free_port()


def main_thread_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process's main thread has used so far: for a server, its
    event loop's. None where /proc is not there (only Linux has it)."""
    try:
        stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may itself hold spaces and parentheses:
    # state is the 3rd field of the line, utime and stime the 14th and 15th.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB; None if unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def wait_http_ok(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `url` until it answers 200; raise RuntimeError on timeout or if `proc` exits."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process we started, then SIGKILL it if it does not stop in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def pg_url() -> str:
    return os.environ.get("BRIDGE_TEST_PG_URL", DEFAULT_PG_URL)


def with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """Create `bench_<random>` on the PostgreSQL server, yield its URL, drop it afterwards.

    Raises OSError / asyncpg errors when the server cannot be reached (the caller reports a
    SKIP). The database is dropped even if the benchmark fails.
    """
    admin_url = pg_url()
    name = f"bench_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(admin_url, name)
    finally:
        conn = await asyncpg.connect(admin_url, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def settle_writes(pg: str | None) -> str | None:
    """Leave no flush debt from earlier runs to the next one: write back the page cache
    (`sync`) and, when the store is PostgreSQL at `pg`, run a `CHECKPOINT` (server-wide).

    Why: Linux writes dirty pages back about 30 s after they were written
    (`vm.dirty_expire_centisecs`), so without this a fixed-rate run would inherit the
    writeback of a peak run half a minute before it; measured on PostgreSQL, that writeback
    held the bridge's WAL flush (`fdatasync`, the backend in `blkdev_issue_flush`) for
    70-200 ms, in the run 30 s after the peak in eight series of nine, both cores idle in
    iowait (docs/benchmarks.md). Returns None, or why the checkpoint could not run (it needs
    a superuser or `pg_checkpoint`): the run goes on and its note says so.
    """
    await asyncio.to_thread(os.sync)
    if pg is None:
        return None
    try:
        conn = await asyncpg.connect(pg, timeout=5)
    except PG_CONNECT_ERRORS as exc:
        return f"no CHECKPOINT before the runs: {type(exc).__name__}"
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.PostgresError as exc:
        return f"no CHECKPOINT before the runs: {exc}"
    finally:
        await conn.close()
    return None


async def pg_reachable() -> str | None:
    """None if the benchmark PostgreSQL server answers, else the reason it does not."""
    try:
        conn = await asyncpg.connect(pg_url(), timeout=3)
    except PG_CONNECT_ERRORS as exc:
        return f"PostgreSQL unavailable: {type(exc).__name__}; set BRIDGE_TEST_PG_URL"
    await conn.close()
    return None


def rootly_alert_created(alert_id: str, n: int) -> bytes:
    """A realistic Rootly `alert.created` webhook body (the benchmarks' standard event)."""
    return json.dumps(
        {
            "event": {
                "id": str(uuid.uuid4()),
                "type": "alert.created",
                "issued_at": datetime.now(UTC).isoformat(),
            },
            "data": {
                "id": alert_id,
                "source": "datadog",
                "status": "triggered",
                "summary": f"Checkout error rate above 5% ({n})",
                "description": "p99 latency and 5xx rate on checkout-api are above their SLO.",
                "external_url": f"https://app.datadoghq.com/monitors/{n}",
                "incident_ids": [],
                "labels": [
                    {"key": "service", "value": "checkout-api"},
                    {"key": "env", "value": "prod"},
                ],
                "created_at": datetime.now(UTC).isoformat(),
            },
        }
    ).encode()


async def paced(
    count: int, rate: float, start_one: Callable[[int], Coroutine[Any, Any, None]], name: str
) -> None:
    """Start `start_one(i)` for i in range(count) at `rate` per second (by schedule, not by
    completion, so a slow answer does not slow the offered load), then wait for all."""
    start = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(start_one(i), name=f"{name}-{i}"))
    await asyncio.gather(*tasks)


def sandbox_bridge_env(
    sim: Sandbox, port: int, store_url: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a `bridge serve` process wired to `sim`: this process's own
    without ``BRIDGE_`` variables, the default rules (not reloaded), warnings as JSON, the
    simulators' URLs and credentials, then `extra` (full variable names)."""
    from bridge.sandbox.stack import DEFAULT_RULES, sandbox_overrides, sandbox_rule_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_SERVER__HOST="127.0.0.1",
        BRIDGE_SERVER__PORT=str(port),
        BRIDGE_STORE__URL=store_url,
        BRIDGE_RULES_FILE=str(DEFAULT_RULES),
        BRIDGE_RULES__RELOAD="false",
        BRIDGE_LOGGING__LEVEL="warning",
        BRIDGE_LOGGING__FORMAT="json",
        **sandbox_rule_env(sim),
    )
    for group, values in sandbox_overrides(sim).items():
        for key, value in values.items():
            env[f"BRIDGE_{group.upper()}__{key.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    env.update(extra or {})
    return env


def spawn_bridge(env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """`python -m bridge serve` in `cwd` with `env`, its output in `cwd/bridge.log`.
    Returns the process and the open log; the caller stops the one and closes the other."""
    log = (cwd / "bridge.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve"],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    return proc, log
