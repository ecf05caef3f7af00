"""ASGI `http` and `websocket` scopes built from a request's `Exchange`.

`path` is the whole decoded path and `root_path` the mount's prefix (the ASGI spec and
Starlette's `Mount` agree: the app routes on `path` minus `root_path`). `client` and `scheme`
are what the server's trusted-proxy settings make of the forwarding headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtserve.asgi.types import ASGI_VERSION, RTSERVE_EXTENSION, Scope

if TYPE_CHECKING:
    from rtserve.app.app import App
    from rtserve.server.exchange import Exchange
    from rtserve.server.settings import ServerSettings
    from rtserve.server.state import ServerState


class ScopeMaker:
    """The scopes of one mounted app: its root path, the lifespan `state` copied into each
    scope, and the extensions it is offered (the rtserve App it is mounted on)."""

    __slots__ = (
        "_http",
        "_server",
        "_state",
        "http_extensions",
        "root_path",
        "state",
        "ws_extensions",
    )

    def __init__(self, root_path: str, app: App) -> None:
        self.root_path = root_path
        self.state: dict[str, Any] = {}
        mine = {"app": app}
        self.http_extensions: dict[str, Any] = {RTSERVE_EXTENSION: mine}
        self.ws_extensions: dict[str, Any] = {
            RTSERVE_EXTENSION: mine,
            "websocket.http.response": {},
        }
        self._state: ServerState | None = None  # whose address `_server` is
        self._server: tuple[str, int | None] | None = None
        # Each http scope starts as a copy of this one (every key, in the spec's order): a
        # dict copied and nine values replaced costs less than a 14-entry dict built anew.
        self._http: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": root_path,
            "headers": [],
            "client": None,
            "server": None,
            "state": self.state,
            "extensions": self.http_extensions,
        }

    def http(self, exchange: Exchange) -> Scope:
        """The scope of an HTTP request."""
        head = exchange.head
        peer = exchange.peer
        state = exchange.state
        if state is not self._state:
            self._http["server"] = self._server_of(state)
        scope = self._http.copy()
        if state.proxies.networks:  # forwarding headers may name the client
            host, scheme = exchange.client_and_scheme
            scope["client"] = (peer if host else None) if host == peer[0] else (host, 0)
        else:
            scheme = state.scheme
            scope["client"] = peer if peer[0] else None
        scope["http_version"] = head.version
        scope["method"] = head.method
        scope["scheme"] = scheme
        scope["path"] = head.path
        scope["raw_path"] = head.raw_path
        scope["query_string"] = head.query_string
        headers = []
        for name, value in head.headers:  # a loop costs less than a comprehension's call
            headers.append((name.lower(), value))
        scope["headers"] = headers
        lifespan_state = self.state
        scope["state"] = lifespan_state.copy() if lifespan_state else {}
        return scope

    def websocket(self, exchange: Exchange, subprotocols: list[str]) -> Scope:
        """The scope of a WebSocket opening handshake offering `subprotocols`."""
        head = exchange.head
        host, scheme = exchange.client_and_scheme
        return {
            "type": "websocket",
            "asgi": ASGI_VERSION,
            "http_version": head.version,
            "scheme": "wss" if scheme == "https" else "ws",
            "path": head.path,
            "raw_path": head.raw_path,
            "query_string": head.query_string,
            "root_path": self.root_path,
            "headers": [(name.lower(), value) for name, value in head.headers],
            "client": _client(exchange, host),
            "server": self._server_of(exchange.state),
            "subprotocols": subprotocols,
            "state": self.state.copy(),
            "extensions": self.ws_extensions,
        }

    def _server_of(self, state: ServerState) -> tuple[str, int | None] | None:
        """(host, port) the server listens on, kept for the next requests: the first address
        it bound (its real port when it picked a free one), else the configured one; None
        when neither is known (no listener, port 0)."""
        self._state = state
        server = self._server = (
            state.listening[0] if state.listening else _configured_address(state.settings)
        )
        return server


def _configured_address(settings: ServerSettings) -> tuple[str, int | None] | None:
    if settings.unix_socket:
        return (settings.unix_socket, None)
    if settings.fd is not None or not settings.port:
        return None
    host = settings.host if isinstance(settings.host, str) else settings.host[0]
    return (host, settings.port)


def _client(exchange: Exchange, host: str) -> tuple[str, int] | None:
    """(address, port) of the client; port 0 when a trusted proxy named it."""
    peer = exchange.peer
    if host == peer[0]:
        return peer if host else None
    return (host, 0)
