"""Build the bridge image for real: a Debian base made with debootstrap, then the Dockerfile.

No registry is needed. The base (Debian bookworm, minbase, with python3, python3-venv and
ca-certificates) is made once and cached outside the repository, in
`$BRIDGE_TEST_CACHE_DIR` (default `~/.cache/bridge-tests`), as a tarball named by a hash
of what went into it, and imported into the Docker engine as `bridge-test-base:<hash>`;
later runs (and CI on the same machine) reuse the image, or the tarball when the engine
lost it. The base carries this machine's CA bundle, as a company base image carries the
company's CA, so pip inside the build trusts what the host trusts.

The Dockerfile is built with the classic builder (`DOCKER_BUILDKIT=0`: BuildKit would fetch
its frontend from a registry) on the host's network, and the layer cache makes a rebuild
with unchanged sources and locks take seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.deploy.chart import ROOT
from tests.tools import tool, unavailable

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Removed from the base: package caches and documentation nobody reads in a container.
SLIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man")


def cache_dir() -> Path:
    """Where the base tarball is kept between runs (outside the repository)."""
    configured = os.environ.get("BRIDGE_TEST_CACHE_DIR")
    path = Path(configured) if configured else Path.home() / ".cache" / "bridge-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def docker_env() -> dict[str, str]:
    """The environment for docker commands: the classic builder, never BuildKit."""
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run one docker command; its stdout. Raises AssertionError with the output on failure."""
    result = subprocess.run(
        [tool("docker", "docker.io"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=docker_env(),
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def require_engine() -> None:
    """Skip (or fail on CI) unless a Docker engine answers and debootstrap can run."""
    tool("docker", "docker.io")
    tool("debootstrap", "debootstrap")
    if os.geteuid() != 0:
        unavailable("debootstrap needs root to make the base image")
    probe = subprocess.run(
        [tool("docker", "docker.io"), "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        env=docker_env(),
        check=False,
    )
    if probe.returncode != 0:
        unavailable(f"no Docker engine answers ({probe.stderr.strip()[:200]}); start dockerd")


def _base_key() -> str:
    recipe = hashlib.sha256()
    for part in (SUITE, MIRROR, "minbase", *PACKAGES, *SLIM):
        recipe.update(part.encode() + b"\0")
    if HOST_CA_BUNDLE.is_file():
        recipe.update(HOST_CA_BUNDLE.read_bytes())
    return recipe.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock: concurrent test runs on this machine make the base once."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _image_exists(ref: str) -> bool:
    probe = subprocess.run(
        [tool("docker", "docker.io"), "image", "inspect", ref],
        capture_output=True,
        timeout=30,
        env=docker_env(),
        check=False,
    )
    return probe.returncode == 0


def _debootstrap(tarball: Path) -> None:
    debootstrap = tool("debootstrap", "debootstrap")
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        result = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr}")
        for relative in SLIM:
            target = rootfs / relative
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            check=True,
            timeout=600,
        )
        partial.rename(tarball)


def base_image() -> str:
    """The Debian base image's reference, made (and cached) on first use."""
    key = _base_key()
    ref = f"bridge-test-base:{key}"
    directory = cache_dir()
    with _locked(directory / "base.lock"):
        if _image_exists(ref):
            return ref
        tarball = directory / f"debian-{SUITE}-{key}.tar"
        if not tarball.is_file():
            _debootstrap(tarball)
        docker(
            "import",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python3"]',
            str(tarball),
            ref,
            timeout=600,
        )
    return ref


def build_image(base: str) -> str:
    """Build the repository's Dockerfile on `base`; a unique tag (removed by the caller)."""
    tag = f"bridge-test:{uuid.uuid4().hex[:12]}"
    docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--tag",
        tag,
        str(ROOT),
        timeout=1500,
    )
    return tag
