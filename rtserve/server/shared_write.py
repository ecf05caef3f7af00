"""One shared frame for many WebSocket connections without a queue each: a fan-out's hot path.

A connection that can take a frame now without anything being overtaken (open, nothing
queued for its end-of-turn write, its transport under the high-water mark, no deflate, no
write delay, its app holding nothing back: `WebSocketConnection.direct_after`) takes it by
reference (its transport kept, its `bytes_out` counted), with no flush scheduled and no
budget arithmetic; at the end of the loop turn one walk over those transports writes it, one
`transport.write` each, and adds the server's counters once for all. The others are
handed back for the full path (budget, slow-consumer policy, batching). A connection takes
at most one frame so per turn; whatever it is given after it in the same turn (a second
publication, a reply) is queued behind it, so a turn still costs one write per connection.
Takers of another kind (SSE streams, `rtserve.realtime.sse_shared`) hand their frame to the
same end-of-turn walk with `share`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rtserve.server.state import ServerStats
    from rtserve.server.websocket import WebSocketConnection

log = logging.getLogger("rtserve.websocket")
K = TypeVar("K")
NO_TURN = -2  # below DIRECT: outside a running loop no connection takes a frame directly


class SharedFrame:
    """A frame taken by some connections this turn, to write to their transports when it
    ends (those moved into their own queue meanwhile excepted)."""

    __slots__ = ("frame", "moved", "stats", "transports", "written")
    ws_frames = True  # `write` counts a WebSocket frame per transport (an SSE chunk is none)

    def __init__(self, frame: bytes, stats: ServerStats | None = None) -> None:
        self.frame = frame
        self.transports: list[asyncio.Transport] = []  # of the connections that took it
        self.moved: set[asyncio.Transport] | None = None  # queued by their connection since
        self.stats = stats  # the server's (a fan-out's connections share one server)
        self.written = False

    def move(self, transport: asyncio.Transport) -> None:
        """A connection that took the frame queues it itself (something comes after it)."""
        if self.moved is None:
            self.moved = set()
        self.moved.add(transport)

    def write(self) -> None:
        """Write the frame to every transport that took it and was not moved; then let go of
        them (a taker keeps its last frame: a closed one's transport must not stay reachable)."""
        self.written = True
        frame = self.frame
        moved, self.moved = self.moved, None
        transports, self.transports = self.transports, []
        count = len(transports)
        if moved is None:
            for transport in transports:
                try:
                    transport.write(frame)
                except Exception:  # one transport's failure is not the others'
                    log.exception("shared frame not written")
        else:
            count -= len(moved)
            for transport in transports:
                if transport not in moved:
                    try:
                        transport.write(frame)
                    except Exception:
                        log.exception("shared frame not written")
        stats = self.stats
        if stats is not None and count:
            stats.bytes_sent += count * len(frame)
            if self.ws_frames:
                stats.ws_frames_sent += count


class Turn:
    """One loop's turn number, and the shared frames to write when the turn ends."""

    __slots__ = ("_scheduled", "frames", "loop", "now")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.now = 0
        self.loop = loop
        self._scheduled = False
        self.frames: list[SharedFrame] = []

    def current(self) -> int:
        """This turn's number; it moves on when the turn's shared frames are written, in
        the loop's next iteration."""
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._end)
        return self.now

    def _end(self) -> None:
        frames, self.frames = self.frames, []
        self._scheduled = False
        self.now += 1
        for shared in frames:
            shared.write()


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Turn] = weakref.WeakKeyDictionary()
_last: Turn | None = None  # the last one asked for (one loop per process, most often)


def this_turn() -> Turn | None:
    """The running loop's Turn (None outside one: nothing is taken directly then)."""
    global _last
    loop = asyncio._get_running_loop()
    if loop is None:
        return None
    turn = _last
    if turn is None or turn.loop is not loop:
        turn = _turns.get(loop)
        if turn is None:
            turn = _turns[loop] = Turn(loop)
        _last = turn
    return turn


def turn_now() -> int | None:
    """The running loop's turn number (None outside one)."""
    turn = this_turn()
    return None if turn is None else turn.current()


def share(shared: SharedFrame) -> int | None:
    """Have `shared` written when this loop turn ends, to the transports its takers append to
    `shared.transports` meanwhile (a caller with connections of its own kind: SSE streams);
    this turn's number, which a taker's `direct_after` is compared with, or None outside a
    running loop (nothing is taken then)."""
    loop_turn = this_turn()
    if loop_turn is None:
        return None
    turn = loop_turn.current()
    loop_turn.frames.append(shared)
    return turn


def write_shared(wires: Mapping[K, WebSocketConnection], frame: bytes) -> list[K]:
    """Give `frame` to every connection of `wires` that can take it now (written at the end
    of the turn); the keys of the others, in order, for the full path.

    Nothing in the loop calls back into the app, so `wires` may be the live mapping of a
    caller.
    """
    loop_turn = this_turn()
    if loop_turn is None or not wires:
        return list(wires)
    turn = loop_turn.current()
    shared = SharedFrame(frame, next(iter(wires.values())).state.stats)
    transports = shared.transports
    size = len(frame)
    others: list[K] = []
    for key, conn in wires.items():
        if conn.direct_after < turn:
            conn.direct_after = turn
            conn.shared = shared
            conn.bytes_counted += size  # here: the write touches only the transport
            transports.append(conn.transport)  # (a list's own append: the fastest call)
        else:
            others.append(key)
    if transports:
        loop_turn.frames.append(shared)
    return others
