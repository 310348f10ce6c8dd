"""The store's tables as SQLAlchemy Core definitions (the migrations create the same).

These are immutable schema declarations, not state: SQLAlchemy Core and Alembic's
autogenerate comparison both work from one `MetaData`, so it is declared once here.
`tests/store` checks that migrating an empty database yields exactly this schema.

Dead letters are not a table of their own: they are outbox rows in state ``dead``, so a
replay is a state change and the action keeps its ID, idempotency key and history.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

INBOX_STATES: Final = ("pending", "processed", "failed")
OUTBOX_STATES: Final = ("pending", "claimed", "done", "skipped", "dead")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as
    naive UTC (text that sorts chronologically) and get their UTC zone back on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the store; use UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_type() -> TypeEngine[Any]:
    """JSON on SQLite, JSONB on PostgreSQL (indexable, compact)."""
    return JSON().with_variant(JSONB(), "postgresql")


def id_type() -> TypeEngine[int]:
    """64-bit IDs on PostgreSQL; SQLite needs exactly INTEGER for a rowid primary key."""
    return BigInteger().with_variant(Integer(), "sqlite")


def _states(column: str, states: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in states)})"


metadata = MetaData(naming_convention=NAMING_CONVENTION)

# One row per link, the pair stored in canonical order (a < b by `str(ref)`), so (x, y) and
# (y, x) are the same row. The unique constraint's index serves lookups by side a; side b
# has its own index.
links = Table(
    "links",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("a_platform", String(32), nullable=False),
    Column("a_kind", String(32), nullable=False),
    Column("a_id", String(128), nullable=False),
    Column("b_platform", String(32), nullable=False),
    Column("b_kind", String(32), nullable=False),
    Column("b_id", String(128), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("created_by", String(200), nullable=False),
    UniqueConstraint("a_platform", "a_kind", "a_id", "b_platform", "b_kind", "b_id"),
    Index(None, "b_platform", "b_kind", "b_id"),
    sqlite_autoincrement=True,
)

# Accepted webhook deliveries. A row is claimed by setting a lease (state stays pending);
# AUTOINCREMENT on SQLite so IDs are never reused after pruning.
inbox = Table(
    "inbox",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("delivery_id", String(255), nullable=False),
    Column("event_type", String(255), nullable=False),
    Column("body", LargeBinary(), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("processed_at", UtcDateTime(), nullable=True),
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", UtcDateTime(), nullable=True),
    Column("trace", json_type(), nullable=True),
    Column("error", Text(), nullable=True),
    UniqueConstraint("source", "delivery_id"),
    CheckConstraint(_states("state", INBOX_STATES), name="state"),
    Index(None, "state", "next_attempt_at"),
    sqlite_autoincrement=True,
)

# Actions to perform; dead letters are rows in state 'dead'.
outbox = Table(
    "outbox",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("operation", String(64), nullable=False),
    Column("platform", String(32), nullable=False),
    Column("target", String(300), nullable=True),
    Column("params", json_type(), nullable=False),
    Column("rule", String(200), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("result_links", json_type(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", UtcDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
    Column("inbox_id", id_type(), ForeignKey("inbox.id", ondelete="SET NULL"), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("result", json_type(), nullable=True),
    Column("event_received_at", UtcDateTime(), nullable=True),
    UniqueConstraint("idempotency_key"),
    CheckConstraint(_states("state", OUTBOX_STATES), name="state"),
    Index(None, "state", "next_attempt_at"),
    Index(None, "state", "lease_expires_at"),
    Index(None, "inbox_id"),
    sqlite_autoincrement=True,
)

# The bridge's own recent writes, for the echo guard.
echo_records = Table(
    "echo_records",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("ref", String(300), nullable=False),
    Column("change", String(300), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index(None, "ref", "change"),
    Index(None, "expires_at"),
)
