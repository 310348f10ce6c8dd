"""The console over HTTP (no browser): sign-in and sessions, CSRF, every page, and bad input
answered with a 4xx HTML page, never a 5xx."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import pytest
from yarl import URL

from bridge.events import ObjectRef
from bridge.sandbox.stack import SandboxStack
from bridge.store.schema import HEAD
from tests.console.conftest import TOKEN, Operator, hidden

PAGES = [
    "/console/events",
    "/console/dead-letters",
    "/console/outbox",
    "/console/outbox?state=done",
    "/console/links",
    "/console/rules",
    "/console/health",
]


async def test_sign_in_exchanges_the_token_for_a_strict_expiring_cookie(
    stack: SandboxStack, operator: Operator
) -> None:
    """A page asked for without a session redirects to the sign-in form; the admin token
    signs in (303 to the page asked for) with a session cookie that is HttpOnly,
    SameSite=Strict, limited to /console/ and expiring; the token is in no cookie."""
    status, _, response = await operator.get("/console/outbox?state=dead")
    assert status == 303
    assert response.headers["Location"] == "/console/login?next=/console/outbox?state%3Ddead"
    _, form, _ = await operator.get(response.headers["Location"])
    assert hidden(form, "next") == "/console/outbox?state=dead"
    status, _, response = await operator.post(
        "/console/login",
        {"token": TOKEN, "login_csrf": hidden(form, "login_csrf"), "next": hidden(form, "next")},
    )
    assert status == 303
    assert response.headers["Location"] == "/console/outbox?state=dead"
    cookies = response.headers.getall("Set-Cookie")
    (session,) = [c for c in cookies if c.startswith("bridge_console=")]
    attributes = {part.strip().split("=")[0].lower() for part in session.split(";")[1:]}
    assert {"httponly", "samesite", "max-age", "path"} <= attributes
    assert "SameSite=Strict" in session
    assert "Max-Age=28800" in session
    assert "Path=/console/" in session
    assert all(TOKEN not in c for c in cookies)
    status, html, _ = await operator.get("/console/outbox?state=dead")
    assert status == 200
    assert "Sign out" in html


async def test_a_wrong_token_or_a_forged_sign_in_form_is_refused(
    operator: Operator,
) -> None:
    """A wrong token is a 401 page and no session; a sign-in POST without the form's own
    token (made by another page) is a 403 and no session."""
    status, _ = await operator.sign_in("not-the-token")
    assert status == 401
    status, html, _ = await operator.post(
        "/console/login", {"token": TOKEN, "login_csrf": "forged", "next": "/console/events"}
    )
    assert status == 403
    assert "expired or came from elsewhere" in html
    status, _, _ = await operator.get("/console/events")
    assert status == 303


async def test_sign_out_and_expiry_end_the_session(stack: SandboxStack, operator: Operator) -> None:
    """Signing out (a POST with the CSRF token) ends the session: its cookie no longer
    works even if replayed; and a session ends by itself after admin.session_minutes."""
    await operator.sign_in()
    cookie = operator.http.cookie_jar.filter_cookies(URL(operator.base + "/console/"))[
        "bridge_console"
    ].value
    status, _, response = await operator.post("/console/logout", {"csrf": await operator.csrf()})
    assert status == 303
    assert response.headers["Location"] == "/console/login?done=signed-out"
    status, _, _ = await operator.get("/console/events")
    assert status == 303
    status, _, _ = await operator.get("/console/events", cookies={"bridge_console": cookie})
    assert status == 303

    await operator.sign_in()
    assert (await operator.get("/console/events"))[0] == 200
    assert stack.bridge is not None
    stack.clock.advance(stack.bridge.settings.admin.session_minutes * 60 + 1)
    assert (await operator.get("/console/events"))[0] == 303


async def test_every_page_answers_for_a_signed_in_operator(
    stack: SandboxStack, operator: Operator
) -> None:
    """After a sandbox flow (an incident opened and cancelled), every page is 200 HTML with
    one main landmark, the console navigation and its security headers; the incident's
    timeline names both platforms' objects."""
    rootly = stack.sandbox.rootly
    incident = await rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
    await rootly.cancel_incident(incident["id"])
    await stack.settle()
    await operator.sign_in()
    ref = ObjectRef("rootly", "incident", incident["id"])
    for path in [
        *PAGES,
        f"/console/events?q={incident['id']}",
        f"/console/objects/rootly/incident/{incident['id']}",
        "/console/events/1",
    ]:
        status, html, response = await operator.get(path)
        assert status == 200, (path, html[:300])
        assert response.content_type == "text/html"
        assert html.count("<main") == 1
        assert '<nav aria-label="Console">' in html
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
    _, timeline, _ = await operator.get(f"/console/objects/rootly/incident/{incident['id']}")
    assert str(ref) in timeline
    assert "incident_io.create_escalation" in timeline
    assert "incident_io.cancel_escalation" in timeline
    assert "incident_io:escalation:" in timeline


async def test_every_post_needs_the_session_and_its_csrf_token(
    stack: SandboxStack, operator: Operator
) -> None:
    """A POST without a session is refused (403); with a session but without its CSRF
    token, with another token, or coming from another site (Origin or Sec-Fetch-Site) it is
    refused too, and nothing changes."""
    link = {"a": "rootly:incident:r-1", "b": "incident_io:escalation:e-1"}
    assert (await operator.post("/console/links/add", link))[0] == 403
    await operator.sign_in()
    csrf = await operator.csrf()
    assert (await operator.post("/console/links/add", link))[0] == 403
    assert (await operator.post("/console/links/add", {**link, "csrf": "x" * 64}))[0] == 403
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://[::1"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        status, html, _ = await operator.post(
            "/console/links/add", {**link, "csrf": csrf}, headers=headers
        )
        assert status == 403
        assert "came from another site" in html
    assert stack.bridge is not None
    assert await stack.bridge.store.linked([ObjectRef.parse(link["a"])]) == []
    status, _, _ = await operator.post("/console/links/add", {**link, "csrf": csrf})
    assert status == 303
    (row,) = await stack.bridge.store.linked([ObjectRef.parse(link["a"])])
    assert row.created_by == "operator"


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/console/events?limit=abc", 400, "limit must be an integer"),
        ("/console/events?q=two%20words", 400, "object must be"),
        ("/console/events?since=yesterday", 400, "since must be an ISO 8601 time"),
        ("/console/events?outcome=maybe", 400, "outcome must be one of"),
        ("/console/events/abc", 400, "event ID must be a number"),
        ("/console/events/0", 400, "event ID must be between"),
        ("/console/events/999999", 404, "no event 999999"),
        ("/console/events/tail?after=x", 400, "after must be a number"),
        ("/console/objects/jira/incident/1", 400, "is not"),
        ("/console/objects/rootly/incident/nothing-here", 404, "nothing is known"),
        ("/console/dead-letters/abc/replay", 400, "action ID must be a number"),
        ("/console/dead-letters/1/explode", 404, "no such operation"),
        ("/console/dead-letters/999/replay", 404, "is not a dead letter"),
        ("/console/dead-letters?offset=-1", 400, "offset must be between"),
        ("/console/outbox?state=frozen", 400, "state must be one of"),
        ("/console/links?q=jira:x:y", 400, "object:"),
        ("/console/links/confirm?op=add&a=x&b=y", 400, "first object"),
        ("/console/links/confirm?op=eat&a=rootly:incident:1&b=rootly:alert:2", 400, "op must"),
        ("/console/links/confirm?op=add&a=rootly:incident:1&b=rootly:incident:1", 400, "two"),
        ("/console/nowhere", 404, "no such page"),
        ("/console/static/secrets.txt", 404, "no such file"),
    ],
)
async def test_bad_input_is_a_4xx_html_page(
    operator: Operator, path: str, status: int, fragment: str
) -> None:
    """Every page given input it cannot use answers an HTML page with a 4xx saying what is
    wrong (never a 5xx, never JSON, never a traceback)."""
    await operator.sign_in()
    code, html, response = await operator.get(path)
    assert code == status, html[:300]
    assert response.content_type == "text/html"
    assert fragment in html
    assert "Traceback" not in html


@pytest.mark.parametrize(
    ("path", "form", "status", "fragment"),
    [
        ("/console/rules/dry-run", {"source": "jira", "body": "{}"}, 400, "source must be"),
        ("/console/rules/dry-run", {"source": "rootly", "body": "not json"}, 400, "Not a Rootly"),
        ("/console/links/add", {"a": "rootly:incident:1", "b": "nonsense"}, 400, "second object"),
        (
            "/console/links/remove",
            {"a": "rootly:incident:1", "b": "incident_io:escalation:2"},
            404,
            "no link between",
        ),
        ("/console/links/frob", {"a": "rootly:incident:1", "b": "rootly:alert:2"}, 404, "no such"),
        ("/console/dead-letters/12345/drop", {}, 404, "is not a dead letter"),
    ],
)
async def test_bad_forms_are_a_4xx_html_page(
    operator: Operator, path: str, form: dict[str, str], status: int, fragment: str
) -> None:
    """A form with values that cannot be used answers a 4xx HTML page saying why."""
    await operator.sign_in()
    form = {**form, "csrf": await operator.csrf()}
    code, html, response = await operator.post(path, form)
    assert code == status, html[:300]
    assert response.content_type == "text/html"
    assert fragment in html


async def test_wrong_methods_and_bodies_are_4xx_html(operator: Operator) -> None:
    """A method a page does not take is a 405 page with Allow; a POST that is not a form a
    415 page; a form larger than 2 MiB, announced or streamed without a length, a 413."""
    await operator.sign_in()
    async with operator.http.put(operator.base + "/console/events") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        assert response.content_type == "text/html"
    async with operator.http.post(
        operator.base + "/console/login", json={"token": TOKEN}, allow_redirects=False
    ) as response:
        assert response.status == 415
        assert response.content_type == "text/html"
    huge = b"body=" + b"x" * (3 * 1024 * 1024)

    async def streamed() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in (io.BytesIO(huge), streamed()):
        async with operator.http.post(
            operator.base + "/console/rules/dry-run", data=body, headers=form
        ) as response:
            assert response.status == 413
            assert response.content_type == "text/html"


async def test_dry_run_shows_what_explain_would(stack: SandboxStack, operator: Operator) -> None:
    """A pasted Rootly incident.cancelled webhook for an incident linked to an escalation
    is explained with the links in the store: the cancel of that escalation, by the
    cancellation rule; nothing is called."""
    incident = await stack.sandbox.rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
    (escalation,) = stack.sandbox.incident_io.state()["escalations"]
    calls = len(stack.sandbox.incident_io.received)
    await operator.sign_in()
    body = json.dumps(
        {
            "event": {"id": "evt-1", "type": "incident.cancelled", "issued_at": None},
            "data": {"id": incident["id"], "status": "cancelled"},
        }
    )
    status, html, _ = await operator.post(
        "/console/rules/dry-run",
        {"csrf": await operator.csrf(), "source": "rootly", "body": body},
    )
    assert status == 200
    assert f"incident_io.cancel_escalation incident_io:escalation:{escalation['id']}" in html
    assert "rootly-incident-cancelled-cancels-escalations" in html
    assert len(stack.sandbox.incident_io.received) == calls


async def test_health_shows_store_leader_limits_and_rejections(
    stack: SandboxStack, operator: Operator
) -> None:
    """The health page names the store and its schema, whether this replica leads, and
    counts webhook rejections (an unsigned delivery here) and rate-limit waits."""
    async with operator.http.post(
        stack.url + "/webhooks/rootly", data=b"{}", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 401
    await operator.sign_in()
    status, html, _ = await operator.get("/console/health")
    assert status == 200
    assert f"sqlite, schema version {HEAD}" in html
    assert "Leader (scheduled jobs, link checks)</dt><dd>yes" in html
    assert "<td>Rootly</td><td>missing_header</td><td>1</td>" in html
    assert "Waits for the client-side rate limiter" in html
