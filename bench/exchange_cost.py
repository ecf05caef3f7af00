"""Benchmark the CPU time of one keep-alive GET through the server's hot path, in-process.

An `HTTPConnection` over a stand-in transport that takes every write, serving an `App` with
one plain route: each request is one `data_received` of a small GET, parsed, dispatched,
answered and accounted, with no socket and no loop turn. Prices the Python of the server and
app layers between bytes in and bytes out (the connection, its `Exchange`, the seam between
them). Reports microseconds of CPU per request: the minimum over many repeats (the figure that
least depends on what else runs on the machine) and the median.

Usage (from the repo root):
    python -m bench.exchange_cost                # about 10 s
    python -m bench.exchange_cost --repeat 20    # quicker, noisier

Standard library only; nothing leaves the process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from rtserve.app.app import App
from rtserve.app.request import Request
from rtserve.server.connection import HTTPConnection
from rtserve.server.settings import ServerSettings
from rtserve.server.state import ServerState

PER_RUN = 2000  # requests per timed run
REQUEST = b"GET / HTTP/1.1\r\nhost: bench\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"


class _Transport:
    """Takes every write; never paused, never closing."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.written += len(part)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def make_connection(loop: asyncio.AbstractEventLoop) -> tuple[HTTPConnection, _Transport]:
    app = App()

    @app.route("/")
    def index(request: Request) -> str:
        return "hello"

    state = ServerState(app, ServerSettings(access_log=False), loop)
    app.bind_server_state(state)
    conn = HTTPConnection(state)
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def measure(repeat: int) -> tuple[float, float]:
    """Microseconds of CPU per request: the minimum and the median over `repeat` runs."""
    loop = asyncio.new_event_loop()
    try:
        conn, transport = make_connection(loop)
        conn.data_received(REQUEST)
        if transport.written == 0 or conn.active is not None:
            raise SystemExit("the request was not answered inline: nothing to measure")
        feed = conn.data_received
        times = []
        for _ in range(repeat):
            start = time.process_time()
            for _ in range(PER_RUN):
                feed(REQUEST)
            times.append((time.process_time() - start) / PER_RUN * 1e6)
        return min(times), statistics.median(times)
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=100, help="timed runs (default 100)")
    args = parser.parse_args()
    low, middle = measure(args.repeat)
    print(f"GET / in-process: {low:.2f} us CPU per request (min), {middle:.2f} us (median)")


if __name__ == "__main__":
    main()
