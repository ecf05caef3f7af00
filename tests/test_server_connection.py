"""The HTTP/1.1 connection over real sockets: pipelining, limits, timeouts, flow control."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from rtserve import App, Request, StreamingResponse
from rtserve.server.connection import TURN_REQUESTS
from rtserve.server.settings import LimitSettings, TimeoutSettings
from rtserve.testing import ThreadedServer
from tests.rawhttp import RawClient, get


def make_app() -> App:
    app = App()
    seen: dict[str, Any] = {
        "max_queue": 0,
        "max_buffer": 0,
        "paused": threading.Event(),
        "gone": threading.Event(),
    }
    app.seen = seen  # type: ignore[attr-defined]

    @app.route("/")
    def index(request: Request) -> str:
        return "ok"

    @app.route("/n/{n:int}")
    async def numbered(request: Request, n: int) -> str:
        if n % 3 == 0:
            await asyncio.sleep(0.001 * (n % 5))
        seen["max_queue"] = max(seen["max_queue"], len(request.exchange._transport.queue))  # type: ignore[attr-defined]
        return f"response {n}"

    @app.route("/echo", methods=["POST"])
    def echo(request: Request) -> bytes:
        return request.body

    @app.route("/upload", methods=["POST"], stream=True)
    async def upload(request: Request) -> dict[str, int]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return {"received": total}

    @app.route("/big")
    async def big(request: Request) -> None:
        exchange = request.exchange
        exchange.start(200, [(b"content-type", b"text/plain")])
        for _ in range(512):  # 32 MiB: more than the kernel's socket buffers hold
            exchange.write(b"x" * 65536)
            seen["max_buffer"] = max(seen["max_buffer"], exchange.buffered())
            if exchange.writing_paused:
                seen["paused"].set()
            await exchange.drain()
        exchange.end()

    @app.route("/inject")
    def inject(request: Request) -> None:
        request.exchange.respond(200, [(b"x-a", b"1\r\nx-b: 2")], b"hi")

    @app.route("/cut")
    async def cut(request: Request) -> None:
        request.exchange.start(200, [(b"content-type", b"text/plain")])
        request.exchange.write(b"partial")
        await asyncio.sleep(0)
        raise RuntimeError("failed mid-body")

    @app.route("/wait-gone")
    async def wait_gone(request: Request) -> str:
        await request.wait_disconnected()
        seen["gone"].set()
        return "bye"

    @app.route("/boom")
    def boom(request: Request) -> str:
        raise ValueError("secret detail")

    @app.route("/ignore-body", methods=["POST"], stream=True)
    def ignore_body(request: Request) -> str:
        return "not read"

    @app.route("/stream")
    def stream(request: Request) -> StreamingResponse:
        return StreamingResponse((f"piece {i}\n" for i in range(5)), content_type="text/plain")

    @app.route("/sleep")
    async def sleep(request: Request) -> str:
        await asyncio.sleep(0.3)
        return "slept"

    return app


@pytest.fixture(scope="module")
def server() -> Any:
    settings = dict(
        access_log=False,
        limits=LimitSettings(
            max_head_size=4096,
            max_headers=20,
            max_body_size=100_000,
            max_pipelined=8,
            write_buffer_high=65536,
            write_buffer_low=16384,
        ),
        timeouts=TimeoutSettings(header=0.5, keepalive=0.5, body=0.5),
    )
    with ThreadedServer(make_app(), **settings) as srv:  # type: ignore[arg-type]
        yield srv


def test_pipelined_requests_answered_in_order(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(b"".join(get(f"/n/{i}") for i in range(30)))
        responses = c.responses(30)
        assert [r.body.decode() for r in responses] == [f"response {i}" for i in range(30)]


def test_pipelining_pauses_reading(server: ThreadedServer) -> None:
    server.app.seen["max_queue"] = 0  # type: ignore[attr-defined]
    pad = "X-Pad: " + "p" * 1500 + "\r\n"
    total = 1500  # about 2.3 MB of requests: far more than one read
    data = b"".join(get(f"/n/{i}", extra=pad) for i in range(total))
    with RawClient(server.port, timeout=20) as c:
        # A pipelining client must read while it writes, or both sides block.
        sender = threading.Thread(target=c.send, args=(data,))
        sender.start()
        responses = c.responses(total)
        sender.join(10)
    assert len(responses) == total
    assert responses[-1].body == f"response {total - 1}".encode()
    # Reading pauses at max_pipelined queued requests; a single read may overshoot it.
    assert server.app.seen["max_queue"] < total / 4  # type: ignore[attr-defined]


def test_keep_alive_and_connection_close(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(get())
        assert c.response().status == 200
        c.send(get())
        assert c.response().status == 200
        c.send(get(extra="Connection: close\r\n"))
        r = c.response()
        assert r.headers["connection"] == "close"
        assert c.wait_closed()


def test_http10(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(get(version="1.0"))
        assert c.response().body == b"ok"
        assert c.wait_closed()
    with RawClient(server.port) as c:
        c.send(get(version="1.0", extra="Connection: keep-alive\r\n"))
        r = c.response()
        assert r.headers["connection"] == "keep-alive"
        c.send(get(version="1.0"))
        assert c.response().body == b"ok"


def test_head_has_no_body(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + get())
        # httptools cannot know a HEAD response has no body; parse by hand.
        deadline = time.monotonic() + 5
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 and time.monotonic() < deadline:
            data += c.sock.recv(65536)
        first, second = data.split(b"HTTP/1.1 200 OK")[1:]
        assert first.endswith(b"\r\n\r\n") and b"content-length: 2" in first
        assert second.endswith(b"ok")


def test_streaming_response(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(get("/stream"))
        r = c.response()
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.body == b"".join(f"piece {i}\n".encode() for i in range(5))


def test_chunked_request_body(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
        )
        assert c.response().body == b"hello world"


def test_expect_100_continue(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = c.sock.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"hello")
        assert c.response().body == b"hello"


def test_expect_100_continue_refused_when_too_big(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        r = c.response()
        assert r.status == 413
        assert c.wait_closed()


def test_streamed_upload(server: ThreadedServer) -> None:
    with RawClient(server.port, timeout=10) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(50):
            c.send(b"400\r\n" + b"u" * 1024 + b"\r\n")
        c.send(b"0\r\n\r\n")
        assert c.response().body == b'{"received":51200}'


def test_a_streaming_route_answering_an_empty_body_keeps_the_connection(
    server: ThreadedServer,
) -> None:
    """Content-Length: 0 is a complete body from the head on: answered at once (a stream
    route answers before the parser's end of message), the connection stays usable."""
    with RawClient(server.port) as c:
        c.send(b"POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        first = c.response()
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (first.body, c.response().status) == (b"not read", 200)
        assert "connection" not in first.headers


def test_a_streamed_body_that_arrived_while_queued_is_not_lost(server: ThreadedServer) -> None:
    """A stream route's request pipelined behind a slow one: its whole body is in before it
    is activated, and its handler still reads all of it."""
    with RawClient(server.port) as c:
        c.send(
            b"GET /sleep HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        )
        slow, upload = c.responses(2)
    assert slow.status == 200
    assert upload.body == b'{"received":5}'


def test_an_answer_before_the_body_is_read_says_connection_close(
    server: ThreadedServer,
) -> None:
    """A stream route that answers without reading the body: the unread rest makes the
    connection unusable, so the response says so (not a reset on the next request)."""
    with RawClient(server.port) as c:
        c.send(b"POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        response = c.response()
    assert (response.status, response.body) == (200, b"not read")
    assert response.headers.get("connection") == "close"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n", 413),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS hello on plain HTTP
    ],
)
def test_limits_and_smuggling_shapes(
    server: ThreadedServer, request_bytes: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with RawClient(server.port) as c, caplog.at_level("WARNING", "rtserve.server"):
        c.send(request_bytes)
        r = c.response()
        assert r.status == status
        assert r.headers["connection"] == "close"
        assert c.wait_closed()
    assert any(f" {status} " in m for m in caplog.messages), caplog.messages  # logged
    with RawClient(server.port) as other:  # the server is still fine
        other.send(get())
        assert other.response().body == b"ok"


def test_smuggled_request_is_never_answered(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /n/1 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        r = c.response()
        assert r.status == 400
        assert c.wait_closed()
        assert not c.collector.done  # no second response for the smuggled GET


def test_header_timeout_defeats_slowloris(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        start = time.monotonic()
        for _ in range(3):  # trickle: each piece is well inside any per-read timeout
            c.send(b"X-A: b\r\n")
        r = c.response()
        assert r.status == 408
        assert c.wait_closed()
        assert time.monotonic() - start < 3


def test_silent_connection_is_closed(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.sock.settimeout(5)
        r = c.response()
        assert r.status == 408  # no request head at all within the header timeout


def test_idle_keep_alive_timeout(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(get())
        assert c.response().status == 200
        start = time.monotonic()
        assert c.wait_closed()
        assert 0.3 < time.monotonic() - start < 3
        assert not c.collector.done  # closed quietly, no 408


def test_a_busy_keep_alive_connection_is_not_timed_out(server: ThreadedServer) -> None:
    # Requests answered within the read that brought them never leave the idle phase: each
    # one must still push the keep-alive deadline back (it closed a steady client once).
    keepalive = server.server.settings.timeouts.keepalive  # type: ignore[union-attr]
    with RawClient(server.port) as c:
        start = time.monotonic()
        while time.monotonic() - start < 3 * keepalive:
            c.send(get())
            assert c.response().status == 200
            time.sleep(keepalive / 5)


def test_body_timeout(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        r = c.response()
        assert r.status == 408
        assert c.wait_closed()


def test_slow_reader_bounds_the_write_buffer(server: ThreadedServer) -> None:
    server.app.seen["max_buffer"] = 0  # type: ignore[attr-defined]
    seen = server.app.seen  # type: ignore[attr-defined]
    seen["paused"].clear()
    with RawClient(server.port, timeout=20) as c:
        c.send(get("/big"))
        assert seen["paused"].wait(10)  # nobody reads: the server must hit backpressure
        r = c.response()
        assert len(r.body) == 512 * 65536
    # Never much more than the high-water mark plus one piece is buffered in the server.
    assert server.app.seen["max_buffer"] <= 65536 + 65536 + 16  # type: ignore[attr-defined]


def test_sync_handler_creates_no_task(server: ThreadedServer) -> None:
    created: list[Any] = []

    def install() -> None:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            created.append(coro)
            return asyncio.Task(coro, loop=loop, **kw)

        loop.set_task_factory(factory)

    server.call(install)
    try:
        with RawClient(server.port) as c:
            c.send(get() * 5)
            assert len(c.responses(5)) == 5
            assert created == []
            c.send(get("/sleep"))
            assert c.response().body == b"slept"
            assert len(created) == 1  # the handler that suspended continues in one Task
    finally:
        server.call(lambda: asyncio.get_running_loop().set_task_factory(None))


def test_many_connections_one_bad(server: ThreadedServer) -> None:
    clients = [RawClient(server.port) for _ in range(20)]
    try:
        clients[7].send(b"NOT HTTP AT ALL\r\n\r\n")
        for i, c in enumerate(clients):
            if i != 7:
                c.send(get())
        for i, c in enumerate(clients):
            r = c.response()
            assert r.status == (400 if i == 7 else 200)
    finally:
        for c in clients:
            c.close()


def test_bad_header_from_a_handler_becomes_500(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(get("/inject"))
        assert c.response().status == 500
        c.send(get())
        assert c.response().status == 200


def test_failure_mid_body_is_visible_to_the_client(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(get("/cut"))
        data = b""
        while chunk := c.sock.recv(65536):
            data += chunk
        assert data.endswith(b"7\r\npartial\r\n")  # no last chunk: the body is cut, not complete


def test_long_pipeline_behind_a_slow_request(server: ThreadedServer) -> None:
    # Thousands of tiny requests queued behind one that suspends are then answered one after
    # another without recursing once per request.
    count = 3000
    data = get("/sleep") + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * count
    with RawClient(server.port, timeout=20) as c:
        sender = threading.Thread(target=c.send, args=(data,))
        sender.start()
        responses = c.responses(count + 1)
        sender.join(10)
    assert len(responses) == count + 1
    assert responses[0].body == b"slept" and responses[-1].body == b"ok"


def test_declined_upgrade_keeps_the_connection_usable(server: ThreadedServer) -> None:
    with RawClient(server.port) as c:
        c.send(get(extra="Connection: Upgrade\r\nUpgrade: h2c\r\n") + get("/n/1"))
        first, second = c.responses(2)
        assert first.body == b"ok" and second.body == b"response 1"


def test_wait_disconnected_sees_the_client_leave(server: ThreadedServer) -> None:
    seen = server.app.seen  # type: ignore[attr-defined]
    seen["gone"].clear()
    c = RawClient(server.port)
    c.send(get("/wait-gone"))
    c.close()
    assert seen["gone"].wait(5)


def test_debug_override_shows_tracebacks() -> None:
    for debug in (False, True):
        with ThreadedServer(make_app(), access_log=False, debug=debug) as srv, srv.client() as c:
            r = c.get("/boom")
            assert r.status == 500
            assert ("secret detail" in r.text) is debug


def test_a_pipelining_flood_does_not_hold_up_another_client() -> None:
    """One read full of pipelined requests is answered a bounded number per loop turn, so a
    request on another connection that arrived at the same time is answered long before the
    flood is; the flood is still answered whole and in order."""
    app = App()
    answered: list[int] = []  # flood request numbers, and -1 for the probe, as answered

    @app.route("/n/{n:int}")
    def numbered(request: Request, n: int) -> str:
        answered.append(n)
        return f"response {n}"

    @app.route("/probe")
    def probe_route(request: Request) -> str:
        answered.append(-1)
        return "probe"

    flood = b"".join(get(f"/n/{i}") for i in range(1000))  # ~30 KB: socket buffers hold it
    with ThreadedServer(app, access_log=False) as server:
        state = server.app.server_state
        assert state is not None and server.loop is not None
        with RawClient(server.port, timeout=10) as flooder, RawClient(server.port) as probe:
            for _ in range(500):  # bounded: both accepted, before the loop is held
                if server.call(lambda: len(state.connections)) == 2:
                    break
                time.sleep(0.01)
            # Hold the server's loop while both send, so one turn finds both reads waiting.
            held, release = threading.Event(), threading.Event()
            server.loop.call_soon_threadsafe(lambda: (held.set(), release.wait(10)))  # type: ignore[func-returns-value]
            assert held.wait(10)
            try:
                flooder.send(flood)
                probe.send(get("/probe"))
            finally:
                release.set()
            assert probe.response().body == b"probe"
            flood_answers = flooder.responses(1000)
            assert server.call(lambda: state.backlogged) == 0  # nothing left for a later turn
    before_probe = answered.index(-1)
    print(f"flood answers before the probe's: {before_probe} of 1000")
    assert before_probe <= TURN_REQUESTS + 1  # a turn's share (and one head begun before)
    assert [r.body for r in flood_answers] == [f"response {i}".encode() for i in range(1000)]
    assert [n for n in answered if n != -1] == list(range(1000))
