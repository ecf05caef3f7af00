"""Benchmark WebSocket servers side by side: rtserve, Tornado, websockets, aiohttp, a floor;
and rtserve with its admin interface and stats on (``rtserve-stats``) against ``rtserve``.

Each server runs as one process pinned to the server core (``taskset -c 0``); the load is our
own raw asyncio client (``bench/ws_apps/load.py``, uvloop, hand-parsed frames), one process
pinned to the load core (``taskset -c 1``). Compression is off on every server (except the
rtserve memory rows that negotiate permessage-deflate on purpose); keepalive pings are off.

Measurements, per server:

1. fan-out: N subscribers (5,000); a burst of M 100-byte messages broadcast as fast as the
   server goes (deliveries/s over all connections; per message, the time from the server's
   send timestamp to the LAST subscriber receiving it), then sustained offered rates;
2. echo round trips/s over 100 connections, each sending, waiting for the echo, repeating;
3. memory per idle connection: the server's VmRSS before and after 10,000 idle connections;
4. hold 18,000 connections in one process, check they stay open and a broadcast reaches all.

``rtserve-stats`` is ``rtserve`` with the admin interface on (the admin socket, each
connection's opening time kept, the loop-lag probe, /metrics), as ``rtserve run`` has it by
default, and a poller (``bench/ws_apps/stats_poll.py``, pinned to the load core) asking what the
``rtserve stats`` dashboard asks once a second; the report compares its fan-out with
``rtserve``'s (goal: at most 5 % fewer deliveries/s).

While the client runs, both cores' busy share (/proc/stat) and both processes' CPU share
(/proc/PID/stat) are sampled; a throughput figure is valid when the server core is >= 90 %
busy and the load core < 90 %.

Usage (from anywhere; paths are resolved against the repo root):
    python bench/ws.py                          # everything, about 5 minutes
    python bench/ws.py --quick                  # small numbers: a smoke test (about 1 min)
    python bench/ws.py --servers rtserve,websockets --subscribers 2000 --markdown
    python bench/ws.py --servers rtserve,rtserve-stats,rtserve,rtserve-stats --phases fanout,echo

Standard library only (the servers and the client need their packages). Traffic goes to
127.0.0.1 only; every phase has a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/ws.py`, sys.path[0] is bench/, where http.py would shadow the stdlib.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "bench":
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.http import (  # noqa: E402  (after the sys.path fix above)
    HOST,
    READY_TIMEOUT_S,
    _cpu_model,
    _csv,
    _git_state,
    _raise_keyboard_interrupt,
    _say,
    _tail,
    _versions,
    busy_pct,
    free_port,
    read_cpu_times,
    read_proc_ticks,
    stop_process,
    wait_quiet,
    wait_until_listening,
)

WS_PACKAGES = ("rtserve", "tornado", "websockets", "aiohttp", "uvloop")
VALID_SERVER_MIN = 90.0
VALID_LOAD_MAX = 90.0
SHARED_CORE_GAP = 10.0
SAMPLE_EVERY_S = 0.1
WRITE_DELAY_S = 0.005
DEFLATE_OFFERS = {
    "deflate, no context takeover": (
        "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
    ),
    "deflate, Chrome's offer": "permessage-deflate; client_max_window_bits",
}
GOAL_VS_WEBSOCKETS = 5.0
GOAL_VS_TORNADO = 25.0
GOAL_DELIVERIES = 1_000_000
GOAL_P99_MS = 20.0
GOAL_KIB = 4.0
GOAL_KIB_DEFLATE = 8.0
GOAL_STATS_SLOWDOWN = 5.0  # % fewer deliveries/s with the admin interface and stats on
ADMIN_POLL_S = 1.0  # rtserve-stats: seconds between two polls, as `rtserve stats` does
PHASES = ("memory", "fanout", "echo", "hold")


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    module: str
    extra: tuple[str, ...] = ()
    phases: frozenset[str] = frozenset(PHASES)
    deflate_memory: bool = False
    admin: bool = False  # serve the admin interface (--admin-socket) and poll it meanwhile

    def argv(self, python: str, port: int, write_delay: float) -> list[str]:
        extra = [x.format(write_delay=write_delay) for x in self.extra]
        return [python, "-m", f"bench.ws_apps.{self.module}", "--port", str(port), *extra]

    def describe(self, write_delay: float) -> str:
        return self.description.format(write_delay=write_delay, ms=write_delay * 1e3)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "rtserve",
            "rtserve `broadcast()` to a set of handlers, uvloop, no write delay",
            "rtserve_ws",
            deflate_memory=True,
        ),
        Variant(
            "rtserve-batch",
            "the same with `write_delay={write_delay:g}` (a connection's frames are held "
            "{ms:g} ms so several go in one write)",
            "rtserve_ws",
            ("--write-delay", "{write_delay}"),
            frozenset({"fanout"}),
        ),
        Variant(
            "rtserve-batch50",
            "the same with `write_delay=0.05` (50 ms: enough to gather several messages of a "
            "burst per write on this machine)",
            "rtserve_ws",
            ("--write-delay", "0.05"),
            frozenset({"fanout"}),
        ),
        Variant(
            "rtserve-asyncio",
            "rtserve on the default asyncio loop (`serve(..., use_uvloop=False)`)",
            "rtserve_ws",
            ("--loop", "asyncio"),
            frozenset({"fanout", "echo"}),
        ),
        Variant(
            "rtserve-stats",
            "`rtserve` with the admin interface on (`enable_admin`: admin socket, connection "
            "ages kept, loop-lag probe, /metrics) and polled once a second as by `rtserve stats`",
            "rtserve_ws",
            phases=frozenset({"fanout", "echo"}),
            admin=True,
        ),
        Variant(
            "rtserve-batch50-stats",
            "`rtserve-batch50` with the admin interface on and polled, as `rtserve-stats`",
            "rtserve_ws",
            ("--write-delay", "0.05"),
            frozenset({"fanout"}),
            admin=True,
        ),
        Variant(
            "websockets",
            "websockets (asyncio server) with `websockets.asyncio.server.broadcast`, uvloop",
            "websockets_ws",
        ),
        Variant(
            "tornado",
            "Tornado `WebSocketHandler`s, loop of `write_message`, default asyncio loop",
            "tornado_ws",
        ),
        Variant(
            "aiohttp", "aiohttp `WebSocketResponse`s, loop of `send_str`, uvloop", "aiohttp_ws"
        ),
        Variant(
            "floor",
            "raw uvloop Protocol, minimal handshake, one pre-encoded frame written to every "
            "transport",
            "floor_ws",
        ),
    )
}


# --------------------------------------------------------------------------------------------
# CPU sampling
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    cpus: dict[int, tuple[int, int]]
    server: int | None
    client: int | None


class Sampler(threading.Thread):
    """Samples /proc/stat and both processes' CPU ticks every SAMPLE_EVERY_S seconds."""

    def __init__(self, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.client_pid: int | None = None
        self.samples: list[Sample] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.samples.append(
                Sample(
                    time.monotonic(),
                    read_cpu_times(),
                    read_proc_ticks(self.server_pid),
                    read_proc_ticks(self.client_pid) if self.client_pid else None,
                )
            )
            self.stopping.wait(SAMPLE_EVERY_S)

    def wait_past(self, t: float, timeout: float = 1.0) -> None:
        """Wait until a sample taken after `t` exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self.samples and self.samples[-1].t > t):
            time.sleep(0.02)

    def window(self, t0: float, t1: float, server_cpu: int, load_cpu: int) -> dict[str, Any]:
        """Core busy % and process CPU % over the samples that best cover [t0, t1]."""
        samples = list(self.samples)
        inside = [i for i, s in enumerate(samples) if t0 <= s.t <= t1]
        if len(inside) >= 2 and samples[inside[-1]].t - samples[inside[0]].t >= 0.5 * (t1 - t0):
            a, b = samples[inside[0]], samples[inside[-1]]
        else:  # a short window: the nearest samples around it
            before = [s for s in samples if s.t <= t0]
            after = [s for s in samples if s.t >= t1]
            if not before or not after:
                return {}
            a, b = before[-1], after[0]
        seconds = b.t - a.t
        if seconds <= 0:
            return {}
        clk = os.sysconf("SC_CLK_TCK")

        def pct(x: int | None, y: int | None) -> float | None:
            return None if x is None or y is None else 100.0 * (y - x) / clk / seconds

        return {
            "server_core_pct": busy_pct(a.cpus, b.cpus, server_cpu),
            "load_core_pct": busy_pct(a.cpus, b.cpus, load_cpu),
            "server_proc_pct": pct(a.server, b.server),
            "client_proc_pct": pct(a.client, b.client),
            "cpu_seconds": seconds,
        }


# --------------------------------------------------------------------------------------------
# Running one server session
# --------------------------------------------------------------------------------------------


@dataclass
class Session:
    variant: str
    plan: list[dict[str, Any]]
    label: str = "main"
    status: str = "ok"
    detail: str = ""
    server_nofile: int | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    load_module: str = "bench.ws_apps.load"  # the load client (bench/channels.py has its own)


def server_nofile(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def run_session(args: argparse.Namespace, variant: Variant, session: Session) -> None:
    wait_quiet(args)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(
            tempfile.NamedTemporaryFile(prefix=f"bench-ws-{variant.name}-", suffix=".log")
        )
        port = free_port()
        argv = variant.argv(args.python, port, args.write_delay)
        admin_socket: Path | None = None
        if variant.admin:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ws-admin-"))
            admin_socket = Path(folder) / "admin.sock"
            argv += ["--admin-socket", str(admin_socket)]
        cmd = ["taskset", "-c", str(args.server_cpu), *argv]
        server = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        )
        try:
            error = wait_until_listening(server, port, READY_TIMEOUT_S)
            if error:
                log.flush()
                session.status = "failed to start"
                session.detail = f"{error}; {_tail(Path(log.name))}"
                _say(f"  {variant.name}: failed to start ({session.detail})")
                return
            session.server_nofile = server_nofile(server.pid)
            _say(
                f"  {variant.name} ({session.label}): listening on {HOST}:{port} "
                f"(pid {server.pid}, open-files limit {session.server_nofile})"
            )
            poller = None if admin_socket is None else start_poller(args, admin_socket)
            try:
                _run_client(args, server, port, session)
            finally:
                if poller is not None:
                    record = stop_poller(poller)
                    session.results.append(record)
                    _say("  " + summarize(session.variant, record))
            if server.poll() is not None:
                log.flush()
                session.status = "server died"
                session.detail = f"exit code {server.returncode}; {_tail(Path(log.name))}"
                _say(f"  {variant.name}: server died: {session.detail}")
        finally:
            stop_process(server)


def start_poller(args: argparse.Namespace, admin_socket: Path) -> subprocess.Popen[str]:
    """The admin poller of `rtserve-stats` (bench/ws_apps/stats_poll.py), on the load core."""
    interval = getattr(args, "admin_interval", ADMIN_POLL_S)
    cmd = ["taskset", "-c", str(args.load_cpu), args.python, "-m", "bench.ws_apps.stats_poll"]
    return subprocess.Popen(
        [*cmd, "--socket", str(admin_socket), "--interval", str(interval)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop_poller(poller: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM the poller; its summary line (`phase: admin_poll`)."""
    stop_process(poller, grace_s=5.0)
    assert poller.stdout is not None
    lines = [x for x in poller.stdout.read().splitlines() if x.startswith("{")]
    poller.stdout.close()
    if not lines:
        return {"phase": "admin_poll", "error": f"the poller exited {poller.returncode}"}
    return dict(json.loads(lines[-1]))


def _run_client(
    args: argparse.Namespace, server: subprocess.Popen[bytes], port: int, session: Session
) -> None:
    sampler = Sampler(server.pid)
    sampler.start()
    client_cmd = [
        "taskset",
        "-c",
        str(args.load_cpu),
        args.python,
        "-m",
        session.load_module,
        "--port",
        str(port),
        "--server-pid",
        str(server.pid),
        "--plan",
        json.dumps(session.plan),
    ]
    client = subprocess.Popen(
        client_cmd,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sampler.client_pid = client.pid
    watchdog = threading.Timer(args.session_timeout, stop_process, (client, 2.0))
    watchdog.start()
    try:
        assert client.stdout is not None
        for line in client.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            window = record.get("window")
            if window:
                sampler.wait_past(window[1])
                record.update(sampler.window(window[0], window[1], args.server_cpu, args.load_cpu))
            session.results.append(record)
            _say("  " + summarize(session.variant, record))
        client.wait(timeout=30)
        if client.returncode:
            session.detail = f"load client exited {client.returncode}"
            _say(f"  {session.variant}: {session.detail}")
    finally:
        watchdog.cancel()
        stop_process(client, grace_s=2.0)
        sampler.stopping.set()
        sampler.join(timeout=2)


def summarize(variant: str, r: dict[str, Any]) -> str:
    phase = r.get("phase")
    cores = (
        f"server core {_fmt(r.get('server_core_pct'), 0)} %, "
        f"load core {_fmt(r.get('load_core_pct'), 0)} %"
    )
    if "error" in r:
        return f"{variant} {phase}: ERROR {r['error']}"
    if phase in ("burst", "sustained"):
        rate = f" @ {r['rate_hz']} msg/s" if phase == "sustained" else ""
        return (
            f"{variant} {phase}{rate}: {r['messages']} x {r['subscribers']}, "
            f"{_fmt(r.get('deliveries_per_s'), 0, True)} deliveries/s, "
            f"p50 {_fmt(r.get('latency_p50_ms'), 2)} ms, p99 {_fmt(r.get('latency_p99_ms'), 2)} "
            f"ms, {'complete' if r['complete'] else 'INCOMPLETE'}, {cores}"
        )
    if phase == "echo":
        return (
            f"{variant} echo: {_fmt(r.get('round_trips_per_s'), 0, True)} round trips/s, "
            f"p99 {_fmt(r.get('rtt_p99_ms'), 2)} ms, {cores}"
        )
    if phase == "memory":
        return (
            f"{variant} memory ({r['label']}): {_fmt(r.get('kib_per_conn'), 2)} KiB per "
            f"connection over {r['opened']} (negotiated {r.get('negotiated') or 'nothing'!r}), "
            f"kernel {_fmt(r.get('kernel_kib_per_conn'), 2)} KiB"
        )
    if phase == "admin_poll":
        return (
            f"{variant} admin poller: {r['polls']} polls (one every {r['interval_s']:g} s: "
            f"stats, channels, top 10 connections), p50 {_fmt(r.get('poll_ms_p50'), 1)} ms, "
            f"max {_fmt(r.get('poll_ms_max'), 1)} ms, {r['errors']} errors; up to "
            f"{r['most_open_websockets']:,} WebSockets open, {r['most_connections_listed']:,} "
            f"connections in all, {r['most_ages_known']:,} listed with their age"
        )
    if phase == "hold":
        return (
            f"{variant} hold: {r['opened']}/{r['connections']} open, "
            f"{r['closed_during_hold']} closed during hold, broadcast reached "
            f"{r['broadcast_reached']}"
        )
    return f"{variant} {phase}: {r}"


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


def sessions_for(args: argparse.Namespace, variant: Variant) -> list[Session]:
    plan: list[dict[str, Any]] = []
    phases = variant.phases & set(getattr(args, "phases", PHASES))
    if "memory" in phases:
        plan.append(
            {"phase": "memory", "connections": args.idle_connections, "label": "no compression"}
        )
    if "fanout" in phases:
        plan.append(
            {
                "phase": "fanout",
                "subscribers": args.subscribers,
                "messages": args.messages,
                "burst_seconds": args.burst_seconds,
                "rates": args.rates,
                "sustained_seconds": args.sustained_seconds,
            }
        )
    if "echo" in phases:
        plan.append(
            {
                "phase": "echo",
                "connections": args.echo_connections,
                "duration": args.echo_seconds,
            }
        )
    if "hold" in phases:
        plan.append(
            {
                "phase": "hold",
                "connections": args.hold_connections,
                "hold_seconds": args.hold_seconds,
            }
        )
    sessions = [Session(variant.name, plan)] if plan else []
    if variant.deflate_memory and "memory" in phases:
        for label, offer in DEFLATE_OFFERS.items():
            spec = {
                "phase": "memory",
                "connections": args.idle_connections,
                "path": "/subz",
                "extensions": offer,
                "label": label,
            }
            sessions.append(Session(variant.name, [spec], label=label))
    return sessions


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1, thousands: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def validity(r: dict[str, Any], throughput: bool = True) -> list[str]:
    """Why a row's figure does not count (empty: it counts)."""
    reasons: list[str] = []
    server, load = r.get("server_core_pct"), r.get("load_core_pct")
    if server is None or load is None:
        reasons.append("no CPU samples over the window")
    if throughput and server is not None and server < VALID_SERVER_MIN:
        reasons.append(f"server core {server:.0f} % < {VALID_SERVER_MIN:.0f} %")
    if load is not None and load >= VALID_LOAD_MAX:
        reasons.append(
            f"load core {load:.0f} % >= {VALID_LOAD_MAX:.0f} %: the client saturated first, "
            "so this is a lower bound, not the server's ceiling"
        )
    sp, cp = r.get("server_proc_pct"), r.get("client_proc_pct")
    if server is not None and sp is not None and server - sp > SHARED_CORE_GAP:
        reasons.append(f"other load on the server core (server process {sp:.0f} %)")
    if load is not None and cp is not None and load - cp > SHARED_CORE_GAP:
        reasons.append(f"other load on the load core (client process {cp:.0f} %)")
    if r.get("complete") is False:
        reasons.append(f"only {r['delivered']:,} of {r['expected']:,} delivered in time")
    if r.get("bad_replies"):
        reasons.append(f"{r['bad_replies']} bad echo replies")
    return reasons


def _first(results: dict[str, list[dict[str, Any]]], name: str, phase: str) -> dict[str, Any]:
    for r in results.get(name, []):
        if r.get("phase") == phase and "error" not in r:
            return r
    return {}


def _all(results: dict[str, list[dict[str, Any]]], name: str, phase: str) -> list[dict[str, Any]]:
    return [r for r in results.get(name, []) if r.get("phase") == phase and "error" not in r]


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
    x, y = a.get(key), b.get(key)
    if not x or not y:
        return "-"
    mark = "" if a.get("valid") and b.get("valid") else " (invalid row)"
    return f"{x / y:.2f}x{mark}"


def _valid_cell(r: dict[str, Any]) -> str:
    return "yes" if r.get("valid") else "**no**: " + "; ".join(r.get("invalid_reasons", []))


def render(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> str:
    names = [n for n in dict.fromkeys(args.servers) if n in results]  # a name may repeat
    ran = set(getattr(args, "phases", PHASES))
    ws, tor = _first(results, "websockets", "burst"), _first(results, "tornado", "burst")
    out: list[str] = []
    if args.markdown:
        out += header_lines(args)

    # 1. fan-out burst
    if "fanout" in ran:
        out += [
            f"### Fan-out burst: {args.subscribers:,} subscribers, 100-byte messages",
            "",
            "Deliveries/s over all connections, from the first message's send timestamp to the "
            "last delivery; latency is per message, from the server's send timestamp to the LAST "
            "subscriber receiving it (messages of a burst queue behind each other, so this is "
            "mostly queueing).",
            "",
            "| server | messages | deliveries/s | p50 (ms) | p99 (ms) | server core % "
            "| server proc % | load core % | valid | vs websockets | vs tornado |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for n in names:
            rows = _all(results, n, "burst")
            if not rows and "fanout" in VARIANTS[n].phases:
                out.append(f"| {n} | {_status(results, n, 'burst')} | | | | | | | no | | |")
            for r in rows:
                out.append(
                    f"| {n} | {r['messages']:,} | {_fmt(r.get('deliveries_per_s'), 0, True)} "
                    f"| {_fmt(r.get('latency_p50_ms'), 1)} | {_fmt(r.get('latency_p99_ms'), 1)} "
                    f"| {_fmt(r.get('server_core_pct'), 0)} | {_fmt(r.get('server_proc_pct'), 0)} "
                    f"| {_fmt(r.get('load_core_pct'), 0)} | {_valid_cell(r)} "
                    f"| {_ratio(r, ws, 'deliveries_per_s')} "
                    f"| {_ratio(r, tor, 'deliveries_per_s')} |"
                )
        out.append("")

    # 1b. sustained
    if "fanout" in ran:
        out += [
            f"### Fan-out at a steady offered rate: {args.subscribers:,} subscribers, "
            f"{args.sustained_seconds:g} s per rate",
            "",
            "Latency: per message, server send timestamp to the last of the subscribers receiving "
            'it. "server send": the server\'s own time from that timestamp until the loop '
            "iteration that wrote the message to every socket was over (rtserve-batch's delayed "
            'writes are not included). "kept up": every message reached every subscriber within '
            "the run plus 15 s.",
            "",
            "| server | msg/s | offered deliveries/s | achieved deliveries/s | kept up | p50 (ms) "
            "| p99 (ms) | max (ms) | server send p50 / max (ms) | server core % | load core % |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n in names:
            for r in results.get(n, []):
                if r.get("phase") != "sustained" or "error" in r:
                    continue
                offered = r["rate_hz"] * r["subscribers"]
                kept = "yes" if r["complete"] else f"**no** ({r['delivered']:,}/{r['expected']:,})"
                out.append(
                    f"| {n} | {r['rate_hz']} | {offered:,} "
                    f"| {_fmt(r.get('deliveries_per_s'), 0, True)} | {kept} "
                    f"| {_fmt(r.get('latency_p50_ms'), 2)} "
                    f"| {_fmt(r.get('latency_p99_ms'), 2)} | {_fmt(r.get('latency_max_ms'), 2)} "
                    f"| {_fmt(r.get('server_send_p50_ms'), 1)} "
                    f"/ {_fmt(r.get('server_send_max_ms'), 1)} "
                    f"| {_fmt(r.get('server_core_pct'), 0)} | {_fmt(r.get('load_core_pct'), 0)} |"
                )
        out.append("")

    # 2. echo
    if "echo" in ran:
        ws_e, tor_e = _first(results, "websockets", "echo"), _first(results, "tornado", "echo")
        out += [
            f"### Echo: {args.echo_connections} connections, {args.echo_seconds:g} s, "
            "100-byte text messages",
            "",
            "| server | round trips/s | p50 (ms) | p99 (ms) | server core % | server proc % "
            "| load core % | valid | vs websockets | vs tornado |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for n in names:
            rows = _all(results, n, "echo")
            if not rows and "echo" in VARIANTS[n].phases:
                out.append(f"| {n} | {_status(results, n, 'echo')} | | | | | | no | | |")
            for r in rows:
                out.append(
                    f"| {n} | {_fmt(r.get('round_trips_per_s'), 0, True)} "
                    f"| {_fmt(r.get('rtt_p50_ms'), 2)} | {_fmt(r.get('rtt_p99_ms'), 2)} "
                    f"| {_fmt(r.get('server_core_pct'), 0)} | {_fmt(r.get('server_proc_pct'), 0)} "
                    f"| {_fmt(r.get('load_core_pct'), 0)} | {_valid_cell(r)} "
                    f"| {_ratio(r, ws_e, 'round_trips_per_s')} "
                    f"| {_ratio(r, tor_e, 'round_trips_per_s')} |"
                )
        out.append("")

    # 3. memory
    if "memory" in ran:
        out += [
            f"### Memory per idle connection ({args.idle_connections:,} connections)",
            "",
            "The server's VmRSS (from /proc/PID/status) after 200 warm-up connections, and again "
            "after opening the idle connections (on a fresh server process each row); "
            "(after - before) / N.",
            "",
            "| server | client offers | negotiated | connections | RSS before (MiB) "
            "| RSS after (MiB) | KiB per connection | kernel KiB per connection |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n in names:
            for r in results.get(n, []):
                if r.get("phase") != "memory" or "error" in r:
                    continue
                out.append(
                    f"| {n} | {('`' + r['offered'] + '`') if r.get('offered') else 'no extension'} "
                    f"| {('`' + r['negotiated'] + '`') if r.get('negotiated') else 'none'} "
                    f"| {r['opened']:,} | {_mib(r.get('rss_before_kib'))} "
                    f"| {_mib(r.get('rss_after_kib'))} | {_fmt(r.get('kib_per_conn'), 2)} "
                    f"| {_fmt(r.get('kernel_kib_per_conn'), 2)} |"
                )
        out += [
            "",
            "Kernel KiB per connection: /proc/meminfo's Slab plus /proc/net/sockstat's TCP "
            "buffer pages, before and after, over N, halved (the client's end is on this "
            "machine too); machine-wide, so other programs' allocations count: a figure for a "
            "quiet machine.",
            "",
        ]

    # 4. hold
    if "hold" in ran:
        out += [
            f"### Holding {args.hold_connections:,} connections in one process",
            "",
            f"Open them all, wait {args.hold_seconds:g} s, count what is still open (client side "
            "and the server's own count), then broadcast one message and count who got it.",
            "",
            "| server | server open-files limit | opened | still open after hold | server counts "
            "| broadcast reached | time to reach all (ms) | connect time (s) | result |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for n in names:
            r = _first(results, n, "hold")
            if not r:
                if "hold" in VARIANTS[n].phases:
                    out.append(f"| {n} | | {_status(results, n, 'hold')} | | | | | | failed |")
                continue
            target = r["connections"]
            still = r["opened"] - r["closed_during_hold"]
            ok = (
                r["opened"] == target
                and still == target
                and r["registered_after_hold"] == target
                and r["broadcast_reached"] == target
            )
            note = "all held, all reached" if ok else "**failed**"
            if r.get("error_count"):
                note += (
                    f" ({r['error_count']} connect errors: {r['errors'][0] if r['errors'] else ''})"
                )
            out.append(
                f"| {n} | {_fmt(r.get('server_nofile'), 0)} | {r['opened']:,} | {still:,} "
                f"| {r['registered_after_hold']:,} | {r['broadcast_reached']:,} "
                f"| {_fmt(r.get('broadcast_latency_ms'), 1)} | {_fmt(r.get('connect_s'), 1)} "
                f"| {note} |"
            )
        out.append("")
    for off, on in STATS_PAIRS:
        if off in results and on in results:
            out += render_stats_cost(results, off, on)
    if any(n.startswith("rtserve") for n in names):
        out += render_goals(args, results)
    errors = [
        f"- {n}: {r['phase']}: {r.get('error') or r.get('errors')}"
        for n in names
        for r in results.get(n, [])
        if "error" in r or r.get("phase") in ("client_errors", "session")
    ]
    errors += [
        f"- {n}: admin poller: {r['errors']} failed polls, the first: {r['first_error']}"
        for n in names
        for r in results.get(n, [])
        if r.get("phase") == "admin_poll" and r.get("errors")
    ]
    if errors:
        out += ["### Errors", "", *errors, ""]
    return "\n".join(out)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _status(results: dict[str, list[dict[str, Any]]], name: str, phase: str) -> str:
    for r in results.get(name, []):
        if r.get("phase") == "session":
            return str(r.get("status"))
        if r.get("phase") == phase and "error" in r:
            return f"error: {r['error']}"
    return "no result"


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key)]
    return statistics.median(values) if values else None


# (stats off, stats on): the same server without and with the admin interface and its poller
STATS_PAIRS = (("rtserve", "rtserve-stats"), ("rtserve-batch50", "rtserve-batch50-stats"))


def stats_slowdown(
    results: dict[str, list[dict[str, Any]]], off_name: str, on_name: str
) -> tuple[float, bool] | None:
    """% fewer burst deliveries/s of `on_name` than `off_name` (medians over their runs), and
    whether every row involved is valid; None without both."""
    off, on = _all(results, off_name, "burst"), _all(results, on_name, "burst")
    a, b = _median(off, "deliveries_per_s"), _median(on, "deliveries_per_s")
    if not a or not b:
        return None
    return 100.0 * (1.0 - b / a), all(r.get("valid") for r in off + on)


def render_stats_cost(
    results: dict[str, list[dict[str, Any]]], off_name: str, on_name: str
) -> list[str]:
    """`on_name` against `off_name`: the price of the admin interface and its poller."""
    out = [
        f"### Stats on vs off ({off_name})",
        "",
        f"`{on_name}` is `{off_name}` with the admin interface on (admin socket, each "
        "connection's opening time kept, the loop-lag probe, /metrics) and a poller asking "
        "once a second what the `rtserve stats` dashboard asks (stats, top channels, the top "
        "10 connections by queued bytes). Medians over the runs of each (repeat the names in "
        "`--servers` to alternate them).",
        "",
        f"| measure | {off_name} (off) | {on_name} (on) | on / off | runs (off, on) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    measures = [
        ("burst deliveries/s", "burst", "deliveries_per_s", 0),
        ("burst p99 to the last subscriber (ms)", "burst", "latency_p99_ms", 1),
        ("echo round trips/s", "echo", "round_trips_per_s", 0),
    ]
    rates = sorted(
        {r["rate_hz"] for r in _all(results, on_name, "sustained")}
        & {r["rate_hz"] for r in _all(results, off_name, "sustained")}
    )
    for rate in rates:
        measures.append((f"p99 at {rate} msg/s (ms)", f"sustained@{rate}", "latency_p99_ms", 2))
    for label, phase, key, digits in measures:
        rows = []
        for name in (off_name, on_name):
            if "@" in phase:
                rate = int(phase.split("@")[1])
                found = [r for r in _all(results, name, "sustained") if r["rate_hz"] == rate]
            else:
                found = _all(results, name, phase)
            rows.append(found)
        a, b = _median(rows[0], key), _median(rows[1], key)
        if a is None and b is None:
            continue
        ratio = f"{b / a:.3f}x" if a and b else "-"
        valid = all(r.get("valid", True) for r in rows[0] + rows[1])
        mark = "" if valid else " (a row is invalid)"
        out.append(
            f"| {label} | {_fmt(a, digits, True)} | {_fmt(b, digits, True)} | {ratio}{mark} "
            f"| {len(rows[0])}, {len(rows[1])} |"
        )
    for r in results.get(on_name, []):
        if r.get("phase") == "admin_poll":
            out.append("")
            out.append("Admin poller: " + summarize(on_name, r).split(": ", 1)[1])
            break
    return [*out, ""]


def render_goals(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = ["### Goals", ""]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**NOT met**"

    def caveat(*rows: dict[str, Any]) -> str:
        return "" if all(r.get("valid") for r in rows) else " (a row involved is invalid)"

    ws, tor = _first(results, "websockets", "burst"), _first(results, "tornado", "burst")
    for name in ("rtserve", "rtserve-batch", "rtserve-batch50"):
        r = _first(results, name, "burst")
        if not r or not r.get("deliveries_per_s"):
            continue
        rate = r["deliveries_per_s"]
        if ws.get("deliveries_per_s"):
            x = rate / ws["deliveries_per_s"]
            out.append(
                f"- fan-out >= {GOAL_VS_WEBSOCKETS:g}x the websockets library ({name}): "
                f"{verdict(x >= GOAL_VS_WEBSOCKETS)} ({x:.2f}x){caveat(r, ws)}"
            )
        if tor.get("deliveries_per_s"):
            x = rate / tor["deliveries_per_s"]
            out.append(
                f"- fan-out >= {GOAL_VS_TORNADO:g}x Tornado ({name}): "
                f"{verdict(x >= GOAL_VS_TORNADO)} ({x:.2f}x){caveat(r, tor)}"
            )
    for off_name, on_name in STATS_PAIRS:
        slowdown = stats_slowdown(results, off_name, on_name)
        if slowdown is None:
            continue
        pct, valid = slowdown
        out.append(
            f"- stats on costs at most {GOAL_STATS_SLOWDOWN:g} % of the fan-out deliveries/s "
            f"({on_name} vs {off_name}): {verdict(pct <= GOAL_STATS_SLOWDOWN)} "
            f"({abs(pct):.1f} % {'fewer' if pct >= 0 else 'more'})"
            + ("" if valid else " (a row involved is invalid)")
        )
    for name in ("rtserve-batch", "rtserve-batch50"):
        batch = _first(results, name, "burst")
        if batch.get("deliveries_per_s"):
            rate = batch["deliveries_per_s"]
            out.append(
                f"- >= {GOAL_DELIVERIES:,} deliveries/s on one core with batching on ({name}): "
                f"{verdict(rate >= GOAL_DELIVERIES)} ({rate:,.0f}/s){caveat(batch)}"
            )
    for name in ("rtserve", "rtserve-batch", "rtserve-batch50"):
        rows = [
            r
            for r in results.get(name, [])
            if r.get("phase") == "sustained" and "error" not in r and r.get("latency_p99_ms")
        ]
        if rows:
            r = min(rows, key=lambda x: x["rate_hz"])
            p99 = r["latency_p99_ms"]
            out.append(
                f"- one message reaches all {r['subscribers']:,} subscribers, p99 <= "
                f"{GOAL_P99_MS:g} ms ({name}, {r['rate_hz']} msg/s): "
                f"{verdict(p99 <= GOAL_P99_MS and r['complete'])} ({p99:.2f} ms)"
            )
    for r in results.get("rtserve", []):
        if r.get("phase") != "memory" or r.get("kib_per_conn") is None:
            continue
        limit = GOAL_KIB_DEFLATE if r.get("negotiated") else GOAL_KIB
        what = f"with `{r['negotiated']}`" if r.get("negotiated") else "without compression"
        if r.get("offered") and not r.get("negotiated"):
            what = f"offered `{r['offered']}` but nothing negotiated"
        out.append(
            f"- idle memory <= {limit:g} KiB per connection {what}: "
            f"{verdict(r['kib_per_conn'] <= limit)} ({r['kib_per_conn']:.2f} KiB)"
        )
    return [*out, ""]


def header_lines(args: argparse.Namespace) -> list[str]:
    command = ("python bench/ws.py " + " ".join(args.argv_used)).strip()
    servers = "; ".join(
        f"`{n}`: {VARIANTS[n].describe(args.write_delay)}" for n in dict.fromkeys(args.servers)
    )
    return [
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {os.cpu_count()} cores ({_cpu_model()}), {platform.system()} "
        f"{platform.release()}, open-files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
        f"; each server is one process pinned to cpu{args.server_cpu}, the load client (one "
        f"process, uvloop, raw frames) pinned to cpu{args.load_cpu}",
        f"- Software: {_versions(args.python, WS_PACKAGES)}; rtserve at commit {args.git_state}",
        f"- Servers: {servers}. Compression (permessage-deflate) is off on every server for "
        "the throughput and latency figures; keepalive pings are off",
        f"- Valid row: server core >= {VALID_SERVER_MIN:.0f} % busy, load core < "
        f"{VALID_LOAD_MAX:.0f} % busy, neither core more than {SHARED_CORE_GAP:.0f} points busier "
        "than its own process, every message delivered",
        "",
    ]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _rates(text: str) -> list[int]:
    try:
        rates = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError("rates must be integers >= 1")
    return rates


QUICK = {
    "subscribers": 500,
    "messages": 100,
    "burst_seconds": 0.5,
    "rates": [10],
    "sustained_seconds": 1.0,
    "echo_seconds": 1.0,
    "idle_connections": 1000,
    "hold_connections": 2000,
    "hold_seconds": 1.0,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rtserve and peer WebSocket servers, pinned to separate cores.",
    )
    parser.add_argument(
        "--servers",
        type=_csv(list(VARIANTS)),
        default=list(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument("--subscribers", type=int, help="fan-out subscribers (default 5000)")
    parser.add_argument(
        "--messages",
        type=int,
        help="largest burst, in messages (default 1000; fewer for slow "
        "servers, so that a burst lasts about --burst-seconds)",
    )
    parser.add_argument("--burst-seconds", type=float, help="target burst length (default 3)")
    parser.add_argument("--rates", type=_rates, help="sustained msg/s, comma-separated (10,50)")
    parser.add_argument("--sustained-seconds", type=float, help="per rate (default 5)")
    parser.add_argument("--echo-connections", type=int, default=100)
    parser.add_argument("--echo-seconds", type=float, help="measured echo seconds (default 5)")
    parser.add_argument("--idle-connections", type=int, help="memory test (default 10000)")
    parser.add_argument("--hold-connections", type=int, help="hold test (default 18000)")
    parser.add_argument("--hold-seconds", type=float, help="how long to hold (default 5)")
    parser.add_argument(
        "--write-delay",
        type=float,
        default=WRITE_DELAY_S,
        help=f"rtserve-batch's write_delay in seconds (default {WRITE_DELAY_S})",
    )
    parser.add_argument(
        "--phases",
        type=_csv(PHASES),
        default=list(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--admin-interval",
        type=float,
        default=ADMIN_POLL_S,
        help=f"rtserve-stats: seconds between admin polls (default {ADMIN_POLL_S:g})",
    )
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke test")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write results as JSON")
    parser.add_argument(
        "--markdown", action="store_true", help="print a docs-ready section (command, machine)"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for servers and client"
    )
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="wait for idle cores")
    parser.add_argument("--session-timeout", type=float, default=300.0, help="per server run")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    args = parser.parse_args(argv)
    args.argv_used = list(sys.argv[1:] if argv is None else argv)
    defaults = {
        "subscribers": 5000,
        "messages": 1000,
        "burst_seconds": 3.0,
        "rates": [10, 50],
        "sustained_seconds": 5.0,
        "echo_seconds": 5.0,
        "idle_connections": 10_000,
        "hold_connections": 18_000,
        "hold_seconds": 5.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else value)
    if args.server_cpu == args.load_cpu:
        parser.error("--server-cpu and --load-cpu must differ")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("taskset") is None:
        print("error: taskset not found on PATH (util-linux)", file=sys.stderr)
        return 2
    cpus = read_cpu_times()
    if args.server_cpu not in cpus or args.load_cpu not in cpus:
        print(f"error: cpus {sorted(cpus)} available; need two distinct ones", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the servers and the client inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = args.hold_connections + 64
    if hard < need:
        _say(f"warning: open-files limit {hard} < {need}: the hold test cannot fit")
    args.git_state = _git_state()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    _say(
        f"benchmarking {', '.join(args.servers)}: {args.subscribers} subscribers, bursts up to "
        f"{args.messages} messages, rates {args.rates} msg/s, echo over "
        f"{args.echo_connections} connections, {args.idle_connections} idle, "
        f"{args.hold_connections} held"
    )
    started = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for name in args.servers:
            variant = VARIANTS[name]
            rows = results.setdefault(name, [])
            for session in sessions_for(args, variant):
                run_session(args, variant, session)
                for r in session.results:
                    if r.get("phase") in ("burst", "echo"):
                        reasons = validity(r)
                        r["valid"], r["invalid_reasons"] = not reasons, reasons
                    r["server_nofile"] = session.server_nofile
                    r["session"] = session.label
                rows.extend(session.results)
                if session.status != "ok":
                    rows.append(
                        {"phase": "session", "status": session.status, "error": session.detail}
                    )
    except KeyboardInterrupt:
        _say("interrupted; servers stopped")
        return 130
    _say(f"done in {time.monotonic() - started:.0f} s")
    print(render(args, results))
    if args.json:
        payload = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": ["python", "bench/ws.py", *args.argv_used],
            "settings": {
                k: getattr(args, k)
                for k in (
                    "subscribers",
                    "messages",
                    "burst_seconds",
                    "rates",
                    "sustained_seconds",
                    "echo_connections",
                    "echo_seconds",
                    "idle_connections",
                    "hold_connections",
                    "hold_seconds",
                    "server_cpu",
                    "load_cpu",
                    "phases",
                    "admin_interval",
                )
            },
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        _say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
