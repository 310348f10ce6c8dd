"""The incident.io simulator against the official OpenAPI spec and DESIGN section 2."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from bridge.sandbox import Sandbox
from tests.sandbox.conftest import Answer, Receiver, call
from tests.specs import validate_response, validate_webhook


async def inc(
    http: aiohttp.ClientSession,
    sb: Sandbox,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
) -> Answer:
    """An authenticated call; 2xx answers are checked against the spec, errors by shape."""
    answer = await call(
        http, method, sb.incident_io_url + path, token=token or sb.incident_io_api_key, body=body
    )
    if answer.status < 300:
        validate_response("incident_io", method, path, answer.status, answer.body)
    else:
        assert set(answer.body) >= {"type", "status", "request_id", "errors"}
        assert answer.body["status"] == answer.status
        assert all({"code", "message"} <= set(e) for e in answer.body["errors"])
    return answer


def verify_incident_io(sb: Sandbox, receiver: Receiver) -> list[dict[str, Any]]:
    """Verify every incident.io webhook with standardwebhooks and validate its payload."""
    hook = Webhook(sb.incident_io_webhook_secret)
    bodies = []
    for got in receiver.of("incident_io"):
        headers = {k.lower(): v for k, v in got.headers.items()}
        assert headers["webhook-id"].startswith("msg_")
        payload = hook.verify(got.raw, headers)
        validate_webhook(payload)
        bodies.append(payload)
    return bodies


def escalation_body(key: str, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "title": "Page", "user_ids": ["U1"], **extra}


async def test_auth(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    """No key, a wrong key, or the alert-source token on the API: 401 authentication_error."""
    for token in ("wrong", sandbox.alert_source_token):
        answer = await inc(http, sandbox, "GET", "/v2/escalations/x", token=token)
        assert answer.status == 401
        assert answer.body["type"] == "authentication_error"
    bare = await call(http, "GET", sandbox.incident_io_url + "/v2/escalations/x")
    assert bare.body["errors"][0]["code"] == "missing_authorization_material"


async def test_escalation_create_idempotent_and_cancel(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A reused idempotency key returns the same escalation; cancel twice is a no-op."""
    first = await inc(http, sandbox, "POST", "/v2/escalations", escalation_body("k1"))
    assert first.status == 201
    again = await inc(http, sandbox, "POST", "/v2/escalations", escalation_body("k1"))
    eid = first.body["escalation"]["id"]
    assert again.body["escalation"]["id"] == eid
    both = await inc(
        http, sandbox, "POST", "/v2/escalations", escalation_body("k2", escalation_path_id="p")
    )
    assert both.status == 422
    missing = await inc(http, sandbox, "POST", "/v2/escalations", {"title": "t"})
    assert missing.status == 422
    assert missing.body["errors"][0]["source"] == {"field": "idempotency_key"}
    for _ in range(2):
        cancel = await call(
            http,
            "POST",
            f"{sandbox.incident_io_url}/v2/escalations/{eid}/actions/cancel",
            token=sandbox.incident_io_api_key,
        )
        assert cancel.status == 200
        assert cancel.body is None
    got = await inc(http, sandbox, "GET", f"/v2/escalations/{eid}")
    assert got.body["escalation"]["status"] == "cancelled"
    await sandbox.wait_idle(5)
    bodies = verify_incident_io(sandbox, receiver)
    assert [b["event_type"] for b in bodies] == [
        "public_escalation.escalation_created_v1",
        "public_escalation.escalation_status_updated_v1",
    ]
    change = bodies[1]["public_escalation.escalation_status_updated_v1"]
    assert change["actor"]["api_key"]["id"] == sandbox.incident_io_api_key_id
    assert (change["previous_status"], change["new_status"]) == ("triggered", "cancelled")


async def test_cancel_resolved_or_expired_is_invalid_state(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    """Resolved and expired escalations cannot be cancelled: 422 invalid_state."""
    sim = sandbox.incident_io
    for n, finish in enumerate((sim.resolve_escalation, sim.expire_escalation)):
        made = await inc(http, sandbox, "POST", "/v2/escalations", escalation_body(f"e{n}"))
        eid = made.body["escalation"]["id"]
        await finish(eid)
        refused = await inc(http, sandbox, "POST", f"/v2/escalations/{eid}/actions/cancel")
        assert refused.status == 422
        assert refused.body["errors"][0]["code"] == "invalid_state"
        assert "cannot be cancelled" in refused.body["errors"][0]["message"]
    assert (await inc(http, sandbox, "GET", "/v2/escalations/nope")).status == 404


async def test_list_filters_and_pagination(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    """Listing pages with `after` and filters by status and idempotency key prefix."""
    ids = []
    for n in range(3):
        made = await inc(http, sandbox, "POST", "/v2/escalations", escalation_body(f"team:{n}"))
        ids.append(made.body["escalation"]["id"])
    await sandbox.incident_io.ack_escalation(ids[0])
    page = await inc(http, sandbox, "GET", "/v2/escalations?page_size=2")
    assert [e["id"] for e in page.body["escalations"]] == [ids[2], ids[1]]
    after = page.body["pagination_meta"]["after"]
    rest = await inc(http, sandbox, "GET", f"/v2/escalations?page_size=2&after={after}")
    assert [e["id"] for e in rest.body["escalations"]] == [ids[0]]
    assert "after" not in rest.body["pagination_meta"]
    acked = await inc(http, sandbox, "GET", "/v2/escalations?status[one_of]=acked")
    assert [e["id"] for e in acked.body["escalations"]] == [ids[0]]
    keyed = await inc(http, sandbox, "GET", "/v2/escalations?idempotency_key[starts_with]=team:")
    assert len(keyed.body["escalations"]) == 3
    assert (await inc(http, sandbox, "GET", "/v2/escalations?page_size=99")).status == 422
    assert (await inc(http, sandbox, "GET", "/v2/escalations?color[is]=x")).status == 422


async def test_alert_source_flow(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Firing creates alert + escalation once; a human acks; resolved resolves what pages."""
    path = f"/v2/alert_events/http/{sandbox.alert_source_config_id}"
    event = {
        "title": "CPU",
        "status": "firing",
        "deduplication_key": "d1",
        "description": "hot",
        "metadata": {"a": 1},
    }
    refused = await inc(http, sandbox, "POST", path, event)  # API key is not the source token
    assert refused.status == 401
    for _ in range(2):
        ok = await inc(http, sandbox, "POST", path, event, token=sandbox.alert_source_token)
        assert ok.status == 202
        assert ok.body["deduplication_key"] == "d1"
    second = await inc(
        http,
        sandbox,
        "POST",
        path,
        {**event, "deduplication_key": "d2"},
        token=sandbox.alert_source_token,
    )
    assert second.status == 202
    escalations = sandbox.incident_io.state()["escalations"]
    assert len(escalations) == 2
    first_esc = next(e for e in escalations if e["related_alerts"][0]["deduplication_key"] == "d1")
    assert first_esc["status"] == "triggered"
    await call(
        http,
        "POST",
        f"{sandbox.incident_io_url}/_sandbox/escalations/{first_esc['id']}/ack",
        body={"user": "Alice"},
    )
    for key in ("d1", "d2"):
        await inc(
            http,
            sandbox,
            "POST",
            path,
            {**event, "status": "resolved", "deduplication_key": key},
            token=sandbox.alert_source_token,
        )
    alert_id = first_esc["related_alerts"][0]["id"]
    alert = await inc(http, sandbox, "GET", f"/v2/alerts/{alert_id}")
    assert alert.body["alert"]["status"] == "resolved"
    states = {e["id"]: e["status"] for e in sandbox.incident_io.state()["escalations"]}
    assert states[first_esc["id"]] == "acked"
    assert sorted(states.values()) == ["acked", "resolved"]
    bad = await inc(
        http,
        sandbox,
        "POST",
        path,
        {"title": "x", "status": "maybe"},
        token=sandbox.alert_source_token,
    )
    assert bad.status == 422
    await sandbox.wait_idle(5)
    bodies = verify_incident_io(sandbox, receiver)
    types = [b["event_type"] for b in bodies]
    assert types.count("public_alert.alert_created_v1") == 2
    assert types.count("public_escalation.escalation_created_v1") == 2
    assert types.count("public_alert.alert_resolved_v1") == 2
    changes = [
        b["public_escalation.escalation_status_updated_v1"]
        for b in bodies
        if b["event_type"] == "public_escalation.escalation_status_updated_v1"
    ]
    assert changes[0]["actor"]["user"]["name"] == "Alice"
    assert changes[0]["new_status"] == "acked"
    assert "alert" in changes[1]["actor"]
    assert changes[1]["new_status"] == "resolved"


async def test_incidents(sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    """Incidents: human creation and status change, API edit; every webhook matches the spec."""
    sim = sandbox.incident_io
    made = await call(
        http,
        "POST",
        sandbox.incident_io_url + "/_sandbox/incidents",
        body={"name": "Outage", "severity": "Major"},
    )
    assert made.status == 201
    iid = made.body["id"]
    got = await inc(http, sandbox, "GET", f"/v2/incidents/{iid}")
    assert got.body["incident"]["incident_status"]["category"] == "live"
    closed = next(s for s in sim.statuses if s["category"] == "closed")
    edit = {
        "incident": {"name": "Big outage", "incident_status_id": closed["id"]},
        "notify_incident_channel": False,
    }
    edited = await inc(http, sandbox, "POST", f"/v2/incidents/{iid}/actions/edit", edit)
    assert edited.body["incident"]["name"] == "Big outage"
    bad = await inc(
        http,
        sandbox,
        "POST",
        f"/v2/incidents/{iid}/actions/edit",
        {"incident": {"severity_id": "nope"}, "notify_incident_channel": True},
    )
    assert bad.status == 422
    await call(
        http,
        "POST",
        f"{sandbox.incident_io_url}/_sandbox/incidents/{iid}/status",
        body={"status": "triage", "message": "back"},
    )
    unknown = await call(
        http,
        "POST",
        f"{sandbox.incident_io_url}/_sandbox/incidents/{iid}/edit",
        body={"colour": "red"},
    )
    assert unknown.status == 400
    await sim.edit_incident(iid, summary="s", severity="Critical")
    await sandbox.wait_idle(5)
    types = [b["event_type"] for b in verify_incident_io(sandbox, receiver)]
    assert types == [
        "public_incident.incident_created_v2",
        "public_incident.incident_updated_v2",
        "public_incident.incident_status_updated_v2",
        "public_incident.incident_updated_v2",
        "public_incident.incident_status_updated_v2",
        "public_incident.incident_updated_v2",
    ]


async def test_private_webhooks(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    """With private webhooks on, the private_* twins carry only the object ID."""
    async with Sandbox(seed=1, private_incident_io_webhooks=True) as sb:
        sb.set_webhook_targets(rootly=None, incident_io=f"{receiver.url}/incident_io")
        made = await inc(http, sb, "POST", "/v2/escalations", escalation_body("p"))
        await sb.incident_io.ack_escalation(made.body["escalation"]["id"])
        await sb.incident_io.create_incident("x")
        await sb.wait_idle(5)
        bodies = verify_incident_io(sb, receiver)
    assert [b["event_type"] for b in bodies] == [
        "private_escalation.escalation_created_v1",
        "private_escalation.escalation_status_updated_v1",
        "private_incident.incident_created_v2",
    ]
    assert bodies[0]["private_escalation.escalation_created_v1"] == {
        "id": made.body["escalation"]["id"]
    }


async def test_rate_limit(http: aiohttp.ClientSession) -> None:
    """An empty token bucket answers 429 with Retry-After and a rate_limit body."""
    async with Sandbox(incident_io_bucket_capacity=2, incident_io_refill_per_second=0.5) as sb:
        answers = [
            await call(
                http, "GET", sb.incident_io_url + "/v2/escalations", token=sb.incident_io_api_key
            )
            for _ in range(3)
        ]
    assert [a.status for a in answers] == [200, 200, 429]
    limited = answers[2]
    assert limited.headers["Retry-After"] == "2"
    assert limited.body["type"] == "too_many_requests"
    assert set(limited.body["rate_limit"]) == {"name", "limit", "remaining", "retry_after"}
    assert limited.body["errors"][0]["code"] == "too_many_requests"


async def test_escalation_creates_have_a_limit_of_their_own_inside_the_keys(
    http: aiohttp.ClientSession,
) -> None:
    """`POST /v2/escalations` counts against its own limit (here 3/min) and the key's: the
    fourth create is refused with the escalation limit named, while other requests of the
    key still pass. Every answer names the binding limit first in `X-RateLimit-Limit`, with
    its remaining, used and reset, as incident.io documents."""
    async with Sandbox(incident_io_escalation_create_per_minute=3) as sb:
        url, key = sb.incident_io_url, sb.incident_io_api_key
        path_id = sb.incident_io.default_escalation_path_id
        creates = [
            await call(
                http,
                "POST",
                url + "/v2/escalations",
                token=key,
                body={"idempotency_key": f"k{n}", "title": "t", "escalation_path_id": path_id},
            )
            for n in range(4)
        ]
        listed = await call(http, "GET", url + "/v2/escalations", token=key)
    assert [a.status for a in creates] == [201, 201, 201, 429]
    assert creates[0].headers["X-RateLimit-Limit"] == "3, 1200;window=60, 3;window=60"
    assert [a.headers["X-RateLimit-Remaining"] for a in creates] == ["2", "1", "0", "0"]
    assert [a.headers["X-RateLimit-Used"] for a in creates[:3]] == ["1", "2", "3"]
    now = time.time()
    assert now < int(creates[2].headers["X-RateLimit-Reset"]) <= now + 21
    limited = creates[3]
    assert limited.body["rate_limit"]["name"] == "escalation create"
    assert limited.body["rate_limit"]["limit"] == 3
    assert 1 <= int(limited.headers["Retry-After"]) <= 20
    assert listed.status == 200
    assert listed.headers["X-RateLimit-Limit"] == "1200, 1200;window=60"
    # The refused create took nothing from the key (which refills at 20/s meanwhile).
    assert 1196 <= int(listed.headers["X-RateLimit-Remaining"]) < 1200


async def test_list_escalations_by_exact_idempotency_key(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    """`idempotency_key[is]` finds the one escalation made with that key (the spec's
    operators for it are `is` and `starts_with`); `one_of` is not one of them."""
    made = await inc(http, sandbox, "POST", "/v2/escalations", escalation_body("rootly-incident-1"))
    await inc(http, sandbox, "POST", "/v2/escalations", escalation_body("rootly-incident-10"))
    exact = await inc(http, sandbox, "GET", "/v2/escalations?idempotency_key[is]=rootly-incident-1")
    assert [e["id"] for e in exact.body["escalations"]] == [made.body["escalation"]["id"]]
    assert (
        await inc(http, sandbox, "GET", "/v2/escalations?idempotency_key[one_of]=x")
    ).status == (422)


async def test_list_alerts_filters_and_pages(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    """`GET /v2/alerts` (spec-valid answers): newest first, `after` pages, filters by exact
    deduplication key, status and creation time; page_size is required, as in the spec."""
    source = f"/v2/alert_events/http/{sandbox.alert_source_config_id}"
    for key in ("rootly-alert-a", "rootly-alert-b", "datadog-1"):
        event = {"title": key, "status": "firing", "deduplication_key": key}
        assert (
            await inc(http, sandbox, "POST", source, event, token=sandbox.alert_source_token)
        ).status == 202
    resolved = {"title": "x", "status": "resolved", "deduplication_key": "datadog-1"}
    await inc(http, sandbox, "POST", source, resolved, token=sandbox.alert_source_token)
    page = await inc(http, sandbox, "GET", "/v2/alerts?page_size=2")
    keys = [a["deduplication_key"] for a in page.body["alerts"]]
    assert keys == ["datadog-1", "rootly-alert-b"]
    after = page.body["pagination_meta"]["after"]
    rest = await inc(http, sandbox, "GET", f"/v2/alerts?page_size=2&after={after}")
    assert [a["deduplication_key"] for a in rest.body["alerts"]] == ["rootly-alert-a"]
    one = await inc(
        http, sandbox, "GET", "/v2/alerts?page_size=5&deduplication_key[is]=rootly-alert-a"
    )
    assert [a["deduplication_key"] for a in one.body["alerts"]] == ["rootly-alert-a"]
    firing = await inc(http, sandbox, "GET", "/v2/alerts?page_size=5&status[one_of]=firing")
    assert len(firing.body["alerts"]) == 2
    later = await inc(http, sandbox, "GET", "/v2/alerts?page_size=5&created_at[gte]=2999-01-01")
    assert later.body["alerts"] == []
    today = await inc(http, sandbox, "GET", "/v2/alerts?page_size=5&created_at[gte]=2000-01-01")
    assert len(today.body["alerts"]) == 3
    assert (await inc(http, sandbox, "GET", "/v2/alerts")).status == 422
    assert (
        await inc(http, sandbox, "GET", "/v2/alerts?page_size=5&deduplication_key[starts_with]=r")
    ).status == 422


async def test_identity_reports_the_keys_roles(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    """GET /v1/identity (what `bridge doctor` reads) answers per the spec with the roles
    the simulator was given, and refuses a wrong key."""
    answer = await inc(http, sandbox, "GET", "/v1/identity")
    assert answer.status == 200
    assert "escalation_creator" in answer.body["identity"]["roles"]
    sandbox.incident_io.api_key_roles = ["viewer"]
    answer = await inc(http, sandbox, "GET", "/v1/identity")
    assert answer.body["identity"]["roles"] == ["viewer"]
    assert (await inc(http, sandbox, "GET", "/v1/identity", token="wrong")).status == 401


async def test_respond_acks_and_snoozes_as_the_api_key(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """`POST /v2/escalations/{id}/actions/respond` (the spec supplement's operation): `ack`
    moves a paging escalation to acked, attributed to the API key in the webhook, and is a
    no-op when acked already; `snooze` needs a future `snooze_until`; `nack` and an
    escalation that can no longer be acknowledged are 422; every webhook matches the spec."""
    sim = sandbox.incident_io
    made = await inc(http, sandbox, "POST", "/v2/escalations", escalation_body("r1"))
    eid = made.body["escalation"]["id"]
    path = f"/v2/escalations/{eid}/actions/respond"
    snooze = {"response": "snooze", "snooze_details": {"snooze_until": "2999-01-01T00:00:00Z"}}
    assert (await inc(http, sandbox, "POST", path, snooze)).status == 200
    assert sim.get_escalation(eid)["status"] == "snoozed"
    assert sim.snoozes[eid][0].startswith("2999-01-01T00:00:00")
    for _ in range(2):
        acked = await inc(http, sandbox, "POST", path, {"response": "ack"})
        assert (acked.status, acked.body) == (200, None)
    assert sim.get_escalation(eid)["status"] == "acked"
    refused = [
        {"response": "nack"},
        {"response": "maybe"},
        {"response": "ack", "snooze_details": snooze["snooze_details"]},
        {"response": "snooze"},
        {"response": "snooze", "snooze_details": {"snooze_until": "2001-01-01T00:00:00Z"}},
        {"response": "ack", "extra": 1},
    ]
    for body in refused:
        answer = await inc(http, sandbox, "POST", path, body)
        assert answer.status == 422, body
    assert (await inc(http, sandbox, "POST", path, snooze)).body["errors"][0][
        "code"
    ] == "invalid_state"
    other = (await inc(http, sandbox, "POST", "/v2/escalations", escalation_body("r2"))).body
    await sim.resolve_escalation(other["escalation"]["id"])
    closed = await inc(
        http,
        sandbox,
        "POST",
        f"/v2/escalations/{other['escalation']['id']}/actions/respond",
        {"response": "ack"},
    )
    assert closed.status == 422
    assert closed.body["errors"][0]["code"] == "invalid_state"
    assert "cannot be acknowledged" in closed.body["errors"][0]["message"]
    assert (
        await inc(http, sandbox, "POST", "/v2/escalations/nope/actions/respond", snooze)
    ).status == 404
    await sandbox.wait_idle(5)
    changes = [
        b["public_escalation.escalation_status_updated_v1"]
        for b in verify_incident_io(sandbox, receiver)
        if b["event_type"] == "public_escalation.escalation_status_updated_v1"
        and b["public_escalation.escalation_status_updated_v1"]["escalation"]["id"] == eid
    ]
    assert [(c["previous_status"], c["new_status"]) for c in changes] == [
        ("triggered", "snoozed"),
        ("snoozed", "acked"),
    ]
    assert all(c["actor"]["api_key"]["id"] == sandbox.incident_io_api_key_id for c in changes)


async def test_an_alert_source_resolving_an_alert(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """`POST /_sandbox/alerts/{id}/resolve` is the alert's source reporting it resolved: the
    alert is resolved (`alert_resolved_v1`) with the escalation it opened; again is a
    no-op; an unknown alert is 404."""
    source = f"/v2/alert_events/http/{sandbox.alert_source_config_id}"
    event = {"title": "CPU", "status": "firing", "deduplication_key": "d1"}
    await inc(http, sandbox, "POST", source, event, token=sandbox.alert_source_token)
    (alert,) = sandbox.incident_io.state()["alerts"]
    for _ in range(2):
        answer = await call(
            http, "POST", f"{sandbox.incident_io_url}/_sandbox/alerts/{alert['id']}/resolve"
        )
        assert (answer.status, answer.body["status"]) == (200, "resolved")
    missing = await call(http, "POST", f"{sandbox.incident_io_url}/_sandbox/alerts/no/resolve")
    assert missing.status == 404
    (escalation,) = sandbox.incident_io.state()["escalations"]
    assert escalation["status"] == "resolved"
    await sandbox.wait_idle(5)
    types = [b["event_type"] for b in verify_incident_io(sandbox, receiver)]
    assert types.count("public_alert.alert_resolved_v1") == 1
