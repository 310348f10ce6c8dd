"""The official OpenAPI specs of both platforms, for contract tests.

Read from `BRIDGE_SPECS_DIR` (default `../shared/specs` beside the project); never copied
into the project. Every helper skips the calling test with a clear reason when the specs are
absent. Validation uses the OpenAPI 3.0 dialect (`nullable`, etc.) with `$ref`s resolved
against the spec's own `components`. incident.io's `supplement.json` describes operations
published after `openapi3.json` (responding to an escalation); its `paths` are merged into
the main spec's, as the specs' README says.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator

ROOT = Path(__file__).resolve().parent.parent
_FILES = {"rootly": "rootly/swagger.json", "incident_io": "incident-io/openapi3.json"}
_SUPPLEMENTS = {"incident_io": "incident-io/supplement.json"}


def specs_dir() -> Path:
    """Where the official specs live: `BRIDGE_SPECS_DIR` or `../shared/specs`."""
    return Path(os.environ.get("BRIDGE_SPECS_DIR", ROOT.parent / "shared" / "specs"))


@functools.cache
def _load(path: str, supplement: str | None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    if supplement is not None:
        extra = json.loads(Path(supplement).read_text(encoding="utf-8"))
        for template, item in extra.get("paths", {}).items():
            data["paths"].setdefault(template, {}).update(item)
    return data


def load_spec(platform: str) -> dict[str, Any]:
    """The parsed spec of `platform` ("rootly" or "incident_io") with its supplement's
    paths merged in, or skip the test."""
    path = specs_dir() / _FILES[platform]
    if not path.is_file():
        pytest.skip(f"official {platform} spec not found at {path}; set BRIDGE_SPECS_DIR")
    supplement = specs_dir() / _SUPPLEMENTS[platform] if platform in _SUPPLEMENTS else None
    if supplement is not None and not supplement.is_file():
        pytest.skip(f"{platform} spec supplement not found at {supplement}")
    return _load(str(path), str(supplement) if supplement is not None else None)


class ContractError(AssertionError):
    """A request, response or payload does not match the official spec."""


@functools.cache
def _validator(platform: str, pointer: str) -> OAS30Validator:
    spec = load_spec(platform)
    # Keep the components beside the schema so '#/components/...' refs resolve in place.
    return OAS30Validator({"$ref": pointer, "components": spec["components"]})


def _pointer_of(platform: str, schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref
    spec = load_spec(platform)
    # Inline schema: register it under a synthetic key once, keyed by its JSON text.
    key = "inline_" + str(abs(hash(json.dumps(schema, sort_keys=True))))
    spec["components"].setdefault("x-inline", {})[key] = schema
    _validator.cache_clear()
    return f"#/components/x-inline/{key}"


def validate_schema(platform: str, schema: dict[str, Any], instance: Any, where: str) -> None:
    """Validate `instance` against `schema` (a fragment of `platform`'s spec)."""
    errors = sorted(
        _validator(platform, _pointer_of(platform, schema)).iter_errors(instance),
        key=lambda e: list(e.path),
    )
    if errors:
        detail = "; ".join(
            f"{'/'.join(str(p) for p in e.path) or '<root>'}: {e.message[:300]}" for e in errors[:5]
        )
        raise ContractError(f"{where}: {detail}")


def find_operation(platform: str, method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The spec's (template, operation) matching a concrete request path like /v1/alerts/abc."""
    spec = load_spec(platform)
    path = path.split("?", 1)[0]
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    raise ContractError(f"{platform}: no operation {method.upper()} {path} in the official spec")


def validate_request(
    platform: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any | None,
) -> str:
    """Check a request the bridge sends against the official operation; return its template."""
    template, operation = find_operation(platform, method, path)
    where = f"{platform} {method.upper()} {template}"
    lowered = {k.lower(): v for k, v in headers.items()}
    if not lowered.get("authorization", "").startswith("Bearer "):
        raise ContractError(f"{where}: missing 'Authorization: Bearer' header")
    request_body = operation.get("requestBody")
    if request_body is None:
        if body not in (None, b"", ""):
            raise ContractError(f"{where}: operation takes no body, got {body!r:.200}")
        return template
    content = request_body.get("content", {})
    content_type = lowered.get("content-type", "").split(";")[0].strip()
    if content_type not in content:
        raise ContractError(f"{where}: content type {content_type!r} not one of {sorted(content)}")
    if body is None:
        if request_body.get("required"):
            raise ContractError(f"{where}: body required")
        return template
    schema = content[content_type].get("schema")
    if schema:
        validate_schema(platform, schema, body, where + " request body")
    return template


def validate_query(platform: str, method: str, path: str, names: list[str]) -> None:
    """Check a request's query parameter names against the operation's parameters: each is
    declared (exactly, as Rootly's ``filter[created_at][gte]``, or as the base name of a
    deepObject filter, as incident.io's ``status[one_of]``), and every required one is sent."""
    template, operation = find_operation(platform, method, path)
    where = f"{platform} {method.upper()} {template}"
    declared = {p["name"]: p for p in operation.get("parameters", []) if p.get("in") == "query"}
    for name in names:
        if name not in declared and name.split("[", 1)[0] not in declared:
            raise ContractError(f"{where}: undeclared query parameter {name!r}")
    sent = {name.split("[", 1)[0] for name in names} | set(names)
    missing = sorted(n for n, p in declared.items() if p.get("required") and n not in sent)
    if missing:
        raise ContractError(f"{where}: required query parameter(s) {', '.join(missing)} not sent")


def validate_response(platform: str, method: str, path: str, status: int, body: Any) -> None:
    """Check a (simulated) response against the official operation's response schema."""
    template, operation = find_operation(platform, method, path)
    where = f"{platform} {method.upper()} {template} -> {status}"
    responses = operation.get("responses", {})
    response = responses.get(str(status)) or responses.get("default")
    if response is None:
        raise ContractError(f"{where}: status not documented ({sorted(responses)})")
    content = response.get("content")
    if not content:
        return
    schema = next(iter(content.values())).get("schema")
    if schema:
        validate_schema(platform, schema, body, where + " response body")


def webhook_entry(event_type: str) -> dict[str, Any]:
    """The incident.io `x-webhooks` entry for `event_type` (its GET 200 response)."""
    spec = load_spec("incident_io")
    key = f"/x-webhooks/{event_type}"
    if key not in spec["x-webhooks"]:
        raise ContractError(f"incident.io spec has no webhook {event_type}")
    content: dict[str, Any] = spec["x-webhooks"][key]["get"]["responses"]["200"]["content"]
    entry: dict[str, Any] = content["application/json"]
    return entry


def webhook_example(event_type: str) -> dict[str, Any]:
    """The official example payload of an incident.io webhook event type: a copy, so a
    test that edits it cannot change what later tests read from the cached spec."""
    example: dict[str, Any] = copy.deepcopy(webhook_entry(event_type)["example"])
    return example


def webhook_event_types(prefixes: tuple[str, ...] = ("public_", "private_")) -> list[str]:
    """Every incident.io webhook event type in the spec starting with one of `prefixes`."""
    spec = load_spec("incident_io")
    names = [k.removeprefix("/x-webhooks/") for k in spec["x-webhooks"]]
    return sorted(n for n in names if n.startswith(prefixes))


def validate_webhook(payload: dict[str, Any]) -> None:
    """Check an incident.io webhook payload against the schema published for its type."""
    event_type = payload.get("event_type")
    if not isinstance(event_type, str):
        raise ContractError("incident.io webhook payload has no string 'event_type'")
    schema = webhook_entry(event_type).get("schema")
    if schema:
        validate_schema("incident_io", schema, payload, f"webhook {event_type}")
