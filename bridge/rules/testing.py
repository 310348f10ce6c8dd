"""Rule unit tests: YAML files of events and what the rules must do with them.

Like `promtool test rules` for Prometheus alerting rules: each test gives an event (a
webhook body, inline or from a file), the links already recorded and the variables, and
lists the actions and link changes the rules must produce. Evaluation is the real engine
(`bridge.rules.evaluate` over a `LinkGraph`), pure: no store, no network, no clock but the
test's `now`. The file format is documented in `docs/rules.md`.

`run_test_files` returns a `TestReport`; a file that is not a valid test file raises
`TestFileError` naming file, line and what is wrong (the CLI exits 2 for it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.events import (
    Action,
    DeliveryId,
    Event,
    InvalidRef,
    ObjectKind,
    ObjectRef,
    Platform,
    freeze,
    thaw,
)
from bridge.platforms.catalog import parse_webhook, platform_named
from bridge.platforms.states import compared, observed
from bridge.platforms.webhooks import PayloadError
from bridge.rules.compiled import RuleSet
from bridge.rules.engine import Evaluation, evaluate
from bridge.rules.errors import RulesError, did_you_mean
from bridge.rules.graph import LinkGraph
from bridge.rules.loader import ENV_PREFIX, load_rules
from bridge.rules.models import FieldOwner
from bridge.yamlsource import KeyPath, LineMap, YamlProblem, load_yaml_file

DEFAULT_NOW: Final = datetime(2026, 1, 1, tzinfo=UTC)
# A rules file as loaded for a test: path, variables, rules switched on, field owners.
_Key = tuple[Path, tuple[tuple[str, str], ...], tuple[str, ...], tuple[tuple[str, str], ...]]
TEST_FILE_SUFFIXES: Final = (".yaml", ".yml")


class TestFileError(Exception):
    """A test file that cannot be run: ``file:line: message``."""

    __test__ = False  # not a pytest class

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")


# -- the file format --------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ExpectedAction(_Model):
    do: str = Field(description="The operation, e.g. incident_io.cancel_escalation.")
    target: str | None = Field(
        default=None, description="The target ref; checked when given (null: no target)."
    )
    params: dict[str, Any] | None = Field(
        default=None, description="A subset of the params: each key given must be equal."
    )
    idempotency_key: str | None = None
    rule: str | None = Field(default=None, description="The rule that produced it.")


class ExpectedLink(_Model):
    add: list[str] | None = Field(default=None, min_length=2, max_length=2)
    remove: list[str] | None = Field(default=None, min_length=2, max_length=2)


class Expect(_Model):
    actions: list[ExpectedAction] = Field(
        default_factory=list, description="Every action, in any order; no others."
    )
    links: list[ExpectedLink] = Field(
        default_factory=list, description="Every link change, in any order; no others."
    )
    fired: list[str] | None = Field(
        default=None, description="The rules that fire, when given (in any order)."
    )
    errors: list[str] = Field(
        default_factory=list, description="Rules expected to fail on this event (by name)."
    )


class RuleTest(_Model):
    name: str = Field(min_length=1)
    source: str
    event: dict[str, Any] | None = None
    event_file: str | None = None
    resource: dict[str, Any] | None = Field(
        default=None,
        description="The object's current state, as the bridge reads it before evaluating "
        "(hydration): replaces the payload's object.",
    )
    previous: dict[str, Any] | None = Field(
        default=None,
        description="The last state the bridge saw of the event's object (Rootly: the "
        "fields it records), as the dispatcher compares the event with it; none: never seen.",
    )
    links: list[list[str]] = Field(default_factory=list)
    variables: dict[str, Any] = Field(default_factory=dict)
    enable: list[str] = Field(
        default_factory=list,
        description="Rules to switch on for this test (rules that ship switched off).",
    )
    fields: dict[str, FieldOwner] = Field(
        default_factory=dict, description="Field owners over the rules file's `fields:`."
    )
    now: datetime | None = None
    delivery_id: str | None = None
    expect: Expect = Field(default_factory=Expect)

    @field_validator("links")
    @classmethod
    def _pairs(cls, value: list[list[str]]) -> list[list[str]]:
        for pair in value:
            if len(pair) != 2:
                raise ValueError("each link is a pair [a, b] of 'platform:kind:id' refs")
        return value


class RuleTestFile(_Model):
    rules: str | None = Field(
        default=None, description="The rules file, relative to this file (default: --rules)."
    )
    variables: dict[str, Any] = Field(default_factory=dict)
    enable: list[str] = Field(default_factory=list)
    fields: dict[str, FieldOwner] = Field(default_factory=dict)
    tests: list[RuleTest] = Field(min_length=1)


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test's outcome; `diff` is empty when it passed."""

    __test__ = False

    file: str
    line: int | None
    name: str
    diff: tuple[str, ...]
    fired: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.diff


@dataclass(frozen=True, slots=True)
class TestReport:
    """Every test of every file, in order."""

    __test__ = False

    results: tuple[TestResult, ...]

    rules: tuple[str, ...] = ()  # the enabled rules of the rules files tested

    @property
    def failed(self) -> tuple[TestResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def untested(self) -> tuple[str, ...]:
        """Enabled rules that no test makes fire."""
        fired = {name for result in self.results for name in result.fired}
        return tuple(name for name in self.rules if name not in fired)


# -- running ------------------------------------------------------------------------------


def find_test_files(paths: Sequence[Path]) -> list[Path]:
    """The files of `paths`; directories give their ``*.yaml`` / ``*.yml`` files, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in TEST_FILE_SUFFIXES))
        else:
            found.append(path)
    return found


class _Runner:
    def __init__(self, override: Path | None, fallback: Path | None) -> None:
        self.override = override
        self.fallback = fallback
        self._cache: dict[_Key, RuleSet] = {}

    def rules_for(
        self,
        path: Path,
        variables: Mapping[str, Any],
        file: str,
        line: Callable[[str], int | None],
        enable: Sequence[str] = (),
        owners: Mapping[str, Platform] | None = None,
    ) -> RuleSet:
        """The rules of `path` with `variables` over the file's own (environment ignored),
        `enable` switched on and `owners` over the file's field owners."""
        declared = self._load(path, {}).variables
        env: dict[str, str] = {}
        for name, value in variables.items():
            if name not in declared:
                raise TestFileError(
                    file,
                    line(name),
                    f"variable {name!r} is not defined in {path}"
                    + did_you_mean(name, declared, "variables"),
                )
            # As the environment would give it: text for a text variable, JSON otherwise.
            as_text = isinstance(declared[name], str) and isinstance(value, str)
            env[ENV_PREFIX + name.upper()] = value if as_text else json.dumps(value)
        return self._load(path, env, tuple(enable), owners or {})

    def loaded(self) -> list[RuleSet]:
        """The rules files tested, each as the file has it (its own variables, the rules
        it switches on): one per file."""
        return [
            rules
            for (_, env, enable, owners), rules in self._cache.items()
            if not env and not enable and not owners
        ]

    def _load(
        self,
        path: Path,
        env: Mapping[str, str],
        enable: tuple[str, ...] = (),
        owners: Mapping[str, Platform] | None = None,
    ) -> RuleSet:
        key = (
            path,
            tuple(sorted(env.items())),
            tuple(sorted(enable)),
            tuple(sorted((owners or {}).items())),
        )
        if key not in self._cache:
            self._cache[key] = load_rules(path, env, enable=enable, owners=owners)
        return self._cache[key]


def _line(lines: LineMap, path: KeyPath) -> int | None:
    return lines.line_of(path)


def _validation_error(file: str, lines: LineMap, exc: ValidationError) -> TestFileError:
    error = exc.errors(include_url=False)[0]
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
    dotted = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = [f.alias or n for n, f in parent.model_fields.items()] if parent else []
        message = f"{dotted}: unknown key" + (did_you_mean(str(loc[-1]), known) if known else "")
    else:
        message = f"{dotted}: {error['msg']}" if dotted else str(error["msg"])
    return TestFileError(file, _line(lines, loc), message)


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RuleTestFile
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        inner = _first_model(annotation)
        if inner is None:
            return None
        model = inner
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def run_test_file(path: Path, runner: _Runner) -> list[TestResult]:
    file = str(path)
    try:
        data, lines = load_yaml_file(path)
    except YamlProblem as exc:
        raise TestFileError(file, exc.line, exc.message) from None
    if not isinstance(data, dict):
        raise TestFileError(file, 1, "a rule test file is a mapping with 'tests'")
    try:
        spec = RuleTestFile.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(file, lines, exc) from None
    if runner.override is not None:
        rules_path = runner.override
    elif spec.rules is not None:
        rules_path = path.parent / spec.rules
    elif runner.fallback is not None:
        rules_path = runner.fallback
    else:
        raise TestFileError(file, 1, "no rules file: give 'rules:' in the file or --rules")
    results = []
    for index, test in enumerate(spec.tests):
        where: KeyPath = ("tests", index)
        line = _line(lines, where)
        variables = {**spec.variables, **test.variables}

        def variable_line(name: str, where: KeyPath = where) -> int | None:
            return lines.lines.get((*where, "variables", name)) or lines.line_of(
                ("variables", name)
            )

        enable = [*spec.enable, *test.enable]
        owners = {name: o.owner for name, o in {**spec.fields, **test.fields}.items()}
        try:
            rules = runner.rules_for(rules_path, variables, file, variable_line, enable, owners)
        except RulesError as exc:
            raise TestFileError(file, line, f"rules {rules_path}: {exc}") from None
        event = _event(path, index, test, lines)
        graph = LinkGraph(_links(file, lines, where, test.links))
        evaluation = evaluate(rules, event, graph, test.now or DEFAULT_NOW)
        diff = _compare(test.expect, evaluation, file, lines, where)
        results.append(TestResult(file, line, test.name, tuple(diff), evaluation.matched))
    return results


def _event(path: Path, index: int, test: RuleTest, lines: LineMap) -> Event:
    file = str(path)
    where: KeyPath = ("tests", index)
    platform = platform_named(test.source)
    if platform is None:
        raise TestFileError(
            file,
            _line(lines, (*where, "source")),
            f"source {test.source!r}: use rootly or incident_io",
        )
    if (test.event is None) == (test.event_file is None):
        raise TestFileError(
            file, _line(lines, where), "give exactly one of 'event' (inline) or 'event_file'"
        )
    if test.event is not None:
        body = json.dumps(test.event).encode()
        at = _line(lines, (*where, "event"))
    else:
        assert test.event_file is not None
        event_path = path.parent / test.event_file
        at = _line(lines, (*where, "event_file"))
        try:
            body = event_path.read_bytes()
        except OSError as exc:
            raise TestFileError(file, at, f"event_file {event_path}: {exc.strerror}") from None
    delivery = DeliveryId(test.delivery_id or f"test:{path.name}:{index + 1}")
    try:
        event = parse_webhook(platform, body, delivery)
    except PayloadError as exc:
        raise TestFileError(file, at, f"not a webhook body of {test.source}: {exc}") from None
    if test.resource is not None:
        event = _hydrated(event, test.resource)
    if test.previous is not None and observed(event) is None:
        raise TestFileError(
            file,
            _line(lines, (*where, "previous")),
            f"previous: the bridge records no state of {event.subject or 'this event'}"
            " (incident.io's webhooks carry previous_status themselves)",
        )
    return compared(event, test.previous)


def _hydrated(event: Event, fresh: Mapping[str, Any]) -> Event:
    """The event as the dispatcher evaluates it after reading its object's current state."""
    status = fresh.get("status")
    incident_status = fresh.get("incident_status")
    if event.source == "incident_io" and isinstance(incident_status, Mapping):
        status = incident_status.get("category", status)
    related = event.related
    if event.subject is not None and event.subject.kind == "escalation":
        pairs: tuple[tuple[str, ObjectKind], ...] = (
            ("related_alerts", "alert"),
            ("related_incidents", "incident"),
        )
        extra = [
            ObjectRef("incident_io", kind, str(item["id"]))
            for key, kind in pairs
            for item in fresh.get(key) or ()
            if isinstance(item, Mapping) and item.get("id")
        ]
        related = tuple(dict.fromkeys((*related, *extra)))
    return dataclasses.replace(
        event,
        resource=freeze(dict(fresh)),
        new_status=status
        if event.needs_hydration and isinstance(status, str)
        else event.new_status,
        related=related,
        needs_hydration=False,
    )


def _links(
    file: str, lines: LineMap, where: KeyPath, pairs: list[list[str]]
) -> list[tuple[ObjectRef, ObjectRef]]:
    out = []
    for index, (a, b) in enumerate(pairs):
        try:
            out.append((ObjectRef.parse(a), ObjectRef.parse(b)))
        except InvalidRef as exc:
            raise TestFileError(file, _line(lines, (*where, "links", index)), str(exc)) from None
    return out


# -- comparing ------------------------------------------------------------------------------


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items()
        )
    return bool(expected == actual)


def _action_view(action: Action) -> dict[str, Any]:
    return {
        "do": action.operation,
        "target": str(action.target) if action.target else None,
        "params": thaw(action.params),
        "idempotency_key": action.idempotency_key,
        "rule": action.rule,
    }


def _matches(expected: ExpectedAction, actual: dict[str, Any]) -> bool:
    given = expected.model_fields_set
    if expected.do != actual["do"]:
        return False
    if "target" in given and expected.target != actual["target"]:
        return False
    if expected.params is not None and not _subset(expected.params, actual["params"]):
        return False
    if (
        expected.idempotency_key is not None
        and expected.idempotency_key != actual["idempotency_key"]
    ):
        return False
    return expected.rule is None or expected.rule == actual["rule"]


def _project(expected: ExpectedAction, actual: dict[str, Any]) -> dict[str, Any]:
    """`actual` showing only what `expected` looks at (so equal parts diff as equal)."""
    out: dict[str, Any] = {"do": actual["do"]}
    given = expected.model_fields_set
    if "target" in given:
        out["target"] = actual["target"]
    if expected.params is not None:
        out["params"] = _project_params(expected.params, actual["params"])
    for key in ("idempotency_key", "rule"):
        if getattr(expected, key) is not None:
            out[key] = actual[key]
    return out


def _project_params(expected: Mapping[str, Any], actual: Any) -> Any:
    if not isinstance(actual, Mapping):
        return actual
    out = {}
    for key, value in expected.items():
        if key not in actual:
            continue
        out[key] = (
            _project_params(value, actual[key]) if isinstance(value, Mapping) else actual[key]
        )
    return out


def _expected_view(expected: ExpectedAction) -> dict[str, Any]:
    return expected.model_dump(exclude_unset=True, exclude_none=False)


def _link_text(op: str, a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"{op} {first} <-> {second}"


def _compare(
    expect: Expect, evaluation: Evaluation, file: str, lines: LineMap, where: KeyPath
) -> list[str]:
    actual_actions = [_action_view(a) for a in evaluation.actions]
    unused = list(range(len(actual_actions)))
    paired: list[tuple[ExpectedAction, int | None]] = []
    for expected in expect.actions:
        hit = next((i for i in unused if _matches(expected, actual_actions[i])), None)
        if hit is not None:
            unused.remove(hit)
        paired.append((expected, hit))
    # Pair what is left by operation, so the diff shows what differs inside an action.
    for position, (expected, hit) in enumerate(paired):
        if hit is None:
            near = next((i for i in unused if actual_actions[i]["do"] == expected.do), None)
            if near is not None:
                unused.remove(near)
                paired[position] = (expected, near)
    want: dict[str, Any] = {"actions": [_expected_view(e) for e, _ in paired]}
    got: dict[str, Any] = {
        "actions": [_project(e, actual_actions[i]) for e, i in paired if i is not None]
        + [actual_actions[i] for i in unused]
    }
    matched_all = all(i is not None and _matches(e, actual_actions[i]) for e, i in paired)
    ok = matched_all and not unused

    want_links = sorted(
        _link_text("add" if link.add else "remove", *(link.add or link.remove or ["", ""]))
        for link in expect.links
    )
    got_links = sorted(_link_text(c.op, str(c.a), str(c.b)) for c in evaluation.link_changes)
    want["links"], got["links"] = want_links, got_links
    ok = ok and want_links == got_links

    if expect.fired is not None:
        want["fired"], got["fired"] = sorted(expect.fired), sorted(evaluation.matched)
        ok = ok and want["fired"] == got["fired"]
    want_errors = sorted(expect.errors)
    got_errors = sorted({e.rule for e in evaluation.errors})
    if want_errors or got_errors:
        want["errors"] = want_errors
        got["errors"] = [
            f"{e.rule}: {e.where}: {e.message}" if e.rule not in want_errors else e.rule
            for e in sorted(evaluation.errors, key=lambda e: e.rule)
        ]
        ok = ok and want_errors == got_errors
    if ok:
        return []
    return list(
        difflib.unified_diff(
            _yaml(want).splitlines(),
            _yaml(got).splitlines(),
            fromfile="expected",
            tofile="actual",
            lineterm="",
        )
    )


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False, allow_unicode=True)


def run_test_files(
    paths: Sequence[Path], rules: Path | None = None, *, fallback: Path | None = None
) -> TestReport:
    """Run every test of `paths` (files or directories); raise `TestFileError` for a bad file.

    The rules under test: `rules` when given (for every file), else the file's own
    ``rules:`` (relative to the file), else `fallback`.
    """
    runner = _Runner(rules, fallback)
    results: list[TestResult] = []
    for path in find_test_files(paths):
        results.extend(run_test_file(path, runner))
    enabled = {r.name: None for rules in runner.loaded() for r in rules.rules if r.enabled}
    return TestReport(tuple(results), tuple(enabled))
