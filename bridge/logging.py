"""structlog set-up: stable event names, flat keys, JSON in production, secrets redacted.

`configure_logging` is called once by the composition root (and by the CLI for its own
messages). The redaction processor replaces any configured secret value, any
`Authorization`/token-looking key and any `Bearer ...` string with `[redacted]` wherever it
appears in an event, so a secret set in config never reaches a log line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"(authorization|token|secret|password|api_key$|apikey|signature|cookie)", re.IGNORECASE
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+")
_WHSEC = re.compile(r"whsec_[A-Za-z0-9+/=]+")
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)([^@\s]+)(@)")


class Redactor:
    """A structlog processor that scrubs secrets from every value of an event dict."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._known: frozenset[str] = frozenset()
        self._secrets: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Scrub `secrets` too from now on (rotated secrets join the ones already known)."""
        self._known |= {s for s in secrets if len(s) >= 4}
        # One alternation, longest first, so a secret containing another is scrubbed whole.
        ordered = sorted(self._known, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def scrub(self, text: str) -> str:
        # This runs on every string of every log event: cheap substring tests first.
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub("Bearer " + REDACTED, text)
        if "whsec_" in text:
            text = _WHSEC.sub(REDACTED, text)
        if "@" in text and "://" in text:
            text = _URL_PASSWORD.sub(r"\1" + REDACTED + r"\3", text)
        return text

    def _clean(self, key: str, value: Any) -> Any:
        # api_key is also the name of incident.io's actor object ({"id","name"}): a mapping
        # there is not a credential, so only scalar values under sensitive keys are dropped.
        if _SENSITIVE_KEY.search(key) and isinstance(value, str | bytes) and value:
            return REDACTED
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, bytes):
            return self.scrub(value.decode("utf-8", "replace"))
        if isinstance(value, dict):
            return {k: self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(key, v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def __call__(
        self, _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            event_dict[key] = self._clean(key, event_dict[key])
        return event_dict


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> Redactor:
    """Configure structlog globally for this process; returns the redactor in use."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    redactor = Redactor(secrets)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdlibToStructlog)]
    root.addHandler(_StdlibToStructlog())
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    # aiohttp's access log line per request would flood the JSON log (metrics count them);
    # APScheduler logs two lines at every run of every
    # periodic job (several per 5 s, tens of thousands a day; counted instead by
    # bridge_scheduler_job_runs_total); all matter only when something goes wrong.
    for chatty in ("aiohttp.access", "apscheduler"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return redactor


class _StdlibToStructlog(logging.Handler):
    """Libraries log through `logging` (aiohttp does). Their records become structlog
    events, so they are JSON and redacted like ours; a traceback is reduced to the
    exception's type, because aiohttp's quote the raw request (headers included)."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        structlog.get_logger(record.name).log(
            record.levelno,
            "library.log",
            library=record.name,
            message=message[:500],
            error=type(exc).__name__ if exc is not None else None,
        )


Logger = structlog.typing.FilteringBoundLogger


def get_logger(name: str) -> Logger:
    logger: Logger = structlog.get_logger(name)
    return logger
