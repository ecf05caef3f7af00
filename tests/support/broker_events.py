"""What a broker tells its node (BrokerEvents), recorded for a test to read and wait on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from rtserve.broker.base import ClientInfo, Publication

WAIT = 5.0  # seconds a test waits for something that should happen at once


class Recorder:
    """BrokerEvents that records every call and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.publications: list[Publication] = []  # as delivered, whole
        self._changed = asyncio.Event()

    def _add(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        self._changed.set()

    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None:
        self.publications.append(publication)
        self._add(("pub", channel, publication.offset, publication.data, epoch))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self._add(("join", channel, info.client))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self._add(("leave", channel, info.client))

    def on_gap(self, channel: str) -> None:
        self._add(("gap", channel))

    def offsets(self, channel: str) -> list[int]:
        return [e[2] for e in self.events if e[0] == "pub" and e[1] == channel]

    def of(self, channel: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[1] == channel]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait (at most `timeout` seconds) until `condition()` holds after some event."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            self._changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"condition not met in {timeout} s; events: {self.events}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_count(self, channel: str, count: int) -> None:
        """Wait until `channel` has had `count` events (publications, joins, leaves, gaps)."""
        await self.wait_until(lambda: len(self.of(channel)) >= count)
