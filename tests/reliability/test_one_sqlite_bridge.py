"""SQLite serves one bridge process: a second `bridge serve` on the same file is refused."""

from __future__ import annotations

import asyncio

from tests.reliability.conftest import BridgeFactory
from tests.reliability.harness import Upstream


async def test_a_second_bridge_on_one_sqlite_file_exits_naming_the_holder(
    bridge_factory: BridgeFactory,
) -> None:
    """While a bridge serves an SQLite store, a second `bridge serve` given the same file
    exits 1 at start, naming the file and the first bridge's PID (two would both act as
    leader and race on one file); the first keeps serving."""
    upstream = Upstream.unreachable()
    first = bridge_factory(upstream, name="first")
    first.start()
    await first.wait_ready()
    second = bridge_factory(upstream, name="second", store_url=first.store_url)
    second.start()
    assert second.proc is not None
    code = await asyncio.wait_for(asyncio.to_thread(second.proc.wait), timeout=30)
    assert code == 1
    log = second.log_text()
    assert f"PID {first.pid}" in log
    assert first.store_url.removeprefix("sqlite:///") in log
    assert "Traceback" not in log
    assert first.alive()
    assert await first.terminate_async() == 0
