"""The answer to a connection over `server.max_connections`: read its request head, answer
503 with `Retry-After` and `Connection: close` (over HTTP/2: GOAWAY, no stream processed), and
go; it never reaches the app, and it does not count among the server's connections.

Reading the head first matters: closing a socket with unread request bytes makes the kernel
send a reset, which can destroy the 503 before the client reads it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtserve.server.state import ServerState

BUSY_BODY = b"server busy: too many connections, retry later\n"
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(BUSY_BODY)).encode() + b"\r\n\r\n" + BUSY_BODY
)
# HTTP/2 (a connection whose TLS handshake picked h2): the server preface (an empty SETTINGS)
# and a GOAWAY that says no stream was processed (last stream 0, NO_ERROR), so the client may
# retry on a new connection. Raw frames: h2 is an optional dependency.
BUSY_H2_RESPONSE = (
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS, empty
    + (8 + len(BUSY_BODY)).to_bytes(3, "big")
    + b"\x07\x00\x00\x00\x00\x00"  # GOAWAY on stream 0
    + bytes(8)  # last stream id 0, error code NO_ERROR
    + BUSY_BODY  # debug data
)
HEAD_WAIT = 5.0  # seconds a refused connection has to send its request head


class BusyConnection(asyncio.Protocol):
    """One refused connection (see the module docstring)."""

    def __init__(self, state: ServerState, http2: bool = False) -> None:
        self.state = state
        self.answer = BUSY_H2_RESPONSE if http2 else BUSY_RESPONSE
        self.transport: asyncio.Transport | None = None
        self.seen = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        state = self.state
        state.stats.connections_refused += 1
        state.refusing += 1
        wait = min(HEAD_WAIT, state.settings.timeouts.header)
        self.timer = state.loop.call_later(wait, self._answer)

    def data_received(self, data: bytes) -> None:
        self.seen = (self.seen + data)[-4:]  # only the end of the head is looked for
        # HTTP/2: the preface ends with a blank line too; its SETTINGS follow in the same read
        if b"\r\n\r\n" in self.seen or b"\n\n" in self.seen or self.answer is BUSY_H2_RESPONSE:
            self._answer()

    def eof_received(self) -> bool:
        self._answer()
        return False

    def _answer(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(self.answer)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state.refusing -= 1
        self.transport = None
