"""rtserve's own WebSocket client: the sans-I/O handshake, server frames, and the asyncio
client against a real rtserve server (and a raw asyncio server for what rtserve never does)."""

from __future__ import annotations

import asyncio
import base64
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from rtserve import App, WebSocketHandler
from rtserve.client.ws import ClientWebSocket, connect
from rtserve.protocol.websocket import (
    BinaryMessage,
    CloseReceived,
    FrameReader,
    Opcode,
    Ping,
    TextMessage,
    WebSocketProtocolError,
    encode_binary,
    encode_client_frame,
    encode_close,
    encode_frame,
    encode_ping,
    encode_text,
    mask_payload,
)
from rtserve.protocol.ws_client import (
    ConnectionClosed,
    HandshakeResponse,
    InvalidHandshake,
    build_request,
    check_response,
    new_key,
    parse_response,
    parse_url,
)
from rtserve.protocol.ws_handshake import accept_key, parse_request
from rtserve.server.settings import WebSocketSettings
from rtserve.testing import ThreadedServer

# --- the handshake, sans-I/O ----------------------------------------------------------------


def test_parse_url() -> None:
    u = parse_url("ws://example.com/chat?room=1")
    assert (u.secure, u.host, u.port, u.target, u.host_header) == (
        False,
        "example.com",
        80,
        "/chat?room=1",
        "example.com",
    )
    u = parse_url("wss://example.com")
    assert (u.secure, u.port, u.target, u.host_header) == (True, 443, "/", "example.com")
    u = parse_url("ws://[::1]:8000/rt/ws")
    assert (u.host, u.port, u.host_header) == ("::1", 8000, "[::1]:8000")
    for bad in ("http://example.com/", "ws:///path", "ws://user:pw@example.com/"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_request_is_accepted_by_the_server_parser() -> None:
    key = new_key()
    assert len(base64.b64decode(key)) == 16 and new_key() != key
    raw = build_request(
        "example.com:8000",
        "/rt/ws?x=1",
        key,
        subprotocols=["chat.v2", "chat.v1"],
        headers={"Authorization": "Bearer t"},
        origin="https://example.com",
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert rest == b""
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "GET /rt/ws?x=1 HTTP/1.1"
    fields = [tuple(x.encode() for x in line.split(": ", 1)) for line in lines[1:]]
    request = parse_request("GET", "HTTP/1.1", fields)  # type: ignore[arg-type]
    assert request.key == key
    assert request.subprotocols == ["chat.v2", "chat.v1"]
    assert request.origin == "https://example.com"
    assert request.host == "example.com:8000"
    assert (b"Authorization", b"Bearer t") in fields


def test_request_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        build_request("h", "/", new_key(), headers={"X-A": "1\r\nX-B: 2"})
    with pytest.raises(ValueError):
        build_request("h", "/", new_key(), headers=[("Bad Name", "1")])


def answer(key: str, *extra: str, accept: str | None = None) -> HandshakeResponse:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept if accept is not None else accept_key(key)}",
        *extra,
    ]
    return parse_response("\r\n".join(lines).encode() + b"\r\n\r\n")


def test_check_response_accepts_a_good_101() -> None:
    key = new_key()
    assert check_response(answer(key), key) is None
    response = answer(key, "Sec-WebSocket-Protocol: chat.v1")
    assert check_response(response, key, ["chat.v2", "chat.v1"]) == "chat.v1"
    # RFC 6455's own example
    sample = "dGhlIHNhbXBsZSBub25jZQ=="
    assert check_response(answer(sample, accept="s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), sample) is None


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ("HTTP/1.1 404 Not Found\r\nContent-Length: 0", "404 Not Found"),
        ("HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}", "Upgrade"),
        ("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}", "Connection"),
        (
            "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "Sec-WebSocket-Accept",
        ),
        ("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade", "Sec-WebSocket-Accept"),
        (
            "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate",
            "extension",
        ),
        (
            "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: other",
            "subprotocol",
        ),
    ],
)
def test_check_response_refuses(response: str, message: str) -> None:
    key = new_key()
    head = response.format(accept=accept_key(key)).encode()
    with pytest.raises(InvalidHandshake, match=message):
        check_response(parse_response(head), key, ["chat.v1"])


def test_parse_response_refuses_garbage() -> None:
    for head in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 1O1 x", b"HTTP/1.1 101 OK\r\nno colon here"):
        with pytest.raises(InvalidHandshake):
            parse_response(head)
    response = parse_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\nX-A:  b ")
    assert (response.status, response.reason, response.content_length) == (403, "Forbidden", 12)
    assert response.get("x-a") == "b"


# --- server frames ----------------------------------------------------------------------------


def feed_all(reader: FrameReader, data: bytes, rng: random.Random) -> list[Any]:
    events: list[Any] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 40)
        events += reader.feed(data[pos : pos + step])
        pos += step
    return events


def test_unmasked_reader_parses_server_frames_in_any_split() -> None:
    stream = (
        encode_text("hello")
        + encode_binary(b"\x00" * 70000)
        + encode_frame(Opcode.TEXT, "é".encode()[:1], fin=False)
        + encode_ping(b"p")
        + encode_frame(Opcode.CONTINUATION, "é".encode()[1:] + b"!")
        + encode_close(1001, "bye")
        + b"ignored after the close"
    )
    expected = [
        TextMessage("hello"),
        BinaryMessage(b"\x00" * 70000),
        Ping(b"p"),
        TextMessage("é!"),
        CloseReceived(1001, "bye"),
    ]
    assert FrameReader(masked=False, max_message_size=1 << 20).feed(stream) == expected
    rng = random.Random(6455)
    for _ in range(20):
        reader = FrameReader(masked=False, max_message_size=1 << 20, max_frame_size=1 << 20)
        assert feed_all(reader, stream, rng) == expected


def test_unmasked_reader_refuses_masked_frames_and_keeps_the_rules() -> None:
    reader = FrameReader(masked=False)
    with pytest.raises(WebSocketProtocolError) as info:
        reader.feed(encode_text("ok") + encode_client_frame(Opcode.TEXT, b"masked"))
    assert info.value.code == 1002 and info.value.events == [TextMessage("ok")]
    with pytest.raises(WebSocketProtocolError):
        reader.feed(b"")  # dead afterwards
    cases = [
        (bytes([0x83, 0]), 1002),  # unknown opcode
        (bytes([0x09, 0]), 1002),  # fragmented ping
        (bytes([0xC1, 1]) + b"x", 1002),  # RSV1 without deflate
        (bytes([0x81, 2]) + b"\xff\xfe", 1007),
        (bytes([0x82, 127]) + (1 << 40).to_bytes(8, "big"), 1009),  # known from the header
    ]
    for data, code in cases:
        with pytest.raises(WebSocketProtocolError) as info:
            FrameReader(masked=False).feed(data)
        assert info.value.code == code


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def read_client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of masked client frames; every one must be masked."""
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b1 & 0x80, "client frame not masked"
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        mask, pos = data[pos : pos + 4], pos + 4
        frames.append((b0 & 0x0F, mask_payload(data[pos : pos + length], mask)))
        pos += length
    return frames


def test_protocol_answers_pings_queues_and_echoes_the_close() -> None:
    async def scenario() -> None:
        key = new_key()
        ws = ClientWebSocket(
            b"GET / HTTP/1.1\r\n\r\n",
            key,
            (),
            max_message_size=1024,
            max_queue=2,
            close_timeout=1.0,
        )
        transport = FakeTransport()
        ws.connection_made(transport)
        assert transport.written == b"GET / HTTP/1.1\r\n\r\n"
        transport.written.clear()
        head = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
        ).encode()
        # The 101 and the first frames in one read, split in the middle of the head.
        data = head + encode_text("a") + encode_ping(b"hi") + encode_binary(b"b")
        ws.data_received(data[:20])
        ws.data_received(data[20:])
        assert ws.open and transport.paused  # two messages: the queue is full
        assert read_client_frames(bytes(transport.written)) == [(Opcode.PONG, b"hi")]
        assert await ws.recv() == "a"
        assert not transport.paused
        transport.written.clear()
        ws.data_received(encode_close(4001, "go away"))
        assert read_client_frames(bytes(transport.written)) == [
            (Opcode.CLOSE, (4001).to_bytes(2, "big"))
        ]
        assert await ws.recv() == b"b"  # what came before the close is still delivered
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert (info.value.code, info.value.reason) == (4001, "go away")
        ws.connection_lost(None)
        await ws.wait_closed()
        assert ws.closed

    asyncio.run(asyncio.wait_for(scenario(), 10))


# --- against a real rtserve server -----------------------------------------------------------


class Echo(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.send(message)


def make_app(events: dict[str, Any]) -> App:
    app = App()
    app.websocket(
        "/echo",
        max_message_size=8 * 1024 * 1024,
        max_frame_size=8 * 1024 * 1024,
        max_queued_bytes=16 * 1024 * 1024,
    )(Echo)
    app.websocket("/proto", subprotocols=["chat.v2", "chat.v1"])(Echo)

    @app.websocket("/closer")
    class Closer(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            self.close(4000, "bye now")

    @app.websocket("/two-then-close")
    class TwoThenClose(WebSocketHandler):
        def on_open(self) -> None:
            self.send("a")
            self.send(b"b")
            self.close()

    @app.websocket("/recorder")
    class Recorder(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            events["authorization"] = self.request.headers.get("authorization")
            self.send("ok")

        def on_close(self, code: int, reason: str) -> None:
            events["closed"] = (code, reason)
            events["closed_event"].set()

    @app.websocket("/flood", max_queued_bytes=4 * 1024 * 1024)
    class Flood(WebSocketHandler):
        def on_open(self) -> None:
            for i in range(200):
                self.send(f"{i:04d}" + "x" * 4096)

    return app


@pytest.fixture(scope="module")
def events() -> dict[str, Any]:
    return {"closed_event": threading.Event()}


@pytest.fixture(scope="module")
def server(events: dict[str, Any]) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(events), access_log=False) as srv:
        yield srv


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), 20)

    return asyncio.run(bounded())


def url(server: ThreadedServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def test_text_binary_and_large_round_trips(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with await connect(url(server, "/echo")) as ws:
            for message in ("hello", "", "é" * 1000, b"\x00\x01\xff", b"z" * 60000):
                await ws.send(message)
                assert await ws.recv() == message
            big = random.Random(1).randbytes(5 * 1024 * 1024)
            await ws.send(big)
            assert await ws.recv() == big
            await ws.send(bytearray(b"view"))
            assert await ws.recv() == b"view"
        assert ws.closed and ws.close_code == 1000

    run(scenario)


def test_subprotocol_and_headers_reach_the_server(
    server: ThreadedServer, events: dict[str, Any]
) -> None:
    async def scenario() -> None:
        ws = await connect(url(server, "/proto"), subprotocols=["chat.v1", "chat.v2"])
        assert ws.subprotocol == "chat.v2"
        await ws.close()
        async with await connect(
            url(server, "/recorder"), headers={"Authorization": "Bearer abc"}
        ) as ws:
            await ws.send("hi")
            assert await ws.recv() == "ok"
        assert events["authorization"] == "Bearer abc"

    run(scenario)


def test_ping_gets_its_pong(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with await connect(url(server, "/echo")) as ws:
            rtt = await asyncio.wait_for(ws.ping(), 5)
            assert 0 <= rtt < 5
            first, second = ws.ping(b"1"), ws.ping(b"2")
            await asyncio.wait_for(asyncio.gather(first, second), 5)
            with pytest.raises(ValueError):
                ws.ping(b"3")
                ws.ping(b"3")

    run(scenario)


def test_server_pings_are_answered() -> None:
    app = App()
    app.websocket("/echo")(Echo)
    settings = WebSocketSettings(ping_interval=0.1, ping_timeout=0.2)
    with ThreadedServer(app, access_log=False, websocket=settings) as srv:

        async def scenario() -> None:
            async with await connect(url(srv, "/echo")) as ws:
                await asyncio.sleep(1.0)  # a silent peer would be closed with 1011 by now
                await ws.send("still here")
                assert await ws.recv() == "still here"

        run(scenario)


def test_server_initiated_close_surfaces_its_code(server: ThreadedServer) -> None:
    async def scenario() -> None:
        ws = await connect(url(server, "/closer"))
        await ws.send("close please")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert (info.value.code, info.value.reason) == (4000, "bye now")
        with pytest.raises(ConnectionClosed):
            await ws.send("too late")
        await ws.wait_closed()
        # Iteration ends quietly after a normal close, with every message before it.
        ws = await connect(url(server, "/two-then-close"))
        assert [m async for m in ws] == ["a", b"b"]
        assert ws.close_code == 1000

    run(scenario)


def test_client_close_code_reaches_the_server(
    server: ThreadedServer, events: dict[str, Any]
) -> None:
    events["closed_event"].clear()

    async def scenario() -> None:
        ws = await connect(url(server, "/recorder"))
        await ws.close(4321, "client done")
        assert ws.closed and ws.close_code == 4321  # the server's echo

    run(scenario)
    assert events["closed_event"].wait(5)
    assert events["closed"] == (4321, "client done")


def test_reading_pauses_when_the_queue_is_full(server: ThreadedServer) -> None:
    async def scenario() -> None:
        async with await connect(url(server, "/flood"), max_queue=4) as ws:
            await asyncio.sleep(0.3)
            assert len(ws._messages) < 200  # not everything was read ahead
            got = [await ws.recv() for _ in range(200)]
            assert [int(m[:4]) for m in got] == list(range(200))

    run(scenario)


def test_handshake_failures_are_clear(server: ThreadedServer) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidHandshake) as info:
            await connect(url(server, "/no/such/path"))
        assert info.value.status == 404
        assert "404" in str(info.value)
        with pytest.raises(ValueError):
            await connect(f"http://127.0.0.1:{server.port}/echo")

    run(scenario)


# --- against a raw server: what rtserve itself never sends ----------------------------------


async def raw_server(
    answer: Callable[[str], bytes],
) -> tuple[asyncio.Server, int]:
    """Answer each upgrade request with `answer(key)`, then keep the socket open."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.decode().split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        writer.write(answer(key))
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


def head_101(accept: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def test_bad_accept_key_is_refused() -> None:
    async def scenario() -> None:
        srv, port = await raw_server(lambda key: head_101(accept_key(key + "x")))
        async with srv:
            with pytest.raises(InvalidHandshake, match="Sec-WebSocket-Accept"):
                await connect(f"ws://127.0.0.1:{port}/")

    run(scenario)


def test_masked_server_frame_is_a_1002() -> None:
    async def scenario() -> None:
        srv, port = await raw_server(
            lambda key: (
                head_101(accept_key(key))
                + encode_text("fine")
                + encode_client_frame(Opcode.TEXT, b"masked")
            )
        )
        async with srv:
            ws = await connect(f"ws://127.0.0.1:{port}/", close_timeout=1.0)
            assert await ws.recv() == "fine"
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.code == 1002
            await ws.wait_closed()

    run(scenario)


def test_open_timeout() -> None:
    async def scenario() -> None:
        srv, port = await raw_server(lambda key: b"")  # never answers
        async with srv:
            with pytest.raises(TimeoutError):
                await connect(f"ws://127.0.0.1:{port}/", open_timeout=0.2)

    run(scenario)


def test_refused_connection_is_an_oserror() -> None:
    async def scenario() -> None:
        srv, port = await raw_server(lambda key: b"")
        srv.close()
        await srv.wait_closed()
        with pytest.raises(OSError):
            await connect(f"ws://127.0.0.1:{port}/")

    run(scenario)
