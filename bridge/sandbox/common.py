"""Parts shared by both simulators: request records, faults, errors, IDs, clocks.

`SimulatorBase` owns what every simulated platform does the same way: record each request,
inject faults (latency, 500s, 429s, hangs) into API routes, and serve the platform-neutral
control routes (`/_sandbox/requests|deliveries|state|faults|reset`). Platform modules plug
in authentication, rate limiting, error bodies and their own routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import json
import random
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from bridge.sandbox.webhooks import DeliveryRecord, WebhookSender

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass
class Faults:
    """Injected misbehaviour of one simulator; mutate fields (or PUT /_sandbox/faults)."""

    error_rate: float = 0.0
    rate_429: float = 0.0
    # Seconds an injected 429 asks the client to wait (0 is valid HTTP: retry at once).
    retry_after_seconds: float = 1.0
    latency_seconds: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    # True models "succeeded upstream but the client timed out": change applied, answer hangs.
    timeout_applies_change: bool = True
    webhook_drop_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    webhook_reorder_max_delay: float = 0.0

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from a JSON object; unknown keys or wrong types raise `SimError` (400)."""
        known = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SimError(400, "invalid_faults", f"unknown fault fields: {', '.join(unknown)}")
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if name == "timeout_applies_change":
                if not isinstance(value, bool):
                    raise SimError(400, "invalid_faults", f"{name} must be a boolean")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise SimError(400, "invalid_faults", f"{name} must be a non-negative number")
            elif name.endswith("_rate") and value > 1:
                raise SimError(400, "invalid_faults", f"{name} must be between 0 and 1")
            checked[name] = value
        for name, value in checked.items():
            setattr(self, name, value)

    def reset(self) -> None:
        """Back to no faults at all."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default)


@dataclass(frozen=True)
class RecordedRequest:
    """One API request a simulator received, with the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int
    at: float

    def to_json(self) -> dict[str, Any]:
        """JSON form for the control API; the Authorization header is redacted."""
        headers = {
            k: ("<redacted>" if k.lower() == "authorization" else v)
            for k, v in self.headers.items()
        }
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": self.body,
            "status": self.status,
            "at": self.at,
        }


class SimError(Exception):
    """A client error a simulator answers with (state conflict, bad input, unknown ID)."""

    def __init__(self, status: int, code: str, message: str, field_name: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field_name = field_name


def now_dt() -> datetime:
    """Current UTC time (simulators stamp objects with it)."""
    return datetime.now(UTC)


def iso_ms(moment: datetime) -> str:
    """RFC 3339 with milliseconds and an explicit offset, as Rootly writes timestamps."""
    return moment.isoformat(timespec="milliseconds")


def iso_us(moment: datetime) -> str:
    """RFC 3339 with microseconds and `Z`, as incident.io writes timestamps."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def uuid_from(rng: random.Random) -> str:
    """A version-4 UUID string drawn from `rng` (deterministic under a seed)."""
    value = rng.getrandbits(128)
    value &= ~(0xF000 << 64)
    value |= 0x4000 << 64
    value &= ~(0xC000 << 48)
    value |= 0x8000 << 48
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def ulid_from(rng: random.Random, counter: int) -> str:
    """A ULID-looking ID: a monotonic counter prefix keeps IDs sortable in creation order."""
    prefix = ""
    n = counter
    for _ in range(10):
        prefix = _CROCKFORD[n % 32] + prefix
        n //= 32
    return "01" + prefix[2:] + "".join(rng.choice(_CROCKFORD) for _ in range(16))


def short_id_from(rng: random.Random) -> str:
    """A short lowercase ID like Rootly's alert `short_id`."""
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def json_response(
    status: int, body: Any, *, content_type: str = "application/json"
) -> web.Response:
    """A JSON response with an explicit content type."""
    return web.Response(status=status, text=json.dumps(body), content_type=content_type)


def control_error(err: SimError) -> web.Response:
    """Control-API error body: `{"error": code, "message": ...}`."""
    return json_response(err.status, {"error": err.code, "message": err.message})


BODY_KEY: web.RequestKey[Any] = web.RequestKey("sandbox_body", object)


class SimulatorBase:
    """Recording, faults and the shared control routes of one simulated platform."""

    platform = "base"

    def __init__(
        self,
        *,
        seed: int | None,
        webhook_retry_delays: tuple[float, ...],
        logger: structlog.typing.FilteringBoundLogger | None,
    ) -> None:
        self._log = (logger or structlog.get_logger(__name__)).bind(platform=self.platform)
        base = f"{seed}-{self.platform}" if seed is not None else None
        # Separate streams: IDs, request faults and webhook faults do not shift each other.
        self._ids = random.Random(f"{base}-ids" if base else None)
        self._fault_rng = random.Random(f"{base}-faults" if base else None)
        self.faults = Faults()
        self.received: list[RecordedRequest] = []
        self._closing = asyncio.Event()
        self.webhooks = WebhookSender(
            name=self.platform,
            retry_delays=webhook_retry_delays,
            faults=lambda: self.faults,
            rng=random.Random(f"{base}-webhooks" if base else None),
            logger=self._log,
        )
        self.app = web.Application(middlewares=[self._middleware], client_max_size=1024**2)
        router = self.app.router
        router.add_get("/_sandbox/requests", self._h_requests)
        router.add_get("/_sandbox/deliveries", self._h_deliveries)
        router.add_get("/_sandbox/state", self._h_state)
        router.add_put("/_sandbox/faults", self._h_faults)
        router.add_get("/_sandbox/faults", self._h_get_faults)
        router.add_post("/_sandbox/reset", self._h_reset)

    # -- public helpers ------------------------------------------------------------------

    @property
    def deliveries(self) -> list[DeliveryRecord]:
        """Every webhook attempt (and skip/drop) so far."""
        return self.webhooks.records

    def calls(self, method: str, path_glob: str) -> list[RecordedRequest]:
        """Recorded API requests with this method whose path matches the glob."""
        return [
            r
            for r in self.received
            if r.method == method.upper() and fnmatch.fnmatchcase(r.path, path_glob)
        ]

    def set_webhook_target(self, url: str | None) -> None:
        """Where webhooks go (None: record them as skipped)."""
        self.webhooks.target = url

    async def start(self) -> None:
        """Start the webhook sender."""
        self._closing.clear()
        await self.webhooks.start()

    async def stop(self) -> None:
        """Release hung requests and stop the webhook sender."""
        self._closing.set()
        await self.webhooks.stop()

    async def reset(self) -> None:
        """Forget all state, records and faults (credentials stay)."""
        await self.webhooks.reset()
        self.received.clear()
        self.faults.reset()
        self._reset_state()

    # -- hooks for platforms -------------------------------------------------------------

    def _reset_state(self) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """A JSON snapshot of every object the simulator holds."""
        raise NotImplementedError

    def _authenticate(self, request: web.Request) -> web.Response | str:
        """The rate-limit key of an authenticated request, or the 401 answer."""
        raise NotImplementedError

    def _rate_limit(
        self, key: str, request: web.Request
    ) -> tuple[web.Response | None, dict[str, str]]:
        """A 429 answer when over a limit `request` counts against, plus headers every
        answer carries."""
        raise NotImplementedError

    def _error(self, err: SimError) -> web.Response:
        """The platform's error body for `err`."""
        raise NotImplementedError

    def _injected_429(self, key: str) -> web.Response:
        raise NotImplementedError

    # -- middleware ----------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> tuple[Any, SimError | None]:
        raw = await request.read()
        if not raw.strip():
            return None, None
        try:
            return json.loads(raw), None
        except (ValueError, UnicodeDecodeError):
            return None, SimError(400, "invalid_json", "request body is not valid JSON")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body, body_error = await self._read_body(request)
        request[BODY_KEY] = body
        if request.path.startswith("/_sandbox/"):
            if body_error is not None:
                return control_error(body_error)
            try:
                return await handler(request)
            except SimError as err:
                return control_error(err)
        response, hang = await self._api(request, handler, body_error)
        self.received.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=body,
                status=response.status,
                at=time.time(),
            )
        )
        if hang:
            self._log.info(
                "sandbox.fault.hang", path=request.path, seconds=self.faults.timeout_seconds
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.faults.timeout_seconds)
        return response

    async def _api(
        self, request: web.Request, handler: Handler, body_error: SimError | None
    ) -> tuple[web.Response, bool]:
        auth = self._authenticate(request)
        if isinstance(auth, web.Response):
            return auth, False
        limited, headers = self._rate_limit(auth, request)
        if limited is not None:
            return limited, False
        faults = self.faults
        if faults.latency_seconds > 0:
            await asyncio.sleep(faults.latency_seconds)
        roll = self._fault_rng.random()
        if roll < faults.error_rate:
            self._log.info("sandbox.fault.error", path=request.path)
            return self._error(SimError(500, "internal_error", "injected fault")), False
        roll -= faults.error_rate
        if roll < faults.rate_429:
            self._log.info("sandbox.fault.rate_limited", path=request.path)
            return self._injected_429(auth), False
        roll -= faults.rate_429
        hang = roll < faults.timeout_rate
        if hang and not faults.timeout_applies_change:
            return self._error(SimError(504, "gateway_timeout", "injected timeout")), True
        if body_error is not None:
            response: web.StreamResponse = self._error(body_error)
        else:
            try:
                response = await handler(request)
            except SimError as err:
                response = self._error(err)
            except web.HTTPException as exc:
                # Unknown route or method: answer in the platform's error format.
                code = "not_found" if exc.status == 404 else "method_not_allowed"
                response = self._error(SimError(exc.status, code, exc.reason))
        assert isinstance(response, web.Response)
        response.headers.update(headers)
        return response, hang

    # -- control routes ------------------------------------------------------------------

    async def _h_requests(self, request: web.Request) -> web.Response:
        return json_response(200, {"requests": [r.to_json() for r in self.received]})

    async def _h_deliveries(self, request: web.Request) -> web.Response:
        return json_response(200, {"deliveries": [d.to_json() for d in self.deliveries]})

    async def _h_state(self, request: web.Request) -> web.Response:
        return json_response(200, self.state())

    async def _h_get_faults(self, request: web.Request) -> web.Response:
        return json_response(200, dataclasses.asdict(self.faults))

    async def _h_faults(self, request: web.Request) -> web.Response:
        body = request[BODY_KEY]
        if not isinstance(body, dict):
            raise SimError(400, "invalid_faults", "body must be a JSON object of fault fields")
        self.faults.update(body)
        return json_response(200, dataclasses.asdict(self.faults))

    async def _h_reset(self, request: web.Request) -> web.Response:
        await self.reset()
        return json_response(200, {"reset": True})


def require_object(body: Any, what: str = "body") -> dict[str, Any]:
    """`body` as a JSON object, or a 400/422 `SimError`."""
    if not isinstance(body, dict):
        raise SimError(400, "invalid_body", f"{what} must be a JSON object")
    return body


def opt_str(obj: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    """An optional (or required, non-empty) string field of a JSON object."""
    value = obj.get(key)
    if value is None:
        if required:
            raise SimError(422, "is_required", f"{key} is required", key)
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise SimError(422, "invalid_value", f"{key} must be a non-empty string", key)
    return value
