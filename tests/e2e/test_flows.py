"""Every default flow of DESIGN.md section 3, end to end, in its direction.

Each test acts as a person would on one simulated platform and asserts the exact API calls
the other simulator received, and the links the bridge recorded.
"""

from __future__ import annotations

from bridge.sandbox.stack import SandboxStack
from tests.e2e.conftest import add_link, links_of


async def open_incident_with_escalation(stack: SandboxStack) -> tuple[str, str]:
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident(title="Checkout is down", severity="sev1")
    await stack.settle()
    created = iio.calls("POST", "/v2/escalations")
    assert len(created) == 1
    (escalation,) = iio.state()["escalations"]
    return incident["id"], escalation["id"]


async def fire_rootly_alert(stack: SandboxStack) -> tuple[str, str, str]:
    """A Rootly alert, mirrored into an incident.io alert whose route opens an escalation."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    alert = await rootly.create_alert("Error rate above 5%")
    await stack.settle()
    state = iio.state()
    (iio_alert,) = state["alerts"]
    (escalation,) = state["escalations"]
    return alert["id"], iio_alert["id"], escalation["id"]


async def test_flow1_rootly_incident_opens_linked_escalation(stack: SandboxStack) -> None:
    """Rootly incident.created -> one POST /v2/escalations with a key derived from the incident,
    on the configured path, and a link rootly:incident <-> incident_io:escalation."""
    incident_id, escalation_id = await open_incident_with_escalation(stack)
    (call,) = stack.sandbox.incident_io.calls("POST", "/v2/escalations")
    assert call.body["idempotency_key"] == f"rootly-incident-{incident_id}"
    assert call.body["title"] == "Checkout is down"
    assert call.body["escalation_path_id"] == stack.sandbox.incident_io.default_escalation_path_id
    assert f"incident_io:escalation:{escalation_id}" in await links_of(
        stack, f"rootly:incident:{incident_id}"
    )


async def test_flow2_and_9_rootly_alert_becomes_incident_io_alert_and_links_complete(
    stack: SandboxStack,
) -> None:
    """Rootly alert.created -> an incident.io alert event (firing, dedup key from the alert ID);
    the incident.io alert and escalation webhooks then link all three objects."""
    alert_id, iio_alert_id, escalation_id = await fire_rootly_alert(stack)
    iio = stack.sandbox.incident_io
    (event,) = iio.calls("POST", f"/v2/alert_events/http/{stack.sandbox.alert_source_config_id}")
    assert event.body["status"] == "firing"
    assert event.body["deduplication_key"] == f"rootly-alert-{alert_id}"
    assert event.headers["Authorization"] == f"Bearer {stack.sandbox.alert_source_token}"
    assert f"rootly:alert:{alert_id}" in await links_of(stack, f"incident_io:alert:{iio_alert_id}")
    assert f"incident_io:alert:{iio_alert_id}" in await links_of(
        stack, f"incident_io:escalation:{escalation_id}"
    )


async def test_flow3_rootly_cancellation_cancels_linked_escalation(stack: SandboxStack) -> None:
    """Rootly incident.cancelled -> exactly one cancel of the linked escalation, which ends
    cancelled; the cancellation's own webhook is recognised as an echo."""
    incident_id, escalation_id = await open_incident_with_escalation(stack)
    await stack.sandbox.rootly.cancel_incident(incident_id)
    await stack.settle()
    iio = stack.sandbox.incident_io
    assert len(iio.calls("POST", f"/v2/escalations/{escalation_id}/actions/cancel")) == 1
    assert iio.get_escalation(escalation_id)["status"] == "cancelled"
    assert (
        stack.registry.get_sample_value("bridge_echoes_suppressed_total", {"source": "incident_io"})
        == 1.0
    )


async def test_flow4_rootly_resolution_stops_paging_and_resolves_alert(stack: SandboxStack) -> None:
    """Rootly incident.resolved -> the linked escalation is cancelled and the incident.io
    alert of the incident's Rootly alert is resolved (alert event status resolved)."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident_id, escalation_id = await open_incident_with_escalation(stack)
    alert = await rootly.create_alert("Latency high", incident_id=incident_id)
    await stack.settle()
    await rootly.resolve_incident(incident_id)
    await stack.settle()
    assert len(iio.calls("POST", f"/v2/escalations/{escalation_id}/actions/cancel")) == 1
    resolved = [
        c for c in iio.calls("POST", "/v2/alert_events/http/*") if c.body["status"] == "resolved"
    ]
    assert [c.body["deduplication_key"] for c in resolved] == [f"rootly-alert-{alert['id']}"]
    (iio_alert,) = iio.state()["alerts"]
    assert iio_alert["status"] == "resolved"


async def test_flow5_ack_in_incident_io_acknowledges_rootly_alert_once(stack: SandboxStack) -> None:
    """An acknowledgement of the page in incident.io -> exactly one POST
    /v1/alerts/{id}/acknowledge on the linked Rootly alert, which ends acknowledged."""
    alert_id, _, escalation_id = await fire_rootly_alert(stack)
    await stack.sandbox.incident_io.ack_escalation(escalation_id, user="Alice")
    await stack.settle()
    rootly = stack.sandbox.rootly
    assert len(rootly.calls("POST", f"/v1/alerts/{alert_id}/acknowledge")) == 1
    assert rootly.get_alert(alert_id)["status"] == "acknowledged"


async def test_flow5_ack_sets_acknowledged_at_on_linked_rootly_incident(
    stack: SandboxStack,
) -> None:
    """An ack of an escalation linked to a Rootly incident stamps acknowledged_at on it."""
    incident_id, escalation_id = await open_incident_with_escalation(stack)
    await stack.sandbox.incident_io.ack_escalation(escalation_id, user="Bob")
    await stack.settle()
    (update,) = stack.sandbox.rootly.calls("PUT", f"/v1/incidents/{incident_id}")
    assert update.body["data"]["attributes"]["acknowledged_at"]
    assert stack.sandbox.rootly.get_incident(incident_id)["acknowledged_at"]


async def incident_io_incident_linked(stack: SandboxStack, rootly_incident: str) -> str:
    iio = stack.sandbox.incident_io
    incident = await iio.create_incident("Checkout is down", severity="Major")
    await stack.settle()
    await add_link(
        stack, f"rootly:incident:{rootly_incident}", f"incident_io:incident:{incident['id']}"
    )
    return str(incident["id"])


async def test_flow6_incident_io_cancel_cancels_rootly_incident(stack: SandboxStack) -> None:
    """incident.io incident -> Canceled cancels the linked Rootly incident exactly once, and
    the resulting Rootly cancellation (which cancels escalations) does not loop back."""
    incident_id, escalation_id = await open_incident_with_escalation(stack)
    iio_incident = await incident_io_incident_linked(stack, incident_id)
    await stack.sandbox.incident_io.set_incident_status(iio_incident, "canceled")
    await stack.settle()
    rootly = stack.sandbox.rootly
    assert len(rootly.calls("PUT", f"/v1/incidents/{incident_id}/cancel")) == 1
    assert rootly.get_incident(incident_id)["status"] == "cancelled"
    # The Rootly cancellation is an echo of our write: no second round of cancels.
    assert (
        len(
            stack.sandbox.incident_io.calls(
                "POST", f"/v2/escalations/{escalation_id}/actions/cancel"
            )
        )
        <= 1
    )


async def test_flow7_reopen_in_incident_io_restarts_rootly_incident(stack: SandboxStack) -> None:
    """incident.io closed -> live restarts the linked (resolved) Rootly incident."""
    rootly = stack.sandbox.rootly
    incident_id, _ = await open_incident_with_escalation(stack)
    iio_incident = await incident_io_incident_linked(stack, incident_id)
    await rootly.resolve_incident(incident_id)
    await stack.sandbox.incident_io.set_incident_status(iio_incident, "closed")
    await stack.settle()
    assert rootly.calls("PUT", f"/v1/incidents/{incident_id}/restart") == []
    await stack.sandbox.incident_io.set_incident_status(iio_incident, "live")
    await stack.settle()
    assert len(rootly.calls("PUT", f"/v1/incidents/{incident_id}/restart")) == 1
    assert rootly.get_incident(incident_id)["status"] == "started"


async def test_flow8_incident_io_edit_updates_rootly_incident(stack: SandboxStack) -> None:
    """A name/summary change in incident.io updates the linked Rootly incident's title, summary."""
    incident_id, _ = await open_incident_with_escalation(stack)
    iio_incident = await incident_io_incident_linked(stack, incident_id)
    await stack.sandbox.incident_io.edit_incident(
        iio_incident, name="Checkout degraded", summary="Card payments fail"
    )
    await stack.settle()
    rootly = stack.sandbox.rootly
    updates = [
        c
        for c in rootly.calls("PUT", f"/v1/incidents/{incident_id}")
        if "title" in c.body["data"]["attributes"]
    ]
    assert updates, "no title update reached Rootly"
    assert updates[-1].body["data"]["attributes"]["title"] == "Checkout degraded"
    assert rootly.get_incident(incident_id)["title"] == "Checkout degraded"
    assert rootly.get_incident(incident_id)["summary"] == "Card payments fail"


def writes(stack: SandboxStack, since: tuple[int, int] = (0, 0)) -> list[str]:
    """The API writes (every method but GET) each simulator received since `since`."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    return [
        f"{name} {r.method} {r.path}"
        for name, sim, start in (("rootly", rootly, since[0]), ("incident_io", iio, since[1]))
        for r in sim.received[start:]
        if r.method != "GET"
    ]


def mark(stack: SandboxStack) -> tuple[int, int]:
    return len(stack.sandbox.rootly.received), len(stack.sandbox.incident_io.received)


async def test_flow12_ack_of_a_rootly_alert_acknowledges_its_escalation_once(
    stack: SandboxStack,
) -> None:
    """A person acknowledges the Rootly alert: Rootly sends `alert.updated`, and the bridge
    answers the page of its incident.io alert with one respond `ack`; the escalation ends
    acked and the acknowledgement coming back from incident.io writes nothing to Rootly."""
    alert_id, _, escalation_id = await fire_rootly_alert(stack)
    since = mark(stack)
    await stack.sandbox.rootly.acknowledge_alert(alert_id)
    await stack.settle()
    assert writes(stack, since) == [
        f"incident_io POST /v2/escalations/{escalation_id}/actions/respond"
    ]
    (call,) = stack.sandbox.incident_io.calls("POST", "/v2/escalations/*/actions/respond")
    assert call.body == {"response": "ack"}
    assert stack.sandbox.incident_io.get_escalation(escalation_id)["status"] == "acked"


async def test_flow13_ack_of_the_rootly_incident_acknowledges_its_escalation_once(
    stack: SandboxStack,
) -> None:
    """A person acknowledges the Rootly incident (status acknowledged, acknowledged_at set,
    reported as `incident.updated`): one respond `ack` to its escalation, nothing back."""
    incident_id, escalation_id = await open_incident_with_escalation(stack)
    since = mark(stack)
    await stack.sandbox.rootly.acknowledge_incident(incident_id)
    await stack.settle()
    assert writes(stack, since) == [
        f"incident_io POST /v2/escalations/{escalation_id}/actions/respond"
    ]
    assert stack.sandbox.incident_io.get_escalation(escalation_id)["status"] == "acked"


async def test_flow14_rootly_alert_resolved_resolves_the_incident_io_alert_once(
    stack: SandboxStack,
) -> None:
    """A person resolves the Rootly alert: one alert event `resolved` for its deduplication
    key resolves the incident.io alert and stops its page; the resolution incident.io
    reports back is an echo and resolves nothing more in Rootly."""
    alert_id, iio_alert_id, escalation_id = await fire_rootly_alert(stack)
    since = mark(stack)
    await stack.sandbox.rootly.resolve_alert(alert_id)
    await stack.settle()
    source = f"/v2/alert_events/http/{stack.sandbox.alert_source_config_id}"
    assert writes(stack, since) == [f"incident_io POST {source}"]
    (event,) = stack.sandbox.incident_io.calls("POST", source)[1:]
    assert (event.body["status"], event.body["deduplication_key"]) == (
        "resolved",
        f"rootly-alert-{alert_id}",
    )
    iio = stack.sandbox.incident_io
    assert iio.get_alert(iio_alert_id)["status"] == "resolved"
    assert iio.get_escalation(escalation_id)["status"] == "resolved"


async def test_flow15_incident_io_alert_resolved_resolves_the_rootly_alert_once(
    stack: SandboxStack,
) -> None:
    """The incident.io alert's source resolves it: one resolve of the Rootly alert it
    mirrors; Rootly's `alert.updated` coming back is an echo and sends no alert event."""
    alert_id, iio_alert_id, _ = await fire_rootly_alert(stack)
    since = mark(stack)
    await stack.sandbox.incident_io.resolve_alert(iio_alert_id)
    await stack.settle()
    assert writes(stack, since) == [f"rootly POST /v1/alerts/{alert_id}/resolve"]
    assert stack.sandbox.rootly.get_alert(alert_id)["status"] == "resolved"
