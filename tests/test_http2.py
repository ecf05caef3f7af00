"""HTTP/2: ALPN over TLS and h2c with prior knowledge, every kind of route over an h2 stream,
flow control both ways, stats. Independent clients: a raw h2 client (tests/support/h2client.py),
httpx with http2=True, curl --http2 and nghttp when installed."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtserve import App, ChannelSettings
from rtserve.app.request import Request
from rtserve.app.response import Response, StreamingResponse
from rtserve.server import negotiate
from rtserve.server.settings import HTTP2Settings, ServerSettings, TimeoutSettings, TLSSettings
from rtserve.testing import ThreadedServer
from tests.support.h2client import H2Client
from tests.support.tls import dev_tls
from tests.support.waiting import until

API_KEY = "k" * 24
BIG = bytes(range(256)) * 4096  # 1 MiB: beyond every default window


def make_app(static_dir: Path, gate: asyncio.Event | None = None) -> App:
    app = App(channels=ChannelSettings(api_key=API_KEY))
    gate = gate or asyncio.Event()
    app.channel("news", history=10)

    @app.route("/")
    def hello(request: Request) -> str:
        return "hello"

    @app.route("/echo", methods=["POST"])
    def echo(request: Request) -> Response:
        return Response(request.body, headers={"x-length": str(len(request.body))})

    @app.route("/upload", methods=["POST"], stream=True)
    async def upload(request: Request) -> dict[str, int]:
        total = 0
        async for piece in request.stream():
            total += len(piece)
            await asyncio.sleep(0)
        return {"received": total}

    @app.route("/hold", methods=["POST"], stream=True)
    async def hold(request: Request) -> dict[str, int]:
        await gate.wait()  # takes nothing of the body until the test opens the gate
        total = 0
        async for piece in request.stream():
            total += len(piece)
        return {"received": total}

    @app.route("/big")
    def big(request: Request) -> Response:
        return Response(BIG, content_type="application/octet-stream")

    @app.route("/stream")
    def stream(request: Request) -> StreamingResponse:
        async def pieces() -> AsyncIterator[str]:
            for i in range(3):
                await asyncio.sleep(0)
                yield f"<{i}>"

        return StreamingResponse(pieces())

    @app.route("/version")
    def version(request: Request) -> dict[str, str]:
        return {"version": request.http_version, "scheme": request.scheme, "host": request.host}

    app.static("/static", static_dir)
    app.mount("/asgi", hosted_asgi, lifespan=False)
    return app


async def hosted_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app: answers with what its scope says and the body it read, in two pieces."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    seen = {key: scope[key] for key in ("http_version", "scheme", "root_path", "path")}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-asgi", b"1")]})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b"|" + body})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSSettings:
    return dev_tls(tmp_path_factory.mktemp("h2tls"))


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("h2static")
    (path / "file.bin").write_bytes(BIG[: 300 * 1024])
    return path


@pytest.fixture(scope="module")
def server(tls: TLSSettings, static_dir: Path) -> Iterator[ThreadedServer[App]]:
    with ThreadedServer(make_app(static_dir), tls=tls, access_log=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def h2c_server(static_dir: Path) -> Iterator[ThreadedServer[App]]:
    with ThreadedServer(
        make_app(static_dir), http2=HTTP2Settings(h2c=True), access_log=False
    ) as srv:
        yield srv


def publish(port: int, channel: str, data: Any, *, tls: bool = True) -> None:
    """POST /rt/publish over HTTP/1.1 (httpx)."""
    scheme = "https" if tls else "http"
    response = httpx.post(
        f"{scheme}://127.0.0.1:{port}/rt/publish",
        json={"channel": channel, "data": data},
        headers={"authorization": f"Bearer {API_KEY}"},
        verify=False,
        timeout=10,
    )
    assert response.status_code == 200, response.text


# --- negotiation ---------------------------------------------------------------------------


def test_alpn_picks_h2_and_http11_still_works(server: ThreadedServer[App]) -> None:
    client = H2Client(server.port)
    try:
        assert client.alpn == "h2"
        answer = client.get("/version")
        assert answer.status == 200
        assert json.loads(answer.body) == {
            "version": "2",
            "scheme": "https",
            "host": "localhost",
        }
    finally:
        client.close()
    response = httpx.get(f"https://127.0.0.1:{server.port}/version", verify=False, timeout=10)
    assert response.http_version == "HTTP/1.1" and response.json()["version"] == "1.1"


def test_h2c_prior_knowledge_beside_http11(h2c_server: ThreadedServer[App]) -> None:
    client = H2Client(h2c_server.port, tls=False)
    try:
        assert client.get("/").body == b"hello"
    finally:
        client.close()
    assert httpx.get(f"http://127.0.0.1:{h2c_server.port}/", timeout=10).text == "hello"


def test_h2c_undecided_connection_is_dropped_after_the_header_timeout(static_dir: Path) -> None:
    """A cleartext client that sends a piece of the preface and stalls is not held."""
    settings: dict[str, Any] = {"http2": HTTP2Settings(h2c=True), "access_log": False}
    with ThreadedServer(
        make_app(static_dir), timeouts=TimeoutSettings(header=0.5), **settings
    ) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        try:
            sock.sendall(b"PRI * HTTP/2.0\r\n")
            assert sock.recv(100) == b""  # closed
        finally:
            sock.close()


def test_h2c_is_off_by_default(static_dir: Path) -> None:
    with ThreadedServer(make_app(static_dir), access_log=False) as srv:
        client = H2Client(srv.port, tls=False)
        try:
            client.wait_closed()  # the preface is no HTTP/1.1 request: 400, closed
        finally:
            client.close()


def test_without_h2_tls_serves_http11_and_h2c_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(negotiate, "http2_available", lambda: False)
    with_tls = ServerSettings(tls=TLSSettings(cert="cert.pem", key="key.pem"))
    assert negotiate.http2_mode(with_tls) == (False, False)
    assert "pip install 'rtserve[http2]'" in caplog.text
    assert negotiate.http2_mode(ServerSettings()) == (False, False)  # nothing asked, nothing said
    with pytest.raises(negotiate.HTTP2Unavailable, match=r"rtserve\[http2\]"):
        negotiate.http2_mode(ServerSettings(http2=HTTP2Settings(h2c=True)))


def test_the_server_imports_h2_only_to_speak_it() -> None:
    code = "import sys, rtserve.server.listener, rtserve.cli.main; assert 'h2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- every kind of route -------------------------------------------------------------------


def test_routes_over_one_connection(server: ThreadedServer[App]) -> None:
    client = H2Client(server.port)
    try:
        streams = {
            "hello": client.request("/"),
            "echo": client.request("/echo", "POST", b"x" * 100_000),
            "upload": client.request("/upload", "POST", b"y" * 300_000),
            "big": client.request("/big"),
            "stream": client.request("/stream"),
            "static": client.request("/static/file.bin"),
            "head": client.request("/big", "HEAD"),
            "missing": client.request("/nope"),
        }
        got = {name: client.response(sid) for name, sid in streams.items()}
        assert got["hello"].body == b"hello"
        assert got["echo"].body == b"x" * 100_000
        assert got["echo"].header(b"x-length") == b"100000"
        assert json.loads(got["upload"].body) == {"received": 300_000}
        assert got["big"].body == BIG
        assert got["stream"].body == b"<0><1><2>"
        assert got["static"].body == BIG[: 300 * 1024]
        assert got["head"].body == b"" and got["head"].header(b"content-length") == b"%d" % len(BIG)
        assert got["missing"].status == 404
        assert all(s.reset is None for s in got.values())
    finally:
        client.close()


def test_sse_long_poll_and_publish_api(server: ThreadedServer[App]) -> None:
    client = H2Client(server.port)
    try:
        sse = client.request("/rt/sse?channel=news")
        poll = client.request("/rt/poll?channel=news&timeout=20")
        client.until(lambda: server.app.hub.subscriber_count("news") == 2)
        api = client.request(
            "/rt/publish",
            "POST",
            json.dumps({"channel": "news", "data": "over h2"}).encode(),
            [(b"authorization", b"Bearer " + API_KEY.encode())],
        )
        assert client.response(api).status == 200
        answer = json.loads(client.response(poll).body)
        assert [p["data"] for p in answer["channels"]["news"]["publications"]] == ["over h2"]
        client.until(lambda: b"over h2" in client.streams[sse].body)
        assert (client.streams[sse].header(b"content-type") or b"").startswith(b"text/event-stream")
        assert not client.streams[sse].ended  # the stream goes on
    finally:
        client.close()
    until(lambda: server.app.hub.subscriber_count("news") == 0, 10, "the SSE stream left")


def test_a_request_body_the_app_does_not_take_stays_in_the_client(
    tls: TLSSettings, static_dir: Path
) -> None:
    """The stream's window reopens only as the handler takes the body: while it takes
    nothing the client can send the window and the 64 KiB the exchange buffers, no more."""
    gate = asyncio.Event()
    with ThreadedServer(make_app(static_dir, gate), tls=tls, access_log=False) as server:
        client = H2Client(server.port)
        try:
            body = b"u" * (1000 * 1024)  # under limits.max_body_size
            stream_id = client.request("/hold", "POST", body)

            def sent() -> int:
                waiting = client.outgoing.get(stream_id)
                return len(body) - (len(waiting[0]) if waiting else 0)

            for _ in range(3):  # reads of up to a second: long enough for the window to fill
                client.read(1.0)
            window = server.app.settings.http2.initial_window_size
            assert 0 < sent() <= window + 128 * 1024, sent()
            server.call(gate.set)
            assert json.loads(client.response(stream_id).body) == {"received": len(body)}
        finally:
            client.close()


def test_a_body_over_max_body_size_is_answered_413_and_the_connection_goes_on(
    server: ThreadedServer[App],
) -> None:
    client = H2Client(server.port)
    try:
        too_big = client.request("/upload", "POST", b"v" * (1024 * 1024 + 1))
        assert client.response(too_big).status == 413
        assert client.get("/").body == b"hello"
    finally:
        client.close()


def test_httpx_http2(server: ThreadedServer[App]) -> None:
    with httpx.Client(http2=True, verify=False, timeout=10) as http:
        response = http.get(f"https://127.0.0.1:{server.port}/big")
        assert response.http_version == "HTTP/2" and response.content == BIG
        posted = http.post(f"https://127.0.0.1:{server.port}/echo", content=b"z" * 70_000)
        assert posted.content == b"z" * 70_000


def test_stats_count_http2_connections_and_streams(server: ThreadedServer[App]) -> None:
    state = server.server.state if server.server is not None else None
    assert state is not None
    before = (state.stats.h2_connections_total, state.stats.h2_streams_total)
    client = H2Client(server.port)
    try:
        for _ in range(3):
            assert client.get("/").status == 200
        sse = client.request("/rt/sse?channel=news")
        client.until(lambda: bool(client.streams[sse].headers))
        listed = [c.describe() for c in list(state.connections)]
        assert any(info.state.startswith("h2 busy (1 streams)") for info in listed), listed
    finally:
        client.close()
    assert state.stats.h2_connections_total == before[0] + 1
    assert state.stats.h2_streams_total == before[1] + 4


# --- independent command-line clients ------------------------------------------------------

CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_http2_every_kind_of_route(server: ThreadedServer[App]) -> None:
    base = f"https://127.0.0.1:{server.port}"

    def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = [CURL or "curl", "-sk", "--http2", "--max-time", "10", *args]
        return subprocess.run(command, capture_output=True, timeout=20, check=False)

    out = curl("-w", "%{http_version}", f"{base}/")
    assert out.stdout == b"hello2"
    assert curl(f"{base}/big").stdout == BIG
    assert curl(f"{base}/static/file.bin").stdout == BIG[: 300 * 1024]
    assert curl(f"{base}/stream").stdout == b"<0><1><2>"
    assert curl("--data-binary", "@-", f"{base}/echo").returncode == 0
    assert json.loads(curl("-X", "POST", "-d", "a" * 1000, f"{base}/upload").stdout) == {
        "received": 1000
    }
    done = threading.Event()
    result: list[bytes] = []

    def poll() -> None:
        result.append(curl(f"{base}/rt/poll?channel=news&timeout=10").stdout)
        done.set()

    threading.Thread(target=poll, daemon=True).start()
    until(lambda: server.app.hub.subscriber_count("news") >= 1, 10, "the poll subscribed")
    out = curl(
        "-H",
        f"authorization: Bearer {API_KEY}",
        "--json",
        json.dumps({"channel": "news", "data": "curl"}),
        f"{base}/rt/publish",
    )
    assert out.returncode == 0 and b"offset" in out.stdout, out
    assert done.wait(10) and b'"curl"' in result[0]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_h2c_prior_knowledge(h2c_server: ThreadedServer[App]) -> None:
    command = [CURL or "curl", "-s", "--http2-prior-knowledge", "-w", "%{http_version}"]
    out = subprocess.run(
        [*command, f"http://127.0.0.1:{h2c_server.port}/"], capture_output=True, timeout=20
    )
    assert out.stdout == b"hello2"


@pytest.mark.skipif(NGHTTP is None, reason="nghttp (nghttp2-client) is not installed")
def test_nghttp(server: ThreadedServer[App]) -> None:
    base = f"https://127.0.0.1:{server.port}"
    command = [NGHTTP or "nghttp", "-n", "-s", f"{base}/", f"{base}/big", f"{base}/stream"]
    out = subprocess.run(command, capture_output=True, timeout=20, check=False)
    assert out.returncode == 0, out.stderr
    posted = subprocess.run(
        [NGHTTP or "nghttp", "-d", "-", f"{base}/echo"],
        input=b"q" * 5000,
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert posted.stdout == b"q" * 5000


def test_shutdown_ends_the_streams_then_goaway(tls: TLSSettings, static_dir: Path) -> None:
    srv = ThreadedServer(make_app(static_dir), tls=tls, access_log=False)
    with srv:
        client = H2Client(srv.port)
        sse = client.request("/rt/sse?channel=news")
        client.until(lambda: bool(client.streams[sse].headers))
        stopping = threading.Thread(target=srv.stop)
        stopping.start()
        try:
            client.wait_closed()
            assert client.streams[sse].ended and client.streams[sse].reset is None
            assert client.goaway == 0
        finally:
            client.close()
            stopping.join(15)


def test_a_hosted_asgi_app_over_http2(server: ThreadedServer[App]) -> None:
    with httpx.Client(http2=True, verify=False, timeout=10) as http:
        answer = http.post(f"https://127.0.0.1:{server.port}/asgi/echo", content=BIG[:200_000])
    assert answer.http_version == "HTTP/2" and answer.status_code == 200
    assert answer.headers["x-asgi"] == "1"
    seen, _, body = answer.content.partition(b"|")
    assert json.loads(seen) == {
        "http_version": "2",
        "scheme": "https",
        "root_path": "/asgi",
        "path": "/asgi/echo",
    }
    assert body == BIG[:200_000]
