"""App-layer features end to end over real sockets.

Signed cookies, XSRF, gzip, Jinja2 templates, redirects, forms, streaming bodies, request
parsing, error pages and debug tracebacks. Clients: stdlib http.client (SyncClient), raw
sockets for exact bytes, and curl. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import socket
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rtserve import (
    App,
    Handler,
    HTMLResponse,
    HTTPError,
    RedirectResponse,
    Request,
    Response,
    ServerSettings,
    StreamingResponse,
)
from rtserve.app.forms import UploadFile
from rtserve.server.settings import LimitSettings
from rtserve.testing import ThreadedServer
from tests.conftest import require_tool
from tests.rawhttp import parse_response, raw_exchange

OLD_SECRET = "old-secret-0123456789abcdef"
NEW_SECRET = "new-secret-fedcba9876543210"
BIG_TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(200))
assert len(BIG_TEXT) > 10_000
STREAM_CLOSED = threading.Event()


# --- helpers -----------------------------------------------------------------------------------


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body; also say whether the last-chunk arrived (the body is whole)."""
    out: list[bytes] = []
    pos = 0
    for _ in range(100_000):
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            return b"".join(out), False
        size = int(body[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out), body[line_end:] == b"\r\n\r\n"
        start = line_end + 2
        out.append(body[start : start + size])
        if body[start + size : start + size + 2] != b"\r\n":
            return b"".join(out), False
        pos = start + size + 2
    raise AssertionError("too many chunks")


def cookie_pair(set_cookie: str) -> str:
    """The `name=value` a browser would send back for a Set-Cookie value."""
    return set_cookie.split(";", 1)[0]


def set_cookies(response: http.client.HTTPResponse) -> list[str]:
    return response.headers.get_all("set-cookie") or []


def multipart(fields: list[tuple[str, str | tuple[str, str, bytes]]]) -> tuple[bytes, str]:
    """Encode a multipart/form-data body; a tuple value is (filename, content type, data)."""
    boundary = "----rtserve-test-boundary-7MA4YWxkTrZu0gW"
    parts = []
    for name, value in fields:
        if isinstance(value, tuple):
            filename, content_type, data = value
            parts.append(
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                    f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
                ).encode()
                + data
                + b"\r\n"
            )
        else:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                + value.encode()
                + b"\r\n"
            )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def fetch(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a fresh http.client connection; (response, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


# --- the app -------------------------------------------------------------------------------------


class SignedHandler(Handler):
    def get(self) -> None:
        self.set_signed_cookie("user", "bob")
        self.write("ok")


class SignedReturnHandler(Handler):
    def get(self) -> dict[str, bool]:
        self.set_signed_cookie("user", "carol")
        self.set_header("X-From-Handler", "yes")
        return {"ok": True}


class CookieOnlyHandler(Handler):
    def get(self) -> None:
        self.set_signed_cookie("user", "dave")


class FlushHandler(Handler):
    async def get(self) -> None:
        self.set_header("content-type", "text/plain; charset=utf-8")
        self.write("piece-1;")
        await self.flush()
        self.write(b"piece-2;")
        await self.flush()
        await asyncio.sleep(0)
        self.write("piece-3")


class FlushFailHandler(Handler):
    async def get(self) -> None:
        self.write("partial")
        await self.flush()
        raise RuntimeError("after flush")


class XsrfFlushHandler(Handler):
    async def get(self) -> None:
        self.write(f"token={self.request.xsrf_token}")
        await self.flush()


class TemplateHandler(Handler):
    def get(self) -> None:
        self.render("hello.html", name="<script>alert(1)</script>")


class BadReturnHandler(Handler):
    def get(self) -> object:
        return object()


def make_app(
    template_dir: Path,
    *,
    secrets: str | list[str] = OLD_SECRET,
    xsrf: bool = False,
    settings: ServerSettings | None = None,
) -> App:
    app = App(settings, cookie_secret=secrets, xsrf_cookies=xsrf, template_dir=template_dir)

    # signed cookies
    @app.route("/signed/set")
    def signed_set(request: Request) -> Response:
        response = Response("ok")
        response.set_signed_cookie(app.cookie_signer, "user", request.query.get("v", "ada"))
        return response

    app.add_route("/signed/handler", SignedHandler)
    app.add_route("/signed/handler-return", SignedReturnHandler)
    app.add_route("/signed/cookie-only", CookieOnlyHandler)

    @app.route("/signed/read")
    def signed_read(request: Request) -> dict[str, Any]:
        return {
            "user": request.get_signed_cookie("user"),
            "other": request.get_signed_cookie("other"),
        }

    # plain cookies, headers and query
    @app.route("/cookie/set")
    def cookie_set(request: Request) -> Response:
        response = Response("ok")
        response.set_cookie("greeting", "hello world; 100%")
        response.set_cookie("auto", "x")
        response.set_cookie("never", "x", secure=False)
        response.set_cookie("always", "x", secure=True)
        return response

    @app.route("/inspect", methods=["GET", "POST"])
    def inspect_(request: Request) -> dict[str, Any]:
        return {
            "cookies": request.cookies,
            "x_rep": request.headers.getall("X-Rep"),
            "mixed": request.headers.get("x-MIXED-case"),
            "mixed_in": "X-Mixed-Case" in request.headers,
            "q": request.query.getall("q"),
            "first_q": request.query.get("q"),
            "blank": request.query.get("blank"),
            "u": request.query.get("u"),
            "client": request.client,
            "scheme": request.scheme,
            "version": request.http_version,
        }

    # xsrf
    @app.route("/form", methods=["GET", "POST"])
    async def form_page(request: Request) -> Any:
        if request.method == "GET":
            return HTMLResponse(
                f'<form method=post><input name=_xsrf value="{request.xsrf_token}"></form>'
            )
        form = await request.form()
        return {"ok": True, "name": form.get("name")}

    @app.route("/api", methods=["POST", "PUT", "DELETE"])
    async def api(request: Request) -> dict[str, Any]:
        return {"ok": True, "method": request.method}

    @app.route("/token")
    def token(request: Request) -> dict[str, str]:
        return {"token": request.xsrf_token}

    app.add_route("/xsrf-flush", XsrfFlushHandler)

    # gzip
    @app.route("/text/big")
    def big_text(request: Request) -> str:
        return BIG_TEXT

    @app.route("/text/small")
    def small_text(request: Request) -> str:
        return "tiny"

    @app.route("/json/big")
    def big_json(request: Request) -> list[dict[str, int]]:
        return [{"n": i, "square": i * i} for i in range(1000)]

    @app.route("/bytes/big")
    def big_bytes(request: Request) -> bytes:
        return BIG_TEXT.encode()

    @app.route("/html/vary")
    def html_vary(request: Request) -> Response:
        return HTMLResponse(BIG_TEXT, headers={"Vary": "Cookie"})

    @app.route("/text/handler")
    class BigWriter(Handler):
        def get(self) -> None:
            self.write(BIG_TEXT)

    # templates
    @app.route("/tpl/func")
    def tpl_func(request: Request) -> HTMLResponse:
        return app.render("hello.html", name="<b>&amp;</b>", items=["<i>", "ok"])

    @app.route("/tpl/missing")
    def tpl_missing(request: Request) -> HTMLResponse:
        return app.render("hello.html", status=404, name="nobody", items=[])

    app.add_route("/tpl/handler", TemplateHandler)

    # redirects
    @app.route("/go/found")
    def go_found(request: Request) -> RedirectResponse:
        return RedirectResponse("/target?x=1&y=2")

    @app.route("/go/moved")
    def go_moved(request: Request) -> RedirectResponse:
        return RedirectResponse("/new place/ü", 301)

    @app.route("/go/away")
    def go_away(request: Request) -> RedirectResponse:
        return RedirectResponse("https://example.invalid/a?b=c#frag", 307)

    # forms
    @app.route("/form/echo", methods=["POST"])
    async def form_echo(request: Request) -> dict[str, Any]:
        form = await request.form()
        out: dict[str, Any] = {}
        for name, value in form.items():
            if isinstance(value, UploadFile):
                out.setdefault(name, []).append(
                    {
                        "filename": value.filename,
                        "type": value.content_type,
                        "hex": value.data.hex(),
                    }
                )
            else:
                out.setdefault(name, []).append(value)
        return out

    # streaming
    @app.route("/stream/async")
    def stream_async(request: Request) -> StreamingResponse:
        async def pieces() -> AsyncIterator[str | bytes]:
            for i in range(5):
                await asyncio.sleep(0)
                yield f"part {i};"
            yield b"\x00\xffend"

        return StreamingResponse(pieces(), content_type="application/x-test")

    @app.route("/stream/sync")
    async def stream_sync(request: Request) -> StreamingResponse:
        return StreamingResponse(iter(["a", b"b", "", "c"]))  # type: ignore[arg-type]

    @app.route("/stream/fail")
    def stream_fail(request: Request) -> StreamingResponse:
        async def pieces() -> AsyncIterator[str]:
            yield "first;"
            await asyncio.sleep(0)
            raise RuntimeError("generator failed")

        return StreamingResponse(pieces())

    @app.route("/stream/endless")
    def stream_endless(request: Request) -> StreamingResponse:
        async def pieces() -> AsyncIterator[bytes]:
            try:
                for _ in range(1_000_000):  # bounded; the client leaves long before
                    yield b"x" * 16384
            finally:
                STREAM_CLOSED.set()

        return StreamingResponse(pieces())

    app.add_route("/flush", FlushHandler)
    app.add_route("/flush/fail", FlushFailHandler)

    # errors
    @app.route("/boom")
    def boom(request: Request) -> str:
        raise RuntimeError("kaboom-detail")

    @app.route("/boom/async")
    async def boom_async(request: Request) -> str:
        await asyncio.sleep(0)
        raise ValueError("async-kaboom")

    @app.route("/teapot")
    def teapot(request: Request) -> str:
        raise HTTPError(418, "<short & stout>")

    @app.route("/bad/int")
    def bad_int(request: Request) -> int:
        return 42

    @app.route("/bad/set")
    async def bad_set(request: Request) -> set[int]:
        await asyncio.sleep(0)
        return {1}

    app.add_route("/bad/handler", BadReturnHandler)

    @app.route("/bad/header")
    def bad_header(request: Request) -> Response:
        return Response("x", headers={"X-Evil": "a\r\nInjected: 1"})

    @app.route("/bad/cookie")
    def bad_cookie(request: Request) -> Response:
        response = Response("x")
        response.set_cookie("c", "v", path="/\r\nInjected: 1")
        return response

    @app.route("/ping")
    def ping(request: Request) -> str:
        return "pong"

    return app


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("templates")
    (path / "hello.html").write_text(
        "<p>Hello {{ name }}</p><ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>"
        "{% if request %}<i>{{ request.path }}</i>{% endif %}"
        '<a href="{{ url_for("ping") }}">ping</a>'
    )
    return path


@pytest.fixture(scope="module")
def server(template_dir: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(template_dir), access_log=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def xsrf_server(template_dir: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(template_dir, xsrf=True), access_log=False) as srv:
        yield srv


# --- signed cookies ----------------------------------------------------------------------------


def test_signed_cookie_round_trip(server: ThreadedServer) -> None:
    response, _ = fetch(server.port, "GET", "/signed/set?v=ada%20lovelace")
    (cookie,) = set_cookies(response)
    assert cookie.startswith("user=v1.") and "HttpOnly" in cookie
    _, body = fetch(server.port, "GET", "/signed/read", headers={"Cookie": cookie_pair(cookie)})
    assert json.loads(body) == {"user": "ada lovelace", "other": None}


def test_signed_cookie_from_handler(server: ThreadedServer) -> None:
    response, body = fetch(server.port, "GET", "/signed/handler")
    assert response.status == 200 and body == b"ok"
    (cookie,) = set_cookies(response)
    _, body = fetch(server.port, "GET", "/signed/read", headers={"Cookie": cookie_pair(cookie)})
    assert json.loads(body)["user"] == "bob"


def test_handler_cookie_survives_a_returned_value(server: ThreadedServer) -> None:
    response, body = fetch(server.port, "GET", "/signed/handler-return")
    assert response.status == 200 and json.loads(body) == {"ok": True}
    assert response.getheader("content-type") == "application/json"
    assert response.getheader("x-from-handler") == "yes"
    (cookie,) = set_cookies(response)
    _, body = fetch(server.port, "GET", "/signed/read", headers={"Cookie": cookie_pair(cookie)})
    assert json.loads(body)["user"] == "carol"


def test_handler_that_only_sets_a_cookie(server: ThreadedServer) -> None:
    response, body = fetch(server.port, "GET", "/signed/cookie-only")
    assert response.status in (200, 204) and body == b""
    (cookie,) = set_cookies(response)
    _, body = fetch(server.port, "GET", "/signed/read", headers={"Cookie": cookie_pair(cookie)})
    assert json.loads(body)["user"] == "dave"


def test_tampered_signed_cookie_reads_as_none(server: ThreadedServer) -> None:
    response, _ = fetch(server.port, "GET", "/signed/set?v=admin")
    value = cookie_pair(set_cookies(response)[0]).split("=", 1)[1]
    version, stamp, payload, mac = value.split(".")
    forged = [
        f"{version}.{stamp}.{payload}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",  # MAC
        f"{version}.{stamp}.{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{mac}",  # value
        f"{version}.{int(stamp) + 1}.{payload}.{mac}",  # timestamp
        "garbage",
        "",
    ]
    for bad in forged:
        _, body = fetch(server.port, "GET", "/signed/read", headers={"Cookie": f"user={bad}"})
        assert json.loads(body)["user"] is None, bad
    # A value signed for one cookie does not verify under another name.
    _, body = fetch(server.port, "GET", "/signed/read", headers={"Cookie": f"other={value}"})
    assert json.loads(body)["other"] is None


def test_secret_rotation(server: ThreadedServer, template_dir: Path) -> None:
    old_cookie = cookie_pair(set_cookies(fetch(server.port, "GET", "/signed/set?v=old")[0])[0])
    rotated = make_app(template_dir, secrets=[NEW_SECRET, OLD_SECRET])
    with ThreadedServer(rotated, access_log=False) as new_server:
        _, body = fetch(new_server.port, "GET", "/signed/read", headers={"Cookie": old_cookie})
        assert json.loads(body)["user"] == "old"
        new_cookie = cookie_pair(
            set_cookies(fetch(new_server.port, "GET", "/signed/set?v=new")[0])[0]
        )
    # Signed with the new secret: the old app (which does not know it) refuses it.
    _, body = fetch(server.port, "GET", "/signed/read", headers={"Cookie": new_cookie})
    assert json.loads(body)["user"] is None
    only_new = make_app(template_dir, secrets=NEW_SECRET)
    with ThreadedServer(only_new, access_log=False) as new_server:
        _, body = fetch(new_server.port, "GET", "/signed/read", headers={"Cookie": new_cookie})
        assert json.loads(body)["user"] == "new"
        _, body = fetch(new_server.port, "GET", "/signed/read", headers={"Cookie": old_cookie})
        assert json.loads(body)["user"] is None  # old secret dropped


# --- plain cookies, headers, query -------------------------------------------------------------


def test_cookie_round_trip_and_attributes(server: ThreadedServer) -> None:
    response, _ = fetch(server.port, "GET", "/cookie/set")
    cookies = {c.split("=", 1)[0]: c for c in set_cookies(response)}
    assert set(cookies) == {"greeting", "auto", "never", "always"}
    assert "Secure" not in cookies["auto"]  # plain HTTP
    assert "Secure" not in cookies["never"]
    assert "; Secure" in cookies["always"]
    for value in cookies.values():
        assert "HttpOnly" in value and "SameSite=Lax" in value and "Path=/" in value
    sent = "; ".join(cookie_pair(c) for c in cookies.values())
    _, body = fetch(server.port, "GET", "/inspect", headers={"Cookie": sent})
    assert json.loads(body)["cookies"]["greeting"] == "hello world; 100%"


def test_request_cookies_parsing(server: ThreadedServer) -> None:
    _, body = fetch(
        server.port, "GET", "/inspect", headers={"Cookie": 'a=1; b="quoted"; bad; a=2; c='}
    )
    assert json.loads(body)["cookies"] == {"a": "1", "b": "quoted", "c": ""}


def test_secure_cookie_only_under_https() -> None:
    response = Response("x")
    response.set_cookie("auto", "1")
    response.set_cookie("off", "1", secure=False)
    response.set_cookie("on", "1", secure=True)
    response.set_cookie("cross", "1", samesite="None")
    response.delete_cookie("gone")

    def cookies(scheme: str) -> dict[str, str]:
        out = {}
        for name, value in response.raw_headers(scheme):
            if name == b"set-cookie":
                text = value.decode()
                out[text.split("=", 1)[0]] = text
        return out

    http_cookies, https_cookies = cookies("http"), cookies("https")
    assert "Secure" not in http_cookies["auto"]
    assert https_cookies["auto"].endswith("; Secure")
    assert "Secure" not in https_cookies["off"] and "Secure" not in http_cookies["off"]
    assert https_cookies["on"].count("Secure") == 1 and "Secure" in http_cookies["on"]
    assert "Secure" in http_cookies["cross"] and https_cookies["cross"].count("Secure") == 1
    assert "Max-Age=0" in http_cookies["gone"]
    # The response can be rendered again without piling up attributes.
    assert cookies("https") == https_cookies


def test_headers_case_insensitive_and_repeated(server: ThreadedServer) -> None:
    data = raw_exchange(
        server.port,
        b"GET /inspect?q=1&q=2&blank=&u=%C3%BC+x HTTP/1.1\r\nHost: x\r\n"
        b"X-Rep: one\r\nx-rep: two\r\nX-REP: three\r\nX-Mixed-Case: yes\r\n"
        b"Connection: close\r\n\r\n",
    )
    status, _, body = parse_response(data)
    assert status == 200
    info = json.loads(body)
    assert info["x_rep"] == ["one", "two", "three"]
    assert info["mixed"] == "yes" and info["mixed_in"] is True
    assert info["q"] == ["1", "2"] and info["first_q"] == "1"
    assert info["blank"] == ""
    assert info["u"] == "ü x"
    assert info["client"] == "127.0.0.1" and info["scheme"] == "http"
    assert info["version"] == "1.1"


# --- XSRF --------------------------------------------------------------------------------------


def _xsrf_cookie(port: int, path: str = "/form") -> tuple[str, str]:
    response, body = fetch(port, "GET", path)
    assert response.status == 200, body
    (cookie,) = [c for c in set_cookies(response) if c.startswith("_xsrf=")]
    assert "HttpOnly" not in cookie  # scripts may read it to send the header
    assert "SameSite=Strict" in cookie
    token = cookie_pair(cookie).split("=", 1)[1]
    assert token and token in body.decode()
    return token, cookie_pair(cookie)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_xsrf_get_sets_cookie_once(xsrf_server: ThreadedServer) -> None:
    token, cookie = _xsrf_cookie(xsrf_server.port)
    response, body = fetch(xsrf_server.port, "GET", "/token", headers={"Cookie": cookie})
    assert json.loads(body) == {"token": token}
    assert set_cookies(response) == []  # the existing cookie is reused


def test_xsrf_form_post(xsrf_server: ThreadedServer) -> None:
    token, cookie = _xsrf_cookie(xsrf_server.port)
    port = xsrf_server.port
    # No token at all, and a cookie but no submitted token: refused.
    assert fetch(port, "POST", "/form", body="name=x", headers=FORM)[0].status == 403
    assert (
        fetch(port, "POST", "/form", body="name=x", headers={**FORM, "Cookie": cookie})[0].status
        == 403
    )
    # The form field without the cookie, or a wrong token: refused.
    assert fetch(port, "POST", "/form", body=f"_xsrf={token}", headers=FORM)[0].status == 403
    wrong = {**FORM, "Cookie": cookie}
    assert fetch(port, "POST", "/form", body="_xsrf=nope&name=x", headers=wrong)[0].status == 403
    # Field matching the cookie: accepted, and the handler still reads the form.
    response, body = fetch(
        port, "POST", "/form", body=f"name=ada&_xsrf={token}", headers={**FORM, "Cookie": cookie}
    )
    assert response.status == 200, body
    assert json.loads(body) == {"ok": True, "name": "ada"}


def test_xsrf_multipart_post(xsrf_server: ThreadedServer) -> None:
    token, cookie = _xsrf_cookie(xsrf_server.port)
    body, content_type = multipart([("_xsrf", token), ("name", "grace")])
    response, data = fetch(
        xsrf_server.port,
        "POST",
        "/form",
        body=body,
        headers={"Content-Type": content_type, "Cookie": cookie},
    )
    assert response.status == 200, data
    assert json.loads(data)["name"] == "grace"


def test_xsrf_header(xsrf_server: ThreadedServer) -> None:
    token, cookie = _xsrf_cookie(xsrf_server.port)
    port = xsrf_server.port
    for method in ("POST", "PUT", "DELETE"):
        response, body = fetch(
            port,
            method,
            "/api",
            body="{}",
            headers={"Content-Type": "application/json", "Cookie": cookie, "X-XSRFToken": token},
        )
        assert response.status == 200, body
        assert json.loads(body) == {"ok": True, "method": method}
        response, _ = fetch(port, method, "/api", headers={"Cookie": cookie})
        assert response.status == 403
    response, _ = fetch(port, "POST", "/api", headers={"Cookie": cookie, "X-CSRFToken": token})
    assert response.status == 200
    response, _ = fetch(port, "POST", "/api", headers={"Cookie": cookie, "X-XSRFToken": "x"})
    assert response.status == 403
    # Safe methods are never checked.
    assert fetch(port, "GET", "/ping")[0].status == 200


def test_xsrf_403_is_an_error_page(xsrf_server: ThreadedServer) -> None:
    response, body = fetch(xsrf_server.port, "POST", "/api", headers={"Accept": "text/html"})
    assert response.status == 403
    assert response.getheader("content-type") == "text/html; charset=utf-8"
    assert b"XSRF" in body


def test_xsrf_cookie_set_by_flushing_handler(xsrf_server: ThreadedServer) -> None:
    response, body = fetch(xsrf_server.port, "GET", "/xsrf-flush")
    assert response.status == 200
    token = body.decode().removeprefix("token=")
    assert [c for c in set_cookies(response) if c.startswith(f"_xsrf={token};")]


# --- gzip --------------------------------------------------------------------------------------


def test_gzip_text(server: ThreadedServer) -> None:
    response, body = fetch(server.port, "GET", "/text/big", headers={"Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.getheader("content-encoding") == "gzip"
    assert response.getheader("vary") == "Accept-Encoding"
    assert response.getheader("content-length") == str(len(body))
    assert len(body) < len(BIG_TEXT) // 4
    assert gzip.decompress(body).decode() == BIG_TEXT


def test_no_gzip_without_accept_encoding(server: ThreadedServer) -> None:
    response, body = fetch(server.port, "GET", "/text/big")
    assert response.getheader("content-encoding") is None
    assert body.decode() == BIG_TEXT
    # The representation still depends on Accept-Encoding, so caches must be told.
    assert response.getheader("vary") == "Accept-Encoding"


@pytest.mark.parametrize(
    ("accept", "compressed"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.5", True),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
        ("*", True),
        ("*;q=0, gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0", False),
        ("gzip;q=0.000", False),
        ("gzip;q=0, *", False),
        ("*;q=0", False),
        ("identity", False),
        ("deflate, br", False),
        ("x-gzip-not", False),
    ],
)
def test_gzip_negotiation(server: ThreadedServer, accept: str, compressed: bool) -> None:
    response, body = fetch(server.port, "GET", "/text/big", headers={"Accept-Encoding": accept})
    assert (response.getheader("content-encoding") == "gzip") is compressed
    assert (gzip.decompress(body) if compressed else body).decode() == BIG_TEXT


def test_gzip_small_and_binary_not_compressed(server: ThreadedServer) -> None:
    gz = {"Accept-Encoding": "gzip"}
    response, body = fetch(server.port, "GET", "/text/small", headers=gz)
    assert response.getheader("content-encoding") is None and body == b"tiny"
    response, body = fetch(server.port, "GET", "/bytes/big", headers=gz)
    assert response.getheader("content-encoding") is None and body == BIG_TEXT.encode()


def test_gzip_json_handler_and_vary_merge(server: ThreadedServer) -> None:
    gz = {"Accept-Encoding": "gzip"}
    response, body = fetch(server.port, "GET", "/json/big", headers=gz)
    assert response.getheader("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(body))[999] == {"n": 999, "square": 998001}
    response, body = fetch(server.port, "GET", "/text/handler", headers=gz)
    assert response.getheader("content-encoding") == "gzip"
    assert gzip.decompress(body).decode() == BIG_TEXT
    response, body = fetch(server.port, "GET", "/html/vary", headers=gz)
    assert response.getheader("vary") == "Cookie, Accept-Encoding"
    assert gzip.decompress(body).decode() == BIG_TEXT


def test_gzip_head(server: ThreadedServer) -> None:
    gz = {"Accept-Encoding": "gzip"}
    _, get_body = fetch(server.port, "GET", "/text/big", headers=gz)
    response, body = fetch(server.port, "HEAD", "/text/big", headers=gz)
    assert body == b""
    assert response.getheader("content-encoding") == "gzip"
    assert response.getheader("content-length") == str(len(get_body))


def test_gzip_curl(server: ThreadedServer) -> None:
    curl = require_tool("curl")
    proc = subprocess.run(
        [
            curl,
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "--compressed",
            "-D",
            "-",
            f"http://127.0.0.1:{server.port}/text/big",
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert body.decode() == BIG_TEXT


def test_gzip_disabled(template_dir: Path) -> None:
    app = App(gzip_min_size=None)

    @app.route("/")
    def index(request: Request) -> str:
        return BIG_TEXT

    with ThreadedServer(app, access_log=False) as srv:
        response, body = fetch(srv.port, "GET", "/", headers={"Accept-Encoding": "gzip"})
    assert response.getheader("content-encoding") is None and body.decode() == BIG_TEXT


# --- templates ---------------------------------------------------------------------------------


def test_template_from_function(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/tpl/func")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "<p>Hello &lt;b&gt;&amp;amp;&lt;/b&gt;</p>" in r.text
    assert "<li>&lt;i&gt;</li><li>ok</li>" in r.text
    assert '<a href="/ping">ping</a>' in r.text
    assert "<i>" not in r.text.replace("<i>/", "")  # no request in a plain app.render


def test_template_status(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/tpl/missing")
    assert r.status == 404 and "Hello nobody" in r.text


def test_template_from_handler(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/tpl/handler")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert "<script>" not in r.text
    assert "<i>/tpl/handler</i>" in r.text  # the handler passes the request


# --- redirects ---------------------------------------------------------------------------------


def test_redirects(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/go/found")
        assert r.status == 302 and r.headers["location"] == "/target?x=1&y=2"
        assert r.body == b""
        r = c.get("/go/moved")
        assert r.status == 301 and r.headers["location"] == "/new%20place/%C3%BC"
        r = c.get("/go/away")
        assert r.status == 307
        assert r.headers["location"] == "https://example.invalid/a?b=c#frag"
        assert c.get("/ping").text == "pong"


# --- forms -------------------------------------------------------------------------------------


def test_urlencoded_form(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.post(
            "/form/echo",
            body="a=1&a=2&b=x+y&c=%C3%BC%26&empty=",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert r.status == 200, r.body
    assert r.json() == {"a": ["1", "2"], "b": ["x y"], "c": ["ü&"], "empty": [""]}


def test_multipart_form_with_upload(server: ThreadedServer) -> None:
    payload = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n" + b"\x00tail"
    body, content_type = multipart(
        [
            ("title", "Report ü"),
            ("upload", ("data.bin", "application/octet-stream", payload)),
            ("upload", ("notes.txt", "text/plain", b"hello\r\nworld")),
            ("empty", ("", "application/octet-stream", b"")),
        ]
    )
    with server.client() as c:
        r = c.post("/form/echo", body=body, headers={"Content-Type": content_type})
    assert r.status == 200, r.body
    data = r.json()
    assert data["title"] == ["Report ü"]
    first, second = data["upload"]
    assert first["filename"] == "data.bin" and bytes.fromhex(first["hex"]) == payload
    assert second == {
        "filename": "notes.txt",
        "type": "text/plain",
        "hex": b"hello\r\nworld".hex(),
    }
    assert data["empty"][0]["hex"] == ""


def test_form_wrong_type_and_malformed(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.post("/form/echo", json={"a": 1})
        assert r.status == 415
        r = c.post(
            "/form/echo", body=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data"}
        )
        assert r.status == 400
        assert c.get("/ping").text == "pong"


def test_form_field_limit(template_dir: Path) -> None:
    settings = ServerSettings(limits=LimitSettings(max_form_fields=3, max_upload_size=100))
    app = make_app(template_dir, settings=settings)
    with ThreadedServer(app, access_log=False) as srv, srv.client() as c:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert c.post("/form/echo", body="a=1&b=2&c=3", headers=form).status == 200
        assert c.post("/form/echo", body="a=1&b=2&c=3&d=4", headers=form).status == 413
        body, content_type = multipart([(f"f{i}", "v") for i in range(4)])
        assert c.post("/form/echo", body=body, headers={"Content-Type": content_type}).status == (
            413
        )
        body, content_type = multipart([("f", ("big.bin", "x/y", b"x" * 101))])
        assert c.post("/form/echo", body=body, headers={"Content-Type": content_type}).status == (
            413
        )
        assert c.get("/ping").text == "pong"


# --- streaming ---------------------------------------------------------------------------------


def test_streaming_generator_closed_when_client_leaves(server: ThreadedServer) -> None:
    STREAM_CLOSED.clear()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(b"GET /stream/endless HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST: the server's next write fails
    assert STREAM_CLOSED.wait(10), "the generator's finally block did not run"
    with server.client() as c:
        assert c.get("/ping").text == "pong"


STREAMED = b"part 0;part 1;part 2;part 3;part 4;\x00\xffend"


def test_streaming_response_http11(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/stream/async")
        assert r.status == 200 and r.body == STREAMED
        assert r.headers["content-type"] == "application/x-test"
        assert r.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in r.headers
        assert c.get("/stream/sync").body == b"abc"
        assert c.get("/ping").text == "pong"  # same connection


def test_streaming_response_raw_chunks(server: ThreadedServer) -> None:
    data = raw_exchange(
        server.port, b"GET /stream/async HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse_response(data)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    decoded, complete = dechunk(body)
    assert decoded == STREAMED and complete


def test_streaming_response_http10(server: ThreadedServer) -> None:
    data = raw_exchange(server.port, b"GET /stream/async HTTP/1.0\r\nHost: x\r\n\r\n")
    status, headers, body = parse_response(data)
    assert status == 200
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert headers["connection"] == "close"
    assert body == STREAMED  # the body ends when the server closes
    # Even when the 1.0 client asks for keep-alive, a length-less body must close.
    data = raw_exchange(server.port, b"GET /stream/sync HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = parse_response(data)
    assert body == b"abc" and headers["connection"] == "close"


def test_streaming_head(server: ThreadedServer) -> None:
    data = raw_exchange(
        server.port, b"HEAD /stream/async HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status, _, body = parse_response(data)
    assert status == 200 and body == b""


def test_streaming_failure_is_not_a_complete_body(server: ThreadedServer) -> None:
    data = raw_exchange(
        server.port, b"GET /stream/fail HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse_response(data)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    decoded, complete = dechunk(body)
    assert decoded == b"first;"
    assert not complete  # no last-chunk: the client must see the body was cut short
    with server.client() as c, pytest.raises(http.client.IncompleteRead):
        c.get("/stream/fail")
    with server.client() as c:
        assert c.get("/ping").text == "pong"


def test_handler_flush(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/flush")
        assert r.status == 200 and r.body == b"piece-1;piece-2;piece-3"
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert c.get("/ping").text == "pong"
    data = raw_exchange(server.port, b"GET /flush HTTP/1.0\r\n\r\n")
    status, headers, body = parse_response(data)
    assert status == 200 and body == b"piece-1;piece-2;piece-3"
    assert "transfer-encoding" not in headers


def test_handler_flush_failure_is_not_a_complete_body(server: ThreadedServer) -> None:
    data = raw_exchange(
        server.port, b"GET /flush/fail HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status, _, body = parse_response(data)
    assert status == 200
    decoded, complete = dechunk(body)
    assert decoded == b"partial" and not complete


# --- errors ------------------------------------------------------------------------------------


def test_errors_json_by_default(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/boom")
        assert r.status == 500
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"error": {"status": 500, "detail": "Internal Server Error"}}
        assert "kaboom" not in r.text
        r = c.get("/nope", headers={"Accept": "application/json"})
        assert r.status == 404 and r.json()["error"]["status"] == 404
        r = c.get("/teapot")
        assert r.status == 418 and r.json()["error"]["detail"] == "<short & stout>"


def test_errors_html_for_browsers(server: ThreadedServer) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    with server.client() as c:
        r = c.get("/teapot", headers=browser)
        assert r.status == 418
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert "&lt;short &amp; stout&gt;" in r.text and "<short" not in r.text
        r = c.get("/boom/async", headers=browser)
        assert r.status == 500 and r.text.startswith("<!doctype html>")
        assert "async-kaboom" not in r.text and "Traceback" not in r.text
        r = c.request("DELETE", "/ping", headers=browser)
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"


def test_debug_mode_shows_traceback(template_dir: Path) -> None:
    app = make_app(template_dir, settings=ServerSettings(debug=True))
    with ThreadedServer(app, access_log=False) as srv, srv.client() as c:
        r = c.get("/boom")
        assert r.status == 500
        trace = r.json()["error"]["traceback"]
        assert "Traceback" in trace and "RuntimeError: kaboom-detail" in trace
        r = c.get("/boom/async", headers={"Accept": "text/html"})
        assert r.status == 500
        assert "<pre>Traceback" in r.text and "ValueError: async-kaboom" in r.text
        # Expected HTTP errors carry no traceback, even in debug mode.
        assert "traceback" not in c.get("/teapot").json()["error"]


@pytest.mark.parametrize("path", ["/bad/int", "/bad/set", "/bad/handler"])
def test_unsupported_return_type_is_500(server: ThreadedServer, path: str) -> None:
    with server.client() as c:
        r = c.get(path)
        assert r.status == 500
        assert r.json()["error"]["status"] == 500
        assert c.get("/ping").text == "pong"


@pytest.mark.parametrize("path", ["/bad/header", "/bad/cookie"])
def test_header_injection_is_refused(server: ThreadedServer, path: str) -> None:
    data = raw_exchange(
        server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert b"injected" not in data.lower()
    status, _, _ = parse_response(data)
    assert status == 500


# --- cookie attributes and configuration -------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"path": "/; Domain=.evil.example"},
        {"domain": "example.com; Secure"},
        {"path": "/\r\nX-Injected: 1"},
        {"samesite": "Lax; Domain=evil"},
        {"samesite": "Sometimes"},
    ],
)
def test_cookie_attribute_injection_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Response().set_cookie("name", "value", **options)


def test_cookie_expires_accepts_naive_and_aware_datetimes() -> None:
    from datetime import datetime, timedelta, timezone

    response = Response()
    response.set_cookie("naive", "1", expires=datetime(2030, 1, 2, 3, 4, 5))
    aware = datetime(2030, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    response.set_cookie("aware", "1", expires=aware)
    values = [v.decode() for n, v in response.raw_headers("http") if n == b"set-cookie"]
    assert all("Expires=Wed, 02 Jan 2030 03:04:05 GMT" in v for v in values), values


def test_bad_cookie_secret_fails_at_startup() -> None:
    with pytest.raises(ValueError):
        App(cookie_secret="too-short")
    with pytest.raises(ValueError):
        App(cookie_secret=[])
