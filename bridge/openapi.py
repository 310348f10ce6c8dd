"""The OpenAPI 3.1 document of the admin API, served at ``GET /api/v1/openapi.json``.

Written by hand next to the routes it describes; a test compares its paths and methods with
the routes the application registers, and validates real answers against its schemas.
"""

from __future__ import annotations

from typing import Any, Final

from bridge import __version__
from bridge.events import OBJECT_KINDS, PLATFORMS
from bridge.store.base import EVENT_OUTCOMES, OUTBOX_STATES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_STR: Final = {"type": "string"}
_INT: Final = {"type": "integer"}
_TIME: Final = {"type": "string", "format": "date-time"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS: Final = {
    400: "Bad input (the reason is in `error`)",
    401: "Missing bearer token",
    403: "Wrong bearer token",
    404: "Not found",
    415: "Unsupported Content-Encoding",
    503: "Store unavailable; retry later",
}


def _errors(*statuses: int) -> dict[str, Any]:
    """Error answers: `statuses` and those every admin route can give."""
    return {
        str(status): {"$ref": f"#/components/responses/E{status}"}
        for status in sorted({401, 403, 503, *statuses})
    }


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


_ID: Final = _param("id", "path", {"type": "integer", "minimum": 1}, "Numeric ID")
_LIMIT: Final = _param(
    "limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size (default 100)"
)
_OFFSET: Final = _param("offset", "query", {"type": "integer", "minimum": 0}, "Rows to skip")
_LINK_BODY: Final = {
    "required": True,
    "content": {"application/json": {"schema": _ref("LinkPair")}},
}

SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _STR},
    },
    "LinkPair": {
        "type": "object",
        "required": ["a", "b"],
        "properties": {
            "a": {"type": "string", "description": "platform:kind:id"},
            "b": {"type": "string", "description": "platform:kind:id"},
        },
    },
    "Link": {
        "type": "object",
        "required": ["a", "b", "created_at", "created_by"],
        "properties": {
            "a": _STR,
            "b": _STR,
            "created_at": _TIME,
            "created_by": {
                "type": "string",
                "description": "rule:<name>, operator, reconcile or adopt",
                "pattern": "^(rule:.+|operator|reconcile|adopt)$",
            },
        },
    },
    "Action": {
        "type": "object",
        "required": ["id", "operation", "state", "attempts", "attempts_before_replay"],
        "properties": {
            "id": _INT,
            "operation": _STR,
            "target": _nullable(_STR),
            "params": {"type": "object"},
            "rule": _STR,
            "idempotency_key": _STR,
            "state": {"enum": list(OUTBOX_STATES)},
            "attempts": {
                "type": "integer",
                "minimum": 0,
                "description": "Every attempt made, the successful one and those before a"
                " replay included",
            },
            "attempts_before_replay": {
                "type": "integer",
                "minimum": 0,
                "description": "attempts when an operator last replayed it (the retry budget"
                " counts from here)",
            },
            "next_attempt_at": _TIME,
            "last_error": _nullable({"type": "string", "description": "The latest attempt's"}),
            "inbox_id": _nullable(_INT),
            "created_at": _TIME,
            "finished_at": _nullable(_TIME),
            "result": _nullable({"type": "object"}),
        },
    },
    "Summary": {
        "type": "object",
        "description": "The trace, compact: rules that fired first, the others folded",
        "required": ["verdict", "fired", "matched", "not_matched", "errors", "check"],
        "properties": {
            "verdict": _nullable(_STR),
            "fired": {"type": "array", "items": {"type": "object"}},
            "matched": {"type": "array", "items": {"type": "object"}},
            "not_matched": {"type": "array", "items": {"type": "object"}},
            "errors": {"type": "array"},
            "check": _nullable(
                {"type": "string", "description": "Why a link checker delivery was written"}
            ),
        },
    },
    "Event": {
        "type": "object",
        "required": [
            "id",
            "source",
            "delivery_id",
            "event_type",
            "received_at",
            "state",
            "outcome",
            "attempts",
            "objects",
            "summary",
        ],
        "properties": {
            "id": _INT,
            "source": {"enum": list(PLATFORMS)},
            "delivery_id": _STR,
            "event_type": _STR,
            "received_at": _TIME,
            "state": {"enum": ["pending", "processed", "failed"]},
            "outcome": {"enum": list(EVENT_OUTCOMES)},
            "processed_at": _nullable(_TIME),
            "attempts": {"type": "integer", "minimum": 0},
            "error": _nullable(_STR),
            "subject": _nullable(_STR),
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["ref", "role"],
                    "properties": {"ref": _STR, "role": {"enum": ["subject", "related"]}},
                },
            },
            "summary": _ref("Summary"),
            "trace": _nullable({"type": "object"}),
        },
    },
    "EventPage": {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "next_cursor": _nullable(
                {"type": "string", "description": "Pass as `cursor` for the next page"}
            ),
        },
    },
    "EventTrace": {
        "type": "object",
        "required": ["event", "actions"],
        "properties": {
            "event": _ref("Event"),
            "actions": {"type": "array", "items": _ref("Action")},
        },
    },
    "Timeline": {
        "type": "object",
        "required": ["object", "objects", "links", "events", "actions", "entries", "truncated"],
        "properties": {
            "object": _STR,
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["ref", "platform", "kind", "id"],
                    "properties": {
                        "ref": _STR,
                        "platform": {"enum": list(PLATFORMS)},
                        "kind": {"enum": list(OBJECT_KINDS)},
                        "id": _STR,
                    },
                },
            },
            "links": {"type": "array", "items": _ref("Link")},
            "events": {"type": "array", "items": _ref("Event")},
            "actions": {"type": "array", "items": _ref("Action")},
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at", "type"],
                    "properties": {
                        "at": _TIME,
                        "type": {"enum": ["event", "action", "action_finished", "link"]},
                    },
                },
            },
            "truncated": {"type": "boolean"},
        },
    },
}


def _get(summary: str, ok: dict[str, Any], *errors: int, params: list[Any] | None = None) -> Any:
    return {
        "summary": summary,
        "parameters": params or [],
        "responses": {"200": ok} | _errors(*errors),
    }


def document() -> dict[str, Any]:
    """The admin API's OpenAPI document."""
    event_params = [
        _param("source", "query", {"enum": list(PLATFORMS)}, "Sending platform"),
        _param("type", "query", _STR, "Event type, exactly"),
        _param(
            "object",
            "query",
            _STR,
            "A platform:kind:id ref, or a bare ID from either platform: events that name it",
        ),
        _param("outcome", "query", {"enum": list(EVENT_OUTCOMES)}, "What became of it"),
        _param("since", "query", _TIME, "Received at or after (ISO 8601)"),
        _param("until", "query", _TIME, "Received before (ISO 8601)"),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500}, "Page size"),
        _param("cursor", "query", _STR, "next_cursor of the previous page"),
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bridge admin API",
            "version": __version__,
            "description": "Links, the outbox and dead letters, events and object timelines."
            ' Exists only when admin.token is set; every error is JSON {"error": ...}.',
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/links": {
                "get": _get(
                    "List links",
                    _json(
                        {
                            "type": "object",
                            "required": ["links"],
                            "properties": {"links": {"type": "array", "items": _ref("Link")}},
                        },
                        "Links, oldest first",
                    ),
                    400,
                    params=[
                        _param("platform", "query", {"enum": list(PLATFORMS)}, "Either side's"),
                        _param("kind", "query", {"enum": list(OBJECT_KINDS)}, "Either side's"),
                        _param("id", "query", _STR, "Either side's ID"),
                        _LIMIT,
                        _OFFSET,
                    ],
                ),
                "post": {
                    "summary": "Add a link (created_by: operator)",
                    "requestBody": _LINK_BODY,
                    "responses": {
                        "200": _json(_ref("LinkPair"), "Already linked"),
                        "201": _json(_ref("LinkPair"), "Linked"),
                    }
                    | _errors(400, 415),
                },
                "delete": {
                    "summary": "Remove a link",
                    "requestBody": _LINK_BODY,
                    "responses": {"200": _json(_ref("LinkPair"), "Removed")}
                    | _errors(400, 404, 415),
                },
            },
            "/api/v1/outbox": {
                "get": _get(
                    "List actions",
                    _json(
                        {
                            "type": "object",
                            "required": ["actions"],
                            "properties": {"actions": {"type": "array", "items": _ref("Action")}},
                        },
                        "Actions, oldest first",
                    ),
                    400,
                    params=[
                        _param("state", "query", _STR, "Comma-separated states"),
                        _LIMIT,
                        _OFFSET,
                    ],
                )
            },
            "/api/v1/outbox/{id}": {
                "get": _get(
                    "One action", _json(_ref("Action"), "The action"), 400, 404, params=[_ID]
                )
            },
            "/api/v1/dead-letters": {
                "get": _get(
                    "List dead letters",
                    _json(
                        {
                            "type": "object",
                            "required": ["dead_letters"],
                            "properties": {
                                "dead_letters": {"type": "array", "items": _ref("Action")}
                            },
                        },
                        "Dead letters, oldest first",
                    ),
                    400,
                    params=[_LIMIT, _OFFSET],
                )
            },
            "/api/v1/dead-letters/{id}/replay": {
                "post": {
                    "summary": "Replay a dead letter (pending again, a fresh retry budget)",
                    "parameters": [_ID],
                    "responses": {"200": _json({"type": "object"}, "Pending")} | _errors(400, 404),
                }
            },
            "/api/v1/dead-letters/{id}/drop": {
                "post": {
                    "summary": "Drop a dead letter (skipped, dropped by an operator)",
                    "parameters": [_ID],
                    "responses": {"200": _json({"type": "object"}, "Skipped")} | _errors(400, 404),
                }
            },
            "/api/v1/events": {
                "get": _get(
                    "Search events, newest first",
                    _json(_ref("EventPage"), "One page of events"),
                    400,
                    params=event_params,
                )
            },
            "/api/v1/events/{id}": {
                "get": _get(
                    "One event: its trace, the objects it names, its actions",
                    _json(_ref("EventTrace"), "The event"),
                    400,
                    404,
                    params=[_ID],
                )
            },
            "/api/v1/objects/{platform}/{kind}/{id}": {
                "get": _get(
                    "An object's timeline across both platforms",
                    _json(_ref("Timeline"), "Events, actions and links, oldest first"),
                    400,
                    404,
                    params=[
                        _param("platform", "path", {"enum": list(PLATFORMS)}, "Platform"),
                        _param("kind", "path", {"enum": list(OBJECT_KINDS)}, "Kind"),
                        _param("id", "path", _STR, "The platform's ID"),
                    ],
                )
            },
            "/api/v1/openapi.json": {
                "get": _get("This document", _json({"type": "object"}, "OpenAPI 3.1"))
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
            "responses": {
                f"E{status}": _json(_ref("Error"), reason) for status, reason in _ERRORS.items()
            },
        },
    }
