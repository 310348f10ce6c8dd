"""Shutdown is bounded by the grace period even when clients misbehave."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from bridge.app import Bridge
from tests.conftest import bridge_settings


async def test_client_trickling_a_body_does_not_stretch_shutdown(tmp_path: Path) -> None:
    """A client that announced a body and never sends it holds no stored delivery, so
    stopping does not wait the grace period for it (twice, as it once did): stop() returns
    well within the grace period, which the deployment's termination period is sized on."""
    grace = 3.0
    settings = bridge_settings(tmp_path, server={"shutdown_grace_seconds": grace})
    bridge = Bridge(settings, env={}, registry=CollectorRegistry())
    await bridge.start()
    assert bridge.endpoint is not None
    _reader, writer = await asyncio.open_connection("127.0.0.1", bridge.endpoint.port)
    writer.write(
        b"POST /webhooks/rootly HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the request is in the handler, waiting for its body
    started = time.monotonic()
    await bridge.stop()
    took = time.monotonic() - started
    writer.close()
    await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    assert took < grace, took
