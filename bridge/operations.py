"""What each operation a rule may name takes: its target and its parameters, declared once.

Parameter names are the platforms' own field names (`cancellation_message`, `title`,
`severity_id`, ...), so a rule author who knows the APIs needs nothing else. The rules loader
checks every rule's parameters against this table at load time (so a typo is an error with
file, line and rule, not a dead letter at 3 a.m.), and the clients read the same table when
they build requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from bridge.events import PRIORITIES, Action, IdempotencyKey, Operation, Platform, Priority

# `update_incident.data.attributes` in Rootly's official spec (additionalProperties: false).
ROOTLY_INCIDENT_ATTRIBUTES: Final = frozenset(
    {
        "title", "kind", "parent_incident_id", "duplicate_incident_id", "summary", "status",
        "private", "severity_id", "public_title", "alert_ids", "environment_ids",
        "incident_type_ids", "service_ids", "functionality_ids", "muted_service_ids",
        "group_ids", "cause_ids", "labels", "slack_channel_id", "slack_channel_name",
        "slack_channel_url", "slack_channel_archived", "google_drive_parent_id",
        "google_drive_url", "jira_issue_key", "jira_issue_id", "jira_issue_url",
        "scheduled_for", "scheduled_until", "in_triage_at", "started_at", "detected_at",
        "acknowledged_at", "mitigated_at", "resolved_at", "closed_at", "cancelled_at",
        "mitigation_message", "resolution_message", "cancellation_message",
    }
)  # fmt: skip

# Those of them the spec types as a string (the others are booleans, arrays and `labels`).
ROOTLY_INCIDENT_TEXT_ATTRIBUTES: Final = ROOTLY_INCIDENT_ATTRIBUTES - {
    "private",
    "slack_channel_archived",
    "labels",
    "alert_ids",
    "environment_ids",
    "incident_type_ids",
    "service_ids",
    "functionality_ids",
    "muted_service_ids",
    "group_ids",
    "cause_ids",
}

# `IncidentEditPayloadV2` fields of incident.io's `POST /v2/incidents/{id}/actions/edit`.
INCIDENT_IO_EDIT_FIELDS: Final = frozenset(
    {
        "call_url",
        "custom_field_entries",
        "incident_role_assignments",
        "incident_status_id",
        "incident_timestamp_values",
        "name",
        "severity_id",
        "slack_channel_name_override",
        "summary",
    }
)


@dataclass(frozen=True)
class OperationSpec:
    """Target type (``platform:kind``, None for operations that create) and parameters;
    `text` names those the platform's spec types as a string.

    `aspect` is what the operation sets on its object: actions on one object that set the
    same aspect supersede each other in the order of their causes (`bridge.ordering`);
    None means the fields named by its parameters (an update). `keyed_by` names the
    parameter that identifies the object an operation without a target creates or
    changes (an alert's deduplication key); by default it is the idempotency key.
    `terminal`: once done, the object stays so (a cancelled escalation), so a second one
    is redundant. `priority`: how urgent its actions are unless a rule says otherwise
    (`page`: it stops someone's phone ringing; then `create`, then `update`); the executor
    takes the most urgent first (`bridge.pipeline.executor`).
    """

    target: str | None
    required: frozenset[str] = field(default_factory=frozenset)
    optional: frozenset[str] = field(default_factory=frozenset)
    text: frozenset[str] = field(default_factory=frozenset)
    aspect: str | None = "status"
    keyed_by: str | None = None
    terminal: bool = False
    priority: Priority = "update"

    @property
    def allowed(self) -> frozenset[str]:
        return self.required | self.optional


def _spec(
    target: str | None,
    required: tuple[str, ...] = (),
    optional: frozenset[str] | tuple[str, ...] = (),
    text: frozenset[str] | tuple[str, ...] = (),
    **ordering: Any,
) -> OperationSpec:
    return OperationSpec(
        target, frozenset(required), frozenset(optional), frozenset(text), **ordering
    )


_MESSAGES: Final = ("cancellation_message", "resolution_message", "mitigation_message")

OPERATIONS: Final[Mapping[Operation, OperationSpec]] = {
    "rootly.cancel_incident": _spec(
        "rootly:incident", optional=("cancellation_message",), text=_MESSAGES, priority="page"
    ),
    # The parameters are the incident attributes to set.
    "rootly.update_incident": _spec(
        "rootly:incident",
        optional=ROOTLY_INCIDENT_ATTRIBUTES,
        text=ROOTLY_INCIDENT_TEXT_ATTRIBUTES,
        aspect=None,
    ),
    "rootly.restart_incident": _spec("rootly:incident"),
    "rootly.resolve_incident": _spec(
        "rootly:incident", optional=("resolution_message",), text=_MESSAGES, priority="page"
    ),
    "rootly.mitigate_incident": _spec(
        "rootly:incident", optional=("mitigation_message",), text=_MESSAGES
    ),
    "rootly.acknowledge_alert": _spec("rootly:alert", priority="page"),
    "rootly.resolve_alert": _spec(
        "rootly:alert",
        optional=("resolution_message", "resolve_related_incidents"),
        text=_MESSAGES,
        priority="page",
    ),
    "incident_io.create_escalation": _spec(
        None,
        required=("title",),
        optional=("escalation_path_id", "user_ids", "description", "incident_id"),
        aspect="created",
        text=("title", "escalation_path_id", "description", "incident_id"),
        priority="create",
    ),
    "incident_io.cancel_escalation": _spec(
        "incident_io:escalation", terminal=True, priority="page"
    ),
    # Respond `ack`. Acknowledging and cancelling one escalation both set its status: the
    # later cause wins (an ack caused after a cancel does not wait for, or undo, it).
    "incident_io.acknowledge_escalation": _spec("incident_io:escalation", priority="page"),
    # Firing and resolved events of one alert: the later cause wins.
    "incident_io.send_alert_event": _spec(
        None,
        required=("title", "status", "deduplication_key"),
        optional=("description", "source_url", "metadata"),
        keyed_by="deduplication_key",
        text=("title", "status", "deduplication_key", "description", "source_url"),
        # A firing event opens an alert; a rule marks the resolving one `priority: page`.
        priority="create",
    ),
    # The parameters are the incident fields to edit, plus whether to tell the channel.
    "incident_io.edit_incident": _spec(
        "incident_io:incident",
        optional=INCIDENT_IO_EDIT_FIELDS | {"notify_incident_channel"},
        aspect=None,
        text=(
            "call_url",
            "incident_status_id",
            "name",
            "severity_id",
            "slack_channel_name_override",
            "summary",
        ),
    ),
}


# Fields rules keep in step between the two platforms' incidents, each under its name on
# each side (the parameter of the update operation that writes it there). A rules file says
# which side owns each (`fields:`, see docs/rules.md): a field is never written to
# the side that owns it, so two rules that copy it both ways cannot undo each other.
SYNCED_FIELDS: Final[Mapping[str, Mapping[Platform, str]]] = {
    "incident.title": {"rootly": "title", "incident_io": "name"},
    "incident.summary": {"rootly": "summary", "incident_io": "summary"},
    "incident.severity": {"rootly": "severity_id", "incident_io": "severity_id"},
}


def synced_field(operation: Operation, param: str) -> str | None:
    """The synced field (`SYNCED_FIELDS`) that `param` of `operation` writes, if any: only
    updates (operations without an aspect of their own) write fields."""
    spec = OPERATIONS[operation]
    if spec.aspect is not None or spec.target is None:
        return None
    platform, kind = spec.target.split(":")
    for name, sides in SYNCED_FIELDS.items():
        if name.split(".")[0] == kind and (platform, param) in sides.items():
            return name
    return None


def unknown_params(operation: Operation, names: frozenset[str] | set[str]) -> list[str]:
    """Parameter names `operation` does not take (sorted)."""
    return sorted(set(names) - OPERATIONS[operation].allowed)


def object_key(action: Action) -> str:
    """The object `action` changes: its target, else what its operation is keyed by."""
    if action.target is not None:
        return str(action.target)
    spec = OPERATIONS[action.operation]
    key = action.params.get(spec.keyed_by) if spec.keyed_by else None
    return keyed_object(action.operation, key if key is not None else action.idempotency_key)


def keyed_object(operation: Operation, key: Any) -> str:
    """The object key of what `operation` creates or changes under `key` (an alert event's
    deduplication key): how the object is named before the platform gives it an ID."""
    text = f"{operation}:{key}"
    if len(text) > 250:  # the column's bound; a long templated key is kept whole in a hash
        text = f"{operation}:sha256:{hashlib.sha256(text.encode()).hexdigest()}"
    return text


def repair(action: Action, cause: str) -> Action:
    """`action` as a repair decided by `cause` (a link check's delivery): under an outbox
    key of its own, so it runs even though the action it repeats was done under the rule's
    key (a resolve that landed before a late "firing" opened the alert again). A create
    keeps its key: the key is what keeps it from creating twice (incident.io dedupes
    escalations by it; for the rest the outbox is the only guard)."""
    spec = OPERATIONS[action.operation]
    if spec.target is None and spec.keyed_by is None:
        return action
    digest = hashlib.sha256(cause.encode()).hexdigest()[:16]
    key = f"{action.idempotency_key}~repair:{digest}"
    if len(key) > 250:
        key = f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return replace(action, idempotency_key=IdempotencyKey(key))


def priority_of(action: Action) -> Priority:
    """How urgent `action` is: its rule's class for it, else its operation's."""
    return action.priority or OPERATIONS[action.operation].priority


def priority_rank(priority: Priority) -> int:
    """0 for the most urgent class (`page`), 1 for `create`, 2 for `update`."""
    return PRIORITIES.index(priority)


def aspect(action: Action) -> str:
    """What `action` sets on its object (``status``, or an update's sorted field names)."""
    fixed = OPERATIONS[action.operation].aspect
    return fixed if fixed is not None else ",".join(sorted(action.params))
