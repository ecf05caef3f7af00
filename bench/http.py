"""Benchmark HTTP servers side by side: rtserve, Tornado, uvicorn (raw ASGI), aiohttp, a floor;
and as ASGI servers: the same raw ASGI callable and a FastAPI hello world served by rtserve,
uvicorn, hypercorn and granian.

Each server runs as one process pinned to the server core (``taskset -c 0``); wrk runs pinned
to the load core (``taskset -c 1``). For every server and endpoint: a warm-up wrk run
(discarded), then the measured run, during which both cores' busy time is sampled from
/proc/stat. A row is valid only when the server core is >= 90 % busy and the load core is
< 90 % busy (and wrk saw no errors). Results are printed as Markdown tables with ratios.

Usage (from anywhere; paths are resolved against the repo root):
    python bench/http.py                       # all servers, 64 connections, 10 s
    python bench/http.py --servers tornado,uvicorn --duration 5
    python bench/http.py --markdown --json out.json
    python bench/http.py --servers asgi --rounds 3     # the ASGI rows, servers alternated,
                                                       # medians of three rounds
Besides req/s, each row has the server's CPU time per request (its whole process group,
from /proc), which other load on a busy machine distorts far less than req/s.

Standard library only. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
HELLO = "Hello, World!"
JSON_ID = 42
READY_TIMEOUT_S = 10.0
VALID_SERVER_MIN = 90.0
VALID_LOAD_MAX = 90.0
SHARED_CORE_GAP = 10.0  # core % minus its process's % above this: something else ran there
QUIET_MAX = 15.0  # both cores below this busy % count as quiet enough to start


# --------------------------------------------------------------------------------------------
# Servers and endpoints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    description: str
    argv: Callable[[str, int], list[str]]  # (python, port) -> command line (before taskset)


def _script(name: str) -> Callable[[str, int], list[str]]:
    def argv(python: str, port: int) -> list[str]:
        return [python, str(REPO_ROOT / "bench" / "apps" / name), "--port", str(port)]

    return argv


def _rtserve_argv(python: str, port: int, target: str = "bench.apps.rtserve_app:app") -> list[str]:
    return [
        python,
        "-m",
        "rtserve",
        "run",
        target,
        "--host",
        HOST,
        "--port",
        str(port),
        "--no-access-log",
        "--no-reload",
    ]


def _rtserve_hosting(module: str) -> Callable[[str, int], list[str]]:
    """rtserve serving the ASGI app `module:app` (`rtserve run` of a non-rtserve target)."""

    def argv(python: str, port: int) -> list[str]:
        return _rtserve_argv(python, port, f"{module}:app")

    return argv


def _uvicorn(module: str) -> Callable[[str, int], list[str]]:
    def argv(python: str, port: int) -> list[str]:
        return _uvicorn_argv(python, port, module)

    return argv


def _hypercorn(module: str) -> Callable[[str, int], list[str]]:
    def argv(python: str, port: int) -> list[str]:
        bind = f"{HOST}:{port}"
        options = ["--worker-class", "uvloop", "--workers", "1", "--log-level", "warning"]
        return [python, "-m", "hypercorn", f"{module}:app", "--bind", bind, *options]

    return argv


def _granian(module: str) -> Callable[[str, int], list[str]]:
    def argv(python: str, port: int) -> list[str]:
        options = ["--workers", "1", "--runtime-threads", "1", "--loop", "uvloop"]
        where = ["--host", HOST, "--port", str(port), "--log-level", "warning"]
        return [python, "-m", "granian", "--interface", "asgi", *where, *options, f"{module}:app"]

    return argv


RAW_ASGI = "bench.apps.uvicorn_app"
FASTAPI = "bench.apps.fastapi_app"


def _uvicorn_argv(python: str, port: int, module: str = RAW_ASGI) -> list[str]:
    return [
        python,
        "-m",
        "uvicorn",
        f"{module}:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server("rtserve", "rtserve App, full router and handler path", _rtserve_argv),
        Server(
            "tornado", "Tornado RequestHandlers on tornado.httpserver", _script("tornado_app.py")
        ),
        Server("uvicorn", "uvicorn, raw ASGI callable, uvloop + httptools", _uvicorn_argv),
        Server("aiohttp", "aiohttp web.Application on uvloop", _script("aiohttp_app.py")),
        Server("floor", "raw uvloop Protocol + httptools, canned bytes", _script("floor_app.py")),
        Server("rtserve-asgi", "rtserve hosting the raw ASGI callable", _rtserve_hosting(RAW_ASGI)),
        Server("hypercorn", "hypercorn, raw ASGI callable, uvloop", _hypercorn(RAW_ASGI)),
        Server("granian", "granian, raw ASGI callable, one worker", _granian(RAW_ASGI)),
        Server("rtserve-fastapi", "rtserve hosting FastAPI", _rtserve_hosting(FASTAPI)),
        Server("uvicorn-fastapi", "uvicorn + FastAPI, uvloop + httptools", _uvicorn(FASTAPI)),
        Server("hypercorn-fastapi", "hypercorn + FastAPI, uvloop", _hypercorn(FASTAPI)),
        Server("granian-fastapi", "granian + FastAPI, one worker", _granian(FASTAPI)),
    )
}
# `--servers asgi`: the hosting comparison, each group against its uvicorn row.
ASGI_SERVERS = ["rtserve-asgi", "uvicorn", "hypercorn", "granian"]
FASTAPI_SERVERS = ["rtserve-fastapi", "uvicorn-fastapi", "hypercorn-fastapi", "granian-fastapi"]
SERVER_GROUPS = {"asgi": ASGI_SERVERS + FASTAPI_SERVERS}


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    content_type: str  # expected media type of the response
    check: Callable[[bytes], str | None]  # body -> error message or None
    # Where a server answers it elsewhere: rtserve's `async def` handlers. The peers answer at
    # `path` with what they have (uvicorn's ASGI callable and aiohttp's handlers are coroutines
    # already; Tornado's are plain methods).
    paths: dict[str, str] = field(default_factory=dict)

    def path_for(self, server: str) -> str:
        return self.paths.get(server, self.path)


def _check_plaintext(body: bytes) -> str | None:
    if body != HELLO.encode():
        return f"expected body {HELLO!r}, got {body[:80]!r}"
    return None


def _check_json(body: bytes) -> str | None:
    expected = {"id": JSON_ID, "message": HELLO}
    try:
        data = json.loads(body)
    except ValueError:
        return f"body is not JSON: {body[:80]!r}"
    if data != expected or type(data.get("id")) is not int:
        return f"expected {expected}, got {data!r}"
    return None


ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        Endpoint("plaintext", "/plaintext", "text/plain", _check_plaintext),
        Endpoint("json", f"/json/{JSON_ID}", "application/json", _check_json),
        Endpoint(
            "plaintext-async",
            "/plaintext",
            "text/plain",
            _check_plaintext,
            {"rtserve": "/async/plaintext"},
        ),
        Endpoint(
            "json-async",
            f"/json/{JSON_ID}",
            "application/json",
            _check_json,
            {"rtserve": f"/async/json/{JSON_ID}"},
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_sec: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    socket_errors: int
    non_2xx: int


@dataclass
class Row:
    server: str
    endpoint: str
    status: str = "ok"  # "ok", "failed to start", "bad response", "wrk failed"
    detail: str = ""
    requests_per_sec: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_core_pct: float | None = None
    load_core_pct: float | None = None
    server_proc_pct: float | None = None
    wrk_proc_pct: float | None = None
    socket_errors: int = 0
    non_2xx: int = 0
    valid: bool = False
    invalid_reasons: list[str] = field(default_factory=list)
    attempts: int = 0
    cpu_us_per_request: float | None = None  # the server's CPU time over its requests
    rounds: int = 1  # rows merged into this one (medians), with --rounds


# --------------------------------------------------------------------------------------------
# CPU accounting (/proc/stat, /proc/PID/stat)
# --------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_cpu_times() -> dict[int, tuple[int, int]]:
    """Per-cpu (total, busy) jiffies; busy = total - idle - iowait."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if not m:
                continue
            fields = [int(x) for x in m.group(2).split()]
            # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
            # already counted in user/nice, so only the first eight make the total.
            total = sum(fields[:8])
            idle = fields[3] + fields[4]
            out[int(m.group(1))] = (total, total - idle)
    return out


def busy_pct(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int
) -> float:
    total = after[cpu][0] - before[cpu][0]
    busy = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total > 0 else 0.0


def read_proc_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def read_group_ticks(pgid: int) -> int | None:
    """utime + stime of every live process of process group `pgid` (a server and the worker
    processes it starts: hypercorn's, granian's), in clock ticks."""
    total, found = 0, False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of proc(5): the process group
            total += int(fields[11]) + int(fields[12])
            found = True
    return total if found else None


def proc_pct(ticks_before: int | None, ticks_after: int | None, seconds: float) -> float | None:
    if ticks_before is None or ticks_after is None or seconds <= 0:
        return None
    return 100.0 * (ticks_after - ticks_before) / CLK_TCK / seconds


# --------------------------------------------------------------------------------------------
# Process handling
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it does not exit within grace_s."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # Anything left in the group (children of the server) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(
    server: Server, python: str, cpu: int, log: IO[bytes]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    cmd = ["taskset", "-c", str(cpu), *server.argv(python, port)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: killpg stops it and its children
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        yield proc, port
    finally:
        stop_process(proc)


def wait_until_listening(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> str | None:
    """Poll with socket connects until the server accepts; returns an error or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.1)
    return f"did not accept connections within {timeout_s:.0f} s"


def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Minimal HTTP/1.1 GET over a raw socket (stdlib http is shadowed by this file's name)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: rtserve-bench\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()
    chunks: list[bytes] = []
    with socket.create_connection((HOST, port), timeout=timeout_s) as s:
        s.sendall(request)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            raw = b"".join(chunks)
            head_end = raw.find(b"\r\n\r\n")
            if head_end >= 0:
                m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", raw[:head_end])
                if m and len(raw) - head_end - 4 >= int(m.group(1)):
                    break
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"incomplete response: {raw[:120]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def verify(port: int, path: str, endpoint: Endpoint) -> str | None:
    try:
        status, headers, body = http_get(port, path)
    except (OSError, ValueError) as exc:
        return f"GET {path}: {exc}"
    if status != 200:
        return f"GET {path}: status {status}"
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != endpoint.content_type:
        return f"GET {path}: content-type {media_type!r}, expected {endpoint.content_type!r}"
    error = endpoint.check(body)
    return f"GET {path}: {error}" if error else None


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unrecognised wrk duration {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", output, re.M)
    if not rps:
        raise ValueError("no Requests/sec line in wrk output")
    pcts = dict(re.findall(r"^\s+(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.M))
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    errs = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=to_ms(pcts["50"]) if "50" in pcts else None,
        p99_ms=to_ms(pcts["99"]) if "99" in pcts else None,
        requests=int(total.group(1)) if total else 0,
        socket_errors=sum(int(g) for g in errs.groups()) if errs else 0,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def wrk_command(cpu: int, connections: int, duration_s: int, url: str) -> list[str]:
    return [
        "taskset",
        "-c",
        str(cpu),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        url,
    ]


@dataclass
class Measured:
    wrk: WrkResult
    server_core_pct: float
    load_core_pct: float
    server_proc_pct: float | None
    wrk_proc_pct: float | None


def run_wrk(
    cmd: list[str], duration_s: int, server_pid: int, server_cpu: int, load_cpu: int
) -> Measured:
    """Run wrk; sample CPU over the middle of the run (skipping ramp-up and wind-down)."""
    margin = min(0.5, duration_s * 0.1)
    wrk = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(margin)
        cpu0, t0 = read_cpu_times(), time.monotonic()
        srv0, wrk0 = read_group_ticks(server_pid), read_proc_ticks(wrk.pid)
        time.sleep(max(0.1, duration_s - 2 * margin))
        cpu1, t1 = read_cpu_times(), time.monotonic()
        srv1, wrk1 = read_group_ticks(server_pid), read_proc_ticks(wrk.pid)
        output, _ = wrk.communicate(timeout=duration_s + 30)
    finally:
        stop_process(wrk, grace_s=2.0)
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk exited {wrk.returncode}: {output.strip()[-300:]}")
    return Measured(
        wrk=parse_wrk(output),
        server_core_pct=busy_pct(cpu0, cpu1, server_cpu),
        load_core_pct=busy_pct(cpu0, cpu1, load_cpu),
        server_proc_pct=proc_pct(srv0, srv1, t1 - t0),
        wrk_proc_pct=proc_pct(wrk0, wrk1, t1 - t0),
    )


# --------------------------------------------------------------------------------------------
# Running the matrix
# --------------------------------------------------------------------------------------------


def bench_server(args: argparse.Namespace, server: Server, endpoints: list[Endpoint]) -> list[Row]:
    rows = [Row(server.name, e.name) for e in endpoints]
    wait_quiet(args)
    with tempfile.NamedTemporaryFile(prefix=f"bench-{server.name}-", suffix=".log") as log_file:
        _bench_running(args, server, endpoints, rows, log_file)
    return rows


def _bench_running(
    args: argparse.Namespace,
    server: Server,
    endpoints: list[Endpoint],
    rows: list[Row],
    log_file: IO[bytes],
) -> None:
    with running_server(server, args.python, args.server_cpu, log_file) as (proc, port):
        error = wait_until_listening(proc, port, READY_TIMEOUT_S)
        if error:
            log_file.flush()
            tail = _tail(Path(log_file.name))
            for row in rows:
                row.status, row.detail = "failed to start", f"{error}; log: {tail}"
            _say(f"  {server.name}: failed to start ({error})\n    {tail}")
            return
        _say(f"  {server.name}: listening on {HOST}:{port} (pid {proc.pid})")
        for row, endpoint in zip(rows, endpoints, strict=True):
            path = endpoint.path_for(server.name)
            error = verify(port, path, endpoint)
            if error:
                row.status, row.detail = "bad response", error
                _say(f"  {server.name} {endpoint.name}: bad response: {error}")
                continue
            try:
                m = measure(args, proc, f"http://{HOST}:{port}{path}", row)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                row.status, row.detail = "wrk failed", str(exc)
                _say(f"  {server.name} {endpoint.name}: wrk failed: {exc}")
                continue
            if proc.poll() is not None:
                row.status, row.detail = "server died", f"exit code {proc.returncode}"
                _say(f"  {server.name} {endpoint.name}: server died ({proc.returncode})")
                continue
            fill_row(row, m)
            _say(
                f"  {server.name} {endpoint.name}: {m.wrk.requests_per_sec:,.0f} req/s, "
                f"p99 {_fmt(m.wrk.p99_ms, 2)} ms, server core {m.server_core_pct:.0f} %, "
                f"load core {m.load_core_pct:.0f} %"
                + ("" if row.valid else f"  INVALID: {'; '.join(row.invalid_reasons)}")
            )


def measure(
    args: argparse.Namespace, proc: subprocess.Popen[bytes], url: str, row: Row
) -> Measured:
    """Warm up, then measure; re-measure (up to --retries times) when other load shared a core."""
    if args.warmup > 0:
        warm = wrk_command(args.load_cpu, args.connections, args.warmup, url)
        subprocess.run(warm, capture_output=True, timeout=args.warmup + 30, check=False)
    cmd = wrk_command(args.load_cpu, args.connections, args.duration, url)
    best: Measured | None = None
    for attempt in range(1 + args.retries):
        if attempt:
            _say(
                f"  {row.server} {row.endpoint}: other load on the cores "
                f"({contention(best) if best else 0:.0f} points); measuring again"
            )
            wait_quiet(args)
        m = run_wrk(cmd, args.duration, proc.pid, args.server_cpu, args.load_cpu)
        row.attempts = attempt + 1
        if best is None or contention(m) < contention(best):
            best = m
        if contention(m) <= SHARED_CORE_GAP:
            break
    assert best is not None
    return best


def contention(m: Measured) -> float:
    """How many points busier a core was than the one process meant to run on it."""
    gaps = [0.0]
    if m.server_proc_pct is not None:
        gaps.append(m.server_core_pct - m.server_proc_pct)
    if m.wrk_proc_pct is not None:
        gaps.append(m.load_core_pct - m.wrk_proc_pct)
    return max(gaps)


def wait_quiet(args: argparse.Namespace) -> None:
    """Wait (at most --quiet-wait s) until both cores are nearly idle before measuring."""
    deadline = time.monotonic() + args.quiet_wait
    busiest = 0.0
    while True:
        before = read_cpu_times()
        time.sleep(1.0)
        after = read_cpu_times()
        busiest = max(busy_pct(before, after, c) for c in (args.server_cpu, args.load_cpu))
        if busiest < QUIET_MAX or time.monotonic() >= deadline:
            break
    if busiest >= QUIET_MAX:
        _say(f"  warning: cores still {busiest:.0f} % busy after {args.quiet_wait} s; going on")


def fill_row(row: Row, m: Measured) -> None:
    row.requests_per_sec = m.wrk.requests_per_sec
    row.p50_ms, row.p99_ms = m.wrk.p50_ms, m.wrk.p99_ms
    row.server_core_pct, row.load_core_pct = m.server_core_pct, m.load_core_pct
    row.server_proc_pct, row.wrk_proc_pct = m.server_proc_pct, m.wrk_proc_pct
    row.socket_errors, row.non_2xx = m.wrk.socket_errors, m.wrk.non_2xx
    if m.server_proc_pct is not None and m.wrk.requests_per_sec > 0:
        row.cpu_us_per_request = m.server_proc_pct / 100 / m.wrk.requests_per_sec * 1e6
    reasons: list[str] = []
    if m.server_core_pct < VALID_SERVER_MIN:
        reasons.append(f"server core {m.server_core_pct:.0f} % < {VALID_SERVER_MIN:.0f} %")
    if m.load_core_pct >= VALID_LOAD_MAX:
        reasons.append(f"load core {m.load_core_pct:.0f} % >= {VALID_LOAD_MAX:.0f} %")
    if m.wrk.socket_errors or m.wrk.non_2xx:
        reasons.append(f"{m.wrk.socket_errors} socket errors, {m.wrk.non_2xx} non-2xx")
    if m.server_proc_pct is not None and m.server_core_pct - m.server_proc_pct > SHARED_CORE_GAP:
        reasons.append(f"other load on the server core (server process {m.server_proc_pct:.0f} %)")
    if m.wrk_proc_pct is not None and m.load_core_pct - m.wrk_proc_pct > SHARED_CORE_GAP:
        reasons.append(f"other load on the load core (wrk {m.wrk_proc_pct:.0f} %)")
    row.valid, row.invalid_reasons = not reasons, reasons


def merge_rounds(rows: list[Row]) -> list[Row]:
    """One row per server: the medians of its rounds' figures; valid when every round was."""
    merged: list[Row] = []
    for server in dict.fromkeys(r.server for r in rows):
        mine = [r for r in rows if r.server == server]
        measured = [r for r in mine if r.requests_per_sec is not None]
        if len(mine) == 1 or not measured:
            merged.append(mine[0])
            continue
        row = Row(server, mine[0].endpoint, rounds=len(measured))
        for name in (
            "requests_per_sec",
            "p50_ms",
            "p99_ms",
            "server_core_pct",
            "load_core_pct",
            "server_proc_pct",
            "wrk_proc_pct",
            "cpu_us_per_request",
        ):
            values = [getattr(r, name) for r in measured if getattr(r, name) is not None]
            setattr(row, name, statistics.median(values) if values else None)
        row.socket_errors = sum(r.socket_errors for r in measured)
        row.non_2xx = sum(r.non_2xx for r in measured)
        row.valid = all(r.valid for r in measured) and len(measured) == len(mine)
        invalid = [r for r in mine if not r.valid]
        if invalid:
            example = "; ".join(invalid[0].invalid_reasons) or invalid[0].status
            row.invalid_reasons = [f"{len(invalid)} of {len(mine)} rounds invalid ({example})"]
        row.attempts = sum(r.attempts for r in mine)
        merged.append(row)
    return merged


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) if text else "(empty log)"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: Row | None, b: Row | None) -> float | None:
    if a is None or b is None or not a.requests_per_sec or not b.requests_per_sec:
        return None
    return a.requests_per_sec / b.requests_per_sec


def _ratio_text(a: Row | None, b: Row | None) -> str:
    r = _ratio(a, b)
    if r is None:
        missing = [x.server for x in (a, b) if x is not None and not x.requests_per_sec]
        return f"n/a ({', '.join(missing)} has no result)" if missing else "n/a"
    caveat = "" if a is not None and b is not None and a.valid and b.valid else " (invalid row)"
    return f"{r:.2f}x{caveat}"


def baseline(server: str) -> str:
    """The uvicorn row a server is compared with: FastAPI's for the FastAPI rows."""
    return "uvicorn-fastapi" if server in FASTAPI_SERVERS else "uvicorn"


def _cpu_ratio(a: Row | None, b: Row | None) -> float | None:
    """How many times less server CPU per request `a` takes than `b` (> 1: `a` is cheaper)."""
    if a is None or b is None or not a.cpu_us_per_request or not b.cpu_us_per_request:
        return None
    return b.cpu_us_per_request / a.cpu_us_per_request


def render_endpoint(endpoint: Endpoint, rows: list[Row]) -> str:
    by_name = {r.server: r for r in rows}
    uvicorn = by_name.get("uvicorn")
    heading = f"### `GET {endpoint.path}`"
    if endpoint.paths:
        elsewhere = ", ".join(f"{s} at `{p}`" for s, p in endpoint.paths.items())
        heading += f" ({endpoint.name}: {elsewhere})"
    out = [
        heading,
        "",
        "| server | req/s | p99 (ms) | server CPU us/req | server core % | server proc % "
        "| load core % | valid | req/s vs uvicorn | CPU/req vs uvicorn |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        if r.requests_per_sec is None:
            out.append(f"| {r.server} | {r.status} | - | - | - | - | - | no | - | - |")
            continue
        valid = "yes" if r.valid else f"**no**: {'; '.join(r.invalid_reasons)}"
        base = by_name.get(baseline(r.server))
        vs, cpu_vs = _ratio(r, base), _cpu_ratio(r, base)
        out.append(
            f"| {r.server} | {r.requests_per_sec:,.0f} | {_fmt(r.p99_ms, 2)} "
            f"| {_fmt(r.cpu_us_per_request, 1)} "
            f"| {_fmt(r.server_core_pct, 0)} | {_fmt(r.server_proc_pct, 0)} "
            f"| {_fmt(r.load_core_pct, 0)} | {valid} | {_fmt(vs, 2)}{'x' if vs else ''} "
            f"| {_fmt(cpu_vs, 2)}{'x' if cpu_vs else ''} |"
        )
    out.append("")
    for hosting, peer in (("rtserve-asgi", "uvicorn"), ("rtserve-fastapi", "uvicorn-fastapi")):
        if hosting in by_name:
            a, b = by_name[hosting], by_name.get(peer)
            cpu = _cpu_ratio(a, b)
            out.append(
                f"- {hosting} / {peer}: req/s {_ratio_text(a, b)}; server CPU per request "
                + (f"{cpu:.2f}x less" if cpu is not None else "n/a")
            )
    rt, tornado = by_name.get("rtserve"), by_name.get("tornado")
    if rt is not None:
        out.append(f"- rtserve / uvicorn: {_ratio_text(rt, uvicorn)}")
        out.append(f"- rtserve / tornado: {_ratio_text(rt, tornado)}")
    floor = by_name.get("floor")
    if floor is not None and uvicorn is not None:
        out.append(f"- floor / uvicorn: {_ratio_text(floor, uvicorn)}")
    for r in rows:
        if r.detail:
            out.append(f"- {r.server}: {r.status}: {r.detail}")
    return "\n".join(out).rstrip() + "\n"


def render_hosting_goals(results: dict[str, list[Row]]) -> str:
    """Hosting goals: the raw ASGI callable >= 1.3x uvicorn, FastAPI no slower than uvicorn,
    judged on req/s and on server CPU per request (the figure a busy machine spoils least)."""
    out = ["### Goals of ASGI hosting", ""]
    for endpoint, rows in results.items():
        by_name = {r.server: r for r in rows}
        for hosting, peer, goal in (
            ("rtserve-asgi", "uvicorn", 1.3),
            ("rtserve-fastapi", "uvicorn-fastapi", 1.0),
        ):
            a, b = by_name.get(hosting), by_name.get(peer)
            if a is None or b is None:
                continue
            rps, cpu = _ratio(a, b), _cpu_ratio(a, b)
            verdicts = [
                f"{name} {value:.2f}x ({'met' if value >= goal else 'NOT met'})"
                for name, value in (("req/s", rps), ("CPU per request", cpu))
                if value is not None
            ]
            valid = "" if a.valid and b.valid else " (some rows invalid: indicative only)"
            out.append(f"- {endpoint}, {hosting} >= {goal}x {peer}: {'; '.join(verdicts)}{valid}")
    return "\n".join(out) + "\n"


def render_goals(results: dict[str, list[Row]]) -> str:
    """rtserve's goals: >= 1.5x uvicorn (aim 2x), >= 12x Tornado, p99 no worse than uvicorn."""
    out = ["### Goals", ""]
    for endpoint, rows in results.items():
        by_name = {r.server: r for r in rows}
        rt, uv, tor = by_name.get("rtserve"), by_name.get("uvicorn"), by_name.get("tornado")
        if rt is None or rt.requests_per_sec is None:
            out.append(f"- {endpoint}: rtserve has no result yet; goals not evaluated.")
            continue
        parts = []
        r_uv, r_tor = _ratio(rt, uv), _ratio(rt, tor)
        if r_uv is not None:
            verdict = "met" if r_uv >= 1.5 else "NOT met"
            aim = ", 2x aim met" if r_uv >= 2.0 else ", 2x aim not reached"
            parts.append(f">= 1.5x uvicorn: {verdict} ({r_uv:.2f}x{aim if r_uv >= 1.5 else ''})")
        if r_tor is not None:
            verdict = "met" if r_tor >= 12 else "NOT met"
            parts.append(f">= 12x Tornado: {verdict} ({r_tor:.2f}x)")
        if uv is not None and rt.p99_ms is not None and uv.p99_ms is not None:
            verdict = "met" if rt.p99_ms <= uv.p99_ms else "NOT met"
            parts.append(f"p99 <= uvicorn: {verdict} ({rt.p99_ms:.2f} ms vs {uv.p99_ms:.2f} ms)")
        rows_valid = all(r.valid for r in (rt, uv, tor) if r is not None)
        suffix = "" if rows_valid else " (some rows invalid: treat as indicative only)"
        out.append(f"- {endpoint}: " + "; ".join(parts) + suffix)
    return "\n".join(out) + "\n"


def _versions(
    python: str,
    packages: Sequence[str] = (
        "rtserve",
        "tornado",
        "uvicorn",
        "aiohttp",
        "uvloop",
        "httptools",
        "hypercorn",
        "granian",
        "fastapi",
    ),
) -> str:
    """Python's and `packages`' versions as `python` sees them."""
    code = (
        "import importlib.metadata as m, platform, sys\n"
        "out = ['Python ' + platform.python_version()]\n"
        "for n in sys.argv[1:]:\n"
        "    try: out.append(f'{n} {m.version(n)}')\n"
        "    except m.PackageNotFoundError: out.append(f'{n} (not installed)')\n"
        "print(', '.join(out))\n"
    )
    try:
        res = subprocess.run(
            [python, "-c", code, *packages],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "versions unknown"
    return res.stdout.strip() or "versions unknown"


def _wrk_version() -> str:
    try:
        res = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "wrk"
    first = (res.stdout + res.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def _git_state() -> str:
    """The repo's commit, and whether rtserve/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h (%cd)", "--date=short"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "rtserve"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not head:
        return "no commit yet"
    return head + (" + uncommitted changes in rtserve/" if dirty else "")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def render_report(
    args: argparse.Namespace, endpoints: list[Endpoint], results: dict[str, list[Row]]
) -> str:
    out: list[str] = []
    if args.markdown:
        command = "python bench/http.py " + " ".join(args.argv_used)
        out += [
            "## HTTP: plaintext and JSON with a path parameter",
            "",
            f"- Command: `{command.strip()}`",
            f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Machine: {os.cpu_count()} cores ({_cpu_model()}), {platform.system()} "
            f"{platform.release()}; each server is one process pinned to cpu{args.server_cpu}, "
            f"wrk ({_wrk_version()}) pinned to cpu{args.load_cpu}",
            f"- Load: `wrk -t1 -c{args.connections} -d{args.duration}s --latency`, after a "
            f"{args.warmup} s warm-up run (discarded)"
            + (
                f"; {args.rounds} rounds, servers alternated, medians shown"
                if args.rounds > 1
                else ""
            ),
            f"- Software: {_versions(args.python)}; rtserve at commit {args.git_state}",
            f"- Valid row: server core >= {VALID_SERVER_MIN:.0f} % busy, load core < "
            f"{VALID_LOAD_MAX:.0f} % busy, neither core more than {SHARED_CORE_GAP:.0f} points "
            "busier than its own process (server, wrk), no socket errors or non-2xx responses",
            "",
        ]
    for endpoint in endpoints:
        out.append(render_endpoint(endpoint, results[endpoint.name]))
    if "rtserve" in args.servers:
        out.append(render_goals(results))
    if {"rtserve-asgi", "rtserve-fastapi"} & set(args.servers):
        out.append(render_hosting_goals(results))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(choices)}"
            )
        return names

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rtserve and peer HTTP servers with wrk, pinned to separate cores.",
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument(
        "--servers",
        type=_csv([*SERVERS, *SERVER_GROUPS]),
        default=list(SERVERS),
        help=f"comma-separated subset of {','.join(SERVERS)}; 'asgi' for the ASGI hosting rows",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every server N times, alternating them, and report medians (default 1)",
    )
    parser.add_argument(
        "--endpoints",
        type=_csv(list(ENDPOINTS)),
        default=list(ENDPOINTS),
        help=f"comma-separated subset of {','.join(ENDPOINTS)}",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write results as JSON")
    parser.add_argument(
        "--markdown", action="store_true", help="print a docs-ready section (command, machine)"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the servers (default: this one)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-measure a run that shared a core with other load up to N times (default 2)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="wait up to N s for idle cores before each server (default 60)",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="server core (default 0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="wrk core (default 1)")
    args = parser.parse_args(argv)
    args.argv_used = list(sys.argv[1:] if argv is None else argv)
    args.servers = list(
        dict.fromkeys(n for name in args.servers for n in SERVER_GROUPS.get(name, [name]))
    )
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.duration < 1 or args.connections < 1 or min(args.warmup, args.retries) < 0:
        parser.error("--duration and --connections must be >= 1, --warmup and --retries >= 0")
    if args.server_cpu == args.load_cpu:
        parser.error("--server-cpu and --load-cpu must differ")
    return args


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(
            f"error: {', '.join(missing)} not found on PATH (apt-get install wrk)", file=sys.stderr
        )
        return 2
    cpus = read_cpu_times()
    if args.server_cpu not in cpus or args.load_cpu not in cpus:
        print(f"error: cpus {sorted(cpus)} available; need two distinct ones", file=sys.stderr)
        return 2
    args.git_state = _git_state()  # before the run: the code that is measured
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)  # even if started with it ignored
    endpoints = [ENDPOINTS[n] for n in args.endpoints]
    results: dict[str, list[Row]] = {e.name: [] for e in endpoints}
    per_run = args.warmup + args.duration
    estimate = args.rounds * len(args.servers) * (len(endpoints) * per_run + 2)
    _say(
        f"benchmarking {', '.join(args.servers)} on {', '.join(e.name for e in endpoints)}: "
        f"{args.connections} connections, {args.duration} s (+{args.warmup} s warm-up), "
        f"~{estimate} s total, more if a disturbed run is repeated"
    )
    try:
        for round_ in range(args.rounds):
            if args.rounds > 1:
                _say(f"round {round_ + 1} of {args.rounds}")
            for name in args.servers:
                for row in bench_server(args, SERVERS[name], endpoints):
                    results[row.endpoint].append(row)
    except KeyboardInterrupt:
        _say("interrupted; servers stopped")
        return 130
    results = {name: merge_rounds(rows) for name, rows in results.items()}
    print(render_report(args, endpoints, results))
    if args.json:
        payload = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": ["python", "bench/http.py", *args.argv_used],
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "server_cpu": args.server_cpu,
            "load_cpu": args.load_cpu,
            "results": {k: [asdict(r) for r in v] for k, v in results.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        _say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
