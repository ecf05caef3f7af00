"""rtserve server for bench/ws.py: `broadcast()` to a handler group, echo, control.

Compression is off on every route but ``/subz`` (which offers permessage-deflate, for the
memory measurement only); keepalive pings are off, as on every server in the benchmark.

With ``--admin-socket PATH`` the admin interface is on (``enable_admin``: the admin socket,
``/metrics``, the loop-lag probe, and each connection's opening time kept for the connection
list), as ``rtserve run`` has it by default: bench/ws.py's ``rtserve-stats``.

Run (from the repo root):
    python -m bench.ws_apps.rtserve_ws --port 8000 [--loop asyncio] [--write-delay 0.005]
        [--admin-socket /tmp/x/admin.sock]
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from bench.ws_apps.common import Broadcaster, base_parser
from rtserve import App, WebSocketGroup, WebSocketHandler, broadcast
from rtserve.server.settings import ServerSettings, WebSocketSettings

# A group rather than a set: broadcast() then walks the prepared transports of those that can
# take the message now (bench/ws.py's "floor" loop), touching the others only.
subscribers: WebSocketGroup = WebSocketGroup()
broadcaster = Broadcaster()


def send_all(text: str) -> None:
    broadcast(subscribers, text)


def make_app(write_delay: float) -> App:
    ws = WebSocketSettings(compression=False, ping_interval=0, write_delay=write_delay)
    app = App(ServerSettings(access_log=False, websocket=ws))

    @app.websocket("/sub")
    class Sub(WebSocketHandler):
        def on_open(self) -> None:
            subscribers.add(self)

        def on_close(self, code: int, reason: str) -> None:
            subscribers.discard(self)

    @app.websocket("/subz", compression=True)
    class SubDeflate(Sub):
        pass

    @app.websocket("/echo")
    class Echo(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            self.send(message)

    @app.websocket("/ctl")
    class Control(WebSocketHandler):
        def on_message(self, message: str | bytes) -> Any:
            return broadcaster.command(
                str(message),
                send_all,
                self.send_reply,
                lambda: len(subscribers),
            )

        def send_reply(self, text: str) -> None:
            self.send(text)

    return app


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--write-delay", type=float, default=0.0)
    parser.add_argument("--admin-socket", help="serve the admin interface on this unix socket")
    args = parser.parse_args()
    from rtserve.logs import setup_logging
    from rtserve.server.listener import serve

    setup_logging(logging.WARNING)
    app = make_app(args.write_delay)
    if args.admin_socket:
        from rtserve.stats.admin import enable_admin

        enable_admin(app, socket=args.admin_socket, metrics=True)
    settings = dataclasses.replace(app.settings, host=args.host, port=args.port)
    app.settings = settings
    serve(app, settings, use_uvloop=args.loop == "uvloop")


if __name__ == "__main__":
    main()
