"""The image's lock files still satisfy pyproject.toml (regenerate them with `make lock`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.chart import ROOT

IMAGE_LOCK = ROOT / "requirements" / "image.lock"
BUILD_LOCK = ROOT / "requirements" / "build.lock"
# The image's interpreter: markers are evaluated for it.
IMAGE_ENV = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _lock(path: Path) -> dict[str, tuple[str, int]]:
    """Package -> (pinned version, number of hashes) from a pip-compile lock file."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif "--hash=sha256:" in line and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def _unsatisfied(requirements: list[str], lock: dict[str, tuple[str, int]]) -> list[str]:
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_ENV):
            continue
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{text}: not in the lock")
        elif not requirement.specifier.contains(lock[name][0], prereleases=True):
            problems.append(f"{text}: the lock pins {lock[name][0]}")
    return problems


def test_image_lock_satisfies_the_project_dependencies() -> None:
    """Every runtime dependency in pyproject.toml is pinned in requirements/image.lock at
    a version its range allows (a changed range fails here until `make lock` is run)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert _unsatisfied(project["project"]["dependencies"], _lock(IMAGE_LOCK)) == []


def test_build_lock_satisfies_the_build_system() -> None:
    """The build backend the image builds the wheel with is pinned in build.lock."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert _unsatisfied(project["build-system"]["requires"], _lock(BUILD_LOCK)) == []


def test_every_pin_is_exact_and_hashed() -> None:
    """Each locked package has an exact version and at least one sha256, which pip's
    --require-hashes in the Dockerfile needs for every file it installs."""
    for path in (IMAGE_LOCK, BUILD_LOCK):
        lock = _lock(path)
        assert lock, path
        unhashed = sorted(name for name, (_, hashes) in lock.items() if hashes == 0)
        assert unhashed == [], f"{path.name}: {unhashed}"
        text = path.read_text(encoding="utf-8")
        requirement_lines = [
            line for line in text.splitlines() if line and not line.startswith((" ", "#"))
        ]
        assert all(PIN.match(line) for line in requirement_lines), requirement_lines


def test_the_unit_tests_notice_a_range_the_lock_misses() -> None:
    """The check is real: a range the pinned version falls outside of is reported."""
    lock = _lock(IMAGE_LOCK)
    pinned = lock["aiohttp"][0]
    assert _unsatisfied([f"aiohttp>{pinned}"], lock) == [
        f"aiohttp>{pinned}: the lock pins {pinned}"
    ]
    assert _unsatisfied(["no-such-package>=1"], lock) == ["no-such-package>=1: not in the lock"]
