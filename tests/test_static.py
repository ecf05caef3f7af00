"""Static files over real sockets: content types, validators, ranges, HEAD, folders, traversal.

Clients: stdlib http.client (SyncClient), raw sockets (so nothing normalises the path) and
curl. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtserve import App
from rtserve.testing import ThreadedServer
from tests.conftest import require_tool
from tests.rawhttp import parse_response, raw_exchange

SECRET = b"TOP-SECRET-CONTENT-outside-the-static-folder\n"
DIGITS = b"0123456789abcdefghijklmnopqrstuvwxyz"  # 36 bytes, so ranges are easy to read
BIG_SIZE = 5 * 1024 * 1024


# --- a raw HTTP/1.1 client ---------------------------------------------------------------------


def raw_get(port: int, target: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    request = f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n"
    return parse_response(raw_exchange(port, request.encode("latin-1")))


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("site")
    (base / "secret.txt").write_bytes(SECRET)  # beside, not inside, the static folder
    root = base / "public"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "style.css").write_text("body { color: red }\n")
    (root / "app.js").write_text("console.log(1);\n")
    (root / "data.json").write_text('{"a": 1}\n')
    (root / "pixel.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(32)))
    (root / "blob.unknownext").write_bytes(b"\x00\x01\x02")
    (root / "noext").write_bytes(b"no extension")
    (root / "digits.txt").write_bytes(DIGITS)
    (root / "empty.txt").write_bytes(b"")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("<p>docs</p>")
    (root / "docs" / "page.txt").write_text("a page")
    (root / "foo").mkdir()
    (root / "escape.txt").symlink_to(base / "secret.txt")
    (root / "escape-dir").symlink_to(base, target_is_directory=True)
    (root / "inside-link.txt").symlink_to(root / "digits.txt")
    (root / "big.bin").write_bytes(os.urandom(BIG_SIZE))
    (root / "loop").symlink_to(root / "loop")
    os.mkfifo(root / "pipe.txt")
    (root / "a b%41.d").mkdir()
    (root / "a b%41.d" / "index.html").write_text("odd folder")
    return base


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[ThreadedServer]:
    app = App()
    app.static("/static", site / "public")
    app.static_file("/favicon.png", site / "public" / "pixel.png")
    app.static_file("/big", site / "public" / "big.bin")

    @app.route("/ping")
    def ping(request):  # type: ignore[no-untyped-def]
        return "pong"

    with ThreadedServer(app, access_log=False) as srv:
        yield srv


@pytest.fixture(scope="module", params=["default-loop", "asyncio-loop"])
def any_loop_server(
    request: pytest.FixtureRequest, site: Path, server: ThreadedServer
) -> Iterator[ThreadedServer]:
    """The module server (uvloop when installed) and one on the stdlib asyncio loop.

    Under uvloop large files take the worker-thread fallback; the stdlib loop uses the
    kernel's sendfile. Both must send the same bytes.
    """
    if request.param == "default-loop":
        yield server
        return
    app = App()
    app.static("/static", site / "public")
    app.static_file("/big", site / "public" / "big.bin")
    srv = ThreadedServer(app, access_log=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rtserve.testing.new_event_loop", asyncio.new_event_loop)
        srv.start()  # the loop is made in here
    try:
        yield srv
    finally:
        srv.stop()


# --- content types and validators ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("index.html", "text/html; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("data.json", "application/json"),
        ("pixel.png", "image/png"),
        ("blob.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_content_types(server: ThreadedServer, site: Path, name: str, content_type: str) -> None:
    with server.client() as c:
        r = c.get(f"/static/{name}")
    assert r.status == 200
    assert r.headers["content-type"] == content_type
    assert r.body == (site / "public" / name).read_bytes()
    assert r.headers["content-length"] == str(len(r.body))
    assert r.headers["accept-ranges"] == "bytes"


def test_static_file_route(server: ThreadedServer, site: Path) -> None:
    with server.client() as c:
        r = c.get("/favicon.png")
        assert r.status == 200
        assert r.headers["content-type"] == "image/png"
        assert r.body == (site / "public" / "pixel.png").read_bytes()
        assert "etag" in r.headers and "last-modified" in r.headers
        assert c.request("POST", "/favicon.png").status == 405


def test_etag_and_last_modified(server: ThreadedServer, site: Path) -> None:
    with server.client() as c:
        r = c.get("/static/digits.txt")
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    info = (site / "public" / "digits.txt").stat()
    assert r.headers["last-modified"] == http_date(info.st_mtime)


def http_date(ts: float) -> str:
    from email.utils import formatdate

    return formatdate(ts, usegmt=True)


def test_conditional_get_etag(server: ThreadedServer) -> None:
    with server.client() as c:
        first = c.get("/static/digits.txt")
        etag = first.headers["etag"]
        r = c.get("/static/digits.txt", headers={"If-None-Match": etag})
        assert r.status == 304 and r.body == b""
        assert r.headers["etag"] == etag
        assert "content-length" not in r.headers
        # Weak comparison, lists and `*` also match; another tag does not.
        assert (
            c.get("/static/digits.txt", headers={"If-None-Match": f'"x", W/{etag}'}).status == 304
        )
        assert c.get("/static/digits.txt", headers={"If-None-Match": "*"}).status == 304
        r = c.get("/static/digits.txt", headers={"If-None-Match": '"other"'})
        assert r.status == 200 and r.body == DIGITS
        # The connection is still usable after a 304 (no stray body bytes).
        assert c.get("/ping").text == "pong"


def test_conditional_get_if_modified_since(server: ThreadedServer) -> None:
    with server.client() as c:
        last_modified = c.get("/static/digits.txt").headers["last-modified"]
        r = c.get("/static/digits.txt", headers={"If-Modified-Since": last_modified})
        assert r.status == 304 and r.body == b""
        old = "Mon, 01 Jan 2001 00:00:00 GMT"
        r = c.get("/static/digits.txt", headers={"If-Modified-Since": old})
        assert r.status == 200 and r.body == DIGITS
        r = c.get("/static/digits.txt", headers={"If-Modified-Since": "garbage"})
        assert r.status == 200
        # If-None-Match wins over If-Modified-Since.
        r = c.get(
            "/static/digits.txt",
            headers={"If-None-Match": '"nope"', "If-Modified-Since": last_modified},
        )
        assert r.status == 200


# --- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=-5", 31, 35), ("bytes=10-", 10, 35), ("bytes=30-99", 30, 35)],
)
def test_single_range(server: ThreadedServer, header: str, start: int, end: int) -> None:
    with server.client() as c:
        r = c.get("/static/digits.txt", headers={"Range": header})
        assert r.status == 206
        assert r.headers["content-range"] == f"bytes {start}-{end}/{len(DIGITS)}"
        assert r.body == DIGITS[start : end + 1]
        assert r.headers["content-length"] == str(end - start + 1)
        assert c.get("/ping").text == "pong"


@pytest.mark.parametrize("header", ["bytes=36-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_range(server: ThreadedServer, header: str) -> None:
    with server.client() as c:
        r = c.get("/static/digits.txt", headers={"Range": header})
        assert r.status == 416
        assert r.headers["content-range"] == f"bytes */{len(DIGITS)}"
        assert c.get("/ping").text == "pong"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=0-1, 3-", "items=0-5", "bytes=5-2"])
def test_ignored_ranges_give_whole_file(server: ThreadedServer, header: str) -> None:
    with server.client() as c:
        r = c.get("/static/digits.txt", headers={"Range": header})
    assert r.status == 200
    assert r.body == DIGITS
    assert "content-range" not in r.headers


def test_if_range(server: ThreadedServer) -> None:
    with server.client() as c:
        first = c.get("/static/digits.txt")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        r = c.get("/static/digits.txt", headers={"Range": "bytes=0-3", "If-Range": etag})
        assert r.status == 206 and r.body == DIGITS[:4]
        r = c.get("/static/digits.txt", headers={"Range": "bytes=0-3", "If-Range": modified})
        assert r.status == 206 and r.body == DIGITS[:4]
        stale = '"0-0"'
        r = c.get("/static/digits.txt", headers={"Range": "bytes=0-3", "If-Range": stale})
        assert r.status == 200 and r.body == DIGITS
        r = c.get("/static/digits.txt", headers={"Range": "bytes=0-3", "If-Range": f"W/{etag}"})
        assert r.status == 200 and r.body == DIGITS  # weak tags never allow a range


def test_empty_file(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/static/empty.txt")
        assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "0"
        r = c.get("/static/empty.txt", headers={"Range": "bytes=0-"})
        assert r.status == 416 and r.headers["content-range"] == "bytes */0"


# --- HEAD -------------------------------------------------------------------------------------


def test_head(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.request("HEAD", "/static/digits.txt")
        assert r.status == 200 and r.body == b""
        assert r.headers["content-length"] == str(len(DIGITS))
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert "etag" in r.headers
        r = c.request("HEAD", "/big")
        assert r.status == 200 and r.body == b""
        assert r.headers["content-length"] == str(BIG_SIZE)
        r = c.request("HEAD", "/static/digits.txt", headers={"Range": "bytes=2-4"})
        assert r.status == 206 and r.headers["content-length"] == "3"
        assert c.get("/ping").text == "pong"


def test_head_raw_has_no_body(server: ThreadedServer) -> None:
    # http.client knows HEAD has no body; a raw read proves the server sends none.
    data = raw_exchange(server.port, b"HEAD /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_response(data)
    assert status == 200 and headers["content-length"] == str(BIG_SIZE)
    assert body == b""


# --- folders ----------------------------------------------------------------------------------


def test_directory_index(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/static/")
        assert r.status == 200 and r.text == "<h1>home</h1>\n"
        r = c.get("/static/docs/")
        assert r.status == 200 and r.text == "<p>docs</p>"
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert c.get("/static/docs/page.txt").text == "a page"


def test_directory_without_slash_redirects(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/static/docs")
        assert r.status == 301
        assert r.headers["location"] == "/static/docs/"
        r = c.get("/static/docs?x=1")
        assert r.status == 301
        assert r.headers["location"] == "/static/docs/?x=1"


def test_directory_without_index_is_404(server: ThreadedServer) -> None:
    with server.client() as c:
        assert c.get("/static/foo/").status == 404
        assert c.get("/static/missing.txt").status == 404
        assert c.get("/static/digits.txt/").status == 404
        assert c.get("/static/digits.txt/x").status == 404


def test_redirect_keeps_the_path_encoding(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/static/a%20b%2541.d")
        assert r.status == 301
        assert r.headers["location"] == "/static/a%20b%2541.d/"
        assert c.get(r.headers["location"]).text == "odd folder"


def test_root_static_redirect_is_not_protocol_relative(site: Path) -> None:
    app = App()
    app.static("/", site / "public")
    with ThreadedServer(app, access_log=False) as srv, srv.client() as c:
        assert c.get("/").text == "<h1>home</h1>\n"
        assert c.get("/digits.txt").body == DIGITS
        r = c.get("//docs")
        assert r.status == 301
        assert r.headers["location"] == "/docs/"
        assert c.get("/../secret.txt").status == 404


def test_odd_names_are_404_not_500(server: ThreadedServer) -> None:
    with server.client() as c:
        assert c.get("/static/loop").status == 404  # a symlink loop
        assert c.get("/static/loop/x").status == 404
        assert c.get("/static/" + "a" * 300).status == 404  # ENAMETOOLONG
        assert c.get("/static/" + "a" * 300 + "/").status == 404
        assert c.get("/static/%ff%fe.txt").status == 404
        assert c.get("/ping").text == "pong"


def test_fifo_does_not_block_the_server(server: ThreadedServer, site: Path) -> None:
    fifo = site / "public" / "pipe.txt"
    try:
        with server.client(timeout=5) as c:
            assert c.get("/static/pipe.txt").status == 404
            assert c.get("/ping").text == "pong"
    finally:
        # Should the server have blocked opening the FIFO, a writer releases it.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_symlink_inside_folder_is_served(server: ThreadedServer) -> None:
    with server.client() as c:
        assert c.get("/static/inside-link.txt").body == DIGITS


# --- traversal --------------------------------------------------------------------------------

TRAVERSALS = [
    "/static/../secret.txt",
    "/static/./../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E/secret.txt",
    "/static/%2e%2e%2fsecret.txt",
    "/static/..%2fsecret.txt",
    "/static/..%2Fsecret.txt",
    "/static/%252e%252e/secret.txt",
    "/static/%252e%252e%252fsecret.txt",
    "/static/foo/..%5c..%5csecret.txt",
    "/static/..\\secret.txt",
    "/static/foo/../../secret.txt",
    "/static/docs/%2e%2e/%2e%2e/secret.txt",
    "/static//../secret.txt",
    "/static/%2f..%2fsecret.txt",
    "/static/escape.txt",
    "/static/escape-dir/secret.txt",
    "/static/escape-dir/",
    "/static/secret.txt%00.txt",
    "/static/%00/../secret.txt",
    "/static/digits.txt%00",
    "/static/..%00/secret.txt",
    "/static/%c0%ae%c0%ae/secret.txt",
    "/static/..;/secret.txt",
    "/static/....//secret.txt",
    "/static/" + "%2e%2e/" * 8 + "etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static//etc/passwd",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_is_refused(server: ThreadedServer, target: str) -> None:
    data = raw_exchange(
        server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert SECRET not in data
    assert b"root:" not in data
    if data:  # a 400 may also close at once
        status, _, _ = parse_response(data)
        assert status in (400, 404), data[:200]


def test_traversal_absolute_form_target(server: ThreadedServer) -> None:
    target = f"http://127.0.0.1:{server.port}/static/%2e%2e/secret.txt"
    data = raw_exchange(
        server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert SECRET not in data
    assert parse_response(data)[0] in (400, 404)


def test_static_folder_must_exist(tmp_path: Path) -> None:
    app = App()
    with pytest.raises(ValueError):
        app.static("/s", tmp_path / "nope")
    with pytest.raises(ValueError):
        app.static_file("/f", tmp_path / "nope.txt")


# --- large files ------------------------------------------------------------------------------


def test_large_file_http_client(any_loop_server: ThreadedServer, site: Path) -> None:
    expected = (site / "public" / "big.bin").read_bytes()
    with any_loop_server.client() as c:
        r = c.get("/static/big.bin")
        assert r.status == 200
        assert r.headers["content-length"] == str(BIG_SIZE)
        assert r.headers["content-type"] == "application/octet-stream"
        assert len(r.body) == BIG_SIZE
        assert r.body == expected
        # The same keep-alive connection carries the next requests.
        sock = c.conn.sock
        assert c.get("/static/digits.txt").body == DIGITS
        r = c.get("/big")
        assert r.body == expected
        assert c.get("/static/digits.txt", headers={"Range": "bytes=1-2"}).body == DIGITS[1:3]
        assert c.conn.sock is sock  # no reconnection happened


def test_large_file_range_from_the_middle(any_loop_server: ThreadedServer, site: Path) -> None:
    expected = (site / "public" / "big.bin").read_bytes()
    start, end = 1_000_003, 4_000_010
    with any_loop_server.client() as c:
        r = c.get("/static/big.bin", headers={"Range": f"bytes={start}-{end}"})
        assert r.status == 206
        assert r.headers["content-range"] == f"bytes {start}-{end}/{BIG_SIZE}"
        assert r.body == expected[start : end + 1]
        r = c.get("/static/big.bin", headers={"Range": "bytes=-100000"})
        assert r.status == 206 and r.body == expected[-100000:]
        assert c.get("/static/digits.txt").body == DIGITS


def test_large_file_raw_keepalive(any_loop_server: ThreadedServer, site: Path) -> None:
    """Two pipelined requests after a large body: the framing must be exact."""
    expected = (site / "public" / "big.bin").read_bytes()
    request = (
        b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /static/digits.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = raw_exchange(any_loop_server.port, request)
    status, headers, rest = parse_response(data)
    assert status == 200 and int(headers["content-length"]) == BIG_SIZE
    assert rest[:BIG_SIZE] == expected
    status, headers, body = parse_response(rest[BIG_SIZE:])
    assert status == 200 and body == DIGITS


def test_large_file_curl(any_loop_server: ThreadedServer, site: Path, tmp_path: Path) -> None:
    curl = require_tool("curl")
    expected = hashlib.sha256((site / "public" / "big.bin").read_bytes()).hexdigest()
    out1, out2 = tmp_path / "one", tmp_path / "two"
    base = f"http://127.0.0.1:{any_loop_server.port}"
    # Two URLs in one curl run reuse the connection ("Re-using existing connection").
    proc = subprocess.run(
        [
            curl,
            "-sS",
            "-v",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-o",
            str(out1),
            f"{base}/static/big.bin",
            "-o",
            str(out2),
            f"{base}/big",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert hashlib.sha256(out1.read_bytes()).hexdigest() == expected
    assert hashlib.sha256(out2.read_bytes()).hexdigest() == expected
    stderr = proc.stderr.decode(errors="replace").lower()
    assert "re-using existing connection" in stderr or "reusing existing connection" in stderr


def test_curl_range_and_conditional(server: ThreadedServer, site: Path) -> None:
    curl = require_tool("curl")
    url = f"http://127.0.0.1:{server.port}/static/big.bin"
    expected = (site / "public" / "big.bin").read_bytes()
    proc = subprocess.run(
        [curl, "-sS", "--noproxy", "*", "--max-time", "20", "-r", "2097152-2097251", url],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected[2097152:2097252]
    # --time-cond sends If-Modified-Since; an up-to-date copy gets an empty 304.
    mtime = (site / "public" / "big.bin").stat().st_mtime
    proc = subprocess.run(
        [
            curl,
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-z",
            http_date(mtime + 5),
            url,
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"304"


def test_http10_large_file(server: ThreadedServer, site: Path) -> None:
    data = raw_exchange(server.port, b"GET /static/big.bin HTTP/1.0\r\n\r\n")
    status, headers, body = parse_response(data)
    assert status == 200
    assert headers["content-length"] == str(BIG_SIZE)
    assert headers.get("connection") == "close"
    assert body == (site / "public" / "big.bin").read_bytes()


def test_http_client_reads_exact_bytes(server: ThreadedServer) -> None:
    # A plain http.client connection, not the SyncClient wrapper.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/static/digits.txt", headers={"Range": "bytes=-1"})
        r = conn.getresponse()
        assert r.status == 206 and r.read() == b"z"
    finally:
        conn.close()


def test_dotfiles_are_private_except_well_known(server: ThreadedServer, site: Path) -> None:
    root = site / "public"
    (root / ".env").write_text("SECRET=1")
    (root / ".git").mkdir(exist_ok=True)
    (root / ".git" / "config").write_text("[core]")
    (root / ".well-known").mkdir(exist_ok=True)
    (root / ".well-known" / "security.txt").write_text("Contact: x")
    for target in ("/static/.env", "/static/.git/config", "/static/%2eenv"):
        status, _, body = raw_get(server.port, target)
        assert status == 404 and b"SECRET" not in body, target
    status, _, body = raw_get(server.port, "/static/.well-known/security.txt")
    assert status == 200 and body == b"Contact: x"


NO_FRAMING = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def test_route_headers(site: Path) -> None:
    """`headers=` of a static route go with each file it serves, a 304 and a HEAD too; not
    with its 404s, which are error pages of the app."""
    app = App()
    app.static("/static", site / "public", headers=NO_FRAMING)
    app.static_file("/", site / "public" / "index.html", headers={"Cache-Control": "no-cache"})
    with ThreadedServer(app, access_log=False) as srv, srv.client() as c:
        for target in ("/static/", "/static/docs/page.txt"):
            r = c.get(target)
            assert r.status == 200, target
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["content-security-policy"] == "frame-ancestors 'none'"
            etag = r.headers["etag"]
            again = c.get(target, headers={"If-None-Match": etag})
            assert again.status == 304 and again.headers["x-frame-options"] == "DENY"
            assert c.request("HEAD", target).headers["x-frame-options"] == "DENY"
        assert "x-frame-options" not in c.get("/static/nothing-here").headers
        page = c.get("/")
        assert page.headers["cache-control"] == "no-cache" and "x-frame-options" not in page.headers


def test_route_headers_are_checked(site: Path) -> None:
    with pytest.raises(ValueError, match="invalid header field"):
        App().static_file("/", site / "public" / "index.html", headers={"X-Bad": "a\r\nb"})
    with pytest.raises(ValueError, match="invalid header field"):
        App().static("/s", site / "public", headers={"Bad Name": "x"})
