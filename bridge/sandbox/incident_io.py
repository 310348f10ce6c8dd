"""Simulated incident.io: escalations, alerts, incidents, Standard Webhooks, token bucket.

Owns the incident.io side of the sandbox (DESIGN section 2 and the official OpenAPI spec,
which wins where they differ). API routes need `Authorization: Bearer <api key>`, except the
HTTP alert source (`POST /v2/alert_events/http/{alert_source_config_id}`), which takes the
alert source's own token (bearer header or `?token=`).

API routes:
  POST /v2/escalations (201; a reused idempotency key returns the existing escalation)
  GET  /v2/escalations/{id}   GET /v2/escalations (page_size, after, filters such as
       status[one_of]=triggered, status[not_in]=..., escalation_path|alert|incident[one_of],
       idempotency_key[is|starts_with], created_at|updated_at[gte|lte|date_range]), newest
       first
  POST /v2/escalations/{id}/actions/cancel (200, empty; cancelled: no-op; resolved/expired:
       422 `invalid_state`)
  POST /v2/escalations/{id}/actions/respond (200, empty; `specs/incident-io/supplement.json`):
       `ack` (paging or snoozed -> acked; acked: no-op; resolved/expired/cancelled: 422
       `invalid_state`), `snooze` with `snooze_details {snooze_until (future), reason?}`
       (paging -> snoozed; acked or terminal: 422), `nack`: 422 (not for an API key)
  POST /v2/alert_events/http/{alert_source_config_id} (202)
  GET  /v2/alerts (page_size required, after, deduplication_key[is], status|alert_source
       [one_of|not_in], alert_group_id[one_of], created_at[gte|lte|date_range],
       has_notes[is], include_maintenance_window[is]), newest first
  GET  /v2/alerts/{id}   GET /v2/incidents/{id}   POST /v2/incidents/{id}/actions/edit

An HTTP alert event `firing` with a new deduplication key creates an alert
(`public_alert.alert_created_v1`) and, through the default alert route, an escalation in
`triggered` on the default escalation path (`public_escalation.escalation_created_v1`). The
same key while firing creates nothing. `resolved` resolves the alert
(`public_alert.alert_resolved_v1`) and resolves its escalations still paging
(pending/triggered/delayed/pending_repeat/snoozed), actor = the alert.

Escalation status changes send `public_escalation.escalation_status_updated_v1` with `actor`:
`api_key` for API calls (cancel, respond), `user` for control-API (human) calls, `alert` for
alert resolution.
Incident changes send `public_incident.incident_updated_v2` (every change) and, when the
status changes, `public_incident.incident_status_updated_v2` too. With
`private_webhooks=True` the `private_*` twins (payload `{"id"}`) are sent instead; the spec has
no private twin of `incident_status_updated_v2`, so none is sent for it (the
`private_incident.incident_updated_v2` sent with it covers the change).

Rate limits are layered as incident.io's are (DESIGN section 7): every request counts
against its key's token bucket (`rate_limit_per_minute`, `bucket_capacity`,
`refill_per_second`; 1200, 20/s), and `POST /v2/escalations` also against its own
(`escalation_create_per_minute`, 60, holding as many unless `escalation_create_capacity`
says otherwise). Every answer carries
`X-RateLimit-Limit` (the binding limit, the one with the fewest requests left, then every
limit that applied: `60, 1200;window=60, 60;window=60`), `X-RateLimit-Remaining` and
`X-RateLimit-Used` of the binding one, and `X-RateLimit-Reset`: the unix second by which
it allows one more request. 429s carry the same headers (remaining 0), `Retry-After`
(whole seconds) and `rate_limit.retry_after` formatted like the spec's own example (`Thu,
17 Apr 2025 11:17:18 UTC`; DESIGN says RFC 3339, the spec wins).

Control routes (no auth): POST /_sandbox/escalations/{id}/ack|resolve|expire {user?};
POST /_sandbox/alerts/{id}/resolve (the alert's source reports it resolved); POST
/_sandbox/incidents {name, severity?, summary?, status?}; POST
/_sandbox/incidents/{id}/status {status (name or category), message?}; POST
/_sandbox/incidents/{id}/edit {name?, summary?, severity?}; plus the shared ones.
`GET /v1/identity` answers with `api_key_roles` (every role the bridge's operations need).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

from bridge.sandbox.common import (
    BODY_KEY,
    SimError,
    SimulatorBase,
    iso_us,
    json_response,
    now_dt,
    opt_str,
    require_object,
    ulid_from,
    uuid_from,
)

ESCALATION_STATUSES = [
    "pending",
    "triggered",
    "acked",
    "resolved",
    "expired",
    "cancelled",
    "snoozed",
    "delayed",
    "pending_repeat",
]
_PAGING = {"pending", "triggered", "delayed", "pending_repeat", "snoozed"}
_TERMINAL = {"resolved", "expired", "cancelled"}
_EVENT_OF = {
    "acked": "acked",
    "cancelled": "cancelled",
    "resolved": "resolved",
    "expired": "expired",
    "triggered": "triggered",
}
_STATUSES = (
    ("Triage", "triage"),
    ("Investigating", "live"),
    ("Fixing", "live"),
    ("Monitoring", "live"),
    ("Documenting", "learning"),
    ("Closed", "closed"),
    ("Declined", "declined"),
    ("Merged", "merged"),
    ("Canceled", "canceled"),
    ("Paused", "paused"),
)
# IncidentSlimV2.status_category uses other words for two categories.
_SLIM_CATEGORY = {"live": "active", "learning": "post-incident"}
_SEVERITIES = (("Minor", 1), ("Major", 2), ("Critical", 3))
_KEY_NAME = "bridge sandbox key"
_HUMAN = {
    "id": "01HSANDBOXHUMAN00000000000",
    "name": "Sandbox Human",
    "email": "human@incident-io.sandbox.test",
    "role": "responder",
}
_ERROR_TYPES = {
    400: "bad_request",
    401: "authentication_error",
    404: "not_found",
    405: "method_not_allowed",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    504: "gateway_timeout",
}


def _human(user: str | None) -> dict[str, Any]:
    if not user:
        return {"user": dict(_HUMAN)}
    slug = "".join(c for c in user.lower() if c.isalnum()) or "user"
    return {
        "user": {
            "id": f"01HSANDBOXUSER{slug[:12].upper():0<12}",
            "name": user,
            "email": f"{slug}@incident-io.sandbox.test",
            "role": "responder",
        }
    }


SANDBOX_KEY_ROLES = ("viewer", "incident_editor", "escalation_creator", "on_call_viewer")


@dataclass(frozen=True)
class _Policy:
    """One rate limit: a token bucket per key holding `capacity`, refilled at `refill`/s,
    announced as `limit` requests a minute."""

    name: str
    limit: int
    capacity: float
    refill: float


@dataclass(frozen=True)
class _Applied:
    """A policy's bucket as one request found it (`tokens` after taking its own)."""

    policy: _Policy
    tokens: float


class IncidentIoSimulator(SimulatorBase):
    """Stateful fake of the incident.io API and its outgoing webhooks."""

    platform = "incident_io"

    def __init__(
        self,
        *,
        api_key: str,
        api_key_id: str,
        webhook_secret: str,
        alert_source_config_id: str,
        alert_source_token: str,
        rate_limit_per_minute: int = 1200,
        refill_per_second: float = 20.0,
        bucket_capacity: int = 1200,
        escalation_create_per_minute: int = 60,
        escalation_create_capacity: int | None = None,
        private_webhooks: bool = False,
        seed: int | None = None,
        webhook_retry_delays: Sequence[float] = (0.2, 0.5, 1, 2, 5, 10, 30),
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        super().__init__(seed=seed, webhook_retry_delays=tuple(webhook_retry_delays), logger=logger)
        self._api_key = api_key
        self.api_key_id = api_key_id
        # What GET /v1/identity reports for the key (tests narrow it to check `bridge doctor`).
        self.api_key_roles: list[str] = list(SANDBOX_KEY_ROLES)
        self._secret = base64.b64decode(webhook_secret.removeprefix("whsec_"))
        self.alert_source_config_id = alert_source_config_id
        self._alert_token = alert_source_token
        self._key_policy = _Policy(
            _KEY_NAME, rate_limit_per_minute, float(bucket_capacity), refill_per_second
        )
        self._escalation_policy = _Policy(
            "escalation create",
            escalation_create_per_minute,
            float(escalation_create_capacity or escalation_create_per_minute),
            escalation_create_per_minute / 60.0,
        )
        self.private_webhooks = private_webhooks
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._counter = 0
        created = iso_us(now_dt())
        self.default_escalation_path_id = self._new_id()
        self.statuses: list[dict[str, Any]] = [
            {
                "id": self._new_id(),
                "name": name,
                "category": category,
                "rank": rank,
                "description": f"The incident is {name.lower()}",
                "created_at": created,
                "updated_at": created,
            }
            for rank, (name, category) in enumerate(_STATUSES)
        ]
        self.severities: list[dict[str, Any]] = [
            {
                "id": self._new_id(),
                "name": name,
                "rank": rank,
                "description": f"{name} impact",
                "created_at": created,
                "updated_at": created,
            }
            for name, rank in _SEVERITIES
        ]
        self._escalations: dict[str, dict[str, Any]] = {}
        # Snoozed escalations: until when, and why (not part of `EscalationV2`).
        self.snoozes: dict[str, tuple[str, str | None]] = {}
        self._esc_alerts: dict[str, list[str]] = {}
        self._esc_incidents: dict[str, list[str]] = {}
        self._idempotency: dict[str, str] = {}
        self._alerts: dict[str, dict[str, Any]] = {}
        self._firing: dict[str, str] = {}
        self._incidents: dict[str, dict[str, Any]] = {}
        self._incident_seq = 0
        r = self.app.router
        r.add_get("/v1/identity", self._h_identity)
        r.add_post("/v2/escalations", self._h_create_escalation)
        r.add_get("/v2/escalations", self._h_list_escalations)
        r.add_get("/v2/escalations/{id}", self._h_get_escalation)
        r.add_post("/v2/escalations/{id}/actions/cancel", self._h_cancel_escalation)
        r.add_post("/v2/escalations/{id}/actions/respond", self._h_respond_escalation)
        r.add_post("/v2/alert_events/http/{config_id}", self._h_alert_event)
        r.add_get("/v2/alerts", self._h_list_alerts)
        r.add_get("/v2/alerts/{id}", self._h_get_alert)
        r.add_get("/v2/incidents/{id}", self._h_get_incident)
        r.add_post("/v2/incidents/{id}/actions/edit", self._h_edit_incident)
        r.add_post("/_sandbox/escalations/{id}/{action}", self._c_escalation_action)
        r.add_post("/_sandbox/alerts/{id}/resolve", self._c_resolve_alert)
        r.add_post("/_sandbox/incidents", self._c_create_incident)
        r.add_post("/_sandbox/incidents/{id}/status", self._c_incident_status)
        r.add_post("/_sandbox/incidents/{id}/edit", self._c_incident_edit)

    # -- Python control API (acting as a human) -----------------------------------------

    async def ack_escalation(
        self, escalation_id: str, *, user: str | None = None
    ) -> dict[str, Any]:
        """Acknowledge as a user: paging/snoozed -> acked (acked: no-op; terminal: 422)."""
        esc = self._escalation(escalation_id)
        if esc["status"] != "acked":
            if esc["status"] not in _PAGING:
                raise SimError(
                    422,
                    "invalid_state",
                    f"Escalation is {esc['status']} and cannot be acknowledged",
                )
            self._set_status(escalation_id, "acked", _human(user))
        return self._escalation_view(escalation_id)

    async def resolve_escalation(
        self, escalation_id: str, *, user: str | None = None
    ) -> dict[str, Any]:
        """Resolve as a user (resolved: no-op; cancelled/expired: 422)."""
        esc = self._escalation(escalation_id)
        if esc["status"] != "resolved":
            if esc["status"] in _TERMINAL:
                raise SimError(
                    422, "invalid_state", f"Escalation is {esc['status']} and cannot be resolved"
                )
            self._set_status(escalation_id, "resolved", _human(user))
        return self._escalation_view(escalation_id)

    async def resolve_alert(self, alert_id: str) -> dict[str, Any]:
        """The alert's source reports it resolved, as a monitoring tool would (resolved:
        no-op): sends `alert_resolved_v1` and resolves its escalations still paging."""
        alert = self._alert(alert_id)
        if alert["status"] != "resolved":
            self._resolve_alert(alert_id)
        return dict(alert)

    async def expire_escalation(self, escalation_id: str) -> dict[str, Any]:
        """Let a paging escalation run out of levels (-> expired)."""
        esc = self._escalation(escalation_id)
        if esc["status"] in _TERMINAL:
            raise SimError(422, "invalid_state", f"Escalation is {esc['status']} already")
        self._set_status(escalation_id, "expired", None)
        return self._escalation_view(escalation_id)

    async def create_incident(
        self,
        name: str,
        *,
        severity: str | None = None,
        summary: str | None = None,
        status: str = "Investigating",
        user: str | None = None,
    ) -> dict[str, Any]:
        """Declare an incident as a user; sends `incident_created_v2`."""
        if not isinstance(name, str) or not name.strip():
            raise SimError(422, "invalid_value", "name must be a non-empty string", "name")
        sev = self._severity(severity) if severity is not None else None
        st = self._status(status)
        now = iso_us(now_dt())
        self._incident_seq += 1
        incident_id = self._new_id()
        incident: dict[str, Any] = {
            "id": incident_id,
            "reference": f"INC-{self._incident_seq}",
            "name": name,
            "incident_status": st,
            "mode": "standard",
            "visibility": "public",
            "slack_channel_id": f"C0SANDBOX{self._incident_seq:04d}",
            "slack_team_id": "T0SANDBOX",
            "creator": _human(user),
            "custom_field_entries": [],
            "incident_role_assignments": [],
            "permalink": f"https://app.incident.io/sandbox/incidents/{self._incident_seq}",
            "created_at": now,
            "updated_at": now,
        }
        if sev is not None:
            incident["severity"] = sev
        if summary is not None:
            incident["summary"] = summary
        self._incidents[incident_id] = incident
        self._emit("public_incident.incident_created_v2", dict(incident), incident_id)
        return dict(incident)

    async def set_incident_status(
        self, incident_id: str, status: str, *, message: str | None = None
    ) -> dict[str, Any]:
        """Move an incident to a status (by name, ID or category) as a user."""
        self._incident(incident_id)
        self._apply_incident_changes(
            incident_id, {"incident_status": self._status(status)}, message
        )
        return dict(self._incidents[incident_id])

    async def edit_incident(
        self,
        incident_id: str,
        *,
        name: str | None = None,
        summary: str | None = None,
        severity: str | None = None,
    ) -> dict[str, Any]:
        """Edit name / summary / severity as a user; sends `incident_updated_v2`."""
        self._incident(incident_id)
        changes: dict[str, Any] = {}
        if name is not None:
            if not name.strip():
                raise SimError(422, "invalid_value", "name must not be empty", "name")
            changes["name"] = name
        if summary is not None:
            changes["summary"] = summary
        if severity is not None:
            changes["severity"] = self._severity(severity)
        self._apply_incident_changes(incident_id, changes, None)
        return dict(self._incidents[incident_id])

    def get_escalation(self, escalation_id: str) -> dict[str, Any]:
        """The escalation as the API shows it (`EscalationV2`)."""
        self._escalation(escalation_id)
        return self._escalation_view(escalation_id)

    def get_alert(self, alert_id: str) -> dict[str, Any]:
        """The alert as the API shows it (`AlertV2`)."""
        return dict(self._alert(alert_id))

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        """The incident as the API shows it (`IncidentV2`)."""
        return dict(self._incident(incident_id))

    def state(self) -> dict[str, Any]:
        """Every escalation, alert and incident, plus the catalogues."""
        return {
            "escalations": [self._escalation_view(e) for e in self._escalations],
            "alerts": list(self._alerts.values()),
            "incidents": list(self._incidents.values()),
            "incident_statuses": self.statuses,
            "severities": self.severities,
            "escalation_path_id": self.default_escalation_path_id,
        }

    def _reset_state(self) -> None:
        for store in (
            self._escalations,
            self.snoozes,
            self._esc_alerts,
            self._esc_incidents,
            self._idempotency,
            self._alerts,
            self._firing,
            self._incidents,
            self._buckets,
        ):
            store.clear()
        self._incident_seq = 0

    # -- model ---------------------------------------------------------------------------

    def _new_id(self) -> str:
        self._counter += 1
        return ulid_from(self._ids, self._counter)

    def _severity(self, ref: str) -> dict[str, Any]:
        for sev in self.severities:
            if ref in (sev["id"], sev["name"], sev["name"].lower()):
                return dict(sev)
        raise SimError(422, "invalid_value", f"unknown severity {ref!r}", "severity_id")

    def _status(self, ref: str) -> dict[str, Any]:
        for st in self.statuses:
            if ref in (st["id"], st["name"], st["name"].lower()):
                return dict(st)
        for st in self.statuses:
            if ref == st["category"]:
                return dict(st)
        raise SimError(
            422, "invalid_value", f"unknown incident status {ref!r}", "incident_status_id"
        )

    def _escalation(self, escalation_id: str) -> dict[str, Any]:
        try:
            return self._escalations[escalation_id]
        except KeyError:
            raise SimError(404, "not_found", f"escalation {escalation_id} not found") from None

    def _alert(self, alert_id: str) -> dict[str, Any]:
        try:
            return self._alerts[alert_id]
        except KeyError:
            raise SimError(404, "not_found", f"alert {alert_id} not found") from None

    def _incident(self, incident_id: str) -> dict[str, Any]:
        try:
            return self._incidents[incident_id]
        except KeyError:
            raise SimError(404, "not_found", f"incident {incident_id} not found") from None

    def _alert_slim(self, alert_id: str) -> dict[str, Any]:
        alert = self._alerts[alert_id]
        keys = (
            "id",
            "alert_source_id",
            "created_at",
            "deduplication_key",
            "description",
            "resolved_at",
            "source_url",
            "status",
            "title",
            "updated_at",
        )
        return {k: alert[k] for k in keys if k in alert}

    def _incident_slim(self, incident_id: str) -> dict[str, Any]:
        inc = self._incidents[incident_id]
        category = inc["incident_status"]["category"]
        slim = {
            "id": incident_id,
            "external_id": int(inc["reference"].split("-")[1]),
            "name": inc["name"],
            "reference": inc["reference"],
            "status_category": _SLIM_CATEGORY.get(category, category),
            "visibility": inc["visibility"],
        }
        if "summary" in inc:
            slim["summary"] = inc["summary"]
        return slim

    def _escalation_view(self, escalation_id: str) -> dict[str, Any]:
        view = dict(self._escalations[escalation_id])
        view["events"] = list(view["events"])
        view["related_alerts"] = [self._alert_slim(a) for a in self._esc_alerts[escalation_id]]
        view["related_incidents"] = [
            self._incident_slim(i) for i in self._esc_incidents[escalation_id]
        ]
        return view

    def _new_escalation(
        self,
        *,
        title: str,
        description: str,
        creator: dict[str, Any],
        path_id: str | None,
        user_ids: list[str] | None,
        alert_ids: list[str],
        incident_ids: list[str],
    ) -> str:
        escalation_id = self._new_id()
        now = iso_us(now_dt())
        events: list[dict[str, Any]] = [
            {"id": self._new_id(), "event": "triggered", "occurred_at": now, "urgency": "high"}
        ]
        if user_ids:
            events.append(
                {
                    "id": self._new_id(),
                    "event": "notified_users",
                    "occurred_at": now,
                    "urgency": "high",
                    "users": [
                        {"id": u, "name": f"User {u}", "role": "responder"} for u in user_ids
                    ],
                }
            )
        esc: dict[str, Any] = {
            "id": escalation_id,
            "title": title,
            "description": description,
            "status": "triggered",
            "creator": creator,
            "priority": {"name": "P1"},
            "events": events,
            "created_at": now,
            "updated_at": now,
        }
        if path_id is not None:
            esc["escalation_path_id"] = path_id
        self._escalations[escalation_id] = esc
        self._esc_alerts[escalation_id] = alert_ids
        self._esc_incidents[escalation_id] = incident_ids
        view = self._escalation_view(escalation_id)
        self._emit("public_escalation.escalation_created_v1", view, escalation_id)
        return escalation_id

    def _set_status(self, escalation_id: str, new: str, actor: dict[str, Any] | None) -> None:
        esc = self._escalations[escalation_id]
        previous = esc["status"]
        now = iso_us(now_dt())
        esc["status"] = new
        esc["updated_at"] = now
        if new in _EVENT_OF:
            esc["events"] = [
                *esc["events"],
                {"id": self._new_id(), "event": _EVENT_OF[new], "occurred_at": now},
            ]
        payload: dict[str, Any] = {
            "escalation": self._escalation_view(escalation_id),
            "previous_status": previous,
            "new_status": new,
        }
        if actor is not None:
            payload["actor"] = actor
        self._log.info(
            "sandbox.escalation.status", escalation_id=escalation_id, previous=previous, new=new
        )
        self._emit("public_escalation.escalation_status_updated_v1", payload, escalation_id)

    def _apply_incident_changes(
        self, incident_id: str, changes: dict[str, Any], message: str | None
    ) -> None:
        inc = self._incidents[incident_id]
        changed = {k: v for k, v in changes.items() if inc.get(k) != v}
        if not changed:
            return
        previous = inc["incident_status"]
        inc.update(changed)
        inc["updated_at"] = iso_us(now_dt())
        self._emit("public_incident.incident_updated_v2", dict(inc), incident_id)
        if "incident_status" in changed:
            payload: dict[str, Any] = {
                "incident": dict(inc),
                "previous_status": previous,
                "new_status": inc["incident_status"],
            }
            if message:
                payload["message"] = message
            self._emit("public_incident.incident_status_updated_v2", payload, incident_id)

    def _emit(self, event_type: str, payload: dict[str, Any], object_id: str) -> None:
        if self.private_webhooks:
            if event_type == "public_incident.incident_status_updated_v2":
                return
            event_type = "private_" + event_type.removeprefix("public_")
            payload = {"id": object_id}
        body = json.dumps({"event_type": event_type, event_type: payload}).encode()
        delivery_id = "msg_" + "".join(
            self._ids.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
            for _ in range(27)
        )
        self.webhooks.send(delivery_id, event_type, body, self.sign)

    def sign(self, delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """Standard Webhooks headers for `body` sent at `timestamp`."""
        signed = f"{delivery_id}.{timestamp}.".encode() + body
        digest = base64.b64encode(hmac.new(self._secret, signed, hashlib.sha256).digest())
        return {
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": f"v1,{digest.decode()}",
        }

    # -- HTTP plumbing -------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> web.Response | str:
        alert_source = request.path.startswith("/v2/alert_events/http/")
        expected = self._alert_token if alert_source else self._api_key
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if alert_source and not token:
            token = request.query.get("token", "")
        if not token:
            return self._error(
                SimError(
                    401,
                    "missing_authorization_material",
                    "No authorization material provided in request",
                )
            )
        if not hmac.compare_digest(token.encode(), expected.encode()):
            return self._error(
                SimError(401, "invalid_authorization_material", "The API key provided is not valid")
            )
        return token

    def _policies(self, request: web.Request) -> list[_Policy]:
        """The limits a request counts against, narrowest first."""
        if request.method == "POST" and request.path.rstrip("/") == "/v2/escalations":
            return [self._escalation_policy, self._key_policy]
        return [self._key_policy]

    def _rate_limit(
        self, key: str, request: web.Request
    ) -> tuple[web.Response | None, dict[str, str]]:
        now = time.monotonic()
        applied: list[_Applied] = []
        for policy in self._policies(request):
            tokens, last = self._buckets.get((key, policy.name), (policy.capacity, now))
            tokens = min(policy.capacity, tokens + (now - last) * policy.refill)
            self._buckets[(key, policy.name)] = (tokens, now)
            applied.append(_Applied(policy, tokens))
        empty = [a for a in applied if a.tokens < 1]
        if empty:
            # Nothing is taken from any bucket for a refused request.
            binding = min(empty, key=lambda a: a.tokens)
            wait = (1 - binding.tokens) / binding.policy.refill if binding.policy.refill else 60
            headers = self._limit_headers(binding, applied)
            response = self._too_many(wait, binding)
            response.headers.update(headers)
            return response, headers
        taken = []
        for a in applied:
            self._buckets[(key, a.policy.name)] = (a.tokens - 1, now)
            taken.append(_Applied(a.policy, a.tokens - 1))
        binding = min(taken, key=lambda a: a.tokens)
        return None, self._limit_headers(binding, taken)

    @staticmethod
    def _limit_headers(binding: _Applied, applied: list[_Applied]) -> dict[str, str]:
        """`X-RateLimit-*` of an answer, in incident.io's form."""
        policy = binding.policy
        remaining = max(0, math.floor(binding.tokens))
        # The unix second by which the binding bucket holds one more whole request.
        missing = remaining + 1 - binding.tokens
        reset = time.time() + (missing / policy.refill if policy.refill else 60.0)
        # Every limit that applied, the key's first (`60, 1200;window=60, 60;window=60`).
        limits = ", ".join(f"{a.policy.limit};window=60" for a in reversed(applied))
        return {
            "X-RateLimit-Limit": f"{policy.limit}, {limits}",
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Used": str(max(0, policy.limit - remaining)),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }

    def _too_many(self, wait: float, binding: _Applied, minimum: int = 1) -> web.Response:
        seconds = max(minimum, math.ceil(wait))
        retry_at = datetime.now(UTC) + timedelta(seconds=seconds)
        body = {
            "type": "too_many_requests",
            "status": 429,
            "request_id": uuid_from(self._ids),
            "rate_limit": {
                "name": binding.policy.name,
                "limit": binding.policy.limit,
                "remaining": max(0, int(binding.tokens)),
                "retry_after": retry_at.strftime("%a, %d %b %Y %H:%M:%S UTC"),
            },
            "errors": [
                {
                    "code": "too_many_requests",
                    "message": "Too many requests hit the API too quickly. We recommend "
                    "an exponential backoff of your requests.",
                }
            ],
        }
        resp = json_response(429, body)
        resp.headers["Retry-After"] = str(seconds)
        return resp

    def _injected_429(self, key: str) -> web.Response:
        wait = self.faults.retry_after_seconds
        return self._too_many(wait, _Applied(self._key_policy, 0.0), minimum=0)

    def _error(self, err: SimError) -> web.Response:
        error: dict[str, Any] = {"code": err.code, "message": err.message}
        if err.field_name:
            error["source"] = {"field": err.field_name}
        return json_response(
            err.status,
            {
                "type": _ERROR_TYPES.get(err.status, "error"),
                "status": err.status,
                "request_id": uuid_from(self._ids),
                "errors": [error],
            },
        )

    # -- API handlers --------------------------------------------------------------------

    async def _h_identity(self, request: web.Request) -> web.Response:
        """``GET /v1/identity``: the key's name and roles."""
        return json_response(
            200,
            {
                "identity": {
                    "name": "bridge sandbox key",
                    "dashboard_url": "https://app.incident.io/sandbox",
                    "roles": list(self.api_key_roles),
                    "team_roles": [],
                    "teams": [],
                }
            },
        )

    async def _h_create_escalation(self, request: web.Request) -> web.Response:
        body = require_object(request[BODY_KEY])
        key = opt_str(body, "idempotency_key", required=True)
        title = opt_str(body, "title", required=True)
        assert key is not None
        assert title is not None
        description = opt_str(body, "description") or ""
        path_id = opt_str(body, "escalation_path_id")
        user_ids = body.get("user_ids")
        if user_ids is not None and (
            not isinstance(user_ids, list)
            or not user_ids
            or not all(isinstance(u, str) and u for u in user_ids)
        ):
            raise SimError(
                422, "invalid_value", "user_ids must be a non-empty list of IDs", "user_ids"
            )
        if (path_id is None) == (user_ids is None):
            raise SimError(
                422,
                "invalid_value",
                "exactly one of escalation_path_id or user_ids is required",
                "escalation_path_id",
            )
        if path_id is not None and path_id != self.default_escalation_path_id:
            raise SimError(
                422, "not_found", f"escalation path {path_id} not found", "escalation_path_id"
            )
        incident_id = opt_str(body, "incident_id")
        if incident_id is not None and incident_id not in self._incidents:
            raise SimError(422, "not_found", f"incident {incident_id} not found", "incident_id")
        existing = self._idempotency.get(key)
        if existing is not None:
            return json_response(201, {"escalation": self._escalation_view(existing)})
        escalation_id = self._new_escalation(
            title=title,
            description=description,
            creator={},
            path_id=path_id,
            user_ids=user_ids,
            alert_ids=[],
            incident_ids=[incident_id] if incident_id else [],
        )
        self._idempotency[key] = escalation_id
        return json_response(201, {"escalation": self._escalation_view(escalation_id)})

    async def _h_get_escalation(self, request: web.Request) -> web.Response:
        escalation_id = request.match_info["id"]
        self._escalation(escalation_id)
        return json_response(200, {"escalation": self._escalation_view(escalation_id)})

    def _escalation_fields(self, escalation_id: str) -> dict[str, list[str]]:
        esc = self._escalations[escalation_id]
        keys = {v: k for k, v in self._idempotency.items()}
        return {
            "status": [esc["status"]],
            "escalation_path": [esc.get("escalation_path_id", "")],
            "alert": self._esc_alerts[escalation_id],
            "incident": self._esc_incidents[escalation_id],
            "idempotency_key": [keys.get(escalation_id, "")],
            "created_at": [esc["created_at"]],
            "updated_at": [esc["updated_at"]],
        }

    def _alert_fields(self, alert_id: str) -> dict[str, list[str]]:
        alert = self._alerts[alert_id]
        return {
            "deduplication_key": [alert["deduplication_key"]],
            "status": [alert["status"]],
            "alert_source": [alert["alert_source_id"]],
            "alert_group_id": list(alert.get("alert_group_ids") or []),
            "created_at": [alert["created_at"]],
            "has_notes": ["false"],
            "include_maintenance_window": [],
        }

    @staticmethod
    def _holds(actual: list[str], op: str, values: list[str]) -> bool:
        if op in ("one_of", "is"):
            return any(a in values for a in actual)
        if op == "not_in":
            return not any(a in values for a in actual)
        if op == "starts_with":
            return any(a.startswith(v) for a in actual for v in values)
        if op == "date_range":
            bounds = [tuple(v.split("~", 1)) for v in values if "~" in v]
            return all(
                lo <= a[: len(lo)] and a[: len(hi)] <= hi for a in actual for lo, hi in bounds
            )
        if op == "gte":
            return all(a[: len(v)] >= v for a in actual for v in values)
        return all(a[: len(v)] <= v for a in actual for v in values)  # lte

    @staticmethod
    def _filters(
        request: web.Request, ops: dict[str, set[str]]
    ) -> list[tuple[str, str, list[str]]]:
        """The deepObject filters of a list request (``status[one_of]=a``), checked."""
        filters: list[tuple[str, str, list[str]]] = []
        for name in set(request.query) - {"page_size", "after"}:
            field, _, rest = name.partition("[")
            op = rest.rstrip("]")
            if field not in ops or op not in ops[field]:
                raise SimError(422, "invalid_value", f"unsupported filter {name!r}", name)
            values = [v for raw in request.query.getall(name) for v in raw.split(",") if v]
            filters.append((field, op, values))
        return filters

    @staticmethod
    def _page(
        request: web.Request, ordered: list[str], *, required: bool
    ) -> tuple[list[str], dict[str, Any]]:
        raw_size = request.query.get("page_size")
        if raw_size is None and required:
            raise SimError(422, "is_required", "page_size is required", "page_size")
        raw_size = raw_size or "25"
        if not raw_size.isdigit() or not 1 <= int(raw_size) <= 50:
            raise SimError(422, "invalid_value", "page_size must be between 1 and 50", "page_size")
        size = int(raw_size)
        after = request.query.get("after")
        if after:
            if after not in ordered:
                raise SimError(422, "invalid_value", f"unknown cursor {after!r}", "after")
            ordered = ordered[ordered.index(after) + 1 :]
        page = ordered[:size]
        meta: dict[str, Any] = {"page_size": size}
        if len(ordered) > size:
            meta["after"] = page[-1]
        return page, meta

    async def _h_list_escalations(self, request: web.Request) -> web.Response:
        filters = self._filters(
            request,
            {
                "status": {"one_of", "not_in"},
                "escalation_path": {"one_of", "not_in"},
                "alert": {"one_of", "not_in"},
                "incident": {"one_of", "not_in"},
                "idempotency_key": {"is", "starts_with"},
                "created_at": {"gte", "lte", "date_range"},
                "updated_at": {"gte", "lte", "date_range"},
            },
        )
        ordered = []
        for escalation_id in reversed(self._escalations):
            fields = self._escalation_fields(escalation_id)
            if all(self._holds(fields[f], o, v) for f, o, v in filters):
                ordered.append(escalation_id)
        page, meta = self._page(request, ordered, required=False)
        return json_response(
            200, {"escalations": [self._escalation_view(e) for e in page], "pagination_meta": meta}
        )

    async def _h_list_alerts(self, request: web.Request) -> web.Response:
        filters = self._filters(
            request,
            {
                "deduplication_key": {"is"},
                "status": {"one_of", "not_in"},
                "alert_source": {"one_of", "not_in"},
                "alert_group_id": {"one_of"},
                "created_at": {"gte", "lte", "date_range"},
                "has_notes": {"is"},
                "include_maintenance_window": {"is"},
            },
        )
        # No alert in the sandbox is held by a maintenance window: that filter keeps all.
        filters = [f for f in filters if f[0] != "include_maintenance_window"]
        ordered = []
        for alert_id in reversed(self._alerts):
            fields = self._alert_fields(alert_id)
            if all(self._holds(fields[f], o, v) for f, o, v in filters):
                ordered.append(alert_id)
        page, meta = self._page(request, ordered, required=True)
        return json_response(
            200, {"alerts": [dict(self._alerts[a]) for a in page], "pagination_meta": meta}
        )

    async def _h_cancel_escalation(self, request: web.Request) -> web.Response:
        escalation_id = request.match_info["id"]
        esc = self._escalation(escalation_id)
        status = esc["status"]
        if status in ("resolved", "expired"):
            raise SimError(422, "invalid_state", f"Escalation is {status} and cannot be cancelled")
        if status != "cancelled":
            self._set_status(
                escalation_id, "cancelled", {"api_key": {"id": self.api_key_id, "name": _KEY_NAME}}
            )
        return web.Response(status=200)

    async def _h_respond_escalation(self, request: web.Request) -> web.Response:
        escalation_id = request.match_info["id"]
        esc = self._escalation(escalation_id)
        body = require_object(request[BODY_KEY])
        unknown = sorted(set(body) - {"response", "snooze_details"})
        if unknown:
            raise SimError(422, "invalid_value", f"unknown field(s): {', '.join(unknown)}")
        response = body.get("response")
        if response not in ("ack", "nack", "snooze"):
            raise SimError(
                422, "invalid_value", "response must be one of ack, nack, snooze", "response"
            )
        if response == "nack":
            raise SimError(
                422,
                "invalid_value",
                "an API key cannot decline (nack) an escalation in its own right",
                "response",
            )
        details = body.get("snooze_details")
        status = esc["status"]
        api_key = {"api_key": {"id": self.api_key_id, "name": _KEY_NAME}}
        if response == "ack":
            if details is not None:
                raise SimError(
                    422, "invalid_value", "snooze_details go with snooze only", "snooze_details"
                )
            if status != "acked":
                if status not in _PAGING:
                    raise SimError(
                        422, "invalid_state", f"Escalation is {status} and cannot be acknowledged"
                    )
                self._set_status(escalation_id, "acked", api_key)
            return web.Response(status=200)
        until, reason = self._snooze_details(details)
        if status not in _PAGING:
            raise SimError(422, "invalid_state", f"Escalation is {status} and cannot be snoozed")
        self.snoozes[escalation_id] = (until, reason)
        if status != "snoozed":
            self._set_status(escalation_id, "snoozed", api_key)
        return web.Response(status=200)

    @staticmethod
    def _snooze_details(details: Any) -> tuple[str, str | None]:
        """`snooze_details` of a snooze: a future `snooze_until` and an optional reason."""
        if not isinstance(details, dict):
            raise SimError(
                422, "is_required", "snooze needs snooze_details (object)", "snooze_details"
            )
        unknown = sorted(set(details) - {"snooze_until", "reason"})
        if unknown:
            raise SimError(
                422, "invalid_value", f"unknown snooze_details field(s): {', '.join(unknown)}"
            )
        raw = opt_str(details, "snooze_until", required=True)
        assert raw is not None
        try:
            until = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise SimError(
                422, "invalid_value", "snooze_until is not an RFC 3339 time", "snooze_until"
            ) from None
        if until.tzinfo is None or until <= now_dt():
            raise SimError(
                422, "invalid_value", "snooze_until must be a future time with an offset"
            )
        return iso_us(until.astimezone(UTC)), opt_str(details, "reason")

    async def _h_alert_event(self, request: web.Request) -> web.Response:
        if request.match_info["config_id"] != self.alert_source_config_id:
            raise SimError(404, "not_found", "alert source config not found")
        body = require_object(request[BODY_KEY])
        title = opt_str(body, "title", required=True)
        assert title is not None
        status = body.get("status")
        if status not in ("firing", "resolved"):
            raise SimError(422, "invalid_value", "status must be firing or resolved", "status")
        for key in ("description", "source_url", "deduplication_key"):
            opt_str(body, key)
        if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
            raise SimError(422, "invalid_value", "metadata must be an object", "metadata")
        dedup = body.get("deduplication_key") or uuid_from(self._ids)
        firing_id = self._firing.get(dedup)
        if status == "firing" and firing_id is None:
            self._fire(dedup, title, body)
        elif status == "resolved" and firing_id is not None:
            self._resolve_alert(firing_id)
        return json_response(
            202,
            {
                "deduplication_key": dedup,
                "message": "Event accepted for processing",
                "status": "success",
            },
        )

    def _fire(self, dedup: str, title: str, body: dict[str, Any]) -> None:
        alert_id = self._new_id()
        now = iso_us(now_dt())
        alert: dict[str, Any] = {
            "id": alert_id,
            "alert_source_id": self.alert_source_config_id,
            "attributes": [],
            "created_at": now,
            "updated_at": now,
            "deduplication_key": dedup,
            "status": "firing",
            "title": title,
        }
        for key in ("description", "source_url"):
            if body.get(key):
                alert[key] = body[key]
        self._alerts[alert_id] = alert
        self._firing[dedup] = alert_id
        self._emit("public_alert.alert_created_v1", dict(alert), alert_id)
        # The default alert route pages the default escalation path.
        self._new_escalation(
            title=title,
            description=body.get("description") or "",
            creator={"alert": {"id": alert_id, "title": title}},
            path_id=self.default_escalation_path_id,
            user_ids=None,
            alert_ids=[alert_id],
            incident_ids=[],
        )

    def _resolve_alert(self, alert_id: str) -> None:
        alert = self._alerts[alert_id]
        now = iso_us(now_dt())
        alert.update(status="resolved", resolved_at=now, updated_at=now)
        del self._firing[alert["deduplication_key"]]
        self._emit("public_alert.alert_resolved_v1", dict(alert), alert_id)
        actor = {"alert": {"id": alert_id, "title": alert["title"]}}
        for escalation_id, alert_ids in self._esc_alerts.items():
            if alert_id in alert_ids and self._escalations[escalation_id]["status"] in _PAGING:
                self._set_status(escalation_id, "resolved", actor)

    async def _h_get_alert(self, request: web.Request) -> web.Response:
        return json_response(200, {"alert": self._alert(request.match_info["id"])})

    async def _h_get_incident(self, request: web.Request) -> web.Response:
        return json_response(200, {"incident": self._incident(request.match_info["id"])})

    async def _h_edit_incident(self, request: web.Request) -> web.Response:
        incident_id = request.match_info["id"]
        self._incident(incident_id)
        body = require_object(request[BODY_KEY])
        if not isinstance(body.get("notify_incident_channel"), bool):
            raise SimError(
                422,
                "is_required",
                "notify_incident_channel (boolean) is required",
                "notify_incident_channel",
            )
        edit = body.get("incident")
        if not isinstance(edit, dict):
            raise SimError(422, "is_required", "incident (object) is required", "incident")
        changes: dict[str, Any] = {}
        name = opt_str(edit, "name")
        if name is not None:
            if not name.strip():
                raise SimError(422, "invalid_value", "name must not be empty", "incident.name")
            changes["name"] = name
        summary = opt_str(edit, "summary")
        if summary is not None:
            changes["summary"] = summary
        severity_id = opt_str(edit, "severity_id")
        if severity_id is not None:
            changes["severity"] = self._by_id(self.severities, severity_id, "severity_id")
        status_id = opt_str(edit, "incident_status_id")
        if status_id is not None:
            changes["incident_status"] = self._by_id(self.statuses, status_id, "incident_status_id")
        self._apply_incident_changes(incident_id, changes, None)
        return json_response(200, {"incident": self._incidents[incident_id]})

    @staticmethod
    def _by_id(items: list[dict[str, Any]], item_id: str, field: str) -> dict[str, Any]:
        for item in items:
            if item["id"] == item_id:
                return dict(item)
        raise SimError(422, "not_found", f"{field} {item_id!r} not found", f"incident.{field}")

    # -- control handlers ----------------------------------------------------------------

    async def _c_escalation_action(self, request: web.Request) -> web.Response:
        escalation_id = request.match_info["id"]
        action = request.match_info["action"]
        body = request[BODY_KEY]
        user = opt_str(require_object(body), "user") if body is not None else None
        if action == "ack":
            return json_response(200, await self.ack_escalation(escalation_id, user=user))
        if action == "resolve":
            return json_response(200, await self.resolve_escalation(escalation_id, user=user))
        if action == "expire":
            return json_response(200, await self.expire_escalation(escalation_id))
        raise SimError(404, "not_found", f"unknown escalation action {action!r}")

    async def _c_resolve_alert(self, request: web.Request) -> web.Response:
        return json_response(200, await self.resolve_alert(request.match_info["id"]))

    async def _c_create_incident(self, request: web.Request) -> web.Response:
        body = require_object(request[BODY_KEY])
        name = opt_str(body, "name", required=True)
        assert name is not None
        incident = await self.create_incident(
            name,
            severity=opt_str(body, "severity"),
            summary=opt_str(body, "summary"),
            status=opt_str(body, "status") or "Investigating",
            user=opt_str(body, "user"),
        )
        return json_response(201, incident)

    async def _c_incident_status(self, request: web.Request) -> web.Response:
        body = require_object(request[BODY_KEY])
        status = opt_str(body, "status") or opt_str(body, "category")
        if status is None:
            raise SimError(400, "is_required", "status (name, ID or category) is required")
        incident = await self.set_incident_status(
            request.match_info["id"], status, message=opt_str(body, "message")
        )
        return json_response(200, incident)

    async def _c_incident_edit(self, request: web.Request) -> web.Response:
        body = require_object(request[BODY_KEY])
        unknown = set(body) - {"name", "summary", "severity"}
        if unknown:
            raise SimError(400, "invalid_body", f"unknown fields: {', '.join(sorted(unknown))}")
        incident = await self.edit_incident(
            request.match_info["id"],
            name=opt_str(body, "name"),
            summary=opt_str(body, "summary"),
            severity=opt_str(body, "severity"),
        )
        return json_response(200, incident)
