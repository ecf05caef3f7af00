"""Timers shared by many waiters: deadlines in buckets of a tenth of a second, and a heartbeat.

`DeadlineWheel`: many waits that end on a deadline, with one loop timer per tenth of a second
that has any.

A loop timer per long poll costs a timer handle each (about 600 B with uvloop) and a heap
entry; 10,000 polls that wait 25 s fall due within a few dozen tenths of a second, so a bucket
per tenth holds them all with a few dozen timers. A deadline is rounded up to its tenth: an
item expires at most `RESOLUTION` seconds late, never early.

`Heartbeat`: one loop timer that beats for every member (the SSE streams' pings), where a timer
per member would cost its handle and a wake-up each.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

log = logging.getLogger("rtserve.channels")


class Expiring(Protocol):
    """What waits in a `DeadlineWheel`: told once, when its deadline has passed."""

    def expired(self) -> None: ...


class Beating(Protocol):
    """A member of a `Heartbeat`: told at each beat."""

    def beat(self) -> None: ...


RESOLUTION = 0.1


class DeadlineWheel:
    """Items due at deadlines, grouped by the tenth of a second they fall in."""

    __slots__ = ("_buckets", "_loop")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buckets: dict[int, dict[Expiring, None]] = {}

    def add(self, delay: float, item: Expiring) -> int:
        """Call `item.expired()` in `delay` seconds (up to RESOLUTION more) from the running
        loop; the returned slot is what `discard` needs."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): the old one's timers never fire
            self._loop, self._buckets = loop, {}
        slot = math.ceil((loop.time() + delay) / RESOLUTION)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            loop.call_at(slot * RESOLUTION, self._expire, slot)
        bucket[item] = None
        return slot

    def discard(self, slot: int, item: Expiring) -> None:
        """`item` ended before its deadline: forget it (no-op if it expired already)."""
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.pop(item, None)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def _expire(self, slot: int) -> None:
        for item in self._buckets.pop(slot, {}):
            try:
                item.expired()
            except Exception:  # one failing must not keep the others waiting
                log.exception("a deadline's callback failed")


class Heartbeat:
    """Calls `beat()` on every member every `interval` seconds (the first beat of a member
    comes within one interval of its joining), with one loop timer while it has members."""

    __slots__ = ("_members", "_timer")

    def __init__(self) -> None:
        self._members: dict[Beating, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, member: Beating, interval: float) -> None:
        """Beat for `member` from now on (every `interval` s: the first member's sets it)."""
        self._members[member] = None
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(interval, self._beat, loop, interval)

    def discard(self, member: Beating) -> None:
        self._members.pop(member, None)
        if not self._members and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return len(self._members)

    def _beat(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        for member in list(self._members):
            try:
                member.beat()
            except Exception:
                log.exception("a heartbeat's callback failed")
        if self._members:
            self._timer = loop.call_later(interval, self._beat, loop, interval)
        else:
            self._timer = None
