"""permessage-deflate amplification: what a burst of small compressed messages costs the server.

The server (`python -m bench.deflate_burst --serve`, its own process) is an App with one
channel rule and default settings, so `/rt/ws` takes unauthenticated connections. The driver
opens `--connections` raw WebSockets to `/rt/ws` that negotiate permessage-deflate; each sends,
in one write, `--messages` compressed commands: an anonymous `connect`, then `ping`s that each
inflate to just under `max_message_size` (1 MiB); it then reads every answer. Printed as JSON:
the server's RSS before, its peak (VmHWM), its CPU seconds for the burst, the answers read.

    python -m bench.deflate_burst --connections 5 --messages 200

Loopback only; every read has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from typing import Any

from bench.procs import serve_until_stdin_closes

MIB = 1024 * 1024
HANDSHAKE = (
    "GET /rt/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
    "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
)


def serve() -> None:
    """Serve the channel endpoints on 127.0.0.1 and a free port; print the port; run until
    stdin closes."""
    from rtserve import App

    app = App()
    app.channel("room:{room}")

    serve_until_stdin_closes(app)


def compressed_frame(payload: bytes) -> bytes:
    """A masked (zero key) text frame with RSV1: one raw deflate stream, sync-flushed."""
    compressor = zlib.compressobj(wbits=-15)
    data = (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    n = len(data)
    head = bytes((0xC1, 0x80 | n)) if n < 126 else bytes((0xC1, 0xFE)) + struct.pack("!H", n)
    return head + b"\0\0\0\0" + data


def burst(messages: int) -> bytes:
    """`connect` (anonymous), then `messages - 1` pings padded to just under 1 MiB."""
    pad = "a" * (MIB - 100)
    commands = [{"id": 1, "op": "connect"}]
    commands += [{"id": i, "op": "ping", "pad": pad} for i in range(2, messages + 1)]
    return b"".join(compressed_frame(json.dumps(c).encode()) for c in commands)


def proc_status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_frames(sock: socket.socket, want: int, seconds: float) -> int:
    """Read server frames until `want` of them or the deadline; how many were read."""
    data = b""
    got = 0
    deadline = time.monotonic() + seconds
    while got < want and time.monotonic() < deadline:
        while len(data) >= 2:
            n, start = data[1] & 0x7F, 2
            if n == 126:
                if len(data) < 4:
                    break
                n, start = struct.unpack("!H", data[2:4])[0], 4
            if len(data) < start + n:
                break
            data = data[start + n :]
            got += 1
        if got >= want:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return got


def drive(connections: int, messages: int) -> dict[str, Any]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.deflate_burst", "--serve"],
        cwd=here,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        data = burst(messages)
        socks = []
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(HANDSHAKE.format(port=port).encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            assert b" 101 " in head and b"permessage-deflate" in head, head
            socks.append(sock)
        time.sleep(0.5)  # the handshakes' garbage settles before the baseline
        rss_before = proc_status(proc.pid, "VmRSS")
        cpu_before = cpu_seconds(proc.pid)
        for sock in socks:
            sock.sendall(data)
        answers = [count_frames(sock, messages, seconds=120) for sock in socks]
        for sock in socks:
            sock.close()
        return {
            "connections": connections,
            "messages": messages,
            "bytes_per_connection": len(data),
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_peak_mib": round(proc_status(proc.pid, "VmHWM") / 1024, 1),
            "cpu_s": round(cpu_seconds(proc.pid) - cpu_before, 2),
            "answers": answers,
        }
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=5)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    print(json.dumps(drive(args.connections, args.messages)))


if __name__ == "__main__":
    main()
