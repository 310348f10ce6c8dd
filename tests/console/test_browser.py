"""The console in a real browser: Playwright (PyPI `playwright`) driving Debian's Chromium
(`/usr/bin/chromium`, or `BRIDGE_TEST_CHROMIUM`), never a browser Playwright downloads.

The tests skip with the reason when the browser cannot be used, except under `CI=true`,
where they fail. Every page they visit is also saved as a PNG in the test's directory and,
when `BRIDGE_CONSOLE_SCREENSHOTS` names a directory, there too (that is how the pictures
in docs/console/ are made: `BRIDGE_CONSOLE_SCREENSHOTS=docs/console make test`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from aiohttp import web

from bridge.events import ObjectRef
from bridge.sandbox.stack import SandboxStack
from bridge.store.base import EventFilter
from tests.console.conftest import TOKEN
from tests.reliability.harness import escalations_by_key

MISSING: str | None = None
try:
    from playwright.async_api import Browser, Error, Page, async_playwright, expect
except ImportError as exc:  # reported by the `browser` fixture
    MISSING = f"the Python package playwright is not installed: {exc}"

CHROMIUM = os.environ.get("BRIDGE_TEST_CHROMIUM", "/usr/bin/chromium")
# As on this machine's other browser tests: headless, and no calls home (the network is
# closed: without these flags Chromium's background requests are refused many at a time).
ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
] + (["--no-sandbox"] if os.geteuid() == 0 else [])
WAIT_MS = 15_000


def browser_unavailable(reason: str) -> NoReturn:
    message = f"Chromium cannot be used for the browser tests ({reason})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if MISSING is not None:
        browser_unavailable(MISSING)
    if not os.access(CHROMIUM, os.X_OK):
        browser_unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    async with async_playwright() as playwright:
        try:
            launched = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=ARGS
            )
        except Error as exc:
            browser_unavailable(str(exc).splitlines()[0])
        try:
            yield launched
        finally:
            await launched.close()


def publish(shot: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, directory / shot.name)


class Pages:
    """A browser tab on the console that records script errors and takes screenshots."""

    def __init__(self, page: Page, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )

    async def open(self, path: str) -> None:
        await self.page.goto(self.base + path)

    async def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        published = os.environ.get("BRIDGE_CONSOLE_SCREENSHOTS")
        if published:
            await asyncio.to_thread(publish, path, Path(published))

    async def sign_in(self) -> None:
        """With the keyboard only: the token field has the focus, Enter submits."""
        await self.open("/console/events")
        await expect(self.page).to_have_url(self.base + "/console/login?next=/console/events")
        await expect(self.page.get_by_label("Admin token")).to_be_focused()
        await self.page.keyboard.type(TOKEN)
        await self.page.keyboard.press("Enter")
        await expect(self.page).to_have_url(self.base + "/console/events")


async def tab(browser: Browser, stack: SandboxStack, shots: Path) -> Pages:
    """A fresh browser context (no cookies) with a tab on the console."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    return Pages(await context.new_page(), stack.url, shots)


async def until(condition: Any, what: str, timeout: float = 20.0) -> None:
    """Poll `condition` (async, no arguments) until true, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def unlabelled_controls(page: Page) -> list[str]:
    """Form controls a screen reader could not name (no label, no aria-label)."""
    found: list[str] = await page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(el => el.type !== 'hidden')
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !(el.tagName === 'BUTTON' && el.textContent.trim()))
            .map(el => el.outerHTML)"""
    )
    return found


async def test_sign_in_with_the_keyboard_and_skip_to_the_content(
    browser: Browser, stack: SandboxStack, tmp_path: Path
) -> None:
    """An operator signs in with the keyboard alone (the token field has the focus, Enter
    submits); the first Tab reaches "Skip to content", which moves the focus to the main
    landmark; every form control on the page has a label; no script error."""
    pages = await tab(browser, stack, tmp_path)
    await pages.open("/console/login")
    await pages.shot("login")
    await pages.sign_in()
    page = pages.page
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("main")).to_be_focused()
    assert await page.get_by_role("navigation", name="Console").count() == 1
    assert await page.get_by_role("main").count() == 1
    assert await unlabelled_controls(page) == []
    assert pages.errors == []


async def test_searching_a_rootly_id_shows_the_escalation_and_its_cancel(
    browser: Browser, stack: SandboxStack, tmp_path: Path
) -> None:
    """After a Rootly incident paged incident.io and was cancelled, the operator pastes the
    Rootly incident's ID into the search box: its events are listed, and its timeline shows
    both sides: the escalation created in incident.io and its cancel, each done."""
    rootly = stack.sandbox.rootly
    incident = await rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
    (escalation,) = stack.sandbox.incident_io.state()["escalations"]
    await rootly.cancel_incident(incident["id"])
    await stack.settle()

    pages = await tab(browser, stack, tmp_path)
    await pages.sign_in()
    page = pages.page
    await page.get_by_label("Find an ID").fill(incident["id"])
    await page.get_by_label("Find an ID").press("Enter")
    rows = page.locator("#event-rows tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("incident.cancelled")
    await expect(rows.nth(1)).to_contain_text("incident.created")
    await page.get_by_role("link", name="its timeline on both platforms").click()
    ref = ObjectRef("rootly", "incident", incident["id"])
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Timeline of {ref}")
    timeline = page.locator("table.timeline")
    incident_io_side = timeline.locator("tbody td:nth-child(3)")
    await expect(incident_io_side.filter(has_text="incident_io.create_escalation")).to_have_count(1)
    cancel = incident_io_side.filter(has_text="incident_io.cancel_escalation")
    await expect(cancel).to_have_count(1)
    await expect(cancel).to_contain_text(f"incident_io:escalation:{escalation['id']}")
    await expect(cancel).to_contain_text("done")
    await expect(page.locator(".sides")).to_contain_text(
        f"incident_io:escalation:{escalation['id']}"
    )
    assert pages.errors == []


async def test_replaying_a_dead_letter_through_the_confirmation(
    browser: Browser, stack: SandboxStack, tmp_path: Path
) -> None:
    """incident.io answers 500 until the page it should open is dead-lettered; once it
    answers again, the operator replays the dead letter (through its confirmation page):
    the escalation is created, and the action is done after its attempts before and after
    the replay."""
    iio = stack.sandbox.incident_io
    iio.faults.error_rate = 1.0
    incident = await stack.sandbox.rootly.create_incident("Payments are down", severity="sev1")
    assert stack.bridge is not None
    store = stack.bridge.store

    async def dead_letter() -> bool:
        return bool(await store.list_outbox(["dead"], 10))

    await until(dead_letter, "the escalation's creation to be dead-lettered")
    (letter,) = await store.list_outbox(["dead"], 10)
    iio.faults.error_rate = 0.0

    pages = await tab(browser, stack, tmp_path)
    await pages.sign_in()
    page = pages.page
    await page.get_by_role("link", name="Dead letters").click()
    await page.get_by_role("link", name=f"Replay {letter.id}…").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Replay dead letter {letter.id}?"
    )
    await page.get_by_role("button", name="Replay").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Dead letter {letter.id} replayed")

    async def escalated() -> bool:
        row = await store.get_action(letter.id)
        return row is not None and row.state == "done"

    await until(escalated, "the replayed action to be done")
    row = await store.get_action(letter.id)
    assert row is not None
    assert (row.attempts, row.attempts_before_replay, row.last_error) == (3, 2, None)
    assert list(escalations_by_key(stack.sandbox)) == [f"rootly-incident-{incident['id']}"]
    assert pages.errors == []


async def test_refused_without_the_cookie_and_on_a_cross_site_post(
    browser: Browser, stack: SandboxStack, tmp_path: Path
) -> None:
    """Without the session cookie a page leads to the sign-in form; a signed-in operator
    who opens another site whose form posts to the console is refused (the cookie is
    SameSite=Strict and the form has no CSRF token), and so is a script on the console's
    own origin that posts without the token; no link is added either way."""
    pages = await tab(browser, stack, tmp_path)
    await pages.open("/console/dead-letters")
    await expect(pages.page).to_have_url(stack.url + "/console/login?next=/console/dead-letters")

    target = stack.url + "/console/links/add"
    attacker = web.Application()

    async def lure(request: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text=f"""<!doctype html><title>Cute cats</title>
            <form method="post" action="{target}">
              <input type="hidden" name="a" value="rootly:incident:evil">
              <input type="hidden" name="b" value="incident_io:escalation:evil">
              <button type="submit">See the cats</button>
            </form>""",
        )

    attacker.router.add_get("/", lure)
    runner = web.AppRunner(attacker, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await pages.sign_in()
        page = pages.page
        await page.goto(f"http://localhost:{port}/")
        await page.get_by_role("button", name="See the cats").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("403: Refused")
    finally:
        await runner.cleanup()
    await pages.open("/console/links")
    status = await page.evaluate(
        """async (target) => (await fetch(target, {method: 'POST', body: new URLSearchParams(
            {a: 'rootly:incident:evil', b: 'incident_io:alert:x'})})).status""",
        target,
    )
    assert status == 403
    assert stack.bridge is not None
    assert await stack.bridge.store.linked([ObjectRef.parse("rootly:incident:evil")]) == []


async def test_every_page_in_the_browser_with_the_live_tail(
    browser: Browser, stack: SandboxStack, tmp_path: Path
) -> None:
    """After the main flows (an incident paged and cancelled, an alert acknowledged in
    incident.io, a page dead-lettered, a cancellation healed late by the link checker), every
    page renders in the browser without a script error and with labelled controls, and is
    saved as a PNG; the live tail adds a new event at the top without a reload."""
    await scenario(stack)
    pages = await tab(browser, stack, tmp_path)
    await pages.sign_in()
    page = pages.page
    assert stack.bridge is not None
    store = stack.bridge.store
    cancellations = await store.search_events(EventFilter(event_type="incident.cancelled"))
    late = [row for row in cancellations if row.delivery_id.startswith("check:")]
    assert late and late[0].trace is not None
    ref = ObjectRef.parse(late[0].trace["subject"])
    (letter,) = await store.list_outbox(["dead"], 10)
    visits = [
        ("events", "/console/events"),
        ("timeline", f"/console/objects/{ref.platform}/{ref.kind}/{ref.id}"),
        ("event", f"/console/events/{late[0].id}"),
        ("dead-letters", "/console/dead-letters"),
        ("replay-confirm", f"/console/dead-letters/{letter.id}/replay"),
        ("outbox", "/console/outbox?state=done"),
        ("links", "/console/links"),
        ("health", "/console/health"),
    ]
    for name, path in visits:
        await pages.open(path)
        assert await unlabelled_controls(page) == [], name
        await pages.shot(name)
    await pages.open(f"/console/objects/{ref.platform}/{ref.kind}/{ref.id}")
    await expect(page.locator(".late")).to_contain_text("Applied late because the link checker")

    await pages.open("/console/rules")
    body = (
        '{"event": {"id": "dry-1", "type": "incident.cancelled", "issued_at": null},'
        f' "data": {{"id": "{ref.id}", "status": "cancelled"}}}}'
    )
    await page.get_by_label("Webhook body (JSON)").fill(body)
    await page.get_by_role("button", name="Explain").click()
    await expect(page.locator(".result")).to_contain_text("rootly-incident-cancelled")
    await pages.shot("rules")

    await pages.open("/console/events")
    await page.get_by_role("button", name="Live tail").click()
    await expect(page.get_by_role("button", name="Live tail")).to_have_attribute(
        "aria-pressed", "true"
    )
    fresh = await stack.sandbox.rootly.create_incident("Search is slow", severity="sev3")
    tailed = page.locator("#event-rows tr", has_text=f"rootly:incident:{fresh['id']}")
    await expect(tailed.filter(has_text="incident.created")).to_have_count(1)
    await expect(page.locator("#tail-status")).to_contain_text("new event")
    assert pages.errors == []


async def scenario(stack: SandboxStack) -> None:
    """The flows the screenshots show."""
    rootly, iio = stack.sandbox.rootly, stack.sandbox.incident_io
    assert stack.bridge is not None
    first = await rootly.create_incident("Checkout is down", severity="sev1")
    await stack.settle()
    await rootly.cancel_incident(first["id"])
    await stack.settle()

    await rootly.create_alert("Error rate above 5%")
    await stack.settle()
    escalation = next(e for e in iio.state()["escalations"] if e["status"] == "triggered")
    await iio.ack_escalation(escalation["id"], user="Alice")
    await stack.settle()

    iio.faults.error_rate = 1.0
    await rootly.create_incident("Payments are down", severity="sev1")
    store = stack.bridge.store

    async def dead_letter() -> bool:
        return bool(await store.list_outbox(["dead"], 10))

    await until(dead_letter, "a dead letter")
    iio.faults.error_rate = 0.0
    await stack.settle()

    late = await rootly.create_incident("Login fails", severity="sev2")
    await stack.settle()
    await stack.bridge.checker.run_once()
    rootly.faults.webhook_drop_rate = 1.0
    await rootly.cancel_incident(late["id"])
    rootly.faults.webhook_drop_rate = 0.0
    await stack.settle()
    stack.advance_checks()
    await stack.bridge.checker.run_once()
    await stack.settle()
