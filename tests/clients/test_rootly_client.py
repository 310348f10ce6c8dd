"""The Rootly client against a real loopback server: every request checked against the spec."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bridge.events import Action, IdempotencyKey, ObjectRef, RuleName, freeze
from bridge.platforms.base import InvalidAction, PlatformClient
from bridge.platforms.errors import Permanent, RateLimited, StateConflict, TargetMissing
from bridge.platforms.rootly.client import RootlyClient
from bridge.platforms.rootly.models import (
    RootlyAlert,
    RootlyIncident,
    flatten_document,
    related_ids,
)
from tests.clients.conftest import ROOTLY_TOKEN, RecordingServer
from tests.specs import validate_query, validate_request, validate_response

JSONAPI = "application/vnd.api+json"
INCIDENT_ID = "a29f0733-c07d-42f9-8050-be42bce9b981"
ALERT_ID = "0c268d58-6448-46ff-af0c-3a9f255bd6c0"


def incident_doc(status: str = "started", **attributes: Any) -> dict[str, Any]:
    """A minimal `incident_response` as the spec documents it."""
    return {
        "data": {
            "id": INCIDENT_ID,
            "type": "incidents",
            "attributes": {
                "title": "Database down",
                "summary": "Primary is unreachable",
                "status": status,
                "created_at": "2025-06-20T12:01:31.398-07:00",
                "updated_at": "2025-06-20T12:01:31.398-07:00",
                **attributes,
            },
        }
    }


def alert_doc(status: str = "acknowledged", **attributes: Any) -> dict[str, Any]:
    """A minimal `alert_response` as the spec documents it."""
    return {
        "data": {
            "id": ALERT_ID,
            "type": "alerts",
            "attributes": {
                "short_id": "t8rgnt",
                "source": "api",
                "summary": "CPU high",
                "status": status,
                "created_at": "2025-03-26T23:17:33.222-07:00",
                "updated_at": "2025-03-26T23:17:45.230-07:00",
                **attributes,
            },
        }
    }


def action(operation: str, target: ObjectRef | None, **params: Any) -> Action:
    return Action(
        operation=operation,  # type: ignore[arg-type]
        target=target,
        params=params,
        rule=RuleName("test"),
        idempotency_key=IdempotencyKey("key-1"),
    )


def check_last(server: RecordingServer) -> str:
    """Validate the last recorded request against the official Rootly spec."""
    request = server.requests[-1]
    return validate_request("rootly", request.method, request.path, request.headers, request.json())


Call = Callable[[RootlyClient], Coroutine[Any, Any, Any]]

CALLS: list[tuple[str, Call, str, dict[str, Any]]] = [
    (
        "cancel",
        lambda c: c.cancel_incident(INCIDENT_ID, "duplicate"),
        "/v1/incidents/{id}/cancel",
        {"data": {"type": "incidents", "attributes": {"cancellation_message": "duplicate"}}},
    ),
    (
        "cancel-no-message",
        lambda c: c.cancel_incident(INCIDENT_ID),
        "/v1/incidents/{id}/cancel",
        {"data": {"type": "incidents", "attributes": {}}},
    ),
    (
        "update",
        lambda c: c.update_incident(INCIDENT_ID, {"title": "New", "severity_id": "sev1"}),
        "/v1/incidents/{id}",
        {"data": {"type": "incidents", "attributes": {"title": "New", "severity_id": "sev1"}}},
    ),
    (
        "restart",
        lambda c: c.restart_incident(INCIDENT_ID),
        "/v1/incidents/{id}/restart",
        {"data": {"type": "incidents", "attributes": {}}},
    ),
    (
        "resolve",
        lambda c: c.resolve_incident(INCIDENT_ID, "fixed"),
        "/v1/incidents/{id}/resolve",
        {"data": {"type": "incidents", "attributes": {"resolution_message": "fixed"}}},
    ),
    (
        "mitigate",
        lambda c: c.mitigate_incident(INCIDENT_ID, "failover"),
        "/v1/incidents/{id}/mitigate",
        {"data": {"type": "incidents", "attributes": {"mitigation_message": "failover"}}},
    ),
]


@pytest.mark.parametrize(
    ("call", "template", "body"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS]
)
async def test_incident_writes_match_the_spec(
    server: RecordingServer,
    rootly: RootlyClient,
    call: Call,
    template: str,
    body: dict[str, Any],
) -> None:
    """Each incident write is a PUT with the documented path, auth, JSON:API type and body."""
    response = incident_doc()
    validate_response("rootly", "PUT", template.replace("{id}", INCIDENT_ID), 200, response)
    server.reply(200, response, content_type=JSONAPI)
    incident = await call(rootly)
    assert isinstance(incident, RootlyIncident)
    assert incident.id == INCIDENT_ID
    assert check_last(server) == template
    request = server.requests[-1]
    assert request.method == "PUT"
    assert request.json() == body
    assert request.headers["Content-Type"] == JSONAPI
    assert request.headers["Accept"] == JSONAPI
    assert request.headers["Authorization"] == f"Bearer {ROOTLY_TOKEN}"
    assert request.headers["User-Agent"].startswith("bridge/")


async def test_acknowledge_alert_sends_no_body(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """POST /v1/alerts/{id}/acknowledge carries no body and no content type, as documented."""
    response = alert_doc()
    validate_response("rootly", "POST", f"/v1/alerts/{ALERT_ID}/acknowledge", 200, response)
    server.reply(200, response, content_type=JSONAPI)
    alert = await rootly.acknowledge_alert(ALERT_ID)
    assert (alert.id, alert.status) == (ALERT_ID, "acknowledged")
    assert check_last(server) == "/v1/alerts/{id}/acknowledge"
    assert server.requests[-1].body == b""
    assert "Content-Type" not in server.requests[-1].headers


async def test_resolve_alert_and_create_alert_match_the_spec(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """resolve_alert and create_alert send `alerts` documents the spec accepts; create is 201."""
    server.reply(200, alert_doc("resolved"), content_type=JSONAPI)
    resolved = await rootly.resolve_alert(ALERT_ID, "done", resolve_related_incidents=False)
    assert resolved.status == "resolved"
    assert check_last(server) == "/v1/alerts/{id}/resolve"
    assert server.requests[-1].json()["data"]["attributes"] == {
        "resolution_message": "done",
        "resolve_related_incidents": False,
    }

    server.reply(201, alert_doc("triggered"), content_type=JSONAPI)
    created = await rootly.create_alert(
        "CPU high",
        description="on db-1",
        status="triggered",
        deduplication_key="db-1-cpu",
        external_url="https://example.com/a/1",
        service_ids=["svc1"],
        labels={"team": "db", "sev": 2},
    )
    assert created.status == "triggered"
    assert check_last(server) == "/v1/alerts"
    sent = server.requests[-1].json()["data"]
    assert sent["type"] == "alerts"
    assert sent["attributes"]["labels"] == [
        {"key": "team", "value": "db"},
        {"key": "sev", "value": 2},
    ]


async def test_reads_ask_for_the_related_objects(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """get_incident includes alerts and get_alert includes incidents; IDs come from both."""
    incident = incident_doc(
        severity={
            "data": {
                "id": "sev1",
                "type": "severities",
                "attributes": {"name": "SEV1", "slug": "sev1"},
            }
        },
    )
    incident["data"]["relationships"] = {"alerts": {"data": [{"id": "al1", "type": "alerts"}]}}
    incident["included"] = [
        {"id": "al2", "type": "alerts", "attributes": {}},
        {"id": "u1", "type": "users", "attributes": {}},
    ]
    server.reply(200, incident, content_type=JSONAPI)
    got = await rootly.get_incident(INCIDENT_ID)
    assert check_last(server) == "/v1/incidents/{id}"
    assert server.requests[-1].query == (("include", "alerts"),)
    assert got.alert_ids == ("al1", "al2")
    assert (got.severity_id, got.severity_slug, got.severity_name) == ("sev1", "sev1", "SEV1")

    server.reply(200, alert_doc(incidents=[{"id": "inc1", "title": "x"}]), content_type=JSONAPI)
    alert = await rootly.get_alert(ALERT_ID)
    assert check_last(server) == "/v1/alerts/{id}"
    assert server.requests[-1].query == (("include", "incidents"),)
    assert alert.incident_ids == ("inc1",)


async def test_unknown_status_and_extra_fields_are_tolerated(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """A status value the spec does not list and fields it does not know still parse."""
    server.reply(200, incident_doc("paused_for_review", brand_new_field={"x": 1}))
    incident = await rootly.get_incident(INCIDENT_ID)
    assert incident.status == "paused_for_review"
    assert incident.raw["data"]["attributes"]["brand_new_field"]["x"] == 1
    with pytest.raises(TypeError):
        incident.raw["data"]["id"] = "other"


def test_flatten_document_gives_id_and_attributes() -> None:
    """JSON:API documents flatten to the attributes plus the resource ID."""
    doc = incident_doc()
    flat = flatten_document(doc)
    assert flat["id"] == INCIDENT_ID
    assert flat["title"] == "Database down"
    assert "attributes" not in flat
    assert related_ids(doc, "alerts", "alerts") == ()


async def test_perform_dispatches_every_rootly_operation(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """Each `rootly.*` operation maps to its endpoint with the action's target and params."""
    incident_ref = ObjectRef("rootly", "incident", INCIDENT_ID)
    alert_ref = ObjectRef("rootly", "alert", ALERT_ID)
    cases = [
        (
            action("rootly.cancel_incident", incident_ref, cancellation_message="dup"),
            "cancelled",
            "/cancel",
        ),
        (action("rootly.update_incident", incident_ref, title="t"), "started", ""),
        (action("rootly.restart_incident", incident_ref), "started", "/restart"),
        (action("rootly.resolve_incident", incident_ref), "resolved", "/resolve"),
        (
            action("rootly.mitigate_incident", incident_ref, mitigation_message="m"),
            "mitigated",
            "/mitigate",
        ),
    ]
    assert isinstance(rootly, PlatformClient)
    for act, status, suffix in cases:
        server.reply(200, incident_doc(status), content_type=JSONAPI)
        result = await rootly.perform(act)
        assert (result.object_id, result.status) == (INCIDENT_ID, status)
        assert server.requests[-1].path == f"/v1/incidents/{INCIDENT_ID}{suffix}"
        check_last(server)
    server.reply(200, alert_doc("acknowledged"), content_type=JSONAPI)
    result = await rootly.perform(action("rootly.acknowledge_alert", alert_ref))
    assert result.status == "acknowledged"
    server.reply(200, alert_doc("resolved"), content_type=JSONAPI)
    result = await rootly.perform(
        action("rootly.resolve_alert", alert_ref, resolution_message="ok")
    )
    assert result.status == "resolved"
    check_last(server)


async def test_perform_refuses_bad_actions_before_any_request(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """Unknown params, unknown attributes, wrong targets and foreign operations are
    `InvalidAction` (a ValueError) with a clear message, and nothing is sent."""
    incident_ref = ObjectRef("rootly", "incident", INCIDENT_ID)
    bad = [
        (action("rootly.cancel_incident", incident_ref, reason="x"), "unknown parameter"),
        (action("rootly.update_incident", incident_ref), "non-empty"),
        (action("rootly.update_incident", incident_ref, titel="x"), "titel"),
        (action("rootly.acknowledge_alert", incident_ref), "rootly:alert"),
        (action("rootly.cancel_incident", None), "needs a target"),
        (action("incident_io.cancel_escalation", None), "cannot perform"),
    ]
    for act, words in bad:
        with pytest.raises(InvalidAction, match=words):
            await rootly.perform(act)
    assert server.requests == []


async def test_params_of_the_wrong_type_are_refused_before_any_request(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """Params the spec types as strings but that a rule rendered from a webhook field of
    another type (an object, a list, a number, a boolean; frozen, as stored actions hold
    them) are `InvalidAction` naming the parameter and the type, and nothing is sent: the
    platform would refuse them every time (they used to fail later, as a TypeError while
    the body was serialised, retried as if transient)."""
    incident_ref = ObjectRef("rootly", "incident", INCIDENT_ID)
    alert_ref = ObjectRef("rootly", "alert", "alert-1")
    bad = [
        (
            action("rootly.update_incident", incident_ref, title=freeze({"text": "x"})),
            "parameter title must be a string, got an object",
        ),
        (
            action("rootly.update_incident", incident_ref, summary=42, private=True),
            "parameter summary must be a string, got a number",
        ),
        (
            action("rootly.cancel_incident", incident_ref, cancellation_message=freeze(["a"])),
            "parameter cancellation_message must be a string, got an array",
        ),
        (
            action("rootly.resolve_alert", alert_ref, resolution_message=True),
            "parameter resolution_message must be a string, got a boolean",
        ),
    ]
    for act, words in bad:
        with pytest.raises(InvalidAction, match=words):
            await rootly.perform(act)
    assert server.requests == []


async def test_fetch_returns_flat_current_state(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """fetch() reads the object and flattens it with `id`, `status` and related IDs."""
    server.reply(200, alert_doc("open", incidents=[{"id": "inc9"}]), content_type=JSONAPI)
    flat = await rootly.fetch(ObjectRef("rootly", "alert", ALERT_ID))
    assert flat["id"] == ALERT_ID
    assert flat["status"] == "open"
    assert flat["incident_ids"] == ["inc9"]
    with pytest.raises(InvalidAction):
        await rootly.fetch(ObjectRef("rootly", "escalation", "e1"))


async def test_open_alert_acknowledge_is_a_state_conflict(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """Rootly's documented 400 "cannot acknowledge open alert" is a StateConflict."""
    body = {"errors": [{"title": "cannot acknowledge open alert", "status": "400"}]}
    validate_response("rootly", "POST", f"/v1/alerts/{ALERT_ID}/acknowledge", 400, body)
    server.reply(400, body, content_type=JSONAPI)
    with pytest.raises(StateConflict, match="cannot acknowledge open alert"):
        await rootly.acknowledge_alert(ALERT_ID)


@pytest.mark.parametrize(
    ("status", "errors", "expected"),
    [
        (422, [{"title": "Incident is already cancelled", "status": "422"}], StateConflict),
        (409, [{"title": "Conflict", "status": "409"}], StateConflict),
        (422, [{"title": "Title can't be blank", "status": "422"}], Permanent),
        (422, [{"title": "Slug has already been taken", "status": "422"}], Permanent),
        (400, [{"title": "Bad request", "status": "400", "detail": "invalid JSON"}], Permanent),
    ],
)
async def test_4xx_classification(
    server: RecordingServer,
    rootly: RootlyClient,
    status: int,
    errors: list[dict[str, str]],
    expected: type[Exception],
) -> None:
    """State-machine refusals are StateConflict; validation errors stay Permanent."""
    server.reply(status, {"errors": errors}, content_type=JSONAPI)
    with pytest.raises(expected) as caught:
        await rootly.cancel_incident(INCIDENT_ID)
    assert type(caught.value) is expected
    assert errors[0]["title"] in str(caught.value)


async def test_rootly_429_uses_the_reset_header(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """A 429 with X-RateLimit-Reset (epoch seconds) and an {"error"} body is RateLimited
    until that time, with Rootly's message."""
    reset = 4_102_444_800  # 2100-01-01
    server.reply(
        429,
        {"error": "Rate limit exceeded. Try again later."},
        {"X-RateLimit-Reset": str(reset), "X-Request-Id": "req-42"},
    )
    with pytest.raises(RateLimited) as caught:
        await rootly.resolve_incident(INCIDENT_ID)
    assert caught.value.retry_at == reset
    assert caught.value.request_id == "req-42"
    assert "Rate limit exceeded" in str(caught.value)


async def test_404_is_target_missing(server: RecordingServer, rootly: RootlyClient) -> None:
    """A 404 means the object is gone: TargetMissing, with the platform's words."""
    server.reply(404, {"errors": [{"title": "Record not found", "status": "404"}]})
    with pytest.raises(TargetMissing, match="Record not found"):
        await rootly.get_incident("gone")


async def test_403_is_permanent_with_message_and_request_id(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """A 403 is Permanent and names Rootly's message and the X-Request-Id header."""
    server.reply(
        403,
        {"errors": [{"title": "Forbidden", "status": "403", "detail": "missing scope"}]},
        {"X-Request-Id": "abc-123"},
    )
    with pytest.raises(Permanent) as caught:
        await rootly.restart_incident(INCIDENT_ID)
    text = str(caught.value)
    assert "Forbidden - missing scope" in text
    assert "abc-123" in text
    assert caught.value.status == 403
    assert ROOTLY_TOKEN not in text


async def test_ids_are_escaped_in_paths(server: RecordingServer, rootly: RootlyClient) -> None:
    """An ID cannot change the path it is put into."""
    server.reply(200, alert_doc())
    await rootly.get_alert("../incidents/x")
    assert server.requests[-1].raw_path.startswith("/v1/alerts/..%2Fincidents%2Fx?")


def test_alert_model_tolerates_missing_fields() -> None:
    """An alert without status or incidents parses with defaults."""
    alert = RootlyAlert.from_document({"data": {"id": 7, "type": "alerts"}})
    assert (alert.id, alert.status, alert.incident_ids) == ("7", "unknown", ())


async def test_list_incidents_pages_newest_first_since_a_date(
    server: RecordingServer, rootly: RootlyClient
) -> None:
    """`GET /v1/incidents` with page[number], page[size], sort and the created_at filter,
    all declared by the spec; the answer's meta gives the next page and the total."""
    item = {
        "id": "inc-1",
        "type": "incidents",
        "attributes": {
            "title": "DB",
            "status": "started",
            "created_at": "2026-01-02T10:00:00Z",
            "updated_at": "2026-01-02T10:00:00Z",
        },
    }
    links = {"self": "s", "first": "f", "prev": None, "next": "n", "last": "l"}
    page1 = {
        "data": [item],
        "links": links,
        "meta": {
            "current_page": 1,
            "next_page": 2,
            "prev_page": None,
            "total_count": 2,
            "total_pages": 2,
        },
    }
    page2 = {
        "data": [{**item, "id": "inc-2"}],
        "links": {**links, "next": None},
        "meta": {
            "current_page": 2,
            "next_page": None,
            "prev_page": 1,
            "total_count": 2,
            "total_pages": 2,
        },
    }
    validate_response("rootly", "GET", "/v1/incidents", 200, page1)
    server.reply(200, page1, content_type=JSONAPI)
    server.reply(200, page2, content_type=JSONAPI)
    found = [(i.id, total) async for i, total in rootly.iter_incidents(created_since="2026-01-01")]
    assert found == [("inc-1", 2), ("inc-2", 2)]
    for request in server.requests:
        validate_query("rootly", "GET", request.path, [name for name, _ in request.query])
    assert dict(server.requests[0].query) == {
        "page[number]": "1",
        "page[size]": "50",
        "sort": "-created_at",
        "filter[created_at][gte]": "2026-01-01",
    }
    assert dict(server.requests[1].query)["page[number]"] == "2"
