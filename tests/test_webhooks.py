"""Webhook signatures and parsing, proven against independent implementations.

incident.io signatures are made by the `standardwebhooks` reference library; Rootly's by an
HMAC computed here from the documented recipe. Every incident.io example payload in the
official spec must parse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from bridge.events import DeliveryId
from bridge.platforms.incident_io import webhook as iio
from bridge.platforms.rootly import webhook as rootly
from bridge.platforms.webhooks import (
    MAX_JSON_DEPTH,
    PayloadError,
    SignatureError,
    decode_json_object,
)
from tests import specs

WHSEC = "whsec_" + base64.b64encode(b"a-very-secret-signing-key").decode()
OTHER = "whsec_" + base64.b64encode(b"the-previous-signing-key").decode()
BODY = (
    b'{"event_type":"public_alert.alert_created_v1","public_alert.alert_created_v1":{"id":"01A"}}'
)


def standard_headers(
    secret: str, body: bytes, msg_id: str = "msg_1", ts: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def rootly_header(secret: str, body: bytes, ts: int) -> str:
    digest = hmac.new(secret.encode(), f"{ts}".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


class TestIncidentIoSignature:
    def test_reference_library_signature_verifies(self) -> None:
        """A signature made by the standardwebhooks library is accepted and yields webhook-id."""
        headers = standard_headers(WHSEC, BODY)
        assert iio.verify(headers, BODY, [WHSEC], 300, time.time()) == "msg_1"

    def test_our_signer_matches_reference_library(self) -> None:
        """Our signer produces what the reference library verifies (used by the sandbox/bench)."""
        ts = int(time.time())
        headers = {
            "webhook-id": "msg_9",
            "webhook-timestamp": str(ts),
            "webhook-signature": iio.sign(WHSEC, "msg_9", ts, BODY),
        }
        Webhook(WHSEC).verify(BODY, headers)

    def test_rotation_any_secret_and_any_signature_entry(self) -> None:
        """With two secrets configured, and several v1 entries sent, one match is enough."""
        headers = standard_headers(OTHER, BODY)
        headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
        assert iio.verify(headers, BODY, [WHSEC, OTHER], 300, time.time()) == "msg_1"

    @pytest.mark.parametrize(
        ("mutate", "reason"),
        [
            (lambda h, b: (h, b + b" "), "signature"),
            (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), "signature"),
            (
                lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
                "missing_header",
            ),
            (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing_header"),
            (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "malformed_header"),
            (lambda h, b: ({**h, "webhook-signature": "v2,abc"}, b), "malformed_header"),
        ],
    )
    def test_tampering_is_rejected(self, mutate, reason) -> None:  # type: ignore[no-untyped-def]
        """Changed body, changed ID, missing or malformed headers: rejected with the reason."""
        headers, body = mutate(standard_headers(WHSEC, BODY), BODY)
        with pytest.raises(SignatureError) as info:
            iio.verify(headers, body, [WHSEC], 300, time.time())
        assert info.value.reason == reason

    def test_wrong_secret(self) -> None:
        """A delivery signed with a secret we do not hold is rejected."""
        with pytest.raises(SignatureError, match="no v1 signature"):
            iio.verify(standard_headers(OTHER, BODY), BODY, [WHSEC], 300, time.time())

    @pytest.mark.parametrize("offset", [-301, 301])
    def test_old_and_future_timestamps(self, offset: int) -> None:
        """Timestamps more than 5 minutes off are rejected even with a valid signature."""
        now = time.time()
        headers = standard_headers(WHSEC, BODY, ts=int(now) + offset)
        with pytest.raises(SignatureError) as info:
            iio.verify(headers, BODY, [WHSEC], 300, now)
        assert info.value.reason == "timestamp"


class TestRootlySignature:
    def test_independent_hmac_verifies(self) -> None:
        """HMAC-SHA256(secret, t + body) as hex, in t=..,v1=.., is accepted."""
        ts = int(time.time())
        rootly.verify(
            {"X-Rootly-Signature": rootly_header("s3cret", BODY, ts)},
            BODY,
            ["s3cret"],
            300,
            time.time(),
        )

    def test_our_signer_matches_independent_hmac(self) -> None:
        """The signer the sandbox and benchmarks use equals the documented recipe."""
        assert rootly.sign("s3cret", 1700000000, BODY) == rootly_header("s3cret", BODY, 1700000000)

    def test_spaces_around_comma_and_case_insensitive_header(self) -> None:
        """'t=.., v1=..' with spaces and a lower-case header name are tolerated."""
        ts = int(time.time())
        value = rootly_header("s3cret", BODY, ts).replace(",", " , ")
        rootly.verify({"x-rootly-signature": value}, BODY, ["s3cret"], 300, time.time())

    def test_rotation(self) -> None:
        """Either of two configured secrets verifies."""
        ts = int(time.time())
        rootly.verify(
            {"X-Rootly-Signature": rootly_header("old", BODY, ts)},
            BODY,
            ["new", "old"],
            300,
            time.time(),
        )

    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            (None, "missing_header"),
            ("v1=abc", "malformed_header"),
            ("t=abc,v1=abc", "malformed_header"),
            ("garbage", "malformed_header"),
            ("t={ts},v1=" + "0" * 64, "signature"),
            ("t={old},v1={sig_old}", "timestamp"),
        ],
    )
    def test_rejections(self, header: str | None, reason: str) -> None:
        """Missing, malformed, wrong and stale signatures are rejected with their reason."""
        now = int(time.time())
        headers = {}
        if header is not None:
            old = now - 1000
            headers["X-Rootly-Signature"] = header.format(
                ts=now, old=old, sig_old=rootly_header("s3cret", BODY, old).split("v1=")[1]
            )
        with pytest.raises(SignatureError) as info:
            rootly.verify(headers, BODY, ["s3cret"], 300, now)
        assert info.value.reason == reason

    def test_tampered_body(self) -> None:
        """One changed byte of body fails verification."""
        ts = int(time.time())
        with pytest.raises(SignatureError):
            rootly.verify(
                {"X-Rootly-Signature": rootly_header("s3cret", BODY, ts)},
                BODY[:-1] + b"]",
                ["s3cret"],
                300,
                ts,
            )


class TestParsing:
    def test_every_spec_example_parses(self) -> None:
        """Every public_/private_ webhook example in the official incident.io spec parses."""
        types = specs.webhook_event_types()
        assert len(types) > 20
        for event_type in types:
            body = json.dumps(specs.webhook_example(event_type)).encode()
            event = iio.parse(body, DeliveryId("msg_x"))
            assert event.type == event_type
            assert event.needs_hydration == event_type.startswith("private_")

    def test_escalation_status_update_fields(self) -> None:
        """Status updates carry previous/new status, the actor's API key and related objects."""
        example = specs.webhook_example("public_escalation.escalation_status_updated_v1")
        inner = example["public_escalation.escalation_status_updated_v1"]
        inner["new_status"] = "acked"
        inner["actor"] = {"api_key": {"id": "KEY1", "name": "bridge"}}
        event = iio.parse(json.dumps(example).encode(), DeliveryId("m"))
        assert event.new_status == "acked"
        assert event.previous_status == inner["previous_status"]
        assert event.actor.kind == "api_key"
        assert event.actor.id == "KEY1"
        assert event.subject is not None
        assert str(event.subject) == f"incident_io:escalation:{inner['escalation']['id']}"
        assert {r.kind for r in event.related} == {"alert", "incident"}

    def test_incident_status_uses_category(self) -> None:
        """Incident status updates expose the status category (live, canceled, ...)."""
        example = specs.webhook_example("public_incident.incident_status_updated_v2")
        inner = example["public_incident.incident_status_updated_v2"]
        inner["previous_status"]["category"] = "closed"
        inner["new_status"]["category"] = "live"
        event = iio.parse(json.dumps(example).encode(), DeliveryId("m"))
        assert (event.previous_status, event.new_status) == ("closed", "live")
        assert event.subject is not None
        assert event.subject.kind == "incident"

    def test_unknown_type_and_enum_values_accepted(self) -> None:
        """Unknown event types and status values parse, marked unknown, never rejected."""
        body = json.dumps(
            {"event_type": "public_widget.sprocket_v9", "public_widget.sprocket_v9": {"id": "1"}}
        ).encode()
        event = iio.parse(body, DeliveryId("m"))
        assert event.known_type is False
        assert event.subject is None
        body = json.dumps(
            {
                "event_type": "public_escalation.escalation_status_updated_v1",
                "public_escalation.escalation_status_updated_v1": {
                    "escalation": {"id": "E1", "status": "brand_new"},
                    "previous_status": "triggered",
                    "new_status": "brand_new",
                },
            }
        ).encode()
        assert iio.parse(body, DeliveryId("m")).new_status == "brand_new"

    def test_rootly_incident_and_alert(self) -> None:
        """Rootly flat payloads become incident/alert events with related objects."""
        body = json.dumps(
            {
                "event": {
                    "id": "ev1",
                    "type": "incident.cancelled",
                    "issued_at": "2026-01-01T00:00:00Z",
                },
                "data": {"id": "inc-1", "status": "cancelled", "alert_ids": ["al-1"]},
            }
        ).encode()
        event = rootly.parse(body)
        assert str(event.subject) == "rootly:incident:inc-1"
        assert event.new_status == "cancelled"
        assert [str(r) for r in event.related] == ["rootly:alert:al-1"]
        body = json.dumps(
            {
                "event": {"id": "ev2", "type": "alert.created", "issued_at": None},
                "data": {"id": "al-1", "incidents": [{"id": "inc-1"}]},
            }
        ).encode()
        event = rootly.parse(body)
        assert str(event.subject) == "rootly:alert:al-1"
        assert [str(r) for r in event.related] == ["rootly:incident:inc-1"]
        assert event.delivery_id == "ev2"

    @pytest.mark.parametrize(
        "body",
        [
            b"\xff\xfe",
            b"not json",
            b"[1,2]",
            b'"str"',
            b"{}",
            b'{"event": {"id": 1, "type": "x"}, "data": {}}',
            b'{"event": {"id": "a", "type": "x"}}',
            b"[" * 5000 + b"]" * 5000,
        ],
    )
    def test_rootly_bad_payloads(self, body: bytes) -> None:
        """Invalid UTF-8, non-JSON, non-object, wrong envelope, deep nesting: PayloadError."""
        with pytest.raises(PayloadError):
            rootly.parse(body)

    def test_deeply_nested_object_is_refused(self) -> None:
        """JSON objects nested beyond the limit are refused without recursion errors."""
        body = b'{"event_type": "x", "x": ' + b'{"a":' * 100 + b"1" + b"}" * 100 + b"}"
        with pytest.raises(PayloadError, match="nested"):
            iio.parse(body, DeliveryId("m"))


@pytest.mark.parametrize("brackets", ["{", "["])
def test_json_nesting_limit_is_exact(brackets: str) -> None:
    """Bodies nested exactly to the limit decode, one level more is refused, whether the
    cheap bracket count or the full walk decides (a value inside the innermost of
    MAX_JSON_DEPTH brackets is one level too deep)."""

    def nested(levels: int) -> bytes:
        inner: object = 1
        for _ in range(levels):
            inner = {"k": inner} if brackets == "{" else [inner]
        return json.dumps({"k": inner}).encode()

    assert decode_json_object(nested(MAX_JSON_DEPTH - 2))
    with pytest.raises(PayloadError, match="nested deeper"):
        decode_json_object(nested(MAX_JSON_DEPTH - 1))
    with pytest.raises(PayloadError, match="nested deeper"):
        decode_json_object(nested(MAX_JSON_DEPTH))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": [1, Infinity]}', "Infinity is not a JSON number"),
        ('{"a": {"b": -Infinity}}', "-Infinity is not a JSON number"),
        ('{"a": 1e400}', "too large for a float"),
        ('{"a": [-1' + "0" * 400 + ".5]}", "too large for a float"),
        ('{"a": "\\ud800"}', "lone surrogate"),
        ('{"a": ["x", "\\uDFFF tail"]}', "lone surrogate"),
        ('{"\\udc80": 1}', "lone surrogate"),
        ('{"a": "nul \\u0000 inside"}', "NUL"),
    ],
)
def test_json_that_no_store_can_hold_is_refused(text: str, why: str) -> None:
    """Bodies that Python's decoder takes but that are not JSON (NaN, Infinity), that it
    turns into an infinity (1e400), or whose strings are not text a store column can hold
    (a lone surrogate escape, a NUL, in a value or a key, at any depth) are a PayloadError
    (400), not a row that fails its batch or a value PostgreSQL refuses later."""
    with pytest.raises(PayloadError, match=why):
        decode_json_object(text.encode())


class TestSignatureMaterialThatIsNotText:
    """Header values aiohttp hands over decoded as UTF-8, undecodable bytes as lone
    surrogates: none of them may reach `hmac.compare_digest` (which raises TypeError for
    non-ASCII text) or an encoder (which raises for a surrogate)."""

    @pytest.mark.parametrize(
        "value",
        [
            "t={ts},v1=é",
            "t={ts},v1=\udcff\udcfe",
            "t={ts},v1=" + "0" * 63 + "é",
            "t=" + "".join(chr(0x660 + int(d)) for d in "1700000000") + ",v1=00",
        ],
    )
    def test_rootly_non_ascii_signature_is_a_signature_error(self, value: str) -> None:
        """Rootly: 401 with reason malformed_header."""
        headers = {rootly.SIGNATURE_HEADER: value.format(ts=int(time.time()))}
        with pytest.raises(SignatureError) as caught:
            rootly.verify(headers, b"{}", ["secret"], 300, time.time())
        assert caught.value.reason == "malformed_header"

    @pytest.mark.parametrize(
        ("header", "value"),
        [
            ("webhook-signature", "v1,é"),
            ("webhook-signature", "v1,AAAA v1,\udcff"),
            ("webhook-timestamp", "".join(chr(0x660 + int(d)) for d in "1700000000")),
            ("webhook-timestamp", "+1700000000"),
        ],
    )
    def test_incident_io_non_ascii_signature_is_a_signature_error(
        self, header: str, value: str
    ) -> None:
        """incident.io: 401 with reason malformed_header."""
        headers = standard_headers(WHSEC, BODY)
        headers[header] = value
        with pytest.raises(SignatureError) as caught:
            iio.verify(headers, BODY, [WHSEC], 300, time.time())
        assert caught.value.reason == "malformed_header"

    @pytest.mark.parametrize("msg_id", ["\udcff", "msg_\udcc3(", "msg_\x00"])
    def test_incident_io_webhook_id_that_cannot_be_stored_is_a_payload_error(
        self, msg_id: str
    ) -> None:
        """A webhook-id that is not UTF-8 text (or holds NUL) is a PayloadError (400)."""
        headers = standard_headers(WHSEC, BODY)
        headers["webhook-id"] = msg_id
        with pytest.raises(PayloadError, match="webhook-id"):
            iio.verify(headers, BODY, [WHSEC], 300, time.time())
