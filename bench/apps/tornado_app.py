"""Tornado peer for bench/http.py: RequestHandler apps on tornado's own HTTPServer, one process.

Run: python bench/apps/tornado_app.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio

import tornado.httpserver
import tornado.web


class PlaintextHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.write("Hello, World!")


class JsonHandler(tornado.web.RequestHandler):
    def get(self, item_id: str) -> None:
        # write(dict) serializes with json and sets Content-Type: application/json.
        self.write({"id": int(item_id), "message": "Hello, World!"})


def make_app() -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/plaintext", PlaintextHandler),
            (r"/json/([0-9]+)", JsonHandler),
        ]
    )


async def serve(host: str, port: int) -> None:
    server = tornado.httpserver.HTTPServer(make_app())
    server.listen(port, address=host)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
