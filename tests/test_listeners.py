"""Listeners over real sockets: unix socket, inherited fd, IPv6 loopback, TLS, trusted proxies.

Every server listens on loopback only (127.0.0.1, ::1 or a unix socket in tmp_path). The
addresses in forwarding headers are documentation ranges used as strings; nothing connects
to them.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rtserve import App, Request, Response, StreamingResponse
from rtserve.server.listener import Server
from rtserve.server.settings import ServerSettings, TLSSettings
from rtserve.testing import ThreadedServer
from tests.conftest import IN_CI, require_tool

BIG = os.urandom(3 * 1024 * 1024 + 17)
BIG_TEXT = "all work and no play makes jack a dull boy\n" * 400


def make_app(static_dir: Path | None = None, settings: ServerSettings | None = None) -> App:
    app = App(settings)

    @app.route("/whoami")
    def whoami(request: Request) -> dict[str, Any]:
        return {
            "client": request.client,
            "scheme": request.scheme,
            "url": request.url,
            "peer": list(request.exchange.peer),
        }

    @app.route("/cookie")
    def cookie(request: Request) -> Response:
        response = Response("ok")
        response.set_cookie("session", "abc")
        return response

    @app.route("/text")
    def text(request: Request) -> str:
        return BIG_TEXT

    @app.route("/stream")
    def stream(request: Request) -> StreamingResponse:
        async def pieces() -> AsyncIterator[str]:
            for i in range(3):
                await asyncio.sleep(0)
                yield f"<{i}>"

        return StreamingResponse(pieces())

    @app.route("/echo", methods=["POST"])
    def echo(request: Request) -> bytes:
        return request.body

    if static_dir is not None:
        app.static("/static", static_dir)
    return app


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("static")
    (path / "big.bin").write_bytes(BIG)
    (path / "small.txt").write_text("small file\n")
    return path


def whoami(conn: http.client.HTTPConnection, headers: dict[str, str] | None = None) -> Any:
    conn.request("GET", "/whoami", headers=headers or {})
    response = conn.getresponse()
    assert response.status == 200
    return json.loads(response.read())


# --- unix socket -------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    short = Path("/tmp") / f"rtserve-test-{os.getpid()}-{abs(hash(str(tmp_path))) % 10**8}"
    short.mkdir(mode=0o700)
    try:
        yield str(short / "s.sock")
    finally:
        for child in short.iterdir():
            child.unlink()
        short.rmdir()


def test_unix_socket_threaded(sock_path: str, static_dir: Path) -> None:
    with ThreadedServer(make_app(static_dir), unix_socket=sock_path, access_log=False) as srv:
        assert srv.server is not None
        assert srv.server.addresses == [f"unix:{sock_path}"]
        assert srv.server.state is not None
        assert srv.server.state.listening == [(sock_path, None)]  # a hosted app's scope server
        conn = UnixHTTPConnection(sock_path)
        try:
            info = whoami(conn)
            assert info["scheme"] == "http"
            assert info["client"] == ""  # no address for a unix peer
            # Keep-alive and a large file on the same connection.
            conn.request("GET", "/static/big.bin")
            response = conn.getresponse()
            assert response.status == 200 and response.read() == BIG
            conn.request("POST", "/echo", body=b"over unix")
            assert conn.getresponse().read() == b"over unix"
        finally:
            conn.close()
    assert not os.path.exists(sock_path)  # removed on shutdown


def test_unix_socket_raw_asyncio(sock_path: str) -> None:
    """The Server class directly, with an asyncio unix-socket client."""

    async def main() -> bytes:
        app = make_app()
        server = Server(app, ServerSettings(unix_socket=sock_path, access_log=False))
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(sock_path)
            writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await writer.wait_closed()
            return data
        finally:
            await server.shutdown(grace=1.0)

    data = asyncio.run(main())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"3\r\n<0>\r\n3\r\n<1>\r\n3\r\n<2>\r\n0\r\n\r\n"
    assert not os.path.exists(sock_path)


def test_unix_socket_replaces_stale_file(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays behind, with nobody listening
    assert os.path.exists(sock_path)
    with ThreadedServer(make_app(), unix_socket=sock_path, access_log=False):
        conn = UnixHTTPConnection(sock_path)
        try:
            assert whoami(conn)["scheme"] == "http"
        finally:
            conn.close()


def test_unix_socket_curl(sock_path: str) -> None:
    curl = require_tool("curl")
    with ThreadedServer(make_app(), unix_socket=sock_path, access_log=False):
        proc = subprocess.run(
            [curl, "-sS", "--max-time", "10", "--unix-socket", sock_path, "http://x/whoami"],
            capture_output=True,
            timeout=20,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["url"] == "http://x/whoami"


# --- inherited file descriptor -------------------------------------------------------------------


def test_inherited_fd(static_dir: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.detach()  # the server owns the descriptor from now on
    with ThreadedServer(make_app(static_dir), fd=fd, access_log=False) as srv:
        assert srv.port == port
        assert srv.server is not None and srv.server.state is not None
        assert srv.server.state.listening == [("127.0.0.1", port)]  # not in the settings
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            info = whoami(conn)
            assert info["client"] == "127.0.0.1" and info["scheme"] == "http"
            conn.request("GET", "/static/small.txt")
            assert conn.getresponse().read() == b"small file\n"
        finally:
            conn.close()


# --- IPv6 ----------------------------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback(static_dir: Path) -> None:
    with ThreadedServer(make_app(static_dir), host="::1", access_log=False) as srv:
        assert srv.server is not None
        assert srv.server.addresses == [f"http://[::1]:{srv.port}"]
        conn = http.client.HTTPConnection("::1", srv.port, timeout=10)
        try:
            info = whoami(conn)
            assert info["client"] == "::1"
            assert info["url"] == f"http://[::1]:{srv.port}/whoami"
            conn.request("GET", "/static/big.bin")
            assert conn.getresponse().read() == BIG
        finally:
            conn.close()


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv4_and_ipv6_together() -> None:
    with ThreadedServer(make_app(), host=["127.0.0.1", "::1"], port=0, access_log=False) as srv:
        assert srv.server is not None
        families = sorted(s.family for s in srv.server.sockets)
        assert families == sorted([socket.AF_INET, socket.AF_INET6])
        for sock in srv.server.sockets:
            host, port = sock.getsockname()[:2]
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                assert whoami(conn)["client"] == host
            finally:
                conn.close()


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = require_tool("openssl")
    path = tmp_path_factory.mktemp("tls")
    cert, key = path / "c.pem", path / "k.pem"
    base = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)]
    base += ["-out", str(cert), "-days", "1", "-subj", "/CN=localhost"]
    proc = subprocess.run(
        [*base, "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:  # an OpenSSL without -addext
        proc = subprocess.run(base, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        message = f"openssl could not make a certificate: {proc.stderr.decode(errors='replace')}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def tls_server(certificate: tuple[str, str], static_dir: Path) -> Iterator[ThreadedServer]:
    cert, key = certificate
    tls = TLSSettings(cert=cert, key=key)
    with ThreadedServer(make_app(static_dir), tls=tls, access_log=False) as srv:
        yield srv


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_tls_http_client(tls_server: ThreadedServer) -> None:
    assert tls_server.server is not None
    assert tls_server.server.addresses == [f"https://127.0.0.1:{tls_server.port}"]
    conn = http.client.HTTPSConnection(
        "127.0.0.1", tls_server.port, timeout=10, context=unverified()
    )
    try:
        info = whoami(conn)
        assert info["scheme"] == "https"
        assert info["client"] == "127.0.0.1"
        assert info["url"] == f"https://127.0.0.1:{tls_server.port}/whoami"
        assert conn.sock is not None
        tls_sock: Any = conn.sock
        assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")
        # Secure is added automatically under HTTPS.
        conn.request("GET", "/cookie")
        response = conn.getresponse()
        response.read()
        assert "; Secure" in response.getheader("set-cookie", "")
        # Streaming and a POST body on the same TLS connection.
        conn.request("GET", "/stream")
        assert conn.getresponse().read() == b"<0><1><2>"
        conn.request("POST", "/echo", body=b"x" * 200_000)
        assert conn.getresponse().read() == b"x" * 200_000
    finally:
        conn.close()


def test_tls_verified_with_the_certificate(
    tls_server: ThreadedServer, certificate: tuple[str, str]
) -> None:
    """A verifying client that trusts the self-signed certificate (its SAN names 127.0.0.1)."""
    context = ssl.create_default_context(cafile=certificate[0])
    context.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server.port, timeout=10, context=context)
    try:
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:  # an OpenSSL without -addext
            pytest.skip(f"certificate without subjectAltName: {exc}")
        tls_sock: Any = conn.sock
        assert tls_sock.selected_alpn_protocol() == "http/1.1"
        assert whoami(conn)["scheme"] == "https"
    finally:
        conn.close()


def test_tls_large_file_keepalive(tls_server: ThreadedServer) -> None:
    """Under TLS, files go through the worker-thread fallback, not sendfile."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", tls_server.port, timeout=20, context=unverified()
    )
    try:
        conn.request("GET", "/static/big.bin")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-length") == str(len(BIG))
        assert response.read() == BIG
        conn.request("GET", "/static/big.bin", headers={"Range": "bytes=1000000-2000000"})
        response = conn.getresponse()
        assert response.status == 206 and response.read() == BIG[1_000_000:2_000_001]
        assert whoami(conn)["scheme"] == "https"
    finally:
        conn.close()


def test_tls_curl(tls_server: ThreadedServer, tmp_path: Path) -> None:
    curl = require_tool("curl")
    base = f"https://127.0.0.1:{tls_server.port}"
    out = tmp_path / "big.bin"
    proc = subprocess.run(
        [
            curl,
            "-sS",
            "-k",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "--http1.1",
            "--compressed",
            "-o",
            str(out),
            f"{base}/static/big.bin",
            f"{base}/whoami",
            f"{base}/text",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(BIG).digest()
    stdout = proc.stdout.decode()
    info_text, _, text = stdout.partition("}")
    assert json.loads(info_text + "}")["scheme"] == "https"
    assert text == BIG_TEXT  # gzip over TLS, decoded by curl


def test_plain_http_to_tls_port_is_closed(tls_server: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        for _ in range(1000):
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    assert b"HTTP/1.1 200" not in received


# --- trusted proxies -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxied() -> Iterator[ThreadedServer]:
    settings = ServerSettings(trusted_proxies=["127.0.0.1"])
    with ThreadedServer(make_app(settings=settings), access_log=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def direct() -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(), access_log=False) as srv:
        yield srv


def ask(server: ThreadedServer, headers: dict[str, str]) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        return whoami(conn, headers)
    finally:
        conn.close()


def test_x_forwarded_headers_from_trusted_proxy(proxied: ThreadedServer) -> None:
    info = ask(proxied, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert info["client"] == "203.0.113.7"
    assert info["scheme"] == "https"
    assert info["url"].startswith("https://")
    assert info["peer"][0] == "127.0.0.1"


def test_forwarded_header_from_trusted_proxy(proxied: ThreadedServer) -> None:
    info = ask(proxied, {"Forwarded": "for=203.0.113.9;proto=https"})
    assert info["client"] == "203.0.113.9" and info["scheme"] == "https"
    info = ask(proxied, {"Forwarded": 'for="[2001:db8::17]:4711";proto=http'})
    assert info["client"] == "2001:db8::17" and info["scheme"] == "http"
    info = ask(proxied, {"Forwarded": 'For="203.0.113.9:8080", for=127.0.0.1;Proto=HTTPS'})
    assert info["client"] == "203.0.113.9" and info["scheme"] == "https"
    # Forwarded wins over X-Forwarded-*.
    info = ask(proxied, {"Forwarded": "for=203.0.113.9", "X-Forwarded-For": "198.51.100.1"})
    assert info["client"] == "203.0.113.9"


def test_forwarding_chain_takes_rightmost_untrusted(proxied: ThreadedServer) -> None:
    # A client can prepend whatever it likes; the hop our proxy saw is the last one.
    info = ask(proxied, {"X-Forwarded-For": "198.51.100.66, 203.0.113.7"})
    assert info["client"] == "203.0.113.7"
    info = ask(proxied, {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"})
    assert info["client"] == "203.0.113.7"  # 127.0.0.1 is itself a trusted proxy
    info = ask(proxied, {"X-Forwarded-Proto": "javascript"})
    assert info["scheme"] == "http" and info["client"] == "127.0.0.1"


def test_empty_forwarded_for_element_is_skipped(proxied: ThreadedServer) -> None:
    assert ask(proxied, {"X-Forwarded-For": "203.0.113.7, "})["client"] == "203.0.113.7"


def test_secure_cookie_behind_tls_terminating_proxy(proxied: ThreadedServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxied.port, timeout=10)
    try:
        conn.request("GET", "/cookie", headers={"X-Forwarded-Proto": "https"})
        response = conn.getresponse()
        response.read()
        assert "; Secure" in response.getheader("set-cookie", "")
    finally:
        conn.close()


def test_forwarding_headers_ignored_without_trust(direct: ThreadedServer) -> None:
    for headers in (
        {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
        {"Forwarded": "for=203.0.113.9;proto=https"},
    ):
        info = ask(direct, headers)
        assert info["client"] == "127.0.0.1"
        assert info["scheme"] == "http"


def test_forwarding_headers_ignored_from_untrusted_peer() -> None:
    settings = ServerSettings(trusted_proxies=["10.0.0.0/8"])
    with ThreadedServer(make_app(settings=settings), access_log=False) as srv:
        info = ask(srv, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert info["client"] == "127.0.0.1" and info["scheme"] == "http"
