"""Floor for bench/ws.py: a raw uvloop `asyncio.Protocol` with the minimal handshake.

It reads the request head, answers 101 with the accept key (no extension, no subprotocol, no
checks), parses the client's masked frames by hand on ``/echo`` and ``/ctl``, and broadcasts by
writing the same pre-encoded frame bytes to every subscriber's transport. No framework, no
validation, no budget: roughly the most a Python server on one core can do, not a real server.

Run (from the repo root): python -m bench.ws_apps.floor_ws --port 8000
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import struct
from typing import Any, cast

import uvloop

from bench.ws_apps.common import Broadcaster, base_parser

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY_RE = re.compile(rb"(?im)^sec-websocket-key:[ \t]*(\S+)")

subscribers: set[asyncio.Transport] = set()
broadcaster = Broadcaster()


def encode(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def unmask(mask: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def send_all(text: str) -> None:
    frame = encode(1, text.encode())
    for transport in subscribers:
        transport.write(frame)


def count_subscribers() -> int:
    return len(subscribers)


class FloorWebSocket(asyncio.Protocol):
    __slots__ = ("buf", "path", "transport", "upgraded")

    def __init__(self) -> None:
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.buf = b""
        self.path = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        subscribers.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head, buf = buf[:end], buf[end + 4 :]
            m = KEY_RE.search(head)
            if m is None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()
                return
            accept = base64.b64encode(hashlib.sha1(m.group(1) + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.path = head.split(b" ", 2)[1]
            self.upgraded = True
            if self.path == b"/sub":
                subscribers.add(self.transport)
        self.buf = self.parse(buf)

    def parse(self, buf: bytes) -> bytes:
        """Handle every whole (masked, unfragmented) frame in buf; return the rest."""
        pos, end = 0, len(buf)
        while end - pos >= 6:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if end - pos < 8:
                    break
                n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif n == 127:
                if end - pos < 14:
                    break
                n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if end - pos < head + 4 + n:
                break
            mask = buf[pos + head : pos + head + 4]
            payload = unmask(mask, buf[pos + head + 4 : pos + head + 4 + n])
            pos += head + 4 + n
            self.on_frame(b0 & 0x0F, payload)
        return buf[pos:]

    def on_frame(self, opcode: int, payload: bytes) -> Any:
        if opcode == 8:  # close: answer and end
            self.transport.write(encode(8, payload[:2]))
            self.transport.close()
        elif opcode == 9:  # ping
            self.transport.write(encode(10, payload))
        elif opcode in (1, 2):
            if self.path == b"/echo":
                self.transport.write(encode(opcode, payload))
            elif self.path == b"/ctl":
                broadcaster.command(payload.decode(), send_all, self.reply, count_subscribers)

    def reply(self, text: str) -> None:
        self.transport.write(encode(1, text.encode()))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorWebSocket, host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    args = base_parser(__doc__).parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
