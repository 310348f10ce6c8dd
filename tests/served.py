"""`bridge serve --sandbox` as a real child process, for tests that watch it from outside.

The process runs exactly as an operator starts it (its own interpreter, config file, signal
handling); its JSON log goes to a file that the test reads, which is how it learns the
simulators' URLs (`sandbox.ready`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.tools import free_port

ROOT = Path(__file__).resolve().parents[1]


def http_json(method: str, url: str, body: Any = None, timeout: float = 10) -> Any:
    """One JSON request with the standard library (the tests' client outside the loop)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


class ServedBridge:
    """One `python -m bridge serve [--sandbox] --config FILE --port N` child process."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        sandbox: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.sandbox = sandbox
        self.extra_env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_file = workdir / "bridge.yaml"
        self.config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_file = workdir / "bridge.log"
        self.ready: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ServedBridge:
        """Start the process and wait (bounded) until it is ready (with the sandbox: until
        `sandbox.ready`, which follows the listener's start)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(self.extra_env)
        args = [sys.executable, "-m", "bridge", "serve"] + (["--sandbox"] if self.sandbox else [])
        args += ["--config", str(self.config_file), "--port", str(self.port)]
        with self.log_file.open("wb") as log:
            self._process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AssertionError(f"bridge exited early:\n{self.log()}")
            if not self.sandbox:
                if self.events("bridge.started") and self.readyz():
                    return self
            elif ready := self.events("sandbox.ready"):
                self.ready = ready[0]
                return self
            time.sleep(0.1)
        raise AssertionError(f"bridge did not become ready:\n{self.log()}")

    def running(self) -> bool:
        """Whether the process is still the one started (it has not exited)."""
        return self._process is not None and self._process.poll() is None

    def readyz(self) -> bool:
        """Whether GET /readyz answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    @property
    def rootly_url(self) -> str:
        return str(self.ready["rootly"])

    @property
    def incident_io_url(self) -> str:
        return str(self.ready["incident_io"])

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every JSON log line whose event is `name`."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == name:
                    found.append(record)
        return found

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait for the drain, return the exit code (kill if it hangs)."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"bridge did not stop on SIGTERM:\n{self.log()}") from None
