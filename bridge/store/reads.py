"""`ReadQueries`: the store's reads for operators, the admin API and the console.

What became of an event or an object (inbox rows, their actions, the event history and the
objects each event names), the outbox and its dead letters, and the counts behind the
gauges. None of them writes; the pipeline's own reads on its hot paths live with the writes
they precede (`bridge.store.store`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from bridge.events import ActionId, DeliveryId, InboxId, ObjectRef, Platform, freeze
from bridge.store import queries as q
from bridge.store.access import StoreAccess, ref_rows
from bridge.store.base import (
    OUTBOX_STATES,
    EventFilter,
    EventObject,
    InboxRow,
    OutboxRow,
    OutboxState,
    StoreCounts,
)
from bridge.store.rows import event_object, inbox_row, link_kind, outbox_row

# Open bounds of `search_events`' filters (timestamps are compared as values: no NULLs).
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)
_NO_CURSOR: Final = 2**63 - 1


class ReadQueries(StoreAccess):
    """Reads of the inbox, the event history, the outbox and the store's counts."""

    # -- inbox ----------------------------------------------------------------------------
    async def get_inbox(self, inbox_id: InboxId) -> InboxRow | None:
        rows = await self._rows(q.GET_INBOX, id=inbox_id)
        return inbox_row(rows[0]) if rows else None

    async def find_inbox(self, source: Platform, delivery_id: DeliveryId) -> InboxRow | None:
        rows = await self._rows(q.FIND_INBOX, source=source, delivery=delivery_id)
        return inbox_row(rows[0]) if rows else None

    async def actions_for_inbox(self, inbox_id: InboxId) -> list[OutboxRow]:
        return [outbox_row(r) for r in await self._rows(q.INBOX_ACTIONS, id=inbox_id)]

    # -- history --------------------------------------------------------------------------
    async def search_events(self, flt: EventFilter) -> list[InboxRow]:
        """Events matching every given field of `flt`, newest (highest ID) first. Events
        settled at ingest name no objects: they are found by the other fields."""
        rows = await self._rows(
            q.SEARCH_EVENTS,
            source=flt.source,
            event_type=flt.event_type,
            since=flt.since or _EARLIEST,
            until=flt.until or _LATEST,
            before=_NO_CURSOR if flt.before is None else flt.before,
            outcome=flt.outcome,
            object_id=flt.object_id,
            object_platform=flt.object_platform,
            object_kind=flt.object_kind,
            limit=flt.limit,
        )
        return [inbox_row(r) for r in rows]

    async def event_objects(self, inbox_ids: Sequence[InboxId]) -> dict[InboxId, list[EventObject]]:
        """The objects each of `inbox_ids` names (subject first)."""
        found: dict[InboxId, list[EventObject]] = {}
        if inbox_ids:
            for row in await self._rows(q.EVENT_OBJECTS, ids=json.dumps(list(inbox_ids))):
                found.setdefault(InboxId(row["inbox_id"]), []).append(event_object(row))
        return found

    async def events_naming(self, refs: Sequence[ObjectRef], limit: int) -> list[InboxRow]:
        """The newest `limit` events that name any of `refs`, newest first."""
        if not refs:
            return []
        rows = await self._rows(q.EVENTS_NAMING, refs=ref_rows(refs), limit=limit)
        return [inbox_row(r) for r in rows]

    async def actions_on(
        self, refs: Sequence[ObjectRef], inbox_ids: Sequence[InboxId], limit: int
    ) -> list[OutboxRow]:
        """The newest `limit` actions that change one of `refs`, create what is linked to
        one of them, or were caused by one of `inbox_ids`; newest first."""
        if not refs and not inbox_ids:
            return []
        rows = await self._rows(
            q.ACTIONS_ON,
            keys=json.dumps([str(r) for r in refs]),
            ids=json.dumps(list(inbox_ids)),
            limit=limit,
        )
        return [outbox_row(r) for r in rows]

    async def dead_letters_by_rule(self) -> dict[str, int]:
        """How many dead letters each rule's actions left."""
        return {row["rule"]: int(row["n"]) for row in await self._rows(q.DEAD_BY_RULE)}

    # -- outbox ---------------------------------------------------------------------------
    async def list_outbox(
        self, states: Sequence[OutboxState] | None, limit: int, offset: int = 0
    ) -> list[OutboxRow]:
        """Oldest first (id order)."""
        rows = await self._rows(
            q.LIST_OUTBOX,
            every_state=states is None,
            states=json.dumps(list(states or ())),
            limit=limit,
            offset=offset,
        )
        return [outbox_row(r) for r in rows]

    async def get_action(self, action_id: ActionId) -> OutboxRow | None:
        rows = await self._rows(q.GET_ACTION, id=action_id)
        return outbox_row(rows[0]) if rows else None

    # -- housekeeping ---------------------------------------------------------------------
    async def counts(self) -> StoreCounts:
        by_state = dict.fromkeys(OUTBOX_STATES, 0)
        for row in await self._rows(q.OUTBOX_BY_STATE):
            by_state[row["state"]] = int(row["n"])
        by_kind: dict[str, int] = {}
        for row in await self._rows(q.LINKS_BY_KIND):
            label = link_kind(
                f"{row['a_platform']}:{row['a_kind']}", f"{row['b_platform']}:{row['b_kind']}"
            )
            by_kind[label] = by_kind.get(label, 0) + int(row["n"])
        pending = (await self._rows(q.INBOX_PENDING))[0]["n"]
        return StoreCounts(
            outbox_by_state=freeze(by_state),
            dead_letters=by_state["dead"],
            links_by_kind=freeze(by_kind),
            inbox_pending=int(pending),
        )
