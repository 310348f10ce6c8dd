"""End-to-end fixtures: the real bridge (HTTP listener on loopback, real SQLite store) wired to
both simulators, which deliver real signed webhooks and record every API call they get."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bridge.events import ObjectRef
from bridge.sandbox.stack import SandboxStack

ADMIN_TOKEN = "e2e-admin-token-0123456789"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SandboxStack]:
    async with SandboxStack(
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        overrides={"admin": {"token": ADMIN_TOKEN}},
    ) as running:
        yield running


async def add_link(stack: SandboxStack, a: str, b: str) -> None:
    """Link two objects through the admin API, as an operator would."""
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{stack.url}/api/v1/links",
            json={"a": a, "b": b},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status == 201, await response.text()


async def links_of(stack: SandboxStack, ref: str) -> set[str]:
    """Every object linked to `ref`, as strings."""
    assert stack.bridge is not None
    rows = await stack.bridge.store.linked([ObjectRef.parse(ref)])
    return {str(r.b) if str(r.a) == ref else str(r.a) for r in rows}
