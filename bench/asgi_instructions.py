"""Instructions per request of ASGI servers, counted by callgrind: a figure other load on the
machine does not change (wall-clock req/s on a shared machine is noise).

Each server of bench/http.py named on the command line runs under
`valgrind --tool=callgrind --instr-atstart=no` pinned to the server core; once it answers,
instrumentation is switched on, `--warmup` requests are sent (discarded: caches, first
calls), the counters are zeroed, `--requests` requests are sent one after another on one
keep-alive connection (h2load --h1 -c 1, pinned to the load core), and the counters are dumped.
The server's instructions (Ir) over those requests, divided by their number, is the row.
Servers are alternated over `--rounds` rounds and the median is reported.

Usage, from the repo root (callgrind makes a server ~50x slower: a round of the default four
servers takes a few minutes):
    python -m bench.asgi_instructions
    python -m bench.asgi_instructions --servers rtserve-asgi,uvicorn --requests 2000 --rounds 3
    python -m bench.asgi_instructions --paths /plaintext,/json/42
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.http import HOST, SERVERS, free_port, stop_process
from bench.procs import LOAD_CORE, SERVER_CORE

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVERS = ["rtserve-asgi", "uvicorn", "rtserve-fastapi", "uvicorn-fastapi"]
START_TIMEOUT = 300.0  # python under callgrind imports slowly
CONNECTIONS = int(os.environ.get("RTSERVE_BENCH_CONNECTIONS", "1"))  # h2load -c: 1 by default


def start(server: str, port: int, out: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = SERVERS[server].argv(sys.executable, port)
    command = [
        "taskset",
        "-c",
        str(SERVER_CORE),
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *argv,
    ]
    with log.open("wb") as sink:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run
        )


def load(port: int, path: str, count: int) -> None:
    """`count` GETs of `path`, one after another on one keep-alive connection."""
    url = f"http://{HOST}:{port}{path}"
    command = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        "h2load",
        "--h1",
        "-n",
        str(count),
        "-c",
        str(CONNECTIONS),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    succeeded = re.search(r"(\d+) succeeded", done.stdout)
    if done.returncode != 0 or succeeded is None or int(succeeded.group(1)) != count:
        raise RuntimeError(f"h2load: {done.stdout[-400:]} {done.stderr[-200:]}")


def wait_answering(proc: subprocess.Popen[bytes], port: int, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        probe = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{HOST}:{port}{path}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.stdout == "200":
            return
        time.sleep(1.0)
    raise RuntimeError(f"did not answer {path} within {START_TIMEOUT:.0f} s")


def control(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], capture_output=True, check=True)


def total_instructions(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def measure(server: str, paths: list[str], requests: int, warmup: int) -> dict[str, float]:
    """Instructions per request of `server` for each of `paths`."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="asgi-ir-") as folder:
        out = Path(folder) / "callgrind.out"
        proc = start(server, port, out, Path(folder) / "server.log")
        try:
            wait_answering(proc, port, paths[0])
            valgrind = proc.pid  # taskset and valgrind exec: the session's first pid
            control(valgrind, "--instr=on")
            per_request: dict[str, float] = {}
            for path in paths:
                load(port, path, warmup)
                control(valgrind, "--zero")
                load(port, path, requests)
                before = set(Path(folder).glob("callgrind.out*"))
                control(valgrind, "--dump")
                dump = _new_dump(Path(folder), before)
                per_request[path] = total_instructions(dump) / requests
            return per_request
        finally:
            stop_process(proc, grace_s=30.0)


def _new_dump(folder: Path, before: set[Path]) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fresh = set(folder.glob("callgrind.out*")) - before
        if fresh:
            time.sleep(0.5)  # let the dump be written whole
            return max(fresh, key=lambda p: p.stat().st_mtime)
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS), help="of bench/http.py")
    parser.add_argument(
        "--paths", default="/plaintext", help="comma-separated (default /plaintext)"
    )
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per path")
    parser.add_argument("--warmup", type=int, default=200, help="requests before measuring")
    parser.add_argument("--rounds", type=int, default=1, help="servers alternated N times")
    args = parser.parse_args()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; bench/http.py has {', '.join(SERVERS)}")
    missing = [
        t
        for t in ("valgrind", "callgrind_control", "h2load", "taskset", "curl")
        if shutil.which(t) is None
    ]
    if missing:
        parser.error(f"{', '.join(missing)} not found on PATH")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    counts: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for server in servers:
            print(f"round {round_ + 1}: {server} ...", file=sys.stderr, flush=True)
            for path, value in measure(server, paths, args.requests, args.warmup).items():
                counts.setdefault((server, path), []).append(value)
                print(f"  {path}: {value:,.0f} instructions/request", file=sys.stderr)
    command = "python -m bench.asgi_instructions " + " ".join(sys.argv[1:])
    print(f"Command: `{command.strip()}`; {args.requests} requests per path after {args.warmup}")
    print(f"warm-up ones, {args.rounds} round(s), median; machine: {os.cpu_count()} cores\n")
    print("| server | path | instructions/request | vs uvicorn (fewer: > 1) |")
    print("| --- | --- | ---: | ---: |")
    for (server, path), values in counts.items():
        median = statistics.median(values)
        peer = "uvicorn-fastapi" if "fastapi" in server else "uvicorn"
        base = counts.get((peer, path))
        ratio = f"{statistics.median(base) / median:.2f}x" if base else "-"
        print(f"| {server} | {path} | {median:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
