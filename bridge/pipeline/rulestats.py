"""How often each rule fired in the last hour on this replica, and its latest error.

The dispatcher reports every evaluation (`RuleStats.record`); the console's rules page
reads `snapshot`. Counts live in memory, in one-minute buckets over a sliding hour: a
dictionary update per rule that fired, nothing written to the store on the dispatch path.
So they cover the events this replica dispatched since it started; dead letters per rule,
which the console shows beside them, come from the store and cover every replica.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from bridge.rules import EvaluationError

WINDOW_MINUTES: Final = 60


@dataclass(frozen=True, slots=True)
class RuleActivity:
    """One rule over the last hour: how often it fired, how often it failed, and the
    latest failure (kept past the hour: it is the last thing the rule said)."""

    fired: int = 0
    errors: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None


class RuleStats:
    def __init__(self) -> None:
        # minute (epoch minutes) -> rule -> [fired, errors]
        self._buckets: dict[int, dict[str, list[int]]] = {}
        self._last_error: dict[str, tuple[str, datetime]] = {}

    def record(
        self, fired: Iterable[str], errors: Iterable[EvaluationError], now: datetime
    ) -> None:
        """One evaluation at `now`: the rules that fired, the rules that failed."""
        minute = int(now.timestamp() // 60)
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = {}
            for old in [m for m in self._buckets if m <= minute - WINDOW_MINUTES]:
                del self._buckets[old]
        for rule in fired:
            bucket.setdefault(rule, [0, 0])[0] += 1
        for error in errors:
            bucket.setdefault(error.rule, [0, 0])[1] += 1
            self._last_error[error.rule] = (f"{error.where}: {error.message}", now)

    def snapshot(self, now: datetime) -> dict[str, RuleActivity]:
        """Per rule with any activity: the counts of the hour up to `now`."""
        since = int(now.timestamp() // 60) - WINDOW_MINUTES
        totals: dict[str, list[int]] = {}
        for minute, bucket in self._buckets.items():
            if minute > since:
                for rule, (fired, errors) in bucket.items():
                    total = totals.setdefault(rule, [0, 0])
                    total[0] += fired
                    total[1] += errors
        out: dict[str, RuleActivity] = {}
        for rule in totals.keys() | self._last_error.keys():
            fired, errors = totals.get(rule, (0, 0))
            message, at = self._last_error.get(rule, (None, None))
            out[rule] = RuleActivity(fired, errors, message, at)
        return out
