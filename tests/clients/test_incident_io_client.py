"""The incident.io client against a real loopback server answering with the spec's examples."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.events import Action, IdempotencyKey, ObjectRef, RuleName, freeze
from bridge.metrics import Metrics
from bridge.platforms.base import InvalidAction, PlatformClient
from bridge.platforms.errors import Permanent, RateLimited, StateConflict, TargetMissing
from bridge.platforms.incident_io.client import IncidentIoClient
from bridge.platforms.incident_io.limits import LIMITS as INCIDENT_IO_LIMITS
from bridge.platforms.incident_io.models import Escalation, IncidentIoIncident
from tests.clients.conftest import (
    ALERT_SOURCE_CONFIG_ID,
    ALERT_SOURCE_TOKEN,
    INCIDENT_IO_TOKEN,
    RecordingServer,
    fast_limiter,
)
from tests.specs import load_spec, validate_query, validate_request

ESC_ID = "01G0J1EXE7AXZ2C93K61WBPYEH"


def example(method: str, template: str, status: str) -> dict[str, Any]:
    """The official example answer of an operation, as a mutable copy."""
    operation = load_spec("incident_io")["paths"][template][method.lower()]
    content = operation["responses"][status]["content"]["application/json"]
    return copy.deepcopy(content["example"])


def check_last(server: RecordingServer) -> str:
    """Validate the last recorded request against the official incident.io spec."""
    request = server.requests[-1]
    return validate_request(
        "incident_io", request.method, request.path, request.headers, request.json()
    )


def action(operation: str, target: ObjectRef | None, **params: Any) -> Action:
    return Action(
        operation=operation,  # type: ignore[arg-type]
        target=target,
        params=params,
        rule=RuleName("test"),
        idempotency_key=IdempotencyKey("rule:delivery-1"),
    )


async def test_cancel_escalation_matches_the_spec(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Cancel is a bodiless POST with the API key, answered 200 without a body."""
    server.reply(200)
    await incident_io.cancel_escalation(ESC_ID)
    assert check_last(server) == "/v2/escalations/{id}/actions/cancel"
    request = server.requests[-1]
    assert request.body == b""
    assert request.headers["Authorization"] == f"Bearer {INCIDENT_IO_TOKEN}"
    assert request.headers["Accept"] == "application/json"


async def test_respond_to_an_escalation_matches_the_spec_supplement(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Ack and snooze are JSON POSTs to `/v2/escalations/{id}/actions/respond` with the API
    key, valid against the operation that `supplement.json` adds to the spec; the 200 has
    no body. An ack with snooze details, a snooze without a time, a naive time or `nack`
    are refused before anything is sent."""
    server.reply(200)
    await incident_io.respond_escalation(ESC_ID, "ack")
    assert check_last(server) == "/v2/escalations/{id}/actions/respond"
    request = server.requests[-1]
    assert request.json() == {"response": "ack"}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {INCIDENT_IO_TOKEN}"

    until = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    server.reply(200)
    await incident_io.respond_escalation(ESC_ID, "snooze", snooze_until=until, reason="deploy")
    check_last(server)
    assert server.requests[-1].json() == {
        "response": "snooze",
        "snooze_details": {"snooze_until": "2031-05-04T03:02:01+00:00", "reason": "deploy"},
    }

    sent = len(server.requests)
    bad: list[tuple[Any, dict[str, Any], str]] = [
        ("ack", {"snooze_until": until}, "snooze only"),
        ("snooze", {}, "aware snooze_until"),
        ("snooze", {"snooze_until": until.replace(tzinfo=None)}, "aware snooze_until"),
        ("nack", {}, "'ack' or 'snooze'"),
    ]
    for response, kwargs, words in bad:
        with pytest.raises(InvalidAction, match=words):
            await incident_io.respond_escalation(ESC_ID, response, **kwargs)
    assert len(server.requests) == sent


async def test_acknowledge_escalation_responds_ack_and_a_closed_one_is_a_conflict(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """The `incident_io.acknowledge_escalation` action responds `ack` to its target and
    reports it acked; the 422 for an escalation that can no longer be acknowledged is a
    StateConflict (recorded as skipped, never retried)."""
    esc_ref = ObjectRef("incident_io", "escalation", ESC_ID)
    server.reply(200)
    result = await incident_io.perform(action("incident_io.acknowledge_escalation", esc_ref))
    assert (result.object_id, result.status) == (ESC_ID, "acked")
    assert check_last(server) == "/v2/escalations/{id}/actions/respond"
    assert server.requests[-1].path == f"/v2/escalations/{ESC_ID}/actions/respond"
    assert server.requests[-1].json() == {"response": "ack"}
    server.reply(
        422,
        {
            "type": "validation_error",
            "status": 422,
            "request_id": "r-2",
            "errors": [
                {
                    "code": "invalid_state",
                    "message": "Escalation is resolved and cannot be acknowledged",
                }
            ],
        },
    )
    with pytest.raises(StateConflict):
        await incident_io.perform(action("incident_io.acknowledge_escalation", esc_ref))
    with pytest.raises(InvalidAction, match="unknown parameter"):
        await incident_io.perform(
            action("incident_io.acknowledge_escalation", esc_ref, response="snooze")
        )


async def test_create_escalation_matches_the_spec(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Create sends the idempotency key, title and exactly one target, JSON, and parses 201."""
    server.reply(201, example("POST", "/v2/escalations", "201"))
    escalation = await incident_io.create_escalation(
        "key-1", "DB down", escalation_path_id="path1", description="details", incident_id="inc1"
    )
    assert check_last(server) == "/v2/escalations"
    request = server.requests[-1]
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {
        "idempotency_key": "key-1",
        "title": "DB down",
        "escalation_path_id": "path1",
        "description": "details",
        "incident_id": "inc1",
    }
    assert isinstance(escalation, Escalation)
    assert escalation.id
    assert escalation.status

    server.reply(201, example("POST", "/v2/escalations", "201"))
    await incident_io.create_escalation("key-2", "Page Bob", user_ids=["u1", "u2"])
    check_last(server)
    assert server.requests[-1].json()["user_ids"] == ["u1", "u2"]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"escalation_path_id": "p", "user_ids": ["u"]}, {"user_ids": []}, {"user_ids": "u1"}],
)
async def test_create_escalation_needs_exactly_one_target(
    server: RecordingServer, incident_io: IncidentIoClient, kwargs: dict[str, Any]
) -> None:
    """Neither or both of path / users (or an empty user list) is a ValueError, nothing sent."""
    with pytest.raises(ValueError, match="create_escalation"):
        await incident_io.create_escalation("key", "title", **kwargs)
    assert server.requests == []


async def test_reads_match_the_spec_and_parse(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """get_escalation, get_alert and get_incident parse the official example answers."""
    server.reply(200, example("GET", "/v2/escalations/{id}", "200"))
    escalation = await incident_io.get_escalation(ESC_ID)
    assert check_last(server) == "/v2/escalations/{id}"
    expected = example("GET", "/v2/escalations/{id}", "200")["escalation"]
    assert escalation.id == expected["id"]
    assert escalation.status == expected["status"]
    assert escalation.related_alert_ids == tuple(a["id"] for a in expected["related_alerts"])

    server.reply(200, example("GET", "/v2/alerts/{id}", "200"))
    alert = await incident_io.get_alert("al1")
    assert check_last(server) == "/v2/alerts/{id}"
    assert (
        alert.deduplication_key
        == example("GET", "/v2/alerts/{id}", "200")["alert"]["deduplication_key"]
    )

    server.reply(200, example("GET", "/v2/incidents/{id}", "200"))
    incident = await incident_io.get_incident("inc1")
    assert check_last(server) == "/v2/incidents/{id}"
    source = example("GET", "/v2/incidents/{id}", "200")["incident"]
    assert incident.status_category == source["incident_status"]["category"]
    assert incident.severity_name == source["severity"]["name"]


async def test_list_escalations_sends_filters_and_returns_the_cursor(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Filters go out as deepObject query params; the next cursor comes back, None at the end."""
    page = example("GET", "/v2/escalations", "200")
    page["pagination_meta"] = {"after": "cursor-2", "page_size": 10}
    server.reply(200, page)
    escalations, cursor = await incident_io.list_escalations(
        page_size=10, status={"one_of": ["triggered", "acked"]}, idempotency_key={"is": "k"}
    )
    assert check_last(server) == "/v2/escalations"
    assert server.requests[-1].query == (
        ("page_size", "10"),
        ("idempotency_key[is]", "k"),
        ("status[one_of]", "triggered"),
        ("status[one_of]", "acked"),
    )
    assert len(escalations) == len(page["escalations"])
    assert cursor == "cursor-2"

    server.reply(200, {"escalations": [], "pagination_meta": {"page_size": 10}})
    escalations, cursor = await incident_io.list_escalations(after="cursor-2")
    assert ("after", "cursor-2") in server.requests[-1].query
    assert (escalations, cursor) == ([], None)

    with pytest.raises(ValueError, match="unknown filter"):
        await incident_io.list_escalations(colour={"one_of": ["red"]})


async def test_alert_event_authenticates_with_the_source_secret(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Alert events go to the alert source's URL with its own secret, not the API key; 202."""
    server.reply(202, example("POST", "/v2/alert_events/http/{alert_source_config_id}", "202"))
    accepted = await incident_io.send_alert_event(
        ALERT_SOURCE_CONFIG_ID,
        ALERT_SOURCE_TOKEN,
        title="CPU high",
        status="firing",
        deduplication_key="rootly-alert-1",
        description="db-1",
        source_url="https://rootly.example/alerts/1",
        metadata={"team": ["db"]},
    )
    assert check_last(server) == "/v2/alert_events/http/{alert_source_config_id}"
    request = server.requests[-1]
    assert request.headers["Authorization"] == f"Bearer {ALERT_SOURCE_TOKEN}"
    assert request.json()["status"] == "firing"
    assert accepted.status == "success"
    with pytest.raises(ValueError, match="firing"):
        await incident_io.send_alert_event(
            ALERT_SOURCE_CONFIG_ID,
            ALERT_SOURCE_TOKEN,
            title="t",
            status="open",  # type: ignore[arg-type]
            deduplication_key="k",
        )


async def test_edit_incident_matches_the_spec(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Edit wraps the fields in `incident` beside `notify_incident_channel`; unknown fields
    are refused because incident.io would silently ignore them."""
    server.reply(200, example("POST", "/v2/incidents/{id}/actions/edit", "200"))
    incident = await incident_io.edit_incident("inc1", {"name": "New", "severity_id": "sev2"})
    assert isinstance(incident, IncidentIoIncident)
    assert check_last(server) == "/v2/incidents/{id}/actions/edit"
    assert server.requests[-1].json() == {
        "incident": {"name": "New", "severity_id": "sev2"},
        "notify_incident_channel": False,
    }
    with pytest.raises(ValueError, match="severity"):
        await incident_io.edit_incident("inc1", {"severity": "high"})


async def test_unknown_enum_values_and_fields_parse(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """New escalation statuses, status categories and fields are accepted, not rejected."""
    answer = example("GET", "/v2/escalations/{id}", "200")
    answer["escalation"]["status"] = "hibernating"
    answer["escalation"]["shiny_new_field"] = [1, 2]
    server.reply(200, answer)
    escalation = await incident_io.get_escalation(ESC_ID)
    assert escalation.status == "hibernating"
    assert escalation.raw["shiny_new_field"] == (1, 2)

    incident = example("GET", "/v2/incidents/{id}", "200")
    incident["incident"]["incident_status"]["category"] = "on_hold"
    server.reply(200, incident)
    flat = await incident_io.fetch(ObjectRef("incident_io", "incident", "inc1"))
    assert flat["status"] == "on_hold"
    assert flat["id"] == incident["incident"]["id"]


async def test_perform_dispatches_every_incident_io_operation(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Each `incident_io.*` operation maps to its endpoint; create uses the action's key."""
    assert isinstance(incident_io, PlatformClient)
    esc_ref = ObjectRef("incident_io", "escalation", ESC_ID)

    server.reply(200)
    result = await incident_io.perform(action("incident_io.cancel_escalation", esc_ref))
    assert (result.object_id, result.status) == (ESC_ID, "cancelled")
    check_last(server)

    created = example("POST", "/v2/escalations", "201")
    server.reply(201, created)
    result = await incident_io.perform(
        action("incident_io.create_escalation", None, title="Page", escalation_path_id="p1")
    )
    assert result.object_id == created["escalation"]["id"]
    assert server.requests[-1].json()["idempotency_key"] == "rule:delivery-1"
    check_last(server)

    server.reply(202, {"status": "success", "message": "ok", "deduplication_key": "d1"})
    result = await incident_io.perform(
        action(
            "incident_io.send_alert_event",
            None,
            title="t",
            status="resolved",
            deduplication_key="d1",
        )
    )
    assert result.status == "success"
    assert server.requests[-1].path == f"/v2/alert_events/http/{ALERT_SOURCE_CONFIG_ID}"
    check_last(server)

    server.reply(200, example("POST", "/v2/incidents/{id}/actions/edit", "200"))
    inc_ref = ObjectRef("incident_io", "incident", "inc1")
    result = await incident_io.perform(action("incident_io.edit_incident", inc_ref, summary="s"))
    assert result.status
    check_last(server)

    with pytest.raises(InvalidAction, match="unknown parameter"):
        await incident_io.perform(
            action("incident_io.create_escalation", None, title="t", path="p1")
        )
    with pytest.raises(InvalidAction, match="cannot perform"):
        await incident_io.perform(action("rootly.cancel_incident", None))


async def test_params_of_the_wrong_type_are_refused_before_any_request(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Params the spec types as strings but that hold an object, a list, a number or a
    boolean (a webhook field of another type rendered by a rule; frozen, as stored actions
    hold them) are `InvalidAction` naming the parameter and the type, and nothing is sent
    (an object title used to fail as TypeError "mappingproxy is not JSON serializable",
    retried as if transient); so is a `user_ids` that is not a list."""
    inc_ref = ObjectRef("incident_io", "incident", "inc1")
    bad = [
        (
            action("incident_io.create_escalation", None, title=freeze({"t": 1}), user_ids=["u"]),
            "parameter title must be a string, got an object",
        ),
        (
            action("incident_io.create_escalation", None, title="t", escalation_path_id=7),
            "parameter escalation_path_id must be a string, got a number",
        ),
        (
            action("incident_io.create_escalation", None, title="t", user_ids=5),
            "user_ids must be a non-empty list",
        ),
        (
            action(
                "incident_io.send_alert_event",
                None,
                title="t",
                status="firing",
                deduplication_key=freeze(["k"]),
            ),
            "parameter deduplication_key must be a string, got an array",
        ),
        (
            action("incident_io.edit_incident", inc_ref, name=False),
            "parameter name must be a string, got a boolean",
        ),
    ]
    for act, words in bad:
        with pytest.raises(InvalidAction, match=words):
            await incident_io.perform(act)
    assert server.requests == []


async def test_nested_params_are_sent_as_json_and_nan_is_refused(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """An alert event's metadata holding nested objects and lists (frozen, as stored
    actions hold them) is sent as plain JSON and matches the spec; metadata holding NaN
    or an infinity, which JSON cannot carry, is `InvalidAction` and nothing is sent."""
    metadata = {"rootly": {"alert": {"id": "a1", "labels": [{"k": "team", "v": "db"}]}}}
    server.reply(202, {"status": "success", "message": "ok", "deduplication_key": "d1"})
    await incident_io.perform(
        action(
            "incident_io.send_alert_event",
            None,
            title="t",
            status="firing",
            deduplication_key="d1",
            metadata=freeze(metadata),
        )
    )
    check_last(server)
    assert server.requests[-1].json()["metadata"] == metadata
    for number in (float("nan"), float("inf")):
        with pytest.raises(InvalidAction, match="cannot be sent as JSON"):
            await incident_io.perform(
                action(
                    "incident_io.send_alert_event",
                    None,
                    title="t",
                    status="firing",
                    deduplication_key="d2",
                    metadata=freeze({"load": [1.0, number]}),
                )
            )
    assert len(server.requests) == 1


async def test_escalation_that_cannot_be_cancelled_is_a_state_conflict(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """422 with code invalid_state (or words saying so) and 409 are StateConflict."""
    server.reply(
        422,
        {
            "type": "validation_error",
            "status": 422,
            "request_id": "r-1",
            "errors": [{"code": "invalid_state", "message": "Escalation is resolved"}],
        },
    )
    with pytest.raises(StateConflict) as caught:
        await incident_io.cancel_escalation(ESC_ID)
    assert caught.value.request_id == "r-1"
    server.reply(
        422,
        {"errors": [{"code": "unprocessable", "message": "Escalation cannot be cancelled"}]},
    )
    with pytest.raises(StateConflict):
        await incident_io.cancel_escalation(ESC_ID)
    server.reply(409, {"type": "conflict", "status": 409, "errors": []})
    with pytest.raises(StateConflict):
        await incident_io.cancel_escalation(ESC_ID)
    server.reply(
        422,
        {
            "errors": [
                {
                    "code": "is_required",
                    "message": "A severity is required",
                    "source": {"field": "severity_id"},
                }
            ]
        },
    )
    with pytest.raises(Permanent, match=r"A severity is required \(field severity_id\)"):
        await incident_io.edit_incident("inc1", {"name": "x"})


async def test_403_is_permanent_with_request_id_from_the_body(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """A 403 is Permanent and carries incident.io's message and body request_id."""
    server.reply(
        403,
        {
            "type": "authorization_error",
            "status": 403,
            "request_id": "8e3cc412",
            "errors": [{"code": "forbidden", "message": "API key lacks the escalations scope"}],
        },
    )
    with pytest.raises(Permanent) as caught:
        await incident_io.create_escalation("k", "t", user_ids=["u"])
    assert type(caught.value) is Permanent
    assert "lacks the escalations scope" in str(caught.value)
    assert "8e3cc412" in str(caught.value)


async def test_404_is_target_missing(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """A 404 on an escalation is TargetMissing."""
    server.reply(404, {"type": "not_found", "status": 404, "errors": [{"message": "Not found"}]})
    with pytest.raises(TargetMissing):
        await incident_io.get_escalation("nope")


async def test_429_with_retry_after_seconds(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Retry-After (seconds) wins over the reset header and the body."""
    server.reply(
        429,
        {"type": "too_many_requests", "rate_limit": {"retry_after": "2000-01-01T00:00:00Z"}},
        {"Retry-After": "7", "X-RateLimit-Reset": "4102444800"},
    )
    before = time.time()
    with pytest.raises(RateLimited) as caught:
        await incident_io.get_escalation(ESC_ID)
    assert before + 7 <= caught.value.retry_at <= time.time() + 7


async def test_429_with_only_the_body_retry_after(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Without headers, the body's rate_limit.retry_after (RFC 3339) sets the retry time."""
    server.reply(
        429,
        {
            "type": "too_many_requests",
            "status": 429,
            "request_id": "b839a403",
            "rate_limit": {
                "name": "k",
                "limit": 1200,
                "remaining": 0,
                "retry_after": "2100-01-01T00:00:10Z",
            },
            "errors": [{"code": "too_many_requests", "message": "Too many requests"}],
        },
    )
    with pytest.raises(RateLimited) as caught:
        await incident_io.cancel_escalation(ESC_ID)
    assert caught.value.retry_at == 4_102_444_810
    assert caught.value.request_id == "b839a403"


async def test_perform_send_alert_event_needs_a_configured_source(
    server: RecordingServer, metrics: Metrics
) -> None:
    """Without an alert source configured, send_alert_event actions fail clearly."""
    bare = IncidentIoClient(
        token=INCIDENT_IO_TOKEN,
        limiter=fast_limiter(INCIDENT_IO_LIMITS),
        metrics=metrics,
        base_url=server.url,
    )
    with pytest.raises(InvalidAction, match="no alert source"):
        await bare.perform(
            action(
                "incident_io.send_alert_event",
                None,
                title="t",
                status="firing",
                deduplication_key="d",
            )
        )


async def test_list_alerts_sends_page_size_and_filters_as_the_spec_declares(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """`GET /v2/alerts` always sends its required page_size; filters are deepObject params
    the spec declares; alerts and the next cursor come back."""
    page = example("GET", "/v2/alerts", "200")
    page["pagination_meta"] = {"after": "cursor-2", "page_size": 50}
    server.reply(200, page)
    alerts, cursor = await incident_io.list_alerts(
        page_size=50, created_at={"gte": ["2026-01-01"]}, deduplication_key={"is": "k"}
    )
    request = server.requests[-1]
    assert check_last(server) == "/v2/alerts"
    validate_query("incident_io", "GET", request.path, [name for name, _ in request.query])
    assert request.query == (
        ("page_size", "50"),
        ("created_at[gte]", "2026-01-01"),
        ("deduplication_key[is]", "k"),
    )
    assert [a.id for a in alerts] == [a["id"] for a in page["alerts"]]
    assert cursor == "cursor-2"
    with pytest.raises(ValueError, match="unknown filter"):
        await incident_io.list_alerts(idempotency_key={"is": "k"})


async def test_iter_escalations_follows_the_cursor_to_the_last_page(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """Paging: each page is one request with the previous page's cursor, until no cursor;
    the filters go out on every page."""
    first = example("GET", "/v2/escalations", "200")
    second = copy.deepcopy(first)
    second["escalations"][0]["id"] = "01SECONDPAGE00000000000000"
    first["pagination_meta"] = {"after": first["escalations"][-1]["id"], "page_size": 1}
    second["pagination_meta"] = {"page_size": 1}
    server.reply(200, first)
    server.reply(200, second)
    found = [
        e.id
        async for e in incident_io.iter_escalations(
            page_size=1, idempotency_key={"starts_with": ["rootly-incident-"]}
        )
    ]
    assert found == [first["escalations"][0]["id"], "01SECONDPAGE00000000000000"]
    assert len(server.requests) == 2
    second_query = dict(server.requests[1].query)
    assert second_query["after"] == first["escalations"][-1]["id"]
    assert second_query["idempotency_key[starts_with]"] == "rootly-incident-"
    for request in server.requests:
        validate_query("incident_io", "GET", request.path, [name for name, _ in request.query])
