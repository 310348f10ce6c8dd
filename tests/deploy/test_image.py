"""The image, built from the Dockerfile and run as the chart's Deployment runs it.

Needs a Docker engine and debootstrap (Debian packages docker.io and debootstrap, which
.ci/run installs and starts): without them the test is skipped with the reason, and under
CI=true it fails. The container gets the Deployment's security context, read from the
rendered chart (uid 10001, read-only root filesystem, every capability dropped, no
privilege escalation, the default seccomp profile) and a tmpfs on /tmp, and runs
`bridge serve --sandbox` on the host's network so the test reaches the bridge and the
simulators' control API on loopback.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bridge import __version__
from tests.deploy.chart import Release, default_values, render
from tests.deploy.image import base_image, build_image, docker, docker_env, require_engine
from tests.served import http_json
from tests.tools import free_port, tool

pytestmark = pytest.mark.slow


def _security_flags(release: Release) -> list[str]:
    """`docker run` flags equivalent to the Deployment's pod and container securityContext."""
    pod = release.one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    container = release.container()["securityContext"]
    flags = [f"--user={container['runAsUser']}:{container['runAsGroup']}"]
    assert pod["runAsUser"] == container["runAsUser"] == 10001
    if container["readOnlyRootFilesystem"]:
        flags.append("--read-only")
    flags += [f"--cap-drop={cap}" for cap in container["capabilities"]["drop"]]
    if not container["allowPrivilegeEscalation"]:
        flags.append("--security-opt=no-new-privileges")
    assert container["seccompProfile"]["type"] == "RuntimeDefault", "docker's default profile"
    mounts = {m["mountPath"] for m in release.container()["volumeMounts"]}
    assert "/tmp" in mounts
    flags.append("--tmpfs=/tmp:rw,nosuid,nodev,size=64m")
    return flags


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The Dockerfile built on the cached Debian base (removed afterwards; layers stay
    cached)."""
    require_engine()
    tag = build_image(base_image())
    try:
        yield tag
    finally:
        docker("image", "rm", "--force", tag, check=False)


def _both(name: str) -> str:
    """The container's stdout and stderr so far."""
    out = subprocess.run(
        [tool("docker", "docker.io"), "logs", name],
        capture_output=True,
        text=True,
        timeout=60,
        env=docker_env(),
        check=False,
    )
    return out.stdout + out.stderr


def _events(logs: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in logs.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                found.append(record)
    return found


def _wait(what: str, check: Any, name: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        state = docker("inspect", "--format", "{{.State.Status}}", name, check=False).strip()
        if state == "exited":
            raise AssertionError(f"container exited while waiting for {what}:\n{_both(name)}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{_both(name)}")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def test_image_labels_user_and_version(image: str) -> None:
    """The built image runs as 10001, says its version, and `bridge --version` inside it
    matches the package and the chart's appVersion (so the default image tag exists)."""
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image))
    assert config["User"] == "10001:10001"
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    version = docker("run", "--rm", "--network=host", image, "--version").strip()
    assert version == f"bridge {__version__}"
    chart_image = render(default_values()).container()["image"]
    assert chart_image == f"bridge:{__version__}"


def test_image_serves_a_flow_and_drains_on_sigterm(image: str) -> None:
    """Run read-only as uid 10001 with no capabilities: /readyz answers, a Rootly incident
    opened in the built-in sandbox pages incident.io through the bridge, and SIGTERM drains
    and exits 0."""
    port = free_port()
    name = f"bridge-test-{uuid.uuid4().hex[:8]}"
    flags = _security_flags(render(default_values()))
    docker(
        "run",
        "--detach",
        f"--name={name}",
        "--network=host",
        *flags,
        "--env=BRIDGE_SERVER__HOST=127.0.0.1",
        "--env=BRIDGE_SERVER__SHUTDOWN_GRACE_SECONDS=5",
        "--env=BRIDGE_LOGGING__FORMAT=json",
        image,
        "serve",
        "--sandbox",
        "--config",
        "/app/config/bridge.yaml",
        "--port",
        str(port),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait("/readyz", lambda: _ready(url), name)
        ready = _wait("sandbox.ready", lambda: _events(_both(name), "sandbox.ready"), name)[0]
        incident = http_json("POST", f"{ready['rootly']}/_sandbox/incidents", {"title": "DB down"})
        assert incident

        def paged() -> list[Any]:
            state = http_json("GET", f"{ready['incident_io']}/_sandbox/state")
            escalations: list[Any] = state["escalations"]
            return [e for e in escalations if e.get("title") == "DB down"]

        _wait("an incident.io escalation", paged, name)
        docker("kill", "--signal=TERM", name)
        code = docker("wait", name, timeout=60).strip()
        logs = _both(name)
        assert code == "0", logs
        assert _events(logs, "bridge.stopped"), logs
        assert "Traceback" not in logs
    finally:
        docker("rm", "--force", "--volumes", name, check=False)
