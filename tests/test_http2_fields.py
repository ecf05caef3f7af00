"""protocol/http2.py without a socket: request fields to a head, response fields from a status
and headers, the answer to an extended CONNECT."""

from __future__ import annotations

import pytest

from rtserve.errors import ProtocolError
from rtserve.protocol.http2 import request_head, response_fields, split_fields, tunnel_fields
from rtserve.protocol.http11 import Header

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a%20b?x=1")]
DATE = b"date: Mon, 07 Dec 2026 19:00:00 GMT\r\n"


@pytest.mark.parametrize(
    ("fields", "host", "length", "expect"),
    [
        (GET, None, None, False),
        ([*GET, (b":authority", b"example.com")], b"example.com", None, False),
        ([*GET, (b":authority", b"a"), (b"host", b"b")], b"b", None, False),  # host wins
        ([*GET, (b"content-length", b"12")], None, 12, False),
        ([*GET, (b"expect", b"100-Continue")], None, None, True),
    ],
)
def test_request_head(
    fields: list[Header], host: bytes | None, length: int | None, expect: bool
) -> None:
    head = request_head(fields)
    assert (head.method, head.path, head.query_string, head.version) == (
        "GET",
        "/a b",
        b"x=1",
        "2",
    )
    assert dict(head.headers).get(b"host") == host
    assert head.content_length == length and head.expect_continue is expect
    assert not head.upgrade


@pytest.mark.parametrize(
    "fields",
    [
        [(b":method", b"GET")],  # no :path
        [*GET, (b"content-length", b"-1")],
        [(b":method", b"GET"), (b":path", b"http://[bad")],
    ],
)
def test_request_head_refuses(fields: list[Header]) -> None:
    with pytest.raises(ProtocolError) as caught:
        request_head(fields)
    assert caught.value.status == 400


def test_extended_connect_is_the_websocket_get_it_stands_for() -> None:
    fields = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":path", b"/rt/ws"),
        (b":authority", b"localhost"),
        (b"sec-websocket-version", b"13"),
    ]
    head = request_head(fields)
    headers = dict(head.headers)
    assert head.method == "GET" and head.upgrade
    assert headers[b"upgrade"] == b"websocket" and headers[b"connection"] == b"upgrade"
    assert len(headers[b"sec-websocket-key"]) == 24
    plain = request_head([(b":method", b"CONNECT"), (b":path", b"/x")])
    assert plain.method == "CONNECT" and not plain.upgrade


def test_response_fields() -> None:
    fields = response_fields(
        200,
        [(b"Content-Type", b"text/plain"), (b"Connection", b"close"), (b"x-a", b"1")],
        5,
        DATE,
        b"server: rtserve\r\n",
    )
    assert fields == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"x-a", b"1"),
        (b"content-length", b"5"),
        (b"date", b"Mon, 07 Dec 2026 19:00:00 GMT"),
        (b"server", b"rtserve"),
    ]
    encoded = response_fields(304, b"etag: x\r\ntransfer-encoding: chunked\r\n", 10, DATE)
    assert encoded == [(b":status", b"304"), (b"etag", b"x"), (b"date", DATE[6:-2])]
    assert (b"content-length", b"0") not in response_fields(204, [], 0, DATE)


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (99, []),
        (1000, []),
        (200, [(b"x", b"a\r\nb")]),
        (200, [(b"a:b", b"1")]),
        (200, [(b"", b"1")]),
    ],
)
def test_response_fields_refuse(status: int, headers: list[Header]) -> None:
    with pytest.raises(ValueError):
        response_fields(status, headers, 0, DATE)


def test_tunnel_fields_keep_subprotocol_and_extensions() -> None:
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: abc\r\nsec-websocket-protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    assert tunnel_fields(response) == [
        (b":status", b"200"),
        (b"sec-websocket-protocol", b"chat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
    ]
    assert split_fields(b"a: 1\r\nb:2\r\n\r\n") == [(b"a", b"1"), (b"b", b"2")]
