"""Limits under load, over real sockets: `server.max_connections` refuses new connections with
503 while the open ones keep working, and the per-address publish rate holds across a
client's connections and transports."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from rtserve import App
from rtserve.realtime.settings import ChannelSettings
from rtserve.server.busy import BUSY_BODY
from rtserve.server.settings import ServerSettings
from rtserve.testing import ThreadedServer
from tests.channel_peer import Peer, ReplyError

TIMEOUT = 5.0
LIMIT = 5


def until(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def limited_app() -> App:
    app = App(ServerSettings(max_connections=LIMIT, access_log=False))

    @app.route("/hello")
    def hello(request: Any) -> str:
        return "hello"

    app.channel("room", publish="clients")
    return app


def get(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
    conn.request("GET", "/hello")
    response = conn.getresponse()
    return response.status, response.read()


def test_max_connections_refuses_new_ones_and_keeps_the_open_ones() -> None:
    app = limited_app()
    with ThreadedServer(app) as server:
        state = app.server_state
        assert state is not None
        held = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)]
        held += [http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)]
        held += [
            http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT) for _ in range(3)
        ]
        try:
            for conn in held:
                assert get(conn) == (200, b"hello")
            until(lambda: len(state.connections) == LIMIT, "the connections to count")

            # one more: 503, told to retry, closed; the app never saw it
            extra = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
            extra.request("GET", "/hello")
            refused = extra.getresponse()
            assert refused.status == 503 and refused.read() == BUSY_BODY
            assert refused.getheader("retry-after") == "1"
            assert refused.getheader("connection") == "close"
            extra.close()
            assert state.stats.connections_refused == 1
            assert state.stats.requests_total == LIMIT  # the refused one reached no handler

            # the open ones keep working (keep-alive: the same sockets)
            for conn in held:
                assert get(conn) == (200, b"hello")

            # one goes, and a new connection is served again
            held.pop().close()
            until(lambda: len(state.connections) < LIMIT, "the closed one to go")
            fresh = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
            assert get(fresh) == (200, b"hello")
            held.append(fresh)
            until(lambda: state.refusing == 0, "no refusal in flight")
        finally:
            for conn in held:
                conn.close()


def test_websockets_count_and_a_refused_upgrade_gets_503() -> None:
    app = limited_app()
    with ThreadedServer(app) as server:
        url = f"ws://127.0.0.1:{server.port}/rt/ws"

        async def scenario() -> None:
            peers = [await Peer.open(url) for _ in range(LIMIT)]
            try:
                with pytest.raises(InvalidStatus) as refused:
                    await ws_connect(url, open_timeout=TIMEOUT)
                assert refused.value.response.status_code == 503
                # the open ones still talk
                await peers[0].call("subscribe", channel="room")
                await peers[1].call("publish", channel="room", data="still here")
                assert (await peers[0].next_push("pub"))["data"] == "still here"
            finally:
                for peer in peers:
                    await peer.close()

        asyncio.run(scenario())
        state = app.server_state
        assert state is not None and state.stats.connections_refused == 1
        until(lambda: not state.connections, "every connection to close")


def test_a_flood_beyond_the_limit_is_dropped_without_holding_descriptors() -> None:
    app = limited_app()
    with ThreadedServer(app) as server:
        state = app.server_state
        assert state is not None
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(LIMIT)]
        # silent connections beyond the limit: the first LIMIT wait for a head (503 then),
        # the rest are dropped at once
        flood = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3 * LIMIT)]
        try:
            until(lambda: state.stats.connections_refused == 3 * LIMIT, "every refusal")
            assert state.refusing <= LIMIT
            for sock in flood:
                sock.settimeout(TIMEOUT)
                try:
                    sock.sendall(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
                    answer = sock.recv(4096)
                except ConnectionResetError:
                    answer = b""  # dropped
                assert answer == b"" or answer.startswith(b"HTTP/1.1 503 ")
        finally:
            for sock in held + flood:
                sock.close()
        until(lambda: not state.connections and state.refusing == 0, "all to close")


def test_publish_rate_per_address_holds_across_connections_and_transports() -> None:
    app = App(
        ServerSettings(access_log=False),
        channels=ChannelSettings(publish_rate_per_ip=0.5, publish_burst_per_ip=3),
    )
    app.channel("room", publish="clients")
    with ThreadedServer(app) as server:
        url = f"ws://127.0.0.1:{server.port}/rt/ws"

        def http_publish(data: str) -> dict[str, Any]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.port}/rt/client/publish",
                data=json.dumps({"channel": "room", "data": data}).encode(),
                headers={"content-type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    return json.loads(response.read())  # type: ignore[no-any-return]
            except urllib.error.HTTPError as exc:
                return {"status": exc.code, **json.loads(exc.read())}

        async def scenario() -> None:
            a, b = await Peer.open(url), await Peer.open(url)
            try:
                # a burst of 3 from this address, whichever connection sends it
                await a.call("publish", channel="room", data=1)
                await b.call("publish", channel="room", data=2)
                assert "offset" in await asyncio.to_thread(http_publish, "3")
                with pytest.raises(ReplyError) as limited:
                    await b.call("publish", channel="room", data=4)
                assert limited.value.code == 111
                refused = await asyncio.to_thread(http_publish, "5")
                assert refused["status"] == 429 and refused["error"]["code"] == 111
            finally:
                await a.close()
                await b.close()

        asyncio.run(scenario())
        assert app.hub.stats.rate_limited == 2


def test_subscriptions_per_connection_are_capped() -> None:
    app = App(ServerSettings(access_log=False), channels=ChannelSettings(max_subscriptions=3))
    app.channel("chat:*")
    with ThreadedServer(app) as server:

        async def scenario() -> None:
            peer = await Peer.open(f"ws://127.0.0.1:{server.port}/rt/ws")
            try:
                for i in range(3):
                    await peer.call("subscribe", channel=f"chat:{i}")
                with pytest.raises(ReplyError) as refused:
                    await peer.call("subscribe", channel="chat:3")
                assert refused.value.code == 106
                await peer.call("unsubscribe", channel="chat:0")
                await peer.call("subscribe", channel="chat:3")  # room again
            finally:
                await peer.close()

        asyncio.run(scenario())
