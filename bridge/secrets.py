"""Secret rotation without a restart: the secrets directory is re-read when it changes.

Kubernetes updates the files of a mounted Secret in place (an atomic swap of the `..data`
symlink) some seconds after the Secret changes. `SecretRotation.watch` polls the directory
(names, sizes, modification times and inodes of its files: cheap, and it sees that swap
on every filesystem), and on a change loads the settings again exactly as at start-up
(file, secrets directory, environment, overrides). The new webhook secrets, API tokens and
admin token are handed to the running parts; anything else that changed needs a restart and
is only logged. A load that fails (an empty file written half-way, a placeholder) keeps
the secrets in use, logs `secrets.reload_failed` and counts
`bridge_secrets_reloads_total{outcome="failed"}`: rotation never leaves the bridge without
secrets.

This matters most for Rootly, whose regenerated webhook secret invalidates the old one at
once: the sooner the bridge verifies with the new one, the fewer deliveries it refuses.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from bridge.config import ConfigError, Settings
from bridge.logging import Logger
from bridge.metrics import Metrics

Stamp = tuple[tuple[str, int, int, int], ...]


def directory_stamp(directory: Path) -> Stamp:
    """What identifies the directory's current contents (empty if it cannot be read)."""
    entries = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return ()
    for name in names:
        if name.startswith("."):
            continue
        try:
            stat = os.stat(directory / name)
        except OSError:
            continue
        entries.append((name, stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(entries)


class SecretRotation:
    """Watches one secrets directory and applies what changed to the running bridge."""

    def __init__(
        self,
        directory: Path,
        *,
        load: Callable[[], Settings],
        apply: Callable[[Settings], list[str]],
        metrics: Metrics,
        logger: Logger,
        interval: float = 2.0,
    ) -> None:
        self._directory = directory
        self._load = load
        self._apply = apply
        self._metrics = metrics
        self._log = logger
        self._interval = interval
        self._stamp: Stamp | None = None

    @property
    def directory(self) -> Path:
        return self._directory

    def remember(self) -> None:
        """Take the directory as it is now as the state the running secrets came from."""
        self._stamp = directory_stamp(self._directory)

    def reload(self) -> bool:
        """Load the settings again and hand the secrets that changed to the bridge."""
        self._stamp = directory_stamp(self._directory)
        try:
            fresh = self._load()
        except ConfigError as exc:
            self._metrics.secrets_reloads.labels("failed").inc()
            self._log.error(
                "secrets.reload_failed", directory=str(self._directory), problems=exc.problems
            )
            return False
        changed = self._apply(fresh)
        self._metrics.secrets_reloads.labels("ok").inc()
        self._log.info("secrets.reloaded", directory=str(self._directory), changed=changed)
        return True

    async def watch(self) -> None:
        """Reload whenever the directory changes (a supervised loop owned by the app)."""
        if self._stamp is None:
            self.remember()
        while True:
            await asyncio.sleep(self._interval)
            if directory_stamp(self._directory) != self._stamp:
                self.reload()
