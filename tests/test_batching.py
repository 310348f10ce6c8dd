"""Group commit (`GroupCommit`): batching, failure of a batch, crash recovery, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import structlog

from bridge.pipeline.batching import GroupCommit
from bridge.store.base import StoreError
from bridge.tasks import Supervisor


async def test_concurrent_items_share_one_write() -> None:
    """Items submitted together are written in one call, each caller gets its own result."""
    supervisor = Supervisor(structlog.get_logger("test"))
    calls: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit("test.commit", write, supervisor)
    commit.start()
    try:
        assert await asyncio.gather(*(commit.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
        assert calls == [[0, 1, 2, 3, 4]]
    finally:
        await supervisor.stop()


async def test_a_write_lets_work_already_scheduled_join_it() -> None:
    """A submission scheduled in the same loop turn as the writer's wake-up, but behind
    it, joins that write instead of waiting for the next one: the writer lets the loop's
    queued work run first (under load: the answers of the last batch, handlers about to
    submit)."""
    supervisor = Supervisor(structlog.get_logger("test"))
    calls: list[list[str]] = []

    async def write(items: Sequence[str]) -> list[str]:
        calls.append(list(items))
        return list(items)

    commit: GroupCommit[str, str] = GroupCommit("test.commit", write, supervisor)
    commit.start()
    try:
        for _ in range(3):  # the writer starts and waits for work
            await asyncio.sleep(0)
        first = asyncio.ensure_future(commit.submit("a"))
        # Next turn `first` queues "a" and schedules the writer's wake-up; this coroutine
        # resumes after it in that same turn and schedules the second submission, which
        # the loop runs after the writer's wake-up.
        await asyncio.sleep(0)
        second = asyncio.ensure_future(commit.submit("b"))
        assert [await first, await second] == ["a", "b"]
        assert calls == [["a", "b"]]
    finally:
        await supervisor.stop()


async def test_a_crashed_loop_is_restarted_and_stays_open() -> None:
    """A bug in the after-write callback crashes the loop once: the supervisor restarts it
    and later submissions are written (they are not refused as if shutting down)."""
    supervisor = Supervisor(structlog.get_logger("test"))
    crashes = 0

    async def write(items: Sequence[int]) -> list[int]:
        return list(items)

    def on_written(_results: Sequence[int]) -> None:
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            raise RuntimeError("bug in a callback")

    commit: GroupCommit[int, int] = GroupCommit(
        "test.commit", write, supervisor, on_written=on_written
    )
    commit.start()
    try:
        assert await commit.submit(1) == 1  # written; then the callback crashed the loop
        assert await asyncio.wait_for(commit.submit(2), timeout=5) == 2
        assert crashes == 1
    finally:
        await supervisor.stop()


async def test_stopped_commit_refuses_and_fails_waiters() -> None:
    """After the supervisor stops the loop, a submission fails at once with a StoreError
    instead of waiting forever."""
    supervisor = Supervisor(structlog.get_logger("test"))

    async def write(items: Sequence[int]) -> list[int]:
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit("test.commit", write, supervisor)
    commit.start()
    await asyncio.sleep(0)
    await supervisor.stop()
    with pytest.raises(StoreError, match="shutting down"):
        await asyncio.wait_for(commit.submit(1), timeout=5)


async def test_stopping_while_a_crashed_loop_waits_to_restart_fails_waiters() -> None:
    """The supervisor stopped during the back-off before it restarts a crashed loop: what
    was submitted meanwhile fails with a StoreError, and so does anything submitted after,
    instead of waiting forever for a loop that will never run again."""
    supervisor = Supervisor(structlog.get_logger("test"))
    crashed = asyncio.Event()
    writes = 0

    async def write(items: Sequence[int]) -> list[int]:
        nonlocal writes
        writes += 1
        if writes > 1:
            # Had the machine been slow enough for the restart to beat stop(), the loop
            # would hold item 2 here until cancelled, and still fail it as shutting down.
            await asyncio.Event().wait()
        return list(items)

    def on_written(_results: Sequence[int]) -> None:
        crashed.set()
        raise RuntimeError("bug in a callback")

    commit: GroupCommit[int, int] = GroupCommit(
        "test.commit", write, supervisor, on_written=on_written
    )
    commit.start()
    assert await commit.submit(1) == 1  # written; then the callback crashed the loop
    await crashed.wait()
    waiting = asyncio.ensure_future(commit.submit(2))  # queued while the loop is down
    await asyncio.sleep(0)
    await supervisor.stop()  # within the restart's 0.1 s back-off
    with pytest.raises(StoreError, match="shutting down"):
        await asyncio.wait_for(waiting, timeout=5)
    with pytest.raises(StoreError, match="shutting down"):
        await asyncio.wait_for(commit.submit(3), timeout=5)


async def test_stopped_before_the_loop_ever_ran_fails_submissions() -> None:
    """The supervisor stopped before the commit's loop took its first step (its coroutine
    never starts, so no handler inside it runs): a submission still fails with a StoreError
    instead of waiting forever."""
    supervisor = Supervisor(structlog.get_logger("test"))

    async def write(items: Sequence[int]) -> list[int]:
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit("test.commit", write, supervisor)
    commit.start()
    await supervisor.stop()
    with pytest.raises(StoreError, match="shutting down"):
        await asyncio.wait_for(commit.submit(1), timeout=5)
