"""The console's routes and pages (see the package docstring).

Every page answers HTML, errors included: bad input is a 4xx page saying what is wrong, a
store that is down a 503 page, and an unexpected failure is logged and answered with a
generic 500 page, never a traceback. Without a valid session a page redirects to the
sign-in form (a POST is refused with 403, the live tail with 401). Every POST needs the
session's CSRF token, and is refused when the browser says it comes from another site.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from bridge import __version__, history
from bridge.clock import Clock
from bridge.console.session import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    SESSION_COOKIE,
    Session,
    Sessions,
)
from bridge.events import (
    BY_OPERATOR,
    PLATFORMS,
    ActionId,
    DeliveryId,
    InboxId,
    InvalidRef,
    ObjectRef,
    Platform,
)
from bridge.explain import explanation, links_around, parse_event
from bridge.logging import Logger
from bridge.metrics import Metrics
from bridge.pipeline.rulestats import RuleStats
from bridge.platforms.webhooks import PayloadError
from bridge.rules import RuleSet
from bridge.store.base import (
    EVENT_OUTCOMES,
    OUTBOX_STATES,
    EventObject,
    InboxRow,
    LinkFilter,
    OutboxRow,
    StoreError,
)
from bridge.store.store import Store

MAX_FORM_BYTES: Final = 2 * 1024 * 1024
PAGE: Final = 100
PLATFORM_LABELS: Final[Mapping[str, str]] = {"rootly": "Rootly", "incident_io": "incident.io"}
OUTCOME_LABELS: Final[Mapping[str, str]] = {
    "pending": "waiting to be dispatched",
    "actions": "actions",
    "no_match": "no action",
    "echo": "echo (ignored)",
    "stale": "stale (ignored)",
    "ignored": "ignored",
    "error": "failed",
}
NOTICES: Final[Mapping[str, str]] = {
    "replayed": "Dead letter {id} replayed: it is pending again, with a fresh set of attempts.",
    "dropped": "Dead letter {id} dropped: it will not be tried again.",
    "added": "Link added.",
    "exists": "Those objects were already linked.",
    "removed": "Link removed.",
    "signed-out": "Signed out.",
}
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send `Origin: null` on the console's own POSTs.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAV: Final = (
    ("/console/events", "Events", "events"),
    ("/console/dead-letters", "Dead letters", "dead"),
    ("/console/outbox", "Outbox", "outbox"),
    ("/console/links", "Links", "links"),
    ("/console/rules", "Rules", "rules"),
    ("/console/health", "Health", "health"),
)


class ConsoleError(Exception):
    """Answered as an HTML error page with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class HealthProbe:
    """What the health page reads besides the store, from the parts that know it."""

    instance: str
    is_leader: Callable[[], bool]
    accepting: Callable[[], bool]
    rules_loaded: Callable[[], bool]
    schema_version: Callable[[], int | None]


@dataclass
class Ctx:
    """One request to a page: the request, its session, its form (POST)."""

    request: web.Request
    session: Session | None
    form: MultiDictProxy[str | bytes | Any] | None = None

    def field(self, name: str) -> str:
        value = self.form.get(name) if self.form is not None else None
        return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class EventView:
    """An event as the pages show it."""

    row: InboxRow
    outcome: str
    subject: str | None
    summary: Mapping[str, Any]
    line: str
    objects: Sequence[EventObject] = ()
    actions: Sequence[OutboxRow] = field(default_factory=list)


Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


def summary_line(summary: Mapping[str, Any]) -> str:
    """One line on what the rules did with an event."""
    parts = []
    for fired in summary.get("fired", ()):
        did = [f"{a['do']} {a['target'] or ''}".strip() for a in fired["actions"]]
        did += [str(link) for link in fired["links"]]
        parts.append(f"{fired['rule']}: {', '.join(did) if did else 'fired'}")
    for matched in summary.get("matched", ()):
        parts.append(f"{matched['rule']}: {matched['reason']}")
    if parts:
        return "; ".join(parts)
    if summary.get("verdict"):
        return str(summary["verdict"])
    return "no rule matched"


def event_view(
    row: InboxRow, objects: Sequence[EventObject] = (), actions: Sequence[OutboxRow] = ()
) -> EventView:
    summary = history.compact_trace(row.trace)
    subject = (row.trace or {}).get("subject")
    if subject is None:
        subject = next((str(o.ref) for o in objects if o.role == "subject"), None)
    return EventView(
        row,
        history.event_outcome(row),
        subject,
        summary,
        summary_line(summary),
        objects,
        list(actions),
    )


def object_url(ref: ObjectRef | str) -> str:
    ref = ObjectRef.parse(ref) if isinstance(ref, str) else ref
    return f"/console/objects/{ref.platform}/{ref.kind}/{ref.id}"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _safe_next(raw: str | None) -> str:
    """Where to go after signing in: a console path, never another site."""
    if raw and raw.startswith(COOKIE_PATH) and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/console/events"


def _int(raw: str, name: str, low: int = 1, high: int = 2**63 - 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConsoleError(400, f"{name} must be a number, not {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ConsoleError(400, f"{name} must be between {low} and {high}")
    return value


def _ref(raw: str, name: str) -> ObjectRef:
    try:
        return ObjectRef.parse(raw)
    except InvalidRef as exc:
        raise ConsoleError(400, f"{name}: {exc}") from None


class Console:
    def __init__(
        self,
        *,
        store: Store,
        admin_token: str,
        rules: Callable[[], RuleSet],
        rule_stats: RuleStats,
        metrics: Metrics,
        health: HealthProbe,
        logger: Logger,
        wake_executor: Callable[[], None],
        clock: Clock,
        session_minutes: int = 480,
    ) -> None:
        self._store = store
        self._token = admin_token
        self._rules = rules
        self._rule_stats = rule_stats
        self._metrics = metrics
        self._health = health
        self._log = logger
        self._wake = wake_executor
        self._clock = clock
        self.sessions = Sessions(admin_token, timedelta(minutes=session_minutes), clock)
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("bridge.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters.update(
            when=_when,
            object_url=object_url,
            platform=lambda p: PLATFORM_LABELS.get(p, p),
            outcome=lambda o: OUTCOME_LABELS.get(o, o),
            pretty=lambda v: json.dumps(v, indent=2, sort_keys=True, default=str),
        )
        static = resources.files("bridge.console") / "static"
        self._static = {
            name: (static / name).read_bytes()
            for name in ("console.css", "console.js", "favicon.svg")
        }

    # -- routing --------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        page = self._page
        return [
            web.get("/console/", self._root),
            web.get("/console/static/{name}", self._static_file),
            web.get("/console/login", page(self.login_form, auth=False)),
            web.post("/console/login", page(self.login, auth=False)),
            web.post("/console/logout", page(self.logout)),
            web.get("/console/events", page(self.events)),
            web.get("/console/events/tail", page(self.events_tail, fragment=True)),
            web.get("/console/events/{id}", page(self.event)),
            web.get("/console/objects/{platform}/{kind}/{id}", page(self.object_timeline)),
            web.get("/console/dead-letters", page(self.dead_letters)),
            web.get("/console/dead-letters/{id}/{op}", page(self.confirm_dead_letter)),
            web.post("/console/dead-letters/{id}/{op}", page(self.act_on_dead_letter)),
            web.get("/console/outbox", page(self.outbox)),
            web.get("/console/links", page(self.links)),
            web.get("/console/links/confirm", page(self.confirm_link)),
            web.post("/console/links/{op}", page(self.change_link)),
            web.get("/console/rules", page(self.rules)),
            web.post("/console/rules/dry-run", page(self.dry_run)),
            web.get("/console/health", page(self.health)),
        ]

    def method_not_allowed(self, methods: Sequence[str]) -> Callable[..., Any]:
        allow = ", ".join(sorted(set(methods)))

        async def handler(request: web.Request) -> web.StreamResponse:
            response = self._error_page(405, f"method {request.method} not allowed here")
            response.headers["Allow"] = allow
            return response

        return handler

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return self._error_page(404, "no such page")

    async def redirect_root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/console/")

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/console/events")

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            return self._error_page(404, "no such file")
        kind = {"css": "text/css", "js": "text/javascript", "svg": "image/svg+xml"}[
            name.rsplit(".", 1)[-1]
        ]
        response = web.Response(body=body, content_type=kind, charset="utf-8")
        response.headers["Cache-Control"] = "max-age=300"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def _page(self, handler: Handler, *, auth: bool = True, fragment: bool = False) -> Any:
        """`handler` behind the session check, the CSRF check for POSTs, and the HTML
        error answers."""

        async def answering(request: web.Request) -> web.StreamResponse:
            try:
                ctx = Ctx(request, self._session(request))
                if auth and ctx.session is None:
                    return self._unauthenticated(request, fragment)
                if request.method == "POST":
                    ctx.form = await self._form(request)
                    self._check_origin(request)
                    if auth:
                        assert ctx.session is not None
                        if not self.sessions.csrf_ok(ctx.session, ctx.field("csrf")):
                            self._log.warning("console.csrf_refused", path=request.path)
                            raise ConsoleError(
                                403,
                                "this form is out of date or came from elsewhere; reload"
                                " the page and try again",
                            )
                response = await handler(ctx)
            except ConsoleError as exc:
                response = self._error_page(exc.status, exc.message, ctx_session(request, self))
            except web.HTTPException as exc:
                if exc.status < 400:
                    exc.headers.update(SECURITY_HEADERS)
                    raise
                response = self._error_page(exc.status, exc.reason)
            except StoreError as exc:
                self._log.warning("console.store_unavailable", path=request.path, error=str(exc))
                response = self._error_page(503, "the store is unavailable; retry in a moment")
            except asyncio.CancelledError:
                raise
            except web.RequestPayloadError:
                response = self._error_page(400, "the request body could not be decoded")
            except ConnectionError:
                response = self._error_page(400, "connection lost before the request was complete")
            except Exception as exc:  # the last line of defence: logged, answered generically
                self._log.exception("console.unhandled", path=request.path, error=repr(exc))
                response = self._error_page(500, "internal error; the bridge logged the details")
            response.headers.update(SECURITY_HEADERS)
            return response

        return answering

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.check(request.cookies.get(SESSION_COOKIE))

    def _unauthenticated(self, request: web.Request, fragment: bool) -> web.StreamResponse:
        if fragment:
            return self._error_page(401, "signed out: sign in again")
        if request.method != "GET":
            self._log.warning("console.unauthenticated", path=request.path, method=request.method)
            return self._error_page(403, "you are not signed in (or your session ended)")
        target = request.path_qs
        raise web.HTTPSeeOther("/console/login?" + urlencode({"next": target}))

    async def _form(self, request: web.Request) -> MultiDictProxy[Any]:
        if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
            raise ConsoleError(413, f"form larger than {MAX_FORM_BYTES} bytes")
        content_type = request.content_type
        if content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise ConsoleError(415, "forms are sent as application/x-www-form-urlencoded")
        try:
            # A body without a length is read up to the same bound (413 past it).
            return await request.clone(client_max_size=MAX_FORM_BYTES).post()
        except (ValueError, UnicodeDecodeError):
            raise ConsoleError(400, "the form could not be read") from None

    def _check_origin(self, request: web.Request) -> None:
        """Refuse a POST that the browser says another site made (belt and braces: the
        session cookie is SameSite=Strict and every form carries a CSRF token)."""
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        try:
            elsewhere = origin is not None and urlsplit(origin).netloc != request.host
        except ValueError:  # not a URL at all (an unclosed IPv6 bracket, say)
            elsewhere = True
        foreign = site == "cross-site" or elsewhere
        if foreign:
            self._log.warning("console.cross_site_refused", path=request.path)
            raise ConsoleError(403, "refused: this request came from another site")

    # -- rendering ------------------------------------------------------------------------
    def _render(
        self,
        template: str,
        ctx: Ctx | None,
        status: int = 200,
        **values: Any,
    ) -> web.Response:
        session = ctx.session if ctx is not None else None
        notice = None
        if ctx is not None:
            code = ctx.request.query.get("done")
            if code is not None and code in NOTICES:
                ident = ctx.request.query.get("id", "")
                notice = NOTICES[code].format(id=ident if ident.isdigit() else "")
        values.setdefault("notice", notice)
        html = self._env.get_template(template).render(
            session=session, nav=NAV, version=__version__, **values
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def _error_page(
        self, status: int, message: str, session: Session | None = None
    ) -> web.Response:
        response = web.Response(
            text=self._env.get_template("error.html").render(
                session=session,
                nav=NAV,
                version=__version__,
                title=f"{status}: {_STATUS_NAMES.get(status, 'Error')}",
                active="",
                message=message,
                notice=None,
            ),
            status=status,
            content_type="text/html",
            charset="utf-8",
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    # -- sign-in --------------------------------------------------------------------------
    async def login_form(self, ctx: Ctx) -> web.StreamResponse:
        next_url = _safe_next(ctx.request.query.get("next"))
        if ctx.session is not None:
            raise web.HTTPSeeOther(next_url)
        return self._login_page(ctx, next_url, 200, None)

    def _login_page(self, ctx: Ctx, next_url: str, status: int, error: str | None) -> web.Response:
        nonce = Sessions.login_nonce()
        response = self._render(
            "login.html",
            None,
            status,
            title="Sign in",
            active="",
            next_url=next_url,
            login_csrf=nonce,
            error=error,
            notice=NOTICES["signed-out"] if ctx.request.query.get("done") == "signed-out" else None,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=LOGIN_SECONDS,
            path=COOKIE_PATH,
            httponly=True,
            samesite="Strict",
            secure=ctx.request.secure,
        )
        return response

    async def login(self, ctx: Ctx) -> web.StreamResponse:
        next_url = _safe_next(ctx.field("next"))
        if not Sessions.login_nonce_ok(
            ctx.request.cookies.get(LOGIN_COOKIE), ctx.field("login_csrf")
        ):
            self._log.warning("console.login_refused", reason="csrf")
            return self._login_page(
                ctx, next_url, 403, "The sign-in form expired or came from elsewhere: try again."
            )
        if not self.sessions.token_matches(ctx.field("token").strip(), self._token):
            self._log.warning("console.login_failed")
            return self._login_page(ctx, next_url, 401, "That is not the admin token.")
        cookie, session = self.sessions.issue()
        self._log.info("console.signed_in", expires=session.expires.isoformat())
        response = web.HTTPSeeOther(next_url)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(self.sessions.lifetime.total_seconds()),
            path=COOKIE_PATH,
            httponly=True,
            samesite="Strict",
            secure=ctx.request.secure,
        )
        response.del_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
        raise response

    async def logout(self, ctx: Ctx) -> web.StreamResponse:
        assert ctx.session is not None
        self.sessions.revoke(ctx.session)
        self._log.info("console.signed_out")
        response = web.HTTPSeeOther("/console/login?done=signed-out")
        response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        raise response

    # -- events ---------------------------------------------------------------------------
    def _event_query(self, ctx: Ctx) -> tuple[str, dict[str, str]]:
        query = ctx.request.query
        q = query.get("q", "").strip()
        filters = {
            key: query[key].strip()
            for key in ("source", "type", "outcome", "since", "until", "limit", "cursor")
            if query.get(key, "").strip()
        }
        return q, filters

    async def events(self, ctx: Ctx) -> web.StreamResponse:
        q, filters = self._event_query(ctx)
        try:
            flt = history.event_filter({**filters, "object": q})
        except history.BadQuery as exc:
            raise ConsoleError(400, str(exc)) from None
        page = await history.search(self._store, flt)
        views = [event_view(r, page.objects.get(r.id, ())) for r in page.events]
        objects: list[ObjectRef] = []
        deliveries: list[InboxRow] = []
        if q:
            objects = (
                [ObjectRef(flt.object_platform, flt.object_kind, flt.object_id)]  # type: ignore[arg-type]
                if flt.object_platform is not None and flt.object_id is not None
                else await self._store.find_objects(flt.object_id or q)
            )
            for source in PLATFORMS:
                found = await self._store.find_inbox(source, DeliveryId(q))
                if found is not None:
                    deliveries.append(found)
        base = {k: v for k, v in filters.items() if k != "cursor"} | ({"q": q} if q else {})
        next_url = (
            "/console/events?" + urlencode(base | {"cursor": str(page.next_cursor)})
            if page.next_cursor is not None
            else None
        )
        tail = {k: v for k, v in base.items() if k not in ("limit", "until")}
        return self._render(
            "events.html",
            ctx,
            title="Events",
            active="events",
            q=q,
            filters={
                key: filters.get(key, "") for key in ("source", "type", "outcome", "since", "until")
            },
            sources=PLATFORMS,
            outcomes=EVENT_OUTCOMES,
            events=views,
            objects=objects,
            deliveries=deliveries,
            newest_id=views[0].row.id if views else 0,
            live="cursor" not in filters and "until" not in filters,
            tail_query=urlencode(tail),
            next_url=next_url,
        )

    async def events_tail(self, ctx: Ctx) -> web.StreamResponse:
        """Rows of the events newer than `after` (the live tail's fragment)."""
        q, filters = self._event_query(ctx)
        after = _int(ctx.request.query.get("after", "0"), "after", 0)
        try:
            flt = history.event_filter({**filters, "object": q})
        except history.BadQuery as exc:
            raise ConsoleError(400, str(exc)) from None
        page = await history.search(self._store, flt)
        views = [event_view(r, page.objects.get(r.id, ())) for r in page.events if r.id > after]
        return self._render("_event_rows.html", ctx, events=views, empty=False)

    async def event(self, ctx: Ctx) -> web.StreamResponse:
        inbox_id = InboxId(_int(ctx.request.match_info["id"], "event ID"))
        row = await self._store.get_inbox(inbox_id)
        if row is None:
            raise ConsoleError(404, f"no event {inbox_id} (it may have been pruned)")
        objects = (await self._store.event_objects([row.id])).get(row.id, [])
        actions = await self._store.actions_for_inbox(row.id)
        try:
            body: Any = json.loads(row.body)
        except ValueError:
            body = row.body.decode("utf-8", "replace")
        return self._render(
            "event.html",
            ctx,
            title=f"Event {row.id}: {row.event_type}",
            active="events",
            event=event_view(row, objects, actions),
            body=body,
        )

    async def object_timeline(self, ctx: Ctx) -> web.StreamResponse:
        info = ctx.request.match_info
        ref = _ref(f"{info['platform']}:{info['kind']}:{info['id']}", "object")
        timeline = await history.timeline(self._store, ref)
        if timeline.empty:
            raise ConsoleError(404, f"nothing is known about {ref}: no event, action or link")
        entries: list[tuple[datetime, int, dict[str, Any]]] = []
        for row in timeline.events:
            view = event_view(row, timeline.objects_named.get(row.id, ()))
            entries.append(
                (row.received_at, 0, {"kind": "event", "side": row.source, "event": view})
            )
        for action in timeline.actions:
            entries.append(
                (
                    action.created_at,
                    1,
                    {"kind": "action", "side": action.action.platform, "action": action},
                )
            )
        for link in timeline.links:
            entries.append((link.created_at, 2, {"kind": "link", "side": "both", "link": link}))
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        sides = {
            platform: [o for o in timeline.objects if o.platform == platform]
            for platform in PLATFORMS
        }
        return self._render(
            "object.html",
            ctx,
            title=f"Timeline of {ref}",
            active="events",
            ref=ref,
            timeline=timeline,
            sides=sides,
            entries=[entry for _, _, entry in entries],
        )

    # -- dead letters and the outbox ------------------------------------------------------
    async def dead_letters(self, ctx: Ctx) -> web.StreamResponse:
        offset = _int(ctx.request.query.get("offset", "0"), "offset", 0, 10**9)
        rows = await self._store.list_outbox(["dead"], PAGE, offset)
        return self._render(
            "dead_letters.html",
            ctx,
            title="Dead letters",
            active="dead",
            actions=rows,
            offset=offset,
            page=PAGE,
        )

    async def _dead_letter(self, ctx: Ctx) -> tuple[OutboxRow, str]:
        op = ctx.request.match_info["op"]
        if op not in ("replay", "drop"):
            raise ConsoleError(404, f"no such operation on a dead letter: {op[:40]!r}")
        action_id = ActionId(_int(ctx.request.match_info["id"], "action ID"))
        row = await self._store.get_action(action_id)
        if row is None or row.state != "dead":
            state = f" (it is {row.state})" if row is not None else ""
            raise ConsoleError(404, f"action {action_id} is not a dead letter{state}")
        return row, op

    async def confirm_dead_letter(self, ctx: Ctx) -> web.StreamResponse:
        row, op = await self._dead_letter(ctx)
        return self._render(
            "confirm.html",
            ctx,
            title=f"{op.capitalize()} dead letter {row.id}?",
            active="dead",
            action_url=f"/console/dead-letters/{row.id}/{op}",
            verb=op.capitalize(),
            what=(
                "It goes back to the outbox, due now, with a fresh set of attempts."
                if op == "replay"
                else "It is marked skipped and will not be tried again."
            ),
            action=row,
            link=None,
            cancel_url="/console/dead-letters",
            fields={},
        )

    async def act_on_dead_letter(self, ctx: Ctx) -> web.StreamResponse:
        row, op = await self._dead_letter(ctx)
        if op == "replay":
            done = await self._store.replay_action(row.id)
        else:
            done = await self._store.drop_action(row.id)
        if not done:
            raise ConsoleError(404, f"action {row.id} is not a dead letter any more")
        event = "dlq.replayed" if op == "replay" else "dlq.dropped"
        self._log.info(event, action_id=row.id, by="console")
        if op == "replay":
            self._wake()
        result = "replayed" if op == "replay" else "dropped"
        raise web.HTTPSeeOther(f"/console/dead-letters?done={result}&id={row.id}")

    async def outbox(self, ctx: Ctx) -> web.StreamResponse:
        state = ctx.request.query.get("state", "pending")
        if state not in OUTBOX_STATES:
            raise ConsoleError(400, f"state must be one of {', '.join(OUTBOX_STATES)}")
        offset = _int(ctx.request.query.get("offset", "0"), "offset", 0, 10**9)
        counts = await self._store.counts()
        rows = await self._store.list_outbox([state], PAGE, offset)
        return self._render(
            "outbox.html",
            ctx,
            title="Outbox",
            active="outbox",
            state=state,
            states=OUTBOX_STATES,
            counts=counts.outbox_by_state,
            actions=rows,
            offset=offset,
            page=PAGE,
        )

    # -- links ----------------------------------------------------------------------------
    async def links(self, ctx: Ctx) -> web.StreamResponse:
        q = ctx.request.query.get("q", "").strip()
        offset = _int(ctx.request.query.get("offset", "0"), "offset", 0, 10**9)
        if q:
            try:
                platform, kind, object_id = history.parse_object(q)
            except history.BadQuery as exc:
                raise ConsoleError(400, str(exc)) from None
            flt = LinkFilter(platform, kind, object_id, PAGE, offset)
        else:
            flt = LinkFilter(limit=PAGE, offset=offset)
        rows = await self._store.list_links(flt)
        return self._render(
            "links.html",
            ctx,
            title="Links",
            active="links",
            q=q,
            links=rows,
            offset=offset,
            page=PAGE,
        )

    def _link_pair(self, a_raw: str, b_raw: str) -> tuple[ObjectRef, ObjectRef]:
        a, b = _ref(a_raw.strip(), "first object"), _ref(b_raw.strip(), "second object")
        if a == b:
            raise ConsoleError(400, "a link needs two different objects")
        return a, b

    async def confirm_link(self, ctx: Ctx) -> web.StreamResponse:
        query = ctx.request.query
        op = query.get("op", "")
        if op not in ("add", "remove"):
            raise ConsoleError(400, "op must be add or remove")
        a, b = self._link_pair(query.get("a", ""), query.get("b", ""))
        return self._render(
            "confirm.html",
            ctx,
            title=f"{'Link' if op == 'add' else 'Unlink'} these objects?",
            active="links",
            action_url=f"/console/links/{op}",
            verb="Add link" if op == "add" else "Remove link",
            what=(
                "The rules will treat them as belonging together (created by: operator)."
                if op == "add"
                else "The rules will no longer reach one from the other."
            ),
            action=None,
            link=(a, b),
            cancel_url="/console/links?" + urlencode({"q": str(a)}),
            fields={"a": str(a), "b": str(b)},
        )

    async def change_link(self, ctx: Ctx) -> web.StreamResponse:
        op = ctx.request.match_info["op"]
        if op not in ("add", "remove"):
            raise ConsoleError(404, f"no such operation on links: {op[:40]!r}")
        a, b = self._link_pair(ctx.field("a"), ctx.field("b"))
        if op == "add":
            created = await self._store.add_link(a, b, BY_OPERATOR)
            self._log.info("link.added", a=str(a), b=str(b), created=created, by="console")
            done = "added" if created else "exists"
        else:
            if not await self._store.remove_link(a, b):
                raise ConsoleError(404, f"no link between {a} and {b}")
            self._log.info("link.removed", a=str(a), b=str(b), by="console")
            done = "removed"
        raise web.HTTPSeeOther("/console/links?" + urlencode({"q": str(a), "done": done}))

    # -- rules ----------------------------------------------------------------------------
    async def rules(self, ctx: Ctx) -> web.StreamResponse:
        return await self._rules_page(ctx, 200)

    async def _rules_page(
        self,
        ctx: Ctx,
        status: int,
        *,
        source: str = "rootly",
        body: str = "",
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> web.Response:
        rules = self._rules()
        stats = self._rule_stats.snapshot(self._clock())
        dead = await self._store.dead_letters_by_rule()
        return self._render(
            "rules.html",
            ctx,
            status,
            title="Rules in force",
            active="rules",
            rules=rules.rules,
            path=rules.source_path,
            stats=stats,
            dead=dead,
            sources=PLATFORMS,
            source=source,
            body=body,
            result=result,
            summary=history.compact_trace(result["trace"]) if result else None,
            error=error,
        )

    async def dry_run(self, ctx: Ctx) -> web.StreamResponse:
        source_raw = ctx.field("source")
        text = ctx.field("body")
        if source_raw not in PLATFORMS:
            raise ConsoleError(400, f"source must be one of {', '.join(PLATFORMS)}")
        source: Platform = "rootly" if source_raw == "rootly" else "incident_io"
        try:
            event = parse_event(source, text.encode(), "console", cli=False)
        except PayloadError as exc:
            return await self._rules_page(
                ctx,
                400,
                source=source,
                body=text,
                error=f"Not a {PLATFORM_LABELS[source]} webhook: {exc}",
            )
        links = await links_around(self._store, event)
        result = explanation(self._rules(), event, links, self._clock())
        return await self._rules_page(ctx, 200, source=source, body=text, result=result)

    # -- health ---------------------------------------------------------------------------
    async def health(self, ctx: Ctx) -> web.StreamResponse:
        probe = self._health
        store_error = None
        try:
            await self._store.ping()
            counts = await self._store.counts()
        except StoreError as exc:
            store_error, counts = str(exc), None
        return self._render(
            "health.html",
            ctx,
            title="Health",
            active="health",
            backend=self._store.backend,
            schema_version=probe.schema_version(),
            store_error=store_error,
            counts=counts,
            instance=probe.instance,
            leader=probe.is_leader(),
            accepting=probe.accepting(),
            rules_loaded=probe.rules_loaded(),
            waits=self._rate_limit_waits(),
            rate_limited=self._samples(self._metrics.actions, "_total", "outcome", "rate_limited"),
            rejections=self._rejections(),
        )

    def _rate_limit_waits(self) -> list[dict[str, Any]]:
        """Per platform: how many requests waited for the client-side limiter, for how
        long in all."""
        out: dict[str, dict[str, Any]] = {}
        for metric in self._metrics.ratelimit_wait.collect():
            for sample in metric.samples:
                platform = sample.labels.get("platform", "")
                entry = out.setdefault(platform, {"platform": platform, "count": 0, "seconds": 0.0})
                if sample.name.endswith("_count"):
                    entry["count"] = int(sample.value)
                elif sample.name.endswith("_sum"):
                    entry["seconds"] = round(sample.value, 3)
        return sorted(out.values(), key=lambda e: e["platform"])

    def _samples(self, family: Any, suffix: str, label: str, value: str) -> list[dict[str, Any]]:
        rows = []
        for metric in family.collect():
            for sample in metric.samples:
                if (
                    sample.name.endswith(suffix)
                    and sample.labels.get(label) == value
                    and sample.value
                ):
                    rows.append({**sample.labels, "value": int(sample.value)})
        return rows

    def _rejections(self) -> list[dict[str, Any]]:
        rows = []
        for metric in self._metrics.webhook_rejections.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    rows.append({**sample.labels, "value": int(sample.value)})
        return sorted(rows, key=lambda r: (r["source"], r["reason"]))


def ctx_session(request: web.Request, console: Console) -> Session | None:
    """The session of a request that failed part-way (for the error page's navigation)."""
    return console.sessions.check(request.cookies.get(SESSION_COOKIE))


_STATUS_NAMES: Final = {
    400: "Bad request",
    401: "Not signed in",
    403: "Refused",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    415: "Unsupported form",
    500: "Internal error",
    503: "Unavailable",
}
