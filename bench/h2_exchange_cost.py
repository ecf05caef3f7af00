"""Benchmark the CPU time of one GET on an HTTP/2 stream through the server, in-process.

The HTTP/2 twin of bench/exchange_cost.py: an `H2Connection` over the same stand-in transport
(no TLS, no socket, no loop turn), serving the same one-route `App`. The requests are framed
beforehand by an h2 client (one HEADERS frame each, END_STREAM, HPACK-indexed as a browser's
would be after the first), then fed one `data_received` each: h2's parsing and HPACK, the
stream and its `Exchange`, the app's dispatch, the response's HEADERS and DATA. Reports
microseconds of CPU per request, the minimum over many repeats and the median, beside the
floor (the h2 library alone, answering canned HEADERS and DATA) and the HTTP/1.1 figure
measured the same way.

Usage (from the repo root):
    python -m bench.h2_exchange_cost               # about 10 s
    python -m bench.h2_exchange_cost --repeat 20   # quicker, noisier

Needs h2 (the http2 extra). Nothing leaves the process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from h2.config import H2Configuration
from h2.connection import H2Connection as H2Client

from bench.exchange_cost import PER_RUN, _Transport, make_connection
from bench.exchange_cost import measure as measure_http11
from rtserve.server.h2_connection import H2Connection


def framed_requests(count: int) -> tuple[bytes, list[bytes]]:
    """The client's preface and SETTINGS, and `count` GET / requests, one bytes each."""
    client = H2Client(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.increment_flow_control_window(2**31 - 1 - 65535)  # room for every response
    preface = client.data_to_send()
    requests = []
    for _ in range(count):
        stream_id = client.get_next_available_stream_id()
        fields = [
            (b":method", b"GET"),
            (b":path", b"/"),
            (b":scheme", b"https"),
            (b":authority", b"bench"),
            (b"user-agent", b"bench"),
            (b"accept", b"*/*"),
        ]
        client.send_headers(stream_id, fields, end_stream=True)
        requests.append(client.data_to_send())
    return preface, requests


def measure(repeat: int) -> tuple[float, float]:
    """Microseconds of CPU per request on an h2 stream: the minimum and the median."""
    loop = asyncio.new_event_loop()
    try:
        http11, _ = make_connection(loop)  # its state and app, served over HTTP/2 here
        times = []
        for _ in range(repeat):
            conn = H2Connection(http11.state)
            transport = _Transport()
            conn.connection_made(transport)  # type: ignore[arg-type]
            preface, requests = framed_requests(PER_RUN)
            conn.data_received(preface)
            before = transport.written
            feed = conn.data_received
            start = time.process_time()
            for data in requests:
                feed(data)
            times.append((time.process_time() - start) / PER_RUN * 1e6)
            if transport.written == before or conn.streams:
                raise SystemExit("the requests were not answered inline: nothing to measure")
        return min(times), statistics.median(times)
    finally:
        loop.close()


def measure_floor(repeat: int) -> tuple[float, float]:
    """The same on the h2 library alone: a bare h2 server connection that answers each
    request with canned HEADERS and DATA (what any server on h2 pays at least)."""
    from h2.events import RequestReceived

    fields = [
        (b":status", b"200"),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"5"),
    ]
    times = []
    for _ in range(repeat):
        server = H2Client(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        server.initiate_connection()
        preface, requests = framed_requests(PER_RUN)
        server.receive_data(preface)
        server.data_to_send()
        start = time.process_time()
        for data in requests:
            for event in server.receive_data(data):
                if isinstance(event, RequestReceived):
                    server.send_headers(event.stream_id, fields)
                    server.send_data(event.stream_id, b"hello", end_stream=True)
            server.data_to_send()
        times.append((time.process_time() - start) / PER_RUN * 1e6)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="timed runs (default 50)")
    args = parser.parse_args()
    low, middle = measure(args.repeat)
    print(f"GET / on an h2 stream: {low:.2f} us CPU per request (min), {middle:.2f} us (median)")
    low, middle = measure_floor(args.repeat)
    print(f"the h2 library alone:  {low:.2f} us CPU per request (min), {middle:.2f} us (median)")
    low, middle = measure_http11(args.repeat)
    print(f"GET / over HTTP/1.1:   {low:.2f} us CPU per request (min), {middle:.2f} us (median)")


if __name__ == "__main__":
    main()
