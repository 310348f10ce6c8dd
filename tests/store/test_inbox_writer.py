"""Ingest's inbox writer over a real store: settled events in a batch are stored but never
handed to the local dispatcher, nor wake it; an event the store refuses fails alone."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from bridge.events import DeliveryId
from bridge.logging import get_logger
from bridge.pipeline.batching import WriteRefused
from bridge.pipeline.ingest import InboxWriter
from bridge.store.base import InboxRow, StoredTrace
from bridge.store.store import Store
from bridge.tasks import Supervisor
from tests.store.conftest import FakeClock
from tests.store.factories import delivery

TRACE = StoredTrace.of({"skipped": "no rule"})


class RecordingDispatcher:
    """The local dispatcher as ingest sees it: a fixed room, and what it was handed."""

    def __init__(self, room: int) -> None:
        self._room = room
        self.adopted: list[list[InboxRow]] = []

    def room(self) -> int:
        return self._room

    def adopt(self, rows: Sequence[InboxRow]) -> None:
        self.adopted.append(list(rows))


async def write_together(
    store: Store, clock: FakeClock, room: int, settled: Sequence[bool]
) -> tuple[RecordingDispatcher, list[int], list[str | None]]:
    """Write one event per flag concurrently (one batch); return the fake, how often the
    dispatcher was woken, and each event's stored state."""
    supervisor = Supervisor(get_logger("test.inbox_writer"))
    dispatcher = RecordingDispatcher(room)
    woken: list[int] = []
    writer = InboxWriter(store, supervisor, lambda: woken.append(1), owner="me", handoff=dispatcher)
    writer.start()
    events = [
        dataclasses.replace(delivery(f"d-{n}", clock()), settled_trace=TRACE if quiet else None)
        for n, quiet in enumerate(settled)
    ]
    try:
        ids = await asyncio.gather(*(writer.write(e) for e in events))
    finally:
        await supervisor.stop()
    states: list[str | None] = []
    for new_id in ids:
        row = None if new_id is None else await store.get_inbox(new_id)
        states.append(None if row is None else row.state)
    return dispatcher, woken, states


async def test_only_unsettled_rows_are_handed_over(store: Store, clock: FakeClock) -> None:
    """In a batch of settled and unsettled events, with room for the unsettled ones only
    (less than the batch), the unsettled ones are stored leased and handed over, the
    settled ones stored processed and not handed over; the dispatcher is woken."""
    dispatcher, woken, states = await write_together(store, clock, 1, [True, False, True])
    assert states == ["processed", "pending", "processed"]
    assert [[r.delivery_id for r in batch] for batch in dispatcher.adopted] == [["d-1"]]
    assert woken


async def test_batch_of_settled_events_neither_hands_over_nor_wakes(
    store: Store, clock: FakeClock
) -> None:
    """A batch holding only settled events gives the dispatcher nothing and does not wake
    it: there is nothing to dispatch."""
    dispatcher, woken, states = await write_together(store, clock, 0, [True, True])
    assert states == ["processed", "processed"]
    assert dispatcher.adopted == []
    assert woken == []


async def test_an_event_the_store_refuses_fails_alone(store: Store, clock: FakeClock) -> None:
    """30 storable deliveries and one the store refuses (a lone surrogate in its delivery
    ID, which neither SQLite nor PostgreSQL can encode) written at the same time, so in one
    group commit: every storable one is stored, handed to the dispatcher and gets its ID;
    only the refused one fails, with `WriteRefused` (ingest answers it 400), not the
    "unavailable" error that would have them all answered 503."""
    supervisor = Supervisor(get_logger("test.inbox_writer"))
    dispatcher = RecordingDispatcher(100)
    writer = InboxWriter(store, supervisor, lambda: None, owner="me", handoff=dispatcher)
    writer.start()
    events = [delivery(f"good-{n}", clock()) for n in range(30)]
    events.insert(17, delivery("bad-\ud800", clock()))
    try:
        results = await asyncio.gather(*(writer.write(e) for e in events), return_exceptions=True)
    finally:
        await supervisor.stop()
    refused = results.pop(17)
    assert isinstance(refused, WriteRefused), refused
    assert all(isinstance(r, int) for r in results), results
    for n in range(30):
        row = await store.find_inbox("rootly", DeliveryId(f"good-{n}"))
        assert row is not None and row.id == results[n]
    adopted = {r.delivery_id for batch in dispatcher.adopted for r in batch}
    assert adopted == {f"good-{n}" for n in range(30)}
