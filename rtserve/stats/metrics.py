"""What the admin interface reports about one App: a snapshot of its server, channels and
process; its connections and channels, listed; and the snapshot in the Prometheus text format.

Everything here reads what the hot path keeps anyway (`ServerStats` and `HubStats` counters,
the server's connection sets and their opening times, `Hub.channels()`), and only when asked:
nothing is counted per message for it (bytes in and out are two int adds per read and per
write, kept per connection and server-wide). `LoopLag` is the one thing that runs on its own:
a timer every half second that notes how late it fired.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from rtserve.histogram import Histogram
from rtserve.realtime.component import Channels
from rtserve.realtime.hub import HubStats
from rtserve.realtime.ws_session import ChannelSocket

if TYPE_CHECKING:
    from rtserve.app.app import App
    from rtserve.server.state import ServerState
    from rtserve.server.transport import Served

TRANSPORTS = ("http", "websocket", "channel")
# Long-lived HTTP answers, counted among `http` too: open SSE streams and waiting long polls.
LONG_LIVED = ("sse", "poll")
# ServerStats.responses_by_class holds 1xx..5xx at 1..5 and anything else at 0.
RESPONSE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LoopLag:
    """Event-loop lag: a `call_later` every `interval` seconds notes how late it ran.

    `last` is the latest lateness, `max` the largest of the last `window` (10 s by default).
    """

    def __init__(self, interval: float = 0.5, window: int = 20) -> None:
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=window)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is None:
            self._loop = loop
            self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_later(self.interval, self._probe)

    def _probe(self) -> None:
        assert self._loop is not None
        # A timer may fire a clock tick early: that is no lag.
        self.samples.append(max(0.0, self._loop.time() - self._due))
        self._schedule()

    @property
    def last(self) -> float:
        return self.samples[-1] if self.samples else 0.0

    @property
    def max(self) -> float:
        return max(self.samples, default=0.0)


def process_info() -> dict[str, Any]:
    """Resident memory (current from /proc; else the peak from getrusage), CPU seconds, open
    descriptors (where /proc has them) and the event loop's tasks."""
    out: dict[str, Any] = {}
    try:
        with open("/proc/self/statm", "rb") as statm:
            out["rss_bytes"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["max_rss_bytes"] = peak if sys.platform == "darwin" else peak * 1024
    times = os.times()
    out["cpu_user_seconds"] = round(times.user, 3)
    out["cpu_system_seconds"] = round(times.system, 3)
    with contextlib.suppress(OSError):
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
    with contextlib.suppress(RuntimeError):  # asked from outside a running loop
        out["tasks"] = len(asyncio.all_tasks())
    return out


def transport_of(conn: Served) -> tuple[str, ChannelSocket | None]:
    """`http`, `websocket` or `channel` (with its session) for a live connection."""
    handler = conn.handler
    if isinstance(handler, ChannelSocket):
        return "channel", handler
    return conn.kind, None


def open_counts(state: ServerState | None) -> dict[str, int]:
    """Open connections by transport, then the SSE streams and waiting polls among `http`."""
    counts = dict.fromkeys((*TRANSPORTS, *LONG_LIVED), 0)
    if state is None:
        return counts
    for item in list(state.long_lived):
        kind = getattr(item, "kind", None)
        if kind in LONG_LIVED:
            counts[kind] += 1
    channel = sum(1 for ws in state.websockets if isinstance(ws.handler, ChannelSocket))
    counts["http"] = max(0, len(state.connections) - len(state.websockets))
    counts["websocket"] = len(state.websockets) - channel
    counts["channel"] = channel
    return counts


def snapshot(app: App, lag: LoopLag, started_at: float, started: float) -> dict[str, Any]:
    """`GET /rt/admin/stats`: the server's counters and open connections, the hub's counters
    and channels, the loop's lag and the process; `started_at` is unix time, `started` a
    `time.monotonic()` reading of the same moment."""
    state = app.server_state
    mounted = app.component(Channels)
    hub = None if mounted is None else mounted.hub
    channels = {} if hub is None else hub.channels()
    if state is not None:
        s = state.stats
        by_class = s.responses_by_class
        totals: dict[str, Any] = {
            "connections": s.connections_total,
            "connections_refused": s.connections_refused,
            "h2_connections": s.h2_connections_total,
            "h2_streams": s.h2_streams_total,
            "requests": s.requests_total,
            "responses": dict(zip(RESPONSE_CLASSES, [*by_class[1:], by_class[0]], strict=True)),
            "websockets": s.websockets_total,
            "limit_hits": s.limit_hits,
            "ws_dropped": s.ws_dropped,
            "ws_slow_closed": s.ws_slow_closed,
            "bytes_received": s.bytes_received,
            "bytes_sent": s.bytes_sent,
            "ws_messages_received": s.ws_messages_received,
            "ws_frames_sent": s.ws_frames_sent,
        }
        http_latency = s.http_latency.to_json()
    else:
        totals = {
            "connections": 0,
            "connections_refused": 0,
            "h2_connections": 0,
            "h2_streams": 0,
            "requests": 0,
            "responses": dict.fromkeys(RESPONSE_CLASSES, 0),
            "websockets": 0,
            "limit_hits": 0,
            "ws_dropped": 0,
            "ws_slow_closed": 0,
            "bytes_received": 0,
            "bytes_sent": 0,
            "ws_messages_received": 0,
            "ws_frames_sent": 0,
        }
        http_latency = Histogram().to_json()
    return {
        "pid": os.getpid(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "uptime_seconds": round(time.monotonic() - started, 3),
        "serving": state is not None and not state.shutting_down,
        "open": open_counts(state),
        "totals": totals,
        "hub": dataclasses.asdict(HubStats() if hub is None else hub.stats),
        "latency_seconds": {
            "http": http_latency,
            "broker_publish": (Histogram() if hub is None else hub.publish_latency).to_json(),
        },
        "channels": {
            "count": len(channels),
            "subscribers": sum(channels.values()),
            "users": 0 if hub is None else len(hub.users),
        },
        "loop_lag_seconds": {"last": round(lag.last, 6), "max": round(lag.max, 6)},
        "process": process_info(),
    }


# --- connections ---------------------------------------------------------------------------


def connection_id(conn: Served) -> str:
    """An id unique among open connections (an id may be used again once its connection is
    closed)."""
    return format(id(conn), "x")


def peer_text(conn: Served) -> str:
    """A connection's peer as `host:port` (`[v6]:port`, `unix`)."""
    return _peer(conn.peer)


def _peer(peer: tuple[str, int]) -> str:
    host, port = peer
    if not host:
        return "unix"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(conn: Served, now: float, opened: float | None) -> dict[str, Any]:
    """One connection as the admin interface lists it."""
    transport, session = transport_of(conn)
    told = conn.describe()
    info: dict[str, Any] = {
        "id": connection_id(conn),
        "transport": transport,
        "peer": _peer(conn.peer),
        "user": None,
        "client": None,
        "channels": [],
        "age_seconds": None if opened is None else round(max(0.0, now - opened), 1),
        "queued_bytes": told.queued_bytes,
        "bytes_in": conn.bytes_in,
        "bytes_out": conn.bytes_out,
        "state": told.state,
    }
    if told.path is not None:
        info["path"] = told.path
    if session is not None:
        client = session.client
        if client is not None:
            info["user"] = client.user
            info["client"] = client.client
        info["channels"] = sorted(session.subscriptions)
    return info


def _in_open_order(state: ServerState) -> Iterator[tuple[Served, float | None]]:
    """Live connections, oldest first (the order they opened in, so paging is stable)."""
    opened = state.opened
    if opened is None:  # not kept (no admin when the server started)
        for conn in state.connections:
            yield conn, None
        return
    yield from opened.items()
    if len(opened) != len(state.connections):  # defensive: one not recorded at opening
        for conn in state.connections:
            if conn not in opened:
                yield conn, None


def _matches(conn: Served, transport: str | None, user: str | None, channel: str | None) -> bool:
    kind, session = transport_of(conn)
    if transport is not None and kind != transport:
        return False
    if user is None and channel is None:
        return True
    if session is None:
        return False
    if user is not None and (session.client is None or session.client.user != user):
        return False
    return channel is None or channel in session.subscriptions


def list_connections(
    state: ServerState | None,
    *,
    limit: int = 100,
    offset: int = 0,
    transport: str | None = None,
    user: str | None = None,
    channel: str | None = None,
    sort: str = "age",
) -> dict[str, Any]:
    """`GET /rt/admin/connections`: the matching connections, oldest first (`sort="age"`) or
    most queued bytes first (`sort="queued"`), one page; only that page is described."""
    page: list[dict[str, Any]] = []
    total = 0
    if state is not None:
        now = state.loop.time()
        if sort == "queued":
            matches = list(_in_open_order(state))
            if transport is not None or user is not None or channel is not None:
                matches = [item for item in matches if _matches(item[0], transport, user, channel)]
            total = len(matches)
            top = heapq.nsmallest(offset + limit, matches, key=lambda item: -item[0].queued())
            page = [describe(conn, now, opened) for conn, opened in top[offset:]]
        else:
            for conn, opened in list(_in_open_order(state)):
                if not _matches(conn, transport, user, channel):
                    continue
                if offset <= total < offset + limit:
                    page.append(describe(conn, now, opened))
                total += 1
    return {"total": total, "offset": offset, "limit": limit, "connections": page}


def find_connection(state: ServerState | None, conn_id: str) -> Served | None:
    """The open connection with this id, or None."""
    if state is None:
        return None
    for conn in list(state.connections):
        if connection_id(conn) == conn_id:
            return conn
    return None


def _channel_figures(app: App) -> dict[str, tuple[int, int]]:
    mounted = app.component(Channels)
    return {} if mounted is None else mounted.hub.channel_figures()


def list_channels(
    app: App, *, limit: int = 100, offset: int = 0, prefix: str | None = None
) -> dict[str, Any]:
    """`GET /rt/admin/channels`: channels with local subscribers, most subscribed first, with
    the publications delivered here since each got its first local subscriber."""
    items = [
        (name, subscribers, publications)
        for name, (subscribers, publications) in _channel_figures(app).items()
        if prefix is None or name.startswith(prefix)
    ]
    items.sort(key=lambda item: (-item[1], item[0]))
    page = [
        {"name": n, "subscribers": c, "publications": p}
        for n, c, p in items[offset : offset + limit]
    ]
    return {"total": len(items), "offset": offset, "limit": limit, "channels": page}


# --- Prometheus ------------------------------------------------------------------------------

_HUB_HELP = {
    "publications": "publications accepted by the broker from this node",
    "client_publications": "publications made by clients",
    "deliveries": "publications handed to local subscribers",
    "deltas": "of the deliveries, fossil deltas (delta subscribers in step)",
    "subscriptions": "subscribe commands that succeeded",
    "dropped": "publications dropped for slow consumers (policy drop_oldest)",
    "conflated": "publications conflated for slow consumers (policy conflate)",
    "slow_disconnected": "channel clients disconnected as slow consumers",
    "rate_limited": "client publishes refused by the publish rate",
    "refused": "channel commands answered with an error",
}


def _metric(
    name: str, kind: str, help: str, samples: Iterable[tuple[str, float | int]]
) -> list[str]:
    lines = [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        lines.append(f"{name}{labels} {_number(value)}")
    return lines


def _histogram(name: str, help: str, value: dict[str, Any]) -> list[str]:
    lines = [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
    cumulative = 0
    for bound, n in zip([*value["bounds"], "+Inf"], value["counts"], strict=True):
        cumulative += n
        le = bound if isinstance(bound, str) else repr(float(bound))
        lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
    lines.append(f"{name}_sum {_number(float(value['sum']))}")
    lines.append(f"{name}_count {value['count']}")
    return lines


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def prometheus(stats: dict[str, Any], started_at: float) -> str:
    """A `snapshot` in the Prometheus text exposition format 0.0.4."""
    totals = stats["totals"]
    out: list[str] = []
    for key, name, help in (
        ("connections", "connections", "connections accepted"),
        ("connections_refused", "connections_refused", "connections refused (max_connections)"),
        ("h2_connections", "h2_connections", "connections that spoke HTTP/2"),
        ("h2_streams", "h2_streams", "HTTP/2 streams opened by clients"),
        ("requests", "requests", "HTTP requests answered"),
        ("websockets", "websockets", "WebSocket connections opened"),
        ("limit_hits", "limit_hits", "requests refused by a limit or a protocol error"),
        ("ws_dropped", "ws_dropped", "WebSocket messages not queued to a slow consumer"),
        ("ws_slow_closed", "ws_slow_closed", "WebSockets closed as slow consumers"),
        ("bytes_received", "bytes_received", "bytes read from clients"),
        ("bytes_sent", "bytes_sent", "bytes written to clients"),
        ("ws_messages_received", "ws_messages_received", "WebSocket messages from clients"),
        ("ws_frames_sent", "ws_frames_sent", "WebSocket frames written (messages and control)"),
    ):
        out += _metric(f"rtserve_{name}_total", "counter", help, [("", totals[key])])
    out += _metric(
        "rtserve_responses_total",
        "counter",
        "HTTP responses by status class",
        [(f'{{class="{c}"}}', n) for c, n in totals["responses"].items()],
    )
    latency = stats["latency_seconds"]
    out += _histogram(
        "rtserve_http_latency_seconds",
        "seconds from a request's head read to its response's head written",
        latency["http"],
    )
    out += _histogram(
        "rtserve_broker_publish_latency_seconds",
        "seconds a publish through the broker took",
        latency["broker_publish"],
    )
    out += _metric(
        "rtserve_open_connections",
        "gauge",
        "open connections by transport (sse and poll are counted among http too)",
        [(f'{{transport="{t}"}}', n) for t, n in stats["open"].items()],
    )
    for field, value in stats["hub"].items():
        help = _HUB_HELP.get(field, field.replace("_", " "))
        out += _metric(f"rtserve_channel_{field}_total", "counter", help, [("", value)])
    channels = stats["channels"]
    out += _metric(
        "rtserve_channels", "gauge", "channels with local subscribers", [("", channels["count"])]
    )
    out += _metric(
        "rtserve_channel_subscribers",
        "gauge",
        "local subscriptions over all channels",
        [("", channels["subscribers"])],
    )
    out += _metric(
        "rtserve_channel_users",
        "gauge",
        "users with an open channel connection",
        [("", channels["users"])],
    )
    lag = stats["loop_lag_seconds"]
    out += _metric(
        "rtserve_event_loop_lag_seconds",
        "gauge",
        "how late the latest event-loop probe ran",
        [("", float(lag["last"]))],
    )
    out += _metric(
        "rtserve_event_loop_lag_max_seconds",
        "gauge",
        "how late the latest probes ran at most (10 s window)",
        [("", float(lag["max"]))],
    )
    out += _metric(
        "rtserve_uptime_seconds",
        "gauge",
        "seconds since the app started",
        [("", stats["uptime_seconds"])],
    )
    process = stats["process"]
    cpu = round(process["cpu_user_seconds"] + process["cpu_system_seconds"], 3)
    out += _metric("process_cpu_seconds_total", "counter", "user and system CPU time", [("", cpu)])
    if "open_fds" in process:
        out += _metric(
            "process_open_fds", "gauge", "open file descriptors", [("", process["open_fds"])]
        )
    if "tasks" in process:
        out += _metric(
            "rtserve_event_loop_tasks", "gauge", "tasks of the event loop", [("", process["tasks"])]
        )
    if "rss_bytes" in process:
        out += _metric(
            "process_resident_memory_bytes",
            "gauge",
            "resident memory size in bytes",
            [("", process["rss_bytes"])],
        )
    else:
        out += _metric(
            "process_max_resident_memory_bytes",
            "gauge",
            "peak resident memory size in bytes",
            [("", process["max_rss_bytes"])],
        )
    out += _metric(
        "process_start_time_seconds",
        "gauge",
        "start time of the app, unix seconds",
        [("", float(started_at))],
    )
    return "\n".join(out) + "\n"
