"""python-socketio server for bench/scale.py: bench/channel_apps/socketio_app.py's server on
aiohttp, with ``socketio.AsyncRedisManager`` as its client manager (what its docs prescribe
for running behind several processes).

The manager is swapped in right after the server is made, before anything runs: what
``AsyncServer(client_manager=...)`` does. Note how python-socketio's pub/sub manager emits
(5.x): to its own clients directly, then PUBLISH to Redis for the other hosts (it skips its own
messages when they come back); rtserve's RedisBroker delivers through Redis, its own node
included.

Run (from the repo root):
    python -m bench.scale_apps.socketio_redis_app --port 8000 \\
        --redis redis://127.0.0.1:6379/0 --channel bench-x-sio
"""

from __future__ import annotations

import socketio

from bench.channel_apps.socketio_app import make_server
from bench.ws_apps.common import base_parser


def make_redis_server(url: str, channel: str) -> socketio.AsyncServer:
    sio = make_server("aiohttp")
    manager = socketio.AsyncRedisManager(url, channel=channel)
    sio.manager = manager
    manager.set_server(sio)
    sio.manager_initialized = False
    return sio


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--channel", default="rtbench-sio", help="the Redis pub/sub channel")
    args = parser.parse_args()
    import uvloop
    from aiohttp import web

    app = web.Application()
    make_redis_server(args.redis, args.channel).attach(app)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=2048,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
