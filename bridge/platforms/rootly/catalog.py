"""Rootly's webhook vocabulary: the event types it sends and the fields of the flat objects.

Event types: the `event_types` enum of the webhook endpoint in the official spec
(`components.schemas.webhooks_endpoint`), plus `alert.updated`, which Rootly's SDK lists
and the spec does not yet (DESIGN section 7). Fields: the spec's `incident` and `alert`
attributes, which webhooks send flat with the object's `id`, plus what the bridge adds when
it reads an object back (`alert_ids` / `incident_ids`) and the embedded lists some payloads
carry (`alerts` / `incidents`).
"""

from __future__ import annotations

from typing import Final

from bridge.platforms.catalog import PlatformCatalog
from bridge.platforms.rootly.webhook import ALERT_EVENTS, INCIDENT_EVENTS

EVENT_TYPES: Final = frozenset(
    {
        "incident.created", "incident.updated", "incident.in_triage", "incident.mitigated",
        "incident.resolved", "incident.cancelled", "incident.deleted",
        "incident.scheduled.created", "incident.scheduled.updated",
        "incident.scheduled.in_progress", "incident.scheduled.completed",
        "incident.scheduled.deleted", "incident_post_mortem.created",
        "incident_post_mortem.updated", "incident_post_mortem.published",
        "incident_post_mortem.deleted", "incident_status_page_event.created",
        "incident_status_page_event.updated", "incident_status_page_event.deleted",
        "incident_event.created", "incident_event.updated", "incident_event.deleted",
        "alert.created", "alert.updated", "pulse.created", "shift.started",
        "genius_workflow_run.queued", "genius_workflow_run.started",
        "genius_workflow_run.completed", "genius_workflow_run.failed",
        "genius_workflow_run.canceled", "audit_log.created",
    }
)  # fmt: skip

INCIDENT_FIELDS: Final = frozenset(
    {
        "acknowledged_at", "airtable_base_key", "airtable_record_id",
        "airtable_record_url", "airtable_table_name", "asana_task_id", "asana_task_url",
        "cancellation_message", "cancelled_at", "cancelled_by", "clickup_task_id",
        "clickup_task_url", "closed_at", "closed_by", "confluence_page_id",
        "confluence_page_url", "created_at", "datadog_notebook_id", "datadog_notebook_url",
        "detected_at", "duplicate_incident_id", "environments", "freshservice_task_id",
        "freshservice_task_url", "freshservice_ticket_id", "freshservice_ticket_url",
        "functionalities", "github_issue_id", "github_issue_url", "gitlab_issue_id",
        "gitlab_issue_url", "google_chat_space_archived", "google_chat_space_domain_id",
        "google_chat_space_id", "google_chat_space_name", "google_chat_space_short_url",
        "google_chat_space_url", "google_drive_id", "google_drive_parent_id",
        "google_drive_url", "google_meeting_id", "google_meeting_url", "groups", "id",
        "in_triage_at", "in_triage_by", "incident_types", "jira_issue_id",
        "jira_issue_key", "jira_issue_url", "kind", "labels", "linear_issue_id",
        "linear_issue_url", "mattermost_channel_id", "mattermost_channel_name",
        "mattermost_channel_url", "microsoft_teams_channel_id",
        "microsoft_teams_channel_name", "microsoft_teams_channel_short_url",
        "microsoft_teams_channel_url", "microsoft_teams_chat_id",
        "microsoft_teams_chat_url", "microsoft_teams_meeting_id",
        "microsoft_teams_meeting_url", "microsoft_teams_team_id", "mitigated_at",
        "mitigated_by", "mitigation_message", "motion_task_id", "motion_task_url",
        "muted_service_ids", "opsgenie_alert_id", "opsgenie_alert_url",
        "opsgenie_incident_id", "opsgenie_incident_url", "pagerduty_incident_id",
        "pagerduty_incident_number", "pagerduty_incident_url", "parent_incident_id",
        "private", "public_title", "quip_page_id", "quip_page_url", "resolution_message",
        "resolved_at", "resolved_by", "retrospective_progress_status", "scheduled_for",
        "scheduled_until", "sequential_id", "service_now_incident_id",
        "service_now_incident_key", "service_now_incident_url", "services", "severity",
        "sharepoint_page_id", "sharepoint_page_url", "short_url", "shortcut_story_id",
        "shortcut_story_url", "shortcut_task_id", "shortcut_task_url",
        "slack_channel_archived", "slack_channel_deep_link", "slack_channel_id",
        "slack_channel_name", "slack_channel_short_url", "slack_channel_url",
        "slack_last_message_ts", "slug", "source", "started_at", "started_by", "status",
        "summary", "title", "trello_card_id", "trello_card_url", "updated_at", "url",
        "user", "victor_ops_incident_id", "victor_ops_incident_url", "webex_meeting_id",
        "webex_meeting_url", "zendesk_ticket_id", "zendesk_ticket_url",
        "zoom_meeting_global_dial_in_numbers", "zoom_meeting_h323_password",
        "zoom_meeting_id", "zoom_meeting_join_url", "zoom_meeting_password",
        "zoom_meeting_pstn_password", "zoom_meeting_start_url",
    }
)  # fmt: skip
# Not in the spec's `incident`: the IDs the bridge adds on reading one back, the embedded list.
INCIDENT_EXTRA_FIELDS: Final = frozenset({"alert_ids", "alerts"})

ALERT_FIELDS: Final = frozenset(
    {
        "alert_field_values", "alert_urgency", "alert_urgency_id", "alerting_targets",
        "created_at", "data", "deduplication_key", "description", "ended_at",
        "environment_ids", "environments", "external_id", "external_url",
        "functionalities", "functionality_ids", "group_ids", "group_leader_alert_id",
        "groups", "is_group_leader_alert", "labels", "noise", "notification_target_id",
        "notification_target_type", "notified_users", "responders", "service_ids",
        "services", "short_id", "source", "started_at", "status", "summary", "updated_at",
        "url",
    }
)  # fmt: skip
# Not in the spec's `alert` attributes: the JSON:API `id`, the IDs the bridge adds, the list.
ALERT_EXTRA_FIELDS: Final = frozenset({"id", "incident_ids", "incidents"})

CATALOG: Final = PlatformCatalog(
    platform="rootly",
    label="Rootly",
    cli_name="rootly",
    event_types=EVENT_TYPES,
    handled={
        **dict.fromkeys(sorted(INCIDENT_EVENTS), "incident"),
        **dict.fromkeys(sorted(ALERT_EVENTS), "alert"),
    },
    fields={
        "incident": INCIDENT_FIELDS | INCIDENT_EXTRA_FIELDS,
        "alert": ALERT_FIELDS | ALERT_EXTRA_FIELDS,
    },
)
