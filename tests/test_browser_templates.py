"""Every template's page in headless Chromium as a user meets it: on a phone (390 px wide)
nothing runs off the screen, the browser's requests (its /favicon.ico too) all succeed, and the
notifications page says at each step what to do; a todo added on the fastapi page appears on
another one."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.scaffold_server import ScaffoldServer, serve_scaffold

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import expect

TEMPLATES = ["chat", "dashboard", "fastapi", "minimal", "notifications"]
PHONE = {"width": 390, "height": 844}

# Every element with a box that reaches beyond the left or right edge of the viewport.
OVERFLOWING = """() => [...document.querySelectorAll("body *")]
  .map((e) => [e, e.getBoundingClientRect()])
  .filter(([e, box]) => box.width > 0 && (box.left < 0 || box.right > innerWidth + 0.5))
  .map(([e, box]) => `<${e.tagName.toLowerCase()} id=${e.id}> ${box.left}..${box.right}`)
  .concat(document.documentElement.scrollWidth > innerWidth ? ["the page scrolls sideways"] : [])"""


def phone_page(browser: Any) -> Any:
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(10_000)
    return context.new_page()


def assert_fits(page: Any, when: str) -> None:
    assert page.evaluate(OVERFLOWING) == [], f"{when}: beyond the {PHONE['width']} px screen"


@pytest.fixture(params=TEMPLATES)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ScaffoldServer]:
    with serve_scaffold(request.param, tmp_path) as server:
        yield server


def test_page_fits_a_phone_and_every_request_succeeds(browser: Any, served: ScaffoldServer) -> None:
    page = phone_page(browser)
    page.goto(served.url)
    assert_fits(page, "the page as it opens")
    if served.folder.name == "dashboard":  # and with its figures in
        expect(page.locator("[data-field=tick] output")).to_have_text(re.compile(r"\d+"))
        assert_fits(page, "with a sample shown")
    assert served.wait_for_request("/favicon.ico") == 200
    failed = [(target, status) for target, status in served.requests() if status >= 400]
    assert failed == [], failed


def test_chat_on_a_phone(browser: Any, tmp_path: Path) -> None:
    """The room field and Join are on the screen; joined, with a message, it still fits."""
    with serve_scaffold("chat", tmp_path) as served:
        page = phone_page(browser)
        page.goto(served.url)
        page.fill("#name", "Ada")
        join = page.get_by_role("button", name="Join")
        for element in (page.locator("#room"), join):
            expect(element).to_be_in_viewport(ratio=1)
        join.click()
        expect(page.locator("#text")).to_be_enabled()
        page.fill("#text", "a message " + "long " * 40)
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#messages")).to_contain_text("a message")
        expect(page.locator("#members")).to_contain_text("Ada")
        assert_fits(page, "joined, with a message")


def test_notifications_page_says_what_to_do(browser: Any, tmp_path: Path) -> None:
    """Logged out: a hint to log in, and only 'Log in'. Logged in: only 'Log out' (and the
    desktop notifications button), and a curl command that sends one as it is shown."""
    with serve_scaffold("notifications", tmp_path) as served:
        page = phone_page(browser)
        page.goto(served.url)
        log_in = page.get_by_role("button", name="Log in")
        log_out = page.get_by_role("button", name="Log out")
        desktop = page.get_by_role("button", name="Desktop notifications")
        expect(page.locator("main")).to_contain_text("Log in")
        expect(log_in).to_be_visible()
        expect(log_out).to_be_hidden()
        expect(desktop).to_be_hidden()
        assert_fits(page, "logged out")

        page.fill("#user", "alice")
        log_in.click()
        expect(page.locator("#status")).to_have_text("logged in as alice")
        expect(log_out).to_be_visible()
        expect(log_in).to_be_hidden()
        expect(desktop).to_be_visible()  # a new profile has not answered the permission yet
        assert_fits(page, "logged in")

        # The hint's command as a user pastes it, in a shell where RTSERVE_API_KEY is not set.
        command = page.locator("#curl").inner_text()
        env = {k: v for k, v in os.environ.items() if k != "RTSERVE_API_KEY"}
        sent = subprocess.run(
            ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=10
        )
        assert sent.returncode == 0 and '"offset"' in sent.stdout, sent.stdout + sent.stderr
        expect(page.locator("#list")).to_contain_text("Hello alice")

        log_out.click()
        expect(log_in).to_be_visible()
        expect(log_out).to_be_hidden()
        expect(desktop).to_be_hidden()
        expect(page.locator("#list li")).to_have_count(0)
        expect(page.locator("main")).to_contain_text("Log in")


def test_fastapi_todo_reaches_another_page(browser: Any, tmp_path: Path) -> None:
    """A todo added through the FastAPI app on one page arrives on another over the channel."""
    with serve_scaffold("fastapi", tmp_path) as served:
        adding, watching = phone_page(browser), phone_page(browser)
        for page in (adding, watching):
            page.goto(served.url)
            expect(page.locator("#status")).to_have_text("connected")
        adding.fill("#text", "water the plants")
        adding.get_by_role("button", name="Add").click()
        expect(watching.locator("#todos")).to_contain_text("water the plants")
        expect(adding.locator("#todos li")).to_have_count(1)
        assert_fits(watching, "with a todo")
