"""The dashboard's server side: the App, and a background task that publishes metrics.

rtserve.yaml names `app:create_app`, so rtserve calls it for the App and then adds the routes
and the channel rule of the YAML. A factory (rather than a module-level App) gives every
`build_app`, and so every test, an App and a task of its own.

`Sampler.sample` is what the page shows: replace it with your own numbers (queue lengths,
orders a minute, ...). Linux gives everything (/proc); elsewhere what cannot be read is None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from rtserve import App

CHANNEL = "metrics:system"
INTERVAL = 1.0  # seconds between two samples
# Each sample is tagged with the machine it is from: with several servers publishing to one
# channel (a Redis broker), a page can ask for one machine's samples (`?host=` on the page).
HOST = socket.gethostname()
PROC = Path("/proc")

log = logging.getLogger("dashboard")


def create_app() -> App:
    app = App()
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:  # the server is up and the channels run: start publishing
        tasks.append(asyncio.create_task(publish_metrics(app), name="dashboard-metrics"))

    async def stop() -> None:  # the server is stopping: stop the task and wait for it
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app


async def publish_metrics(app: App, sampler: Sampler | None = None) -> None:
    """Publish a sample to CHANNEL every INTERVAL seconds, until cancelled."""
    sampler = sampler or Sampler()
    loop = asyncio.get_running_loop()
    next_time = loop.time()
    while True:
        try:
            data = sampler.sample()
            data["viewers"] = app.hub.subscriber_count(CHANNEL)  # pages watching right now
            await app.publish(CHANNEL, data, tags={"host": HOST})
        except Exception:  # one bad sample must not end the task
            log.exception("publishing metrics failed")
        next_time = max(next_time + INTERVAL, loop.time())
        await asyncio.sleep(next_time - loop.time())


class Sampler:
    """Takes samples of this machine; remembers the tick and the CPU times between two."""

    def __init__(self, proc: Path = PROC) -> None:
        self.proc = proc
        self.tick = 0
        self._cpu: tuple[int, int] | None = self._cpu_times()

    def sample(self) -> dict[str, Any]:
        self.tick += 1
        load = _load()
        total, available = self._memory()
        return {
            "tick": self.tick,  # counts the samples since the server started
            "time": time.time(),  # unix seconds
            "load1": load[0],
            "load5": load[1],
            "load15": load[2],
            "cpu_percent": self._cpu_percent(),  # all CPUs, since the last sample
            "mem_total": total,  # bytes
            "mem_available": available,  # bytes
            "mem_used_percent": (
                round(100 * (total - available) / total, 1) if total and available else None
            ),
        }

    def _cpu_percent(self) -> float | None:
        now = self._cpu_times()
        before, self._cpu = self._cpu, now
        if now is None or before is None or now[1] <= before[1]:
            return None
        return round(100 * (now[0] - before[0]) / (now[1] - before[1]), 1)

    def _cpu_times(self) -> tuple[int, int] | None:
        """(busy, total) jiffies of all CPUs, from the first line of /proc/stat."""
        try:
            fields = (self.proc / "stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        times = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq ...
        total = sum(times)
        return total - times[3] - times[4], total

    def _memory(self) -> tuple[int | None, int | None]:
        """(total, available) bytes, from /proc/meminfo (its values are in KiB)."""
        try:
            lines = (self.proc / "meminfo").read_text().splitlines()
        except OSError:
            return None, None
        values = {}
        for line in lines:
            name, _, rest = line.partition(":")
            if rest.split():
                values[name] = int(rest.split()[0]) * 1024
        return values.get("MemTotal"), values.get("MemAvailable")


def _load() -> tuple[float | None, float | None, float | None]:
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):  # not on this platform
        return None, None, None
    return round(one, 2), round(five, 2), round(fifteen, 2)
