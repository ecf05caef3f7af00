"""An exchange whose handler returns without answering (`Exchange.defer()`), answered later by
whoever holds it, with no Task: over real sockets, as a long poll uses it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from rtserve import App, Request
from rtserve.server.exchange import Exchange
from rtserve.testing import ThreadedServer
from tests.rawhttp import RawClient, get
from tests.support.waiting import until

TEXT = [(b"content-type", b"text/plain")]


class Holder:
    """The deferred exchanges of the test app, answered by `/release` or their own timer."""

    def __init__(self) -> None:
        self.waiting: list[Exchange] = []
        self.dispatched = 0
        self.parsers: list[object] = []  # the connection's parser while each one waited
        self.finished = threading.Event()  # a deferred exchange was answered or accounted
        self.lock = threading.Lock()

    def hold(self, exchange: Exchange, after: float | None) -> None:
        self.dispatched += 1
        exchange.defer()
        self.waiting.append(exchange)
        exchange.wait_disconnected().add_done_callback(lambda _: self.answer(exchange, b"gone"))
        if after is not None:
            asyncio.get_running_loop().call_later(after, self.answer, exchange, b"timed out")

    def answer(self, exchange: Exchange, body: bytes) -> None:
        if exchange in self.waiting:
            self.waiting.remove(exchange)
            exchange.respond(200, TEXT, body)
            self.finished.set()


def make_app(holder: Holder) -> App:
    app = App()

    @app.route("/later")
    def later(request: Request) -> None:
        after = request.query.get("after")
        holder.hold(request.exchange, None if after is None else float(after))

    @app.route("/later-async")
    async def later_async(request: Request) -> None:
        await asyncio.sleep(0)  # suspends: a Task finishes this handler
        holder.hold(request.exchange, None)

    @app.route("/parser")
    def parser(request: Request) -> str:
        # What the connection of each waiting exchange holds as its parser now.
        return ",".join(
            "none" if e._transport.parser is None else "kept"  # type: ignore[attr-defined]
            for e in holder.waiting
        )

    @app.route("/release")
    def release(request: Request) -> str:
        waiting = list(holder.waiting)
        for exchange in waiting:
            holder.answer(exchange, b"released")
        return str(len(waiting))

    @app.route("/")
    def index(request: Request) -> str:
        return "ok"

    return app


@pytest.fixture
def served() -> Any:
    holder = Holder()
    with ThreadedServer(make_app(holder), access_log=False) as server:
        yield server, holder


def _released(port: int) -> str:
    with RawClient(port) as other:
        other.send(get("/release"))
        return other.response().body.decode()


def test_a_deferred_exchange_is_answered_later_once(served: Any) -> None:
    server, holder = served
    with RawClient(server.port) as client:
        client.send(get("/later"))
        until(lambda: holder.waiting, 5, "the exchange to wait")
        assert _released(server.port) == "1"
        response = client.response()
        assert (response.status, response.body) == (200, b"released")
        client.send(get("/"))  # the connection is kept alive and reads on
        assert client.response().body == b"ok"
    assert holder.dispatched == 1  # the end of the request did not dispatch it again


def test_a_deferred_exchange_answered_by_its_timer(served: Any) -> None:
    server, holder = served
    with RawClient(server.port) as client:
        client.send(get("/later?after=0.05"))
        assert client.response().body == b"timed out"
    assert holder.dispatched == 1 and not holder.waiting


def test_a_handler_that_defers_after_suspending_gets_no_500(served: Any) -> None:
    server, holder = served
    with RawClient(server.port) as client:
        client.send(get("/later-async"))
        until(lambda: holder.waiting, 5, "the exchange to wait")
        assert _released(server.port) == "1"
        response = client.response()
        assert (response.status, response.body) == (200, b"released")


def test_a_client_leaving_ends_the_wait(served: Any) -> None:
    server, holder = served
    client = RawClient(server.port)
    client.send(get("/later"))
    (exchange,) = until(lambda: list(holder.waiting), 5, "the exchange to wait")
    client.close()
    assert holder.finished.wait(5)
    assert exchange.finished and exchange.closed and not holder.waiting


def test_pipelined_requests_behind_a_deferred_one_wait_their_turn(served: Any) -> None:
    server, holder = served
    with RawClient(server.port) as client:
        client.send(get("/later") + get("/") + get("/"))
        until(lambda: holder.waiting, 5, "the exchange to wait")
        assert _released(server.port) == "1"
        assert [r.body for r in client.responses(3)] == [b"released", b"ok", b"ok"]


def test_the_parser_is_let_go_while_waiting_and_made_again(served: Any) -> None:
    server, holder = served
    with RawClient(server.port) as client:
        client.send(get("/later"))
        until(lambda: holder.waiting, 5, "the exchange to wait")
        with RawClient(server.port) as other:
            other.send(get("/parser"))
            assert other.response().body == b"none"
        # A request pipelined while it waits gets a new parser and waits its turn.
        client.send(get("/"))
        until(lambda: _parsers(server), 5, "the pipelined request to be read")
        assert _released(server.port) == "1"
        assert [r.body for r in client.responses(2)] == [b"released", b"ok"]


def _parsers(server: ThreadedServer) -> bool:
    with RawClient(server.port) as other:
        other.send(get("/parser"))
        return other.response().body == b"kept"
