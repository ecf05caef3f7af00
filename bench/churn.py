"""WebSocket churn: open many connections and drop them without a close handshake.

The server runs in a subprocess of its own (`python -m bench.churn --serve`), so its open
connections, descriptors (/proc/PID/fd) and RSS (/proc/PID/status) are its own. The driver
opens `--connections` WebSockets (raw sockets: handshake, one echo on every tenth), holding up
to `--hold` at a time, then drops each one without a close frame (half with a plain close,
half with an RST), and checks that the server's figures return to their baseline: open
connections and WebSockets, asyncio tasks, objects tracked by the GC (after a collection),
descriptors and RSS.

    python -m bench.churn --connections 10000 --hold 2000

The baseline is taken after a warm-up round of the same size, so memory that the allocator
keeps for reuse after the first round is not mistaken for a leak; the measured round must
then stay within `--rss-slack` (default 4 MiB) of it. Prints the figures as JSON; exits 1 when
a figure did not return. tests/test_hostile_ws.py runs it with 1,000 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from typing import Any

HANDSHAKE = (
    "GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
    "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
OBJECT_SLACK = 500  # GC-tracked objects a round may add (noise is under 100; a leak of one
# object per connection would add 1,000 in the test's round, 10,000 in the bench's)
SETTLE_READINGS = 5  # of the GC's object count, the fewest counts (see ServerProcess.settle)
MASKED_HI = bytes([0x81, 0x82, 0, 0, 0, 0]) + b"hi"  # "hi", masked with a zero key


# --- the server (subprocess) ----------------------------------------------------------------


def serve() -> None:
    """Serve /echo and /_stats on 127.0.0.1 and a free port; print the port; run until stdin
    closes."""
    from rtserve import App, WebSocketHandler
    from rtserve.server.listener import Server, new_event_loop
    from rtserve.server.settings import ServerSettings

    class Echo(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            self.send(message)

    app = App()
    app.websocket("/echo")(Echo)
    holder: dict[str, Server] = {}

    @app.route("/_stats")
    def stats(request: Any) -> dict[str, int]:
        state = holder["server"].state
        assert state is not None
        gc.collect()
        return {
            "connections": len(state.connections),
            "websockets": len(state.websockets),
            "tasks": len(asyncio.all_tasks()),
            "objects": len(gc.get_objects()),  # objects the cyclic GC tracks: leaks show here
        }

    async def main() -> None:
        settings = ServerSettings(host="127.0.0.1", port=0, access_log=False)
        server = holder["server"] = Server(app, settings)
        await app.startup()
        await server.start()
        print(server.port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the driver closes stdin
        await server.shutdown(grace=1.0)
        await app.shutdown()

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


# --- the driver -------------------------------------------------------------------------------


class ServerProcess:
    def __init__(self) -> None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.churn", "--serve"],
            cwd=here,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the port, or "" if the server died
        if not line.strip():
            self.stop()
            raise RuntimeError("the churn server did not start")
        self.port = int(line)
        self.pid = self.proc.pid

    def stats(self) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.port}/_stats"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def figures(self) -> dict[str, int]:
        stats = self.stats()
        return {**stats, "fds": self.fds(), "rss": self.rss()}

    def settle(self, baseline: dict[str, int], seconds: float = 10.0) -> dict[str, int]:
        """Figures once the connection counts are back to `baseline` (or after `seconds`).

        Its `objects` is the fewest of a few readings: on a busy machine one reading may
        catch several hundred objects on their way out (connections torn down, a request
        being answered), which a leak outlasts and the next reading does not show."""
        deadline = time.monotonic() + seconds
        while True:
            now = self.figures()
            back = now["connections"] <= baseline["connections"] and now["fds"] <= baseline["fds"]
            if back or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for _ in range(SETTLE_READINGS - 1):
            time.sleep(0.05)
            now["objects"] = min(now["objects"], self.stats()["objects"])
        return now

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def open_ws(port: int, echo: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(HANDSHAKE.format(port=port).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    if not data.startswith(b"HTTP/1.1 101 "):
        raise ConnectionError(data[:80].decode("latin-1"))
    if echo:
        sock.sendall(MASKED_HI)
        rest = data.partition(b"\r\n\r\n")[2]
        while len(rest) < 4:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed before the echo")
            rest += chunk
        if rest[:4] != b"\x81\x02hi":
            raise ConnectionError(f"bad echo {rest!r}")
    return sock


def drop(sock: socket.socket, rst: bool) -> None:
    """Close without a close frame; with `rst`, abort (SO_LINGER 0 sends an RST)."""
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def churn_round(port: int, connections: int, hold: int) -> int:
    """Open `connections` WebSockets, at most `hold` at once; drop them all. Returns the most
    held at once."""
    held: list[socket.socket] = []
    most = 0
    try:
        for i in range(connections):
            held.append(open_ws(port, echo=i % 10 == 0))
            most = max(most, len(held))
            if len(held) >= hold:
                for j, sock in enumerate(held):
                    drop(sock, rst=j % 2 == 1)
                held.clear()
    finally:
        for j, sock in enumerate(held):
            drop(sock, rst=j % 2 == 1)
    return most


def run_churn(connections: int, hold: int, rss_slack: int = 4 * 1024 * 1024) -> dict[str, Any]:
    """One warm-up round, then the measured round; the figures before and after."""
    server = ServerProcess()
    try:
        start = server.figures()
        churn_round(server.port, connections, hold)
        baseline = server.settle(start)
        t0 = time.monotonic()
        most = churn_round(server.port, connections, hold)
        seconds = time.monotonic() - t0
        after = server.settle(baseline)
        fresh = open_ws(server.port, echo=True)  # a fresh client still works
        drop(fresh, rst=False)
        ok = (
            after["connections"] == baseline["connections"]
            and after["websockets"] == 0
            and after["tasks"] <= baseline["tasks"]
            and after["objects"] <= baseline["objects"] + OBJECT_SLACK
            and after["fds"] <= baseline["fds"]
            and after["rss"] <= baseline["rss"] + rss_slack
        )
        return {
            "connections": connections,
            "held_at_once": most,
            "seconds": round(seconds, 2),
            "start": start,
            "baseline": baseline,
            "after": after,
            "rss_growth": after["rss"] - baseline["rss"],
            "object_growth": after["objects"] - baseline["objects"],
            "rss_slack": rss_slack,
            "ok": ok,
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--hold", type=int, default=2_000)
    parser.add_argument("--rss-slack", type=int, default=4 * 1024 * 1024)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    figures = run_churn(args.connections, args.hold, args.rss_slack)
    print(json.dumps(figures, indent=2))
    sys.exit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
