"""The opening handshake: request validation, origin policy, the 101, and the websockets client."""

from __future__ import annotations

import zlib

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Frame
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from rtserve.protocol.http11 import RequestHead, RequestParser
from rtserve.protocol.websocket import (
    BinaryMessage,
    CloseReceived,
    FrameReader,
    TextMessage,
    encode_binary,
    encode_close,
    encode_text,
)
from rtserve.protocol.ws_handshake import (
    HandshakeError,
    HandshakeRequest,
    accept_key,
    check_origin,
    choose_subprotocol,
    parse_request,
    response_101,
    response_headers,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3

BASE = [
    (b"Host", b"server.example.com"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", KEY.encode()),
    (b"Sec-WebSocket-Version", b"13"),
]


def without(name: bytes, headers: list[tuple[bytes, bytes]] = BASE) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if n.lower() != name.lower()]


def test_accept_key_rfc_example() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_rfc_request() -> None:
    headers = [
        *BASE,
        (b"Origin", b"http://example.com"),
        (b"Sec-WebSocket-Protocol", b"chat, superchat"),
    ]
    assert parse_request("GET", "1.1", headers) == HandshakeRequest(
        key=KEY,
        subprotocols=["chat", "superchat"],
        extensions=[],
        origin="http://example.com",
        host="server.example.com",
    )


def test_lists_case_and_repeated_fields() -> None:
    headers = [
        (b"host", b"a.test:8080"),
        (b"UPGRADE", b"h2c, WebSocket"),
        (b"connection", b"keep-alive"),
        (b"Connection", b"  foo ,UPGRADE "),
        (b"sec-websocket-key", b" " + KEY.encode() + b" "),
        (b"SEC-WEBSOCKET-VERSION", b"13"),
        (b"Sec-WebSocket-Protocol", b"v2.chat,, v1.chat"),
        (b"sec-websocket-protocol", b"mqtt"),
        (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits, x-foo"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
    ]
    request = parse_request("GET", "HTTP/1.1", headers)
    assert request.key == KEY
    assert request.subprotocols == ["v2.chat", "v1.chat", "mqtt"]
    assert request.extensions == [
        "permessage-deflate; client_max_window_bits, x-foo",
        "permessage-deflate",
    ]
    assert (request.origin, request.host) == (None, "a.test:8080")


REFUSED = [
    ("POST", "1.1", BASE, 405, [(b"allow", b"GET")]),
    ("get", "1.1", BASE, 405, [(b"allow", b"GET")]),
    ("GET", "1.0", BASE, 400, []),
    ("GET", "1.1", without(b"upgrade"), 400, []),
    ("GET", "1.1", [*without(b"upgrade"), (b"Upgrade", b"h2c")], 400, []),
    ("GET", "1.1", [*without(b"upgrade"), (b"Upgrade", b"websocket2")], 400, []),
    ("GET", "1.1", without(b"connection"), 400, []),
    ("GET", "1.1", [*without(b"connection"), (b"Connection", b"keep-alive")], 400, []),
    ("GET", "1.1", without(b"sec-websocket-version"), 426, [(b"sec-websocket-version", b"13")]),
    (
        "GET",
        "1.1",
        [*without(b"sec-websocket-version"), (b"Sec-WebSocket-Version", b"8")],
        426,
        [(b"sec-websocket-version", b"13")],
    ),
    (
        "GET",
        "1.1",
        [*without(b"sec-websocket-version"), (b"Sec-WebSocket-Version", b"13, 8")],
        426,
        [(b"sec-websocket-version", b"13")],
    ),
    ("GET", "1.1", without(b"sec-websocket-key"), 400, []),
    ("GET", "1.1", [*BASE, (b"Sec-WebSocket-Key", KEY.encode())], 400, []),
    ("GET", "1.1", [*without(b"sec-websocket-key"), (b"Sec-WebSocket-Key", b"!!")], 400, []),
    ("GET", "1.1", [*without(b"sec-websocket-key"), (b"Sec-WebSocket-Key", b"")], 400, []),
    (  # base64 of 15 bytes
        "GET",
        "1.1",
        [*without(b"sec-websocket-key"), (b"Sec-WebSocket-Key", b"AAAAAAAAAAAAAAAAAAAA")],
        400,
        [],
    ),
    (  # base64 of 17 bytes
        "GET",
        "1.1",
        [*without(b"sec-websocket-key"), (b"Sec-WebSocket-Key", b"AAAAAAAAAAAAAAAAAAAAAAA=")],
        400,
        [],
    ),
    ("GET", "1.1", [*BASE, (b"Origin", b"http://a"), (b"origin", b"http://b")], 400, []),
]


@pytest.mark.parametrize(("method", "version", "headers", "status", "answer"), REFUSED)
def test_refused(
    method: str,
    version: str,
    headers: list[tuple[bytes, bytes]],
    status: int,
    answer: list[tuple[bytes, bytes]],
) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_request(method, version, headers)
    assert (info.value.status, info.value.headers) == (status, answer)
    assert info.value.reason


ORIGINS = [
    # origin, host, allowed, scheme, verdict
    (None, "a.test", None, "http", True),
    (None, None, None, "http", True),
    (None, "a.test", ["https://b.test"], "http", True),
    ("http://a.test", "a.test", None, "http", True),
    ("https://a.test", "a.test", None, "http", True),
    ("http://A.Test", "a.TEST", None, "http", True),
    ("http://a.test:8080", "a.test:8080", None, "http", True),
    ("http://a.test:80", "a.test", None, "http", True),
    ("https://a.test", "a.test:443", None, "https", True),
    ("http://[::1]:8000", "[::1]:8000", None, "http", True),
    ("http://a.test:8080", "a.test", None, "http", False),
    ("http://a.test", "a.test:8080", None, "http", False),
    ("http://evil.test", "a.test", None, "http", False),
    ("http://a.test.evil.test", "a.test", None, "http", False),
    ("null", "a.test", None, "http", False),
    ("chrome-extension://a.test", "a.test", None, "http", False),
    ("http://a.test/path", "a.test", None, "http", False),
    ("http://user@a.test", "a.test", None, "http", False),
    ("http://a.test", None, None, "http", False),
    ("https://b.test", "a.test", ["https://b.test"], "http", True),
    ("HTTPS://B.test", "a.test", ["https://b.TEST/"], "http", True),
    ("http://b.test", "a.test", ["https://b.test"], "http", False),
    ("https://a.test", "a.test", ["https://b.test"], "http", False),
    ("https://b.test:444", "a.test", ["https://b.test"], "http", False),
    ("https://anything", "a.test", ["*"], "http", True),
    ("null", "a.test", ["https://b.test", "*"], "http", True),
    ("https://b.test", "a.test", [], "http", False),
]


@pytest.mark.parametrize(("origin", "host", "allowed", "scheme", "verdict"), ORIGINS)
def test_check_origin(
    origin: str | None, host: str | None, allowed: list[str] | None, scheme: str, verdict: bool
) -> None:
    assert check_origin(origin, host, allowed, scheme) is verdict


def test_choose_subprotocol_prefers_the_server_order() -> None:
    assert choose_subprotocol(["a", "b", "c"], ["c", "b"]) == "c"
    assert choose_subprotocol(["a", "b"], ("x", "b", "a")) == "b"
    assert choose_subprotocol(["a"], ["A"]) is None
    assert choose_subprotocol([], ["a"]) is None
    assert choose_subprotocol(["a"], []) is None


def test_response() -> None:
    assert response_headers(KEY) == [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    head = response_101(
        KEY,
        subprotocol="chat",
        extensions="permessage-deflate; server_no_context_takeover",
        headers=[(b"server", b"rtserve")],
    )
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"upgrade: websocket\r\n"
        b"connection: Upgrade\r\n"
        b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"sec-websocket-protocol: chat\r\n"
        b"sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        b"server: rtserve\r\n"
        b"\r\n"
    )
    with pytest.raises(ValueError):
        response_101(KEY, subprotocol="chat\r\nx-injected: 1")


# --- against the websockets library's client (sans-I/O) ------------------------------------------


def frames(protocol: ClientProtocol) -> list[Frame]:
    events = protocol.events_received()
    assert all(isinstance(e, Frame) for e in events)
    return events  # type: ignore[return-value]


def _request_head(protocol: ClientProtocol) -> RequestHead:
    protocol.send_request(protocol.connect())
    events = RequestParser().feed(b"".join(protocol.data_to_send()))
    head = events[0]
    assert isinstance(head, RequestHead)
    return head


def _open(protocol: ClientProtocol, **answer: str | None) -> HandshakeRequest:
    head = _request_head(protocol)
    request = parse_request(head.method, head.version, head.headers)
    protocol.receive_data(response_101(request.key, **answer))  # type: ignore[arg-type]
    [response] = protocol.events_received()
    assert isinstance(response, Response) and response.status_code == 101
    assert protocol.handshake_exc is None
    assert protocol.state is State.OPEN
    return request


def test_websockets_client_accepts_our_101_and_frames() -> None:
    protocol = ClientProtocol(
        parse_uri("ws://chat.test:8000/room"),
        origin=Origin("http://chat.test:8000"),
        subprotocols=[Subprotocol("v1"), Subprotocol("v2")],
    )
    request = _open(protocol, subprotocol=choose_subprotocol(["v1", "v2"], ["v2", "v1"]))
    assert request.subprotocols == ["v1", "v2"]
    assert check_origin(request.origin, request.host, None)
    assert protocol.subprotocol == "v2"

    reader = FrameReader()
    protocol.send_text("héllo".encode())
    protocol.send_binary(b"\x00" * 70000, fin=False)
    protocol.send_ping(b"p")
    protocol.send_continuation(b"\x01", fin=True)
    received = reader.feed(b"".join(protocol.data_to_send()))
    assert [type(e).__name__ for e in received] == ["TextMessage", "Ping", "BinaryMessage"]
    assert received[0] == TextMessage("héllo")
    assert received[2] == BinaryMessage(b"\x00" * 70000 + b"\x01")

    protocol.receive_data(encode_text("ok") + encode_binary(b"\xff" * 300))
    assert [(f.opcode.name, f.data) for f in frames(protocol)] == [
        ("TEXT", b"ok"),
        ("BINARY", b"\xff" * 300),
    ]

    protocol.send_close(4001, "done")
    assert reader.feed(b"".join(protocol.data_to_send())) == [CloseReceived(4001, "done")]
    protocol.receive_data(encode_close(4001))
    assert protocol.state is State.CLOSING  # both close frames exchanged; TCP closes next
    assert protocol.close_rcvd == Close(4001, "")
    assert protocol.close_sent == Close(4001, "done")


def _inflate(payload: bytes, max_size: int) -> bytes:
    # Both sides agreed on client_no_context_takeover: one deflate stream per message.
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff", max_size)


def test_websockets_client_compressed_frames() -> None:
    protocol = ClientProtocol(
        parse_uri("ws://chat.test/"), extensions=[ClientPerMessageDeflateFactory()]
    )
    request = _open(
        protocol,
        extensions="permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    )
    assert request.extensions == ["permessage-deflate; client_max_window_bits"]
    reader = FrameReader(decompress=_inflate)
    text = "compress me " * 100
    protocol.send_text(text.encode())
    protocol.send_binary(b"abc" * 1000)
    data = b"".join(protocol.data_to_send())
    assert data[0] & 0x40  # RSV1: really compressed
    assert reader.feed(data) == [TextMessage(text), BinaryMessage(b"abc" * 1000)]
    protocol.receive_data(encode_text("plain"))  # an uncompressed message is fine too
    assert [f.data for f in frames(protocol)] == [b"plain"]


def test_websockets_client_refuses_a_wrong_accept() -> None:
    protocol = ClientProtocol(parse_uri("ws://chat.test/"))
    _request_head(protocol)
    protocol.receive_data(response_101("AAAAAAAAAAAAAAAAAAAAAA=="))
    protocol.events_received()
    assert protocol.handshake_exc is not None
