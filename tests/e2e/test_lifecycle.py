"""The two-way lifecycle with every default rule and both opt-in rules switched on (rules
16 and 17, the field owners they need), end to end: no loops.

An acknowledgement, a resolution or a title edit made on either platform gives exactly one
write to the other one, and nothing comes back: the bridge's writes return as webhooks,
which the echo guard recognises (by API key, by its record of the write, by an alert's
deduplication key) and which, for Rootly, compare equal with the state already seen. Then
the bridge's clock moves 10 s on and the link checker runs: still no write. Every request
the bridge sent is checked against the official specs (incident.io's with its supplement).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.sandbox.stack import DEFAULT_RULES, SandboxStack
from tests.e2e.conftest import add_link
from tests.e2e.test_flows import mark, writes
from tests.specs import load_spec, validate_request

FIELDS = ("incident.title", "incident.summary", "incident.severity")


def lifecycle_rules(tmp_path: Path, owner: str) -> Path:
    """The shipped rules with rules 16 and 17 switched on and `owner` owning every field
    rules 8 and 17 copy (the bridge refuses to load the two without owners)."""
    text = DEFAULT_RULES.read_text()
    assert text.count("    enabled: false\n") == 2
    text = text.replace("    enabled: false\n", "")
    owners = "".join(f"  {field}: {{owner: {owner}}}\n" for field in FIELDS)
    assert "\nfields: {}\n" in text
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace("\nfields: {}\n", "\nfields:\n" + owners))
    return path


async def lifecycle_stack(
    tmp_path: Path, *, owner: str = "rootly", private: bool = False
) -> SandboxStack:
    return await SandboxStack(
        store_url=f"sqlite:///{tmp_path}/bridge.db",
        rules_file=lifecycle_rules(tmp_path, owner),
        overrides={"admin": {"token": "e2e-admin-token-0123456789"}},
        sandbox_kwargs={"private_incident_io_webhooks": private},
    ).start()


@pytest.fixture(params=[False, True], ids=["public", "private"])
async def both_ways(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SandboxStack]:
    """Every rule on, Rootly owning the copied fields; incident.io's webhooks public or
    private (ID only: the bridge reads each object back before deciding)."""
    stack = await lifecycle_stack(tmp_path, private=request.param)
    try:
        yield stack
    finally:
        await stack.stop()


async def settled_and_checked(stack: SandboxStack) -> None:
    """Everything delivered, dispatched and done, and every link checked."""
    assert stack.bridge is not None
    await stack.settle()
    while await stack.bridge.checker.run_once():
        await stack.settle()


async def quiet_for_ten_seconds(stack: SandboxStack, since: tuple[int, int]) -> None:
    """Nothing more is written within 10 s: the bridge's clock moves on (retries, sweeps
    and link checks due by then come due), a link-check round runs, all settles."""
    assert stack.bridge is not None
    before = writes(stack, since)
    stack.clock.advance(10)
    await stack.bridge.checker.run_once()
    await stack.settle()
    assert writes(stack, since) == before


def check_against_the_specs(stack: SandboxStack) -> None:
    """Every write the bridge made, as the official operation declares it."""
    for platform, sim in (
        ("rootly", stack.sandbox.rootly),
        ("incident_io", stack.sandbox.incident_io),
    ):
        load_spec(platform)
        for request in sim.received:
            if request.method != "GET":
                validate_request(
                    platform, request.method, request.path, request.headers, request.body
                )


async def incident_with_two_alerts(stack: SandboxStack) -> dict[str, str]:
    """A Rootly incident paging through its escalation, two Rootly alerts on it each paging
    through an incident.io alert, and an incident.io incident linked to it; all linked and
    checked."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    incident = await rootly.create_incident("Checkout is down", severity="sev1", summary="5xx")
    await stack.settle()
    first = await rootly.create_alert("Error rate above 5%", incident_id=incident["id"])
    await stack.settle()
    second = await rootly.create_alert("Latency above 2s", incident_id=incident["id"])
    await stack.settle()
    iio_incident = await iio.create_incident("Checkout is down", severity="Major")
    await stack.settle()
    await add_link(
        stack, f"rootly:incident:{incident['id']}", f"incident_io:incident:{iio_incident['id']}"
    )
    await settled_and_checked(stack)
    state = iio.state()
    by_key = {a["deduplication_key"]: a["id"] for a in state["alerts"]}
    paging = {
        e["related_alerts"][0]["id"] if e["related_alerts"] else "incident": e["id"]
        for e in state["escalations"]
    }
    ids = {
        "incident": incident["id"],
        "escalation": paging["incident"],
        "iio_incident": iio_incident["id"],
    }
    for name, alert in (("alert", first), ("alert2", second)):
        ids[name] = alert["id"]
        ids[f"iio_{name}"] = by_key[f"rootly-alert-{alert['id']}"]
        ids[f"{name}_escalation"] = paging[ids[f"iio_{name}"]]
    return ids


async def test_an_ack_on_either_side_is_one_ack_call_each_way(both_ways: SandboxStack) -> None:
    """An ack in incident.io (of the incident's page) stamps the Rootly incident once; an
    ack in Rootly (of an alert) acknowledges its page once; neither comes back, and nothing
    more is written within 10 s."""
    stack = both_ways
    ids = await incident_with_two_alerts(stack)
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io

    since = mark(stack)
    await iio.ack_escalation(ids["escalation"], user="Alice")
    await stack.settle()
    assert writes(stack, since) == [f"rootly PUT /v1/incidents/{ids['incident']}"]
    assert rootly.get_incident(ids["incident"])["acknowledged_at"]
    await quiet_for_ten_seconds(stack, since)

    since = mark(stack)
    await rootly.acknowledge_alert(ids["alert"])
    await stack.settle()
    assert writes(stack, since) == [
        f"incident_io POST /v2/escalations/{ids['alert_escalation']}/actions/respond"
    ]
    assert iio.get_escalation(ids["alert_escalation"])["status"] == "acked"
    await quiet_for_ten_seconds(stack, since)
    check_against_the_specs(stack)


async def test_a_resolve_on_either_side_is_one_call_each_way(both_ways: SandboxStack) -> None:
    """A Rootly alert resolved resolves its incident.io alert once; an incident.io alert
    resolved resolves its Rootly alert once; closing the incident in incident.io resolves
    the Rootly incident once (incident.io sends no private status change: with private
    webhooks nothing happens). Nothing comes back within 10 s."""
    stack = both_ways
    ids = await incident_with_two_alerts(stack)
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    source = f"/v2/alert_events/http/{stack.sandbox.alert_source_config_id}"

    since = mark(stack)
    await rootly.resolve_alert(ids["alert"])
    await stack.settle()
    assert writes(stack, since) == [f"incident_io POST {source}"]
    assert iio.get_alert(ids["iio_alert"])["status"] == "resolved"
    await quiet_for_ten_seconds(stack, since)

    since = mark(stack)
    await iio.resolve_alert(ids["iio_alert2"])
    await stack.settle()
    assert writes(stack, since) == [f"rootly POST /v1/alerts/{ids['alert2']}/resolve"]
    assert rootly.get_alert(ids["alert2"])["status"] == "resolved"
    await quiet_for_ten_seconds(stack, since)

    since = mark(stack)
    await iio.set_incident_status(ids["iio_incident"], "closed")
    await stack.settle()
    private = stack.sandbox.incident_io.private_webhooks
    expected = [] if private else [f"rootly PUT /v1/incidents/{ids['incident']}/resolve"]
    assert writes(stack, since) == expected
    await quiet_for_ten_seconds(stack, since)
    check_against_the_specs(stack)


@pytest.mark.parametrize("owner", ["rootly", "incident_io"])
async def test_a_title_edit_goes_one_way_from_its_owner(tmp_path: Path, owner: str) -> None:
    """With rules 8 and 17 both on, a title edit on the side that owns the title reaches
    the other side in exactly one write; an edit on the other side is not copied to the
    owner; neither comes back, and nothing more is written within 10 s."""
    stack = await lifecycle_stack(tmp_path, owner=owner)
    try:
        ids = await incident_with_two_alerts(stack)
        rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io

        async def edit_in_rootly() -> None:
            await rootly.edit_incident(ids["incident"], title="Checkout degraded")

        async def edit_in_incident_io() -> None:
            await iio.edit_incident(ids["iio_incident"], name="Checkout slow")

        to_incident_io = f"incident_io POST /v2/incidents/{ids['iio_incident']}/actions/edit"
        to_rootly = f"rootly PUT /v1/incidents/{ids['incident']}"
        owner_edit, other_edit = (
            (edit_in_rootly, edit_in_incident_io)
            if owner == "rootly"
            else (edit_in_incident_io, edit_in_rootly)
        )
        since = mark(stack)
        await owner_edit()
        await stack.settle()
        assert writes(stack, since) == [to_incident_io if owner == "rootly" else to_rootly]
        if owner == "rootly":
            assert iio.get_incident(ids["iio_incident"])["name"] == "Checkout degraded"
        else:
            assert rootly.get_incident(ids["incident"])["title"] == "Checkout slow"
        await quiet_for_ten_seconds(stack, since)

        since = mark(stack)
        await other_edit()
        await stack.settle()
        assert writes(stack, since) == []
        await quiet_for_ten_seconds(stack, since)
        check_against_the_specs(stack)
    finally:
        await stack.stop()
