"""The Rootly simulator against the official swagger and DESIGN section 1."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import aiohttp

from bridge.sandbox import Sandbox
from tests.sandbox.conftest import Answer, Receiver, call
from tests.specs import load_spec, validate_response, validate_schema

JSONAPI = "application/vnd.api+json"


async def rootly(
    http: aiohttp.ClientSession, sb: Sandbox, method: str, path: str, body: Any = None
) -> Answer:
    """An authenticated JSON:API call whose answer is checked against the spec."""
    answer = await call(
        http,
        method,
        sb.rootly_url + path,
        token=sb.rootly_api_token,
        body=body,
        content_type=JSONAPI,
    )
    check(method, path, answer)
    return answer


def check(method: str, path: str, answer: Answer) -> None:
    """Validate a Rootly answer: documented statuses by operation, others as errors_list."""
    assert answer.headers["Content-Type"].startswith(JSONAPI) or answer.status == 429
    try:
        validate_response("rootly", method, path, answer.status, answer.body)
    except AssertionError as exc:
        if "status not documented" not in str(exc):
            raise
        schema = load_spec("rootly")["components"]["schemas"]["errors_list"]
        validate_schema("rootly", schema, answer.body, f"{method} {path} {answer.status}")


def verify_rootly(sb: Sandbox, receiver: Receiver) -> list[dict[str, Any]]:
    """Check every Rootly webhook's signature and envelope; return the bodies."""
    bodies = []
    for got in receiver.of("rootly"):
        header = got.headers["X-Rootly-Signature"]
        match = re.fullmatch(r"t=(\d+),\s*v1=([0-9a-f]{64})", header)
        assert match, header
        expected = hmac.new(
            sb.rootly_webhook_secret.encode(), match.group(1).encode() + got.raw, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(expected, match.group(2))
        assert got.headers["Content-Type"] == "application/json"
        body = got.body
        assert set(body) == {"event", "data"}
        assert set(body["event"]) == {"id", "type", "issued_at"}
        assert isinstance(body["data"]["id"], str)
        assert "attributes" not in body["data"]
        bodies.append(body)
    return bodies


async def test_auth_required(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    """Missing or wrong bearer tokens get a 401 JSON:API error."""
    for token in (None, "wrong"):
        answer = await call(http, "GET", sandbox.rootly_url + "/v1/incidents/x", token=token)
        assert answer.status == 401
        check("GET", "/v1/incidents/x", answer)
        assert answer.body["errors"][0]["status"] == "401"


async def test_incident_state_machine(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Human and API changes walk the status machine, reject bad moves, and emit webhooks."""
    created = await call(
        http,
        "POST",
        sandbox.rootly_url + "/_sandbox/incidents",
        body={"title": "DB down", "severity": "sev1"},
    )
    assert created.status == 201
    iid = created.body["id"]
    path = f"/v1/incidents/{iid}"
    got = await rootly(http, sandbox, "GET", path + "?include=alerts")
    assert got.body["data"]["attributes"]["status"] == "started"
    upd = await rootly(
        http,
        sandbox,
        "PUT",
        path,
        {"data": {"type": "incidents", "attributes": {"title": "DB very down", "summary": "s"}}},
    )
    assert upd.body["data"]["attributes"]["title"] == "DB very down"
    mit = await rootly(
        http, sandbox, "PUT", path + "/mitigate", {"data": {"type": "incidents", "attributes": {}}}
    )
    assert mit.body["data"]["attributes"]["mitigated_at"]
    res = await rootly(
        http,
        sandbox,
        "PUT",
        path + "/resolve",
        {"data": {"type": "incidents", "attributes": {"resolution_message": "ok"}}},
    )
    assert res.body["data"]["attributes"]["status"] == "resolved"
    bad = await rootly(
        http, sandbox, "PUT", path + "/cancel", {"data": {"type": "incidents", "attributes": {}}}
    )
    assert bad.status == 422
    assert "cannot be cancelled" in bad.body["errors"][0]["detail"]
    rs = await rootly(http, sandbox, "PUT", path + "/restart", {"data": {"type": "incidents"}})
    attrs = rs.body["data"]["attributes"]
    assert attrs["status"] == "started"
    assert attrs["resolved_at"] is None
    cancel_body = {"data": {"type": "incidents", "attributes": {"cancellation_message": "dup"}}}
    ok = await rootly(http, sandbox, "PUT", path + "/cancel", cancel_body)
    assert ok.body["data"]["attributes"]["cancellation_message"] == "dup"
    again = await rootly(http, sandbox, "PUT", path + "/cancel", cancel_body)
    assert again.status == 422
    assert "already cancelled" in again.body["errors"][0]["detail"]
    missing = await rootly(http, sandbox, "GET", "/v1/incidents/nope")
    assert missing.status == 404
    await sandbox.wait_idle(5)
    bodies = verify_rootly(sandbox, receiver)
    assert [b["event"]["type"] for b in bodies] == [
        "incident.created",
        "incident.updated",
        "incident.mitigated",
        "incident.resolved",
        "incident.updated",
        "incident.cancelled",
    ]
    assert bodies[-1]["data"]["status"] == "cancelled"
    assert bodies[0]["data"]["severity"]["slug"] == "sev1"


async def test_status_update_via_put_and_no_change(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """PUT status=mitigated emits incident.mitigated; an unchanged PUT emits nothing."""
    inc = await sandbox.rootly.create_incident("x")
    path = f"/v1/incidents/{inc['id']}"
    body = {"data": {"type": "incidents", "attributes": {"status": "mitigated"}}}
    first = await rootly(http, sandbox, "PUT", path, body)
    assert first.body["data"]["attributes"]["mitigated_at"]
    await rootly(http, sandbox, "PUT", path, body)
    sev = await rootly(
        http,
        sandbox,
        "PUT",
        path,
        {"data": {"type": "incidents", "attributes": {"severity_id": "x"}}},
    )
    assert sev.status == 422
    await sandbox.wait_idle(5)
    assert receiver.types("rootly") == ["incident.created", "incident.mitigated"]


async def test_alerts(sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    """Alerts: create (201), attach, include, ack rules (open -> 400), idempotent resolve."""
    inc = await sandbox.rootly.create_incident("x")
    made = await rootly(
        http,
        sandbox,
        "POST",
        "/v1/alerts",
        {"data": {"type": "alerts", "attributes": {"summary": "CPU high"}}},
    )
    assert made.status == 201
    aid = made.body["data"]["id"]
    assert made.body["data"]["attributes"]["status"] == "triggered"
    await rootly(
        http,
        sandbox,
        "PUT",
        f"/v1/incidents/{inc['id']}",
        {"data": {"type": "incidents", "attributes": {"alert_ids": [aid]}}},
    )
    got = await rootly(http, sandbox, "GET", f"/v1/alerts/{aid}?include=incidents")
    assert [i["id"] for i in got.body["included"]] == [inc["id"]]
    with_alerts = await rootly(http, sandbox, "GET", f"/v1/incidents/{inc['id']}?include=alerts")
    assert [a["id"] for a in with_alerts.body["included"]] == [aid]
    for _ in range(2):
        ack = await rootly(http, sandbox, "POST", f"/v1/alerts/{aid}/acknowledge")
        assert ack.status == 200
        assert ack.body["data"]["attributes"]["status"] == "acknowledged"
    opened = await sandbox.rootly.create_alert("quiet", status="open")
    refused = await rootly(http, sandbox, "POST", f"/v1/alerts/{opened['id']}/acknowledge")
    assert refused.status == 400
    assert refused.body["errors"][0]["detail"] == "cannot acknowledge open alert"
    for _ in range(2):
        res = await rootly(http, sandbox, "POST", f"/v1/alerts/{aid}/resolve")
        assert res.body["data"]["attributes"]["status"] == "resolved"
    assert (await rootly(http, sandbox, "POST", "/v1/alerts/nope/resolve")).status == 404
    invalid = await rootly(
        http, sandbox, "POST", "/v1/alerts", {"data": {"type": "alerts", "attributes": {}}}
    )
    assert invalid.status == 422
    await sandbox.wait_idle(5)
    bodies = verify_rootly(sandbox, receiver)
    alert_events = [b for b in bodies if b["event"]["type"] == "alert.created"]
    assert len(alert_events) == 2
    assert alert_events[0]["data"]["status"] == "triggered"
    # One `alert.updated` per change of state (the repeated ack and resolve change nothing),
    # the flat alert with its current status, like `alert.created`.
    updates = [b["data"] for b in bodies if b["event"]["type"] == "alert.updated"]
    assert [(u["id"], u["status"]) for u in updates] == [
        (aid, "acknowledged"),
        (aid, "resolved"),
    ]
    assert updates[1]["incident_ids"] == [inc["id"]]
    assert set(updates[1]) == set(alert_events[0]["data"])


async def test_people_acknowledge_and_resolve_alerts_and_incidents(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """The control API acts as a person: acknowledging or resolving an alert sends
    `alert.updated`; acknowledging an incident (status acknowledged, `acknowledged_at`
    set) and editing its title, summary or severity send `incident.updated`, once per
    change; an incident acknowledged already or closed cannot be acknowledged (422)."""
    sim = sandbox.rootly
    incident = await sim.create_incident("Checkout down", severity="sev2")
    alert = await sim.create_alert("5xx", incident_id=incident["id"])
    base = f"{sandbox.rootly_url}/_sandbox"
    acked = await call(http, "POST", f"{base}/alerts/{alert['id']}/acknowledge")
    assert acked.body["status"] == "acknowledged"
    await call(http, "POST", f"{base}/alerts/{alert['id']}/resolve")
    answer = await call(http, "POST", f"{base}/incidents/{incident['id']}/acknowledge")
    assert answer.status == 200
    assert answer.body["status"] == "acknowledged"
    assert answer.body["acknowledged_at"]
    again = await call(http, "POST", f"{base}/incidents/{incident['id']}/acknowledge")
    assert again.status == 422
    edit = {"title": "Checkout degraded", "summary": "cards fail", "severity": "sev1"}
    edited = await call(http, "POST", f"{base}/incidents/{incident['id']}/edit", body=edit)
    assert edited.status == 200
    assert (edited.body["title"], edited.body["summary"]) == ("Checkout degraded", "cards fail")
    assert edited.body["severity"]["slug"] == "sev1"
    await sim.edit_incident(incident["id"], title="Checkout degraded")  # no change
    bad = await call(http, "POST", f"{base}/incidents/{incident['id']}/edit", body={"x": 1})
    assert bad.status == 400
    await sim.resolve_incident(incident["id"])
    refused = await call(http, "POST", f"{base}/incidents/{incident['id']}/acknowledge")
    assert refused.status == 422
    await sandbox.wait_idle(5)
    bodies = verify_rootly(sandbox, receiver)
    assert [b["event"]["type"] for b in bodies] == [
        "incident.created",
        "alert.created",
        "alert.updated",
        "alert.updated",
        "incident.updated",
        "incident.updated",
        "incident.resolved",
    ]
    assert [b["data"]["status"] for b in bodies[2:4]] == ["acknowledged", "resolved"]
    assert bodies[4]["data"]["status"] == "acknowledged"
    assert bodies[4]["data"]["acknowledged_at"]
    assert bodies[5]["data"]["title"] == "Checkout degraded"


async def test_content_type_and_bad_json(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    """Bodies must be application/vnd.api+json (415) and valid JSON (400)."""
    inc = await sandbox.rootly.create_incident("x")
    url = f"{sandbox.rootly_url}/v1/incidents/{inc['id']}"
    body = {"data": {"type": "incidents", "attributes": {"title": "y"}}}
    wrong = await call(http, "PUT", url, token=sandbox.rootly_api_token, body=body)
    assert wrong.status == 415
    headers = {"Authorization": f"Bearer {sandbox.rootly_api_token}", "Content-Type": JSONAPI}
    async with http.put(url, data="{nope", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json(content_type=None))["errors"][0]["status"] == "400"


async def test_rate_limit(http: aiohttp.ClientSession) -> None:
    """Over the per-minute window: 429, X-RateLimit-* headers, no Retry-After."""
    async with Sandbox(rootly_rate_limit_per_minute=2) as sb:
        url = sb.rootly_url + "/v1/incidents/none"
        first = await call(http, "GET", url, token=sb.rootly_api_token)
        assert first.headers["X-RateLimit-Remaining"] == "1"
        await call(http, "GET", url, token=sb.rootly_api_token)
        limited = await call(http, "GET", url, token=sb.rootly_api_token)
        assert limited.status == 429
        assert limited.body == {"error": "Rate limit exceeded"}
        assert "Retry-After" not in limited.headers
        assert limited.headers["X-RateLimit-Limit"] == "2"
        assert int(limited.headers["X-RateLimit-Reset"]) % 60 == 0


async def test_list_incidents_pages_and_filters_by_creation(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    """`GET /v1/incidents` answers a spec-valid `incident_list`: pages with meta and links,
    newest first with sort=-created_at, filtered by filter[created_at][gte]."""
    made = [(await sandbox.rootly.create_incident(f"incident {n}"))["id"] for n in range(3)]
    first = await rootly(http, sandbox, "GET", "/v1/incidents?page[size]=2&sort=-created_at")
    assert first.status == 200
    assert [i["id"] for i in first.body["data"]] == [made[2], made[1]]
    assert first.body["meta"]["next_page"] == 2
    assert first.body["meta"]["total_count"] == 3
    second = await rootly(
        http, sandbox, "GET", "/v1/incidents?page[size]=2&page[number]=2&sort=-created_at"
    )
    assert [i["id"] for i in second.body["data"]] == [made[0]]
    assert second.body["meta"]["next_page"] is None
    none = await rootly(http, sandbox, "GET", "/v1/incidents?filter[created_at][gte]=2999-01-01")
    assert none.body["data"] == [] and none.body["meta"]["total_count"] == 0
    refused = await rootly(http, sandbox, "GET", "/v1/incidents?filter[title]=x")
    assert refused.status == 400
