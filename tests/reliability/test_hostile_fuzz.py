"""A hypothesis fuzz over raw HTTP against a running bridge: never a 5xx, never a row stored
from an unsigned request, never an ERROR line.

One bridge subprocess serves the module (admin API on, 64 KiB body limit, platform APIs at a
closed port, retries spaced a minute apart so no action runs out of attempts during the
run). Requests are written byte for byte on a fresh socket, so nothing is normalised on the
way: non-ASCII and control bytes in headers, huge and repeated headers, every
Content-Encoding and chunked framing, bodies nested deeply, with duplicate keys, lone
surrogate escapes, NaN and Infinity, huge numbers, and wrong types in every field the
default rules (`config/rules.yaml`) read, on every route, under paths with encoded slashes,
dots and overlong segments. Signed requests use the product's own `sign` functions.

Bounds: 2,000 requests in two derandomized hypothesis runs (1,200 on every route, 800
validly signed webhooks); about 30 s on a quiet machine, hence `slow`.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.platforms.incident_io import webhook as incident_io_webhook
from bridge.platforms.rootly import webhook as rootly_webhook
from tests.reliability.harness import (
    BridgeProcess,
    RawAnswer,
    Upstream,
    bridge_env,
    free_port,
    http_request,
    inbox_rows,
    new_admin_token,
    raw_exchange,
    sqlite_url,
    write_config,
)

pytestmark = pytest.mark.slow

BODY_LIMIT = 65_536
ROUTE_REQUESTS = 1_200
SIGNED_REQUESTS = 800
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Target:
    """The module's bridge, and what the fuzz sent it."""

    bridge: BridgeProcess
    upstream: Upstream
    token: str
    db_path: Path
    session: str = ""
    """The console's session cookie (`name=value`) of an operator signed in."""
    csrf: str = ""
    sent: int = 0
    # (source, delivery ID) of every delivery sent with a valid signature: the only rows
    # the inbox may hold.
    signed: set[tuple[str, str]] = field(default_factory=set)

    def send(self, request: bytes) -> RawAnswer:
        self.sent += 1
        return raw_exchange(self.bridge.port, request, timeout=30)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    directory = tmp_path_factory.mktemp("fuzz")
    upstream = Upstream.unreachable()
    token = new_admin_token()
    port = free_port()
    config = write_config(
        directory,
        port=port,
        store_url=sqlite_url(directory / "bridge.db"),
        overrides={
            "server": {"max_body_bytes": BODY_LIMIT},
            "executor": {"backoff_base_seconds": 60, "backoff_max_seconds": 120},
        },
    )
    bridge = BridgeProcess(
        config=config,
        env=bridge_env(upstream, admin_token=token),
        port=port,
        log_path=directory / "bridge.log",
    )
    bridge.start()
    try:
        bridge.wait_ready_sync()
        session, csrf = _sign_in(port, token)
        yield Target(bridge, upstream, token, directory / "bridge.db", session, csrf)
    finally:
        bridge.cleanup()


def _sign_in(port: int, token: str) -> tuple[str, str]:
    """Sign in to the console as an operator would; (session cookie, CSRF token)."""
    import http.client
    import re
    from urllib.parse import urlencode

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/console/login")
        response = conn.getresponse()
        form = response.read().decode()
        login_cookie = response.getheader("Set-Cookie", "").split(";")[0]
        login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', form)
        assert login_csrf is not None
        body = urlencode({"token": token, "login_csrf": login_csrf.group(1)})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": login_cookie}
        conn.request("POST", "/console/login", body, headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 303, response.status
        session = response.getheader("Set-Cookie", "").split(";")[0]
        conn.request("GET", "/console/rules", headers={"Cookie": session})
        page = conn.getresponse().read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        return session, csrf.group(1)
    finally:
        conn.close()


class Short(bytes):
    """Bytes whose repr is cut short: a failing example is reported without 70 kB bodies
    (hypothesis warns, and the warning is an error here)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {bytes(self[:120])!r}...>"


def _assert_answered_below_500(answer: RawAnswer, what: object) -> None:
    assert answer.status is not None, ("no answer", what)
    assert answer.status < 500, (answer.status, answer.body[:300], what)


# -- JSON with what `json.dumps` will not write ------------------------------------------


class Pairs(list[tuple[str, Any]]):
    """A JSON object written from its pairs in order, duplicate keys included."""


class Number(str):
    """A number written exactly as given (`1e400`, 400 digits)."""


def render(value: Any) -> str:
    """JSON text of `value`: `Pairs` may repeat keys; NaN and infinities are written as
    Python's decoder reads them; strings are ASCII-escaped, so a lone surrogate becomes a
    `\\udXXX` escape."""
    if isinstance(value, Number):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {render(v)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return render(Pairs(value.items()))
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return json.dumps(value)


# -- strategies ------------------------------------------------------------------------


# True about one time in ten (`st.integers` would favour its bounds).
rarely = st.sampled_from([True, *[False] * 9])


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> Any:
    """`common` about nine times in ten, `rare` otherwise."""
    return rarely.flatmap(lambda rare_one: rare if rare_one else common)


# Text a store can hold: any character but a lone surrogate and NUL.
text = st.one_of(
    st.sampled_from(
        ["", " ", "\u202eevil", "é", "😀", "\r\n\t\x01", "{{ 7 * 7 }}", "rootly-alert-", "x" * 300]
    ),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30),
)
# Values of every JSON type but the one a field should have: what reaches the rules.
wrong_types = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**100, 10**4000, 0.5, -0.0, 1e308]),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(text, children, max_size=4),
        st.lists(st.tuples(st.sampled_from(["id", "a", "a"]), children), max_size=4).map(Pairs),
    ),
    max_leaves=10,
)
# Values no store can hold, which ingest refuses (400).
poison = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        Number("1e400"),
        Number("-1" + "0" * 400 + ".5"),
        "\ud800",
        "tail \udfff",
        "\x00",
        "a\x00b",
    ]
)


# The fields the default rules, the parsers and the dispatcher read, per payload object.
ROOTLY_INCIDENT_FIELDS = [
    "id", "title", "summary", "status", "severity", "alert_ids", "alerts", "started_at",
]  # fmt: skip
ROOTLY_ALERT_FIELDS = [
    "id", "summary", "description", "external_url", "url", "status", "incident_ids",
    "incidents", "deduplication_key",
]  # fmt: skip
ESCALATION_FIELDS = ["id", "status", "title", "related_alerts", "related_incidents", "updated_at"]
INCIDENT_IO_INCIDENT_FIELDS = [
    "id", "name", "summary", "severity", "reference", "incident_status", "creator",
    "updated_at", "created_at",
]  # fmt: skip
INCIDENT_IO_ALERT_FIELDS = ["id", "title", "status", "deduplication_key", "created_at"]
ROOTLY_TYPES = [
    "incident.created", "incident.updated", "incident.cancelled", "incident.resolved",
    "incident.mitigated", "incident.in_triage", "alert.created", "alert.updated",
    "pulse.created",
]  # fmt: skip
INCIDENT_IO_TYPES = [
    "public_escalation.escalation_created_v1", "public_escalation.escalation_status_updated_v1",
    "private_escalation.escalation_status_updated_v1", "public_alert.alert_created_v1",
    "public_alert.alert_resolved_v1", "public_incident.incident_created_v2",
    "public_incident.incident_updated_v2", "public_incident.incident_status_updated_v2",
    "private_incident.incident_updated_v2",
]  # fmt: skip


@st.composite
def objects(draw: st.DrawFn, fields: list[str]) -> dict[str, Any]:
    """A payload object: plausible values, with wrong types drawn for some of the fields
    the rules read."""
    obj: dict[str, Any] = {"id": f"obj-{draw(st.integers(0, 10**6))}"}
    for name in draw(st.lists(st.sampled_from(fields), max_size=3, unique=True)):
        obj[name] = draw(wrong_types)
    if draw(rarely):  # a value no store can hold, which ingest refuses
        obj[draw(st.sampled_from(fields))] = draw(poison)
    return obj


@st.composite
def rootly_bodies(draw: st.DrawFn, delivery_id: str) -> Any:
    event_type = draw(mostly(st.sampled_from(ROOTLY_TYPES), text))
    fields = ROOTLY_ALERT_FIELDS if str(event_type).startswith("alert") else ROOTLY_INCIDENT_FIELDS
    event: Any = {"id": delivery_id, "type": event_type, "issued_at": draw(wrong_types)}
    data: Any = draw(objects(fields))
    if draw(rarely):  # the envelope itself of the wrong shape
        event = draw(wrong_types)
    if draw(rarely):
        data = draw(wrong_types)
    body: Any = Pairs([("event", event), ("data", data)])
    if draw(st.booleans()):  # a duplicate key: the decoder keeps the last one
        body.insert(0, (draw(st.sampled_from(["event", "data"])), draw(wrong_types)))
    return body


@st.composite
def incident_io_bodies(draw: st.DrawFn) -> Any:
    event_type = draw(mostly(st.sampled_from(INCIDENT_IO_TYPES), text))
    family = str(event_type).split(".", 1)[0]
    payload: Any
    if "escalation" in family:
        payload = {
            "escalation": draw(objects(ESCALATION_FIELDS)),
            "previous_status": draw(wrong_types),
            "new_status": draw(st.one_of(st.just("acked"), wrong_types)),
            "actor": draw(wrong_types),
        }
    elif "incident" in family:
        payload = {
            "incident": draw(objects(INCIDENT_IO_INCIDENT_FIELDS)),
            "previous_status": draw(wrong_types),
            "new_status": draw(
                st.one_of(st.just({"category": "canceled"}), st.just("live"), wrong_types)
            ),
        }
    else:
        payload = draw(objects(INCIDENT_IO_ALERT_FIELDS))
    if draw(rarely):
        payload = draw(wrong_types)
    body = Pairs([("event_type", event_type), (str(event_type), payload)])
    if draw(st.booleans()):
        body.insert(0, ("event_type", draw(wrong_types)))
    return body


def nested(depth: int, kind: str) -> str:
    if kind == "{":
        return '{"a": ' * depth + "1" + "}" * depth
    return "[" * depth + "]" * depth


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bodies that are not an envelope: any bytes, other encodings, deep or near the limit."""
    kind = draw(st.sampled_from(["bytes", "json", "text", "deep", "big", "empty"]))
    if kind == "bytes":
        return draw(st.binary(max_size=512))
    if kind == "json":
        return render(draw(mostly(wrong_types, poison))).encode()
    if kind == "text":
        encoding = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"]))
        return draw(st.text(max_size=100)).encode(encoding, errors="replace")
    if kind == "deep":
        depth = draw(st.sampled_from([63, 64, 65, 200, 10_000]))
        inner = nested(depth, draw(st.sampled_from(["[", "{"])))
        return (
            '{"event": {"id": "deep", "type": "incident.created"}, "data": ' + inner + "}"
        ).encode()
    if kind == "big":
        return b'{"a": "' + b"x" * draw(st.integers(BODY_LIMIT - 20, BODY_LIMIT + 20)) + b'"}'
    return b""


# Headers the handlers read, mostly; now and then one that makes the parser refuse the
# request (a second Content-Length, framing, an upgrade) or a name of any bytes.
header_names = mostly(
    st.sampled_from(
        [
            "Content-Type", "Content-Encoding", "X-Rootly-Signature", "webhook-id",
            "webhook-timestamp", "webhook-signature", "Authorization", "Expect",
            "Accept-Encoding", "X-Custom", "Cookie", "Origin", "Sec-Fetch-Site",
        ]
    ),
    st.one_of(
        st.sampled_from(
            ["Content-Length", "Transfer-Encoding", "Host", "Connection", "Upgrade", "Trailer"]
        ),
        st.binary(min_size=1, max_size=20),
    ),
)  # fmt: skip
# Values with any byte a header may carry (non-ASCII included), mostly; now and then control
# bytes, NUL or 9 KB, which the parser refuses.
header_values = mostly(
    st.one_of(
        st.sampled_from(
            [
                b"application/json",
                b"application/json; charset=utf-16",
                b"text/plain",
                b"gzip",
                b"deflate",
                b"br",
                b"gzip, deflate",
                b"chunked",
                b"100-continue",
                b"-1",
                b"99999999999999999999",
                b"t=1,v1=00",
                b"v1,AAAA",
                b"Bearer \xff",
                b"Bearer " + "é".encode(),
                b"\xff\xfe",
                "é".encode(),
            ]
        ),
        st.lists(st.sampled_from([*range(0x20, 0x7F), *range(0x80, 0x100)]), max_size=40).map(
            bytes
        ),
    ),
    st.one_of(
        st.sampled_from([b"a\x01b", b"a\x7fb", b"a\x00b", b"x" * 9_000]),
        st.binary(max_size=40),
    ),
)


def _paths(path: str) -> st.SearchStrategy[str]:
    """`path` and what a client or a proxy in between could make of it."""
    return st.sampled_from(
        [
            path,
            path + "/",
            "/" + path[1:].replace("/", "%2F", 1),
            "/" + path[1:].replace("/", "%2f"),
            path.replace("/", "%2F", 1),
            path + "/.",
            path + "/..",
            "/." + path,
            path.replace("/", "/./", 1),
            "/x/.." + path,
            "/%2e%2e" + path,
            "//" + path.lstrip("/"),
            path + "?q=%FF%00&q=%C3%A9&q=%ED%A0%80",
            path + "?" + "é",
            path + "%00",
            path + "%C0%AF",
            path + "/" + "a" * 300,
            path + "?" + "a=b&" * 2_000,
            path + "/" + "x" * 9_000,
            path.upper(),
        ]
    )


ROUTES = [
    ("POST", "/webhooks/rootly"),
    ("POST", "/webhooks/incident-io"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
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
    ("GET", "/console/events"),
    ("GET", "/console/events/tail"),
    ("GET", "/console/events/1"),
    ("GET", "/console/objects/rootly/incident/inc-1"),
    ("GET", "/console/dead-letters"),
    ("GET", "/console/dead-letters/1/replay"),
    ("POST", "/console/dead-letters/1/drop"),
    ("GET", "/console/outbox"),
    ("GET", "/console/links"),
    ("GET", "/console/links/confirm"),
    ("POST", "/console/links/add"),
    ("GET", "/console/rules"),
    ("POST", "/console/rules/dry-run"),
    ("GET", "/console/health"),
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("GET", "/nowhere"),
]
# What the console's pages and forms read.
CONSOLE_FIELDS = [
    "q", "source", "type", "outcome", "since", "until", "limit", "cursor", "after", "offset",
    "state", "op", "a", "b", "body", "token", "next", "csrf", "login_csrf",
]  # fmt: skip


@st.composite
def _console_fields(draw: st.DrawFn, csrf: str) -> str:
    """A query string or form of the fields the console reads, with hostile values (and
    the session's CSRF token when there is one, mostly)."""
    from urllib.parse import quote

    fields = draw(
        st.dictionaries(
            st.sampled_from(CONSOLE_FIELDS),
            mostly(
                st.sampled_from(
                    [
                        "rootly",
                        "incident_io",
                        "1",
                        "-1",
                        "0",
                        "2030-01-01T00:00:00Z",
                        "add",
                        "rootly:incident:inc-1",
                        "incident_io:escalation:e",
                        "dead",
                        "{}",
                        "/console/events",
                        "//evil.example",
                        "9" * 30,
                    ]
                ),
                st.text(max_size=300),
            ),
            max_size=6,
        )
    )
    if csrf and draw(mostly(st.just(True), st.just(False))):
        fields["csrf"] = csrf
    # quote(..., errors="surrogatepass") keeps lone surrogates as the bytes they escape.
    return "&".join(
        f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}"
        for k, v in fields.items()
    )


def _encode(body: bytes, coding: str) -> bytes:
    """`body` under `coding`: valid gzip or deflate, or bytes that claim to be."""
    if coding == "gzip":
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    if coding == "garbage":
        return b"\x1f\x8b\x08\x00" + body[:64]
    return body


def _chunked(body: bytes, broken: bool) -> bytes:
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return framed + (b"zz\r\n" if broken else b"0\r\n\r\n")


@st.composite
def any_requests(
    draw: st.DrawFn, upstream: Upstream, token: str, session: str = "", csrf: str = ""
) -> tuple[bytes, str]:
    """A request to any route, mostly unsigned, with hostile headers, encodings, bodies and
    path variants; on the console's routes, with or without a signed-in operator's session
    cookie, and now and then a form (with the session's CSRF token or not) of hostile
    values in the fields the console reads."""
    method, path = draw(st.sampled_from(ROUTES))
    method = draw(
        mostly(
            st.one_of(
                st.just(method),
                st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
            ),
            st.text(st.sampled_from("ABCXYZ-_!~"), min_size=1, max_size=10),
        )
    )
    console = path.startswith("/console/")
    if console and draw(st.booleans()):
        path += "?" + draw(_console_fields(""))
    path = draw(_paths(path))
    headers: list[tuple[str | bytes, str | bytes]] = [(b"Content-Type", b"application/json")]
    form: bytes | None = None
    if console:
        cookie = draw(
            st.sampled_from(
                [
                    session.encode(),
                    session.encode() + b"x",
                    b"bridge_console=1.2.3",
                    b"bridge_console=\xff",
                    b"",
                ]
            )
        )
        if cookie:
            headers.append((b"Cookie", cookie))
        if draw(st.booleans()):
            headers = [(b"Content-Type", b"application/x-www-form-urlencoded")]
            if cookie:
                headers.append((b"Cookie", cookie))
            form = draw(_console_fields(csrf)).encode()
    if path.startswith("/api/") or draw(st.booleans()):
        headers.append(
            (
                b"Authorization",
                draw(
                    st.sampled_from(
                        [f"Bearer {token}".encode(), b"Bearer nope", b"Bearer \xff", b""]
                    )
                ),
            )
        )
    if "webhooks" in path:
        now = str(int(time.time())).encode()
        headers += draw(
            st.sampled_from(
                [
                    [(b"X-Rootly-Signature", b"t=" + now + b",v1=" + b"0" * 64)],
                    [(b"X-Rootly-Signature", b"t=" + now + b",v1=" + "é".encode())],
                    [
                        (b"webhook-id", b"msg_unsigned"),
                        (b"webhook-timestamp", now),
                        (b"webhook-signature", b"v1,AAAA"),
                    ],
                    [
                        (b"webhook-id", b"\xff\xfe"),
                        (b"webhook-timestamp", now),
                        (b"webhook-signature", b"v1,\xff"),
                    ],
                    [],
                ]
            )
        )
    extra = draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    if any(str(name).lower() == "content-type" for name, _ in extra):
        # A second Content-Type is refused by the parser: let the drawn one replace it.
        headers = [h for h in headers if h[0] != b"Content-Type"]
    headers += extra
    if draw(rarely):  # one header repeated many times
        name, value = draw(st.tuples(header_names, header_values))
        headers += [(name, value)] * draw(st.integers(2, 200))
    payload = form or draw(
        st.one_of(
            raw_bodies(),
            rootly_bodies(f"unsigned-{draw(st.integers(0, 10**6))}").map(
                lambda b: render(b).encode()
            ),
            incident_io_bodies().map(lambda b: render(b).encode()),
        )
    )
    coding = draw(st.sampled_from(["none", "none", "gzip", "deflate", "garbage", "br", "odd"]))
    if coding != "none":
        claimed = {"odd": b"x-unknown", "garbage": b"gzip"}.get(coding, coding.encode())
        headers.append((b"Content-Encoding", claimed))
    body = _encode(payload, coding)
    framing = draw(st.sampled_from(["length", "length", "chunked", "broken-chunked", "none"]))
    if framing in ("chunked", "broken-chunked"):
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = _chunked(body, framing == "broken-chunked")
    request = http_request(method, path, headers, None if framing == "none" else body)
    return Short(request), f"{method} {path[:80]} {coding} {framing}"


@st.composite
def signed_webhooks(draw: st.DrawFn) -> tuple[str, str, Any]:
    """A validly signed delivery (source, delivery ID, body) whose
    body is hostile: wrong types in the fields the rules read, duplicate keys, lone
    surrogates, NaN, huge numbers, deep nesting, or not an envelope at all."""
    source = draw(st.sampled_from(["rootly", "incident_io"]))
    serial = draw(st.integers(0, 10**9))
    delivery_id = draw(
        mostly(
            st.just(f"fuzz-{serial}"),
            st.sampled_from([f"fuzz-{serial}-é", f"fuzz-{serial}-\ud800", "x" * 201, ""]),
        )
    )
    body: Any
    if source == "rootly":
        body = draw(mostly(rootly_bodies(delivery_id), raw_bodies().map(Short)))
    else:
        body = draw(mostly(incident_io_bodies(), raw_bodies().map(Short)))
    return source, delivery_id, body


def _signed_request(target: Target, source: str, delivery_id: str, body: bytes) -> bytes:
    now = int(time.time())
    headers: list[tuple[str | bytes, str | bytes]] = [(b"Content-Type", b"application/json")]
    if source == "rootly":
        signature = rootly_webhook.sign(target.upstream.rootly_webhook_secret, now, body)
        headers.append((rootly_webhook.SIGNATURE_HEADER, signature))
        return http_request("POST", "/webhooks/rootly", headers, body)
    secret = target.upstream.incident_io_webhook_secret
    try:
        signature = incident_io_webhook.sign(secret, delivery_id, now, body)
        webhook_id = delivery_id.encode()
    except UnicodeEncodeError:
        # An ID no one can sign as text: sent as the bytes it escapes (not UTF-8).
        webhook_id = delivery_id.encode("utf-8", "surrogatepass")
        signature = "v1,AAAA"
    headers += [
        (b"webhook-id", webhook_id),
        (b"webhook-timestamp", str(now).encode()),
        (b"webhook-signature", signature.encode()),
    ]
    return http_request("POST", "/webhooks/incident-io", headers, body)


# -- the fuzz ---------------------------------------------------------------------------


@settings(FUZZ, max_examples=ROUTE_REQUESTS)
@given(data=st.data())
def test_fuzzed_requests_on_every_route_get_no_5xx(target: Target, data: st.DataObject) -> None:
    """Proves that requests to every route (webhooks, health, readiness, metrics, every
    admin route, the console's pages and forms with and without an operator's session, an
    unknown path) with any method, path variant (encoded slashes, dots,
    NUL, overlong UTF-8, overlong paths and queries), header (non-ASCII, control bytes,
    9 KB values, one header repeated up to 200 times), token, Content-Encoding (valid,
    undecodable, unsupported), framing (chunked, broken chunked, no length) and body are
    answered, below 500."""
    request, what = data.draw(
        any_requests(target.upstream, target.token, target.session, target.csrf)
    )
    answer = target.send(request)
    _assert_answered_below_500(answer, what)


@settings(FUZZ, max_examples=SIGNED_REQUESTS)
@given(delivery=signed_webhooks())
def test_fuzzed_signed_webhooks_get_2xx_or_4xx(
    target: Target, delivery: tuple[str, str, Any]
) -> None:
    """Proves that validly signed deliveries with hostile bodies (wrong types in every
    field the default rules read, duplicate keys, lone surrogate escapes, NUL, NaN and
    Infinity, numbers of thousands of digits, nesting near and past the limit, delivery
    IDs that are not text or too long, not an envelope at all) get 200 or a 4xx, never a
    5xx."""
    source, delivery_id, payload = delivery
    body = payload if isinstance(payload, bytes) else render(payload).encode()
    answer = target.send(_signed_request(target, source, delivery_id, body))
    _assert_answered_below_500(answer, (source, delivery_id, body[:200]))
    # An empty or overlong webhook-id is a malformed signature header: 401.
    malformed_header = source == "incident_io" and not 0 < len(delivery_id) <= 200
    expected = (401, 413) if malformed_header else (200, 400, 413)
    assert answer.status in expected, (answer.status, answer.body[:200])
    target.signed.add((source, delivery_id))
    if answer.status == 200:
        # Rootly's delivery ID is the body's event.id, whatever the fuzz meant it to be.
        stored = answer.json()
        assert stored["status"] in ("accepted", "ignored", "duplicate"), stored
        if source == "rootly":
            event = json.loads(body)["event"]
            target.signed.add((source, event["id"]))


def _unsettled(db_path: Path) -> int:
    """Stored deliveries not dispatched yet and actions not tried yet (a delivery or an
    action waiting for a retry has been, and holds its error)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        (events,) = conn.execute(
            "SELECT count(*) FROM inbox WHERE state = 'pending' AND error IS NULL"
        ).fetchone()
        (actions,) = conn.execute(
            "SELECT count(*) FROM outbox WHERE state IN ('pending', 'claimed') AND attempts = 0"
        ).fetchone()
    finally:
        conn.close()
    return int(events) + int(actions)


def test_after_the_fuzz_nothing_unsigned_is_stored_and_nothing_was_an_error(
    target: Target,
) -> None:
    """Proves that after the 2,000 fuzzed requests the bridge is the same process and
    serving, that every stored delivery is one that was validly signed, that nothing was
    logged at ERROR or with a traceback except the dead letters of actions that could not be
    built from their hostile params (dead-lettered on their first attempt, with the reason),
    and that the fuzz ran its full count."""
    assert target.bridge.alive(), target.bridge.log_text()[-3000:]
    assert target.bridge.starts == 1
    assert target.send(http_request("GET", "/healthz")).status == 200
    assert target.sent >= ROUTE_REQUESTS + SIGNED_REQUESTS
    # Every stored delivery dispatched and every action tried once, so that what they log
    # is in the log (bounded: the platforms are a closed port, every call fails fast).
    deadline = time.monotonic() + 60
    while _unsettled(target.db_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _unsettled(target.db_path) == 0
    stored = inbox_rows(target.db_path)
    assert stored <= target.signed, sorted(stored - target.signed)[:5]
    errors = [
        e
        for e in target.bridge.log_events()
        if e.get("level") in ("error", "critical") or "exception" in e
    ]
    unexpected = [
        e
        for e in errors
        if not (
            e.get("event") == "action.dead_lettered"
            and e.get("attempts") == 1
            and "must be a string" in str(e.get("error"))
        )
    ]
    assert unexpected == [], unexpected[:5]
