"""How long one client waits while other connections flood the server with pipelined requests.

The server (`bench.apps.rtserve_app`, one process) is pinned to the server core; the load is
pinned to the other. Each flooding connection writes 6,000 pipelined `GET /plaintext` in one
write (~234 KiB), reads every answer (or, with `--never-read`, reads nothing), and again, for
the whole run. Meanwhile a probe sends sequential GETs on one kept-alive connection, and a
second probe opens a new connection for each GET: their latencies are the stall others see.

Usage (from the repo root):
    python -m bench.pipeline_stall                        # 0, 1, 4 and 50 floods, log off/on
    python -m bench.pipeline_stall --floods 50 --duration 3 --access-log on
    python -m bench.pipeline_stall --repo /tmp/old-checkout   # the same against other code

Standard library only (and the server's own packages). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.http import free_port, stop_process, wait_until_listening

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REQUEST = b"GET /plaintext HTTP/1.1\r\nHost: b\r\n\r\n"
FLOOD_REQUESTS = 6000
STATUS = b"HTTP/1.1 200 "


# --- load roles (run in their own processes) ------------------------------------------------


async def _flood_one(port: int, until: float, never_read: bool, answered: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    block = REQUEST * FLOOD_REQUESTS
    try:
        while time.monotonic() < until:
            writer.write(block)
            if never_read:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(writer.drain(), until - time.monotonic())
                continue
            seen, tail = 0, b""
            while seen < FLOOD_REQUESTS and time.monotonic() < until:
                with contextlib.suppress(TimeoutError):
                    data = await asyncio.wait_for(reader.read(1 << 20), until - time.monotonic())
                    if not data:
                        return
                    seen += (tail + data).count(STATUS)  # a status line split over two reads
                    tail = data[-(len(STATUS) - 1) :]  # counts once: the tail is no status
            answered[0] += seen
    except OSError:
        return  # cut off (the send timeout, for one that never reads)
    finally:
        writer.close()


async def _flood(port: int, connections: int, seconds: float, never_read: bool) -> int:
    until = time.monotonic() + seconds
    answered = [0]
    await asyncio.gather(
        *(_flood_one(port, until, never_read, answered) for _ in range(connections))
    )
    return answered[0]


def _read_response(sock: socket.socket) -> None:
    """Read one whole `GET /plaintext` answer (fixed body, content-length)."""
    data = b""
    for _ in range(1000):  # bounded
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(data) >= end + 4 + length:
                return
    raise ConnectionError("no whole answer")


def _probe(port: int, seconds: float, fresh: bool) -> list[float]:
    """Sequential GETs for `seconds`; each one's latency in ms."""
    latencies: list[float] = []
    until = time.monotonic() + seconds
    sock: socket.socket | None = None
    while time.monotonic() < until:
        start = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection((HOST, port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(REQUEST)
            _read_response(sock)
        except OSError:
            latencies.append((time.perf_counter() - start) * 1000)
            sock = None
            continue
        latencies.append((time.perf_counter() - start) * 1000)
        if fresh:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return latencies


def role_main(args: argparse.Namespace) -> int:
    if args.role == "flood":
        answered = asyncio.run(_flood(args.port, args.connections, args.seconds, args.never_read))
        print(json.dumps({"answered": answered}))
    else:
        print(json.dumps({"latencies": _probe(args.port, args.seconds, args.role == "fresh")}))
    return 0


# --- the harness ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _role(args: argparse.Namespace, role: str, port: int, **extra: Any) -> subprocess.Popen[str]:
    cmd = ["taskset", "-c", str(args.load_cpu), sys.executable, "-m", "bench.pipeline_stall"]
    cmd += ["--role", role, "--port", str(port), "--seconds", str(args.duration)]
    for key, value in extra.items():
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            cmd.append(flag)
        elif value is not False:
            cmd += [flag, str(value)]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)


def measure(args: argparse.Namespace, floods: int, access_log: bool) -> dict[str, Any]:
    port = free_port()
    repo = Path(args.repo).resolve()
    server_cmd = ["taskset", "-c", str(args.server_cpu), args.python, "-m", "rtserve", "run"]
    server_cmd += ["bench.apps.rtserve_app:app", "--host", HOST, "--port", str(port)]
    server_cmd += ["--access-log" if access_log else "--no-access-log", "--no-reload"]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{REPO_ROOT}"}
    with tempfile.TemporaryFile() as log:  # the access log goes here, as to a real file
        server = subprocess.Popen(
            server_cmd, cwd=repo, stdout=log, stderr=log, start_new_session=True, env=env
        )
        try:
            error = wait_until_listening(server, port, 10.0)
            if error:
                raise SystemExit(f"server: {error}")
            flood = (
                _role(args, "flood", port, connections=floods, never_read=args.never_read)
                if floods
                else None
            )
            time.sleep(0.3)  # the flood under way before the probes start
            probe = _role(args, "probe", port)
            fresh = _role(args, "fresh", port)
            kept = json.loads(probe.communicate(timeout=args.duration + 60)[0])["latencies"]
            new = json.loads(fresh.communicate(timeout=args.duration + 60)[0])["latencies"]
            answered = 0
            if flood is not None:
                answered = json.loads(flood.communicate(timeout=args.duration + 60)[0])["answered"]
        finally:
            stop_process(server)
    return {
        "floods": floods,
        "access_log": access_log,
        "probe_n": len(kept),
        "probe_p50": percentile(kept, 0.5),
        "probe_p99": percentile(kept, 0.99),
        "probe_max": max(kept, default=float("nan")),
        "fresh_per_s": len(new) / args.duration,
        "fresh_p99": percentile(new, 0.99),
        "fresh_max": max(new, default=float("nan")),
        "flood_per_s": answered / args.duration,
    }


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| flooding connections | access log | probe GETs | p50 ms | p99 ms | max ms "
        "| new connections/s | their p99 ms | their max ms | flood answers/s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['floods']} | {'on' if r['access_log'] else 'off'} | {r['probe_n']:,} "
            f"| {r['probe_p50']:.1f} | {r['probe_p99']:.1f} | {r['probe_max']:.1f} "
            f"| {r['fresh_per_s']:,.0f} | {r['fresh_p99']:.1f} | {r['fresh_max']:.1f} "
            f"| {r['flood_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--floods", default="0,1,4,50", help="flooding connections (0: none)")
    parser.add_argument("--access-log", default="off,on", help="off, on or off,on")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per row")
    parser.add_argument("--never-read", action="store_true", help="floods never read answers")
    parser.add_argument("--repo", default=str(REPO_ROOT), help="checkout whose rtserve runs")
    parser.add_argument("--python", default=sys.executable, help="the server's interpreter")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the rows as JSON")
    # Internal: the load processes.
    parser.add_argument("--role", choices=["flood", "probe", "fresh"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return role_main(args)
    rows = []
    for access_log in [part == "on" for part in args.access_log.split(",")]:
        for floods in [int(part) for part in args.floods.split(",")]:
            row = measure(args, floods, access_log)
            print(render([row]).splitlines()[-1], flush=True)
            rows.append(row)
    print()
    print(f"`python -m bench.pipeline_stall {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    print()
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
