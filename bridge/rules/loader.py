"""Loading a rules file: YAML with line tracking, schema validation, compilation.

Every problem becomes a `RulesError` naming file, line and rule. We collect all problems a
file has (up to a limit) instead of stopping at the first, so one `bridge check-config` run
shows everything to fix; the first problem is the error's message.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Final, get_args

from pydantic import BaseModel, ValidationError

from bridge.events import OPERATIONS, InvalidRef, ObjectRef, Operation, Platform, freeze
from bridge.operations import OPERATIONS as OPERATION_SPECS
from bridge.operations import SYNCED_FIELDS, synced_field, unknown_params
from bridge.platforms.states import tracked_fields
from bridge.rules.compiled import (
    OPERATION_TARGETS,
    AnyTest,
    CompiledAction,
    CompiledForEach,
    CompiledLink,
    CompiledRule,
    Const,
    DictOf,
    ExprTest,
    FieldTest,
    ListOf,
    Renderable,
    RuleSet,
    Test,
    Tpl,
)
from bridge.rules.errors import RulesError, did_you_mean
from bridge.rules.models import (
    ActionSpec,
    Condition,
    FieldOwner,
    ForEach,
    LinkSpec,
    Rule,
    RuleFile,
)
from bridge.rules.templates import (
    BASE_NAMES,
    CompiledTemplate,
    TemplateCompiler,
    TemplateProblem,
    is_template,
)
from bridge.yamlsource import KeyPath as YamlPath
from bridge.yamlsource import LineMap, YamlProblem, load_yaml

ENV_PREFIX: Final = "BRIDGE_RULE_VAR_"
# The names under which the event's object appears in the template context.
OBJECT_ROOTS: Final = frozenset({"resource", "incident", "alert", "escalation"})
_MAX_PROBLEMS: Final = 50
_GLOB_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]!\-]+$")


def load_rules(
    path: Path,
    env: Mapping[str, str] | None = None,
    *,
    enable: Collection[str] = (),
    owners: Mapping[str, Platform] | None = None,
) -> RuleSet:
    """Load and compile a rules file; raise `RulesError` naming file, line and rule.

    `env` supplies ``BRIDGE_RULE_VAR_<NAME>`` overrides of the file's variables; None means
    the process environment. `enable` names rules to switch on as if the file said
    ``enabled: true``, and `owners` field owners over the file's `fields:` (what
    `bridge test-rules` needs to test rules that ship switched off).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(str(path), None, None, f"cannot read rules file: {exc}") from None
    return load_rules_text(
        text, str(path), os.environ if env is None else env, enable=enable, owners=owners
    )


def load_rules_text(
    text: str,
    file: str,
    env: Mapping[str, str] | None = None,
    *,
    enable: Collection[str] = (),
    owners: Mapping[str, Platform] | None = None,
) -> RuleSet:
    """`load_rules` for text already in memory (`file` is only used in messages)."""
    return _Loader(file, env or {}, frozenset(enable), dict(owners or {})).load(text)


class _Loader:
    def __init__(
        self,
        file: str,
        env: Mapping[str, str],
        enable: frozenset[str] = frozenset(),
        owners: Mapping[str, Platform] | None = None,
    ) -> None:
        self.file = file
        self.env = env
        self.enable = enable
        self.extra_owners = dict(owners or {})
        self.problems: list[RulesError] = []
        self.lines = LineMap({})
        self.data: Any = None
        self.variables: Mapping[str, Any] = {}
        self.owners: dict[str, Platform] = {}

    # -- problems -------------------------------------------------------------------------

    def problem(self, path: YamlPath, message: str) -> None:
        self.problems.append(
            RulesError(self.file, self.lines.line_of(path), self._rule_at(path), message)
        )

    def _rule_at(self, path: YamlPath) -> str | None:
        if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
            rules = self.data.get("rules") if isinstance(self.data, dict) else None
            if isinstance(rules, list) and path[1] < len(rules):
                rule = rules[path[1]]
                name = rule.get("name") if isinstance(rule, dict) else None
                return name if isinstance(name, str) and name else f"#{path[1] + 1}"
        return None

    def _raise_if_problems(self) -> None:
        if self.problems:
            raise RulesError.from_problems(self.problems[:_MAX_PROBLEMS])

    # -- phases ---------------------------------------------------------------------------

    def load(self, text: str) -> RuleSet:
        try:
            self.data, self.lines = load_yaml(text)
        except YamlProblem as exc:
            raise RulesError(self.file, exc.line, None, exc.message) from None
        if not isinstance(self.data, dict):
            raise RulesError(
                self.file, 1, None, "a rules file is a mapping with 'version' and 'rules'"
            )
        try:
            model = RuleFile.model_validate(self.data)
        except ValidationError as exc:
            self._schema_problems(exc)
            self._raise_if_problems()
            raise AssertionError("unreachable") from exc
        unknown = sorted(self.enable - {rule.name for rule in model.rules})
        if unknown:
            raise RulesError(
                self.file, None, None, f"no rule to switch on called {', '.join(unknown)}"
            )
        model = model.model_copy(
            update={
                "rules": [
                    r.model_copy(update={"enabled": True}) if r.name in self.enable else r
                    for r in model.rules
                ],
                "fields": {
                    **model.fields,
                    **{k: FieldOwner(owner=v) for k, v in self.extra_owners.items()},
                },
            }
        )
        variables = self._variables(model.variables)
        self.owners = self._owners(model.fields)
        self._raise_if_problems()
        self.variables = variables
        compiler = TemplateCompiler(variables)
        rules: list[CompiledRule] = []
        seen: dict[str, int] = {}
        for index, rule in enumerate(model.rules):
            if rule.name in seen:
                self.problem(
                    ("rules", index, "name"),
                    f"duplicate rule name (first defined as rule #{seen[rule.name] + 1})",
                )
            seen.setdefault(rule.name, index)
            compiled = self._rule(compiler, index, rule)
            if compiled is not None:
                rules.append(compiled)
        self._raise_if_problems()
        self._both_ways(model.rules)
        self._raise_if_problems()
        return RuleSet(
            tuple(rules), freeze(variables), self.file, self.lines, freeze(dict(self.owners))
        )

    def _schema_problems(self, exc: ValidationError) -> None:
        seen: set[tuple[YamlPath, str]] = set()
        for error in exc.errors(include_url=False):
            path = tuple(p for p in error["loc"] if not _is_type_tag(p))
            if error["type"] == "extra_forbidden":
                allowed = _allowed_keys(path[:-1])
                message = f"unknown key {path[-1]!r}" + (
                    f" (allowed: {', '.join(allowed)})" if allowed else ""
                )
            elif error["type"] == "value_error":
                message = str(error["msg"]).removeprefix("Value error, ")
            else:
                message = str(error["msg"])
                if "input" in error and error["type"] not in ("missing",):
                    message += f" (got {error['input']!r:.80})"
            # Inside a rule the rule is already named; show the path within it.
            in_rule = len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int)
            where = _dotted(path[2:] if in_rule else path)
            key = (path, message)
            if key in seen:
                continue
            seen.add(key)
            self.problem(path, f"{where}: {message}" if where else message)

    def _owners(self, fields: Mapping[str, FieldOwner]) -> dict[str, Platform]:
        """The owner of each synced field named under `fields:` (unknown names: problems)."""
        owners: dict[str, Platform] = {}
        for name, spec in fields.items():
            if name not in SYNCED_FIELDS:
                self.problem(
                    ("fields", name),
                    f"fields: {name!r} is not a field rules keep in step"
                    + did_you_mean(name, SYNCED_FIELDS, "fields"),
                )
                continue
            owners[name] = spec.owner
        return owners

    def _both_ways(self, rules: list[Rule]) -> None:
        """A synced field that enabled rules write to both platforms needs an owner: without
        one, an edit on either side is copied to the other, and two edits close together
        (or an echo the guard misses) undo each other back and forth."""
        writers: dict[str, dict[str, tuple[int, int, str]]] = {}
        for index, rule in enumerate(rules):
            if not rule.enabled:
                continue
            for position, spec in enumerate(rule.actions):
                if spec.do not in OPERATIONS:
                    continue
                operation: Operation = spec.do
                for param in spec.params:
                    synced = synced_field(operation, param)
                    if synced is not None and synced not in self.owners:
                        platform = operation.split(".", 1)[0]
                        writers.setdefault(synced, {}).setdefault(
                            platform, (index, position, param)
                        )
        for synced, sides in sorted(writers.items()):
            if len(sides) < 2:
                continue
            (first, (i, _, _)), (second, (j, position, param)) = sorted(
                sides.items(), key=lambda side: side[1]
            )
            self.problem(
                ("rules", j, "actions", position, "params", param),
                f"{synced} is written to both platforms (rule {rules[i].name!r} writes it to"
                f" {first}, this rule to {second}) and no side owns it: the two would undo"
                f" each other's edits; name its owner, e.g. 'fields: {{{synced}: {{owner:"
                f" {first}}}}}', or switch one rule off",
            )

    def _variables(self, declared: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(declared)
        for name, default in declared.items():
            env_name = ENV_PREFIX + name.upper()
            raw = self.env.get(env_name)
            if raw is None:
                continue
            try:
                out[name] = _coerce_env(raw, default)
            except ValueError as exc:
                self.problem(("variables", name), f"env {env_name}: {exc}")
        return out

    # -- one rule -------------------------------------------------------------------------

    def _rule(self, compiler: TemplateCompiler, index: int, rule: Rule) -> CompiledRule | None:
        base: YamlPath = ("rules", index)
        before = len(self.problems)
        events = (rule.on.event,) if isinstance(rule.on.event, str) else tuple(rule.on.event)
        if not events:
            self.problem((*base, "on", "event"), "'event' needs at least one glob")
        for position, glob in enumerate(events):
            where = (*base, "on", "event") + (() if isinstance(rule.on.event, str) else (position,))
            if not _GLOB_RE.match(glob) or glob.count("[") != glob.count("]"):
                self.problem(
                    where,
                    f"bad event glob {glob!r}: use letters, digits, '_', '.', '-' "
                    "and the wildcards * ? [...]",
                )
        pattern = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in events) or "(?!)")
        if not rule.actions and not rule.links:
            self.problem(base, "rule does nothing: give it 'actions' or 'links'")
        conditions = tuple(
            t
            for i, c in enumerate(rule.when)
            if (t := self._condition(compiler, (*base, "when", i), c, rule.on.source)) is not None
        )
        actions = tuple(
            a
            for i, spec in enumerate(rule.actions)
            if (a := self._action(compiler, (*base, "actions", i), i, spec)) is not None
        )
        links = tuple(
            link
            for i, spec in enumerate(rule.links)
            if (link := self._link(compiler, (*base, "links", i), i, spec)) is not None
        )
        if len(self.problems) > before:
            return None
        return CompiledRule(
            name=rule.name,
            description=rule.description,
            enabled=rule.enabled,
            source=rule.on.source,
            events=events,
            event_pattern=pattern,
            hydrate=rule.hydrate,
            conditions=conditions,
            actions=actions,
            links=links,
            line=self.lines.line_of(base),
        )

    def _template(
        self, compiler: TemplateCompiler, path: YamlPath, source: str, names: frozenset[str]
    ) -> CompiledTemplate | None:
        try:
            return compiler.compile(source, names)
        except TemplateProblem as exc:
            self.problem(path, f"{_dotted(path[2:])}: {exc}")
            return None

    def _value(
        self, compiler: TemplateCompiler, path: YamlPath, value: Any, names: frozenset[str]
    ) -> Renderable:
        if isinstance(value, str) and is_template(value):
            template = self._template(compiler, path, value, names)
            return Tpl(template) if template is not None else Const(None)
        if isinstance(value, dict):
            return DictOf(
                tuple(
                    (str(k), self._value(compiler, (*path, k), v, names)) for k, v in value.items()
                )
            )
        if isinstance(value, list):
            return ListOf(
                tuple(self._value(compiler, (*path, i), v, names) for i, v in enumerate(value))
            )
        return Const(value)

    def _condition(
        self, compiler: TemplateCompiler, path: YamlPath, cond: Condition, source: Platform
    ) -> Test | None:
        names = BASE_NAMES
        if cond.expr is not None:
            template = self._template(compiler, (*path, "expr"), cond.expr, names)
            return ExprTest(template) if template else None
        if cond.any is not None:
            tests = [
                self._condition(compiler, (*path, "any", i), c, source)
                for i, c in enumerate(cond.any)
            ]
            if not cond.any:
                self.problem((*path, "any"), "'any' needs at least one condition")
            return AnyTest(tuple(t for t in tests if t is not None))
        assert cond.field is not None
        steps = tuple(cond.field.split("."))
        if not all(steps) or steps[0] not in names:
            self.problem(
                (*path, "field"),
                f"field {cond.field!r} must start with one of: {', '.join(sorted(names))}",
            )
            return None
        if steps[0] == "vars" and len(steps) > 1 and steps[1] not in self.variables:
            self.problem(
                (*path, "field"),
                f"field {cond.field!r}: variable {steps[1]!r} is not defined"
                + did_you_mean(steps[1], self.variables, "variables"),
            )
            return None
        op = next(
            k
            for k in ("equals", "not_equals", "in_", "not_in", "exists", "matches", "changed")
            if k in cond.model_fields_set
        )
        if (op == "changed" or steps[0] == "previous") and not self._recorded_field(
            path, cond.field, steps, op, source
        ):
            return None
        if op == "matches":
            try:
                regex = re.compile(str(cond.matches))
            except re.error as exc:
                self.problem((*path, "matches"), f"bad regex {cond.matches!r}: {exc}")
                return None
            return FieldTest(cond.field, steps, "matches", None, regex)
        key = "in" if op == "in_" else op
        expected = self._value(compiler, (*path, key), getattr(cond, op), names)
        return FieldTest(cond.field, steps, key, expected, None)

    def _recorded_field(
        self, path: YamlPath, field: str, steps: tuple[str, ...], op: str, source: Platform
    ) -> bool:
        """`changed` and `previous.<field>` need a field the bridge records of `source`'s
        objects (`bridge.platforms.states`); False (and a problem) otherwise."""
        recorded = tracked_fields(source)
        if not recorded:
            self.problem(
                (*path, "field"),
                f"field {field!r}: the bridge records no state of {source} objects (their"
                " webhooks say what changed: use previous_status and new_status)",
            )
            return False
        if op == "changed" and (len(steps) != 2 or steps[0] not in OBJECT_ROOTS):
            self.problem(
                (*path, "field"),
                f"'changed' goes with a field of the event's object, like"
                f" 'incident.{sorted(recorded)[0]}', not {field!r}",
            )
            return False
        if len(steps) > 1 and steps[1] not in recorded:
            hint = did_you_mean(steps[1], recorded)
            self.problem(
                (*path, "field"),
                f"field {field!r}: the bridge records only {', '.join(sorted(recorded))} of"
                f" {source} objects" + (hint if "did you mean" in hint else ""),
            )
            return False
        return True

    def _for_each(
        self, compiler: TemplateCompiler, path: YamlPath, spec: ForEach | None
    ) -> CompiledForEach | None:
        if spec is None:
            return None
        via = (
            ()
            if spec.via is None
            else (spec.via,)
            if isinstance(spec.via, str)
            else tuple(spec.via)
        )
        start = (
            ("subject",)
            if spec.from_ is None
            else (spec.from_,)
            if isinstance(spec.from_, str)
            else tuple(dict.fromkeys(spec.from_))
        )
        items = None
        if spec.items is not None:
            items = self._template(compiler, (*path, "items"), spec.items, BASE_NAMES)
        return CompiledForEach(spec.linked, via, start, items)

    def _action(
        self, compiler: TemplateCompiler, path: YamlPath, index: int, spec: ActionSpec
    ) -> CompiledAction | None:
        if spec.do not in OPERATIONS:
            self.problem(
                (*path, "do"), f"unknown operation {spec.do!r} (known: {', '.join(OPERATIONS)})"
            )
            return None
        operation: Operation = spec.do
        target_type = OPERATION_TARGETS[operation]
        self._check_params(path, operation, spec.params)
        for_each = self._for_each(compiler, (*path, "for_each"), spec.for_each)
        if target_type is None and spec.target is not None:
            self.problem(
                (*path, "target"), f"operation {operation} creates an object and takes no 'target'"
            )
        if target_type is not None:
            if spec.for_each is None and spec.target is None:
                self.problem(
                    path,
                    f"operation {operation} acts on a {target_type}: give 'target' or 'for_each'",
                )
            if spec.for_each is not None and spec.for_each.linked is not None:
                if spec.target is not None:
                    self.problem(
                        (*path, "target"),
                        "'target' and 'for_each.linked' both choose the target: keep one",
                    )
                if spec.for_each.linked != target_type:
                    self.problem(
                        (*path, "for_each", "linked"),
                        f"for_each.linked {spec.for_each.linked!r} does not fit operation "
                        f"{operation} (it acts on {target_type})",
                    )
            if spec.target is not None:
                self._static_target(path, operation, target_type, spec.target)
        names = BASE_NAMES
        if spec.for_each is not None:
            names = names | {"item"}
        if target_type is not None:
            names = names | {"target"}
        target_names = names - {"target"}
        target = (
            self._template(compiler, (*path, "target"), spec.target, target_names)
            if spec.target
            else None
        )
        when = self._template(compiler, (*path, "when"), spec.when, names) if spec.when else None
        key = (
            self._template(compiler, (*path, "idempotency_key"), spec.idempotency_key, names)
            if spec.idempotency_key
            else None
        )
        link_result = None
        if spec.link_result is not None:
            to = self._template(compiler, (*path, "link_result", "to"), spec.link_result.to, names)
            link_result = (to, spec.link_result.kind) if to else None
        # A field is never written to the side that owns it (`fields:`).
        platform = operation.split(".", 1)[0]
        owned = tuple(
            (param, synced, platform)
            for param in spec.params
            if (synced := synced_field(operation, param)) is not None
            and self.owners.get(synced) == platform
        )
        kept = {k: v for k, v in spec.params.items() if k not in {p for p, _, _ in owned}}
        params = self._value(compiler, (*path, "params"), kept, names)
        assert isinstance(params, DictOf)
        return CompiledAction(
            index,
            operation,
            target_type,
            params,
            target,
            for_each,
            when,
            key,
            link_result,
            owned,
            spec.priority,
        )

    def _check_params(
        self, path: YamlPath, operation: Operation, params: Mapping[str, Any]
    ) -> None:
        """Parameter names must be ones the operation takes (`bridge.operations`), so a typo
        is a load error here rather than a dead-lettered action in production."""
        spec = OPERATION_SPECS[operation]
        for name in unknown_params(operation, set(params)):
            self.problem(
                (*path, "params", name),
                f"operation {operation} takes no parameter {name!r}"
                f" (it takes: {', '.join(sorted(spec.allowed)) or 'none'})",
            )
        missing = sorted(spec.required - set(params))
        if missing:
            self.problem(
                (*path, "params"), f"operation {operation} needs parameter(s) {', '.join(missing)}"
            )

    def _static_target(self, path: YamlPath, operation: str, target_type: str, source: str) -> None:
        """Check a target's type when the template spells it out (``rootly:alert:{{ x }}``)."""
        literal = source.split("{", 1)[0]
        parts = literal.split(":")
        if len(parts) >= 3 or (len(parts) == 2 and "{" not in source):
            type_key = ":".join(parts[:2])
            if type_key != target_type:
                self.problem(
                    (*path, "target"),
                    f"target type {type_key!r} does not fit operation {operation} "
                    f"(it acts on {target_type})",
                )
            elif "{" not in source:
                try:
                    ObjectRef.parse(source)
                except InvalidRef as exc:
                    self.problem((*path, "target"), str(exc))

    def _link(
        self, compiler: TemplateCompiler, path: YamlPath, index: int, spec: LinkSpec
    ) -> CompiledLink | None:
        op = "add" if spec.add is not None else "remove"
        pair = spec.add or spec.remove
        assert pair is not None
        names = BASE_NAMES | ({"item"} if spec.for_each is not None else set())
        for_each = self._for_each(compiler, (*path, "for_each"), spec.for_each)
        a = self._template(compiler, (*path, op, "a"), pair.a, names)
        b = self._template(compiler, (*path, op, "b"), pair.b, names)
        when = self._template(compiler, (*path, "when"), spec.when, names) if spec.when else None
        if a is None or b is None:
            return None
        return CompiledLink(index, op, a, b, when, for_each)


def _is_type_tag(part: Any) -> bool:
    """Pydantic adds union-branch tags ('str', 'list[str]', 'function-after[...]') to locations."""
    return isinstance(part, str) and (
        "[" in part or part in ("str", "int", "float", "bool", "list", "dict", "none")
    )


def _dotted(path: YamlPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed_keys(path: YamlPath) -> list[str]:
    """The keys the model at `path` accepts (best effort, for 'unknown key' messages)."""
    model: Any = RuleFile
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        model = _model_in(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or n for n, f in model.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _coerce_env(raw: str, default: Any) -> Any:
    """An env override, typed like the variable's default in the file."""
    if isinstance(default, str):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if default is None:
            return raw
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    expected: tuple[type, ...]
    if isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int | float):
        expected = (int, float)
    elif isinstance(default, dict):
        expected = (dict,)
    elif isinstance(default, list):
        expected = (list,)
    else:
        return value
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise ValueError(
            f"expected JSON {expected[0].__name__} like the file's default, "
            f"got {type(value).__name__}"
        )
    return value
