"""A crowd of dashboards: N subscribers of the `metrics` channel, to see thousands of browsers
on one machine.

Each subscriber is what a page does over its WebSocket: `connect`, `subscribe` to `metrics`,
then read every `pub` push. They are raw asyncio connections in one process (a WebSocket
library spends far more per message than the server, and one core of it cannot take a
broadcast to thousands), borrowed from the benchmarks: the connection and frame handling are
`bench/channel_apps/load.py`'s (imported, so this needs the repository checkout, not just
the installed package). Only loopback: the server must listen on 127.0.0.1.

    python examples/live_dashboard/crowd.py                        # 2,000 subscribers
    python examples/live_dashboard/crowd.py --subscribers 5000 --messages 30 --json

It opens the subscribers (128 handshakes at a time), then waits until every one has received
`--messages` publications made after the last one joined (so a collector must be running), and
reports:

- the deliveries made and expected, subscribers that missed some (an offset skipped: the
  channel conflated it because that subscriber fell behind) or lost their connection;
- latency per delivery, p50 and p99: from the sample's `time` (stamped by collector.py before
  its POST, or by the server for its own figures) to the moment a subscriber read it, so it
  holds the publish API's round trip as well as the fan-out; and per message, the latency to
  the LAST subscriber (when one sample had reached everybody).

It stops by itself: when the messages have arrived, or after `--timeout` seconds (exit
status 1, with what did arrive). Every connection is then reset, leaving no TIME_WAIT behind.
The number of subscribers is capped below the open-files limit (one descriptor each; the
limit is raised to its hard value first) and at 18,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/ lives in the checkout, beside rtserve/

from bench.channel_apps.load import RT, Client, Conn  # noqa: E402  (after the path fix)
from bench.ws_apps.load import HOST, client_frame, percentile, raise_nofile  # noqa: E402

CHANNEL = "metrics"
MAX_SUBSCRIBERS = 18_000  # what one server process was shown to hold (docs/benchmarks.md)
SPARE_FILES = 64  # descriptors left for everything else of this process


class DashboardRT(RT):
    """rtserve's channel protocol, subscribing to the crowd's channel; the subscribe reply's
    offset is where the subscriber starts (every publication after it must arrive)."""

    @staticmethod
    def opened(conn: Conn) -> None:
        crowd = conn.client
        assert isinstance(crowd, Crowd)
        subscribe = {"id": 2, "op": "subscribe", "channel": crowd.channel}
        conn.transport.write(
            client_frame(1, b'{"id":1,"op":"connect"}')
            + client_frame(1, json.dumps(subscribe).encode())
        )

    @staticmethod
    def joining(conn: Conn, payload: bytes) -> None:
        if not payload.startswith((b'{"id":1,', b'{"id":2,')):
            return
        reply = json.loads(payload)
        if "error" in reply:
            conn.fail(f"refused: {reply['error']}")
        elif reply["id"] == 2:
            assert isinstance(conn, Subscriber)
            conn.base = conn.last = int(reply["result"]["offset"])
            conn.set_joined()


class Subscriber(Conn):
    """One dashboard: the offsets it got since joining, and where they jumped."""

    __slots__ = ("base", "jumps", "last", "measured")

    def __init__(self, crowd: Crowd, role: str, path: str) -> None:
        super().__init__(crowd, role, path)
        self.base = -1  # the channel's offset when it subscribed
        self.last = -1  # the last offset it received
        self.jumps: list[tuple[int, int]] = []  # (last, next) where offsets skipped
        self.measured = False  # one of the crowd's subscribers once all have joined

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        crowd = self.client
        assert isinstance(crowd, Crowd)
        if self.measured and crowd.end is not None and self.last < crowd.end:
            crowd._finish_one()  # it will not get there: do not wait for it

    def on_push(self, payload: bytes, now: int) -> None:  # a text frame after joining
        crowd = self.client
        assert isinstance(crowd, Crowd)
        crowd.received(self, payload, now)


@dataclass
class Report:
    """What a crowd saw. Latencies in milliseconds (None when nothing was measured)."""

    subscribers: int  # asked for
    joined: int
    join_seconds: float
    messages: int  # publications measured: offsets first_offset+1 .. last_offset
    first_offset: int
    last_offset: int
    deliveries: int  # of those publications, to the joined subscribers
    expected: int
    missed: int  # deliveries that did not happen (conflated away, or connection lost)
    subscribers_missing: int  # subscribers that missed at least one
    closed: int  # subscribers whose connection ended during the run
    complete: bool  # every subscriber got every measured publication
    seconds: float  # from the last join to the end of the run
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    to_last_p50_ms: float | None  # per message: to its last subscriber
    to_last_p99_ms: float | None
    errors: list[str] = field(default_factory=list)


class Crowd(Client):
    """N subscribers of `channel` on 127.0.0.1:`port`, in this process's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int, channel: str = CHANNEL):
        super().__init__(loop, port, "rt", "")
        self.proto = DashboardRT
        self.channel = channel
        self.subs: list[Subscriber] = []
        self.times: dict[int, list[int]] = {}  # offset -> time_ns of each delivery
        self.stamps: dict[int, float] = {}  # offset -> the sample's own `time`
        self.end: int | None = None  # the last offset to wait for
        self.finished = 0  # subscribers that reached `end`
        self.all_done: asyncio.Future[None] = loop.create_future()

    async def connect(self, role: str, path: str | None = None) -> Conn:
        conn = Subscriber(self, role, path or self.proto.path)
        await self.loop.create_connection(lambda: conn, HOST, self.port)
        await asyncio.wait_for(conn.joined, 30)
        return conn

    def received(self, sub: Subscriber, payload: bytes, now: int) -> None:
        message = json.loads(payload)
        if message.get("push") != "pub":
            return
        offset = int(message["offset"])
        if offset <= sub.last:
            return  # not expected from the server; ignored like rtserve.js would
        if offset != sub.last + 1:
            sub.jumps.append((sub.last, offset))
        reached = self.end is not None and sub.last < self.end <= offset
        sub.last = offset
        self.times.setdefault(offset, []).append(now)
        if offset not in self.stamps:
            data = message.get("data")
            stamp = data.get("time") if isinstance(data, dict) else None
            if isinstance(stamp, int | float):
                self.stamps[offset] = float(stamp)
        if reached:
            self._finish_one()

    def _finish_one(self) -> None:
        self.finished += 1
        if self.finished >= len(self.subs) and not self.all_done.done():
            self.all_done.set_result(None)

    async def watch(
        self,
        subscribers: int,
        messages: int,
        timeout: float,
        on_ready: Callable[[int], Any] | None = None,
    ) -> Report:
        """Open `subscribers`, then wait for `messages` publications after the last join
        (at most `timeout` seconds for everything). `on_ready(offset)` is called once all
        have joined, with the offset after which publications are measured."""
        deadline = self.loop.time() + timeout
        t0 = time.monotonic()
        try:
            opened, errors = await asyncio.wait_for(self.open_many(subscribers), timeout)
        except TimeoutError:
            opened, errors = [], [f"not every subscriber joined within {timeout:.0f} s"]
        self.subs = [c for c in opened if isinstance(c, Subscriber) and not c.closed]
        for sub in self.subs:
            sub.measured = True
        join_seconds = time.monotonic() - t0
        start = max((s.base for s in self.subs), default=0)
        self.end = start + messages
        self.finished = sum(1 for s in self.subs if s.last >= self.end)
        if self.subs and self.finished >= len(self.subs):
            self.all_done.set_result(None)
        t1 = time.monotonic()
        if on_ready is not None and self.subs:
            on_ready(start)
        if self.subs:
            remaining = max(0.0, deadline - self.loop.time())
            try:
                await asyncio.wait_for(asyncio.shield(self.all_done), remaining)
            except TimeoutError:
                errors.append(f"timed out after {timeout:.0f} s")
        seconds = time.monotonic() - t1
        report = self._report(subscribers, join_seconds, start, messages, seconds, errors)
        for sub in opened:
            sub.abort()
        return report

    def _report(
        self,
        asked: int,
        join_seconds: float,
        start: int,
        messages: int,
        seconds: float,
        errors: list[str],
    ) -> Report:
        end = start + messages
        window = range(start + 1, end + 1)
        deliveries = sum(len(self.times.get(o, ())) for o in window)
        missing = 0
        for sub in self.subs:
            got = sub.last >= end and not any(a < end and b > start + 1 for a, b in sub.jumps)
            missing += not got
        latencies: list[float] = []
        to_last: list[float] = []
        for offset in window:
            stamp = self.stamps.get(offset)
            times = self.times.get(offset)
            if stamp is None or not times:
                continue
            latencies.extend((t / 1e9 - stamp) * 1000 for t in times)
            to_last.append((max(times) / 1e9 - stamp) * 1000)
        expected = len(self.subs) * messages

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return Report(
            subscribers=asked,
            joined=len(self.subs),
            join_seconds=round(join_seconds, 2),
            messages=messages,
            first_offset=start + 1,
            last_offset=end,
            deliveries=deliveries,
            expected=expected,
            missed=expected - deliveries,
            subscribers_missing=missing,
            closed=sum(1 for s in self.subs if s.closed),
            complete=bool(self.subs) and deliveries == expected and missing == 0,
            seconds=round(seconds, 2),
            latency_p50_ms=ms(percentile(latencies, 50)),
            latency_p99_ms=ms(percentile(latencies, 99)),
            latency_max_ms=ms(max(latencies, default=None)),
            to_last_p50_ms=ms(percentile(to_last, 50)),
            to_last_p99_ms=ms(percentile(to_last, 99)),
            errors=errors[:5],
        )


def allowed_subscribers(asked: int) -> int:
    """`asked`, capped at MAX_SUBSCRIBERS and below this process's open-files limit (raised
    to its hard limit first)."""
    return max(1, min(asked, MAX_SUBSCRIBERS, raise_nofile() - SPARE_FILES))


async def watch(
    port: int,
    subscribers: int,
    messages: int,
    timeout: float,
    *,
    channel: str = CHANNEL,
    on_ready: Callable[[int], Any] | None = None,
) -> Report:
    """A crowd of `subscribers` on 127.0.0.1:`port` waiting for `messages` publications;
    see Crowd.watch. Bounded by `timeout` seconds (plus the resets at the end)."""
    crowd = Crowd(asyncio.get_running_loop(), port, channel)
    return await crowd.watch(allowed_subscribers(subscribers), messages, timeout, on_ready)


def describe(report: Report) -> str:
    """The report for a human, a few lines."""
    lines = [
        f"{report.joined:,} of {report.subscribers:,} subscribers joined in "
        f"{report.join_seconds} s",
        f"messages {report.first_offset}..{report.last_offset} ({report.messages}): "
        f"{report.deliveries:,} of {report.expected:,} deliveries in {report.seconds} s"
        + ("" if report.complete else f"; {report.missed:,} missed")
        + f", {report.subscribers_missing} subscriber(s) missed some, {report.closed} closed",
        f"latency per delivery: p50 {report.latency_p50_ms} ms, p99 {report.latency_p99_ms} ms,"
        f" max {report.latency_max_ms} ms",
        f"latency to the last subscriber: p50 {report.to_last_p50_ms} ms, "
        f"p99 {report.to_last_p99_ms} ms",
    ]
    lines += [f"error: {e}" for e in report.errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="the server's port on 127.0.0.1")
    parser.add_argument("--subscribers", type=int, default=2000, help="how many (2,000)")
    parser.add_argument("--messages", type=int, default=10, help="publications to wait for")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds, at most")
    parser.add_argument("--channel", default=CHANNEL)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.subscribers < 1 or args.messages < 1 or args.timeout <= 0:
        parser.error("--subscribers and --messages must be >= 1, --timeout > 0")
    n = allowed_subscribers(args.subscribers)
    if n < args.subscribers:
        print(f"note: {n:,} subscribers (the open-files limit and a cap of 18,000)")

    def ready(offset: int) -> None:
        if not args.json:
            print(f"all joined at offset {offset}; waiting for {args.messages} messages")

    async def run() -> Report:
        return await watch(
            args.port, n, args.messages, args.timeout, channel=args.channel, on_ready=ready
        )

    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # uvloop is not on every platform: the default loop is slower
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        report = runner.run(run())
    print(json.dumps(asdict(report)) if args.json else describe(report))
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
