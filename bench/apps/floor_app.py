"""Floor for bench/http.py: a raw uvloop asyncio.Protocol answering with canned bytes.

It parses just enough with httptools to find the end of each request, its path and
keep-alive, then writes a prebuilt response. No routing framework, no request objects:
this is roughly the most a Python server on one core can do, the floor the others stand on.

Run: python bench/apps/floor_app.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

import httptools
import uvloop


def _response(status: bytes, content_type: bytes, body: bytes, *, close: bool = False) -> bytes:
    head = [
        b"HTTP/1.1 " + status,
        b"Content-Type: " + content_type,
        b"Content-Length: " + str(len(body)).encode(),
    ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


PLAINTEXT = _response(b"200 OK", b"text/plain; charset=utf-8", b"Hello, World!")
NOT_FOUND = _response(b"404 Not Found", b"text/plain; charset=utf-8", b"Not Found")
BAD_REQUEST = _response(
    b"400 Bad Request", b"text/plain; charset=utf-8", b"Bad Request", close=True
)
MAX_CACHED = 4096

# path -> canned keep-alive response; /json/<int> entries are built once on first use.
_canned: dict[bytes, bytes] = {b"/plaintext": PLAINTEXT}


def canned_for(path: bytes) -> bytes:
    response = _canned.get(path)
    if response is not None:
        return response
    if path.startswith(b"/json/"):
        raw_id = path[6:]
        if raw_id.isdigit() and len(raw_id) < 19:
            body = json.dumps({"id": int(raw_id), "message": "Hello, World!"}).encode()
            response = _response(b"200 OK", b"application/json", body)
            if len(_canned) < MAX_CACHED:
                _canned[path] = response
            return response
    return NOT_FOUND


class FloorProtocol(asyncio.Protocol):
    __slots__ = ("parser", "transport", "url")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport quacks like asyncio.Transport but does not subclass it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(BAD_REQUEST)
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        path = self.url.partition(b"?")[0]
        response = canned_for(path)
        if self.parser.should_keep_alive():
            transport.write(response)
        else:
            transport.write(response.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorProtocol, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
