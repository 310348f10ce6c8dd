"""Rules reload: a valid change is swapped in, an invalid one never replaces the valid set."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from bridge.logging import configure_logging, get_logger
from bridge.metrics import create_metrics
from bridge.pipeline.rulebook import Rulebook

ONE_RULE = """\
version: 1
rules:
  - name: first
    on: {source: rootly, event: incident.cancelled}
    actions:
      - do: incident_io.cancel_escalation
        for_each: {linked: "incident_io:escalation"}
"""


def make(tmp_path: Path, text: str) -> tuple[Rulebook, Path, CollectorRegistry]:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    registry = CollectorRegistry()
    book = Rulebook(path, {}, create_metrics(registry), get_logger("test"))
    book.load()
    return book, path, registry


def test_valid_reload_swaps_rules(tmp_path: Path) -> None:
    """After the file changes to another valid rule set, reload activates it and counts ok."""
    book, path, registry = make(tmp_path, ONE_RULE)
    path.write_text(ONE_RULE.replace("name: first", "name: second"))
    assert book.reload() is True
    assert [r.name for r in book.current().rules] == ["second"]
    assert registry.get_sample_value("bridge_rules_reloads_total", {"outcome": "ok"}) == 1
    assert registry.get_sample_value("bridge_rules_loaded") == 1


def test_invalid_reload_keeps_the_old_rules_and_says_why(tmp_path: Path) -> None:
    """A broken file on reload: old rules stay active, the failure is logged with file:line
    and counted."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    book, path, registry = make(tmp_path, ONE_RULE)
    path.write_text(ONE_RULE.replace("incident_io.cancel_escalation", "incident_io.nuke"))
    assert book.reload() is False
    assert [r.name for r in book.current().rules] == ["first"]
    assert registry.get_sample_value("bridge_rules_reloads_total", {"outcome": "failed"}) == 1
    failures = [
        json.loads(line) for line in stream.getvalue().splitlines() if "rules.reload_failed" in line
    ]
    assert failures
    assert f"{path}:6" in failures[0]["error"]  # the `- do:` line
    structlog.reset_defaults()


async def test_file_change_is_picked_up_by_the_watcher(tmp_path: Path) -> None:
    """The watch loop notices a modified file and reloads it without a signal."""
    book, path, _ = make(tmp_path, ONE_RULE)
    watcher = asyncio.create_task(book.watch(interval=0.05))
    try:
        path.write_text(ONE_RULE.replace("name: first", "name: watched"))
        os.utime(path, (1, 1))  # a distinct mtime even on coarse filesystems
        for _ in range(100):
            if [r.name for r in book.current().rules] == ["watched"]:
                break
            await asyncio.sleep(0.05)
        assert [r.name for r in book.current().rules] == ["watched"]
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
