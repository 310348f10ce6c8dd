"""Reading YAML (config and rules) while remembering which line every key and item came from.

PyYAML's composer gives each node a start mark; we walk the composed node tree once, build
plain Python data, and record ``path -> line`` (path = tuple of mapping keys and list
indexes, the same shape as a pydantic error location). Later validation errors are mapped
back to the closest recorded path, so every message can name a line.

Two deliberate deviations from PyYAML's default (YAML 1.1) behaviour, because both bite
rule authors: only ``true``/``false`` are booleans (so the key ``on:`` stays the string
"on", and ``status: no`` is a string), and a key repeated in one mapping is an error instead
of the last one silently winning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]

_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (see module docstring)."""


# Drop the YAML 1.1 bool resolver (yes/no/on/off) and add one for true/false only.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_RE, list("tTfF"))


class YamlProblem(Exception):
    """Syntax or structure problem, with a 1-based line when known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class LineMap:
    """``path -> 1-based line`` for every mapping key and sequence item of a document."""

    lines: Mapping[KeyPath, int]

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest recorded ancestor."""
        probe = tuple(path)
        while True:
            line = self.lines.get(probe)
            if line is not None:
                return line
            if not probe:
                return None
            probe = probe[:-1]


def load_yaml(text: str) -> tuple[Any, LineMap]:
    """Parse one YAML document into plain data and its line map; raise `YamlProblem`."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        context = exc.context_mark
        if exc.problem and exc.context and context is not None and context.line + 1 != line:
            problem += f" ({exc.context} started on line {context.line + 1})"
        raise YamlProblem(f"YAML syntax error: {problem}", line) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"YAML error: {exc}", None) from None
    finally:
        loader.dispose()
    lines: dict[KeyPath, int] = {}
    if node is None:
        return None, LineMap(lines)
    lines[()] = node.start_mark.line + 1
    data = _build(loader, node, (), lines)
    return data, LineMap(lines)


def load_yaml_file(path: Path) -> tuple[Any, LineMap]:
    """Read and parse a YAML file; unreadable, non-UTF-8 or invalid files raise `YamlProblem`
    whose message already names the problem (the caller adds the file name)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlProblem("file not found", None) from None
    except UnicodeDecodeError as exc:
        raise YamlProblem(f"not valid UTF-8 ({exc.reason})", None) from None
    except OSError as exc:
        raise YamlProblem(f"cannot read: {exc.strerror or exc}", None) from None
    return load_yaml(text)


def _build(loader: _Loader, node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        loader.flatten_mapping(node)  # resolve `<<` merge keys like the constructor does
        for key_node, value_node in node.value:
            key = _build(loader, key_node, path, {})
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise YamlProblem("mapping keys must be scalars", key_node.start_mark.line + 1)
            if key in out:
                raise YamlProblem(f"duplicate key {key!r}", key_node.start_mark.line + 1)
            child = (*path, key if isinstance(key, str | int) else str(key))
            lines[child] = key_node.start_mark.line + 1
            out[key] = _build(loader, value_node, child, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            items.append(_build(loader, item, child, lines))
        return items
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise YamlProblem(f"YAML error: {exc.problem}", mark.line + 1 if mark else None) from None
