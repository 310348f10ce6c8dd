"""The shipped JSON Schema of rules files matches the pydantic models, and the shipped
default rules load cleanly and validate against it (what an editor would check)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from bridge.rules.schema import rules_schema_text
from bridge.yamlsource import load_yaml
from tests.rules.builders import default_rules
from tests.specs import ROOT

SCHEMA_FILE = ROOT / "config" / "rules.schema.json"
RULES_FILE = ROOT / "config" / "rules.yaml"


def test_shipped_schema_equals_generated_schema() -> None:
    """config/rules.schema.json is exactly what the models generate today."""
    shipped = SCHEMA_FILE.read_text(encoding="utf-8")
    assert shipped == rules_schema_text(), (
        "config/rules.schema.json is stale; regenerate it with: "
        ".venv/bin/python -m bridge.rules.schema > config/rules.schema.json"
    )


def test_default_rules_validate_against_the_shipped_schema() -> None:
    """The default rules file satisfies the schema (read with YAML 1.2 booleans, as the
    bridge and editors read it)."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    data, _ = load_yaml(Path(RULES_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(data)


def test_default_rules_cover_the_nine_design_flows_and_each_can_be_disabled() -> None:
    """The shipped file loads and every rule names itself (the nine flows of the design,
    rule 9's links in two rules, the Rootly alert-incident links the link checker groups
    objects by, and the two-way lifecycle); all are enabled but the two that ship switched
    off (closing in incident.io resolving Rootly, Rootly edits reaching incident.io)."""
    rules = default_rules()
    assert len(rules.rules) == 17
    assert all(r.description for r in rules.rules)
    assert [r.name for r in rules.rules if not r.enabled] == [
        "incident-io-close-resolves-rootly",
        "rootly-update-syncs-incident-io",
    ]
    assert len(set(rules.names)) == len(rules.names)
