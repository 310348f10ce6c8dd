"""Mapping rules: YAML rules, loaded and compiled once, evaluated purely per event.

Public API (used by the dispatcher and the CLI)::

    rules = load_rules(Path("config/rules.yaml"))          # raises RulesError
    graph = LinkGraph(pairs_loaded_for(refs_to_resolve(event)))
    result = evaluate(rules, event, graph, now)             # Evaluation

The language is documented in ``docs/rules.md``.
"""

from __future__ import annotations

from bridge.rules.compiled import OPERATION_TARGETS, CompiledRule, RuleSet
from bridge.rules.engine import Evaluation, EvaluationError, default_idempotency_key, evaluate
from bridge.rules.errors import RulesError
from bridge.rules.graph import LinkGraph, refs_to_resolve
from bridge.rules.loader import ENV_PREFIX, load_rules, load_rules_text

__all__ = [
    "ENV_PREFIX",
    "OPERATION_TARGETS",
    "CompiledRule",
    "Evaluation",
    "EvaluationError",
    "LinkGraph",
    "RuleSet",
    "RulesError",
    "default_idempotency_key",
    "evaluate",
    "load_rules",
    "load_rules_text",
    "refs_to_resolve",
]
