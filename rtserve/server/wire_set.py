"""A fan-out's prepared list: a set of WebSocket connections (a channel's, a broadcast group's)
that keeps the transports of its members on the direct path apart, so that a publication
walks those transports only and touches no connection object.

A member is on its set's fast list while it may take a shared frame directly
(`WebSocketConnection._direct_check`: open, nothing queued, not paused, no deflate or write
delay, its app holding nothing back) and belongs to no other set. It leaves the list the
moment that stops (anything else given to it, a pause, a hold, its close, a second set),
settling its byte count and moving a frame it took this turn and that is not written yet into
its own queue first; it comes back when its queue is written. The other members take the
per-connection path (`shared_write.write_shared`), and if the set is published to a second
time in a turn all of them do (one write per connection per turn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from rtserve.server.shared_write import SharedFrame, this_turn, write_shared

if TYPE_CHECKING:
    from rtserve.server.state import ServerStats
    from rtserve.server.websocket import WebSocketConnection

K = TypeVar("K")


class WireSet(Generic[K]):
    """Members (key -> connection), the transports of those on the fast list prepared."""

    __slots__ = ("fast", "members", "pending", "pending_seq", "rest", "sent", "seq", "stats")

    def __init__(self) -> None:
        self.members: dict[K, WebSocketConnection] = {}
        self.fast: dict[WebSocketConnection, asyncio.Transport] = {}  # on the fast list
        self.rest: dict[K, WebSocketConnection] = {}  # the others (per-connection path)
        self.seq = 0  # publications made to the fast list
        self.sent = 0  # the bytes each member on the fast list was given by them
        self.pending: SharedFrame | None = None  # the last of them (until written)
        self.pending_seq = 0
        self.stats: ServerStats | None = None

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, key: object) -> bool:
        return key in self.members

    def __iter__(self) -> Iterator[K]:
        return iter(self.members)

    def add(self, key: K, conn: WebSocketConnection) -> None:
        """Add a member (nothing if `key` is one already)."""
        if key in self.members:
            return
        self.members[key] = conn
        self.rest[key] = conn
        if self.stats is None:
            self.stats = conn.state.stats
        conn.join_set(self, key)

    def remove(self, key: K) -> bool:
        """Remove a member; False if `key` was none."""
        conn = self.members.pop(key, None)
        if conn is None:
            return False
        conn.part_set(self)  # off the fast list first
        del self.rest[key]
        return True

    # A member's connection moves itself between `rest` and `fast` (its `_direct_check` and
    # `_block`): it enters with the set's `seq` and `sent`, and on leaving it adds what it was
    # given since and queues `pending` itself if it took it (`pending_seq` above its `seq`)
    # and it is not written yet.

    # --- publishing --------------------------------------------------------------------------

    def write(self, frame: bytes) -> tuple[list[K], int]:
        """Give `frame` to every member that can take it now (written at the end of the turn);
        the keys of the others, in order, for the full path, and how many took it."""
        loop_turn = this_turn()
        if loop_turn is None:
            return list(self.members), 0
        pending = self.pending
        fast = self.fast
        if not fast:
            taken = 0
        elif pending is not None and not pending.written:
            # A second publication this turn: each member queues it behind the first.
            return list(self.members), 0
        else:
            loop_turn.current()  # the turn's end is scheduled
            shared = SharedFrame(frame, self.stats)
            shared.transports = list(fast.values())
            taken = len(shared.transports)
            self.seq += 1
            self.pending_seq = self.seq
            self.pending = shared
            self.sent += len(frame)
            loop_turn.frames.append(shared)
        rest = self.rest
        if not rest:
            return [], taken
        others = write_shared(rest, frame)
        return others, taken + len(rest) - len(others)
