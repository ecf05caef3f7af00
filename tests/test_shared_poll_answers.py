"""Long polls one publication releases share one answer (`SharedResponse`, `PreparedAnswer`):
each connection still gets its own framing, gzip, CORS fields, access-log line and keep-alive."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from typing import Any

import pytest

from rtserve import App, ChannelSettings, Request
from rtserve.app.response import JSON, Response
from rtserve.app.shared import SharedResponse
from rtserve.server.prepared import PreparedAnswer
from rtserve.server.settings import HTTP2Settings
from rtserve.testing import ThreadedServer
from tests.rawhttp import RawClient, get, parse_response
from tests.support.h2client import H2Client
from tests.support.waiting import until


def _app(**settings: Any) -> App:
    app = App(channels=ChannelSettings(**settings), gzip_min_size=64)
    app.channel("c", history=10)
    return app


def _publish(server: ThreadedServer[App], data: Any) -> None:
    assert server.loop is not None
    asyncio.run_coroutine_threadsafe(server.app.publish("c", data), server.loop).result(5)


def _poll(headers: str = "", version: str = "1.1") -> bytes:
    return (
        f"GET /rt/poll?channel=c&timeout=20 HTTP/{version}\r\nHost: x\r\n{headers}\r\n"
    ).encode()


def test_each_connection_gets_its_own_framing_of_the_shared_answer() -> None:
    app = _app()
    with ThreadedServer(app, access_log=False) as server:
        kept = [RawClient(server.port) for _ in range(2)]
        closing = RawClient(server.port)
        old = RawClient(server.port)
        clients = [*kept, closing, old]
        try:
            for client in kept:
                client.send(_poll())
            closing.send(_poll("Connection: close\r\n"))
            old.send(_poll(version="1.0"))
            until(lambda: app.hub.subscriber_count("c") == 4, 5, "4 polls waiting")
            _publish(server, {"n": 1})
            answers = [client.response() for client in clients]
            assert len({a.body for a in answers}) == 1
            (position,) = json.loads(answers[0].body)["channels"].values()
            assert [p["data"] for p in position["publications"]] == [{"n": 1}]
            for answer in answers:
                assert answer.status == 200
                assert answer.headers["content-type"] == JSON
                assert answer.headers["content-length"] == str(len(answer.body))
            assert "connection" not in answers[0].headers
            assert answers[2].headers["connection"] == answers[3].headers["connection"] == "close"
            assert closing.wait_closed() and old.wait_closed()
            # The kept connections poll on from where they are, and lose nothing.
            since = f"&since=c:{position['offset']}:{position['epoch']}"
            for client in kept:
                client.send(get(f"/rt/poll?channel=c&timeout=20{since}"))
            until(lambda: app.hub.subscriber_count("c") == 2, 5, "2 polls waiting again")
            _publish(server, {"n": 2})
            for client in kept:
                (again,) = json.loads(client.response().body)["channels"].values()
                assert [p["data"] for p in again["publications"]] == [{"n": 2}]
        finally:
            for client in clients:
                client.close()
        until(lambda: app.hub.subscriber_count("c") == 0, 5, "the polls to leave")
        assert len(app.hub.poll_deadlines) == 0


def test_a_shared_answer_is_gzipped_for_the_clients_that_take_it() -> None:
    app = _app()
    with ThreadedServer(app, access_log=False) as server:
        clients = [RawClient(server.port) for _ in range(3)]
        takes, refuses, silent = clients
        try:
            takes.send(_poll("Accept-Encoding: gzip, br\r\n"))
            refuses.send(_poll("Accept-Encoding: gzip;q=0\r\n"))
            silent.send(_poll())
            until(lambda: app.hub.subscriber_count("c") == 3, 5, "3 polls waiting")
            _publish(server, {"text": "x" * 200})  # over the app's gzip_min_size
            zipped, plain, also_plain = (client.response() for client in clients)
        finally:
            for client in clients:
                client.close()
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == plain.body == also_plain.body
    for answer in (zipped, plain, also_plain):
        assert answer.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in plain.headers and "content-encoding" not in also_plain.headers


def test_polls_of_different_origins_get_their_own_cors_fields() -> None:
    app = _app(cors_origins=["https://a.example", "https://b.example"])
    with ThreadedServer(app, access_log=False) as server:
        origins = ["https://a.example", "https://b.example", "https://a.example", None]
        clients = [RawClient(server.port) for _ in origins]
        try:
            for client, origin in zip(clients, origins, strict=True):
                client.send(_poll("" if origin is None else f"Origin: {origin}\r\n"))
            until(lambda: app.hub.subscriber_count("c") == 4, 5, "4 polls waiting")
            _publish(server, "hi")
            answers = [client.response() for client in clients]
        finally:
            for client in clients:
                client.close()
    assert [a.headers.get("access-control-allow-origin") for a in answers] == origins
    assert len({a.body for a in answers}) == 1


def test_each_released_poll_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtserve.access")
    app = _app()
    with ThreadedServer(app, access_log=True) as server:
        assert server.server is not None and server.server.state is not None
        state = server.server.state
        requests_before = state.stats.requests_total
        clients = [RawClient(server.port) for _ in range(3)]
        try:
            for client in clients:
                client.send(_poll())
            until(lambda: app.hub.subscriber_count("c") == 3, 5, "3 polls waiting")
            _publish(server, "hi")
            sizes = {len(client.response().body) for client in clients}
        finally:
            for client in clients:
                client.close()
        assert state.stats.requests_total - requests_before == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "rtserve.access"]
    polls = [line for line in lines if "GET /rt/poll?channel=c&timeout=20 HTTP/1.1" in line]
    assert len(polls) == 3
    (size,) = sizes
    assert all(f'" 200 {size}' in line for line in polls)


def test_a_shared_response_answers_as_respond_would() -> None:
    """`App.respond_shared` from outside a handler: gzip per client, a cookie of its own for
    a request that made an XSRF token, HEAD without the body."""
    app = App(gzip_min_size=16)
    shared = SharedResponse(Response(b"y" * 100, headers=[("x-kind", "shared")], content_type=JSON))
    held: list[Request] = []

    @app.route("/wait", methods=["GET", "HEAD"])
    def wait(request: Request) -> None:
        if request.query.get("xsrf"):
            assert request.xsrf_token  # makes a new one: the answer must set its cookie
        request.exchange.defer()
        held.append(request)

    @app.route("/answer")
    def answer(request: Request) -> str:
        for waiting in held:
            app.respond_shared(waiting, shared)
        count = len(held)
        held.clear()
        return str(count)

    with ThreadedServer(app, access_log=False) as server:
        clients = [RawClient(server.port) for _ in range(4)]
        try:
            clients[0].send(get("/wait", extra="Accept-Encoding: gzip\r\n"))
            clients[1].send(get("/wait"))
            clients[2].send(get("/wait?xsrf=1"))
            clients[3].send(b"HEAD /wait HTTP/1.1\r\nHost: x\r\n\r\n")
            until(lambda: len(held) == 4, 5, "4 requests waiting")
            with RawClient(server.port) as other:
                other.send(get("/answer"))
                assert other.response().body == b"4"
            zipped, plain, with_cookie = (c.response() for c in clients[:3])
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += clients[3].sock.recv(65536)
            status, head_fields, head_body = parse_response(head)
        finally:
            for client in clients:
                client.close()
    assert gzip.decompress(zipped.body) == plain.body == with_cookie.body == b"y" * 100
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["x-kind"] == "shared"
    assert "set-cookie" not in plain.headers and "content-encoding" not in plain.headers
    assert with_cookie.headers["set-cookie"].startswith("_xsrf=")
    assert (status, head_body, head_fields["content-length"]) == (200, b"", "100")


def test_a_prepared_answer_is_framed_once_per_date_line() -> None:
    answer = PreparedAnswer(200, b"content-type: text/plain\r\n", b"hello")
    date, server = b"date: Mon, 07 Dec 2026 23:00:00 GMT\r\n", b"server: rtserve\r\n"
    first = answer.framed(date, server, True, False)
    assert first.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n")
    assert first.endswith(b"content-length: 5\r\n" + date + server + b"\r\nhello")
    assert answer.framed(date, server, True, False) is first
    closing = answer.framed(date, server, False, False)
    assert b"connection: close\r\n" in closing and closing is not first
    assert b"connection: keep-alive\r\n" in answer.framed(date, server, True, True)
    later = b"date: Mon, 07 Dec 2026 23:00:01 GMT\r\n"
    assert later in answer.framed(later, server, True, False)
    with pytest.raises(ValueError):
        PreparedAnswer(204, b"", b"")  # no body: nothing to share


def test_on_disconnect_calls_back_once_when_the_client_goes_and_none_forgets() -> None:
    app = App()
    calls: list[str] = []
    held: list[Request] = []

    @app.route("/wait")
    def wait(request: Request) -> None:
        name = request.query["name"]
        request.exchange.defer()
        held.append(request)
        request.exchange.on_disconnect(lambda: calls.append(name))
        if name == "forgotten":
            request.exchange.on_disconnect(None)

    with ThreadedServer(app, access_log=False) as server:
        for count, name in enumerate(("told", "forgotten"), 1):
            client = RawClient(server.port)
            client.send(get(f"/wait?name={name}"))
            until(lambda: len(held) == count, 5, "the request to wait")  # noqa: B023
            client.close()
        until(lambda: calls, 5, "the callback")
        until(lambda: all(r.exchange.disconnected for r in held), 5, "both clients to go")
        assert server.loop is not None
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.1), server.loop).result(5)
        assert calls == ["told"]
        for request in held:  # on the server's loop: accounted for, nobody to answer
            server.call(request.exchange.respond, 204, [])


def test_http2_polls_get_the_shared_answer_and_a_reset_one_leaves() -> None:
    app = _app()
    with ThreadedServer(app, http2=HTTP2Settings(h2c=True), access_log=False) as server:
        client = H2Client(server.port, tls=False)
        try:
            kept = client.request("/rt/poll?channel=c&timeout=20")
            gone = client.request("/rt/poll?channel=c&timeout=20")
            client.until(lambda: app.hub.subscriber_count("c") == 2)
            client.conn.reset_stream(gone)
            client.send()
            until(lambda: app.hub.subscriber_count("c") == 1, 5, "the reset poll to leave")
            assert len(app.hub.poll_deadlines) == 1
            _publish(server, {"n": 1})
            answer = client.response(kept)
            assert answer.status == 200 and answer.header(b"content-type") == JSON.encode()
            assert answer.header(b"content-length") == b"%d" % len(answer.body)
            (position,) = json.loads(answer.body)["channels"].values()
            assert [p["data"] for p in position["publications"]] == [{"n": 1}]
        finally:
            client.close()
    assert app.hub.subscriber_count("c") == 0 and len(app.hub.poll_deadlines) == 0


def test_polls_released_beside_websocket_subscribers_leave_the_hub() -> None:
    # A channel with a /rt/ws subscriber fans out on the shared-frame path; the polls that
    # publication released must leave the hub then, not at some later publication.
    from websockets.sync.client import connect

    app = _app()
    with (
        ThreadedServer(app, access_log=False) as server,
        connect(f"ws://127.0.0.1:{server.port}/rt/ws") as ws,
    ):
        ws.send(json.dumps({"id": 1, "op": "connect"}))
        ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": "c"}))
        for _ in range(2):
            ws.recv(timeout=5)
        poller = RawClient(server.port)
        try:
            since = ""
            for n in range(1, 4):  # the first publications may pass a new one's floor
                poller.send(_poll().replace(b"timeout=20", f"timeout=20{since}".encode()))
                until(lambda: app.hub.subscriber_count("c") == 2, 5, "the poll to wait")
                _publish(server, {"n": n})
                answer = poller.response()
                assert answer.status == 200
                (position,) = json.loads(answer.body)["channels"].values()
                assert [p["data"] for p in position["publications"]] == [{"n": n}]
                assert json.loads(ws.recv(timeout=5))["data"] == {"n": n}
                until(lambda: app.hub.subscriber_count("c") == 1, 5, "the poll to leave")
                assert len(app.hub.poll_deadlines) == 0
                since = f"&since=c:{position['offset']}:{position['epoch']}"
        finally:
            poller.close()
