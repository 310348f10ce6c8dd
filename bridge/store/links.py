"""`LinkQueries`: what the store knows about objects across the two platforms.

The ID links between them (added, removed, listed and checked by the link checker), the
echo records that tell the bridge's own writes coming back as webhooks apart from a
person's, the state each object was last seen in, and every object an ID can name. Link changes
that are part of a dispatch or an action's outcome are written with it, in its
transaction (`bridge.store.store`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bridge.events import OBJECT_KINDS, PLATFORMS, ObjectRef, Platform
from bridge.store import queries as q
from bridge.store.access import StoreAccess, ref_rows
from bridge.store.base import LinkFilter, LinkRow, SeenState
from bridge.store.driver import Sql
from bridge.store.rows import link_row, pair_values, pairs_json, seen_state


class LinkQueries(StoreAccess):
    """Links, echo records, last seen states and the objects an ID names."""

    # -- links ----------------------------------------------------------------------------
    async def add_link(self, a: ObjectRef, b: ObjectRef, created_by: str) -> bool:
        """True if created, False if it already existed."""
        values: dict[str, Any] = pair_values(a, b)
        values |= {"now": self._clock(), "created_by": created_by}
        rows = await self.driver.transact("adding a link", lambda tx: tx.fetch(q.ADD_LINK, values))
        return bool(rows)

    async def remove_link(self, a: ObjectRef, b: ObjectRef) -> bool:
        values = pair_values(a, b)
        removed = await self.driver.transact(
            "removing a link", lambda tx: tx.execute(q.REMOVE_LINK, values)
        )
        return removed > 0

    async def linked(self, refs: Sequence[ObjectRef]) -> list[LinkRow]:
        """Every link touching any of `refs` (either side), by index."""
        if not refs:
            return []
        return [link_row(r) for r in await self._rows(q.LINKED, refs=ref_rows(refs))]

    async def list_links(self, flt: LinkFilter) -> list[LinkRow]:
        """Links with a side matching every given field of `flt`, oldest first."""
        page = {"limit": flt.limit, "offset": flt.offset}
        if flt.external_id is None:
            rows = await self._rows(q.LIST_LINKS, platform=flt.platform, kind=flt.kind, **page)
        else:
            refs = _refs_with_id(flt.external_id, flt.platform, flt.kind)
            rows = await self._rows(q.LINKED_PAGE, refs=ref_rows(refs), **page)
        return [link_row(r) for r in rows]

    async def links_to_check(
        self, now: datetime, checked_before: datetime, created_since: datetime, limit: int
    ) -> list[LinkRow]:
        """Links due for a check: never-checked ones first (oldest first), then, among
        links created since `created_since`, those last checked before `checked_before`,
        least recently checked first. A deferred check is not due before its
        `check_after`."""
        rows = await self._rows(q.UNCHECKED_LINKS, now=now, limit=limit)
        if len(rows) < limit:
            rows += await self._rows(
                q.LEAST_RECENTLY_CHECKED,
                now=now,
                stale=checked_before,
                since=created_since,
                limit=limit - len(rows),
            )
        return [link_row(r) for r in rows]

    async def mark_links_checked(
        self, pairs: Sequence[tuple[ObjectRef, ObjectRef]], now: datetime
    ) -> None:
        await self._mark(q.MARK_CHECKED, pairs, now=now)

    async def defer_link_checks(
        self, pairs: Sequence[tuple[ObjectRef, ObjectRef]], until: datetime
    ) -> None:
        """Not before `until` (a check that could not read both sides)."""
        await self._mark(q.DEFER_CHECK, pairs, until=until)

    async def _mark(
        self, sql: Sql, pairs: Sequence[tuple[ObjectRef, ObjectRef]], **params: Any
    ) -> None:
        if pairs:
            params["pairs"] = pairs_json(pairs)
            await self.driver.transact("recording link checks", lambda tx: tx.execute(sql, params))

    # -- echo guard -----------------------------------------------------------------------
    async def find_echo(self, ref: ObjectRef | str, change: str, now: datetime) -> bool:
        """True if an unexpired echo record for (ref, change) exists (`ref`: an object or
        an object key, see `EchoRecord`)."""
        return bool(await self._rows(q.FIND_ECHO, ref=str(ref), change=change, now=now))

    # -- last state seen ------------------------------------------------------------------
    async def last_seen(self, refs: Sequence[ObjectRef]) -> list[SeenState]:
        """The state last recorded (`InboxCompletion.seen`) of each of `refs` that has one."""
        if not refs:
            return []
        return [seen_state(r) for r in await self._rows(q.LAST_SEEN, refs=ref_rows(refs))]

    # -- objects --------------------------------------------------------------------------
    async def find_objects(self, object_id: str) -> list[ObjectRef]:
        """Every object with ID `object_id` (either platform, any kind) that an event
        names or a link joins."""
        found = {
            ObjectRef(row["platform"], row["kind"], row["object_id"])
            for row in await self._rows(q.OBJECTS_WITH_ID, id=object_id)
        }
        for link in await self.linked(_refs_with_id(object_id)):
            found.update(ref for ref in (link.a, link.b) if ref.id == object_id)
        return sorted(found)


def _refs_with_id(
    object_id: str, platform: Platform | None = None, kind: str | None = None
) -> list[ObjectRef]:
    """Every ref `object_id` can be (on `platform`, of `kind`, when given): links are
    indexed by full ref on both sides, so a search by ID alone asks for each of them."""
    return [
        ObjectRef(p, k, object_id)
        for p in PLATFORMS
        for k in OBJECT_KINDS
        if platform in (None, p) and kind in (None, k)
    ]
