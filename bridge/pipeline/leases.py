"""Lease renewal: a live process keeps the rows it is working on until it lets them go.

Claimed inbox events and outbox actions carry a lease, so that the work of a process that
died is picked up again (by another replica, or by this one after a restart) once the
lease runs out. A process that is alive but slow must not lose its rows that way: an event
whose hydration, or an action whose call, waits out a rate-limit pause of several minutes
would be taken over and run a second time (spending the quota the pause is about) and
charged attempts it never used, until it could be given up on while its holder was about
to finish it. A `LeaseKeeper` holds the IDs of the rows in hand and renews their leases
every third of a lease, so two renewals in a row can fail (a store hiccup) before anyone
else may take a row over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from bridge.logging import Logger
from bridge.store.base import StoreError
from bridge.tasks import Supervisor

# Inbox and outbox IDs (both integers).
RowId = TypeVar("RowId", bound=int)

# `renew(ids, lease_seconds)`: extend the leases this process still holds among `ids`;
# returns those it extended.
Renew = Callable[[Sequence[RowId], float], Awaitable[Sequence[RowId]]]


class LeaseKeeper(Generic[RowId]):
    def __init__(
        self,
        name: str,
        renew: Renew[RowId],
        lease_seconds: float,
        supervisor: Supervisor,
        logger: Logger,
    ) -> None:
        self._name = name
        self._supervisor = supervisor
        self._renew = renew
        self._lease = lease_seconds
        self._log = logger
        self._held: set[RowId] = set()

    def start(self) -> None:
        """Start renewing, every third of a lease."""
        self._supervisor.spawn_loop(self._name, self._run)

    def hold(self, row_id: RowId) -> bool:
        """Keep `row_id` renewed from now on; False if it is already held (a claim gave back
        a row this process is still working on: its lease lapsed while renewals failed)."""
        if row_id in self._held:
            return False
        self._held.add(row_id)
        return True

    def release(self, row_id: RowId) -> None:
        """Stop renewing `row_id` (finished, handed back, or given up on)."""
        self._held.discard(row_id)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    async def renew(self) -> list[RowId]:
        """Renew every held lease now; returns the IDs renewed (one finished or taken over
        meanwhile is not). Raises StoreError."""
        if not self._held:
            return []
        return list(await self._renew(sorted(self._held), self._lease))

    async def _run(self) -> None:
        interval = self._lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except StoreError as exc:
                self._log.warning("lease.renewal_failed", held=len(self._held), error=str(exc))
