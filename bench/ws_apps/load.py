"""The load client of bench/ws.py: one process, one uvloop loop, raw asyncio protocols.

No WebSocket library: a client library spends far more per frame than the servers under test,
and one core of it cannot keep up with a broadcast to thousands of connections. Instead each
connection sends a fixed opening handshake (only the status line of the answer is checked, and
the ``Sec-WebSocket-Extensions`` header kept for the report), and server frames (unmasked, not
compressed) are parsed by hand. Subscribers take a fast path: a chunk made only of whole
broadcast frames (the payload is ASCII, so ``0x81 'd'`` marks every frame start) is accounted
with two ``int()`` calls and one slice assignment, however many frames it holds.

The harness starts it pinned to the load core with a JSON plan (a list of phases) and reads one
JSON line per result from stdout; progress goes to stderr. Every wait has a timeout.

    python -m bench.ws_apps.load --port 8000 --server-pid 1234 --plan '[{"phase": "echo"}]'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, cast

import uvloop

HOST = "127.0.0.1"
SIZE = 100  # broadcast and echo payload bytes
FRAME_LEN = SIZE + 2  # a server frame of SIZE bytes: 2-byte header, no mask
FRAME_MARK = bytes((0x81, SIZE))  # FIN + text, length SIZE: the start of every broadcast frame
MASK = b"\x37\xfa\x21\x3d"
SUB, ECHO, CTL = "sub", "echo", "ctl"


def _unmask(mask: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (the mask key is fixed: fine for a benchmark, not for real use)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    return head + MASK + _unmask(MASK, payload)


ECHO_PAYLOAD = (b"echo:" + b"0123456789" * 10)[:SIZE]
ECHO_FRAME = client_frame(1, ECHO_PAYLOAD)
ECHO_REPLY = FRAME_MARK + ECHO_PAYLOAD


def say(message: str) -> None:
    print(f"  [load] {message}", file=sys.stderr, flush=True)


def read_kernel_socket_kib() -> int:
    """Kernel memory that sockets hold, machine-wide: the slab caches (/proc/meminfo's Slab:
    socket, inode, file and epoll structures) plus TCP buffer pages (/proc/net/sockstat's
    ``TCP ... mem``). Other programs' allocations count too: a figure for a quiet machine."""
    slab = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            slab = int(line.split()[1])
    pages = 0
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            pages = int(fields[fields.index("mem") + 1])
    return slab + pages * os.sysconf("SC_PAGE_SIZE") // 1024


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def read_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# --------------------------------------------------------------------------------------------
# Per-run accounting
# --------------------------------------------------------------------------------------------


class Fanout:
    """One broadcast run: when each message reached its last subscriber."""

    def __init__(self, loop: asyncio.AbstractEventLoop, messages: int, subscribers: int) -> None:
        self.messages = messages
        self.last_recv = [0] * messages  # time_ns when the latest copy of message s arrived
        self.send_ts = [0] * messages  # the server's time_ns in the message (from the probe)
        self.delivered = 0
        self.target = messages * subscribers
        self.other = 0  # frames that were not this run's broadcast messages
        self.done: asyncio.Future[None] = loop.create_future()

    def check_done(self) -> None:
        if self.delivered >= self.target and not self.done.done():
            self.done.set_result(None)


class EchoRun:
    def __init__(self) -> None:
        self.running = True
        self.recording = False
        self.count = 0
        self.rtts_ns: list[int] = []
        self.bad = 0


# --------------------------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    __slots__ = (
        "buf",
        "client",
        "close_code",
        "closed",
        "extensions",
        "got",
        "inbox",
        "is_open",
        "kind",
        "opened",
        "probe",
        "request",
        "rx",
        "sent_at",
        "transport",
    )

    def __init__(self, client: Client, kind: str, request: bytes) -> None:
        self.client = client
        self.kind = kind
        self.request = request
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.buf = b""
        self.is_open = False
        self.closed = False
        self.close_code: int | None = None
        self.extensions = ""
        self.opened: asyncio.Future[None] = client.loop.create_future()
        self.got = 0
        self.probe = False
        self.rx = 0
        self.sent_at = 0
        self.inbox: asyncio.Queue[str] | None = asyncio.Queue() if kind == CTL else None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake ({exc})"))

    def data_received(self, data: bytes) -> None:
        if not self.is_open:
            self._handshake(data)
        elif self.kind is SUB:
            self._sub(data)
        elif self.kind is ECHO:
            self._echo(data)
        else:
            self.buf = self._parse(self.buf + data if self.buf else data, time.time_ns())

    def _handshake(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        head, rest = buf[:end], buf[end + 4 :]
        self.buf = b""
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            self.opened.set_exception(ConnectionError(f"handshake refused: {lines[0]!r}"))
            self.transport.close()
            return
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                self.extensions = value.strip()
        self.is_open = True
        self.opened.set_result(None)
        if rest:
            self.data_received(rest)

    # subscribers

    def _sub(self, data: bytes) -> None:
        now = time.time_ns()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        run = self.client.fanout
        n, rem = divmod(len(data), FRAME_LEN)
        if run is not None and not rem and not self.probe and data.count(FRAME_MARK) == n:
            # Only whole broadcast frames: their sequence numbers run first..last.
            first = int(data[2:12])
            last = int(data[len(data) - SIZE : len(data) - SIZE + 10])
            if last - first == n - 1 and last < run.messages:
                run.last_recv[first : last + 1] = [now] * n
                self.got += n
                run.delivered += n
                if run.delivered >= run.target:
                    run.check_done()
                return
        self.buf = self._parse(data, now)

    def _parse(self, buf: bytes, now: int) -> bytes:
        """Handle every whole frame in buf; return the incomplete rest."""
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, n = buf[pos], buf[pos + 1]
            if n & 0x80:
                self._fail("masked server frame")
                return b""
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + n:
                break
            payload = buf[pos + head : pos + head + n]
            pos += head + n
            self._frame(b0, payload, now)
        return buf[pos:]

    def _frame(self, b0: int, payload: bytes, now: int) -> None:
        opcode = b0 & 0x0F
        if b0 & 0x70:
            self._fail("compressed or reserved-bit frame")
        elif opcode == 1 and self.kind is SUB:
            run = self.client.fanout
            if run is None or len(payload) < 31 or payload[10:11] != b":":
                if run is not None:
                    run.other += 1
                return
            seq = int(payload[:10])
            if seq >= run.messages:
                run.other += 1
                return
            run.last_recv[seq] = now
            if self.probe:
                run.send_ts[seq] = int(payload[11:30])
            self.got += 1
            run.delivered += 1
            if run.delivered >= run.target:
                run.check_done()
        elif opcode in (1, 2) and self.inbox is not None:
            self.inbox.put_nowait(payload.decode("utf-8", "replace"))
        elif opcode == 9:
            self.transport.write(client_frame(10, payload))
        elif opcode == 8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.transport.close()

    def _fail(self, why: str) -> None:
        self.client.errors.append(why)
        self.transport.close()

    # echo

    def _echo(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if self.rx == 0 and len(data) == FRAME_LEN and data != ECHO_REPLY:
            self.client.echo_run_bad()
        self.rx += len(data)
        if self.rx < FRAME_LEN:
            return
        if self.rx > FRAME_LEN:
            self.client.echo_run_bad()
        self.rx = 0
        run = self.client.echo
        if run is None:
            return
        run.count += 1
        if run.recording:
            run.rtts_ns.append(now - self.sent_at)
        if run.running:
            self.sent_at = now
            self.transport.write(ECHO_FRAME)

    # control

    def send_text(self, text: str) -> None:
        self.transport.write(client_frame(1, text.encode()))

    async def recv(self, timeout: float) -> str:
        assert self.inbox is not None
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def ask(self, text: str, timeout: float = 30.0) -> str:
        self.send_text(text)
        return await self.recv(timeout)

    def abort(self) -> None:
        """Close with a RST (SO_LINGER 0): no TIME_WAIT piles up on the client's ports."""
        if self.transport is None or self.closed:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


# --------------------------------------------------------------------------------------------
# The client and its phases
# --------------------------------------------------------------------------------------------


class Client:
    def __init__(self, loop: asyncio.AbstractEventLoop, port: int, server_pid: int) -> None:
        self.loop = loop
        self.port = port
        self.server_pid = server_pid
        self.fanout: Fanout | None = None
        self.echo: EchoRun | None = None
        self.errors: list[str] = []
        self.ctl: Conn = cast(Conn, None)

    def echo_run_bad(self) -> None:
        if self.echo is not None:
            self.echo.bad += 1

    def request(self, path: str, extensions: str | None) -> bytes:
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {HOST}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        if extensions:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def connect(self, kind: str, path: str, extensions: str | None = None) -> Conn:
        conn = Conn(self, kind, self.request(path, extensions))
        await self.loop.create_connection(lambda: conn, HOST, self.port)
        await asyncio.wait_for(conn.opened, 30)
        return conn

    async def open_many(
        self, n: int, kind: str, path: str, extensions: str | None = None, parallel: int = 128
    ) -> tuple[list[Conn], list[str]]:
        conns: list[Conn] = []
        errors: list[str] = []
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                try:
                    conns.append(await self.connect(kind, path, extensions))
                except (TimeoutError, OSError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    if len(errors) > 50:
                        return

        await asyncio.gather(*(worker() for _ in range(min(parallel, n))))
        return conns, errors

    async def count(self) -> int:
        answer = await self.ctl.ask("count")
        if not answer.startswith("subs:"):
            raise RuntimeError(f"unexpected answer to count: {answer!r}")
        return int(answer[5:])

    async def wait_count(self, expected: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            n = await self.count()
            if n == expected or time.monotonic() > deadline:
                return n
            await asyncio.sleep(0.1)

    async def close_all(self, conns: list[Conn], timeout: float = 30.0) -> int:
        for conn in conns:
            conn.abort()
        return await self.wait_count(0, timeout)

    # --- phases ----------------------------------------------------------------------------

    async def memory(self, spec: dict[str, Any]) -> None:
        n, warm = int(spec.get("connections", 10_000)), int(spec.get("warm", 200))
        path, ext = spec.get("path", "/sub"), spec.get("extensions")
        label = spec.get("label", "plain")
        t0 = time.monotonic()
        warm_conns, errors = await self.open_many(warm, SUB, path, ext)
        await self.wait_count(len(warm_conns))
        await asyncio.sleep(0.5)
        rss0, kernel0 = read_rss_kib(self.server_pid), read_kernel_socket_kib()
        conns, more_errors = await self.open_many(n, SUB, path, ext)
        errors += more_errors
        registered = await self.wait_count(len(warm_conns) + len(conns))
        await asyncio.sleep(1.0)
        rss1, kernel1 = read_rss_kib(self.server_pid), read_kernel_socket_kib()
        opened = len(conns)
        per_conn = kernel_per_conn = None
        if rss0 is not None and rss1 is not None and opened:
            per_conn = (rss1 - rss0) / opened
        if opened:  # both ends are on this machine: half is the server's
            kernel_per_conn = (kernel1 - kernel0) / opened / 2
        emit(
            {
                "phase": "memory",
                "label": label,
                "path": path,
                "offered": ext,
                "negotiated": conns[0].extensions if conns else "",
                "connections": n,
                "opened": opened,
                "registered": registered - len(warm_conns),
                "rss_before_kib": rss0,
                "rss_after_kib": rss1,
                "kib_per_conn": per_conn,
                "kernel_kib_per_conn": kernel_per_conn,
                "errors": errors[:5],
                "window": [t0, time.monotonic()],
            }
        )
        left = await self.close_all(warm_conns + conns)
        if left:
            say(f"memory: {left} connections still registered after closing")

    async def broadcast_run(
        self, subs: list[Conn], count: int, interval_us: int, timeout: float
    ) -> dict[str, Any]:
        """Ask for `count` messages; wait until every subscriber has them all (or timeout)."""
        live = [c for c in subs if not c.closed]
        run = self.fanout = Fanout(self.loop, count, len(live))
        t0 = time.monotonic()
        self.ctl.send_text(f"go:{count}:{SIZE}:{interval_us}")
        complete = True
        try:
            await asyncio.wait_for(asyncio.shield(run.done), timeout)
        except TimeoutError:
            complete = False
            self.ctl.send_text("stop")
        t1 = time.monotonic()
        try:
            done = await self.ctl.recv(timeout=30 if complete else 60)
        except TimeoutError:
            done = "(no done answer)"
        self.fanout = None
        if not complete:
            await asyncio.sleep(2.0)  # let the rest drain unaccounted
        lat_ms = [(r - s) / 1e6 for r, s in zip(run.last_recv, run.send_ts, strict=True) if r and s]
        first_sent = run.send_ts[0] if run.send_ts and run.send_ts[0] else None
        last_recv = max(run.last_recv) if run.last_recv else 0
        span_s = (last_recv - first_sent) / 1e9 if first_sent and last_recv else None
        server_send_p50 = server_send_max = None
        parts = done.split(":")
        if parts[0] == "done" and len(parts) >= 5:
            server_send_p50, server_send_max = float(parts[3]), float(parts[4])
        return {
            "server_send_p50_ms": server_send_p50,
            "server_send_max_ms": server_send_max,
            "subscribers": len(live),
            "messages": count,
            "interval_us": interval_us,
            "delivered": run.delivered,
            "expected": run.target,
            "complete": complete,
            "other_frames": run.other,
            "server_done": done,
            "span_s": span_s,
            "deliveries_per_s": run.delivered / span_s if span_s else None,
            "latency_p50_ms": percentile(lat_ms, 50),
            "latency_p99_ms": percentile(lat_ms, 99),
            "latency_max_ms": max(lat_ms) if lat_ms else None,
            "latency_samples": len(lat_ms),
            "window": [t0, t1],
        }

    async def fanout_phase(self, spec: dict[str, Any]) -> None:
        n = int(spec.get("subscribers", 5000))
        max_messages = int(spec.get("messages", 1000))
        target_s = float(spec.get("burst_seconds", 3.0))
        subs, errors = await self.open_many(n, SUB, "/sub")
        registered = await self.wait_count(len(subs))
        say(f"fan-out: {len(subs)} subscribers open, {registered} registered")
        if not subs:
            emit({"phase": "burst", "error": f"no subscriber connected: {errors[:3]}"})
            return
        subs[0].probe = True
        probe = await self.broadcast_run(subs, int(spec.get("probe", 20)), 0, 60.0)
        rate = probe["deliveries_per_s"] or 10_000.0
        messages = max(10, min(max_messages, int(rate * target_s / len(subs))))
        say(f"fan-out: probe {rate:,.0f} deliveries/s -> burst of {messages} messages")
        expected_s = messages * len(subs) / rate
        result = await self.broadcast_run(subs, messages, 0, max(15.0, 4 * expected_s))
        emit({"phase": "burst", "probe_deliveries_per_s": rate, "errors": errors[:5], **result})
        for rate_hz in spec.get("rates", [10]):
            duration = float(spec.get("sustained_seconds", 5.0))
            count = max(1, int(rate_hz * duration))
            result = await self.broadcast_run(
                subs, count, int(1e6 / rate_hz), duration + float(spec.get("grace", 15.0))
            )
            emit({"phase": "sustained", "rate_hz": rate_hz, **result})
        await self.close_all(subs)

    async def echo_phase(self, spec: dict[str, Any]) -> None:
        n = int(spec.get("connections", 100))
        conns, errors = await self.open_many(n, ECHO, "/echo")
        run = self.echo = EchoRun()
        now = time.perf_counter_ns()
        for conn in conns:
            conn.sent_at = now
            conn.transport.write(ECHO_FRAME)
        await asyncio.sleep(float(spec.get("warmup", 1.0)))
        run.recording = True
        c0, t0 = run.count, time.monotonic()
        await asyncio.sleep(float(spec.get("duration", 5.0)))
        c1, t1 = run.count, time.monotonic()
        run.recording = False
        run.running = False
        rtts_ms = [x / 1e6 for x in run.rtts_ns]
        emit(
            {
                "phase": "echo",
                "connections": len(conns),
                "round_trips": c1 - c0,
                "round_trips_per_s": (c1 - c0) / (t1 - t0),
                "rtt_p50_ms": percentile(rtts_ms, 50),
                "rtt_p99_ms": percentile(rtts_ms, 99),
                "bad_replies": run.bad,
                "closed_early": sum(c.closed for c in conns),
                "errors": errors[:5],
                "window": [t0, t1],
            }
        )
        await asyncio.sleep(0.3)
        self.echo = None
        for conn in conns:
            conn.abort()

    async def hold_phase(self, spec: dict[str, Any]) -> None:
        n = int(spec.get("connections", 18_000))
        hold_s = float(spec.get("hold_seconds", 5.0))
        t0 = time.monotonic()
        subs, errors = await self.open_many(n, SUB, "/sub", parallel=256)
        connect_s = time.monotonic() - t0
        registered = await self.wait_count(len(subs))
        say(f"hold: {len(subs)} of {n} open in {connect_s:.1f} s; server counts {registered}")
        await asyncio.sleep(hold_s)
        closed_client = sum(c.closed for c in subs)
        registered_after = await self.count()
        if subs:
            subs[0].probe = True
        run = await self.broadcast_run(subs, 1, 0, 60.0)
        reached = sum(1 for c in subs if c.got >= 1)
        emit(
            {
                "phase": "hold",
                "connections": n,
                "opened": len(subs),
                "connect_s": connect_s,
                "registered": registered,
                "closed_during_hold": closed_client,
                "registered_after_hold": registered_after,
                "hold_seconds": hold_s,
                "broadcast_reached": reached,
                "broadcast_latency_ms": run["latency_max_ms"],
                "broadcast_complete": run["complete"],
                "errors": errors[:5],
                "error_count": len(errors),
                "client_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "window": [t0, time.monotonic()],
            }
        )
        await self.close_all(subs)

    async def run(self, plan: list[dict[str, Any]]) -> None:
        self.ctl = await self.connect(CTL, "/ctl")
        phases = {
            "memory": self.memory,
            "fanout": self.fanout_phase,
            "echo": self.echo_phase,
            "hold": self.hold_phase,
        }
        for spec in plan:
            say(f"phase {spec['phase']} {spec.get('label', '')}".rstrip())
            try:
                await phases[spec["phase"]](spec)
            except (TimeoutError, OSError, RuntimeError) as exc:
                emit({"phase": spec["phase"], "error": f"{type(exc).__name__}: {exc}"})
                say(f"phase {spec['phase']} failed: {exc!r}")
        if self.errors:
            emit({"phase": "client_errors", "errors": self.errors[:10]})
        self.ctl.abort()


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--plan", required=True, help="JSON list of phases")
    args = parser.parse_args()
    raise_nofile()
    plan = json.loads(args.plan)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(Client(loop, args.port, args.server_pid).run(plan))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
