"""The chat scaffold in two headless Chromium pages: `rtserve new chat`, `rtserve run`, and a
message sent from one page shows up in the other (through rt.js, /rt/ws and the hooks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.scaffold_server import serve_scaffold
from tests.support.browser import join

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import expect


@pytest.fixture
def chat_url(tmp_path: Path) -> Iterator[str]:
    with serve_scaffold("chat", tmp_path) as server:
        yield server.url


def test_two_pages_chat(browser: Any, chat_url: str) -> None:
    ada = browser.new_context().new_page()
    bob = browser.new_context().new_page()
    join(ada, chat_url, "Ada")
    join(bob, chat_url, "Bob")
    expect(ada.locator("#members")).to_contain_text("Bob")
    ada.fill("#text", "hello from Ada")
    ada.locator("#send").evaluate("form => form.requestSubmit()")
    expect(bob.locator("#messages")).to_contain_text("hello from Ada")
    expect(bob.locator("#messages")).to_contain_text("Ada")
    bob.fill("#text", "hi Ada")
    bob.locator("#send").evaluate("form => form.requestSubmit()")
    expect(ada.locator("#messages")).to_contain_text("hi Ada")
    # a page opened later sees the room's history
    cy = browser.new_context().new_page()
    join(cy, chat_url, "Cy")
    expect(cy.locator("#messages")).to_contain_text("hello from Ada")


# A WebSocket (and an EventSource) that never opens, as behind a proxy that blocks them.
NO_WEBSOCKET = """
window.WebSocket = class {
  constructor() { setTimeout(() => this.onclose && this.onclose({ code: 1006, reason: "" }), 5); }
  send() { throw new Error("not open"); }
  close() {}
};
"""
NO_EVENTSOURCE = """
window.EventSource = class {
  constructor() {
    this.fns = [];
    setTimeout(() => this.fns.forEach((fn) => fn(new Event("error"))), 5);
  }
  addEventListener(type, fn) { if (type === "error") this.fns.push(fn); }
  close() { this.fns = []; }
};
"""


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_chat_without_websocket(browser: Any, chat_url: str, transport: str) -> None:
    """The name (rtserve.js's `data`) reaches on_connect over SSE and polling too."""
    pages = []
    for name in ("Ada", "Bob"):
        page = browser.new_context().new_page()
        page.add_init_script(NO_WEBSOCKET)
        if transport == "poll":
            page.add_init_script(NO_EVENTSOURCE)
        join(page, chat_url, name, timeout=20_000)
        pages.append(page)
    ada, bob = pages
    assert ada.evaluate("rt.transport.name") == transport
    if transport == "sse":  # an SSE stream is in presence (a poll is not)
        expect(bob.locator("#members")).to_contain_text("Ada")
    ada.fill("#text", "hello from Ada")
    ada.locator("#send").evaluate("form => form.requestSubmit()")
    expect(bob.locator("#messages")).to_contain_text("hello from Ada", timeout=10_000)
    expect(bob.locator("#messages")).to_contain_text("Ada")


def test_comings_and_goings_are_shown(browser: Any, chat_url: str) -> None:
    """'Bob joined' and 'Bob left' in the room of the page that was there (join_leave in
    rtserve.yaml), in the order things happened; a newcomer sees the history without them."""
    ada = browser.new_context().new_page()
    join(ada, chat_url, "Ada")
    bob = browser.new_context().new_page()
    join(bob, chat_url, "Bob")
    lines = ada.locator("#messages li")
    expect(lines.last).to_have_text("Bob joined")
    bob.fill("#text", "hi Ada")
    bob.locator("#send").evaluate("form => form.requestSubmit()")
    expect(lines.last).to_contain_text("hi Ada")
    bob.context.close()
    expect(lines.last).to_have_text("Bob left")
    expect(ada.locator("#members")).not_to_contain_text("Bob")
    texts = lines.all_inner_texts()
    assert texts[-3] == "Bob joined" and "hi Ada" in texts[-2], texts
    cy = browser.new_context().new_page()
    join(cy, chat_url, "Cy")
    expect(cy.locator("#messages")).to_contain_text("hi Ada")
    expect(cy.locator("#messages")).not_to_contain_text("joined")
