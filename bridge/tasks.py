"""Ownership of background tasks: every task is named, guarded and stopped on shutdown.

`Supervisor.spawn_loop` runs a long-lived worker coroutine and restarts it (with capped
backoff) if it raises, logging `task.crashed`; a bug in one loop never silently stops the
bridge from working. `stop()` cancels what is left and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from bridge.logging import Logger


class Supervisor:
    def __init__(self, logger: Logger) -> None:
        self._log = logger
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def names(self) -> list[str]:
        return sorted(t.get_name() for t in self._tasks)

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` once as a named task; an exception is logged, never lost."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def spawn_loop(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        max_backoff: float = 30.0,
    ) -> asyncio.Task[Any]:
        """Run `factory()` until stopped, restarting it with backoff if it raises."""

        async def guarded() -> None:
            delay = 0.1
            while not self._stopping:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._log.error("task.crashed", task=name, error=repr(exc), restart_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_backoff)

        return self.spawn(name, guarded())

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("task.failed", task=task.get_name(), error=repr(exc))

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every task still running and wait (bounded) for them to finish."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), timeout=timeout
                )
