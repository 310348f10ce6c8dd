"""Dead flows: rules that load fine but cannot do anything with the settings in force.

A rules file and a config file can each be valid and still not work together: a rule
whose condition needs an empty variable never fires, a rule that sends alert events
dead-letters every one of them without an alert source, a trigger glob with a typo matches
no event the platform sends. `check_setup` finds these before the first webhook does, each
with how to fix it. `bridge check-config` prints them (errors exit 2, warnings 0 or 2 with
`--strict`), `bridge serve` logs them at start, one event per finding, named
``check.<code>``.

Errors are flows that can never work; warnings are flows that work less well than they
could (no echo guard by API key) or read a field the platform's payload does not have.
This module combines the three kinds of knowledge it needs, each kept where it belongs:
settings (`bridge.config`), rules (`bridge.rules.inspect`) and what each platform sends
(`bridge.platforms.catalog`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from bridge.config import Settings, env_name
from bridge.events import PLATFORMS, Platform
from bridge.platforms.catalog import PlatformCatalog, catalog
from bridge.platforms.states import records
from bridge.rules import ENV_PREFIX, RuleSet
from bridge.rules.compiled import CompiledRule
from bridge.rules.inspect import (
    decided_conditions,
    field_uses,
    glob_matches,
    matched_event_types,
)
from bridge.yamlsource import KeyPath

Severity = Literal["error", "warning"]
_MAX_LISTED: Final = 14


@dataclass(frozen=True, slots=True)
class Finding:
    """One dead or weakened flow, where it is and how to fix it.

    `code` is stable (scripts and log queries may use it): ``rule_never_fires``,
    ``unknown_event_type``, ``event_type_not_handled``, ``platform_disabled``,
    ``source_disabled``, ``missing_alert_source``, ``missing_api_key_id``,
    ``unknown_field``, ``object_not_in_event``, ``fields_owned_by_target``.
    """

    severity: Severity
    code: str
    message: str
    fix: str
    file: str | None = None
    line: int | None = None
    rule: str | None = None

    @property
    def where(self) -> str:
        """``file:line: rule 'x'`` (the parts that are known)."""
        parts = []
        if self.file is not None:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.rule is not None:
            parts.append(f"rule {self.rule!r}")
        return ": ".join(parts)

    def __str__(self) -> str:
        where = f"{self.where}: " if self.where else ""
        return f"{self.severity}: {where}{self.message}\n  fix: {self.fix}"


def _listed(items: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Checker:
    def __init__(self, settings: Settings, rules: RuleSet, require_secrets: bool) -> None:
        self.settings = settings
        self.rules = rules
        self.require_secrets = require_secrets
        self.findings: list[Finding] = []

    def add(
        self,
        severity: Severity,
        code: str,
        message: str,
        fix: str,
        *,
        rule_index: int | None = None,
        path: KeyPath = (),
    ) -> None:
        line = None
        rule = None
        if rule_index is not None:
            rule = self.rules.rules[rule_index].name
            line = self.rules.lines.line_of(("rules", rule_index, *path))
            if line is None:
                line = self.rules.rules[rule_index].line
        self.findings.append(
            Finding(severity, code, message, fix, self.rules.source_path, line, rule)
        )

    def enabled(self, platform: Platform) -> bool:
        group = self.settings.rootly if platform == "rootly" else self.settings.incident_io
        return group.enabled

    # -- per rule ---------------------------------------------------------------------

    def rule(self, index: int, rule: CompiledRule) -> None:
        cat = catalog(rule.source)  # type: ignore[arg-type]
        handled = self.triggers(index, rule, cat)
        self.conditions(index, rule)
        self.operations(index, rule)
        if not self.enabled(cat.platform):
            self.add(
                "warning",
                "source_disabled",
                f"triggers on {cat.label} events, but {cat.platform}.enabled is false:"
                " the bridge receives none, so the rule never runs",
                f"set {cat.platform}.enabled: true, or switch the rule off with 'enabled: false'",
                rule_index=index,
                path=("on", "source"),
            )
        if handled:
            self.fields(index, rule, cat, handled)

    def triggers(self, index: int, rule: CompiledRule, cat: PlatformCatalog) -> tuple[str, ...]:
        """Check each glob; return the handled event types the rule triggers on."""
        handled_types = frozenset(cat.handled)
        for position, glob in enumerate(rule.events):
            path: KeyPath = ("on", "event")
            if ("rules", index, "on", "event", position) in self.rules.lines.lines:
                path = (*path, position)
            if not glob_matches(rule, position, cat.event_types):
                close = difflib.get_close_matches(glob, sorted(cat.event_types), n=1, cutoff=0.6)
                self.add(
                    "error",
                    "unknown_event_type",
                    f"on.event {glob!r} matches no event type {cat.label} sends",
                    f"did you mean {close[0]!r}?"
                    if close
                    else "the event types the bridge acts on are:"
                    f" {_listed(sorted(handled_types))}",
                    rule_index=index,
                    path=path,
                )
            elif not glob_matches(rule, position, handled_types):
                sent = sorted(
                    t for t in cat.event_types if glob_matches(rule, position, frozenset({t}))
                )
                self.add(
                    "error",
                    "event_type_not_handled",
                    f"on.event {glob!r} matches only {cat.label} event types the bridge does"
                    f" not act on ({_listed(sent)}): they carry no incident, alert or"
                    " escalation, so the bridge records them as ignored",
                    f"trigger on one of: {_listed(sorted(handled_types))}",
                    rule_index=index,
                    path=path,
                )
        return matched_event_types(rule, handled_types)

    def conditions(self, index: int, rule: CompiledRule) -> None:
        for decided in decided_conditions(rule, self.rules.variables):
            if decided.holds:
                continue
            settable = [
                f"variable {name!r} ({self.variable_origin(name)})" for name in decided.variables
            ]
            how = " or ".join(settable) if settable else "the condition"
            self.add(
                "error",
                "rule_never_fires",
                f"can never fire: when[{decided.index}] is false with the variables in force"
                f" ({decided.detail})",
                f"set {how}, or switch the rule off with 'enabled: false'",
                rule_index=index,
                path=("when", decided.index),
            )

    def variable_origin(self, name: str) -> str:
        env = ENV_PREFIX + name.upper()
        line = self.rules.lines.line_of(("variables", name))
        in_file = f"{self.rules.source_path}:{line}" if line else self.rules.source_path
        return f"env {env}, or 'variables' in {in_file}"

    def operations(self, index: int, rule: CompiledRule) -> None:
        incident_io = self.settings.incident_io
        for action in rule.actions:
            platform: Platform = action.operation.split(".", 1)[0]  # type: ignore[assignment]
            path: KeyPath = ("actions", action.index, "do")
            if not self.enabled(platform):
                self.add(
                    "error",
                    "platform_disabled",
                    f"actions[{action.index}] calls {action.operation}, but"
                    f" {platform}.enabled is false: every such action would fail",
                    f"set {platform}.enabled: true, or switch the rule off with 'enabled: false'",
                    rule_index=index,
                    path=path,
                )
                continue
            if action.owned and not action.params.items:
                owned = ", ".join(sorted({synced for _, synced, _ in action.owned}))
                self.add(
                    "warning",
                    "fields_owned_by_target",
                    f"actions[{action.index}] ({action.operation}) sets only fields that"
                    f" {platform} owns ({owned}): rules never write them there, so the"
                    " action never runs",
                    f"switch the rule off with 'enabled: false', or make the other side the"
                    f" owner under 'fields:' in {self.rules.source_path}",
                    rule_index=index,
                    path=path,
                )
            if action.operation != "incident_io.send_alert_event":
                continue
            missing = []
            if not incident_io.alert_source_config_id:
                missing.append(("incident_io", "alert_source_config_id"))
            if self.require_secrets and incident_io.alert_source_token is None:
                missing.append(("incident_io", "alert_source_token"))
            if missing:
                keys = " and ".join(".".join(k) for k in missing)
                envs = ", ".join(env_name(k) for k in missing)
                self.add(
                    "error",
                    "missing_alert_source",
                    f"actions[{action.index}] sends incident.io alert events, but {keys}"
                    f" {'is' if len(missing) == 1 else 'are'} not set: every alert event"
                    " would be dead-lettered",
                    f"set {keys} (env {envs}): the ID and the own token of the incident.io"
                    " HTTP alert source that receives these alerts; or switch the rule off"
                    " with 'enabled: false'",
                    rule_index=index,
                    path=path,
                )

    def fields(
        self, index: int, rule: CompiledRule, cat: PlatformCatalog, handled: tuple[str, ...]
    ) -> None:
        kinds = sorted({cat.handled[t] for t in handled})
        for use in field_uses(rule):
            if use.root == "resource":
                lacking = [k for k in kinds if use.field not in cat.fields[k]]
            elif use.root in kinds:
                lacking = [use.root] if use.field not in cat.fields[use.root] else []
            else:
                self.add(
                    "warning",
                    "object_not_in_event",
                    f"{_dotted(use.where)} reads {use.dotted!r}, but the events it triggers"
                    f" on carry {' or '.join(_a(k) for k in kinds)}, not {_a(use.root)}:"
                    " in a template this fails the rule, in a condition it reads as null",
                    f"read it through {' or '.join(repr(k) for k in kinds)} (or 'resource')",
                    rule_index=index,
                    path=use.where,
                )
                continue
            for kind in lacking:
                known = sorted(cat.fields[kind])
                close = difflib.get_close_matches(use.field, known, n=1, cutoff=0.6)
                self.add(
                    "warning",
                    "unknown_field",
                    f"{_dotted(use.where)} reads {use.dotted!r}, but {_a(cat.label)} {kind}"
                    f" has no field {use.field!r} (per the platform's published schema)",
                    f"did you mean '{use.root}.{close[0]}'?"
                    if close
                    else f"the fields of {_a(cat.label)} {kind} are: {_listed(known)}",
                    rule_index=index,
                    path=use.where,
                )

    # -- global ---------------------------------------------------------------------------

    def echo_guard(self) -> None:
        incident_io = self.settings.incident_io
        writers = [
            r.name
            for r in self.rules.rules
            if r.enabled and any(a.operation.startswith("incident_io.") for a in r.actions)
        ]
        if incident_io.enabled and writers and not incident_io.api_key_id:
            self.findings.append(
                Finding(
                    "warning",
                    "missing_api_key_id",
                    f"incident_io.api_key_id is not set, while rules write to incident.io"
                    f" ({_listed(writers)}): the echo guard cannot recognise the bridge's"
                    " own incident.io changes by the API key that made them, only by its"
                    " record of recent writes",
                    "set incident_io.api_key_id (env"
                    f" {env_name(('incident_io', 'api_key_id'))}) to the ID of the bridge's"
                    " API key, as webhooks show it in actor.api_key.id",
                )
            )


def check_setup(
    settings: Settings, rules: RuleSet, *, require_secrets: bool = True
) -> tuple[Finding, ...]:
    """Every dead or weakened flow of `rules` with `settings`: errors first, in file order."""
    checker = _Checker(settings, rules, require_secrets)
    for index, rule in enumerate(rules.rules):
        if rule.enabled:
            checker.rule(index, rule)
    checker.echo_guard()
    order = {"error": 0, "warning": 1}
    return tuple(sorted(checker.findings, key=lambda f: order[f.severity]))


def subscriptions(settings: Settings, rules: RuleSet) -> Mapping[Platform, tuple[str, ...]]:
    """Per enabled platform, the webhook event types the enabled rules trigger on, and, for
    a kind of object whose last state the bridge records (Rootly's) and some rule looks at,
    every type that reports a state of it (`bridge.platforms.states`)."""
    out: dict[Platform, tuple[str, ...]] = {}
    for platform in PLATFORMS:
        group = settings.rootly if platform == "rootly" else settings.incident_io
        if not group.enabled:
            continue
        handled = frozenset(catalog(platform).handled)
        types: set[str] = set()
        for rule in rules.rules:
            if rule.enabled and rule.source == platform:
                types.update(matched_event_types(rule, handled))
        kinds = catalog(platform).handled
        looked_at = {kinds[t] for t in types if records(platform, kinds[t])}
        types.update(t for t, kind in kinds.items() if kind in looked_at)
        out[platform] = tuple(sorted(types))
    return out
