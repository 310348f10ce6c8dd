"""The clock the bridge reads "now" from: timezone-aware UTC, injected into every part.

The composition root passes one `Clock` to the store, the pipeline, the link checker and
the scheduler, so they agree on "now", and a test or the sandbox can move time forward
(`ShiftedClock`) instead of sleeping through leases, back-offs and check intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class ShiftedClock:
    """Real time plus an offset that only grows: `advance` jumps ahead, time keeps going."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)
