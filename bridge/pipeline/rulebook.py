"""The active rule set, and its reload: invalid rules never replace valid ones.

`Rulebook.reload()` is called on SIGHUP and when the file's modification time or size
changes (polled, which works the same on every filesystem and on Kubernetes ConfigMap
symlink swaps). A failed reload keeps the old set, logs `rules.reload_failed` with the
file:line reason and counts `bridge_rules_reloads_total{outcome="failed"}`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from bridge.logging import Logger
from bridge.metrics import Metrics
from bridge.rules import RulesError, RuleSet, load_rules


class Rulebook:
    def __init__(
        self, path: Path, env: Mapping[str, str], metrics: Metrics, logger: Logger
    ) -> None:
        self._path = path
        self._env = env
        self._metrics = metrics
        self._log = logger
        self._current: RuleSet | None = None
        self._stamp: tuple[float, int] | None = None

    @property
    def path(self) -> Path:
        return self._path

    def current(self) -> RuleSet:
        if self._current is None:
            raise RuntimeError("rules were not loaded")
        return self._current

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def load(self) -> RuleSet:
        """First load at start-up: an error here stops the bridge (raises RulesError)."""
        self._stamp = self._file_stamp()
        self._current = load_rules(self._path, self._env)
        self._metrics.rules_loaded.set(sum(1 for r in self._current.rules if r.enabled))
        self._log.info("rules.loaded", file=str(self._path), rules=len(self._current.rules))
        return self._current

    def reload(self) -> bool:
        """Swap in the file's rules if they are valid; keep the old ones otherwise."""
        self._stamp = self._file_stamp()
        try:
            fresh = load_rules(self._path, self._env)
        except RulesError as exc:
            self._metrics.rules_reloads.labels("failed").inc()
            self._log.error("rules.reload_failed", file=str(self._path), error=str(exc))
            return False
        self._current = fresh
        self._metrics.rules_reloads.labels("ok").inc()
        self._metrics.rules_loaded.set(sum(1 for r in fresh.rules if r.enabled))
        self._log.info("rules.reloaded", file=str(self._path), rules=len(fresh.rules))
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Reload whenever the file changes (a supervised loop owned by the app)."""
        while True:
            await asyncio.sleep(interval)
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                self.reload()
