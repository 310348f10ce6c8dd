"""incident.io's webhook vocabulary: the event types it sends and the fields of the objects.

Event types: every entry of the official spec's `x-webhooks`. Fields: what rules see as the
event's object. For escalations that is `EscalationV2` (the payload of the created event,
the `escalation` of a status update, and the API's answer when the bridge reads it back);
for alerts `AlertV2`; for incidents `IncidentV2` and the webhooks' `WebhookIncidentV2`,
plus `status` (the status category), which the bridge adds when it reads one back.
"""

from __future__ import annotations

from typing import Final

from bridge.events import ObjectKind
from bridge.platforms.catalog import PlatformCatalog
from bridge.platforms.incident_io.webhook import KNOWN_FAMILIES, KNOWN_TYPES

EVENT_TYPES: Final = frozenset(
    {
        "private_alert.alert_created_v1", "private_alert.alert_resolved_v1",
        "private_escalation.escalation_created_v1",
        "private_escalation.escalation_status_updated_v1",
        "private_incident.action_created_v1", "private_incident.action_updated_v1",
        "private_incident.follow_up_created_v1", "private_incident.follow_up_created_v2",
        "private_incident.follow_up_updated_v1", "private_incident.follow_up_updated_v2",
        "private_incident.incident_created_v2", "private_incident.incident_updated_v2",
        "private_incident.membership_granted_v1", "private_incident.membership_revoked_v1",
        "private_incident.postmortem_document_status_updated_v1",
        "public_alert.alert_created_v1", "public_alert.alert_resolved_v1",
        "public_escalation.escalation_created_v1",
        "public_escalation.escalation_status_updated_v1",
        "public_incident.action_created_v1", "public_incident.action_updated_v1",
        "public_incident.follow_up_created_v1", "public_incident.follow_up_created_v2",
        "public_incident.follow_up_updated_v1", "public_incident.follow_up_updated_v2",
        "public_incident.incident_created_v2",
        "public_incident.incident_status_updated_v2",
        "public_incident.incident_updated_v2",
        "public_incident.postmortem_document_status_updated_v1", "schedule.created_v1",
        "schedule.deleted_v1", "schedule.shift_change_v1", "schedule.updated_v1",
    }
)  # fmt: skip

ESCALATION_FIELDS: Final = frozenset(
    {
        "created_at", "creator", "description", "escalation_path_id", "events", "id",
        "priority", "related_alerts", "related_incidents", "status", "title", "updated_at",
    }
)  # fmt: skip
ALERT_FIELDS: Final = frozenset(
    {
        "alert_group_ids", "alert_source_id", "attributes", "created_at",
        "deduplication_key", "description", "id", "resolved_at", "source_url", "status",
        "title", "updated_at",
    }
)  # fmt: skip
INCIDENT_FIELDS: Final = frozenset(
    {
        "call_url", "created_at", "creator", "custom_field_entries", "duration_metrics",
        "external_issue_reference", "has_debrief", "id", "incident_role_assignments",
        "incident_status", "incident_timestamp_values", "incident_type", "mode",
        "most_recent_update_message", "name", "permalink", "postmortem_document_ids",
        "postmortem_document_url", "reference", "related_incidents", "severity",
        "slack_channel_id", "slack_channel_name", "slack_team_id", "summary", "updated_at",
        "visibility", "workload_minutes_late", "workload_minutes_sleeping",
        "workload_minutes_total", "workload_minutes_working",
    }
)  # fmt: skip
# Not in the spec's incident: the status category the bridge adds on reading one back.
INCIDENT_EXTRA_FIELDS: Final = frozenset({"status"})


def _kind(event_type: str) -> ObjectKind:
    family = event_type.split(".", 1)[0].partition("_")[2]
    return KNOWN_FAMILIES[family]


CATALOG: Final = PlatformCatalog(
    platform="incident_io",
    label="incident.io",
    cli_name="incident-io",
    event_types=EVENT_TYPES,
    handled={t: _kind(t) for t in sorted(KNOWN_TYPES)},
    fields={
        "escalation": ESCALATION_FIELDS,
        "alert": ALERT_FIELDS,
        "incident": INCIDENT_FIELDS | INCIDENT_EXTRA_FIELDS,
    },
)
