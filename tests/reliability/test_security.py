"""Security: admin auth, replays, stale signatures, body limits, secrets kept out of logs,
and nothing test-only or admin-only switched on by default.

Every test runs its own bridge subprocess (about 3 s to start); the module takes about 30 s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import yarl

from bridge.sandbox import Sandbox
from tests.reliability.conftest import BridgeFactory
from tests.reliability.harness import (
    WEBHOOK_PATHS,
    Delivery,
    SignedSender,
    Upstream,
    escalations_by_key,
    incident_io_delivery,
    new_admin_token,
    rootly_delivery,
    store_snapshot,
    wait_until,
)

ADMIN_ROUTES = [
    ("GET", "/api/v1/links"),
    ("POST", "/api/v1/links"),
    ("DELETE", "/api/v1/links"),
    ("GET", "/api/v1/outbox"),
    ("GET", "/api/v1/outbox/1"),
    ("GET", "/api/v1/dead-letters"),
    ("POST", "/api/v1/dead-letters/1/replay"),
    ("POST", "/api/v1/dead-letters/1/drop"),
    ("GET", "/api/v1/events/1"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/objects/rootly/incident/inc-1"),
    ("GET", "/api/v1/openapi.json"),
]


async def test_admin_api_refuses_missing_wrong_and_empty_tokens(
    bridge_factory: BridgeFactory,
) -> None:
    """Proves that every admin route answers 401 (with WWW-Authenticate) without a bearer
    token, with an empty one or another scheme, and 403 with a wrong one (including the
    right token with a suffix, a prefix of it, and the platforms' own credentials), while
    the right token gets through; and that no answer echoes a token."""
    upstream = Upstream.unreachable()
    token = new_admin_token()
    bridge = bridge_factory(upstream, admin_token=token)
    bridge.start()
    await bridge.wait_ready()
    unauthenticated = [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        f"Basic {token}",
        token,
        f"Token {token}",
    ]
    wrong = [
        "Bearer wrong",
        f"Bearer {token}x",
        f"Bearer {token[:-1]}",
        f"Bearer {token.upper()}",
        f"Bearer {upstream.rootly_api_token}",
        f"Bearer {upstream.incident_io_api_key}",
    ]
    bodies: list[str] = []
    async with aiohttp.ClientSession() as session:
        for method, path in ADMIN_ROUTES:
            for header in unauthenticated:
                headers = {} if header is None else {"Authorization": header}
                async with session.request(method, bridge.url + path, headers=headers) as response:
                    bodies.append(await response.text())
                    assert response.status == 401, (method, path, header, response.status)
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
            for header in wrong:
                async with session.request(
                    method, bridge.url + path, headers={"Authorization": header}
                ) as response:
                    bodies.append(await response.text())
                    assert response.status == 403, (method, path, header, response.status)
        async with session.get(
            bridge.url + "/api/v1/links", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200
    for body in bodies:
        for secret in [token, *upstream.secret_values()]:
            assert secret not in body


async def test_unknown_paths_answer_json_and_api_paths_ask_for_the_token(
    bridge_factory: BridgeFactory,
) -> None:
    """Proves that a path no route names, an encoded newline in it included, gets the
    bridge's JSON 404 outside /api/ and the JSON 401 under /api/ without a token (not
    aiohttp's plain-text 404, which skips the token check)."""
    bridge = bridge_factory(Upstream.unreachable(), admin_token=new_admin_token())
    bridge.start()
    await bridge.wait_ready()
    async with aiohttp.ClientSession() as session:
        for path, status in [
            ("/nope", 404),
            ("/%0A", 404),
            ("/webhooks/rootly%0A", 404),
            ("/api/v1/nope", 401),
            ("/api/%0Afoo", 401),
        ]:
            url = yarl.URL(bridge.url + path, encoded=True)
            async with session.get(url) as response:
                assert response.status == status, (path, response.status)
                assert response.content_type == "application/json", path
                assert "error" in await response.json()


async def test_replayed_deliveries_are_processed_once(
    sandbox: Sandbox, bridge_factory: BridgeFactory
) -> None:
    """Proves that a delivery sent again with the same ID (a sender retry or an attacker's
    replay, re-signed with a fresh timestamp) is answered 200 "duplicate" and not processed
    again, for both platforms; and that a new delivery of the same Rootly incident (a new
    ID) is processed but still pages only once (idempotency key)."""
    upstream = Upstream.from_sandbox(sandbox)
    bridge = bridge_factory(upstream)
    bridge.start()
    await bridge.wait_ready()
    sandbox.set_webhook_targets(rootly=None, incident_io=None)
    incident = await sandbox.rootly.create_incident("Replay me")
    created = rootly_delivery("incident.created", incident)
    same_incident_new_id = rootly_delivery("incident.created", incident)
    other = incident_io_delivery(
        "public_incident.incident_updated_v2", {"incident": {"id": "01HREPLAYINC"}}
    )
    async with SignedSender(bridge.url, upstream) as sender:
        answers = []
        for delivery in (created, created, created, other, other, same_incident_new_id):
            status, text = await sender.post_once(delivery)
            answers.append((status, json.loads(text)["status"]))
            await asyncio.sleep(1.1 if delivery is created else 0)  # a fresh timestamp
        assert answers == [
            (200, "accepted"),
            (200, "duplicate"),
            (200, "duplicate"),
            (200, "accepted"),
            (200, "duplicate"),
            (200, "accepted"),
        ]
        await wait_until(lambda: escalations_by_key(sandbox), timeout=20, what="the escalation")
        await asyncio.sleep(1.0)  # room for a wrongly repeated action to show up
    assert await bridge.terminate_async() == 0
    creates = sandbox.incident_io.calls("POST", "/v2/escalations")
    assert [r.status for r in creates] == [201]
    assert len(escalations_by_key(sandbox)) == 1
    snapshot = await store_snapshot(
        bridge.store_url,
        [(d.source, d.delivery_id) for d in (created, other, same_incident_new_id)],
    )
    assert len(snapshot.inbox_delivery_ids) == 3
    assert {k: v for k, v in snapshot.outbox_by_state.items() if v} == {"done": 1}


async def test_stale_and_future_signatures_are_rejected_and_not_stored(
    bridge_factory: BridgeFactory,
) -> None:
    """Proves that correctly signed deliveries whose signature timestamp is more than the
    tolerance (300 s) in the past or future are refused 401 on both endpoints and never
    stored, while one inside the window is accepted."""
    upstream = Upstream.unreachable()
    bridge = bridge_factory(upstream)
    bridge.start()
    await bridge.wait_ready()
    refused: list[Delivery] = []
    async with SignedSender(bridge.url, upstream) as sender:
        # 5 s beyond the tolerance, from a clock read right before each post: a slow
        # machine must not carry a delivery back inside the window between the two.
        for offset in (-305, -3600, 305, 86_400):
            for delivery in (
                rootly_delivery("pulse.created", {"id": f"p{offset}"}),
                incident_io_delivery("public_alert.alert_created_v1", {"id": f"a{offset}"}),
            ):
                stamp = int(time.time()) + offset
                status, _ = await sender.post_once(delivery, timestamp=stamp)
                assert status == 401, (delivery.source, offset, status)
                refused.append(delivery)
        fresh = rootly_delivery("pulse.created", {"id": "fresh"})
        status, _ = await sender.post_once(fresh, timestamp=int(time.time()) - 250)
        assert status == 200
    assert await bridge.terminate_async() == 0
    snapshot = await store_snapshot(
        bridge.store_url, [(d.source, d.delivery_id) for d in [*refused, fresh]]
    )
    assert snapshot.inbox_delivery_ids == {fresh.delivery_id}


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


async def test_oversized_bodies_are_refused_before_they_are_sent(
    bridge_factory: BridgeFactory,
) -> None:
    """Proves that a webhook announcing a body over the limit (1 GB Content-Length) gets 413
    after only its headers and a few bytes were sent (the body is never read), and that a
    chunked body without a length is cut off with 413 once it passes the limit, on both
    endpoints, and the bridge keeps serving."""
    upstream = Upstream.unreachable()
    bridge = bridge_factory(upstream, overrides={"server": {"max_body_bytes": 65_536}})
    bridge.start()
    await bridge.wait_ready()

    def probe() -> None:
        for path in WEBHOOK_PATHS.values():
            with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    'Content-Length: 1000000000\r\n\r\n{"event":'.encode()
                )
                answer = _read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n".encode()
                )
                chunk = b"x" * 8192
                sent = 0
                answer = b""
                sock.settimeout(0.05)
                while sent < 10 * 1024 * 1024 and not answer:
                    try:
                        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent += len(chunk)
                        answer = sock.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                sock.settimeout(10)
                answer += _read_answer(sock) if answer and b"\r\n\r\n" not in answer else b""
                assert answer.startswith(b"HTTP/1.1 413"), (answer[:200], sent)
                assert sent < 1024 * 1024, sent

    await asyncio.to_thread(probe)
    assert bridge.alive()


async def test_no_secret_reaches_a_log_line_or_an_answer(
    sandbox: Sandbox, bridge_factory: BridgeFactory
) -> None:
    """Proves that while the bridge works (debug logging), fails upstream (injected 500s, a
    dead letter with the platform's message), refuses bad signatures and wrong admin tokens
    (including other real credentials offered as the admin token) and receives malformed
    requests carrying a real token, no secret value (API tokens and keys, webhook secrets
    and their key material, the alert source token, the admin token) appears in anything
    the process wrote to stdout/stderr or in any HTTP answer, the console's sign-in and
    pages included."""
    upstream = Upstream.from_sandbox(sandbox)
    token = new_admin_token()
    bridge = bridge_factory(
        upstream,
        admin_token=token,
        overrides={"logging": {"level": "debug"}, "executor": {"max_attempts": 2}},
    )
    bridge.start()
    await bridge.wait_ready()
    sandbox.set_webhook_targets(
        rootly=f"{bridge.url}/webhooks/rootly", incident_io=f"{bridge.url}/webhooks/incident-io"
    )
    answers: list[str] = []
    secrets = [token, *upstream.secret_values()]
    async with aiohttp.ClientSession() as session:
        # Normal work, then work that fails upstream until it is dead-lettered.
        incident = await sandbox.rootly.create_incident("Secrets test")
        await wait_until(lambda: escalations_by_key(sandbox), timeout=20, what="escalation")
        [escalation] = escalations_by_key(sandbox)[f"rootly-incident-{incident['id']}"]
        await sandbox.incident_io.ack_escalation(escalation["id"], user="Alice")
        sandbox.incident_io.faults.update({"error_rate": 1.0})
        await sandbox.rootly.cancel_incident(incident["id"])
        headers = {"Authorization": f"Bearer {token}"}

        async def dead() -> bool:
            async with session.get(bridge.url + "/api/v1/dead-letters", headers=headers) as r:
                text = await r.text()
                answers.append(text)
                return bool(json.loads(text)["dead_letters"])

        await wait_until(dead, timeout=30, what="a dead letter")
        sandbox.incident_io.faults.reset()
        # Refusals, each carrying a real secret somewhere in the request.
        for offered in secrets:
            async with session.get(
                bridge.url + "/api/v1/links", headers={"Authorization": f"Bearer {offered}x"}
            ) as response:
                answers.append(await response.text())
        bad = rootly_delivery("incident.created", {"id": "nope"})
        for secret in secrets:
            async with session.post(
                bridge.url + "/webhooks/rootly",
                data=bad.body,
                headers={
                    "Content-Type": "application/json",
                    "X-Rootly-Signature": f"t=1,v1={secret}",
                },
            ) as response:
                answers.append(await response.text())
        for path in ("/api/v1/outbox", "/api/v1/events/1", "/api/v1/dead-letters"):
            async with session.get(bridge.url + path, headers=headers) as response:
                answers.append(await response.text())
    # The console: sign-ins with each secret (wrong), then with the token, and its pages.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        for offered in [*(f"{secret}x" for secret in secrets), token]:
            async with browser.get(bridge.url + "/console/login") as response:
                form = await response.text()
            login_csrf = form.split('name="login_csrf" value="', 1)[1].split('"', 1)[0]
            async with browser.post(
                bridge.url + "/console/login",
                data={"token": offered, "login_csrf": login_csrf},
            ) as response:
                answers.append(await response.text())
        for path in ("/console/events", "/console/dead-letters", "/console/health"):
            async with browser.get(bridge.url + path) as response:
                assert response.status == 200
                answers.append(await response.text())

    def malformed() -> None:
        # A header with a control character after a real token: the HTTP parser rejects it.
        for line in (
            f"Authorization: Bearer {token}\x01",
            f"X-Api-Key: {upstream.incident_io_api_key}\x01",
        ):
            with socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as sock:
                sock.sendall(f"GET /api/v1/links HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode())
                answers.append(_read_answer(sock).decode("latin-1"))

    await asyncio.to_thread(malformed)
    await sandbox.wait_idle(timeout=30)
    assert await bridge.terminate_async() == 0
    output = bridge.log_text()
    assert '"event": "action.dead_lettered"' in output  # the failure paths did run
    assert '"event": "webhook.rejected"' in output
    leaks = sorted(
        {
            (secret[:6] + "...", where)
            for secret in secrets
            for where, text in (("log", output), *(("answer", a) for a in answers))
            if secret in text
        }
    )
    assert leaks == [], leaks


async def test_sandbox_and_admin_api_are_off_unless_enabled(bridge_factory: BridgeFactory) -> None:
    """Proves that a plain `bridge serve` (no --sandbox, no admin token) listens on its one
    port only, has no `/_sandbox/*` routes and answers 404 on `/api/v1/*` and `/console/*`
    whatever token is offered; and that `--sandbox` is what starts the simulators (on their
    own ports, still nothing of them on the bridge's port)."""
    upstream = Upstream.unreachable()
    plain = bridge_factory(upstream, name="plain")
    plain.start()
    await plain.wait_ready()
    probes = [
        ("GET", "/_sandbox/requests"),
        ("GET", "/_sandbox/state"),
        ("GET", "/_sandbox/faults"),
        ("PUT", "/_sandbox/faults"),
        ("POST", "/_sandbox/reset"),
        ("POST", "/_sandbox/incidents"),
        *ADMIN_ROUTES,
        # The console exists only with the admin token, like the admin API.
        ("GET", "/console/events"),
        ("POST", "/console/login"),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path in probes:
            for headers in ({}, {"Authorization": "Bearer anything"}):
                async with session.request(
                    method, plain.url + path, headers=headers, json={}
                ) as response:
                    assert response.status in (404, 405), (method, path, response.status)
                    if path.startswith("/api/"):
                        assert response.status == 404, (method, path, response.status)
    assert plain.listening_ports() == {plain.port}
    assert await plain.terminate_async() == 0
    assert not [e for e in plain.log_events() if str(e.get("event", "")).startswith("sandbox.")]

    with_sandbox = bridge_factory(upstream, name="with-sandbox", args=["--sandbox"])
    with_sandbox.start()
    await with_sandbox.wait_ready()
    await wait_until(
        lambda: "sandbox.ready" in with_sandbox.log_text(), timeout=10, what="sandbox.ready"
    )
    ports = with_sandbox.listening_ports()
    assert with_sandbox.port in ports and len(ports) == 3, ports
    async with aiohttp.ClientSession() as session:
        async with session.get(with_sandbox.url + "/_sandbox/state") as response:
            assert response.status == 404
        async with session.get(with_sandbox.url + "/api/v1/links") as response:
            assert response.status == 404
    assert await with_sandbox.terminate_async() == 0
