"""Async client of the Rootly REST API (``https://api.rootly.com``), JSON:API bodies.

Every request body matches the operation schema of the official spec
(`specs/rootly/swagger.json`); the contract tests check each one. HTTP concerns (pacing,
metrics, error mapping) live in `bridge.platforms.http.ApiTransport`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple
from urllib.parse import quote

import aiohttp
import structlog

from bridge.events import Action, ActionResult, ObjectRef, Platform
from bridge.metrics import Metrics
from bridge.operations import ROOTLY_INCIDENT_ATTRIBUTES
from bridge.platforms.base import (
    InvalidAction,
    MalformedResponse,
    action_params,
    action_target,
)
from bridge.platforms.http import (
    DEFAULT_USER_AGENT,
    ApiTransport,
    ErrorInfo,
    matches_any,
    parse_answer,
)
from bridge.platforms.ratelimit import KeyLimiter
from bridge.platforms.rootly.models import RootlyAlert, RootlyIncident

DEFAULT_BASE_URL: Final = "https://api.rootly.com"
JSONAPI: Final = "application/vnd.api+json"
MAX_PAGE_SIZE: Final = 100


class IncidentPage(NamedTuple):
    """One page of `GET /v1/incidents`."""

    incidents: list[RootlyIncident]
    next_page: int | None
    total: int


UPDATE_INCIDENT_ATTRIBUTES: Final = ROOTLY_INCIDENT_ATTRIBUTES

# Rootly answers a transition its state machine refuses with 400/422 and words like
# "cannot acknowledge open alert" or "Incident is already cancelled". Validation errors
# ("can't be blank", "has already been taken") must stay permanent, hence the narrow words.
_CONFLICT_WORDS = re.compile(
    r"\bcannot (?!be blank)\w+ (?:an? |the )?(?:\w+ )?(?:alert|incident)s?\b"
    r"|\bcan(?:not|'t) be (?:cancel+ed|resolved|mitigated|acknowledged|restarted|started)"
    r"|\balready (?:been )?(?:acknowledged|resolved|cancel+ed|mitigated|closed|started"
    r"|restarted|in[_ ]\w+)"
    r"|\binvalid (?:state|status|transition)\b"
    r"|\bnot allowed\b",
    re.IGNORECASE,
)


def is_rootly_conflict(info: ErrorInfo) -> bool:
    """409 always; 400/422 when the message says the state forbids the change."""
    if info.status == 409:
        return True
    return info.status in (400, 422) and matches_any(_CONFLICT_WORDS, info.messages)


def _path(template: str, object_id: str) -> str:
    if not object_id:
        raise InvalidAction("Rootly object ID must not be empty")
    return template.format(id=quote(object_id, safe=""))


def _document(resource_type: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {"data": {"type": resource_type, "attributes": dict(attributes)}}


def _message_attributes(name: str, message: str | None) -> dict[str, Any]:
    return {} if message is None else {name: message}


class RootlyClient:
    """The Rootly operations the bridge performs and the reads it hydrates events with."""

    def __init__(
        self,
        *,
        token: str,
        limiter: KeyLimiter,
        metrics: Metrics,
        base_url: str = DEFAULT_BASE_URL,
        connect_timeout: float = 5.0,
        total_timeout: float = 30.0,
        user_agent: str = DEFAULT_USER_AGENT,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.platform: Platform = "rootly"
        self._http = ApiTransport(
            platform="rootly",
            base_url=base_url,
            token=token,
            limiter=limiter,
            metrics=metrics,
            content_type=JSONAPI,
            classify_conflict=is_rootly_conflict,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            user_agent=user_agent,
            logger=logger,
            session_factory=session_factory,
        )

    async def start(self) -> None:
        await self._http.start()

    def set_credentials(self, token: str) -> None:
        """Use a rotated API token from the next request on."""
        self._http.set_token(token)

    async def close(self) -> None:
        await self._http.close()

    # -- incidents ---------------------------------------------------------------------

    async def _incident_call(
        self, method: str, path: str, body: Mapping[str, Any] | None
    ) -> RootlyIncident:
        response = await self._http.request(method, path, json_body=body)
        return parse_answer("rootly", RootlyIncident.from_document, response.body, path)

    async def cancel_incident(self, incident_id: str, message: str | None = None) -> RootlyIncident:
        """``PUT /v1/incidents/{id}/cancel``."""
        body = _document("incidents", _message_attributes("cancellation_message", message))
        path = _path("/v1/incidents/{id}/cancel", incident_id)
        return await self._incident_call("PUT", path, body)

    async def update_incident(
        self, incident_id: str, attributes: Mapping[str, Any]
    ) -> RootlyIncident:
        """``PUT /v1/incidents/{id}`` with the given attributes (names checked against the spec)."""
        if not isinstance(attributes, Mapping) or not attributes:
            raise InvalidAction("rootly.update_incident: 'attributes' must be a non-empty mapping")
        unknown = sorted(set(attributes) - UPDATE_INCIDENT_ATTRIBUTES)
        if unknown:
            raise InvalidAction(
                f"rootly.update_incident: unknown incident attribute(s) {', '.join(unknown)}"
            )
        path = _path("/v1/incidents/{id}", incident_id)
        return await self._incident_call("PUT", path, _document("incidents", attributes))

    async def restart_incident(self, incident_id: str) -> RootlyIncident:
        """``PUT /v1/incidents/{id}/restart`` (body ``incidents {}``)."""
        path = _path("/v1/incidents/{id}/restart", incident_id)
        return await self._incident_call("PUT", path, _document("incidents", {}))

    async def resolve_incident(
        self, incident_id: str, message: str | None = None
    ) -> RootlyIncident:
        """``PUT /v1/incidents/{id}/resolve`` (``resolution_message``)."""
        body = _document("incidents", _message_attributes("resolution_message", message))
        path = _path("/v1/incidents/{id}/resolve", incident_id)
        return await self._incident_call("PUT", path, body)

    async def mitigate_incident(
        self, incident_id: str, message: str | None = None
    ) -> RootlyIncident:
        """``PUT /v1/incidents/{id}/mitigate`` (``mitigation_message``)."""
        body = _document("incidents", _message_attributes("mitigation_message", message))
        path = _path("/v1/incidents/{id}/mitigate", incident_id)
        return await self._incident_call("PUT", path, body)

    async def get_incident(self, incident_id: str) -> RootlyIncident:
        """``GET /v1/incidents/{id}?include=alerts``."""
        path = _path("/v1/incidents/{id}", incident_id)
        response = await self._http.request("GET", path, params=[("include", "alerts")])
        return parse_answer("rootly", RootlyIncident.from_document, response.body, path)

    async def list_incidents(
        self, *, created_since: str | None = None, page: int = 1, page_size: int = 50
    ) -> IncidentPage:
        """``GET /v1/incidents``, newest first: one page, the next page's number and the total.

        `created_since` is ``filter[created_at][gte]`` (a date or an ISO 8601 time).
        """
        if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidAction(f"list_incidents: page >= 1 and page_size 1..{MAX_PAGE_SIZE}")
        params = [
            ("page[number]", str(page)),
            ("page[size]", str(page_size)),
            ("sort", "-created_at"),
        ]
        if created_since is not None:
            params.append(("filter[created_at][gte]", created_since))
        response = await self._http.request("GET", "/v1/incidents", params=params)
        return parse_answer("rootly", _parse_incident_page, response.body, "/v1/incidents")

    async def iter_incidents(
        self, *, created_since: str | None = None, page_size: int = 50
    ) -> AsyncIterator[tuple[RootlyIncident, int]]:
        """Every incident created since `created_since`, newest first, with the total count
        (each page one request, paced by the key's rate limiter)."""
        page: int | None = 1
        while page is not None:
            answer = await self.list_incidents(
                created_since=created_since, page=page, page_size=page_size
            )
            for incident in answer.incidents:
                yield incident, answer.total
            page = answer.next_page if answer.incidents else None

    # -- alerts ------------------------------------------------------------------------

    async def acknowledge_alert(self, alert_id: str) -> RootlyAlert:
        """``POST /v1/alerts/{id}/acknowledge`` (no body; 400 for an alert still open)."""
        path = _path("/v1/alerts/{id}/acknowledge", alert_id)
        response = await self._http.request("POST", path)
        return parse_answer("rootly", RootlyAlert.from_document, response.body, path)

    async def resolve_alert(
        self,
        alert_id: str,
        message: str | None = None,
        *,
        resolve_related_incidents: bool | None = None,
    ) -> RootlyAlert:
        """``POST /v1/alerts/{id}/resolve``."""
        attributes = _message_attributes("resolution_message", message)
        if resolve_related_incidents is not None:
            attributes["resolve_related_incidents"] = resolve_related_incidents
        path = _path("/v1/alerts/{id}/resolve", alert_id)
        response = await self._http.request("POST", path, json_body=_document("alerts", attributes))
        return parse_answer("rootly", RootlyAlert.from_document, response.body, path)

    async def get_alert(self, alert_id: str) -> RootlyAlert:
        """``GET /v1/alerts/{id}?include=incidents``."""
        path = _path("/v1/alerts/{id}", alert_id)
        response = await self._http.request("GET", path, params=[("include", "incidents")])
        return parse_answer("rootly", RootlyAlert.from_document, response.body, path)

    async def create_alert(
        self,
        summary: str,
        *,
        description: str | None = None,
        status: str | None = None,
        deduplication_key: str | None = None,
        external_id: str | None = None,
        external_url: str | None = None,
        service_ids: Sequence[str] | None = None,
        group_ids: Sequence[str] | None = None,
        environment_ids: Sequence[str] | None = None,
        labels: Mapping[str, str | int | float | bool] | None = None,
    ) -> RootlyAlert:
        """``POST /v1/alerts`` (201). `status` is ``open`` or ``triggered`` (On-Call only)."""
        if not summary:
            raise InvalidAction("rootly.create_alert: 'summary' must not be empty")
        attributes: dict[str, Any] = {"summary": summary}
        optional: dict[str, Any] = {
            "description": description,
            "status": status,
            "deduplication_key": deduplication_key,
            "external_id": external_id,
            "external_url": external_url,
            "service_ids": list(service_ids) if service_ids is not None else None,
            "group_ids": list(group_ids) if group_ids is not None else None,
            "environment_ids": list(environment_ids) if environment_ids is not None else None,
            "labels": (
                [{"key": k, "value": v} for k, v in labels.items()] if labels is not None else None
            ),
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        response = await self._http.request(
            "POST", "/v1/alerts", json_body=_document("alerts", attributes), expected=(201, 200)
        )
        return parse_answer("rootly", RootlyAlert.from_document, response.body, "/v1/alerts")

    # -- pipeline interface ------------------------------------------------------------

    async def perform(self, action: Action) -> ActionResult:
        """Run one ``rootly.*`` outbox action."""
        operation = action.operation
        # Incident transitions whose only parameter is an optional message.
        transitions = {
            "rootly.cancel_incident": (self.cancel_incident, "cancellation_message"),
            "rootly.resolve_incident": (self.resolve_incident, "resolution_message"),
            "rootly.mitigate_incident": (self.mitigate_incident, "mitigation_message"),
        }
        if operation in transitions:
            target = action_target(action, "incident")
            call, message_param = transitions[operation]
            incident = await call(target, action_params(action).get(message_param))
        elif operation == "rootly.update_incident":
            target = action_target(action, "incident")
            incident = await self.update_incident(target, action_params(action))
        elif operation == "rootly.restart_incident":
            target = action_target(action, "incident")
            action_params(action)
            incident = await self.restart_incident(target)
        elif operation == "rootly.acknowledge_alert":
            target = action_target(action, "alert")
            action_params(action)
            alert = await self.acknowledge_alert(target)
            return ActionResult(object_id=alert.id, status=alert.status)
        elif operation == "rootly.resolve_alert":
            target = action_target(action, "alert")
            params = action_params(action)
            alert = await self.resolve_alert(
                target,
                params.get("resolution_message"),
                resolve_related_incidents=params.get("resolve_related_incidents"),
            )
            return ActionResult(object_id=alert.id, status=alert.status)
        else:
            raise InvalidAction(f"the Rootly client cannot perform {operation}")
        return ActionResult(object_id=incident.id, status=incident.status)

    async def fetch(self, ref: ObjectRef) -> Mapping[str, Any]:
        """Current state of a Rootly incident or alert, flat (``id``, ``status``, ...)."""
        if ref.platform != "rootly":
            raise InvalidAction(f"the Rootly client cannot fetch {ref}")
        if ref.kind == "incident":
            return (await self.get_incident(ref.id)).flat()
        if ref.kind == "alert":
            return (await self.get_alert(ref.id)).flat()
        raise InvalidAction(f"Rootly has no {ref.kind} objects to fetch ({ref})")


def _parse_incident_page(body: Any) -> IncidentPage:
    """An ``incident_list`` document: resources under ``data``, pages under ``meta``."""
    if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
        raise MalformedResponse("Rootly answer has no 'data' list")
    incidents = [RootlyIncident.from_document({"data": item}) for item in body["data"]]
    meta = body.get("meta")
    meta = meta if isinstance(meta, Mapping) else {}
    next_page = meta.get("next_page")
    total = meta.get("total_count")
    return IncidentPage(
        incidents,
        next_page if isinstance(next_page, int) and not isinstance(next_page, bool) else None,
        total if isinstance(total, int) and not isinstance(total, bool) else len(incidents),
    )
