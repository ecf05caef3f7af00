"""rtserve.js in headless Chromium with a tag filter, on each transport: the page gets only
its matches, in order, with their tags, across forced disconnects (recovered, never reported
as unrecovered for the offsets the filter skipped), and publishes with tags itself."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtserve import App
from rtserve.testing import ThreadedServer

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import Page, expect

PAGE = Path(__file__).parent / "browser_pages" / "filters.html"
TIMEOUT_MS = 10_000
EU = {"eq": ["region", "eu"]}
REGIONS = ("eu", "us", "ap")


@pytest.fixture(scope="module")
def app() -> App:
    app = App()
    app.static_file("/", PAGE)
    app.channel("ticks:*", history=1000, publish="clients")
    return app


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, access_log=False) as srv:
        yield srv


def kill_connections(server: ThreadedServer, app: App) -> None:
    """Drop every connection the server has (the page's too), without a close handshake."""

    def kill() -> None:
        state = app.server_state
        assert state is not None
        for connection in list(state.connections):
            connection.abort()

    server.call(kill)


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_a_filtered_page_gets_its_matches_across_disconnects(
    page: Page, server: ThreadedServer, app: App, transport: str
) -> None:
    channel = f"ticks:{transport}"
    query = {"channel": channel, "transport": transport, "filter": json.dumps(EU)}
    response = page.goto(f"{server.url}/?{urllib.parse.urlencode(query)}")
    assert response is not None and response.status == 200
    expect(page.locator("#state")).to_have_text("connected", timeout=TIMEOUT_MS)
    page.wait_for_function("sub.position !== null", timeout=TIMEOUT_MS)
    total = 90
    for n in range(1, total + 1):
        tags = {"region": REGIONS[n % 3]}
        assert app.publish_threadsafe(channel, n, tags=tags).result(10).offset == n
        if n in (25, 55):
            kill_connections(server, app)
        time.sleep(0.003)
    wanted = [n for n in range(1, total + 1) if REGIONS[n % 3] == "eu"]
    expect(page.locator("#offsets")).to_have_text(" ".join(map(str, wanted)), timeout=TIMEOUT_MS)
    assert page.evaluate("seen.map((pub) => pub.data)") == wanted
    assert page.evaluate("seen.every((pub) => pub.tags.region === 'eu')")
    assert page.locator("#unrecovered").text_content() == "0"
    position = page.evaluate(f"rt.publish('{channel}', 'mine', {{ tags: {{ region: 'eu' }} }})")
    assert position["offset"] == total + 1
    app.publish_threadsafe(channel, "not for eu", tags={"region": "us"}).result(10)
    expect(page.locator("#offsets")).to_have_text(
        " ".join(map(str, [*wanted, total + 1])), timeout=TIMEOUT_MS
    )
    assert page.evaluate("seen.at(-1).tags") == {"region": "eu"}
    assert page.locator("#transport").text_content() == transport
