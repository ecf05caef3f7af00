"""Why HTTP/2 matters for SSE and long polling: Chromium opens at most six HTTP/1.1
connections per origin, so of 12 pages of one origin each holding an SSE stream through
rtserve.js only six get a publication; over HTTP/2 all 12 streams (SSE, or waiting long polls)
share one connection and every page gets it at once; Chromium opens rtserve.js's /rt/ws on
streams of that connection too (RFC 8441). Marked slow (about 40 s with Chromium's
start)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtserve import App
from rtserve.app.request import Request
from rtserve.app.response import Response
from rtserve.server.h2_tunnel import StreamTransport
from rtserve.server.settings import HTTP2Settings, TLSSettings
from rtserve.testing import ThreadedServer
from tests.support.tls import dev_tls
from tests.support.waiting import until

PAGES = 12
BROWSER_LIMIT = 6  # Chromium's HTTP/1.1 connections per origin
PAGE = (Path(__file__).parent / "browser_pages" / "http2_pages.html").read_text()

pytestmark = pytest.mark.slow


def make_app() -> App:
    app = App()
    app.channel("news", history=10)

    @app.route("/")
    def page(request: Request) -> Response:
        return Response(PAGE, content_type="text/html; charset=utf-8")

    return app


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSSettings:
    return dev_tls(tmp_path_factory.mktemp("h2browser"))


@pytest.fixture
def pages(browser: Any) -> Iterator[list[Any]]:
    """12 pages of one browser context (one connection pool, as tabs of one profile)."""
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(10_000)
    try:
        yield [context.new_page() for _ in range(PAGES)]
    finally:
        context.close()


def received(pages: list[Any]) -> int:
    return sum(1 for page in pages if page.evaluate("window.got.length") > 0)


def run(pages: list[Any], server: ThreadedServer[App], transport: str) -> None:
    """Load every page (short requests), then start each one's stream or poll."""
    for page in pages:
        page.goto(f"https://localhost:{server.port}/")
        page.wait_for_function("typeof window.start === 'function'")
    for page in pages:
        page.evaluate(f"window.start({transport!r})")


@pytest.mark.parametrize("transport", ["sse", "poll", "websocket"])
def test_twelve_pages_over_http2_all_receive(
    pages: list[Any], tls: TLSSettings, transport: str
) -> None:
    with ThreadedServer(make_app(), tls=tls, access_log=False) as server:
        hub = server.app.hub
        run(pages, server, transport)
        until(lambda: hub.subscriber_count("news") == PAGES, 15, "every page subscribed")
        server.call(server.app.publish, "news", "to all")
        until(lambda: received(pages) == PAGES, 10, "every page received the publication")
        state = server.server.state if server.server is not None else None
        assert state is not None and state.stats.h2_connections_total >= 1
        if transport == "websocket":  # RFC 8441: each /rt/ws rides a stream of the page's
            assert len(state.websockets) == PAGES
            assert all(isinstance(ws.transport, StreamTransport) for ws in state.websockets)


def test_twelve_pages_over_http11_stall_at_six(pages: list[Any], tls: TLSSettings) -> None:
    # SSE only: a long poll gives its connection back once answered, so over HTTP/1.1 the
    # other pages get the publication late (from history) or not at all, by timing.
    transport = "sse"
    http11 = HTTP2Settings(enabled=False)
    with ThreadedServer(make_app(), tls=tls, http2=http11, access_log=False) as server:
        hub = server.app.hub
        run(pages, server, transport)
        until(lambda: hub.subscriber_count("news") >= BROWSER_LIMIT, 15, "six pages subscribed")
        server.call(server.app.publish, "news", "to all")
        until(lambda: received(pages) >= BROWSER_LIMIT, 10, "six pages received it")
        # The other six wait for a connection the first six hold, and an SSE stream never
        # gives its connection back: a second later still only six have it.
        time.sleep(1.0)
        assert received(pages) == BROWSER_LIMIT
        assert server.server is not None and server.server.state is not None
        assert server.server.state.stats.h2_connections_total == 0
