"""Webhook ingest over real HTTP: each documented status, and exactly what gets stored."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Bridge
from bridge.events import DeliveryId
from bridge.store.base import InboxRow
from tests.conftest import bridge_settings, incident_io_delivery, rootly_delivery


def url(bridge: Bridge, path: str) -> str:
    assert bridge.endpoint is not None
    return bridge.endpoint.url + path


def received(bridge: Bridge, source: str, event_type: str, outcome: str) -> float:
    value = bridge.metrics.registry.get_sample_value(
        "bridge_webhooks_received_total",
        {"source": source, "event_type": event_type, "outcome": outcome},
    )
    return value or 0.0


async def post(
    bridge: Bridge, path: str, body: bytes | io.BytesIO, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url(bridge, path), data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_rootly_delivery_is_stored_then_acknowledged(bridge: Bridge) -> None:
    """A correctly signed Rootly webhook answers 200 only once its exact body is in the inbox."""
    body, headers = rootly_delivery(delivery_id="ev-1")
    status, answer = await post(bridge, "/webhooks/rootly", body, headers)
    assert (status, answer["status"]) == (200, "accepted")
    row = await bridge.store.find_inbox("rootly", DeliveryId("ev-1"))
    assert row is not None
    assert row.body == body
    assert row.event_type == "incident.created"
    assert received(bridge, "rootly", "incident.created", "accepted") == 1


async def test_incident_io_delivery_uses_webhook_id(bridge: Bridge) -> None:
    """incident.io deliveries are keyed by the signed webhook-id header."""
    body, headers = incident_io_delivery(msg_id="msg_abc")
    status, _ = await post(bridge, "/webhooks/incident-io", body, headers)
    assert status == 200
    row = await bridge.store.find_inbox("incident_io", DeliveryId("msg_abc"))
    assert row is not None
    assert row.event_type == "public_alert.alert_created_v1"


async def test_redelivery_is_acknowledged_and_stored_once(bridge: Bridge) -> None:
    """The same delivery ID three times: 200 each time, one inbox row, counted as duplicate."""
    body, headers = incident_io_delivery(msg_id="msg_dup")
    answers = [await post(bridge, "/webhooks/incident-io", body, headers) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert [a[1]["status"] for a in answers] == ["accepted", "duplicate", "duplicate"]
    counts = await bridge.store.counts()
    assert (
        counts.inbox_pending
        + len(
            [r for r in [await bridge.store.find_inbox("incident_io", DeliveryId("msg_dup"))] if r]
        )
        >= 1
    )
    assert received(bridge, "incident_io", "public_alert.alert_created_v1", "duplicate") == 2


async def test_same_delivery_id_on_other_source_is_distinct(bridge: Bridge) -> None:
    """Delivery IDs are unique per source, not globally."""
    body, headers = rootly_delivery(delivery_id="shared-1")
    assert (await post(bridge, "/webhooks/rootly", body, headers))[0] == 200
    body, headers = incident_io_delivery(msg_id="shared-1")
    assert (await post(bridge, "/webhooks/incident-io", body, headers))[1]["status"] == "accepted"


async def test_unknown_event_type_is_stored_and_counted_ignored(bridge: Bridge) -> None:
    """An event type we do not map is accepted and stored (never rejected), counted ignored."""
    body, headers = incident_io_delivery("public_widget.created_v9", {"id": "w1"}, msg_id="msg_w")
    status, answer = await post(bridge, "/webhooks/incident-io", body, headers)
    assert (status, answer["status"]) == (200, "ignored")
    assert await bridge.store.find_inbox("incident_io", DeliveryId("msg_w")) is not None
    assert received(bridge, "incident_io", "other", "ignored") == 1


@pytest.mark.parametrize(
    ("path", "make"),
    [
        (
            "/webhooks/rootly",
            lambda: rootly_delivery(delivery_id="bad-sig", secret="not-the-secret"),
        ),
        (
            "/webhooks/incident-io",
            lambda: incident_io_delivery(msg_id="bad-sig", secret="whsec_" + "QUJDREVGR0hJSktM"),
        ),
        ("/webhooks/rootly", lambda: rootly_delivery(delivery_id="bad-sig", ts=1_000_000)),
        ("/webhooks/incident-io", lambda: incident_io_delivery(msg_id="bad-sig", ts=4_000_000_000)),
    ],
)
async def test_bad_signature_is_401_and_nothing_stored(bridge: Bridge, path: str, make) -> None:  # type: ignore[no-untyped-def]
    """Wrong secret or a timestamp outside the window: 401, no reason leaked, nothing stored."""
    body, headers = make()
    status, answer = await post(bridge, path, body, headers)
    assert status == 401
    assert answer == {"error": "invalid signature"}
    source = "rootly" if "rootly" in path else "incident_io"
    assert await bridge.store.find_inbox(source, DeliveryId("bad-sig")) is None  # type: ignore[arg-type]
    assert received(bridge, source, "unknown", "rejected_signature") == 1


async def test_missing_signature_headers_is_401(bridge: Bridge) -> None:
    """No signature headers at all: 401."""
    body, _ = rootly_delivery()
    status, _ = await post(bridge, "/webhooks/rootly", body, {"Content-Type": "application/json"})
    assert status == 401


async def test_tampered_body_is_401(bridge: Bridge) -> None:
    """A body changed after signing does not verify."""
    body, headers = incident_io_delivery(msg_id="tampered")
    status, _ = await post(
        bridge, "/webhooks/incident-io", body.replace(b"firing", b"resolvd"), headers
    )
    assert status == 401


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe\xfd", "UTF-8"),
        (b"[1, 2, 3]", "JSON object"),
        (b"not json", "not valid JSON"),
        (b'{"event_type": "x"}', "payload"),
        (b'{"event_type": "a", "a": ' + b'{"b":' * 80 + b"1" + b"}" * 80 + b"}", "nested"),
    ],
)
async def test_signed_but_malformed_body_is_400(bridge: Bridge, raw: bytes, reason: str) -> None:
    """A correctly signed body that is not a usable payload: 400 with a short reason."""
    body, headers = incident_io_delivery(raw=raw, msg_id="malformed")
    status, answer = await post(bridge, "/webhooks/incident-io", body, headers)
    assert status == 400
    assert reason in str(answer["error"])
    assert await bridge.store.find_inbox("incident_io", DeliveryId("malformed")) is None


async def test_oversized_body_is_413_and_not_stored(bridge: Bridge) -> None:
    """A 2 MiB body (over the 1 MiB default) is refused with 413 and nothing stored."""
    data = {"id": "big", "title": "x" * (2 * 1024 * 1024)}
    body, headers = rootly_delivery(data=data, delivery_id="big")
    status, _ = await post(bridge, "/webhooks/rootly", io.BytesIO(body), headers)
    assert status == 413
    assert await bridge.store.find_inbox("rootly", DeliveryId("big")) is None
    assert received(bridge, "rootly", "unknown", "too_large") == 1


async def test_wrong_content_type_is_415(bridge: Bridge) -> None:
    """Only JSON is accepted."""
    body, headers = rootly_delivery()
    status, _ = await post(
        bridge, "/webhooks/rootly", body, {**headers, "Content-Type": "text/xml"}
    )
    assert status == 415


async def test_wrong_method_and_unknown_route_are_json(bridge: Bridge) -> None:
    """GET on a webhook route is 405 JSON with Allow; an unknown path is 404 JSON."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url(bridge, "/webhooks/rootly")) as response:
            assert response.status == 405
            assert "POST" in response.headers["Allow"]
            assert "not allowed" in (await response.json())["error"]
        async with session.get(url(bridge, "/nope")) as response:
            assert response.status == 404
            assert await response.json() == {"error": "not found"}


async def test_after_stop_accepting_webhooks_get_503(bridge: Bridge) -> None:
    """During shutdown ingest answers 503 so senders retry elsewhere or later."""
    bridge.ingest.stop_accepting()
    body, headers = rootly_delivery(delivery_id="late")
    status, _ = await post(bridge, "/webhooks/rootly", body, headers)
    assert status == 503
    assert await bridge.store.find_inbox("rootly", DeliveryId("late")) is None


async def test_health_readiness_and_metrics(bridge: Bridge) -> None:
    """/healthz and /readyz answer 200 when up; /readyz is 503 with reasons once stopping;
    /metrics is valid Prometheus text with the documented families."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url(bridge, "/healthz")) as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        async with session.get(url(bridge, "/readyz")) as response:
            assert response.status == 200
        async with session.get(url(bridge, "/metrics")) as response:
            text = await response.text()
        names = {family.name for family in text_string_to_metric_families(text)}
        for expected in (
            "bridge_webhooks_received",
            "bridge_actions",
            "bridge_outbox_depth",
            "bridge_dead_letters",
            "bridge_links",
            "bridge_echoes_suppressed",
            "bridge_build_info",
            "bridge_event_to_action_seconds",
            "bridge_upstream_requests",
            "bridge_action_duration_seconds",
        ):
            assert expected in names, expected
        bridge.readiness.accepting = False
        async with session.get(url(bridge, "/readyz")) as response:
            assert response.status == 503
            assert "shutting down" in (await response.json())["reasons"]


async def test_concurrent_deliveries_are_group_committed(bridge: Bridge) -> None:
    """200 concurrent deliveries are all stored (written in shared transactions), each once."""
    import asyncio

    deliveries = [incident_io_delivery(msg_id=f"msg_{i}") for i in range(200)]
    async with aiohttp.ClientSession() as session:

        async def send(body: bytes, headers: dict[str, str]) -> int:
            async with session.post(
                url(bridge, "/webhooks/incident-io"), data=body, headers=headers
            ) as r:
                return r.status

        statuses = await asyncio.gather(*(send(b, h) for b, h in deliveries))
    assert statuses == [200] * 200
    for i in (0, 99, 199):
        assert await bridge.store.find_inbox("incident_io", DeliveryId(f"msg_{i}")) is not None
    assert received(bridge, "incident_io", "public_alert.alert_created_v1", "accepted") == 200


async def test_trickled_body_is_408_and_not_stored(tmp_path: Path) -> None:
    """A client that sends its headers, then part of its body and stalls, gets 408 once
    `server.body_timeout_seconds` has passed (the handler is not held open by it), nothing
    is stored, and the next delivery on the same bridge is accepted."""
    settings = bridge_settings(
        tmp_path, server={"host": "127.0.0.1", "port": 0, "body_timeout_seconds": 0.3}
    )
    running = Bridge(settings, env={}, registry=CollectorRegistry())
    await running.start()
    try:
        assert running.endpoint is not None
        body, headers = rootly_delivery(delivery_id="slow")
        reader, writer = await asyncio.open_connection("127.0.0.1", running.endpoint.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"POST /webhooks/rootly HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{head}\r\n".encode()
            + body[:10]
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert await running.store.find_inbox("rootly", DeliveryId("slow")) is None
        assert received(running, "rootly", "unknown", "too_slow") == 1
        status, _ = await post(running, "/webhooks/rootly", body, headers)
        assert status == 200
    finally:
        await running.stop()


async def test_408_closes_the_connection_with_the_answer(tmp_path: Path) -> None:
    """The connection of a body that stalled is closed right after its 408 is sent (the
    server does not go on reading, and discarding, the rest of that body for aiohttp's
    10 s of lingering first): the client sees the end of the stream within 5 s, without
    sending anything more."""
    settings = bridge_settings(
        tmp_path, server={"host": "127.0.0.1", "port": 0, "body_timeout_seconds": 0.3}
    )
    running = Bridge(settings, env={}, registry=CollectorRegistry())
    await running.start()
    try:
        assert running.endpoint is not None
        body, headers = rootly_delivery(delivery_id="stalled")
        reader, writer = await asyncio.open_connection("127.0.0.1", running.endpoint.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"POST /webhooks/rootly HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{head}\r\n".encode()
            + body[:10]
        )
        await writer.drain()
        # Everything the server sends until it closes: the 408, then the end of the stream.
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"error": "body not received within 0.3 s"' in answer
    finally:
        await running.stop()


ONE_RULE = """\
version: 1
rules:
  - name: page-for-nothing
    on: {source: rootly, event: incident.created}
    when: [{field: incident.id, equals: "never-this-id"}]
    actions:
      - do: incident_io.create_escalation
        params: {title: "t"}
"""


def dispatched(bridge: Bridge, source: str, result: str) -> float:
    value = bridge.metrics.registry.get_sample_value(
        "bridge_events_dispatched_total", {"source": source, "result": result}
    )
    return value or 0.0


async def processed_row(bridge: Bridge, source: str, delivery: str) -> InboxRow:
    """The stored row once it is processed (the dispatcher runs beside ingest), within 10 s."""
    async with asyncio.timeout(10):
        while True:
            row = await bridge.store.find_inbox(source, DeliveryId(delivery))  # type: ignore[arg-type]
            if row is not None and row.state == "processed":
                return row
            await asyncio.sleep(0.02)


async def test_events_no_rule_triggers_on_are_settled_at_ingest(tmp_path: Path) -> None:
    """A webhook of a type no enabled rule triggers on is stored already processed, with a
    trace saying it was settled at ingest, counted as no_match; an unmapped type likewise
    as ignored. A type a rule triggers on is stored pending and evaluated by the dispatcher
    (its trace carries the rule evaluation, not the ingest settlement)."""
    running = Bridge(
        bridge_settings(tmp_path, rules=ONE_RULE), env={}, registry=CollectorRegistry()
    )
    await running.start()
    try:
        for event_type, delivery in [
            ("alert.updated", "quiet"),
            ("incident.widgeted", "unknown"),
            ("incident.created", "handled"),
        ]:
            body, headers = rootly_delivery(event_type, delivery_id=delivery)
            status, _ = await post(running, "/webhooks/rootly", body, headers)
            assert status == 200
        quiet = await running.store.find_inbox("rootly", DeliveryId("quiet"))
        unknown = await running.store.find_inbox("rootly", DeliveryId("unknown"))
        # Settled rows are processed the moment the 200 is sent, before any dispatch.
        assert quiet is not None
        assert unknown is not None
        assert (quiet.state, quiet.attempts) == ("processed", 0)
        assert quiet.trace is not None
        assert "settled" in quiet.trace
        assert "skipped" in quiet.trace
        assert (unknown.state, unknown.attempts) == ("processed", 0)
        assert unknown.trace is not None
        assert "ignored" in unknown.trace
        handled = await processed_row(running, "rootly", "handled")
        assert handled.attempts == 1
        assert handled.trace is not None
        assert "settled" not in handled.trace
        assert handled.trace["rules"]["page-for-nothing"]["reason"] == "condition false"
        assert dispatched(running, "rootly", "no_match") == 2
        assert dispatched(running, "rootly", "ignored") == 1
    finally:
        await running.stop()
