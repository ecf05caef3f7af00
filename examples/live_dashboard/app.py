"""A live dashboard for thousands of browsers: the server side.

Samples come from outside the server: `collector.py` (one per machine) posts them to the
publish API, and the server only fans them out. Everything goes through one channel,
`metrics`, so every page holds one subscription and each sample is encoded once for all of
them. The channel rule:

- `slow_consumer="conflate"`, `conflate_key="host"`: a browser that cannot take the stream
  (a phone on a bad network, a background tab) gets the latest sample of each host instead
  of a queue that grows; fast browsers get every sample;
- `history=120` for two minutes: a page that opens asks for the recent past and starts with
  its charts filled; one that reconnects gets what it missed (rtserve.js does it);
- `publish="server"` (the default): browsers only read; collectors publish with the API key;
- `delta="fossil"`: the page asks for delta publications, so each sample after the first
  travels as a fossil delta from the one before (a few dozen bytes instead of the sample)
  when that is smaller; rtserve.js applies and checks them.

Each server process also publishes its own figures (`"kind": "server"`: subscribers of the
channel on this process, deliveries a second, conflated messages) once a second, so the page
shows how many viewers each worker carries.

Run it as a project (rtserve.yaml names `create_app`, and sets the broker, the API key and
the admin socket for `rtserve stats`):

    rtserve run examples/live_dashboard
    python examples/live_dashboard/collector.py

or as a plain app: `rtserve run examples/live_dashboard/app.py:create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from rtserve import App, ChannelSettings
from rtserve.broker.base import Broker

CHANNEL = "metrics"
HISTORY = 120  # publications kept: two minutes of one collector at one sample a second
DEV_API_KEY = "dev-only-dashboard-key"  # the example's default; set DASHBOARD_API_KEY for real
HERE = Path(__file__).resolve().parent

log = logging.getLogger("live_dashboard")


def create_app(
    *,
    api_key: str | None = None,
    broker: Broker | None = None,
    server_stats_interval: float = 1.0,
) -> App:
    """The dashboard's App: the page and its script, the `metrics` channel, and (unless
    `server_stats_interval` is 0) a task publishing this process's own figures.

    `api_key`: the publish API's key (default: $DASHBOARD_API_KEY, else DEV_API_KEY).
    `broker`: None for the memory broker (one process); a RedisBroker for several workers.
    Run as a project, rtserve.yaml's `channels:` and `broker:` replace these two.
    """
    key = api_key or os.environ.get("DASHBOARD_API_KEY") or DEV_API_KEY
    app = App(channels=ChannelSettings(api_key=key), broker=broker)
    app.channel(
        CHANNEL,
        history=HISTORY,
        history_ttl=120.0,
        slow_consumer="conflate",
        conflate_key="host",
        delta="fossil",
    )
    app.static_file("/", HERE / "static" / "index.html")
    app.static("/static", HERE / "static")
    if server_stats_interval > 0:
        tasks: list[asyncio.Task[None]] = []

        async def start() -> None:
            task = publish_server_stats(app, server_stats_interval)
            tasks.append(asyncio.create_task(task, name="dashboard-server-stats"))

        async def stop() -> None:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            tasks.clear()

        app.on_startup.append(start)
        app.on_shutdown.append(stop)
    return app


def server_sample(app: App, seq: int, deliveries_per_s: float | None) -> dict[str, Any]:
    """This process's figures, as the page shows them: `host` names the process (it is the
    conflation key, so each worker keeps its own latest sample)."""
    hub = app.hub
    return {
        "host": f"rtserve pid {os.getpid()}",
        "kind": "server",
        "seq": seq,
        "time": round(time.time(), 3),
        "viewers": hub.subscriber_count(CHANNEL),
        "deliveries_per_s": deliveries_per_s,
        "conflated": hub.stats.conflated,
    }


async def publish_server_stats(app: App, interval: float) -> None:
    """Publish `server_sample` every `interval` seconds until cancelled; a failed publish
    (the broker is away) is logged and the next one goes on."""
    loop = asyncio.get_running_loop()
    seq = 0
    last = (loop.time(), app.hub.stats.deliveries)
    next_at = loop.time() + interval
    while True:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at = max(next_at + interval, loop.time())
        now = (loop.time(), app.hub.stats.deliveries)
        rate = round((now[1] - last[1]) / (now[0] - last[0]), 1) if now[0] > last[0] else None
        last = now
        seq += 1
        try:
            await app.publish(CHANNEL, server_sample(app, seq, rate), tags={"kind": "server"})
        except Exception:
            log.exception("publishing the server's figures failed")
