"""The documentation tells the truth about the product: generated pages are current, and
every command, flag and HTTP route it quotes exists."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.cli import build_parser
from bridge.config import load_settings
from bridge.configdoc import render
from bridge.web import CATCH_ALL

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Inline code and fenced blocks: where commands and routes are quoted.
_CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.S)
# A command line starting with `bridge` (or a path to it), or run after `--`, `&&`, `;`, `|`.
_COMMAND = re.compile(
    r"(?:^\s*(?:\$\s*)?|(?:--|&&|;|\|)\s+|/)bridge((?: [a-z][a-z-]*)+)((?: [^\s|;&]+)*)"
)
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_ROUTE = re.compile(
    r"(?<![\w./-])(/(?:webhooks|api/v1|console|healthz|readyz|metrics)[^\s`'\"),;\[]*)"
)


def _quoted(page: Path) -> Iterator[str]:
    for block, inline in _CODE.findall(page.read_text(encoding="utf-8")):
        yield from (block or inline).splitlines()


def test_configuration_page_is_generated_from_the_settings() -> None:
    """docs/configuration.md is exactly what `make docs` writes from bridge/config.py."""
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == render()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def _commands() -> Iterator[tuple[str, str, str]]:
    for page in PAGES:
        for line in _quoted(page):
            for words, rest in _COMMAND.findall(line):
                yield page.name, words.strip(), rest


@pytest.mark.parametrize("page", [p.name for p in PAGES])
def test_every_quoted_command_and_flag_exists(page: str) -> None:
    """`bridge <command> [--flag]` quoted in README and docs/ names a real command (down to
    its subcommand) and only flags that command takes."""
    parser = build_parser()
    problems = []
    for name, words, rest in _commands():
        if name != page:
            continue
        current = parser
        chain: list[str] = []
        for word in words.split():
            children = _subparsers(current)
            if not children:
                break
            if word not in children:
                problems.append(f"`bridge {' '.join([*chain, word])}`: no such command")
                break
            chain.append(word)
            current = children[word]
        for flag in _FLAG.findall(words + rest):
            if flag not in _flags(current) | _flags(parser):
                problems.append(f"`bridge {' '.join(chain)}` has no flag {flag}")
    assert problems == []


def _route_patterns() -> list[re.Pattern[str]]:
    settings = load_settings(
        None,
        environ={"BRIDGE_CONFIG": "/dev/null"},
        overrides={"admin": {"token": "docs-test-token-0123456789abcdef"}},
        require_secrets=False,
    )
    bridge = Bridge(settings, env={})
    patterns = []
    for resource in bridge.app.router.resources():
        canonical = resource.canonical
        if canonical == CATCH_ALL.split(":", 1)[0] + "}":
            continue  # the catch-all that answers 404 for everything else
        regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(canonical))
        patterns.append(re.compile(f"^{regex}/?$"))
    return patterns


def test_every_quoted_route_exists() -> None:
    """Every path of the bridge's HTTP API quoted in README and docs/ (webhooks, health,
    metrics, the admin API, the console) is a route of the app."""
    patterns = _route_patterns()
    missing = []
    for page in PAGES:
        for line in _quoted(page):
            for path in _ROUTE.findall(line):
                path = path.split("?", 1)[0]
                family = path.endswith(("*", "/", "..."))
                path = path.rstrip("*/.")
                if family:  # `/api/v1/*`, `/webhooks/...`: at least one such route exists
                    found = any(p.pattern.startswith(f"^{re.escape(path)}") for p in patterns)
                else:
                    found = any(p.match(path) for p in patterns)
                if not found:
                    missing.append(f"{page.name}: {path}")
    assert missing == []
