"""Benchmark SSE streams at scale: RSS per idle stream and fan-out, beside /rt/ws in one run.

One server (``bench/sse_apps/rtserve_app.py`` under ``rtserve run``, pinned to the server
core with ``taskset -c 0``), started afresh per transport, per N, per round; the transports
alternate over the rounds. Per run: open N streams on the channel ``bench`` (``GET
/rt/sse?channel=bench``, or a ``/rt/ws`` WebSocket with ``connect`` + ``subscribe``, the path
bench/channels.py measures), wait until the server counts N subscribers, read its RSS (per
stream: the growth over the idle server, divided by N), then publish K messages of 100 bytes
from the server (``POST /publish?count=K``) and time until every stream has all K: deliveries
per second (N * K / time) and the server's CPU time per delivery (``/proc/PID/stat``). The load
(this script, one asyncio loop of raw protocols) runs on the load core (``taskset -c 1``), and
reads its own CPU time too: a throughput figure counts only when the server core is near 100%
and the load core below ~90% (both printed per run).

Usage:
    python bench/sse.py                                    # 1,000, 5,000, 10,000; 3 rounds
    python bench/sse.py --streams 1000 --rounds 1 --count 5  # a smoke run, seconds

Traffic goes to 127.0.0.1 only; every wait is bounded. 10,000 streams need 10,000
descriptors in each process (the script raises its limit, which the server inherits).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import (
    LOAD_CORE,
    SERVER_CORE,
    alternated,
    cpu_ms,
    free_port,
    http_request,
    prepare_load_process,
    rss_kib,
    start_pinned,
    stop_server,
    wait_for_count,
)
from bench.ws_apps.load import client_frame

REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 120.0
BATCH = 500  # connections opened at once
APP = "bench.sse_apps.rtserve_app:app"


class Stream(asyncio.Protocol):
    """One subscriber: counts the publications it receives (`marker` occurrences), whatever
    the chunking, and sets `done` once it has `expected` of them."""

    marker = b""
    request = b""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.count = 0
        self.expected = 0
        self.tail = b""
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        chunk = self.tail + data
        self.count += chunk.count(self.marker)
        # a marker cut in two by the chunking is counted with the next chunk
        self.tail = chunk[-(len(self.marker) - 1) :]
        if self.expected and self.count >= self.expected and not self.done.done():
            self.done.set_result(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before every publication"))


class SSEStream(Stream):
    marker = b"event: pub\n"
    request = b"GET /rt/sse?channel=bench HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class WSStream(Stream):
    marker = b'"push":"pub"'
    request = (
        b"GET /rt/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
        + client_frame(1, b'{"id":1,"op":"connect"}')
        + client_frame(1, b'{"id":2,"op":"subscribe","channel":"bench"}')
    )


TRANSPORTS: dict[str, type[Stream]] = {"sse": SSEStream, "ws": WSStream}


def own_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


@dataclass
class Result:
    kib_per_stream: float
    deliveries_per_s: float
    server_us_per_delivery: float
    server_core: float  # share of the fan-out's wall time the server spent on the CPU
    load_core: float


@dataclass
class Table:
    rows: dict[tuple[str, int], list[Result]] = field(default_factory=dict)


async def open_streams(kind: type[Stream], port: int, n: int) -> list[Stream]:
    loop = asyncio.get_running_loop()
    streams: list[Stream] = []
    for start in range(0, n, BATCH):
        batch = await asyncio.gather(
            *(
                loop.create_connection(kind, "127.0.0.1", port)
                for _ in range(start, min(n, start + BATCH))
            )
        )
        streams.extend(protocol for _, protocol in batch)
    return streams


async def measure(kind: type[Stream], n: int, count: int, port: int, pid: int) -> Result:
    idle = rss_kib(pid)
    streams = await open_streams(kind, port, n)
    await wait_for_count(port, "/count", n, "subscribed streams", WAIT_S)
    await asyncio.sleep(0.5)  # the last subscribe answers and preambles are written
    kib_per_stream = (rss_kib(pid) - idle) / n
    base = [s.count for s in streams]
    for stream, before in zip(streams, base, strict=True):
        stream.expected = before + count
    server_before, load_before = cpu_ms(pid), own_cpu_ms()
    started = time.perf_counter()
    await http_request(port, "POST", f"/publish?count={count}", timeout=WAIT_S)
    finished = await asyncio.wait_for(asyncio.gather(*(s.done for s in streams)), WAIT_S)
    wall_ms = (max(finished) - started) * 1000
    server_cpu, load_cpu = cpu_ms(pid) - server_before, own_cpu_ms() - load_before
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()
    deliveries = n * count
    return Result(
        kib_per_stream,
        deliveries / (wall_ms / 1000),
        server_cpu * 1000 / deliveries,
        server_cpu / wall_ms,
        load_cpu / wall_ms,
    )


def start_server(port: int) -> subprocess.Popen[bytes]:
    """`rtserve run` of the bench app pinned to the server core, once it accepts."""
    command = [
        sys.executable, "-m", "rtserve", "run", APP, "--port", str(port), "--no-reload",
        "--no-access-log",
    ]  # fmt: skip
    return start_pinned(command, port, REPO_ROOT, "the server")


def run_one(kind: type[Stream], n: int, count: int) -> Result:
    port = free_port()
    proc = start_server(port)
    try:
        # taskset execs the server, and `rtserve run --no-reload` serves in that process.
        return asyncio.run(measure(kind, n, count, port, proc.pid))
    finally:
        stop_server(proc)


def report(table: Table, streams: list[int], rounds: int) -> str:
    lines = [
        f"Medians of {rounds} round(s), transports alternated; server on cpu{SERVER_CORE}, "
        f"load on cpu{LOAD_CORE}.",
        "",
        "| streams | transport | RSS per idle stream | fan-out deliveries/s "
        "| server CPU per delivery | server core | load core | vs /rt/ws |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in streams:
        medians: dict[str, Result] = {}
        for name in TRANSPORTS:
            results = table.rows.get((name, n), [])
            if results:
                medians[name] = Result(
                    *(
                        statistics.median(getattr(r, f) for r in results)
                        for f in Result.__dataclass_fields__
                    )
                )
        for name, m in medians.items():
            ratio = ""
            if "ws" in medians and name != "ws":
                ratio = f"{m.deliveries_per_s / medians['ws'].deliveries_per_s:.0%}"
            lines.append(
                f"| {n:,} | {name} | {m.kib_per_stream:.1f} KiB | {m.deliveries_per_s:,.0f} "
                f"| {m.server_us_per_delivery:.2f} µs | {m.server_core:.0%} "
                f"| {m.load_core:.0%} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--streams", default="1000,5000,10000", help="comma-separated Ns")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=20, help="publications per fan-out")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    args = parser.parse_args()
    streams = [int(n) for n in args.streams.split(",")]
    names = args.transports.split(",")
    prepare_load_process(max(streams))
    table = Table()
    for n in streams:
        for round_, name in alternated(names, args.rounds):
            result = run_one(TRANSPORTS[name], n, args.count)
            table.rows.setdefault((name, n), []).append(result)
            print(f"{name} {n} round {round_ + 1}: {result}", file=sys.stderr)
    print(report(table, streams, args.rounds))


if __name__ == "__main__":
    main()
