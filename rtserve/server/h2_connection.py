"""The HTTP/2 connection: an asyncio.Protocol over the h2 library, one `H2Stream` per request.

h2 (python-hyper) does the framing, HPACK and flow-control bookkeeping; this module moves
bytes, turns h2's events into exchanges (the same `Exchange` and app dispatch as HTTP/1.1) and
keeps what a client can make the server hold bounded:

- streams: `http2.max_concurrent_streams` open at once (h2 refuses the rest);
- header blocks: `http2.max_header_list_size` decoded (HPACK bombs), h2's own cap of 64
  CONTINUATION frames of `http2.max_frame_size` each (CVE-2024-27316);
- request bodies: `limits.max_body_size` each, and a stream's window is reopened only as the
  app takes its body;
- response bodies: a stream holds at most about `limits.write_buffer_high` beyond the peer's
  window (`writing_paused`, `drain()`), none is framed while the socket's own buffer is full,
  and reading stops then (so control frames' answers cannot pile up);
- abuse: more than `http2.max_resets` resets (rapid reset, CVE-2023-44487) or
  `http2.max_control_frames` SETTINGS/PING/PRIORITY frames and empty DATA frames per 10 s
  ends the connection with GOAWAY ENHANCE_YOUR_CALM;
- time: the preface and first request within `timeouts.header`, an idle connection closed
  after `timeouts.keepalive`, a request body piece within `timeouts.body`, and a stream (or
  the socket) that takes nothing for `timeouts.send` is reset (or cut off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import monotonic, perf_counter
from typing import TYPE_CHECKING

from h2.config import H2Configuration
from h2.connection import H2Connection as H2Protocol
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes, Settings

from rtserve.errors import ProtocolError
from rtserve.protocol.http2 import request_head, tunnel_fields
from rtserve.protocol.http11 import Header
from rtserve.server.exchange import Exchange
from rtserve.server.h2_stream import H2Stream
from rtserve.server.h2_tunnel import StreamTransport
from rtserve.server.transport import ConnectionInfo

if TYPE_CHECKING:
    from rtserve.server.state import ServerState
    from rtserve.server.transport import UpgradedProtocol

log = logging.getLogger("rtserve.server")

INF = float("inf")
ABUSE_WINDOW = 10.0  # seconds over which resets and control frames are counted
LAST_STREAM_ID = 2**31 - 1


class H2Connection(asyncio.Protocol):
    """One client connection speaking HTTP/2: `Served`, and the `StreamOwner` of its streams."""

    kind = "http"
    handler = None

    __slots__ = (
        "_control",
        "_draining",
        "_flush_scheduled",
        "_in_receive",
        "_opened",
        "_resets",
        "_send_left",
        "_send_since",
        "_window_start",
        "blocked",
        "bytes_in",
        "bytes_out",
        "closed",
        "deadline",
        "h2",
        "peer",
        "state",
        "streams",
        "timed",
        "transport",
        "writing_paused",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        settings = state.settings.http2
        self.h2 = H2Protocol(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                # Our response fields are built valid and lower-case (protocol.http2).
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
                SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
                SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        # Initial values are in force at once: the decoder and frame reader must know them.
        self.h2.decoder.max_header_list_size = settings.max_header_list_size
        self.h2.max_inbound_frame_size = settings.max_frame_size
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer: tuple[str, int] = ("", 0)
        self.streams: dict[int, H2Stream] = {}
        self.blocked: dict[H2Stream, None] = {}  # streams with bytes beyond a window, in order
        self.timed: dict[H2Stream, None] = {}  # streams with a body or send deadline
        self.closed = False
        self.writing_paused = False
        self.deadline = INF
        self.bytes_in = 0
        self.bytes_out = 0
        self._in_receive = False
        self._flush_scheduled = False
        self._draining = False  # GOAWAY once the open streams are done; refuse new ones
        self._opened = 0
        self._resets = 0
        self._control = 0
        self._window_start = state.now
        self._send_left = 0
        self._send_since = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        state = self.state
        limits = state.settings.limits
        self.transport.set_write_buffer_limits(limits.write_buffer_high, limits.write_buffer_low)
        state.connection_opened(self)
        state.stats.h2_connections_total += 1
        self.h2.initiate_connection()
        window = self.state.settings.http2.initial_window_size
        if window > 65535:  # the connection's window starts at 64 KiB whatever SETTINGS say
            self.h2.increment_flow_control_window(window - 65535)
        self.deadline = state.now + state.settings.timeouts.header
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connection_closed(self)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.lost()
        self.blocked.clear()
        self.timed.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._send_left = self.transport.get_write_buffer_size()
        self._send_since = monotonic()
        self.deadline = min(self.deadline, self.state.now + self.state.settings.timeouts.send)
        self.transport.pause_reading()  # what a client sends now would only add answers

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.closed:
            self.transport.resume_reading()
        for stream in list(self.blocked):
            self.push(stream)
        for stream in list(self.streams.values()):
            stream.room()
        self._rearm()
        self.flush()

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.bytes_in += n
        self.state.stats.bytes_received += n
        self._in_receive = True
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._handle(event)
                if self.closed:
                    return
        except H2ProtocolError as exc:
            # h2 has queued the GOAWAY (PROTOCOL_ERROR, FRAME_SIZE_ERROR, ...) already.
            self.state.stats.limit_hits += 1
            log.warning("%s:%s HTTP/2 error: %s", self.peer[0] or "unix", self.peer[1], exc)
            self._end_connection()
            return
        finally:
            self._in_receive = False
        self._rearm()
        self.flush()

    def eof_received(self) -> bool | None:
        self._end_connection()
        return None

    # --- h2 events -------------------------------------------------------------------------

    def _handle(self, event: object) -> None:
        if isinstance(event, DataReceived):
            self._data(event)
        elif isinstance(event, RequestReceived):
            self._request(event)
        elif isinstance(event, StreamEnded):
            self._request_end(event.stream_id)
        elif isinstance(event, WindowUpdated):
            self._window_opened(event.stream_id or 0)
        elif isinstance(event, StreamReset):
            self._stream_reset(event)
        elif isinstance(event, (PingReceived, RemoteSettingsChanged, PriorityUpdated)):
            self._control_frame()
            if isinstance(event, RemoteSettingsChanged):
                self._window_opened(0)  # a new initial window may open every stream
        elif isinstance(event, TrailersReceived):
            self._request_end(event.stream_id)  # trailers: ignored
        elif isinstance(event, ConnectionTerminated):
            self._end_connection()

    def _request(self, event: RequestReceived) -> None:
        stream_id: int = event.stream_id
        state = self.state
        settings = state.settings.http2
        self._opened += 1
        state.stats.h2_streams_total += 1
        if stream_id not in self.h2.streams:
            return  # reset later in the same read (and forgotten by h2): nothing to answer
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        if self._draining:
            self.reset(stream, ErrorCodes.REFUSED_STREAM)
            return
        if stream_id == LAST_STREAM_ID or 0 < settings.max_streams <= self._opened:
            self._draining = True  # this one is served; the client must open a new connection
        try:
            head = request_head(event.headers or [])
        except ProtocolError as exc:
            self._refuse(stream, exc.status, exc.reason)
            return
        limit = state.settings.limits.max_body_size
        if head.content_length is not None and head.content_length > limit:
            self._refuse(stream, 413, "request body too large")
            return
        if head.upgrade:
            head.content_length = None  # what follows on the stream is the tunnel's
        elif event.stream_ended is None and head.content_length != 0:
            head.chunked = head.content_length is None  # a body of unknown length follows
        else:
            stream.remote_ended = True
            head.content_length = None
            head.chunked = False
        exchange = Exchange(stream, head, perf_counter())
        stream.exchange = exchange
        if state.app.wants_stream(exchange):
            exchange._start_streaming()
            self._dispatch(exchange)
        elif exchange.body_complete:
            self._dispatch(exchange)
        else:
            stream.send_continue(exchange)
            self._await_body(stream)

    def _refuse(self, stream: H2Stream, status: int, reason: str) -> None:
        """Answer a bad request on its stream; the connection goes on."""
        self.state.stats.limit_hits += 1
        log.warning("%s:%s %d %s", self.peer[0] or "unix", self.peer[1], status, reason)
        body = f"{status} {reason}\n".encode()
        fields: list[Header] = [
            (b":status", b"%d" % status),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ]
        self.send_headers(stream, fields, False)
        stream.ending = True
        stream.write(body)

    def _dispatch(self, exchange: Exchange) -> None:
        try:
            task = self.state.app.dispatch(exchange)
        except Exception:
            log.exception("request dispatch failed")
            exchange.answer_internal_error()
            return
        if task is not None:
            exchange.task = task
            self.state.track(task, exchange)

    def _data(self, event: DataReceived) -> None:
        stream_id: int = event.stream_id
        size: int = event.flow_controlled_length
        if not size:
            if event.stream_ended is None:  # as costly as a PING, to no end (CVE-2019-9518)
                self._control_frame()
            return
        stream = self.streams.get(stream_id)
        exchange = None if stream is None else stream.exchange
        if stream is None or exchange is None or stream.closed:
            self.h2.acknowledge_received_data(size, stream_id)  # nobody wants it
            return
        if exchange.body_complete and not exchange.head.upgrade:
            self.h2.acknowledge_received_data(size, stream_id)  # nobody wants it
            return
        data: bytes = event.data
        if exchange.head.upgrade:
            if stream.tunnel_data(data, size):
                self.h2.acknowledge_received_data(size, stream_id)
            return
        stream.received += len(data)
        if stream.received > self.state.settings.limits.max_body_size:
            self.h2.acknowledge_received_data(size, stream_id)
            if exchange.started:  # answered already (the 413 below, or by the app)
                self.reset(stream, ErrorCodes.CANCEL)
            else:
                exchange.started = exchange.finished = True  # the app answers no more
                self._refuse(stream, 413, "request body too large")
            return
        if stream.body_paused:
            stream.unacked += size
        else:
            self.h2.acknowledge_received_data(size, stream_id)
        exchange._feed(data)
        if self.state.settings.timeouts.body:
            self._time(stream, self.state.now + self.state.settings.timeouts.body)

    def _await_body(self, stream: H2Stream) -> None:
        self._time(stream, self.state.now + self.state.settings.timeouts.body)

    def _request_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.remote_ended = True
        self._untime(stream)
        if stream.tunnel is not None:
            stream.tunnel.eof_received()
        exchange = stream.exchange
        if exchange is not None and not exchange.body_complete:
            exchange._complete()
            if not exchange.streaming and exchange.task is None and not exchange.started:
                self._dispatch(exchange)
        if stream.end_sent:
            self._forget(stream)

    def _stream_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if event.remote_reset:
            self._resets += 1
            self._count_abuse()
        if stream is not None:
            self._forget(stream)

    def _control_frame(self) -> None:
        self._control += 1
        self._count_abuse()

    def _count_abuse(self) -> None:
        """Rapid reset and control-frame floods: GOAWAY ENHANCE_YOUR_CALM past the limits."""
        now = self.state.now
        if now - self._window_start > ABUSE_WINDOW:
            self._window_start, self._resets, self._control = now, 0, 0
            return
        settings = self.state.settings.http2
        if self._resets > settings.max_resets:
            what = "rapid reset: too many streams reset"
        elif self._control > settings.max_control_frames:
            what = "too many control frames (SETTINGS, PING, PRIORITY)"
        else:
            return
        self.state.stats.limit_hits += 1
        log.warning("%s:%s HTTP/2 GOAWAY: %s", self.peer[0] or "unix", self.peer[1], what)
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._end_connection()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream in self.blocked:
                self.push(stream)
            return
        for stream in list(self.blocked):
            self.push(stream)

    # --- StreamOwner -----------------------------------------------------------------------

    def send_headers(self, stream: H2Stream, headers: list[Header], end: bool) -> None:
        if self.closed or stream.closed:
            return
        try:
            self.h2.send_headers(stream.stream_id, headers, end_stream=end)
        except StreamClosedError:  # reset by the client in the read being handled
            self._forget(stream)
            return
        if end:
            stream.end_sent = True
            if stream.remote_ended:
                self._forget(stream)
            else:
                self._end_early(stream)
        self._want_flush()

    def push(self, stream: H2Stream) -> None:
        """Frame as much of `stream.pending` as the windows allow (none while the socket's
        buffer is full), then END_STREAM once all of it went out."""
        if self.closed or stream.closed:
            return
        try:
            self._frame(stream)
        except StreamClosedError:  # reset by the client in the read being handled
            self._forget(stream)

    def _frame(self, stream: H2Stream) -> None:
        h2 = self.h2
        stream_id = stream.stream_id
        pending = stream.pending
        sent = 0
        ended = False
        if not self.writing_paused:
            frame = h2.max_outbound_frame_size
            while pending:
                window = h2.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                data = pending[0]
                size = min(len(data), window, frame)
                if size < len(data):
                    h2.send_data(stream_id, data[:size])
                    pending[0] = data[size:]
                else:
                    pending.popleft()
                    ended = stream.ending and not pending  # END_STREAM on the last DATA
                    h2.send_data(stream_id, data, end_stream=ended)
                sent += size
            stream.pending_bytes -= sent
        if pending:
            if sent or stream not in self.blocked:  # the send timeout runs from now
                self.blocked[stream] = None
                self._time(stream, self.state.now + self.state.settings.timeouts.send)
        else:
            if self.blocked.pop(stream, 0) is None:
                self._untime(stream)
            if stream.ending and not stream.end_sent and not ended:
                h2.end_stream(stream_id)
                ended = True
        if ended:
            stream.end_sent = True
            if stream.remote_ended:
                self._forget(stream)
            else:
                self._end_early(stream)
        if sent or ended:
            stream.room()
            self._want_flush()

    def acknowledge(self, stream: H2Stream, size: int) -> None:
        if not self.closed and not stream.closed:
            self.h2.acknowledge_received_data(size, stream.stream_id)
            self._want_flush()

    def reset(self, stream: H2Stream, code: int) -> None:
        if not self.closed and not stream.closed:
            with contextlib.suppress(H2ProtocolError):  # closed on h2's side already
                self.h2.reset_stream(stream.stream_id, code)
            self._want_flush()
        self._forget(stream)

    def finished(self, stream: H2Stream, exchange: Exchange) -> None:
        state = self.state
        stats = state.stats
        stats.requests_total += 1
        stats.responses_by_class[exchange.status // 100 if exchange.status < 600 else 0] += 1
        if state.access_log:
            state.log_access(exchange)

    def upgrade(
        self, stream: H2Stream, exchange: Exchange, response: bytes, protocol: UpgradedProtocol
    ) -> None:
        """Answer an extended CONNECT with 200 (the 101 `response`'s subprotocol and extension
        fields) and run `protocol` over the stream."""
        fields = tunnel_fields(response)
        exchange.started = True
        exchange.status = 200
        self.state.stats.http_latency.observe(perf_counter() - exchange.start_time)
        self.send_headers(stream, fields, False)
        tunnel = stream.tunnel = StreamTransport(stream, protocol, self.transport)
        protocol.connection_made(tunnel)
        exchange._finish()
        held, stream.held = stream.held, []
        for data in held:
            tunnel.data_received(data)
        if stream.unacked and not stream.body_paused:
            size, stream.unacked = stream.unacked, 0
            self.acknowledge(stream, size)
        self._want_flush()

    # --- stream lifetimes ------------------------------------------------------------------

    def _end_early(self, stream: H2Stream) -> None:
        """The response ended before the request body: the rest is not wanted (RFC 9113 8.1)."""
        exchange = stream.exchange
        if stream.tunnel is not None:
            return  # a closing WebSocket: the client ends its side after its close frame
        if exchange is None or (exchange.streaming and exchange.task is not None):
            return  # a streaming handler may still be reading it
        self.reset(stream, ErrorCodes.NO_ERROR)

    def _forget(self, stream: H2Stream) -> None:
        """The stream is closed both ways (or reset): drop it."""
        if self.streams.pop(stream.stream_id, None) is None and stream.closed:
            return
        self.blocked.pop(stream, None)
        self._untime(stream)
        stream.lost()
        if not self.streams:
            if self._draining:
                self._goaway()
            elif not self._in_receive:
                self._rearm()  # idle from now (a handler's task ended the last stream)

    def _time(self, stream: H2Stream, deadline: float) -> None:
        stream.deadline = deadline
        self.timed[stream] = None
        if deadline < self.deadline:
            self.deadline = deadline

    def _untime(self, stream: H2Stream) -> None:
        if self.timed.pop(stream, 0) is None:
            stream.deadline = INF

    def _rearm(self) -> None:
        """The connection's deadline: its streams' earliest, else the idle timeout (the
        header timeout, set when it was made, until a first request)."""
        if self.closed or self.writing_paused:  # the send timeout is armed
            return
        if self.timed:
            self.deadline = min(s.deadline for s in self.timed)
        elif self.streams:
            self.deadline = INF
        elif self._opened:
            self.deadline = self.state.now + self.state.settings.timeouts.keepalive

    def on_timeout(self) -> None:
        """Some deadline passed: the socket's send timeout, a stream's, or idleness."""
        state = self.state
        now = state.now
        timeouts = state.settings.timeouts
        if self.writing_paused:
            if self.transport.get_write_buffer_size() < self._send_left:
                self._send_left = self.transport.get_write_buffer_size()
                self._send_since = monotonic()
            if monotonic() - self._send_since >= timeouts.send:
                state.stats.limit_hits += 1
                log.warning(
                    "%s:%s cut off: took nothing of its answers for %g s (timeouts.send)",
                    self.peer[0] or "unix",
                    self.peer[1],
                    timeouts.send,
                )
                self.abort()
                return
            self.deadline = now + timeouts.send
            return
        if not self.streams:  # idle (_forget re-arms when the last stream goes)
            self._goaway()
            return
        for stream in [s for s in self.timed if s.deadline <= now]:
            self._stream_timeout(stream)
        self._rearm()
        self.flush()

    def _stream_timeout(self, stream: H2Stream) -> None:
        state = self.state
        state.stats.limit_hits += 1
        exchange = stream.exchange
        if stream in self.blocked:
            log.warning(
                "%s:%s stream %d reset: took nothing of its answer for %g s (timeouts.send)",
                self.peer[0] or "unix",
                self.peer[1],
                stream.stream_id,
                state.settings.timeouts.send,
            )
            self.reset(stream, ErrorCodes.CANCEL)
        elif exchange is not None and not exchange.started:
            self._untime(stream)
            log.warning("%s:%s 408 request body stalled", self.peer[0] or "unix", self.peer[1])
            exchange.respond(408, [(b"content-type", b"text/plain; charset=utf-8")], b"408\n")
        else:
            self.reset(stream, ErrorCodes.CANCEL)

    # --- writing ---------------------------------------------------------------------------

    def _want_flush(self) -> None:
        if not self._in_receive and not self._flush_scheduled and not self.closed:
            self._flush_scheduled = True
            self.state.schedule_flush(self)

    def flush(self) -> None:
        """Write what h2 framed since the last flush, in one call."""
        self._flush_scheduled = False
        if self.closed:
            return
        data = self.h2.data_to_send()
        if data:
            n = len(data)
            self.bytes_out += n
            self.state.stats.bytes_sent += n
            self.transport.write(data)

    def _goaway(self) -> None:
        """Close gracefully: GOAWAY (NO_ERROR) naming the last stream served, then close."""
        if not self.closed:
            with contextlib.suppress(H2ProtocolError):
                self.h2.close_connection(ErrorCodes.NO_ERROR)
            self._end_connection()

    def _end_connection(self) -> None:
        """Send what h2 has queued (a GOAWAY), then close."""
        if not self.closed:
            self.flush()
            self.closed = True
            self.transport.close()
            streams = list(self.streams.values())
            for stream in streams:
                stream.lost()

    # --- Served ----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Server shutdown: finish the open streams, refuse new ones, then GOAWAY."""
        self._draining = True
        if not self.streams:
            self._goaway()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def disconnect(self, code: int, reason: str) -> None:
        self._goaway()

    def queued(self) -> int:
        return self.transport.get_write_buffer_size()

    def describe(self) -> ConnectionInfo:
        try:
            queued = int(self.transport.get_write_buffer_size())
        except Exception:  # a transport closing under us
            queued = 0
        queued += sum(s.pending_bytes for s in self.streams.values())
        first = next(iter(self.streams.values()), None)
        path = None if first is None or first.exchange is None else first.exchange.head.path
        state = "send" if self.writing_paused else ("busy" if self.streams else "idle")
        return ConnectionInfo(f"h2 {state} ({len(self.streams)} streams)", path, queued)
