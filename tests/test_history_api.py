"""The admin API's history: events searched by any ID, an object's timeline across both
platforms, and the OpenAPI document checked against the routes and the real answers.

A real bridge (SQLite) wired to both simulators; the flows are a person's: open a Rootly
incident (incident.io is paged), cancel it (the page is cancelled).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_schema_validator import OAS31Validator

from bridge.history import compact_trace
from bridge.sandbox.common import Faults
from bridge.sandbox.stack import SandboxStack

TOKEN = "history-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SandboxStack]:
    """Both simulators and a bridge with the admin API; its link checker runs only when a
    test says so (as in tests/ha)."""
    async with SandboxStack(
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        overrides={
            "admin": {"token": TOKEN},
            "scheduler": {"reconcile_poll_seconds": 3600, "reconcile_seconds": 30},
        },
    ) as running:
        yield running


async def get(stack: SandboxStack, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(stack.url + path, headers=AUTH) as response,
    ):
        return response.status, await response.json()


def conforms(document: dict[str, Any], schema: str, body: Any) -> None:
    """`body` is valid against the document's component `schema` (refs resolved in it)."""
    OAS31Validator({"$ref": f"#/components/schemas/{schema}", **document}).validate(body)


async def incident_paged_then_cancelled(stack: SandboxStack) -> tuple[str, str]:
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
    (escalation,) = iio.state()["escalations"]
    await rootly.cancel_incident(incident["id"])
    await stack.settle()
    return str(incident["id"]), str(escalation["id"])


async def test_events_are_searched_by_either_platforms_id(stack: SandboxStack) -> None:
    """Events are listed newest first and found by a bare ID from either platform or by a
    full ref: the Rootly incident's ID finds its created and cancelled webhooks (each with
    its outcome and the rule that fired), the escalation's ID the incident.io webhooks about
    it; filters narrow, a cursor pages; every answer matches the OpenAPI document."""
    incident_id, escalation_id = await incident_paged_then_cancelled(stack)
    _, document = await get(stack, "/api/v1/openapi.json")

    status, page = await get(stack, f"/api/v1/events?object={incident_id}")
    assert status == 200
    conforms(document, "EventPage", page)
    assert [(e["event_type"], e["outcome"]) for e in page["events"]] == [
        ("incident.cancelled", "actions"),
        ("incident.created", "actions"),
    ]
    cancelled = page["events"][0]
    assert cancelled["subject"] == f"rootly:incident:{incident_id}"
    assert [f["rule"] for f in cancelled["summary"]["fired"]] == [
        "rootly-incident-cancelled-cancels-escalations"
    ]
    assert cancelled["summary"]["fired"][0]["actions"] == [
        {"do": "incident_io.cancel_escalation", "target": f"incident_io:escalation:{escalation_id}"}
    ]
    reasons = {r["reason"] for r in cancelled["summary"]["not_matched"]}
    assert reasons <= {"trigger mismatch", "condition false", "disabled"}

    _, by_ref = await get(stack, f"/api/v1/events?object=rootly:incident:{incident_id}")
    assert [e["id"] for e in by_ref["events"]] == [e["id"] for e in page["events"]]
    _, escalation = await get(stack, f"/api/v1/events?object={escalation_id}&source=incident_io")
    types = {e["event_type"] for e in escalation["events"]}
    assert "public_escalation.escalation_created_v1" in types
    assert all(e["source"] == "incident_io" for e in escalation["events"])
    _, only_created = await get(stack, f"/api/v1/events?object={incident_id}&type=incident.created")
    assert [e["event_type"] for e in only_created["events"]] == ["incident.created"]

    _, everything = await get(stack, "/api/v1/events")
    ids = [e["id"] for e in everything["events"]]
    assert ids == sorted(ids, reverse=True)
    paged: list[int] = []
    cursor = None
    for _ in range(len(ids) + 1):  # bounded: one page per event at most
        _, one = await get(
            stack, "/api/v1/events?limit=1" + (f"&cursor={cursor}" if cursor else "")
        )
        paged += [e["id"] for e in one["events"]]
        cursor = one["next_cursor"]
        if cursor is None:
            break
    assert paged == ids
    _, none = await get(stack, "/api/v1/events?since=2999-01-01T00:00:00Z")
    assert none == {"events": [], "next_cursor": None}


async def test_an_objects_timeline_shows_both_sides(stack: SandboxStack) -> None:
    """The Rootly incident's timeline holds the escalation linked to it, the webhooks of
    both platforms about either, the escalation's creation and its cancel with their
    attempts and outcomes, and the link, created by the rule; in time order; the answer
    matches the OpenAPI document. The escalation's timeline is the same story."""
    incident_id, escalation_id = await incident_paged_then_cancelled(stack)
    _, document = await get(stack, "/api/v1/openapi.json")
    status, timeline = await get(stack, f"/api/v1/objects/rootly/incident/{incident_id}")
    assert status == 200
    conforms(document, "Timeline", timeline)
    assert {o["ref"] for o in timeline["objects"]} == {
        f"rootly:incident:{incident_id}",
        f"incident_io:escalation:{escalation_id}",
    }
    actions = [
        (a["operation"], a["state"], a["attempts"], a["last_error"]) for a in timeline["actions"]
    ]
    assert actions == [
        ("incident_io.create_escalation", "done", 1, None),
        ("incident_io.cancel_escalation", "done", 1, None),
    ]
    sources = {(e["source"], e["event_type"]) for e in timeline["events"]}
    assert {
        ("rootly", "incident.created"),
        ("rootly", "incident.cancelled"),
        ("incident_io", "public_escalation.escalation_created_v1"),
    } <= sources
    (link,) = timeline["links"]
    assert link["created_by"] == "rule:rootly-incident-opens-escalation"
    times = [entry["at"] for entry in timeline["entries"]]
    assert times == sorted(times)
    _, other_side = await get(stack, f"/api/v1/objects/incident_io/escalation/{escalation_id}")
    assert [a["id"] for a in other_side["actions"]] == [a["id"] for a in timeline["actions"]]


async def test_an_action_applied_late_says_why(stack: SandboxStack) -> None:
    """A cancellation whose webhook was lost is healed by the link checker through a
    synthetic `check:` delivery; on the incident's timeline that event says why it exists
    (the object's state and what the linked objects still needed)."""
    rootly = stack.sandbox.rootly
    incident = await rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
    assert stack.bridge is not None
    await stack.bridge.checker.run_once()
    faults: Faults = rootly.faults
    faults.webhook_drop_rate = 1.0
    await rootly.cancel_incident(incident["id"])
    faults.webhook_drop_rate = 0.0
    await stack.settle()
    stack.advance_checks()
    assert await stack.bridge.checker.run_once() == 1
    await stack.settle()
    _, timeline = await get(stack, f"/api/v1/objects/rootly/incident/{incident['id']}")
    (late,) = [e for e in timeline["events"] if e["delivery_id"].startswith("check:")]
    reason = late["summary"]["check"]
    assert reason.startswith(f"the link checker found rootly:incident:{incident['id']} in state")
    assert "cancelled" in reason
    assert "incident_io.cancel_escalation incident_io:escalation:" in reason
    assert late["outcome"] == "actions"


def test_compact_trace_puts_what_fired_first() -> None:
    """The compact trace lists the rules that fired with their actions and links, then those
    that matched without effect (with why), then folds the rest; verdicts (echo, stale,
    skipped) are one line."""
    summary = compact_trace(
        {
            "rules": {
                "a": {"matched": False, "fired": False, "reason": "trigger mismatch"},
                "b": {
                    "matched": True,
                    "fired": True,
                    "reason": "fired",
                    "actions": [{"do": "rootly.cancel_incident", "target": "rootly:incident:1"}],
                    "links": ["add x <-> y"],
                },
                "c": {
                    "matched": False,
                    "fired": False,
                    "reason": "condition false",
                    "condition": {"index": 0, "detail": "new_status == 'acked' is false"},
                },
                "d": {"matched": True, "fired": False, "reason": "no targets", "notes": ["n"]},
            }
        }
    )
    assert summary["fired"] == [
        {
            "rule": "b",
            "actions": [{"do": "rootly.cancel_incident", "target": "rootly:incident:1"}],
            "links": ["add x <-> y"],
            "notes": [],
        }
    ]
    assert summary["matched"] == [
        {"rule": "d", "reason": "no targets", "detail": None, "notes": ["n"]}
    ]
    assert summary["not_matched"] == [
        {"rule": "a", "reason": "trigger mismatch", "detail": None},
        {
            "rule": "c",
            "reason": "condition false",
            "detail": "when[0]: new_status == 'acked' is false",
        },
    ]
    assert compact_trace({"echo": "status=cancelled by us"})["verdict"].startswith("echo")


async def test_openapi_document_describes_exactly_the_admin_routes(stack: SandboxStack) -> None:
    """/api/v1/openapi.json lists every admin route the application registers (path and
    method) and no other, and its schemas are valid JSON Schema."""
    status, document = await get(stack, "/api/v1/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert stack.bridge is not None
    registered = {
        (route.method, route.resource.canonical)
        for route in stack.bridge.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "*"
    }
    assert documented == registered
    for schema in document["components"]["schemas"].values():
        OAS31Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("source=jira", "source must be one of"),
        ("outcome=maybe", "outcome must be one of"),
        ("since=yesterday", "since must be an ISO 8601 time"),
        ("since=0001-01-01T00:00:00%2B01:00", "since must be an ISO 8601 time"),
        ("since=2030-01-02T00:00:00Z&until=2030-01-01T00:00:00Z", "since must be before until"),
        ("limit=0", "limit must be between 1 and 500"),
        ("limit=abc", "limit must be an integer"),
        ("cursor=-1", "cursor must be between"),
        ("object=two%20words", "object must be a platform:kind:id ref or an ID"),
        ("object=jira:issue:1", "object:"),
        ("type=" + "x" * 300, "type must be at most 255"),
    ],
)
async def test_bad_event_filters_are_400_with_the_reason(
    stack: SandboxStack, query: str, fragment: str
) -> None:
    """Every filter that cannot be used is a 400 whose JSON error says which and why."""
    status, body = await get(stack, f"/api/v1/events?{query}")
    assert status == 400
    assert fragment in body["error"]


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/api/v1/objects/jira/incident/1", 400, "is not '<platform>:<kind>:<id>'"),
        ("/api/v1/objects/rootly/ticket/1", 400, "is not '<platform>:<kind>:<id>'"),
        ("/api/v1/objects/rootly/incident/a%20b", 400, "is not '<platform>:<kind>:<id>'"),
        ("/api/v1/objects/rootly/incident/unknown", 404, "nothing is known about"),
        ("/api/v1/events/abc", 400, "integer"),
    ],
)
async def test_bad_object_refs_are_4xx_with_the_reason(
    stack: SandboxStack, path: str, status: int, fragment: str
) -> None:
    """An object that is not a ref is a 400; one nothing is known about a 404; both JSON."""
    code, body = await get(stack, path)
    assert code == status
    assert fragment in body["error"]
