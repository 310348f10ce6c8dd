"""`bridge adopt` end to end: objects made before the bridge ran, found, linked, then acted on.

A real bridge runs against both simulators, but while the "old" objects are made the
simulators deliver no webhooks (as if the bridge were not installed yet): a Rootly incident
paged through an incident.io escalation keyed `rootly-incident-<id>`, and a Rootly alert
raised as an incident.io alert keyed `rootly-alert-<id>` (which raised an escalation of its
own). The real `bridge adopt` command then reads both simulators over HTTP through the real
clients and records the links in the bridge's own SQLite store. Cancelling the Rootly
incident afterwards cancels both escalations: without adoption both would page on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from bridge.events import ObjectRef
from bridge.sandbox.stack import SandboxStack
from tests.conftest import bridge_cli
from tests.specs import load_spec, validate_query, validate_request


async def adopt(stack: SandboxStack, store_url: str, *args: str) -> tuple[int, str, str]:
    """Run the real `bridge adopt` against the stack's simulators and store."""
    sandbox = stack.sandbox
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        {
            "BRIDGE_CONFIG": "/dev/null",
            "BRIDGE_STORE__URL": store_url,
            "BRIDGE_ROOTLY__API_URL": sandbox.rootly_url,
            "BRIDGE_ROOTLY__API_TOKEN": sandbox.rootly_api_token,
            "BRIDGE_INCIDENT_IO__API_URL": sandbox.incident_io_url,
            "BRIDGE_INCIDENT_IO__API_KEY": sandbox.incident_io_api_key,
        }
    )
    return await bridge_cli("adopt", *args, env=env)


async def make_escalation(stack: SandboxStack, key: str, title: str) -> str:
    """Page the sandbox's escalation path through the API, as rule 1 once did."""
    sandbox = stack.sandbox
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{sandbox.incident_io_url}/v2/escalations",
            json={
                "idempotency_key": key,
                "title": title,
                "escalation_path_id": sandbox.incident_io.default_escalation_path_id,
            },
            headers={"Authorization": f"Bearer {sandbox.incident_io_api_key}"},
        )
        assert response.status == 201, await response.text()
        body: dict[str, Any] = await response.json()
    return str(body["escalation"]["id"])


async def fire_alert(stack: SandboxStack, key: str) -> None:
    """Raise an incident.io alert through the HTTP alert source, as rule 2 once did."""
    sandbox = stack.sandbox
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{sandbox.incident_io_url}/v2/alert_events/http/{sandbox.alert_source_config_id}",
            json={"title": key, "status": "firing", "deduplication_key": key},
            headers={"Authorization": f"Bearer {sandbox.alert_source_token}"},
        )
        assert response.status == 202, await response.text()


def check_requests_against_the_specs(stack: SandboxStack, since: str) -> None:
    """Every request adopt sent: method, path, headers, body and query names as the
    official specs declare them; it only read, and it filtered by creation time."""
    load_spec("rootly")
    load_spec("incident_io")
    for platform, sim in (
        ("rootly", stack.sandbox.rootly),
        ("incident_io", stack.sandbox.incident_io),
    ):
        reads = [r for r in sim.received if r.method == "GET"]
        assert reads, platform
        for request in reads:
            validate_request(platform, request.method, request.path, request.headers, None)
            validate_query(platform, request.method, request.path, list(request.query))
    listings = [r.query for r in stack.sandbox.incident_io.received if r.path == "/v2/alerts"]
    assert listings and all(q.get("created_at[gte]") == since for q in listings)


async def test_adopt_links_what_belongs_together_once_and_cancelling_then_stops_paging(
    tmp_path: Path,
) -> None:
    """Dry run lists the links and records none; --apply records them (created_by adopt);
    a second --apply adds nothing; then cancelling the Rootly incident cancels both
    escalations that page for it, found only through the adopted links."""
    store_url = f"sqlite:///{tmp_path}/bridge.db"
    async with SandboxStack(store_url=store_url) as stack:
        sandbox = stack.sandbox
        sandbox.set_webhook_targets(rootly=None, incident_io=None)  # the bridge is not there yet
        incident = await sandbox.rootly.create_incident("Checkout API returns 500s")
        alert = await sandbox.rootly.create_alert("p99 above 2s", incident_id=incident["id"])
        paged = await make_escalation(stack, f"rootly-incident-{incident['id']}", "Checkout")
        await fire_alert(stack, f"rootly-alert-{alert['id']}")
        await fire_alert(stack, "datadog-monitor-1234")  # not the bridge's: left alone
        orphan = await make_escalation(stack, "rootly-incident-deleted-long-ago", "Old")
        await sandbox.rootly.create_incident("Never paged")
        state = sandbox.incident_io.state()
        io_alert = next(a for a in state["alerts"] if a["deduplication_key"].startswith("rootly-"))
        raised = next(
            e["id"]
            for e in state["escalations"]
            if [a["id"] for a in e["related_alerts"]] == [io_alert["id"]]
        )
        assert stack.bridge is not None
        store = stack.bridge.store
        sandbox.rootly.received.clear()
        sandbox.incident_io.received.clear()

        since = "2000-01-01"
        code, out, err = await adopt(stack, store_url, "--since", since, "--output", "json")
        assert code == 0, err
        report = json.loads(out)
        expected = {
            (f"rootly:incident:{incident['id']}", f"incident_io:escalation:{paged}"),
            (f"incident_io:alert:{io_alert['id']}", f"rootly:alert:{alert['id']}"),
            (f"incident_io:escalation:{raised}", f"incident_io:alert:{io_alert['id']}"),
        }
        found = {(link["a"], link["b"]) for link in report["links"]}
        assert found == expected
        assert not any(link["recorded"] for link in report["links"])
        assert report["unpaired_escalations"] == [orphan]
        assert report["applied"] is False
        refs = [ObjectRef.parse(a) for pair in expected for a in pair]
        assert await store.linked(refs) == []
        check_requests_against_the_specs(stack, since)

        code, out, err = await adopt(stack, store_url, "--since", since, "--apply")
        assert code == 0, err
        assert "adopt: recorded 3 new links (0 already recorded)" in out
        rows = await store.linked(refs)
        assert {(str(r.a), str(r.b)) for r in rows} | {(str(r.b), str(r.a)) for r in rows} >= (
            expected
        )
        assert {r.created_by for r in rows} == {"adopt"}

        code, out, err = await adopt(
            stack, store_url, "--since", since, "--apply", "--output", "json"
        )
        assert code == 0, err
        again = json.loads(out)
        assert again["counts"]["recorded"] == 0
        assert again["counts"]["already_recorded"] == 3
        assert len(await store.linked(refs)) == len(rows)

        # The bridge is installed now: a person cancels the Rootly incident.
        sandbox.set_webhook_targets(
            rootly=f"{stack.url}/webhooks/rootly", incident_io=f"{stack.url}/webhooks/incident-io"
        )
        await sandbox.rootly.cancel_incident(incident["id"])
        await stack.settle()
        assert sandbox.incident_io.get_escalation(paged)["status"] == "cancelled"
        assert sandbox.incident_io.get_escalation(raised)["status"] == "cancelled"
        assert sandbox.incident_io.get_escalation(orphan)["status"] != "cancelled"


async def test_adopt_table_limit_and_refusals(tmp_path: Path) -> None:
    """The table shows each link with its state and reason; --limit 1 reads one keyed
    escalation; a bad date is exit 2 without a traceback."""
    store_url = f"sqlite:///{tmp_path}/bridge.db"
    async with SandboxStack(store_url=store_url) as stack:
        sandbox = stack.sandbox
        sandbox.set_webhook_targets(rootly=None, incident_io=None)
        for n in range(2):
            incident = await sandbox.rootly.create_incident(f"incident {n}")
            await make_escalation(stack, f"rootly-incident-{incident['id']}", f"page {n}")
        code, out, err = await adopt(stack, store_url, "--since", "2000-01-01")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["A", "B", "STATE", "WHY"]
        assert (
            sum(" new " in line and "idempotency key rootly-incident-" in line for line in lines)
            == 2
        )
        assert lines[-1].startswith("adopt: 2 new links to record, 0 already recorded; run again")
        code, out, err = await adopt(
            stack, store_url, "--since", "2000-01-01", "--limit", "1", "--output", "json"
        )
        assert code == 0, err
        assert json.loads(out)["counts"]["keyed_escalations"] == 1
        code, out, err = await adopt(stack, store_url, "--since", "last tuesday")
        assert code == 2
        assert "bridge: --since 'last tuesday': not a date (YYYY-MM-DD or ISO 8601)" in err
        assert "Traceback" not in err
