"""Async client of the incident.io REST API (``https://api.incident.io``), JSON bodies.

Every request body matches the operation schema of the official spec
(`specs/incident-io/openapi3.json`); the contract tests check each one. Alert events go to an
HTTP alert source and authenticate with that source's own secret, not the API key. HTTP
concerns (pacing, metrics, error mapping) live in `bridge.platforms.http.ApiTransport`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import quote

import aiohttp
import structlog

from bridge.events import Action, ActionResult, ObjectRef, Platform
from bridge.metrics import Metrics
from bridge.operations import INCIDENT_IO_EDIT_FIELDS
from bridge.platforms.base import InvalidAction, MalformedResponse, action_params, action_target
from bridge.platforms.http import (
    DEFAULT_USER_AGENT,
    ApiTransport,
    ErrorInfo,
    matches_any,
    parse_answer,
)
from bridge.platforms.incident_io.models import (
    AlertEventAccepted,
    Escalation,
    IncidentIoAlert,
    IncidentIoIncident,
    unwrap,
)
from bridge.platforms.ratelimit import KeyLimiter

DEFAULT_BASE_URL: Final = "https://api.incident.io"
JSON: Final = "application/json"

AlertEventStatus = Literal["firing", "resolved"]
ALERT_EVENT_STATUSES: Final = ("firing", "resolved")
# What an API key may answer a page with (`nack`, "I personally can't take this", is for
# people only; `specs/incident-io/supplement.json`).
EscalationResponse = Literal["ack", "snooze"]
ESCALATION_RESPONSES: Final = ("ack", "snooze")

# `IncidentEditPayloadV2` in the official spec. incident.io ignores fields it does not know,
# so a misspelt field would silently do nothing: refuse it here instead.
EDIT_INCIDENT_FIELDS: Final = INCIDENT_IO_EDIT_FIELDS
# Query filters of `GET /v2/escalations` (deepObject: ``status[one_of]=triggered``).
ESCALATION_FILTERS: Final = frozenset(
    {
        "escalation_path",
        "status",
        "alert",
        "incident",
        "created_at",
        "updated_at",
        "idempotency_key",
    }
)
# Query filters of `GET /v2/alerts` (``deduplication_key[is]=...``, ``created_at[gte]=...``).
ALERT_FILTERS: Final = frozenset(
    {
        "deduplication_key",
        "status",
        "alert_source",
        "alert_group_id",
        "created_at",
        "has_notes",
        "include_maintenance_window",
    }
)
MAX_PAGE_SIZE: Final = 50
Filters = Mapping[str, Sequence[str] | str]

_CONFLICT_CODES: Final = frozenset({"invalid_state"})
_CONFLICT_WORDS = re.compile(
    r"\bcannot be (?:cancel+ed|resolved|acked|acknowledged|escalated|edited|updated|snoozed)"
    r"|\bcan't be (?:cancel+ed|resolved|acked|acknowledged)"
    r"|\balready (?:been )?(?:cancel+ed|resolved|acked|acknowledged|expired|closed)"
    r"|\binvalid state\b",
    re.IGNORECASE,
)


def is_incident_io_conflict(info: ErrorInfo) -> bool:
    """409 always; 400/422 with code ``invalid_state`` or words saying the state forbids it."""
    if info.status == 409:
        return True
    if info.status not in (400, 422):
        return False
    return bool(_CONFLICT_CODES.intersection(info.codes)) or matches_any(
        _CONFLICT_WORDS, info.messages
    )


def _path(template: str, object_id: str) -> str:
    if not object_id:
        raise InvalidAction("incident.io object ID must not be empty")
    return template.format(id=quote(object_id, safe=""))


class IncidentIoClient:
    """The incident.io operations the bridge performs and the reads it hydrates events with.

    `alert_source_config_id` / `alert_source_token` name the HTTP alert source that
    ``incident_io.send_alert_event`` actions post to; `alert_source_limiter` paces that
    source separately from the API key (defaults to the API key's bucket).
    """

    def __init__(
        self,
        *,
        token: str,
        limiter: KeyLimiter,
        metrics: Metrics,
        base_url: str = DEFAULT_BASE_URL,
        alert_source_config_id: str | None = None,
        alert_source_token: str | None = None,
        alert_source_limiter: KeyLimiter | None = None,
        connect_timeout: float = 5.0,
        total_timeout: float = 30.0,
        user_agent: str = DEFAULT_USER_AGENT,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.platform: Platform = "incident_io"
        self._alert_source_config_id = alert_source_config_id
        self._alert_source_token = alert_source_token
        self._alert_source_limiter = alert_source_limiter
        self._http = ApiTransport(
            platform="incident_io",
            base_url=base_url,
            token=token,
            limiter=limiter,
            metrics=metrics,
            content_type=JSON,
            classify_conflict=is_incident_io_conflict,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            user_agent=user_agent,
            logger=logger,
            session_factory=session_factory,
        )

    async def start(self) -> None:
        await self._http.start()

    def set_credentials(self, token: str, alert_source_token: str | None) -> None:
        """Use a rotated API key (and alert source secret) from the next request on."""
        self._http.set_token(token)
        self._alert_source_token = alert_source_token

    async def close(self) -> None:
        await self._http.close()

    # -- escalations -------------------------------------------------------------------

    async def cancel_escalation(self, escalation_id: str) -> None:
        """``POST /v2/escalations/{id}/actions/cancel`` (200, no body; a no-op if cancelled)."""
        await self._http.request(
            "POST", _path("/v2/escalations/{id}/actions/cancel", escalation_id)
        )

    async def respond_escalation(
        self,
        escalation_id: str,
        response: EscalationResponse,
        *,
        snooze_until: datetime | None = None,
        reason: str | None = None,
    ) -> None:
        """``POST /v2/escalations/{id}/actions/respond`` (200, no body): acknowledge or
        snooze a page, attributed to the API key. An escalation that can no longer be
        acknowledged (resolved, expired, cancelled) answers 422, a `StateConflict`.

        `snooze_until` (aware) and `reason` go with ``snooze`` only, which needs the first.
        """
        if response not in ESCALATION_RESPONSES:
            raise InvalidAction(
                f"respond_escalation: response must be 'ack' or 'snooze', got {response!r}"
            )
        body: dict[str, Any] = {"response": response}
        if response == "snooze":
            if snooze_until is None or snooze_until.tzinfo is None:
                raise InvalidAction("respond_escalation: snooze needs an aware snooze_until")
            details: dict[str, Any] = {"snooze_until": snooze_until.isoformat()}
            if reason is not None:
                details["reason"] = reason
            body["snooze_details"] = details
        elif snooze_until is not None or reason is not None:
            raise InvalidAction("respond_escalation: snooze_until and reason go with snooze only")
        await self._http.request(
            "POST",
            _path("/v2/escalations/{id}/actions/respond", escalation_id),
            json_body=body,
        )

    async def create_escalation(
        self,
        idempotency_key: str,
        title: str,
        *,
        escalation_path_id: str | None = None,
        user_ids: Sequence[str] | None = None,
        description: str | None = None,
        incident_id: str | None = None,
    ) -> Escalation:
        """``POST /v2/escalations`` (201): page an escalation path or users (exactly one).

        A reused `idempotency_key` returns the escalation created the first time.
        """
        if not idempotency_key or not title:
            raise InvalidAction("create_escalation: idempotency_key and title must not be empty")
        if (escalation_path_id is None) == (user_ids is None):
            raise InvalidAction(
                "create_escalation: give exactly one of escalation_path_id or user_ids"
            )
        if user_ids is not None and (
            not isinstance(user_ids, list | tuple)
            or not user_ids
            or not all(isinstance(u, str) for u in user_ids)
        ):
            raise InvalidAction("create_escalation: user_ids must be a non-empty list of IDs")
        body: dict[str, Any] = {"idempotency_key": idempotency_key, "title": title}
        if escalation_path_id is not None:
            body["escalation_path_id"] = escalation_path_id
        if user_ids is not None:
            body["user_ids"] = list(user_ids)
        if description is not None:
            body["description"] = description
        if incident_id is not None:
            body["incident_id"] = incident_id
        response = await self._http.request(
            "POST", "/v2/escalations", json_body=body, expected=(201, 200)
        )
        return parse_answer(
            "incident_io",
            lambda b: Escalation.from_json(unwrap(b, "escalation")),
            response.body,
            "/v2/escalations",
        )

    async def get_escalation(self, escalation_id: str) -> Escalation:
        """``GET /v2/escalations/{id}``."""
        path = _path("/v2/escalations/{id}", escalation_id)
        response = await self._http.request("GET", path)
        return parse_answer(
            "incident_io",
            lambda b: Escalation.from_json(unwrap(b, "escalation")),
            response.body,
            path,
        )

    async def list_escalations(
        self,
        *,
        after: str | None = None,
        page_size: int = 25,
        **filters: Filters,
    ) -> tuple[list[Escalation], str | None]:
        """``GET /v2/escalations``: one page and the cursor of the next (None at the end).

        Filters use the API's operators, e.g. ``status={"one_of": ["triggered", "acked"]}``,
        ``idempotency_key={"is": [key]}`` or ``{"starts_with": [prefix]}``.
        """
        params = _list_params("list_escalations", ESCALATION_FILTERS, after, page_size, filters)
        response = await self._http.request("GET", "/v2/escalations", params=params)
        return parse_answer("incident_io", _parse_page, response.body, "/v2/escalations")

    async def iter_escalations(
        self, *, page_size: int = MAX_PAGE_SIZE, **filters: Filters
    ) -> AsyncIterator[Escalation]:
        """Every escalation matching `filters`, page after page (each page one request,
        paced by the key's rate limiter like every other call)."""
        after: str | None = None
        while True:
            page, after = await self.list_escalations(after=after, page_size=page_size, **filters)
            for escalation in page:
                yield escalation
            if after is None:
                return

    # -- alerts ------------------------------------------------------------------------

    async def send_alert_event(
        self,
        config_id: str,
        token: str,
        *,
        title: str,
        status: AlertEventStatus,
        deduplication_key: str,
        description: str | None = None,
        source_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AlertEventAccepted:
        """``POST /v2/alert_events/http/{config_id}`` (202), authenticated by the source `token`."""
        if status not in ALERT_EVENT_STATUSES:
            raise InvalidAction(
                f"send_alert_event: status must be 'firing' or 'resolved', got {status!r}"
            )
        if not title or not deduplication_key or not token:
            raise InvalidAction(
                "send_alert_event: title, deduplication_key and the source token are required"
            )
        body: dict[str, Any] = {
            "title": title,
            "status": status,
            "deduplication_key": deduplication_key,
        }
        if description is not None:
            body["description"] = description
        if source_url is not None:
            body["source_url"] = source_url
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise InvalidAction("send_alert_event: metadata must be a mapping")
            body["metadata"] = dict(metadata)
        path = _path("/v2/alert_events/http/{id}", config_id)
        response = await self._http.request(
            "POST",
            path,
            json_body=body,
            auth_token=token,
            limiter=self._alert_source_limiter,
            expected=(202, 200, 201),
        )
        return AlertEventAccepted.from_json(response.body)

    async def list_alerts(
        self, *, after: str | None = None, page_size: int = 25, **filters: Filters
    ) -> tuple[list[IncidentIoAlert], str | None]:
        """``GET /v2/alerts``: one page and the cursor of the next (None at the end).

        Filters use the API's operators, e.g. ``created_at={"gte": "2025-01-01"}``,
        ``deduplication_key={"is": key}`` (the only operator the API has for it).
        """
        params = _list_params("list_alerts", ALERT_FILTERS, after, page_size, filters)
        response = await self._http.request("GET", "/v2/alerts", params=params)
        return parse_answer("incident_io", _parse_alert_page, response.body, "/v2/alerts")

    async def iter_alerts(
        self, *, page_size: int = MAX_PAGE_SIZE, **filters: Filters
    ) -> AsyncIterator[IncidentIoAlert]:
        """Every alert matching `filters`, page after page (paced like every other call)."""
        after: str | None = None
        while True:
            page, after = await self.list_alerts(after=after, page_size=page_size, **filters)
            for alert in page:
                yield alert
            if after is None:
                return

    async def get_alert(self, alert_id: str) -> IncidentIoAlert:
        """``GET /v2/alerts/{id}``."""
        path = _path("/v2/alerts/{id}", alert_id)
        response = await self._http.request("GET", path)
        return parse_answer(
            "incident_io",
            lambda b: IncidentIoAlert.from_json(unwrap(b, "alert")),
            response.body,
            path,
        )

    # -- incidents ---------------------------------------------------------------------

    async def get_incident(self, incident_id: str) -> IncidentIoIncident:
        """``GET /v2/incidents/{id}``."""
        path = _path("/v2/incidents/{id}", incident_id)
        response = await self._http.request("GET", path)
        return _parse_incident(response.body, path)

    async def edit_incident(
        self,
        incident_id: str,
        fields: Mapping[str, Any],
        notify_incident_channel: bool = False,
    ) -> IncidentIoIncident:
        """``POST /v2/incidents/{id}/actions/edit``: set only the given fields.

        `fields` are ``IncidentEditPayloadV2`` names: ``name``, ``summary``, ``severity_id``,
        ``incident_status_id``, ``custom_field_entries``, ``call_url``, ...
        """
        if not isinstance(fields, Mapping) or not fields:
            raise InvalidAction("edit_incident: 'fields' must be a non-empty mapping")
        unknown = sorted(set(fields) - EDIT_INCIDENT_FIELDS)
        if unknown:
            raise InvalidAction(
                f"edit_incident: unknown incident field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(EDIT_INCIDENT_FIELDS))}"
            )
        body = {"incident": dict(fields), "notify_incident_channel": bool(notify_incident_channel)}
        path = _path("/v2/incidents/{id}/actions/edit", incident_id)
        response = await self._http.request("POST", path, json_body=body)
        return _parse_incident(response.body, path)

    # -- pipeline interface ------------------------------------------------------------

    async def perform(self, action: Action) -> ActionResult:
        """Run one ``incident_io.*`` outbox action."""
        operation = action.operation
        if operation == "incident_io.cancel_escalation":
            target = action_target(action, "escalation")
            action_params(action)
            await self.cancel_escalation(target)
            # 200 means the escalation is cancelled now (or already was: a documented no-op).
            return ActionResult(object_id=target, status="cancelled")
        if operation == "incident_io.acknowledge_escalation":
            target = action_target(action, "escalation")
            action_params(action)
            await self.respond_escalation(target, "ack")
            # 200: acknowledged now, or already (acknowledging an acked escalation changes
            # nothing).
            return ActionResult(object_id=target, status="acked")
        if operation == "incident_io.create_escalation":
            params = action_params(action)
            escalation = await self.create_escalation(str(action.idempotency_key), **params)
            return ActionResult(object_id=escalation.id, status=escalation.status)
        if operation == "incident_io.send_alert_event":
            if not self._alert_source_config_id or not self._alert_source_token:
                raise InvalidAction(
                    "incident_io.send_alert_event: no alert source is configured "
                    "(alert_source_config_id and alert_source_token)"
                )
            params = action_params(action)
            accepted = await self.send_alert_event(
                self._alert_source_config_id, self._alert_source_token, **params
            )
            key = accepted.deduplication_key or params["deduplication_key"]
            # incident.io assigns the alert's ID asynchronously; the key is the handle we have.
            return ActionResult(
                object_id=None, status=accepted.status, detail=f"deduplication_key {key}"
            )
        if operation == "incident_io.edit_incident":
            target = action_target(action, "incident")
            fields = action_params(action)
            notify = bool(fields.pop("notify_incident_channel", False))
            incident = await self.edit_incident(target, fields, notify)
            return ActionResult(object_id=incident.id, status=incident.status_category)
        raise InvalidAction(f"the incident.io client cannot perform {operation}")

    async def fetch(self, ref: ObjectRef) -> Mapping[str, Any]:
        """Current state of an escalation, alert or incident, flat (``id``, ``status``, ...)."""
        if ref.platform != "incident_io":
            raise InvalidAction(f"the incident.io client cannot fetch {ref}")
        if ref.kind == "escalation":
            return (await self.get_escalation(ref.id)).flat()
        if ref.kind == "alert":
            return (await self.get_alert(ref.id)).flat()
        return (await self.get_incident(ref.id)).flat()


def _parse_incident(body: Any, path: str) -> IncidentIoIncident:
    return parse_answer(
        "incident_io", lambda b: IncidentIoIncident.from_json(unwrap(b, "incident")), body, path
    )


def _list_params(
    what: str,
    allowed: frozenset[str],
    after: str | None,
    page_size: int,
    filters: Mapping[str, Any],
) -> list[tuple[str, str]]:
    """Query parameters of a list endpoint: page size, cursor, deepObject filters."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidAction(f"{what}: page_size must be 1..{MAX_PAGE_SIZE}")
    unknown = sorted(set(filters) - allowed)
    if unknown:
        raise InvalidAction(
            f"{what}: unknown filter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    params: list[tuple[str, str]] = [("page_size", str(page_size))]
    if after is not None:
        params.append(("after", after))
    for name, operators in sorted(filters.items()):
        if not isinstance(operators, Mapping):
            raise InvalidAction(
                f'{what}: filter {name} must map operators to values, e.g. {{"one_of": [...]}}'
            )
        for operator, values in operators.items():
            for value in [values] if isinstance(values, str) else values:
                params.append((f"{name}[{operator}]", str(value)))
    return params


def _next_cursor(body: Mapping[str, Any], items: list[Any]) -> str | None:
    meta = body.get("pagination_meta")
    after = meta.get("after") if isinstance(meta, Mapping) else None
    # An empty page ends the listing even if a cursor is echoed back.
    return after if isinstance(after, str) and after and items else None


def _parse_page(body: Any) -> tuple[list[Escalation], str | None]:
    if not isinstance(body, Mapping) or not isinstance(body.get("escalations"), list):
        raise MalformedResponse("incident.io answer has no 'escalations' list")
    escalations = [Escalation.from_json(item) for item in body["escalations"]]
    return escalations, _next_cursor(body, escalations)


def _parse_alert_page(body: Any) -> tuple[list[IncidentIoAlert], str | None]:
    if not isinstance(body, Mapping) or not isinstance(body.get("alerts"), list):
        raise MalformedResponse("incident.io answer has no 'alerts' list")
    alerts = [IncidentIoAlert.from_json(item) for item in body["alerts"]]
    return alerts, _next_cursor(body, alerts)
