"""Store URLs as users write them, and the wording of store failures.

Users write ``sqlite:///data/bridge.db`` (relative), ``sqlite:////abs/bridge.db`` (absolute)
or ``postgresql://user@host:5432/db`` (``postgres://`` and a ``+asyncpg`` driver suffix
too). Every message that names a store goes through `StoreUrl.display` or `scrub_text`, so
no password reaches a log line or a terminal.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote, urlsplit

from bridge.store.base import StoreError

Backend = Literal["sqlite", "postgresql"]

_SCHEMA_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PASSWORD_IN_URL_RE: Final = re.compile(r"(?<=://)([^:/@\s]*):[^@\s]*@")
_SUPPORTED: Final = "use sqlite:///path/to/bridge.db or postgresql://user@host:5432/dbname"

# Advisory-lock namespace ("brdg"); the second key is derived from the schema so that
# deployments sharing one database in different schemas do not block each other.
LOCK_NAMESPACE: Final = 0x62726467


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A parsed store URL: the backend, a password-free display form, where it points."""

    backend: Backend
    display: str
    sqlite_path: Path | None = None
    dsn: str | None = None
    """PostgreSQL: the URL for asyncpg (with its password)."""
    host: str = ""
    password: str | None = None

    def scrub(self, text: str) -> str:
        """`text` with this URL's password (if any) replaced by ``***``."""
        if self.password:
            text = text.replace(self.password, "***")
        return scrub_text(text)

    def where(self) -> str:
        """How messages name this store."""
        if self.backend == "sqlite":
            return f"SQLite store {self.display}"
        return f"PostgreSQL store at {self.host}"


def scrub_text(text: str) -> str:
    """Hide ``user:password@`` credentials in any URL-looking text."""
    return _PASSWORD_IN_URL_RE.sub(r"\1:***@", text)


def parse_store_url(raw: str) -> StoreUrl:
    """Parse what the user wrote; raise `StoreError` naming the supported schemes otherwise."""
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise StoreError(f"cannot parse store URL {scrub_text(text)!r}: {_SUPPORTED}")
    base, _, driver = scheme.partition("+")
    if base == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise StoreError(f"store URL driver sqlite+{driver} is not supported: {_SUPPORTED}")
        # sqlite:///relative and sqlite:////absolute: what follows the third slash.
        path = rest[1:] if rest.startswith("/") else ""
        path = path.split("?", 1)[0]
        if not path or path == ":memory:":
            raise StoreError(
                "store URL names no SQLite file (in-memory databases lose every accepted "
                f"webhook on restart): {_SUPPORTED}"
            )
        return StoreUrl(backend="sqlite", display=path, sqlite_path=Path(unquote(path)))
    if base in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise StoreError(f"store URL driver {base}+{driver} is not supported: {_SUPPORTED}")
        try:
            parts = urlsplit("postgresql://" + rest)
            port = parts.port or 5432
        except ValueError as exc:
            raise StoreError(f"cannot parse store URL {scrub_text(text)!r}: {exc}") from exc
        user = f"{unquote(parts.username)}@" if parts.username else ""
        netloc = parts.netloc.rsplit("@", 1)[-1]
        database = parts.path.lstrip("/")
        return StoreUrl(
            backend="postgresql",
            display=f"postgresql://{user}{netloc}{parts.path}",
            dsn="postgresql://" + rest,
            host=f"{parts.hostname or 'localhost'}:{port}/{database}",
            password=unquote(parts.password) if parts.password else None,
        )
    raise StoreError(f"store URL scheme {base!r} is not supported: {_SUPPORTED}")


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
    sub = 1 if which == "migration" else 2
    digest = zlib.crc32(f"{schema or ''}/{sub}".encode())
    signed = digest - (1 << 32) if digest >= (1 << 31) else digest
    return LOCK_NAMESPACE, signed


def reason(exc: BaseException) -> str:
    """A driver exception in one line: its class and its first line of text."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
