"""History: the objects each event names, event search, and what a timeline reads (on
SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bridge.events import DeliveryId, InboxId, LinkChange, ObjectRef, ResultLink
from bridge.store.base import EventFilter, EventObject, InboxCompletion, NewInboxEvent, StoreError
from bridge.store.driver import Sql, Tx
from bridge.store.schema import MIGRATIONS
from bridge.store.store import Store
from tests.store.conftest import FakeClock, MakeStore, Target
from tests.store.factories import IIO_ESC, ROOTLY_INC, action, delivery, finish

ALERT = ObjectRef.parse("rootly:alert:shared-id")
IIO_ALERT = ObjectRef.parse("incident_io:alert:shared-id")


async def dispatched(
    store: Store,
    clock: FakeClock,
    delivery_id: str,
    objects: list[EventObject],
    *,
    outcome: str = "actions",
    source: str = "rootly",
    event_type: str = "incident.updated",
    actions: list[Any] | None = None,
) -> InboxId:
    """One delivery, dispatched with `objects` recorded and `outcome` in its trace."""
    (inbox_id,) = await store.add_inbox(
        [
            NewInboxEvent(
                source=source,  # type: ignore[arg-type]
                delivery_id=DeliveryId(delivery_id),
                event_type=event_type,
                body=b"{}",
                received_at=clock(),
            )
        ]
    )
    assert inbox_id is not None
    (result,) = await store.complete_inboxes(
        [InboxCompletion(inbox_id, actions or [], [], {"outcome": outcome}, objects=objects)]
    )
    assert not isinstance(result, StoreError)
    return inbox_id


def subject(ref: ObjectRef) -> EventObject:
    return EventObject(ref, "subject")


async def test_events_are_found_by_ref_or_by_bare_id_newest_first(
    store: Store, clock: FakeClock
) -> None:
    """An event recorded with the objects it names is found by any of them: by full ref
    (that object only) or by bare ID (the objects with that ID on either platform), newest
    first; the objects come back with their roles, subject first."""
    first = await dispatched(
        store, clock, "d-1", [subject(ALERT), EventObject(ROOTLY_INC, "related")]
    )
    clock.advance(1)
    second = await dispatched(store, clock, "d-2", [subject(IIO_ALERT)], source="incident_io")
    clock.advance(1)
    await dispatched(store, clock, "d-3", [subject(IIO_ESC)])

    by_id = await store.search_events(EventFilter(object_id="shared-id"))
    assert [r.id for r in by_id] == [second, first]
    by_ref = await store.search_events(
        EventFilter(object_platform="rootly", object_kind="alert", object_id="shared-id")
    )
    assert [r.id for r in by_ref] == [first]
    related = await store.search_events(
        EventFilter(object_platform="rootly", object_kind="incident", object_id=ROOTLY_INC.id)
    )
    assert [r.id for r in related] == [first]
    named = await store.event_objects([first, second])
    assert named[first] == [subject(ALERT), EventObject(ROOTLY_INC, "related")]
    assert named[second] == [subject(IIO_ALERT)]


async def test_event_search_filters_and_pages_with_a_cursor(store: Store, clock: FakeClock) -> None:
    """Source, type, outcome (pending, error, or the dispatcher's result) and the time window
    each narrow the search; `before` pages through the rest, newest first."""
    start = clock()
    ids = []
    for n, outcome in enumerate(["actions", "no_match", "echo", "actions"]):
        ids.append(await dispatched(store, clock, f"d-{n}", [], outcome=outcome))
        clock.advance(10)
    (waiting,) = await store.add_inbox([delivery("waiting", clock())])
    (broken,) = await store.add_inbox([delivery("broken", clock(), source="incident_io")])
    assert waiting is not None and broken is not None
    await store.fail_inbox(broken, "unparseable", None)

    async def found(**filters: Any) -> list[int]:
        return [r.id for r in await store.search_events(EventFilter(**filters))]

    assert await found() == [broken, waiting, *reversed(ids)]
    assert await found(source="incident_io") == [broken]
    assert await found(event_type="incident.updated", source="rootly") == [
        waiting,
        *reversed(ids),
    ]
    assert await found(outcome="actions") == [ids[3], ids[0]]
    assert await found(outcome="echo") == [ids[2]]
    assert await found(outcome="pending") == [waiting]
    assert await found(outcome="error") == [broken]
    window = {"since": start + timedelta(seconds=10), "until": start + timedelta(seconds=30)}
    assert await found(**window) == [ids[2], ids[1]]
    page = await found(limit=2)
    assert page == [broken, waiting]
    assert await found(limit=2, before=page[-1]) == [ids[3], ids[2]]
    assert await found(limit=2, before=ids[2]) == [ids[1], ids[0]]
    assert await found(limit=2, before=ids[0]) == []


async def test_a_failed_dispatch_records_the_objects_too(store: Store, clock: FakeClock) -> None:
    """An event whose dispatch failed (retried later, or for good) is found by the objects
    it names: that is when an operator looks for it."""
    (inbox_id,) = await store.add_inbox([delivery("d-1", clock())])
    assert inbox_id is not None
    await store.fail_inbox(inbox_id, "hydration failed: 503", clock(), [subject(IIO_ESC)])
    found = await store.search_events(EventFilter(object_id=IIO_ESC.id))
    assert [(r.id, r.state, r.error) for r in found] == [
        (inbox_id, "pending", "hydration failed: 503")
    ]


async def test_timeline_reads_events_actions_and_objects(store: Store, clock: FakeClock) -> None:
    """events_naming finds the events naming any of a set of objects; actions_on the actions
    that change one of them (target), create what is linked to one (result link), or were
    caused by given events; find_objects every object with an ID, from events and links."""
    created = action(
        "create", operation="incident_io.create_escalation", target=None, params={"title": "t"}
    )
    first = await dispatched(store, clock, "d-1", [subject(ROOTLY_INC)], actions=[created])
    cancel = action("cancel", operation="incident_io.cancel_escalation", target=IIO_ESC)
    other = await dispatched(store, clock, "d-2", [subject(ALERT)], actions=[cancel])
    await dispatched(store, clock, "d-3", [subject(IIO_ALERT)])

    events = await store.events_naming([ROOTLY_INC, IIO_ESC], 10)
    assert [e.id for e in events] == [first]
    on_escalation = await store.actions_on([IIO_ESC], [], 10)
    assert [a.action.idempotency_key for a in on_escalation] == ["cancel"]
    by_event = await store.actions_on([], [first, other], 10)
    assert [a.action.idempotency_key for a in by_event] == ["cancel", "create"]
    assert await store.actions_on([], [], 10) == []

    await store.add_link(IIO_ALERT, ObjectRef.parse("rootly:incident:shared-id"), "operator")
    assert await store.find_objects("shared-id") == sorted(
        [ALERT, IIO_ALERT, ObjectRef.parse("rootly:incident:shared-id")]
    )
    assert await store.find_objects("nobody") == []


async def test_actions_creating_a_linked_object_are_on_the_timeline(
    store: Store, clock: FakeClock
) -> None:
    """An action whose result is linked to an object (the escalation a Rootly incident
    opens) is found from that object before it has a target of its own."""
    opens = action(
        "open",
        operation="incident_io.create_escalation",
        target=None,
        params={"title": "t"},
        result_links=(ResultLink(ROOTLY_INC, "escalation"),),
    )
    await dispatched(store, clock, "d-1", [], actions=[opens])
    assert [a.action.idempotency_key for a in await store.actions_on([ROOTLY_INC], [], 10)] == [
        "open"
    ]


async def test_event_objects_go_with_their_event(store: Store, clock: FakeClock) -> None:
    """Pruning an old event deletes the objects recorded for it (nothing dangles)."""
    await dispatched(store, clock, "d-1", [subject(ROOTLY_INC)])
    clock.advance(3600)
    result = await store.prune(clock(), clock(), clock())
    assert result.inbox == 1
    assert await store.search_events(EventFilter(object_id=ROOTLY_INC.id)) == []
    assert await store.find_objects(ROOTLY_INC.id) == []


async def test_dead_letters_are_counted_per_rule(store: Store, clock: FakeClock) -> None:
    """dead_letters_by_rule counts the dead actions of each rule, nothing else."""
    await dispatched(store, clock, "d-1", [], actions=[action("a"), action("b")])
    claimed = await store.claim_outbox("w", 10, 30)
    assert len(claimed) == 2
    await store.dead_letter(claimed[0].id, "w", "403")
    assert await finish(store, claimed[1].id, "w", "done", {})
    assert await store.dead_letters_by_rule() == {"test-rule": 1}


async def test_links_made_before_migration_3_get_one_vocabulary(
    make_store: MakeStore, target: Target
) -> None:
    """Links stored by a version-2 bridge say who made them in the words of migration 3:
    the CLI and the admin API become `operator`, a bare rule name `rule:<name>`; `rule:x`,
    `adopt`, `operator` and `reconcile` stay."""
    driver = target.driver()
    await driver.open()

    async def version_2(tx: Tx) -> None:
        if target.schema is not None:
            await tx.execute(Sql(f'CREATE SCHEMA IF NOT EXISTS "{target.schema}"'))
        for migration in MIGRATIONS[:2]:
            for statement in migration.statements:
                await tx.execute(Sql(statement))
        await tx.execute(Sql("CREATE TABLE bridge_schema_version (version INTEGER NOT NULL)"))
        await tx.execute(Sql("INSERT INTO bridge_schema_version (version) VALUES (2)"))
        for n, by in enumerate(["cli", "admin-api", "my-rule", "rule:x", "adopt", "reconcile"]):
            await tx.execute(
                Sql(
                    "INSERT INTO links (a_platform, a_kind, a_id, b_platform, b_kind, b_id,"
                    " created_at, created_by) VALUES ('rootly', 'incident', :a, 'incident_io',"
                    " 'escalation', 'e', :at, :by)"
                ),
                {"a": f"r-{n}", "at": FakeClock()(), "by": by},
            )

    try:
        await driver.transact("building a version-2 store", version_2)
    finally:
        await driver.close()
    store = await make_store()
    rows = await store.linked([ObjectRef.parse("incident_io:escalation:e")])
    assert sorted((row.a.id, row.created_by) for row in rows) == [
        ("r-0", "operator"),
        ("r-1", "operator"),
        ("r-2", "rule:my-rule"),
        ("r-3", "rule:x"),
        ("r-4", "adopt"),
        ("r-5", "reconcile"),
    ]


async def test_link_changes_and_objects_are_one_decision(store: Store, clock: FakeClock) -> None:
    """A completion that cannot be recorded leaves neither its links nor its objects."""
    inbox_id = InboxId(999_999)
    (result,) = await store.complete_inboxes(
        [
            InboxCompletion(
                inbox_id,
                [],
                [LinkChange("add", ROOTLY_INC, IIO_ESC, "rule:r")],
                {},
                objects=[subject(ROOTLY_INC)],
            )
        ]
    )
    assert isinstance(result, StoreError)
    assert await store.linked([ROOTLY_INC]) == []
    assert await store.find_objects(ROOTLY_INC.id) == []


async def test_every_object_is_recorded_once_however_many(store: Store, clock: FakeClock) -> None:
    """An event naming more objects than one statement takes records them all; recording
    them again (a dispatch retried after a failure) adds nothing."""
    alerts = [EventObject(ObjectRef("rootly", "alert", f"a-{n}"), "related") for n in range(19)]
    (inbox_id,) = await store.add_inbox([delivery("d-1", clock())])
    assert inbox_id is not None
    objects = [subject(ROOTLY_INC), *alerts]
    await store.fail_inbox(inbox_id, "hydration failed: 503", clock(), objects)
    (result,) = await store.complete_inboxes(
        [InboxCompletion(inbox_id, [], [], {"outcome": "no_match"}, objects=objects)]
    )
    assert not isinstance(result, StoreError)
    named = (await store.event_objects([inbox_id]))[inbox_id]
    assert len(named) == 20
    assert named[0] == subject(ROOTLY_INC)
    assert sorted(o.ref.id for o in named[1:]) == sorted(f"a-{n}" for n in range(19))
    found = await store.search_events(EventFilter(object_id="a-18"))
    assert [r.id for r in found] == [inbox_id]
