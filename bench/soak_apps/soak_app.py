"""The server of bench/soak.py: one channel with enough history to recover every churned
client, the publish API and the admin interface on a unix socket.

- ``/rt/ws``: the channel endpoint; channel ``soak`` keeps ``--history`` publications (2,000)
  for 600 s: enough for a churned client, back within a second or two, to recover;
- ``POST /rt/publish`` with ``Authorization: Bearer soak-key-0123456789``;
- the admin interface on the unix socket given by ``--admin-socket``: ``GET /rt/admin/stats``
  gives ``process.rss_bytes``, ``process.open_fds``, ``process.tasks``, ``open`` and ``hub``.

Compression and keepalive pings are off (the load client is a raw protocol client).

    python -m bench.soak_apps.soak_app --port 8000 --admin-socket /tmp/soak-admin.sock
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from rtserve import App, ChannelSettings
from rtserve.server.settings import ServerSettings, WebSocketSettings
from rtserve.stats import enable_admin

CHANNEL = "soak"
API_KEY = "soak-key-0123456789"
HISTORY = 2000
HISTORY_TTL = 600.0


def make_app(admin_socket: str | None = None, history: int = HISTORY) -> App:
    ws = WebSocketSettings(compression=False, ping_interval=0)
    app = App(
        ServerSettings(access_log=False, websocket=ws),
        channels=ChannelSettings(api_key=API_KEY),
    )
    app.channel(CHANNEL, history=history, history_ttl=HISTORY_TTL)
    if admin_socket:
        enable_admin(app, socket=admin_socket)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--admin-socket", required=True)
    parser.add_argument("--history", type=int, default=HISTORY)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    from rtserve.logs import setup_logging
    from rtserve.server.listener import serve

    setup_logging(logging.WARNING)
    app = make_app(args.admin_socket, args.history)
    app.settings = dataclasses.replace(app.settings, host=args.host, port=args.port)
    serve(app, app.settings, use_uvloop=args.loop == "uvloop")


if __name__ == "__main__":
    main()
