"""The load client of bench/channels.py: subscribers of one channel over the real protocols.

One process, one uvloop loop, raw asyncio protocols, as bench/ws_apps/load.py (whose helpers
and per-run accounting it reuses): a client library spends far more per message than the
servers under test. Two protocols:

- ``rt``: rtserve's channel protocol on ``/rt/ws``. After the opening handshake a subscriber
  sends ``{"id":1,"op":"connect"}`` and ``{"id":2,"op":"subscribe","channel":"bench:room"}``
  and waits for the reply with id 2; pushes are ``{"push":"pub",...,"data":"..."}``. Control
  is the plain ``/ctl`` WebSocket of bench/ws_apps/common.py;
- ``sio``: Socket.IO v5 over Engine.IO v4, WebSocket transport
  (``/socket.io/?EIO=4&transport=websocket``). The server opens with ``0{...}``, the client
  connects the namespace with ``40`` (answer ``40{...}``), then joins the room with an acked
  event ``421["join","bench:room"]`` (answer ``431[...]``); pushes are ``42["pub","..."]``; a
  ping ``2`` is answered with ``3``. Control commands travel as ``ctl`` events.

The data of every publication is the text of bench/ws_apps/common.py: a 10-digit sequence
number, ``:``, a ``time.time_ns()`` stamp (taken by the server for the server-side trigger, by
this process for publishes over HTTP or from a client), ``:``, padding. Subscribers count
pushes cheaply: a chunk made only of whole pushes of one length (the usual case) is accounted
with a ``count`` of the bytes that precede the sequence number, two slices and two ``int()``
calls, however many pushes it holds; anything else is parsed frame by frame. Only the first
subscriber (the probe) decodes every push, to read the stamps for the latency.

Publishers (``sources``): ``server`` (the control's ``go`` command: the server publishes in a
loop), ``http`` (rtserve's ``POST /rt/publish``, over a few keep-alive connections, one request
in flight on each) and ``client`` (one more connection of the protocol publishing: rtserve's
``publish`` command; for Socket.IO a ``publish`` event the server emits to the room).

The harness starts it pinned to the load core with a JSON plan and reads one JSON line per
result from stdout; progress goes to stderr. Every wait has a timeout.

    python -m bench.channel_apps.load --port 8000 --server-pid 1234 --plan '[...]'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import uvloop

from bench.ws_apps.common import HEAD_LEN, MIN_SIZE
from bench.ws_apps.load import HOST, Fanout, client_frame, emit, percentile, raise_nofile, say

ROOM = "bench:room"
SUB, PUB, CTL = "sub", "pub", "ctl"
HTTP_CONNECTIONS = 4
CAPACITY_SHARE = 0.9  # a rate above this share of the burst's deliveries/s is not offered
PROBE_SHARE = 0.15  # a probe shorter than this share of the burst's target is made bigger
PONG_SIO = client_frame(1, b"3")


# --------------------------------------------------------------------------------------------
# The two protocols
# --------------------------------------------------------------------------------------------


class RT:
    """rtserve's channel protocol."""

    name = "rt"
    path = "/rt/ws"
    ctl_path = "/ctl"
    marker = b'"data":"'  # what precedes the sequence number in a push

    @staticmethod
    def opened(conn: Conn) -> None:
        frames = [client_frame(1, b'{"id":1,"op":"connect"}')]
        if conn.role is SUB:
            frames.append(
                client_frame(1, b'{"id":2,"op":"subscribe","channel":"' + ROOM.encode() + b'"}')
            )
        conn.transport.write(b"".join(frames))

    @staticmethod
    def joining(conn: Conn, payload: bytes) -> None:
        want = b'{"id":2,' if conn.role is SUB else b'{"id":1,'
        if payload.startswith((b'{"id":1,', b'{"id":2,')) and b'"error"' in payload[:16]:
            conn.fail(f"refused: {payload[:120]!r}")
        elif payload.startswith(want):
            conn.set_joined()

    @staticmethod
    def publish_frame(seq: int, data: str) -> bytes:
        text = f'{{"id":{seq + 10},"op":"publish","channel":"{ROOM}","data":"{data}"}}'
        return client_frame(1, text.encode())

    @staticmethod
    def reply(conn: Conn, payload: bytes) -> None:
        """A message on a publisher: replies to publishes (errors counted)."""
        if payload.startswith(b'{"id":'):
            conn.replies += 1
            if b'"error"' in payload[:24]:
                conn.client.errors.append(f"publish refused: {payload[:120]!r}")

    @staticmethod
    def control_frame(text: str) -> bytes:
        return client_frame(1, text.encode())

    @staticmethod
    def control_text(payload: bytes) -> str | None:
        return payload.decode()


class SIO:
    """Socket.IO v5 over Engine.IO v4, WebSocket transport, default namespace."""

    name = "sio"
    path = "/socket.io/?EIO=4&transport=websocket"
    ctl_path = path
    marker = b'["pub","'

    @staticmethod
    def opened(conn: Conn) -> None:
        pass  # the server speaks first: the Engine.IO open packet

    @staticmethod
    def joining(conn: Conn, payload: bytes) -> None:
        if payload[:1] == b"0":  # Engine.IO open: connect the default namespace
            conn.transport.write(client_frame(1, b"40"))
        elif payload[:2] == b"40":  # namespace connected
            if conn.role is SUB:
                conn.transport.write(client_frame(1, b'421["join","' + ROOM.encode() + b'"]'))
            else:
                conn.set_joined()
        elif payload[:3] == b"431":  # the join's ack
            conn.set_joined()
        elif payload[:2] == b"44":
            conn.fail(f"namespace connect refused: {payload[:120]!r}")
        elif payload == b"2":
            conn.transport.write(PONG_SIO)

    @staticmethod
    def publish_frame(seq: int, data: str) -> bytes:
        return client_frame(1, f'42["publish","{data}"]'.encode())

    @staticmethod
    def reply(conn: Conn, payload: bytes) -> None:
        if payload == b"2":
            conn.transport.write(PONG_SIO)

    @staticmethod
    def control_frame(text: str) -> bytes:
        return client_frame(1, b"42" + json.dumps(["ctl", text]).encode())

    @staticmethod
    def control_text(payload: bytes) -> str | None:
        if payload == b"2":
            return None
        if payload[:2] == b"42":
            event = json.loads(payload[2:])
            if event and event[0] == "ctl":
                return str(event[1])
        return None


PROTOCOLS: dict[str, type[RT] | type[SIO]] = {"rt": RT, "sio": SIO}


# --------------------------------------------------------------------------------------------
# A WebSocket connection: subscriber, publisher or control
# --------------------------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    __slots__ = (
        "buf",
        "client",
        "closed",
        "is_open",
        "joined",
        "live",
        "probe",
        "proto",
        "replies",
        "request",
        "role",
        "transport",
    )

    def __init__(self, client: Client, role: str, path: str) -> None:
        self.client = client
        self.role = role
        self.proto = client.proto
        self.request = client.request(path)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.buf = b""
        self.is_open = False
        self.live = False  # a subscriber that joined: pushes are counted
        self.closed = False
        self.probe = False
        self.replies = 0
        self.joined: asyncio.Future[None] = client.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(f"closed before joining ({exc})"))

    def set_joined(self) -> None:
        if not self.joined.done():
            self.joined.set_result(None)
        self.live = self.role is SUB

    def fail(self, why: str) -> None:
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(why))
        self.client.errors.append(why)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.live:
            self._live(data)
        elif not self.is_open:
            self._handshake(data)
        else:
            self.buf = self._parse(self.buf + data if self.buf else data, time.time_ns())

    def _handshake(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        status, rest = buf[: buf.find(b"\r\n")], buf[end + 4 :]
        self.buf = b""
        if not status.startswith(b"HTTP/1.1 101"):
            self.fail(f"handshake refused: {status[:80]!r}")
            return
        self.is_open = True
        if self.role is CTL and self.proto is RT:  # rtserve's control: a plain WebSocket
            self.set_joined()
        else:
            self.proto.opened(self)
        if rest:
            self.data_received(rest)

    def _live(self, data: bytes) -> None:
        """A subscriber's bytes: the fast path for chunks of whole pushes of one length."""
        now = time.time_ns()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        run = self.client.run
        if run is not None and not self.probe and data[0] == 0x81:
            size = len(data)
            n = data.count(self.client.marker)
            length = data[1]
            if length < 126:
                frame = length + 2
            elif length == 126:
                frame = (data[2] << 8 | data[3]) + 4
            else:
                frame = 0
            if n and n * frame == size:
                at = data.find(self.client.marker, 0, frame) + self.client.marker_len
                first = int(data[at : at + 10])
                at += size - frame
                last = int(data[at : at + 10])
                if last - first == n - 1 and last < run.messages:
                    run.last_recv[first : last + 1] = [now] * n
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
                self.fail("masked server frame")
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
        if b0 & 0x70 or not b0 & 0x80:
            self.fail("compressed, reserved-bit or fragmented frame")
        elif opcode == 1:
            if self.live:
                self.on_push(payload, now)
            elif not self.joined.done():
                self.proto.joining(self, payload)
            elif self.role is CTL:
                text = self.proto.control_text(payload)
                if text is not None:
                    self.client.inbox.put_nowait(text)
                elif payload == b"2":
                    self.transport.write(PONG_SIO)
            else:
                self.proto.reply(self, payload)
        elif opcode == 9:
            self.transport.write(client_frame(10, payload))
        elif opcode == 8:
            self.transport.close()

    def on_push(self, payload: bytes, now: int) -> None:
        """A text frame after joining (a publication): timed here; subclasses may take it."""
        client = self.client
        run = client.run
        at = payload.find(client.marker)
        if at < 0:
            if payload == b"2":  # an Engine.IO ping
                self.transport.write(PONG_SIO)
            elif run is not None:
                run.other += 1
            return
        if run is None:
            return
        at += client.marker_len
        seq = int(payload[at : at + 10])
        if seq >= run.messages:
            run.other += 1
            return
        run.last_recv[seq] = now
        if self.probe:
            run.send_ts[seq] = int(payload[at + 11 : at + 30])
            client.push_bytes = len(payload)
        run.delivered += 1
        if run.delivered >= run.target:
            run.check_done()

    def send(self, frame: bytes) -> None:
        self.transport.write(frame)

    def abort(self) -> None:
        """Close with a RST (SO_LINGER 0): no TIME_WAIT piles up on the client's ports."""
        if self.transport is None or self.closed:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class HttpConn(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection for rtserve's publish API; responses in order."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.buf = b""
        self.waiting: deque[asyncio.Future[int]] = deque()
        self.head = (
            f"POST /rt/publish HTTP/1.1\r\nHost: {HOST}:{client.port}\r\n"
            f"Authorization: Bearer {client.api_key}\r\nContent-Type: application/json\r\n"
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiting:
            self.waiting.popleft().set_exception(ConnectionError(f"closed ({exc})"))

    def post(self, data: str) -> asyncio.Future[int]:
        body = f'{{"channel":"{ROOM}","data":"{data}"}}'.encode()
        self.transport.write(
            (self.head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
        )
        future = self.client.loop.create_future()
        self.waiting.append(future)
        return future

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : line_end if line_end >= 0 else end])
            if len(buf) < end + 4 + length:
                break
            status = int(buf[9:12])
            buf = buf[end + 4 + length :]
            if self.waiting:
                self.waiting.popleft().set_result(status)
        self.buf = buf


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class Client:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, port: int, protocol: str, api_key: str
    ) -> None:
        self.loop = loop
        self.port = port
        self.proto = PROTOCOLS[protocol]
        self.marker = self.proto.marker
        self.marker_len = len(self.marker)
        self.api_key = api_key
        self.run: Fanout | None = None
        self.errors: list[str] = []
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.ctl: Conn = cast(Conn, None)
        self.publisher: Conn | None = None
        self.http: list[HttpConn] = []
        self.push_bytes = 0
        self.stopping = False
        self.pad = ""

    def request(self, path: str) -> bytes:
        return (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    async def connect(self, role: str, path: str | None = None) -> Conn:
        conn = Conn(self, role, path or self.proto.path)
        await self.loop.create_connection(lambda: conn, HOST, self.port)
        await asyncio.wait_for(conn.joined, 30)
        return conn

    async def open_many(self, n: int, parallel: int = 128) -> tuple[list[Conn], list[str]]:
        conns: list[Conn] = []
        errors: list[str] = []
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                try:
                    conns.append(await self.connect(SUB))
                except (TimeoutError, OSError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    if len(errors) > 50:
                        return

        await asyncio.gather(*(worker() for _ in range(min(parallel, n))))
        return conns, errors

    async def open_http(self) -> HttpConn:
        conn = HttpConn(self)
        await self.loop.create_connection(lambda: conn, HOST, self.port)
        return conn

    # --- control ---------------------------------------------------------------------------

    def command(self, text: str) -> None:
        self.ctl.send(self.proto.control_frame(text))

    async def answer(self, timeout: float = 30.0) -> str:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def count(self) -> int:
        self.command("count")
        answer = await self.answer()
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

    # --- publishers ------------------------------------------------------------------------

    def data(self, seq: int) -> str:
        return f"{seq:010d}:{time.time_ns():019d}:{self.pad}"

    async def _paced(self, count: int, interval_us: int, send: Callable[[int], Any]) -> int:
        """Call send(seq) for each message, paced (interval_us > 0) or back to back."""
        interval = interval_us / 1e6
        start = self.loop.time()
        sent = 0
        for seq in range(count):
            if interval:
                delay = start + seq * interval - self.loop.time()
                await asyncio.sleep(delay if delay > 0 else 0)
            if self.stopping:
                break
            send(seq)
            sent += 1
        return sent

    async def publish_client(self, count: int, interval_us: int) -> str:
        pub = self.publisher
        assert pub is not None
        proto = self.proto
        sent = await self._paced(
            count, interval_us, lambda seq: pub.send(proto.publish_frame(seq, self.data(seq)))
        )
        return f"sent:{sent}"

    async def publish_http(self, count: int, interval_us: int) -> str:
        statuses: list[int] = []
        if interval_us == 0:  # back to back: one request in flight per connection
            todo = iter(range(count))

            async def worker(conn: HttpConn) -> None:
                for seq in todo:
                    if self.stopping:
                        return
                    statuses.append(await asyncio.wait_for(conn.post(self.data(seq)), 60))

            await asyncio.gather(*(worker(c) for c in self.http))
        else:
            futures: list[asyncio.Future[int]] = []
            conns = self.http

            def send(seq: int) -> None:
                futures.append(conns[seq % len(conns)].post(self.data(seq)))

            await self._paced(count, interval_us, send)
            if futures:
                await asyncio.wait_for(asyncio.gather(*futures), 60)
            statuses = [f.result() for f in futures]
        bad = [s for s in statuses if s != 200]
        if bad:
            self.errors.append(f"publish API answered {sorted(set(bad))} ({len(bad)} times)")
        return f"sent:{len(statuses)}:non-200:{len(bad)}"

    async def publish_server(self, count: int, interval_us: int) -> str:
        self.command(f"go:{count}:{len(self.pad) + HEAD_LEN}:{interval_us}")
        return await self.answer(timeout=3600)  # bounded by the caller

    # --- one run ---------------------------------------------------------------------------

    async def run_source(
        self, source: str, subs: list[Conn], count: int, interval_us: int, timeout: float
    ) -> dict[str, Any]:
        """Publish `count` messages from `source`; wait until every subscriber has them all."""
        live = [c for c in subs if not c.closed]
        run = self.run = Fanout(self.loop, count, len(live))
        self.stopping = False
        publish = {
            "server": self.publish_server,
            "client": self.publish_client,
            "http": self.publish_http,
        }[source]
        t0 = time.monotonic()
        sender = self.loop.create_task(publish(count, interval_us))
        complete = True
        try:
            await asyncio.wait_for(asyncio.shield(run.done), timeout)
        except TimeoutError:
            complete = False
            self.stopping = True
            if source == "server":
                self.command("stop")
        t1 = time.monotonic()
        try:
            done = await asyncio.wait_for(sender, 30 if complete else 60)
        except TimeoutError:
            done = "(publisher did not finish)"
        self.run = None
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
            "source": source,
            "server_send_p50_ms": server_send_p50,
            "server_send_max_ms": server_send_max,
            "subscribers": len(live),
            "messages": count,
            "interval_us": interval_us,
            "delivered": run.delivered,
            "expected": run.target,
            "complete": complete,
            "other_frames": run.other,
            "publisher_done": done,
            "push_bytes": self.push_bytes,
            "span_s": span_s,
            "deliveries_per_s": run.delivered / span_s if span_s else None,
            "latency_p50_ms": percentile(lat_ms, 50),
            "latency_p99_ms": percentile(lat_ms, 99),
            "latency_max_ms": max(lat_ms) if lat_ms else None,
            "latency_samples": len(lat_ms),
            "window": [t0, t1],
        }

    # --- the phase -------------------------------------------------------------------------

    async def channel_phase(self, spec: dict[str, Any]) -> None:
        n = int(spec.get("subscribers", 5000))
        sources = list(spec.get("sources", ["server"]))
        self.pad = "x" * (max(int(spec.get("data_size", 40)), MIN_SIZE) - HEAD_LEN)
        t0 = time.monotonic()
        subs, errors = await self.open_many(n)
        connect_s = time.monotonic() - t0
        registered = await self.wait_count(len(subs))
        say(f"{len(subs)} subscribers joined in {connect_s:.1f} s, server counts {registered}")
        if not subs:
            emit({"phase": "burst", "error": f"no subscriber joined: {errors[:3]}"})
            return
        subs[0].probe = True
        common = {"connect_s": connect_s, "registered": registered, "errors": errors[:5]}
        for source in sources:
            say(f"{source}: publishing")
            try:
                # Opened now: rtserve closes a connection that sends no request for 10 s.
                if source == "client":
                    self.publisher = await self.connect(PUB)
                elif source == "http":
                    self.http = [await self.open_http() for _ in range(HTTP_CONNECTIONS)]
                await self.source_runs(source, subs, spec, common)
            except (TimeoutError, OSError, RuntimeError) as exc:
                emit({"phase": "burst", "source": source, "error": f"{type(exc).__name__}: {exc}"})
                say(f"{source} failed: {exc!r}")
                if self.run is not None:
                    self.run = None
                    await asyncio.sleep(2.0)  # let the rest drain unaccounted
            finally:
                if self.publisher is not None:
                    self.publisher.abort()
                    self.publisher = None
                for http in self.http:
                    http.transport.abort()
                self.http = []
        for conn in subs:
            conn.abort()

    async def source_runs(
        self, source: str, subs: list[Conn], spec: dict[str, Any], common: dict[str, Any]
    ) -> None:
        n = len(subs)
        target_s = float(spec.get("burst_seconds", 3.0))
        most = int(spec["messages"])
        # A server loop under write_delay: a burst of exactly this many (the probe warms up).
        fixed = spec.get("burst_messages") if source == "server" else None
        # Then the probe is a warm-up as long as bench/ws.py's: measured here, the first big
        # burst after the subscribers joined had a tail of a few hundred ms (not the server's
        # loop, not GC) that a 20-message warm-up removes.
        count = int(spec.get("warmup", 20)) if fixed else int(spec.get("probe", 4))
        while True:  # probes grow until one lasts long enough to size the burst by
            probe = await self.run_source(source, subs, count, 0, 60.0)
            rate = probe["deliveries_per_s"] or 10_000.0
            say(f"{source}: probe of {count} messages: {rate:,.0f} deliveries/s")
            if fixed or count * n / rate >= PROBE_SHARE * target_s or count >= most:
                break
            count = min(most, count * 4)
        least = int(spec.get("min_messages", 5))
        messages = int(fixed) if fixed else max(least, min(most, int(rate * target_s / n)))
        say(f"{source}: burst of {messages} messages")
        expected_s = messages * n / rate
        burst = await self.run_source(source, subs, messages, 0, max(15.0, 4 * expected_s))
        emit({"phase": "burst", "probe_deliveries_per_s": rate, **common, **burst})
        capacity = burst["deliveries_per_s"] or rate
        for rate_hz in spec.get("rates", [10]):
            if rate_hz * n > CAPACITY_SHARE * capacity:
                emit(
                    {
                        "phase": "skipped",
                        "source": source,
                        "rate_hz": rate_hz,
                        "subscribers": n,
                        "skipped": f"offered {rate_hz * n:,} deliveries/s is above "
                        f"{CAPACITY_SHARE:.0%} of the burst's {capacity:,.0f}/s",
                    }
                )
                continue
            seconds = float(spec.get("sustained_seconds", 5.0))
            count = max(int(spec.get("min_sustained_messages", 10)), int(rate_hz * seconds))
            grace = float(spec.get("grace", 15.0))
            result = await self.run_source(
                source, subs, count, int(1e6 / rate_hz), count / rate_hz + grace
            )
            emit({"phase": "sustained", "rate_hz": rate_hz, **result})

    async def main(self, plan: list[dict[str, Any]]) -> None:
        self.ctl = await self.connect(CTL, self.proto.ctl_path)
        for spec in plan:
            say(f"phase {spec['phase']} ({self.proto.name})")
            try:
                await self.channel_phase(spec)
            except (TimeoutError, OSError, RuntimeError) as exc:
                emit({"phase": "burst", "error": f"{type(exc).__name__}: {exc}"})
                say(f"phase {spec['phase']} failed: {exc!r}")
        if self.errors:
            emit({"phase": "client_errors", "errors": self.errors[:10]})
        self.ctl.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--plan", required=True, help="JSON list of phases")
    args = parser.parse_args()
    raise_nofile()
    plan = json.loads(args.plan)
    first = plan[0] if plan else {}
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    client = Client(loop, args.port, first.get("protocol", "rt"), first.get("api_key", ""))
    try:
        loop.run_until_complete(client.main(plan))
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
