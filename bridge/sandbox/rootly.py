"""Simulated Rootly: incidents and alerts over JSON:API, signed webhooks, rate limits.

Owns the Rootly side of the sandbox (DESIGN section 1, `seeds/rootly-*.txt`, the official
swagger). API routes need `Authorization: Bearer <api token>`, answer
`application/vnd.api+json` and require it on request bodies (415 otherwise).

API routes:
  GET  /v1/incidents (page[number], page[size], sort=[-]created_at,
       filter[created_at][gt|gte|lt|lte])
  GET  /v1/incidents/{id}[?include=alerts]    PUT /v1/incidents/{id}
  PUT  /v1/incidents/{id}/cancel|restart|resolve|mitigate
  POST /v1/alerts (201)    GET /v1/alerts/{id}[?include=incidents]
  POST /v1/alerts/{id}/acknowledge|resolve

Incident status machine (422 `state_conflict` otherwise):
  mitigate: in_triage|started|detected|acknowledged|in_progress -> mitigated
  resolve:  the above or mitigated -> resolved
  cancel:   the above or scheduled -> cancelled ("already cancelled" / "cannot be cancelled")
  restart:  mitigated|resolved|cancelled|closed|completed -> started (timestamps cleared,
            `started_at` reset); it emits `incident.updated` (Rootly has no restart event).
  acknowledge (a person, control API only): in_triage|started|detected|in_progress ->
            acknowledged, `acknowledged_at` set; it emits `incident.updated`.
  PUT /v1/incidents/{id} may set any status (as Rootly allows); a status change emits the
  status event (`incident.mitigated|resolved|cancelled|in_triage`, else `incident.updated`),
  a change to other fields emits `incident.updated`; nothing changes, nothing is sent.
Alerts: created `triggered` (or `open`); acknowledge an `open` alert -> 400 "cannot acknowledge
open alert", an acknowledged one -> 200 unchanged; resolve is idempotent. `alert.created` is
sent on creation, `alert.updated` (the flat alert, current state only) when an alert is
acknowledged or resolved, by a person or through the API (DESIGN section 7); a call that
changes nothing sends nothing.

Webhooks: `{"event": {"id", "type", "issued_at"}, "data": <flat resource>}`, the resource being
the API attributes plus `id`, with nested JSON:API objects (severity, users) flattened to
`{"id", ...attributes}`, plus `severity_id` and `alert_ids` (incidents) or `incident_ids`
(alerts). Header `X-Rootly-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, f"{t}{body}")>`.
Changes made through the API send webhooks too, like real Rootly: the bridge sees its echoes.

Control routes (no auth): POST /_sandbox/incidents {title, severity?, summary?};
POST /_sandbox/alerts {summary, incident_id?, status?}; POST
/_sandbox/incidents/{id}/cancel|resolve|mitigate|restart|acknowledge {message?}; POST
/_sandbox/incidents/{id}/edit {title?, summary?, severity?}; POST
/_sandbox/alerts/{id}/acknowledge|resolve; plus the shared ones (see `common`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from bridge.sandbox.common import (
    BODY_KEY,
    SimError,
    SimulatorBase,
    iso_ms,
    json_response,
    now_dt,
    opt_str,
    require_object,
    short_id_from,
    uuid_from,
)

JSONAPI = "application/vnd.api+json"

INCIDENT_STATUSES = [
    "in_triage",
    "started",
    "detected",
    "acknowledged",
    "mitigated",
    "resolved",
    "closed",
    "cancelled",
    "scheduled",
    "in_progress",
    "completed",
]
ALERT_STATUSES = ("open", "triggered", "acknowledged", "resolved", "deferred")
_ACTIVE = {"in_triage", "started", "detected", "acknowledged", "in_progress"}
_STATUS_EVENTS = {
    "mitigated": "incident.mitigated",
    "resolved": "incident.resolved",
    "cancelled": "incident.cancelled",
    "in_triage": "incident.in_triage",
}
_TIMESTAMPS = [
    "in_triage_at",
    "started_at",
    "detected_at",
    "acknowledged_at",
    "mitigated_at",
    "resolved_at",
    "closed_at",
    "cancelled_at",
    "scheduled_for",
    "scheduled_until",
]
_STRINGS = [
    "summary",
    "public_title",
    "mitigation_message",
    "resolution_message",
    "cancellation_message",
    "slack_channel_name",
    "slack_channel_id",
    "slack_channel_url",
]
_SEVERITIES = (
    ("SEV0", "critical", "#C70000"),
    ("SEV1", "high", "#E5631F"),
    ("SEV2", "medium", "#E58A1F"),
    ("SEV3", "low", "#1F8AE5"),
)
_API_USER = {"id": "1", "name": "Bridge API", "email": "api@rootly.sandbox.test"}
_HUMAN_USER = {"id": "2", "name": "Sandbox Human", "email": "human@rootly.sandbox.test"}


def _user(user: dict[str, str]) -> dict[str, Any]:
    return {
        "data": {
            "id": user["id"],
            "type": "users",
            "attributes": {"name": user["name"], "full_name": user["name"], "email": user["email"]},
        }
    }


def _flatten(value: Any) -> Any:
    """`{"data": {"id", "attributes"}}` -> `{"id", **attributes}` (webhooks are flat)."""
    if isinstance(value, dict) and set(value) == {"data"} and isinstance(value["data"], dict):
        inner = value["data"]
        return {"id": inner.get("id"), **inner.get("attributes", {})}
    return value


def _parse_time(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SimError(422, "invalid_value", f"{name} must be an ISO 8601 timestamp", name)
    try:
        return iso_ms(datetime.fromisoformat(value))
    except ValueError:
        raise SimError(422, "invalid_value", f"{name} is not a valid timestamp", name) from None


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "incident"


class RootlySimulator(SimulatorBase):
    """Stateful fake of the Rootly API and its outgoing webhooks."""

    platform = "rootly"

    def __init__(
        self,
        *,
        api_token: str,
        webhook_secret: str,
        rate_limit_per_minute: int = 3000,
        seed: int | None = None,
        webhook_retry_delays: Sequence[float] = (0.2, 0.5, 1, 2, 5, 10, 30),
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        super().__init__(seed=seed, webhook_retry_delays=tuple(webhook_retry_delays), logger=logger)
        self._token = api_token
        self._secret = webhook_secret
        self._limit = rate_limit_per_minute
        self._windows: dict[str, tuple[int, int]] = {}
        created = iso_ms(now_dt())
        self.severities: list[dict[str, Any]] = [
            {
                "id": uuid_from(self._ids),
                "type": "severities",
                "attributes": {
                    "name": name,
                    "slug": name.lower(),
                    "description": f"{level} impact",
                    "severity": level,
                    "color": color,
                    "position": pos,
                    "notify_emails": [],
                    "slack_channels": [],
                    "slack_aliases": [],
                    "created_at": created,
                    "updated_at": created,
                },
            }
            for pos, (name, level, color) in enumerate(_SEVERITIES)
        ]
        self._incidents: dict[str, dict[str, Any]] = {}
        self._incident_alerts: dict[str, list[str]] = {}
        self._alerts: dict[str, dict[str, Any]] = {}
        self._alert_incidents: dict[str, list[str]] = {}
        self._seq = 0
        r = self.app.router
        r.add_get("/v1/incidents", self._h_list_incidents)
        r.add_get("/v1/incidents/{id}", self._h_get_incident)
        r.add_put("/v1/incidents/{id}", self._h_update_incident)
        for action in ("cancel", "restart", "resolve", "mitigate"):
            r.add_put(f"/v1/incidents/{{id}}/{action}", self._h_incident_action)
        r.add_post("/v1/alerts", self._h_create_alert)
        r.add_get("/v1/alerts/{id}", self._h_get_alert)
        r.add_post("/v1/alerts/{id}/acknowledge", self._h_ack_alert)
        r.add_post("/v1/alerts/{id}/resolve", self._h_resolve_alert)
        r.add_post("/_sandbox/incidents", self._c_create_incident)
        r.add_post("/_sandbox/alerts", self._c_create_alert)
        r.add_post("/_sandbox/incidents/{id}/{action}", self._c_incident_action)
        r.add_post("/_sandbox/alerts/{id}/{action}", self._c_alert_action)

    # -- Python control API (acting as a human) -----------------------------------------

    async def create_incident(
        self, title: str, *, severity: str | None = None, summary: str | None = None
    ) -> dict[str, Any]:
        """Declare an incident (status `started`); sends `incident.created`."""
        if not isinstance(title, str) or not title.strip():
            raise SimError(422, "invalid_value", "title must be a non-empty string", "title")
        sev = self._severity(severity) if severity is not None else None
        now = iso_ms(now_dt())
        self._seq += 1
        incident_id = uuid_from(self._ids)
        slug = _slug(title)
        attrs: dict[str, Any] = {
            "sequential_id": self._seq,
            "title": title,
            "kind": "normal",
            "slug": slug,
            "parent_incident_id": None,
            "duplicate_incident_id": None,
            "summary": summary,
            "private": False,
            "source": "web",
            "status": "started",
            "url": f"https://rootly.sandbox.test/account/incidents/{self._seq}-{slug}",
            "short_url": f"https://rootly.sandbox.test/i/{self._seq}",
            "public_title": None,
            "user": _user(_HUMAN_USER),
            "severity": {"data": sev} if sev else None,
            "environments": [],
            "incident_types": [],
            "services": [],
            "functionalities": [],
            "groups": [],
            "labels": {},
            "mitigation_message": None,
            "resolution_message": None,
            "cancellation_message": None,
            "in_triage_by": None,
            "started_by": _user(_HUMAN_USER),
            "mitigated_by": None,
            "resolved_by": None,
            "closed_by": None,
            "cancelled_by": None,
            **dict.fromkeys(_TIMESTAMPS),
            "started_at": now,
            "created_at": now,
            "updated_at": now,
        }
        self._incidents[incident_id] = attrs
        self._incident_alerts[incident_id] = []
        self._emit("incident.created", self._incident_flat(incident_id))
        return self._incident_flat(incident_id)

    async def create_alert(
        self,
        summary: str,
        *,
        incident_id: str | None = None,
        status: str = "triggered",
        description: str | None = None,
    ) -> dict[str, Any]:
        """Raise an alert (optionally attached to an incident); sends `alert.created`."""
        attrs = {"summary": summary, "status": status, "description": description}
        alert_id = self._new_alert(attrs, source="manual")
        if incident_id is not None:
            self._attach(incident_id, alert_id)
        self._emit("alert.created", self._alert_flat(alert_id))
        return self._alert_flat(alert_id)

    async def cancel_incident(self, incident_id: str, message: str | None = None) -> dict[str, Any]:
        """Cancel as a human; sends `incident.cancelled`."""
        return self._act(incident_id, "cancel", message, _HUMAN_USER)

    async def resolve_incident(
        self, incident_id: str, message: str | None = None
    ) -> dict[str, Any]:
        """Resolve as a human; sends `incident.resolved`."""
        return self._act(incident_id, "resolve", message, _HUMAN_USER)

    async def mitigate_incident(
        self, incident_id: str, message: str | None = None
    ) -> dict[str, Any]:
        """Mitigate as a human; sends `incident.mitigated`."""
        return self._act(incident_id, "mitigate", message, _HUMAN_USER)

    async def restart_incident(self, incident_id: str) -> dict[str, Any]:
        """Restart as a human; sends `incident.updated`."""
        return self._act(incident_id, "restart", None, _HUMAN_USER)

    async def acknowledge_incident(self, incident_id: str) -> dict[str, Any]:
        """Acknowledge as a human (status `acknowledged`); sends `incident.updated`."""
        return self._act(incident_id, "acknowledge", None, _HUMAN_USER)

    async def edit_incident(
        self,
        incident_id: str,
        *,
        title: str | None = None,
        summary: str | None = None,
        severity: str | None = None,
    ) -> dict[str, Any]:
        """Edit title / summary / severity as a human; sends `incident.updated` if anything
        changed."""
        inc = self._incident(incident_id)
        changes: dict[str, Any] = {}
        if title is not None:
            if not title.strip():
                raise SimError(422, "invalid_value", "title must not be empty", "title")
            changes["title"] = title
        if summary is not None:
            changes["summary"] = summary
        if severity is not None:
            changes["severity"] = {"data": self._severity(severity)}
        if any(inc.get(k) != v for k, v in changes.items()):
            inc.update(changes, updated_at=iso_ms(now_dt()))
            self._emit("incident.updated", self._incident_flat(incident_id))
        return self._incident_flat(incident_id)

    async def acknowledge_alert(self, alert_id: str) -> dict[str, Any]:
        """Acknowledge as a human; sends `alert.updated`."""
        self._ack_alert(alert_id)
        return self._alert_flat(alert_id)

    async def resolve_alert(self, alert_id: str) -> dict[str, Any]:
        """Resolve as a human; sends `alert.updated`."""
        self._resolve_alert(alert_id, None, resolve_incidents=False, user=_HUMAN_USER)
        return self._alert_flat(alert_id)

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        """The incident as a flat dict (the webhook `data` shape)."""
        self._incident(incident_id)
        return self._incident_flat(incident_id)

    def get_alert(self, alert_id: str) -> dict[str, Any]:
        """The alert as a flat dict (the webhook `data` shape)."""
        self._alert(alert_id)
        return self._alert_flat(alert_id)

    def state(self) -> dict[str, Any]:
        """Every incident and alert, flat."""
        return {
            "incidents": [self._incident_flat(i) for i in self._incidents],
            "alerts": [self._alert_flat(a) for a in self._alerts],
            "severities": [{"id": s["id"], **s["attributes"]} for s in self.severities],
        }

    def _reset_state(self) -> None:
        self._incidents.clear()
        self._incident_alerts.clear()
        self._alerts.clear()
        self._alert_incidents.clear()
        self._windows.clear()
        self._seq = 0

    # -- model ---------------------------------------------------------------------------

    def _severity(self, ref: str) -> dict[str, Any]:
        for sev in self.severities:
            attrs = sev["attributes"]
            if ref in (sev["id"], attrs["slug"], attrs["name"], attrs["severity"]):
                return sev
        raise SimError(422, "invalid_value", f"unknown severity {ref!r}", "severity_id")

    def _incident(self, incident_id: str) -> dict[str, Any]:
        try:
            return self._incidents[incident_id]
        except KeyError:
            raise SimError(404, "not_found", f"incident {incident_id} not found") from None

    def _alert(self, alert_id: str) -> dict[str, Any]:
        try:
            return self._alerts[alert_id]
        except KeyError:
            raise SimError(404, "not_found", f"alert {alert_id} not found") from None

    def _incident_flat(self, incident_id: str) -> dict[str, Any]:
        attrs = self._incidents[incident_id]
        flat = {"id": incident_id, **{k: _flatten(v) for k, v in attrs.items()}}
        sev = attrs["severity"]
        flat["severity_id"] = sev["data"]["id"] if sev else None
        flat["alert_ids"] = list(self._incident_alerts[incident_id])
        return flat

    def _alert_flat(self, alert_id: str) -> dict[str, Any]:
        flat = {"id": alert_id, **self._alert_attrs(alert_id)}
        flat["incident_ids"] = list(self._alert_incidents[alert_id])
        return flat

    def _alert_attrs(self, alert_id: str) -> dict[str, Any]:
        attrs = dict(self._alerts[alert_id])
        attrs["incidents"] = [
            {"id": i, **{k: _flatten(v) for k, v in self._incidents[i].items()}}
            for i in self._alert_incidents[alert_id]
        ]
        return attrs

    def _new_alert(self, given: dict[str, Any], *, source: str) -> str:
        summary = given.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise SimError(422, "invalid_value", "summary must be a non-empty string", "summary")
        status = given.get("status") or "triggered"
        if status not in ("open", "triggered"):
            raise SimError(422, "invalid_value", "status must be open or triggered", "status")
        for key in ("description", "external_id", "external_url", "deduplication_key"):
            if given.get(key) is not None and not isinstance(given[key], str):
                raise SimError(422, "invalid_value", f"{key} must be a string", key)
        labels = given.get("labels") or []
        if not isinstance(labels, list) or not all(
            isinstance(x, dict) and isinstance(x.get("key"), str) and "value" in x for x in labels
        ):
            raise SimError(422, "invalid_value", "labels must be a list of {key, value}", "labels")
        data = given.get("data")
        if data is not None and not isinstance(data, dict):
            raise SimError(422, "invalid_value", "data must be an object", "data")
        alert_id = uuid_from(self._ids)
        now = iso_ms(now_dt())
        self._alerts[alert_id] = {
            "short_id": short_id_from(self._ids),
            "noise": "not_noise",
            "source": given.get("source") or source,
            "status": status,
            "summary": summary,
            "description": given.get("description"),
            "services": [],
            "groups": [],
            "functionalities": [],
            "environments": [],
            "service_ids": [],
            "group_ids": [],
            "functionality_ids": [],
            "environment_ids": [],
            "external_id": given.get("external_id"),
            "external_url": given.get("external_url"),
            "alert_urgency_id": None,
            "labels": labels,
            "data": data,
            "deduplication_key": given.get("deduplication_key"),
            "responders": [],
            "notified_users": [],
            "url": f"https://rootly.sandbox.test/account/alerts/{alert_id}",
            "started_at": now,
            "ended_at": None,
            "created_at": now,
            "updated_at": now,
        }
        self._alert_incidents[alert_id] = []
        return alert_id

    def _attach(self, incident_id: str, alert_id: str) -> None:
        self._incident(incident_id)
        self._alert(alert_id)
        if alert_id not in self._incident_alerts[incident_id]:
            self._incident_alerts[incident_id].append(alert_id)
            self._alert_incidents[alert_id].append(incident_id)

    def _act(
        self, incident_id: str, action: str, message: str | None, user: dict[str, str]
    ) -> dict[str, Any]:
        inc = self._incident(incident_id)
        status = inc["status"]
        now = iso_ms(now_dt())
        if action == "mitigate":
            if status == "mitigated":
                raise SimError(422, "state_conflict", "Incident is already mitigated")
            if status not in _ACTIVE:
                raise SimError(
                    422, "state_conflict", f"Incident is {status} and cannot be mitigated"
                )
            inc.update(
                status="mitigated",
                mitigated_at=now,
                mitigation_message=message,
                mitigated_by=_user(user),
            )
        elif action == "resolve":
            if status == "resolved":
                raise SimError(422, "state_conflict", "Incident is already resolved")
            if status not in _ACTIVE | {"mitigated"}:
                raise SimError(
                    422, "state_conflict", f"Incident is {status} and cannot be resolved"
                )
            inc.update(
                status="resolved",
                resolved_at=now,
                resolution_message=message,
                resolved_by=_user(user),
            )
            inc["mitigated_at"] = inc["mitigated_at"] or now
        elif action == "acknowledge":
            if status == "acknowledged":
                raise SimError(422, "state_conflict", "Incident is already acknowledged")
            if status not in _ACTIVE:
                raise SimError(
                    422, "state_conflict", f"Incident is {status} and cannot be acknowledged"
                )
            inc.update(status="acknowledged", acknowledged_at=inc["acknowledged_at"] or now)
        elif action == "cancel":
            if status == "cancelled":
                raise SimError(422, "state_conflict", "Incident is already cancelled")
            if status not in _ACTIVE | {"mitigated", "scheduled"}:
                raise SimError(
                    422, "state_conflict", f"Incident is {status} and cannot be cancelled"
                )
            inc.update(
                status="cancelled",
                cancelled_at=now,
                cancellation_message=message,
                cancelled_by=_user(user),
            )
        else:  # restart
            if status not in ("mitigated", "resolved", "cancelled", "closed", "completed"):
                raise SimError(
                    422, "state_conflict", f"Incident is {status} and cannot be restarted"
                )
            inc.update(status="started", started_at=now, started_by=_user(user))
            for key in ("mitigated", "resolved", "cancelled", "closed"):
                inc[f"{key}_at"] = None
                inc[f"{key}_by"] = None
            for key in ("mitigation", "resolution", "cancellation"):
                inc[f"{key}_message"] = None
        inc["updated_at"] = now
        event = _STATUS_EVENTS.get(inc["status"], "incident.updated")
        self._emit(event, self._incident_flat(incident_id))
        return self._incident_flat(incident_id)

    def _ack_alert(self, alert_id: str) -> None:
        alert = self._alert(alert_id)
        if alert["status"] == "acknowledged":
            return
        if alert["status"] != "triggered":
            raise SimError(400, "bad_request", f"cannot acknowledge {alert['status']} alert")
        alert.update(status="acknowledged", updated_at=iso_ms(now_dt()))
        self._emit("alert.updated", self._alert_flat(alert_id))

    def _resolve_alert(
        self,
        alert_id: str,
        message: str | None,
        *,
        resolve_incidents: bool,
        user: dict[str, str],
    ) -> None:
        alert = self._alert(alert_id)
        if alert["status"] != "resolved":
            now = iso_ms(now_dt())
            alert.update(status="resolved", ended_at=now, updated_at=now)
            self._emit("alert.updated", self._alert_flat(alert_id))
        if resolve_incidents:
            for incident_id in self._alert_incidents[alert_id]:
                if self._incidents[incident_id]["status"] in _ACTIVE | {"mitigated"}:
                    self._act(incident_id, "resolve", message, user)

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        event_id = uuid_from(self._ids)
        envelope = {
            "event": {"id": event_id, "type": event_type, "issued_at": iso_ms(now_dt())},
            "data": data,
        }
        body = json.dumps(envelope).encode()
        self.webhooks.send(event_id, event_type, body, self.sign)

    def sign(self, _delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """`X-Rootly-Signature` for `body` sent at `timestamp`."""
        digest = hmac.new(self._secret.encode(), f"{timestamp}".encode() + body, hashlib.sha256)
        return {"X-Rootly-Signature": f"t={timestamp},v1={digest.hexdigest()}"}

    # -- HTTP plumbing -------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> web.Response | str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return self._error(SimError(401, "unauthorized", "Missing bearer token"))
        if not hmac.compare_digest(token.strip().encode(), self._token.encode()):
            return self._error(SimError(401, "unauthorized", "Invalid API token"))
        body_present = request.can_read_body or request[BODY_KEY] is not None
        if body_present and request.method in ("POST", "PUT", "PATCH"):
            ctype = request.content_type
            if request[BODY_KEY] is not None and ctype != JSONAPI:
                return self._error(
                    SimError(
                        415,
                        "unsupported_media_type",
                        f"Content-Type must be {JSONAPI}, got {ctype}",
                    )
                )
        return token.strip()

    def _rate_limit(
        self, key: str, request: web.Request
    ) -> tuple[web.Response | None, dict[str, str]]:
        now = time.time()
        window = int(now // 60) * 60
        start, count = self._windows.get(key, (window, 0))
        if start != window:
            start, count = window, 0
        reset = str(start + 60)
        if count >= self._limit:
            headers = {
                "X-RateLimit-Limit": str(self._limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": reset,
            }
            resp = json_response(429, {"error": "Rate limit exceeded"})
            resp.headers.update(headers)
            return resp, headers
        count += 1
        self._windows[key] = (start, count)
        return None, {
            "X-RateLimit-Limit": str(self._limit),
            "X-RateLimit-Remaining": str(self._limit - count),
            "X-RateLimit-Reset": reset,
        }

    def _injected_429(self, key: str) -> web.Response:
        resp = json_response(429, {"error": "Rate limit exceeded"})
        resp.headers.update(
            {
                "X-RateLimit-Limit": str(self._limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(time.time() + self.faults.retry_after_seconds)),
            }
        )
        return resp

    def _error(self, err: SimError) -> web.Response:
        titles = {
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            405: "Method Not Allowed",
            415: "Unsupported Media Type",
            422: "Unprocessable Entity",
            500: "Internal Server Error",
            504: "Gateway Timeout",
        }
        error: dict[str, Any] = {
            "title": titles.get(err.status, "Error"),
            "status": str(err.status),
            "code": err.code,
            "detail": err.message,
        }
        if err.field_name:
            error["source"] = {"pointer": f"/data/attributes/{err.field_name}"}
        return json_response(err.status, {"errors": [error]}, content_type=JSONAPI)

    def _incident_doc(self, incident_id: str, include: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": incident_id,
            "type": "incidents",
            "attributes": self._api_attrs(incident_id),
        }
        alert_ids = self._incident_alerts[incident_id]
        data["relationships"] = {
            "alerts": {"data": [{"id": a, "type": "alerts"} for a in alert_ids]}
        }
        doc: dict[str, Any] = {"data": data}
        if "alerts" in include.split(","):
            doc["included"] = [
                {"id": a, "type": "alerts", "attributes": self._alerts[a]} for a in alert_ids
            ]
        return doc

    def _api_attrs(self, incident_id: str) -> dict[str, Any]:
        # The spec's `severity` is `nullable` with `allOf`, which validators read as "object
        # only"; Rootly omits it when unset, so do we.
        attrs = self._incidents[incident_id]
        return {k: v for k, v in attrs.items() if k != "severity" or v is not None}

    def _alert_doc(self, alert_id: str, include: str) -> dict[str, Any]:
        incident_ids = self._alert_incidents[alert_id]
        data: dict[str, Any] = {
            "id": alert_id,
            "type": "alerts",
            "attributes": self._alert_attrs(alert_id),
            "relationships": {
                "incidents": {"data": [{"id": i, "type": "incidents"} for i in incident_ids]}
            },
        }
        doc: dict[str, Any] = {"data": data}
        if "incidents" in include.split(","):
            doc["included"] = [
                {"id": i, "type": "incidents", "attributes": self._api_attrs(i)}
                for i in incident_ids
            ]
        return doc

    @staticmethod
    def _attributes(
        request: web.Request, kind: str, *, required: bool, allowed: set[str] | None = None
    ) -> dict[str, Any]:
        body = request[BODY_KEY]
        if body is None:
            if required:
                raise SimError(400, "bad_request", "request body is required")
            return {}
        data = require_object(body).get("data")
        if not isinstance(data, dict):
            raise SimError(400, "bad_request", 'body must be {"data": {...}}')
        if data.get("type") != kind:
            raise SimError(422, "invalid_value", f"data.type must be {kind!r}")
        attrs = data.get("attributes", {})
        if attrs is None:
            attrs = {}
        if not isinstance(attrs, dict):
            raise SimError(422, "invalid_value", "data.attributes must be an object")
        if allowed is not None and set(attrs) - allowed:
            extra = ", ".join(sorted(set(attrs) - allowed))
            raise SimError(422, "invalid_value", f"unpermitted attributes: {extra}")
        return attrs

    def _ok(self, doc: dict[str, Any], status: int = 200) -> web.Response:
        return json_response(status, doc, content_type=JSONAPI)

    # -- API handlers --------------------------------------------------------------------

    async def _h_list_incidents(self, request: web.Request) -> web.Response:
        """`GET /v1/incidents`: page[number], page[size], sort by created_at,
        filter[created_at][gt|gte|lt|lte] (other filters are not simulated: 400)."""
        query = request.query
        bounds: list[tuple[str, str]] = []
        sort = "created_at"
        for name in query:
            if name.startswith("filter[created_at][") and name.endswith("]"):
                op = name[len("filter[created_at][") : -1]
                if op not in ("gt", "gte", "lt", "lte"):
                    raise SimError(400, "bad_request", f"unsupported filter {name}")
                bounds.append((op, query[name]))
            elif name == "sort":
                sort = query[name]
                if sort not in ("created_at", "-created_at"):
                    raise SimError(400, "bad_request", f"sort {sort!r} is not simulated")
            elif name not in ("page[number]", "page[size]", "include"):
                raise SimError(400, "bad_request", f"unsupported query parameter {name}")
        number_raw, size_raw = query.get("page[number]", "1"), query.get("page[size]", "20")
        if not number_raw.isdigit() or not size_raw.isdigit() or int(number_raw) < 1:
            raise SimError(400, "bad_request", "page[number] and page[size] must be integers")
        number, size = int(number_raw), max(1, min(int(size_raw), 100))

        def keep(created: str) -> bool:
            for op, value in bounds:
                head = created[: len(value)]
                if (
                    (op == "gt" and not head > value)
                    or (op == "gte" and not head >= value)
                    or (op == "lt" and not head < value)
                    or (op == "lte" and not head <= value)
                ):
                    return False
            return True

        ids = [i for i, attrs in self._incidents.items() if keep(attrs["created_at"])]
        # Creation order breaks ties (several incidents can share a millisecond).
        ids.sort(
            key=lambda i: (self._incidents[i]["created_at"], self._incidents[i]["sequential_id"]),
            reverse=sort.startswith("-"),
        )
        total = len(ids)
        pages = max(1, -(-total // size))
        chunk = ids[(number - 1) * size : number * size]
        base = f"{request.url.with_query(None)}?page[size]={size}&page[number]="
        doc = {
            "data": [self._incident_doc(i, "")["data"] for i in chunk],
            "links": {
                "self": f"{base}{number}",
                "first": f"{base}1",
                "prev": f"{base}{number - 1}" if number > 1 else None,
                "next": f"{base}{number + 1}" if number < pages else None,
                "last": f"{base}{pages}",
            },
            "meta": {
                "current_page": number,
                "next_page": number + 1 if number < pages else None,
                "prev_page": number - 1 if number > 1 else None,
                "total_count": total,
                "total_pages": pages,
            },
        }
        return self._ok(doc)

    async def _h_get_incident(self, request: web.Request) -> web.Response:
        incident_id = request.match_info["id"]
        self._incident(incident_id)
        return self._ok(self._incident_doc(incident_id, request.query.get("include", "")))

    async def _h_update_incident(self, request: web.Request) -> web.Response:
        incident_id = request.match_info["id"]
        inc = self._incident(incident_id)
        attrs = self._attributes(request, "incidents", required=True)
        changes: dict[str, Any] = {}
        if "title" in attrs:
            title = opt_str(attrs, "title", required=True)
            changes["title"] = title
        for key in _STRINGS:
            if key in attrs:
                changes[key] = opt_str(attrs, key)
        for key in _TIMESTAMPS:
            if key in attrs:
                changes[key] = _parse_time(key, attrs[key])
        if attrs.get("severity_id") is not None:
            changes["severity"] = {"data": self._severity(str(attrs["severity_id"]))}
        elif "severity_id" in attrs:
            changes["severity"] = None
        if "labels" in attrs:
            if attrs["labels"] is not None and not isinstance(attrs["labels"], dict):
                raise SimError(422, "invalid_value", "labels must be an object", "labels")
            changes["labels"] = attrs["labels"] or {}
        new_status = attrs.get("status")
        if new_status is not None and new_status not in INCIDENT_STATUSES:
            raise SimError(422, "invalid_value", f"unknown status {new_status!r}", "status")
        alert_ids = attrs.get("alert_ids") or []
        if not isinstance(alert_ids, list):
            raise SimError(422, "invalid_value", "alert_ids must be a list", "alert_ids")
        for alert_id in alert_ids:
            self._alert(str(alert_id))
        field_changed = any(inc.get(k) != v for k, v in changes.items())
        status_changed = new_status is not None and new_status != inc["status"]
        now = iso_ms(now_dt())
        inc.update(changes)
        attached = [a for a in alert_ids if a not in self._incident_alerts[incident_id]]
        for alert_id in attached:
            self._attach(incident_id, str(alert_id))
        if status_changed:
            inc["status"] = new_status
            stamp = f"{new_status}_at"
            if stamp in inc and stamp not in changes:
                inc[stamp] = now
        if field_changed or status_changed or attached:
            inc["updated_at"] = now
        if status_changed:
            self._emit(
                _STATUS_EVENTS.get(str(new_status), "incident.updated"),
                self._incident_flat(incident_id),
            )
        if field_changed or attached:
            self._emit("incident.updated", self._incident_flat(incident_id))
        return self._ok(self._incident_doc(incident_id, ""))

    async def _h_incident_action(self, request: web.Request) -> web.Response:
        incident_id = request.match_info["id"]
        action = request.path.rsplit("/", 1)[1]
        self._incident(incident_id)
        message_key = {
            "cancel": "cancellation_message",
            "resolve": "resolution_message",
            "mitigate": "mitigation_message",
        }.get(action)
        allowed = {message_key} if message_key else set()
        attrs = self._attributes(request, "incidents", required=False, allowed=allowed)
        message = opt_str(attrs, message_key) if message_key else None
        self._act(incident_id, action, message, _API_USER)
        return self._ok(self._incident_doc(incident_id, ""))

    async def _h_create_alert(self, request: web.Request) -> web.Response:
        attrs = self._attributes(request, "alerts", required=True)
        alert_id = self._new_alert(attrs, source="api")
        self._emit("alert.created", self._alert_flat(alert_id))
        return self._ok(self._alert_doc(alert_id, ""), 201)

    async def _h_get_alert(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["id"]
        self._alert(alert_id)
        return self._ok(self._alert_doc(alert_id, request.query.get("include", "")))

    async def _h_ack_alert(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["id"]
        self._ack_alert(alert_id)
        return self._ok(self._alert_doc(alert_id, ""))

    async def _h_resolve_alert(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["id"]
        self._alert(alert_id)
        attrs = self._attributes(
            request,
            "alerts",
            required=False,
            allowed={"resolution_message", "resolve_related_incidents"},
        )
        resolve_incidents = attrs.get("resolve_related_incidents") is True
        self._resolve_alert(
            alert_id,
            opt_str(attrs, "resolution_message"),
            resolve_incidents=resolve_incidents,
            user=_API_USER,
        )
        return self._ok(self._alert_doc(alert_id, ""))

    # -- control handlers ----------------------------------------------------------------

    async def _c_create_incident(self, request: web.Request) -> web.Response:
        body = require_object(request[BODY_KEY])
        title = opt_str(body, "title", required=True)
        assert title is not None
        incident = await self.create_incident(
            title, severity=opt_str(body, "severity"), summary=opt_str(body, "summary")
        )
        return json_response(201, incident)

    async def _c_create_alert(self, request: web.Request) -> web.Response:
        body = require_object(request[BODY_KEY])
        summary = opt_str(body, "summary", required=True)
        assert summary is not None
        alert = await self.create_alert(
            summary,
            incident_id=opt_str(body, "incident_id"),
            status=opt_str(body, "status") or "triggered",
            description=opt_str(body, "description"),
        )
        return json_response(201, alert)

    async def _c_incident_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action == "edit":
            return await self._c_incident_edit(request)
        if action not in ("cancel", "resolve", "mitigate", "restart", "acknowledge"):
            raise SimError(404, "not_found", f"unknown incident action {action!r}")
        body = request[BODY_KEY]
        message = opt_str(require_object(body), "message") if body is not None else None
        incident_id = request.match_info["id"]
        if action == "restart":
            return json_response(200, await self.restart_incident(incident_id))
        return json_response(200, self._act(incident_id, action, message, _HUMAN_USER))

    async def _c_incident_edit(self, request: web.Request) -> web.Response:
        body = require_object(request[BODY_KEY])
        unknown = set(body) - {"title", "summary", "severity"}
        if unknown:
            raise SimError(400, "invalid_body", f"unknown fields: {', '.join(sorted(unknown))}")
        incident = await self.edit_incident(
            request.match_info["id"],
            title=opt_str(body, "title"),
            summary=opt_str(body, "summary"),
            severity=opt_str(body, "severity"),
        )
        return json_response(200, incident)

    async def _c_alert_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        alert_id = request.match_info["id"]
        if action == "acknowledge":
            return json_response(200, await self.acknowledge_alert(alert_id))
        if action == "resolve":
            return json_response(200, await self.resolve_alert(alert_id))
        raise SimError(404, "not_found", f"unknown alert action {action!r}")
