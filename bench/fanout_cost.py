"""Price one channel delivery on the server: a fan-out driver made for callgrind and /proc.

The server (``--role server``, a child process) is an rtserve App with one channel rule
(compression and pings off, rule defaults), served on 127.0.0.1 and an ephemeral port; the
parent connects N subscribers over ``/rt/ws`` (raw sockets, the real protocol), tells the
server to publish K messages in a loop (``await app.publish(...)`` then ``await
asyncio.sleep(0)``: one message per loop iteration, each written out), and waits until every
subscriber has every push (``--per-turn K``: K messages per loop iteration). Nothing in the
measured phase depends on timing: the same messages go through the same code whatever else
runs on the machine. ``--server broadcast`` serves bench/ws.py's rtserve app instead
(``broadcast()`` to ``/sub`` handlers), ``--server floor`` its raw floor: the same driver
prices both against the channel path. ``--server sse`` subscribes the same channel over
``GET /rt/sse`` (HTTP/1.1, chunked) instead of ``/rt/ws``.

Two measures, both blind to other load on the cores:

- ``cpu`` (default): the server's own CPU time (``time.process_time``) across the publish
  phase, per delivery; several rounds, the median;
- ``memory``: the server's Python heap (``tracemalloc``) per idle subscriber, the growth
  from 10 subscribers to 10 + N over N (nothing published);
- ``syscalls`` (``strace -f -c``), ``calls`` (every Python and C function call, counted by a
  profile hook) and ``opcodes`` (the bytecodes each Python function runs, by a trace hook):
  the same subtraction, per delivery;
- ``callgrind``: the server runs under ``valgrind --tool=callgrind`` twice, publishing K1 and
  K2 messages; (Ir(K2) - Ir(K1)) / ((K2 - K1) * N) is the instructions per delivery, start-up
  and connections cancelled out. The two ``callgrind.out`` files are kept
  (``--out-dir``) for ``callgrind_annotate --inclusive=yes``;
- ``cachegrind``: the same under ``valgrind --tool=cachegrind`` with a modelled cache (48 KiB
  L1d, 2 MiB last level): instructions, data reads and writes and their misses per delivery,
  the memory traffic of a fan-out beside its instructions.

The server imports whatever ``rtserve`` is first on ``PYTHONPATH``, so the same driver prices
two trees (the API it uses is old enough for both):

    PYTHONPATH=. python bench/fanout_cost.py                        # CPU, 200 subscribers
    PYTHONPATH=. python bench/fanout_cost.py --measure callgrind    # ~1 minute
    PYTHONPATH=/path/to/other/tree python bench/fanout_cost.py --measure callgrind

Standard library only (and valgrind for ``callgrind``); traffic stays on 127.0.0.1, every
wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

# Run as `python bench/fanout_cost.py`, sys.path[0] is bench/, where http.py would shadow the
# stdlib.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

ROOM = "bench:room"
MARKER = b'"push"'  # once per push frame sent to a subscriber
MASK = b"\x01\x02\x03\x04"
CALLS_ENV = "FANOUT_COST_CALLS"  # --measure calls: the server's file for its call counts
TRACE_ENV = "FANOUT_COST_TRACE"  # --measure memory: the server traces its allocations
TIMEOUT = 600.0  # callgrind runs the server ~50 times slower


def client_frame(payload: bytes) -> bytes:
    """A masked text frame (payload < 126 bytes)."""
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + MASK + masked


# --------------------------------------------------------------------------------------------
# The server (child process)
# --------------------------------------------------------------------------------------------


async def serve(use_uvloop: bool, kind: str = "channel") -> None:
    """Serve one channel (or bench/ws.py's `broadcast()` app, or its floor); obey ``go K`` /
    ``cpu`` / ``quit`` lines on stdin."""
    if kind == "floor":
        await serve_floor()
        return
    from rtserve import App, ChannelSettings, broadcast
    from rtserve.server.settings import ServerSettings, WebSocketSettings
    from rtserve.testing import serve_app

    if kind == "broadcast":
        from bench.ws_apps import rtserve_ws

        app = rtserve_ws.make_app(0.0)

        async def publish(seq: int) -> None:
            broadcast(rtserve_ws.subscribers, f'{{"push":"{seq:010d}:' + "x" * 19 + '"}')
    else:
        ws = WebSocketSettings(compression=False, ping_interval=0)
        channels = ChannelSettings(sse_heartbeat=3600)  # no ping in the measured phase
        app = App(ServerSettings(access_log=False, websocket=ws), channels=channels)
        app.channel("bench:*")

        async def publish(seq: int) -> None:
            await app.publish(ROOM, f"{seq:010d}:" + "x" * 29)

    async with serve_app(app) as server:
        await obey(server.port, publish)


async def serve_floor() -> None:
    """bench/ws.py's floor: one pre-encoded frame written to every subscriber's transport."""
    from bench.ws_apps import floor_ws

    loop = asyncio.get_running_loop()
    server = await loop.create_server(floor_ws.FloorWebSocket, "127.0.0.1", 0, backlog=2048)
    port = server.sockets[0].getsockname()[1]

    async def publish(seq: int) -> None:
        floor_ws.send_all(f'{{"push":"{seq:010d}:' + "x" * 19 + '"}')

    async with server:
        await obey(port, publish)


async def obey(port: int, publish: Any) -> None:
    """Print the port, then obey ``go K [PER_TURN]`` / ``cpu`` / ``quit`` lines on stdin."""
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined]
    pending = b""

    def readable() -> None:
        nonlocal pending
        pending += os.read(stdin.fileno(), 4096) or b"quit\n"
        *done, pending = pending.split(b"\n")
        for line in done:
            lines.put_nowait(line.decode())

    loop.add_reader(stdin.fileno(), readable)
    print(port, flush=True)
    while True:
        command = (await lines.get()).split()
        if command[0] == "go":
            per_turn = int(command[2]) if len(command) > 2 else 1
            for seq in range(int(command[1])):
                await publish(seq)
                if (seq + 1) % per_turn == 0:
                    await asyncio.sleep(0)  # by default one message per loop iteration
            await asyncio.sleep(0)
        elif command[0] == "cpu":
            print(time.process_time(), flush=True)
        elif command[0] == "mem":  # --measure memory: the Python heap now (tracemalloc)
            import gc
            import tracemalloc

            gc.collect()
            print(tracemalloc.get_traced_memory()[0], flush=True)
        else:
            break
    loop.remove_reader(stdin.fileno())


# --------------------------------------------------------------------------------------------
# The subscribers (parent process)
# --------------------------------------------------------------------------------------------


class Subscribers:
    """N blocking-free raw sockets on one selector; counts push frames per socket."""

    def __init__(self, port: int, count: int, path: str = "/rt/ws") -> None:
        sse = path.startswith("/rt/sse")
        self.selector = selectors.DefaultSelector()
        self.pushes = [0] * count
        self.tails = [b""] * count
        self.socks: list[socket.socket] = []
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        if sse:  # an EventSource's request: the stream answers once every channel is joined
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        hello = client_frame(b'{"id":1,"op":"connect"}') + client_frame(
            b'{"id":2,"op":"subscribe","channel":"' + ROOM.encode() + b'"}'
        )
        for index in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096) or b"!"
                if head.endswith(b"!"):
                    raise SystemExit("server closed during the handshake")
            reply = head.partition(b"\r\n\r\n")[2]
            if path == "/rt/ws":
                sock.sendall(hello)
            while sse and b"event: subscribed" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    raise SystemExit("server closed before the stream started")
                reply += chunk
            while path == "/rt/ws" and b'"id":2' not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    raise SystemExit("server closed before the subscribe reply")
                reply += chunk
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, index)
            self.socks.append(sock)

    def wait_for(self, pushes: int, timeout: float = TIMEOUT) -> None:
        """Read until every subscriber has seen `pushes` push frames in all."""
        deadline = time.monotonic() + timeout
        keep = len(MARKER) - 1
        while min(self.pushes) < pushes:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {min(self.pushes)} of {pushes} pushes")
            for key, _ in self.selector.select(timeout=1.0):
                index = key.data
                data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                if not data:
                    raise SystemExit(f"subscriber {index} closed")
                seen = self.tails[index] + data
                self.pushes[index] += seen.count(MARKER)
                self.tails[index] = seen[-keep:]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.selector.close()


class ServerProcess:
    """The child server, optionally under callgrind; talks over its stdin and stdout."""

    def __init__(self, args: argparse.Namespace, wrapper: list[str]) -> None:
        command = [*wrapper, sys.executable, __file__, "--role", "server", "--server", args.server]
        if args.loop == "asyncio":
            command.append("--asyncio")
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.port = int(self.read_line())

    def read_line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"server exited ({self.proc.wait(timeout=TIMEOUT)})")
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def cpu(self) -> float:
        self.send("cpu")
        return float(self.read_line())

    def stop(self) -> None:
        self.send("quit")
        self.proc.wait(timeout=TIMEOUT)


def one_run(args: argparse.Namespace, messages: int, wrapper: list[str] = []) -> float:  # noqa: B006
    """Connect, publish `messages`, wait for all; the server CPU seconds of the publish phase.
    `wrapper` is the command the server runs under (valgrind, strace)."""
    server = ServerProcess(args, wrapper)
    path = {"channel": "/rt/ws", "sse": f"/rt/sse?channel={ROOM}"}.get(args.server, "/sub")
    subscribers = Subscribers(server.port, args.subscribers, path)
    try:
        if args.warmup:
            server.send(f"go {args.warmup}")
            subscribers.wait_for(args.warmup)
        before = server.cpu()
        server.send(f"go {messages} {args.per_turn}")
        subscribers.wait_for(args.warmup + messages)
        return server.cpu() - before
    finally:
        subscribers.close()
        server.stop()


def memory_run(args: argparse.Namespace) -> float:
    """Python heap bytes (tracemalloc) per idle subscriber: the growth from 10 subscribers to
    10 + N, divided by N."""
    server = ServerProcess(args, ["env", f"{TRACE_ENV}=1"])
    path = {"channel": "/rt/ws", "sse": f"/rt/sse?channel={ROOM}"}.get(args.server, "/sub")
    first = Subscribers(server.port, 10, path)
    try:
        server.send("mem")
        before = int(server.read_line())
        rest = Subscribers(server.port, args.subscribers, path)
        try:
            time.sleep(0.5)  # the last ones' joins
            server.send("mem")
            return (int(server.read_line()) - before) / args.subscribers
        finally:
            rest.close()
    finally:
        first.close()
        server.stop()


def total_instructions(path: Path) -> dict[str, int]:
    """The Ir total of a callgrind.out file."""
    match = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
    if match is None:
        raise SystemExit(f"no totals in {path}")
    return {"Ir": int(match.group(1))}


def cache_events(path: Path) -> dict[str, int]:
    """Every event total of a cachegrind.out file (Ir, Dr, Dw and the D1 / LL misses)."""
    text = path.read_text()
    events = re.search(r"^events: (.+)$", text, re.M)
    totals = re.search(r"^summary: (.+)$", text, re.M)
    if events is None or totals is None:
        raise SystemExit(f"no summary in {path}")
    return dict(zip(events.group(1).split(), map(int, totals.group(1).split()), strict=True))


def count_calls(out: str, opcodes: bool) -> None:
    """Count every Python and C function call of this process until it exits (or with
    `opcodes`, the bytecodes each Python function runs) into `out` (JSON, by function): a
    deterministic profile of what runs per delivery."""
    counts: Counter[str] = Counter()

    def name(code: Any) -> str:
        return f"{Path(code.co_filename).name}:{code.co_qualname}"

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            counts[name(frame.f_code)] += 1
        elif event == "c_call":
            counts[f"C:{getattr(arg, '__qualname__', arg)}"] += 1

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            counts[name(frame.f_code)] += 1
        return trace

    if opcodes:
        sys.settrace(trace)
        threading.settrace(trace)
    else:
        sys.setprofile(profile)
        threading.setprofile(profile)

    def dump() -> None:
        # Stop counting first: json's own Python functions would add keys to `counts` while
        # it is being encoded.
        sys.settrace(None)
        sys.setprofile(None)
        Path(out).write_text(json.dumps(dict(counts)))

    atexit.register(dump)


def read_json(path: Path) -> dict[str, int]:
    counts: dict[str, int] = json.loads(path.read_text())
    return counts


def system_calls(path: Path) -> dict[str, int]:
    """Calls per system call name of an ``strace -c`` summary (every thread of the server)."""
    calls = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1].isidentifier() and fields[3].isdigit():
            calls[fields[-1]] = int(fields[3])
    return calls


WRAPPERS = {  # --measure: (the command the server runs under, given its output file; reader)
    "callgrind": (
        lambda out: ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        total_instructions,
    ),
    # A modelled cache: 48 KiB L1d and a 2 MiB last level (one core's L2 here; the VM's
    # nominal 480 MiB L3 would hold every connection of any run).
    "cachegrind": (
        lambda out: [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=yes",
            "--D1=49152,12,64",
            "--LL=2097152,16,64",
            f"--cachegrind-out-file={out}",
        ],
        cache_events,
    ),
    "syscalls": (lambda out: ["strace", "-f", "-c", "-o", str(out)], system_calls),
    "calls": (lambda out: ["env", f"{CALLS_ENV}=calls:{out}"], read_json),
    "opcodes": (lambda out: ["env", f"{CALLS_ENV}=opcodes:{out}"], read_json),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["driver", "server"], default="driver")
    parser.add_argument("--asyncio", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--measure", choices=["cpu", "memory", *WRAPPERS], default="cpu")
    parser.add_argument(
        "--server",
        choices=["channel", "sse", "broadcast", "floor"],
        default="channel",
        help="channel: app.publish to /rt/ws subscribers; sse: the same channel to "
        "/rt/sse streams (HTTP/1.1, chunked); broadcast: bench/ws.py's rtserve app "
        "(`broadcast()` on /sub); floor: bench/ws.py's floor (raw transport writes)",
    )
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=500, help="K (cpu) / K2 (callgrind)")
    parser.add_argument("--base-messages", type=int, default=20, help="K1 (callgrind)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--per-turn", type=int, default=1, help="messages published per loop iteration"
    )
    parser.add_argument("--rounds", type=int, default=5, help="cpu rounds (median)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.role == "server":
        if os.environ.get(TRACE_ENV):
            import tracemalloc

            tracemalloc.start()
        if os.environ.get(CALLS_ENV):
            what, _, out = os.environ[CALLS_ENV].partition(":")
            count_calls(out, opcodes=what == "opcodes")
        if args.asyncio:
            asyncio.run(serve(False, args.server))
        else:
            import uvloop

            uvloop.run(serve(True, args.server))
        return
    import rtserve

    tree = Path(rtserve.__file__).resolve().parent.parent
    print(
        f"rtserve from {tree}; server {args.server}, {args.subscribers} subscribers, "
        f"loop {args.loop}"
    )
    if args.measure == "memory":
        figures = [memory_run(args) for _ in range(args.rounds)]
        shown = " ".join(f"{f:.0f}" for f in figures)
        print(
            f"Python heap per idle subscriber: median {statistics.median(figures):.0f} B ({shown})"
        )
        return
    if args.measure == "cpu":
        figures = []
        for _ in range(args.rounds):
            seconds = one_run(args, args.messages)
            figures.append(seconds / (args.messages * args.subscribers) * 1e6)
        shown = " ".join(f"{f:.2f}" for f in figures)
        print(f"server CPU per delivery: median {statistics.median(figures):.2f} µs ({shown})")
        return
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="fanout-cost-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper, read = WRAPPERS[args.measure]
    counts = []
    for messages in (args.base_messages, args.messages):
        out = out_dir / f"{args.measure}.out.{messages}"
        one_run(args, messages, wrapper(out))
        counts.append(read(out))
    deliveries = (args.messages - args.base_messages) * args.subscribers
    print(
        f"{args.measure}: per delivery, the runs of {args.base_messages} and {args.messages}"
        f" messages subtracted ({out_dir}):"
    )
    total = 0.0
    for name in sorted(counts[1], key=lambda name: -counts[1][name]):
        per = (counts[1][name] - counts[0].get(name, 0)) / deliveries
        total += per
        if abs(per) >= 0.001:
            print(f"  {name:24} {per:12,.3f}")
    if len(counts[1]) > 1:
        print(f"  {'total':24} {total:12,.3f}")


if __name__ == "__main__":
    main()
