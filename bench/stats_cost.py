"""What one `rtserve stats` dashboard poll costs the server, with N WebSockets open.

Starts bench/ws_apps/rtserve_ws.py with its admin socket, pinned to core 0, opens N
WebSockets to /sub, then makes POLLS requests of each kind the dashboard makes (stats,
channels, the top 10 connections by queued bytes) and reads the server's CPU time from
/proc/PID/stat around them (its idle CPU subtracted). Traffic goes to 127.0.0.1 only.

    python bench/stats_cost.py [N]      # N = 5000 by default
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # not bench/, whose http.py would shadow the stdlib

from rtserve.cli.stats_cmd import AdminClient  # noqa: E402

POLLS = 50
HANDSHAKE = (
    b"GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(pid: int, port: int, admin: Path, n: int) -> None:
    deadline = time.monotonic() + 30
    while not admin.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HANDSHAKE)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return reader, writer

    conns = []
    for _ in range(n // 500):
        conns += await asyncio.gather(*(one() for _ in range(500)))
    await asyncio.sleep(1)
    client = AdminClient(socket_path=admin)
    before = cpu_seconds(pid)
    await asyncio.sleep(3)
    idle = (cpu_seconds(pid) - before) / 3
    kinds: list[tuple[str, Callable[[], Any]]] = [
        ("stats", client.stats),
        ("channels", client.channels),
        ("top 10 connections", lambda: client.connections(None, "queued")),
    ]
    total = 0.0
    for name, call in kinds:
        start, t0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(POLLS):
            call()
        spent = cpu_seconds(pid) - start - idle * (time.perf_counter() - t0)
        total += spent / POLLS
        print(f"{name}: {spent / POLLS * 1000:.2f} ms server CPU per request")
    print(
        f"{len(conns)} WebSockets open: one dashboard poll costs {total * 1000:.2f} ms of "
        f"server CPU, {total * 100:.2f} % of a core at one poll per second"
    )
    for _, writer in conns:
        writer.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    admin = Path(tempfile.mkdtemp(prefix="rtserve-stats-cost-")) / "admin.sock"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = ["-m", "bench.ws_apps.rtserve_ws", "--port", str(port), "--admin-socket", str(admin)]
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, *app], cwd=REPO)
    try:
        asyncio.run(measure(server.pid, port, admin, n))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
