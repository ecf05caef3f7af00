"""uvicorn peer for bench/http.py: a raw ASGI callable, no framework.

The harness runs it as
    python -m uvicorn bench.apps.uvicorn_app:app --host 127.0.0.1 --port 8000 \
        --loop uvloop --http httptools --no-access-log --log-level warning
and it also runs as a script with the same settings: python bench/apps/uvicorn_app.py --port 8000
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PLAINTEXT_BODY = b"Hello, World!"
PLAINTEXT_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(PLAINTEXT_BODY)).encode()),
]
NOT_FOUND_BODY = b"Not Found"
NOT_FOUND_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(NOT_FOUND_BODY)).encode()),
]


async def respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path == "/plaintext":
        await respond(send, 200, PLAINTEXT_HEADERS, PLAINTEXT_BODY)
        return
    if path.startswith("/json/"):
        raw_id = path[6:]
        if raw_id.isascii() and raw_id.isdigit():
            body = json.dumps({"id": int(raw_id), "message": "Hello, World!"}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await respond(send, 200, headers, body)
            return
    await respond(send, 404, NOT_FOUND_HEADERS, NOT_FOUND_BODY)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
