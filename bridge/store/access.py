"""`StoreAccess`: what every part of `Store` shares, the driver, the clock and row helpers.

`Store` is assembled from parts by concern (`reads`, `links`, `replicas`, and the write
paths in `store`). Every part runs its statements through one driver and reads "now" from
one injected clock, so this base class holds both, with the few helpers they all use to
fetch rows, write one row and pass object refs to a statement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bridge.clock import Clock
from bridge.events import ObjectRef
from bridge.store.driver import Driver, Row, Sql


def ref_rows(refs: Sequence[ObjectRef]) -> str:
    """`refs` as the JSON array of [platform, kind, id] rows a statement's `refs` reads."""
    return json.dumps([[r.platform, r.kind, r.id] for r in refs])


class StoreAccess:
    """The driver and the clock (timezone-aware UTC) the store's parts share."""

    def __init__(self, driver: Driver, clock: Clock) -> None:
        self.driver = driver
        self._clock = clock

    async def _rows(self, sql: Sql, **params: Any) -> list[Row]:
        return await self.driver.fetch(sql, params)

    async def _write_one(self, doing: str, sql: Sql, **params: Any) -> bool:
        params["now"] = self._clock()
        return await self.driver.transact(doing, lambda tx: tx.execute(sql, params)) > 0
