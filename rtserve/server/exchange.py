"""One request/response exchange on an HTTP connection (HTTP/1.1, or one HTTP/2 stream), as
the app layer sees it.

The app reads the request head and body from it and answers through it: `respond()` writes a
whole response at once; `start()`/`write()`/`drain()`/`end()` stream one; `sendfile()` sends
part of a file without reading it into Python; `upgrade()` hands the socket to another
protocol. Exactly one answer per exchange. It is the app's only door to the connection, which
it reaches through the `ExchangeTransport` seam (rtserve/server/transport.py); the connection
frames the response (an HTTP/1.1 head, or HTTP/2 HEADERS).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, BinaryIO

from rtserve.errors import RtserveError
from rtserve.protocol.http11 import LAST_CHUNK, Header, RequestHead, encode_chunk
from rtserve.server.transport import ChunkWire

if TYPE_CHECKING:
    from rtserve.server.prepared import PreparedAnswer
    from rtserve.server.state import ServerState
    from rtserve.server.transport import ExchangeTransport, UpgradedProtocol


class ClientDisconnected(RtserveError, ConnectionError):
    """The client went away before the response was complete."""


STREAM_HIGH_WATER = 64 * 1024


class Exchange:
    """A request read from a connection, and the means to answer it in order."""

    __slots__ = (
        "_body_waiter",
        "_chunked",
        "_client",
        "_pieces",
        "_streamed",
        "_transport",
        "body",
        "body_complete",
        "deferred",
        "finished",
        "head",
        "head_only",
        "response_bytes",
        "scope",
        "start_time",
        "started",
        "state",
        "status",
        "streaming",
        "task",
    )

    def __init__(self, transport: ExchangeTransport, head: RequestHead, start_time: float) -> None:
        self._transport = transport
        self.state: ServerState = transport.state  # the serving server's (read-only)
        self.head = head
        self.start_time = start_time
        self.body = b""
        self.body_complete = not head.content_length and not head.chunked  # None or 0
        self.head_only = head.method == "HEAD"
        self.streaming = False
        self.started = False
        self.finished = False
        self.deferred = False
        self.status = 0
        self.response_bytes = 0
        self.task: asyncio.Task[Any] | None = None
        self.scope: Any = None
        self._client: tuple[str, str] | None = None
        # Body pieces not yet joined (or, when streaming, not yet taken); made on first use.
        self._pieces: list[bytes] | None = None
        self._streamed = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._chunked = False

    # --- request side ----------------------------------------------------------------------

    @property
    def peer(self) -> tuple[str, int]:
        """The direct peer (address, port); ("", 0) for unix sockets."""
        return self._transport.peer

    @property
    def client_and_scheme(self) -> tuple[str, str]:
        """(client address, scheme), trusting forwarding headers only from trusted proxies."""
        if self._client is None:
            state = self.state
            peer = self._transport.peer[0]
            self._client = state.proxies.resolve(peer, state.scheme, self.head.headers)
        return self._client

    @property
    def disconnected(self) -> bool:
        """The client closed the connection, or at least its sending side."""
        return self._transport.closed or self._transport.eof

    @property
    def closed(self) -> bool:
        """The connection is closed (by either side): nothing more can be sent."""
        return self._transport.closed

    @property
    def writing_paused(self) -> bool:
        """The client is behind: what was written is over the write buffer's high-water mark."""
        return self._transport.writing_paused

    def buffered(self) -> int:
        """Bytes written and not yet handed to the socket."""
        return self._transport.buffered()

    def chunk_wire(self) -> ChunkWire | None:
        """The connection, to take chunks of this body shared with other streamed responses
        (written straight to its transport); a taker counts each in the wire's `bytes_out`
        and its data in `response_bytes`. None unless the body streams chunked on HTTP/1.1
        (HTTP/2 and HTTP/1.0 frame their own, HEAD has none)."""
        conn = self._transport
        chunked = self._chunked and not self.head_only and not self.finished
        return conn if chunked and isinstance(conn, ChunkWire) else None

    def wait_disconnected(self) -> asyncio.Future[None]:
        """A future that completes when the client closes the connection (or its side of it)."""
        return self._transport.closed_future()

    def on_disconnect(self, callback: Callable[[], object] | None) -> None:
        """Call `callback` once, soon, when the client closes the connection (or its side
        of it), as `wait_disconnected()` would complete, but without a future; None forgets
        it. One callback at a time (a deferred answer's)."""
        self._transport.on_disconnect(callback)

    def _feed(self, data: bytes) -> None:
        pieces = self._pieces
        if pieces is None:
            pieces = self._pieces = []
        pieces.append(data)
        if self.streaming:
            self._streamed += len(data)
            if self._streamed > STREAM_HIGH_WATER:
                self._transport.pause_reading_for_body()
            self._wake_body()

    def _start_streaming(self) -> None:
        """From now on the handler takes the body as it comes (what arrived is kept, joined
        already when all of it came while the exchange waited behind another)."""
        self.streaming = True
        if self._pieces is None and self.body:
            self._pieces = [self.body]
        pieces = self._pieces
        self._streamed = sum(map(len, pieces)) if pieces else 0  # no generator when none came

    def _complete(self) -> None:
        self.body_complete = True
        if not self.streaming:
            parts = self._pieces
            if parts:
                self.body = parts[0] if len(parts) == 1 else b"".join(parts)
            self._pieces = None
        self._wake_body()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def stream(self) -> AsyncIterator[bytes]:
        """Yield the request body in pieces as they arrive (for streaming routes)."""
        if not self.streaming:
            if self.body:
                yield self.body
            return
        transport = self._transport
        transport.send_continue(self)
        loop = self.state.loop
        while True:
            while self._pieces:
                pieces, self._pieces = self._pieces, None
                for data in pieces:
                    self._streamed -= len(data)
                    if self._streamed <= STREAM_HIGH_WATER:
                        transport.resume_reading_for_body()
                    yield data
            if self.body_complete:
                return
            if transport.closed:
                raise ClientDisconnected("client disconnected during the request body")
            self._body_waiter = loop.create_future()
            transport.watch(self._body_waiter)
            await self._body_waiter
            self._body_waiter = None

    # --- response side ---------------------------------------------------------------------

    def respond(self, status: int, headers: list[Header] | bytes, body: bytes = b"") -> None:
        """Send a complete response with `body` and finish the exchange."""
        if self.started:
            raise RuntimeError("response already started")
        conn = self._transport
        sent = b"" if self.head_only or status == 304 or status == 204 else body
        if not conn.closed:
            # The connection frames the head; a bad header raises here, before `started`,
            # which leaves room for a 500.
            conn.write_response(self, status, headers, len(body), sent)
        self.started = True
        self.status = status
        self.state.stats.http_latency.observe(perf_counter() - self.start_time)
        self.response_bytes = len(sent)
        if not self.finished:  # _finish(), without the call
            self.finished = True
            conn.exchange_finished(self)

    def respond_prepared(self, answer: PreparedAnswer) -> None:
        """`respond()` with a response made once for many exchanges: an HTTP/1.1 connection
        writes its shared framed bytes, with no head built for this exchange."""
        if self.head_only or self.started:
            self.respond(answer.status, answer.headers, answer.body)
            return
        conn = self._transport
        if not conn.closed:
            conn.write_prepared(self, answer)
        self.started = True
        self.status = answer.status
        self.state.stats.http_latency.observe(perf_counter() - self.start_time)
        self.response_bytes = len(answer.body)
        self._finish()

    def start(
        self, status: int, headers: list[Header] | bytes, content_length: int | None = None
    ) -> None:
        """Send the head of a streamed response; `content_length=None` streams (chunked on
        HTTP/1.1). `headers` may be encoded already (`encode_headers`)."""
        if self.started:
            raise RuntimeError("response already started")
        conn = self._transport
        if not conn.closed:
            self._chunked = conn.write_head(self, status, headers, content_length)
        self.started = True
        self.status = status
        self.state.stats.http_latency.observe(perf_counter() - self.start_time)

    def write(self, data: bytes) -> None:
        """Queue one piece of a streamed response body. Raises ClientDisconnected."""
        if not self.started:
            raise RuntimeError("call start() before write()")
        if self.finished:
            raise RuntimeError("response already finished")
        conn = self._transport
        if conn.closed:
            raise ClientDisconnected("client disconnected")
        if not data or self.head_only:
            return
        self.response_bytes += len(data)
        conn.write(encode_chunk(data) if self._chunked else data)

    async def drain(self) -> None:
        """Wait until the client has taken enough of what was written. Raises ClientDisconnected."""
        await self._transport.drain()

    def end(self) -> None:
        """Finish a streamed response."""
        if self.finished:
            return
        if self._chunked and not self.head_only and not self._transport.closed:
            self._transport.write(LAST_CHUNK)
        self._finish()

    def close(self) -> None:
        """Close the connection once what was written is sent: a streamed body ended now is
        cut short (no last chunk), so the client sees it incomplete."""
        self._transport.must_close = True
        self._transport.close()

    def abort(self) -> None:
        """Close the connection now, dropping what was not sent."""
        self._transport.must_close = True
        self._transport.abort()

    def upgrade(self, response: bytes, protocol: UpgradedProtocol) -> None:
        """Answer with `response` (a 101) and hand the socket to `protocol`; from then on this
        exchange reports `protocol`'s state (closed, disconnected)."""
        transport = self._transport
        transport.upgrade(self, response, protocol)
        # The request lives on with the handler: it asks the new protocol whether the client
        # is there, so the HTTP connection (and what it holds) can go.
        self._transport = _Upgraded(transport.state, transport.peer, protocol)

    def defer(self) -> None:
        """Its handler returns without answering: whoever it handed this exchange to answers it
        later, and must (at the latest when `wait_disconnected()` completes). Meanwhile the
        connection neither answers for the handler nor dispatches the request again."""
        self.deferred = True

    def answer_internal_error(self) -> None:
        """The handler failed: answer 500, or cut the response short if it started."""
        self._transport.internal_error(self)

    async def sendfile(self, file: BinaryIO, offset: int, count: int) -> None:
        """Send `count` bytes of `file` from `offset` as the body (after `start`).

        Uses the kernel's sendfile on plain TCP (from a worker thread under uvloop); under TLS
        it reads in a worker thread instead. Never blocks the event loop.
        """
        if self.head_only or count <= 0:
            return
        if self._transport.closed:
            raise ClientDisconnected("client disconnected")
        self.response_bytes += count
        await self._transport.send_file(file, offset, count)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._transport.exchange_finished(self)


class _Upgraded:
    """The `ExchangeTransport` of an exchange answered by an upgrade: it reports whether the
    new protocol's connection is open; there is no HTTP left to speak on it."""

    __slots__ = ("_on_close", "_protocol", "must_close", "peer", "state")

    def __init__(
        self, state: ServerState, peer: tuple[str, int], protocol: UpgradedProtocol
    ) -> None:
        self.state = state
        self.peer = peer
        self._protocol = protocol
        self.must_close = True
        self._on_close: Callable[[asyncio.Future[None]], object] | None = None

    @property
    def closed(self) -> bool:
        return self._protocol.closed

    @property
    def eof(self) -> bool:
        return self._protocol.closed

    writing_paused = False

    def closed_future(self) -> asyncio.Future[None]:
        return self._protocol.closed_future()

    def on_disconnect(self, callback: Callable[[], object] | None) -> None:
        closed = self._protocol.closed_future()
        if self._on_close is not None:
            closed.remove_done_callback(self._on_close)
            self._on_close = None
        if callback is not None:
            on_close = self._on_close = lambda _: callback()
            closed.add_done_callback(on_close)

    def watch(self, fut: asyncio.Future[Any]) -> None:
        def wake(_: object) -> None:
            if not fut.done():
                fut.set_result(None)

        self._protocol.closed_future().add_done_callback(wake)

    def keep_alive_after(self, exchange: Exchange) -> bool:
        return False

    def send_continue(self, exchange: Exchange) -> None:
        pass

    def buffered(self) -> int:
        return 0

    def pause_reading_for_body(self) -> None:
        pass

    def resume_reading_for_body(self) -> None:
        pass

    def exchange_finished(self, exchange: Exchange) -> None:
        pass

    def internal_error(self, exchange: Exchange) -> None:
        pass  # answered by the upgrade already

    def close(self) -> None:
        pass  # the new protocol owns the connection

    def abort(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        raise RuntimeError(_SWITCHED)

    def write_response(
        self,
        exchange: Exchange,
        status: int,
        headers: list[Header] | bytes,
        content_length: int,
        body: bytes,
    ) -> None:
        raise RuntimeError(_SWITCHED)

    def write_prepared(self, exchange: Exchange, answer: PreparedAnswer) -> None:
        raise RuntimeError(_SWITCHED)

    def write_head(
        self,
        exchange: Exchange,
        status: int,
        headers: list[Header] | bytes,
        content_length: int | None,
    ) -> bool:
        raise RuntimeError(_SWITCHED)

    async def drain(self) -> None:
        raise RuntimeError(_SWITCHED)

    async def send_file(self, file: BinaryIO, offset: int, count: int) -> None:
        raise RuntimeError(_SWITCHED)

    def upgrade(self, exchange: Exchange, response: bytes, protocol: UpgradedProtocol) -> None:
        raise RuntimeError(_SWITCHED)


_SWITCHED = "the connection speaks another protocol since its upgrade"
