"""The link checker heals what a lost webhook would have done, once.

Each test drops exactly one webhook in the simulator (`webhook_drop_rate = 1.0` around one
human action), shows the drift is real (the other platform is untouched), runs a round of
the link checker and asserts exactly one healing call; further rounds add nothing, because
a link is not checked again within `scheduler.reconcile_seconds` and the synthetic
delivery's ID names the object, its state and what it needs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bridge.events import DeliveryId, ObjectRef
from bridge.sandbox.common import Faults
from bridge.sandbox.stack import SandboxStack
from bridge.store.driver import Sql


def drop_webhooks(faults: Faults, drop: bool) -> None:
    faults.webhook_drop_rate = 1.0 if drop else 0.0


async def check(stack: SandboxStack) -> int:
    assert stack.bridge is not None
    return await stack.bridge.checker.run_once()


async def synthetic(stack: SandboxStack) -> list[str]:
    """The delivery IDs of the synthetic deliveries the checker wrote, oldest first."""
    assert stack.bridge is not None
    rows = await stack.bridge.store.driver.fetch(
        Sql("SELECT delivery_id FROM inbox WHERE delivery_id LIKE 'check:%' ORDER BY id")
    )
    return [str(row["delivery_id"]) for row in rows]


async def test_dropped_cancellation_is_healed_into_one_escalation_cancel(
    stack: SandboxStack,
) -> None:
    """A Rootly cancellation whose webhook was lost leaves the linked escalation paging;
    one round of the checker cancels it with exactly one API call, more rounds do nothing,
    and the synthetic delivery's trace says why it exists."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
    assert await check(stack) == 0  # the new link, in step
    (escalation,) = iio.state()["escalations"]
    cancel_path = f"/v2/escalations/{escalation['id']}/actions/cancel"

    drop_webhooks(rootly.faults, True)
    await rootly.cancel_incident(incident["id"])
    drop_webhooks(rootly.faults, False)
    await stack.settle()
    assert [d.outcome for d in rootly.deliveries if d.event_type == "incident.cancelled"] == [
        "dropped"
    ]
    assert iio.get_escalation(escalation["id"])["status"] == "triggered"
    assert iio.calls("POST", cancel_path) == []

    stack.advance_checks()
    assert await check(stack) == 1
    assert await check(stack) == 0  # checked a moment ago: not due again
    await stack.settle()
    assert len(iio.calls("POST", cancel_path)) == 1
    assert iio.get_escalation(escalation["id"])["status"] == "cancelled"
    (delivery,) = await synthetic(stack)
    assert delivery.startswith(f"check:rootly:incident:{incident['id']}:cancelled:")
    assert stack.bridge is not None
    row = await stack.bridge.store.find_inbox("rootly", DeliveryId(delivery))
    assert row is not None and row.state == "processed"
    assert row.trace is not None
    assert row.trace["check"]["state"] == "cancelled"
    stack.advance_checks()
    assert await check(stack) == 0  # in step now
    await stack.settle()
    assert len(iio.calls("POST", cancel_path)) == 1


async def test_dropped_ack_is_healed_into_one_rootly_alert_acknowledgement(
    stack: SandboxStack,
) -> None:
    """An incident.io ack whose webhook was lost leaves the Rootly alert triggered; one
    round of the checker acknowledges it with exactly one API call, and more rounds do
    nothing."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    alert = await rootly.create_alert("Error rate above 5%")
    await stack.settle()
    await check(stack)
    (escalation,) = iio.state()["escalations"]
    ack_path = f"/v1/alerts/{alert['id']}/acknowledge"

    drop_webhooks(iio.faults, True)
    await iio.ack_escalation(escalation["id"], user="Alice")
    drop_webhooks(iio.faults, False)
    await stack.settle()
    assert {d.outcome for d in iio.deliveries if "status_updated" in d.event_type} == {"dropped"}
    assert rootly.get_alert(alert["id"])["status"] == "triggered"
    assert rootly.calls("POST", ack_path) == []

    stack.advance_checks()
    assert await check(stack) == 1
    assert await check(stack) == 0
    await stack.settle()
    assert len(rootly.calls("POST", ack_path)) == 1
    assert rootly.get_alert(alert["id"])["status"] == "acknowledged"
    stack.advance_checks()
    assert await check(stack) == 0
    await stack.settle()
    assert len(rootly.calls("POST", ack_path)) == 1


async def test_a_drift_is_dated_when_its_object_was_read(stack: SandboxStack) -> None:
    """A check's synthetic delivery announces the state it read as of the moment the read
    began, and its actions are caused then: before the platform answered (the simulator
    records the request as it answers), never when the check finished. Dated later, a
    check that read an incident acknowledged just before a person cancelled it would count
    as caused after the cancellation, and its ack would supersede the cancel."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    alert = await rootly.create_alert("Error rate above 5%")
    await stack.settle()
    await check(stack)
    drop_webhooks(rootly.faults, True)
    await rootly.resolve_alert(alert["id"])
    drop_webhooks(rootly.faults, False)
    await stack.settle()

    stack.advance_checks()
    assert await check(stack) == 1
    await stack.settle()
    assert stack.bridge is not None
    (delivery,) = await synthetic(stack)
    row = await stack.bridge.store.find_inbox("rootly", DeliveryId(delivery))
    assert row is not None
    stamped = datetime.fromisoformat(json.loads(row.body)["event"]["issued_at"])
    read = rootly.calls("GET", f"/v1/alerts/{alert['id']}")[-1]
    answered = datetime.fromtimestamp(read.at, UTC) + stack.clock.offset
    assert stamped < answered
    (action,) = await stack.bridge.store.actions_for_inbox(row.id)
    assert action.action.operation == "incident_io.send_alert_event"
    assert action.cause_at == stamped
    assert {a["status"] for a in iio.state()["alerts"]} == {"resolved"}


async def test_a_check_long_after_the_bridge_resolved_an_alert_mirrors_nothing(
    stack: SandboxStack,
) -> None:
    """Resolving a Rootly incident resolves the incident.io alert of its Rootly alert (rule
    4), whose webhook comes back as the bridge's echo, so the Rootly alert is left as it
    is. A link check long after (past `executor.echo_ttl_seconds`, when no echo record is
    left) reads the incident.io alert resolved and does the same as the webhook did: the
    last action done on it was the bridge's own resolve, so it mirrors nothing, and the
    Rootly alert is not resolved by the bridge."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
    alert = await rootly.create_alert("Error rate above 5%", incident_id=incident["id"])
    await stack.settle()
    await check(stack)
    await stack.settle()
    await rootly.resolve_incident(incident["id"])
    await stack.settle()
    assert [a["status"] for a in iio.state()["alerts"]] == ["resolved"]
    assert rootly.get_alert(alert["id"])["status"] == "triggered"

    assert stack.bridge is not None
    stack.clock.advance(stack.bridge.settings.executor.echo_ttl_seconds + 1)
    stack.advance_checks()
    await check(stack)
    await stack.settle()
    assert rootly.calls("POST", f"/v1/alerts/{alert['id']}/resolve") == []
    assert rootly.get_alert(alert["id"])["status"] == "triggered"
    (delivery,) = await synthetic(stack)  # the drift the rules see, dispatched as an echo
    assert delivery.startswith("check:incident_io:alert:")
    row = await stack.bridge.store.find_inbox("incident_io", DeliveryId(delivery))
    assert row is not None and row.trace is not None
    assert "the bridge itself made 'status=resolved'" in row.trace["echo"]


async def test_new_links_are_checked_before_many_older_ones(stack: SandboxStack) -> None:
    """With many links checked long ago (all due) and a new one just recorded, the new
    link is checked first, in the next round: drift on it is healed however many older
    links wait."""
    assert stack.bridge is not None
    store = stack.bridge.store
    old = [
        (
            ObjectRef.parse(f"rootly:incident:old-{n}"),
            ObjectRef.parse(f"incident_io:incident:old-{n}"),
        )
        for n in range(300)
    ]
    for a, b in old:
        await store.add_link(a, b, "test")
    await store.mark_links_checked(old, stack.now())
    stack.advance_checks()
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident("Checkout is down")
    await stack.settle()
    (escalation,) = iio.state()["escalations"]
    drop_webhooks(rootly.faults, True)
    await rootly.cancel_incident(incident["id"])
    drop_webhooks(rootly.faults, False)
    await stack.settle()

    assert await check(stack) == 1
    await stack.settle()
    assert len(iio.calls("POST", f"/v2/escalations/{escalation['id']}/actions/cancel")) == 1


async def test_a_rootly_ack_that_came_before_its_links_is_healed_into_one_escalation_ack(
    stack: SandboxStack,
) -> None:
    """incident.io's webhooks about the alert and escalation mirrored from a Rootly alert
    are lost, so when a person acknowledges the Rootly alert the bridge finds no escalation
    to acknowledge (and records the alert as acknowledged). Once an operator links them,
    the check of the new link announces the alert's acknowledged state as a first sighting,
    not compared with the state recorded, so the rule fires and the page is acknowledged
    with exactly one call; more rounds do nothing."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    drop_webhooks(iio.faults, True)
    alert = await rootly.create_alert("Error rate above 5%")
    await stack.settle()
    drop_webhooks(iio.faults, False)
    ((iio_alert,), (escalation,)) = (iio.state()["alerts"], iio.state()["escalations"])
    await rootly.acknowledge_alert(alert["id"])
    await stack.settle()
    respond = f"/v2/escalations/{escalation['id']}/actions/respond"
    assert iio.calls("POST", respond) == []
    assert stack.bridge is not None
    (seen,) = await stack.bridge.store.last_seen([ObjectRef("rootly", "alert", alert["id"])])
    assert seen.state["status"] == "acknowledged"

    # As `bridge links add` records them.
    iio_ref = ObjectRef("incident_io", "alert", iio_alert["id"])
    store = stack.bridge.store
    await store.add_link(ObjectRef("rootly", "alert", alert["id"]), iio_ref, "cli")
    await store.add_link(iio_ref, ObjectRef("incident_io", "escalation", escalation["id"]), "cli")
    assert await check(stack) == 1
    await stack.settle()
    assert len(iio.calls("POST", respond)) == 1
    assert iio.get_escalation(escalation["id"])["status"] == "acked"
    stack.advance_checks()
    assert await check(stack) == 0
    await stack.settle()
    assert len(iio.calls("POST", respond)) == 1


async def test_dropped_rootly_incident_ack_is_healed_into_one_escalation_ack(
    stack: SandboxStack,
) -> None:
    """A Rootly incident acknowledged whose `incident.updated` was lost leaves its page
    triggered; the checker announces the acknowledged incident and acknowledges the
    escalation with exactly one call; more rounds do nothing."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident("Checkout is down")
    await stack.settle()
    assert await check(stack) == 0
    (escalation,) = iio.state()["escalations"]
    respond = f"/v2/escalations/{escalation['id']}/actions/respond"

    drop_webhooks(rootly.faults, True)
    await rootly.acknowledge_incident(incident["id"])
    drop_webhooks(rootly.faults, False)
    await stack.settle()
    assert iio.calls("POST", respond) == []

    stack.advance_checks()
    assert await check(stack) == 1
    await stack.settle()
    assert len(iio.calls("POST", respond)) == 1
    assert iio.get_escalation(escalation["id"])["status"] == "acked"
    stack.advance_checks()
    assert await check(stack) == 0
    await stack.settle()
    assert len(iio.calls("POST", respond)) == 1
