"""Many waits that end on a deadline, with one loop timer per tenth of a second that has any.

A loop timer per long poll costs a timer handle each (about 600 B with uvloop) and a heap
entry; 10,000 polls that wait 25 s fall due within a few dozen tenths of a second, so a bucket
per tenth holds them all with a few dozen timers. A deadline is rounded up to its tenth: an
item expires at most `RESOLUTION` seconds late, never early.
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
