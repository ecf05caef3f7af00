"""The admin poller of bench/ws.py's `rtserve-stats`: what `rtserve stats` (the live dashboard)
asks a server once a second, for as long as the benchmark runs.

Each tick it GETs `/rt/admin/stats`, `/rt/admin/channels?limit=10` and
`/rt/admin/connections?limit=10&sort=queued` (the top 10 by queued bytes) over the server's
admin socket, with the dashboard's own client (`rtserve.cli.stats_cmd.AdminClient`). On
SIGTERM it prints one JSON line: how many polls were made and failed, how long they took, and
what the server reported (so the report shows that per-connection tracking was on:
connections listed with their ages).

    python -m bench.ws_apps.stats_poll --socket /tmp/x/admin.sock [--interval 1.0]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rtserve.cli.stats_cmd import TOP, AdminClient, StatsError


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", type=Path, required=True, help="the admin socket")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the socket")
    args = parser.parse_args()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    deadline = time.monotonic() + args.wait
    while not args.socket.exists() and not stopping.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    client = AdminClient(socket_path=args.socket)
    took_ms: list[float] = []
    errors: list[str] = []
    most_open = most_listed = ages_known = 0
    next_poll = time.monotonic()
    while not stopping.is_set():
        started = time.perf_counter()
        try:
            stats = client.stats()
            client.channels()
            listed: dict[str, Any] = client.get(f"/connections?limit={TOP}&sort=queued")
        except StatsError as exc:
            errors.append(str(exc))
        else:
            took_ms.append((time.perf_counter() - started) * 1e3)
            most_open = max(most_open, int(stats["open"].get("websocket", 0)))
            most_listed = max(most_listed, int(listed.get("total", 0)))
            conns = listed.get("connections", [])
            ages_known = max(ages_known, sum(1 for c in conns if c.get("age_seconds") is not None))
        next_poll += args.interval
        stopping.wait(max(0.0, next_poll - time.monotonic()))
    p50, top = percentile(took_ms, 50), max(took_ms, default=None)
    record = {
        "phase": "admin_poll",
        "interval_s": args.interval,
        "polls": len(took_ms),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "poll_ms_p50": None if p50 is None else round(p50, 2),
        "poll_ms_max": None if top is None else round(top, 2),
        "most_open_websockets": most_open,
        "most_connections_listed": most_listed,
        "most_ages_known": ages_known,
    }
    print(json.dumps(record), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
