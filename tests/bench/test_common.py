"""The benchmark suite's own arithmetic and run hygiene (the figures it prints are only as
good as these)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.common import dead_port, main_thread_cpu_seconds, paired_ratios, settle_writes
from bench.ingest_bench import unique_requests
from bench.loadgen import LoadResult
from tests.pg import pg_connect, pg_url

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="needs Linux /proc (per-thread CPU times)"
)


@dataclass(frozen=True)
class Run:
    rps: float


def test_paired_ratios_pair_rounds_in_order_and_give_their_median() -> None:
    """Round i of the bridge is divided by round i of the baseline (not by the best
    baseline), and the median is of those ratios."""
    bridge = [Run(400.0), Run(600.0), Run(500.0)]
    bare = [Run(1000.0), Run(1000.0), Run(800.0)]
    assert paired_ratios(bridge, bare) == "0.40 / 0.60 / 0.62 (median 0.60)"


def test_paired_ratios_show_a_zero_baseline_as_unknown() -> None:
    """A baseline run that measured nothing shows n/a and is left out of the median."""
    assert paired_ratios([Run(5.0), Run(3.0)], [Run(0.0), Run(10.0)]) == (
        "n/a / 0.30 (median 0.30)"
    )
    assert paired_ratios([Run(5.0)], [Run(0.0)]) == "n/a"


def test_paired_ratios_refuse_unpaired_rounds() -> None:
    """Runs and baselines of different lengths are a bug in the caller, not a figure."""
    with pytest.raises(ValueError, match=r"shorter|longer"):
        paired_ratios([Run(1.0)], [Run(1.0), Run(2.0)])


def _burn(seconds: float) -> None:
    """Use `seconds` of this thread's CPU time, about half of it in the kernel (a figure
    that left out system time would come out short)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        os.stat(".")


@needs_proc
def test_main_thread_cpu_counts_the_main_thread_only() -> None:
    """The figure is the main thread's (a server's event loop's) CPU: CPU the main thread
    burns shows up in full, CPU another thread of the process burns does not."""
    pid = os.getpid()
    before = main_thread_cpu_seconds(pid)
    _burn(0.3)
    after_main = main_thread_cpu_seconds(pid)
    worker = threading.Thread(target=_burn, args=(0.3,))
    worker.start()
    worker.join()
    after_worker = main_thread_cpu_seconds(pid)
    assert before is not None and after_main is not None and after_worker is not None
    # Clock ticks are 10 ms: allow a few of them either way.
    assert after_main - before == pytest.approx(0.3, abs=0.05)
    assert after_worker - after_main < 0.05


@needs_proc
def test_main_thread_cpu_of_a_process_that_is_gone_is_unknown() -> None:
    """A pid with no process behind it gives None, not an exception or zero."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert main_thread_cpu_seconds(int(child.stdout)) is None


def test_server_cpu_per_request_is_loop_time_over_requests() -> None:
    """A loop 50% busy over a 2 s run of 1,000 requests spent 1,000 µs per request; a run
    whose server was not timed has no figure."""
    run = LoadResult("python", sent=1000, seconds=2.0, statuses={"200": 1000}, latency_ms={})
    assert run.server_us_per_request is None
    timed = LoadResult(
        "python", sent=1000, seconds=2.0, statuses={"200": 1000}, latency_ms={}, server_cpu=0.5
    )
    assert timed.server_us_per_request == pytest.approx(1000.0)


@pytest.mark.parametrize("bare_rps", [50.0, 3_000.0, 26_000.0, 80_000.0])
def test_peak_runs_get_more_unique_requests_than_the_bare_handler_answered(
    bare_rps: float,
) -> None:
    """A peak run never replays a request as long as the bridge is no faster than the bare
    handler, whatever this machine's speed: the count scales with the bare rate. (A fixed
    count of 6,000 req/s made 60% of one faster machine's requests cheap duplicates.)"""
    seconds = 3.0
    unique = unique_requests(bare_rps, seconds)
    assert unique > bare_rps * seconds
    assert unique <= bare_rps * seconds * 1.5 + 100  # bounded: each is signed and written out


async def test_settling_writes_checkpoints_the_postgresql_server() -> None:
    """Before a run on PostgreSQL the server is checkpointed (a new checkpoint record is
    in its control file when the call returns), so the run does not inherit the writeback
    of the runs before it."""
    conn = await pg_connect()
    try:
        latest = "SELECT (checkpoint_lsn - '0/0')::bigint FROM pg_control_checkpoint()"
        before = await conn.fetchval(latest)
        assert await settle_writes(pg_url()) is None
        assert await conn.fetchval(latest) > before
    finally:
        await conn.close()


async def test_settling_writes_without_the_right_to_checkpoint_says_why() -> None:
    """A role that may not run CHECKPOINT gets the reason back (printed in the figure's
    note) instead of an exception that would end the benchmark."""
    conn = await pg_connect()
    role = f"t_nockpt_{secrets.token_hex(4)}"
    await conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        parts = urllib.parse.urlsplit(pg_url())
        host = parts.netloc.rsplit("@", 1)[-1]
        as_role = urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@{host}"))
        reason = await settle_writes(as_role)
        assert reason is not None
        assert reason.startswith("no CHECKPOINT before the runs:")
        assert "CHECKPOINT" in reason.split(":", 1)[1]
    finally:
        await conn.execute(f'DROP ROLE "{role}"')
        await conn.close()


async def test_settling_writes_with_postgresql_unreachable_says_why() -> None:
    """A server that cannot be reached is a note on the figure, not a crashed benchmark."""
    reason = await settle_writes(f"postgresql://postgres@127.0.0.1:{dead_port()}/test")
    assert reason == "no CHECKPOINT before the runs: ConnectionRefusedError"
