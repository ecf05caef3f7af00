"""Middleware over the server's two-method protocol (wants_stream, dispatch): a wrapper that
adds a header, one that short-circuits with 401, both around a streaming route."""

from __future__ import annotations

import asyncio

from rtserve import App, Request, Response
from rtserve.app.middleware import BearerAuth, Middleware, ResponseHeaders
from rtserve.server.exchange import Exchange
from rtserve.server.listener import Server
from rtserve.server.settings import ServerSettings
from rtserve.server.state import Application
from rtserve.testing import ThreadedServer
from tests.rawhttp import get, parse_response, raw_exchange

TOKEN = "s3cret-token-of-the-tests"


def make_app(calls: list[str]) -> App:
    app = App(ServerSettings(access_log=False))

    @app.route("/text")
    def text(request: Request) -> str:
        calls.append("text")
        return "hello"

    @app.route("/response")
    def response(request: Request) -> Response:
        return Response("made", headers={"x-own": "1"})

    @app.route("/streamed")
    async def streamed(request: Request) -> None:
        request.exchange.start(200, [(b"content-type", b"text/plain")], content_length=4)
        request.exchange.write(b"data")
        request.exchange.end()

    @app.route("/upload", methods=["POST"], stream=True)
    async def upload(request: Request) -> dict[str, object]:
        calls.append("upload")
        streaming = request.exchange.streaming  # dispatched at the head: the body is to come
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return {"received": total, "streaming": streaming}

    return app


def ask(stack: Application, *requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Serve `stack` on 127.0.0.1:0 and send each request on its own connection."""

    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        server = Server(stack, ServerSettings(host="127.0.0.1", port=0, access_log=False))
        await server.start()
        try:
            answers = []
            for request in requests:
                data = await asyncio.to_thread(raw_exchange, server.port, request)
                answers.append(parse_response(data))
            return answers
        finally:
            await server.shutdown(grace=1.0)

    return asyncio.run(run())


def closing(path: str, extra: str = "") -> bytes:
    return get(path, extra=f"Connection: close\r\n{extra}")


def upload(body: bytes, extra: str = "") -> bytes:
    head = (
        f"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_a_middleware_adds_a_header_to_every_kind_of_response() -> None:
    stack = ResponseHeaders(make_app([]), [(b"x-frame-options", b"DENY")])
    answers = ask(
        stack,
        closing("/text"),
        closing("/response"),
        closing("/streamed"),
        closing("/nowhere"),
        upload(b"abc"),
    )
    for status, headers, _ in answers:
        assert headers["x-frame-options"] == "DENY", (status, headers)
    assert [status for status, _, _ in answers] == [200, 200, 200, 404, 200]
    assert answers[0][2] == b"hello" and answers[2][2] == b"data"
    assert answers[1][1]["x-own"] == "1"  # the app's own headers stay


def test_bearer_auth_answers_401_before_the_app_sees_the_request() -> None:
    calls: list[str] = []
    stack = BearerAuth(make_app(calls), TOKEN, query_token_paths={"/text"})
    missing, wrong, other_scheme, good, by_query, query_elsewhere = ask(
        stack,
        closing("/text"),
        closing("/text", "Authorization: Bearer not-the-token\r\n"),
        closing("/text", f"Authorization: Basic {TOKEN}\r\n"),
        closing("/text", f"Authorization: Bearer {TOKEN}\r\n"),
        closing(f"/text?token={TOKEN}"),
        closing(f"/response?token={TOKEN}"),
    )
    for status, headers, body in (missing, wrong, other_scheme, query_elsewhere):
        assert status == 401
        assert headers["www-authenticate"] == 'Bearer realm="rtserve"'
        assert body == b'{"error":"unauthorized"}'
    assert good[:1] == by_query[:1] == (200,) and good[2] == b"hello"
    assert calls == ["text", "text"]  # only the authorised requests reached the handler


def test_middleware_wraps_a_streaming_route() -> None:
    calls: list[str] = []
    stack = BearerAuth(ResponseHeaders(make_app(calls), [(b"x-layer", b"inner")]), TOKEN)
    body = b"x" * 200_000
    # Refused at its head: a small body, which the server has read with it (a big one left
    # unread would have the connection reset under the client's feet).
    refused, accepted = ask(
        stack, upload(b"abc"), upload(body, f"Authorization: Bearer {TOKEN}\r\n")
    )
    assert refused[0] == 401 and "x-layer" not in refused[1]  # the outer layer answered
    assert accepted[0] == 200 and accepted[1]["x-layer"] == "inner"
    assert accepted[2] == b'{"received":200000,"streaming":true}'
    assert calls == ["upload"]


def test_the_lifecycle_passes_through_the_stack() -> None:
    app = make_app([])
    events: list[str] = []
    app.on_startup.append(lambda: events.append("started"))
    app.on_shutdown.append(lambda: events.append("stopped"))
    stack: Middleware = BearerAuth(ResponseHeaders(app, []), TOKEN)

    async def run() -> None:
        await stack.startup()
        await stack.shutdown()

    asyncio.run(run())
    assert events == ["started", "stopped"]
    server = Server(stack, ServerSettings(host="127.0.0.1", port=0))

    async def serve() -> None:
        await server.start()
        try:
            assert app.server_state is server.state  # bound through the wrappers
        finally:
            await server.shutdown(grace=1.0)

    asyncio.run(serve())


def test_add_middleware_stacks_inside_the_app_last_added_outermost() -> None:
    calls: list[str] = []
    app = make_app(calls)
    assert "dispatch" not in vars(app)  # no middleware: the class's entry points, as they were
    app.add_middleware(ResponseHeaders, headers=[(b"x-layer", b"inner")])
    app.add_middleware(BearerAuth, token=TOKEN)
    with ThreadedServer(app) as server:  # still an App: served as any other
        refused, accepted = (
            parse_response(raw_exchange(server.port, request))
            for request in (
                closing("/text"),
                closing("/text", f"Authorization: Bearer {TOKEN}\r\n"),
            )
        )
    assert refused[0] == 401 and "x-layer" not in refused[1]
    assert accepted[0] == 200 and accepted[1]["x-layer"] == "inner" and accepted[2] == b"hello"
    assert calls == ["text"]


def test_a_subclass_of_app_keeps_its_own_dispatch_under_add_middleware() -> None:
    seen: list[str] = []

    class Counting(App):
        def dispatch(self, exchange: Exchange) -> asyncio.Task[None] | None:
            seen.append(exchange.head.path)
            return super().dispatch(exchange)

    app = Counting(ServerSettings(access_log=False))
    app.add_route("/", lambda request: "hi")
    app.add_middleware(BearerAuth, token=TOKEN)
    with ThreadedServer(app) as server:
        for extra in ("", f"Authorization: Bearer {TOKEN}\r\n"):
            raw_exchange(server.port, closing("/", extra))
    assert seen == ["/"]  # the authorised one, through the subclass's dispatch
