"""Fixtures for the API client tests: a real aiohttp server on loopback that records requests.

Each test scripts the answers (`RecordingServer.reply` / `.handler`) and inspects
`RecordingServer.requests` afterwards. No mocks: the clients speak real HTTP over a socket.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from bridge.metrics import Metrics, create_metrics
from bridge.platforms.incident_io.client import IncidentIoClient
from bridge.platforms.incident_io.limits import LIMITS as INCIDENT_IO_LIMITS
from bridge.platforms.ratelimit import KeyLimiter, Limit, PlatformLimits, RateLimiters
from bridge.platforms.rootly.client import RootlyClient
from bridge.platforms.rootly.limits import LIMITS as ROOTLY_LIMITS

ROOTLY_TOKEN = "rootly-secret-token-0123456789"
INCIDENT_IO_TOKEN = "inc-secret-key-9876543210"
ALERT_SOURCE_TOKEN = "alert-source-secret-abcdef"
ALERT_SOURCE_CONFIG_ID = "01GW2G3V0S59R238FAHPDS1R66"


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    raw_path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Handler = Callable[[Recorded], Awaitable[web.StreamResponse]]


def json_response(
    status: int, body: Any, headers: Mapping[str, str] | None = None, *, content_type: str
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body) if body is not None else "",
        headers=dict(headers or {}),
        content_type=content_type if body is not None else None,
    )


class RecordingServer:
    """A loopback HTTP server that records every request and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._queue: deque[Handler] = deque()
        self.default: Handler | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    def handler(self, handler: Handler, *, times: int = 1) -> None:
        """Answer the next `times` requests with `handler`."""
        self._queue.extend([handler] * times)

    def reply(
        self,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        content_type: str = "application/json",
        raw: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests with a fixed response."""

        async def respond(_: Recorded) -> web.StreamResponse:
            if raw is not None:
                return web.Response(status=status, text=raw, headers=dict(headers or {}))
            return json_response(status, body, headers, content_type=content_type)

        self.handler(respond, times=times)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        recorded = Recorded(
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query=tuple(request.query.items()),
            headers=dict(request.headers),
            body=await request.read(),
        )
        self.requests.append(recorded)
        handler = self._queue.popleft() if self._queue else self.default
        if handler is None:
            return web.json_response({"error": "no scripted answer"}, status=599)
        return await handler(recorded)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    srv = RecordingServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
def metrics() -> Metrics:
    return create_metrics(CollectorRegistry())


def fast_limiter(limits: PlatformLimits) -> KeyLimiter:
    """Quotas of the platform's shape that never make a test wait."""
    return RateLimiters().get(
        limits, "test-key", {q.name: Limit(600_000.0, 10_000.0) for q in limits.quotas}
    )


@pytest.fixture
async def rootly(server: RecordingServer, metrics: Metrics) -> AsyncIterator[RootlyClient]:
    client = RootlyClient(
        token=ROOTLY_TOKEN,
        limiter=fast_limiter(ROOTLY_LIMITS),
        metrics=metrics,
        base_url=server.url,
        total_timeout=2.0,
    )
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def incident_io(server: RecordingServer, metrics: Metrics) -> AsyncIterator[IncidentIoClient]:
    client = IncidentIoClient(
        token=INCIDENT_IO_TOKEN,
        limiter=fast_limiter(INCIDENT_IO_LIMITS),
        metrics=metrics,
        base_url=server.url,
        alert_source_config_id=ALERT_SOURCE_CONFIG_ID,
        alert_source_token=ALERT_SOURCE_TOKEN,
        total_timeout=2.0,
    )
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def counter_value(metrics: Metrics, name: str, **labels: str) -> float:
    """Current value of a sample in the metrics registry (0 if absent)."""
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0
