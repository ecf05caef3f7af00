"""Benchmark long polling: N pending polls on one channel, released by one publication.

Servers (alternated, one process each pinned to the server core with ``taskset -c 0``):

- ``rtserve``: ``GET /rt/poll`` on a channel with history, as a user configures it
  (``bench/longpoll_apps/rtserve_app.py``);
- ``tornado``: Tornado's long-poll pattern from its chat demo, a message buffer with a
  ``Condition`` every poll waits on (``bench/longpoll_apps/tornado_app.py``).

Per server, per N, per round: open N keep-alive connections, each sending one poll; wait until
the server says N are pending; read the server's RSS (per pending poll: the growth over the
idle server, divided by N); publish once and time until the LAST poll has its whole answer
(and the server's CPU time spent meanwhile); check each answer carries the publication; then
every poller polls again with the position it was given, a second publication is made, and
each must receive it (`lost` counts those that did not). The load (this script) runs on the
load core (``taskset -c 1``, set by the script itself).

Usage:
    python bench/longpoll.py                          # 1,000, 5,000, 10,000 polls, 3 rounds
    python bench/longpoll.py --polls 1000 --rounds 1  # a smoke run, seconds

Traffic goes to 127.0.0.1 only; every wait is bounded. Needs tornado for the peer
(``pip install -e '.[bench]'``) and 2 cores; 10,000 polls need 10,000 descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/longpoll.py`, sys.path[0] is bench/, where http.py would shadow the stdlib.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "bench":
    sys.path[0] = str(REPO_ROOT)

from bench.procs import (  # noqa: E402  (after the sys.path fix)
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

WAIT_S = 120.0


@dataclass
class Server:
    name: str
    command: Callable[[int], list[str]]
    first_poll: str
    next_poll: Callable[[dict[str, Any]], str]
    seq_of: Callable[[dict[str, Any]], Any]


def _rtserve_next(answer: dict[str, Any]) -> str:
    lp = answer["channels"]["lp"]
    return f"/rt/poll?channel=lp&timeout=55&since=lp:{lp['offset']}:{lp['epoch']}"


SERVERS = {
    "rtserve": Server(
        "rtserve",
        lambda port: [
            sys.executable,
            "-m",
            "rtserve",
            "run",
            "bench.longpoll_apps.rtserve_app:app",
            "--port",
            str(port),
            "--no-reload",
            "--no-access-log",
        ],
        "/rt/poll?channel=lp&timeout=55",
        _rtserve_next,
        lambda answer: answer["channels"]["lp"]["publications"][-1]["data"]["seq"],
    ),
    "tornado": Server(
        "tornado",
        lambda port: [sys.executable, "-m", "bench.longpoll_apps.tornado_app", str(port)],
        "/poll?cursor=0",
        lambda answer: f"/poll?cursor={answer['messages'][-1]['id']}",
        lambda answer: answer["messages"][-1]["data"]["seq"],
    ),
}


class Poller(asyncio.Protocol):
    """One keep-alive connection that sends a GET and reads one Content-Length answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answered: asyncio.Future[tuple[float, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get(self, path: str) -> None:
        assert self.transport is not None
        self.buffer.clear()
        self.answered = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answered is None or self.answered.done():
            return
        head = bytes(self.buffer[:end]).lower()
        start = head.find(b"content-length:")
        if start < 0:
            self.answered.set_exception(RuntimeError(f"no content-length: {head[:200]!r}"))
            return
        length = int(head[start + 15 :].split(b"\r\n", 1)[0])
        if len(self.buffer) >= end + 4 + length:
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            self.answered.set_result((time.perf_counter(), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answered is not None and not self.answered.done():
            self.answered.set_exception(ConnectionError("closed before the answer"))


@dataclass
class Result:
    release_ms: float
    release_cpu_ms: float
    kib_per_poll: float
    lost: int


@dataclass
class Table:
    rows: dict[tuple[str, int], list[Result]] = field(default_factory=dict)


async def release(
    port: int, pid: int, pollers: list[Poller], seq: int, server: Server
) -> tuple[float, float, list[dict[str, Any]]]:
    """Publish `seq`; (ms until the last answer, server CPU ms meanwhile, the answers)."""
    cpu_before = cpu_ms(pid)
    started = time.perf_counter()
    await http_request(port, "POST", "/publish", json.dumps({"seq": seq}).encode())
    done = await asyncio.wait_for(
        asyncio.gather(*(p.answered for p in pollers if p.answered)), WAIT_S
    )
    last = max(at for at, _ in done)
    answers = [json.loads(body) for _, body in done]
    return (last - started) * 1000, cpu_ms(pid) - cpu_before, answers


async def measure(server: Server, n: int, port: int, pid: int) -> Result:
    loop = asyncio.get_running_loop()
    idle = rss_kib(pid)
    pollers: list[Poller] = []
    for start in range(0, n, 500):
        batch = await asyncio.gather(
            *(
                loop.create_connection(Poller, "127.0.0.1", port)
                for _ in range(start, min(n, start + 500))
            )
        )
        pollers.extend(protocol for _, protocol in batch)
    for poller in pollers:
        poller.get(server.first_poll)
    await wait_for_count(port, "/pending", n, "pending polls", WAIT_S)
    kib_per_poll = (rss_kib(pid) - idle) / n
    release_ms, release_cpu, answers = await release(port, pid, pollers, 1, server)
    assert all(server.seq_of(a) == 1 for a in answers), "an answer lacks the publication"
    for poller, answer in zip(pollers, answers, strict=True):
        poller.get(server.next_poll(answer))
    await wait_for_count(port, "/pending", n, "pending polls", WAIT_S)
    _, _, again = await release(port, pid, pollers, 2, server)
    lost = sum(1 for a in again if server.seq_of(a) != 2)
    for poller in pollers:
        if poller.transport is not None:
            poller.transport.close()
    return Result(release_ms, release_cpu, kib_per_poll, lost)


def run_one(server: Server, n: int) -> Result:
    port = free_port()
    proc = start_pinned(server.command(port), port, REPO_ROOT, server.name)
    try:
        # taskset execs the server, and `rtserve run --no-reload` serves in that process.
        return asyncio.run(measure(server, n, port, proc.pid))
    finally:
        stop_server(proc)


def report(table: Table, polls: list[int], rounds: int) -> str:
    lines = [
        f"Medians of {rounds} round(s), servers alternated; server on cpu{SERVER_CORE}, "
        f"load on cpu{LOAD_CORE}.",
        "",
        "| polls | server | release: time to the last answer | server CPU for the release "
        "| RSS per pending poll | lost | release vs tornado |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in polls:
        medians: dict[str, tuple[float, float, float, int]] = {}
        for name in SERVERS:
            results = table.rows.get((name, n), [])
            if results:
                medians[name] = (
                    statistics.median(r.release_ms for r in results),
                    statistics.median(r.release_cpu_ms for r in results),
                    statistics.median(r.kib_per_poll for r in results),
                    sum(r.lost for r in results),
                )
        for name, (ms, cpu, kib, lost) in medians.items():
            ratio = ""
            if "tornado" in medians and name != "tornado":
                ratio = f"{medians['tornado'][0] / ms:.1f}x faster"
            lines.append(
                f"| {n:,} | {name} | {ms:,.0f} ms | {cpu:,.0f} ms | {kib:.1f} KiB | {lost} "
                f"| {ratio} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", default="1000,5000,10000", help="comma-separated Ns")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    polls = [int(n) for n in args.polls.split(",")]
    names = args.servers.split(",")
    prepare_load_process(max(polls))
    table = Table()
    for n in polls:
        for round_, name in alternated(names, args.rounds):
            result = run_one(SERVERS[name], n)
            table.rows.setdefault((name, n), []).append(result)
            print(f"{name} {n} round {round_ + 1}: {result}", file=sys.stderr)
    print(report(table, polls, args.rounds))


if __name__ == "__main__":
    main()
