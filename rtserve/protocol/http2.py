"""HTTP/2 request and response fields, sans-I/O: what the h2 connection translates between
h2's decoded header lists and the `RequestHead` / response fields every exchange uses.

No framing here (the h2 library does it); no asyncio, no sockets. A request's pseudo-header
fields become the head (`:authority` the `host` field HTTP/1.1 has), an extended CONNECT for a
WebSocket (RFC 8441) becomes the GET with `Upgrade: websocket` it stands for, and a response's
status and fields become HEADERS fields without HTTP/1.1's connection-specific ones.
"""

from __future__ import annotations

import base64
import os

from rtserve.errors import ProtocolError
from rtserve.protocol.http11 import Header, RequestHead

# Response fields HTTP/2 forbids (RFC 9113 8.2.2): the connection's business, not a stream's.
CONNECTION_FIELDS = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
# What the answer to an extended CONNECT keeps of the WebSocket's 101.
TUNNEL_FIELDS = frozenset((b"sec-websocket-protocol", b"sec-websocket-extensions"))


def request_head(fields: list[Header]) -> RequestHead:
    """A `RequestHead` (version "2") from an HTTP/2 request's decoded fields, which h2 has
    validated. Raises ProtocolError(400) for what HTTP/1.1 would refuse too."""
    method = path = authority = protocol = b""
    headers: list[Header] = []
    host = False
    length: bytes | None = None
    for name, value in fields:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
            continue
        if name == b"host":
            host = True
        elif name == b"content-length":
            length = value
        headers.append((name, value))
    if authority and not host:
        headers.insert(0, (b"host", authority))
    if not path:
        raise ProtocolError(400, "no :path")
    tunnel = method == b"CONNECT" and protocol.lower() == b"websocket"
    if tunnel:
        # Shown to the app as the HTTP/1.1 GET it stands for, with a key of its own (HTTP/2
        # has no Sec-WebSocket-Key, and no Accept to answer).
        method = b"GET"
        headers += [
            (b"upgrade", b"websocket"),
            (b"connection", b"upgrade"),
            (b"sec-websocket-key", base64.b64encode(os.urandom(16))),
        ]
    head = RequestHead(method.decode("ascii", "replace"), path, headers, "2")
    head.upgrade = tunnel
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(400, "bad content-length")
        head.content_length = int(length)
    head.expect_continue = any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers)
    return head


def response_fields(
    status: int,
    headers: list[Header] | bytes,
    content_length: int | None,
    date: bytes,
    server: bytes = b"",
) -> list[Header]:
    """A response's HEADERS fields. `headers` may come encoded (as constant HTTP/1.1 heads
    do); `date` and `server` are the cached HTTP/1.1 lines (`date: ...\\r\\n`). Raises
    ValueError for a bad status or field, as `response_head` does."""
    if not 100 <= status <= 999:
        raise ValueError(f"invalid HTTP status {status}")
    fields: list[Header] = [(b":status", b"%d" % status)]
    for name, value in split_fields(headers) if isinstance(headers, bytes) else headers:
        name = name.lower()
        if name in CONNECTION_FIELDS:
            continue
        if b"\r" in value or b"\n" in value or b"\0" in value or b":" in name or not name:
            raise ValueError(f"invalid header field {name!r}")
        fields.append((name, value))
    if content_length is not None and status >= 200 and status not in (204, 304):
        fields.append((b"content-length", b"%d" % content_length))
    fields.append((b"date", date[6:-2]))
    if server:
        fields.append((b"server", server[8:-2]))
    return fields


def tunnel_fields(response: bytes) -> list[Header]:
    """The 200 that answers an extended CONNECT, from the WebSocket's 101 `response` (its
    subprotocol and extension fields)."""
    fields: list[Header] = [(b":status", b"200")]
    for name, value in split_fields(response.partition(b"\r\n")[2]):
        if name.lower() in TUNNEL_FIELDS:
            fields.append((name.lower(), value))
    return fields


def split_fields(encoded: bytes) -> list[Header]:
    """Header fields back from their HTTP/1.1 encoding."""
    out: list[Header] = []
    for line in encoded.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip()))
    return out
