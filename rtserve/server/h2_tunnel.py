"""An HTTP/2 stream as the byte transport of the protocol an extended CONNECT (RFC 8441)
handed it to: a WebSocket on an h2 stream runs the same `WebSocketConnection` as on a socket.

`StreamTransport` is the small part of `asyncio.Transport` that protocol uses: writes go into
the stream (framed as DATA within the peer's windows), its write buffer is the stream's
pending bytes (with pause/resume_writing at the limits it sets), pausing reading holds the
stream's window shut, `close()` ends the stream and `abort()` resets it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtserve.server.h2_stream import H2Stream


class StreamTransport(asyncio.Transport):
    """The transport of one HTTP/2 stream's tunnelled protocol."""

    def __init__(
        self, stream: H2Stream, protocol: asyncio.Protocol, socket: asyncio.BaseTransport
    ) -> None:
        super().__init__()
        self._stream = stream
        self._protocol = protocol
        self._socket = socket
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._paused = False
        self._closing = False
        self._lost = False

    # --- what the protocol calls -----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._socket.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        stream = self._stream
        stream.write(bytes(data))
        if not self._paused and stream.pending_bytes > self._high:
            self._paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return self._stream.pending_bytes

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def pause_reading(self) -> None:
        self._stream.pause_reading_for_body()

    def resume_reading(self) -> None:
        self._stream.resume_reading_for_body()

    def is_closing(self) -> bool:
        return self._closing or self._stream.closed

    def close(self) -> None:
        """End the stream once what was written is sent."""
        if not self._closing:
            self._closing = True
            self._stream.end_tunnel()

    def abort(self) -> None:
        self._closing = True
        self._stream.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # --- what the stream tells it ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._lost:
            self._protocol.data_received(data)

    def eof_received(self) -> None:
        if not self._lost:
            self._protocol.eof_received()

    def drained(self) -> None:
        """Some of the stream's pending bytes went out."""
        if self._paused and self._stream.pending_bytes <= self._low and not self._lost:
            self._paused = False
            self._protocol.resume_writing()

    def lost(self) -> None:
        """The stream ended or was reset, or the connection closed."""
        if not self._lost:
            self._lost = True
            self._closing = True
            self._protocol.connection_lost(None)
