"""The store's schema: numbered migrations, each a list of statements for both backends.

`migrate` brings a database to `HEAD` in one transaction: SQLite's ``BEGIN IMMEDIATE``
and, on PostgreSQL, a transaction-scoped advisory lock serialise replicas that start
together. The version lives in ``bridge_schema_version``. A database at a version this
code does not know was migrated by a newer bridge: running against it could corrupt it,
so it is refused (`SchemaTooNew`). A database created by the earlier Alembic-based
releases (table ``alembic_version`` at revision ``0001``) is at version 1 and is adopted
as such. Migrations are never edited once released: a change is a new number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bridge.store.base import SchemaTooNew
from bridge.store.driver import Driver, Sql, Tx
from bridge.store.urls import lock_keys


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "links, inbox, outbox (dead letters are state 'dead'), echo records",
        (
            """CREATE TABLE links (
                id {id}, a_platform VARCHAR(32) NOT NULL, a_kind VARCHAR(32) NOT NULL,
                a_id VARCHAR(128) NOT NULL, b_platform VARCHAR(32) NOT NULL,
                b_kind VARCHAR(32) NOT NULL, b_id VARCHAR(128) NOT NULL,
                created_at {ts} NOT NULL, created_by VARCHAR(200) NOT NULL,
                CONSTRAINT uq_links_a_platform_a_kind_a_id_b_platform_b_kind_b_id
                    UNIQUE (a_platform, a_kind, a_id, b_platform, b_kind, b_id))""",
            "CREATE INDEX ix_links_b_platform_b_kind_b_id ON links (b_platform, b_kind, b_id)",
            """CREATE TABLE inbox (
                id {id}, source VARCHAR(32) NOT NULL, delivery_id VARCHAR(255) NOT NULL,
                event_type VARCHAR(255) NOT NULL, body {blob} NOT NULL,
                received_at {ts} NOT NULL, state VARCHAR(16) NOT NULL, processed_at {ts},
                attempts INTEGER NOT NULL, next_attempt_at {ts} NOT NULL,
                lease_owner VARCHAR(200), lease_expires_at {ts}, trace {json}, error TEXT,
                CONSTRAINT uq_inbox_source_delivery_id UNIQUE (source, delivery_id),
                CONSTRAINT ck_inbox_state CHECK (state IN ('pending', 'processed', 'failed')))""",
            "CREATE INDEX ix_inbox_state_next_attempt_at ON inbox (state, next_attempt_at)",
            """CREATE TABLE outbox (
                id {id}, operation VARCHAR(64) NOT NULL, platform VARCHAR(32) NOT NULL,
                target VARCHAR(300), params {json} NOT NULL, rule VARCHAR(200) NOT NULL,
                idempotency_key VARCHAR(255) NOT NULL, result_links {json} NOT NULL,
                state VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL,
                next_attempt_at {ts} NOT NULL, lease_owner VARCHAR(200), lease_expires_at {ts},
                last_error TEXT, inbox_id {ref_id}, created_at {ts} NOT NULL,
                updated_at {ts} NOT NULL, finished_at {ts}, result {json},
                event_received_at {ts},
                CONSTRAINT uq_outbox_idempotency_key UNIQUE (idempotency_key),
                CONSTRAINT ck_outbox_state
                    CHECK (state IN ('pending', 'claimed', 'done', 'skipped', 'dead')),
                CONSTRAINT fk_outbox_inbox_id_inbox FOREIGN KEY (inbox_id)
                    REFERENCES inbox (id) ON DELETE SET NULL)""",
            "CREATE INDEX ix_outbox_state_next_attempt_at ON outbox (state, next_attempt_at)",
            "CREATE INDEX ix_outbox_state_lease_expires_at ON outbox (state, lease_expires_at)",
            "CREATE INDEX ix_outbox_inbox_id ON outbox (inbox_id)",
            """CREATE TABLE echo_records (
                id {id_plain}, ref VARCHAR(300) NOT NULL, change VARCHAR(300) NOT NULL,
                expires_at {ts} NOT NULL)""",
            "CREATE INDEX ix_echo_records_ref_change ON echo_records (ref, change)",
            "CREATE INDEX ix_echo_records_expires_at ON echo_records (expires_at)",
        ),
    ),
    Migration(
        2,
        "convergence: actions ordered per object, links checked least recently first",
        (
            # The object an action changes (its target, or what a create is keyed on), the
            # aspect of it (status, or the fields an update sets), and when its cause
            # happened: actions on one object run in cause order (bridge.ordering).
            "ALTER TABLE outbox ADD COLUMN object_key VARCHAR(300)",
            "ALTER TABLE outbox ADD COLUMN aspect VARCHAR(300)",
            "ALTER TABLE outbox ADD COLUMN cause_at {ts}",
            "UPDATE outbox SET cause_at = created_at",
            "CREATE INDEX ix_outbox_object_key_state ON outbox (object_key, state)",
            "CREATE UNIQUE INDEX ix_outbox_claimed_object ON outbox (object_key)"
            " WHERE state = 'claimed'",
            # The object a create's result is linked to (what waits for it).
            "ALTER TABLE outbox ADD COLUMN result_to VARCHAR(300)",
            "CREATE INDEX ix_outbox_result_to ON outbox (result_to)",
            "ALTER TABLE links ADD COLUMN checked_at {ts}",
            "ALTER TABLE links ADD COLUMN check_after {ts}",
            "CREATE INDEX ix_links_checked_at ON links (checked_at, id)",
            "CREATE INDEX ix_links_created_at ON links (created_at)",
        ),
    ),
    Migration(
        3,
        "the last state seen of each object whose webhooks carry its current state only",
        (
            # One row per object (Rootly's webhooks say what an object is, never what it
            # was): the dispatcher compares the next event about it with this to tell a
            # change from a redelivered state (`previous_status`). Rows of objects that
            # are no longer linked go with the processed webhooks (`PRUNE_STATES`).
            """CREATE TABLE object_states (
                platform VARCHAR(32) NOT NULL, kind VARCHAR(32) NOT NULL,
                object_id VARCHAR(128) NOT NULL, state {json} NOT NULL,
                seen_at {ts} NOT NULL,
                CONSTRAINT pk_object_states PRIMARY KEY (platform, kind, object_id))""",
            "CREATE INDEX ix_object_states_seen_at ON object_states (seen_at)",
        ),
    ),
    Migration(
        4,
        "operator console: the objects each event names, replays keep their attempts,"
        " one vocabulary for who made a link",
        (
            # Written by the dispatcher with its decision (it has parsed the event), so
            # ingest stays one INSERT per batch. Deleted with their event (retention).
            """CREATE TABLE event_objects (
                inbox_id {ref_id} NOT NULL, platform VARCHAR(32) NOT NULL,
                kind VARCHAR(32) NOT NULL, object_id VARCHAR(128) NOT NULL,
                role VARCHAR(16) NOT NULL,
                CONSTRAINT pk_event_objects PRIMARY KEY (inbox_id, platform, kind, object_id),
                CONSTRAINT fk_event_objects_inbox_id_inbox FOREIGN KEY (inbox_id)
                    REFERENCES inbox (id) ON DELETE CASCADE){without_rowid}""",
            # A bare ID from either platform, or a full ref (the same index, all columns).
            "CREATE INDEX ix_event_objects_object ON event_objects"
            " (object_id, platform, kind, inbox_id)",
            # `attempts` counts every attempt, before and after a replay; a replay gives
            # the action a fresh budget of `executor.max_attempts` from here.
            "ALTER TABLE outbox ADD COLUMN attempts_before_replay INTEGER NOT NULL DEFAULT 0",
            # created_by: `rule:<name>`, `operator`, `reconcile` or `adopt`. Links recorded
            # by a rule used to carry the bare rule name; the CLI and the admin API their
            # own names.
            "UPDATE links SET created_by = 'operator' WHERE created_by IN ('cli', 'admin-api')",
            "UPDATE links SET created_by = 'rule:' || created_by"
            " WHERE created_by NOT LIKE 'rule:%'"
            " AND created_by NOT IN ('operator', 'reconcile', 'adopt')"
            " AND length(created_by) <= 195",
        ),
    ),
    Migration(
        5,
        "rate limits shared by replicas, replica heartbeats, actions taken by priority",
        (
            # One quota of one API key (by fingerprint) on one platform, counted by every
            # replica (GCRA): `tat` is its theoretical arrival time, unix seconds.
            """CREATE TABLE rate_limits (
                platform VARCHAR(32) NOT NULL, key_fingerprint VARCHAR(64) NOT NULL,
                endpoint_class VARCHAR(64) NOT NULL, tat DOUBLE PRECISION NOT NULL,
                CONSTRAINT pk_rate_limits
                    PRIMARY KEY (platform, key_fingerprint, endpoint_class))""",
            # Each replica's last sign of life: a shared quota's fallback share when the
            # store cannot be reached is its rate divided by the replicas seen alive.
            """CREATE TABLE replicas (
                instance VARCHAR(200) NOT NULL, seen_at {ts} NOT NULL,
                CONSTRAINT pk_replicas PRIMARY KEY (instance))""",
            # The action's class (0 page-stopping, 1 create, 2 update) and its turn: when
            # it was decided plus one `executor.priority_age_seconds` per class below page-
            # stopping. Claims take actions in turn order or oldest first, walking these.
            "ALTER TABLE outbox ADD COLUMN priority SMALLINT NOT NULL DEFAULT 1",
            "ALTER TABLE outbox ADD COLUMN turn_at {ts}",
            "UPDATE outbox SET turn_at = created_at",
            "CREATE INDEX ix_outbox_turn ON outbox (turn_at, id)"
            " WHERE state IN ('pending', 'claimed') AND turn_at IS NOT NULL",
            "CREATE INDEX ix_outbox_waiting ON outbox (id)"
            " WHERE state IN ('pending', 'claimed') AND turn_at IS NOT NULL",
        ),
    ),
    Migration(
        6,
        "an action whose request went unanswered holds its object while it may still land",
        (
            # Until then no other action on its object starts (`_RUNNABLE`); the index holds
            # only the few rows with a request in doubt.
            "ALTER TABLE outbox ADD COLUMN in_doubt_until {ts}",
            "CREATE INDEX ix_outbox_in_doubt ON outbox (object_key, in_doubt_until)"
            " WHERE in_doubt_until IS NOT NULL",
        ),
    ),
)
HEAD: Final = MIGRATIONS[-1].version

_TABLES: Final = {
    "sqlite": Sql("SELECT name FROM sqlite_master WHERE type = 'table'"),
    "postgresql": Sql(
        "SELECT table_name AS name FROM information_schema.tables"
        " WHERE table_schema = current_schema()"
    ),
}
_VERSION = Sql("SELECT max(version) AS version FROM bridge_schema_version")


async def migrate(driver: Driver, schema: str | None = None) -> int:
    """Bring the database to `HEAD`; returns the version. Raises `SchemaTooNew`."""
    if await current_version(driver) == HEAD:
        return HEAD  # the usual start: no write lock taken

    async def work(tx: Tx) -> int:
        if driver.backend == "postgresql":
            key1, key2 = lock_keys(schema, "migration")
            await tx.execute(
                Sql("SELECT pg_advisory_xact_lock(:k1, :k2)"), {"k1": key1, "k2": key2}
            )
            if schema is not None:
                await tx.execute(Sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        current = await _version(tx, driver.backend)
        if current > HEAD:
            raise SchemaTooNew(
                f"the database schema is at version {current}, which this bridge does not"
                f" know (its newest is {HEAD}): it was migrated by a newer bridge; run that"
                " version or restore a matching backup"
            )
        for migration in MIGRATIONS[current:]:
            for statement in migration.statements:
                await tx.execute(Sql(statement))
            await tx.execute(Sql("DELETE FROM bridge_schema_version"))
            await tx.execute(
                Sql("INSERT INTO bridge_schema_version (version) VALUES (:v)"),
                {"v": migration.version},
            )
        return HEAD

    return await driver.transact("migrating the schema", work)


async def _version(tx: Tx, backend: str) -> int:
    tables = {row["name"] for row in await tx.fetch(_TABLES[backend])}
    if "bridge_schema_version" not in tables:
        await tx.execute(Sql("CREATE TABLE bridge_schema_version (version INTEGER NOT NULL)"))
        if "alembic_version" in tables:
            rows = await tx.fetch(Sql("SELECT version_num FROM alembic_version"))
            revision = rows[0]["version_num"] if rows else None
            if revision != "0001":
                raise SchemaTooNew(
                    f"the database schema is at Alembic revision {revision!r}, which this"
                    " bridge does not know: it was migrated by a newer bridge"
                )
            await tx.execute(Sql("DROP TABLE alembic_version"))
            await tx.execute(Sql("INSERT INTO bridge_schema_version (version) VALUES (1)"))
            return 1
        return 0
    rows = await tx.fetch(_VERSION)
    return int(rows[0]["version"] or 0)


async def current_version(driver: Driver) -> int | None:
    """The version the database is at, without changing anything (None: not a store)."""
    tables = {row["name"] for row in await driver.fetch(_TABLES[driver.backend])}
    if "bridge_schema_version" in tables:
        return int((await driver.fetch(_VERSION))[0]["version"] or 0)
    return 1 if "alembic_version" in tables else None
