"""The load of bench/delta.py: N raw WebSocket subscribers of the dashboard channel, in one
asyncio process (uvloop when installed), counting what arrives.

Each connection does the opening handshake by hand (no compression offered), sends one
protocol 2 ``connect`` that subscribes to the channel (with ``"delta": "fossil"`` when
``--delta``), then reads frames: their headers are parsed, their payloads skipped, except on
the first ``--verify`` connections, which decode every push (the text, or the delta applied to
the text held) and check it is the state the server published.

Protocol with the driver, one line each on stdout / stdin:
    -> ready                 every connection subscribed (its connect reply came)
    <- go OFFSET             the driver is about to publish (the channel is at OFFSET)
    -> counting              counting started: the driver may publish
    -> {"frames", "bytes", "payload", "first_bytes", "seconds", "verified", "errors"}
                             when `--ticks` pushes
                             reached every connection (or after --timeout)

Run: python -m bench.delta_apps.load --port 8000 --subscribers 500 --ticks 10 [--delta]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
from typing import Any

from bench.delta_apps.dashboard import CHANNEL, states
from rtserve.protocol.fossil import apply_delta


def masked_text(payload: bytes) -> bytes:
    """A client's text frame (mask of zeros: allowed, and the payload stays as it is)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65536:
        head = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Load:
    """What every subscriber adds to, and what the verifying ones check against."""

    def __init__(self, subscribers: int, ticks: int, expected: list[bytes]) -> None:
        self.subscribers = subscribers
        self.ticks = ticks
        self.expected = expected  # JSON text of each state, compact (as the server's text)
        self.counting = False
        self.frames = 0
        self.bytes = 0
        self.payload = 0
        self.first_bytes = 0  # of each connection's first push (the whole state)
        self.subscribed = 0
        self.complete = 0  # connections that have all `ticks` pushes
        self.verified = 0
        self.base = 0  # the channel's offset before the run (state 1 comes at base + 1)
        self.errors: list[str] = []
        self.ready = asyncio.Event()
        self.done = asyncio.Event()


class Subscriber(asyncio.Protocol):
    """One connection: handshake, connect+subscribe, then frames counted."""

    def __init__(self, load: Load, port: int, delta: bool, verify: bool) -> None:
        self.load = load
        self.port = port
        self.delta = delta
        self.verify = verify
        self.head = b""
        self.open = False
        self.partial = b""  # a frame header split between two reads
        self.left = 0  # payload bytes of the current frame still to come
        self.opcode = 0
        self.size = 0  # the current frame's bytes, header included
        self.body = bytearray()  # the current frame's payload (verifying connections only)
        self.pushes = 0
        self.text = b""  # the last text (delta subscriptions)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /rt/ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = self.head[end + 4 :]
            self.open = True
            subscription: dict[str, Any] = {"channel": CHANNEL}
            if self.delta:
                subscription["delta"] = "fossil"
            command = {"id": 1, "op": "connect", "protocol": 2, "subscriptions": [subscription]}
            assert self.transport is not None
            self.transport.write(masked_text(json.dumps(command).encode()))
        load = self.load
        if load.counting:
            load.bytes += len(data)
        at, size = 0, len(data)
        while at < size:
            if self.left:
                take = min(self.left, size - at)
                if self.verify:
                    self.body += data[at : at + take]
                at += take
                self.left -= take
                if not self.left:
                    self.frame()
                continue
            header = self.partial + data[at : at + 10]
            length = header[1] & 0x7F if len(header) > 1 else 0
            need = 2 if len(header) < 2 else 4 if length == 126 else 10 if length == 127 else 2
            if len(header) < need:
                self.partial = header
                return
            at += need - len(self.partial)
            self.partial = b""
            self.opcode = header[0] & 0x0F
            if length >= 126:
                length = int.from_bytes(header[2:need], "big")
            self.left = length
            self.size = need + length
            if load.counting:
                load.payload += length
            if not length:
                self.frame()

    def frame(self) -> None:
        load = self.load
        body, self.body = bytes(self.body), bytearray()
        if self.opcode != 1:
            return
        if not load.counting:
            load.subscribed += 1
            if load.subscribed == load.subscribers:
                load.ready.set()
            return
        load.frames += 1
        self.pushes += 1
        if self.pushes == 1:
            load.first_bytes += self.size
        if self.verify:
            self.check(body)
        if self.pushes == load.ticks:
            load.complete += 1
            if load.complete == load.subscribers:
                load.done.set()

    def check(self, body: bytes) -> None:
        push = json.loads(body)
        load = self.load
        try:
            data = push["data"]
            if "delta" not in push:
                text = json.dumps(data, separators=(",", ":"), ensure_ascii=True).encode()
            elif push["delta"]:
                text = apply_delta(self.text, data.encode())
            else:
                text = data.encode()
            self.text = text
            expected = load.expected[push["offset"] - load.base]
            if json.loads(text) != json.loads(expected):
                raise ValueError(f"offset {push['offset']}: not the state published")
            load.verified += 1
        except Exception as exc:  # reported, not raised: the run goes on
            load.errors.append(f"{type(exc).__name__}: {exc}")


async def main(args: argparse.Namespace) -> None:
    made = states(args.ticks)
    expected = [json.dumps(s, separators=(",", ":")).encode() for s in made]
    load = Load(args.subscribers, args.ticks, expected)
    loop = asyncio.get_running_loop()
    transports = []
    for i in range(args.subscribers):
        transport, _ = await loop.create_connection(
            lambda i=i: Subscriber(load, args.port, args.delta, i < args.verify),
            "127.0.0.1",
            args.port,
        )
        transports.append(transport)
    await asyncio.wait_for(load.ready.wait(), args.timeout)
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    assert line.strip().startswith("go"), line
    load.base = int(line.split()[1])  # the channel's offset before the run: state 1 is base+1
    load.counting = True
    print("counting", flush=True)
    started = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.done.wait(), args.timeout)
    seconds = time.perf_counter() - started
    result = {
        "frames": load.frames,
        "bytes": load.bytes,
        "payload": load.payload,
        "first_bytes": load.first_bytes,
        "seconds": seconds,
        "verified": load.verified,
        "errors": load.errors[:5],
    }
    print(json.dumps(result), flush=True)
    for transport in transports:
        transport.abort()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--delta", action="store_true", help='subscribe with "delta": "fossil"')
    parser.add_argument("--verify", type=int, default=10, help="connections that decode")
    parser.add_argument("--timeout", type=float, default=120.0)
    return parser.parse_args()


if __name__ == "__main__":
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(parse_args()))
    else:
        uvloop.run(main(parse_args()))
