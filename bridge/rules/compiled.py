"""Rules after loading: compiled, immutable, ready to evaluate many events.

`loader.py` builds these from the validated YAML models; `engine.py` walks them. Nothing
here parses YAML or compiles templates, and nothing does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from bridge.events import Event, ObjectKind, Operation, Priority, thaw
from bridge.operations import OPERATIONS
from bridge.rules.templates import CompiledTemplate, Omit, RenderError, truthy
from bridge.yamlsource import LineMap

# The object type each operation acts on; None: the operation creates something instead.
# Which object type each operation acts on (None: it creates one), from the one table.
OPERATION_TARGETS: Final[Mapping[Operation, str | None]] = {
    name: spec.target for name, spec in OPERATIONS.items()
}


class Renderable(Protocol):
    def render(self, context: dict[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class Const:
    value: Any

    def render(self, context: dict[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class Tpl:
    template: CompiledTemplate

    def render(self, context: dict[str, Any]) -> Any:
        return self.template.render(context)


@dataclass(frozen=True, slots=True)
class DictOf:
    """A mapping of renderables; keys whose value renders to `omit` are left out."""

    items: tuple[tuple[str, Renderable], ...]

    def render(self, context: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.items:
            rendered = value.render(context)
            if not isinstance(rendered, Omit):
                out[key] = rendered
        return out


@dataclass(frozen=True, slots=True)
class ListOf:
    items: tuple[Renderable, ...]

    def render(self, context: dict[str, Any]) -> list[Any]:
        rendered = (item.render(context) for item in self.items)
        return [value for value in rendered if not isinstance(value, Omit)]


_MISSING: Final = object()


def resolve_path(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """Follow a dotted path through mappings and lists; a missing step gives None."""
    value: Any = context
    for step in path:
        if isinstance(value, Mapping):
            value = value.get(step, _MISSING)
        elif isinstance(value, list | tuple) and step.lstrip("-").isdigit():
            index = int(step)
            value = value[index] if -len(value) <= index < len(value) else _MISSING
        else:
            value = _MISSING
        if value is _MISSING:
            return None
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True, slots=True)
class FieldTest:
    """``{field: a.b, <op>: expected}``."""

    field: str
    path: tuple[str, ...]
    op: str
    expected: Renderable | None
    regex: re.Pattern[str] | None

    def check(self, context: dict[str, Any]) -> tuple[bool, str]:
        # Variables are deep-frozen (lists are tuples): compare them as the plain values a
        # rule writes (`equals: []` must hold for an empty list variable).
        value = thaw(resolve_path(context, self.path))
        if self.op == "matches":
            assert self.regex is not None
            ok = value is not None and self.regex.search(str(value)) is not None
            return ok, f"{self.field} matches {self.regex.pattern!r} (actual: {_short(value)})"
        assert self.expected is not None
        expected = self.expected.render(context)
        if self.op == "changed":
            changed = context.get("changed") or ()
            ok = (self.path[-1] in changed) == bool(expected)
            return ok, (
                f"{self.field} changed {_short(expected)} (changed: {_short(list(changed))},"
                f" actual: {_short(value)})"
            )
        if self.op in ("in", "not_in"):
            if isinstance(expected, Omit) or expected is None:
                expected = []
            if not isinstance(expected, list):
                raise RenderError(f"'{self.op}' needs a list, got {type(expected).__name__}")
            ok = (value in expected) == (self.op == "in")
        elif self.op == "equals":
            ok = value == expected
        elif self.op == "not_equals":
            ok = value != expected
        else:  # exists
            ok = (value is not None) == bool(expected)
        return ok, f"{self.field} {self.op} {_short(expected)} (actual: {_short(value)})"


@dataclass(frozen=True, slots=True)
class ExprTest:
    template: CompiledTemplate

    def check(self, context: dict[str, Any]) -> tuple[bool, str]:
        value = self.template.render(context)
        return truthy(value), f"{self.template.source} (value: {_short(value)})"


@dataclass(frozen=True, slots=True)
class AnyTest:
    tests: tuple[Test, ...]

    def check(self, context: dict[str, Any]) -> tuple[bool, str]:
        details = []
        for test in self.tests:
            ok, detail = test.check(context)
            if ok:
                return True, detail
            details.append(detail)
        return False, "none of: " + "; ".join(details)


Test = FieldTest | ExprTest | AnyTest


@dataclass(frozen=True, slots=True)
class CompiledForEach:
    linked: str | None
    via: tuple[str, ...]
    start: tuple[str, ...]  # "subject" and/or "related"
    items: CompiledTemplate | None

    def describe(self) -> str:
        if self.linked is None:
            return "items"
        via = f", also via {', '.join(self.via)}" if self.via else ""
        return f"{self.linked} (from {' and '.join(self.start)}{via})"


@dataclass(frozen=True, slots=True)
class CompiledAction:
    index: int
    operation: Operation
    target_type: str | None  # what the operation acts on (None: creates something)
    params: DictOf
    target: CompiledTemplate | None
    for_each: CompiledForEach | None
    when: CompiledTemplate | None
    idempotency_key: CompiledTemplate | None
    link_result: tuple[CompiledTemplate, ObjectKind] | None
    # Params left out because the side written to owns their field: (param, field, owner).
    owned: tuple[tuple[str, str, str], ...] = ()
    priority: Priority | None = None  # None: the operation's class


@dataclass(frozen=True, slots=True)
class CompiledLink:
    index: int
    op: str  # "add" | "remove"
    a: CompiledTemplate
    b: CompiledTemplate
    when: CompiledTemplate | None
    for_each: CompiledForEach | None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule, ready to evaluate."""

    name: str
    description: str
    enabled: bool
    source: str
    events: tuple[str, ...]
    event_pattern: re.Pattern[str]
    hydrate: bool
    conditions: tuple[Test, ...]
    actions: tuple[CompiledAction, ...]
    links: tuple[CompiledLink, ...]
    line: int | None

    def triggers(self, event: Event) -> bool:
        """Whether this rule looks at `event` (source and event-type glob)."""
        return self.triggers_on(event.source, event.type)

    def triggers_on(self, source: str, event_type: str) -> bool:
        """Whether this rule looks at events of `event_type` from `source`."""
        return source == self.source and self.event_pattern.match(event_type) is not None


@dataclass(frozen=True)
class RuleSet:
    """A loaded rules file: compiled rules in file order plus the effective variables."""

    rules: tuple[CompiledRule, ...]
    variables: Mapping[str, Any]
    source_path: str
    # Where each key and item of the file is (for messages about a rule's parts).
    lines: LineMap = field(default_factory=lambda: LineMap({}), compare=False)
    # The owner of each synced field that has one (`fields:`).
    owners: Mapping[str, str] = field(default_factory=dict)

    def triggered_by(self, event: Event) -> bool:
        """True if at least one enabled rule looks at `event` (source and event type)."""
        return self.triggered_on(event.source, event.type)

    def triggered_on(self, source: str, event_type: str) -> bool:
        """True if at least one enabled rule looks at events of `event_type` from `source`."""
        return any(r.enabled and r.triggers_on(source, event_type) for r in self.rules)

    def needs_hydration(self, event: Event) -> bool:
        """True if an enabled rule that would look at `event` asks for fresh state."""
        return any(r.enabled and r.hydrate and r.triggers(event) for r in self.rules)

    def rule(self, name: str) -> CompiledRule:
        """The rule called `name` (KeyError if none)."""
        for candidate in self.rules:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules)
