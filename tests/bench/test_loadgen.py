"""The fixed-rate load generator's own lateness report: what separates a late generator
from a slow server in a latency run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from bench.loadgen import raw_request, replay_in_loop


@contextlib.asynccontextmanager
async def http_server(reply_delay: float) -> AsyncIterator[int]:
    """An aiohttp server on loopback that answers every POST 200 after `reply_delay`
    seconds; yields its port."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(reply_delay)
        return web.Response()

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def requests(port: int, count: int) -> list[bytes]:
    return [raw_request("127.0.0.1", port, "/", {}, b"{}") for _ in range(count)]


async def test_a_generator_that_is_itself_held_up_reports_its_own_lateness() -> None:
    """Blocking the generator's loop for 80 ms in the middle of a fixed-rate run (as a
    descheduled generator process would be) shows up as send lateness of most of those
    80 ms, alongside the latency it also adds: the report tells the two apart."""
    async with http_server(reply_delay=0.0) as port:
        asyncio.get_running_loop().call_later(0.2, time.sleep, 0.08)
        result = await replay_in_loop(
            "127.0.0.1", port, requests(port, 400), connections=2, seconds=0.5, rate=200.0
        )
    assert result.statuses == {"200": result.sent}
    assert result.send_lag_ms is not None
    assert result.send_lag_ms["max"] >= 60.0
    assert result.latency_ms["max"] >= 60.0


async def test_a_slow_server_is_not_counted_as_the_generators_lateness() -> None:
    """A server that takes 30 ms per answer, on one connection scheduled every 10 ms:
    every send waits for the previous answer, which is the server's delay (in the
    latency, measured from the schedule) and never the generator's own lateness."""
    async with http_server(reply_delay=0.03) as port:
        result = await replay_in_loop(
            "127.0.0.1", port, requests(port, 100), connections=1, seconds=0.3, rate=100.0
        )
    assert result.sent >= 2
    assert result.latency_ms["max"] >= 30.0
    assert result.send_lag_ms == {"p99": 0.0, "max": 0.0}


async def test_a_closed_loop_run_has_no_lateness_to_report() -> None:
    """Without a rate there is no schedule to be late for: no lateness figure at all."""
    async with http_server(reply_delay=0.0) as port:
        result = await replay_in_loop(
            "127.0.0.1", port, requests(port, 50), connections=1, seconds=0.2, rate=None
        )
    assert result.sent > 0
    assert result.send_lag_ms is None
