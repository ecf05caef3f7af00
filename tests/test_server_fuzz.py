"""Random and mutated requests over real sockets: the server answers 4xx or closes, never 5xx,
never crashes, and keeps serving everyone else."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtserve import App, Request
from rtserve.server.settings import LimitSettings, TimeoutSettings
from rtserve.testing import ThreadedServer
from tests.rawhttp import RawClient, get


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    app = App()

    @app.route("/")
    def index(request: Request) -> str:
        return "ok"

    @app.route("/items/{id:int}", methods=["GET", "POST"])
    async def item(request: Request, id: int) -> dict[str, int]:
        return {"id": id, "size": len(request.body)}

    with ThreadedServer(
        app,
        access_log=False,
        limits=LimitSettings(max_head_size=2048, max_body_size=4096),
        timeouts=TimeoutSettings(header=2, body=2, keepalive=2),
    ) as srv:
        yield srv


def exchange(port: int, data: bytes) -> tuple[list[int], bytes]:
    """Send `data`, half-close, and collect the status codes of what comes back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse early and close; that is allowed
        received = b""
        while len(received) < 1_000_000:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    # Our bodies never contain a status line, so a scan finds every response.
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)], received


def assert_still_serving(port: int) -> None:
    with RawClient(port) as c:
        c.send(get())
        assert c.response().body == b"ok"


METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"G\x00T"])
TOKENS = st.sampled_from([b"/", b"/items/1", b"/items/x", b"/%2e%2e/", b"*", b"//", b"/a?b=c"])
HEADER_NAMES = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"X-A", b""]
)
HEADER_VALUES = st.one_of(
    st.sampled_from([b"chunked", b"0", b"5", b"-1", b"close", b"100-continue", b"a\x00b", b""]),
    st.binary(max_size=30),
)


@st.composite
def structured_requests(draw: st.DrawFn) -> bytes:
    method = draw(METHODS)
    target = draw(TOKENS)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x"]))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    sep = draw(st.sampled_from([b"\r\n", b"\n", b"\r\n"]))
    body = draw(st.binary(max_size=50))
    head = method + b" " + target + b" " + version + sep
    head += b"".join(n + b": " + v + sep for n, v in headers)
    return head + sep + body


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(structured_requests(), st.binary(max_size=200)))
def test_garbage_and_near_misses(server: ThreadedServer, data: bytes) -> None:
    statuses, _ = exchange(server.port, data)
    for status in statuses:
        assert status < 500 or status in (501, 505), (data, statuses)


VALID = (
    b"POST /items/7 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=3))
def test_mutated_valid_requests(server: ThreadedServer, mutations: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, value in mutations:
        data[pos] = value
    statuses, _ = exchange(server.port, bytes(data))
    for status in statuses:
        assert status < 500 or status in (501, 505), (bytes(data), statuses)
    if not mutations:
        assert statuses == [200, 200]


def test_still_serving_after_fuzzing(server: ThreadedServer) -> None:
    statuses, _ = exchange(server.port, b"\xff" * 100)
    assert statuses in ([], [400])
    assert_still_serving(server.port)
    assert server.server is not None and server.server.state is not None
    assert not server.server.state.tasks  # nothing left hanging
