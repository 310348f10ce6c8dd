"""Store URLs as users write them, the async engines built from them, and error wording.

Users write ``sqlite:///data/bridge.db`` (relative), ``sqlite:////abs/bridge.db`` (absolute)
or ``postgresql://user@host:5432/db`` (``postgres://`` too); internally these become
``sqlite+aiosqlite`` / ``postgresql+asyncpg``. This module also owns the translation of
driver errors into `StoreError` / `StoreUnavailable` so every caller (the store, `bridge db
upgrade`) words failures the same way and never shows a password.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import asyncpg
from sqlalchemy import URL, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from bridge.store.base import StoreError, StoreUnavailable

Backend = Literal["sqlite", "postgresql"]

_SCHEMA_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PASSWORD_IN_URL_RE: Final = re.compile(r"(?<=://)([^:/@\s]*):[^@\s]*@")
_SUPPORTED: Final = "use sqlite:///path/to/bridge.db or postgresql://user@host:5432/dbname"

# Advisory-lock namespace ("brdg"); the second key is derived from the schema so that
# deployments sharing one database in different schemas do not block each other.
LOCK_NAMESPACE: Final = 0x62726467
_MIGRATION_LOCK: Final = 1
_LEADER_LOCK: Final = 2


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A parsed store URL: backend, the async driver URL, and a password-free display form."""

    backend: Backend
    url: URL
    display: str
    sqlite_path: Path | None = None

    def scrub(self, text: str) -> str:
        """`text` with this URL's password (if any) replaced by ``***``."""
        password = self.url.password
        if password:
            text = text.replace(str(password), "***")
        return scrub_text(text)

    def asyncpg_dsn(self) -> str:
        """A DSN for raw asyncpg connections (leadership, LISTEN) to the same database."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)


def scrub_text(text: str) -> str:
    """Hide ``user:password@`` credentials in any URL-looking text."""
    return _PASSWORD_IN_URL_RE.sub(r"\1:***@", text)


def parse_store_url(raw: str) -> StoreUrl:
    """Parse what the user wrote; raise `StoreError` naming the supported schemes otherwise."""
    text = raw.strip()
    try:
        url = make_url(text)
    except sa_exc.ArgumentError as exc:
        raise StoreError(f"cannot parse store URL {scrub_text(text)!r}: {_SUPPORTED}") from exc
    scheme, _, driver = url.drivername.partition("+")
    if scheme == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise StoreError(f"store URL driver sqlite+{driver} is not supported: {_SUPPORTED}")
        if not url.database or url.database == ":memory:":
            raise StoreError(
                "store URL names no SQLite file (in-memory databases lose every accepted "
                f"webhook on restart): {_SUPPORTED}"
            )
        path = Path(url.database)
        return StoreUrl(
            backend="sqlite",
            url=url.set(drivername="sqlite+aiosqlite"),
            display=str(path),
            sqlite_path=path,
        )
    if scheme in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise StoreError(f"store URL driver {scheme}+{driver} is not supported: {_SUPPORTED}")
        async_url = url.set(drivername="postgresql+asyncpg")
        display = url.set(drivername="postgresql", password=None).render_as_string()
        return StoreUrl(backend="postgresql", url=async_url, display=display)
    raise StoreError(f"store URL scheme {scheme!r} is not supported: {_SUPPORTED}")


def check_schema(schema: str | None) -> str | None:
    """Validate a PostgreSQL schema name (it is interpolated into DDL, so be strict)."""
    if schema is not None and not _SCHEMA_RE.match(schema):
        raise StoreError(
            f"schema name {schema!r} is invalid: use lowercase letters, digits and '_' "
            "(at most 63, not starting with a digit)"
        )
    return schema


def lock_keys(schema: str | None, which: Literal["migration", "leader"]) -> tuple[int, int]:
    """The two int4 keys of a PostgreSQL advisory lock for this deployment."""
    sub = _MIGRATION_LOCK if which == "migration" else _LEADER_LOCK
    digest = zlib.crc32(f"{schema or ''}/{sub}".encode())
    signed = digest - (1 << 32) if digest >= (1 << 31) else digest
    return LOCK_NAMESPACE, signed


def create_store_engine(
    parsed: StoreUrl, *, schema: str | None = None, pool_size: int = 5
) -> AsyncEngine:
    """Build the async engine with the connection settings the store relies on.

    SQLite: every connection gets WAL (readers do not block the writer),
    ``synchronous=NORMAL`` (durable at checkpoints, safe with WAL), a 5 s busy timeout (a
    CLI process may write at the same time) and enforced foreign keys. The driver's own
    implicit BEGIN is switched off and the store emits ``BEGIN`` itself, ``BEGIN IMMEDIATE``
    for write transactions (execution option ``bridge_write``), so a write transaction takes
    the write lock up front instead of failing on lock upgrade. A small queue pool (not
    NullPool: opening a file and setting PRAGMAs per query is wasteful; not StaticPool: one
    shared connection would interleave transactions) lets WAL readers run in parallel.

    PostgreSQL: reads run in autocommit, the schema goes into ``search_path`` so
    unqualified table names resolve there.
    """
    if parsed.backend == "sqlite":
        engine = create_async_engine(parsed.url, pool_size=pool_size, max_overflow=pool_size)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                for pragma in (
                    "PRAGMA busy_timeout=5000",
                    "PRAGMA journal_mode=WAL",
                    "PRAGMA synchronous=NORMAL",
                    "PRAGMA foreign_keys=ON",
                ):
                    cursor.execute(pragma)
            finally:
                cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            options = conn.get_execution_options()
            if options.get("bridge_read", False):
                # A single SELECT needs no transaction: SQLite's autocommit gives it a
                # consistent snapshot, and BEGIN + ROLLBACK would cost two thread hops.
                return
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("bridge_write") else "BEGIN")

        return engine
    server_settings = {"application_name": "bridge"}
    if schema is not None:
        server_settings["search_path"] = schema
    # No pool_pre_ping: it costs a round trip per checkout on the hot path. A connection a
    # database restart killed fails its next use, is invalidated by the pool, and the store
    # retries a read once (`SqlStore._reading`); writes surface as StoreUnavailable and
    # their callers retry (ingest answers 503, workers try again on their next round).
    return create_async_engine(
        parsed.url,
        pool_pre_ping=False,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"server_settings": server_settings},
    )


_CONNECTIVITY: Final = (
    OSError,  # includes ConnectionError and TimeoutError
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    sa_exc.TimeoutError,
    sa_exc.InterfaceError,
    sa_exc.OperationalError,
)


def is_store_failure(exc: BaseException) -> bool:
    """Whether `exc` is a database/driver failure this module knows how to word."""
    return isinstance(exc, (sa_exc.SQLAlchemyError, *_CONNECTIVITY))


def translate_error(parsed: StoreUrl, exc: BaseException, doing: str) -> StoreError:
    """Word a driver error: `StoreUnavailable` for connectivity, `StoreError` otherwise."""
    where = (
        f"SQLite store {parsed.display}"
        if parsed.backend == "sqlite"
        else f"PostgreSQL store at {_host(parsed)}"
    )
    orig: BaseException = exc
    if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
        orig = exc.orig
    reason = parsed.scrub(_reason(orig))
    message = f"{where}: {doing} failed: {reason}"
    unavailable = isinstance(exc, _CONNECTIVITY) or isinstance(orig, _CONNECTIVITY)
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        unavailable = True
    return StoreUnavailable(message) if unavailable else StoreError(message)


def _host(parsed: StoreUrl) -> str:
    url = parsed.url
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # SQLAlchemy prefixes "(module.Class) "; keep the driver's own words.
    text = re.sub(r"^\([\w.]+\)\s*", "", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
