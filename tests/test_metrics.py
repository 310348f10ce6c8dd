"""Metrics exposition: counters start at 0, the scheduler's label is `task`, no `_created`."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Bridge
from bridge.metrics import Metrics, create_metrics
from tests.conftest import bridge_settings


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_every_labelled_counter_starts_with_zero_series() -> None:
    """Each labelled counter family has series at 0 before anything happens, among them
    the ones the alerts select (a failed rules reload, a signature rejection, a 5xx)."""
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    samples = _samples(generate_latest(registry).decode())
    for name in Metrics.__dataclass_fields__:
        family = getattr(metrics, name)
        if isinstance(family, Counter) and family._labelnames:
            metric = f"{family._name}_total"
            assert any(key[0] == metric for key in samples), f"{metric} has no series"
    for name, labels in (
        ("bridge_rules_reloads_total", {"outcome": "failed"}),
        ("bridge_webhook_rejections_total", {"source": "rootly", "reason": "signature"}),
        ("bridge_upstream_requests_total", {"platform": "incident_io", "status": "500"}),
        ("bridge_actions_total", {"platform": "rootly", "action": "cancel_incident",
                                  "outcome": "dead_lettered"}),
        ("bridge_scheduler_job_runs_total", {"task": "retention", "outcome": "failed"}),
        ("bridge_link_checks_total", {"outcome": "drift"}),
    ):  # fmt: skip
        assert samples[(name, tuple(sorted(labels.items())))] == 0.0, (name, labels)


def test_scheduler_runs_are_labelled_by_task_not_job() -> None:
    """The scheduler counter's label is `task`: a `job` label would collide with the scrape
    job's and be renamed `exported_job` by Prometheus."""
    registry = CollectorRegistry()
    create_metrics(registry)
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("bridge_scheduler_job_runs")]
    assert lines
    assert all('task="' in line and 'job="' not in line for line in lines)


async def test_a_running_bridge_exports_no_created_series(tmp_path: Path) -> None:
    """GET /metrics of a started bridge has no `*_created` series (they double the series
    count and nothing charts them)."""
    running = Bridge(bridge_settings(tmp_path), env={}, registry=CollectorRegistry())
    await running.start()
    try:
        assert running.endpoint is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{running.endpoint.url}/metrics") as response,
        ):
            text = await response.text()
    finally:
        await running.stop()
    assert "bridge_webhooks_received_total{" in text
    assert "_created" not in text
