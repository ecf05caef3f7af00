"""WebSocket end to end, with the independent `websockets` library as the client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from rtserve import App, WebSocketHandler, broadcast
from rtserve.protocol.websocket import (
    BinaryMessage,
    FrameReader,
    Opcode,
    TextMessage,
    encode_client_frame,
)
from rtserve.server.settings import WebSocketSettings
from rtserve.testing import ThreadedServer
from tests.rawhttp import RawClient


class Echo(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.send(message)


class SlowEcho(WebSocketHandler):
    async def on_message(self, message: str | bytes) -> None:
        await asyncio.sleep(0.3 if message == "slow" else 0)
        self.send(message)


def make_app(events: dict[str, Any]) -> App:
    app = App()
    app.websocket("/echo", max_message_size=64 * 1024)(Echo)
    app.websocket("/slow")(SlowEcho)
    app.websocket("/concurrent", concurrent=True)(SlowEcho)
    app.websocket("/delayed", write_delay=0.02)(Echo)
    app.websocket("/proto", subprotocols=["chat.v2", "chat.v1"])(Echo)
    app.websocket("/anyorigin", origins=["*"])(Echo)
    app.websocket("/listed", origins=["https://app.example"])(Echo)

    @app.websocket("/rooms/{room}", compression=True)
    class Room(WebSocketHandler):
        def on_open(self) -> None:
            events.setdefault("members", []).append(self)
            self.send(f"joined {self.path_params['room']} as {self.request.query.get('u')}")

        def on_message(self, message: str | bytes) -> None:
            broadcast(events["members"], message)

        def on_close(self, code: int, reason: str) -> None:
            events["members"].remove(self)
            events.setdefault("closed", []).append((code, reason))
            events.setdefault("closed_event", threading.Event()).set()

    @app.websocket("/watch")
    class Watch(WebSocketHandler):
        async def on_open(self) -> None:
            events["watch_open"] = (self.request.is_disconnected, self.request.client)
            await self.request.wait_disconnected()
            events["watch_gone"] = self.request.is_disconnected
            events.setdefault("watch_event", threading.Event()).set()

    @app.websocket("/closer")
    class Closer(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            self.close(4000, "bye now")

    @app.websocket("/flood", max_queued_bytes=256 * 1024, slow_consumer="close")
    class Flood(WebSocketHandler):
        async def on_open(self) -> None:
            chunk = "x" * 16384
            for _ in range(2000):  # 32 MiB offered to a client that reads nothing
                if not self.send(chunk):
                    break
                await asyncio.sleep(0)
            events["flood_done"] = True

    return app


@pytest.fixture(scope="module")
def events() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def server(events: dict[str, Any]) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(events), access_log=False) as srv:
        yield srv


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 20))


def ws_url(server: ThreadedServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def test_echo_text_and_binary(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server, "/echo")) as ws:
            for message in ("hello", "", "é" * 1000, b"\x00\x01\xff", b"z" * 60000):
                await ws.send(message)
                assert await ws.recv() == message

    run(scenario)


def test_compression_negotiated_and_working(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server, "/echo")) as ws:  # offers permessage-deflate
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")  # type: ignore[union-attr]
            assert "permessage-deflate" in extensions
            big = "compress me " * 2000
            await ws.send(big)
            assert await ws.recv() == big
        async with connect(ws_url(server, "/echo"), compression=None) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers  # type: ignore[union-attr]
            await ws.send("plain")
            assert await ws.recv() == "plain"

    run(scenario)


def test_subprotocol_follows_server_preference(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with connect(
            ws_url(server, "/proto"), subprotocols=[Subprotocol("chat.v1"), Subprotocol("chat.v2")]
        ) as ws:
            assert ws.subprotocol == "chat.v2"
        async with connect(ws_url(server, "/proto"), subprotocols=[Subprotocol("other")]) as ws:
            assert ws.subprotocol is None

    run(scenario)


def test_origin_policy(server: ThreadedServer) -> None:
    async def status(path: str, origin: str) -> int:
        try:
            async with connect(ws_url(server, path), origin=origin):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def scenario() -> None:
        same = f"http://127.0.0.1:{server.port}"
        assert await status("/echo", same) == 101
        assert await status("/echo", "https://evil.example") == 403
        assert await status("/anyorigin", "https://evil.example") == 101
        assert await status("/listed", "https://app.example") == 101
        assert await status("/listed", "https://evil.example") == 403

    run(scenario)


def test_plain_get_and_wrong_version(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/echo")
        assert r.status == 426 and r.headers["upgrade"] == "websocket"
        r = c.get(
            "/echo",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "8",
            },
        )
        assert r.status == 426 and r.headers["sec-websocket-version"] == "13"


def test_close_codes_both_ways(server: ThreadedServer, events: dict[str, Any]) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server, "/closer")) as ws:
            await ws.send("close please")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye now")
        events.pop("closed", None)
        events["closed_event"] = threading.Event()
        async with connect(ws_url(server, "/rooms/a?u=ann")) as ws:
            assert await ws.recv() == "joined a as ann"
            await ws.close(4321, "client done")
        assert events["closed_event"].wait(5)
        assert events["closed"] == [(4321, "client done")]

    run(scenario)


def test_message_too_big_is_1009(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server, "/echo"), compression=None) as ws:
            await ws.send("x" * (64 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009

    run(scenario)


def handshake(port: int, path: str = "/echo") -> RawClient:
    c = RawClient(port)
    c.send(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.sock.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    c.leftover = rest  # type: ignore[attr-defined]
    return c


def read_close_code(c: RawClient) -> int:
    data = c.leftover  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        index = 0
        while index + 2 <= len(data):  # skip to the close frame
            opcode, length = data[index] & 0x0F, data[index + 1] & 0x7F
            if opcode == Opcode.CLOSE and len(data) >= index + 4:
                return int.from_bytes(data[index + 2 : index + 4], "big")
            index += 2 + length
        chunk = c.sock.recv(4096)
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"no close frame in {data!r}")


def test_invalid_utf8_is_1007_and_unmasked_is_1002(server: ThreadedServer) -> None:
    with handshake(server.port) as c:
        c.send(
            encode_client_frame(Opcode.TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4")
        )
        assert read_close_code(c) == 1007
    with handshake(server.port) as c:
        c.send(bytes([0x81, 0x02]) + b"hi")  # a client frame without a mask
        assert read_close_code(c) == 1002


def test_pong_is_not_delayed_by_a_slow_handler(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server, "/slow")) as ws:
            await ws.send("slow")
            start = asyncio.get_running_loop().time()
            pong = await ws.ping()
            await pong
            assert asyncio.get_running_loop().time() - start < 0.25
            for i in range(20):
                await ws.send(str(i))
            got = [await ws.recv() for _ in range(21)]
            assert got == ["slow", *[str(i) for i in range(20)]]  # in order

    run(scenario)


def test_broadcast_reaches_everyone_once(server: ThreadedServer, events: dict[str, Any]) -> None:
    async def scenario() -> None:
        clients = []
        for i in range(20):
            ws = await connect(ws_url(server, "/rooms/b"), compression=None if i % 2 else "deflate")
            assert (await ws.recv()).startswith("joined b")  # type: ignore[arg-type]
            clients.append(ws)
        long_message = "all of you " * 100  # compressed once for the deflate half
        await clients[0].send(long_message)
        await clients[1].send("short")
        for ws in clients:
            assert await ws.recv() == long_message
            assert await ws.recv() == "short"
        for ws in clients:
            await ws.close()

    run(scenario)


def test_slow_consumer_is_closed_and_counted(
    server: ThreadedServer, events: dict[str, Any]
) -> None:
    assert server.server is not None and server.server.state is not None
    stats = server.server.state.stats
    before = stats.ws_slow_closed
    c = handshake(server.port, "/flood")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        deadline = time.monotonic() + 10
        while stats.ws_slow_closed == before and time.monotonic() < deadline:
            time.sleep(0.02)  # bounded wait for the server-side policy to act
        assert stats.ws_slow_closed == before + 1
    finally:
        c.close()


def test_keepalive_closes_a_silent_peer() -> None:
    app = App()
    app.websocket("/echo")(Echo)
    settings = WebSocketSettings(ping_interval=0.1, ping_timeout=0.2)
    with ThreadedServer(app, access_log=False, websocket=settings) as srv:
        c = handshake(srv.port)  # a raw client that never answers pings
        with c:
            assert read_close_code(c) == 1011


def test_shutdown_closes_websockets_with_1001() -> None:
    app = App()
    app.websocket("/echo")(Echo)

    async def scenario() -> None:
        from rtserve.testing import serve_app

        async with serve_app(app, access_log=False) as srv:
            ws = await connect(f"ws://127.0.0.1:{srv.port}/echo")
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await srv.shutdown(grace=2)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001

    run(scenario)


def test_concurrent_route_answers_out_of_order(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server, "/concurrent")) as ws:
            await ws.send("slow")
            await ws.send("fast")
            assert [await ws.recv(), await ws.recv()] == ["fast", "slow"]

    run(scenario)


def test_write_delay_still_delivers_everything(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server, "/delayed")) as ws:
            for i in range(50):
                await ws.send(str(i))
            assert [await ws.recv() for _ in range(50)] == [str(i) for i in range(50)]

    run(scenario)


def test_valid_messages_before_a_violation_are_answered(server: ThreadedServer) -> None:
    with handshake(server.port) as c:
        bad = bytes([0x81 | 0x20, 0x80]) + b"\0\0\0\0"  # RSV2 set, empty payload
        c.send(encode_client_frame(Opcode.TEXT, b"first") + bad)
        data = c.leftover  # type: ignore[attr-defined]
        while b"first" not in data or len(data) < 9:
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(bytes([0x81, 5]) + b"first")  # the echo, then the close
        c.leftover = data[7:]  # type: ignore[attr-defined]
        assert read_close_code(c) == 1002


def test_upgrade_request_sees_the_websocket_go(
    server: ThreadedServer, events: dict[str, Any]
) -> None:
    events["watch_event"] = threading.Event()

    async def scenario() -> None:
        async with connect(ws_url(server, "/watch")) as ws:
            await ws.send("hello")

    run(scenario)
    assert events["watch_event"].wait(5)
    assert events["watch_open"] == (False, "127.0.0.1")
    assert events["watch_gone"] is True


def test_prepare_refuses_an_upgrade_before_any_websocket() -> None:
    """`prepare` (sync or async) runs before the 101: an HTTPError there is the answer, and
    what it sets is there in `on_open`."""
    from rtserve import HTTPError

    app = App()
    opened: list[str] = []

    class Guarded(WebSocketHandler):
        def on_open(self) -> None:
            opened.append(self.user)  # type: ignore[attr-defined]
            self.send(f"hello {self.user}")  # type: ignore[attr-defined]

    @app.websocket("/sync")
    class SyncGuard(Guarded):
        def prepare(self) -> None:
            user = self.request.query.get("user")
            if user is None:
                raise HTTPError(401, "who are you?", headers={"WWW-Authenticate": "Bearer"})
            self.user = user

    @app.websocket("/async")
    class AsyncGuard(Guarded):
        async def prepare(self) -> None:
            await asyncio.sleep(0.01)  # a database, say
            if self.request.query.get("user") != "ann":
                raise HTTPError(403, "not you")
            self.user = "ann"

    async def status(url: str) -> int | str:
        try:
            async with connect(url) as ws:
                return str(await asyncio.wait_for(ws.recv(), 5))
        except InvalidStatus as exc:
            return exc.response.status_code

    with ThreadedServer(app, access_log=False) as server:

        async def scenario() -> None:
            base = f"ws://127.0.0.1:{server.port}"
            assert await status(f"{base}/sync") == 401
            assert await status(f"{base}/sync?user=bo") == "hello bo"
            assert await status(f"{base}/async?user=bo") == 403
            assert await status(f"{base}/async?user=ann") == "hello ann"

        run(scenario)
        with server.client() as c:  # the refusal is an ordinary error response
            r = c.get(
                "/sync",
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                },
            )
            assert r.status == 401 and r.headers["www-authenticate"] == "Bearer"
    assert opened == ["bo", "ann"]


def test_on_pong_sees_the_answer_to_a_ping() -> None:
    app = App()
    pongs: list[bytes] = []
    got_pong = threading.Event()

    @app.websocket("/ping")
    class Pinger(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            self.ping(b"t0")

        def on_pong(self, data: bytes) -> None:
            pongs.append(data)
            got_pong.set()

    with ThreadedServer(app, access_log=False) as server:

        async def scenario() -> None:
            async with connect(f"ws://127.0.0.1:{server.port}/ping") as ws:
                await ws.send("ping me")
                # the websockets client answers pings by itself while it reads
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 1.0)

        run(scenario)
        assert got_pong.wait(5)
    assert pongs == [b"t0"]


def test_a_message_larger_than_the_outbound_budget_is_echoed() -> None:
    """max_message_size 64 MiB with the default 1 MiB max_queued_bytes: 2 MiB echoes, one after
    the other, reach a client that reads promptly; one message alone never meets the
    slow-consumer policy."""
    app = App()
    big = 64 * 1024 * 1024
    app.websocket("/big", max_message_size=big, max_frame_size=big)(Echo)
    with ThreadedServer(app, access_log=False) as server:
        stats = server.server.state.stats  # type: ignore[union-attr]

        async def scenario() -> None:
            async with connect(ws_url(server, "/big"), max_size=None) as ws:
                for _ in range(2):
                    payload = os.urandom(2 * 1024 * 1024)  # incompressible, twice the budget
                    await ws.send(payload)
                    assert await ws.recv() == payload

        run(scenario)
        assert stats.ws_slow_closed == 0


STREAM_CHUNK = 60_000  # bytes per message (a 4-byte head on the wire)
STREAM_COUNT = 1_700  # 102 MB in all


def test_awaited_send_streams_100_mb_to_a_slow_reader_within_the_high_water_mark() -> None:
    """`await self.send(chunk)` waits while the outbound buffer is over its high-water mark: a
    handler streaming 102 MB to a reader that takes nothing at first, then reads in 16 KiB
    pieces, never has more queued than the mark plus one message, and everything arrives."""
    app = App()
    stalled = threading.Event()
    figures: dict[str, int] = {"peak": 0, "after_await": 0}

    @app.websocket("/stream")
    class Stream(WebSocketHandler):
        async def on_message(self, message: str | bytes) -> None:
            conn = self.connection
            pad = b"s" * (STREAM_CHUNK - 4)
            for i in range(STREAM_COUNT):
                sending = self.send(i.to_bytes(4, "big") + pad)
                figures["peak"] = max(figures["peak"], conn.queued_bytes)
                if conn.queued_bytes > conn.high_water:
                    stalled.set()  # the reader starts reading once the handler must wait
                assert await sending
                figures["after_await"] = max(figures["after_await"], conn.queued_bytes)
            self.send("done")

    with ThreadedServer(app, access_log=False) as server:
        c = handshake(server.port, "/stream")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        with c:
            c.send(encode_client_frame(Opcode.TEXT, b"go"))
            assert stalled.wait(10), "the handler never had to wait"
            reader = FrameReader(masked=False, max_message_size=STREAM_CHUNK)
            messages = reader.feed(c.leftover)  # type: ignore[attr-defined]
            received = 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                data = c.sock.recv(16 * 1024)
                if not data:
                    break
                for event in reader.feed(data):
                    assert isinstance(event, BinaryMessage | TextMessage)
                    if isinstance(event, TextMessage):
                        messages.append(event)
                        break
                    assert event.data[:4] == received.to_bytes(4, "big"), received
                    assert len(event.data) == STREAM_CHUNK
                    received += 1
                if messages:
                    break
            assert received == STREAM_COUNT
            assert messages == [TextMessage("done")]
    high = 64 * 1024  # the transport's high-water mark with the default max_queued_bytes
    print(f"await send: {STREAM_COUNT * STREAM_CHUNK:,} bytes; peak queued {figures}")
    assert figures["after_await"] <= high, figures
    assert figures["peak"] <= high + STREAM_CHUNK + 4, figures


def test_send_without_await_keeps_its_bool_and_warns_nothing() -> None:
    """The non-awaited call as before: a truthy result when queued, falsy once closing, and no
    'coroutine was never awaited' warning."""
    app = App()
    results: list[bool] = []

    @app.websocket("/plain")
    class Plain(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            results.append(bool(self.send(message)))
            self.close()
            results.append(bool(self.send("after the close")))

    async def scenario() -> None:
        from rtserve.testing import serve_app

        async with (
            serve_app(app, access_log=False) as srv,
            connect(f"ws://127.0.0.1:{srv.port}/plain") as ws,
        ):
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await ws.wait_closed()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(scenario)
        gc.collect()
    assert results == [True, False]
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], caught
