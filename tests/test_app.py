"""The composition root builds without side effects; `start()` is where things begin."""

from __future__ import annotations

import threading
from pathlib import Path

from bridge.app import Bridge
from bridge.config import load_settings


def test_a_bridge_is_built_outside_any_event_loop_and_starts_nothing(tmp_path: Path) -> None:
    """`Bridge(settings)` runs no event loop, starts no task or thread and touches no file:
    every part is wired, and nothing begins before `start()`."""
    settings = load_settings(
        None,
        environ={"BRIDGE_CONFIG": "/dev/null"},
        overrides={
            "store": {"url": f"sqlite:///{tmp_path}/data/bridge.db"},
            "rootly": {"enabled": False},
            "incident_io": {"enabled": False},
        },
    )
    threads_before = set(threading.enumerate())
    bridge = Bridge(settings, env={})
    assert bridge.supervisor.names == []
    assert set(threading.enumerate()) == threads_before
    assert not (tmp_path / "data").exists()
