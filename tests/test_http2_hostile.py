"""HTTP/2 against the published attacks, each by a raw h2 client (h2 and hyperframe on a socket)
against a live server: rapid reset, CONTINUATION flood, HPACK bomb, PING and SETTINGS floods,
zero-window stalls, stream-id exhaustion. Each ends the way the limit says, and another
client is served meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)

from rtserve import App
from rtserve.app.request import Request
from rtserve.app.response import Response, StreamingResponse
from rtserve.server.settings import HTTP2Settings, TimeoutSettings
from rtserve.testing import ThreadedServer
from tests.support.h2client import H2Client
from tests.support.tls import dev_tls
from tests.support.waiting import until

ENHANCE_YOUR_CALM, CANCEL, PROTOCOL_ERROR = 0xB, 0x8, 0x1
CHUNK = 64 * 1024


def make_app() -> App:
    app = App()

    @app.route("/")
    def hello(request: Request) -> str:
        return "hello"

    @app.route("/big")
    def big(request: Request) -> Response:
        return Response(b"b" * (1024 * 1024), content_type="application/octet-stream")

    @app.route("/forever")
    def forever(request: Request) -> StreamingResponse:
        async def pieces() -> AsyncIterator[bytes]:
            while True:  # bounded by the stream's drain: the client takes nothing
                yield b"f" * CHUNK
                await asyncio.sleep(0)

        return StreamingResponse(pieces())

    return app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer[App]]:
    tls = dev_tls(tmp_path_factory.mktemp("h2hostile"))
    http2 = HTTP2Settings(max_resets=50, max_control_frames=100, max_concurrent_streams=20)
    timeouts = TimeoutSettings(send=1.0, header=1.0)
    with ThreadedServer(
        make_app(), tls=tls, http2=http2, timeouts=timeouts, access_log=False
    ) as srv:
        yield srv


def assert_another_client_is_served(port: int) -> None:
    other = H2Client(port)
    try:
        assert other.get("/").body == b"hello"
    finally:
        other.close()


def test_rapid_reset_ends_in_goaway(server: ThreadedServer[App]) -> None:
    client = H2Client(server.port)
    try:
        for _ in range(60):
            stream_id = client.request("/")
            client.conn.reset_stream(stream_id, CANCEL)
            client.send()
        assert_another_client_is_served(server.port)
        client.wait_closed()
        assert client.goaway == ENHANCE_YOUR_CALM
    finally:
        client.close()


def test_continuation_flood_is_bounded(server: ThreadedServer[App]) -> None:
    client = H2Client(server.port)
    try:
        client.until(lambda: client.conn.remote_settings.max_frame_size > 0)
        headers = HeadersFrame(1)
        headers.data = Encoder().encode([(b":method", b"GET"), (b":path", b"/")])
        flood = [headers.serialize()]
        for _ in range(200):  # never END_HEADERS
            more = ContinuationFrame(1)
            more.data = b"x-junk: " + b"j" * 8000
            flood.append(more.serialize())
        with contextlib.suppress(OSError):  # closed while we were still sending: as wanted
            client.sock.sendall(b"".join(flood))
        assert_another_client_is_served(server.port)
        client.wait_closed()
        assert client.goaway is not None and client.goaway != 0
    finally:
        client.close()


def test_hpack_bomb_is_refused(server: ThreadedServer[App]) -> None:
    """One 4 KiB field entered in the dynamic table, then referenced 100 times (a byte each):
    400 KiB decoded from a few KiB, beyond max_header_list_size."""
    client = H2Client(server.port)
    try:
        encoder = Encoder()
        fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https")]
        fields += [(b"x-bomb", b"B" * 4000)] * 100
        block = encoder.encode(fields)
        assert len(block) < 5000
        headers = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
        headers.data = block
        client.send(headers.serialize())
        assert_another_client_is_served(server.port)
        client.wait_closed()
        assert client.goaway is not None and client.goaway != 0
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["ping", "settings", "empty data"])
def test_control_frame_flood_ends_in_goaway(server: ThreadedServer[App], kind: str) -> None:
    client = H2Client(server.port)
    try:
        frames = []
        for i in range(300):
            if kind == "ping":
                ping = PingFrame(0)
                ping.opaque_data = i.to_bytes(8, "big")
                frames.append(ping.serialize())
            elif kind == "settings":
                settings = SettingsFrame(0)
                settings.settings = {SettingsFrame.MAX_CONCURRENT_STREAMS: 100}
                frames.append(settings.serialize())
            else:
                frames.append(DataFrame(1).serialize())  # on a request whose body is open
        if kind == "empty data":
            client.request("/", "POST", end=False)
        with contextlib.suppress(OSError):
            client.sock.sendall(b"".join(frames))
        assert_another_client_is_served(server.port)
        client.wait_closed()
        assert client.goaway == ENHANCE_YOUR_CALM
    finally:
        client.close()


def test_zero_window_stall_resets_the_stream_and_bounds_memory(
    server: ThreadedServer[App],
) -> None:
    """A client that never reopens its window: the endless stream stops at the stream's
    budget (drain), is reset after timeouts.send, and the connection lives on."""
    state = server.server.state if server.server is not None else None
    assert state is not None
    client = H2Client(server.port, auto_ack=False)
    try:
        stream_id = client.request("/forever")
        client.until(lambda: bool(client.streams[stream_id].headers))
        limits = state.settings.limits
        queued: list[int] = []

        def held() -> int:
            queued[:] = [c.describe().queued_bytes for c in list(state.connections)]
            return max(queued, default=0)

        until(lambda: held() > 0, 5, "the stream holds what the window refuses")
        assert held() <= limits.write_buffer_high + 2 * CHUNK + 65535, queued
        assert_another_client_is_served(server.port)
        client.until(lambda: client.streams[stream_id].reset is not None, 10)
        assert client.streams[stream_id].reset == CANCEL
        assert not client.closed  # only the stream ended
    finally:
        client.close()


def test_stream_ids_running_out_end_in_a_graceful_goaway(server: ThreadedServer[App]) -> None:
    client = H2Client(server.port)
    try:
        assert client.get("/").body == b"hello"
        client.conn.highest_outbound_stream_id = 2**31 - 3  # the next is the last possible
        last = client.request("/")
        assert last == 2**31 - 1
        assert client.response(last).body == b"hello"
        client.wait_closed()
        assert client.goaway == 0  # NO_ERROR: open a new connection
    finally:
        client.close()
    assert_another_client_is_served(server.port)


def test_streams_beyond_max_concurrent_end_the_connection(server: ThreadedServer[App]) -> None:
    """A client that opens more streams than SETTINGS allowed breaks the protocol: GOAWAY
    PROTOCOL_ERROR (h2 treats it as a connection error)."""
    client = H2Client(server.port)
    try:
        client.until(lambda: client.conn.remote_settings.max_concurrent_streams == 20)
        # Lie to our own h2 about the limit, to open more than the server allows.
        client.conn.remote_settings = type(client.conn.remote_settings)(client=False)
        for _ in range(21):
            client.request("/forever")
        client.wait_closed()
        assert client.goaway == PROTOCOL_ERROR
    finally:
        client.close()
    assert_another_client_is_served(server.port)


def test_a_connection_without_requests_is_closed_after_the_header_timeout(
    server: ThreadedServer[App],
) -> None:
    client = H2Client(server.port)  # the preface and SETTINGS, then nothing
    try:
        client.wait_closed(timeout=5)
        assert client.goaway == 0
    finally:
        client.close()


def test_a_client_that_reads_nothing_is_cut_off_after_the_send_timeout(
    server: ThreadedServer[App], caplog: pytest.LogCaptureFixture
) -> None:
    """Windows opened wide, then the socket never read: the server's write buffer fills, it
    frames no more, and after timeouts.send (1 s here) it drops the connection."""
    client = H2Client(server.port)
    try:
        client.conn.update_settings({SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        client.send()
        client.request("/forever")  # without end: beyond any socket buffer
        state = server.server.state if server.server is not None else None
        assert state is not None
        before = state.stats.limit_hits
        until(lambda: "cut off: took nothing" in caplog.text, 10, "the stalled client cut off")
        assert state.stats.limit_hits > before
        assert_another_client_is_served(server.port)
    finally:
        client.close()


def test_over_max_connections_an_h2_client_gets_goaway(tmp_path: Path) -> None:
    """The refusal a connection over max_connections gets speaks the protocol ALPN chose."""
    with ThreadedServer(
        make_app(), tls=dev_tls(tmp_path), max_connections=1, access_log=False
    ) as srv:
        first = H2Client(srv.port)
        try:
            assert first.get("/").body == b"hello"
            refused = H2Client(srv.port)
            try:
                refused.wait_closed()
                assert refused.goaway == 0 and refused.closed
            finally:
                refused.close()
            state = srv.server.state if srv.server is not None else None
            assert state is not None and state.stats.connections_refused == 1
            assert first.get("/").body == b"hello"
        finally:
            first.close()
