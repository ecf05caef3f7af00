"""websockets (asyncio implementation) server for bench/ws.py, broadcasting with
`websockets.asyncio.server.broadcast`.

`compression=None` (permessage-deflate off), `ping_interval=None` (no keepalive pings), on a
uvloop loop.

Run (from the repo root): python -m bench.ws_apps.websockets_ws --port 8000
"""

from __future__ import annotations

import contextlib
import logging

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from bench.ws_apps.common import Broadcaster, base_parser

subscribers: set[ServerConnection] = set()
broadcaster = Broadcaster()


def send_all(text: str) -> None:
    broadcast(subscribers, text)


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else ""
    if path == "/sub":
        subscribers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)
    elif path == "/echo":
        with contextlib.suppress(ConnectionClosed):  # the load client ends with a reset
            async for message in ws:
                await ws.send(message)
    elif path == "/ctl":
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                result = broadcaster.command(
                    str(message), send_all, ws.send, lambda: len(subscribers)
                )
                if result is not None:
                    await result
    else:
        await ws.close(1008, "unknown path")


async def run(host: str, port: int) -> None:
    async with serve(
        handler, host, port, compression=None, ping_interval=None, backlog=2048
    ) as server:
        await server.serve_forever()


def main() -> None:
    args = base_parser(__doc__).parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
