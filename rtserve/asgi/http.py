"""One ASGI `http` request/response cycle over an `Exchange`.

`receive()` hands over the request body as it arrives (`more_body`), then waits for the
client to leave (`http.disconnect`). `send()` writes the response: a head and one body with
`more_body` false go out as one write with a computed Content-Length; anything else streams
(chunked unless the app gave a Content-Length), waiting for the client while the write buffer
is over its mark. A send after the client left raises `ClientDisconnected` (an OSError).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from rtserve.asgi.types import ASGIApp, Message, Scope
from rtserve.errors import RtserveError
from rtserve.server.exchange import ClientDisconnected, Exchange

_DISCONNECT: Message = {"type": "http.disconnect"}
_new_object = object.__new__


class ASGIProtocolError(RtserveError, RuntimeError):
    """The hosted app broke the ASGI protocol (a message out of order, of an unknown type)."""


class HTTPCycle:
    """receive/send of one HTTP request, for the hosted app."""

    # Class defaults, two attributes set per request (no __slots__): one is made per request,
    # and each attribute an __init__ sets costs about as much as the app's own work on it.
    _body: AsyncIterator[bytes] | None = None  # made on the first receive() of a body
    _remaining: int | None = None  # of a sized body, not handed over yet (once one is read)
    _done = False  # the whole body was handed over
    _status = 0
    # Set by http.response.start (read only once `_status` is): the app's header fields
    # encoded, and the Content-Length it gave.
    _headers = b""
    _length: int | None = None

    def __init__(self, exchange: Exchange, heads: ResponseHeads | None = None) -> None:
        self._exchange = exchange
        self._heads = heads if heads is not None else ResponseHeads()

    async def receive(self) -> Message:
        exchange = self._exchange
        if self._done or exchange.finished:
            return await self._disconnect()
        head = exchange.head
        body = self._body
        remaining = self._remaining if body is not None else head.content_length
        if remaining == 0 or (remaining is None and not head.chunked):
            self._done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if body is None:
            body = self._body = exchange.stream()
        try:
            data = await anext(body)
        except StopAsyncIteration:
            self._done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        except ClientDisconnected:
            self._done = True
            return _DISCONNECT
        if remaining is not None:
            remaining = self._remaining = remaining - len(data)
            self._done = remaining <= 0
            return {"type": "http.request", "body": data, "more_body": not self._done}
        return {"type": "http.request", "body": data, "more_body": True}

    async def _disconnect(self) -> Message:
        """Once the body is taken: `http.disconnect` when the client leaves or the response
        is complete (the spec's two cases), whichever is first."""
        exchange = self._exchange
        if not (exchange.finished or exchange.disconnected):
            await exchange.wait_disconnected()
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        kind = message["type"]
        exchange = self._exchange
        if kind == "http.response.body":
            status = self._status
            if not status or exchange.finished:
                raise ASGIProtocolError(
                    "http.response.body before http.response.start"
                    if not status
                    else "http.response.body after the response was complete"
                )
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if not exchange.started:
                length = self._length
                if not more and (length is None or length == len(body)):
                    exchange.respond(status, self._headers, body)
                    return
                exchange.start(status, self._headers, length)
            if body:
                exchange.write(body)
            if not more:
                exchange.end()
            elif exchange.writing_paused:
                await exchange.drain()
        elif kind == "http.response.start":
            if self._status:
                raise ASGIProtocolError("http.response.start sent twice")
            if exchange.closed:
                raise ClientDisconnected("client disconnected")
            status = message["status"]
            self._status = status if type(status) is int else int(status)
            fields = message.get("headers", ())
            heads = self._heads
            # The fields of the last answer again (comparing lists costs a tenth of hashing):
            # encoded as then; else through the cache.
            if type(fields) is list and fields == heads.last:
                self._headers, self._length = heads.last_encoded
            else:
                self._headers, self._length = heads.encode(fields)
        else:
            raise ASGIProtocolError(f"unexpected ASGI message {kind!r} in an http cycle")

    def finish(self) -> None:
        """The app returned: a response it left incomplete is cut short; none at all is an
        error (answered 500 by the App)."""
        exchange = self._exchange
        if exchange.finished:
            return
        if exchange.started:
            exchange.close()  # no last chunk: the client sees the body incomplete
            exchange.end()
            return
        raise ASGIProtocolError("the ASGI app returned without sending a response")


class ResponseHeads:
    """The app's response header lists encoded for the head, the last `size` distinct lists
    of tuples kept: an app that answers with the same headers again (a constant list, or the
    same fields built anew) is not encoded again."""

    __slots__ = ("_encoded", "last", "last_encoded", "size")

    def __init__(self, size: int = 64) -> None:
        self._encoded: dict[tuple[Any, ...], tuple[bytes, int | None]] = {}
        self.size = size
        # The last list of tuples encoded (a copy) and its encoding: what `send` compares
        # the next answer's list with before anything else.
        self.last: list[Any] | None = None
        self.last_encoded: tuple[bytes, int | None] = (b"", None)

    def __len__(self) -> int:
        """How many encoded field lists are kept."""
        return len(self._encoded)

    def encode(self, headers: Iterable[Any]) -> tuple[bytes, int | None]:
        """`_encoded_head` of `headers`, from the cache when the same fields came before."""
        key = tuple(headers)  # taken once: `headers` may be a one-pass iterator
        try:
            found = self._encoded.get(key)
        except TypeError:  # a field as a list (mutable, unhashable): encoded every time
            return _encoded_head(key)
        if found is None:
            found = _encoded_head(key)
            if not all(type(field) is tuple for field in key):
                return found  # a field of a mutable type: not kept
            encoded = self._encoded
            if len(encoded) >= self.size:
                encoded.clear()  # bounded: an app with ever-new headers keeps at most `size`
            encoded[key] = found
        # Found or kept: every field is a tuple (a list never equals one), so a list that
        # compares equal to this copy has the same fields.
        self.last = list(key)
        self.last_encoded = found
        return found


def _encoded_head(headers: Iterable[Any]) -> tuple[bytes, int | None]:
    """The app's header fields encoded for the response head, without Content-Length and
    Transfer-Encoding (the server frames the body), and the Content-Length it gave, if any.
    ValueError for a field that would break the head (CR, LF or NUL; a bad name)."""
    lines: list[bytes] = []
    length = None
    for name, value in headers:
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            length = int(value)
        elif size != 17 or name.lower() != b"transfer-encoding":
            if not size or name.find(b":") >= 0:  # find: `in` raises inside for bytes
                raise ValueError(f"invalid header name {bytes(name)!r}")
            lines.append(b"%s: %s\r\n" % (name, value))
    head = b"".join(lines)
    # Each line ends in the one CRLF added above: any other CR or LF came from the app.
    count = len(lines)
    if head.count(b"\n") != count or head.count(b"\r") != count or head.find(b"\0") >= 0:
        raise ValueError("a response header holds CR, LF or NUL")
    return head, length


async def serve_http(
    app: ASGIApp, scope: Scope, exchange: Exchange, heads: ResponseHeads | None = None
) -> None:
    """Run `app` on one HTTP request; `heads` keeps the app's encoded response heads."""
    # HTTPCycle(exchange, heads) without the call of its __init__ (about as costly as a send).
    cycle = _new_object(HTTPCycle)
    cycle._exchange = exchange
    cycle._heads = heads if heads is not None else ResponseHeads()
    try:
        await app(scope, cycle.receive, cycle.send)
    except ClientDisconnected:
        if not exchange.closed:
            raise
        return  # the client left mid-response: nothing to answer, nothing to log
    if not exchange.finished:
        cycle.finish()
