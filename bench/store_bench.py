"""Benchmark 5: link lookup latency with many links, on SQLite and PostgreSQL.

Setup bulk-loads `links` rows (Rootly incident <-> incident.io escalation pairs) straight
into a migrated store: `executemany` on SQLite, `COPY` on PostgreSQL, then ANALYZE. The
measurement is the product call the dispatcher makes for every event, `store.linked([ref])`,
for random existing objects (half looked up from each side of the pair), one at a time. The
operators' search of links by an ID alone (`store.list_links`, admin API, console and CLI)
is measured the same way, for a tenth as many objects. The baseline is `store.ping()`
(`SELECT 1` through the same path as the lookup: the SQLite loop connection, or the
asyncpg read pool), so the ratio isolates the query itself.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import structlog

from bench.common import Figure, Scale, fresh_pg_database, percentile, pg_reachable, ratio, skipped
from bridge.events import ObjectRef
from bridge.store.base import LinkFilter
from bridge.store.store import Store

COLUMNS = (
    "a_platform",
    "a_kind",
    "a_id",
    "b_platform",
    "b_kind",
    "b_id",
    "created_at",
    "created_by",
)


def quiet_logger() -> structlog.typing.FilteringBoundLogger:
    """A logger that drops everything (the benchmark prints its own lines)."""
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        structlog.PrintLogger(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
    )


def _rows(count: int) -> list[tuple[object, ...]]:
    # canonical_pair orders incident_io before rootly, so incident_io is side a.
    now = datetime.now(UTC).replace(tzinfo=None)
    return [
        (
            "incident_io",
            "escalation",
            f"01ESC{i:020d}",
            "rootly",
            "incident",
            f"inc-{i:08d}",
            now,
            "bench",
        )
        for i in range(count)
    ]


def _refs(count: int, lookups: int) -> list[ObjectRef]:
    rng = random.Random(11)
    out = []
    for _ in range(lookups):
        i = rng.randrange(count)
        if rng.random() < 0.5:
            out.append(ObjectRef("rootly", "incident", f"inc-{i:08d}"))
        else:
            out.append(ObjectRef("incident_io", "escalation", f"01ESC{i:020d}"))
    return out


@contextlib.asynccontextmanager
async def loaded_store(backend: str, count: int, tmp: Path) -> AsyncIterator[Store]:
    """A migrated store of `backend` holding `count` links; closed (and dropped) afterwards."""
    if backend == "sqlite":
        path = tmp / "links.db"
        url = f"sqlite:///{path}"
        migrate = Store(url, logger=quiet_logger())
        await migrate.open()
        await migrate.close()
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = [(*r[:6], r[6].isoformat(sep=" "), r[7]) for r in _rows(count)]  # type: ignore[attr-defined]
            db.executemany(
                f"INSERT INTO links ({', '.join(COLUMNS)}) VALUES (?,?,?,?,?,?,?,?)", rows
            )
            db.commit()
            db.execute("ANALYZE")
        store = Store(url, logger=quiet_logger())
        await store.open()
        try:
            yield store
        finally:
            await store.close()
        return
    async with fresh_pg_database() as url:
        store = Store(url, logger=quiet_logger())
        await store.open()
        try:
            conn = await asyncpg.connect(url)
            try:
                aware = [(*r[:6], r[6].replace(tzinfo=UTC), r[7]) for r in _rows(count)]  # type: ignore[attr-defined]
                await conn.copy_records_to_table("links", records=aware, columns=list(COLUMNS))
                await conn.execute("ANALYZE links")
            finally:
                await conn.close()
            yield store
        finally:
            await store.close()


async def _time_calls(call: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)  # type: ignore[misc]
        out.append((time.perf_counter() - start) * 1000)
    return out


async def run(scale: Scale, progress: Callable[[str], None] = print) -> list[Figure]:
    figures: list[Figure] = []
    for backend in scale.backends:
        name = f"store.{backend}.link_lookup"
        search_name = f"store.{backend}.link_search"
        reason = await pg_reachable() if backend == "postgresql" else None
        if reason is not None:
            figures += [skipped(name, "p99", reason), skipped(search_name, "p99", reason)]
            continue
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            started = time.perf_counter()
            async with loaded_store(backend, scale.links, Path(tmp)) as store:
                progress(
                    f"{name}: loaded {scale.links} links in {time.perf_counter() - started:.1f} s"
                )
                refs = _refs(scale.links, scale.lookups)
                searches = max(50, scale.lookups // 10)
                found = searched = 0

                async def lookup(i: int, refs: list[ObjectRef] = refs) -> None:
                    nonlocal found
                    found += len(await store.linked([refs[i]]))

                async def search(i: int, refs: list[ObjectRef] = refs) -> None:
                    nonlocal searched
                    searched += len(await store.list_links(LinkFilter(external_id=refs[i].id)))

                async def ping(_i: int) -> None:
                    await store.ping()

                await _time_calls(lookup, min(200, scale.lookups))  # warm caches and the pool
                await _time_calls(ping, min(200, scale.lookups))
                found = 0
                lookups = await _time_calls(lookup, scale.lookups)
                found_by_id = await _time_calls(search, searches)
                pings = await _time_calls(ping, scale.lookups)
        base99 = percentile(pings, 99)
        for figure_name, samples, hits, target in (
            (name, lookups, found, 1.0),
            (search_name, found_by_id, searched, 5.0),
        ):
            p99 = percentile(samples, 99)
            note = (
                f"{scale.links} links, {len(samples)} calls, p50 {percentile(samples, 50):.3f} ms"
            )
            if hits != len(samples):
                note += f"; found {hits} links for {len(samples)} calls (expected one each)"
            progress(f"{figure_name}: p99 {p99:.3f} ms")
            figures.append(
                Figure(
                    figure_name,
                    "p99",
                    p99,
                    "ms",
                    baseline=base99,
                    baseline_label="SELECT 1",
                    ratio=ratio(p99, base99),
                    target=f"<={target:g} ms",
                    ok=p99 <= target,
                    note=note,
                )
            )
    return figures
