"""Fixtures of the console suite: a real bridge (SQLite) wired to both simulators with the
admin token set, and an HTTP client that signs in as an operator would."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.sandbox.stack import SandboxStack

TOKEN = "console-admin-token-0123456789"


def console_stack(tmp_path: Path, **overrides: Any) -> SandboxStack:
    """A stack with the console on; its link checker runs only when a test says so, and an
    action is dead-lettered after two failed attempts, retried within 50 ms."""
    return SandboxStack(
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        overrides={
            "admin": {"token": TOKEN},
            "scheduler": {"reconcile_poll_seconds": 3600, "reconcile_seconds": 30},
            "executor": {
                "max_attempts": 2,
                "backoff_base_seconds": 0.01,
                "backoff_max_seconds": 0.05,
                "poll_interval_seconds": 0.1,
            },
            **overrides,
        },
    )


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SandboxStack]:
    async with console_stack(tmp_path) as running:
        yield running


def hidden(html: str, name: str) -> str:
    """The value of the hidden form field `name` in `html`."""
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match is not None, f"no {name} field"
    return match.group(1)


@dataclass
class Operator:
    """An HTTP client that keeps cookies, as a browser does (not following redirects, so
    tests see them)."""

    base: str
    http: aiohttp.ClientSession

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(self.base + path, allow_redirects=False, **kwargs) as response:
            return response.status, await response.text(), response

    async def post(
        self, path: str, data: dict[str, str], **kwargs: Any
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.post(
            self.base + path, data=data, allow_redirects=False, **kwargs
        ) as response:
            return response.status, await response.text(), response

    async def sign_in(self, token: str = TOKEN) -> tuple[int, aiohttp.ClientResponse]:
        _, form, _ = await self.get("/console/login")
        status, _, response = await self.post(
            "/console/login",
            {"token": token, "login_csrf": hidden(form, "login_csrf"), "next": "/console/events"},
        )
        return status, response

    async def csrf(self) -> str:
        _, html, _ = await self.get("/console/rules")
        return hidden(html, "csrf")


@pytest.fixture
async def operator(stack: SandboxStack) -> AsyncIterator[Operator]:
    """Not signed in yet."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Operator(stack.url, http)
