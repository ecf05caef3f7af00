"""The floor of bench/reconnect_storm.py: a bare asyncio protocol that reads the opening
handshake, answers 101 and, in the same write, the subscribe reply the client waits for
(nothing is parsed past the request head, nothing is subscribed).

    python -m bench.storm_apps.raw_app PORT
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
REPLY = b'{"id":2,"result":{}}'
REPLY_FRAME = bytes((0x81, len(REPLY))) + REPLY


class Handshake(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            return  # frames after the handshake: the reply went with the 101
        head = self.head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0 or self.transport is None:
            return
        key = b""
        for line in head[:end].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + REPLY_FRAME
        )
        self.head = None


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Handshake, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
