"""The JSON Schema of rules files, generated from the pydantic models.

Regenerate the shipped copy with ``python -m bridge.rules.schema > config/rules.schema.json``
(a test fails when the two differ).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bridge.rules.models import RuleFile


def rules_schema() -> dict[str, Any]:
    """The JSON Schema of `RuleFile`."""
    return RuleFile.model_json_schema(by_alias=True)


def rules_schema_text() -> str:
    """The schema as the shipped file holds it (sorted keys, 2-space indent, newline)."""
    return json.dumps(rules_schema(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    sys.stdout.write(rules_schema_text())


if __name__ == "__main__":
    main()
