"""The shared transport: failures mapped to the error taxonomy, metrics, secrets kept out."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import structlog
from aiohttp import web

from bridge.metrics import Metrics
from bridge.platforms.errors import InDoubt, Permanent, Retryable, UpstreamError
from bridge.platforms.http import parse_error, retry_at_from
from bridge.platforms.incident_io.client import IncidentIoClient
from bridge.platforms.incident_io.limits import LIMITS as INCIDENT_IO_LIMITS
from bridge.platforms.rootly.client import RootlyClient
from bridge.platforms.rootly.limits import LIMITS as ROOTLY_LIMITS
from tests.clients.conftest import (
    ALERT_SOURCE_CONFIG_ID,
    ALERT_SOURCE_TOKEN,
    INCIDENT_IO_TOKEN,
    ROOTLY_TOKEN,
    Recorded,
    RecordingServer,
    counter_value,
    fast_limiter,
)

NOW = 1_750_000_000.0


async def test_5xx_is_retryable_and_counted(
    server: RecordingServer, rootly: RootlyClient, metrics: Metrics
) -> None:
    """A 500 is Retryable, and the request is counted by status with its latency. It is an
    answer: the request is not in doubt."""
    server.reply(500, {"errors": [{"title": "Internal error", "status": "500"}]})
    with pytest.raises(Retryable, match="Internal error") as caught:
        await rootly.get_incident("i1")
    assert caught.value.status == 500
    assert caught.value.in_doubt is False
    assert (
        counter_value(metrics, "bridge_upstream_requests_total", platform="rootly", status="500")
        == 1
    )
    assert (
        metrics.registry.get_sample_value(
            "bridge_upstream_request_duration_seconds_count", {"platform": "rootly"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value(
            "bridge_ratelimit_wait_seconds_count", {"platform": "rootly"}
        )
        == 1
    )


async def test_non_json_error_body_is_quoted(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """A proxy's HTML error page becomes a message saying the body is not JSON (200 chars)."""
    page = "<html><body>" + "Bad gateway " * 40 + "</body></html>"
    server.reply(502, raw=page)
    with pytest.raises(Retryable) as caught:
        await incident_io.get_escalation("e1")
    text = str(caught.value)
    assert "not JSON" in text
    assert "<html><body>Bad gateway" in text
    assert len(text) < 400
    server.reply(418, raw="teapot")
    with pytest.raises(Permanent, match="not JSON: 'teapot'"):
        await incident_io.get_escalation("e1")


async def test_timeout_is_retryable_and_counted(server: RecordingServer, metrics: Metrics) -> None:
    """A server slower than the client's total timeout gives Retryable, counted as timeout,
    and in doubt: the server has the request and may still apply it."""
    release = asyncio.Event()

    async def stall(_: Recorded) -> web.StreamResponse:
        await asyncio.wait_for(release.wait(), timeout=5)
        return web.Response(status=200)

    server.handler(stall)
    client = RootlyClient(
        token=ROOTLY_TOKEN,
        limiter=fast_limiter(ROOTLY_LIMITS),
        metrics=metrics,
        base_url=server.url,
        total_timeout=0.2,
    )
    await client.start()
    try:
        with pytest.raises(Retryable, match=r"timed out \(connect 5\.0s, total 0\.2s\)") as caught:
            await client.acknowledge_alert("a1")
    finally:
        release.set()
        await client.close()
    assert caught.value.status is None
    assert caught.value.in_doubt is True
    assert (
        counter_value(
            metrics, "bridge_upstream_requests_total", platform="rootly", status="timeout"
        )
        == 1
    )


async def _cancel_on_port(port: int, metrics: Metrics) -> Retryable:
    """What an incident.io cancel sent to 127.0.0.1:`port` raises; checks it was counted
    as a connection error."""
    client = IncidentIoClient(
        token=INCIDENT_IO_TOKEN,
        limiter=fast_limiter(INCIDENT_IO_LIMITS),
        metrics=metrics,
        base_url=f"http://127.0.0.1:{port}",
    )
    await client.start()
    try:
        with pytest.raises(Retryable) as caught:
            await client.cancel_escalation("e1")
    finally:
        await client.close()
    assert (
        counter_value(
            metrics,
            "bridge_upstream_requests_total",
            platform="incident_io",
            status="connection_error",
        )
        == 1
    )
    return caught.value


async def test_connection_refused_is_retryable_and_counted(metrics: Metrics) -> None:
    """Nothing listening: Retryable, counted as connection_error, no token in the message;
    nothing was sent, so nothing is in doubt."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await _cancel_on_port(port, metrics)
    assert INCIDENT_IO_TOKEN not in str(error)
    assert error.in_doubt is False


async def test_a_connection_dropped_mid_request_is_in_doubt(metrics: Metrics) -> None:
    """A server that reads the whole request and closes the connection without answering
    gives Retryable, counted as connection_error, and in doubt: it may have applied it."""
    received = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        error = await _cancel_on_port(server.sockets[0].getsockname()[1], metrics)
    finally:
        server.close()
        await server.wait_closed()
    assert received.is_set()
    assert isinstance(error, InDoubt)


async def test_secrets_never_reach_exceptions_or_logs(
    server: RecordingServer, incident_io: IncidentIoClient, rootly: RootlyClient
) -> None:
    """Even a server that echoes the Authorization header back cannot get a credential into
    an exception message or a log line."""

    async def echo(request: Recorded) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        return web.json_response(
            {
                "errors": [
                    {
                        "title": f"bad credentials {auth}",
                        "status": "401",
                        "message": f"token {auth.removeprefix('Bearer ')}",
                    }
                ]
            },
            status=401,
        )

    server.default = echo
    failures: list[UpstreamError] = []
    with structlog.testing.capture_logs() as logs:
        for call in (
            rootly.get_incident("i1"),
            incident_io.get_escalation("e1"),
            incident_io.send_alert_event(
                ALERT_SOURCE_CONFIG_ID,
                ALERT_SOURCE_TOKEN,
                title="t",
                status="firing",
                deduplication_key="k",
            ),
        ):
            with pytest.raises(Permanent) as caught:
                await call
            failures.append(caught.value)
    texts = [str(f) for f in failures] + [repr(f) for f in failures] + [repr(logs)]
    for secret in (ROOTLY_TOKEN, INCIDENT_IO_TOKEN, ALERT_SOURCE_TOKEN):
        assert all(secret not in text for text in texts)
    assert "[redacted]" in str(failures[0])


async def test_success_with_non_json_body_returns_none(
    server: RecordingServer, incident_io: IncidentIoClient
) -> None:
    """A 2xx whose body is not JSON does not crash cancel (which needs no body)."""
    server.reply(200, raw="OK")
    await incident_io.cancel_escalation("e1")


async def test_client_used_before_start_is_a_clear_error(metrics: Metrics) -> None:
    """Calling a client before start() raises a RuntimeError saying so."""
    client = RootlyClient(token=ROOTLY_TOKEN, limiter=fast_limiter(ROOTLY_LIMITS), metrics=metrics)
    with pytest.raises(RuntimeError, match="before start"):
        await client.get_alert("a1")
    await client.close()


def test_empty_token_is_refused(metrics: Metrics) -> None:
    """A client without a credential fails at construction, not at the first request."""
    with pytest.raises(ValueError, match="token"):
        RootlyClient(token="", limiter=fast_limiter(ROOTLY_LIMITS), metrics=metrics)


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "5"}, None, NOW + 5),
        ({"Retry-After": "1.5"}, None, NOW + 1.5),
        (
            {"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)},
            None,
            NOW + 30,
        ),
        ({"X-RateLimit-Reset": str(int(NOW) + 42)}, {"error": "x"}, NOW + 42),
        ({"X-RateLimit-Reset": "12"}, None, NOW + 12),
        ({}, {"rate_limit": {"retry_after": "2025-06-15T15:07:00Z"}}, 1_750_000_020.0),
        ({}, {"rate_limit": {"retry_after": "Sun, 15 Jun 2025 15:07:00 UTC"}}, 1_750_000_020.0),
        ({}, {"rate_limit": {"retry_after": "garbage"}}, NOW + 1),
        ({"Retry-After": "soon"}, None, NOW + 1),
        ({}, None, NOW + 1),
        ({"Retry-After": "Thu, 01 Jan 2015 00:00:00 GMT"}, None, NOW),
    ],
)
def test_retry_time_sources_and_precedence(
    headers: dict[str, str], body: object, expected: float
) -> None:
    """Retry-After (seconds or date), then X-RateLimit-Reset, then the body's retry_after,
    then one second; never in the past."""
    assert retry_at_from(headers, body, NOW) == pytest.approx(expected)


def test_parse_error_reads_both_platforms_shapes() -> None:
    """Rootly's errors/title/detail and {"error"}, incident.io's errors/message/request_id."""
    rootly = parse_error(
        422,
        b'{"errors":[{"title":"Invalid","status":"422","detail":"Title is bad"}]}',
        {"X-Request-Id": "r1"},
    )
    assert rootly.messages == ("Invalid - Title is bad",)
    assert rootly.request_id == "r1"
    io = parse_error(
        422,
        b'{"request_id":"q1","errors":[{"code":"invalid_state","message":"m"}]}',
        {},
    )
    assert (io.messages, io.codes, io.request_id) == (("m",), ("invalid_state",), "q1")
    empty = parse_error(500, b"", {})
    assert empty.summary() == "no error message in the response"
