"""The HTTP/1.1 connection: an asyncio.Protocol that moves bytes between socket and app.

Requests are parsed in `data_received` and answered strictly in order (pipelining), at most
its share of TURN_REQUESTS per loop turn: the rest of a read waits in a backlog (reading
paused) for the next turn, so a connection's flood cannot hold up the others. Each
connection is in one timer phase: IDLE (keep-alive timeout), HEAD (header timeout), BODY (body
read timeout and the body's minimum rate), BUSY (no timeout while the app answers) or SEND (the
write buffer is full: the client must take some of it within the send timeout). The server's
ticker enforces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from asyncio import current_task
from collections import deque
from collections.abc import Callable
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, BinaryIO

if sys.platform == "linux":
    import fcntl
    import termios

from rtserve.errors import ProtocolError
from rtserve.protocol.http11 import (
    CONTINUE_RESPONSE,
    Header,
    RequestHead,
    RequestParser,
    response_head,
)
from rtserve.server.exchange import ClientDisconnected, Exchange
from rtserve.server.sendfile import sendfile_in_thread
from rtserve.server.transport import ConnectionInfo

if TYPE_CHECKING:
    from rtserve.server.prepared import PreparedAnswer
    from rtserve.server.state import ServerState
    from rtserve.server.transport import UpgradedProtocol

log = logging.getLogger("rtserve.server")
# Shared by every connection that never pipelines; replaced before any append.
_NO_QUEUE: deque[Exchange] = deque(maxlen=0)

IDLE, HEAD, BODY, BUSY, SEND = range(5)
PHASE_NAMES = ("idle", "head", "body", "busy", "send")
# The ioctl that reads a TCP socket's unacknowledged send queue (SIOCOUTQ), where there is one.
_OUTQ: int | None = termios.TIOCOUTQ if sys.platform == "linux" else None
INF = float("inf")
# Requests started per loop turn: one read can hold thousands of pipelined requests, and every
# other connection waits while they are answered. Connections with more to parse than their
# share share TURN_REQUESTS, each at least MIN_TURN_REQUESTS, so a turn stays short however many
# flood at once.
TURN_REQUESTS = 128
MIN_TURN_REQUESTS = 2


class HTTPConnection(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (and 1.0): the `ExchangeTransport` of its
    exchanges, and `Served` while it speaks HTTP."""

    kind = "http"
    handler = None

    __slots__ = (
        "_backlog",
        "_backlog_at",
        "_backlog_scheduled",
        "_body_budget",
        "_body_mark",
        "_body_piece_deadline",
        "_closed_future",
        "_continue_sent",
        "_disconnect_callback",
        "_drain_waiter",
        "_feeding",
        "_last",
        "_reading_paused_backlog",
        "_reading_paused_body",
        "_reading_paused_queue",
        "_send_left",
        "_send_since",
        "_starting",
        "_turn_left",
        "_upgrade_data",
        "_upgrade_exchange",
        "_watched",
        "active",
        "bytes_in",
        "bytes_out",
        "closed",
        "deadline",
        "eof",
        "must_close",
        "parser",
        "peer",
        "phase",
        "queue",
        "receiving",
        "state",
        "transport",
        "upgraded",
        "writing_paused",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.parser: RequestParser | None = self._new_parser()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer: tuple[str, int] = ("", 0)
        self.active: Exchange | None = None
        self.receiving: Exchange | None = None
        self.queue: deque[Exchange] = _NO_QUEUE  # a real deque once requests pipeline
        self.phase = IDLE
        self.deadline = INF
        self.closed = False
        self.must_close = False
        self.eof = False
        self.writing_paused = False
        self._reading_paused_queue = False
        self._reading_paused_body = False
        self._reading_paused_backlog = False
        # A read not parsed in full (from _backlog_at on) waits for a later turn; and the
        # requests left to this turn.
        self._backlog = b""
        self._backlog_at = 0
        self._backlog_scheduled = False
        self._feeding = False  # inside _feed, which rearms the timer when done
        self._turn_left = TURN_REQUESTS
        self._send_left = 0
        self._send_since = 0.0
        self._body_budget = INF
        self._body_mark = 0
        self._body_piece_deadline = INF
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed_future: asyncio.Future[None] | None = None
        self._disconnect_callback: Callable[[], object] | None = None
        self._continue_sent = False
        self._starting = False
        self._last: Exchange | None = None
        self.upgraded: asyncio.Protocol | None = None
        self._upgrade_data: bytes | None = None
        self._upgrade_exchange: Exchange | None = None
        self._watched: asyncio.Future[None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        state = self.state
        limits = state.settings.limits
        self.transport.set_write_buffer_limits(limits.write_buffer_high, limits.write_buffer_low)
        state.connection_opened(self)
        # A new connection must send its first request head in time (slowloris).
        self.phase = HEAD
        self.deadline = state.now + state.settings.timeouts.header

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._drop_backlog()
        self.state.connection_closed(self)
        if self.parser is not None:
            self.parser.close()  # it and httptools' parser point at each other (and at us)
        for fut in (self._drain_waiter, self._closed_future, self._watched):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._drain_waiter = None
        self._disconnected()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._send_phase()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.phase == SEND:
            self._rearm()
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self.active is None and self.queue:
            self._start_queued()

    def data_received(self, data: bytes) -> None:
        n = len(data)
        state = self.state
        self.bytes_in += n
        state.stats.bytes_received += n
        if self._backlog:  # read before pausing took effect: after what waits, in order
            self._backlog = self._backlog[self._backlog_at :] + data
            self._backlog_at = 0
            return
        # A new loop turn for this connection: its share of the turn's requests.
        self._turn_left = self._turn_share() if state.backlogged else TURN_REQUESTS
        self._feed(data)

    def _turn_share(self) -> int:
        """Requests this connection may start in this loop turn."""
        waiting = self.state.backlogged + (0 if self._backlog else 1)
        return max(MIN_TURN_REQUESTS, TURN_REQUESTS // waiting)

    def _drop_backlog(self) -> tuple[bytes, int]:
        """Take what waits for a later turn (b"" when nothing does)."""
        data = self._backlog
        if data:
            self._backlog = b""
            self.state.backlogged -= 1
        return data, self._backlog_at

    def _feed(self, data: bytes, start: int = 0) -> None:
        # The parser calls request_head/_body/_end/_upgrade below as it reads.
        parser = self.parser
        if parser is None:  # let go of while an answer waited: the client asks again
            parser = self.parser = self._new_parser()
        self._feeding = True
        try:
            stop = parser.feed_until(data, self._turn_left, start)
        except ProtocolError as exc:
            self._drop_backlog()
            self.protocol_error(exc)
            return
        finally:
            self._feeding = False
            if self.parser is not parser and parser is not None:
                parser.close()  # replaced (a declined upgrade) or dropped (an upgrade)
        if stop < len(data) and not self.closed:
            self._stash(data, stop)
        elif self.active is not None:
            self._release_parser_while_answering()
        self._rearm()

    def _release_parser_while_answering(self) -> None:
        """Free the parser (about 1.2 KB with httptools') while the request read last is being
        answered later or streamed, with nothing behind it: a long poll or an SSE stream may
        wait for minutes and most never send another request. The next read makes a new one."""
        active = self.active
        parser = self.parser
        if (
            active is not None
            and (active.deferred or active.started)
            and active is not self.receiving
            and active.head.keep_alive  # after `Connection: close` the parser refuses more
            and not self.queue
            and parser is not None
            and not parser.in_head
            and self.upgraded is None
        ):
            parser.close()
            self.parser = None

    def _stash(self, data: bytes, at: int) -> None:
        """This turn's requests are spent: keep `data[at:]` for the next turn, stop reading."""
        if not self._backlog:
            self.state.backlogged += 1
        self._backlog, self._backlog_at = data, at
        if not self._reading_paused_backlog:
            self._reading_paused_backlog = True
            self.transport.pause_reading()
        if not self._reading_paused_queue:
            self._schedule_backlog()

    def _schedule_backlog(self) -> None:
        if not self._backlog_scheduled:
            self._backlog_scheduled = True
            self.state.loop.call_soon(self._feed_backlog, context=self.state.context)

    def _feed_backlog(self) -> None:
        """A later turn: parse on where the last one stopped."""
        self._backlog_scheduled = False
        if self.closed or self.upgraded is not None:
            self._drop_backlog()
            return
        if self._reading_paused_queue or not self._backlog:
            return  # the queue is full: its draining schedules this again
        self._turn_left = self._turn_share()
        data, at = self._drop_backlog()
        self._feed(data, at)
        if not self._backlog and self._reading_paused_backlog and not self.closed:
            self._reading_paused_backlog = False
            if not (self._reading_paused_queue or self._reading_paused_body):
                self.transport.resume_reading()

    def _new_parser(self) -> RequestParser:
        limits = self.state.settings.limits
        return RequestParser(
            max_head_size=limits.max_head_size,
            max_headers=limits.max_headers,
            max_body_size=limits.max_body_size,
            sink=self,
        )

    # --- RequestSink: what the parser reads --------------------------------------------------

    def request_body(self, data: bytes) -> None:
        receiving = self.receiving
        if receiving is not None:
            receiving._feed(data)

    def request_upgrade(self, data: bytes) -> None:
        upgraded = self.upgraded
        if upgraded is not None:  # switched already, while the request ended
            if data:
                self.state.stats.bytes_received -= len(data)  # counted here already
                upgraded.data_received(data)
            return
        exchange = self._last
        if exchange is None or exchange.finished:
            self._declined_upgrade(data)
            return
        # Not answered yet: hold what followed until we know which protocol it speaks.
        self._upgrade_data = data
        self._upgrade_exchange = exchange
        self.transport.pause_reading()

    def _declined_upgrade_later(self, data: bytes) -> None:
        if not self.closed:
            self._feed(data)  # counted when it arrived

    def _declined_upgrade(self, data: bytes) -> None:
        # Answered as plain HTTP: the client goes on with HTTP/1.1, parsed afresh.
        self.parser = self._new_parser()
        if data:
            self._feed(data)  # counted when it arrived

    def eof_received(self) -> bool | None:
        self.eof = True
        # Whoever waits for the client to go (long polls, streams) learns it now; what was
        # already asked is still answered on the half-closed connection.
        fut = self._closed_future
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._disconnected()
        if self.active is None and not self.queue and not self._backlog:
            self.transport.close()
            return None
        return True  # half-close: finish answering what was asked, then close

    # --- request flow ----------------------------------------------------------------------

    def request_head(self, head: RequestHead) -> None:
        self._turn_left -= 1
        exchange = Exchange(self, head, perf_counter())
        self.receiving = self._last = exchange
        if self.active is None and not self.queue and not self.writing_paused:
            self._activate(exchange)
        else:
            if self.queue is _NO_QUEUE:
                self.queue = deque()
            self.queue.append(exchange)
            if len(self.queue) >= self.state.settings.limits.max_pipelined and not (
                self._reading_paused_queue
            ):
                self._reading_paused_queue = True
                self.transport.pause_reading()

    def request_end(self) -> None:
        exchange = self.receiving
        if exchange is None:
            return
        self.receiving = None
        if not exchange.body_complete:
            exchange._complete()
        if exchange is self.active and not exchange.streaming and exchange.task is None:
            if not exchange.started and not exchange.deferred:
                self._dispatch(exchange)

    def _activate(self, exchange: Exchange) -> None:
        self.active = exchange
        self._continue_sent = False
        app = self.state.app
        if app.wants_stream(exchange):
            exchange._start_streaming()
        elif not exchange.body_complete:
            self.send_continue(exchange)  # dispatched when the body is in (request_end)
            return
        try:  # _dispatch(exchange), without the call
            task = app.dispatch(exchange)
        except Exception:
            log.exception("request dispatch failed")
            self.internal_error(exchange)
            return
        if task is not None:
            exchange.task = task
            self.state.track(task, exchange)

    def send_continue(self, exchange: Exchange) -> None:
        """Answer `Expect: 100-continue` once, when the body is actually wanted."""
        if exchange.head.expect_continue and not self._continue_sent and not exchange.started:
            self._continue_sent = True
            if not exchange.body_complete and not self.closed:
                self._sent(len(CONTINUE_RESPONSE))
                self.transport.write(CONTINUE_RESPONSE)

    def _dispatch(self, exchange: Exchange) -> None:
        try:
            task = self.state.app.dispatch(exchange)
        except Exception:
            log.exception("request dispatch failed")
            self.internal_error(exchange)
            return
        if task is not None:
            exchange.task = task
            self.state.track(task, exchange)

    def internal_error(self, exchange: Exchange) -> None:
        """`exchange`'s handler failed: answer 500, or cut the response short if it started."""
        if self.closed and not exchange.finished:
            exchange._finish()  # nobody to answer: just account for it
        elif not exchange.started:
            exchange.respond(
                500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error\n"
            )
        elif not exchange.finished:
            # Mid-body: close without the last chunk so the client sees a cut-off body.
            self.close()
            exchange.end()

    def exchange_finished(self, exchange: Exchange) -> None:
        """Called by an exchange when its response is complete."""
        state = self.state
        stats = state.stats
        stats.requests_total += 1
        status = exchange.status
        stats.responses_by_class[status // 100 if status < 600 else 0] += 1
        if state.access_log:
            state.log_access(exchange)
        if self._last is exchange:
            self._last = None  # no cycle left between the connection and a finished exchange
        if exchange is not self.active or self.upgraded is not None:
            return
        if exchange is self._upgrade_exchange:
            data, self._upgrade_data, self._upgrade_exchange = self._upgrade_data, None, None
            self.transport.resume_reading()
            if self.parser is not None:
                self.parser.close()
            self.parser = self._new_parser()
            if data:
                self.state.loop.call_soon(self._declined_upgrade_later, data)
        self.active = None
        if not exchange.body_complete:
            self.must_close = True  # the rest of its body is unread: the stream is unusable
        queue = self.queue
        if (
            self.must_close
            or not exchange.head.keep_alive
            or state.shutting_down
            or (self.eof and not queue and not self._backlog)
        ):
            self.close()
        elif queue:
            if current_task() is not None:
                # Finishing inside a handler's Task: start the next request from the loop, so
                # it does not run inside (or inherit the context of) the previous one.
                state.loop.call_soon(self._start_queued, context=state.context)
            else:
                self._start_queued()
        elif not self._feeding:  # else _feed rearms once it has parsed the read
            self._rearm()

    def _start_queued(self) -> None:
        """Answer queued pipelined requests in order, in a loop (never by recursion), this
        turn's share of them before going on in a later turn."""
        if self._starting:
            return  # an outer call is looping already and will pick up the next one
        self._starting = True
        started, share = 0, self._turn_share()
        try:
            queue = self.queue
            while queue and self.active is None and not self.writing_paused and not self.closed:
                if started == share:
                    self.state.loop.call_soon(self._start_queued, context=self.state.context)
                    break
                started += 1
                exchange = queue.popleft()
                if self._reading_paused_queue and len(queue) < (
                    self.state.settings.limits.max_pipelined // 2
                ):
                    self._reading_paused_queue = False
                    if self._backlog:
                        self._schedule_backlog()  # it resumes reading once parsed
                    elif not (self._reading_paused_body or self._reading_paused_backlog):
                        self.transport.resume_reading()
                self._activate(exchange)
        finally:
            self._starting = False
        self._rearm()

    def keep_alive_after(self, exchange: Exchange) -> bool:
        """Whether the connection stays open after this exchange's response."""
        return (
            exchange.head.keep_alive
            and exchange.body_complete  # else the unread rest of it ends the connection
            and not self.must_close
            and not self.state.shutting_down
            and not (self.eof and not self.queue and not self._backlog)
        )

    # --- timers ----------------------------------------------------------------------------

    def _rearm(self) -> None:
        if self.writing_paused:
            if self.phase != SEND:
                self._send_phase()
            return
        state = self.state
        timeouts = state.settings.timeouts
        receiving = self.receiving
        if receiving is not None and receiving is self.active and not self._reading_paused_body:
            # Each piece must come within timeouts.body, and the whole body at an average of
            # limits.min_body_rate: a trickle of tiny pieces cannot hold the connection.
            rate = state.settings.limits.min_body_rate
            if self.phase != BODY:
                self.phase = BODY
                self._body_budget = state.now + timeouts.body if rate else INF
            elif rate:
                self._body_budget += (self.bytes_in - self._body_mark) / rate
            self._body_mark = self.bytes_in
            self._body_piece_deadline = state.now + timeouts.body
            self.deadline = min(self._body_piece_deadline, self._body_budget)
        elif self.active is not None or self.queue or self._backlog:
            # Busy answering (reading may be paused by us): the client is not the one late.
            self.phase = BUSY
            self.deadline = INF
        elif self.parser is not None and self.parser.in_head:
            if self.phase != HEAD:
                self.phase = HEAD
                self.deadline = state.now + timeouts.header
        else:  # idle since now: a request answered within one read counts as activity too
            self.phase = IDLE
            self.deadline = state.now + timeouts.keepalive

    def _send_phase(self) -> None:
        """Our answers fill the write buffer: the client has `timeouts.send` to take some."""
        self.phase = SEND
        self._send_left = self._unsent()
        self._send_since = monotonic()  # the ticker's clock is coarse: this one is exact
        self.deadline = self.state.now + self.state.settings.timeouts.send

    def _unsent(self) -> int:
        """Bytes written and not yet taken by the client: the transport's buffer, plus the
        kernel's send queue where it says (a slow reader drains that one first)."""
        size = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if _OUTQ is not None and sock is not None:
            with contextlib.suppress(OSError, ValueError):
                size += int.from_bytes(fcntl.ioctl(sock.fileno(), _OUTQ, bytes(4)), sys.byteorder)
        return size

    def on_timeout(self) -> None:
        """The current phase's deadline passed."""
        phase = self.phase
        self.deadline = INF
        if phase == SEND:
            if self._unsent() < self._send_left:  # it took some: a slow reader, not a stopped one
                self._send_phase()
                return
            send = self.state.settings.timeouts.send
            waited = monotonic() - self._send_since
            if waited < send:  # the ticker's coarse clock fired early: the rest of the time
                self.deadline = self.state.now + (send - waited)
                return
            self.state.stats.limit_hits += 1
            log.warning(
                "%s:%s cut off: took nothing of its answers for %g s (timeouts.send)",
                self.peer[0] or "unix",
                self.peer[1],
                self.state.settings.timeouts.send,
            )
            self.transport.abort()
        elif phase == IDLE:
            self.close()
        elif phase == HEAD:
            self.state.limit_hit(self, 408, "request head not received in time")
            self._send_error_and_close(408, "request head not received in time")
        elif phase == BODY:
            # Which deadline it was: the average rate's (the budget), or the last piece's.
            slow = self._body_budget < self._body_piece_deadline
            reason = "request body too slow" if slow else "request body stalled"
            self.state.limit_hit(self, 408, reason)
            self._send_error_and_close(408, reason)

    # --- errors and closing ----------------------------------------------------------------

    def protocol_error(self, exc: ProtocolError) -> None:
        self.state.limit_hit(self, exc.status, exc.reason)
        self._send_error_and_close(exc.status, exc.reason)

    def _send_error_and_close(self, status: int, reason: str) -> None:
        active = self.active
        if not self.closed and (active is None or not active.started):
            body = f"{status} {reason}\n".encode()
            head = response_head(
                status,
                [(b"content-type", b"text/plain; charset=utf-8")],
                content_length=len(body),
                keep_alive=False,
                date=self.state.date_line,
                server=self.state.server_line,
            )
            self._sent(len(head) + len(body))
            self.transport.write(head + body)
            if active is not None:
                active.started = active.finished = True
        self.close()

    def begin_shutdown(self) -> None:
        """Server shutdown: an idle connection closes now, a busy one after its response."""
        if self.active is None and not self.queue and not self._backlog:
            self.close()

    def disconnect(self, code: int, reason: str) -> None:
        """Close on an operator's word (HTTP has no close code: now, after what was written)."""
        self.close()

    def queued(self) -> int:
        """Bytes in the transport's write buffer."""
        return self.transport.get_write_buffer_size()

    def describe(self) -> ConnectionInfo:
        """The timer phase, the path being answered and the bytes waiting to be sent."""
        active = self.active
        try:
            queued = int(self.transport.get_write_buffer_size())
        except Exception:  # a transport closing under us
            queued = 0
        return ConnectionInfo(
            PHASE_NAMES[self.phase], None if active is None else active.head.path, queued
        )

    def upgrade(self, exchange: Exchange, response: bytes, protocol: UpgradedProtocol) -> None:
        """Answer `exchange` with `response` (a 101) and hand the socket to `protocol`."""
        exchange.started = True
        exchange.status = 101
        self.state.stats.http_latency.observe(perf_counter() - exchange.start_time)
        self._sent(len(response))
        self.transport.write(response)
        self.upgraded = protocol
        self.deadline = INF
        self.parser = None  # the socket speaks another protocol now: free the HTTP parser
        state = self.state
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        state.connection_closed(self)  # after the new protocol registered itself
        exchange._finish()
        pending = self._upgrade_data
        if self._upgrade_exchange is not None:
            self._upgrade_data = self._upgrade_exchange = None
            self.transport.resume_reading()
        if pending:
            state.stats.bytes_received -= len(pending)  # counted here already
            protocol.data_received(pending)

    def _sent(self, n: int) -> None:
        """Count `n` bytes written to the client."""
        self.bytes_out += n
        self.state.stats.bytes_sent += n

    # --- ExchangeTransport: writing for exchanges -------------------------------------------

    def write(self, data: bytes) -> None:
        """Write and count `data` (the caller checked `closed`)."""
        n = len(data)
        self.bytes_out += n
        self.state.stats.bytes_sent += n
        self.transport.write(data)

    def write_response(
        self,
        exchange: Exchange,
        status: int,
        headers: list[Header] | bytes,
        content_length: int,
        body: bytes,
    ) -> None:
        """Write and count a whole response (the caller checked `closed`)."""
        state = self.state
        head = exchange.head
        keep_alive = (  # keep_alive_after(exchange), without the call
            head.keep_alive
            and exchange.body_complete
            and not self.must_close
            and not state.shutting_down
            and not (self.eof and not self.queue and not self._backlog)
        )
        big = len(body) > 4096  # not copied into the head's bytes: written after it
        data = response_head(
            status,
            headers,
            content_length=content_length,
            keep_alive=keep_alive,
            date=state.date_line,
            server=state.server_line,
            http10=head.version == "1.0",
            body=b"" if big else body,
        )
        if big:
            n = len(data) + len(body)
            self.transport.writelines((data, body))
        else:
            n = len(data)
            self.transport.write(data)
        self.bytes_out += n
        state.stats.bytes_sent += n

    def write_prepared(self, exchange: Exchange, answer: PreparedAnswer) -> None:
        """Write and count `answer`'s shared framing for this connection."""
        state = self.state
        data = answer.framed(
            state.date_line,
            state.server_line,
            self.keep_alive_after(exchange),
            exchange.head.version == "1.0",
        )
        n = len(data)
        self.bytes_out += n
        state.stats.bytes_sent += n
        self.transport.write(data)

    def write_head(
        self,
        exchange: Exchange,
        status: int,
        headers: list[Header] | bytes,
        content_length: int | None,
    ) -> bool:
        """Write the head of a streamed response; True when its body goes chunked."""
        http10 = exchange.head.version == "1.0"
        if content_length is None and http10:
            self.must_close = True  # HTTP/1.0 has no chunking: the body ends when we close
        state = self.state
        head = response_head(
            status,
            headers,
            content_length=content_length,
            keep_alive=self.keep_alive_after(exchange),
            date=state.date_line,
            server=state.server_line,
            http10=http10,
        )
        self.write(head)
        return content_length is None and not http10

    def buffered(self) -> int:
        """Bytes written and not yet handed to the socket."""
        return self.transport.get_write_buffer_size()

    async def send_file(self, file: BinaryIO, offset: int, count: int) -> None:
        """Send `count` bytes of `file` from `offset`: the kernel's sendfile on plain TCP (from a
        worker thread under uvloop), reads in a worker thread under TLS. Raises
        ClientDisconnected."""
        self._sent(count)
        await self.drain()
        loop = self.state.loop
        if self.state.ssl_context is None and hasattr(os, "sendfile"):
            try:
                await loop.sendfile(self.transport, file, offset, count, fallback=False)
                return
            except (NotImplementedError, asyncio.SendfileNotAvailableError):
                pass  # uvloop: do it ourselves below
            try:
                sent = await sendfile_in_thread(self, file.fileno(), offset, count)
            except OSError as exc:  # the client reset, or stalled past timeouts.send
                self.abort()
                raise ClientDisconnected(str(exc)) from None
            if sent != count:
                self.abort()  # a short body: the client must not take it for a whole one
                raise ClientDisconnected("file body cut short")
            return
        remaining, position = count, offset
        while remaining > 0:
            size = min(remaining, 256 * 1024)
            data = await loop.run_in_executor(None, os.pread, file.fileno(), size, position)
            if not data:
                raise ClientDisconnected("file shrank while being sent")
            if self.closed:
                raise ClientDisconnected("client disconnected")
            self.transport.write(data)
            position += len(data)
            remaining -= len(data)
            await self.drain()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()

    # --- flow control helpers for exchanges ------------------------------------------------

    async def drain(self) -> None:
        if self.closed:
            raise ClientDisconnected("client disconnected")
        if not self.writing_paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self.state.loop.create_future()
        await waiter
        if self.closed:
            raise ClientDisconnected("client disconnected")

    def closed_future(self) -> asyncio.Future[None]:
        fut = self._closed_future
        if fut is None:
            fut = self._closed_future = self.state.loop.create_future()
            if self.closed or self.eof:
                fut.set_result(None)
        return fut

    def on_disconnect(self, callback: Callable[[], object] | None) -> None:
        self._disconnect_callback = callback
        if callback is not None and (self.closed or self.eof):
            self._disconnected()

    def _disconnected(self) -> None:
        callback = self._disconnect_callback
        if callback is not None:
            self._disconnect_callback = None
            self.state.loop.call_soon(callback, context=self.state.context)

    def watch(self, fut: asyncio.Future[Any]) -> None:
        """Complete `fut` if the connection is lost while something waits on it."""
        self._watched = fut

    def pause_reading_for_body(self) -> None:
        if not self._reading_paused_body and not self.closed:
            self._reading_paused_body = True
            self.transport.pause_reading()

    def resume_reading_for_body(self) -> None:
        if self._reading_paused_body and not self.closed:
            self._reading_paused_body = False
            if not (self._reading_paused_queue or self._reading_paused_backlog):
                self.transport.resume_reading()
