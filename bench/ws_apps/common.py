"""What every bench/ws.py server shares: the routes, the control commands, the broadcast loop.

Routes (the same on every server):

- ``/sub``: a subscriber; it never sends, and receives every broadcast;
- ``/subz``: (rtserve only) a subscriber on a route that offers permessage-deflate;
- ``/echo``: every message is sent back;
- ``/ctl``: the control connection; it is not a subscriber. Text commands:
  ``go:<count>:<size>:<interval_us>`` broadcasts ``count`` messages of ``size`` bytes to every
  subscriber, one every ``interval_us`` microseconds (0: as fast as the loop goes, yielding to
  the loop once between messages), then answers ``done:<count>:<subscribers>``, followed for a
  paced run by ``:<p50_ms>:<max_ms>``, the server's own time from a message's timestamp until
  its writes were handed to the kernel (the task resumes after the loop iteration that wrote;
  with rtserve's ``write_delay`` the delayed writes are not included);
  ``stop`` ends a running broadcast early; ``count`` answers ``subs:<n>``.

A broadcast message is ASCII text: a 10-digit sequence number, ``:``, the server's
``time.time_ns()`` just before the message is handed to the broadcast (19 digits), ``:``, then
``x`` up to ``size`` bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

HEAD_LEN = 31  # "SSSSSSSSSS:TTTTTTTTTTTTTTTTTTT:"
MIN_SIZE = HEAD_LEN + 1


class Broadcaster:
    """Runs one ``go`` command at a time as a background task; ``stop`` ends it."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.stopping = False

    def command(
        self,
        text: str,
        send_all: Callable[[str], Awaitable[Any] | None],
        reply: Callable[[str], Awaitable[Any] | None],
        count_subs: Callable[[], int],
    ) -> Awaitable[Any] | None:
        """Handle one control message; may return an awaitable (the reply) to await."""
        if text == "count":
            return reply(f"subs:{count_subs()}")
        if text == "stop":
            self.stopping = True
            return None
        if text.startswith("go:"):
            _, count, size, interval_us = text.split(":")
            self.stopping = False
            self.task = asyncio.get_running_loop().create_task(
                self._run(int(count), int(size), int(interval_us), send_all, reply, count_subs)
            )
            return None
        return reply(f"error:unknown command {text[:40]!r}")

    async def _run(
        self,
        count: int,
        size: int,
        interval_us: int,
        send_all: Callable[[str], Awaitable[Any] | None],
        reply: Callable[[str], Awaitable[Any] | None],
        count_subs: Callable[[], int],
    ) -> None:
        pad = "x" * (max(size, MIN_SIZE) - HEAD_LEN)
        loop = asyncio.get_running_loop()
        interval = interval_us / 1e6
        start = loop.time()
        time_ns = time.time_ns
        sent = 0
        send_ns: list[int] = []  # paced runs: from the timestamp until the writes are done
        for seq in range(count):
            if interval:
                delay = start + seq * interval - loop.time()
                await asyncio.sleep(delay if delay > 0 else 0)
            else:
                await asyncio.sleep(0)  # one message per loop iteration: writes go out between
            if self.stopping:
                break
            started = time_ns()
            result = send_all(f"{seq:010d}:{started:019d}:{pad}")
            if result is not None:
                await result
            sent += 1
            if interval:
                # Writes queued for the end of this loop iteration (rtserve) happen before
                # this task resumes; without a write_delay, this is the whole send.
                await asyncio.sleep(0)
                send_ns.append(time_ns() - started)
        send_ns.sort()
        timing = ""
        if send_ns:
            p50, top = send_ns[len(send_ns) // 2], send_ns[-1]
            timing = f":{p50 / 1e6:.3f}:{top / 1e6:.3f}"
        result = reply(f"done:{sent}:{count_subs()}{timing}")
        if result is not None:
            await result


def base_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser
