"""Group commit (`GroupCommit`): batching, failure of a batch and of one item in it, crash
recovery, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import structlog

from bridge.pipeline.batching import GroupCommit, WriteRefused
from bridge.store.base import StoreError, StoreUnavailable
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


async def test_an_item_the_store_refuses_fails_alone_and_the_others_are_written() -> None:
    """A batch whose write fails with an error other than "unavailable" (the store refuses
    a value) is written again in halves until the refused item is alone: every other item
    is written (in transactions of their own) and gets its result, and only the refused
    one fails, with `WriteRefused` carrying the store's message. Costs about 2 log2(n)
    writes more, only after a failed write."""
    supervisor = Supervisor(structlog.get_logger("test"))
    writes: list[list[int]] = []
    written: list[int] = []

    async def write(items: Sequence[int]) -> list[int]:
        writes.append(list(items))
        if 13 in items:
            raise StoreError("value 13 cannot be stored")
        written.extend(items)
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit("test.commit", write, supervisor)
    commit.start()
    try:
        results = await asyncio.gather(
            *(commit.submit(i) for i in range(32)), return_exceptions=True
        )
    finally:
        await supervisor.stop()
    assert results[:13] + results[14:] == [i * 10 for i in range(32) if i != 13]
    refused = results[13]
    assert isinstance(refused, WriteRefused)
    assert str(refused) == "value 13 cannot be stored"
    assert sorted(written) == [i for i in range(32) if i != 13]
    assert writes[0] == list(range(32))
    assert len(writes) <= 1 + 2 * 5


async def test_an_exception_from_the_driver_is_isolated_too() -> None:
    """An exception that is not a StoreError at all (a driver's UnicodeEncodeError for a
    lone surrogate) is isolated the same way: the refused item fails with `WriteRefused`
    naming it, the others are written."""
    supervisor = Supervisor(structlog.get_logger("test"))

    async def write(items: Sequence[str]) -> list[str]:
        for item in items:
            item.encode("utf-8")
        return list(items)

    commit: GroupCommit[str, str] = GroupCommit("test.commit", write, supervisor)
    commit.start()
    try:
        results = await asyncio.gather(
            *(commit.submit(s) for s in ("a", "\ud800", "b", "c")), return_exceptions=True
        )
    finally:
        await supervisor.stop()
    assert [results[0], *results[2:]] == ["a", "b", "c"]
    assert isinstance(results[1], WriteRefused)
    assert "UnicodeEncodeError" in str(results[1])


async def test_an_unavailable_store_fails_the_batch_and_is_never_blamed_on_an_item() -> None:
    """When the store is unavailable (`StoreUnavailable`), no item is at fault: every caller
    of the batch gets that error (ingest answers 503, the senders retry) and the batch is
    not written again piece by piece; and when the store becomes unavailable while a
    refused batch is written again in halves, the half already written keeps its results
    and the rest fails with `StoreUnavailable`, not `WriteRefused` (400)."""
    supervisor = Supervisor(structlog.get_logger("test"))
    script: list[type[StoreError] | None] = [StoreUnavailable, StoreError, None]
    writes = 0

    async def write(items: Sequence[int]) -> list[int]:
        nonlocal writes
        writes += 1
        error = script.pop(0) if script else StoreUnavailable
        if error is not None:
            raise error("down" if error is StoreUnavailable else "refused")
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit("test.commit", write, supervisor)
    commit.start()
    try:
        outage = await asyncio.gather(*(commit.submit(i) for i in range(8)), return_exceptions=True)
        assert writes == 1
        assert all(type(r) is StoreUnavailable for r in outage)
        results = await asyncio.gather(
            *(commit.submit(i) for i in range(4)), return_exceptions=True
        )
    finally:
        await supervisor.stop()
    assert results[:2] == [0, 1]
    assert all(type(r) is StoreUnavailable for r in results[2:])
