"""State shared by every connection of one server: settings, clock, date header, live sets.

Passed to each connection (never global). A ticker updates the coarse clock and the cached
`Date` line and enforces connection deadlines, so the hot path never creates timers.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_plus

from rtserve.histogram import Histogram
from rtserve.server.exchange import ClientDisconnected
from rtserve.server.proxy import TrustedProxies
from rtserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from rtserve.server.connection import HTTPConnection
    from rtserve.server.exchange import Exchange
    from rtserve.server.transport import Served
    from rtserve.server.websocket import WebSocketConnection

log = logging.getLogger("rtserve.server")
access_log = logging.getLogger("rtserve.access")
ACCESS_LINE = '%s - "%s %s HTTP/%s" %s %dB %.1fms'

# Secrets that ride in query strings (channel tokens on /rt/sse and /rt/poll, the admin page's
# ?token=): the access log shows the parameter, not its value.
SECRET_PARAMETERS = frozenset(("token", "access_token", "api_key"))


class Flushable(Protocol):
    """What ServerState.schedule_flush writes out: a WebSocket or an SSE stream."""

    def flush(self) -> None:
        """Write what was queued since the last flush, in one system call."""


class Application(Protocol):
    """What the server needs from the app layer."""

    def wants_stream(self, exchange: Exchange) -> bool:
        """True to dispatch as soon as the head arrives and stream the body."""
        ...

    def dispatch(self, exchange: Exchange) -> asyncio.Task[None] | None:
        """Answer the exchange now (None), or start and return the Task that will."""
        ...


class ServerStats:
    """Plain counters, bumped on the hot path without allocation."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "connections_refused",
        "connections_total",
        "h2_connections_total",
        "h2_streams_total",
        "http_latency",
        "limit_hits",
        "requests_total",
        "responses_by_class",
        "websockets_total",
        "ws_dropped",
        "ws_frames_sent",
        "ws_messages_received",
        "ws_slow_closed",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_refused = 0  # over max_connections: answered 503 (or dropped)
        self.h2_connections_total = 0  # of connections_total, those speaking HTTP/2
        self.h2_streams_total = 0  # HTTP/2 streams opened by clients (each one request)
        self.requests_total = 0
        self.limit_hits = 0
        self.responses_by_class = [0, 0, 0, 0, 0, 0]
        self.websockets_total = 0
        self.ws_dropped = 0  # messages not queued to a slow consumer (policy "drop")
        self.ws_slow_closed = 0  # connections closed as slow consumers (policy "close")
        self.bytes_received = 0  # read from clients' sockets, HTTP and WebSocket
        self.bytes_sent = 0  # handed to clients' transports (file bodies: as they start)
        self.ws_messages_received = 0  # WebSocket messages from clients (text and binary)
        self.ws_frames_sent = 0  # WebSocket frames written, messages and control frames
        # Seconds from a request's head read to its response's head written.
        self.http_latency = Histogram()


class ServerState:
    """Everything the connections of one server share."""

    def __init__(
        self,
        app: Application,
        settings: ServerSettings,
        loop: asyncio.AbstractEventLoop,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.loop = loop
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context else "http"
        self.proxies = TrustedProxies(settings.trusted_proxies)
        # The addresses bound, (host, port) or (unix socket path, None): set by Server.start.
        self.listening: list[tuple[str, int | None]] = []
        self.access_log = settings.access_log
        self.context = contextvars.copy_context()  # the context requests start from
        # Every live connection, HTTP or WebSocket.
        self.connections: set[Served] = set()
        self.websockets: set[WebSocketConnection] = set()
        self.refusing = 0  # connections being answered 503 (over max_connections)
        self.backlogged = 0  # HTTP connections with pipelined requests left for a later turn
        # When each live connection opened (the coarse clock), oldest first, for the admin
        # interface's ages and stable listing order; None (nothing kept) without an admin.
        self.opened: dict[Served, float] | None = None
        self._to_flush: list[Flushable] = []
        self._delayed: dict[float, list[Flushable]] = {}
        self.tasks: dict[asyncio.Task[Any], Exchange] = {}
        self.stats = ServerStats()
        self.shutting_down = False
        # Long-lived answers (SSE streams, waiting polls) to end when the server shuts down:
        # anything with a `stop()` method.
        self.long_lived: set[Any] = set()
        # The close frame WebSockets get on shutdown (1012 "service restart" when a reload
        # replaces this server: see Server.shutdown(restart=True)).
        self.ws_shutdown_close: tuple[int, str] = (1001, "server shutting down")
        self.server_line = (
            b"server: %s\r\n" % settings.server_header.encode("latin-1")
            if settings.server_header
            else b""
        )
        self.now = loop.time()
        self._second = 0
        self.date_line = b""
        self._update_date()
        self._ticker: asyncio.TimerHandle | None = None
        self._file_executor: ThreadPoolExecutor | None = None
        self._all_closed: asyncio.Event | None = None
        t, ws = settings.timeouts, settings.websocket
        # Deadlines are checked each tick, so a tick is a fraction of the shortest timeout
        # (WebSocket routes may set shorter ones of their own; those are checked as often).
        spans = [t.header, t.keepalive, t.body, ws.ping_timeout, ws.close_timeout]
        if ws.ping_interval > 0:
            spans.append(ws.ping_interval)
        self.tick_interval = max(0.01, min(1.0, *(s / 4 for s in spans)))

    def _update_date(self) -> None:
        wall = time.time()
        second = int(wall)
        if second != self._second:
            self._second = second
            self.date_line = b"date: %s\r\n" % formatdate(wall, usegmt=True).encode("ascii")

    def file_executor(self) -> ThreadPoolExecutor:
        """Threads for file bodies; they mostly wait on slow clients, so there are many."""
        if self._file_executor is None:
            self._file_executor = ThreadPoolExecutor(64, thread_name_prefix="rtserve-file")
        return self._file_executor

    def start_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = self.loop.call_later(self.tick_interval, self._tick)

    def stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _tick(self) -> None:
        self.now = now = self.loop.time()
        self._update_date()
        expired = [c for c in self.connections if c.deadline <= now]
        for conn in expired:
            try:
                conn.on_timeout()
            except Exception:
                log.exception("timeout handling failed")
                conn.abort()
        self._ticker = self.loop.call_later(self.tick_interval, self._tick)

    # --- connection bookkeeping ------------------------------------------------------------

    def connection_opened(self, conn: Served) -> None:
        self.connections.add(conn)
        if self.opened is not None:
            self.opened[conn] = self.now
        self.stats.connections_total += 1

    def connection_closed(self, conn: Served) -> None:
        self.connections.discard(conn)
        if self.opened is not None:
            self.opened.pop(conn, None)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def websocket_opened(self, conn: WebSocketConnection) -> None:
        self.connections.add(conn)
        if self.opened is not None:
            self.opened[conn] = self.now
        self.websockets.add(conn)
        self.stats.websockets_total += 1

    def websocket_closed(self, conn: WebSocketConnection) -> None:
        self.websockets.discard(conn)
        self.connection_closed(conn)

    def schedule_flush(self, conn: Flushable, delay: float = 0.0) -> None:
        """Write `conn`'s queued frames (or SSE events) at the end of this loop tick, or after
        `delay` seconds; one callback serves every connection due at the same time."""
        if delay <= 0:
            if not self._to_flush:
                self.loop.call_soon(self._flush_all)
            self._to_flush.append(conn)
            return
        batch = self._delayed.get(delay)
        if batch is None:
            batch = self._delayed[delay] = []
            self.loop.call_later(delay, self._flush_delayed, delay)
        batch.append(conn)

    def flush_soon(self, conn: Flushable) -> None:
        """`schedule_flush(conn)` without a delay, for a hot path: no delay to pass and test."""
        if not self._to_flush:
            self.loop.call_soon(self._flush_all)
        self._to_flush.append(conn)

    def _flush_all(self) -> None:
        conns, self._to_flush = self._to_flush, []
        for conn in conns:
            conn.flush()

    def _flush_delayed(self, delay: float) -> None:
        for conn in self._delayed.pop(delay, ()):
            conn.flush()

    def track(self, task: asyncio.Task[Any], exchange: Exchange) -> None:
        self.tasks[task] = exchange
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        exchange = self.tasks.pop(task, None)
        if exchange is None:
            return
        if task.cancelled():
            error: BaseException | None = None
        else:
            error = task.exception()
        if isinstance(error, ClientDisconnected):
            log.debug("client left during %s", exchange.head)
        elif error is not None:
            log.error("unhandled error answering %s", exchange.head, exc_info=error)
        if not exchange.finished and not exchange.deferred:
            exchange.answer_internal_error()

    def limit_hit(self, conn: HTTPConnection, status: int, reason: str) -> None:
        """Log (and count) a request refused by a limit or a protocol error."""
        self.stats.limit_hits += 1
        log.warning("%s:%s %d %s", conn.peer[0] or "unix", conn.peer[1], status, reason)

    def log_access(self, exchange: Exchange) -> None:
        """One line on `rtserve.access` for an answered (or abandoned) request."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        head = exchange.head
        elapsed = (time.perf_counter() - exchange.start_time) * 1000.0
        client = exchange.client_and_scheme[0] or "unix"
        args = (
            client,
            head.method,
            loggable_target(head.target),
            head.version,
            exchange.status or "-",  # "-": the connection ended before any answer
            exchange.response_bytes,
            elapsed,
        )
        # makeRecord + handle: Logger.info's search of the stack for the caller's line is a
        # third of a line's cost, and an access line names no source line.
        access_log.handle(
            access_log.makeRecord(access_log.name, logging.INFO, "", 0, ACCESS_LINE, args, None)
        )

    # --- shutdown --------------------------------------------------------------------------

    async def drain_connections(self, grace: float) -> None:
        """Close idle connections, let busy ones finish within `grace`, then abort the rest."""
        self.shutting_down = True
        for item in list(self.long_lived):
            item.stop()
        self.long_lived.clear()
        for conn in list(self.connections):
            conn.begin_shutdown()
        if self.connections:
            self._all_closed = asyncio.Event()
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except TimeoutError:
                log.warning(
                    "%d connection(s) still busy after %.1fs: closing them",
                    len(self.connections),
                    grace,
                )
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()
        self.stop_ticker()
        if self._file_executor is not None:
            self._file_executor.shutdown(wait=False, cancel_futures=True)


def loggable_target(target: bytes) -> str:
    """The request target for the access log, with the values of secret parameters hidden.

    A parameter is secret when its name, decoded as the app's query parser decodes it
    (`?%74oken=` is `token`), is one of SECRET_PARAMETERS.
    """
    text = target.decode("latin-1")
    path, question, query = text.partition("?")
    if not question or "=" not in query:
        return text
    fields = query.split("&")
    hidden = False
    for i, field in enumerate(fields):
        name, equals, _ = field.partition("=")
        if not equals:
            continue
        if "%" in name or "+" in name:
            name_read = unquote_plus(name, errors="replace")  # as parse_qsl reads it
            secret = name_read in SECRET_PARAMETERS
        else:
            secret = name in SECRET_PARAMETERS
        if secret:
            fields[i] = name + "=[redacted]"
            hidden = True
    return path + "?" + "&".join(fields) if hidden else text
