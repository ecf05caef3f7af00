"""Tornado server for bench/ws.py: `WebSocketHandler`s, a broadcast that loops `write_message`.

Compression is off (Tornado's default: `get_compression_options` returns None), no pings
(`websocket_ping_interval` unset), default asyncio loop as in bench/http.py.

Run (from the repo root): python -m bench.ws_apps.tornado_ws --port 8000
"""

from __future__ import annotations

import asyncio
from typing import Any

import tornado.httpserver
import tornado.web
import tornado.websocket

from bench.ws_apps.common import Broadcaster, base_parser

subscribers: set[tornado.websocket.WebSocketHandler] = set()
broadcaster = Broadcaster()


def send_all(text: str) -> None:
    for handler in subscribers:
        try:  # noqa: SIM105 (a try is cheaper than contextlib.suppress in this loop)
            handler.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            pass


class Sub(tornado.websocket.WebSocketHandler):
    def open(self, *args: str, **kwargs: str) -> None:
        subscribers.add(self)

    def on_close(self) -> None:
        subscribers.discard(self)

    def on_message(self, message: str | bytes) -> None:
        pass


class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class Control(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> Any:
        return broadcaster.command(
            str(message), send_all, self.write_message, lambda: len(subscribers)
        )


async def serve(host: str, port: int) -> None:
    app = tornado.web.Application([(r"/sub", Sub), (r"/echo", Echo), (r"/ctl", Control)])
    server = tornado.httpserver.HTTPServer(app)
    server.listen(port, address=host, backlog=2048)
    await asyncio.Event().wait()


def main() -> None:
    args = base_parser(__doc__).parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
