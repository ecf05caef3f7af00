"""One shared frame written straight to many WebSocket transports: a fan-out's hot path.

A connection that can take a frame now without anything being overtaken (open, nothing
queued for its end-of-turn write, its transport under the high-water mark, no deflate, no
write delay, its app holding nothing back: `WebSocketConnection.direct_after`) gets it in one
`transport.write`, with no flush scheduled; the others are handed back for the full path
(budget, slow-consumer policy, batching). A connection takes at most one direct write per loop
turn: the frames that follow in the same turn are queued, so they go out in one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rtserve.server.websocket import WebSocketConnection

K = TypeVar("K")
NO_TURN = -2  # below DIRECT: no direct write


class _Turns:
    """A number that changes once per loop turn in which a direct write was made."""

    __slots__ = ("_pending", "now")

    def __init__(self) -> None:
        self.now = 0
        self._pending: asyncio.AbstractEventLoop | None = None

    def current(self) -> int:
        """This turn's number (it moves on at the start of the next turn); outside a running
        loop, one no connection may write directly in."""
        loop = asyncio._get_running_loop()
        if loop is None:
            return NO_TURN
        if self._pending is not loop:
            self._pending = loop
            loop.call_soon(self._advance)
        return self.now

    def _advance(self) -> None:
        self.now += 1
        self._pending = None


turns = _Turns()


def write_shared(wires: Mapping[K, WebSocketConnection], frame: bytes) -> list[K]:
    """Write `frame` straight to every connection of `wires` that can take it now (one
    `transport.write` each, counted once for all); the keys of the others, in order.

    Nothing in the loop calls back into the app (a transport that goes over its high-water
    mark only marks its connection), so `wires` may be the live mapping of a caller.
    """
    turn = turns.current()
    size = len(frame)
    others: list[K] = []
    last = None
    for key, conn in wires.items():
        if conn.direct_after < turn:
            conn.direct_after = turn  # before the write: pause_writing may block it
            conn.transport.write(frame)
            conn.bytes_out += size
            last = conn
        else:
            others.append(key)
    if last is not None:
        count_written(last, len(wires) - len(others), size)
    return others


def count_written(conn: WebSocketConnection, written: int, size: int) -> None:
    """Add `written` direct writes of `size` bytes to the server's counters (those of
    `conn`'s server: a fan-out's connections share it); per connection they are counted
    one by one."""
    stats = conn.state.stats
    stats.bytes_sent += written * size
    stats.ws_frames_sent += written
