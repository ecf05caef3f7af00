"""One request/response exchange on an HTTP/1.1 connection, as the app layer sees it.

The app reads the request head and body from it and answers through it: `respond()` writes a
whole response at once; `start()`/`write()`/`drain()`/`end()` stream one; `sendfile()` sends
part of a file without reading it into Python. Exactly one answer per exchange.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from time import perf_counter
from typing import TYPE_CHECKING, Any, BinaryIO

from rtserve.errors import RtserveError
from rtserve.protocol.http11 import (
    LAST_CHUNK,
    Header,
    RequestHead,
    encode_chunk,
    response_head,
)
from rtserve.server.sendfile import sendfile_in_thread

if TYPE_CHECKING:
    from rtserve.server.connection import HTTPConnection


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
        "body",
        "body_complete",
        "conn",
        "finished",
        "head",
        "head_only",
        "response_bytes",
        "scope",
        "start_time",
        "started",
        "status",
        "streaming",
        "task",
    )

    def __init__(self, conn: HTTPConnection, head: RequestHead, start_time: float) -> None:
        self.conn = conn
        self.head = head
        self.start_time = start_time
        self.body = b""
        self.body_complete = head.content_length is None and not head.chunked
        self.head_only = head.method == "HEAD"
        self.streaming = False
        self.started = False
        self.finished = False
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
        return self.conn.peer

    @property
    def client_and_scheme(self) -> tuple[str, str]:
        """(client address, scheme), trusting forwarding headers only from trusted proxies."""
        if self._client is None:
            state = self.conn.state
            self._client = state.proxies.resolve(self.conn.peer[0], state.scheme, self.head.headers)
        return self._client

    @property
    def disconnected(self) -> bool:
        """The client closed the connection, or at least its sending side."""
        return self.conn.closed or self.conn.eof

    def wait_disconnected(self) -> asyncio.Future[None]:
        """A future that completes when the client closes the connection (or its side of it)."""
        return self.conn.closed_future()

    def _feed(self, data: bytes) -> None:
        pieces = self._pieces
        if pieces is None:
            pieces = self._pieces = []
        pieces.append(data)
        if self.streaming:
            self._streamed += len(data)
            if self._streamed > STREAM_HIGH_WATER:
                self.conn.pause_reading_for_body()
            self._wake_body()

    def _start_streaming(self) -> None:
        """From now on the handler takes the body as it comes (what arrived is kept)."""
        self.streaming = True
        self._streamed = sum(len(p) for p in self._pieces or ())

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
        self.conn.send_continue(self)
        loop = self.conn.state.loop
        while True:
            while self._pieces:
                pieces, self._pieces = self._pieces, None
                for data in pieces:
                    self._streamed -= len(data)
                    if self._streamed <= STREAM_HIGH_WATER:
                        self.conn.resume_reading_for_body()
                    yield data
            if self.body_complete:
                return
            if self.conn.closed:
                raise ClientDisconnected("client disconnected during the request body")
            self._body_waiter = loop.create_future()
            self.conn.watch(self._body_waiter)
            await self._body_waiter
            self._body_waiter = None

    # --- response side ---------------------------------------------------------------------

    def respond(self, status: int, headers: list[Header] | bytes, body: bytes = b"") -> None:
        """Send a complete response with `body` and finish the exchange."""
        if self.started:
            raise RuntimeError("response already started")
        conn = self.conn
        state = conn.state
        head = response_head(
            status,
            headers,
            content_length=len(body),
            keep_alive=conn.keep_alive_after(self),
            date=state.date_line,
            server=state.server_line,
            http10=self.head.version == "1.0",
        )
        self.started = True  # only now: a bad header above leaves room for a 500
        self.status = status
        state.stats.http_latency.observe(perf_counter() - self.start_time)
        if self.head_only or status == 304 or status == 204:
            body = b""
        self.response_bytes = len(body)
        if not conn.closed:
            n = len(head) + len(body)
            conn.bytes_out += n
            conn.state.stats.bytes_sent += n
            if len(body) > 4096:
                conn.transport.writelines((head, body))
            else:
                conn.transport.write(head + body)
        self._finish()

    def start(self, status: int, headers: list[Header], content_length: int | None = None) -> None:
        """Send the head of a streamed response; `content_length=None` streams chunked."""
        if self.started:
            raise RuntimeError("response already started")
        conn = self.conn
        http10 = self.head.version == "1.0"
        if content_length is None and http10:
            conn.must_close = True  # HTTP/1.0 has no chunking: the body ends when we close
        else:
            self._chunked = content_length is None
        head = response_head(
            status,
            headers,
            content_length=content_length,
            keep_alive=conn.keep_alive_after(self),
            date=conn.state.date_line,
            server=conn.state.server_line,
            http10=http10,
        )
        self.started = True
        self.status = status
        conn.state.stats.http_latency.observe(perf_counter() - self.start_time)
        if not conn.closed:
            conn._sent(len(head))
            conn.transport.write(head)

    def write(self, data: bytes) -> None:
        """Queue one piece of a streamed response body. Raises ClientDisconnected."""
        if not self.started:
            raise RuntimeError("call start() before write()")
        if self.finished:
            raise RuntimeError("response already finished")
        if self.conn.closed:
            raise ClientDisconnected("client disconnected")
        if not data or self.head_only:
            return
        self.response_bytes += len(data)
        out = encode_chunk(data) if self._chunked else data
        conn = self.conn
        conn.bytes_out += len(out)
        conn.state.stats.bytes_sent += len(out)
        conn.transport.write(out)

    async def drain(self) -> None:
        """Wait until the client has taken enough of what was written. Raises ClientDisconnected."""
        await self.conn.drain()

    def end(self) -> None:
        """Finish a streamed response."""
        if self.finished:
            return
        if self._chunked and not self.head_only and not self.conn.closed:
            self.conn._sent(len(LAST_CHUNK))
            self.conn.transport.write(LAST_CHUNK)
        self._finish()

    async def sendfile(self, file: BinaryIO, offset: int, count: int) -> None:
        """Send `count` bytes of `file` from `offset` as the body (after `start`).

        Uses the kernel's sendfile on plain TCP (from a worker thread under uvloop); under TLS
        it reads in a worker thread instead. Never blocks the event loop.
        """
        if self.head_only or count <= 0:
            return
        conn = self.conn
        if conn.closed:
            raise ClientDisconnected("client disconnected")
        self.response_bytes += count
        conn._sent(count)
        await conn.drain()
        loop = conn.state.loop
        if conn.state.ssl_context is None and hasattr(os, "sendfile"):
            try:
                await loop.sendfile(conn.transport, file, offset, count, fallback=False)
                return
            except (NotImplementedError, asyncio.SendfileNotAvailableError):
                pass  # uvloop: do it ourselves below
            try:
                sent = await sendfile_in_thread(conn, file.fileno(), offset, count)
            except OSError as exc:  # the client reset, or stalled past timeouts.send
                conn.abort()
                raise ClientDisconnected(str(exc)) from None
            if sent != count:
                conn.abort()  # a short body: the client must not take it for a whole one
                raise ClientDisconnected("file body cut short")
            return
        remaining, position = count, offset
        while remaining > 0:
            size = min(remaining, 256 * 1024)
            data = await loop.run_in_executor(None, os.pread, file.fileno(), size, position)
            if not data:
                raise ClientDisconnected("file shrank while being sent")
            if conn.closed:
                raise ClientDisconnected("client disconnected")
            conn.transport.write(data)
            position += len(data)
            remaining -= len(data)
            await conn.drain()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.conn.exchange_finished(self)
