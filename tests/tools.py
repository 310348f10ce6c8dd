"""External tools some tests need (Prometheus, promtool, docker, debootstrap): where they are.

A missing tool skips the test with the reason locally, and fails it under `CI=true`, where
.ci/run installs every one of them: a CI run that silently skipped the image build or the
Prometheus checks would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest


def on_ci() -> bool:
    """Whether this run is CI (`CI=true`), where missing tools are failures."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> NoReturn:
    """Skip the calling test with `message`, or fail it under CI."""
    if on_ci():
        pytest.fail(f"{message} (CI=true: .ci/run must provide it)")
    pytest.skip(message)


def tool(name: str, package: str) -> str:
    """Path of executable `name`, or skip/fail naming the Debian `package` that provides it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        unavailable(f"{name} is not installed (Debian package {package})")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
