"""The chat scaffold in headless Chromium across a reload of `rtserve run` (memory broker): the
open pages reconnect and keep their messages, a message after the reload reaches them, and a
page opened afterwards gets the room's history from before the reload."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rtserve.cli.main import main
from tests.support.browser import join
from tests.support.net import free_port
from tests.support.project_run import Run

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import expect

RECONNECTED = "window.states.lastIndexOf('connected') > window.states.indexOf('connected')"


@pytest.fixture
def chat_run(tmp_path: Path) -> Iterator[Run]:
    result = CliRunner().invoke(main, ["new", "chat", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    run = Run(tmp_path / "demo", free_port())
    try:
        run.wait_for(r"ready in \d+ ms", 30)
        yield run
    finally:
        run.stop()


def send(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.locator("#send").evaluate("form => form.requestSubmit()")


def test_open_pages_keep_the_room_through_a_reload(browser: Any, chat_run: Run) -> None:
    url = f"http://127.0.0.1:{chat_run.port}/"
    ada = browser.new_context().new_page()
    bob = browser.new_context().new_page()
    for page, name in ((ada, "Ada"), (bob, "Bob")):
        join(page, url, name)
        page.evaluate("window.states = ['connected']; rt.on('state', (s) => states.push(s))")
    send(ada, "before the reload")
    expect(bob.locator("#messages")).to_contain_text("before the reload")

    app = chat_run.folder / "app.py"
    app.write_text(app.read_text() + "\n# edited\n")
    chat_run.wait_for(r"reloaded in \d+ ms \(app\.py changed\)", 30)
    for page in (ada, bob):  # closed with 1012, connected again to the new worker
        page.wait_for_function(RECONNECTED, timeout=20_000)
        expect(page.locator("#text")).to_be_enabled(timeout=10_000)

    send(bob, "after the reload")
    expect(ada.locator("#messages")).to_contain_text("after the reload", timeout=10_000)
    for page in (ada, bob):  # recovered: the page kept what it had, nothing twice
        expect(page.locator("#messages")).to_contain_text("before the reload")
        assert page.locator("#messages").inner_text().count("before the reload") == 1
    cy = browser.new_context().new_page()
    join(cy, url, "Cy")
    expect(cy.locator("#messages")).to_contain_text("before the reload")
    expect(cy.locator("#messages")).to_contain_text("after the reload")
