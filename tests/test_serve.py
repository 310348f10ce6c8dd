"""`bridge serve`'s start-up steps that run in-process (the command itself runs as a real
child process in tests/test_cli.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import structlog

from bridge.logging import get_logger
from bridge.serve import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen_after() -> Iterator[None]:
    """The test process's heap is thawed again, so later tests collect as usual."""
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("unfrozen_after")
def test_freezing_collects_garbage_first_and_keeps_live_objects_out_of_collections() -> None:
    """Garbage cycles that exist at start-up are collected, not frozen for the process's
    life; what is alive is frozen (a full collection no longer walks it); the count is
    logged as `bridge.heap_frozen`."""
    garbage_a, garbage_b = _Node(), _Node()
    garbage_a.other, garbage_b.other = garbage_b, garbage_a
    garbage_ref = weakref.ref(garbage_a)
    del garbage_a, garbage_b
    live = _Node()
    live.other = _Node()
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    with structlog.testing.capture_logs() as logs:
        freeze_startup_heap(get_logger("bridge"))

    assert garbage_ref() is None
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not any(obj is live for obj in gc.get_objects())
    # Logged as frozen; the count only shrinks after (frozen objects still die when their
    # last reference goes).
    assert [(e["event"], e["log_level"]) for e in logs] == [("bridge.heap_frozen", "info")]
    assert logs[0]["objects"] >= frozen
