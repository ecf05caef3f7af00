"""rtserve.js in headless Chromium: WebSocket, the fallbacks to SSE and long polling, and
recovery across forced disconnects (every offset once, in order).

The server (rtserve.testing.ThreadedServer, 127.0.0.1 only) serves tests/browser_pages/
rtserve_js.html, which loads /rtserve.js from it, subscribes to `?channel=` and writes the
offsets it receives into the page. WebSocket and EventSource are taken away from the page
with init scripts (stubs that fail the way a blocking proxy makes them fail).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtserve import (
    App,
    ChannelContext,
    ChannelError,
    ConnectContext,
    ConnectResult,
    ErrorCode,
)
from rtserve.realtime.settings import ChannelSettings
from rtserve.testing import ThreadedServer
from rtserve.tokens import mint

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import Page, expect

PAGE = Path(__file__).parent / "browser_pages" / "rtserve_js.html"
TIMEOUT_MS = 10_000

# A WebSocket that never opens (as behind a proxy that refuses the upgrade).
NO_WEBSOCKET = """
window.WebSocket = class {
  constructor() {
    setTimeout(() => {
      if (this.onerror) this.onerror(new Event("error"));
      if (this.onclose) this.onclose({ code: 1006, reason: "" });
    }, 5);
  }
  send() { throw new Error("not open"); }
  close() {}
};
"""
# An EventSource that never opens either.
NO_EVENTSOURCE = """
window.EventSource = class {
  constructor() {
    this.listeners = [];
    setTimeout(() => this.listeners.forEach((fn) => fn(new Event("error"))), 5);
  }
  addEventListener(type, fn) { if (type === "error") this.listeners.push(fn); }
  close() { this.listeners = []; }
};
"""
STUBS = {"websocket": [], "sse": [NO_WEBSOCKET], "poll": [NO_WEBSOCKET, NO_EVENTSOURCE]}
SECRET = "a-test-secret-of-32-characters!!"
TOKEN_TTL = 4  # seconds: rtserve.js refreshes a quarter of that before expiry
CONNECT_DATA: list[Any] = []  # what on_connect was given, over every transport
FLAKY_SUBSCRIBES: dict[str, int] = {}  # subscribes tried, per flaky channel


@pytest.fixture(scope="module")
def app() -> App:
    app = App(channels=ChannelSettings(token_secret=SECRET))
    app.static_file("/", PAGE)

    @app.route("/token")
    async def short_lived_token(request: Any) -> str:
        return mint(SECRET, "ann", ttl=TOKEN_TTL)

    app.channel("feed:*", history=1000, history_ttl=600, publish="clients", presence=True)
    app.channel("plain:*", history=10)  # no presence

    def flaky(ctx: ChannelContext) -> None:
        # The first two subscribes of each flaky channel meet a broker failure (115).
        FLAKY_SUBSCRIBES[ctx.channel] = FLAKY_SUBSCRIBES.get(ctx.channel, 0) + 1
        if FLAKY_SUBSCRIBES[ctx.channel] <= 2:
            raise ChannelError(ErrorCode.BROKER_UNAVAILABLE, "broker failed (a test)")

    app.channel("flaky:*", history=100, on_subscribe=flaky)

    @app.on_connect
    def named(ctx: ConnectContext) -> ConnectResult | None:
        # the page's `data` option, over every transport: {"name": ...} names the user
        CONNECT_DATA.append(ctx.data)
        if isinstance(ctx.data, dict) and ctx.data.get("name") == "banned":
            raise ChannelError(ErrorCode.UNAUTHORIZED, "banned")
        if isinstance(ctx.data, dict) and "name" in ctx.data:
            return ConnectResult(user=str(ctx.data["name"]))
        return None

    return app


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, access_log=False) as srv:
        yield srv


def open_page(
    page: Page, server: ThreadedServer, channel: str, transport: str, data: Any = None
) -> None:
    for script in STUBS[transport]:
        page.add_init_script(script)
    query = {"channel": channel}
    if data is not None:
        query["data"] = json.dumps(data)
    response = page.goto(f"{server.url}/?{urllib.parse.urlencode(query)}")
    assert response is not None and response.status == 200
    expect(page.locator("#state")).to_have_text("connected", timeout=TIMEOUT_MS)
    expect(page.locator("#transport")).to_have_text(transport, timeout=TIMEOUT_MS)
    # A first subscribe resumes nothing: its answer says nothing of `recovered`.
    page.wait_for_function("(window.subscribed || []).length > 0", timeout=TIMEOUT_MS)
    first = page.evaluate("subscribed[0]")
    assert first["channel"] == channel and "recovered" not in first, first


def publish(app: App, channel: str, data: Any) -> int:
    position = app.publish_threadsafe(channel, data).result(10)
    return position.offset


def offsets(page: Page) -> list[int]:
    result: list[int] = page.evaluate("seen.map((pub) => pub.offset)")
    return result


def kill_connections(server: ThreadedServer, app: App) -> None:
    """Drop every connection the server has (the page's too), without a close handshake."""

    def kill() -> int:
        state = app.server_state
        assert state is not None
        connections = list(state.connections)
        for connection in connections:
            connection.abort()
        return len(connections)

    assert server.call(kill) >= 1


def test_rtserve_js_is_served_with_an_etag(server: ThreadedServer) -> None:
    with server.client() as http:
        first = http.get("/rtserve.js")
        assert first.status == 200
        assert first.headers["content-type"] == "application/javascript; charset=utf-8"
        assert "class Rtserve" in first.text
        etag = first.headers["etag"]
        again = http.get("/rtserve.js", headers={"If-None-Match": etag})
        assert again.status == 304


def test_websocket(page: Page, server: ThreadedServer, app: App) -> None:
    open_page(page, server, "feed:ws", "websocket")
    assert publish(app, "feed:ws", "one") == 1
    assert publish(app, "feed:ws", {"n": 2}) == 2
    expect(page.locator("#offsets")).to_have_text("1 2", timeout=TIMEOUT_MS)
    position = page.evaluate("rt.publish('feed:ws', 'from the page')")
    assert position["offset"] == 3
    expect(page.locator("#offsets")).to_have_text("1 2 3", timeout=TIMEOUT_MS)
    assert page.evaluate("seen.map((pub) => pub.data)") == ["one", {"n": 2}, "from the page"]
    assert page.evaluate("sub.position") == {"offset": 3, "epoch": position["epoch"]}
    history = page.evaluate("rt.history('feed:ws', { limit: 2 })")
    assert [p["offset"] for p in history["publications"]] == [2, 3]


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_fallback(page: Page, server: ThreadedServer, app: App, transport: str) -> None:
    channel = f"feed:{transport}"
    name = f"ann-{transport}"
    open_page(page, server, channel, transport, data={"name": name})
    assert {"name": name} in CONNECT_DATA  # the `data` option reached on_connect
    states = page.locator("#states li").all_text_contents()
    assert states[0] == "connecting websocket" and "connected websocket" not in states
    assert publish(app, channel, "one") == 1
    expect(page.locator("#offsets")).to_have_text("1", timeout=TIMEOUT_MS)
    position = page.evaluate(f"rt.publish('{channel}', 'from the page')")
    assert position["offset"] == 2
    assert publish(app, channel, "three") == 3
    expect(page.locator("#offsets")).to_have_text("1 2 3", timeout=TIMEOUT_MS)
    assert page.evaluate("seen.map((pub) => pub.data)") == ["one", "from the page", "three"]
    # the page's publication was made as the user on_connect named from the page's data
    assert page.evaluate("seen[1].info.user") == name
    history = page.evaluate(f"rt.history('{channel}', {{ limit: 1 }})")
    assert [p["offset"] for p in history["publications"]] == [3]
    # presence over HTTP: an SSE stream is a subscriber (counted), a poll is not
    presence = page.evaluate(f"rt.presence('{channel}')")
    stats = page.evaluate(f"rt.presenceStats('{channel}')")
    if transport == "sse":
        assert [c["user"] for c in presence["clients"].values()] == [name]
        assert stats == {"clients": 1, "users": 1}
    else:
        assert presence == {"clients": {}} and stats == {"clients": 0, "users": 0}
    refusal = page.evaluate(
        "rt.presence('plain:x').then(() => null, (error) => [error.code, error.temporary])"
    )
    assert refusal == [108, False]  # the channel keeps no presence, and never will
    assert page.locator("#transport").text_content() == transport


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_forced_disconnects_lose_nothing(
    page: Page, server: ThreadedServer, app: App, transport: str
) -> None:
    channel = f"feed:drop-{transport}"
    total = 120
    open_page(page, server, channel, transport)
    for n in range(1, total + 1):
        assert publish(app, channel, n) == n
        if n in (30, 70):
            kill_connections(server, app)
        time.sleep(0.005)
    expected = " ".join(str(n) for n in range(1, total + 1))
    expect(page.locator("#offsets")).to_have_text(expected, timeout=TIMEOUT_MS)
    assert offsets(page) == list(range(1, total + 1))
    assert page.evaluate("seen.map((pub) => pub.data)") == list(range(1, total + 1))
    assert page.locator("#unrecovered").text_content() == "0"
    states = page.locator("#states li").all_text_contents()
    if transport != "poll":  # (a poll between two requests has nothing to lose)
        assert f"disconnected {transport}" in states, states  # the kills were noticed
    assert page.locator("#transport").text_content() == transport


def test_transport_switches_keep_the_offsets(page: Page, server: ThreadedServer, app: App) -> None:
    """WebSocket, then (WebSocket blocked) SSE, then (EventSource blocked) polling: one stream
    of offsets, none lost or repeated."""
    channel = "feed:switch"
    open_page(page, server, channel, "websocket")
    n = 0
    for transport, block in (("websocket", None), ("sse", NO_WEBSOCKET), ("poll", NO_EVENTSOURCE)):
        if block is not None:
            page.evaluate(f"() => {{ {block} }}")  # what the next connection attempts find
            for _ in range(5):
                n += 1
                assert publish(app, channel, n) == n
            kill_connections(server, app)
            expect(page.locator("#transport")).to_have_text(transport, timeout=TIMEOUT_MS)
            expect(page.locator("#state")).to_have_text("connected", timeout=TIMEOUT_MS)
        for _ in range(5):
            n += 1
            assert publish(app, channel, n) == n
        expect(page.locator("#offsets")).to_have_text(
            " ".join(str(i) for i in range(1, n + 1)), timeout=TIMEOUT_MS
        )
    assert offsets(page) == list(range(1, n + 1))
    assert page.locator("#unrecovered").text_content() == "0"


def test_close_then_connect_starts_afresh(page: Page, server: ThreadedServer, app: App) -> None:
    """close() twice is one `closed`; connect() after it goes back to the first transport
    (here the WebSocket, unblocked meanwhile) and resumes the subscription's offsets."""
    channel = "feed:reopen"
    page.add_init_script("window.RealWebSocket = window.WebSocket;")
    open_page(page, server, channel, "sse")
    assert publish(app, channel, 1) == 1
    expect(page.locator("#offsets")).to_have_text("1", timeout=TIMEOUT_MS)
    page.evaluate("rt.close(); rt.close();")
    states = page.locator("#states li").all_text_contents()
    assert [s for s in states if s.startswith("closed")] == ["closed null"]
    assert publish(app, channel, 2) == 2  # while closed: recovered on the way back
    page.evaluate("window.WebSocket = window.RealWebSocket; rt.connect();")
    expect(page.locator("#transport")).to_have_text("websocket", timeout=TIMEOUT_MS)
    expect(page.locator("#state")).to_have_text("connected", timeout=TIMEOUT_MS)
    assert publish(app, channel, 3) == 3
    expect(page.locator("#offsets")).to_have_text("1 2 3", timeout=TIMEOUT_MS)


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_a_refused_channel_ends_alone(
    page: Page, server: ThreadedServer, app: App, transport: str
) -> None:
    """Over HTTP a refusal answers the whole request: the client learns which channel it was
    about, ends that subscription with onError, and streams the others on."""
    channel = f"feed:refused-{transport}"
    open_page(page, server, channel, transport)
    page.evaluate(
        "window.errors = [];"
        "rt.subscribe('nope:1', { onError: (e) => errors.push([e.code, e.channel]) });"
    )
    page.wait_for_function("errors.length > 0", timeout=TIMEOUT_MS)
    assert page.evaluate("errors") == [[102, "nope:1"]]
    assert publish(app, channel, "still here") == 1
    expect(page.locator("#offsets")).to_have_text("1", timeout=TIMEOUT_MS)
    assert page.locator("#transport").text_content() == transport
    assert page.evaluate("[...rt.subs.keys()]") == [channel]


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_a_refused_connection_closes_with_the_servers_error(
    page: Page, server: ThreadedServer, transport: str
) -> None:
    data = '{"name": "banned"}'
    query = urllib.parse.urlencode({"channel": "feed:x", "data": data, "transports": transport})
    page.goto(f"{server.url}/?{query}")
    expect(page.locator("#state")).to_have_text("closed", timeout=TIMEOUT_MS)
    assert page.locator("#transport").text_content() == transport
    error = page.evaluate("(({ code, message }) => ({ code, message }))(infos.at(-1).error)")
    assert error == {"code": 101, "message": "banned"}


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_a_broker_failure_on_subscribe_is_retried(
    page: Page, server: ThreadedServer, app: App, transport: str
) -> None:
    channel = f"flaky:{transport}"
    open_page(page, server, channel, transport)
    assert FLAKY_SUBSCRIBES[channel] >= 3  # refused twice, then subscribed
    assert publish(app, channel, "through") == 1
    expect(page.locator("#offsets")).to_have_text("1", timeout=TIMEOUT_MS)
    assert page.evaluate("[...rt.subs.keys()]") == [channel]


def test_a_connection_token_is_refreshed_before_it_expires(
    page: Page, server: ThreadedServer, app: App
) -> None:
    """With getToken, the WebSocket outlives several short tokens without a drop."""
    channel = "feed:refresh"
    page.goto(f"{server.url}/?{urllib.parse.urlencode({'channel': channel, 'tokenUrl': '/token'})}")
    expect(page.locator("#state")).to_have_text("connected", timeout=TIMEOUT_MS)
    assert page.evaluate("rt.session.user") == "ann"
    # Two refreshes take about 2 x 3 s: past the first token's expiry and the second's.
    page.wait_for_function("tokens >= 3", timeout=3 * TOKEN_TTL * 1000)
    assert publish(app, channel, "after the refreshes") == 1
    expect(page.locator("#offsets")).to_have_text("1", timeout=TIMEOUT_MS)
    states = page.locator("#states li").all_text_contents()
    assert states == ["connecting websocket", "connected websocket"], states


def test_bad_numeric_options_are_refused_up_front(page: Page, server: ThreadedServer) -> None:
    open_page(page, server, "feed:options", "websocket")
    refused = page.evaluate(
        """() => [{ backoffMin: 0 }, { fallbackAfter: "2" }, { backoffMin: 500, backoffMax: 100 }]
            .map((options) => { try { new Rtserve(options); return null; }
                                catch (e) { return e.constructor.name + ": " + e.message; } })"""
    )
    assert refused == [
        "RangeError: rtserve.js: backoffMin must be a number above 0, not 0",
        "RangeError: rtserve.js: fallbackAfter must be a number above 0, not 2",
        "RangeError: rtserve.js: backoffMax must be at least backoffMin",
    ]
    defaults = page.evaluate(
        "(() => { const r = new Rtserve({});"
        " return [r.fallbackAfter, r.backoffMin, r.backoffMax]; })()"
    )
    assert defaults == [2, 250, 10000]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_user_disconnected_by_the_app_stays_closed(
    page: Page, server: ThreadedServer, app: App, transport: str
) -> None:
    name = f"zed-{transport}"
    open_page(page, server, f"feed:zed-{transport}", transport, data={"name": name})
    server.call(app.disconnect, name, "banned")
    expect(page.locator("#state")).to_have_text("closed", timeout=TIMEOUT_MS)
    assert page.evaluate("[infos.at(-1).code, infos.at(-1).reason]") == [4005, "banned"]
    page.wait_for_timeout(500)  # no reconnect follows (the backoff here is 50 ms)
    assert page.locator("#states li").last.text_content() == f"closed {transport}"
