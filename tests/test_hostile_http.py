"""Hostile HTTP/1.1 clients against a real server: each is answered with the right status or a
close, never a smuggled second request, and afterwards the server's open connection count is
back to its baseline and an ordinary request still gets 200.

Cases already proved elsewhere are not repeated here (see docs/reliability.md):
tests/test_server_connection.py (basic slowloris, body timeout, one huge header, too many
headers, CL+TE, differing duplicate CL, bad chunk size, obs-fold, TE gzip, pipelining order
and read pausing, a handler's raw CR/LF header) and tests/test_static.py (28 traversal
targets, symlinks out of the folder, absolute-form traversal).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from rtserve import App, RedirectResponse, Request, Response
from rtserve.server.connection import HTTPConnection
from rtserve.server.settings import LimitSettings, TimeoutSettings
from rtserve.testing import ThreadedServer
from tests.rawhttp import RawClient, get

SECRET = b"top secret: never served"
HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
MAX_HEAD = 4096
MAX_BODY = 100_000
MAX_PIPELINED = 8
# The ticker that enforces timeouts runs about once a second: allow for it, plus CI noise.
TIMEOUT_SLACK = 2.5


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    (base / "secret.txt").write_bytes(SECRET)
    public = base / "public"
    public.mkdir()
    (public / "hello.txt").write_text("hello\n")
    (public / "sub").mkdir()
    (public / "out.txt").symlink_to(base / "secret.txt")
    return base


def make_app(site: Path) -> App:
    app = App()
    smuggled: list[str] = []
    app.smuggled = smuggled  # type: ignore[attr-defined]
    app.static("/static", site / "public")

    @app.route("/")
    def index(request: Request) -> str:
        return "ok"

    @app.route("/smuggled", methods=["GET", "POST"])
    def smuggled_route(request: Request) -> str:
        smuggled.append(request.method)  # only ever reached by bytes smuggled past a request
        return "SMUGGLED"

    @app.route("/n/{n:int}")
    def numbered(request: Request, n: int) -> str:
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

    @app.route("/host")
    def host(request: Request) -> str:
        return f"{request.host} {request.target} {request.url}"

    @app.route("/header")
    def header(request: Request) -> Response:
        return Response("h", headers={"x-user": request.query.get("v", "")})

    @app.route("/cookie")
    def cookie(request: Request) -> Response:
        response = Response("c")
        response.set_cookie("name", request.query.get("v", ""))
        return response

    @app.route("/go")
    def go(request: Request) -> RedirectResponse:
        return RedirectResponse(request.query.get("to", "/"))

    return app


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(
        make_app(site),
        access_log=False,
        limits=LimitSettings(
            max_head_size=MAX_HEAD,
            max_headers=20,
            max_body_size=MAX_BODY,
            max_pipelined=MAX_PIPELINED,
        ),
        timeouts=TimeoutSettings(header=HEADER_TIMEOUT, keepalive=2, body=BODY_TIMEOUT),
    ) as srv:
        yield srv


def open_connections(server: ThreadedServer) -> int:
    state = server.app.server_state
    assert state is not None
    return int(server.call(lambda: len(state.connections)))


def wait_for_baseline(server: ThreadedServer, baseline: int = 0, limit: float = 5.0) -> None:
    """The server's open connection count falls back to `baseline` within `limit` seconds."""
    deadline = time.monotonic() + limit
    count = open_connections(server)
    for _ in range(int(limit / 0.02) + 1):  # bounded in count and in time
        if count <= baseline or time.monotonic() > deadline:
            break
        time.sleep(0.02)
        count = open_connections(server)
    assert count <= baseline, f"{count} connections still open, baseline {baseline}"


@pytest.fixture
def recovers(server: ThreadedServer) -> Iterator[None]:
    """After the case: connections back to baseline, nothing smuggled, a plain GET is 200."""
    wait_for_baseline(server)
    yield
    wait_for_baseline(server)
    with RawClient(server.port) as c:
        c.send(get(extra="Connection: close\r\n"))
        r = c.response()
        assert (r.status, r.body) == (200, b"ok")
    wait_for_baseline(server)
    assert server.app.smuggled == []  # type: ignore[attr-defined]


def read_all(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the server sends until it closes (bounded by `limit` seconds and 4 MB)."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while len(data) < 4_000_000 and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def statuses(data: bytes) -> list[int]:
    # Our bodies never contain a status line, so a scan finds every response.
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def send_raw(port: int, data: bytes, *, limit: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        # Refused early and closed: what the server said is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_all(sock, limit)


# --- request smuggling and bad framing -----------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
POST = b"POST /echo HTTP/1.1\r\nHost: t\r\n"
TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"

FRAMING = {
    # Content-Length shapes (CL+TE and differing duplicates: tests/test_server_connection.py).
    "duplicate CL, same value": (
        POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    "CL list": (POST + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    "CL with sign": (POST + b"Content-Length: +5\r\n\r\nhello", 400),
    "CL negative": (POST + b"Content-Length: -1\r\n\r\n", 400),
    "CL hex": (POST + b"Content-Length: 0x5\r\n\r\nhello", 400),
    "CL overflow": (POST + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    "TE then CL": (POST + TE_CHUNKED + b"Content-Length: 40\r\n\r\n0\r\n\r\n", 400),
    # Transfer-Encoding shapes.
    "TE chunked, identity": (POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    "TE identity, chunked": (POST + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
    "TE gzip + TE chunked": (
        POST + b"Transfer-Encoding: gzip\r\n" + TE_CHUNKED + b"\r\n0\r\n\r\n",
        501,
    ),
    "TE chunked twice": (POST + TE_CHUNKED + TE_CHUNKED + b"\r\n0\r\n\r\n", 400),
    "TE xchunked": (POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    "TE obs-fold": (POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    "TE space before colon": (POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "TE NUL": (POST + b"Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n", 400),
    # Line endings.
    "LF-only request line": (b"GET / HTTP/1.1\nHost: t\n\n", 400),
    "LF-only header line": (b"GET / HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n", 400),
    "bare CR": (b"GET / HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n", 400),
    "LF-only chunk lines": (POST + TE_CHUNKED + b"\r\n5\nhello\n0\n\n", 400),
    # Chunk sizes and data.
    "chunk size negative": (POST + TE_CHUNKED + b"\r\n-1\r\n\r\n", 400),
    "chunk size 0x": (POST + TE_CHUNKED + b"\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size overflow": (POST + TE_CHUNKED + b"\r\n" + b"f" * 20 + b"\r\n", 400),
    "chunk size space": (POST + TE_CHUNKED + b"\r\n5 \r\nhello\r\n0\r\n\r\n", 400),
    "chunk data too long": (POST + TE_CHUNKED + b"\r\n5\r\nhelloXX\r\n0\r\n\r\n", 400),
    "chunk missing CRLF": (POST + TE_CHUNKED + b"\r\n5\r\nhello0\r\n\r\n", 400),
    "chunk size empty": (POST + TE_CHUNKED + b"\r\n\r\nhello\r\n0\r\n\r\n", 400),
}


@pytest.mark.parametrize(("data", "status"), FRAMING.values(), ids=FRAMING.keys())
def test_bad_framing_is_refused_and_closed(
    server: ThreadedServer, recovers: None, data: bytes, status: int
) -> None:
    answer = send_raw(server.port, data + SMUGGLED)
    assert statuses(answer) == [status], answer[:300]  # one answer: nothing smuggled
    assert b"connection: close\r\n" in answer
    assert b"SMUGGLED" not in answer


@pytest.mark.parametrize("step", [None, 997])
def test_overlong_chunk_extension(server: ThreadedServer, recovers: None, step: int | None) -> None:
    # llhttp skips chunk extensions without a limit (CVE-2024-22019 in Node): we bound them.
    # (What arrives in the same read as the head or as the end of the message is not counted:
    # that is at most two reads, 256 KiB each.)
    ext = b"5;name=" + b"v" * (MAX_HEAD * 4)
    pieces = [ext] if step is None else [ext[i : i + step] for i in range(0, len(ext), step)]
    with RawClient(server.port) as c:
        c.send(POST + TE_CHUNKED + b"\r\n")
        try:
            for piece in pieces:
                time.sleep(0.01)  # each piece its own read, as a trickling client's would be
                c.send(piece)
            time.sleep(0.05)
            c.send(b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.response()
        assert r.status == 400
        assert c.wait_closed()
        assert not c.collector.done


def test_short_chunk_extensions_and_many_small_chunks_are_fine(
    server: ThreadedServer, recovers: None
) -> None:
    body = b"".join(b"1;ext=%d\r\n%c\r\n" % (i, 97 + i % 26) for i in range(3000))
    with RawClient(server.port) as c:
        c.send(POST + TE_CHUNKED + b"\r\n")
        for i in range(0, len(body), 4096):
            c.send(body[i : i + 4096])
        c.send(b"0\r\n\r\n")
        r = c.response()
        assert r.status == 200 and len(r.body) == 3000


def test_pipeline_with_a_bad_request_in_the_middle(server: ThreadedServer, recovers: None) -> None:
    good = b"".join(get(f"/n/{i}") for i in range(5))
    bad = POST + b"Content-Length: 3\r\n" + TE_CHUNKED + b"\r\n0\r\n\r\n"
    answer = send_raw(server.port, good + bad + SMUGGLED + get("/n/99"))
    assert statuses(answer) == [200] * 5 + [400]
    for i in range(5):
        assert f"response {i}".encode() in answer
    assert b"response 99" not in answer


def test_http10_chunked_request_is_answered_then_closed(
    server: ThreadedServer, recovers: None
) -> None:
    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing, whatever Connection says:
    # answer the request, then close (what follows is never read as a request).
    request = (
        b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\n"
        + TE_CHUNKED
        + b"\r\n4\r\nbody\r\n0\r\n\r\n"
    )
    answer = send_raw(server.port, request + SMUGGLED)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200"], answer[:300]
    assert b"connection: close\r\n" in answer and answer.endswith(b"\r\n\r\nbody")


# --- invalid methods and targets ---------------------------------------------------------

TARGETS = {
    "unknown method": (b"FOO / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "lower-case method": (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "control char in method": (b"G\x01T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "asterisk for GET": (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "asterisk for POST": (b"POST * HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 400),
    "authority-form for GET": (b"GET evil.example:80 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "CONNECT": (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "absolute-form with userinfo": (b"GET http://u@evil.example/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "absolute-form, other scheme": (b"GET ftp://evil.example/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "absolute-form, no host": (b"GET http:/// HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "NUL in target": (b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "control char in target": (b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "DEL in target": (b"GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "tab in target": (b"GET /a\tb HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "raw 8-bit in target": (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "empty target": (b"GET  HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "query-only target": (b"GET ?a=b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "overlong request line": (b"GET /" + b"a" * (MAX_HEAD + 10) + b" HTTP/1.1\r\n", 414),
    "HTTP/1.2": (b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 400),
    "HTTP/2.0 on HTTP/1": (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "HTTP/0.9": (b"GET /\r\n\r\n", 505),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "no Host in HTTP/1.1": (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    "absolute-form without Host": (b"GET http://evil.example/ HTTP/1.1\r\n\r\n", 400),
    "two Host fields": (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
    # RFC 9112 3.2 and RFC 3986 3.2.2: a Host is host[:port].
    "empty Host": (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
    "empty Host in HTTP/1.0": (b"GET / HTTP/1.0\r\nHost:\r\n\r\n", 400),
    "space in Host": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "tab in Host": (b"GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n", 400),
    "path in Host": (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "query in Host": (b"GET / HTTP/1.1\r\nHost: a?b\r\n\r\n", 400),
    "fragment in Host": (b"GET / HTTP/1.1\r\nHost: a#b\r\n\r\n", 400),
    "userinfo in Host": (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    "backslash in Host": (b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", 400),
    "port only in Host": (b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400),
    "empty port in Host": (b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n", 400),
    "letters in Host port": (b"GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n", 400),
    "Host port too big": (b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", 400),
    "two ports in Host": (b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", 400),
    "unclosed IPv6 Host": (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
    "bad percent in Host": (b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", 400),
    "absolute-form, bad port": (b"GET http://a:x/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "absolute-form, empty port": (b"GET http://a:/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "unsupported Expect": (b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n", 417),
    "header without colon": (b"GET / HTTP/1.1\r\nHost: t\r\nnocolon\r\n\r\n", 400),
    "NUL in header value": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400),
}


@pytest.mark.parametrize(("data", "status"), TARGETS.values(), ids=TARGETS.keys())
def test_invalid_methods_and_targets(
    server: ThreadedServer, recovers: None, data: bytes, status: int
) -> None:
    answer = send_raw(server.port, data + SMUGGLED)
    assert statuses(answer) == [status], answer[:300]
    assert b"connection: close\r\n" in answer


def test_options_asterisk_is_answered_not_refused(server: ThreadedServer, recovers: None) -> None:
    answer = send_raw(server.port, b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [404]  # no route serves `*`; a clean answer, not a 400 or 5xx


GOOD_HOSTS = [
    "t",
    "localhost:8000",
    "127.0.0.1:80",
    "[::1]:8080",
    "[fe80::1%25eth0]",
    "xn--bcher-kva.Example.COM",
    "a_b-c~d.e",
    "caf%C3%A9.example:65535",
    "a!$&'()*+,;=",
]


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_valid_hosts_are_served(server: ThreadedServer, recovers: None, host: str) -> None:
    request = f"GET /host HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    answer = send_raw(server.port, request.encode())
    assert statuses(answer) == [200], answer[:300]
    assert answer.endswith(f"{host} /host http://{host}/host".encode())


def test_absolute_form_target_decides_the_host(server: ThreadedServer, recovers: None) -> None:
    # RFC 9112 3.2.2: the host in an absolute-form target replaces the Host field, so the app
    # (and the WebSocket origin check) never sees two different hosts for one request.
    answer = send_raw(
        server.port,
        b"GET http://other.example:8080/host?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert statuses(answer) == [200]
    assert answer.endswith(b"other.example:8080 /host?x=1 http://other.example:8080/host?x=1")


# --- slow clients --------------------------------------------------------------------------


def test_slowloris_byte_by_byte_past_the_header_timeout(
    server: ThreadedServer, recovers: None
) -> None:
    # Each byte comes well inside any per-read timeout; the head as a whole must not.
    request = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"z" * 200
    with RawClient(server.port) as c:
        start = time.monotonic()
        sent = 0
        for byte in request:  # bounded: 200-odd bytes, stops at the server's close
            try:
                c.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            if time.monotonic() - start > HEADER_TIMEOUT + TIMEOUT_SLACK:
                break
            time.sleep(0.02)
        r = c.response()
        elapsed = time.monotonic() - start
        assert r.status == 408
        assert c.wait_closed()
    assert HEADER_TIMEOUT * 0.8 < elapsed < HEADER_TIMEOUT + TIMEOUT_SLACK
    assert sent < len(request)  # cut off before the trickle was done


def test_slowloris_on_a_kept_alive_connection(server: ThreadedServer, recovers: None) -> None:
    with RawClient(server.port) as c:
        c.send(get())
        assert c.response().status == 200
        c.send(b"GET / HTTP/1.1\r\n")  # the second head starts, then trickles
        start = time.monotonic()
        for _ in range(100):  # bounded; the server closes long before
            try:
                c.send(b"X: y\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            if time.monotonic() - start > HEADER_TIMEOUT + TIMEOUT_SLACK:
                break
            time.sleep(0.05)
        r = c.response()
        assert r.status == 408
        assert c.wait_closed()
        assert time.monotonic() - start < HEADER_TIMEOUT + TIMEOUT_SLACK


def test_many_slowloris_connections_do_not_block_others(
    server: ThreadedServer, recovers: None
) -> None:
    attackers = [RawClient(server.port) for _ in range(50)]
    try:
        for a in attackers:
            a.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        with RawClient(server.port) as c:  # served at once, meanwhile
            c.send(get())
            assert c.response().body == b"ok"
        start = time.monotonic()
        for a in attackers:
            assert a.response().status == 408
            assert a.wait_closed()
        assert time.monotonic() - start < HEADER_TIMEOUT + TIMEOUT_SLACK
    finally:
        for a in attackers:
            a.close()


@pytest.mark.parametrize(
    ("head", "first"),
    [
        (POST + TE_CHUNKED + b"\r\n", b"a\r\n01234"),  # stalls inside a chunk
        (POST + TE_CHUNKED + b"\r\n", b"5\r\nhello\r\n"),  # stalls between chunks
        (b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n", b"x" * 10),
        (b"POST /upload HTTP/1.1\r\nHost: t\r\n" + TE_CHUNKED + b"\r\n", b"3\r\nabc\r\n"),
    ],
    ids=["mid-chunk", "between-chunks", "streamed-handler-CL", "streamed-handler-chunked"],
)
def test_stalled_body_gets_408(
    server: ThreadedServer, recovers: None, head: bytes, first: bytes
) -> None:
    with RawClient(server.port) as c:
        c.send(head + first)
        start = time.monotonic()
        r = c.response()
        assert r.status == 408
        assert c.wait_closed()
        assert time.monotonic() - start < BODY_TIMEOUT + TIMEOUT_SLACK


@pytest.mark.parametrize("path", ["/echo", "/upload"], ids=["buffered", "streamed-handler"])
def test_a_body_trickled_below_the_minimum_rate_gets_408(site: Path, path: str) -> None:
    """Each piece well within timeouts.body, but the average far below limits.min_body_rate:
    the budget (timeouts.body, plus a second per min_body_rate bytes) runs out."""
    with ThreadedServer(
        make_app(site),
        access_log=False,
        timeouts=TimeoutSettings(body=BODY_TIMEOUT),
        limits=LimitSettings(min_body_rate=100),
    ) as srv:
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
        with RawClient(srv.port) as c:
            c.send(head.encode())
            start = time.monotonic()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(100):  # 10 bytes/s, one byte every 0.1 s: never a 0.5 s pause
                    c.send(b"x")
                    if select.select([c.sock], [], [], 0)[0]:  # answered
                        break
                    time.sleep(0.1)
            r = c.response()
            assert (r.status, r.body) == (408, b"408 request body too slow\n")
            assert time.monotonic() - start < BODY_TIMEOUT * 2 + TIMEOUT_SLACK
        # A body at a rate above the minimum is taken whole.
        with RawClient(srv.port) as c:
            c.send(head.encode())
            for _ in range(10):
                c.send(b"x" * 100)
                time.sleep(0.1)
            assert c.response().status == 200


# --- huge heads and bodies -----------------------------------------------------------------


def test_header_trickled_past_the_head_limit_without_ending(
    server: ThreadedServer, recovers: None
) -> None:
    with RawClient(server.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
        try:
            for _ in range(MAX_HEAD // 256 + 4):  # never a CRLF: the field stays open
                c.send(b"b" * 256)
                time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.response()
        assert r.status == 431
        assert c.wait_closed()


def test_many_small_headers_over_the_head_size(server: ThreadedServer, recovers: None) -> None:
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 300) for i in range(15))  # 15 < 20 fields
    answer = send_raw(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    assert statuses(answer) == [431]


@pytest.mark.parametrize("expect", [False, True])
@pytest.mark.parametrize("route", ["/echo", "/upload"])
def test_chunked_body_over_the_limit(
    server: ThreadedServer, recovers: None, expect: bool, route: str
) -> None:
    head = b"POST %s HTTP/1.1\r\nHost: t\r\n" % route.encode() + TE_CHUNKED
    if expect:
        head += b"Expect: 100-continue\r\n"
    piece = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head + b"\r\n")
        if expect:
            assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        try:
            for _ in range(MAX_BODY // 0x4000 + 20):  # well past the limit
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    assert 413 in statuses(answer)
    assert b"connection: close\r\n" in answer


@pytest.mark.parametrize("route", ["/echo", "/upload"])
def test_declared_body_over_the_limit_with_expect(
    server: ThreadedServer, recovers: None, route: str
) -> None:
    head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
    answer = send_raw(server.port, head % (route.encode(), MAX_BODY + 1))
    assert statuses(answer) == [413]  # no 100 Continue first: the body is never invited


def test_declared_body_over_the_limit_sent_anyway(server: ThreadedServer, recovers: None) -> None:
    head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY * 50)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        try:
            for _ in range(200):  # the server answers and closes without reading it all
                sock.sendall(b"y" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    assert statuses(answer)[:1] == [413]


# --- pipelining ----------------------------------------------------------------------------


def test_pipelining_client_that_never_reads_is_bounded(
    server: ThreadedServer, recovers: None
) -> None:
    """Megabytes of pipelined requests and no reading: what the server takes in is bounded."""
    state = server.app.server_state
    assert state is not None
    request = get("/n/1")
    data = request * 300_000  # 9 MB of requests: more than the kernel buffers both ways
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 2
        while sent < len(data) and time.monotonic() < deadline:  # bounded in time
            try:
                sent += sock.send(data[sent : sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.2)  # let the server read whatever it is going to

        def measure() -> tuple[int, int, int]:
            conns = [c for c in state.connections if isinstance(c, HTTPConnection)]
            assert len(conns) == 1
            conn = conns[0]
            return len(conn.queue), conn.bytes_in, conn.transport.get_write_buffer_size()

        # The server works through what it took a share of requests per loop turn: wait
        # (bounded) until reading has stopped, two looks 0.3 s apart finding the same.
        queued, taken, buffered = server.call(measure)
        for _ in range(60):
            time.sleep(0.3)
            now = server.call(measure)
            if now == (queued, taken, buffered):
                break
            queued, taken, buffered = now
        assert server.call(measure) == (queued, taken, buffered)  # reading has stopped
        print(f"pipelined, never read: sent {sent}, taken {taken}, queued {queued}")
        # Reading pauses at max_pipelined queued requests, but one read (at most 256 KiB) is
        # parsed whole first; replies wait in the write buffer, at most its high-water mark
        # plus one reply (no new request is started while writing is paused).
        assert sent < len(data)  # the client was blocked: nobody drained its requests
        assert taken < len(data) // 4, taken  # about what the kernel's buffers hold
        assert queued <= 256 * 1024 // len(request) + MAX_PIPELINED, queued
        assert buffered <= 256 * 1024 + 4096, buffered
    finally:
        sock.close()


def test_pipelined_requests_with_bodies_in_order(server: ThreadedServer, recovers: None) -> None:
    requests = b"".join(
        POST + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        for body in (b"body-%d" % i for i in range(200))
    )
    with RawClient(server.port, timeout=10) as c:
        sender = threading.Thread(target=c.send, args=(requests,))
        sender.start()
        responses = c.responses(200)
        sender.join(5)
    assert [r.body for r in responses] == [b"body-%d" % i for i in range(200)]


# --- header injection through handler input ----------------------------------------------

INJECTIONS = ["a\r\nSet-Cookie: evil=1", "a\nX-Evil: 1", "a\rX-Evil: 1", "a\x00b"]


@pytest.mark.parametrize("value", INJECTIONS, ids=["crlf", "lf", "cr", "nul"])
def test_user_input_with_crlf_in_a_header_is_500(
    server: ThreadedServer, recovers: None, value: str
) -> None:
    with RawClient(server.port) as c:
        c.send(get(f"/header?v={quote(value)}") + get())
        first, second = c.responses(2)
        assert first.status == 500
        assert "set-cookie" not in first.headers and "x-evil" not in first.headers
        assert (second.status, second.body) == (200, b"ok")  # the connection stays in step
        assert not c.collector.done


@pytest.mark.parametrize("value", INJECTIONS, ids=["crlf", "lf", "cr", "nul"])
def test_user_input_with_crlf_in_a_cookie_is_encoded(
    server: ThreadedServer, recovers: None, value: str
) -> None:
    with RawClient(server.port) as c:
        c.send(get(f"/cookie?v={quote(value)}") + get())
        first, second = c.responses(2)
        assert first.status == 200
        assert first.headers["set-cookie"].startswith(f"name={quote(value)};")
        assert "x-evil" not in first.headers
        assert (second.status, second.body) == (200, b"ok")


def test_redirect_to_a_user_supplied_url_with_crlf(server: ThreadedServer, recovers: None) -> None:
    answer = send_raw(
        server.port,
        b"GET /go?to=/x%0D%0ASet-Cookie:%20evil=1%0D%0A%0D%0A<html> HTTP/1.1\r\n"
        b"Host: t\r\nConnection: close\r\n\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert statuses(answer) == [302]
    assert b"\r\nset-cookie" not in head.lower()
    assert b"\r\nlocation: /x%0D%0ASet-Cookie:%20evil=1%0D%0A%0D%0A%3Chtml%3E\r\n" in head
    assert body == b""


def test_non_latin1_header_value_from_a_handler_is_500(
    server: ThreadedServer, recovers: None
) -> None:
    with RawClient(server.port) as c:
        c.send(get("/header?v=%E2%98%83") + get())
        first, second = c.responses(2)
        assert first.status == 500 and second.status == 200


# --- path traversal on static files (the rest: tests/test_static.py) ---------------------

TRAVERSALS = [
    b"/static/.%2e/secret.txt",
    b"/static/%2e./secret.txt",
    b"/static/%2e%2e%5csecret.txt",
    b"/static/sub/..%5c..%5csecret.txt",
    b"/static/%25252e%25252e/secret.txt",  # triple-encoded
    b"/static/%e0%80%ae%e0%80%ae/secret.txt",  # overlong UTF-8 dots
    b"/static/%ef%bc%8e%ef%bc%8e/secret.txt",  # full-width dots
    b"/static/sub/%2e%2e/%2e%2e/secret.txt",
    b"/static/out.txt",  # a symlink out of the folder
    b"/static/out.txt%00.txt",
    b"/static/hello.txt/../../secret.txt",
    b"/static/..%u2216secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS, ids=[t.decode() for t in TRAVERSALS])
def test_static_traversal(server: ThreadedServer, recovers: None, target: bytes) -> None:
    answer = send_raw(
        server.port, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % target
    )
    assert SECRET not in answer
    assert statuses(answer) in ([400], [404]), answer[:200]


def test_raw_nul_and_backslash_in_a_static_target(server: ThreadedServer, recovers: None) -> None:
    for target in (b"/static/hello.txt\x00", b"/static/..\\..\\secret.txt", b"/static/\x00/../x"):
        request = b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % target
        answer = send_raw(server.port, request)
        assert SECRET not in answer
        assert statuses(answer) in ([400], [404])


def test_static_file_is_served_normally(server: ThreadedServer, recovers: None) -> None:
    answer = send_raw(
        server.port, b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert statuses(answer) == [200] and answer.endswith(b"hello\n")


def test_connections_all_back_to_baseline(server: ThreadedServer) -> None:
    """Whatever the cases above left behind is gone; nothing hangs in the server."""
    wait_for_baseline(server)
    state: Any = server.app.server_state
    assert not server.call(lambda: list(state.tasks))


SEND_TIMEOUT = 1.0


def test_a_client_that_stops_reading_its_answers_is_cut_off(site: Path) -> None:
    """Pipelined requests and no reading fill the write buffer; the client has
    `timeouts.send` to take some of it, then its connection is aborted. A slow reader that
    keeps taking a little is not."""
    with ThreadedServer(
        make_app(site), access_log=False, timeouts=TimeoutSettings(send=SEND_TIMEOUT)
    ) as srv:
        data = get("/n/1") * 100_000  # 3 MB of requests: far more answers than buffers hold

        def flood(sock: socket.socket, seconds: float) -> None:
            sock.setblocking(False)
            sent, deadline = 0, time.monotonic() + seconds
            while sent < len(data) and time.monotonic() < deadline:  # bounded in time
                try:
                    sent += sock.send(data[sent : sent + 65536])
                except (BlockingIOError, ConnectionError):
                    time.sleep(0.01)

        state = srv.app.server_state
        assert state is not None

        def stopped_is_blocked() -> bool:  # our answers to it fill the buffers: SEND phase
            return bool(
                srv.call(lambda: any(getattr(c, "writing_paused", 0) for c in state.connections))
            )

        stopped = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        slow_sender = socket.socket(fileno=os.dup(slow.fileno()))  # its writes, in a thread
        try:
            flood(stopped, 1.0)
            # On a loaded machine a second of flood may not be answers enough to fill the
            # buffers; the case starts once they are full (bounded: at most 20 s more).
            for _ in range(200):
                if stopped_is_blocked():
                    break
                flood(stopped, 0.1)
            assert stopped_is_blocked(), "the answers never filled the buffers"
            sender = threading.Thread(target=flood, args=(slow_sender, 3.0), daemon=True)
            sender.start()
            got = 0
            deadline = time.monotonic() + SEND_TIMEOUT * 2 + TIMEOUT_SLACK
            # It reads a little at a time. (Not too little: a receiver reopens its TCP window
            # only once a sixteenth of its buffer is free, so tiny reads show no progress for
            # seconds, which a real timeouts.send of 60 s absorbs and this 1 s one does not.)
            while time.monotonic() < deadline:
                readable, _, _ = select.select([slow], [], [], 1.0)
                if readable:
                    got += len(slow.recv(262144))
                time.sleep(0.05)
            sender.join(5)
            assert got > 0
            stopped.settimeout(10)  # a timeout, not a hang, if it were never cut off
            with pytest.raises(ConnectionError):  # aborted: reset, after what was buffered
                for _ in range(10_000):
                    if not stopped.recv(1 << 20):
                        raise ConnectionResetError("closed")
            assert open_connections(srv) == 1  # the slow reader's, still served:
            slow.sendall(get("/n/2"))
            tail = b""
            for _ in range(1000):  # what was still on its way, then the new answer
                readable, _, _ = select.select([slow], [], [], 5.0)
                assert readable, "the slow reader's new request was not answered"
                tail = (tail + slow.recv(262144))[-64:]
                if b"response 2" in tail:
                    break
            assert b"response 2" in tail
        finally:
            stopped.close()
            slow_sender.close()
            slow.close()
