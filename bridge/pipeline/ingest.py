"""Webhook ingest: check, verify, parse the envelope, store durably, then answer.

Order of checks (each answer is final, nothing is stored before the last step):
content type and encoding (415) -> body size (413, never reading past the limit, counted
after decompression), arrival (408) and decoding (400) -> signature (401, reason only in
logs/metrics) -> JSON and envelope (400 with a short reason; the delivery ID and type must
be text the store can hold) -> inbox (200 accepted/duplicate; 503 if the store is
unavailable, so the sender retries; 400 for a delivery the store refuses on its own).

Writes go through `InboxWriter`, a group commit: concurrent deliveries are written in one
transaction per batch, so throughput does not collapse to one fsync per webhook.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from aiohttp import web

from bridge.clock import Clock, utcnow
from bridge.events import DeliveryId, InboxId, Platform
from bridge.logging import Logger
from bridge.metrics import LabelledCounters, Metrics
from bridge.pipeline.batching import GroupCommit, WriteRefused
from bridge.pipeline.triage import Triage
from bridge.platforms.incident_io import webhook as incident_io_webhook
from bridge.platforms.rootly import webhook as rootly_webhook
from bridge.platforms.webhooks import Envelope, PayloadError, SignatureError, decode_json_object
from bridge.rules import RuleSet
from bridge.store.base import InboxRow, NewInboxEvent, StoreError
from bridge.store.store import Store
from bridge.tasks import Supervisor

Outcome = Literal["accepted", "duplicate", "ignored"]

# Set on an answer given before the request body was read to its end, when the rest is not
# worth reading (it stalled, or it cannot be decoded): the connection closes once the answer
# is out, instead of aiohttp reading and discarding the rest for up to 10 s (`bridge.web`).
CLOSE_AFTER_ANSWER: Final = web.ResponseKey("bridge_close_after_answer", bool)
# What aiohttp decodes (br and zstd only when their libraries are installed; without them
# the request is refused before it reaches a handler). Anything else would reach the
# signature check still encoded.
CONTENT_ENCODINGS: Final = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


@dataclass(frozen=True)
class SourceConfig:
    """What ingest needs to know to accept one platform's webhooks."""

    source: Platform
    secrets: tuple[str, ...]
    tolerance_seconds: int


def body_problem(exc: web.RequestPayloadError) -> str:
    """What aiohttp found wrong with a request body (its encoding, its chunked framing), in
    one line for a log event."""
    cause = exc.__cause__ or exc
    message = getattr(cause, "message", None) or str(cause)
    return f"{type(cause).__name__}: {' '.join(str(message).split())}"[:200]


def _json(http_status: int, **body: object) -> web.Response:
    return web.json_response(body, status=http_status)


def _stored(outcome: Outcome, inbox_id: InboxId) -> web.Response:
    """The 200 for a stored delivery; built by hand, not by the JSON encoder, since it is
    the answer to nearly every request (same body as `_json(200, status=, inbox_id=)`)."""
    return web.Response(
        body=b'{"status": "%s", "inbox_id": %d}' % (outcome.encode(), inbox_id),
        content_type="application/json",
    )


class InboxHandoff(Protocol):
    """The local dispatcher, as far as ingest's fast path needs it."""

    def room(self) -> int: ...

    def adopt(self, rows: Sequence[InboxRow]) -> None: ...


class InboxWriter:
    """Group commit for the inbox: one transaction per batch of concurrent deliveries.

    When the local dispatcher has room, the batch is stored already leased to this process
    and handed to it directly (no claim transaction, no wake-up latency). A crash leaves
    those rows leased; they are claimed again when the lease expires, like any other.
    """

    def __init__(
        self,
        store: Store,
        supervisor: Supervisor,
        on_stored: Callable[[], None],
        *,
        owner: str | None = None,
        lease_seconds: float = 60.0,
        handoff: InboxHandoff | None = None,
    ) -> None:
        self._store = store
        self._on_stored = on_stored
        self._owner = owner
        self._lease = lease_seconds
        self._handoff = handoff
        self._commit: GroupCommit[NewInboxEvent, InboxId | None] = GroupCommit(
            "ingest.inbox-writer", self._write, supervisor
        )

    def start(self) -> None:
        self._commit.start()

    async def write(self, event: NewInboxEvent) -> InboxId | None:
        """Store `event`; None if its delivery ID was already stored. Raises StoreError."""
        return await self._commit.submit(event)

    async def _write(self, events: Sequence[NewInboxEvent]) -> list[InboxId | None]:
        handoff = self._handoff
        # Settled events are stored processed: they need neither room nor a wake-up.
        to_dispatch = sum(1 for event in events if event.settled_trace is None)
        claim = handoff is not None and self._owner is not None and handoff.room() >= to_dispatch
        ids = await self._store.add_inbox(events, self._owner if claim else None, self._lease)
        fresh = [
            (event, new_id)
            for event, new_id in zip(events, ids, strict=True)
            if new_id is not None and event.settled_trace is None
        ]
        if not fresh:
            return ids
        if claim and handoff is not None:
            handoff.adopt(
                [
                    InboxRow(
                        id=new_id,
                        source=event.source,
                        delivery_id=event.delivery_id,
                        event_type=event.event_type,
                        body=event.body,
                        received_at=event.received_at,
                        state="pending",
                        processed_at=None,
                        attempts=1,
                        trace=None,
                        error=None,
                    )
                    for event, new_id in fresh
                ]
            )
        self._on_stored()
        return ids


class Ingest:
    """The two webhook endpoints' logic, independent of routing."""

    def __init__(
        self,
        *,
        sources: Mapping[Platform, SourceConfig],
        writer: InboxWriter,
        rules: Callable[[], RuleSet],
        metrics: Metrics,
        logger: Logger,
        max_body_bytes: int,
        body_timeout_seconds: float = 10.0,
        clock: Clock = utcnow,
    ) -> None:
        self._sources = sources
        self._writer = writer
        self._triage = Triage(rules)
        self._metrics = metrics
        self._log = logger
        self._max_body = max_body_bytes
        self._body_timeout = body_timeout_seconds
        self._clock = clock
        self._accepting = True
        self._in_flight = 0
        self._counters = LabelledCounters()

    def set_secrets(self, source: Platform, secrets: tuple[str, ...]) -> bool:
        """Verify `source`'s webhooks with `secrets` from the next delivery on (rotation
        without a restart, bridge/secrets.py); False if `source` is not enabled."""
        config = self._sources.get(source)
        if config is None:
            return False
        self._sources = {**self._sources, source: dataclasses.replace(config, secrets=secrets)}
        return True

    def stop_accepting(self) -> None:
        """From now on answer 503 (senders retry against another replica or later)."""
        self._accepting = False

    @property
    def in_flight(self) -> int:
        """Deliveries being stored right now (shutdown waits for them; a client still
        sending its body is not counted: nothing of it is stored, and it will retry)."""
        return self._in_flight

    def _count(self, source: Platform, event_type: str, outcome: str) -> None:
        self._counters.inc(self._metrics.webhooks_received, source, event_type, outcome)

    def _reject(
        self, source: Platform, reason: str, status: int, message: str, **log: object
    ) -> web.Response:
        outcome = {
            413: "too_large",
            408: "too_slow",
            401: "rejected_signature",
            503: "unavailable",
        }.get(status, "rejected_payload")
        self._count(source, "unknown", outcome)
        self._metrics.webhook_rejections.labels(source, reason).inc()
        self._log.warning("webhook.rejected", source=source, reason=reason, status=status, **log)
        return _json(status, error=message)

    def _within_limit(self, body: bytes) -> bytes | None:
        return body if len(body) <= self._max_body else None

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None if it is larger than the limit (stops reading at the limit)."""
        if request.content_length is not None and request.content_length > self._max_body:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)

    async def handle(self, source: Platform, request: web.Request) -> web.Response:
        config = self._sources.get(source)
        if config is None:
            return _json(404, error=f"{source} is not enabled on this bridge")
        if not self._accepting:
            return self._reject(source, "shutting_down", 503, "shutting down, retry later")
        headers = request.headers
        content_type = headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
            return self._reject(
                source, "content_type", 415, "Content-Type must be application/json"
            )
        encoding = headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in CONTENT_ENCODINGS:
            return self._reject(
                source,
                "content_encoding",
                415,
                "Content-Encoding must be gzip, deflate or identity",
            )
        try:
            if request.content.is_eof():
                # The whole body came with the headers (the usual case for a webhook): no
                # wait, so no timer to arm and cancel.
                body = self._within_limit(request.content.read_nowait())
            else:
                async with asyncio.timeout(self._body_timeout):
                    body = await self._read_body(request)
        except TimeoutError:
            response = self._reject(
                source,
                "body_timeout",
                408,
                f"body not received within {self._body_timeout:g} s",
            )
            # The rest of that body is not worth waiting for: close instead of draining it.
            response.force_close()
            response[CLOSE_AFTER_ANSWER] = True
            return response
        except web.RequestPayloadError as exc:
            # The body does not decode (its Content-Encoding) or its chunked framing is
            # broken: nothing of it can be used, nor the rest of it read.
            response = self._reject(
                source,
                "body_encoding",
                400,
                "body could not be decoded",
                detail=body_problem(exc),
            )
            response.force_close()
            response[CLOSE_AFTER_ANSWER] = True
            return response
        if body is None:
            return self._reject(
                source, "too_large", 413, f"body larger than {self._max_body} bytes"
            )
        try:
            envelope = self._verify_and_parse(config, request, body)
        except SignatureError as exc:
            return self._reject(source, exc.reason, 401, "invalid signature", detail=exc.detail)
        except PayloadError as exc:
            message = str(exc)[:200]
            return self._reject(source, "payload", 400, message, detail=message)
        event_type = envelope.event_type if envelope.known_type else "other"
        settled = self._triage.settle(envelope)
        self._in_flight += 1
        try:
            new_id = await self._writer.write(
                NewInboxEvent(
                    source=source,
                    delivery_id=envelope.delivery_id,
                    event_type=envelope.event_type,
                    body=body,
                    received_at=self._clock(),
                    settled_trace=None if settled is None else settled.trace,
                )
            )
        except WriteRefused as exc:
            # Not an outage: the store refused this delivery alone (the others written with
            # it were stored). The checks above should have refused it: worth a look.
            self._count(source, event_type, "rejected_payload")
            self._metrics.webhook_rejections.labels(source, "store_refused").inc()
            self._log.error(
                "webhook.store_refused",
                source=source,
                delivery_id=envelope.delivery_id,
                error=str(exc),
            )
            return _json(400, error="this delivery cannot be stored")
        except StoreError as exc:
            self._count(source, event_type, "unavailable")
            self._log.error("webhook.store_failed", source=source, error=str(exc))
            return _json(503, error="storage unavailable, retry later")
        finally:
            self._in_flight -= 1
        if new_id is None:
            self._count(source, event_type, "duplicate")
            self._log.debug("webhook.duplicate", source=source, delivery_id=envelope.delivery_id)
            return _json(200, status="duplicate")
        outcome: Outcome = "accepted" if envelope.known_type else "ignored"
        self._count(source, event_type, outcome)
        if settled is not None:
            # Counted as the dispatcher would have counted it, so the family still covers
            # every stored event.
            self._counters.inc(self._metrics.events_dispatched, source, settled.result)
        # Debug, not info: at full rate this line is a tenth of ingest's CPU, and
        # bridge_webhooks_received_total already counts every acceptance.
        self._log.debug(
            "webhook.accepted",
            source=source,
            delivery_id=envelope.delivery_id,
            event_type=envelope.event_type,
            inbox_id=new_id,
            outcome=outcome,
        )
        return _stored(outcome, new_id)

    def _verify_and_parse(
        self, config: SourceConfig, request: web.Request, body: bytes
    ) -> Envelope:
        now = self._clock().timestamp()
        if config.source == "rootly":
            rootly_webhook.verify(
                request.headers, body, config.secrets, config.tolerance_seconds, now
            )
            return rootly_webhook.envelope(decode_json_object(body))
        delivery_id: DeliveryId = incident_io_webhook.verify(
            request.headers, body, config.secrets, config.tolerance_seconds, now
        )
        return incident_io_webhook.envelope(decode_json_object(body), delivery_id)
