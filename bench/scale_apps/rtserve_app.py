"""rtserve channel server for bench/scale.py: bench/channel_apps/rtserve_app.py's app, with
the broker chosen by the environment, so that ``rtserve run --workers N`` can serve it.

- ``RTBENCH_SCALE_BROKER``: ``memory`` (the default) or a Redis URL
  (``redis://127.0.0.1:6379/0``, ``redis+cluster://127.0.0.1:7000,...``);
- ``RTBENCH_SCALE_PREFIX``: the Redis key prefix (bench/scale.py makes a unique one per run
  and deletes its keys afterwards);
- ``RTBENCH_SCALE_WRITE_DELAY``: the WebSocket ``write_delay`` in seconds (default 0: none).

Everything else is bench/channel_apps/rtserve_app.py's: ``/rt/ws`` with
``app.channel("bench:*", publish="clients")``, the publish API, and the ``/ctl`` control
WebSocket (``go`` publishes in a loop with ``await app.publish("bench:room", text)`` on the
worker that holds the control connection; ``count`` answers that worker's subscribers only).
No compression, no keepalive pings, no admin interface, no access log.

Run (from the repo root):
    RTBENCH_SCALE_BROKER=redis://127.0.0.1:6379/0 RTBENCH_SCALE_PREFIX=bench-x \\
        rtserve run bench.scale_apps.rtserve_app:app --workers 2 --no-reload --port 8000
"""

from __future__ import annotations

import os
from typing import Any

from bench.channel_apps.rtserve_app import API_KEY, ROOM
from bench.ws_apps.common import Broadcaster
from rtserve import App, ChannelSettings, WebSocketHandler
from rtserve.broker import Broker
from rtserve.server.settings import ServerSettings, WebSocketSettings

BROKER_ENV = "RTBENCH_SCALE_BROKER"
PREFIX_ENV = "RTBENCH_SCALE_PREFIX"
WRITE_DELAY_ENV = "RTBENCH_SCALE_WRITE_DELAY"


def make_broker(spec: str, prefix: str) -> Broker | None:
    """None (the memory broker) for ``memory``, a RedisClusterBroker for a
    ``redis+cluster://`` URL, else a RedisBroker on the URL ``spec``."""
    if spec == "memory":
        return None
    if "+cluster://" in spec:
        from rtserve.broker.redis_cluster import from_url

        return from_url(f"{spec}?prefix={prefix}")
    from rtserve.broker import RedisBroker

    return RedisBroker(spec, prefix=prefix)


def make_app(broker: Broker | None = None, write_delay: float = 0.0) -> App:
    ws = WebSocketSettings(compression=False, ping_interval=0, write_delay=write_delay)
    app = App(
        ServerSettings(access_log=False, websocket=ws),
        channels=ChannelSettings(api_key=API_KEY),
        broker=broker,
    )
    app.channel("bench:*", publish="clients")
    broadcaster = Broadcaster()

    def send_all(text: str) -> Any:
        return app.publish(ROOM, text)

    def count() -> int:
        return app.hub.subscriber_count(ROOM)

    @app.websocket("/ctl")
    class Control(WebSocketHandler):
        def on_message(self, message: str | bytes) -> Any:
            return broadcaster.command(str(message), send_all, self.send_reply, count)

        def send_reply(self, text: str) -> None:
            self.send(text)

    return app


app = make_app(
    make_broker(os.environ.get(BROKER_ENV, "memory"), os.environ.get(PREFIX_ENV, "rtbench")),
    float(os.environ.get(WRITE_DELAY_ENV, "0")),
)
