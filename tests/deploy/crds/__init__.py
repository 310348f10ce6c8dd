"""Validation of the chart's prometheus-operator custom resources against the vendored CRD
schemas (see README.md here for their source and version)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

HERE = Path(__file__).resolve().parent
SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): HERE / "prometheusrule-v1.json",
}


def _strict(node: Any) -> Any:
    """The schema as the API server applies it with strict field validation: an object
    with declared properties accepts no others (unless it preserves unknown fields)."""
    if isinstance(node, dict):
        out = {key: _strict(value) for key, value in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


@cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    document = json.loads(SCHEMAS[(api_version, kind)].read_text(encoding="utf-8"))
    schema = _strict(document["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def crd_problems(manifest: dict[str, Any]) -> list[str]:
    """Every schema violation of a ServiceMonitor or PrometheusRule, or a note that the
    kind has no vendored schema."""
    key = (str(manifest.get("apiVersion")), str(manifest.get("kind")))
    if key not in SCHEMAS:
        return [f"no vendored CRD schema for {key[0]} {key[1]}"]
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in _validator(*key).iter_errors(manifest)
    ]
