"""Benchmark a reconnect storm: N WebSocket clients reconnect at once after a server restart.

Servers (alternated over the rounds, each pinned to the server core with ``taskset -c 0``):

- ``rtserve``: ``rtserve run bench.sse_apps.rtserve_app:app`` (reload on, the memory broker),
  channel ``storm`` with history. N clients open ``/rt/ws``, ``connect`` and ``subscribe``
  and note their position; the supervisor gets SIGHUP: a new worker takes the channels over
  (reload keeps the memory broker's state) and the old one closes every WebSocket with 1012.
  Once all N are closed, K publications are made (the gap), then all N reconnect at once
  with their ``since``: a client is recovered when its subscribe answer says ``recovered:
  true`` with exactly the K missed publications, in order;
- ``websockets``: the websockets library (``bench/storm_apps/websockets_app.py``) doing the
  same handshake and answering ``connect`` and ``subscribe`` with a trivial result;
- ``raw``: the floor, a bare asyncio protocol answering the handshake and the subscribe reply
  in one write (``bench/storm_apps/raw_app.py``).

For each, the storm: N connections opened at once (no batching), each sending the handshake
and its two commands in one write and waiting for the subscribe answer. Reported: time until
the last answer, failed clients (refused, reset, an error or a wrong answer), handshakes per
second (N / time) and the server's CPU time per handshake (``/proc/PID/stat``, the worker's
for rtserve). The load (this script, one asyncio loop) runs on the load core.

Usage:
    python bench/reconnect_storm.py                        # 5,000 clients, 3 rounds
    python bench/reconnect_storm.py --clients 500 --rounds 1  # a smoke run, seconds

Traffic goes to 127.0.0.1 only; every wait is bounded. Needs websockets (a dev dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import (
    LOAD_CORE,
    SERVER_CORE,
    alternated,
    cpu_ms,
    free_port,
    http_request,
    prepare_load_process,
    start_pinned,
    stop_server,
)
from bench.sse import BATCH, REPO_ROOT, WAIT_S
from bench.ws_apps.load import client_frame

GAP = 10  # publications made while the clients are away
CHANNEL = "storm"


class Client(asyncio.Protocol):
    """One WebSocket client of the channel protocol: handshake, connect, subscribe (with
    `since` when given); `answered` gets the subscribe result (or the error)."""

    def __init__(self, since: dict[str, Any] | None) -> None:
        loop = asyncio.get_running_loop()
        self.since = since
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.answered: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        subscribe: dict[str, Any] = {"id": 2, "op": "subscribe", "channel": CHANNEL}
        if self.since is not None:
            subscribe["since"] = self.since
        transport.write(
            b"GET /rt/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
            + client_frame(1, b'{"id":1,"op":"connect"}')
            + client_frame(1, json.dumps(subscribe).encode())
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self._fail(RuntimeError(self.buffer[:80].decode("latin-1")))
                return
            self.upgraded, self.buffer = True, self.buffer[end + 4 :]
        while len(self.buffer) >= 2:
            opcode, length, start = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, start = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < start + length:
                return
            payload = self.buffer[start : start + length]
            self.buffer = self.buffer[start + length :]
            if opcode == 8:  # close (1012 on a reload): answer by closing
                if self.transport is not None:
                    self.transport.close()
            elif opcode == 1:
                message = json.loads(payload)
                if message.get("id") == 2 and not self.answered.done():
                    if "error" in message:
                        self._fail(RuntimeError(str(message["error"])))
                    else:
                        self.answered.set_result(message["result"])

    def _fail(self, exc: Exception) -> None:
        if not self.answered.done():
            self.answered.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.answered.done():
            self.answered.set_exception(ConnectionError("closed before the subscribe answer"))


@dataclass
class Result:
    storm_ms: float
    failed: int
    handshakes_per_s: float
    server_us_per_handshake: float


@dataclass
class Table:
    rows: dict[str, list[Result]] = field(default_factory=dict)


async def connect_all(port: int, sinces: list[dict[str, Any] | None], batch: int) -> list[Client]:
    """Open a client per `since`, `batch` at a time; a refused connection is a closed client."""
    loop = asyncio.get_running_loop()
    clients: list[Client] = []

    async def one(since: dict[str, Any] | None) -> Client:
        try:
            _, client = await loop.create_connection(lambda: Client(since), "127.0.0.1", port)
            return client
        except OSError as exc:
            client = Client(since)
            client._fail(exc)
            client.connection_lost(exc)
            return client

    for start in range(0, len(sinces), batch):
        clients.extend(await asyncio.gather(*(one(s) for s in sinces[start : start + batch])))
    return clients


async def storm(
    port: int, pid: int, sinces: list[dict[str, Any] | None], check: Callable[..., bool]
) -> Result:
    """All clients at once: time to the last subscribe answer, failures, CPU per handshake."""
    n = len(sinces)
    cpu_before, started = cpu_ms(pid), time.perf_counter()
    clients = await connect_all(port, sinces, n)
    answers = await asyncio.wait_for(
        asyncio.gather(*(c.answered for c in clients), return_exceptions=True), WAIT_S
    )
    wall_ms = (time.perf_counter() - started) * 1000
    server_cpu = cpu_ms(pid) - cpu_before
    failed = sum(
        1
        for answer, since in zip(answers, sinces, strict=True)
        if isinstance(answer, BaseException) or not check(answer, since)
    )
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return Result(wall_ms, failed, n / (wall_ms / 1000), server_cpu * 1000 / n)


def recovered(answer: dict[str, Any], since: dict[str, Any]) -> bool:
    """Recovered with exactly the GAP publications after `since`, in order."""
    offsets = [p["offset"] for p in answer.get("publications", ())]
    expected = list(range(since["offset"] + 1, since["offset"] + GAP + 1))
    return bool(answer.get("recovered")) and offsets == expected


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def measure_rtserve(port: int, supervisor: int, n: int) -> Result:
    first = await connect_all(port, [None] * n, BATCH)
    positions = await asyncio.wait_for(asyncio.gather(*(c.answered for c in first)), WAIT_S)
    await wait_until(lambda: len(children(supervisor)) == 1, "no worker")
    (old,) = children(supervisor)
    os.kill(supervisor, signal.SIGHUP)  # reload: a new worker, the old one closes with 1012
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in first)), WAIT_S)
    await wait_until(lambda: children(supervisor) not in ([], [old]), "no new worker")
    await wait_until(lambda: len(children(supervisor)) == 1, "the old worker stays")
    (worker,) = children(supervisor)
    await http_request(port, "POST", f"/publish?channel={CHANNEL}&count={GAP}", timeout=WAIT_S)
    sinces: list[dict[str, Any] | None] = [
        {"offset": p["offset"], "epoch": p["epoch"]} for p in positions
    ]
    return await storm(port, worker, sinces, recovered)


async def measure_peer(port: int, pid: int, n: int) -> Result:
    return await storm(port, pid, [None] * n, lambda answer, since: isinstance(answer, dict))


SERVERS: dict[str, list[str]] = {
    "rtserve": [
        "-m", "rtserve", "run", "bench.sse_apps.rtserve_app:app", "--reload", "--no-access-log",
        "--port",
    ],
    "websockets": ["-m", "bench.storm_apps.websockets_app"],
    "raw": ["-m", "bench.storm_apps.raw_app"],
}  # fmt: skip


def run_one(name: str, n: int) -> Result:
    port = free_port()
    command = [sys.executable, *SERVERS[name], str(port)]
    proc = start_pinned(command, port, REPO_ROOT, name, timeout=30)
    try:
        if name == "rtserve":
            return asyncio.run(measure_rtserve(port, proc.pid, n))
        return asyncio.run(measure_peer(port, proc.pid, n))
    finally:
        stop_server(proc)


def report(table: Table, n: int, rounds: int) -> str:
    lines = [
        f"{n:,} clients reconnecting at once; medians of {rounds} round(s), servers "
        f"alternated; server on cpu{SERVER_CORE}, load on cpu{LOAD_CORE}.",
        "",
        "| server | time until all answered | failed | handshakes/s | server CPU per handshake |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, results in table.rows.items():
        lines.append(
            f"| {name} | {statistics.median(r.storm_ms for r in results):,.0f} ms "
            f"| {sum(r.failed for r in results)} "
            f"| {statistics.median(r.handshakes_per_s for r in results):,.0f} "
            f"| {statistics.median(r.server_us_per_handshake for r in results):,.0f} µs |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    names = args.servers.split(",")
    prepare_load_process(args.clients * 2)
    table = Table()
    for round_, name in alternated(names, args.rounds):
        result = run_one(name, args.clients)
        table.rows.setdefault(name, []).append(result)
        print(f"{name} round {round_ + 1}: {result}", file=sys.stderr)
    print(report(table, args.clients, args.rounds))


if __name__ == "__main__":
    main()
