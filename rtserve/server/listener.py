"""Listening sockets (TCP v4/v6, unix socket, inherited fd, TLS), serving and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence

from rtserve.errors import RtserveError
from rtserve.schema import check_ranges
from rtserve.server.busy import BusyConnection
from rtserve.server.connection import HTTPConnection
from rtserve.server.negotiate import ProtocolChoice, alpn_protocols, http2_mode
from rtserve.server.settings import ServerSettings
from rtserve.server.state import Application, ServerState

log = logging.getLogger("rtserve.server")


def make_ssl_context(cert: str, key: str | None, *, http2: bool = False) -> ssl.SSLContext:
    """A server TLS context from PEM files (TLS 1.2+; ALPN offers h2 first when `http2`,
    then HTTP/1.1)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(alpn_protocols(http2))
    return context


def listen_urls(sockets: Sequence[socket.socket], tls: bool) -> list[str]:
    """The URL of each listening socket (`unix:PATH` for a unix socket)."""
    scheme = "https" if tls else "http"
    urls = []
    for sock in sockets:
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            urls.append(f"unix:{name}")
        elif sock.family == socket.AF_INET6:
            urls.append(f"{scheme}://[{name[0]}]:{name[1]}")
        else:
            urls.append(f"{scheme}://{name[0]}:{name[1]}")
    return urls


class CannotListen(RtserveError):
    """The server's address cannot be bound (in use, not permitted, no such address)."""


def listen_failure(settings: ServerSettings, error: OSError) -> str:
    """One line saying which address could not be bound and why."""
    where = settings.unix_socket or f"{', '.join(settings.hosts)} port {settings.port}"
    why = os.strerror(error.errno) if error.errno else str(error)
    return f"cannot listen on {where}: {why}"


def new_connection(state: ServerState, http2: bool = False) -> asyncio.Protocol:
    """The protocol of a new connection: an HTTPConnection (or, when `http2`, a
    ProtocolChoice that hands it to HTTP/2 if ALPN or the h2c preface says so), or a
    BusyConnection (503) when `max_connections` are open already. Beyond as many refusals
    again in flight, the new connection is dropped at once (its handshake done, nothing
    read), so a flood of them cannot hold descriptors."""
    limit = state.settings.max_connections
    if limit and len(state.connections) >= limit:
        if state.refusing >= limit:
            state.stats.connections_refused += 1
            return _Dropped()
        if http2:
            return ProtocolChoice(
                state, lambda: BusyConnection(state), lambda: BusyConnection(state, http2=True)
            )
        return BusyConnection(state)
    if http2:
        return ProtocolChoice(state, lambda: HTTPConnection(state))
    return HTTPConnection(state)


class _Dropped(asyncio.Protocol):
    """A connection closed as soon as it is made (an abort: no lingering)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


def _bound_address(sock: socket.socket) -> tuple[str, int | None]:
    """(host, port) of a TCP socket, (path, None) of a unix one."""
    name = sock.getsockname()
    if isinstance(name, tuple):
        return (str(name[0]), int(name[1]))
    return (name.decode() if isinstance(name, bytes) else str(name), None)


class Server:
    """An HTTP server for one app: `await start()`, then `await shutdown()`."""

    def __init__(self, app: Application, settings: ServerSettings | None = None) -> None:
        self.app = app
        self.settings = settings or ServerSettings()
        self.state: ServerState | None = None
        self._servers: list[asyncio.Server] = []
        self._stopped: asyncio.Event | None = None

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for srv in self._servers for s in srv.sockets]

    @property
    def addresses(self) -> list[str]:
        """Where the server listens, as URLs or unix socket paths."""
        return listen_urls(self.sockets, self.settings.tls.enabled)

    @property
    def port(self) -> int:
        for sock in self.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
        raise RuntimeError("not listening on TCP")

    async def start(self, sock: socket.socket | Sequence[socket.socket] | None = None) -> None:
        """Bind and start accepting (on `sock`, or each of several, if given; else as the
        settings say)."""
        loop = asyncio.get_running_loop()
        s = self.settings
        check_ranges(s)
        alpn_h2, h2c = http2_mode(s)
        ssl_context = make_ssl_context(s.tls.cert, s.tls.key, http2=alpn_h2) if s.tls.cert else None
        state = self.state = ServerState(self.app, s, loop, ssl_context)
        http2 = alpn_h2 or h2c
        bind = getattr(self.app, "bind_server_state", None)
        if bind is not None:  # the app's admin interface reads this server's state
            bind(state)
        factory: Callable[[], asyncio.Protocol] = lambda: new_connection(state, http2)  # noqa: E731
        socks = [sock] if isinstance(sock, socket.socket) else list(sock or ())
        if not socks and s.fd is not None:
            socks = [socket.socket(fileno=s.fd)]
        if socks:
            for one in socks:
                server = await loop.create_server(
                    factory, sock=one, ssl=ssl_context, backlog=s.backlog
                )
                self._servers.append(server)
        elif s.unix_socket:
            if os.path.exists(s.unix_socket) and _is_stale_socket(s.unix_socket):
                os.unlink(s.unix_socket)
            server = await loop.create_unix_server(
                factory, s.unix_socket, ssl=ssl_context, backlog=s.backlog
            )
            self._servers.append(server)
        else:
            server = await loop.create_server(
                factory,
                host=s.hosts,
                port=s.port,
                ssl=ssl_context,
                backlog=s.backlog,
                reuse_port=s.reuse_port or None,
            )
            self._servers.append(server)
        state.listening = [_bound_address(one) for one in self.sockets]
        self._stopped = asyncio.Event()
        state.start_ticker()

    async def shutdown(self, grace: float | None = None, *, restart: bool = False) -> None:
        """Stop accepting, let in-flight requests finish within `grace` s, close the rest.

        `restart`: another process takes over the (shared) listening socket, as on a reload:
        WebSockets are closed with 1012 (service restart) instead of 1001 (going away).
        """
        if self.state is None or self._stopped is None or self._stopped.is_set():
            return
        for server in self._servers:
            server.close()
        grace = self.settings.timeouts.graceful if grace is None else grace
        if restart:
            self.state.ws_shutdown_close = (1012, "server restarting")
            # A connection accepted just before the close usually has its request on the way:
            # give it a moment to arrive, so it is answered rather than closed as idle.
            await asyncio.sleep(min(0.1, grace))
        await self.state.drain_connections(grace)
        for server in self._servers:
            await server.wait_closed()
        if self.settings.unix_socket and os.path.exists(self.settings.unix_socket):
            os.unlink(self.settings.unix_socket)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def serve_until_signalled(self) -> None:
        """Serve until SIGINT/SIGTERM, then shut down gracefully (a second signal forces)."""
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        def on_signal(signum: int) -> None:
            if stopping:
                log.warning("second signal: closing every connection now")
                if self.state is not None:
                    for conn in list(self.state.connections):
                        conn.abort()
                return
            log.info(
                "%s: shutting down (grace %.0fs)",
                signal.Signals(signum).name,
                self.settings.timeouts.graceful,
            )
            stopping.append(loop.create_task(self.shutdown()))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await self.wait_stopped()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _is_stale_socket(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return True
    finally:
        probe.close()
    return False


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed, the default asyncio loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def serve(app: Application, settings: ServerSettings, *, use_uvloop: bool = True) -> None:
    """Run `app` until SIGINT/SIGTERM; blocks. Exits after a graceful shutdown."""

    async def main() -> None:
        server = Server(app, settings)
        startup = getattr(app, "startup", None)
        if startup is not None:
            await startup()
        try:
            try:
                await server.start()
            except OSError as exc:
                raise CannotListen(listen_failure(settings, exc)) from None
            # Everything built so far lives as long as the server: keep it out of the cyclic
            # GC's generations so tens of thousands of connections do not make collections slow.
            gc.collect()
            gc.freeze()
            for address in server.addresses:
                log.info("listening on %s", address)
            await server.serve_until_signalled()
        finally:
            shutdown_hook = getattr(app, "shutdown", None)
            if shutdown_hook is not None:
                await shutdown_hook()

    with asyncio.Runner(loop_factory=new_event_loop if use_uvloop else None) as runner:
        try:
            runner.run(main())
        except CannotListen as exc:
            log.error("%s", exc)
            sys.exit(1)
        except RtserveError as exc:  # a component cannot start (its broker is unreachable)
            log.error("cannot start: %s", exc)
            sys.exit(2)
