"""Alembic environment for the bridge store.

Migrations run only through `bridge.store.migrate` (the store's `open()` and
`bridge db upgrade`), which hands in a live connection already holding the migration lock;
this file just runs the scripts on it. Alembic executes this module per run (that is its
contract), so the top-level code below is the entry point, not an import side effect.
"""

from __future__ import annotations

from alembic import context

from bridge.store.tables import metadata

_connection = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError(
        "bridge migrations run through 'bridge db upgrade' (bridge.store.migrate), "
        "which supplies the connection and the migration lock"
    )
context.configure(
    connection=_connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode recreates tables for later migrations.
    render_as_batch=_connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
