"""Links: one row per pair whatever the order, lookups from either side, filters."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bridge.events import LinkChange, ObjectRef
from bridge.store.base import LinkFilter, StoreError
from bridge.store.driver import Params, Row, Sql, Tx
from bridge.store.queries import LINKED
from bridge.store.store import Store
from tests.store.conftest import FakeClock, MakeStore, Target
from tests.store.factories import IIO_ESC, IIO_INC, ROOTLY_INC, complete, inbox_event, link_count


async def test_link_is_unique_in_both_orders(store: Store) -> None:
    """(a, b) and (b, a) are the same link: the second add is a no-op, either order removes."""
    assert await store.add_link(ROOTLY_INC, IIO_INC, "rule-x") is True
    assert await store.add_link(ROOTLY_INC, IIO_INC, "rule-x") is False
    assert await store.add_link(IIO_INC, ROOTLY_INC, "rule-y") is False
    assert await link_count(store) == 1
    assert await store.remove_link(IIO_INC, ROOTLY_INC) is True
    assert await store.remove_link(ROOTLY_INC, IIO_INC) is False
    assert await link_count(store) == 0


async def test_linked_finds_links_from_either_side(store: Store) -> None:
    """A lookup by any object finds its links whichever side it is stored on."""
    alert = ObjectRef.parse("rootly:alert:al-1")
    await store.add_link(ROOTLY_INC, IIO_INC, "r")
    await store.add_link(alert, IIO_ESC, "r")
    other = ObjectRef.parse("rootly:incident:unrelated")

    (by_rootly,) = await store.linked([ROOTLY_INC])
    (by_iio,) = await store.linked([IIO_INC])
    assert by_rootly == by_iio
    assert {by_rootly.a, by_rootly.b} == {ROOTLY_INC, IIO_INC}
    assert by_rootly.created_by == "r"
    assert by_rootly.created_at.tzinfo is not None
    both = await store.linked([IIO_ESC, ROOTLY_INC, other])
    assert len(both) == 2
    assert await store.linked([ROOTLY_INC, IIO_INC]) == [by_rootly]
    assert await store.linked([other]) == []
    assert await store.linked([]) == []


async def index_steps(store: Store, target: Target, sql: Sql, params: Params) -> list[str]:
    """How `sql` reads the links table: each step of its plan that does. On an empty table
    the planner prefers scans and hash joins anyway, so PostgreSQL is told not to use them:
    what is asked is whether an index plan exists."""

    async def plan(tx: Tx) -> list[str]:
        if target.backend == "sqlite":
            rows = await tx.fetch(Sql("EXPLAIN QUERY PLAN " + sql.text), params)
            return [str(row["detail"]) for row in rows if " links" in str(row["detail"])]
        for method in ("seqscan", "hashjoin", "mergejoin"):
            await tx.execute(Sql(f"SET LOCAL enable_{method} = off"))
        (row,) = await tx.fetch(Sql("EXPLAIN (FORMAT JSON) " + sql.text), params)
        nodes, steps = [json.loads(row["QUERY PLAN"])[0]["Plan"]], []
        while nodes:
            node = nodes.pop()
            nodes += node.get("Plans", [])
            if node.get("Relation Name") == "links":
                steps.append(f"{node['Node Type']} cond={node.get('Index Cond')}")
        return steps

    return await store.driver.transact("explaining", plan)


def searched_by_index(steps: list[str]) -> bool:
    """Every step is an index search (SQLite's SEARCH, PostgreSQL's index scan with a
    condition), none a walk of the table or of an index in order."""
    return bool(steps) and all(
        step.startswith("SEARCH") or ("Index" in step and "cond=None" not in step) for step in steps
    )


async def test_linked_looks_links_up_through_their_indexes(store: Store, target: Target) -> None:
    """The lookup every dispatch makes can read the links it needs through the index of
    either side instead of walking every link (PostgreSQL plans ``a IN (...) OR b IN (...)``
    as such a walk: half a second a lookup at 1,000,000 links)."""
    refs = json.dumps([["rootly", "incident", "r-1"], ["incident_io", "escalation", "e-1"]])
    steps = await index_steps(store, target, LINKED, {"refs": refs})
    assert searched_by_index(steps), steps


async def test_a_search_by_id_reads_links_through_their_indexes(
    store: Store, target: Target
) -> None:
    """The operators' search of links by an external ID alone (admin API, console, CLI)
    reads them through the indexes, which lead with platform and kind: it asks for every
    ref the ID can be, instead of walking every link in ID order until a page fills (at
    1,000,000 links, a walk of all of them for an ID with a link or two)."""
    await store.add_link(ROOTLY_INC, IIO_INC, "r")
    ran: list[tuple[Sql, Params]] = []
    fetch = store.driver.fetch

    async def recording(sql: Sql, params: Params | None = None) -> list[Row]:
        ran.append((sql, params or {}))
        return await fetch(sql, params)

    store.driver.fetch = recording  # type: ignore[method-assign]
    for flt in (LinkFilter(external_id="r-1"), LinkFilter(platform="rootly", external_id="r-1")):
        ran.clear()
        (found,) = await store.list_links(flt)
        assert ROOTLY_INC in (found.a, found.b)
        assert ran
        for sql, params in ran:
            steps = await index_steps(store, target, sql, params)
            assert searched_by_index(steps), (sql.text, steps)


async def test_list_links_filters(store: Store) -> None:
    """Filters by platform, kind and external ID match either side; limit/offset page."""
    alert = ObjectRef.parse("rootly:alert:al-1")
    await store.add_link(ROOTLY_INC, IIO_INC, "r")
    await store.add_link(alert, IIO_ESC, "r")

    assert len(await store.list_links(LinkFilter())) == 2
    assert len(await store.list_links(LinkFilter(platform="rootly"))) == 2
    (esc,) = await store.list_links(LinkFilter(kind="escalation"))
    assert {esc.a, esc.b} == {alert, IIO_ESC}
    (by_id,) = await store.list_links(LinkFilter(external_id="r-1"))
    assert ROOTLY_INC in (by_id.a, by_id.b)
    assert await store.list_links(LinkFilter(platform="incident_io", external_id="r-1")) == []
    first = await store.list_links(LinkFilter(limit=1))
    second = await store.list_links(LinkFilter(limit=1, offset=1))
    assert len(first) == len(second) == 1
    assert first != second


async def test_self_link_is_refused(store: Store) -> None:
    """Linking an object to itself is a clear StoreError."""
    with pytest.raises(StoreError, match="to itself"):
        await store.add_link(ROOTLY_INC, ROOTLY_INC, "r")


async def test_counts_links_by_kind(store: Store) -> None:
    """`counts()` labels link kinds like the `bridge_links{kind}` metric documents."""
    await store.add_link(ROOTLY_INC, IIO_INC, "r")
    await store.add_link(ObjectRef.parse("rootly:alert:a"), IIO_ESC, "r")
    counts = await store.counts()
    assert dict(counts.links_by_kind) == {
        "rootly:incident~incident_io:incident": 1,
        "rootly:alert~incident_io:escalation": 1,
    }


async def test_link_changes_in_complete_inbox(store: Store, clock: FakeClock) -> None:
    """complete_inbox adds (ignoring existing) and removes (ignoring missing) links."""
    inbox_id = await inbox_event(store, clock())
    await store.add_link(ROOTLY_INC, IIO_ESC, "old")
    await complete(
        store,
        inbox_id,
        [],
        [
            LinkChange("add", IIO_INC, ROOTLY_INC, "r"),
            LinkChange("add", ROOTLY_INC, IIO_INC, "r"),
            LinkChange("remove", IIO_ESC, ROOTLY_INC, "r"),
            LinkChange("remove", ObjectRef.parse("rootly:alert:none"), IIO_INC, "r"),
        ],
        {},
    )
    (link,) = await store.linked([ROOTLY_INC])
    assert {link.a, link.b} == {ROOTLY_INC, IIO_INC}


@pytest.mark.postgres
async def test_postgres_reads_survive_a_dropped_connection(
    make_pg_store: MakeStore, pg_target: Target
) -> None:
    """The per-event reads' pool (asyncpg, no reset on release) notices a connection the
    server dropped (a restart, an idle timeout) and answers from a fresh one: a link lookup
    and an echo check right after every bridge session was terminated still succeed."""
    store = await make_pg_store()
    await store.add_link(ROOTLY_INC, IIO_INC, "test")
    assert len(await store.linked([ROOTLY_INC])) == 1
    (killed,) = await pg_target.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'bridge' AND pid <> pg_backend_pid()"
    )
    assert killed[0] >= 1
    assert [(row.a, row.b) for row in await store.linked([IIO_INC])] == [(IIO_INC, ROOTLY_INC)]
    assert not await store.find_echo(ROOTLY_INC, "status=resolved", datetime.now(UTC))
