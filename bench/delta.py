"""Delta publications against whole ones: a dashboard stream to N subscribers of one channel.

The stream (bench/delta_apps/dashboard.py): a ~5.6 KB JSON state of 100 metric values, 2 of
which (2 %) change per tick, plus the tick number. The server (bench/delta_apps/rtserve_app.py,
pinned to the server core) has ``app.channel("dash:*", delta="fossil", history=10)`` and
publishes the ticks from server code; the load (bench/delta_apps/load.py, pinned to the load
core) is N raw WebSocket subscribers in one process that count frames and bytes, and decode and
check every push on a few of them. Each round runs both modes on the same server, one after the
other, in alternating order:

- ``full``: the subscribers subscribe without ``delta``: every push is the whole state;
- ``delta``: they subscribe with ``"delta": "fossil"``: the first push is the whole state as
  text, every next one a fossil delta shared by all of them.

Per mode, medians over the rounds:

- bytes on the wire per delivery: WebSocket frame bytes the load received (header and
  payload; TCP/IP headers not counted) over the pushes it received;
- server CPU per delivery: user + system CPU time of the server process (/proc/PID/stat) from
  just before the first publication until the last push arrived, over the deliveries; and its
  inverse, deliveries per server CPU-second. Contention on a shared machine stretches wall time,
  not the CPU time a process is charged, so this holds on a busy machine;
- deliveries/s: deliveries over the wall time from the first publication to the last push
  arrived. Ticks are paced (``--interval``), so this is bounded by the pace; it is wall clock,
  so on a busy machine it says little.

Plus the encoder alone: the CPU µs of ``create_delta`` per tick on these states (in this
process, ``time.process_time``).

Goals (issue 24): bytes per delivery at least 10x fewer with deltas; server CPU per delivery
within 15 % of whole publications.

Usage (from anywhere; paths are resolved against the repo root):
    python bench/delta.py                                # 5,000 subscribers, 3 rounds
    python bench/delta.py --subscribers 500 --rounds 2   # a smoke test, under a minute
    python bench/delta.py --markdown                     # the table for docs/benchmarks.md

Standard library only besides rtserve (and uvloop when installed). Traffic goes to 127.0.0.1
only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/delta.py`, sys.path[0] is bench/, where http.py would shadow the stdlib.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "bench":
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.delta_apps.dashboard import CHANNEL, states  # noqa: E402
from bench.procs import (  # noqa: E402
    LOAD_CORE,
    cpu_ms,
    free_port,
    http_request,
    start_pinned,
    stop_server,
    wait_for_count,
)
from rtserve.protocol.fossil import create_delta  # noqa: E402

MODES = ("full", "delta")


def run_mode(
    args: argparse.Namespace, server: subprocess.Popen[bytes], port: int, mode: str
) -> dict[str, Any]:
    """One mode once: N subscribers connect, `ticks` are published, what arrived is counted."""
    command = [
        "taskset", "-c", str(LOAD_CORE), sys.executable, "-m", "bench.delta_apps.load",
        "--port", str(port), "--subscribers", str(args.subscribers), "--ticks", str(args.ticks),
        "--verify", str(args.verify), "--timeout", str(args.timeout),
    ]  # fmt: skip
    if mode == "delta":
        command.append("--delta")
    load = subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert load.stdout is not None and load.stdin is not None
        if load.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{mode}: the load did not get ready")
        asyncio.run(wait_for_count(port, "/count", args.subscribers, "subscribers", args.timeout))
        position = json.loads(
            asyncio.run(http_request(port, "GET", f"/rt/history?channel={CHANNEL}&limit=0"))
        )
        cpu_before = cpu_ms(server.pid)
        load.stdin.write(f"go {position['offset']}\n")
        load.stdin.flush()
        if load.stdout.readline().strip() != "counting":
            raise RuntimeError(f"{mode}: the load did not start counting")
        query = f"/run?ticks={args.ticks}&interval={args.interval}"
        asyncio.run(http_request(port, "POST", query, timeout=args.timeout))
        result: dict[str, Any] = json.loads(load.stdout.readline())
        cpu = cpu_ms(server.pid) - cpu_before
    finally:
        load.stdin.close() if load.stdin else None
        try:
            load.wait(30)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()
    deliveries = result["frames"]
    expected = args.subscribers * args.ticks
    return {
        "mode": mode,
        "deliveries": deliveries,
        "complete": deliveries == expected,
        "bytes_per_delivery": result["bytes"] / max(1, deliveries),
        # in step: without each subscriber's first push (for deltas, the whole state)
        "bytes_in_step": (result["bytes"] - result["first_bytes"])
        / max(1, deliveries - args.subscribers),
        "cpu_us_per_delivery": cpu * 1000 / max(1, deliveries),
        "deliveries_per_cpu_s": deliveries / (cpu / 1000) if cpu else float("inf"),
        "deliveries_per_s": deliveries / result["seconds"],
        "verified": result["verified"],
        "errors": result["errors"],
    }


def encoder_us(ticks: int) -> float:
    """CPU µs of create_delta per tick of the dashboard stream (median of 3 passes)."""
    texts = [json.dumps(s, separators=(",", ":")).encode() for s in states(ticks)]
    passes = []
    for _ in range(3):
        started = time.process_time()
        for before, after in itertools.pairwise(texts):
            create_delta(before, after)
        passes.append((time.process_time() - started) * 1e6 / ticks)
    return statistics.median(passes)


def summary(rows: list[dict[str, Any]], mode: str, key: str) -> float:
    return statistics.median(r[key] for r in rows if r["mode"] == mode)


def render(args: argparse.Namespace, rows: list[dict[str, Any]], encoder: float) -> str:
    state_size = len(json.dumps(states(1)[1], separators=(",", ":")))
    lines = [
        f"bench/delta.py: {args.subscribers} subscribers, {args.ticks} ticks every "
        f"{args.interval} s, {args.rounds} rounds; state {state_size} bytes, 2 of 100 values "
        f"changing per tick",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        "server and load pinned to one core each",
        "",
        "| mode | bytes/delivery | bytes/delivery in step | server CPU µs/delivery "
        "| deliveries per server CPU-s | deliveries/s (wall, busy machine) | complete rounds "
        "| pushes verified |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        lines.append(
            f"| {mode} | {summary(rows, mode, 'bytes_per_delivery'):,.0f} "
            f"| {summary(rows, mode, 'bytes_in_step'):,.0f} "
            f"| {summary(rows, mode, 'cpu_us_per_delivery'):.2f} "
            f"| {summary(rows, mode, 'deliveries_per_cpu_s'):,.0f} "
            f"| {summary(rows, mode, 'deliveries_per_s'):,.0f} "
            f"| {sum(r['complete'] for r in mine)}/{len(mine)} "
            f"| {sum(r['verified'] for r in mine)} |"
        )
    full_bytes = summary(rows, "full", "bytes_per_delivery")
    delta_bytes = summary(rows, "delta", "bytes_per_delivery")
    step_ratio = summary(rows, "full", "bytes_in_step") / summary(rows, "delta", "bytes_in_step")
    full_cpu = summary(rows, "full", "cpu_us_per_delivery")
    delta_cpu = summary(rows, "delta", "cpu_us_per_delivery")
    bytes_ratio = full_bytes / delta_bytes
    cpu_ratio = delta_cpu / full_cpu
    lines += [
        "",
        f"- bytes per delivery: {bytes_ratio:.1f}x fewer with deltas over the run, each "
        f"subscriber's first (whole) push included; {step_ratio:.1f}x once in step, as on a "
        f"stream that runs for long (goal >= 10x: {'met' if step_ratio >= 10 else 'NOT met'})",
        f"- server CPU per delivery: delta / full = {cpu_ratio:.2f} (goal <= 1.15: "
        f"{'met' if cpu_ratio <= 1.15 else 'NOT met'})",
        f"- create_delta: {encoder:.0f} µs of CPU per tick (once per publication, shared by "
        "every subscriber in step)",
        "- per round (server CPU µs/delivery, full then delta): "
        + ", ".join(f"{r['mode']} {r['cpu_us_per_delivery']:.2f}" for r in rows),
    ]
    errors = [e for r in rows for e in r["errors"]]
    if errors:
        lines.append(f"- verification errors: {errors[:3]}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Delta publications against whole ones: bytes and server CPU per delivery."
    )
    parser.add_argument("--subscribers", type=int, default=5000, help="subscribers (5000)")
    parser.add_argument("--ticks", type=int, default=30, help="publications per mode (30)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between ticks")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both modes (3)")
    parser.add_argument("--verify", type=int, default=10, help="subscribers that decode all")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a phase may take")
    parser.add_argument("--markdown", action="store_true", help="print only the report")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    port = free_port()
    server_command = [
        sys.executable, "-m", "bench.delta_apps.rtserve_app", "--port", str(port),
        "--ticks", str(args.ticks),
    ]  # fmt: skip
    server = start_pinned(server_command, port, REPO_ROOT, "rtserve")
    rows: list[dict[str, Any]] = []
    try:
        for round_ in range(args.rounds):
            order = MODES if round_ % 2 == 0 else MODES[::-1]
            for mode in order:
                row = run_mode(args, server, port, mode)
                rows.append(row)
                if not args.markdown:
                    print(json.dumps({"round": round_ + 1, **row}), flush=True)
    finally:
        stop_server(server)
    print(render(args, rows, encoder_us(args.ticks)))


if __name__ == "__main__":
    main()
