"""Tornado's long-poll pattern (its chat demo): a message buffer with a Condition; each poll
waits on it with its cursor and is answered with the messages after the cursor.

`GET /poll?cursor=N`, `POST /publish`, `GET /pending`.
Run: python -m bench.longpoll_apps.tornado_app PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import tornado.locks
import tornado.web


class MessageBuffer:
    def __init__(self) -> None:
        self.cond = tornado.locks.Condition()
        self.cache: list[dict[str, Any]] = []
        self.waiting = 0

    def after(self, cursor: int) -> list[dict[str, Any]]:
        return [m for m in self.cache[-10:] if m["id"] > cursor]

    def add(self, data: Any) -> int:
        self.cache.append({"id": len(self.cache) + 1, "data": data})
        self.cache = self.cache[-10:] if len(self.cache) > 100 else self.cache
        self.cond.notify_all()
        return len(self.cache)


class Poll(tornado.web.RequestHandler):
    async def get(self) -> None:
        buffer: MessageBuffer = self.application.settings["buffer"]
        cursor = int(self.get_argument("cursor", "0"))
        messages = buffer.after(cursor)
        while not messages:
            buffer.waiting += 1
            try:
                self.wait_future = buffer.cond.wait(timeout=60)
                await self.wait_future
            finally:
                buffer.waiting -= 1
            if self.request.connection.stream.closed():
                return
            messages = buffer.after(cursor)
        self.finish({"messages": messages})

    def on_connection_close(self) -> None:
        self.wait_future.cancel()


class Publish(tornado.web.RequestHandler):
    def post(self) -> None:
        buffer: MessageBuffer = self.application.settings["buffer"]
        self.finish({"offset": buffer.add(json.loads(self.request.body))})


class Pending(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish(str(self.application.settings["buffer"].waiting))


async def main(port: int) -> None:
    app = tornado.web.Application(
        [("/poll", Poll), ("/publish", Publish), ("/pending", Pending)], buffer=MessageBuffer()
    )
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
