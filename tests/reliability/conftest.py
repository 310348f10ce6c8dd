"""Fixtures of the reliability suite: an in-test sandbox and subprocess bridges cleaned up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge.sandbox import Sandbox
from tests.reliability.harness import (
    FAST_ESCALATIONS,
    BridgeProcess,
    Upstream,
    bridge_env,
    free_port,
    sqlite_url,
    write_config,
)

# Long enough that a bridge being SIGKILLed and restarted (about 2-3 s) is still reached.
SANDBOX_WEBHOOK_RETRIES = (0.1, 0.2, 0.5, 1, 1, 2, 2, 3, 5, 5, 10, 10)

BridgeFactory = Callable[..., BridgeProcess]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """Both simulators on loopback, seeded, with webhook retries that outlast a restart."""
    async with Sandbox(
        seed=12,
        webhook_retry_delays=SANDBOX_WEBHOOK_RETRIES,
        incident_io_escalation_create_per_minute=FAST_ESCALATIONS,
    ) as sb:
        yield sb


@pytest.fixture
def bridge_factory(tmp_path: Path) -> Iterator[BridgeFactory]:
    """Build `BridgeProcess`es in their own directories; none outlives the test."""
    made: list[BridgeProcess] = []

    def make(
        upstream: Upstream,
        *,
        name: str = "bridge",
        store_url: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        admin_token: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        port: int | None = None,
    ) -> BridgeProcess:
        directory = tmp_path / name
        directory.mkdir()
        chosen = port or free_port()
        url = store_url or sqlite_url(directory / "bridge.db")
        config = write_config(directory, port=chosen, store_url=url, overrides=overrides)
        proc = BridgeProcess(
            config=config,
            env=bridge_env(upstream, admin_token=admin_token, extra=extra_env),
            port=chosen,
            log_path=directory / "bridge.log",
            args=args,
            store_url=url,
        )
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.cleanup()
