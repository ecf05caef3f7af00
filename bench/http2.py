"""Benchmark HTTP/2 over TLS: hello world under h2load, rtserve beside hypercorn in one run.

Each server is started afresh per round on the server core (``taskset -c 0``, bench/procs.py),
serving ``GET /plaintext`` ("Hello, World!") over TLS with ALPN h2: rtserve with
``bench/apps/rtserve_app.py`` (its router and handler path), hypercorn (the same h2 library
underneath) with the raw ASGI callable ``bench/apps/uvicorn_app.py`` under uvloop, in one
process, with no limit on requests per connection (its default closes after 1,000). The servers
alternate within each round. h2load runs on the load core (``taskset -c 1``): ``-n`` requests
over ``-c`` connections with ``-m`` concurrent streams each, after a warm-up of 1,000.

Per run: requests/s (h2load's figure; wall clock, distorted on a busy machine), p99 latency
(from h2load's per-request ``--log-file``), and the server's CPU time per request from
/proc/PID/stat (user + system, which contention distorts much less). Medians over the rounds,
and the rtserve/hypercorn ratios. Add ``--sse`` for the fan-out: 1,000 SSE streams over 10
HTTP/2 connections (``--sse-streams``, ``--sse-connections``), K publications from the server,
timed until every stream has all K; server CPU per delivery.

Usage (from the repo root):
    python -m bench.http2                         # 3 rounds of 20,000 requests
    python -m bench.http2 --rounds 1 -n 5000      # a smoke run
    python -m bench.http2 --sse --rounds 1        # plus the SSE fan-out

Needs h2load (Debian's nghttp2-client), openssl, hypercorn and uvloop (the bench extra) and h2
(the http2 extra). Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.procs import LOAD_CORE, cpu_ms, free_port, start_pinned, stop_server
from rtserve.cli.devcert_cmd import make_dev_certificate

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 1000


@dataclass
class Run:
    """One h2load run against one server."""

    server: str
    rps: float
    p99_ms: float
    cpu_us_per_request: float
    succeeded: int


def server_command(name: str, port: int, cert: Path, key: str | Path) -> list[str]:
    python = sys.executable
    if name == "rtserve":
        return [
            python, "-m", "rtserve", "run", "bench.apps.rtserve_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--tls-cert", str(cert),
            "--tls-key", str(key), "--no-reload", "--no-access-log",
        ]  # fmt: skip
    # hypercorn closes a connection after 1,000 requests by default (h2load does not reconnect)
    config = Path(cert).parent / "hypercorn.toml"
    config.write_text("keep_alive_max_requests = 1000000000\n")
    return [
        python, "-m", "hypercorn", "--config", str(config),
        "--certfile", str(cert), "--keyfile", str(key),
        "--bind", f"127.0.0.1:{port}", "--worker-class", "uvloop", "--workers", "0",
        "bench.apps.uvicorn_app:app",
    ]  # fmt: skip


def h2load(port: int, requests: int, clients: int, streams: int, log: Path | None) -> str:
    command = ["taskset", "-c", str(LOAD_CORE), "h2load", "-n", str(requests)]
    command += ["-c", str(clients), "-m", str(streams)]
    if log is not None:
        command += ["--log-file", str(log)]
    command.append(f"https://127.0.0.1:{port}/plaintext")
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    if "Application protocol: h2" not in out.stdout:
        raise RuntimeError(f"h2load did not speak h2:\n{out.stdout}")
    return out.stdout


def one_run(name: str, args: argparse.Namespace, cert: Path, key: Path, tmp: Path) -> Run:
    port = free_port()
    proc = start_pinned(server_command(name, port, cert, key), port, ROOT, name)
    try:
        h2load(port, WARMUP, args.clients, args.streams, None)
        before = cpu_ms(proc.pid)
        log = tmp / f"{name}.log"
        out = h2load(port, args.requests, args.clients, args.streams, log)
        spent = cpu_ms(proc.pid) - before
    finally:
        stop_server(proc)
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    succeeded = int(re.search(r"(\d+) succeeded", out).group(1))  # type: ignore[union-attr]
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines())
    p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))] / 1000
    return Run(name, rps, p99, spent * 1000 / max(1, succeeded), succeeded)


# --- SSE fan-out over HTTP/2 ---------------------------------------------------------------


async def sse_fanout(
    port: int, pid: int, streams: int, connections: int, count: int
) -> tuple[float, float]:
    """Open `streams` SSE streams over `connections` h2 connections, have the server publish
    `count` messages, and time until every stream has them all: (deliveries/s, CPU us per
    delivery)."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, ResponseReceived

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    per_conn = streams // connections
    seen = [0] * streams
    opened = 0
    done = asyncio.Event()
    marker = b"data: "

    async def one(index: int) -> None:
        nonlocal opened
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.increment_flow_control_window(2**30)
        ids: dict[int, int] = {}
        for k in range(per_conn):
            sid = conn.get_next_available_stream_id()
            ids[sid] = index * per_conn + k
            conn.send_headers(
                sid,
                [(b":method", b"GET"), (b":path", b"/rt/sse?channel=bench"),
                 (b":scheme", b"https"), (b":authority", b"localhost")],
                end_stream=True,
            )  # fmt: skip
            conn.increment_flow_control_window(2**20, sid)
        writer.write(conn.data_to_send())
        while not done.is_set():
            data = await reader.read(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    opened += 1
                elif isinstance(event, DataReceived) and event.stream_id in ids:
                    seen[ids[event.stream_id]] += (event.data or b"").count(marker)
                    conn.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id
                    )
            writer.write(conn.data_to_send())
            if all(n >= count for n in seen):
                done.set()
        writer.close()

    tasks = [asyncio.create_task(one(i)) for i in range(connections)]
    deadline = time.monotonic() + 60
    while opened < per_conn * connections:
        if time.monotonic() > deadline:
            raise TimeoutError("the SSE streams did not all open")
        await asyncio.sleep(0.05)
    seen[:] = [0] * streams  # count only what the publications below bring
    while int(await asyncio.to_thread(https, port, "GET", "/count?channel=bench")) < streams:
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not count every subscriber")
        await asyncio.sleep(0.05)
    before = cpu_ms(pid)
    started = time.perf_counter()
    await asyncio.to_thread(https, port, "POST", f"/publish?count={count}")
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    spent = cpu_ms(pid) - before
    for task in tasks:
        task.cancel()
    deliveries = streams * count
    return deliveries / elapsed, spent * 1000 / deliveries


def https(port: int, method: str, path: str) -> bytes:
    """The body of one HTTPS request (HTTP/1.1, the self-signed certificate accepted)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    data = b"" if method == "POST" else None
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method, data=data)
    with urllib.request.urlopen(request, timeout=60, context=context) as response:
        body: bytes = response.read()
        return body


def sse_run(args: argparse.Namespace, cert: Path, key: Path) -> tuple[float, float]:
    port = free_port()
    command = [
        sys.executable, "-m", "rtserve", "run", "bench.sse_apps.rtserve_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--tls-cert", str(cert),
        "--tls-key", str(key), "--no-reload", "--no-access-log",
    ]  # fmt: skip
    proc = start_pinned(command, port, ROOT, "rtserve (SSE)")
    try:
        return asyncio.run(
            sse_fanout(port, proc.pid, args.sse_streams, args.sse_connections, args.sse_count)
        )
    finally:
        stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=20_000, help="per run")
    parser.add_argument("-c", "--clients", type=int, default=10, help="h2 connections")
    parser.add_argument("-m", "--streams", type=int, default=10, help="streams per connection")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sse", action="store_true", help="also the SSE fan-out")
    parser.add_argument("--sse-streams", type=int, default=1000)
    parser.add_argument("--sse-connections", type=int, default=10)
    parser.add_argument("--sse-count", type=int, default=10, help="publications")
    args = parser.parse_args()
    for tool in ("h2load", "taskset", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}; h2load -n {args.requests} -c {args.clients} "
        f"-m {args.streams}, {args.rounds} rounds (wall-clock figures: the machine may be busy)"
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        make_dev_certificate(cert, key)
        runs: dict[str, list[Run]] = {"rtserve": [], "hypercorn": []}
        for round_ in range(args.rounds):
            order = ["rtserve", "hypercorn"] if round_ % 2 == 0 else ["hypercorn", "rtserve"]
            for name in order:
                run = one_run(name, args, cert, key, tmp)
                runs[name].append(run)
                print(
                    f"round {round_ + 1} {name:9}: {run.rps:9.0f} req/s  p99 {run.p99_ms:7.2f} ms"
                    f"  server CPU {run.cpu_us_per_request:6.1f} us/request"
                    f"  ({run.succeeded} succeeded)",
                    flush=True,
                )
        medians = {
            name: (
                statistics.median(r.rps for r in rs),
                statistics.median(r.p99_ms for r in rs),
                statistics.median(r.cpu_us_per_request for r in rs),
            )
            for name, rs in runs.items()
        }
        print("\nmedians          req/s    p99 ms   server CPU us/request")
        for name, (rps, p99, cpu) in medians.items():
            print(f"{name:10} {rps:11.0f} {p99:9.2f} {cpu:12.1f}")
        (r_rps, r_p99, r_cpu), (h_rps, h_p99, h_cpu) = medians["rtserve"], medians["hypercorn"]
        print(
            f"rtserve/hypercorn: {r_rps / h_rps:.2f}x req/s, {r_p99 / h_p99:.2f}x p99, "
            f"{r_cpu / h_cpu:.2f}x CPU per request (lower is better for the last two)"
        )
        if args.sse:
            rate, cpu = sse_run(args, cert, key)
            print(
                f"\nSSE fan-out over HTTP/2: {args.sse_streams} streams on "
                f"{args.sse_connections} connections, {args.sse_count} publications: "
                f"{rate:.0f} deliveries/s, server CPU {cpu:.1f} us/delivery"
            )


if __name__ == "__main__":
    main()
