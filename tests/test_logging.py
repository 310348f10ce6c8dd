"""Log redaction: a secret set in config never appears in captured log output."""

from __future__ import annotations

import io
import json
import logging

import structlog

from bridge.logging import configure_logging


def test_configured_secrets_and_tokens_are_redacted() -> None:
    """Secrets passed to the logger, bearer tokens and whsec keys are scrubbed from JSON lines."""
    stream = io.StringIO()
    configure_logging("debug", "json", ["super-secret-token-1"], stream=stream)
    log = structlog.get_logger("t")
    log.info(
        "upstream.request",
        url="https://user:pa55word@db/x",
        note="sent super-secret-token-1 upstream",
        headers={"Authorization": "Bearer abc.def", "X-Other": "fine"},
        api_token="raw-token",
        secret_detail="whsec_QUJDREVGRw==",
        actor={"api_key": {"id": "01ABC", "name": "bridge"}},
    )
    line = stream.getvalue().strip()
    record = json.loads(line)
    assert "super-secret-token-1" not in line
    assert "pa55word" not in line
    assert "abc.def" not in line
    assert "raw-token" not in line
    assert "QUJDREVGRw" not in line
    assert record["event"] == "upstream.request"
    assert record["headers"]["X-Other"] == "fine"
    # An actor object called api_key is metadata, not a credential: kept for debugging.
    assert record["actor"]["api_key"]["id"] == "01ABC"
    structlog.reset_defaults()


def test_console_renderer_when_asked() -> None:
    """format=console renders human-readable lines instead of JSON."""
    stream = io.StringIO()
    configure_logging("info", "console", [], stream=stream)
    structlog.get_logger("t").info("bridge.started", port=1)
    assert "bridge.started" in stream.getvalue()
    assert not stream.getvalue().lstrip().startswith("{")
    structlog.reset_defaults()


def test_level_filters_debug() -> None:
    """Below the configured level nothing is written."""
    stream = io.StringIO()
    configure_logging("warning", "json", [], stream=stream)
    structlog.get_logger("t").info("quiet")
    assert stream.getvalue() == ""
    structlog.reset_defaults()


def test_the_schedulers_narration_of_each_job_run_stays_out_of_an_info_log() -> None:
    """APScheduler's two info lines per periodic job run (every few seconds, forever) are
    not written at level info, while its warnings (a missed or failed run) still are, as
    JSON `library.log` events."""
    stream = io.StringIO()
    configure_logging("info", "json", [], stream=stream)
    executor_log = logging.getLogger("apscheduler.executors.default")
    executor_log.info('Running job "Scheduler._guard.<locals>.run" (scheduled at now)')
    executor_log.info('Job "Scheduler._guard.<locals>.run" executed successfully')
    assert stream.getvalue() == ""
    executor_log.warning('Run time of job "reconcile" was missed by 0:00:07')
    record = json.loads(stream.getvalue())
    assert record["event"] == "library.log"
    assert record["library"] == "apscheduler.executors.default"
    assert "missed" in record["message"]
    structlog.reset_defaults()
