"""Hostile WebSocket clients against a real server: malformed frames on raw sockets, ping
floods, a client that never reads, and churn without close handshakes.

After every case the server's connection count returns to its baseline and a fresh client
still gets its echo. Figures for docs/reliability.md come from here and bench/churn.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bench.churn import run_churn
from rtserve import App, WebSocketHandler, broadcast
from rtserve.protocol.websocket import Opcode, encode_client_frame
from rtserve.server.settings import WebSocketSettings
from rtserve.testing import ThreadedServer

MAX_MESSAGE = 64 * 1024
MAX_FRAME = 16 * 1024
BUDGET = 256 * 1024  # max_queued_bytes of the /room and /pingme routes


class Echo(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.send(message)


ROOM: list[WebSocketHandler] = []


class Room(WebSocketHandler):
    """Everyone in ROOM gets what anyone sends; "flood N" broadcasts N numbered 4 KiB lines."""

    def on_open(self) -> None:
        ROOM.append(self)

    async def on_message(self, message: str | bytes) -> None:
        assert isinstance(message, str)
        if message.startswith("flood "):
            pad = "." * 4096
            for i in range(int(message.split()[1])):
                broadcast(list(ROOM), f"{i} {pad}")
                if i % 8 == 0:
                    await asyncio.sleep(0)  # let the writes go out, as a real producer would
            broadcast(list(ROOM), "done")

    def on_close(self, code: int, reason: str) -> None:
        ROOM.remove(self)


def make_app() -> App:
    app = App()
    app.websocket("/echo", max_message_size=MAX_MESSAGE, max_frame_size=MAX_FRAME)(Echo)
    app.websocket("/pingme", max_queued_bytes=BUDGET, compression=False)(Echo)
    app.websocket("/room", max_queued_bytes=BUDGET, slow_consumer="close", compression=False)(Room)
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(), access_log=False) as srv:
        yield srv


def state(server: ThreadedServer) -> Any:
    assert server.server is not None and server.server.state is not None
    return server.server.state


def open_count(server: ThreadedServer) -> int:
    return len(state(server).connections)


def back_to_baseline(server: ThreadedServer, baseline: int, seconds: float = 5.0) -> None:
    """The server's open connections return to `baseline`, and a fresh client gets an echo."""
    wait_for_count(server, baseline, seconds)
    assert open_count(server) == baseline
    assert not state(server).websockets
    with raw_ws(server.port) as sock:
        sock.sendall(encode_client_frame(Opcode.TEXT, b"still here"))
        assert read_frames(sock, want=1)[0] == (Opcode.TEXT, b"still here")
    wait_for_count(server, baseline, seconds)  # the fresh client's connection goes too
    assert open_count(server) == baseline


def wait_for_count(server: ThreadedServer, baseline: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while open_count(server) > baseline and time.monotonic() < deadline:
        time.sleep(0.01)


class RawWS:
    def __init__(
        self, port: int, path: str, rcvbuf: int | None = None, extensions: str | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        extension_header = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extension_header}\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            data += chunk
        head, _, self.leftover = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        if extensions:
            assert b"permessage-deflate" in head, head

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


_leftovers: dict[int, bytes] = {}


def raw_ws(
    port: int, path: str = "/echo", rcvbuf: int | None = None, extensions: str | None = None
) -> RawWS:
    ws = RawWS(port, path, rcvbuf, extensions)
    _leftovers[ws.sock.fileno()] = ws.leftover
    return ws


def read_frames(
    sock: socket.socket, want: int | None = None, seconds: float = 5.0
) -> list[tuple[int, bytes]]:
    """Server frames (opcode, payload) until `want` frames, a close frame, or EOF."""
    data = _leftovers.pop(sock.fileno(), b"")
    frames: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while len(data) >= 2:
            n, start = data[1] & 0x7F, 2
            if n == 126:
                if len(data) < 4:
                    break
                n, start = struct.unpack("!H", data[2:4])[0], 4
            elif n == 127:
                if len(data) < 10:
                    break
                n, start = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < start + n:
                break
            frames.append((data[0] & 0x0F, data[start : start + n]))
            data = data[start + n :]
            if frames[-1][0] == Opcode.CLOSE or (want is not None and len(frames) >= want):
                _leftovers[sock.fileno()] = data
                return frames
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return frames


def close_code_and_eof(sock: socket.socket, answer: bool = False) -> int:
    """The code of the server's close frame; the server then ends the TCP connection.

    With `answer`, the close is answered, so the server need not wait out its close_timeout.
    """
    frames = read_frames(sock)
    assert frames and frames[-1][0] == Opcode.CLOSE, frames[-3:]
    sock.settimeout(5)
    if answer:
        sock.sendall(frame(FIN | CLOSE, frames[-1][1][:2]))
    tail = b""
    while True:  # bounded by the timeout: the server closes after its close frame
        chunk = sock.recv(4096)
        if not chunk:
            break
        tail += chunk
    assert tail == b""
    return int.from_bytes(frames[-1][1][:2], "big")


def frame(
    b0: int, payload: bytes = b"", *, masked: bool = True, length: int | None = None
) -> bytes:
    """A raw client frame: first byte `b0` as given; `length` overrides the header's length."""
    n = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 0x10000:
        head = bytes((b0, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mask_bit | 127)) + struct.pack("!Q", n)
    return head + (b"\0\0\0\0" + payload if masked else payload)  # zero mask: payload as is


FIN = 0x80
TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
RSV1 = 0x40

VIOLATIONS: list[tuple[str, bytes, int]] = [
    # 1009: too big, known from the header before the payload arrives
    ("frame over max_frame_size", frame(FIN | BINARY, length=MAX_FRAME + 1), 1009),
    ("frame claiming 2**62 bytes", frame(FIN | BINARY, length=2**62), 1009),
    (
        "message over max_message_size in fragments",
        frame(BINARY, b"x" * MAX_FRAME)
        + b"".join(frame(CONT, b"x" * MAX_FRAME) for _ in range(3))
        + frame(FIN | CONT, b"x"),
        1009,
    ),
    # 1007: invalid UTF-8 in text
    ("overlong encoding", frame(FIN | TEXT, b"\xc0\xaf"), 1007),
    ("UTF-16 surrogate", frame(FIN | TEXT, b"a\xed\xa0\x80"), 1007),
    ("code point over U+10FFFF", frame(FIN | TEXT, b"\xf4\x90\x80\x80"), 1007),
    ("bad UTF-8 in a later fragment", frame(TEXT, b"ok") + frame(FIN | CONT, b"\xff"), 1007),
    ("truncated sequence at the end", frame(TEXT, b"ok") + frame(FIN | CONT, b"\xe2\x82"), 1007),
    ("bad UTF-8 in a close reason", frame(FIN | CLOSE, b"\x03\xe8\xff"), 1007),
    # 1002: framing
    ("unmasked text", frame(FIN | TEXT, b"hi", masked=False), 1002),
    ("unmasked ping", frame(FIN | PING, b"", masked=False), 1002),
    ("unmasked continuation", frame(TEXT, b"a") + frame(FIN | CONT, b"b", masked=False), 1002),
    ("fragmented ping", frame(PING, b"a") + frame(FIN | CONT, b"b"), 1002),
    ("fragmented close", frame(CLOSE, b"\x03\xe8"), 1002),
    ("ping of 126 bytes", frame(FIN | PING, b"p" * 126), 1002),
    ("pong of 126 bytes", frame(FIN | PONG, b"p" * 126), 1002),
    ("close of 126 bytes", frame(FIN | CLOSE, b"\x03\xe8" + b"r" * 124), 1002),
    ("continuation without a start", frame(FIN | CONT, b"x"), 1002),
    ("text inside a fragmented message", frame(TEXT, b"a") + frame(FIN | TEXT, b"b"), 1002),
    ("RSV1 without permessage-deflate", frame(FIN | 0x40 | TEXT, b"hi"), 1002),
    ("RSV2", frame(FIN | 0x20 | TEXT, b"hi"), 1002),
    ("RSV3", frame(FIN | 0x10 | BINARY, b"hi"), 1002),
    ("RSV bits on a ping", frame(FIN | 0x40 | PING), 1002),
    ("RSV bits on a continuation", frame(TEXT, b"a") + frame(FIN | 0x20 | CONT, b"b"), 1002),
    ("64-bit length with the high bit", bytes((FIN | BINARY, 0xFF)) + b"\x80" + b"\0" * 11, 1002),
    ("close payload of 1 byte", frame(FIN | CLOSE, b"\x03"), 1002),
    ("close code 1005 on the wire", frame(FIN | CLOSE, b"\x03\xed"), 1002),
    ("close code 999", frame(FIN | CLOSE, b"\x03\xe7"), 1002),
    ("close code 2999", frame(FIN | CLOSE, b"\x0b\xb7"), 1002),
    *[(f"reserved opcode {op:#x}", frame(FIN | op, b"?"), 1002) for op in (3, 4, 5, 6, 7)],
    *[(f"reserved opcode {op:#x}", frame(FIN | op), 1002) for op in (0xB, 0xC, 0xD, 0xE, 0xF)],
]


@pytest.mark.parametrize(
    ("data", "code"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_violation_gets_its_close_code(server: ThreadedServer, data: bytes, code: int) -> None:
    baseline = open_count(server)
    with raw_ws(server.port) as sock:
        sock.sendall(encode_client_frame(Opcode.TEXT, b"before") + data)
        frames = read_frames(sock, want=1)
        assert frames == [(Opcode.TEXT, b"before")]  # what came before is still answered
        assert close_code_and_eof(sock) == code
    back_to_baseline(server, baseline)


def test_violation_trickled_one_byte_at_a_time(server: ThreadedServer) -> None:
    baseline = open_count(server)
    with raw_ws(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in frame(TEXT, b"a") + frame(FIN | CONT, b"\xff"):
            sock.sendall(bytes([byte]))
        assert close_code_and_eof(sock) == 1007
    back_to_baseline(server, baseline)


def test_thousands_of_tiny_fragments_are_echoed(server: ThreadedServer) -> None:
    baseline = open_count(server)
    text = "ā€😀x" * 2000  # 2-, 3-, 4- and 1-byte characters, 20,000 bytes
    payload = text.encode()
    with raw_ws(server.port) as sock:
        empties = frame(CONT) * 50_000  # empty continuations cost nothing but time
        pieces = [frame(CONT, payload[i : i + 2]) for i in range(2, len(payload), 2)]
        sock.sendall(frame(TEXT, payload[:2]) + empties + b"".join(pieces[:-1]))
        sock.sendall(frame(FIN | CONT, payload[-2:]) if len(payload) % 2 == 0 else b"")
        assert read_frames(sock, want=1, seconds=10) == [(Opcode.TEXT, payload)]
    back_to_baseline(server, baseline)


def test_fragment_count_does_not_multiply_memory() -> None:
    """The reader keeps a fragmented message in one buffer: empty fragments, or a message of
    2-byte fragments, cost their payload, not an object per fragment (before: 8.5 MB per
    million empty fragments, without limit, and 42 MB for a 1 MB message of 2-byte ones)."""
    import tracemalloc

    from rtserve.protocol.websocket import FrameReader

    for opcode, piece in ((BINARY, b""), (BINARY, b"ab"), (TEXT, "ā".encode())):
        reader = FrameReader(max_frame_size=1 << 20, max_message_size=1 << 20)
        chunk = frame(CONT, piece) * 5_000
        tracemalloc.start()
        try:
            reader.feed(frame(opcode, b""))
            reader.feed(chunk)
            used = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        # 5,000 fragments: before, 43 KB (empty) and 215 KB (2 bytes each) were held
        assert used < 2 * len(piece) * 5_000 + 16 * 1024, (piece, used)
        events = reader.feed(frame(FIN | CONT, b""))
        assert len(events) == 1


def test_ping_flood_in_one_write_is_answered_and_the_connection_stays_usable(
    server: ThreadedServer,
) -> None:
    baseline = open_count(server)
    pings = 10_000
    with raw_ws(server.port) as sock:
        flood = b"".join(frame(FIN | PING, i.to_bytes(4, "big")) for i in range(pings))
        sock.sendall(flood + encode_client_frame(Opcode.TEXT, b"after the flood"))
        frames = read_frames(sock, want=pings + 1, seconds=10)
        pongs = [p for op, p in frames if op == Opcode.PONG]
        # every ping answered, in order (10,000 * 6 bytes of pongs is well inside the budget)
        assert [int.from_bytes(p, "big") for p in pongs] == list(range(pings))
        assert frames[-1] == (Opcode.TEXT, b"after the flood")
    back_to_baseline(server, baseline)


def test_ping_flood_from_a_client_that_never_reads_is_bounded(server: ThreadedServer) -> None:
    """Pongs count against the outbound budget: a peer that pings without reading is handled
    by the slow-consumer policy (1013) instead of growing the server's buffer forever."""
    baseline = open_count(server)
    stats = state(server).stats
    before = stats.ws_slow_closed
    ws = raw_ws(server.port, "/pingme", rcvbuf=4096)
    sock = ws.sock
    sock.settimeout(0.5)
    burst = frame(FIN | PING, b"p" * 125) * 2000  # 262 KB of pings, 254 KB of pongs
    most = 0
    sent = 0
    try:
        for _ in range(200):  # at most 52 MB of pings
            try:
                sock.sendall(burst)
            except (TimeoutError, OSError):
                break  # the server stopped reading (closing) or reset
            sent += len(burst)
            conns = [c for c in state(server).websockets if c.options.max_queued_bytes == BUDGET]
            for conn in conns:
                most = max(most, server.call(conn.transport.get_write_buffer_size))
            if stats.ws_slow_closed > before:
                break
        assert stats.ws_slow_closed == before + 1, f"sent {sent} bytes of pings, {most} queued"
        print(f"ping flood without reading: {sent} bytes sent, at most {most} queued")
        # the buffer never held much more than the budget plus one read's worth of pongs
        assert most <= BUDGET + 512 * 1024, most
    finally:
        ws.__exit__()
    back_to_baseline(server, baseline, seconds=10)  # close_timeout (5 s) aborts the peer


def test_slow_consumer_is_cut_off_while_the_others_get_everything(server: ThreadedServer) -> None:
    baseline = open_count(server)
    stats = state(server).stats
    before = stats.ws_slow_closed
    count = 1000  # 4 MiB to each client: 16 times the budget
    slow = raw_ws(server.port, "/room", rcvbuf=4096)
    most = 0

    async def scenario() -> list[list[str]]:
        nonlocal most
        url = f"ws://127.0.0.1:{server.port}/room"
        readers = [await connect(url, max_size=None) for _ in range(3)]
        while len(ROOM) < 4:  # bounded by the wait_for around the scenario
            await asyncio.sleep(0.01)

        async def read_all(ws: Any) -> list[str]:
            got = []
            while (message := await ws.recv()) != "done":
                got.append(message)
            return got

        async def watch() -> None:
            nonlocal most
            for _ in range(500):
                conns = [c for c in state(server).websockets if c.peer[1] == slow_port]
                for conn in conns:
                    most = max(most, conn._out_bytes + conn.transport.get_write_buffer_size())
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        await readers[0].send(f"flood {count}")
        got = await asyncio.gather(*(read_all(ws) for ws in readers))
        watcher.cancel()
        for ws in readers:
            await ws.close()
        return got

    slow_port = slow.sock.getsockname()[1]
    try:
        got = asyncio.run(asyncio.wait_for(scenario(), 30))
        expected = [f"{i} {'.' * 4096}" for i in range(count)]
        for messages in got:
            assert messages == expected  # nothing lost, nothing repeated, in order
        assert stats.ws_slow_closed == before + 1
        assert most <= BUDGET + 4200, most  # the budget, plus at most one frame of slack
        print(f"slow consumer: at most {most} bytes queued; {len(got)} x {count} delivered")
        slow.sock.settimeout(10)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert close_code_and_eof(slow.sock, answer=True) == 1013
    finally:
        slow.__exit__()
    back_to_baseline(server, baseline)


def test_churn_without_close_handshakes_returns_to_baseline() -> None:
    """1,000 connections opened and dropped (FIN or RST, no close frame) against a server in
    its own process; bench/churn.py runs the same with 10,000."""
    figures = run_churn(connections=1000, hold=500)
    print(f"churn: {figures}")
    assert figures["after"]["connections"] == figures["baseline"]["connections"], figures
    assert figures["after"]["websockets"] == 0, figures
    assert figures["after"]["tasks"] <= figures["baseline"]["tasks"], figures
    assert figures["object_growth"] <= 500, figures  # noise is under 100; 1,000 if leaking
    assert figures["after"]["fds"] <= figures["baseline"]["fds"], figures
    # After a warm-up round the allocator has the arenas a round needs; a leak of even 1 KiB
    # per connection would show as 1 MB here, the slack (4 MiB) covers allocator noise.
    assert figures["rss_growth"] <= figures["rss_slack"], figures
    assert figures["ok"], figures


@pytest.mark.slow
def test_churn_10000() -> None:
    figures = run_churn(connections=10_000, hold=2_000)
    assert figures["ok"], figures


# --- permessage-deflate amplification: inflated bytes held per connection are bounded ------

INFLATE_MAX = 64 * 1024  # max_message_size of the gated routes
BURST = 200  # compressed messages in one write, each inflating to INFLATE_MAX


class Gated(WebSocketHandler):
    """Takes no message until `gate` is set; then answers each with its number and size."""

    gate: asyncio.Event | None = None  # made on the server's loop at on_open

    def on_open(self) -> None:
        Gated.gate = asyncio.Event()

    async def on_message(self, message: str | bytes) -> None:
        assert Gated.gate is not None
        await Gated.gate.wait()
        self.send(f"{message[:5]!s} {len(message)}")


def deflated(payload: bytes) -> bytes:
    """A permessage-deflate payload (RFC 7692: raw deflate, sync flush, tail removed)."""
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def deflate_burst(messages: list[bytes]) -> bytes:
    return b"".join(frame(FIN | RSV1 | TEXT, deflated(m)) for m in messages)


def inbox_bytes(conn: Any) -> int:
    """Inflated bytes of the messages the connection holds for its handler (not yet taken)."""
    return sum(len(m) for m in conn._inbox if isinstance(m, str | bytes))


def wait_all_read(server: ThreadedServer, conn: Any, sent: int, seconds: float = 5.0) -> None:
    """Until the server has read every byte the client sent (bounded)."""
    deadline = time.monotonic() + seconds
    while server.call(lambda: conn.bytes_in) < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.call(lambda: conn.bytes_in) == sent


def test_deflate_burst_in_one_write_is_inflated_within_the_budget() -> None:
    """200 compressed messages (each inflating to max_message_size) in one write to a handler
    that takes none: the connection holds at most 2 x max_message_size inflated, reads on as
    the handler takes them, and every message arrives, in order."""
    app = App()
    app.websocket("/gated", max_message_size=INFLATE_MAX)(Gated)
    messages = [b"%05d" % i + b"a" * (INFLATE_MAX - 5) for i in range(BURST)]
    burst = deflate_burst(messages)
    with ThreadedServer(app, access_log=False) as server:
        ws = raw_ws(server.port, "/gated", extensions="permessage-deflate")
        try:
            (conn,) = state(server).websockets
            ws.sock.sendall(burst)
            wait_all_read(server, conn, len(burst))
            held = server.call(lambda: inbox_bytes(conn))
            print(f"deflate burst: {len(burst)} bytes sent, {held} bytes held inflated")
            assert held <= 2 * INFLATE_MAX, held
            gate = Gated.gate
            assert gate is not None
            server.call(gate.set)
            frames = read_frames(ws.sock, want=BURST, seconds=10)
            assert [p for _, p in frames] == [b"%05d %d" % (i, INFLATE_MAX) for i in range(BURST)]
        finally:
            ws.__exit__()


def test_deflate_burst_to_a_concurrent_route_is_inflated_within_the_budget() -> None:
    """With `concurrent=True` each message is handed to a Task at once: those Tasks hold at
    most 2 x max_message_size of messages, and all 200 are answered once they may."""
    app = App()
    app.websocket("/gated", max_message_size=INFLATE_MAX, concurrent=True)(Gated)
    burst = deflate_burst([b"%05d" % i + b"a" * (INFLATE_MAX - 5) for i in range(BURST)])
    with ThreadedServer(app, access_log=False) as server:
        ws = raw_ws(server.port, "/gated", extensions="permessage-deflate")
        try:
            (conn,) = state(server).websockets
            ws.sock.sendall(burst)
            wait_all_read(server, conn, len(burst))
            waiting = server.call(lambda: conn._running)  # each Task holds one message
            print(f"deflate burst, concurrent: {waiting} messages held")
            assert waiting * INFLATE_MAX <= 2 * INFLATE_MAX, waiting
            gate = Gated.gate
            assert gate is not None
            server.call(gate.set)
            frames = read_frames(ws.sock, want=BURST, seconds=10)
            expected = [b"%05d %d" % (i, INFLATE_MAX) for i in range(BURST)]
            assert sorted(p for _, p in frames) == expected
        finally:
            ws.__exit__()


def test_deflate_burst_to_a_sync_handler_is_answered_in_order() -> None:
    """A sync handler takes each message at once: the held-back rest is inflated on later loop
    turns, one budget at a time, and every echo comes back in order."""
    app = App()
    app.websocket("/echo", max_message_size=INFLATE_MAX)(Echo)
    messages = [b"%05d" % i + b"e" * (INFLATE_MAX - 5) for i in range(BURST)]
    with (
        ThreadedServer(app, access_log=False) as server,
        raw_ws(server.port, "/echo", extensions="permessage-deflate") as sock,
    ):
        sock.settimeout(10)
        sock.sendall(deflate_burst(messages))
        frames = read_frames(sock, want=BURST, seconds=20)
        inflater = zlib.decompressobj(wbits=-15)  # the server compresses without context
        echoes = [inflater.decompress(p + b"\x00\x00\xff\xff")[:5] for _, p in frames]
        assert echoes == [b"%05d" % i for i in range(BURST)]


def test_deflate_burst_before_connect_on_rt_ws_is_inflated_within_the_budget() -> None:
    """The same on /rt/ws while on_connect has not answered: the commands behind `connect`
    wait within the budget, and each is answered in order once it has."""
    app = App()
    app.channel("room:{room}")
    gate: list[asyncio.Event] = []

    @app.on_connect
    async def slow_connect(ctx: Any) -> None:
        gate.append(asyncio.Event())
        await gate[0].wait()

    pad = "p" * (INFLATE_MAX - 64)
    commands = [json.dumps({"id": 1, "op": "connect"}).encode()]
    commands += [json.dumps({"id": i, "op": "ping", "pad": pad}).encode() for i in range(2, BURST)]
    burst = deflate_burst(commands)
    settings = WebSocketSettings(max_message_size=INFLATE_MAX)
    with ThreadedServer(app, access_log=False, websocket=settings) as server:
        ws = raw_ws(server.port, "/rt/ws", extensions="permessage-deflate")
        try:
            (conn,) = state(server).websockets
            ws.sock.sendall(burst)
            wait_all_read(server, conn, len(burst))
            held = server.call(lambda: inbox_bytes(conn))
            print(f"/rt/ws deflate burst before connect: {held} bytes held inflated")
            assert held <= 2 * INFLATE_MAX, held
            assert gate, "on_connect was not called"
            server.call(gate[0].set)
            frames = read_frames(ws.sock, want=BURST - 1, seconds=10)
            ids = [json.loads(payload)["id"] for _, payload in frames]
            assert ids == list(range(1, BURST))
        finally:
            ws.__exit__()
