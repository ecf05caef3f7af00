"""Benchmark what a middleware layer adds to one small request, in-process.

A GET answered with a 5-byte text body (below `gzip_min_size`) through the app's server entry
points, `wants_stream` then `dispatch`, over a stand-in connection that takes every byte (no
socket, no loop). Variants: the bare App (gzip inside it: one length comparison on this path);
the App in a pass-through `Middleware`; and the App in a wrapper shaped like a gzip
middleware would have to be over the protocol (an ExchangeView per request whose `respond`
looks at the body's size). Reports CPU nanoseconds per request: the minimum over the repeats
(the figure that least depends on what else runs on the machine) and the median.

Usage (from the repo root):
    python -m bench.middleware                # a few seconds
    python -m bench.middleware --repeat 10    # quicker, noisier

Standard library only; nothing leaves the process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from rtserve import App, Request
from rtserve.app.middleware import ExchangeView, Middleware
from rtserve.histogram import Histogram
from rtserve.protocol.http11 import Header, RequestHead
from rtserve.server.exchange import Exchange
from rtserve.server.settings import ServerSettings
from rtserve.server.state import Application

PER_RUN = 2000  # requests per timed run
GZIP_MIN = 1024


class _Stats:
    bytes_sent = 0

    def __init__(self) -> None:
        self.http_latency = Histogram()


class _State:
    date_line = b"date: Mon, 07 Dec 2026 00:00:00 GMT\r\n"
    server_line = b"server: rtserve\r\n"

    def __init__(self) -> None:
        self.stats = _Stats()


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass


class _Connection:
    """An HTTP connection that takes every response."""

    closed = False
    bytes_out = 0

    def __init__(self) -> None:
        self.state = _State()
        self.transport = _Transport()

    def keep_alive_after(self, exchange: Exchange) -> bool:
        return True

    def exchange_finished(self, exchange: Exchange) -> None:
        pass


class _SizeCheckingView(ExchangeView):
    __slots__ = ()

    def respond(self, status: int, headers: list[Header] | bytes, body: bytes = b"") -> None:
        if len(body) >= GZIP_MIN:
            raise AssertionError("the benchmark's answers are small")
        self.exchange.respond(status, headers, body)


class GZipShaped(Middleware):
    """What a gzip wrapper costs below its minimum size: a view per request, a size check."""

    def dispatch(self, exchange: Exchange) -> Any:
        return self.inner.dispatch(_SizeCheckingView(exchange).as_exchange())


def make_app() -> App:
    app = App(ServerSettings(access_log=False), gzip_min_size=GZIP_MIN)

    @app.route("/plaintext")
    def plaintext(request: Request) -> str:
        return "hello"

    return app


def cost(stack: Application, repeat: int) -> tuple[float, float]:
    """(min, median) CPU ns per request of `stack` over `repeat` runs."""
    conn: Any = _Connection()
    head = RequestHead("GET", b"/plaintext", [(b"host", b"t")])
    runs = []
    for _ in range(repeat):
        exchanges = [Exchange(conn, head, 0.0) for _ in range(PER_RUN)]
        started = time.process_time_ns()
        for exchange in exchanges:
            stack.wants_stream(exchange)
            stack.dispatch(exchange)
        runs.append((time.process_time_ns() - started) / PER_RUN)
        assert exchanges[-1].status == 200
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    variants: list[tuple[str, Application]] = [
        ("App (gzip inside)", make_app()),
        ("Middleware(App)", Middleware(make_app())),
        ("GZip-shaped wrapper", GZipShaped(make_app())),
    ]
    print(f"{'stack':<22} {'min ns':>8} {'median ns':>10}")
    for name, stack in variants:
        low, mid = cost(stack, args.repeat)
        print(f"{name:<22} {low:>8.0f} {mid:>10.0f}")


if __name__ == "__main__":
    main()
