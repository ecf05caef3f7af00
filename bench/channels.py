"""Benchmark rtserve's channel layer: one channel, N subscribers, against python-socketio.

Each server runs as one process pinned to the server core (``taskset -c 0``); the load is our
own raw asyncio client (``bench/channel_apps/load.py``: uvloop, hand-parsed frames, the real
protocols), one process pinned to the load core (``taskset -c 1``). The harness is
bench/ws.py's (server start, CPU sampling of both cores and both processes, validity), and the
bare ``broadcast()`` rows are bench/ws.py's own fan-out run, in the same run, so the report can
put a price on the channel layer.

Servers (one after the other):

- ``rtserve``: ``app.channel("bench:*", publish="clients")``, subscribers on ``/rt/ws``;
- ``rtserve-batch``: the same with ``write_delay`` (``--write-delay``, 0.05 s);
- ``broadcast`` / ``broadcast-batch``: bench/ws.py's rtserve fan-out (``broadcast()`` to a set
  of handlers), without and with the same ``write_delay``;
- ``socketio``: python-socketio's AsyncServer on aiohttp (uvloop), clients in a room
  (``socketio-uvicorn``: on uvicorn, ASGI; not run by default).

Publishers: ``server`` (the server publishes in a loop: ``await app.publish(...)``, ``await
sio.emit(..., room=...)``), ``http`` (rtserve's ``POST /rt/publish``), ``client`` (one client
publishing over the protocol; for Socket.IO an event the server emits to the room). For each:
a burst (deliveries/s over all subscribers, and per message the time until the LAST subscriber
has it), then steady offered rates (the same latency, p50/p99). A throughput figure is valid
when the server core is >= 90 % busy, the load core < 90 %, nothing else shared the cores and
every message arrived. The server's CPU time per delivery is reported for every row: it
compares servers even when the load core, not the server, set the pace.

Usage (from anywhere; paths are resolved against the repo root):
    python bench/channels.py                     # 5,000 subscribers, about 3 minutes
    python bench/channels.py --quick             # 500 subscribers: a smoke test, under 1 minute
    python bench/channels.py --subscribers 2000 --servers rtserve,socketio --markdown

Standard library only (the servers and the client need their packages). Traffic goes to
127.0.0.1 only; every phase has a timeout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/channels.py`, sys.path[0] is bench/, where http.py would shadow the stdlib.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "bench":
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.channel_apps.rtserve_app import API_KEY  # noqa: E402  (after the sys.path fix)
from bench.http import (  # noqa: E402
    _cpu_model,
    _csv,
    _git_state,
    _raise_keyboard_interrupt,
    _say,
    _versions,
    read_cpu_times,
)
from bench.ws import (  # noqa: E402
    SAMPLE_EVERY_S,
    SHARED_CORE_GAP,
    VALID_LOAD_MAX,
    VALID_SERVER_MIN,
    Session,
    Variant,
    _fmt,
    _valid_cell,
    run_session,
    validity,
)
from bench.ws import VARIANTS as WS_VARIANTS  # noqa: E402

PACKAGES = ("rtserve", "python-socketio", "python-engineio", "aiohttp", "uvicorn", "uvloop")
LOAD_MODULE = "bench.channel_apps.load"
WRITE_DELAY_S = 0.05
BATCH_BURST_SECONDS = 3600.0  # so that the burst size is the cap, --batch-messages
GOAL_CHANNEL_COST = 0.20  # the channel layer costs at most 20 % over bare broadcast()
GOAL_VS_SOCKETIO = 25.0
SOURCE_NAMES = {
    "server": "server loop",
    "http": "publish API",
    "client": "a client",
    "broadcast": "`broadcast()` loop",
}
SOURCE_HELP = {
    "server": "the server publishes in a loop: rtserve `await app.publish(channel, data)`, "
    "Socket.IO `await sio.emit('pub', data, room=...)`",
    "http": "rtserve's `POST /rt/publish` (Bearer key), 4 keep-alive connections, one request "
    "in flight on each",
    "client": "one more connection of the protocol publishes: rtserve's `publish` command; "
    "for Socket.IO a `publish` event that the server emits to the room",
    "broadcast": "bench/ws.py's fan-out: `broadcast(handlers, text)` in a loop (no channel layer)",
}


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppVariant(Variant):
    """A server of bench/channel_apps (bench/ws.py's Variant runs bench/ws_apps modules)."""

    def argv(self, python: str, port: int, write_delay: float) -> list[str]:
        extra = [x.format(write_delay=write_delay) for x in self.extra]
        return [python, "-m", f"bench.channel_apps.{self.module}", "--port", str(port), *extra]


@dataclass(frozen=True)
class Server:
    name: str
    variant: Variant
    protocol: str | None  # "rt" / "sio": bench/channel_apps/load.py; None: bench/ws.py's run
    sources: tuple[str, ...]
    batched: bool = False
    kind: str = "channels"  # "channels", "broadcast" or "socketio"


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server(
            "rtserve",
            AppVariant(
                "rtserve",
                'rtserve\'s channel layer: `app.channel("bench:*", publish="clients")`, '
                "subscribers on `/rt/ws`, uvloop, no write delay",
                "rtserve_app",
            ),
            "rt",
            ("server", "http", "client"),
        ),
        Server(
            "rtserve-batch",
            AppVariant(
                "rtserve-batch",
                "the same with `write_delay={write_delay:g}` (a connection's frames are held "
                "{ms:g} ms and written together)",
                "rtserve_app",
                ("--write-delay", "{write_delay}"),
            ),
            "rt",
            ("server", "client"),
            batched=True,
        ),
        Server(
            "broadcast",
            WS_VARIANTS["rtserve"],
            None,
            ("broadcast",),
            kind="broadcast",
        ),
        Server(
            "broadcast-batch",
            WS_VARIANTS["rtserve-batch"],
            None,
            ("broadcast",),
            batched=True,
            kind="broadcast",
        ),
        Server(
            "socketio",
            AppVariant(
                "socketio",
                "python-socketio `AsyncServer` attached to aiohttp (`web.run_app` on uvloop), "
                "WebSocket transport, clients `enter_room` on a `join` event",
                "socketio_app",
                ("--server", "aiohttp"),
            ),
            "sio",
            ("server", "client"),
            kind="socketio",
        ),
        Server(
            "socketio-uvicorn",
            AppVariant(
                "socketio-uvicorn",
                "python-socketio `ASGIApp` on uvicorn (uvloop, httptools, websockets-sansio)",
                "socketio_app",
                ("--server", "uvicorn"),
            ),
            "sio",
            ("server", "client"),
            kind="socketio",
        ),
    )
}
DEFAULT_SERVERS = ["rtserve", "rtserve-batch", "broadcast", "broadcast-batch", "socketio"]


def describe(server: Server, write_delay: float) -> str:
    if server.kind == "broadcast":
        return f"bench/ws.py's `{server.variant.name}`: " + server.variant.describe(write_delay)
    return server.variant.describe(write_delay)


def session_for(args: argparse.Namespace, server: Server) -> Session:
    rates = args.batch_rates if server.batched else args.rates
    # A probe under write_delay is latency-bound and misjudges the rate: the server loops of
    # batched servers publish a burst of exactly --batch-messages (for bench/ws.py's client, a
    # target length so long that the cap applies).
    if server.protocol is None:  # bench/ws.py's fan-out, its own load client
        spec: dict[str, Any] = {
            "phase": "fanout",
            "subscribers": args.subscribers,
            "messages": args.batch_messages if server.batched else args.messages,
            "burst_seconds": BATCH_BURST_SECONDS if server.batched else args.burst_seconds,
            "rates": rates,
            "sustained_seconds": args.sustained_seconds,
        }
        return Session(server.name, [spec])
    spec = {
        "phase": "channel",
        "protocol": server.protocol,
        "api_key": API_KEY,
        "subscribers": args.subscribers,
        "sources": list(server.sources),
        "messages": args.messages,
        "burst_seconds": args.burst_seconds,
        "burst_messages": args.batch_messages if server.batched else None,
        "rates": rates,
        "sustained_seconds": args.sustained_seconds,
        "min_sustained_messages": args.min_sustained_messages,
        "data_size": args.data_size,
    }
    return Session(server.name, [spec], load_module=LOAD_MODULE)


class SoftirqSampler(threading.Thread):
    """Each core's softirq time (/proc/stat) through the whole run.

    Softirq time is the kernel's packet work, charged to no process: on loopback much of it
    is this benchmark's own TCP traffic, done on whichever core handles the packet (a server
    socket's queued bytes go out from the ACK processing on the load core, for instance).
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, dict[int, tuple[int, int]]]] = []
        self.stopping = threading.Event()

    @staticmethod
    def read() -> dict[int, tuple[int, int]]:
        """Per-cpu (total, softirq) jiffies."""
        out: dict[int, tuple[int, int]] = {}
        with open("/proc/stat") as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if name.startswith("cpu") and name[3:].isdigit():
                    fields = [int(x) for x in rest.split()]
                    out[int(name[3:])] = (sum(fields[:8]), fields[6])
        return out

    def run(self) -> None:
        while not self.stopping.is_set():
            self.samples.append((time.monotonic(), self.read()))
            self.stopping.wait(SAMPLE_EVERY_S)

    def pct(self, t0: float, t1: float, cpu: int) -> float | None:
        """Softirq % of `cpu` over the samples around [t0, t1]."""
        samples = list(self.samples)
        before = [s for s in samples if s[0] <= t0]
        after = [s for s in samples if s[0] >= t1]
        if not before or not after:
            return None
        a, b = before[-1][1][cpu], after[0][1][cpu]
        total = b[0] - a[0]
        return 100.0 * (b[1] - a[1]) / total if total > 0 else None


def annotate(
    args: argparse.Namespace, server: Server, r: dict[str, Any], softirq: SoftirqSampler
) -> None:
    """Validity and the server's CPU time per delivery of one result row.

    bench/ws.py's validity rule, except that a core's softirq time counts as the benchmark's
    own (not "other load") when comparing the core's busy share with its process's.
    """
    if server.protocol is None and r.get("phase") in ("burst", "sustained"):
        r["source"] = "broadcast"
    window = r.get("window")
    if window:
        r["server_softirq_pct"] = softirq.pct(window[0], window[1], args.server_cpu)
        r["load_softirq_pct"] = softirq.pct(window[0], window[1], args.load_cpu)
    if r.get("phase") == "burst" and "error" not in r:
        own = dict(r)
        for proc, soft in (
            ("server_proc_pct", "server_softirq_pct"),
            ("client_proc_pct", "load_softirq_pct"),
        ):
            if own.get(proc) is not None and own.get(soft):
                own[proc] += own[soft]
        reasons = validity(own)
        r["valid"], r["invalid_reasons"] = not reasons, reasons
    proc, delivered = r.get("server_proc_pct"), r.get("delivered")
    if window and proc is not None and delivered:
        r["server_us_per_delivery"] = proc / 100 * (window[1] - window[0]) / delivered * 1e6


def disturbed(rows: list[dict[str, Any]]) -> int:
    """Bursts during which another program shared a core (worth measuring again)."""
    return sum(
        any("other load" in reason for reason in r.get("invalid_reasons", []))
        for r in rows
        if r.get("phase") == "burst"
    )


def run_server(
    args: argparse.Namespace, server: Server, softirq: SoftirqSampler
) -> list[dict[str, Any]]:
    """One session of the server, measured again (up to --retries) while another program
    shared a core during a burst; the least disturbed attempt is kept."""
    best: list[dict[str, Any]] = []
    for attempt in range(args.retries + 1):
        session = session_for(args, server)
        run_session(args, server.variant, session)
        rows = session.results
        for r in rows:
            annotate(args, server, r, softirq)
            r["server_nofile"] = session.server_nofile
            r["attempt"] = attempt + 1
        if session.status != "ok":
            rows.append({"phase": "session", "status": session.status, "error": session.detail})
        if not best or disturbed(rows) < disturbed(best):
            best = rows
        if not disturbed(best) or attempt == args.retries:
            break
        _say(f"  {server.name}: another program shared a core; measuring again")
    return best


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

Results = dict[str, list[dict[str, Any]]]


def _row(results: Results, name: str, phase: str, source: str) -> dict[str, Any]:
    for r in results.get(name, []):
        if r.get("phase") == phase and r.get("source") == source and "error" not in r:
            return r
    return {}


def _peer_source(source: str) -> str:
    """The Socket.IO publisher an rtserve row is compared with."""
    return "client" if source == "client" else "server"


def _client_bound_only(r: dict[str, Any]) -> bool:
    """Invalid only because the load core saturated: the figure is a lower bound."""
    reasons = r.get("invalid_reasons") or []
    return bool(reasons) and all(x.startswith("load core") for x in reasons)


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str = "deliveries_per_s") -> str:
    x, y = a.get(key), b.get(key)
    if not x or not y:
        return "-"
    text = f"{x / y:.2f}x"
    if a.get("valid") and b.get("valid"):
        return text
    if b.get("valid") and _client_bound_only(a):
        return f">= {text} (lower bound)"
    return f"{text} (invalid row)"


def _kept_up(r: dict[str, Any]) -> str:
    return "yes" if r["complete"] else f"**no** ({r['delivered']:,}/{r['expected']:,})"


def render(args: argparse.Namespace, results: Results) -> str:
    names = [n for n in args.servers if n in results]
    sio = next((n for n in names if SERVERS[n].kind == "socketio"), None)
    out: list[str] = []
    if args.markdown:
        out += header_lines(args)

    out += [
        f"### Channel fan-out burst: {args.subscribers:,} subscribers of one channel",
        "",
        "Deliveries/s over all subscribers, from the first message's send timestamp to the "
        "last delivery; latency per message, from its send timestamp to the LAST subscriber "
        "receiving it (in a burst messages queue behind each other, so this is mostly "
        "queueing). Server CPU per delivery: the server process's CPU time over the run / "
        "deliveries; it compares servers also when the load core saturated first. The server "
        "loop yields to the event loop once per message (one write per subscriber per "
        "message without `write_delay`); a client's back-to-back publishes arrive in a few "
        "reads, and rtserve handles each read's commands in one loop iteration, so its "
        "subscribers get many per write.",
        "",
        "| server | publisher | messages | push bytes | deliveries/s | p50 (ms) | p99 (ms) "
        "| server core % | server proc % | load core % | server CPU us/delivery | valid "
        f"| vs {sio or 'socketio'} |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for n in names:
        for source in SERVERS[n].sources:
            r = _row(results, n, "burst", source)
            label = SOURCE_NAMES[source]
            if not r:
                out.append(f"| {n} | {label} | {_status(results, n)} | | | | | | | | | no | |")
                continue
            peer = _row(results, sio, "burst", _peer_source(source)) if sio else {}
            vs = "1.00x" if n == sio else _ratio(r, peer)
            push = r.get("push_bytes") or (100 if source == "broadcast" else None)
            out.append(
                f"| {n} | {label} | {r['messages']:,} | {_fmt(push, 0)} "
                f"| {_fmt(r.get('deliveries_per_s'), 0, True)} "
                f"| {_fmt(r.get('latency_p50_ms'), 1)} | {_fmt(r.get('latency_p99_ms'), 1)} "
                f"| {_fmt(r.get('server_core_pct'), 0)} | {_fmt(r.get('server_proc_pct'), 0)} "
                f"| {_fmt(r.get('load_core_pct'), 0)} "
                f"| {_fmt(r.get('server_us_per_delivery'), 2)} | {_valid_cell(r)} | {vs} |"
            )
    out.append("")

    out += [
        f"### Channel fan-out at steady offered rates: {args.subscribers:,} subscribers",
        "",
        'Latency: per message, send timestamp to the last subscriber receiving it. "server '
        "send\": the server's own time from the timestamp until the loop iteration that wrote "
        "the message to every socket was over (server-loop publishers only; delayed writes "
        "not included). A rate above 90 % of the burst's deliveries/s is not offered.",
        "",
        "| server | publisher | msg/s | messages | offered deliveries/s | achieved deliveries/s "
        "| kept up | p50 (ms) | p99 (ms) | max (ms) | server send p50 / max (ms) "
        "| server core % | load core % | server CPU us/delivery |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for n in names:
        for r in results.get(n, []):
            phase = r.get("phase")
            if phase not in ("sustained", "skipped") or "error" in r:
                continue
            label = SOURCE_NAMES[r["source"]]
            offered = r["rate_hz"] * r["subscribers"]
            if phase == "skipped":
                out.append(
                    f"| {n} | {label} | {r['rate_hz']} | | {offered:,} | not offered: "
                    f"{r['skipped']} | | | | | | | | |"
                )
                continue
            out.append(
                f"| {n} | {label} | {r['rate_hz']} | {r['messages']:,} | {offered:,} "
                f"| {_fmt(r.get('deliveries_per_s'), 0, True)} | {_kept_up(r)} "
                f"| {_fmt(r.get('latency_p50_ms'), 2)} | {_fmt(r.get('latency_p99_ms'), 2)} "
                f"| {_fmt(r.get('latency_max_ms'), 2)} "
                f"| {_fmt(r.get('server_send_p50_ms'), 1)} / "
                f"{_fmt(r.get('server_send_max_ms'), 1)} "
                f"| {_fmt(r.get('server_core_pct'), 0)} | {_fmt(r.get('load_core_pct'), 0)} "
                f"| {_fmt(r.get('server_us_per_delivery'), 2)} |"
            )
    out.append("")
    out += render_goals(args, results, sio)
    errors = [
        f"- {n}: {r['phase']}: {r.get('error') or r.get('errors')}"
        for n in names
        for r in results.get(n, [])
        if "error" in r or r.get("phase") in ("client_errors", "session")
    ]
    if errors:
        out += ["### Errors", "", *errors, ""]
    return "\n".join(out)


def _status(results: Results, name: str) -> str:
    for r in results.get(name, []):
        if r.get("phase") == "session" or "error" in r:
            return f"error: {r.get('error')}"
    return "no result"


def _sustained(results: Results, name: str, source: str, rate: int) -> dict[str, Any]:
    for r in results.get(name, []):
        if (
            r.get("phase") == "sustained"
            and r.get("source") == source
            and r.get("rate_hz") == rate
            and "error" not in r
        ):
            return r
    return {}


def render_goals(args: argparse.Namespace, results: Results, sio: str | None) -> list[str]:
    out = ["### The channel layer's cost and the ratio to python-socketio", ""]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**NOT met**"

    pairs = (("rtserve", "broadcast"), ("rtserve-batch", "broadcast-batch"))
    for channel, bare in pairs:
        c, b = _row(results, channel, "burst", "server"), _row(results, bare, "burst", "broadcast")
        if not c or not b:
            continue
        what = f"`{channel}` (server loop) vs `{bare}`"
        rc, rb = c.get("deliveries_per_s"), b.get("deliveries_per_s")
        if rc and rb:
            cost = rb / rc - 1
            both = c.get("valid") and b.get("valid")
            note = "" if both else " (a row involved is invalid: the load core set the pace)"
            line = (
                f"- {what}, burst deliveries/s: {rc:,.0f} vs {rb:,.0f}, the channel layer "
                f"costs {cost:+.0%}{note}"
            )
            if both:
                line += f"; goal <= +{GOAL_CHANNEL_COST:.0%}: {verdict(cost <= GOAL_CHANNEL_COST)}"
            out.append(line)
        uc, ub = c.get("server_us_per_delivery"), b.get("server_us_per_delivery")
        if uc and ub:
            cost = uc / ub - 1
            out.append(
                f"- {what}, server CPU per delivery in the burst: {uc:.2f} vs {ub:.2f} us, "
                f"{cost:+.0%}; goal <= +{GOAL_CHANNEL_COST:.0%}: "
                f"{verdict(cost <= GOAL_CHANNEL_COST)}"
            )
        rates = args.batch_rates if SERVERS[channel].batched else args.rates
        for rate in rates:
            sc = _sustained(results, channel, "server", rate)
            sb = _sustained(results, bare, "broadcast", rate)
            pc, pb = sc.get("server_proc_pct"), sb.get("server_proc_pct")
            if pc and pb and sc.get("complete") and sb.get("complete"):
                out.append(
                    f"- {what} at {rate} msg/s ({rate * args.subscribers:,} deliveries/s): "
                    f"server process {pc:.0f} % vs {pb:.0f} % of its core ({pc / pb - 1:+.0%}), "
                    f"p99 to all {_fmt(sc.get('latency_p99_ms'), 1)} vs "
                    f"{_fmt(sb.get('latency_p99_ms'), 1)} ms"
                )
    if sio:
        for name in ("rtserve", "rtserve-batch"):
            for source in SERVERS[name].sources:
                r = _row(results, name, "burst", source)
                peer = _row(results, sio, "burst", _peer_source(source))
                x, y = r.get("deliveries_per_s"), peer.get("deliveries_per_s")
                if not x or not y:
                    continue
                ratio = x / y
                ok = ratio >= GOAL_VS_SOCKETIO
                if r.get("valid") and peer.get("valid"):
                    note = ""
                elif peer.get("valid") and _client_bound_only(r):
                    note = " (rtserve's row is client-bound: a lower bound)"
                else:
                    note = " (a row involved is invalid)"
                cpu = ""
                ux, uy = r.get("server_us_per_delivery"), peer.get("server_us_per_delivery")
                if ux and uy:
                    cpu = f"; server CPU per delivery {ux:.2f} vs {uy:.1f} us = {uy / ux:.1f}x"
                out.append(
                    f"- `{name}` ({SOURCE_NAMES[source]}) vs `{sio}` "
                    f"({SOURCE_NAMES[_peer_source(source)]}), burst deliveries/s: {x:,.0f} vs "
                    f"{y:,.0f} = {ratio:.1f}x; goal >= {GOAL_VS_SOCKETIO:g}x: {verdict(ok)}{note}"
                    f"{cpu}"
                )
        for rate in args.rates:
            r, peer = (
                _sustained(results, "rtserve", "server", rate),
                _sustained(results, sio, "server", rate),
            )
            if r.get("latency_p99_ms") and peer.get("latency_p99_ms"):
                out.append(
                    f"- one message to all {args.subscribers:,} at {rate} msg/s (server loop): "
                    f"p50 / p99 {r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} ms "
                    f"(rtserve) vs {peer['latency_p50_ms']:.1f} / {peer['latency_p99_ms']:.1f} "
                    f"ms ({sio})"
                )
    return [*out, ""]


def header_lines(args: argparse.Namespace) -> list[str]:
    command = ("python bench/channels.py " + " ".join(args.argv_used)).strip()
    servers = "; ".join(f"`{n}`: {describe(SERVERS[n], args.write_delay)}" for n in args.servers)
    sources = "; ".join(f"{SOURCE_NAMES[k]}: {v}" for k, v in SOURCE_HELP.items())
    return [
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {os.cpu_count()} cores ({_cpu_model()}), {platform.system()} "
        f"{platform.release()}, open-files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
        f"; each server is one process pinned to cpu{args.server_cpu}, the load client (one "
        f"process, uvloop, raw frames) pinned to cpu{args.load_cpu}",
        f"- Software: {_versions(args.python, PACKAGES)}; rtserve at commit {args.git_state}",
        f"- Servers: {servers}. No compression, keepalive pings off (Socket.IO: interval "
        "10 minutes)",
        f"- Publishers: {sources}. The data of each message is a {args.data_size}-byte string "
        "(sequence number, a `time.time_ns()` send stamp, padding); the stamp is the "
        "server's for the server loop, the load process's otherwise",
        f"- Valid row: server core >= {VALID_SERVER_MIN:.0f} % busy, load core < "
        f"{VALID_LOAD_MAX:.0f} % busy, neither core more than {SHARED_CORE_GAP:.0f} points busier "
        "than its own process plus the core's softirq time (the kernel's loopback TCP work, "
        "charged to no process: e.g. a server socket's queued bytes sent from the ACK "
        "processing on the load core), every message delivered",
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


DEFAULTS: dict[str, Any] = {
    "subscribers": 5000,
    "messages": 1000,
    "batch_messages": 1000,
    "burst_seconds": 3.0,
    "rates": [1, 10, 50],
    "batch_rates": [10],
    "sustained_seconds": 5.0,
    "min_sustained_messages": 10,
}
QUICK: dict[str, Any] = {
    "subscribers": 500,
    "messages": 100,
    "batch_messages": 100,
    "burst_seconds": 0.5,
    "rates": [10],
    "batch_rates": [10],
    "sustained_seconds": 1.0,
    "min_sustained_messages": 5,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rtserve's channel layer against python-socketio and bare "
        "broadcast(), pinned to separate cores.",
    )
    parser.add_argument(
        "--servers",
        type=_csv(list(SERVERS)),
        default=DEFAULT_SERVERS,
        help=f"comma-separated subset of {','.join(SERVERS)} (default {','.join(DEFAULT_SERVERS)})",
    )
    parser.add_argument("--subscribers", type=int, help="subscribers of the channel (5000)")
    parser.add_argument(
        "--messages", type=int, help="largest burst (1000; fewer so it lasts --burst-seconds)"
    )
    parser.add_argument("--burst-seconds", type=float, help="target burst length (3)")
    parser.add_argument(
        "--batch-messages", type=int, help="the burst of the batched servers, exactly (1000)"
    )
    parser.add_argument("--rates", type=_rates, help="offered msg/s, comma-separated (1,10,50)")
    parser.add_argument("--batch-rates", type=_rates, help="the same for batched servers (10)")
    parser.add_argument("--sustained-seconds", type=float, help="per rate (5)")
    parser.add_argument(
        "--min-sustained-messages", type=int, help="at least this many messages per rate (10)"
    )
    parser.add_argument("--data-size", type=int, default=40, help="bytes of each message's data")
    parser.add_argument(
        "--write-delay",
        type=float,
        default=WRITE_DELAY_S,
        help=f"write_delay of the batched rtserve rows, seconds (default {WRITE_DELAY_S})",
    )
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke test")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write results as JSON")
    parser.add_argument(
        "--markdown", action="store_true", help="print a docs-ready section (command, machine)"
    )
    parser.add_argument("--python", default=sys.executable, help="runs servers and the client")
    parser.add_argument("--retries", type=int, default=1, help="re-run a disturbed server")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="wait for idle cores")
    parser.add_argument("--session-timeout", type=float, default=300.0, help="per server run")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    args = parser.parse_args(argv)
    args.argv_used = list(sys.argv[1:] if argv is None else argv)
    for key, value in DEFAULTS.items():
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
    if hard < args.subscribers + 64:
        _say(f"warning: open-files limit {hard} < {args.subscribers + 64} subscribers")
    args.git_state = _git_state()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    _say(
        f"benchmarking {', '.join(args.servers)}: {args.subscribers} subscribers, bursts up to "
        f"{args.messages} messages, rates {args.rates} msg/s (batched: {args.batch_rates})"
    )
    started = time.monotonic()
    results: Results = {}
    softirq = SoftirqSampler()
    softirq.start()
    try:
        for name in args.servers:
            results[name] = run_server(args, SERVERS[name], softirq)
    except KeyboardInterrupt:
        _say("interrupted; servers stopped")
        return 130
    finally:
        softirq.stopping.set()
    _say(f"done in {time.monotonic() - started:.0f} s")
    print(render(args, results))
    if args.json:
        settings = {k: getattr(args, k) for k in (*DEFAULTS, "data_size", "write_delay")}
        payload = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": ["python", "bench/channels.py", *args.argv_used],
            "settings": settings,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        _say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
