"""python-socketio server for bench/channels.py: a room, an event that publishes, a control.

Socket.IO v5 over Engine.IO v4, WebSocket transport only, on the documented servers: aiohttp
(``sio.attach(app)``, ``web.run_app`` on a uvloop loop) or uvicorn (``socketio.ASGIApp``,
uvloop, httptools). Keepalive pings are effectively off (interval 10 minutes) and
permessage-deflate is not negotiated (the load client does not offer it), as on every server
of the benchmarks. Events:

- ``join`` (room): the client enters the room; answered with an ack, so the client knows;
- ``publish`` (data): the server emits ``pub`` with the data to the room (a client publishing);
- ``ctl`` (text): the control commands of bench/ws_apps/common.py (``go``, ``stop``,
  ``count``), answered with ``ctl`` events; ``go`` emits each message to the room with
  ``await sio.emit("pub", text, room=...)``: the server-side trigger.

Run (from the repo root):
    python -m bench.channel_apps.socketio_app --port 8000 [--server aiohttp|uvicorn]
"""

from __future__ import annotations

from typing import Any

import socketio

from bench.ws_apps.common import Broadcaster, base_parser

ROOM = "bench:room"
PING_S = 600


def make_server(async_mode: str) -> socketio.AsyncServer:
    sio = socketio.AsyncServer(
        async_mode=async_mode,
        transports=["websocket"],
        ping_interval=PING_S,
        ping_timeout=PING_S,
        logger=False,
        engineio_logger=False,
    )
    broadcaster = Broadcaster()

    async def send_all(text: str) -> None:
        await sio.emit("pub", text, room=ROOM)

    def count() -> int:
        return sum(1 for _ in sio.manager.get_participants("/", ROOM))

    @sio.event
    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        return "ok"

    @sio.event
    async def publish(sid: str, data: Any) -> None:
        await sio.emit("pub", data, room=ROOM)

    @sio.event
    async def ctl(sid: str, text: str) -> None:
        async def reply(answer: str) -> None:
            await sio.emit("ctl", answer, to=sid)

        result = broadcaster.command(str(text), send_all, reply, count)
        if result is not None:
            await result

    return sio


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--server", choices=["aiohttp", "uvicorn"], default="aiohttp")
    parser.add_argument(
        "--ws",
        default="websockets-sansio",
        help="uvicorn's WebSocket implementation (websockets, websockets-sansio, wsproto)",
    )
    args = parser.parse_args()
    if args.server == "aiohttp":
        import uvloop
        from aiohttp import web

        app = web.Application()
        make_server("aiohttp").attach(app)
        web.run_app(
            app,
            host=args.host,
            port=args.port,
            access_log=None,
            print=None,
            backlog=2048,
            loop=uvloop.new_event_loop(),
        )
    else:
        import uvicorn

        uvicorn.run(
            socketio.ASGIApp(make_server("asgi")),
            host=args.host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            ws=args.ws,
            ws_ping_interval=None,
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
            access_log=False,
            backlog=2048,
        )


if __name__ == "__main__":
    main()
