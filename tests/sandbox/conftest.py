"""Fixtures for the sandbox tests: a running Sandbox, a webhook receiver, an HTTP client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.sandbox import Sandbox
from tests.specs import load_spec


@dataclass
class Received:
    """One webhook the receiver got."""

    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.raw)
        return data


@dataclass
class Receiver:
    """A loopback aiohttp app collecting webhooks; answers from `statuses` first, then 200."""

    url: str = ""
    got: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def of(self, platform: str) -> list[Received]:
        return [r for r in self.got if r.path == f"/{platform}"]

    def types(self, platform: str) -> list[str]:
        if platform == "rootly":
            return [r.body["event"]["type"] for r in self.of(platform)]
        return [r.body["event_type"] for r in self.of(platform)]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def handle(request: web.Request) -> web.Response:
        rec.got.append(Received(request.path, dict(request.headers), await request.read()))
        return web.Response(status=rec.statuses.pop(0) if rec.statuses else 200)

    app = web.Application()
    app.router.add_post("/{platform}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def sandbox(receiver: Receiver) -> AsyncIterator[Sandbox]:
    load_spec("rootly")
    load_spec("incident_io")
    async with Sandbox(seed=7, webhook_retry_delays=(0.05, 0.1)) as sb:
        sb.set_webhook_targets(
            rootly=f"{receiver.url}/rootly", incident_io=f"{receiver.url}/incident_io"
        )
        yield sb


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass(frozen=True)
class Answer:
    """A simulator's answer."""

    status: int
    headers: dict[str, str]
    body: Any


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> Answer:
    """One HTTP request; the body is JSON-encoded, the answer parsed when it is JSON."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body)
    async with session.request(method, url, data=data, headers=headers) as resp:
        raw = await resp.read()
        parsed = json.loads(raw) if raw.strip() else None
        return Answer(resp.status, dict(resp.headers), parsed)
