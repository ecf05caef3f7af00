"""rtserve channel server for bench/channels.py: one channel rule, the publish API, a control.

- ``/rt/ws``: the channel endpoint (``app.channel("bench:*", publish="clients")``); the load
  client's subscribers connect and subscribe to ``bench:room`` over the real protocol;
- ``POST /rt/publish``: the publish API (``Authorization: Bearer bench-key``);
- ``/ctl``: the control WebSocket of bench/ws_apps/common.py (``go``, ``stop``, ``count``);
  ``go`` publishes each message with ``await app.publish("bench:room", text)``: the
  server-side trigger, stamped with the server's ``time.time_ns()``.

Compression is off and keepalive pings are off (as on every server of the benchmarks); the
channel rule keeps its defaults (no history, no presence, slow consumers disconnected).

Run (from the repo root):
    python -m bench.channel_apps.rtserve_app --port 8000 [--write-delay 0.05] [--loop asyncio]
    rtserve run bench/channel_apps/rtserve_app.py:app --no-access-log    # port 8000
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from bench.ws_apps.common import Broadcaster, base_parser
from rtserve import App, ChannelSettings, WebSocketHandler
from rtserve.server.settings import ServerSettings, WebSocketSettings

ROOM = "bench:room"
API_KEY = "bench-key"


def make_app(write_delay: float = 0.0) -> App:
    ws = WebSocketSettings(compression=False, ping_interval=0, write_delay=write_delay)
    app = App(
        ServerSettings(access_log=False, websocket=ws),
        channels=ChannelSettings(api_key=API_KEY),
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


app = make_app()


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--write-delay", type=float, default=0.0)
    args = parser.parse_args()
    from rtserve.logs import setup_logging
    from rtserve.server.listener import serve

    setup_logging(logging.WARNING)
    served = make_app(args.write_delay)
    served.settings = dataclasses.replace(served.settings, host=args.host, port=args.port)
    serve(served, served.settings, use_uvloop=args.loop == "uvloop")


if __name__ == "__main__":
    main()
