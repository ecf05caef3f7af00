"""The ASGI 3 adapter against the spec's HTTP, WebSocket and lifespan behaviours: small raw
ASGI callables record what they receive and send edge cases; httpx, websockets and raw
sockets are the independent clients, the server a live one on port 0."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from rtserve import App
from rtserve.asgi import LifespanError
from rtserve.asgi.scope import _configured_address
from rtserve.asgi.types import Message, Receive, Scope, Send
from rtserve.server.settings import ServerSettings
from rtserve.testing import ThreadedServer

WAIT = 5.0


@contextmanager
def hosted(asgi: Any, prefix: str = "/mnt", **overrides: Any) -> Iterator[ThreadedServer[App]]:
    app = App()
    app.mount(prefix, asgi)
    with ThreadedServer(app, access_log=False, **overrides) as server:
        yield server


def ws_url(server: ThreadedServer[App], path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


class Recorder:
    """A raw ASGI app that records its scopes and received messages, then answers 200 with
    what it was told to send (a list of messages)."""

    def __init__(self, *sends: Message) -> None:
        self.scopes: list[Scope] = []
        self.received: list[Message] = []
        self.sends = list(sends) or [
            {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]},
            {"type": "http.response.body", "body": b"ok"},
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        self.scopes.append(scope)
        while True:
            message = await receive()
            self.received.append(message)
            if not message.get("more_body"):
                break
        for message in self.sends:
            await send(message)


# --- http: the scope -------------------------------------------------------------------------


def test_http_scope_has_the_fields_of_the_spec() -> None:
    app = Recorder()
    with hosted(app) as server:
        response = httpx.get(f"{server.url}/mnt/a%20b/c?x=1&y=%20", headers={"X-Custom": "Yes"})
        server_port = server.port
    assert response.status_code == 200 and response.text == "ok"
    assert response.headers["x-app"] == "1"
    scope = app.scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/mnt/a b/c"  # decoded, and whole: root_path is not cut off
    assert scope["raw_path"] == b"/mnt/a%20b/c"
    assert scope["root_path"] == "/mnt"
    assert scope["query_string"] == b"x=1&y=%20"
    headers = scope["headers"]
    assert all(type(n) is bytes and type(v) is bytes and n == n.lower() for n, v in headers)
    assert (b"x-custom", b"Yes") in headers
    host, port = scope["client"]
    assert host == "127.0.0.1" and isinstance(port, int) and port > 0
    assert scope["server"] == ("127.0.0.1", server_port)  # the port bound, not the 0 asked for
    assert scope["state"] == {}
    assert scope["extensions"]["rtserve"]["app"] is not None


def test_the_server_field_is_the_configured_address() -> None:
    assert _configured_address(ServerSettings(host="10.0.0.1", port=8080)) == ("10.0.0.1", 8080)
    assert _configured_address(ServerSettings(host=["::1", "127.0.0.1"], port=81)) == ("::1", 81)
    assert _configured_address(ServerSettings(unix_socket="/tmp/s")) == ("/tmp/s", None)
    assert _configured_address(ServerSettings(port=0)) is None


def test_the_prefix_itself_and_the_whole_site() -> None:
    app = Recorder()
    with hosted(app) as server:
        assert httpx.get(f"{server.url}/mnt").status_code == 200
        assert httpx.get(f"{server.url}/mnt/").status_code == 200
        assert httpx.get(f"{server.url}/mntx").status_code == 404  # not under the prefix
    assert [s["path"] for s in app.scopes] == ["/mnt", "/mnt/"]
    whole = Recorder()
    with hosted(whole, "") as server:
        assert httpx.get(f"{server.url}/").status_code == 200
        assert httpx.delete(f"{server.url}/any/where").status_code == 200
    assert [(s["method"], s["path"], s["root_path"]) for s in whole.scopes] == [
        ("GET", "/", ""),
        ("DELETE", "/any/where", ""),
    ]


def test_rtserve_routes_and_channels_win_over_a_whole_site_app() -> None:
    asgi = Recorder()
    app = App()
    app.mount("", asgi)
    app.channel("news")

    @app.route("/own")
    def own(request: Any) -> str:
        return "rtserve"

    with ThreadedServer(app, access_log=False) as server:
        assert httpx.get(f"{server.url}/own").text == "rtserve"
        assert (
            httpx.get(f"{server.url}/rtserve.js")
            .headers["content-type"]
            .startswith("application/javascript")
        )
        assert httpx.get(f"{server.url}/other").text == "ok"
    assert [s["path"] for s in asgi.scopes] == ["/other"]


def test_scheme_and_client_behind_a_trusted_proxy() -> None:
    app = Recorder()
    with hosted(app, trusted_proxies=["127.0.0.1"]) as server:
        httpx.get(
            f"{server.url}/mnt/x",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
        )
    scope = app.scopes[0]
    assert scope["client"] == ("203.0.113.9", 0)
    assert scope["scheme"] == "https"


def test_forwarding_headers_of_an_untrusted_peer_are_ignored() -> None:
    app = Recorder()
    with hosted(app) as server:
        httpx.get(f"{server.url}/mnt/x", headers={"X-Forwarded-Proto": "https"})
    assert app.scopes[0]["scheme"] == "http"
    assert app.scopes[0]["client"][0] == "127.0.0.1"


# --- http: the request body ------------------------------------------------------------------


def test_a_sized_body_ends_with_more_body_false() -> None:
    app = Recorder()
    body = b"x" * 300_000
    with hosted(app) as server:
        assert httpx.post(f"{server.url}/mnt/up", content=body).status_code == 200
    assert b"".join(m["body"] for m in app.received) == body
    assert all(m["type"] == "http.request" for m in app.received)
    assert [m["more_body"] for m in app.received][-1] is False
    assert all(m["more_body"] for m in app.received[:-1])


def test_a_chunked_body_streams_in_pieces() -> None:
    app = Recorder()
    pieces = [b"first-", b"second-", b"third"]
    with hosted(app) as server:
        response = httpx.post(f"{server.url}/mnt/up", content=iter(pieces))
    assert response.status_code == 200
    assert b"".join(m["body"] for m in app.received) == b"".join(pieces)
    assert app.received[-1]["more_body"] is False


def test_no_body_is_one_empty_message() -> None:
    app = Recorder()
    with hosted(app) as server:
        httpx.get(f"{server.url}/mnt/")
        httpx.post(f"{server.url}/mnt/", content=b"")
    assert app.received == [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.request", "body": b"", "more_body": False},
    ]


def test_a_disconnect_is_received_when_the_client_leaves() -> None:
    got: list[Message] = []
    waiting = threading.Event()
    told = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        assert (await receive())["more_body"] is False
        waiting.set()
        got.append(await receive())  # nothing more to read: waits for the client to leave
        told.set()
        with pytest.raises(OSError):
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"late"})

    with hosted(app) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /mnt/wait HTTP/1.1\r\nHost: x\r\n\r\n")
        assert waiting.wait(WAIT)
        sock.close()
        assert told.wait(WAIT)
    assert got == [{"type": "http.disconnect"}]


def test_a_client_leaving_a_stream_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """The app's send raises OSError once the client is gone; the app lets it propagate, as
    most do, and rtserve logs nothing: there was nobody left to answer."""
    raised = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        if scope["path"] == "/mnt/ok":
            await send({"type": "http.response.start", "status": 204})
            await send({"type": "http.response.body"})
            return
        await send({"type": "http.response.start", "status": 200})
        try:
            for _ in range(10_000):  # bounded; the client leaves after the first piece
                await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
                await asyncio.sleep(0.01)
        except OSError:
            raised.set()
            raise

    with hosted(app) as server:
        with httpx.stream("GET", f"{server.url}/mnt/stream") as response:
            next(response.iter_bytes())
        assert raised.wait(WAIT)
        assert httpx.get(f"{server.url}/mnt/ok").status_code == 204  # after the error path
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_receive_after_the_response_is_a_disconnect() -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        await receive()
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})
        got.append(await receive())

    with hosted(app) as server:
        assert httpx.get(f"{server.url}/mnt/").status_code == 204
    assert got == [{"type": "http.disconnect"}]


# --- http: the response ----------------------------------------------------------------------


def test_a_streamed_response_is_chunked_and_complete() -> None:
    app = Recorder(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/x")]},
        {"type": "http.response.body", "body": b"one ", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": True},
        {"type": "http.response.body", "body": b"two", "more_body": True},
        {"type": "http.response.body", "body": b" three"},
    )
    with hosted(app) as server:
        response = httpx.get(f"{server.url}/mnt/")
    assert response.text == "one two three"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["content-type"] == "text/x"


def test_the_apps_content_length_is_kept_for_a_streamed_body() -> None:
    app = Recorder(
        {"type": "http.response.start", "status": 200, "headers": [(b"Content-Length", b"6")]},
        {"type": "http.response.body", "body": b"abc", "more_body": True},
        {"type": "http.response.body", "body": b"def"},
    )
    with hosted(app) as server:
        response = httpx.get(f"{server.url}/mnt/")
    assert response.text == "abcdef"
    assert response.headers["content-length"] == "6"
    assert "transfer-encoding" not in response.headers


def test_one_piece_gets_one_content_length_even_if_the_app_sends_its_own() -> None:
    app = Recorder(
        {"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"5")]},
        {"type": "http.response.body", "body": b"hello"},
    )
    with hosted(app) as server:
        response = httpx.post(f"{server.url}/mnt/")
    assert response.status_code == 201
    assert response.headers.get_list("content-length") == ["5"]


def test_head_keeps_the_apps_content_length_and_sends_no_body() -> None:
    app = Recorder(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"42")]},
        {"type": "http.response.body", "body": b""},
    )
    with hosted(app) as server:
        response = httpx.head(f"{server.url}/mnt/")
    assert response.status_code == 200
    assert response.headers["content-length"] == "42"
    assert response.content == b""
    assert app.scopes[0]["method"] == "HEAD"  # the app answers HEAD itself


def test_duplicate_response_headers_stay_separate() -> None:
    app = Recorder(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [[b"set-cookie", b"a=1"], [b"set-cookie", b"b=2"]],
        },
        {"type": "http.response.body", "body": b"x"},
    )
    with hosted(app) as server:
        response = httpx.get(f"{server.url}/mnt/")
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


def test_a_header_list_changed_between_responses_is_sent_as_it_now_is() -> None:
    fields = [(b"x-version", b"1"), (b"content-length", b"2")]
    app = Recorder(
        {"type": "http.response.start", "status": 200, "headers": fields},
        {"type": "http.response.body", "body": b"ok"},
    )
    with hosted(app) as server, httpx.Client(base_url=server.url) as client:
        first = client.get("/mnt/")
        fields[0] = (b"x-version", b"2")  # the same list object, changed in place
        second = client.get("/mnt/")
    assert first.headers["x-version"] == "1"
    assert second.headers["x-version"] == "2"
    assert second.text == "ok"


def test_an_app_that_suspends_between_start_and_body_answers_whole() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)  # the first step ends here: the rest runs in a Task
        await send({"type": "http.response.body", "body": b"late"})

    with hosted(app) as server, httpx.Client(base_url=server.url) as client:
        responses = [client.get("/mnt/") for _ in range(2)]
    assert [r.text for r in responses] == ["late", "late"]
    assert [r.headers["content-length"] for r in responses] == ["4", "4"]


@pytest.mark.parametrize(
    "sends",
    [
        [],  # returned without answering
        [{"type": "http.response.body", "body": b"x"}],  # body before start
        [{"type": "http.response.start", "status": 200}, {"type": "http.nonsense"}],
        [{"type": "http.response.start", "status": 200}, {"type": "http.response.start"}],
        [
            {"type": "http.response.start", "status": 200, "headers": [(b"x", b"1\r\nset: 2")]},
            {"type": "http.response.body", "body": b"x"},
        ],
        [
            {"type": "http.response.start", "status": 200, "headers": [(b"x:y", b"1")]},
            {"type": "http.response.body", "body": b"x"},
        ],
    ],
    ids=[
        "no-response",
        "body-first",
        "unknown-type",
        "start-twice",
        "crlf-in-a-header",
        "colon-name",
    ],
)
def test_a_broken_protocol_is_a_500(sends: list[Message]) -> None:
    app = Recorder(*sends) if sends else Recorder({"type": "http.response.start", "status": 200})
    if not sends:
        app.sends = []
    with hosted(app) as server:
        response = httpx.get(f"{server.url}/mnt/")
    assert response.status_code == 500
    assert "set" not in response.headers


def test_an_error_before_the_response_is_a_500_and_the_server_lives_on() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        if scope["path"].endswith("/fail"):
            raise ValueError("boom")
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"fine"})

    with hosted(app) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/mnt/fail").status_code == 500
        assert client.get("/mnt/ok").text == "fine"


def test_an_error_mid_response_cuts_it_short() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("boom")

    with hosted(app) as server, pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.url}/mnt/")


def test_returning_mid_response_cuts_it_short() -> None:
    app = Recorder(
        {"type": "http.response.start", "status": 200},
        {"type": "http.response.body", "body": b"part", "more_body": True},
    )
    with hosted(app) as server, pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.url}/mnt/")


def test_a_slow_reader_holds_back_a_streaming_app() -> None:
    """send() waits while the client does not read: the server never holds the whole
    stream (bounded by the write buffer's mark, not by the app's speed)."""
    sent = 0
    held = threading.Event()
    piece = b"z" * 65536

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal sent
        if scope["type"] != "http":
            raise RuntimeError("http only")
        await send({"type": "http.response.start", "status": 200})
        for _ in range(400):  # 25 MiB if nothing held it back
            try:
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": piece, "more_body": True}), 0.5
                )
            except TimeoutError:
                held.set()
                return
            sent += len(piece)

    with hosted(app) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /mnt/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held.wait(WAIT * 2)
        sock.close()
    assert sent < 16 * 1024 * 1024


# --- websocket ---------------------------------------------------------------------------------


class WSApp:
    """A raw ASGI WebSocket app: accepts with the last offered subprotocol and a header,
    echoes, and obeys commands ("close:CODE", "fail")."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.received: list[Message] = []
        self.done = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("websocket only")
        self.scopes.append(scope)
        try:
            assert (await receive()) == {"type": "websocket.connect"}
            offered = scope["subprotocols"]
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": offered[-1] if offered else None,
                    "headers": [(b"x-accepted", b"yes")],
                }
            )
            while True:
                message = await receive()
                self.received.append(message)
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text == "fail":
                    raise ValueError("asked to fail")
                if text is not None and text.startswith("close:"):
                    code = int(text.removeprefix("close:"))
                    await send({"type": "websocket.close", "code": code, "reason": "bye"})
                    return
                if text is not None:
                    await send({"type": "websocket.send", "text": "echo:" + text})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})
        finally:
            self.done.set()


def test_websocket_scope_subprotocol_and_accept_headers() -> None:
    app = WSApp()
    with hosted(app) as server:
        url = ws_url(server, "/mnt/chat?room=1")
        offered = [Subprotocol("one"), Subprotocol("two")]
        with connect(url, subprotocols=offered) as ws:
            assert ws.subprotocol == "two"
            assert ws.response is not None
            assert ws.response.headers["x-accepted"] == "yes"
            ws.send("hi")
            assert ws.recv(WAIT) == "echo:hi"
            ws.send(b"\x01\x02\x03")
            assert ws.recv(WAIT) == b"\x03\x02\x01"
    scope = app.scopes[0]
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/mnt/chat" and scope["root_path"] == "/mnt"
    assert scope["query_string"] == b"room=1"
    assert scope["subprotocols"] == ["one", "two"]
    assert scope["asgi"]["version"] == "3.0"
    assert "websocket.http.response" in scope["extensions"]
    assert (b"upgrade", b"websocket") in scope["headers"]


def test_the_app_closes_with_its_code() -> None:
    app = WSApp()
    with hosted(app) as server, connect(ws_url(server, "/mnt/")) as ws:
        ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(WAIT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


def test_the_client_close_reaches_the_app_with_its_code() -> None:
    app = WSApp()
    with hosted(app) as server:
        with connect(ws_url(server, "/mnt/")) as ws:
            ws.send("x")
            ws.recv(WAIT)
            ws.close(4002, "leaving")
        assert app.done.wait(WAIT)
    assert app.received[-1] == {"type": "websocket.disconnect", "code": 4002, "reason": "leaving"}


def test_an_error_after_accept_closes_with_1011() -> None:
    app = WSApp()
    with hosted(app) as server, connect(ws_url(server, "/mnt/")) as ws:
        ws.send("fail")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def test_returning_after_accept_closes_with_1000() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("websocket only")
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "only"})

    with hosted(app) as server, connect(ws_url(server, "/mnt/")) as ws:
        assert ws.recv(WAIT) == "only"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_close_before_accept_is_a_403() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("websocket only")
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    with hosted(app) as server, pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, "/mnt/"))
    assert refused.value.response.status_code == 403


def test_the_denial_response_extension() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("websocket only")
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b"Bearer")],
            }
        )
        await send(
            {"type": "websocket.http.response.body", "body": b"who are you", "more_body": True}
        )
        await send({"type": "websocket.http.response.body", "body": b"?"})

    with hosted(app) as server, pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, "/mnt/"))
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == b"who are you?"


def test_a_bad_handshake_is_refused_before_the_app_sees_it() -> None:
    app = WSApp()
    with hosted(app) as server:
        response = httpx.get(
            f"{server.url}/mnt/",
            headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8"},
        )
    assert response.status_code in (400, 426)
    assert app.scopes == []


def test_a_subprotocol_not_offered_is_refused() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("websocket only")
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "never-offered"})

    with hosted(app) as server, pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, "/mnt/"))
    assert refused.value.response.status_code == 500


def test_messages_wait_for_the_apps_receive() -> None:
    """A client that sends faster than the app reads gets every message, in order."""
    got: list[str] = []
    go = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("websocket only")
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "ready"})
        await asyncio.sleep(0)
        for _ in range(200):
            message = await receive()
            got.append(message["text"])
        await send({"type": "websocket.send", "text": f"got {len(got)}"})
        go.set()

    with hosted(app) as server, connect(ws_url(server, "/mnt/")) as ws:
        assert ws.recv(WAIT) == "ready"
        for i in range(200):
            ws.send(str(i))
        assert ws.recv(WAIT) == "got 200"
    assert got == [str(i) for i in range(200)]


# --- lifespan ----------------------------------------------------------------------------------


class LifespanApp:
    def __init__(self, fail: str | None = None) -> None:
        self.events: list[str] = []
        self.fail = fail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            assert scope["asgi"]["version"] == "3.0"
            message = await receive()
            self.events.append(message["type"])
            if self.fail == "message":
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            if self.fail == "raise":
                raise ConnectionError("database down")
            scope["state"]["pool"] = "the pool"
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            self.events.append(message["type"])
            await send({"type": "lifespan.shutdown.complete"})
            return
        state = scope["state"]
        body = f"{state['pool']} {state.get('mine', '-')}".encode()
        state["mine"] = "changed"  # a copy: the next request does not see it
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})


def test_lifespan_startup_shutdown_and_state() -> None:
    app = LifespanApp()
    with hosted(app) as server, httpx.Client(base_url=server.url) as client:
        assert app.events == ["lifespan.startup"]
        assert client.get("/mnt/").text == "the pool -"
        assert client.get("/mnt/").text == "the pool -"
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.parametrize(("fail", "said"), [("message", "no database"), ("raise", "database down")])
def test_a_failed_startup_aborts_the_start(fail: str, said: str) -> None:
    app = App()
    app.mount("/mnt", LifespanApp(fail))
    with pytest.raises(LifespanError, match=said):
        asyncio.run(app.startup())


def test_a_shutdown_that_hangs_is_cut_at_the_graceful_timeout() -> None:
    got: list[str] = []

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        got.append((await receive())["type"])
        await asyncio.Event().wait()  # never completes its shutdown

    app = App()
    app.settings.timeouts.graceful = 0.2
    app.mount("/mnt", asgi)

    async def run() -> None:
        await app.startup()
        await asyncio.wait_for(app.shutdown(), WAIT)

    asyncio.run(run())
    assert got == ["lifespan.shutdown"]


def test_an_app_without_lifespan_is_served_without() -> None:
    app = Recorder()  # raises on the lifespan scope before receiving, as Django's does
    with hosted(app) as server:
        assert httpx.get(f"{server.url}/mnt/").status_code == 200


def test_lifespan_can_be_turned_off() -> None:
    asgi = LifespanApp(fail="raise")
    app = App()
    app.mount("/mnt", asgi, lifespan=False)
    asyncio.run(app.startup())
    assert asgi.events == []


# --- mounting ---------------------------------------------------------------------------------


def test_mount_checks_its_arguments() -> None:
    app = App()
    with pytest.raises(TypeError, match="missing"):
        app.mount("/api")
    with pytest.raises(ValueError, match="start with '/'"):
        app.mount("api", Recorder())
    with pytest.raises(ValueError, match="no parameters"):
        app.mount("/api/{x}", Recorder())
    with pytest.raises(TypeError, match="not callable"):
        app.mount("/api", "app:thing")


def test_the_hosted_app_publishes_through_the_rtserve_app() -> None:
    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        position = await App.of(scope).publish("news", {"from": "asgi"})
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": str(position.offset).encode()})

    app = App()
    app.channel("news", history=10)
    app.mount("/api", asgi)
    with ThreadedServer(app, access_log=False) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/api/publish").text == "1"
        history = c.get("/rt/history", params={"channel": "news"}).json()
    assert [p["data"] for p in history["publications"]] == [{"from": "asgi"}]


def test_app_of_a_scope_from_elsewhere_is_a_lookup_error() -> None:
    with pytest.raises(LookupError):
        App.of({"type": "http"})
