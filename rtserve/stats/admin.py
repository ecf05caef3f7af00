"""The admin interface: a second, small rtserve `Server` in the app's own event loop, on a
unix socket (mode 0600, no token) and/or an HTTP address (with a Bearer token; without one,
read-only: see admin_guard.py).

    GET  /rt/admin/stats                          counters, open connections, loop lag, process
    GET  /rt/admin/connections?limit=&offset=&transport=&user=&channel=&sort=age|queued
    GET  /rt/admin/channels?limit=&offset=&prefix=
    POST /rt/admin/connections/{id}/disconnect    close one (WebSocket code 4005)
    GET  /metrics                                 Prometheus text format (when `metrics`)
    GET  /rt/admin/                               a live page of the stats (admin.html)
    GET  /rt/admin/events                         the stats as SSE, `event: stats` every second

With a token, `/rt/admin/` and `/rt/admin/events` also take it as `?token=` (a browser
opening the page, and EventSource, cannot send the header).

A project turns it on with the `admin:` section of rtserve.yaml (on by default, on
`.rtserve/admin.sock`); a plain Python app with `enable_admin(app, ...)`. Either way the app's
startup hooks start it and its shutdown hooks stop it. It reads the state of the app's server
(`App.server_state`, bound by `Server.start`), so it works however the app is served.

The unix socket is bound under a temporary name, made 0600 and then renamed over the path, so
a new process (a reload's new worker) takes the path over from the old one. The socket it
displaced is kept under a second name (a hard link); on stopping, a process whose socket is
still at the path puts the displaced one back if it still listens (a second instance that
could not bind its port, a reload's worker that failed), else removes the path. It never
touches the path once another process's socket is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rtserve.app.app import App
from rtserve.app.middleware import BearerAuth
from rtserve.app.request import Request
from rtserve.app.response import HTMLResponse, JSONResponse, Response, dump_json
from rtserve.realtime.access import unwatch_shutdown, watch_shutdown
from rtserve.realtime.protocol import DisconnectCode
from rtserve.server.exchange import ClientDisconnected
from rtserve.server.listener import Server
from rtserve.server.settings import ServerSettings
from rtserve.server.state import Application
from rtserve.stats.admin_guard import AdminGuard, is_loopback
from rtserve.stats.metrics import (
    PROMETHEUS_CONTENT_TYPE,
    TRANSPORTS,
    LoopLag,
    find_connection,
    list_channels,
    list_connections,
    peer_text,
    prometheus,
    snapshot,
    transport_of,
)

log = logging.getLogger("rtserve.admin")

PREFIX = "/rt/admin"
DEFAULT_SOCKET = ".rtserve/admin.sock"
MIN_TOKEN_LENGTH = 16
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DISCONNECT_REASON = "disconnected by admin"
SORTS = ("age", "queued")  # of GET /rt/admin/connections: oldest first, most queued first
_UNIX_PATH_MAX = 100  # sun_path holds 104-108 bytes, depending on the system

# The paths that also take the token as `?token=`: the page, and its EventSource.
_QUERY_TOKEN_PATHS = frozenset({f"{PREFIX}/", f"{PREFIX}/events"})
PAGE_FILE = Path(__file__).with_name("admin.html")
EVENTS_INTERVAL = 1.0  # seconds between two `stats` events
_PAGE_HEADERS = [
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),  # the URL may hold the token
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
]
_EVENTS_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


# --- options -------------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` for IPv6) as (host, port); ValueError when it is not one."""
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen must be host:port (like 127.0.0.1:9100), not {listen!r}")
    return host, int(port_text)


def check_options(
    socket: str | Path | None, listen: str | None, token: str | None, *, enabled: bool = True
) -> None:
    """ValueError for options that must not be served: an address beyond loopback without a
    token, a short token, or (when `enabled`) nothing to serve on."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"token must have at least {MIN_TOKEN_LENGTH} characters")
    if listen is not None:
        host, _ = parse_listen(listen)
        if token is None and not is_loopback(host):
            raise ValueError(
                f"listen {listen!r} is not a loopback address: set a token, or listen on 127.0.0.1"
            )
    if enabled and socket is None and listen is None:
        raise ValueError("neither socket nor listen is set: nothing to serve the admin on")


# --- the admin app -------------------------------------------------------------------------


class _StatsStream:
    """One `GET /rt/admin/events`, ended by `stop()` when the admin server shuts down."""

    kind = "admin"  # not a transport of the app: not counted among its open connections

    def __init__(self) -> None:
        self.stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stop(self) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, 400)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise _BadParam(f"{name} must be an integer") from None
    if value < low:
        raise _BadParam(f"{name} must be at least {low}")
    return min(value, high)


class _BadParam(Exception):
    pass


class AdminServer:
    """The admin interface of one App: `await start()` and `await stop()` (the app's startup
    and shutdown hooks do both)."""

    def __init__(
        self,
        app: App,
        *,
        socket: str | Path | None = DEFAULT_SOCKET,
        listen: str | None = None,
        token: str | None = None,
        metrics: bool = False,
    ) -> None:
        check_options(socket, listen, token)
        self.app = app
        self.socket_path = None if socket is None else Path(socket).absolute()
        self.listen = listen
        self.token = token
        self.metrics = metrics
        self.lag = LoopLag()
        self.started_at = time.time()
        self._started = time.monotonic()
        self._unix: Server | None = None
        self._http: Server | None = None
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._displaced: str | None = None  # the name of the socket ours replaced, kept
        self._made_folder = False

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._unix is not None or self._http is not None

    async def start(self) -> None:
        if self.running:
            return
        self.started_at, self._started = time.time(), time.monotonic()
        self.lag.start(asyncio.get_running_loop())
        try:
            if self.socket_path is not None:
                await self._start_unix(self.socket_path)
            if self.listen is not None:
                host, port = parse_listen(self.listen)
                settings = ServerSettings(
                    host=host,
                    port=port,
                    access_log=False,
                    # A reload's new worker starts before the old one stops: both listen a
                    # moment, as on the main port.
                    reuse_port=hasattr(socket, "SO_REUSEPORT"),
                )
                self._http = Server(self._make_app(self.token, lambda: self.port), settings)
                await self._http.start()
        except BaseException:
            await self.stop()
            raise
        if self.addresses:
            log.info("admin interface on %s", ", ".join(self.addresses))

    async def _start_unix(self, path: Path) -> None:
        try:
            sock = self._bind_unix(path)
        except OSError as exc:
            # The app matters more than its admin socket (a read-only folder, say): go on.
            log.warning("admin socket %s not available: %s", path, exc)
            return
        self._unix = Server(self._make_app(None), ServerSettings(access_log=False))
        try:
            await self._unix.start(sock)
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        self.lag.stop()
        servers = [s for s in (self._unix, self._http) if s is not None]
        self._unix = self._http = None
        for server in servers:
            if server.state is not None:
                await server.shutdown(grace=1.0)
            else:
                for sock in server.sockets:
                    sock.close()
        self._unlink_socket()

    @contextlib.contextmanager
    def private(self) -> Iterator[None]:
        """Within the block, serve on a socket in a temporary folder of its own and (when it
        has `listen`) an ephemeral loopback port instead of the addresses set: what a test
        server does, so it never takes over a running server's (the project's
        `.rtserve/admin.sock`, its `listen` port)."""
        if self.running:
            raise RuntimeError("the admin interface is running: stop the app first")
        saved = self.socket_path, self.listen
        with tempfile.TemporaryDirectory(prefix="rtserve-admin-") as folder:
            self.socket_path = None if saved[0] is None else Path(folder) / "admin.sock"
            self.listen = None if saved[1] is None else "127.0.0.1:0"
            try:
                yield
            finally:
                self.socket_path, self.listen = saved

    @property
    def addresses(self) -> list[str]:
        """Where the admin interface answers: `unix:/path` and `http://host:port`."""
        out = []
        if self._unix is not None and self.socket_path is not None:
            out.append(f"unix:{self.socket_path}")
        if self._http is not None:
            out += self._http.addresses
        return out

    @property
    def port(self) -> int:
        """The HTTP port (the one picked, for `listen: 127.0.0.1:0`)."""
        if self._http is None:
            raise RuntimeError("the admin interface is not listening on HTTP")
        return self._http.port

    def _bind_unix(self, path: Path) -> socket.socket:
        folder = path.parent
        self._made_folder = not folder.exists()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = f".{path.name}.{os.getpid()}.tmp"
        displaced = f".{path.name}.{os.getpid()}.prev"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _folder_fd(folder) as (dir_fd, bind_folder):
                _drop_dead_displaced(path.name, dir_fd, bind_folder)
                for leftover in (temporary, displaced):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(leftover, dir_fd=dir_fd)
                try:
                    sock.bind(f"{bind_folder}/{temporary}")
                    # Not listening yet (the Server does that): nobody connects in between.
                    os.chmod(temporary, 0o600, dir_fd=dir_fd)
                    try:
                        os.link(path.name, displaced, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                        self._displaced = displaced
                    except OSError:  # nothing there, or no hard links here: nothing to put back
                        self._displaced = None
                    os.replace(temporary, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    st = os.stat(path.name, dir_fd=dir_fd)
                except BaseException:
                    for name in (temporary, displaced):
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=dir_fd)
                    self._displaced = None
                    raise
        except BaseException:
            sock.close()
            self._remove_folder()
            raise
        self._socket_id = (st.st_dev, st.st_ino)
        return sock

    def _unlink_socket(self) -> None:
        """Leave the path as if this process had never bound it: while it is still our socket
        (not a newer process's), put back the one ours displaced if that one still listens,
        else remove it; then remove the folder if this made it and nothing else is in it."""
        if self._socket_id is None or self.socket_path is None:
            return
        ours, self._socket_id = self._socket_id, None
        displaced, self._displaced = self._displaced, None
        path = self.socket_path
        with contextlib.suppress(OSError), _folder_fd(path.parent) as (dir_fd, folder):
            st = os.stat(path.name, dir_fd=dir_fd)
            if (st.st_dev, st.st_ino) == ours:
                if displaced is not None and _listening(f"{folder}/{displaced}"):
                    os.replace(displaced, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                else:
                    os.unlink(path.name, dir_fd=dir_fd)
        if displaced is not None:
            with contextlib.suppress(OSError):
                os.unlink(path.parent / displaced)
        self._remove_folder()

    def _remove_folder(self) -> None:
        if self._made_folder and self.socket_path is not None:
            self._made_folder = False
            with contextlib.suppress(OSError):  # not empty (a newer process's socket, say)
                self.socket_path.parent.rmdir()

    # --- the endpoints ---------------------------------------------------------------------

    def _make_app(
        self, token: str | None, http_port: Callable[[], int] | None = None
    ) -> Application:
        """The admin routes; over HTTP (`http_port` gives the bound port) behind AdminGuard,
        and behind BearerAuth (checked first) when there is a token."""
        admin = App(ServerSettings(access_log=False))
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", f"{PREFIX}/stats", self.stats),
            ("GET", f"{PREFIX}/connections", self.connections),
            ("GET", f"{PREFIX}/channels", self.channels),
            ("POST", f"{PREFIX}/connections/{{conn_id}}/disconnect", self.disconnect),
            ("GET", f"{PREFIX}/", self.page),
            ("GET", f"{PREFIX}/events", self.events),
        ]
        if self.metrics:
            routes.append(("GET", "/metrics", self.prometheus))
        for method, path, handler in routes:
            admin.add_route(path, handler, [method])
        served: Application = admin
        if http_port is not None:
            served = AdminGuard(served, http_port, has_token=token is not None)
        if token is not None:
            served = BearerAuth(
                served, token, realm="rtserve admin", query_token_paths=_QUERY_TOKEN_PATHS
            )
        return served

    async def current_stats(self) -> dict[str, Any]:
        """The stats snapshot the endpoints serve."""
        return snapshot(self.app, self.lag, self.started_at, self._started)

    async def stats(self, request: Request) -> dict[str, Any]:
        return await self.current_stats()

    def page(self, request: Request) -> Response:
        return HTMLResponse(_page_html(), headers=_PAGE_HEADERS)

    async def events(self, request: Request) -> Response | None:
        """The stats as Server-Sent Events: `event: stats` now and every EVENTS_INTERVAL
        seconds, until the client goes or the admin server shuts down."""
        if request.method == "HEAD":  # no body, so no stream: the head of one
            return Response(b"", headers=[(n.decode(), v.decode()) for n, v in _EVENTS_HEADERS])
        exchange = request.exchange
        disconnected = exchange.wait_disconnected()
        stream = _StatsStream()
        watch_shutdown(request, stream)
        try:
            exchange.start(200, _EVENTS_HEADERS)
            while not disconnected.done() and not stream.stopped.done():
                payload = dump_json(await self.current_stats())
                exchange.write(b"event: stats\ndata: " + payload + b"\n\n")
                await exchange.drain()
                await asyncio.wait(
                    {disconnected, stream.stopped},
                    timeout=EVENTS_INTERVAL,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            if not exchange.closed:
                exchange.end()
        except ClientDisconnected:
            pass
        finally:
            unwatch_shutdown(request, stream)
        return None  # answered through the exchange

    async def connections(self, request: Request) -> Any:
        query = request.query
        transport = query.get("transport") or None
        if transport is not None and transport not in TRANSPORTS:
            return _bad_request(f"transport must be one of {', '.join(TRANSPORTS)}")
        try:
            limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            offset = _int_param(request, "offset", 0, 0, 2**62)
        except _BadParam as exc:
            return _bad_request(str(exc))
        sort = query.get("sort") or "age"
        if sort not in SORTS:
            return _bad_request(f"sort must be one of {', '.join(SORTS)}")
        return await self.list_connections(
            limit=limit,
            offset=offset,
            transport=transport,
            user=query.get("user") or None,
            channel=query.get("channel") or None,
            sort=sort,
        )

    async def list_connections(self, **query: Any) -> dict[str, Any]:
        """One page of connections (`GET /rt/admin/connections` after its checks)."""
        return list_connections(self.app.server_state, **query)

    async def channels(self, request: Request) -> Any:
        try:
            limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            offset = _int_param(request, "offset", 0, 0, 2**62)
        except _BadParam as exc:
            return _bad_request(str(exc))
        prefix = request.query.get("prefix") or None
        return await self.list_channels(limit=limit, offset=offset, prefix=prefix)

    async def list_channels(self, *, limit: int, offset: int, prefix: str | None) -> Any:
        """One page of channels (`GET /rt/admin/channels` after its checks)."""
        return list_channels(self.app, limit=limit, offset=offset, prefix=prefix)

    async def disconnect(self, request: Request, conn_id: str) -> Any:
        conn = find_connection(self.app.server_state, conn_id)
        if conn is None:
            return JSONResponse({"disconnected": False, "error": "no such connection"}, 404)
        conn.disconnect(DisconnectCode.FORCED, DISCONNECT_REASON)
        log.info("admin disconnected %s (%s %s)", conn_id, transport_of(conn)[0], peer_text(conn))
        return {"disconnected": True}

    async def prometheus(self, request: Request) -> Response:
        stats = await self.current_stats()
        return Response(prometheus(stats, self.started_at), content_type=PROMETHEUS_CONTENT_TYPE)


_page_cache: list[bytes] = []


def _page_html() -> bytes:
    """The live page (read once)."""
    if not _page_cache:
        _page_cache.append(PAGE_FILE.read_bytes())
    return _page_cache[0]


@contextlib.contextmanager
def _folder_fd(folder: Path) -> Iterator[tuple[int, str]]:
    """A descriptor of `folder`, and a name of it short enough to bind a unix socket under
    (through /proc/self/fd when the path is too long for sun_path)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        name = str(folder)
        if len(os.fsencode(name)) + 40 > _UNIX_PATH_MAX and os.path.isdir("/proc/self/fd"):
            name = f"/proc/self/fd/{fd}"
        yield fd, name
    finally:
        os.close(fd)


def _listening(path: str) -> bool:
    """Whether a process listens on the unix socket at `path` (connected, or its backlog is
    full); without waiting."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _drop_dead_displaced(name: str, dir_fd: int, folder: str) -> None:
    """Remove the kept sockets (`.NAME.PID.prev`) nobody listens on any more: left by a
    process that was killed before it could stop."""
    prefix = f".{name}."
    with contextlib.suppress(OSError):
        for entry in os.listdir(dir_fd):
            if entry.startswith(prefix) and entry.endswith(".prev"):
                if not _listening(f"{folder}/{entry}"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry, dir_fd=dir_fd)


def enable_admin(
    app: App,
    *,
    socket: str | Path | None = DEFAULT_SOCKET,
    listen: str | None = None,
    token: str | None = None,
    metrics: bool = False,
) -> AdminServer:
    """Serve the admin interface of `app` while it runs (started by its startup hooks).

    `socket`: unix socket path (relative to the current folder; its folder is made, the socket
    is mode 0600; None: none). `listen`: also serve over HTTP at `host:port`; beyond loopback a
    `token` is required, and with a token every HTTP request must send `Authorization: Bearer
    <token>` (the page `/rt/admin/` and its `/rt/admin/events` also take `?token=`); without
    one it is read-only and for a loopback Host only. Cross-site requests are refused.
    `metrics`: serve `/metrics` (Prometheus). Calling it again before the app starts replaces
    the previous settings.
    """
    admin = AdminServer(app, socket=socket, listen=listen, token=token, metrics=metrics)
    old = app.admin
    if old is not None:
        if old.running:
            raise RuntimeError("the admin interface is running: stop the app first")
        with contextlib.suppress(ValueError):
            app.on_startup.remove(old.start)
        with contextlib.suppress(ValueError):
            app.on_shutdown.remove(old.stop)
    app.admin = admin
    app.on_startup.append(admin.start)
    app.on_shutdown.append(admin.stop)
    return admin
