"""WebSocket in a real browser: headless Chromium (Debian's) driven by Playwright.

rtserve serves tests/browser_pages/websocket.html, which talks to the WebSocket routes with the
browser's own WebSocket API and writes what happens into the page; the tests read the page's text.
The `browser` and `page` fixtures (tests/conftest.py) launch Chromium with a fresh temporary
profile. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from rtserve import App, WebSocketHandler
from rtserve.testing import ThreadedServer

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import Browser, Page, expect

PAGE = Path(__file__).parent / "browser_pages" / "websocket.html"
TIMEOUT_MS = 10_000


class Seen:
    """What the server saw of one connection, tagged by the page with `?tag=`."""

    def __init__(self) -> None:
        self.deflate: bool | None = None
        self.received: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None
        self.closed_event = threading.Event()


def make_app(seen: dict[str, Seen]) -> App:
    app = App()
    app.static_file("/", PAGE)

    class Recorder(WebSocketHandler):
        def on_open(self) -> None:
            self.seen = seen.setdefault(self.request.query.get("tag") or "", Seen())
            self.seen.deflate = self.connection.deflate is not None

        def on_close(self, code: int, reason: str) -> None:
            self.seen.closed = (code, reason)
            self.seen.closed_event.set()

    @app.websocket("/echo")
    class Echo(Recorder):
        def on_message(self, message: str | bytes) -> None:
            self.seen.received.append(message)
            self.send(message)

    @app.websocket("/closer")
    class Closer(Recorder):
        def on_message(self, message: str | bytes) -> None:
            self.seen.received.append(message)
            self.close(4000, "bye now")

    return app


@pytest.fixture(scope="module")
def seen() -> dict[str, Seen]:
    return {}


@pytest.fixture(scope="module")
def server(seen: dict[str, Seen]) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(seen), access_log=False) as srv:
        yield srv


def open_page(page: Page, base_url: str, ws: str) -> None:
    """Load the test page from `base_url`, connecting to `ws` (a path there, or a ws:// URL)."""
    response = page.goto(f"{base_url}/?{urlencode({'ws': ws})}")
    assert response is not None and response.status == 200


def expect_open(page: Page) -> None:
    expect(page.locator("#status")).to_have_text("open", timeout=TIMEOUT_MS)


def expect_log(page: Page, *lines: str) -> None:
    expect(page.locator("#log li")).to_have_text(list(lines), timeout=TIMEOUT_MS)


def test_text_and_binary_echo(page: Page, server: ThreadedServer, seen: dict[str, Seen]) -> None:
    open_page(page, server.url, "/echo?tag=echo")
    expect_open(page)
    page.fill("#message", "hello")
    page.click("#send-text")
    page.fill("#message", "héllo")
    page.click("#send-bytes")  # the input's UTF-8 bytes, as an ArrayBuffer
    page.evaluate("sendBytes([0, 1, 128, 255])")
    page.evaluate("sendText('')")
    expect_log(
        page,
        "open",
        'received text "hello" (same as sent)',
        "received binary [68 c3 a9 6c 6c 6f] (same as sent)",
        "received binary [00 01 80 ff] (same as sent)",
        'received text "" (same as sent)',
    )
    assert seen["echo"].received == ["hello", "héllo".encode(), b"\x00\x01\x80\xff", ""]
    page.evaluate("closeSocket(4321, 'page done')")
    # the browser reports the server's close frame, which echoes the code (not the reason)
    expect(page.locator("#log li").last).to_have_text('closed 4321 "" clean', timeout=TIMEOUT_MS)
    assert seen["echo"].closed_event.wait(10)
    assert seen["echo"].closed == (4321, "page done")


def test_large_message_round_trip_compressed(
    page: Page, server: ThreadedServer, seen: dict[str, Seen]
) -> None:
    rng = random.Random(6455)
    big = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789 éß€", k=200_000))
    open_page(page, server.url, "/echo?tag=large")
    expect_open(page)
    page.evaluate("text => sendText(text)", big)
    expect_log(page, "open", "received text of 200000 chars (same as sent)")
    assert seen["large"].deflate is True  # Chromium offered permessage-deflate; we accepted
    assert seen["large"].received == [big]


def test_server_close_code_and_reason_reach_onclose(
    page: Page, server: ThreadedServer, seen: dict[str, Seen]
) -> None:
    open_page(page, server.url, "/closer?tag=closer")
    expect_open(page)
    page.evaluate("sendText('close please')")
    expect_log(page, "open", 'closed 4000 "bye now" clean')
    assert seen["closer"].received == ["close please"]


def test_cross_origin_page_is_refused(
    browser: Browser, server: ThreadedServer, seen: dict[str, Seen]
) -> None:
    other_app = App()  # the same page, served from another origin (another port)
    other_app.static_file("/", PAGE)
    with ThreadedServer(other_app, access_log=False) as other:
        context = browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        try:
            same_origin = context.new_page()
            open_page(same_origin, server.url, "/echo?tag=same-origin")
            expect_log(same_origin, "open")

            cross_origin = context.new_page()
            with cross_origin.expect_console_message(
                lambda m: "WebSocket" in m.text, timeout=TIMEOUT_MS
            ) as console:
                open_page(cross_origin, other.url, f"ws://127.0.0.1:{server.port}/echo?tag=cross")
            # what a browser page learns of a refused handshake: an error, then 1006
            expect_log(cross_origin, "error", 'closed 1006 "" not clean')
            # Chromium's console says why
            assert "Unexpected response code: 403" in console.value.text
        finally:
            context.close()
    assert "same-origin" in seen
    assert "cross" not in seen  # refused at the handshake: no handler was made
