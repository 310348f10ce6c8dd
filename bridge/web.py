"""aiohttp routes: webhooks, health, readiness, metrics, and the admin API under /api/v1/.

Every answer is JSON (metrics aside). Unknown routes give 404, wrong methods 405, bad input
400 with the reason (a body that does not decode included, and the connection is closed);
an unexpected failure is logged with its traceback and answered with a generic 500 body,
never a traceback. The admin API exists only when an admin token is configured, and checks
it in constant time (401 without a token or with one that is not UTF-8 text, 403 with a
wrong one).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge import history, openapi
from bridge.console import Console
from bridge.events import BY_OPERATOR, PLATFORMS, ActionId, InboxId, InvalidRef, ObjectRef, thaw
from bridge.logging import Logger
from bridge.metrics import Metrics
from bridge.pipeline.ingest import CLOSE_AFTER_ANSWER, CONTENT_ENCODINGS, Ingest, body_problem
from bridge.platforms.webhooks import PayloadError, decode_json_object
from bridge.store.base import OUTBOX_STATES, LinkFilter, LinkRow, OutboxRow, StoreError
from bridge.store.store import Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Every path, a decoded newline included (`.` would not match one, and such a request
# would fall through to aiohttp's plain-text 404, without our JSON or the token check).
CATCH_ALL = r"/{tail:[\s\S]*}"


@dataclass
class Readiness:
    """What /readyz reports on; the composition root keeps it current."""

    rules_loaded: bool = False
    accepting: bool = True


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ApiError(Exception):
    """Raised by handlers for a 4xx answer with a reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def link_json(row: LinkRow) -> dict[str, Any]:
    return {
        "a": str(row.a),
        "b": str(row.b),
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
    }


def action_json(row: OutboxRow) -> dict[str, Any]:
    action = row.action
    return {
        "id": row.id,
        "operation": action.operation,
        "target": str(action.target) if action.target else None,
        "params": thaw(action.params),
        "rule": action.rule,
        "idempotency_key": action.idempotency_key,
        "priority": row.priority,
        "state": row.state,
        "attempts": row.attempts,
        "attempts_before_replay": row.attempts_before_replay,
        "next_attempt_at": row.next_attempt_at.isoformat(),
        "last_error": row.last_error,
        "inbox_id": row.inbox_id,
        "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "result": thaw(row.result) if row.result is not None else None,
    }


def _unreadable_body(request: web.Request, exc: web.RequestPayloadError) -> web.Response:
    """The 400 for a body that does not decode: logged as a warning, connection closed."""
    request.app[LOGGER_KEY].warning(
        "http.body_undecodable", path=request.path, error=body_problem(exc)
    )
    response = _error(400, "request body could not be decoded")
    response.force_close()
    response[CLOSE_AFTER_ANSWER] = True
    return response


def _answering_json(handler: Handler) -> Handler:
    """`handler` with the answers every route shares: an `ApiError` as its 4xx, aiohttp's
    HTTP errors as JSON, a store that is down as 503, a client gone mid-request or a body
    that does not decode as 400, and anything else logged and answered 500 without the
    traceback.

    A wrapper per route, not an application middleware: aiohttp runs middlewares through
    extra coroutine layers on every request, a measurable share of a webhook's cost."""

    async def answering(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = {404: "not found", 405: f"method {request.method} not allowed"}.get(
                exc.status, exc.reason
            )
            response = _error(exc.status, reason)
            if exc.status == 405:
                allow = exc.headers.get("Allow")
                if allow:
                    response.headers["Allow"] = allow
            return response
        except StoreError as exc:
            request.app[LOGGER_KEY].warning(
                "http.store_unavailable", path=request.path, error=str(exc)
            )
            return _error(503, "storage unavailable, retry later")
        except asyncio.CancelledError:
            raise
        except web.RequestPayloadError as exc:
            return _unreadable_body(request, exc)
        except ConnectionError:
            # The client went away mid-request (e.g. while sending its body): nothing to
            # answer and nothing wrong here; nothing was stored for an unfinished body.
            request.app[LOGGER_KEY].info("http.client_disconnected", path=request.path)
            return _error(400, "connection lost before the request was complete")
        except Exception as exc:  # the last line of defence: log it, answer JSON
            request.app[LOGGER_KEY].exception("http.unhandled", path=request.path, error=repr(exc))
            return _error(500, "internal error; the bridge logged the details")

    return answering


LOGGER_KEY = web.AppKey("logger", Logger)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}")
    return value


def _bad_request(message: str) -> ApiError:
    return ApiError(400, message)


class AdminApi:
    """Operations on links, the outbox and dead letters, and event traces."""

    def __init__(
        self, store: Store, token: str, logger: Logger, wake_executor: Callable[[], None]
    ) -> None:
        self._store = store
        self._token = token.encode()
        self._log = logger
        self._wake = wake_executor
        self._openapi = openapi.document()

    def set_token(self, token: str) -> None:
        """Accept a rotated admin token (only) from the next request on."""
        self._token = token.encode()

    def authenticated(self, handler: Handler) -> Handler:
        """`handler`, answered only with the admin token for paths under /api/ (other
        paths pass: the catch-all route serves both)."""

        async def checked(request: web.Request) -> web.StreamResponse:
            if not request.path.startswith("/api/"):
                return await handler(request)
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return web.json_response(
                    {"error": "missing bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="bridge-admin"'},
                )
            try:
                offered = given.strip().encode()
            except UnicodeEncodeError:
                # Bytes that are not UTF-8 (aiohttp hands them over as lone surrogates):
                # not a token anyone could have been given.
                self._log.warning(
                    "admin.unauthenticated", path=request.path, reason="token_not_utf8"
                )
                return web.json_response(
                    {"error": "bearer token is not UTF-8 text"},
                    status=401,
                    headers={
                        "WWW-Authenticate": 'Bearer realm="bridge-admin", error="invalid_token"'
                    },
                )
            if not hmac.compare_digest(offered, self._token):
                self._log.warning("admin.forbidden", path=request.path)
                return _error(403, "wrong token")
            return await handler(request)

        return checked

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/links", self.list_links),
            web.post("/api/v1/links", self.add_link),
            web.delete("/api/v1/links", self.remove_link),
            web.get("/api/v1/outbox", self.list_outbox),
            web.get("/api/v1/outbox/{id}", self.get_action),
            web.get("/api/v1/dead-letters", self.list_dead),
            web.post("/api/v1/dead-letters/{id}/replay", self.replay),
            web.post("/api/v1/dead-letters/{id}/drop", self.drop),
            web.get("/api/v1/events", self.list_events),
            web.get("/api/v1/events/{id}", self.event_trace),
            web.get("/api/v1/objects/{platform}/{kind}/{id}", self.object_timeline),
            web.get("/api/v1/openapi.json", self.openapi),
        ]

    async def list_links(self, request: web.Request) -> web.Response:
        platform = request.query.get("platform")
        if platform is not None and platform not in PLATFORMS:
            raise _bad_request(f"platform must be one of {', '.join(PLATFORMS)}")
        kind = request.query.get("kind")
        if kind is not None and kind not in ("incident", "alert", "escalation"):
            raise _bad_request("kind must be incident, alert or escalation")
        flt = LinkFilter(
            platform=platform,
            kind=kind,
            external_id=request.query.get("id"),
            limit=_int_param(request, "limit", 100, 1, 1000),
            offset=_int_param(request, "offset", 0, 0, 10**9),
        )
        rows = await self._store.list_links(flt)
        return web.json_response({"links": [link_json(r) for r in rows]})

    async def _link_body(self, request: web.Request) -> tuple[ObjectRef, ObjectRef]:
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in CONTENT_ENCODINGS:
            raise ApiError(415, "Content-Encoding must be gzip, deflate or identity")
        try:
            # The same strict decoder as webhooks: UTF-8, bounded nesting (a deeply nested
            # body would otherwise raise RecursionError inside json.loads).
            body = decode_json_object(await request.read())
        except PayloadError as exc:
            raise _bad_request(f'body must be JSON {{"a": ref, "b": ref}}: {exc}') from None
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("a"), str)
            or not isinstance(body.get("b"), str)
        ):
            raise _bad_request('body must be {"a": "platform:kind:id", "b": "platform:kind:id"}')
        try:
            a, b = ObjectRef.parse(body["a"]), ObjectRef.parse(body["b"])
        except InvalidRef as exc:
            raise _bad_request(str(exc)) from None
        if a == b:
            raise _bad_request("a link needs two different objects")
        return a, b

    async def add_link(self, request: web.Request) -> web.Response:
        a, b = await self._link_body(request)
        created = await self._store.add_link(a, b, BY_OPERATOR)
        self._log.info("link.added", a=str(a), b=str(b), created=created, by="admin-api")
        return web.json_response(
            {"a": str(a), "b": str(b), "created": created}, status=201 if created else 200
        )

    async def remove_link(self, request: web.Request) -> web.Response:
        a, b = await self._link_body(request)
        removed = await self._store.remove_link(a, b)
        if not removed:
            return _error(404, f"no link between {a} and {b}")
        self._log.info("link.removed", a=str(a), b=str(b), by="admin-api")
        return web.json_response({"a": str(a), "b": str(b), "removed": True})

    async def list_outbox(self, request: web.Request) -> web.Response:
        raw_states = request.query.get("state")
        states = None
        if raw_states:
            states = [s.strip() for s in raw_states.split(",")]
            unknown = [s for s in states if s not in OUTBOX_STATES]
            if unknown:
                raise _bad_request(f"unknown state {unknown[0]!r}; use {', '.join(OUTBOX_STATES)}")
        rows = await self._store.list_outbox(
            states,  # type: ignore[arg-type]
            _int_param(request, "limit", 100, 1, 1000),
            _int_param(request, "offset", 0, 0, 10**9),
        )
        return web.json_response({"actions": [action_json(r) for r in rows]})

    def _id(self, request: web.Request) -> int:
        try:
            value = int(request.match_info["id"])
        except ValueError:
            raise _bad_request("id must be an integer") from None
        if not 0 < value < 2**63:
            raise _bad_request("id out of range")
        return value

    async def get_action(self, request: web.Request) -> web.Response:
        row = await self._store.get_action(ActionId(self._id(request)))
        if row is None:
            return _error(404, "no such action")
        return web.json_response(action_json(row))

    async def list_dead(self, request: web.Request) -> web.Response:
        rows = await self._store.list_outbox(
            ["dead"],
            _int_param(request, "limit", 100, 1, 1000),
            _int_param(request, "offset", 0, 0, 10**9),
        )
        return web.json_response({"dead_letters": [action_json(r) for r in rows]})

    async def replay(self, request: web.Request) -> web.Response:
        action_id = ActionId(self._id(request))
        if not await self._store.replay_action(action_id):
            return _error(404, "no dead letter with that id")
        self._log.info("dlq.replayed", action_id=action_id, by="admin-api")
        self._wake()
        return web.json_response({"id": action_id, "state": "pending"})

    async def drop(self, request: web.Request) -> web.Response:
        action_id = ActionId(self._id(request))
        if not await self._store.drop_action(action_id):
            return _error(404, "no dead letter with that id")
        self._log.info("dlq.dropped", action_id=action_id, by="admin-api")
        return web.json_response({"id": action_id, "state": "skipped"})

    async def event_trace(self, request: web.Request) -> web.Response:
        row = await self._store.get_inbox(InboxId(self._id(request)))
        if row is None:
            return _error(404, "no such event")
        actions = await self._store.actions_for_inbox(row.id)
        objects = (await self._store.event_objects([row.id])).get(row.id, [])
        return web.json_response(
            {
                "event": history.event_json(row, objects, with_trace=True),
                "actions": [action_json(a) for a in actions],
            }
        )

    async def list_events(self, request: web.Request) -> web.Response:
        try:
            flt = history.event_filter(request.query)
        except history.BadQuery as exc:
            raise _bad_request(str(exc)) from None
        return web.json_response(history.page_json(await history.search(self._store, flt)))

    async def object_timeline(self, request: web.Request) -> web.Response:
        info = request.match_info
        try:
            ref = ObjectRef.parse(f"{info['platform']}:{info['kind']}:{info['id']}")
        except InvalidRef as exc:
            raise _bad_request(str(exc)) from None
        timeline = await history.timeline(self._store, ref)
        if timeline.empty:
            return _error(404, f"nothing is known about {ref}: no event, action or link")
        return web.json_response(history.timeline_json(timeline, action_json, link_json))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self._openapi)


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` as aiohttp does; anything else a JSON 417. aiohttp's own
    handler fails (500) on a non-ASCII Expect value while building its error page."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # The interim answer is not the response: the body writer starts from zero.
        request.writer.output_size = 0
        return None
    return web.json_response({"error": "unsupported Expect header"}, status=417)


def _method_not_allowed(methods: list[str]) -> Handler:
    allow = ", ".join(sorted(set(methods)))

    async def handler(request: web.Request) -> web.StreamResponse:
        response = _error(405, f"method {request.method} not allowed")
        response.headers["Allow"] = allow
        return response

    return handler


async def _not_found(request: web.Request) -> web.StreamResponse:
    return _error(404, "not found")


class _QuietRequestHandler(RequestHandler):
    """Protocol-level failures (a malformed request line or header) are answered with a
    fixed JSON body and logged with the error type only: aiohttp's default quotes the
    offending bytes back and into its log, and they may hold a credential.

    Two more departures from aiohttp's defaults, both about a body left unread when the
    answer is out: an answer marked `CLOSE_AFTER_ANSWER` (the body stalled, or does not
    decode) closes the connection at once instead of reading and discarding the rest for
    up to 10 s; and a body that turns out not to decode while it is being discarded (its
    route never read it) is a warning, not an unhandled exception with a traceback."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ContentEncodingError):
            # Raised while the headers are parsed: a coding aiohttp cannot decode here
            # (br or zstd without their libraries). Undecodable bodies come later, to the
            # handler that reads them.
            status, reason = 415, "unsupported Content-Encoding"
        else:
            reason = "malformed HTTP request" if status < 500 else "internal error"
        structlog.get_logger("bridge.http").warning(
            "http.malformed_request", status=status, error=type(exc).__name__ if exc else None
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error answer")
        response = web.json_response({"error": reason}, status=status)
        response.force_close()
        return response

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if resp.get(CLOSE_AFTER_ANSWER):
            self.force_close()
        return answered

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            structlog.get_logger("bridge.http").warning(
                "http.body_undecodable", error=body_problem(exc), when="discarding"
            )
            return
        super().log_exception(*args, **kw)


class _QuietServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class BridgeRunner(web.AppRunner):
    """`AppRunner` whose connections use `_QuietRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no hook for the request handler class; `_QuietServer` only
        # overrides the factory method, so swapping the class of the server it built
        # keeps every other setting it was given.
        server.__class__ = _QuietServer
        return server


def build_app(
    *,
    ingest: Ingest,
    store: Store,
    metrics: Metrics,
    readiness: Readiness,
    logger: Logger,
    admin: AdminApi | None,
    console: Console | None = None,
) -> web.Application:
    """The bridge's aiohttp application, wired to the parts the composition root built.
    Every route's handler is wrapped by `_answering_json` (and by the admin token check
    where it applies) when it is registered; the application has no middleware. The
    console's routes answer HTML, their errors included (`bridge.console`)."""
    # client_max_size is a backstop; ingest itself stops reading at the configured limit.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[LOGGER_KEY] = logger

    def guarded(path: str, handler: Handler) -> Handler:
        if admin is not None and (path.startswith("/api/") or path == CATCH_ALL):
            handler = admin.authenticated(handler)
        return _answering_json(handler)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reasons = []
        if not readiness.accepting:
            reasons.append("shutting down")
        if not readiness.rules_loaded:
            reasons.append("rules not loaded")
        try:
            await store.ping()
        except StoreError as exc:
            reasons.append(f"store unreachable: {exc}")
        if reasons:
            return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    routes = [
        web.post("/webhooks/rootly", functools.partial(ingest.handle, "rootly")),
        web.post("/webhooks/incident-io", functools.partial(ingest.handle, "incident_io")),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics_endpoint),
    ]
    if admin is not None:
        routes += admin.routes()
    # Every request must reach a route of ours: aiohttp answers unmatched paths and methods
    # through its own Expect handler, which crashes on a non-ASCII header (500).
    allowed: dict[str, list[str]] = {}
    for route in routes:
        allowed.setdefault(route.path, []).append(route.method)
    for path, methods in allowed.items():
        for route in routes:
            if route.path == path:
                app.router.add_route(
                    route.method, path, guarded(path, route.handler), expect_handler=_expect
                )
        app.router.add_route(
            "*", path, guarded(path, _method_not_allowed(methods)), expect_handler=_expect
        )
    if console is not None:
        _add_console(app, console)
    app.router.add_route("*", CATCH_ALL, guarded(CATCH_ALL, _not_found), expect_handler=_expect)
    return app


def _add_console(app: web.Application, console: Console) -> None:
    """The console's routes, each path with an HTML 405 for other methods, and an HTML
    404 for every other path under /console/ (registered before the JSON catch-all)."""
    routes = console.routes()
    methods: dict[str, list[str]] = {}
    for route in routes:
        methods.setdefault(route.path, []).append(route.method)
        app.router.add_route(route.method, route.path, route.handler, expect_handler=_expect)
    for path, allowed in methods.items():
        app.router.add_route("*", path, console.method_not_allowed(allowed), expect_handler=_expect)
    app.router.add_route("*", "/console", console.redirect_root, expect_handler=_expect)
    app.router.add_route("*", r"/console/{tail:[\s\S]*}", console.not_found, expect_handler=_expect)
