"""aiohttp server for bench/ws.py: `WebSocketResponse`s, a broadcast that loops `send_str`.

`compress=False` (permessage-deflate off), no heartbeat, on a uvloop loop (as in bench/http.py).

Run (from the repo root): python -m bench.ws_apps.aiohttp_ws --port 8000
"""

from __future__ import annotations

import uvloop
from aiohttp import WSMsgType, web

from bench.ws_apps.common import Broadcaster, base_parser

subscribers: set[web.WebSocketResponse] = set()
broadcaster = Broadcaster()


async def send_all(text: str) -> None:
    for ws in list(subscribers):
        try:
            await ws.send_str(text)
        except ConnectionError:
            subscribers.discard(ws)


def _response() -> web.WebSocketResponse:
    return web.WebSocketResponse(compress=False, autoping=True, heartbeat=None)


async def sub(request: web.Request) -> web.WebSocketResponse:
    ws = _response()
    await ws.prepare(request)
    subscribers.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        subscribers.discard(ws)
    return ws


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = _response()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def control(request: web.Request) -> web.WebSocketResponse:
    ws = _response()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            result = broadcaster.command(msg.data, send_all, ws.send_str, lambda: len(subscribers))
            if result is not None:
                await result
    return ws


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/sub", sub)
    app.router.add_get("/echo", echo)
    app.router.add_get("/ctl", control)
    return app


def main() -> None:
    args = base_parser(__doc__).parse_args()
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=2048,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
