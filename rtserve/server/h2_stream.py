"""One HTTP/2 stream as its exchange sees it: an `ExchangeTransport`, like an HTTP/1.1 connection.

The stream keeps what its exchange wrote beyond the peer's flow-control window (`pending`,
bounded by the slow-consumer policy: `writing_paused` past `limits.write_buffer_high`, `drain()`
until `write_buffer_low`) and the request body bytes the app has not taken yet (`unacked`:
the window is reopened only as the app takes them). Framing, HPACK and windows are the
connection's (`H2Connection`, over the h2 library); the stream asks it through `StreamOwner`.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from rtserve.protocol.http2 import response_fields
from rtserve.server.exchange import ClientDisconnected

if TYPE_CHECKING:
    from rtserve.protocol.http11 import Header
    from rtserve.server.exchange import Exchange
    from rtserve.server.h2_tunnel import StreamTransport
    from rtserve.server.prepared import PreparedAnswer
    from rtserve.server.state import ServerState
    from rtserve.server.transport import UpgradedProtocol

FILE_PIECE = 256 * 1024  # bytes of a file body read (in a worker thread) at a time


class StreamOwner(Protocol):
    """What a stream asks of its HTTP/2 connection."""

    @property
    def state(self) -> ServerState: ...
    @property
    def peer(self) -> tuple[str, int]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def writing_paused(self) -> bool:
        """The socket's write buffer is over its high-water mark."""
        ...

    def send_headers(self, stream: H2Stream, headers: list[Header], end: bool) -> None:
        """Send a HEADERS frame (`end`: it ends the stream)."""
        ...

    def push(self, stream: H2Stream) -> None:
        """Frame as much of `stream.pending` as the windows allow."""
        ...

    def acknowledge(self, stream: H2Stream, size: int) -> None:
        """The app took `size` bytes of `stream`'s body: reopen the windows by as much."""
        ...

    def reset(self, stream: H2Stream, code: int) -> None:
        """End `stream` with RST_STREAM `code`."""
        ...

    def finished(self, stream: H2Stream, exchange: Exchange) -> None:
        """`exchange`'s response is complete (for stats and the access log)."""
        ...

    def upgrade(
        self, stream: H2Stream, exchange: Exchange, response: bytes, protocol: UpgradedProtocol
    ) -> None:
        """Answer an extended CONNECT (RFC 8441) with 200 (what `response`, a 101, says of
        subprotocol and extensions) and hand the stream to `protocol`."""
        ...


class H2Stream:
    """One request stream: the `ExchangeTransport` of its exchange."""

    __slots__ = (
        "_closed_future",
        "_disconnect_callback",
        "_drain_waiter",
        "_watched",
        "body_paused",
        "closed",
        "conn",
        "deadline",
        "end_sent",
        "ending",
        "exchange",
        "held",
        "must_close",
        "pending",
        "pending_bytes",
        "received",
        "remote_ended",
        "stream_id",
        "tunnel",
        "unacked",
    )

    def __init__(self, conn: StreamOwner, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.exchange: Exchange | None = None
        self.pending: deque[bytes] = deque()  # body bytes beyond the peer's windows
        self.pending_bytes = 0
        self.ending = False  # the response ends once `pending` is sent
        self.end_sent = False
        self.remote_ended = False  # the request body is complete
        self.received = 0  # request body bytes
        self.closed = False  # reset, or both sides ended: nothing more can be sent
        self.must_close = False
        self.body_paused = False
        self.unacked = 0  # request body bytes received while paused, not yet acknowledged
        self.deadline = float("inf")  # body or send timeout, enforced by the connection
        self.tunnel: StreamTransport | None = None  # after an extended CONNECT (WebSocket)
        self.held: list[bytes] = []  # tunnel bytes that came before the tunnel was made
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed_future: asyncio.Future[None] | None = None
        self._disconnect_callback: Callable[[], object] | None = None
        self._watched: asyncio.Future[Any] | None = None

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id}>"

    # --- what the connection tells the stream ---------------------------------------------

    def lost(self) -> None:
        """The stream was reset, or the connection closed: wake whoever waits on it."""
        self.closed = True
        self.pending.clear()
        self.pending_bytes = 0
        for fut in (self._drain_waiter, self._closed_future, self._watched):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._drain_waiter = self._watched = None
        self._disconnected()
        if self.tunnel is not None:
            self.tunnel.lost()

    def tunnel_data(self, data: bytes, size: int) -> bool:
        """Bytes for the tunnelled protocol (held until it exists); True to acknowledge
        `size` now (False: once reading resumes)."""
        if self.tunnel is None:
            self.held.append(data)
            self.unacked += size
            return False
        if self.body_paused:
            self.unacked += size
        self.tunnel.data_received(data)
        return not self.body_paused

    def end_tunnel(self) -> None:
        """The tunnelled protocol closed: END_STREAM once what it wrote is sent."""
        if not self.closed and not self.ending:
            self.ending = True
            self.conn.push(self)

    def room(self) -> None:
        """Some of `pending` went out (or the socket drained): wake a waiting `drain()`."""
        if self.tunnel is not None:
            self.tunnel.drained()
        waiter = self._drain_waiter
        if waiter is not None and not self._over_low_water():
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _over_low_water(self) -> bool:
        """Still too much waiting for a `drain()` to return (the socket's, or ours)."""
        low = self.conn.state.settings.limits.write_buffer_low
        return self.conn.writing_paused or self.pending_bytes > low

    # --- ExchangeTransport -----------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        return self.conn.state

    @property
    def peer(self) -> tuple[str, int]:
        return self.conn.peer

    @property
    def eof(self) -> bool:
        # A stream's request always ends with END_STREAM; the client going away is a reset.
        return self.closed

    @property
    def writing_paused(self) -> bool:
        high = self.conn.state.settings.limits.write_buffer_high
        return self.conn.writing_paused or self.pending_bytes > high

    def keep_alive_after(self, exchange: Exchange) -> bool:
        return True  # a stream's end does not end its connection

    def send_continue(self, exchange: Exchange) -> None:
        if exchange.head.expect_continue and not exchange.started and not self.closed:
            exchange.head.expect_continue = False  # once
            if not exchange.body_complete:
                self.conn.send_headers(self, [(b":status", b"100")], False)

    def write_response(
        self,
        exchange: Exchange,
        status: int,
        headers: list[Header] | bytes,
        content_length: int,
        body: bytes,
    ) -> None:
        fields = self._fields(status, headers, content_length)
        self.ending = True
        if body:
            self.conn.send_headers(self, fields, False)
            self.write(body)
        else:
            self.conn.send_headers(self, fields, True)
            self.end_sent = True

    def write_prepared(self, exchange: Exchange, answer: PreparedAnswer) -> None:
        body = answer.body
        self.write_response(exchange, answer.status, answer.headers, len(body), body)

    def write_head(
        self,
        exchange: Exchange,
        status: int,
        headers: list[Header] | bytes,
        content_length: int | None,
    ) -> bool:
        self.conn.send_headers(self, self._fields(status, headers, content_length), False)
        return False  # HTTP/2 frames the body itself: never chunked

    def _fields(
        self, status: int, headers: list[Header] | bytes, content_length: int | None
    ) -> list[Header]:
        state = self.conn.state
        return response_fields(status, headers, content_length, state.date_line, state.server_line)

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.conn.push(self)

    def buffered(self) -> int:
        return self.pending_bytes

    async def drain(self) -> None:
        if self.closed:
            raise ClientDisconnected("stream reset")
        if not self.writing_paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self.conn.state.loop.create_future()
        await waiter
        if self.closed:
            raise ClientDisconnected("stream reset")

    async def send_file(self, file: BinaryIO, offset: int, count: int) -> None:
        """HTTP/2 frames every byte: the file is read in a worker thread and written in
        pieces, each after the stream drained."""
        loop = self.conn.state.loop
        executor = self.conn.state.file_executor()
        remaining, position = count, offset
        while remaining > 0:
            await self.drain()
            size = min(remaining, FILE_PIECE)
            data = await loop.run_in_executor(executor, _pread, file.fileno(), size, position)
            if not data:
                self.abort()
                raise ClientDisconnected("file shrank while being sent")
            if self.closed:
                raise ClientDisconnected("stream reset")
            self.write(data)
            position += len(data)
            remaining -= len(data)

    def pause_reading_for_body(self) -> None:
        self.body_paused = True

    def resume_reading_for_body(self) -> None:
        if self.body_paused:
            self.body_paused = False
            if self.unacked and not self.closed:
                size, self.unacked = self.unacked, 0
                self.conn.acknowledge(self, size)

    def closed_future(self) -> asyncio.Future[None]:
        fut = self._closed_future
        if fut is None:
            fut = self._closed_future = self.conn.state.loop.create_future()
            if self.closed:
                fut.set_result(None)
        return fut

    def on_disconnect(self, callback: Callable[[], object] | None) -> None:
        self._disconnect_callback = callback
        if callback is not None and self.closed:
            self._disconnected()

    def _disconnected(self) -> None:
        callback = self._disconnect_callback
        if callback is not None:
            self._disconnect_callback = None
            state = self.conn.state
            state.loop.call_soon(callback, context=state.context)

    def watch(self, fut: asyncio.Future[Any]) -> None:
        self._watched = fut

    def close(self) -> None:
        """Cut the response short: a stream ends for good with RST_STREAM (CANCEL)."""
        if not self.closed and not (self.ending and not self.pending):
            self.conn.reset(self, CANCEL)

    def abort(self) -> None:
        if not self.closed:
            self.conn.reset(self, CANCEL)

    def upgrade(self, exchange: Exchange, response: bytes, protocol: UpgradedProtocol) -> None:
        self.conn.upgrade(self, exchange, response, protocol)

    def exchange_finished(self, exchange: Exchange) -> None:
        if self.tunnel is not None:  # answered by the upgrade: the stream lives on
            self.conn.finished(self, exchange)
            return
        if not self.ending:
            self.ending = True
            if not self.closed:
                self.conn.push(self)
        self.conn.finished(self, exchange)

    def internal_error(self, exchange: Exchange) -> None:
        if self.closed and not exchange.finished:
            exchange._finish()
        elif not exchange.started:
            exchange.respond(
                500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error\n"
            )
        elif not exchange.finished:
            self.conn.reset(self, INTERNAL_ERROR)  # the client sees the body cut short
            exchange._finish()


CANCEL = 0x8
INTERNAL_ERROR = 0x2


def _pread(fd: int, size: int, position: int) -> bytes:
    return os.pread(fd, size, position)
