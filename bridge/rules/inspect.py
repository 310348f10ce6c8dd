"""Reading compiled rules without an event: what they name and what can already be decided.

`bridge check-config` asks two things of a rule before any webhook arrives:

- which fields of the event's object it reads (``incident.title`` in a template,
  ``alert.deduplication_key`` in a condition), so each can be compared with what the
  platform sends (`field_uses`);
- whether a condition depends on the variables alone, and if so whether it holds with the
  variables in force: ``{field: vars.escalation_path_id, not_equals: ""}`` with an empty
  variable means the rule can never fire (`decided_conditions`).

Pure: no I/O. Template sources are parsed again with a plain Jinja2 environment (the
compiled templates keep only their source and their compiled form).
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from jinja2 import Environment, TemplateSyntaxError, nodes

from bridge.rules.compiled import (
    CompiledForEach,
    CompiledRule,
    Const,
    DictOf,
    ExprTest,
    FieldTest,
    ListOf,
    Renderable,
    Test,
    Tpl,
)
from bridge.rules.templates import GLOBALS, CompiledTemplate, RenderError
from bridge.yamlsource import KeyPath

# Names under which the event's object appears in the template context.
OBJECT_NAMES: Final = frozenset({"resource", "incident", "alert", "escalation"})
# A template naming only these depends on the variables alone.
_VARIABLES_AND_HELPERS: Final = frozenset({"vars", "range", *GLOBALS})


@dataclass(frozen=True, slots=True)
class FieldUse:
    """A rule reads ``<root>.<field>`` (``incident.title``) at `where` (a path in the rule)."""

    root: str
    field: str
    where: KeyPath

    @property
    def dotted(self) -> str:
        return f"{self.root}.{self.field}"


@dataclass(frozen=True, slots=True)
class DecidedCondition:
    """A top-level condition whose value the variables alone decide."""

    index: int
    holds: bool
    detail: str
    variables: tuple[str, ...]


@functools.cache
def _parse(source: str) -> nodes.Template | None:
    try:
        return Environment(autoescape=False).parse(source)  # noqa: S701 (only parsed)
    except TemplateSyntaxError:
        return None


def _template_fields(template: CompiledTemplate, where: KeyPath) -> Iterator[FieldUse]:
    tree = _parse(template.source)
    if tree is None:
        return
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        field: str | None
        if isinstance(node, nodes.Getattr):
            owner, field = node.node, node.attr
        elif isinstance(node, nodes.Getitem):
            arg = node.arg
            owner = node.node
            field = arg.value if isinstance(arg, nodes.Const) else None
        else:
            continue
        if isinstance(owner, nodes.Name) and owner.name in OBJECT_NAMES and isinstance(field, str):
            yield FieldUse(owner.name, field, where)


def _renderable_fields(value: Renderable, where: KeyPath) -> Iterator[FieldUse]:
    if isinstance(value, Tpl):
        yield from _template_fields(value.template, where)
    elif isinstance(value, DictOf):
        for key, item in value.items:
            yield from _renderable_fields(item, (*where, key))
    elif isinstance(value, ListOf):
        for index, item in enumerate(value.items):
            yield from _renderable_fields(item, (*where, index))


def _test_fields(test: Test, where: KeyPath) -> Iterator[FieldUse]:
    if isinstance(test, FieldTest):
        if len(test.path) >= 2 and test.path[0] in OBJECT_NAMES:
            yield FieldUse(test.path[0], test.path[1], (*where, "field"))
        if test.expected is not None:
            yield from _renderable_fields(test.expected, where)
    elif isinstance(test, ExprTest):
        yield from _template_fields(test.template, (*where, "expr"))
    else:
        for index, inner in enumerate(test.tests):
            yield from _test_fields(inner, (*where, "any", index))


def _for_each_fields(for_each: CompiledForEach | None, where: KeyPath) -> Iterator[FieldUse]:
    if for_each is not None and for_each.items is not None:
        yield from _template_fields(for_each.items, (*where, "for_each", "items"))


def field_uses(rule: CompiledRule) -> tuple[FieldUse, ...]:
    """Every ``<object>.<field>`` the rule reads, with where (relative to the rule)."""
    found: list[FieldUse] = []
    for index, test in enumerate(rule.conditions):
        found.extend(_test_fields(test, ("when", index)))
    for action in rule.actions:
        where: KeyPath = ("actions", action.index)
        found.extend(_for_each_fields(action.for_each, where))
        found.extend(_renderable_fields(action.params, (*where, "params")))
        for name, template in (
            ("target", action.target),
            ("when", action.when),
            ("idempotency_key", action.idempotency_key),
        ):
            if template is not None:
                found.extend(_template_fields(template, (*where, name)))
        if action.link_result is not None:
            found.extend(_template_fields(action.link_result[0], (*where, "link_result", "to")))
    for link in rule.links:
        where = ("links", link.index)
        found.extend(_for_each_fields(link.for_each, where))
        for side, template in (("a", link.a), ("b", link.b)):
            found.extend(_template_fields(template, (*where, link.op, side)))
        if link.when is not None:
            found.extend(_template_fields(link.when, (*where, "when")))
    return tuple(dict.fromkeys(found))


def _template_variables(template: CompiledTemplate) -> tuple[str, ...] | None:
    """The variables a template reads if it reads nothing but variables; else None."""
    tree = _parse(template.source)
    if tree is None:
        return None
    loaded = {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"}
    if not loaded <= _VARIABLES_AND_HELPERS:
        return None
    names = [
        node.attr
        for node in tree.find_all(nodes.Getattr)
        if isinstance(node.node, nodes.Name) and node.node.name == "vars"
    ]
    return tuple(dict.fromkeys(names))


def _renderable_variables(value: Renderable | None) -> tuple[str, ...] | None:
    if value is None or isinstance(value, Const):
        return ()
    if isinstance(value, Tpl):
        return _template_variables(value.template)
    if isinstance(value, ListOf):
        items = value.items
    elif isinstance(value, DictOf):
        items = tuple(v for _, v in value.items)
    else:
        return None
    out: list[str] = []
    for item in items:
        names = _renderable_variables(item)
        if names is None:
            return None
        out.extend(names)
    return tuple(dict.fromkeys(out))


def _test_variables(test: Test) -> tuple[str, ...] | None:
    """The variables `test` reads if its value depends on them alone; else None."""
    if isinstance(test, FieldTest):
        if test.path[0] != "vars":
            return None
        expected = _renderable_variables(test.expected)
        if expected is None:
            return None
        own = (test.path[1],) if len(test.path) > 1 else ()
        return tuple(dict.fromkeys(own + expected))
    if isinstance(test, ExprTest):
        return _template_variables(test.template)
    out: list[str] = []
    for inner in test.tests:
        names = _test_variables(inner)
        if names is None:
            return None
        out.extend(names)
    return tuple(dict.fromkeys(out))


def decided_conditions(
    rule: CompiledRule, variables: Mapping[str, Any]
) -> tuple[DecidedCondition, ...]:
    """The rule's top-level conditions that depend on `variables` alone, with their value."""
    context: dict[str, Any] = {"vars": variables}
    out: list[DecidedCondition] = []
    for index, test in enumerate(rule.conditions):
        names = _test_variables(test)
        if names is None:
            continue
        try:
            holds, detail = test.check(context)
        except RenderError:
            continue
        out.append(DecidedCondition(index, holds, detail, names))
    return tuple(out)


def matched_event_types(rule: CompiledRule, candidates: frozenset[str]) -> tuple[str, ...]:
    """The event types of `candidates` the rule's trigger globs match, sorted."""
    return tuple(sorted(t for t in candidates if rule.event_pattern.match(t)))


def glob_matches(rule: CompiledRule, glob_index: int, candidates: frozenset[str]) -> bool:
    """Whether the rule's `glob_index`-th glob matches any of `candidates`."""
    glob = rule.events[glob_index]
    return any(fnmatch.fnmatchcase(t, glob) for t in candidates)
