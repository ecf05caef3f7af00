"""WebSocket over HTTP/2 (RFC 8441): an extended CONNECT on an h2 stream runs the same
WebSocket connection as an HTTP/1.1 upgrade, beside plain requests on the same connection."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from rtserve import App, WebSocketHandler
from rtserve.app.request import Request
from rtserve.protocol.websocket import (
    CloseReceived,
    FrameReader,
    Opcode,
    TextMessage,
    close_payload,
    encode_client_frame,
)
from rtserve.testing import ThreadedServer
from tests.support.h2client import H2Client
from tests.support.tls import dev_tls
from tests.support.waiting import until


class Echo(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.send(message)


def make_app() -> App:
    app = App()
    app.channel("news", history=10)
    app.websocket("/echo")(Echo)

    @app.route("/")
    def hello(request: Request) -> str:
        return "hello"

    return app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer[App]]:
    tls = dev_tls(tmp_path_factory.mktemp("h2ws"))
    with ThreadedServer(make_app(), tls=tls, access_log=False) as srv:
        yield srv


def extended_connect(client: H2Client, path: str) -> int:
    client.until(lambda: client.conn.remote_settings.enable_connect_protocol == 1)
    return client.request(
        path,
        "CONNECT",
        headers=[(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")],
        end=False,
    )


def frames_until(client: H2Client, ws: int, reader: FrameReader, kind: type) -> list[object]:
    """Read the stream's WebSocket frames until one of `kind` came; every event read."""
    events: list[object] = []

    def came() -> bool:
        body = client.streams[ws].body
        events.extend(reader.feed(bytes(body)))
        body.clear()
        return any(isinstance(e, kind) for e in events)

    client.until(came)
    return events


def test_websocket_echo_on_an_h2_stream(server: ThreadedServer[App]) -> None:
    client = H2Client(server.port)
    try:
        ws = extended_connect(client, "/echo")
        client.until(lambda: bool(client.streams[ws].headers))
        assert client.streams[ws].status == 200
        assert client.get("/").body == b"hello"  # the same connection serves requests meanwhile
        reader = FrameReader(masked=False)
        for text in ("one", "two" * 1000):
            client.conn.send_data(ws, encode_client_frame(Opcode.TEXT, text.encode()))
            client.send()
            events = frames_until(client, ws, reader, TextMessage)
            assert [e.data for e in events if isinstance(e, TextMessage)] == [text]
        client.conn.send_data(ws, encode_client_frame(Opcode.CLOSE, close_payload(1000, "bye")))
        client.send()
        frames_until(client, ws, reader, CloseReceived)
        client.until(lambda: client.streams[ws].ended)  # the server's side, after its close
        client.conn.end_stream(ws)
        client.send()
        assert client.streams[ws].reset is None
        assert client.get("/").body == b"hello"  # the connection lives on
    finally:
        client.close()


def test_channel_websocket_on_an_h2_stream(server: ThreadedServer[App]) -> None:
    """/rt/ws over an extended CONNECT: connect, subscribe, and a publication arrives."""
    client = H2Client(server.port)
    reader = FrameReader(masked=False)
    got: list[dict[str, object]] = []

    def send(command: dict[str, object]) -> None:
        client.conn.send_data(ws, encode_client_frame(Opcode.TEXT, json.dumps(command).encode()))
        client.send()

    def answered(what: str) -> Callable[[], bool]:
        def check() -> bool:
            body = client.streams[ws].body
            for event in reader.feed(bytes(body)):
                if isinstance(event, TextMessage):
                    got.extend(json.loads(line) for line in event.data.splitlines())
            body.clear()
            return any(what in json.dumps(message) for message in got)

        return check

    try:
        ws = extended_connect(client, "/rt/ws")
        client.until(lambda: bool(client.streams[ws].headers))
        assert client.streams[ws].status == 200
        send({"id": 1, "op": "connect", "protocol": 2})
        client.until(answered('"id": 1'))
        send({"id": 2, "op": "subscribe", "channel": "news"})
        client.until(answered('"id": 2'))
        server.call(server.app.publish, "news", "over an h2 stream")
        client.until(answered("over an h2 stream"))
        state = server.server.state if server.server is not None else None
        assert state is not None and len(state.websockets) == 1
    finally:
        client.close()
    until(lambda: not state.websockets, 10, "the WebSocket closed with the connection")
