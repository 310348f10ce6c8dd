"""Reconciliation heals what a lost webhook would have done, once.

Each test drops exactly one webhook in the simulator (`webhook_drop_rate = 1.0` around one
human action), shows the drift is real (the other platform is untouched), runs the
scheduler's reconciliation pass and asserts exactly one healing call; further passes add
nothing because the synthetic delivery's ID names the object and the state observed.
"""

from __future__ import annotations

from bridge.events import DeliveryId, ObjectRef
from bridge.sandbox.common import Faults
from bridge.sandbox.stack import SandboxStack


def drop_webhooks(faults: Faults, drop: bool) -> None:
    faults.webhook_drop_rate = 1.0 if drop else 0.0


async def reconcile(stack: SandboxStack) -> int:
    assert stack.bridge is not None
    return await stack.bridge.scheduler.reconcile_now()


async def test_dropped_cancellation_is_reconciled_into_one_escalation_cancel(
    stack: SandboxStack,
) -> None:
    """A Rootly cancellation whose webhook was lost leaves the linked escalation paging;
    one reconcile pass cancels it with exactly one API call, and more passes do nothing."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
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

    assert await reconcile(stack) == 1
    # Straight away, before the synthetic event is dispatched: the same drift, same ID.
    assert await reconcile(stack) == 0
    await stack.settle()
    assert len(iio.calls("POST", cancel_path)) == 1
    assert iio.get_escalation(escalation["id"])["status"] == "cancelled"
    assert await reconcile(stack) == 0
    await stack.settle()
    assert len(iio.calls("POST", cancel_path)) == 1
    assert stack.bridge is not None
    synthetic = await stack.bridge.store.find_inbox(
        "rootly", DeliveryId(f"reconcile:rootly:incident:{incident['id']}:cancelled")
    )
    assert synthetic is not None and synthetic.state == "processed"


async def test_dropped_ack_is_reconciled_into_one_rootly_alert_acknowledgement(
    stack: SandboxStack,
) -> None:
    """An incident.io ack whose webhook was lost leaves the Rootly alert triggered; one
    reconcile pass acknowledges it with exactly one API call, and more passes do nothing."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    alert = await rootly.create_alert("Error rate above 5%")
    await stack.settle()
    (escalation,) = iio.state()["escalations"]
    ack_path = f"/v1/alerts/{alert['id']}/acknowledge"

    drop_webhooks(iio.faults, True)
    await iio.ack_escalation(escalation["id"], user="Alice")
    drop_webhooks(iio.faults, False)
    await stack.settle()
    assert {d.outcome for d in iio.deliveries if "status_updated" in d.event_type} == {"dropped"}
    assert rootly.get_alert(alert["id"])["status"] == "triggered"
    assert rootly.calls("POST", ack_path) == []

    assert await reconcile(stack) == 1
    assert await reconcile(stack) == 0
    await stack.settle()
    assert len(rootly.calls("POST", ack_path)) == 1
    assert rootly.get_alert(alert["id"])["status"] == "acknowledged"
    assert await reconcile(stack) == 0
    await stack.settle()
    assert len(rootly.calls("POST", ack_path)) == 1


async def test_reconcile_sees_the_newest_links_when_there_are_many(stack: SandboxStack) -> None:
    """With more links stored than one pass reads (1,000), the pass reads the newest ones:
    drift on a link made after 1,000 older ones is still healed."""
    assert stack.bridge is not None
    store = stack.bridge.store
    for n in range(1000):
        await store.add_link(
            ObjectRef.parse(f"rootly:incident:old-{n}"),
            ObjectRef.parse(f"incident_io:incident:old-{n}"),
            "test",
        )
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident("Checkout is down")
    await stack.settle()
    (escalation,) = iio.state()["escalations"]
    drop_webhooks(rootly.faults, True)
    await rootly.cancel_incident(incident["id"])
    drop_webhooks(rootly.faults, False)
    await stack.settle()

    assert await reconcile(stack) == 1
    await stack.settle()
    assert len(iio.calls("POST", f"/v2/escalations/{escalation['id']}/actions/cancel")) == 1
