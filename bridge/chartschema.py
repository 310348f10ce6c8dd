"""The Helm chart's schema for `config`, generated from the settings models.

`helm/bridge/values.schema.json` describes the chart's values; its `config` subtree (the
bridge.yaml the chart writes) is generated here from `bridge.config.Settings`, so the chart
refuses at install what the bridge would refuse at start: an unknown key at any depth
(`config.executor.max_attempt`), a wrong type, a value out of range.

    python -m bridge.chartschema helm/bridge/values.schema.json    # or: make schema

rewrites that subtree in place (the rest of the file is maintained by hand); a test checks
the committed file equals the generator's output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bridge.config import Settings

DESCRIPTION = (
    "Non-secret bridge settings written to bridge.yaml; generated from bridge/config.py by"
    " `make schema`."
)
# JSON Schema keywords pydantic emits that say nothing to Helm's validator or a reader.
_DROPPED = {"title", "writeOnly"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every `#/$defs/...` reference replaced by its definition."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            merged = {
                **defs[ref.removeprefix("#/$defs/")],
                **{k: v for k, v in node.items() if k != "$ref"},
            }
            return _inline(merged, defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in _DROPPED and k != "$defs"}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the chart's `config` value: the settings, every level closed."""
    raw = Settings.model_json_schema(mode="validation")
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    schema.pop("description", None)
    schema["description"] = DESCRIPTION
    return schema


def render(values_schema: dict[str, Any]) -> str:
    """`values_schema` with its `config` subtree regenerated, as the file's text."""
    updated = dict(values_schema)
    properties = dict(updated["properties"])
    properties["config"] = config_schema()
    updated["properties"] = properties
    return json.dumps(updated, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bridge.chartschema helm/bridge/values.schema.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"bridge.chartschema: {path}: {exc}", file=sys.stderr)
        return 1
    path.write_text(render(current), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
