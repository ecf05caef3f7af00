"""What a request costs rtserve with a `def` and with an `async def` handler, without sockets.

A real `HTTPConnection` (a stand-in transport that only counts writes) is fed N pipelined
keep-alive GETs, one `data_received` each, from the event loop as uvloop would call it: the
parser, router, handler, response head and the write all run, the kernel and the load
generator do not. Two measures per path:

- instructions per request (``--instructions``): `valgrind --tool=callgrind` counts the
  whole process for N requests and for 0; the difference over N. The same binary and
  inputs give the same count whatever else the machine is doing, so this is the figure to
  compare commits with on a shared machine (each path takes a minute or two under valgrind);
- CPU time per request (default): `time.process_time()` around the N requests, the median
  of a few rounds; quick, and only indicative when the cores are shared.

Usage:
    python bench/handler_cost.py                    # CPU µs per request, each path
    python bench/handler_cost.py --instructions     # callgrind instructions per request
    python bench/handler_cost.py --paths /plaintext,/async/plaintext
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "bench":
    sys.path[0] = str(REPO_ROOT)  # run as a script: bench/http.py must not shadow `http`
PATHS = ("/plaintext", "/async/plaintext", "/json/42", "/async/json/42")
WARM_UP = 200
APP = "bench.apps.rtserve_app:app"


class CountingTransport:
    """What HTTPConnection needs of a transport; counts the writes."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def serve_in_process(path: str, n: int, rounds: int, target: str = APP) -> list[float]:
    """Feed `n` GETs of `path` to the app `target` names, `rounds` times; the CPU seconds of
    each round."""
    import uvloop

    from rtserve import ServerSettings
    from rtserve.cli.loader import load_app
    from rtserve.server.connection import HTTPConnection
    from rtserve.server.state import ServerState

    app = load_app(target, cwd=str(REPO_ROOT))
    loop = uvloop.new_event_loop()
    state = ServerState(app, ServerSettings(access_log=False), loop)
    app.bind_server_state(state)
    loop.run_until_complete(app.startup())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    times: list[float] = []

    def feed() -> None:
        conn = HTTPConnection(state)
        transport = CountingTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        for _ in range(WARM_UP):
            conn.data_received(request)
        gc.collect()
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(n):
                conn.data_received(request)
            times.append(time.process_time() - started)
        expected = WARM_UP + n * rounds
        if transport.writes != expected:
            raise RuntimeError(f"{path}: {transport.writes} answers written, {expected} asked")
        done.set_result(None)

    done = loop.create_future()
    loop.call_soon(feed)  # from the loop, as a socket's data_received is called
    loop.run_until_complete(done)
    loop.run_until_complete(app.shutdown())  # a hosted app's lifespan ends
    return times


def instructions(path: str, n: int, target: str = APP) -> int:
    """callgrind's instruction count of this script serving `n` requests of `path`."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--serve",
        path,
        "--requests",
        str(n),
        "--app",
        target,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {out.stderr[-500:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated paths")
    parser.add_argument("--requests", type=int, default=20000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    parser.add_argument(
        "--app",
        default=APP,
        help="module:attr of the app served (an ASGI app is hosted, as `rtserve run` does; "
        "e.g. bench.apps.uvicorn_app:app)",
    )
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_in_process(args.serve, args.requests, 1, args.app)
        return 0
    paths = args.paths.split(",")
    if args.instructions:
        n = min(args.requests, 3000)
        print(f"| path | instructions per request (callgrind, {n:,} requests minus 0) |")
        print("| --- | ---: |")
        for path in paths:
            per_request = (instructions(path, n, args.app) - instructions(path, 0, args.app)) / n
            print(f"| `{path}` | {per_request:,.0f} |")
        return 0
    print(f"| path | CPU µs per request (median of {args.rounds} x {args.requests:,}) |")
    print("| --- | ---: |")
    for path in paths:
        times = serve_in_process(path, args.requests, args.rounds, args.app)
        print(f"| `{path}` | {statistics.median(times) / args.requests * 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
