"""The WebSocket connection: the asyncio.Protocol that takes a socket over after the 101.

Bytes are parsed by the sans-I/O `FrameReader`; control frames are answered right here in
`data_received`, so a slow handler never delays a pong or the close handshake. Messages reach
the handler in order: a sync `on_message` runs at once, an async one in a single pump Task that
later messages queue behind. What waits for the handler is bounded by count (`MAX_INBOX`) and
by size: the reader hands over messages (inflating them) only while those waiting hold less
than `max_message_size`, so a connection holds under 2 x `max_message_size` of them however
many arrive in one read; reading pauses until the handler has taken them. Outbound frames are
batched per loop tick (one write per connection per tick) and bounded by a byte budget; a
connection over it is handled by the slow-consumer policy and counted. A fan-out's shared frame
skips the queue and the budget arithmetic while nothing is queued or held and the transport is
under its high-water mark (`shared_write`); anything after it in the tick queues behind it.
A member of one fan-out set (a channel's, a `WebSocketGroup`) sits on its fast list meanwhile
(`wire_set`): publications then walk transports without touching the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from rtserve.protocol.websocket import (
    BinaryMessage,
    CloseCode,
    CloseReceived,
    FrameReader,
    Opcode,
    Ping,
    Pong,
    TextMessage,
    WebSocketProtocolError,
    encode_binary,
    encode_close,
    encode_frame,
    encode_ping,
    encode_pong,
    encode_text,
)
from rtserve.protocol.ws_close import CloseHandshake, CloseState, CloseStep, Tcp
from rtserve.server.settings import WebSocketSettings
from rtserve.server.transport import ConnectionInfo, UpgradedProtocol

if TYPE_CHECKING:
    from rtserve.protocol.deflate import PerMessageDeflate
    from rtserve.server.shared_write import SharedFrame
    from rtserve.server.state import ServerState
    from rtserve.server.wire_set import WireSet

log = logging.getLogger("rtserve.websocket")

OPEN, CLOSING, CLOSED = range(3)
# The connection's `status` (read on every send) for each state of its close handshake.
_STATUS = {
    CloseState.OPEN: OPEN,
    CloseState.CLOSE_SENT: CLOSING,
    CloseState.CLOSE_RECEIVED: CLOSING,
    CloseState.CLOSED: CLOSED,
}
MAX_INBOX = 64  # queued inbound messages before reading pauses
YIELD_EVERY = 16  # queued messages handled before the pump lets the loop run
INF = float("inf")
# `direct_after` of a connection that may not take a frame straight to its transport now; one
# that may has DIRECT (below any turn of `rtserve.server.shared_write`).
BLOCKED = 1 << 62
DIRECT = -1
# `direct_after` of a connection on a set's fast list (`rtserve.server.wire_set`): its frames
# are taken there, so any other sender sees it as unable to take one and queues (which takes
# it off the list first).
ON_SET = BLOCKED - 1


class WebSocketApp(Protocol):
    """What the connection calls; each may return an awaitable, run in order."""

    def on_open(self) -> Awaitable[None] | None: ...
    def on_message(self, message: str | bytes) -> Awaitable[None] | None: ...
    def on_close(self, code: int, reason: str) -> Awaitable[None] | None: ...
    def on_drain(self) -> None:
        """The connection has room again after an `offer_frame` was refused (its buffer went
        down, or a write went straight to the kernel)."""

    def on_pong(self, data: bytes) -> None:
        """A pong arrived (the answer to a ping: ours, or one the app sent)."""


class _Closed:
    """Inbox marker: call on_close once everything before it has been handled."""


_CLOSED = _Closed()
# Shared by every connection whose handler never fell behind; replaced before any append.
_NO_INBOX: deque[Any] = deque(maxlen=0)


class _Released:
    """Stands in for a handler the connection let go of after its close (nothing is called)."""

    def on_open(self) -> None: ...
    def on_message(self, message: str | bytes) -> None: ...
    def on_close(self, code: int, reason: str) -> None: ...
    def on_drain(self) -> None: ...
    def on_pong(self, data: bytes) -> None: ...


_RELEASED: Any = _Released()


class WebSocketConnection(UpgradedProtocol):
    """One open WebSocket (`Served` while it lives)."""

    kind = "websocket"

    __slots__ = (
        "_app",
        "_backlog",
        "_closed_future",
        "_closing",
        "_direct_capable",
        "_direct_hold",
        "_fast_base",
        "_fast_seq",
        "_fast_set",
        "_held",
        "_inbox",
        "_out",
        "_out_bytes",
        "_parse_scheduled",
        "_paused",
        "_ping_sent",
        "_pump",
        "_reading_paused",
        "_room_watch",
        "_running",
        "_schedule_flush",
        "_sets",
        "_wants_room",
        "_writable_waiter",
        "bytes_counted",
        "bytes_in",
        "close_code",
        "close_reason",
        "deadline",
        "deflate",
        "direct_after",
        "options",
        "peer",
        "reader",
        "shared",
        "state",
        "status",
        "subprotocol",
        "transport",
    )

    def __init__(
        self,
        state: ServerState,
        app: WebSocketApp,
        options: WebSocketSettings,
        *,
        deflate: PerMessageDeflate | None = None,
        subprotocol: str | None = None,
        peer: tuple[str, int] = ("", 0),
    ) -> None:
        self.state = state
        self._app = app
        self.options = options
        self.deflate = deflate
        self.subprotocol = subprotocol
        self.peer = peer
        self.reader = FrameReader(
            max_frame_size=options.max_frame_size,
            max_message_size=options.max_message_size,
            decompress=deflate.decompress if deflate is not None else None,
        )
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # Has flush() called at the end of the tick (or after write_delay) once frames wait.
        self._schedule_flush: Callable[[WebSocketConnection], None] = (
            state.flush_soon
            if options.write_delay <= 0
            else partial(state.schedule_flush, delay=options.write_delay)
        )
        self._closing = CloseHandshake(client=False)
        self.status = OPEN  # _STATUS of the close handshake's state
        self.close_code = int(CloseCode.ABNORMAL)
        self.close_reason = ""
        self.deadline = INF
        self._ping_sent = False
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._backlog = 0  # the transport's buffer at the last flush
        self._closed_future: asyncio.Future[None] | None = None
        self._inbox: deque[Any] = _NO_INBOX
        self._pump: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._running = 0  # concurrent on_message Tasks in flight
        self._wants_room = False  # an offer was refused: call on_drain when there is room
        # An offer was refused or a send awaits room: flush looks for room after writing (the
        # one flag its hot path reads).
        self._room_watch = False
        self._held = 0  # size of the messages received and not yet taken by the handler
        self._writable_waiter: asyncio.Future[None] | None = None
        self._parse_scheduled = False
        self.bytes_in = 0
        # `bytes_out` but what was given on a set's fast list (which the set counts for all:
        # `broadcast()` and the shared-frame path add a taken frame here themselves).
        self.bytes_counted = 0
        # Shared frames taken without this connection's queue (`shared_write.write_shared`:
        # written to the transport at the end of the turn, one write for all of them): only
        # without deflate or write delay, and while `_direct_check` finds nothing in the way.
        # `direct_after` is DIRECT when one may be taken now, the turn of the last one taken
        # (one per loop turn: later frames of that turn are queued behind it and go out in
        # one write), or BLOCKED. `shared` is the last one taken (written once its
        # `written` says so).
        self._direct_capable = deflate is None and options.write_delay <= 0
        self._direct_hold = False  # the app holds pushes back (queued or batched replies)
        self._paused = False  # the transport is over its high-water mark (pause_writing)
        self.direct_after = BLOCKED
        self.shared: SharedFrame | None = None
        # The fan-out sets it is a member of, with its key in each (`wire_set`); on the fast
        # list of `_fast_set` (its only one) while `direct_after` is ON_SET, since that set's
        # publication `_fast_seq`, when the set had given `_fast_base` bytes.
        self._sets: list[tuple[WireSet[Any], Any]] = []
        self._fast_set: WireSet[Any] | None = None
        self._fast_seq = 0
        self._fast_base = 0

    @property
    def bytes_out(self) -> int:
        """Bytes sent (queued for the transport) to the client, shared frames included."""
        fast = self._fast_set
        if fast is None:
            return self.bytes_counted
        return self.bytes_counted + fast.sent - self._fast_base

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        high = self.high_water
        self.transport.set_write_buffer_limits(high=high, low=high // 4)
        self.state.websocket_opened(self)
        self._schedule_ping()
        self._call(self._app.on_open)
        self._direct_check()

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.bytes_in += n
        self.state.stats.bytes_received += n
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """Feed the reader with the room the handler's backlog leaves; act on the events."""
        failure: WebSocketProtocolError | None = None
        try:
            events = self.reader.feed(data, self.options.max_message_size - self._held)
        except WebSocketProtocolError as exc:
            failure, events = exc, exc.events  # what came before the violation still counts
        for event in events:
            if type(event) is TextMessage or type(event) is BinaryMessage:
                if self.status == OPEN:
                    self.state.stats.ws_messages_received += 1
                    self._deliver(event.data)
            elif type(event) is Ping:
                if self.status == OPEN:
                    # Pongs count against the outbound budget: a peer that pings without
                    # reading meets the slow-consumer policy instead of growing the buffer.
                    self.send_frame(encode_pong(event.data))
            elif type(event) is Pong:
                self._ping_sent = False
                self._schedule_ping()
                try:
                    self._app.on_pong(event.data)
                except Exception:
                    log.exception("on_pong failed")
            elif type(event) is CloseReceived:
                self._close_received(event)
                return
        if failure is not None:
            self.fail(failure.code, failure.reason)
        elif self.reader.held_back:
            self._pause_reading()
            self._parse_held_back_soon()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _parse_held_back_soon(self) -> None:
        """Parse what the reader held back on a later loop turn, if the handler left room
        (a sync handler takes each message at once; a busy one first takes some)."""
        if not self._parse_scheduled and self._held < self.options.max_message_size:
            self._parse_scheduled = True
            self.state.loop.call_soon(self._parse_held_back)

    def _parse_held_back(self) -> None:
        self._parse_scheduled = False
        if self.status != CLOSED:
            self._parse(b"")
            self._taken(0)

    def _taken(self, size: int) -> None:
        """The handler took a message of `size`: go on parsing, then reading, once there is
        room (the inbox half empty, what is held under max_message_size)."""
        self._held -= size
        if not self._reading_paused or self.status != OPEN:
            return
        if self.reader.held_back:
            self._parse_held_back_soon()
        elif (
            len(self._inbox) < MAX_INBOX // 2
            and self._running < MAX_INBOX // 2
            and self._held < self.options.max_message_size
        ):
            self._reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # The outbound budget is checked on every send; this only ends direct writes (and
        # tells the budget what a direct write left in the transport).
        self._paused = True
        self._block()
        self._backlog = self.transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        self._paused = False
        self._backlog = self.transport.get_write_buffer_size()
        self._wants_room = self._room_watch = False
        self._wake_writers()
        if self.status == OPEN:
            self._app.on_drain()
        self._direct_check()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing_step(self._closing.lost())
        self.deadline = INF
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)
        self._out.clear()
        self._wake_writers()
        self.state.websocket_closed(self)
        self._deliver_close()

    @property
    def high_water(self) -> int:
        """The transport's high-water mark, over which an awaited send waits. Under the
        outbound budget, so that resume_writing (-> on_drain) fires before it is reached."""
        return min(64 * 1024, self.options.max_queued_bytes // 2)

    @property
    def queued_bytes(self) -> int:
        """Outbound bytes not yet taken by the kernel: queued here and in the transport."""
        return self._out_bytes + self.transport.get_write_buffer_size()

    def wait_writable(self) -> asyncio.Future[None]:
        """Done once `queued_bytes` is at most `high_water`, or the connection is closing."""
        waiter = self._writable_waiter
        if waiter is None:
            waiter = self._writable_waiter = self.state.loop.create_future()
            self._room_watch = True
        if self.status != OPEN or self.queued_bytes <= self.high_water:
            self._wake_writers()
        return waiter

    def _wake_writers(self) -> None:
        waiter = self._writable_waiter
        if waiter is not None:
            self._writable_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _direct_check(self) -> None:
        """Allow direct writes when nothing stands in their way: open, nothing queued here,
        the transport not paused, no deflate or write delay, the app holding nothing back;
        on its set's fast list when it is a member of exactly one."""
        if (
            self._direct_capable
            and self.status == OPEN
            and not self._out
            and not self._paused
            and not self._direct_hold
        ):
            if self.direct_after == BLOCKED:
                sets = self._sets
                if len(sets) == 1:  # onto the set's fast list (inline: a burst's every turn)
                    self.direct_after = ON_SET
                    wire_set, key = sets[0]
                    del wire_set.rest[key]
                    wire_set.fast[self] = self.transport
                    self._fast_set = wire_set
                    self._fast_seq = wire_set.seq
                    self._fast_base = wire_set.sent
                else:
                    self.direct_after = DIRECT
        else:
            self._block()

    def join_set(self, wire_set: WireSet[Any], key: Any) -> None:
        """Now a member of `wire_set` under `key` (`WireSet.add`)."""
        self._block()
        self._sets.append((wire_set, key))
        self._direct_check()

    def part_set(self, wire_set: WireSet[Any]) -> None:
        """No longer a member of `wire_set` (`WireSet.remove`)."""
        self._block()
        self._sets = [entry for entry in self._sets if entry[0] is not wire_set]
        self._direct_check()

    def hold_direct(self, hold: bool) -> None:
        """The app holds frames back (True: direct writes would overtake them) or not."""
        self._direct_hold = hold
        self._direct_check()

    def _block(self) -> None:
        """No shared frame is taken directly from now on; the one taken this turn, if any,
        is queued (first: whatever is queued next goes after it). Off its set's fast list."""
        if self.direct_after == ON_SET:  # off the set's fast list, its count settled
            wire_set = self._fast_set
            assert wire_set is not None
            self._fast_set = None
            transport = wire_set.fast.pop(self)
            wire_set.rest[self._sets[0][1]] = self
            given = wire_set.sent - self._fast_base
            pending = wire_set.pending
            taken = self._fast_seq < wire_set.pending_seq
            if taken and pending is not None and not pending.written:
                # Taken and not written yet: written in its own queue, first.
                pending.move(transport)
                frame = pending.frame
                given -= len(frame)  # the flush counts it
                self._queue_taken(frame)
            self.bytes_counted += given
        self.direct_after = BLOCKED
        shared = self.shared
        if shared is not None:
            self.shared = None
            if not shared.written:
                shared.move(self.transport)
                frame = shared.frame
                self.bytes_counted -= len(frame)  # the flush counts it
                self._queue_taken(frame)

    def _queue_taken(self, frame: bytes) -> None:
        """Queue a shared frame taken without the queue and not written yet."""
        if not self._out:
            self._schedule_flush(self)
        self._out.append(frame)
        self._out_bytes += len(frame)

    def _leave_direct(self) -> None:
        """A frame is about to be queued: nothing taken directly may be overtaken by it, and
        what direct writes left in the transport counts against the budget."""
        self._block()
        self._backlog = self.transport.get_write_buffer_size()

    # --- what the upgrade request's Exchange asks of its connection --------------------------

    eof = False  # the request's side of things: no half-close once upgraded

    @property
    def closed(self) -> bool:
        return self.status == CLOSED

    def closed_future(self) -> asyncio.Future[None]:
        """Completes when the WebSocket is gone (for `request.wait_disconnected()`)."""
        fut = self._closed_future
        if fut is None:
            fut = self._closed_future = self.state.loop.create_future()
            if self.status == CLOSED:
                fut.set_result(None)
        return fut

    # --- sending ---------------------------------------------------------------------------

    def send(self, message: str | bytes) -> bool:
        """Queue a text (str) or binary (bytes) message; False when it was not queued."""
        if self.status != OPEN:
            return False
        deflate = self.deflate
        if deflate is None:
            if isinstance(message, str):
                return self.send_frame(encode_text(message))
            return self.send_frame(encode_binary(message))
        if isinstance(message, str):
            opcode, payload = Opcode.TEXT, message.encode("utf-8")
        else:
            opcode, payload = Opcode.BINARY, bytes(message)
        if deflate.should_compress(len(payload)):
            return self.send_frame(encode_frame(opcode, deflate.compress(payload), rsv1=True))
        return self.send_frame(encode_frame(opcode, payload))

    def send_frame(self, frame: bytes) -> bool:
        """Queue an already encoded frame (shared by a broadcast); over the outbound budget,
        the slow-consumer policy applies."""
        if self.offer_frame(frame):
            return True
        return self.status == OPEN and self._over_budget()

    def offer_frame(self, frame: bytes) -> bool:
        """Queue `frame` if it fits in the outbound budget now; False (and nothing else
        happens) when it does not or the connection is closing.

        The budget counts what is queued here plus what the transport still held at the last
        flush (it can only have shrunk since), so the hot path makes no transport call. A frame
        that finds nothing queued and the transport under its high-water mark is taken even
        when it alone is over the budget: one message never meets the slow-consumer policy.
        """
        if self.status != OPEN:
            return False
        if self.direct_after != BLOCKED:
            self._leave_direct()
        queued = self._out_bytes + len(frame)
        if queued + self._backlog > self.options.max_queued_bytes and (
            self._out_bytes or self._backlog > self.high_water
        ):
            self._wants_room = self._room_watch = True
            return False
        if not self._out:
            self._schedule_flush(self)
        self._out.append(frame)
        self._out_bytes = queued
        return True

    def _queue(self, frame: bytes) -> None:
        """Queue a frame outside the budget (control frames)."""
        if self.direct_after != BLOCKED:
            self._leave_direct()
        if not self._out:
            self._schedule_flush(self)
        self._out.append(frame)
        self._out_bytes += len(frame)

    def flush(self) -> None:
        """Write everything queued since the last flush in one system call."""
        out = self._out
        if not out:
            return
        n = self._out_bytes
        self._out = []
        self._out_bytes = 0
        if self.status != CLOSED:
            self.bytes_counted += n
            stats = self.state.stats
            stats.bytes_sent += n
            stats.ws_frames_sent += len(out)
            transport = self.transport
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)
            self._backlog = transport.get_write_buffer_size()
            if self._room_watch:
                self._room_after_write()
            if self._direct_capable:
                self._direct_check()

    def _room_after_write(self) -> None:
        """After a flush, tell what waits for room that there is some: unless the transport is
        over its high-water mark, it never paused and no resume_writing will."""
        if self._writable_waiter is not None and self._backlog <= self.high_water:
            self._wake_writers()  # over it, resume_writing will
        if self._wants_room and self.status == OPEN:
            # The kernel took all of it: tell the app now.
            self._wants_room = False
            self._app.on_drain()
        self._room_watch = self._wants_room or self._writable_waiter is not None

    def _over_budget(self) -> bool:
        stats = self.state.stats
        if self.options.slow_consumer == "drop":
            stats.ws_dropped += 1
            return False
        stats.ws_slow_closed += 1
        log.info("%s:%s slow consumer closed", *self.peer)
        self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
        return False

    def ping(self, data: bytes = b"") -> None:
        if self.status == OPEN:
            self._queue(encode_ping(data))

    # --- closing ---------------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the close handshake; the TCP connection ends when the peer answers (or not)."""
        self._closing_step(self._closing.close(code, reason))

    def fail(self, code: int, reason: str) -> None:
        """A protocol violation or policy: send the close frame and end the connection."""
        if self.status == CLOSED:
            return
        log.info("%s:%s websocket closed %d %s", self.peer[0] or "unix", self.peer[1], code, reason)
        # What was queued before the failure (say, echoes of valid messages) goes first.
        self._closing_step(self._closing.fail(code, reason))

    def _close_received(self, event: CloseReceived) -> None:
        self._closing_step(self._closing.receive(event.code, event.reason))

    def _closing_step(self, step: CloseStep) -> None:
        """Carry out a step of the close handshake: its close frame, then the TCP connection
        (the server ends it once the handshake is over, RFC 6455 7.1.1)."""
        handshake = self._closing
        if handshake.first is not None:
            self.close_code, self.close_reason = handshake.first
        self.status = _STATUS[handshake.state]
        self._block()
        if step.send is not None:
            self._queue(encode_close(*step.send))
        if step.tcp is Tcp.KEEP:
            return
        self.flush()
        self._wake_writers()
        if step.tcp is Tcp.AWAIT_CLOSE:
            self.deadline = self.state.now + self.options.close_timeout
        else:
            self.transport.close()

    def on_timeout(self) -> None:
        """The current deadline passed: send a ping, give up on a silent peer, or abort."""
        if self.status == CLOSING:
            self.transport.abort()
        elif self._ping_sent:
            self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        else:
            self._ping_sent = True
            self._queue(encode_ping(b""))
            self.deadline = self.state.now + self.options.ping_timeout

    def begin_shutdown(self) -> None:
        self.close(*self.state.ws_shutdown_close)  # 1001, or 1012 when restarting

    def abort(self) -> None:
        self._closing_step(self._closing.lost())
        self.transport.abort()

    # --- Served: what the server and stats read ----------------------------------------------

    @property
    def handler(self) -> object:
        """The app its messages go to."""
        return self._app

    def disconnect(self, code: int, reason: str) -> None:
        """Close on an operator's word, with `code` and `reason`."""
        self.close(code, reason)

    def queued(self) -> int:
        """Frames queued for this tick's write plus the transport's buffer at the last flush
        or pause (no transport call; shared frames written since, `shared_write`, left it
        under the high-water mark)."""
        return self._backlog + self._out_bytes

    def describe(self) -> ConnectionInfo:
        """Open or closing, the upgrade request's path, and the bytes waiting to be sent."""
        try:
            buffered = int(self.transport.get_write_buffer_size())
        except Exception:  # a transport closing under us
            buffered = 0
        request = getattr(self._app, "request", None)
        return ConnectionInfo(
            "open" if self.status == OPEN else "closing",
            None if request is None else request.path,
            buffered + self._out_bytes,
        )

    def _schedule_ping(self) -> None:
        interval = self.options.ping_interval
        if self.status == OPEN:
            self.deadline = self.state.now + interval if interval > 0 else INF

    # --- delivering to the app, in order ----------------------------------------------------

    def _deliver(self, message: str | bytes) -> None:
        if self.options.concurrent:
            self._deliver_concurrently(message)
            return
        if self._pump is not None:
            if self._inbox is _NO_INBOX:
                self._inbox = deque()
            self._inbox.append(message)
            self._held += len(message)
            if len(self._inbox) >= MAX_INBOX or self._held >= self.options.max_message_size:
                self._pause_reading()
            return
        self._call(self._app.on_message, message)

    def _deliver_concurrently(self, message: str | bytes) -> None:
        try:
            result = self._app.on_message(message)
        except Exception:
            log.exception("error in the WebSocket handler")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if result is None or not isinstance(result, Awaitable):
            return
        self._running += 1
        size = len(message)
        self._held += size
        if self._running >= MAX_INBOX or self._held >= self.options.max_message_size:
            self._pause_reading()
        self.state.loop.create_task(self._run_one(result, size))

    async def _run_one(self, pending: Awaitable[None], size: int) -> None:
        try:
            await pending
        except Exception:
            log.exception("error in the WebSocket handler")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._running -= 1
            self._taken(size)

    def _deliver_close(self) -> None:
        if self._pump is not None:
            if self._inbox is _NO_INBOX:
                self._inbox = deque()
            self._inbox.append(_CLOSED)
            return
        self._call(self._app.on_close, self.close_code, self.close_reason)
        if self._pump is None:
            self._release()

    def _release(self) -> None:
        """The handler has seen the close: let go of it, so that the connection, the handler
        and its request (which point at each other) are freed at once, not by the cyclic GC."""
        self._app = _RELEASED

    def _call(self, method: Any, *args: Any) -> None:
        try:
            result = method(*args)
        except Exception:
            log.exception("error in the WebSocket handler")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if result is not None and isinstance(result, Awaitable):
            self._pump = self.state.loop.create_task(self._run_pump(result))

    async def _run_pump(self, first: Awaitable[None]) -> None:
        app = self._app
        try:
            await first
            inbox = self._inbox
            handled = 0
            while inbox:
                handled += 1
                if handled % YIELD_EVERY == 0:
                    # Handlers that never suspend would otherwise hold the loop for a whole
                    # read's worth of messages: let the writes they queued go out.
                    await asyncio.sleep(0)
                    if not inbox:
                        break
                item = inbox.popleft()
                if item is _CLOSED:
                    result = app.on_close(self.close_code, self.close_reason)
                else:
                    self._taken(len(item))
                    result = app.on_message(item)
                if result is not None:
                    await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error in the WebSocket handler")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._pump = None
            if self._inbox and self._inbox[-1] is _CLOSED:
                self._inbox.clear()
                self._call(app.on_close, self.close_code, self.close_reason)
            if self.status == CLOSED and self._pump is None and not self._inbox:
                self._release()


class SendResult:
    """What `WebSocketHandler.send` returns: true when the message was queued, false when the
    connection is closing or the slow-consumer policy dropped it; awaiting it also waits until
    the outbound buffer is at most its high-water mark (or the connection is closing), then
    gives the same bool. Not awaiting it is fine: it is no coroutine."""

    __slots__ = ("_connection", "queued")

    def __init__(self, connection: WebSocketConnection, queued: bool) -> None:
        self._connection = connection
        self.queued = queued

    def __bool__(self) -> bool:
        return self.queued

    def __repr__(self) -> str:
        return f"<SendResult queued={self.queued}>"

    def __await__(self) -> Generator[Any, None, bool]:
        conn = self._connection
        if conn.status == OPEN and conn.queued_bytes > conn.high_water:
            yield from conn.wait_writable()
        return self.queued
