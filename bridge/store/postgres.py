"""The PostgreSQL driver: asyncpg, a pool for statements, dedicated connections for the
leader lock and LISTEN.

- Statements are rendered once from ``:name`` to ``$n`` and prepared by asyncpg's cache.
- JSONB crosses as text both ways (a codec), as it does on SQLite; the store encodes it.
- The pool does not reset connections on release (asyncpg's default costs a round trip
  each time): they only ever run whole transactions or single statements.
- A statement on a connection that turned out dead (the server restarted) is retried once
  on a fresh one, but only when nothing of the transaction ran yet. A deadlock or
  serialisation failure retries the whole transaction (two replicas inserting overlapping
  webhook batches).
- Leadership is a session advisory lock held on a dedicated connection; LISTEN runs on
  another, reconnected with back-off whenever it is lost (wake-ups resume by themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg
import structlog

from bridge.store.base import StoreError, StoreUnavailable
from bridge.store.driver import Params, Row, Sql, T, numbered, render
from bridge.store.urls import StoreUrl, lock_keys, reason

WORK_CHANNEL: Final = "bridge_work"
LISTEN_CHECK_SECONDS: Final = 30.0
_CONNECTIVITY: Final = (
    OSError,  # ConnectionError, TimeoutError
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    # A pooled connection the server dropped while idle can fail this way on first use.
    asyncpg.InternalClientError,
)
_RETRY_TRANSACTION: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# ValueError: a value asyncpg cannot encode (a lone surrogate in a string, say).
_FAILURES: Final = (asyncpg.PostgresError, ValueError, *_CONNECTIVITY)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset (see the module docstring)."""


async def _text_json(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=str, decoder=str, schema="pg_catalog", format="text"
        )


class PostgresDriver:
    backend: Literal["postgresql"] = "postgresql"

    def __init__(
        self,
        url: StoreUrl,
        *,
        schema: str | None,
        pool_size: int,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._url = url
        self._schema = schema
        self._pool_size = pool_size
        self._log = logger
        self._pool: asyncpg.Pool | None = None
        self._sql: dict[Sql, tuple[str, tuple[str, ...]]] = {}
        self._leader: asyncpg.Connection | None = None
        self._leader_guard = asyncio.Lock()

    def _settings(self, role: str = "") -> dict[str, str]:
        settings = {"application_name": f"bridge-{role}" if role else "bridge"}
        if self._schema is not None:
            settings["search_path"] = self._schema
        return settings

    def error(self, doing: str, exc: BaseException) -> StoreError:
        message = self._url.scrub(f"{self._url.where()}: {doing} failed: {reason(exc)}")
        if isinstance(exc, (*_CONNECTIVITY, *_RETRY_TRANSACTION)):
            return StoreUnavailable(message)
        return StoreError(message)

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._url.dsn,
                min_size=1,
                max_size=self._pool_size,
                reset=_keep_session,
                init=_text_json,
                timeout=10,
                server_settings=self._settings(),
            )
        except (asyncpg.PostgresError, *_CONNECTIVITY) as exc:
            raise self.error("opening the store", exc) from exc

    async def close(self) -> None:
        await self.release_lead()
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), timeout=5)
            pool.terminate()

    async def connect(self, doing: str, role: str) -> asyncpg.Connection:
        """A dedicated connection outside the pool (kept open by its owner), named
        ``bridge-<role>`` in ``pg_stat_activity``."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self._url.dsn, timeout=10, server_settings=self._settings(role)
            )
        except (asyncpg.PostgresError, *_CONNECTIVITY) as exc:
            raise self.error(doing, exc) from exc
        await _text_json(conn)
        return conn

    def _compiled(self, sql: Sql) -> tuple[str, tuple[str, ...]]:
        compiled = self._sql.get(sql)
        if compiled is None:
            compiled = self._sql[sql] = numbered(render(sql, "postgresql"))
        return compiled

    def args(self, sql: Sql, params: Params | None) -> tuple[str, list[Any]]:
        text, names = self._compiled(sql)
        values = params or {}
        args = [values[name] for name in names]
        for value in args:
            if isinstance(value, datetime) and value.tzinfo is None:
                # asyncpg would take it as UTC; SQLite refuses it too: never guess.
                raise StoreError(f"naive datetime {value.isoformat()} given to the store; use UTC")
        return text, args

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"store {self._url.display} is not open (call open() first)")
        return self._pool

    async def fetch(self, sql: Sql, params: Params | None = None) -> list[Row]:
        text, args = self.args(sql, params)
        for attempt in (1, 2):
            try:
                async with self._require_pool().acquire() as conn:
                    try:
                        return [dict(record) for record in await conn.fetch(text, *args)]
                    except _CONNECTIVITY:
                        conn.terminate()  # never back into the pool
                        raise
            except _FAILURES as exc:
                if attempt == 2 or not isinstance(exc, _CONNECTIVITY):
                    raise self.error("reading", exc) from exc
        raise AssertionError("unreachable")

    async def transact(self, doing: str, work: Callable[[_Tx], Awaitable[T]]) -> T:
        for attempt in range(1, 4):
            tx: _Tx | None = None
            try:
                async with self._require_pool().acquire() as conn:
                    try:
                        async with conn.transaction():
                            tx = _Tx(self, conn, doing)
                            return await work(tx)
                    except (StoreError, *_FAILURES) as exc:
                        cause = exc.__cause__ if isinstance(exc, StoreError) else exc
                        if isinstance(cause, _CONNECTIVITY):
                            conn.terminate()  # never back into the pool
                        raise
            except (StoreError, *_FAILURES) as exc:
                cause = exc.__cause__ if isinstance(exc, StoreError) else exc
                if isinstance(exc, StoreError) and cause is None:
                    raise  # the store's own refusal, not the database's
                fresh = tx is None or not tx.used
                retry = isinstance(cause, _RETRY_TRANSACTION) or (
                    fresh and isinstance(cause, _CONNECTIVITY)
                )
                if attempt == 3 or not retry:
                    if isinstance(exc, StoreError):
                        raise
                    raise self.error(doing, exc) from exc
        raise AssertionError("unreachable")

    # -- leadership and wake-ups ------------------------------------------------------
    async def try_lead(self) -> bool:
        async with self._leader_guard:
            conn = self._leader
            if conn is not None:
                if await _alive(conn):
                    return True
                self._leader = None
                conn.terminate()
                self._log.warning("store.leadership.lost")
            conn = await self.connect("taking leadership", "leader")
            try:
                got = bool(
                    await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1, $2)", *lock_keys(self._schema, "leader")
                    )
                )
            except (asyncpg.PostgresError, *_CONNECTIVITY) as exc:
                conn.terminate()
                raise self.error("taking leadership", exc) from exc
            if not got:
                await _close_quietly(conn)
                return False
            self._leader = conn
            self._log.info("store.leadership.acquired")
            return True

    async def release_lead(self) -> None:
        async with self._leader_guard:
            conn, self._leader = self._leader, None
            if conn is None:
                return
            # Closing the session releases the lock; unlock first in case a pooler keeps
            # the server session alive.
            with contextlib.suppress(Exception):
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, $2)", *lock_keys(self._schema, "leader")
                )
            await _close_quietly(conn)
            self._log.info("store.leadership.released")

    async def notify(self) -> None:
        try:
            async with self._require_pool().acquire() as conn:
                await conn.execute("SELECT pg_notify($1, '')", WORK_CHANNEL)
        except (asyncpg.PostgresError, *_CONNECTIVITY) as exc:
            raise self.error("notifying workers", exc) from exc

    async def listen(self, callback: Callable[[], None]) -> None:
        delay = 0.5
        while True:
            try:
                conn = await self.connect("listening for work", "listen")
            except StoreError as exc:
                self._log.warning("store.listen.failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            try:
                await conn.add_listener(WORK_CHANNEL, lambda *_args: callback())
                self._log.info("store.listen.connected")
                delay = 0.5
                # Notifications sent while nobody listened are lost: look for work once.
                callback()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_CHECK_SECONDS)
                    if not lost.is_set() and not await _alive(conn):
                        break
            except (asyncpg.PostgresError, *_CONNECTIVITY) as exc:
                self._log.warning("store.listen.failed", error=str(self.error("listening", exc)))
            finally:
                conn.terminate()
            self._log.warning("store.listen.lost", retry_in=delay)
            await asyncio.sleep(delay)


class _Tx:
    """Statements of one transaction; a failed one comes out as `StoreError` (its cause is
    the driver's exception), so the store can roll back to a savepoint and go on."""

    def __init__(
        self,
        driver: PostgresDriver,
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        doing: str,
    ) -> None:
        self._driver = driver
        self._conn = conn
        self._doing = doing
        self.used = False

    async def execute(self, sql: Sql, params: Params | None = None) -> int:
        text, args = self._driver.args(sql, params)
        try:
            status: str = await self._conn.execute(text, *args)
        except _FAILURES as exc:
            raise self._driver.error(self._doing, exc) from exc
        finally:
            self.used = True
        # "UPDATE 3", "INSERT 0 1", "DELETE 0", "SELECT 1": the count is the last word.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def fetch(self, sql: Sql, params: Params | None = None) -> list[Row]:
        text, args = self._driver.args(sql, params)
        try:
            return [dict(record) for record in await self._conn.fetch(text, *args)]
        except _FAILURES as exc:
            raise self._driver.error(self._doing, exc) from exc
        finally:
            self.used = True


async def _alive(conn: asyncpg.Connection) -> bool:
    if conn.is_closed():
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=5)
    except Exception:
        return False
    return True


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:
        conn.terminate()
