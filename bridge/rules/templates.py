"""Templating for rules: a sandboxed Jinja2 environment, compiled once, rendered per event.

Why this shape:
- `SandboxedEnvironment` + `StrictUndefined`: rules are configuration, not code; a typo
  (`{{ incident.titel }}`) must fail loudly for that rule instead of sending an empty title,
  and a template must not reach Python internals (`''.__class__.__mro__`). Private
  attributes are rejected at load time by walking the template AST; whatever slips past
  that check (computed names through `attr(...)`) is refused by the sandbox at render time.
- Native values: a template that is exactly one ``{{ expr }}`` is compiled as an expression
  and returns the value itself (list, dict, number, bool, null); any other template renders
  to a string (null renders as ""). So ``items: "{{ related }}"`` is a list, and
  ``"alert {{ alert.id }}"`` is text.
- Everything a rule may name is known at load: context names, `vars.<name>`, helpers. An
  unknown name is a load error with the file's line, not a surprise at 3 a.m.
- Results are converted to JSON-able values (tuples to lists, read-only mappings to dicts);
  anything else (a function, a datetime) is an error, because actions are persisted as JSON.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from jinja2 import (
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    meta,
    nodes,
    pass_context,
)
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.events import InvalidRef, ObjectRef
from bridge.rules.errors import did_you_mean

# Names every template sees (from `Event.template_context()` plus `vars` and `now`).
BASE_NAMES: Final = frozenset(
    {
        "source",
        "type",
        "delivery_id",
        "subject",
        "subject_id",
        "resource",
        "incident",
        "alert",
        "escalation",
        "previous_status",
        "new_status",
        "previous",
        "changed",
        "actor",
        "related",
        "occurred_at",
        "vars",
        "now",
    }
)

_MAX_SEQUENCE: Final = 100_000  # longest string/list a `*` may build
_MAX_EXPONENT: Final = 64


class Omit:
    """The value of `omit`: a param (or list element) rendering to it is left out."""

    def __repr__(self) -> str:
        return "omit"


OMIT: Final = Omit()


class TemplateProblem(Exception):
    """A template that cannot be compiled (load time)."""


class RenderError(Exception):
    """A template that failed for one event (evaluation time)."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox (templates cannot modify the shared context), plus limits on
    `*` and `**` so a template cannot allocate gigabytes."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > _MAX_SEQUENCE:
                    raise SecurityError("result of '*' too large for a rule template")
            return operator.mul(left, right)
        if isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
            raise SecurityError("exponent too large for a rule template")
        return operator.pow(left, right)


def _is_undefined(value: Any) -> bool:
    return isinstance(value, Undefined)


def strip_prefix(value: Any, prefix: str) -> Any:
    """`value` without a leading `prefix` (unchanged if it does not start with it)."""
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix) :]
    return value


def strip_suffix(value: Any, suffix: str) -> Any:
    """`value` without a trailing `suffix`."""
    if isinstance(value, str) and suffix and value.endswith(suffix):
        return value[: -len(suffix)]
    return value


def coalesce(*values: Any, default: Any = None) -> Any:
    """The first value that is defined, not null and not ""; else `default`."""
    for value in values:
        if not _is_undefined(value) and value is not None and value != "":
            return value
    return default


def _severity_keys(value: Any) -> list[str]:
    """Candidate names of a severity given as a slug string or an object."""
    if _is_undefined(value) or value is None:
        return []
    if isinstance(value, Mapping):
        keys = [value.get(k) for k in ("slug", "name", "id", "severity")]
        return [str(k) for k in keys if isinstance(k, str | int) and str(k)]
    return [str(value)]


def severity_name(value: Any) -> str | None:
    """A severity's slug/name in lower case, whether given as a string or an object."""
    keys = _severity_keys(value)
    return keys[0].strip().lower() if keys else None


def _table(context: Context, table: Any) -> Mapping[str, Any]:
    if isinstance(table, str):
        variables = context.get("vars") or {}
        found = variables.get(table)
        if not isinstance(found, Mapping):
            raise RenderError(f"variable {table!r} is not a mapping")
        return found
    if isinstance(table, Mapping):
        return table
    raise RenderError("lookup table must be a mapping or a variable name")


def _find(table: Mapping[str, Any], candidates: Iterable[str]) -> tuple[bool, Any]:
    lowered = {str(k).lower(): v for k, v in table.items()}
    for candidate in candidates:
        if candidate in table:
            return True, table[candidate]
        if candidate.strip().lower() in lowered:
            return True, lowered[candidate.strip().lower()]
    return False, None


@pass_context
def lookup(context: Context, value: Any, table: Any, default: Any = None) -> Any:
    """`table[value]` (exact, then case-insensitive); `table` may name a variable."""
    if _is_undefined(value) or value is None:
        return default
    found, result = _find(_table(context, table), [str(value)])
    return result if found else default


@pass_context
def map_severity(
    context: Context, value: Any, table: Any = "severity_map", default: Any = None
) -> Any:
    """Map a severity (slug string or object with slug/name/id) through a table."""
    found, result = _find(_table(context, table), _severity_keys(value))
    return result if found else default


def ids_of(value: Any) -> list[str]:
    """IDs from a list of IDs or of objects with an `id`; [] for null/undefined."""
    if _is_undefined(value) or value is None:
        return []
    if isinstance(value, str | int):
        return [str(value)]
    out: list[str] = []
    if isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, str | int) and str(item):
                out.append(str(item))
            elif isinstance(item, Mapping) and isinstance(item.get("id"), str | int):
                out.append(str(item["id"]))
    return out


def ref_ids(refs: Any, type_key: str) -> list[str]:
    """IDs of the refs (``platform:kind:id`` strings) of one type, e.g. from `related`."""
    prefix = type_key + ":"
    return [r[len(prefix) :] for r in ids_of(refs) if r.startswith(prefix)]


def with_prefix(values: Any, prefix: str) -> list[str]:
    """The strings of `values` that start with `prefix`, with the prefix removed."""
    if _is_undefined(values) or values is None:
        return []
    items = [values] if isinstance(values, str) else values
    if not isinstance(items, list | tuple):
        return []
    return [v[len(prefix) :] for v in items if isinstance(v, str) and v.startswith(prefix)]


def make_ref(type_key: str, ident: Any) -> str:
    """``ref('rootly:alert', alert.id)`` -> ``'rootly:alert:<id>'`` (validated)."""
    if _is_undefined(ident) or ident is None or str(ident) == "":
        raise RenderError(f"ref({type_key!r}, ...): the id is empty")
    try:
        return str(ObjectRef.parse(f"{type_key}:{ident}"))
    except InvalidRef as exc:
        raise RenderError(str(exc)) from None


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RenderError(f"not an ISO 8601 time: {value!r}") from None
    raise RenderError(f"not a time: {value!r}")


def isoformat(value: Any) -> str:
    """An ISO 8601 time in UTC with a `Z` suffix (naive times are taken as UTC)."""
    moment = _as_datetime(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_time(value: Any, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    """`strftime` of an ISO time (string or datetime), in UTC."""
    moment = _as_datetime(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(fmt)


def _finalize(value: Any) -> Any:
    """In text templates, null renders as the empty string, not 'None'."""
    return "" if value is None else value


FILTERS: Final[Mapping[str, Callable[..., Any]]] = {
    "strip_prefix": strip_prefix,
    "strip_suffix": strip_suffix,
    "lookup": lookup,
    "map_severity": map_severity,
    "severity_name": severity_name,
    "ids_of": ids_of,
    "ref_ids": ref_ids,
    "with_prefix": with_prefix,
    "isoformat": isoformat,
    "format_time": format_time,
}
GLOBALS: Final[Mapping[str, Any]] = {
    "coalesce": coalesce,
    "lookup": lookup,
    "map_severity": map_severity,
    "severity_name": severity_name,
    "ids_of": ids_of,
    "ref_ids": ref_ids,
    "ref": make_ref,
    "omit": OMIT,
}
# Helpers whose argument at this position names a variable holding a table.
_TABLE_ARG: Final = {"lookup": 1, "map_severity": 1}


def to_json(value: Any, where: str = "value") -> Any:
    """Deep-convert a rendered value to JSON-able data; refuse what cannot be stored."""
    if _is_undefined(value):
        str(value)  # raises the StrictUndefined / SecurityError with its own message
        raise RenderError(f"{where} is undefined")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Omit):
        return value
    if isinstance(value, Mapping):
        return {
            str(k): to_json(v, f"{where}.{k}") for k, v in value.items() if not isinstance(v, Omit)
        }
    if isinstance(value, list | tuple):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value) if not isinstance(v, Omit)]
    raise RenderError(f"{where}: a {type(value).__name__} is not a JSON value")


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """One template, compiled once; `render` gives the native or text value."""

    source: str
    _call: Callable[[dict[str, Any]], Any]

    def render(self, context: dict[str, Any]) -> Any:
        try:
            return to_json(self._call(context), "template")
        except RenderError:
            raise
        except (TemplateError, SecurityError) as exc:
            raise RenderError(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # a template's runtime error must not lose the event
            raise RenderError(f"{type(exc).__name__}: {exc}") from None


_SINGLE_EXPR = re.compile(r"^\{\{-?(.*?)-?\}\}$", re.DOTALL)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


class TemplateCompiler:
    """Owns one sandboxed environment; compiles and statically checks templates."""

    def __init__(self, variables: Mapping[str, Any]) -> None:
        self._variables = variables
        env = _Sandbox(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
        # Only helpers we chose: drop cycler/joiner/lipsum/namespace (classic escape hatches).
        env.globals.clear()
        env.globals["range"] = range
        env.globals.update(GLOBALS)
        env.filters.update(FILTERS)
        self._env = env

    def compile(self, source: str, names: frozenset[str]) -> CompiledTemplate:
        """Compile `source`, allowing the context `names`; raise `TemplateProblem`."""
        try:
            tree = self._env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(f"template syntax error: {exc.message}") from None
        try:
            self._check(tree, names)
            if _is_single_expression(tree) and (m := _SINGLE_EXPR.match(source)):
                expression = self._env.compile_expression(m.group(1), undefined_to_none=False)
                return CompiledTemplate(source, expression)
            template = self._env.from_string(source)
        except TemplateError as exc:
            raise TemplateProblem(f"template error: {exc.message or exc}") from None
        return CompiledTemplate(source, template.render)

    def _check(self, tree: nodes.Template, names: frozenset[str]) -> None:
        for getattr_node in tree.find_all(nodes.Getattr):
            self._check_access(getattr_node.node, getattr_node.attr)
        for getitem_node in tree.find_all(nodes.Getitem):
            self._check_access(getitem_node.node, _const_str(getitem_node.arg))
        unknown = meta.find_undeclared_variables(tree) - names - set(self._env.globals)
        if unknown:
            raise TemplateProblem(
                f"unknown name {sorted(unknown)[0]!r} (available: {', '.join(sorted(names))}, "
                f"helpers: {', '.join(sorted(self._env.globals))})"
            )
        # A filter's first argument is the piped value, so a filter's table is one earlier.
        for call in tree.find_all(nodes.Call):
            if isinstance(call.node, nodes.Name):
                self._check_table_arg(call.node.name, call.args, 0)
        for filter_node in tree.find_all(nodes.Filter):
            self._check_table_arg(filter_node.name, filter_node.args, 1)

    def _check_access(self, owner: nodes.Node, attr: str | None) -> None:
        if attr is None:
            return
        if attr.startswith("_"):
            raise TemplateProblem(f"access to private attribute {attr!r} is not allowed")
        if isinstance(owner, nodes.Name) and owner.name == "vars":
            self._check_variable(attr)

    def _check_table_arg(self, name: str, args: list[nodes.Expr], shift: int) -> None:
        position = _TABLE_ARG.get(name)
        if position is not None and position - shift < len(args):
            table = _const_str(args[position - shift])
            if table is not None:
                self._check_variable(table)

    def _check_variable(self, name: str) -> None:
        if name not in self._variables:
            raise TemplateProblem(
                f"variable {name!r} is not defined"
                + did_you_mean(name, self._variables, "variables")
            )


def _const_str(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


def _is_single_expression(tree: nodes.Template) -> bool:
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return False
    parts = tree.body[0].nodes
    return len(parts) == 1 and not isinstance(parts[0], nodes.TemplateData)


def truthy(value: Any) -> bool:
    """A condition's value: text 'false'/'0'/'no'/'none'/'null'/'' is false, as is falsy."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)
