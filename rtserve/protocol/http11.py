"""HTTP/1.1 request parsing (over httptools/llhttp) and response serialisation, sans-I/O.

`RequestParser.feed(data)` turns bytes into a list of events: a `RequestHead`, body chunks
(`bytes`), `END_OF_MESSAGE`, or `UpgradeRequested`. Given a `RequestSink`, it calls the sink's
methods instead (no event objects, for the server's hot path). It raises `ProtocolError`
carrying the status to answer with (400, 413, 414, 417, 431, 501, 505); an exception raised
by a sink propagates as it is. After an error the parser is dead and the connection must
close. Limits are constructor parameters.

The serialisers build whole response heads as bytes; the caller adds the body and writes once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Protocol
from urllib.parse import unquote_to_bytes

import httptools

from rtserve.errors import ProtocolError

Header = tuple[bytes, bytes]


class EndOfMessage:
    """Marks the end of one request (its body, if any, has been delivered)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_MESSAGE"


END_OF_MESSAGE: Final = EndOfMessage()


@dataclass(slots=True)
class UpgradeRequested:
    """The request asked to switch protocols; `data` is what followed its head on the wire."""

    data: bytes


class RequestHead:
    """Everything known about a request once its headers are in."""

    __slots__ = (
        "authority",
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "raw_path",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[Header],
        version: str = "1.1",
        keep_alive: bool = True,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade = False
        # The host of an absolute-form target (`http://host/p`), which replaces Host.
        self.authority: bytes | None = None
        raw_path, _, query = target.partition(b"?")
        if raw_path[:1] != b"/" and raw_path != b"*":
            self.authority, raw_path = _origin_form(raw_path)
            self.target = raw_path + (b"?" + query if query else b"")
        self.raw_path = raw_path
        self.query_string = query
        path = raw_path.decode("utf-8", "surrogateescape")
        if "%" in path:  # (on bytes, `in` raises and clears a TypeError inside, every time)
            path = unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
        self.path = path

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.target!r} HTTP/{self.version}>"


def _origin_form(target: bytes) -> tuple[bytes, bytes]:
    """Authority and path of an absolute-form target (`http://host/p` -> `host`, `/p`)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ProtocolError(400, "bad request target")
    slash = rest.find(b"/")
    authority, path = (rest[:slash], rest[slash:]) if slash >= 0 else (rest, b"/")
    # RFC 9110 4.2.4: no userinfo in http(s) URIs; the host[:port] rule keeps it out.
    if not valid_host(authority):
        raise ProtocolError(400, "bad request target")
    return authority, path


_SCHEMES: Final = frozenset((b"http", b"https", b"ws", b"wss"))

# host[:port] (RFC 9112 3.2, RFC 3986 3.2.2-3.2.3): an IP-literal (IPv6 with an optional
# RFC 6874 zone, or IPvFuture) or a non-empty reg-name (which covers IPv4), then a port.
_HOST: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+(?:%25(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})+)?\]"
    rb"|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)"
    rb"(?::([0-9]{1,5}))?"
)


def valid_host(value: bytes) -> bool:
    """Whether `value` is host[:port] as a Host field or an absolute target's authority."""
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    port = match.group(1)
    return port is None or int(port) <= 65535


Event = RequestHead | bytes | EndOfMessage | UpgradeRequested


class RequestSink(Protocol):
    """Receives what a parser reads, as it reads it."""

    def request_head(self, head: RequestHead) -> None: ...
    def request_body(self, data: bytes) -> None: ...
    def request_end(self) -> None: ...
    def request_upgrade(self, data: bytes) -> None:
        """The request asked to switch protocols; `data` followed its head on the wire."""


class RequestParser:
    """Incremental HTTP/1.1 request parser with size limits.

    max_head_size: bytes of request line plus headers (431 beyond).
    max_headers: number of header fields (431 beyond).
    max_body_size: bytes of body, declared or chunked (413 beyond); None for no limit.
    """

    __slots__ = (
        "_begun",
        "_body_bytes",
        "_body_left",
        "_chunk_overhead",
        "_chunked",
        "_chunks",
        "_closing",
        "_connection",
        "_content_length",
        "_dead",
        "_emit_body",
        "_emit_end",
        "_emit_head",
        "_emit_upgrade",
        "_error",
        "_events",
        "_expect",
        "_field_bytes",
        "_head_bytes",
        "_headers",
        "_heads",
        "_host",
        "_parser",
        "_tail",
        "_te",
        "_url",
        "_valid_host",
        "in_head",
        "max_body_size",
        "max_head_size",
        "max_headers",
    )

    def __init__(
        self,
        *,
        max_head_size: int = 16 * 1024,
        max_headers: int = 100,
        max_body_size: int | None = 1024 * 1024,
        sink: RequestSink | None = None,
    ) -> None:
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.max_body_size = max_body_size
        self._events: list[Event] = []
        if sink is None:
            append = self._events.append
            self._emit_head: Callable[[RequestHead], None] = append
            self._emit_body: Callable[[bytes], None] = append
            self._emit_end: Callable[[], None] = lambda: append(END_OF_MESSAGE)
            self._emit_upgrade: Callable[[bytes], None] = lambda d: append(UpgradeRequested(d))
        else:
            self._emit_head = sink.request_head
            self._emit_body = sink.request_body
            self._emit_end = sink.request_end
            self._emit_upgrade = sink.request_upgrade
        self._parser = httptools.HttpRequestParser(_Callbacks(self))
        self._error: ProtocolError | None = None
        self._dead = False
        self._closing = False
        self._valid_host = b"\0"  # the last Host value found valid (none yet)
        self._begun = 0
        self._heads = 0  # request heads read, ever
        self._tail: bytes | memoryview = b""  # what follows the piece being fed (feed_until)
        # Per message: on_message_begin resets the head's state, on_headers_complete takes
        # (and resets) what the header fields set and starts the body's.
        self._url = b""
        self._headers: list[Header] = []
        self._head_bytes = 0
        self._field_bytes = 0
        self.in_head = False  # a request head has started and is not complete
        self._content_length: bytes | None = None
        self._te: bytes | None = None
        self._expect = False
        self._host = False
        self._connection = False  # a Connection or Proxy-Connection field was read
        self._body_bytes = 0
        self._body_left = 0  # of a Content-Length body still to come
        self._chunked = False
        self._chunks = 0
        self._chunk_overhead = 0

    def close(self) -> None:
        """Done with this parser: let go of httptools' parser (which points back at this one)
        and of the sink, so neither waits for the cyclic GC. `feed` fails from now on."""
        self._dead = True
        self._parser = None  # type: ignore[assignment]
        self._emit_head = self._emit_body = self._emit_upgrade = _ignore
        self._emit_end = _ignore_end

    def feed_until(self, data: bytes, max_heads: int, start: int = 0) -> int:
        """Parse `data` from `start` until about `max_heads` more request heads are read;
        return where it stopped (`len(data)` unless early: feed the rest later from there).

        It feeds pieces that end at a blank line (`\\r\\n\\r\\n`, which ends every head) and
        stops after `max_heads` pieces or heads, so one call reads at most `max_heads` heads
        (one more if the first piece completes a head begun before). Known body bytes are
        never cut. Raises as `feed`; events go to the sink.
        """
        size = len(data)
        # Fewer than 4 * (max_heads + 1) bytes cannot hold more than max_heads blank lines.
        if start == 0 and (
            size < (max_heads + 1) << 2 or data.count(b"\r\n\r\n", self._body_left) <= max_heads
        ):
            self._feed(data)  # the usual case: the whole read is within the budget
            return size
        cut = self._cut(data, start, max_heads)
        view = memoryview(data)
        pos, left = start, max_heads
        while True:
            heads = self._heads
            self._tail = view[cut:]  # an upgrade takes all that follows, not just this piece
            try:
                self._feed(view[pos:cut])  # type: ignore[arg-type]  # httptools takes buffers
            finally:
                self._tail = b""
            if self._dead:  # switched protocols: the rest went with the upgrade
                return size
            pos = cut
            left -= max(1, self._heads - heads)
            if pos == size or left <= 0:
                return pos
            cut = self._cut(data, pos, left)

    def _cut(self, data: bytes, pos: int, heads: int) -> int:
        """Where a piece of `data` from `pos` holding at most `heads` head ends must end."""
        end = pos + self._body_left
        for _ in range(heads):
            end = data.find(b"\r\n\r\n", end)
            if end < 0:
                return len(data)
            end += 4
        return min(end, len(data))

    def feed(self, data: bytes) -> list[Event]:
        """Parse `data`; return the events it completes (none with a sink).

        Raises ProtocolError; what a sink raises propagates unchanged.
        """
        self._feed(data)
        return self._take_events()

    def _feed(self, data: bytes) -> None:
        if self._dead:
            raise ProtocolError(400, "connection already failed")
        continuing_head = self.in_head
        begun = self._begun
        body_before = self._body_bytes
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._dead = True
            self._emit_upgrade(bytes(data[offset:]) + self._tail)
            return
        except httptools.HttpParserError as exc:
            self._dead = True
            if self._error is not None:
                raise self._error from None
            cause = exc.__context__
            if cause is not None and not isinstance(cause, httptools.HttpParserError):
                raise cause from None  # the sink failed: not the client's fault
            raise ProtocolError(400, _reason(exc)) from None
        if self.in_head and continuing_head and begun == self._begun:
            # httptools keeps a partial field to itself: bound the head by the raw bytes of
            # every read that began and ended inside it.
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_size:
                self._dead = True
                raise ProtocolError(431, "request head too large")
        elif self._chunked and begun == self._begun and not continuing_head:
            # Inside one chunked body for the whole read: bound what is not body (chunk-size
            # lines, extensions, trailers), which llhttp skips without limit (CVE-2024-22019).
            self._chunk_overhead += len(data) - (self._body_bytes - body_before)
            if self._chunk_overhead > self.max_head_size + _CHUNK_LINE_ALLOWANCE * self._chunks:
                self._dead = True
                raise ProtocolError(400, "chunk extensions or trailers too long")

    def _take_events(self) -> list[Event]:
        events = self._events
        if not events:
            return []
        taken = events[:]
        events.clear()
        return taken

    def _fail(self, status: int, reason: str) -> None:
        self._error = ProtocolError(status, reason)
        raise self._error

    # httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._closing:
            # As llhttp does after `Connection: close`: nothing may follow such a request.
            self._fail(400, "data after a request that closes the connection")
        self._url = b""
        self._headers = []
        self._head_bytes = self._field_bytes = 0
        self._chunked = False
        self.in_head = True
        self._begun += 1

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._field_bytes += len(url)
        if self._field_bytes > self.max_head_size:
            self._fail(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        if len(headers) > self.max_headers:
            self._fail(431, "too many header fields")
        self._field_bytes += len(name) + len(value) + 4
        if self._field_bytes > self.max_head_size:
            self._fail(431, "request head too large")
        size = len(name)
        if size == 4 and (name == b"Host" or name.lower() == b"host"):  # as most send it
            if self._host:
                self._fail(400, "more than one Host header")
            if value != self._valid_host and not valid_host(value):
                self._fail(400, "Host is not host[:port]")
            self._host = True
            self._valid_host = value  # a connection sends the same Host again and again
        elif size == 14 and name.lower() == b"content-length":
            self._content_length = value
        elif size == 17 and name.lower() == b"transfer-encoding":
            # Several fields form one list (RFC 9110 5.3): `gzip` then `chunked` is gzip, chunked.
            self._te = value if self._te is None else self._te + b", " + value
        elif size == 6 and name.lower() == b"expect":
            if value.lower() != b"100-continue":
                self._fail(417, "unsupported expectation")
            self._expect = True
        elif (size == 10 and name.lower() == b"connection") or (
            size == 16 and name.lower() == b"proxy-connection"
        ):
            self._connection = True  # llhttp reads both for keep-alive

    def on_headers_complete(self) -> None:
        parser = self._parser
        self.in_head = False
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method)
        if method is None:  # llhttp knows a few dozen methods: each is decoded once
            method = _METHODS[raw_method] = raw_method.decode("ascii")
        keep_alive = parser.should_keep_alive()
        if self._connection or not keep_alive or method == "CONNECT":
            self._connection = False
            version = parser.get_http_version()
            upgrade = parser.should_upgrade()
        else:
            # Without a Connection (or Proxy-Connection) field llhttp keeps HTTP/1.1 alive and
            # no other version of those it reads (0.9, 1.0, 1.1, 2.0), and upgrades only
            # CONNECT: so much known without asking (formatting the version is costly).
            version = "1.1"
            upgrade = False
        head = RequestHead(method, self._url, self._headers, version, keep_alive)
        if version != "1.1" and version != "1.0":
            # llhttp also takes HTTP/0.9 and HTTP/2.0 request lines; we speak neither.
            self._fail(505, "HTTP version not supported")
        if head.raw_path == b"*" and method != "OPTIONS":
            self._fail(400, "asterisk-form target is for OPTIONS only")
        self._body_bytes = 0
        if self._te is not None:
            te, self._te = self._te, None
            self._content_length = None
            if te.strip().lower() != b"chunked":
                self._fail(501, "unsupported transfer coding")
            head.chunked = self._chunked = True
            self._chunks = self._chunk_overhead = 0
            if version == "1.0":
                # RFC 9112 6.1: faulty framing in HTTP/1.0; answer, then close.
                head.keep_alive = False
                self._closing = True
        elif self._content_length is not None:
            length = int(self._content_length)
            self._content_length = None
            if self.max_body_size is not None and length > self.max_body_size:
                self._fail(413, "request body too large")
            head.content_length = self._body_left = length
        if self._expect:
            head.expect_continue = True
            self._expect = False
        if upgrade:
            head.upgrade = True
            if head.chunked or head.content_length:
                # llhttp stops before such a body, so it would be read as the next request.
                self._fail(400, "Upgrade with a request body is not supported")
        if self._host:
            self._host = False
        elif version == "1.1":
            self._fail(400, "HTTP/1.1 request without Host")
        if head.authority is not None:
            # RFC 9112 3.2.2: the target's host wins over any Host field, so the app, the
            # router and the origin checks all see one host.
            headers = [h for h in self._headers if h[0].lower() != b"host"]
            headers.append((b"host", head.authority))
            head.headers = headers
        self._heads += 1
        self._emit_head(head)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if not self._chunked:
            self._body_left -= len(body)
        if self.max_body_size is not None and self._body_bytes > self.max_body_size:
            self._fail(413, "request body too large")
        self._emit_body(body)


class _Callbacks:
    """What httptools calls as it reads: the parser's methods, except that the end of a message
    goes straight to its taker (a Content-Length body is all read by then: nothing to reset)."""

    __slots__ = (
        "on_body",
        "on_chunk_header",
        "on_header",
        "on_headers_complete",
        "on_message_begin",
        "on_message_complete",
        "on_url",
    )

    def __init__(self, parser: RequestParser) -> None:
        self.on_message_begin = parser.on_message_begin
        self.on_url = parser.on_url
        self.on_header = parser.on_header
        self.on_headers_complete = parser.on_headers_complete
        self.on_chunk_header = parser.on_chunk_header
        self.on_body = parser.on_body
        self.on_message_complete = parser._emit_end


# Method names as llhttp gives them -> as str (filled as they are seen).
_METHODS: dict[bytes, str] = {b"GET": "GET", b"HEAD": "HEAD", b"POST": "POST"}
# Bytes of chunk-size line and framing each chunk may use beyond `max_head_size` in total.
_CHUNK_LINE_ALLOWANCE: Final = 32


def _ignore(item: Any) -> None:
    """What a closed parser's events go to."""


def _ignore_end() -> None:
    """What a closed parser's end of message goes to."""


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or "malformed request"
    return text[:80]


# --- responses -----------------------------------------------------------------------------


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


STATUS_LINES: Final[dict[int, bytes]] = {int(s): _status_line(int(s)) for s in HTTPStatus}

CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <phrase>\\r\\n`, for any status 100-999."""
    line = STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status}")
        line = _status_line(status)
    return line


def encode_headers(headers: list[Header]) -> bytes:
    """Serialise header fields; refuses CR/LF/NUL in names or values (header injection)."""
    parts = []
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\0" in value or b":" in name or not name:
            raise ValueError(f"invalid header field {name!r}")
        parts.append(b"%s: %s\r\n" % (name, value))
    return b"".join(parts)


def response_head(
    status: int,
    headers: list[Header] | bytes,
    *,
    content_length: int | None,
    keep_alive: bool,
    date: bytes,
    server: bytes = b"",
    http10: bool = False,
    body: bytes = b"",
) -> bytes:
    """A complete response head, then `body` (given for a whole response written at once).
    `content_length=None` means a body of unknown length.

    `headers` may be given already encoded (see `encode_headers`), as constant heads are.
    `date` is a whole `date: ...\r\n` line (cached by the caller); `server` likewise.
    An HTTP/1.0 client is told `connection: keep-alive` when the connection stays open.
    """
    if content_length is None:
        # Without a length, HTTP/1.1 streams chunked; HTTP/1.0 ends the body by closing.
        length = b"" if http10 else b"transfer-encoding: chunked\r\n"
    elif status < 200 or status == 204 or status == 304:
        length = b""
    else:
        length = _LENGTH_LINES.get(content_length)  # type: ignore[assignment]
        if length is None:
            length = b"content-length: %d\r\n" % content_length
            if content_length < _CACHED_LENGTHS:
                _LENGTH_LINES[content_length] = length
    line = STATUS_LINES.get(status)
    return b"".join(
        (
            status_line(status) if line is None else line,
            headers if type(headers) is bytes else encode_headers(headers),  # type: ignore[arg-type]
            length,
            date,
            server,
            (b"connection: keep-alive\r\n" if http10 else b"")
            if keep_alive
            else b"connection: close\r\n",
            b"\r\n",
            body,
        )
    )


# `content-length: N\r\n` lines of the bodies shorter than _CACHED_LENGTHS, made once each.
_CACHED_LENGTHS: Final = 1024
_LENGTH_LINES: dict[int, bytes] = {}


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (empty data encodes nothing: the last chunk is explicit)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)
