"""Evaluating a `RuleSet` against one event: pure, deterministic, no I/O, no clock.

`evaluate` walks the rules in file order. For each enabled rule whose trigger matches and
whose conditions hold, it renders the actions and link changes. A rule is atomic: if any of
its templates fails (an undefined field, a sandbox refusal, a bad ref), that rule produces
nothing, the failure is recorded in `Evaluation.errors` and the trace, and the other rules
are still evaluated, so one bad rule never loses the event for the rest.

Default idempotency keys are a hash of (source, delivery, rule, operation, target or item):
the same delivery evaluated twice gives the same keys (the executor's dedupe), a new
delivery gives new ones. Rules that must collapse repeated deliveries of the *same fact*
(two `incident.created` webhooks for one incident) set `idempotency_key` explicitly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bridge.events import (
    Action,
    Event,
    IdempotencyKey,
    InvalidRef,
    LinkChange,
    ObjectRef,
    ResultLink,
    RuleName,
    freeze,
    rule_origin,
)
from bridge.operations import OPERATIONS
from bridge.rules.compiled import (
    CompiledAction,
    CompiledForEach,
    CompiledLink,
    CompiledRule,
    RuleSet,
)
from bridge.rules.graph import LinkGraph
from bridge.rules.templates import CompiledTemplate, Omit, RenderError, isoformat, truthy

_NO_ITEM = object()


@dataclass(frozen=True, slots=True)
class EvaluationError:
    """A rule that failed for this event (the event itself is not lost)."""

    rule: str
    where: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "where": self.where, "message": self.message}


@dataclass(frozen=True)
class Evaluation:
    """What the rules decided for one event.

    `trace` is plain JSON-able data (dicts, lists, strings): ``{"event": {...}, "rules":
    {name: {"matched": bool, "fired": bool, "reason": ..., ...}}}``. `matched` lists the rules
    that fired (produced at least one action or link change).
    """

    actions: tuple[Action, ...]
    link_changes: tuple[LinkChange, ...]
    matched: tuple[str, ...]
    trace: Mapping[str, Any]
    errors: tuple[EvaluationError, ...] = field(default=())


class _RuleFailed(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


def evaluate(rules: RuleSet, event: Event, links: LinkGraph, now: datetime) -> Evaluation:
    """Evaluate every rule of `rules` for `event`; `now` is the only clock the rules see."""
    context = event.template_context()
    context["vars"] = rules.variables
    context["now"] = isoformat(now)
    actions: list[Action] = []
    link_changes: list[LinkChange] = []
    matched: list[str] = []
    errors: list[EvaluationError] = []
    rule_traces: dict[str, Any] = {}
    producers: dict[str, str] = {}  # idempotency key -> the rule that produced it first
    pairs: set[tuple[str, frozenset[ObjectRef]]] = set()
    for rule in rules.rules:
        if not rule.enabled:
            rule_traces[rule.name] = {"matched": False, "fired": False, "reason": "disabled"}
            continue
        if not rule.triggers(event):
            rule_traces[rule.name] = {
                "matched": False,
                "fired": False,
                "reason": "trigger mismatch",
                "expected": {"source": rule.source, "event": list(rule.events)},
            }
            continue
        try:
            trace, rule_actions, rule_links = _evaluate_rule(rule, event, links, context)
        except _RuleFailed as failure:
            error = EvaluationError(rule.name, failure.where, failure.message)
            errors.append(error)
            rule_traces[rule.name] = {
                "matched": True,
                "fired": False,
                "reason": "error",
                "error": error.as_dict(),
            }
            continue
        # An action whose key an earlier one produced is not produced again, and not
        # listed twice: the trace lists the actions the rule adds, and says which it left.
        kept: list[Any] = []
        for action, action_trace in zip(rule_actions, trace.get("actions", ()), strict=True):
            first = producers.get(action.idempotency_key)
            if first is not None:
                by = "this rule" if first == rule.name else f"rule {first}"
                trace.setdefault("notes", []).append(
                    f"{action.operation} on {action.target or 'a new object'} already"
                    f" produced by {by} (same idempotency key): not repeated"
                )
                continue
            producers[action.idempotency_key] = rule.name
            actions.append(action)
            kept.append(action_trace)
        if rule_actions:
            trace["actions"] = kept
        for change in rule_links:
            pair = (change.op, frozenset((change.a, change.b)))
            if pair not in pairs:
                pairs.add(pair)
                link_changes.append(change)
        if trace.get("fired"):
            matched.append(rule.name)
        rule_traces[rule.name] = trace
    return Evaluation(
        actions=tuple(actions),
        link_changes=tuple(link_changes),
        matched=tuple(matched),
        trace={
            "event": {
                "source": event.source,
                "type": event.type,
                "delivery_id": event.delivery_id,
                "subject": str(event.subject) if event.subject else None,
            },
            "rules": rule_traces,
            "errors": [e.as_dict() for e in errors],
        },
        errors=tuple(errors),
    )


def _evaluate_rule(
    rule: CompiledRule, event: Event, graph: LinkGraph, context: dict[str, Any]
) -> tuple[dict[str, Any], list[Action], list[LinkChange]]:
    for index, test in enumerate(rule.conditions):
        where = f"when[{index}]"
        ok, detail = _guard(where, test.check, context)
        if not ok:
            failed = {"matched": False, "fired": False, "reason": "condition false"}
            return failed | {"condition": {"index": index, "detail": detail}}, [], []
    notes: list[str] = []
    actions: list[Action] = []
    action_traces: list[dict[str, Any]] = []
    for spec in rule.actions:
        produced = _actions_for(rule, spec, event, graph, context, notes)
        actions.extend(produced)
        action_traces.extend(
            {
                "do": a.operation,
                "target": str(a.target) if a.target else None,
                "idempotency_key": a.idempotency_key,
            }
            for a in produced
        )
    changes: list[LinkChange] = []
    for link in rule.links:
        changes.extend(_links_for(rule, link, event, graph, context, notes))
    fired = bool(actions or changes)
    trace: dict[str, Any] = {
        "matched": True,
        "fired": fired,
        "reason": "fired" if fired else "no targets",
        "actions": action_traces,
        "links": [f"{c.op} {c.a} <-> {c.b}" for c in changes],
    }
    if notes:
        trace["notes"] = notes
    return trace, actions, changes


def _guard(where: str, func: Any, *args: Any) -> Any:
    try:
        return func(*args)
    except RenderError as exc:
        raise _RuleFailed(where, str(exc)) from None


def _render(where: str, template: CompiledTemplate, context: dict[str, Any]) -> Any:
    return _guard(where, template.render, context)


def _iterations(
    where: str,
    for_each: CompiledForEach | None,
    event: Event,
    graph: LinkGraph,
    context: dict[str, Any],
    notes: list[str],
) -> list[Any]:
    """The `item` values to repeat over (linked refs or rendered list items)."""
    if for_each is None:
        return [_NO_ITEM]
    if for_each.linked is not None:
        starts: list[ObjectRef] = []
        if "subject" in for_each.start and event.subject is not None:
            starts.append(event.subject)
        if "related" in for_each.start:
            starts.extend(event.related)
        found: set[ObjectRef] = set()
        for start in starts:
            found.update(graph.reachable(start, for_each.linked, for_each.via))
        if not found:
            notes.append(
                f"{where}: no linked {for_each.describe()} for {event.subject}: nothing to do"
            )
        return sorted(found)
    assert for_each.items is not None
    value = _render(f"{where}.for_each.items", for_each.items, context)
    if value is None or isinstance(value, Omit):
        value = []
    if not isinstance(value, list):
        raise _RuleFailed(
            f"{where}.for_each.items", f"must give a list, got {type(value).__name__}"
        )
    if not value:
        notes.append(f"{where}: for_each.items is empty: no action")
    return value


def _as_ref(where: str, value: Any, type_key: str | None) -> ObjectRef:
    """A ref from an ObjectRef, a ``platform:kind:id`` string, or a bare ID of `type_key`."""
    if isinstance(value, ObjectRef):
        ref = value
    elif isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        text = str(value)
        try:
            ref = ObjectRef.parse(text if ":" in text or type_key is None else f"{type_key}:{text}")
        except InvalidRef as exc:
            raise _RuleFailed(where, str(exc)) from None
    else:
        raise _RuleFailed(where, f"not an object ref or ID: {value!r:.80}")
    if type_key is not None and ref.type_key != type_key:
        raise _RuleFailed(where, f"{ref} is not a {type_key}")
    return ref


def _actions_for(
    rule: CompiledRule,
    spec: CompiledAction,
    event: Event,
    graph: LinkGraph,
    context: dict[str, Any],
    notes: list[str],
) -> list[Action]:
    where = f"actions[{spec.index}]"
    out: list[Action] = []
    for param, synced, owner in spec.owned:
        notes.append(f"{where}: leaves out {param}: {owner} owns {synced}")
    updates = OPERATIONS[spec.operation].aspect is None
    for item in _iterations(where, spec.for_each, event, graph, context, notes):
        local = dict(context)
        target: ObjectRef | None = None
        if item is not _NO_ITEM:
            local["item"] = str(item) if isinstance(item, ObjectRef) else item
        if spec.target is not None:
            rendered = _render(f"{where}.target", spec.target, local)
            target = _as_ref(f"{where}.target", rendered, spec.target_type)
        elif spec.target_type is not None and item is not _NO_ITEM:
            target = _as_ref(f"{where}.for_each", item, spec.target_type)
        if target is not None:
            local["target"] = str(target)
        if spec.when is not None and not truthy(_render(f"{where}.when", spec.when, local)):
            notes.append(f"{where}: skipped {target or item}: 'when' is false")
            continue
        params = _guard(f"{where}.params", spec.params.render, local)
        if updates and not params:
            # An update that sets nothing (every field left out, or owned by its side).
            notes.append(f"{where}: skipped {target or item}: nothing to set")
            continue
        if spec.idempotency_key is not None:
            key = _render(f"{where}.idempotency_key", spec.idempotency_key, local)
            if not isinstance(key, str | int) or isinstance(key, bool) or str(key) == "":
                raise _RuleFailed(
                    f"{where}.idempotency_key", f"must be a non-empty string, got {key!r:.80}"
                )
            key = str(key)
        else:
            key = default_idempotency_key(event, rule.name, spec.operation, target, item)
        result_links: tuple[ResultLink, ...] = ()
        if spec.link_result is not None:
            template, kind = spec.link_result
            to = _as_ref(
                f"{where}.link_result.to", _render(f"{where}.link_result.to", template, local), None
            )
            result_links = (ResultLink(to=to, kind=kind),)
        out.append(
            Action(
                operation=spec.operation,
                target=target,
                params=freeze(params),
                rule=RuleName(rule.name),
                idempotency_key=IdempotencyKey(key),
                result_links=result_links,
                priority=spec.priority,
            )
        )
    return out


def _links_for(
    rule: CompiledRule,
    spec: CompiledLink,
    event: Event,
    graph: LinkGraph,
    context: dict[str, Any],
    notes: list[str],
) -> list[LinkChange]:
    where = f"links[{spec.index}]"
    out: list[LinkChange] = []
    for item in _iterations(where, spec.for_each, event, graph, context, notes):
        local = dict(context)
        if item is not _NO_ITEM:
            local["item"] = str(item) if isinstance(item, ObjectRef) else item
        if spec.when is not None and not truthy(_render(f"{where}.when", spec.when, local)):
            notes.append(f"{where}: skipped: 'when' is false")
            continue
        a = _as_ref(f"{where}.{spec.op}.a", _render(f"{where}.{spec.op}.a", spec.a, local), None)
        b = _as_ref(f"{where}.{spec.op}.b", _render(f"{where}.{spec.op}.b", spec.b, local), None)
        if a == b:
            notes.append(f"{where}: skipped linking {a} to itself")
            continue
        out.append(LinkChange(op=spec.op, a=a, b=b, created_by=rule_origin(rule.name)))  # type: ignore[arg-type]
    return out


def default_idempotency_key(
    event: Event, rule: str, operation: str, target: ObjectRef | None, item: Any = _NO_ITEM
) -> str:
    """``bridge-<40 hex>`` from (source, delivery, rule, operation, target or item)."""
    discriminator: Any = str(target) if target is not None else None
    if discriminator is None and item is not _NO_ITEM:
        discriminator = json.dumps(
            str(item) if isinstance(item, ObjectRef) else item, sort_keys=True, default=str
        )
    material = json.dumps(
        [event.source, event.delivery_id, rule, operation, discriminator], separators=(",", ":")
    )
    return "bridge-" + hashlib.sha256(material.encode()).hexdigest()[:40]
