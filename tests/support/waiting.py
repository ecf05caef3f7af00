"""Bounded polling, for what has no event to wait on (another process, a clock's expiry)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def until(
    check: Callable[[], T | Literal[False] | None], timeout: float, what: str, step: float = 0.05
) -> T:
    """Poll `check` until it returns something true (returned), or fail after `timeout` s;
    `x and y` checks type as what they return once true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, step: float = 0.02
) -> None:
    """Await `check` until it is true, or fail after `timeout` s (the loop keeps running)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(step)
