"""aiohttp peer for bench/http.py: web.Application + web.run_app on a uvloop event loop.

Run: python bench/apps/aiohttp_app.py --port 8000
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web


async def plaintext(request: web.Request) -> web.Response:
    return web.Response(text="Hello, World!")


async def item(request: web.Request) -> web.Response:
    return web.json_response({"id": int(request.match_info["id"]), "message": "Hello, World!"})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/plaintext", plaintext)
    app.router.add_get(r"/json/{id:\d+}", item)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    loop = uvloop.new_event_loop()
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
