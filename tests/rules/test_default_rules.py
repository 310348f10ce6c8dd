"""The shipped `config/rules.yaml` against realistic events: DESIGN section 3, flows 1-9.

incident.io events come from the official example payloads; Rootly events are seed-shaped
flat objects. Every assertion is exact: operations, targets, params, idempotency keys, links.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.events import LinkChange, Platform, ResultLink, thaw
from bridge.operations import priority_of
from bridge.platforms.states import compared
from bridge.rules import RulesError, default_idempotency_key, evaluate, load_rules
from tests.rules.builders import (
    NOW,
    RULES_FILE,
    default_rules,
    graph,
    io_event,
    ops,
    ref,
    rootly_alert,
    rootly_event,
    rootly_incident,
)

ESC = "incident_io:escalation:01G0J1EXE7AXZ2C93K61WBPYEH"
IO_ALERT = "incident_io:alert:01GW2G3V0S59R238FAHPDS1R66"
IO_INCIDENT = "incident_io:incident:01FDAG4SAP5TYPT98WGR2N7W91"
R_INC = "rootly:incident:inc-4d1c"


# -- 1. Rootly incident.created -> incident.io escalation ----------------------------------


def test_rootly_incident_created_opens_escalation_with_stable_key_and_result_link() -> None:
    """Flow 1: one create_escalation with the configured path, a key derived from the
    Rootly incident (not the delivery), and a result link back to the Rootly incident."""
    rules = default_rules(escalation_path_id="01HPATH")
    result = evaluate(rules, rootly_event("incident.created", rootly_incident()), graph(), NOW)
    assert result.matched == ("rootly-incident-opens-escalation",)
    (action,) = result.actions
    assert action.operation == "incident_io.create_escalation"
    assert action.target is None
    assert thaw(action.params) == {
        "title": "Checkout API returns 500s",
        "description": "Error rate above 20% on checkout",
        "escalation_path_id": "01HPATH",
    }
    assert action.idempotency_key == "rootly-incident-inc-4d1c"
    assert action.result_links == (ResultLink(to=ref(R_INC), kind="escalation"),)
    redelivered = rootly_event("incident.created", rootly_incident(), delivery="other-delivery")
    again = evaluate(rules, redelivered, graph(), NOW)
    assert again.actions[0].idempotency_key == action.idempotency_key


def test_rootly_incident_created_without_escalation_path_does_nothing_and_says_why() -> None:
    """With the shipped empty `escalation_path_id`, rule 1 stays quiet; the trace names the
    failing condition instead of an API error later."""
    result = evaluate(
        default_rules(), rootly_event("incident.created", rootly_incident()), graph(), NOW
    )
    assert result.actions == ()
    trace = result.trace["rules"]["rootly-incident-opens-escalation"]
    assert trace["reason"] == "condition false"
    assert trace["condition"]["index"] == 0
    assert "vars.escalation_path_id not_equals ''" in trace["condition"]["detail"]


def test_rootly_severity_filter_accepts_slug_strings_and_objects() -> None:
    """The severity filter variable works whether Rootly sends the severity as an object or
    a slug string, and an empty list means every severity."""
    rules = default_rules(escalation_path_id="p", page_rootly_severities='["sev0", "SEV1"]')
    as_object = rootly_event("incident.created", rootly_incident())
    as_string = rootly_event("incident.created", rootly_incident(severity="sev0"))
    too_low = rootly_event("incident.created", rootly_incident(severity="sev3"))
    missing = rootly_event("incident.created", rootly_incident(severity=None))
    assert len(evaluate(rules, as_object, graph(), NOW).actions) == 1
    assert len(evaluate(rules, as_string, graph(), NOW).actions) == 1
    low = evaluate(rules, too_low, graph(), NOW)
    assert low.actions == ()
    assert low.trace["rules"]["rootly-incident-opens-escalation"]["condition"]["index"] == 1
    assert evaluate(rules, missing, graph(), NOW).actions == ()
    everyone = default_rules(escalation_path_id="p")
    assert len(evaluate(everyone, too_low, graph(), NOW).actions) == 1


def test_rootly_incident_without_title_gets_a_fallback_title() -> None:
    """A Rootly incident with a null title still pages, titled by its ID."""
    rules = default_rules(escalation_path_id="p")
    event = rootly_event("incident.created", rootly_incident(title=None, summary=None))
    (action,) = evaluate(rules, event, graph(), NOW).actions
    assert thaw(action.params) == {"title": "Rootly incident inc-4d1c", "escalation_path_id": "p"}


# -- 2. Rootly alert.created -> incident.io alert event ---------------------------------------


def test_rootly_alert_created_sends_firing_alert_event() -> None:
    """Flow 2: a firing alert event with deduplication key rootly-alert-<id>, the alert's
    summary as title and its URL as source_url."""
    event = rootly_event("alert.created", rootly_alert())
    result = evaluate(default_rules(), event, graph(), NOW)
    (action,) = result.actions
    assert action.operation == "incident_io.send_alert_event"
    assert action.target is None
    assert action.idempotency_key == "rootly-alert-alert-7f2e-firing"
    assert thaw(action.params) == {
        "status": "firing",
        "deduplication_key": "rootly-alert-alert-7f2e",
        "title": "p99 latency above 2s on checkout",
        "description": "Datadog monitor 1234 triggered",
        "source_url": "https://app.datadoghq.com/monitors/1234",
        "metadata": {"rootly_alert_id": "alert-7f2e", "rootly_incident_ids": ["inc-4d1c"]},
    }
    assert priority_of(action) == "create"


def test_rootly_alert_without_optional_fields_leaves_them_out() -> None:
    """Absent description / URL are omitted, not sent as null or 'None'."""
    data = rootly_alert(summary=None, description=None, incident_ids=[])
    del data["external_url"]
    (action,) = evaluate(default_rules(), rootly_event("alert.created", data), graph(), NOW).actions
    assert thaw(action.params) == {
        "status": "firing",
        "deduplication_key": "rootly-alert-alert-7f2e",
        "title": "Rootly alert alert-7f2e",
        "metadata": {"rootly_alert_id": "alert-7f2e", "rootly_incident_ids": []},
    }


# -- 3. Rootly incident.cancelled -> cancel every linked escalation ---------------------------


def _escalation_graph() -> Any:
    return graph(
        (R_INC, "incident_io:escalation:esc-b"),
        (R_INC, "incident_io:escalation:esc-a"),
        ("rootly:alert:al-1", "incident_io:alert:ia-1"),
        ("incident_io:alert:ia-1", "incident_io:escalation:esc-c"),
        ("rootly:incident:other", "incident_io:escalation:esc-z"),
    )


def test_rootly_incident_cancelled_cancels_every_linked_escalation() -> None:
    """Flow 3: escalations linked to the incident and those paging for its alerts (two hops
    from the incident's related alerts) are cancelled; unrelated ones are not."""
    event = rootly_event(
        "incident.cancelled", rootly_incident(status="cancelled", alert_ids=["al-1"])
    )
    result = evaluate(default_rules(), event, _escalation_graph(), NOW)
    assert ops(result.actions) == [
        ("incident_io.cancel_escalation", "incident_io:escalation:esc-a"),
        ("incident_io.cancel_escalation", "incident_io:escalation:esc-b"),
        ("incident_io.cancel_escalation", "incident_io:escalation:esc-c"),
    ]
    rule = "rootly-incident-cancelled-cancels-escalations"
    for action in result.actions:
        assert action.idempotency_key == default_idempotency_key(
            event, rule, "incident_io.cancel_escalation", action.target
        )
        assert thaw(action.params) == {}
    assert len({a.idempotency_key for a in result.actions}) == 3


def test_rootly_incident_cancelled_without_links_reports_no_targets() -> None:
    """No linked escalation: no action, and the trace says there was nothing linked."""
    event = rootly_event("incident.cancelled", rootly_incident(status="cancelled"))
    result = evaluate(default_rules(), event, graph(), NOW)
    assert result.actions == ()
    assert result.matched == ()
    trace = result.trace["rules"]["rootly-incident-cancelled-cancels-escalations"]
    assert trace["matched"] is True
    assert trace["reason"] == "no targets"
    assert "no linked incident_io:escalation" in trace["notes"][0]


# -- 4. Rootly incident.resolved / mitigated --------------------------------------------------


def test_rootly_incident_resolved_cancels_escalations_and_resolves_alerts() -> None:
    """Flow 4: linked escalations are cancelled and each of the (hydrated) incident's alerts
    gets a resolved alert event with the same deduplication key as when it fired."""
    data = rootly_incident(status="resolved", alert_ids=["al-1"], alerts=[{"id": "al-2"}])
    event = rootly_event("incident.resolved", data)
    rules = default_rules()
    assert rules.needs_hydration(event)
    result = evaluate(rules, event, _escalation_graph(), NOW)
    assert ops(result.actions) == [
        ("incident_io.cancel_escalation", "incident_io:escalation:esc-a"),
        ("incident_io.cancel_escalation", "incident_io:escalation:esc-b"),
        ("incident_io.cancel_escalation", "incident_io:escalation:esc-c"),
        ("incident_io.send_alert_event", None),
        ("incident_io.send_alert_event", None),
    ]
    resolved = result.actions[3:]
    assert [a.idempotency_key for a in resolved] == [
        "rootly-alert-al-1-resolved",
        "rootly-alert-al-2-resolved",
    ]
    # Both stop pages: cancels are page-stopping by operation, the resolving alert events
    # by the rule (a firing one is a create), so they pass backlogs of creates and updates.
    assert [priority_of(a) for a in result.actions] == ["page"] * 5
    assert [a.priority for a in result.actions] == [None] * 3 + ["page"] * 2
    assert thaw(resolved[0].params) == {
        "status": "resolved",
        "deduplication_key": "rootly-alert-al-1",
        "title": "Checkout API returns 500s",
        "metadata": {"rootly_alert_id": "al-1", "rootly_incident_id": "inc-4d1c"},
    }


def test_rootly_incident_mitigated_without_alert_fields_only_cancels() -> None:
    """`incident.mitigated` is covered too, and a resource without `alert_ids`/`alerts`
    (not hydrated) yields no alert events and no error."""
    event = rootly_event("incident.mitigated", rootly_incident(status="mitigated"))
    result = evaluate(default_rules(), event, graph((R_INC, "incident_io:escalation:e1")), NOW)
    assert ops(result.actions) == [("incident_io.cancel_escalation", "incident_io:escalation:e1")]
    assert result.errors == ()


def test_only_resolution_rules_ask_for_hydration() -> None:
    """`hydrate: true` is requested only by rules whose trigger matches the event."""
    rules = default_rules()
    assert not rules.needs_hydration(rootly_event("incident.created", rootly_incident()))
    assert rules.needs_hydration(rootly_event("incident.mitigated", rootly_incident()))
    assert rules.needs_hydration(io_event("public_incident.incident_updated_v2"))
    assert not rules.needs_hydration(io_event("public_alert.alert_created_v1"))


# -- 5. incident.io escalation acked -> acknowledge Rootly ------------------------------------


def _acked(payload: dict[str, Any], dedup: str = "rootly-alert-al-2") -> None:
    payload["previous_status"] = "triggered"
    payload["new_status"] = "acked"
    payload["escalation"]["status"] = "acked"
    payload["escalation"]["related_alerts"][0]["deduplication_key"] = dedup


def test_escalation_acked_acknowledges_rootly_alerts_and_incidents() -> None:
    """Flow 5: every Rootly alert behind the escalation (linked directly, via its
    incident.io alert, or named by the payload's deduplication key) is acknowledged, and
    linked Rootly incidents get `acknowledged_at` = the event time."""
    event = io_event("public_escalation.escalation_status_updated_v1", _acked)
    links = graph(
        (ESC, R_INC),
        (ESC, "rootly:alert:al-0"),
        (IO_ALERT, "rootly:alert:al-1"),
    )
    result = evaluate(default_rules(), event, links, NOW)
    assert result.matched[0] == "incident-io-ack-acknowledges-rootly"
    rule_actions = [a for a in result.actions if a.rule == "incident-io-ack-acknowledges-rootly"]
    assert ops(rule_actions) == [
        ("rootly.acknowledge_alert", "rootly:alert:al-0"),
        ("rootly.acknowledge_alert", "rootly:alert:al-1"),
        ("rootly.acknowledge_alert", "rootly:alert:al-2"),
        ("rootly.update_incident", R_INC),
    ]
    assert thaw(rule_actions[3].params) == {"acknowledged_at": "2021-08-17T13:28:57.801578Z"}
    assert all(thaw(a.params) == {} for a in rule_actions[:3])


def test_escalation_acked_same_alert_found_twice_is_acknowledged_once() -> None:
    """An alert reachable through links and through the payload yields one action, listed
    once in the trace, with a note that the second finding was not repeated."""
    event = io_event(
        "public_escalation.escalation_status_updated_v1", lambda p: _acked(p, "rootly-alert-al-1")
    )
    result = evaluate(default_rules(), event, graph((IO_ALERT, "rootly:alert:al-1")), NOW)
    assert ops(result.actions) == [("rootly.acknowledge_alert", "rootly:alert:al-1")]
    trace = result.trace["rules"]["incident-io-ack-acknowledges-rootly"]
    assert [(a["do"], a["target"]) for a in trace["actions"]] == [
        ("rootly.acknowledge_alert", "rootly:alert:al-1")
    ]
    assert any("already produced by this rule" in n for n in trace["notes"])


def test_private_escalation_acked_matches_after_hydration() -> None:
    """The private twin (only an ID in the payload) matches the same rule once the
    dispatcher has hydrated the escalation."""
    public = io_event("public_escalation.escalation_status_updated_v1", _acked)
    hydrated = dict(thaw(public.resource))
    event = io_event(
        "private_escalation.escalation_status_updated_v1",
        lambda p: p.update(new_status="acked"),
        resource_override=hydrated,
    )
    result = evaluate(default_rules(), event, graph((ESC, R_INC)), NOW)
    assert ops(result.actions) == [
        ("rootly.acknowledge_alert", "rootly:alert:al-2"),
        ("rootly.update_incident", R_INC),
    ]


def test_escalation_status_other_than_acked_does_nothing() -> None:
    """pending -> pending (the spec example) and acked -> acked produce no writes."""
    rules = default_rules()
    example = io_event("public_escalation.escalation_status_updated_v1")
    result = evaluate(rules, example, graph((ESC, R_INC)), NOW)
    assert result.actions == ()
    trace = result.trace["rules"]["incident-io-ack-acknowledges-rootly"]
    assert trace["reason"] == "condition false"
    assert trace["condition"]["detail"] == "new_status equals 'acked' (actual: 'pending')"

    def again(p: dict[str, Any]) -> None:
        _acked(p)
        p["previous_status"] = "acked"

    repeated = io_event("public_escalation.escalation_status_updated_v1", again)
    assert evaluate(rules, repeated, graph((ESC, R_INC)), NOW).actions == ()


# -- 6./7. incident.io incident status -> cancel / restart Rootly ----------------------------


def _status_change(previous: str, new: str) -> Any:
    def mutate(payload: dict[str, Any]) -> None:
        payload["previous_status"]["category"] = previous
        payload["new_status"]["category"] = new
        payload["incident"]["incident_status"]["category"] = new

    return mutate


def _incident_links() -> Any:
    return graph(
        (IO_INCIDENT, "rootly:incident:r-direct"),
        (IO_INCIDENT, "incident_io:escalation:e1"),
        ("incident_io:escalation:e1", "rootly:incident:r-via"),
    )


def test_incident_io_cancel_cancels_linked_rootly_incidents() -> None:
    """Flow 6: live -> canceled cancels Rootly incidents linked directly or through an
    escalation, with a message naming the incident.io reference."""
    event = io_event(
        "public_incident.incident_status_updated_v2", _status_change("live", "canceled")
    )
    result = evaluate(default_rules(), event, _incident_links(), NOW)
    assert ops(result.actions) == [
        ("rootly.cancel_incident", "rootly:incident:r-direct"),
        ("rootly.cancel_incident", "rootly:incident:r-via"),
    ]
    assert thaw(result.actions[0].params) == {
        "cancellation_message": "Cancelled in incident.io (INC-123)"
    }
    declined = io_event(
        "public_incident.incident_status_updated_v2", _status_change("triage", "declined")
    )
    assert len(evaluate(default_rules(), declined, _incident_links(), NOW).actions) == 2


def test_incident_io_cancel_fires_only_on_the_change_into_canceled() -> None:
    """canceled -> canceled (a repeat or an echo) does nothing."""
    event = io_event(
        "public_incident.incident_status_updated_v2", _status_change("canceled", "canceled")
    )
    result = evaluate(default_rules(), event, _incident_links(), NOW)
    assert result.actions == ()
    trace = result.trace["rules"]["incident-io-cancel-cancels-rootly"]
    assert trace["condition"]["index"] == 1


def test_incident_io_reopen_restarts_rootly_incident() -> None:
    """Flow 7: closed -> live and learning -> triage restart; live -> triage does not."""
    rules = default_rules()
    for previous, new in (("closed", "live"), ("learning", "triage")):
        event = io_event(
            "public_incident.incident_status_updated_v2", _status_change(previous, new)
        )
        assert ops(evaluate(rules, event, _incident_links(), NOW).actions) == [
            ("rootly.restart_incident", "rootly:incident:r-direct"),
            ("rootly.restart_incident", "rootly:incident:r-via"),
        ]
    event = io_event("public_incident.incident_status_updated_v2", _status_change("live", "triage"))
    result = evaluate(rules, event, _incident_links(), NOW)
    assert result.actions == ()
    assert (
        result.trace["rules"]["incident-io-reopen-restarts-rootly"]["reason"] == "condition false"
    )


# -- 8. incident.io incident updated -> update Rootly ----------------------------------------


def test_incident_io_update_syncs_title_summary_and_mapped_severity() -> None:
    """Flow 8: name, summary and the severity (through `severity_map`, case-insensitive on
    the incident.io severity name) go to the linked Rootly incident."""
    rules = default_rules(
        severity_map='{"minor": "rootly-sev-minor", "critical": "rootly-sev-crit"}'
    )
    event = io_event("public_incident.incident_updated_v2")
    result = evaluate(rules, event, _incident_links(), NOW)
    assert ops(result.actions) == [
        ("rootly.update_incident", "rootly:incident:r-direct"),
        ("rootly.update_incident", "rootly:incident:r-via"),
    ]
    assert thaw(result.actions[0].params) == {
        "title": "Our database is sad",
        "summary": "Our database is really really sad, and we don't know why yet.",
        "severity_id": "rootly-sev-minor",
    }


def test_incident_io_update_with_unmapped_severity_leaves_severity_out() -> None:
    """With the shipped empty severity map, severity_id is omitted rather than guessed."""
    event = io_event("public_incident.incident_updated_v2")
    (first, _) = evaluate(default_rules(), event, _incident_links(), NOW).actions
    assert "severity_id" not in first.params
    assert first.params["title"] == "Our database is sad"


# -- 9. links from incident.io payloads -------------------------------------------------------


def test_escalation_created_links_related_alerts_and_incidents() -> None:
    """Flow 9: the escalation is linked to each related incident.io alert and incident."""
    event = io_event("public_escalation.escalation_created_v1")
    result = evaluate(default_rules(), event, graph(), NOW)
    assert result.actions == ()
    assert result.link_changes == (
        LinkChange("add", ref(ESC), ref(IO_ALERT), "rule:incident-io-escalation-links-related"),
        LinkChange("add", ref(ESC), ref(IO_INCIDENT), "rule:incident-io-escalation-links-related"),
    )
    assert result.matched == ("incident-io-escalation-links-related",)


def test_escalation_related_alert_from_rootly_is_linked_to_the_rootly_alert() -> None:
    """A related alert whose deduplication key is rootly-alert-<id> is also linked to that
    Rootly alert, so an ack arriving before the alert webhook still finds it."""

    def from_rootly(payload: dict[str, Any]) -> None:
        payload["related_alerts"][0]["deduplication_key"] = "rootly-alert-al-9"

    result = evaluate(
        default_rules(),
        io_event("public_escalation.escalation_created_v1", from_rootly),
        graph(),
        NOW,
    )
    assert (
        LinkChange(
            "add",
            ref(IO_ALERT),
            ref("rootly:alert:al-9"),
            "rule:incident-io-escalation-links-related",
        )
        in result.link_changes
    )
    assert len(result.link_changes) == 3


def test_incident_io_alert_from_rootly_is_linked() -> None:
    """An incident.io alert created by flow 2 (deduplication key rootly-alert-<id>) is linked
    to the Rootly alert; other alerts are left alone with a trace reason."""

    def from_rootly(payload: dict[str, Any]) -> None:
        payload["deduplication_key"] = "rootly-alert-alert-7f2e"

    event = io_event("public_alert.alert_created_v1", from_rootly)
    result = evaluate(default_rules(), event, graph(), NOW)
    assert result.link_changes == (
        LinkChange(
            "add",
            ref(IO_ALERT),
            ref("rootly:alert:alert-7f2e"),
            "rule:incident-io-alert-links-rootly-alert",
        ),
    )
    other = evaluate(default_rules(), io_event("public_alert.alert_created_v1"), graph(), NOW)
    assert other.link_changes == ()
    trace = other.trace["rules"]["incident-io-alert-links-rootly-alert"]
    assert trace["reason"] == "condition false"


# -- loops ------------------------------------------------------------------------------------


def test_echoes_of_the_bridges_own_writes_cause_no_further_writes() -> None:
    """The webhooks the default rules' own writes cause (Rootly incident.updated after
    update_incident / acknowledge, an escalation going to cancelled, the escalation the
    bridge created) produce no actions: the rules settle. Two echoes settle only with what
    the pipeline knows besides the rules: `acknowledged_at` stamped by rule 5 reads as an
    acknowledgement of the Rootly incident (rule 13), which acknowledges the escalation
    whose acknowledgement caused it (already acked: the echo guard drops the event first,
    and incident.io would change nothing); an incident.io alert resolved by the bridge's
    alert event would resolve the Rootly alert it came from, which the echo guard
    recognises by its deduplication key."""
    rules = default_rules(escalation_path_id="p", severity_map='{"minor": "s"}')
    links = graph((ESC, R_INC), (IO_ALERT, "rootly:alert:al-1"), (IO_INCIDENT, R_INC))

    def cancelled(payload: dict[str, Any]) -> None:
        payload["previous_status"] = "triggered"
        payload["new_status"] = "cancelled"

    echoes = [
        rootly_event("incident.in_triage", rootly_incident(status="in_triage")),
        io_event("public_escalation.escalation_status_updated_v1", cancelled),
        io_event("public_escalation.escalation_created_v1"),
    ]
    for event in echoes:
        result = evaluate(rules, event, links, NOW)
        assert result.actions == (), (event.type, ops(result.actions))
        assert result.errors == ()
    stamped = rootly_event(
        "incident.updated", rootly_incident(acknowledged_at="2024-05-01T12:00:00Z")
    )
    seen = {"status": "started", "acknowledged_at": None}
    result = evaluate(rules, compared(stamped, seen), links, NOW)
    assert ops(result.actions) == [("incident_io.acknowledge_escalation", ESC)]

    def resolution(payload: dict[str, Any]) -> None:
        payload["status"] = "resolved"

    resolved_alert = io_event("public_alert.alert_resolved_v1", resolution)
    resolved = evaluate(rules, resolved_alert, links, NOW)
    assert ops(resolved.actions) == [("rootly.resolve_alert", "rootly:alert:al-1")]


# -- 16, 17. Rules that ship switched off ---------------------------------------------------


def test_switching_rule_17_on_beside_rule_8_needs_field_owners() -> None:
    """Rules 8 and 17 copy title, summary and severity in opposite directions: switched on
    together without owners the shipped rules do not load (each field named); with owners,
    as the file's comment shows, they do, and each rule leaves out what the other side owns."""
    with pytest.raises(RulesError) as caught:
        load_rules(RULES_FILE, {}, enable=["rootly-update-syncs-incident-io"])
    messages = [problem.message for problem in caught.value.problems]
    assert [m.split(" ", 1)[0] for m in messages] == [
        "incident.severity",
        "incident.summary",
        "incident.title",
    ]
    assert all("is written to both platforms" in m for m in messages)
    owners: dict[str, Platform] = {
        "incident.title": "rootly",
        "incident.summary": "rootly",
        "incident.severity": "incident_io",
    }
    rules = load_rules(RULES_FILE, {}, enable=["rootly-update-syncs-incident-io"], owners=owners)
    to_rootly = rules.rule("incident-io-update-syncs-rootly").actions[0]
    to_incident_io = rules.rule("rootly-update-syncs-incident-io").actions[0]
    assert [name for name, _ in to_rootly.params.items] == ["severity_id"]
    assert [name for name, _ in to_incident_io.params.items] == ["name", "summary"]
    assert not default_rules().rule("rootly-update-syncs-incident-io").enabled
    assert not default_rules().rule("incident-io-close-resolves-rootly").enabled
