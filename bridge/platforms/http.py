"""The HTTP machinery both platform clients share: one place for pacing, timing and errors.

`ApiTransport` owns one `aiohttp.ClientSession` (created in `start`, closed in `close`), waits
for a slot in every quota of the key's `KeyLimiter` that a request counts against, lets
each answer's `X-RateLimit-*` headers correct them, counts every answer in the Prometheus
metrics, and maps every failure onto the `bridge.platforms.errors` taxonomy:

- timeout, connection failure, 5xx, 408 -> `Retryable`
- 429 -> `RateLimited(retry_at)` and the quota it names (or every quota the request counted
  against) pauses until `retry_at`
- 404, 410 -> `TargetMissing`
- a 4xx the client's classifier calls a state conflict -> `StateConflict`
- any other answer -> `Permanent`, with the platform's own message(s) and request ID
- a body that cannot be sent as JSON (NaN, a value of no JSON type) -> `InvalidAction`,
  before anything is sent

The credential (and any per-request override) is redacted from every message it builds.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, NamedTuple, TypeVar

import aiohttp
import structlog
from multidict import CIMultiDictProxy

from bridge import __version__
from bridge.events import Platform, thaw
from bridge.metrics import Metrics
from bridge.platforms.base import InvalidAction, MalformedResponse
from bridge.platforms.errors import (
    InDoubt,
    Permanent,
    RateLimited,
    Retryable,
    StateConflict,
    TargetMissing,
    UpstreamError,
)
from bridge.platforms.ratelimit import KeyLimiter

DEFAULT_USER_AGENT: Final = f"bridge/{__version__}"
DEFAULT_EXPECTED: Final = (200, 201, 202, 204)
_SNIPPET = 200  # characters of a non-JSON error body quoted in a message
_MAX_MESSAGE = 1000
_REDACTED = "[redacted]"

QueryParams = Sequence[tuple[str, str]]
T = TypeVar("T")


class ApiResponse(NamedTuple):
    """A successful answer: HTTP status, parsed JSON body (None if empty) and headers."""

    status: int
    body: Any
    headers: CIMultiDictProxy[str]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error answer said, in a platform-neutral form, for classification."""

    status: int
    messages: tuple[str, ...]
    codes: tuple[str, ...]
    request_id: str | None
    body: Any
    not_json: str | None = None

    def summary(self) -> str:
        """One line for an exception message."""
        if self.messages:
            text = "; ".join(self.messages)
        elif self.not_json is not None:
            text = f"error body is not JSON: {self.not_json!r}"
        else:
            text = "no error message in the response"
        return text[:_MAX_MESSAGE]


ConflictClassifier = Callable[[ErrorInfo], bool]


def _describe_error_item(item: Any) -> str | None:
    if isinstance(item, str):
        return item
    if not isinstance(item, Mapping):
        return None
    texts = [item.get(k) for k in ("title", "detail", "message")]
    parts = [t for t in texts if isinstance(t, str) and t]
    # Rootly repeats the title in the detail at times; say it once.
    unique = list(dict.fromkeys(parts))
    text = " - ".join(unique) or (item.get("code") if isinstance(item.get("code"), str) else None)
    source = item.get("source")
    if text and isinstance(source, Mapping) and isinstance(source.get("field"), str):
        text += f" (field {source['field']})"
    return text


def parse_error(status: int, raw: bytes, headers: Mapping[str, str]) -> ErrorInfo:
    """Read an error answer of either platform.

    Rootly: ``{"errors": [{"title", "status", "code", "detail"}]}`` or ``{"error": "..."}``;
    request ID in ``X-Request-Id`` when present. incident.io: ``{"type", "status",
    "request_id", "errors": [{"code", "message", "source"}]}``.
    """
    header_request_id = headers.get("X-Request-Id") or headers.get("X-Request-ID")
    text = raw.decode("utf-8", errors="replace")
    try:
        body: Any = json.loads(text) if text.strip() else None
    except ValueError:
        return ErrorInfo(status, (), (), header_request_id, None, not_json=text[:_SNIPPET])
    messages: list[str] = []
    codes: list[str] = []
    request_id = header_request_id
    if isinstance(body, Mapping):
        errors = body.get("errors")
        if isinstance(errors, list):
            for item in errors:
                described = _describe_error_item(item)
                if described:
                    messages.append(described)
                if isinstance(item, Mapping) and isinstance(item.get("code"), str):
                    codes.append(item["code"])
        for key in ("error", "message"):
            value = body.get(key)
            described = _describe_error_item(value)
            if described:
                messages.append(described)
        if isinstance(body.get("request_id"), str):
            request_id = body["request_id"]
    elif isinstance(body, str) and body:
        messages.append(body)
    return ErrorInfo(status, tuple(messages), tuple(codes), request_id, body)


def _parse_timestamp(text: str) -> float | None:
    """RFC 3339 (``2025-04-17T11:17:18Z``) or HTTP-date (``Thu, 17 Apr 2025 11:17:18 GMT``)."""
    text = text.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _parse_number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def retry_at_from(headers: Mapping[str, str], body: Any, now: float) -> float:
    """When a 429'd caller may try again, as unix seconds, never before `now`.

    In order: ``Retry-After`` (seconds or HTTP-date; incident.io recommends it), Rootly's
    ``X-RateLimit-Reset`` (epoch seconds; a small value is read as a delay), incident.io's
    body ``rate_limit.retry_after`` (RFC 3339; HTTP-date tolerated), else one second.
    """
    candidate: float | None = None
    retry_after = headers.get("Retry-After")
    if retry_after:
        seconds = _parse_number(retry_after)
        candidate = now + seconds if seconds is not None else _parse_timestamp(retry_after)
    if candidate is None and (reset := headers.get("X-RateLimit-Reset")):
        value = _parse_number(reset)
        if value is not None:
            # Epoch seconds per the spec; anything before 2001 can only be a delay.
            candidate = value if value >= 1e9 else now + value
    if candidate is None and isinstance(body, Mapping):
        limit = body.get("rate_limit")
        if isinstance(limit, Mapping) and isinstance(limit.get("retry_after"), str):
            candidate = _parse_timestamp(limit["retry_after"])
    if candidate is None:
        candidate = now + 1.0
    return max(candidate, now)


def _redact(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


class ApiTransport:
    """Paced, measured, classified HTTP requests to one platform with one API key."""

    def __init__(
        self,
        *,
        platform: Platform,
        base_url: str,
        token: str,
        limiter: KeyLimiter,
        metrics: Metrics,
        content_type: str,
        classify_conflict: ConflictClassifier,
        accept: str | None = None,
        connect_timeout: float = 5.0,
        total_timeout: float = 30.0,
        user_agent: str = DEFAULT_USER_AGENT,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not token:
            raise ValueError(f"{platform}: an API token is required")
        self.platform: Platform = platform
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.limiter = limiter
        self._metrics = metrics
        self._content_type = content_type
        self._accept = accept or content_type
        self._classify_conflict = classify_conflict
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._user_agent = user_agent
        self._log = logger or structlog.get_logger(__name__).bind(platform=platform)
        self._session_factory = session_factory
        self._wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session (idempotent)."""
        if self._session is None:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        """Close the session (idempotent)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def set_token(self, token: str) -> None:
        """Authenticate with `token` from the next request on (rotation without a restart)."""
        if not token:
            raise ValueError(f"{self.platform}: an API token is required")
        self._token = token

    def _count(self, outcome: str, started: float) -> None:
        self._metrics.upstream_requests.labels(platform=self.platform, status=outcome).inc()
        self._metrics.upstream_request_duration.labels(platform=self.platform).observe(
            time.monotonic() - started
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: QueryParams | None = None,
        auth_token: str | None = None,
        limiter: KeyLimiter | None = None,
        expected: Collection[int] = DEFAULT_EXPECTED,
    ) -> ApiResponse:
        """Send one request and return the answer, or raise an `UpstreamError` subclass.

        `json_body` is serialised with the transport's content type (none sent when None).
        `auth_token` replaces the API key for this request (incident.io alert sources);
        `limiter` replaces the API key's limiter accordingly.
        """
        session = self._session
        if session is None:
            raise RuntimeError(f"{self.platform} client used before start() or after close()")
        where = f"{method.upper()} {path}"
        data: bytes | None = None
        if json_body is not None:
            # Before the rate limiter: a body that cannot be sent must not spend a token.
            data = encode_json(json_body, where)
        quotas = limiter or self.limiter
        used = quotas.counted_against(method, path)
        secrets = (self._token, auth_token)
        waited = await quotas.acquire(used)
        self._metrics.ratelimit_wait.labels(platform=self.platform).observe(waited)

        headers = {
            "Authorization": f"Bearer {auth_token or self._token}",
            "Accept": self._accept,
            "User-Agent": self._user_agent,
        }
        if data is not None:
            headers["Content-Type"] = self._content_type
        started = time.monotonic()
        try:
            async with session.request(
                method.upper(),
                self.base_url + path,
                data=data,
                params=list(params) if params else None,
                headers=headers,
                # Without a body, send no Content-Type (aiohttp would add octet-stream).
                skip_auto_headers=("Content-Type",) if data is None else None,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                response_headers = response.headers
        except TimeoutError as exc:
            self._count("timeout", started)
            self._log.debug("upstream.request.timeout", method=method.upper(), path=path)
            limits = f"connect {self._timeout.sock_connect}s, total {self._timeout.total}s"
            # Past the connect timeout the request went out: it may still be applied.
            sent = not isinstance(exc, aiohttp.ConnectionTimeoutError)
            raise (InDoubt if sent else Retryable)(
                self.platform, f"{where}: timed out ({limits})"
            ) from None
        except aiohttp.ClientError as exc:
            self._count("connection_error", started)
            detail = _redact(f"{type(exc).__name__}: {exc}", secrets)
            self._log.debug(
                "upstream.request.connection_error", method=method.upper(), path=path, error=detail
            )
            # Refused or unreachable: nothing was sent. Dropped mid-request: it may land.
            sent = not isinstance(exc, aiohttp.ClientConnectorError)
            raise (InDoubt if sent else Retryable)(self.platform, f"{where}: {detail}") from None
        self._count(str(status), started)
        self._log.debug(
            "upstream.request.done",
            method=method.upper(),
            path=path,
            status=status,
            ratelimit_wait_s=round(waited, 3),
        )
        if status == 429:
            info = parse_error(status, raw, response_headers)
            now = self._wall_clock()
            retry_at = retry_at_from(response_headers, info.body, now)
            await quotas.rate_limited(used, response_headers, retry_at)
            self._log.warning(
                "upstream.rate_limited", where=where, retry_in_s=round(retry_at - now, 3)
            )
            message = _redact(f"{where}: {info.summary()}", secrets)
            raise RateLimited(
                self.platform, message, retry_at=retry_at, status=429, request_id=info.request_id
            )
        await quotas.observe(used, response_headers)
        if status in expected:
            return ApiResponse(status, self._parse_success(raw, where), response_headers)
        raise self._error(status, raw, response_headers, where, secrets)

    def _parse_success(self, raw: bytes, where: str) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            self._log.warning(
                "upstream.response.not_json",
                where=where,
                snippet=raw[:_SNIPPET].decode("utf-8", errors="replace"),
            )
            return None

    def _error(
        self,
        status: int,
        raw: bytes,
        headers: CIMultiDictProxy[str],
        where: str,
        secrets: tuple[str | None, ...],
    ) -> UpstreamError:
        info = parse_error(status, raw, headers)
        message = _redact(f"{where}: {info.summary()}", secrets)
        request_id = info.request_id
        if status >= 500 or status == 408:
            return Retryable(self.platform, message, status=status, request_id=request_id)
        if status in (404, 410):
            return TargetMissing(self.platform, message, status=status, request_id=request_id)
        if 400 <= status < 500 and self._classify_conflict(info):
            return StateConflict(self.platform, message, status=status, request_id=request_id)
        if status < 400:
            message = _redact(f"{where}: unexpected HTTP {status}", secrets)
        return Permanent(self.platform, message, status=status, request_id=request_id)


def encode_json(body: Any, where: str) -> bytes:
    """`body` as strict JSON (read-only mappings and tuples, as actions hold them, as
    objects and arrays); `InvalidAction` for what JSON cannot hold (NaN, infinities,
    objects of other types): sending it again would fail again."""
    try:
        return json.dumps(thaw(body), separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidAction(f"{where}: the request body cannot be sent as JSON: {exc}") from None


def matches_any(patterns: re.Pattern[str], texts: Iterable[str]) -> bool:
    """Whether any of `texts` matches `patterns` (helper for conflict classifiers)."""
    return any(patterns.search(text) for text in texts)


def parse_answer(platform: Platform, parse: Callable[[Any], T], body: Any, where: str) -> T:
    """Parse a 2xx body with `parse`; a body not shaped as documented is `Permanent`."""
    try:
        return parse(body)
    except MalformedResponse as exc:
        raise Permanent(platform, f"{where}: unexpected answer: {exc}") from None
