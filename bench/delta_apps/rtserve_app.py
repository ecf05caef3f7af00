"""rtserve server for bench/delta.py: the dashboard channel (`delta: fossil`) and two controls.

- ``/rt/ws``: the channel endpoint; ``dash:*`` has ``delta="fossil"`` and a history of 10, so
  a subscriber asking ``"delta": "fossil"`` gets deltas and the others whole publications;
- ``POST /run?ticks=T&interval=S``: publish states 1..T of bench/delta_apps/dashboard.py
  (made at start, so making them costs nothing measured), one every S seconds, from server
  code (``await app.publish``); answers when the last is published;
- ``GET /count``: the channel's subscribers on this server.

Compression, keepalive pings and the protocol heartbeat are off, so the load receives nothing
but the publications.

Run (from the repo root): python -m bench.delta_apps.rtserve_app --port 8000 [--ticks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import resource

from bench.delta_apps.dashboard import CHANNEL, states
from rtserve import App, ChannelSettings, Request
from rtserve.server.settings import ServerSettings, WebSocketSettings


def make_app(max_ticks: int) -> App:
    ws = WebSocketSettings(compression=False, ping_interval=0)
    app = App(ServerSettings(access_log=False, websocket=ws), channels=ChannelSettings(heartbeat=0))
    app.channel("dash:*", delta="fossil", history=10)
    made = states(max_ticks)

    @app.route("/run", methods=["POST"])
    async def run(request: Request) -> str:
        ticks = min(int(request.query.get("ticks", "10")), max_ticks)
        interval = float(request.query.get("interval", "0.1"))
        for tick in range(1, ticks + 1):
            await app.publish(CHANNEL, made[tick])
            if interval:
                await asyncio.sleep(interval)
        return "published"

    @app.route("/count")
    async def count(request: Request) -> str:
        return str(app.hub.subscriber_count(CHANNEL))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ticks", type=int, default=200, help="the most ticks one /run makes")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from rtserve.logs import setup_logging
    from rtserve.server.listener import serve

    setup_logging(logging.WARNING)
    app = make_app(args.ticks)
    app.settings = dataclasses.replace(app.settings, host=args.host, port=args.port)
    serve(app, app.settings)


if __name__ == "__main__":
    main()
