"""Benchmark per-subscriber tag filters: one channel with N subscribers in G filter groups,
against G separate channels of N / G subscribers each, on the same publications.

Both modes deliver the same thing: publication i reaches the N / G subscribers of group i % G.
`filtered`: every subscriber is on the channel `one` with the filter `{"eq": ["group", "<its
group>"]}` (G distinct filters; identical filters share one evaluation per publication) and
publication i is tagged `{"group": "<i % G>"}`. `channels`: subscriber j is on `many:<j % G>`,
publication i goes to `many:<i % G>`. The question is what the filter costs: the server's CPU
time per publication (and per delivery) in `filtered` over `channels` (goal: at most 1.2x).

One server (``bench/filter_apps/rtserve_app.py`` under ``rtserve run``, pinned to the server
core with ``taskset -c 0``), started afresh per mode and per round; the modes alternate over
the rounds and the report gives medians. Per run: open N WebSockets (connect + subscribe), wait
until the server counts N subscribers, then publish K publications from the server (``POST
/publish``) and wait until every subscriber has its K / G; CPU times come from
``/proc/PID/stat`` (server) and getrusage (this load process, pinned to the load core with
``taskset -c 1``), so they hold on a busy machine; the wall-clock deliveries/s do not (they
are printed, marked so). After the measured phase, every 10th subscriber is cut off (no
close handshake), a fifth as many publications again are made, and those subscribers come back
with `since` their last offset; a run counts only if every subscriber then has exactly its
group's publications, in order (recovered ones included).

Usage:
    python bench/filters.py                           # 5,000 subscribers, 50 groups, 5 rounds
    python bench/filters.py --subscribers 500 --rounds 1 --count 100  # a smoke run, seconds

Traffic goes to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python bench/filters.py`
    sys.path.insert(0, str(REPO_ROOT))

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
from bench.ws_apps.load import client_frame  # noqa: E402

WAIT_S = 120.0
BATCH = 500  # connections opened at once
APP = "bench.filter_apps.rtserve_app:app"
MODES = ("filtered", "channels")
CUT_EVERY = 10  # every 10th subscriber is cut off after the measured phase, then recovers
GOAL = 1.2


# A publication as the server sends it (a push, or one of a subscribe's recovered ones): its
# offset and the sequence number its data starts with (bench/filter_apps/rtserve_app.py).
PUB = re.compile(rb'"offset":(\d+),"data":"(\d{10}):')
EPOCH = re.compile(rb'"epoch":"([^"]+)"')


class Subscriber(asyncio.Protocol):
    """One /rt/ws subscriber: reads the sequence numbers of the publications it receives
    (live and recovered), whatever the chunking, and sets `done` once it has `expected` of
    them; `carry`, a subscriber it replaces after a cut, hands over what that one received."""

    def __init__(self, request: bytes, carry: Subscriber | None = None) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.seqs: list[int] = carry.seqs if carry is not None else []
        self.last_offset: int = carry.last_offset if carry is not None else 0
        self.epoch: str | None = carry.epoch if carry is not None else None
        self.expected = 0
        self.buf = b""
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def expect(self, total: int) -> None:
        """Set `done` (a new one if need be) once `total` publications are in, maybe now."""
        if self.done.done():
            self.done = asyncio.get_running_loop().create_future()
        self.expected = total
        self._check()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if self.epoch is None and (found := EPOCH.search(buf)) is not None:
            self.epoch = found[1].decode()
        end = 0
        for match in PUB.finditer(buf):
            self.seqs.append(int(match[2]))
            self.last_offset = max(self.last_offset, int(match[1]))
            end = match.end()
        self.buf = buf[end:][-256:]  # a match cut in two is completed by the next chunk
        self._check()

    def _check(self) -> None:
        if self.expected and len(self.seqs) >= self.expected and not self.done.done():
            self.done.set_result(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before every publication"))


KINDS = ("lookup", "guarded", "evaluated")


def group_filter(kind: str, group: int) -> dict[str, Any]:
    """The filter of `group`: an `eq`, which the server finds with a dict lookup (`lookup`);
    an `and` of that `eq` and a `not`, looked up then evaluated for the one group found
    (`guarded`); or an `or` of two `eq`s, which the server evaluates once per group for every
    publication (`evaluated`, the slowest form)."""
    eq = {"eq": ["group", str(group)]}
    if kind == "lookup":
        return eq
    if kind == "guarded":
        return {"and": [eq, {"not": {"eq": ["muted", "yes"]}}]}
    return {"or": [eq, {"eq": ["alias", str(group)]}]}


def subscribe_request(
    mode: str, group: int, kind: str = "lookup", since: tuple[int, str | None] | None = None
) -> bytes:
    """The upgrade, `connect` and `subscribe` of a subscriber of `group` (from `since`, an
    offset and epoch, after a cut), in one write."""
    subscribe: dict[str, Any]
    if mode == "filtered":
        subscribe = {"channel": "one", "filter": group_filter(kind, group)}
    else:
        subscribe = {"channel": f"many:{group}"}
    if since is not None:
        subscribe["since"] = {"offset": since[0], "epoch": since[1]}
    command = json.dumps({"id": 2, "op": "subscribe", **subscribe}).encode()
    return (
        b"GET /rt/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
        + client_frame(1, b'{"id":1,"op":"connect"}')
        + client_frame(1, command)
    )


@dataclass
class Result:
    server_us_per_publication: float
    server_us_per_delivery: float
    deliveries_per_s: float  # wall clock: unreliable on a busy machine
    server_core: float  # share of the fan-out's wall time the server spent on the CPU
    load_core: float
    kib_per_subscriber: float


def own_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


async def measure(mode: str, args: argparse.Namespace, port: int, pid: int) -> Result:
    """Open the subscribers, publish `count` (the measured phase), then cut every 10th
    subscriber, publish a fifth as many again, bring those back with `since`, and check that
    every subscriber has exactly its group's publications, in order (RuntimeError if not)."""
    n, groups, count = args.subscribers, args.groups, args.count
    loop = asyncio.get_running_loop()

    async def open_subscribers(
        members: list[int], carried: dict[int, Subscriber]
    ) -> list[Subscriber]:
        opened: list[Subscriber] = []
        for first in range(0, len(members), BATCH):

            def make(j: int) -> Subscriber:
                old = carried.get(j)
                since = None if old is None else (old.last_offset, old.epoch)
                request = subscribe_request(mode, j % groups, args.kind, since)
                return Subscriber(request, old)

            batch = await asyncio.gather(
                *(
                    loop.create_connection(lambda j=j: make(j), "127.0.0.1", port)  # type: ignore[misc]
                    for j in members[first : first + BATCH]
                )
            )
            opened.extend(protocol for _, protocol in batch)
        return opened

    async def publish(start: int, k: int) -> None:
        query = f"mode={mode}&start={start}&count={k}&groups={groups}&size={args.size}"
        await http_request(port, "POST", f"/publish?{query}", timeout=WAIT_S)

    idle = rss_kib(pid)
    subs = await open_subscribers(list(range(n)), {})
    await wait_for_count(port, "/count", n, "subscribers", WAIT_S)
    await asyncio.sleep(0.5)  # the last subscribe answers are written
    kib = (rss_kib(pid) - idle) / n
    per_group = count // groups
    for sub in subs:
        sub.expect(per_group)
    server_before, load_before = cpu_ms(pid), own_cpu_ms()
    started = time.perf_counter()
    await publish(0, count)
    finished = await asyncio.wait_for(asyncio.gather(*(s.done for s in subs)), WAIT_S)
    wall_ms = (max(finished) - started) * 1000
    server_cpu, load_cpu = cpu_ms(pid) - server_before, own_cpu_ms() - load_before

    # Not measured: a cut, publications meanwhile, recovery from each one's last offset.
    cut = list(range(0, n, CUT_EVERY))
    for j in cut:
        transport = subs[j].transport
        assert transport is not None
        transport.abort()
    deadline = time.monotonic() + WAIT_S
    while int(await http_request(port, "GET", "/count")) > n - len(cut):  # the server saw it
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not see the cut subscribers go")
        await asyncio.sleep(0.1)
    more = max(groups, count // 5 // groups * groups)
    await publish(count, more)
    back = await open_subscribers(cut, {j: subs[j] for j in cut})
    for j, sub in zip(cut, back, strict=True):
        subs[j] = sub
    for sub in subs:
        sub.expect((count + more) // groups)
    await asyncio.wait_for(asyncio.gather(*(s.done for s in subs)), WAIT_S)
    await asyncio.sleep(0.2)  # anything more (a wrong delivery) would arrive by now
    wrong = [
        j for j, sub in enumerate(subs) if sub.seqs != list(range(j % groups, count + more, groups))
    ]
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()
    if wrong:
        raise RuntimeError(
            f"{mode}: {len(wrong)} subscribers did not get exactly their group's publications "
            f"in order (subscriber {wrong[0]}: {subs[wrong[0]].seqs[:5]}...)"
        )
    deliveries = n * per_group
    return Result(
        server_cpu * 1000 / count,
        server_cpu * 1000 / deliveries,
        deliveries / (wall_ms / 1000),
        server_cpu / wall_ms,
        load_cpu / wall_ms,
        kib,
    )


def run_one(mode: str, args: argparse.Namespace) -> Result:
    port = free_port()
    command = [
        sys.executable, "-m", "rtserve", "run", APP, "--port", str(port), "--no-reload",
        "--no-access-log",
    ]  # fmt: skip
    proc = start_pinned(command, port, REPO_ROOT, "the server")
    try:  # taskset execs the server, and `rtserve run --no-reload` serves in that process
        return asyncio.run(measure(mode, args, port, proc.pid))
    finally:
        stop_server(proc)


def _git() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def report(results: dict[str, list[Result]], args: argparse.Namespace) -> str:
    medians = {
        mode: Result(*(statistics.median(getattr(r, f.name) for r in rs) for f in fields(Result)))
        for mode, rs in results.items()
        if rs
    }
    command = " ".join(["python", "bench/filters.py", *sys.argv[1:]])
    lines = [
        f"`{command}` — {dt.date.today()}, commit {_git()}, {platform.python_version()}, "
        f"{os.cpu_count()} cores; server on cpu{SERVER_CORE}, load on cpu{LOAD_CORE}.",
        f"{args.subscribers:,} subscribers in {args.groups} groups "
        f"({args.subscribers // args.groups} each), {args.count} publications of {args.size} "
        f"bytes per run (each subscriber gets "
        f"{args.count // args.groups}); filters of kind `{args.kind}` "
        f"(e.g. `{json.dumps(group_filter(args.kind, 0))}`); medians of {args.rounds} round(s), "
        "modes alternated.",
        "",
        "| mode | server CPU per publication | server CPU per delivery | RSS per subscriber "
        "| deliveries/s (wall, busy machine) | server core | load core |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, m in medians.items():
        lines.append(
            f"| {mode} | {m.server_us_per_publication:,.0f} µs | {m.server_us_per_delivery:.2f} µs "
            f"| {m.kib_per_subscriber:.1f} KiB | {m.deliveries_per_s:,.0f} | {m.server_core:.0%} "
            f"| {m.load_core:.0%} |"
        )
    if len(medians) == 2:
        ratio = (
            medians["filtered"].server_us_per_publication
            / medians["channels"].server_us_per_publication
        )
        verdict = "met" if ratio <= GOAL else "NOT met"
        lines += [
            "",
            f"filtered / channels, server CPU per publication: **{ratio:.2f}x** "
            f"(goal <= {GOAL}x: {verdict}).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--groups", type=int, default=50, help="distinct filters / channels")
    parser.add_argument("--count", type=int, default=1000, help="publications per run")
    parser.add_argument("--size", type=int, default=100, help="bytes of each publication")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="lookup",
        help="the form of the filters (see group_filter): lookup, guarded or evaluated",
    )
    args = parser.parse_args()
    if args.count % args.groups:
        parser.error("--count must be a multiple of --groups")
    modes = args.modes.split(",")
    prepare_load_process(args.subscribers)
    results: dict[str, list[Result]] = {mode: [] for mode in modes}
    for round_, mode in alternated(modes, args.rounds):
        result = run_one(mode, args)
        results[mode].append(result)
        print(f"{mode} round {round_ + 1}: {result}", file=sys.stderr)
    print(report(results, args))


if __name__ == "__main__":
    main()
