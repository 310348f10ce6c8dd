"""`bridge demo`: play the main flows through the sandbox and narrate what happens on each side.

A bridge with the default rules runs against both simulators on loopback (temporary SQLite
store unless `--store` is given). Each scenario acts as a person would on one platform, waits
for the bridge to settle, and prints the calls the other platform received and the links the
bridge recorded: paging and cancelling, and an acknowledgement made on either side
reaching the other. Exit code 0 means every scenario had its expected effect.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.events import ObjectRef
from bridge.logging import configure_logging
from bridge.sandbox.stack import SandboxStack

Scenario = Callable[[SandboxStack], Awaitable[bool]]


def _say(text: str) -> None:
    print(text, flush=True)


def _calls(stack: SandboxStack, since: tuple[int, int]) -> None:
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    for name, sim, start in (("Rootly", rootly, since[0]), ("incident.io", iio, since[1])):
        for call in sim.received[start:]:
            if call.method != "GET":
                _say(f"    -> {name} received {call.method} {call.path} (answered {call.status})")


def _mark(stack: SandboxStack) -> tuple[int, int]:
    return len(stack.sandbox.rootly.received), len(stack.sandbox.incident_io.received)


async def _links(stack: SandboxStack, ref: str) -> list[str]:
    assert stack.bridge is not None
    rows = await stack.bridge.store.linked([ObjectRef.parse(ref)])
    return sorted(str(r.b) if str(r.a) == ref else str(r.a) for r in rows)


async def page_and_cancel(stack: SandboxStack) -> bool:
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    _say("1. A responder opens an incident in Rootly.")
    mark = _mark(stack)
    incident = await rootly.create_incident(title="Checkout is down", severity="sev1")
    await stack.settle()
    _calls(stack, mark)
    ref = f"rootly:incident:{incident['id']}"
    _say(f"    links of {ref}: {await _links(stack, ref)}")
    escalations = iio.state()["escalations"]
    if len(escalations) != 1:
        return False
    escalation_id = escalations[0]["id"]
    _say("2. The incident turns out to be a false alarm: cancelled in Rootly.")
    mark = _mark(stack)
    await rootly.cancel_incident(incident["id"], "false alarm")
    await stack.settle()
    _calls(stack, mark)
    status = iio.get_escalation(escalation_id)["status"]
    _say(f"    incident.io escalation {escalation_id} is now {status!r}: nobody is paged.")
    return bool(status == "cancelled")


async def alert_and_ack(stack: SandboxStack) -> bool:
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    _say("3. Monitoring raises an alert in Rootly.")
    mark = _mark(stack)
    alert = await rootly.create_alert("Error rate above 5% on payments")
    await stack.settle()
    _calls(stack, mark)
    paging = [e for e in iio.state()["escalations"] if e["status"] not in ("cancelled",)]
    if not paging:
        return False
    escalation_id = paging[-1]["id"]
    _say(f"    incident.io paged on escalation {escalation_id}.")
    _say("4. The on-call engineer acknowledges the page in incident.io.")
    mark = _mark(stack)
    await iio.ack_escalation(escalation_id, user="Alice")
    await stack.settle()
    _calls(stack, mark)
    status = rootly.get_alert(alert["id"])["status"]
    _say(f"    Rootly alert {alert['id']} is now {status!r}.")
    return bool(status == "acknowledged")


async def ack_in_rootly(stack: SandboxStack) -> bool:
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    _say("5. Another alert in Rootly pages through incident.io.")
    alert = await rootly.create_alert("Disk 95% full on db-2")
    await stack.settle()
    key = f"rootly-alert-{alert['id']}"
    paging = [
        e
        for e in iio.state()["escalations"]
        if any(a["deduplication_key"] == key for a in e["related_alerts"])
    ]
    if len(paging) != 1:
        return False
    escalation_id = paging[0]["id"]
    _say(f"    incident.io paged on escalation {escalation_id}.")
    _say("6. This time the responder acknowledges the alert in Rootly.")
    mark = _mark(stack)
    await rootly.acknowledge_alert(alert["id"])
    await stack.settle()
    _calls(stack, mark)
    status = iio.get_escalation(escalation_id)["status"]
    _say(f"    incident.io escalation {escalation_id} is now {status!r}: the page stops.")
    return bool(status == "acked")


SCENARIOS: tuple[Scenario, ...] = (page_and_cancel, alert_and_ack, ack_in_rootly)


async def run_demo(store_url: str | None = None) -> int:
    # The narration is the output; the bridge's own logs stay out of the way.
    configure_logging("error", "console", stream=io.StringIO())
    with tempfile.TemporaryDirectory(prefix="bridge-demo-") as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'demo.db'}"
        async with SandboxStack(store_url=url) as stack:
            _say(
                f"bridge on {stack.url}; Rootly at {stack.sandbox.rootly_url}; "
                f"incident.io at {stack.sandbox.incident_io_url}\n"
            )
            results = [await scenario(stack) for scenario in SCENARIOS]
    ok = all(results)
    _say(
        "\n"
        + (
            "every scenario had its expected effect"
            if ok
            else "a scenario did NOT have its expected effect"
        )
    )
    return 0 if ok else 1
