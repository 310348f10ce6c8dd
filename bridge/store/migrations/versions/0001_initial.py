"""Initial schema: links, inbox, outbox (dead letters are state 'dead'), echo records.

Revision ID: 0001
Revises:
Create Date: 2024-06-01

Written out in full rather than from `bridge.store.tables`, so this migration stays what it
was when later revisions change the tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("a_platform", sa.String(32), nullable=False),
        sa.Column("a_kind", sa.String(32), nullable=False),
        sa.Column("a_id", sa.String(128), nullable=False),
        sa.Column("b_platform", sa.String(32), nullable=False),
        sa.Column("b_kind", sa.String(32), nullable=False),
        sa.Column("b_id", sa.String(128), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_links"),
        sa.UniqueConstraint(
            "a_platform",
            "a_kind",
            "a_id",
            "b_platform",
            "b_kind",
            "b_id",
            name="uq_links_a_platform_a_kind_a_id_b_platform_b_kind_b_id",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_links_b_platform_b_kind_b_id", "links", ["b_platform", "b_kind", "b_id"])

    op.create_table(
        "inbox",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("delivery_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("processed_at", _ts(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _ts(), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", _ts(), nullable=True),
        sa.Column("trace", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_inbox"),
        sa.UniqueConstraint("source", "delivery_id", name="uq_inbox_source_delivery_id"),
        sa.CheckConstraint("state IN ('pending', 'processed', 'failed')", name="ck_inbox_state"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_inbox_state_next_attempt_at", "inbox", ["state", "next_attempt_at"])

    op.create_table(
        "outbox",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("operation", sa.String(64), nullable=False),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("target", sa.String(300), nullable=True),
        sa.Column("params", _json(), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("result_links", _json(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _ts(), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", _ts(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("inbox_id", _id(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("event_received_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
        sa.CheckConstraint(
            "state IN ('pending', 'claimed', 'done', 'skipped', 'dead')", name="ck_outbox_state"
        ),
        sa.ForeignKeyConstraint(
            ["inbox_id"], ["inbox.id"], name="fk_outbox_inbox_id_inbox", ondelete="SET NULL"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_state_next_attempt_at", "outbox", ["state", "next_attempt_at"])
    op.create_index("ix_outbox_state_lease_expires_at", "outbox", ["state", "lease_expires_at"])
    op.create_index("ix_outbox_inbox_id", "outbox", ["inbox_id"])

    op.create_table(
        "echo_records",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("ref", sa.String(300), nullable=False),
        sa.Column("change", sa.String(300), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_echo_records"),
    )
    op.create_index("ix_echo_records_ref_change", "echo_records", ["ref", "change"])
    op.create_index("ix_echo_records_expires_at", "echo_records", ["expires_at"])


def downgrade() -> None:
    op.drop_table("echo_records")
    op.drop_table("outbox")
    op.drop_table("inbox")
    op.drop_table("links")
