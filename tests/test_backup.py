"""`bridge db backup PATH`: a consistent SQLite copy while the bridge runs; clear refusals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp

from bridge.app import Bridge
from tests.conftest import bridge_cli, rootly_delivery


async def test_backup_of_a_running_bridge_holds_every_stored_delivery(
    bridge: Bridge, tmp_path: Path
) -> None:
    """While the bridge runs (WAL mode, writes in flight), the backup is one self-contained
    file that passes an integrity check and holds every delivery stored before it."""
    assert bridge.endpoint is not None
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            body, headers = rootly_delivery()
            async with session.post(
                f"{bridge.endpoint.url}/webhooks/rootly", data=body, headers=headers
            ) as response:
                assert response.status == 200
    env = {"PATH": "/usr/bin:/bin", "BRIDGE_STORE__URL": bridge.settings.store.url}
    backups = tmp_path / "backups"
    backups.mkdir()
    code, out, err = await bridge_cli("db", "backup", str(backups), env=env)
    assert code == 0, err
    [copy] = list(backups.iterdir())
    assert copy.name.startswith("bridge-") and str(copy) in out
    database = sqlite3.connect(copy)
    try:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert database.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        # Schema-agnostic: the table holding the deliveries has all 20 of them.
        tables = [
            r[0]
            for r in database.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%inbox%'"
            )
        ]
        assert tables
        counts = [database.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables]
        assert max(counts) >= 20
    finally:
        database.close()
    assert not [p for p in backups.iterdir() if p.name.endswith(".partial")]

    code, _, err = await bridge_cli("db", "backup", str(copy), env=env)
    assert (code, "exists" in err, "Traceback" in err) == (1, True, False)


async def test_backup_refuses_postgresql_and_a_missing_store(tmp_path: Path) -> None:
    """PostgreSQL: exit 2 pointing at pg_dump; a SQLite file that does not exist: exit 1;
    one line each, no traceback."""
    code, _, err = await bridge_cli(
        "db",
        "backup",
        str(tmp_path / "b.db"),
        env={"BRIDGE_STORE__URL": "postgresql://bridge@127.0.0.1:5432/bridge"},
    )
    assert code == 2 and "pg_dump" in err and "Traceback" not in err
    code, _, err = await bridge_cli(
        "db",
        "backup",
        str(tmp_path / "b.db"),
        env={"BRIDGE_STORE__URL": f"sqlite:///{tmp_path}/missing.db"},
    )
    assert code == 1 and "no SQLite store" in err and "Traceback" not in err
