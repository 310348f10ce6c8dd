"""Every Prometheus metric the bridge exposes, declared once.

The names are part of the public interface (dashboards and alerts use them; see README).
Nothing here registers into the global default registry: `Metrics` takes the
`CollectorRegistry` the composition root hands it, so tests and several bridges in one
process never collide.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from bridge import __version__
from bridge.events import OPERATIONS
from bridge.store.base import OUTBOX_STATES

# Every labelled counter starts at 0 for each combination of its known label values (the
# tuples below, declared once). A series that first appears at 1 has no increase in
# Prometheus' eyes (`increase()` and `rate()` need two samples), so without this an alert
# such as "a rules reload failed" would miss a process's first failure, and a dashboard
# would show "no data" instead of 0.
WEBHOOK_OUTCOMES = (
    "accepted",
    "duplicate",
    "rejected_signature",
    "rejected_payload",
    "too_large",
    "too_slow",
    "ignored",
    "unavailable",
)
ACTION_OUTCOMES = ("done", "skipped", "retried", "rate_limited", "dead_lettered")
SOURCES = ("rootly", "incident_io")
LINK_CHECK_OUTCOMES = ("in_step", "drift", "deferred")
# Deliveries refused before storage carry no event type yet.
UNKNOWN_EVENT_TYPE = "unknown"
WEBHOOK_REJECTION_REASONS = (
    "signature",
    "timestamp",
    "missing_header",
    "malformed_header",
    "payload",
    "too_large",
    "body_timeout",
    "content_type",
    "shutting_down",
)
DISPATCH_RESULTS = ("actions", "no_match", "echo", "stale", "ignored", "error")
RULES_RELOAD_OUTCOMES = ("ok", "failed")
SECRETS_RELOAD_OUTCOMES = ("ok", "failed")
# Scheduled tasks (bridge/scheduler.py) and their outcomes. The label is `task`, not `job`:
# Prometheus' scrape adds its own `job` label and would rename ours to `exported_job`.
SCHEDULER_TASKS = ("leader", "sweep", "gauges", "retention")
TASK_OUTCOMES = ("ok", "failed")
# Upstream answers worth a series from the start: the ones the alerts and dashboard single
# out (errors, throttling) and the usual successes. Other statuses appear when they happen.
UPSTREAM_STATUSES = (
    "200",
    "201",
    "202",
    "204",
    "429",
    "500",
    "502",
    "503",
    "504",
    "timeout",
    "connection_error",
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class LabelledCounters:
    """Children of counter families, looked up once per label set and reused.

    `Counter.labels()` validates its values and takes a lock on every call; on a path run
    for every webhook that is a measurable share of the work. Label values are a closed
    set (see each family), so the cache stays as small as the metric itself.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Counter] = {}

    def inc(self, family: Counter, *labels: str) -> None:
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        child.inc()


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    build_info: Info
    webhooks_received: Counter
    webhook_rejections: Counter
    actions: Counter
    action_duration: Histogram
    upstream_requests: Counter
    upstream_request_duration: Histogram
    event_to_action: Histogram
    outbox_depth: Gauge
    dead_letters: Gauge
    links: Gauge
    echoes_suppressed: Counter
    events_dispatched: Counter
    rules_reloads: Counter
    rules_loaded: Gauge
    secrets_reloads: Counter
    leader: Gauge
    scheduler_job_runs: Counter
    ratelimit_wait: Histogram
    link_checks: Counter
    link_check_reads: Counter
    link_check_drifts: Counter


def create_metrics(registry: CollectorRegistry) -> Metrics:
    """Declare every bridge metric in `registry` and return handles to them."""
    build_info = Info("bridge_build", "Version of the running bridge.", registry=registry)
    build_info.info({"version": __version__})
    metrics = Metrics(
        registry=registry,
        build_info=build_info,
        webhooks_received=Counter(
            "bridge_webhooks_received_total",
            "Webhook deliveries received, by source platform, event type and outcome.",
            ("source", "event_type", "outcome"),
            registry=registry,
        ),
        webhook_rejections=Counter(
            "bridge_webhook_rejections_total",
            "Webhook deliveries refused before storage, by source and reason "
            "(signature, timestamp, missing_header, malformed_header, payload, too_large,"
            " body_timeout, body_encoding, content_type, content_encoding, store_refused).",
            ("source", "reason"),
            registry=registry,
        ),
        actions=Counter(
            "bridge_actions_total",
            "Outbox actions attempted, by target platform, operation and outcome.",
            ("platform", "action", "outcome"),
            registry=registry,
        ),
        action_duration=Histogram(
            "bridge_action_duration_seconds",
            "Time spent performing one outbox action attempt against the platform API.",
            ("platform", "action"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        upstream_requests=Counter(
            "bridge_upstream_requests_total",
            "HTTP requests sent to the platforms, by platform and HTTP status "
            "(or 'timeout' / 'connection_error').",
            ("platform", "status"),
            registry=registry,
        ),
        upstream_request_duration=Histogram(
            "bridge_upstream_request_duration_seconds",
            "Latency of HTTP requests sent to the platforms.",
            ("platform",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        event_to_action=Histogram(
            "bridge_event_to_action_seconds",
            "Time from a webhook being accepted to the resulting action completing upstream.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        outbox_depth=Gauge(
            "bridge_outbox_depth",
            "Outbox rows by state.",
            ("state",),
            registry=registry,
        ),
        dead_letters=Gauge(
            "bridge_dead_letters",
            "Actions in the dead-letter queue, waiting for an operator.",
            registry=registry,
        ),
        links=Gauge(
            "bridge_links",
            "ID links between the platforms, by kind ('rootly:incident~incident_io:escalation').",
            ("kind",),
            registry=registry,
        ),
        echoes_suppressed=Counter(
            "bridge_echoes_suppressed_total",
            "Events of a type some rule acts on, recognised as echoes of the bridge's own "
            "writes and not mirrored back (loops prevented).",
            ("source",),
            registry=registry,
        ),
        events_dispatched=Counter(
            "bridge_events_dispatched_total",
            "Inbox events processed, by source and result (actions, no_match, echo, stale, "
            "ignored, error); includes events settled at ingest (no rule triggers on them).",
            ("source", "result"),
            registry=registry,
        ),
        rules_reloads=Counter(
            "bridge_rules_reloads_total",
            "Rules file reloads, by outcome (ok, failed).",
            ("outcome",),
            registry=registry,
        ),
        rules_loaded=Gauge(
            "bridge_rules_loaded",
            "Number of enabled rules in the active rule set.",
            registry=registry,
        ),
        secrets_reloads=Counter(
            "bridge_secrets_reloads_total",
            "Reloads of the secrets directory after its files changed, by outcome (ok, failed).",
            ("outcome",),
            registry=registry,
        ),
        leader=Gauge(
            "bridge_leader",
            "1 while this replica holds scheduler leadership, else 0.",
            registry=registry,
        ),
        scheduler_job_runs=Counter(
            "bridge_scheduler_job_runs_total",
            "Scheduled task runs, by task and outcome (ok, failed).",
            ("task", "outcome"),
            registry=registry,
        ),
        ratelimit_wait=Histogram(
            "bridge_ratelimit_wait_seconds",
            "Time a request waited for the client-side rate limiter.",
            ("platform",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        link_checks=Counter(
            "bridge_link_checks_total",
            "Link checks (a link's linked objects read and compared), by outcome: in_step, "
            "drift (a synthetic delivery was written), deferred (a read failed).",
            ("outcome",),
            registry=registry,
        ),
        link_check_reads=Counter(
            "bridge_link_check_reads_total",
            "API reads spent by the link checker, by platform.",
            ("platform",),
            registry=registry,
        ),
        link_check_drifts=Counter(
            "bridge_link_check_drifts_total",
            "Synthetic deliveries the link checker wrote for drift, by the platform whose "
            "object's state they announce.",
            ("platform",),
            registry=registry,
        ),
    )
    for state in OUTBOX_STATES:
        metrics.outbox_depth.labels(state=state).set(0)
    metrics.dead_letters.set(0)
    for family, values in known_counter_labels(metrics):
        family.labels(*values)
    return metrics


def known_counter_labels(metrics: Metrics) -> list[tuple[Counter, tuple[str, ...]]]:
    """Every (counter, label values) combination that starts at 0."""
    out: list[tuple[Counter, tuple[str, ...]]] = []
    for source in SOURCES:
        out += [
            (metrics.webhooks_received, (source, UNKNOWN_EVENT_TYPE, outcome))
            for outcome in WEBHOOK_OUTCOMES
        ]
        out += [
            (metrics.webhook_rejections, (source, reason)) for reason in WEBHOOK_REJECTION_REASONS
        ]
        out += [(metrics.events_dispatched, (source, result)) for result in DISPATCH_RESULTS]
        out.append((metrics.echoes_suppressed, (source,)))
        out.append((metrics.link_check_reads, (source,)))
        out.append((metrics.link_check_drifts, (source,)))
        out += [(metrics.upstream_requests, (source, status)) for status in UPSTREAM_STATUSES]
    for operation in OPERATIONS:
        platform, action = operation.split(".", 1)
        out += [(metrics.actions, (platform, action, outcome)) for outcome in ACTION_OUTCOMES]
    out += [(metrics.rules_reloads, (outcome,)) for outcome in RULES_RELOAD_OUTCOMES]
    out += [(metrics.link_checks, (outcome,)) for outcome in LINK_CHECK_OUTCOMES]
    out += [(metrics.secrets_reloads, (outcome,)) for outcome in SECRETS_RELOAD_OUTCOMES]
    out += [
        (metrics.scheduler_job_runs, (task, outcome))
        for task in SCHEDULER_TASKS
        for outcome in TASK_OUTCOMES
    ]
    return out
