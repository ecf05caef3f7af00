"""One SSE event shared by many streams in a loop turn: a channel fan-out's hot path on /rt/sse.

A publication's event bytes, and their HTTP/1.1 chunk (`size\\r\\n...\\r\\n`, the same for every
stream), are built once. A stream that can take the chunk now without anything being
overtaken (`SSEStream.direct_after`: streaming chunked on HTTP/1.1, nothing queued for its
end-of-tick write, nothing held back or gathered by its outbox) and whose connection is
neither paused nor closed takes it by reference: its counters and its transport appended to
the shared chunk, which `rtserve.server.shared_write` writes when the turn ends, one
`transport.write` per stream. The others are handed back for `deliver` (budget, slow-consumer
policy, one write per tick). A stream takes at most one chunk so per turn; whatever it is
given after it in the turn first moves the chunk's event into its own queue (`_block`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol, TypeVar

from rtserve.protocol.http11 import encode_chunk
from rtserve.server.shared_write import SharedFrame, share

if TYPE_CHECKING:
    from rtserve.realtime.outbound import Outbound
    from rtserve.server.exchange import Exchange
    from rtserve.server.state import ServerStats
    from rtserve.server.transport import ChunkWire

# `direct_after` of a stream that may not take a shared chunk now; one that may has DIRECT
# (below any turn of `rtserve.server.shared_write`), one that took one the turn's number.
BLOCKED = 1 << 62
DIRECT = -1


class SharedEvent(SharedFrame):
    """An event's chunk taken by some streams this turn (`frame`), and the event itself, for
    a stream that moves it into its own queue."""

    __slots__ = ("event",)
    ws_frames = False  # a chunk of an SSE body is no WebSocket frame

    def __init__(self, chunk: bytes, event: bytes, stats: ServerStats | None) -> None:
        super().__init__(chunk, stats)
        self.event = event


class DirectStream(Protocol):
    """What `share_event` reads and sets of a stream (an `SSEStream`)."""

    direct_after: int  # DIRECT, BLOCKED or the turn it took a chunk in
    shared: SharedEvent | None  # the last chunk it took
    wire: ChunkWire | None  # its connection, while it may take chunks
    exchange: Exchange


S = TypeVar("S", bound=DirectStream)


def share_event(streams: Collection[S], message: Outbound) -> list[S]:
    """Give `message`'s event, chunked once, to every stream of `streams` that can take it
    now (written at the end of the turn); the others, in order, for `deliver`.

    Nothing in the loop calls back into the app, so `streams` may be the live collection of
    a caller.
    """
    if not streams:
        return []
    event = message.sse
    chunk = encode_chunk(event)
    shared = SharedEvent(chunk, event, next(iter(streams)).exchange.state.stats)
    turn = share(shared)
    if turn is None:
        return list(streams)
    transports = shared.transports
    size, data_size = len(chunk), len(event)
    others: list[S] = []
    for stream in streams:
        if stream.direct_after < turn:
            wire: ChunkWire = stream.wire  # type: ignore[assignment]  # never DIRECT without
            if not (wire.writing_paused or wire.closed):
                stream.direct_after = turn
                stream.shared = shared
                wire.bytes_out += size  # as the connection's own write would count it
                stream.exchange.response_bytes += data_size
                transports.append(wire.transport)
                continue
        others.append(stream)
    return others
