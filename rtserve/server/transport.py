"""The seams of a connection: towards its exchanges, and towards the server and stats.

`ExchangeTransport` is all an `Exchange` may ask of its connection: HTTP/1.1's
`HTTPConnection` implements it, and so does an HTTP/2 stream (`H2Stream`). The connection
frames responses: the exchange hands it status, headers and body.
Nothing outside `rtserve.server` sees it: the app layer talks to the `Exchange` only.

`Served` is what the server (deadlines, shutdown) and stats (`describe()`) need of any live
connection, HTTP or WebSocket: `ServerState.connections` holds them.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rtserve.protocol.http11 import Header
    from rtserve.server.exchange import Exchange
    from rtserve.server.prepared import PreparedAnswer
    from rtserve.server.state import ServerState


class ExchangeTransport(Protocol):
    """What an exchange needs from the connection it was read from."""

    @property
    def state(self) -> ServerState:
        """The server state the connection belongs to."""
        ...

    @property
    def peer(self) -> tuple[str, int]:
        """The direct peer (address, port); ("", 0) for unix sockets."""
        ...

    @property
    def closed(self) -> bool:
        """The connection is closed (by either side)."""
        ...

    @property
    def eof(self) -> bool:
        """The client closed its sending side."""
        ...

    @property
    def writing_paused(self) -> bool:
        """The write buffer is over its high-water mark."""
        ...

    must_close: bool  # close the connection once the current response is complete

    def keep_alive_after(self, exchange: Exchange) -> bool:
        """Whether the connection stays open after `exchange`'s response."""
        ...

    def send_continue(self, exchange: Exchange) -> None:
        """Answer `Expect: 100-continue` once, when the body is actually wanted."""
        ...

    def write(self, data: bytes) -> None:
        """Write and count `data` (the caller checked `closed`)."""
        ...

    def write_response(
        self,
        exchange: Exchange,
        status: int,
        headers: list[Header] | bytes,
        content_length: int,
        body: bytes,
    ) -> None:
        """Frame and write a whole response to `exchange` (the caller checked `closed`).
        `body` is b"" for HEAD, 204 and 304; `content_length` the full body's. Raises
        ValueError for a bad header before writing anything."""
        ...

    def write_prepared(self, exchange: Exchange, answer: PreparedAnswer) -> None:
        """Write `answer` whole to `exchange` (the caller checked `closed`, and that the body
        is sent: no HEAD, 204 or 304): HTTP/1.1 writes its shared framing, HTTP/2 frames it as
        any response."""
        ...

    def write_head(
        self,
        exchange: Exchange,
        status: int,
        headers: list[Header] | bytes,
        content_length: int | None,
    ) -> bool:
        """Frame and write the head of a streamed response (the caller checked `closed`);
        True when the exchange must chunk what it writes (HTTP/1.1 without a length)."""
        ...

    def buffered(self) -> int:
        """Bytes written and not yet handed to the socket."""
        ...

    async def drain(self) -> None:
        """Wait until the client took enough of what was written. Raises ClientDisconnected."""
        ...

    async def send_file(self, file: BinaryIO, offset: int, count: int) -> None:
        """Send `count` bytes of `file` from `offset`. Raises ClientDisconnected."""
        ...

    def pause_reading_for_body(self) -> None:
        """Stop reading: the streamed body's taker is behind."""
        ...

    def resume_reading_for_body(self) -> None:
        """Read again: the streamed body's taker caught up."""
        ...

    def closed_future(self) -> asyncio.Future[None]:
        """A future that completes when the client closes the connection (or its side)."""
        ...

    def on_disconnect(self, callback: Callable[[], object] | None) -> None:
        """Call `callback` (once, soon, in the server's context) when the client closes the
        connection or its side of it, as `closed_future()` would complete; None forgets it.
        One at a time: a waiting answer's, without a future."""
        ...

    def watch(self, fut: asyncio.Future[Any]) -> None:
        """Complete `fut` if the connection is lost while something waits on it."""
        ...

    def close(self) -> None:
        """Close once what was written is sent."""
        ...

    def abort(self) -> None:
        """Close now, dropping what was not sent."""
        ...

    def upgrade(self, exchange: Exchange, response: bytes, protocol: UpgradedProtocol) -> None:
        """Answer `exchange` with `response` (a 101) and hand the socket to `protocol`."""
        ...

    def exchange_finished(self, exchange: Exchange) -> None:
        """`exchange`'s response is complete."""
        ...

    def internal_error(self, exchange: Exchange) -> None:
        """`exchange`'s handler failed: answer 500, or cut the response short."""
        ...


@runtime_checkable
class ChunkWire(Protocol):
    """An HTTP/1.1 connection as a taker of chunks shared by many streamed responses
    (`Exchange.chunk_wire`): written straight to `transport` at the end of the loop turn
    (`rtserve.server.shared_write`), counted in `bytes_out` by the taker; nothing is taken
    while `writing_paused` or `closed`."""

    transport: asyncio.Transport
    bytes_out: int
    writing_paused: bool
    closed: bool


class UpgradedProtocol(asyncio.Protocol):
    """What a connection is handed to on an upgrade (a WebSocket connection): a protocol
    that says whether it is still open, which the upgraded exchange reports to its request."""

    __slots__ = ()

    @property
    @abstractmethod
    def closed(self) -> bool:
        """The connection is closed (by either side)."""

    @abstractmethod
    def closed_future(self) -> asyncio.Future[None]:
        """A future that completes when the connection closes."""


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What a live connection says of itself when stats list it."""

    state: str  # HTTP: idle, head, body, busy, send; WebSocket: open, closing
    path: str | None  # of the request being answered, or of the WebSocket's request
    queued_bytes: int  # written and not yet taken by the kernel


class Served(Protocol):
    """What the server and stats need of a live connection (HTTP or WebSocket)."""

    @property
    def kind(self) -> str:
        """`http` or `websocket`."""
        ...

    @property
    def handler(self) -> object | None:
        """The app a WebSocket hands its messages to; None for HTTP."""
        ...

    @property
    def peer(self) -> tuple[str, int]:
        """The direct peer (address, port); ("", 0) for unix sockets."""
        ...

    @property
    def deadline(self) -> float:
        """When `on_timeout()` is due (the loop's clock); inf for never."""
        ...

    @property
    def bytes_in(self) -> int:
        """Bytes read from the client."""
        ...

    @property
    def bytes_out(self) -> int:
        """Bytes written to the client."""
        ...

    def on_timeout(self) -> None:
        """The deadline passed (the server's ticker calls this)."""
        ...

    def begin_shutdown(self) -> None:
        """The server shuts down: close when idle, or once the current answer is done."""
        ...

    def abort(self) -> None:
        """Close now, dropping what was not sent."""
        ...

    def disconnect(self, code: int, reason: str) -> None:
        """Close on an operator's word (a WebSocket sends `code` and `reason`)."""
        ...

    def queued(self) -> int:
        """Bytes waiting to be sent as the last write left them: cheap, to rank connections."""
        ...

    def describe(self) -> ConnectionInfo:
        """The connection's state, path and exact queued bytes, for a listing."""
        ...
