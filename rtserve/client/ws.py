"""A small asyncio WebSocket client over the sans-I/O core: the opening handshake of
rtserve.protocol.ws_client, the frame reader of rtserve.protocol.websocket (unmasked frames)
and the close handshake of rtserve.protocol.ws_close; this module only moves bytes.

The client: `ws = await connect("ws://host:port/path")`, then `await ws.send(str | bytes)`,
`await ws.recv()` (str for text, bytes for binary), `async for message in ws`, `ws.ping()`,
`await ws.close(code, reason)`; `async with await connect(url) as ws` closes on exit. Every
frame sent is masked; pings are answered and the close handshake is completed on its own. At
most `max_queue` received messages wait for `recv()`: beyond that the socket is not read (TCP
pushes back on the server). Once the connection is closed, `recv()` still returns what was
received before, then raises `ConnectionClosed(code, reason)`: the code of the close frame
received (1005 when it had none), the one sent for a violation by the server, or 1006 when the
connection ended without a close frame. Iteration ends quietly after a 1000 or 1001 close and
raises ConnectionClosed after any other.
"""

from __future__ import annotations

import asyncio
import os
import ssl as ssl_module
from collections import deque
from collections.abc import Sequence
from typing import cast

from rtserve.protocol.websocket import (
    BinaryMessage,
    CloseCode,
    CloseReceived,
    FrameReader,
    Opcode,
    Ping,
    Pong,
    TextMessage,
    WebSocketProtocolError,
    close_payload,
    encode_client_frame,
)
from rtserve.protocol.ws_client import (
    MAX_ERROR_BODY,
    MAX_HEAD,
    ConnectionClosed,
    HandshakeResponse,
    HeadersLike,
    InvalidHandshake,
    build_request,
    check_response,
    new_key,
    parse_response,
    parse_url,
)
from rtserve.protocol.ws_close import CloseHandshake, CloseState, CloseStep, Tcp

__all__ = ["ClientWebSocket", "ConnectionClosed", "InvalidHandshake", "connect"]

_CONNECTING, _REFUSED, _OPEN, _CLOSING, _CLOSED = range(5)


class ClientWebSocket(asyncio.Protocol):
    """One client WebSocket (made by `connect`); see the module docstring."""

    def __init__(
        self,
        request: bytes,
        key: str,
        subprotocols: Sequence[str],
        *,
        max_message_size: int,
        max_queue: int,
        close_timeout: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._key = key
        self._subprotocols = tuple(subprotocols)
        self._max_queue = max(1, max_queue)
        self.close_timeout = close_timeout
        self._reader = FrameReader(
            max_frame_size=max_message_size, max_message_size=max_message_size, masked=False
        )
        self._transport: asyncio.Transport | None = None
        self._state = _CONNECTING  # then _REFUSED, or _OPEN and _CLOSING as self._closing goes
        self._closing = CloseHandshake(client=True)
        self._head = bytearray()
        self._error_body_length = 0
        self.response: HandshakeResponse | None = None
        self.subprotocol: str | None = None
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._messages: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self._done = False  # no more messages will arrive (close frame seen, or failed)
        self._abort_timer: asyncio.TimerHandle | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._state == _CONNECTING:
            self._handshake_data(data)
        elif self._state == _REFUSED:
            if not self._opened.done():  # collecting the refusal's body
                self._head += data
                if len(self._head) >= self._error_body_length:
                    self._refused()
        elif self._state != _CLOSED:
            self._frames(data)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drainers()

    def connection_lost(self, exc: Exception | None) -> None:
        state, self._state = self._state, _CLOSED
        self._closing.lost()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        if state == _REFUSED and not self._opened.done():
            self._refused()
        elif state == _CONNECTING and not self._opened.done():
            reason = f": {exc}" if exc else ""
            self._opened.set_exception(
                InvalidHandshake(f"connection closed during handshake{reason}")
            )
        if self.close_code is None:
            self.close_code, self.close_reason = int(CloseCode.ABNORMAL), str(exc or "")
        self._done = True
        closed = ConnectionClosed(self.close_code, self.close_reason)
        for future, _ in self._pings.values():
            if not future.done():
                future.set_exception(closed)
                future.exception()  # retrieved: nobody has to await a ping
        self._pings.clear()
        self._wake_drainers()
        self._wake_receiver()
        if not self._lost.done():
            self._lost.set_result(None)

    # --- the handshake ---------------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._handshake_failed(InvalidHandshake("response head too long"))
            return
        head, rest = bytes(self._head[:end]), bytes(self._head[end + 4 :])
        try:
            self.response = response = parse_response(head)
            if response.status != 101:
                self._state = _REFUSED
                self._head = bytearray(rest)
                length = response.content_length
                self._error_body_length = min(length or 0, MAX_ERROR_BODY)
                if len(self._head) >= self._error_body_length:
                    self._refused()
                return
            self.subprotocol = check_response(response, self._key, self._subprotocols)
        except InvalidHandshake as exc:
            self._handshake_failed(exc)
            return
        self._head = bytearray()
        self._state = _OPEN
        if not self._opened.done():
            self._opened.set_result(None)
        if rest:
            self._frames(rest)

    def _refused(self) -> None:
        response = self.response
        assert response is not None
        body = bytes(self._head[:MAX_ERROR_BODY])
        error = InvalidHandshake(
            f"server answered {response.status} {response.reason} instead of 101",
            response.status,
            body,
        )
        self._handshake_failed(error)

    def _handshake_failed(self, exc: InvalidHandshake) -> None:
        if self._state != _CLOSED:
            self._state = _REFUSED  # whatever comes next is ignored
        if not self._opened.done():
            self._opened.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    # --- frames ----------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        failure: WebSocketProtocolError | None = None
        try:
            events = self._reader.feed(data)
        except WebSocketProtocolError as exc:
            failure, events = exc, exc.events
        for event in events:
            if type(event) is TextMessage or type(event) is BinaryMessage:
                self._messages.append(event.data)
            elif type(event) is Ping:
                if self._state == _OPEN:
                    self._write(encode_client_frame(Opcode.PONG, event.data))
            elif type(event) is Pong:
                self._pong(event.data)
            elif type(event) is CloseReceived:
                self._close_received(event)
        if self._messages:
            self._wake_receiver()
            if len(self._messages) >= self._max_queue and not self._reading_paused:
                if self._transport is not None and self._state != _CLOSED:
                    self._reading_paused = True
                    self._transport.pause_reading()
        if failure is not None:
            self._fail(failure.code, failure.reason)

    def _pong(self, data: bytes) -> None:
        if data not in self._pings:
            return
        now = self._loop.time()
        while self._pings:  # a pong answers its ping and every ping sent before it
            payload, (future, sent) = next(iter(self._pings.items()))
            del self._pings[payload]
            if not future.done():
                future.set_result(now - sent)
            if payload == data:
                break

    def _close_received(self, event: CloseReceived) -> None:
        self._done = True
        if self.close_code is None:  # the server's close, or its answer to ours
            self.close_code, self.close_reason = event.code, event.reason
        self._closing_step(self._closing.receive(event.code, event.reason))
        self._wake_receiver()

    def _fail(self, code: int, reason: str) -> None:
        """The server broke the protocol: send the close frame and drop the connection."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._done = True
        self._closing_step(self._closing.fail(code, reason))
        self._wake_receiver()

    def _closing_step(self, step: CloseStep) -> None:
        """Carry out a step of the close handshake: its close frame, then the TCP connection
        (the server ends it, RFC 6455 7.1.1: we wait close_timeout for that, then abort)."""
        if self._state == _OPEN and self._closing.state is not CloseState.OPEN:
            self._state = _CLOSING
        if step.send is not None:
            self._write(encode_client_frame(Opcode.CLOSE, close_payload(*step.send)))
        if step.tcp is Tcp.END and self._transport is not None:
            self._transport.close()
        if step.tcp is not Tcp.KEEP:
            self._arm_abort()

    def _arm_abort(self) -> None:
        if self._abort_timer is None and self._state != _CLOSED:
            self._abort_timer = self._loop.call_later(self.close_timeout, self.abort)

    def _write(self, frame: bytes) -> None:
        if self._transport is not None and self._state != _CLOSED:
            self._transport.write(frame)

    def _wake_receiver(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _closed_error(self) -> ConnectionClosed:
        code = self.close_code if self.close_code is not None else int(CloseCode.ABNORMAL)
        return ConnectionClosed(code, self.close_reason)

    # --- the API ---------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    @property
    def closed(self) -> bool:
        """Whether the TCP connection is gone."""
        return self._state == _CLOSED

    async def recv(self) -> str | bytes:
        """The next message (str or bytes); ConnectionClosed once none can come any more."""
        while True:
            if self._messages:
                message = self._messages.popleft()
                if self._reading_paused and len(self._messages) < self._max_queue // 2 + 1:
                    self._reading_paused = False
                    if self._transport is not None and self._state != _CLOSED:
                        self._transport.resume_reading()
                return message
            if self._done or self._state == _CLOSED:
                raise self._closed_error()
            if self._waiter is not None:
                raise RuntimeError("recv() is already being awaited by another task")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send one message (str as text, bytes-like as binary); waits while the transport's
        buffer is full. ConnectionClosed when the connection is closing or closed."""
        if self._state != _OPEN:
            raise self._closed_error()
        if isinstance(message, str):
            frame = encode_client_frame(Opcode.TEXT, message.encode("utf-8"))
        elif isinstance(message, bytes | bytearray | memoryview):
            frame = encode_client_frame(Opcode.BINARY, bytes(message))
        else:
            raise TypeError(f"a message is str or bytes, not {type(message).__name__}")
        self._write(frame)
        while self._writing_paused and self._state != _CLOSED:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self._state == _CLOSED:
            raise self._closed_error()

    def ping(self, data: bytes | None = None) -> asyncio.Future[float]:
        """Send a ping; the Future gives the round trip in seconds when the pong arrives (or
        ConnectionClosed). `data` defaults to 4 random bytes."""
        if self._state != _OPEN:
            raise self._closed_error()
        if data is None:
            data = os.urandom(4)
            while data in self._pings:
                data = os.urandom(4)
        elif data in self._pings:
            raise ValueError("a ping with this payload is already waiting for its pong")
        future: asyncio.Future[float] = self._loop.create_future()
        self._pings[data] = (future, self._loop.time())
        self._write(encode_client_frame(Opcode.PING, data))
        return future

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close: send a close frame, wait for the server's and for the TCP connection to end
        (at most `close_timeout`, then abort)."""
        if self._state == _OPEN:
            self._closing_step(self._closing.close(code, reason))  # ValueError: a bad code
        elif self._state in (_CONNECTING, _REFUSED):
            self.abort()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is gone."""
        await asyncio.shield(self._lost)

    def abort(self) -> None:
        """Drop the TCP connection at once (no close handshake)."""
        if self._transport is not None and self._state != _CLOSED:
            self._transport.abort()

    def __aiter__(self) -> ClientWebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosed as exc:
            if exc.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                raise StopAsyncIteration from None
            raise

    async def __aenter__(self) -> ClientWebSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(
    url: str,
    *,
    headers: HeadersLike | None = None,
    subprotocols: Sequence[str] | None = None,
    origin: str | None = None,
    max_message_size: int = 16 * 1024 * 1024,
    max_queue: int = 64,
    open_timeout: float = 10.0,
    close_timeout: float = 5.0,
    ssl: ssl_module.SSLContext | None = None,
) -> ClientWebSocket:
    """Open a WebSocket to a ws:// or wss:// URL (wss: `ssl`, or the default context).

    Raises InvalidHandshake when the server refuses, OSError when it cannot be reached and
    TimeoutError when the whole opening takes over `open_timeout` seconds.
    """
    where = parse_url(url)
    key = new_key()
    protocols = tuple(subprotocols or ())
    request = build_request(
        where.host_header, where.target, key, subprotocols=protocols, headers=headers, origin=origin
    )
    ws = ClientWebSocket(
        request,
        key,
        protocols,
        max_message_size=max_message_size,
        max_queue=max_queue,
        close_timeout=close_timeout,
    )
    context = None
    if where.secure:
        context = ssl if ssl is not None else ssl_module.create_default_context()
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(open_timeout):
            await loop.create_connection(
                lambda: ws,
                where.host,
                where.port,
                ssl=context,
                server_hostname=where.host if context is not None else None,
            )
            await ws._opened
    except TimeoutError:
        ws.abort()
        raise TimeoutError(f"opening {url} took over {open_timeout} s") from None
    except BaseException:
        ws.abort()
        raise
    return ws
