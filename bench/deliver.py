"""Benchmark the cost of handing one publication to one subscriber on the fast path.

The path every fan-out takes once per subscriber: ``ChannelSocket.deliver`` (``/rt/ws``) and
``SSEStream.deliver`` when the connection has room and nothing is held back, with the
channel layer's own code and a stand-in connection that takes everything (no socket, no
loop). In-process, so it prices the Python of the channel layer alone; the end-to-end fan-out
is bench/channels.py. Reports nanoseconds per delivery: the minimum over many repeats (the
figure that least depends on what else runs on the machine) and the median.

Usage (from the repo root):
    python -m bench.deliver                # about 10 s
    python -m bench.deliver --repeat 50    # quicker, noisier

Standard library only; nothing leaves the process.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from typing import Any

from rtserve.realtime import sse, ws_session
from rtserve.realtime.hub import HubStats, Outbound
from rtserve.realtime.outbox import Outbox
from rtserve.realtime.rules import ChannelRule

PER_RUN = 1000  # deliveries per timed call


class _Connection:
    """Takes every frame or event (a WebSocketConnection and an HTTP connection in one)."""

    deflate = None
    status = 0  # OPEN
    closed = False

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.transport = self
        self.state = self

    def schedule_flush(self, conn: Any, delay: float = 0.0) -> None:
        """ServerState's: the flush at the end of the tick is left out, as /rt/ws's is."""

    def offer_frame(self, frame: bytes) -> bool:
        self.out.append(frame)
        return True

    def get_write_buffer_size(self) -> int:
        return 0


class _Exchange:
    closed = False

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def buffered(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.conn.out.append(data)


class _Hub:
    stats = HubStats()


def websocket_session() -> tuple[Any, _Connection]:
    """A `/rt/ws` session as `on_open` leaves it, over the stand-in connection."""
    session: Any = ws_session.ChannelSocket.__new__(ws_session.ChannelSocket)
    conn = _Connection()
    session.connection, session.hub = conn, _Hub()
    encode = ws_session._frame_encoder(conn)
    session._outbox = Outbox(conn.offer_frame, encode, _Hub.stats)
    return session, conn


def sse_stream() -> tuple[Any, _Connection]:
    """An SSE stream as `run` leaves it once streaming, over the stand-in connection."""
    stream: Any = sse.SSEStream.__new__(sse.SSEStream)
    conn = _Connection()
    stream.exchange, stream.hub, stream.ended = _Exchange(conn), _Hub(), False
    stream._preamble, stream._limit, stream._wake = None, 1 << 20, None
    stream._out, stream._out_bytes = conn.out, 0
    stream._outbox = Outbox(stream._offer, sse._EVENT, _Hub.stats)
    return stream, conn


def measure(make: Callable[[], tuple[Any, _Connection]], repeat: int) -> tuple[float, float]:
    """Nanoseconds per delivery: the minimum and the median over `repeat` timed runs."""
    subscriber, conn = make()
    deliver = subscriber.deliver
    message = Outbound(b'{"push":"pub","channel":"c","offset":1,"data":1}', 1, channel="c")
    message.epoch = "e"
    _ = message.sse  # built once for every stream, as the Hub's first SSE subscriber does
    rule = ChannelRule("c")

    def run() -> None:
        for _ in range(PER_RUN):
            deliver("c", message, rule)
        conn.out.clear()
        if isinstance(subscriber, sse.SSEStream):
            subscriber._out_bytes = 0  # the count of what the tick queued, as a flush leaves it

    number = 20
    times = timeit.repeat(run, number=number, repeat=repeat)
    scale = 1e9 / (number * PER_RUN)
    return min(times) * scale, statistics.median(times) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=150, help="timed runs per transport")
    args = parser.parse_args()
    for name, make in (("/rt/ws", websocket_session), ("SSE", sse_stream)):
        best, median = measure(make, args.repeat)
        print(f"{name:7} {best:7.0f} ns/delivery (min)  {median:7.0f} (median)")


if __name__ == "__main__":
    main()
