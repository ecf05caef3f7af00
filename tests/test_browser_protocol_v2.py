"""rtserve.js on protocol 2 in headless Chromium: what the `connect` result brings, errors'
`temporary`, and the other protocol 2 features as they land (docs/rtserve-js.md).

Served as in tests/test_browser_rtserve_js.py: tests/browser_pages/rtserve_js.html on a
rtserve.testing.ThreadedServer (127.0.0.1, port 0).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtserve import App, ChannelContext, ChannelError, ConnectContext, ConnectResult, RpcContext
from rtserve.realtime.settings import ChannelSettings
from rtserve.testing import ThreadedServer
from rtserve.tokens import mint

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import Page, expect

PAGE = Path(__file__).parent / "browser_pages" / "rtserve_js.html"
TIMEOUT_MS = 10_000
SECRET = "a-test-secret-of-32-characters!!"
LATER_SUBSCRIBES: dict[str, int] = {}  # subscribes tried, per `later:` channel
SUB_TOKEN_TTL = 2  # seconds: rtserve.js refreshes a quarter of that before expiry
HEARTBEAT = 0.5  # seconds between the server's ping pushes


@pytest.fixture(scope="module")
def app() -> App:
    channels = ChannelSettings(token_secret=SECRET, max_subscriptions=50, heartbeat=HEARTBEAT)
    app = App(channels=channels)
    app.static_file("/", PAGE)
    app.channel("feed:*", history=100, publish="clients")

    def later(ctx: ChannelContext) -> None:
        # The app's own refusal, marked temporary, for the first two subscribes.
        LATER_SUBSCRIBES[ctx.channel] = LATER_SUBSCRIBES.get(ctx.channel, 0) + 1
        if LATER_SUBSCRIBES[ctx.channel] <= 2:
            raise ChannelError(1500, "not ready yet", temporary=True)

    app.channel("later:*", history=10, on_subscribe=later)
    app.channel("private:*", history=10, token=True)
    app.channel("room:*", history=10, presence=True, join_leave=True)

    @app.route("/subtoken")
    async def subscription_token(request: Any) -> str:
        return mint(SECRET, None, channels=[request.query["channel"]], ttl=SUB_TOKEN_TTL)

    @app.rpc("double")
    async def double(ctx: RpcContext) -> Any:
        if not isinstance(ctx.data, int):
            raise ChannelError(4400, "a number, please")
        return {"double": ctx.data * 2, "user": ctx.user}

    @app.on_connect
    def greet(ctx: ConnectContext) -> ConnectResult | None:
        name = ctx.data.get("name") if isinstance(ctx.data, dict) else None
        return ConnectResult(user=name, data={"greeting": f"hello {name}"}) if name else None

    return app


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, access_log=False) as srv:
        yield srv


def open_page(
    page: Page, server: ThreadedServer, channel: str, data: Any = None, transport: str = "websocket"
) -> None:
    query = {"channel": channel, "transports": transport}
    if data is not None:
        query["data"] = json.dumps(data)
    response = page.goto(f"{server.url}/?{urllib.parse.urlencode(query)}")
    assert response is not None and response.status == 200
    expect(page.locator("#state")).to_have_text("connected", timeout=TIMEOUT_MS)
    page.wait_for_function("(window.subscribed || []).length > 0", timeout=TIMEOUT_MS)


def publish(app: App, channel: str, data: Any) -> int:
    return app.publish_threadsafe(channel, data).result(10).offset


def test_the_session_has_the_apps_data_and_the_limits(page: Page, server: ThreadedServer) -> None:
    open_page(page, server, "feed:session", {"name": "ann"})
    session = page.evaluate("rt.session")
    assert session["version"] == 2 and session["user"] == "ann"
    assert session["data"] == {"greeting": "hello ann"}
    assert session["limits"]["max_subscriptions"] == 50


def test_errors_say_whether_they_are_temporary_and_temporary_ones_are_retried(
    page: Page, server: ThreadedServer, app: App
) -> None:
    open_page(page, server, "feed:errors")
    page.evaluate(
        "window.errors = [];"
        "rt.subscribe('nope:1', { onError: (e) => errors.push([e.code, e.temporary]) });"
    )
    page.wait_for_function("errors.length > 0", timeout=TIMEOUT_MS)
    assert page.evaluate("errors") == [[102, False]]
    # refused twice with the app's temporary code, then subscribed: the retries did it
    page.evaluate(
        "window.later = [];"
        "rt.subscribe('later:1', { onPublication: (p) => later.push(p.data),"
        " onError: (e) => later.push(['error', e.code]) });"
    )
    page.wait_for_function(
        "rt.subs.get('later:1') && rt.subs.get('later:1').epoch !== null", timeout=TIMEOUT_MS
    )
    assert LATER_SUBSCRIBES["later:1"] == 3
    assert publish(app, "later:1", "through") == 1
    page.wait_for_function("later.length > 0", timeout=TIMEOUT_MS)
    assert page.evaluate("later") == ["through"]


def test_a_subscription_token_is_refreshed_before_it_expires(
    page: Page, server: ThreadedServer, app: App
) -> None:
    """With handlers.getToken the subscription outlives several short subscription tokens
    (sub_refresh), without onError and without being made again."""
    open_page(page, server, "feed:sub-refresh")
    page.evaluate(
        """async () => {
          const fetchToken = async (channel) =>
            (await fetch(`/subtoken?channel=${encodeURIComponent(channel)}`)).text();
          window.subTokens = 0;
          window.priv = { subscribed: 0, pubs: [], errors: [] };
          rt.subscribe("private:1", {
            token: await fetchToken("private:1"),
            getToken: async (channel) => { subTokens += 1; return fetchToken(channel); },
            onSubscribed: () => (priv.subscribed += 1),
            onPublication: (pub) => priv.pubs.push(pub.data),
            onError: (error) => priv.errors.push(error.code),
          });
        }"""
    )
    # Two refreshes: past the first token's expiry and the second's.
    page.wait_for_function("subTokens >= 2", timeout=4 * SUB_TOKEN_TTL * 1000)
    page.wait_for_function("priv.subscribed === 1", timeout=TIMEOUT_MS)
    assert publish(app, "private:1", "after the refreshes") == 1
    page.wait_for_function("priv.pubs.length > 0", timeout=TIMEOUT_MS)
    assert page.evaluate("priv") == {"subscribed": 1, "pubs": ["after the refreshes"], "errors": []}


# Every message a page's WebSockets send, by socket: sentFrames[n] for the n-th socket.
RECORD_SENDS = """
(() => {
  const numbers = new WeakMap();
  const send = WebSocket.prototype.send;
  window.sentFrames = [];
  WebSocket.prototype.send = function (data) {
    if (!numbers.has(this)) numbers.set(this, sentFrames.push([]) - 1);
    sentFrames[numbers.get(this)].push(JSON.parse(data));
    return send.call(this, data);
  };
})();
"""


def test_many_channels_connect_in_one_round_trip_and_a_ticks_commands_go_together(
    page: Page, server: ThreadedServer, app: App
) -> None:
    page.add_init_script(RECORD_SENDS)
    open_page(page, server, "feed:many-page")
    page.evaluate(
        """() => {
          window.many = new Rtserve({ transports: ["websocket"] });
          window.manyState = { subscribed: 0, pubs: [] };
          for (let n = 0; n < 20; n++) {
            many.subscribe(`feed:many-${n}`, {
              onSubscribed: () => (manyState.subscribed += 1),
              onPublication: (pub) => manyState.pubs.push([pub.channel, pub.data]),
            });
          }
          many.connect();
        }"""
    )
    page.wait_for_function("manyState.subscribed === 20", timeout=TIMEOUT_MS)
    frames = page.evaluate("sentFrames[1]")
    assert len(frames) == 1, frames  # the connect, with every subscription in it
    assert frames[0]["op"] == "connect" and frames[0]["protocol"] == 2
    assert [s["channel"] for s in frames[0]["subscriptions"]] == [
        f"feed:many-{n}" for n in range(20)
    ]
    # five publishes in one tick: one message, an array of five commands
    offsets = page.evaluate(
        """() => Promise.all([0, 1, 2, 3, 4].map((n) => many.publish(`feed:many-${n}`, n)))
          .then((positions) => positions.map((p) => p.offset))"""
    )
    assert offsets == [1, 1, 1, 1, 1]
    frames = page.evaluate("sentFrames[1]")
    assert len(frames) == 2 and [c["op"] for c in frames[1]] == ["publish"] * 5
    assert publish(app, "feed:many-7", "from the server") == 1
    page.wait_for_function("manyState.pubs.length === 6", timeout=TIMEOUT_MS)
    pubs = page.evaluate("manyState.pubs")
    assert sorted(pubs) == sorted(
        [[f"feed:many-{n}", n] for n in range(5)] + [["feed:many-7", "from the server"]]
    )


# A page whose WebSockets so far can be made deaf (deafen()), as when the network dies
# without a close: nothing arrives on them, nothing tells. Later ones hear.
DEAFNESS = """
(() => {
  const sockets = new Set();
  window.deafen = () => sockets.forEach((ws) => (ws.deaf = true));
  const own = Object.getOwnPropertyDescriptor(WebSocket.prototype, "onmessage");
  Object.defineProperty(WebSocket.prototype, "onmessage", {
    get() { return own.get.call(this); },
    set(fn) {
      const ws = this;
      sockets.add(ws);
      own.set.call(ws, fn && ((event) => { if (!ws.deaf) fn(event); }));
    },
  });
})();
"""


def test_a_silent_connection_is_dropped_by_the_heartbeat_and_made_again(
    page: Page, server: ThreadedServer, app: App
) -> None:
    page.add_init_script(DEAFNESS)
    open_page(page, server, "feed:heartbeat")
    assert page.evaluate("rt.session.ping") == HEARTBEAT
    assert publish(app, "feed:heartbeat", "heard") == 1
    expect(page.locator("#offsets")).to_have_text("1", timeout=TIMEOUT_MS)
    page.evaluate("deafen()")
    # 1.5 intervals and a second of silence: dropped, then reconnected (a new WebSocket)
    page.wait_for_function(
        "infos.some((info) => info.reason === 'no heartbeat')", timeout=TIMEOUT_MS
    )
    expect(page.locator("#state")).to_have_text("connected", timeout=TIMEOUT_MS)
    assert publish(app, "feed:heartbeat", "heard again") == 2
    expect(page.locator("#offsets")).to_have_text("1 2", timeout=TIMEOUT_MS)


def test_rpc_calls_the_apps_handler(page: Page, server: ThreadedServer) -> None:
    open_page(page, server, "feed:rpc", {"name": "ann"})
    answers = page.evaluate(
        """async () => [
          await rt.rpc("double", 21),
          await rt.rpc("double", "x").catch((e) => [e.code, e.message, e.temporary]),
          await rt.rpc("nope").catch((e) => e.code),
        ]"""
    )
    assert answers == [{"double": 42, "user": "ann"}, [4400, "a number, please", False], 117]


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_history_pages_backwards(
    page: Page, server: ThreadedServer, app: App, transport: str
) -> None:
    channel = f"feed:back-{transport}"
    open_page(page, server, channel, transport=transport)
    for n in range(1, 6):
        assert publish(app, channel, f"m{n}") == n
    pages = page.evaluate(
        """async (channel) => {
          const offsets = (answer) => answer.publications.map((pub) => pub.offset);
          const first = await rt.history(channel, { limit: 2, reverse: true });
          const since = { offset: 4, epoch: first.epoch };
          const second = await rt.history(channel, { limit: 2, reverse: true, since });
          return [offsets(first), offsets(second)];
        }""",
        channel,
    )
    assert pages == [[5, 4], [3, 2]]


def test_presence_by_user_and_its_diffs(page: Page, server: ThreadedServer) -> None:
    from websockets.sync.client import connect

    open_page(page, server, "feed:presence", {"name": "ann"})
    page.evaluate(
        """window.diffs = [];
        rt.subscribe("room:1", { onPresenceDiff: (diff) => diffs.push(diff) });"""
    )
    page.wait_for_function("rt.subs.get('room:1').epoch !== null", timeout=TIMEOUT_MS)
    with connect(f"ws://127.0.0.1:{server.port}/rt/ws", open_timeout=5) as bob:
        bob.send(json.dumps({"id": 1, "op": "connect", "data": {"name": "bob"}}))
        bob_id = json.loads(bob.recv(timeout=5))["result"]["client"]
        bob.send(json.dumps({"id": 2, "op": "subscribe", "channel": "room:1"}))
        bob.recv(timeout=5)
        page.wait_for_function("diffs.length === 1", timeout=TIMEOUT_MS)
        grouped = page.evaluate("rt.presence('room:1', { group: 'user' })")
        assert {user: list(clients) for user, clients in grouped["users"].items()} == {
            "ann": [page.evaluate("rt.session.client")],
            "bob": [bob_id],
        }
    page.wait_for_function("diffs.length === 2", timeout=TIMEOUT_MS)
    joined, left = page.evaluate("diffs")
    assert list(joined["joins"]["users"]) == ["bob"] and joined["leaves"]["users"] == {}
    assert list(left["leaves"]["users"]["bob"]) == [bob_id]
