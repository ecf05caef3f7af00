"""`HostedApp`: an ASGI 3 app (or a WSGI app through a2wsgi) served at a path prefix of an
App, beside its own routes and channels; a component (`App.mount`).

Every request under the prefix goes to the hosted app, whatever its method; the App's own
routes (literal paths, the channels' endpoints) win where both match. Its lifespan runs in
the App's startup and shutdown hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, cast

from rtserve.app.request import Request
from rtserve.app.websocket import WebSocketRoute, checked_handshake
from rtserve.asgi.http import ResponseHeads, serve_http
from rtserve.asgi.lifespan import Lifespan
from rtserve.asgi.scope import ScopeMaker
from rtserve.asgi.types import ASGIApp
from rtserve.asgi.websocket import serve_websocket

if TYPE_CHECKING:
    from rtserve.app.app import App
    from rtserve.server.exchange import Exchange

# Every method goes to the hosted app (it answers 405 itself); HEAD too, not the App's own.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
DEFAULT_WSGI_THREADS = 10
Interface = Literal["asgi", "wsgi"]


def is_asgi_app(target: object) -> bool:
    """Whether `target` looks like an ASGI 3 app: a coroutine function, or an object whose
    `__call__` is one (FastAPI, Starlette, Django's ASGIHandler)."""
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 (the method itself is wanted)
    return call is not None and inspect.iscoroutinefunction(call)


def wsgi_to_asgi(app: Callable[..., Any], threads: int) -> ASGIApp:
    """The WSGI `app` as an ASGI app (a2wsgi), its calls run in a pool of `threads`."""
    try:
        from a2wsgi import WSGIMiddleware
    except ImportError:
        raise RuntimeError("serving a WSGI app needs a2wsgi: pip install 'rtserve[wsgi]'") from None
    hosted: Any = WSGIMiddleware(app, workers=threads)  # typed with its own TypedDicts
    return cast(ASGIApp, hosted)


class HostedApp:
    """An ASGI app mounted at `prefix` ('' or '/': the whole site). `interface='wsgi'` hosts a
    WSGI app in a pool of `threads` (default: guessed, ASGI for a coroutine callable)."""

    def __init__(
        self,
        prefix: str,
        app: Any,
        *,
        interface: Interface | None = None,
        threads: int = DEFAULT_WSGI_THREADS,
        lifespan: bool = True,
    ) -> None:
        if not callable(app):
            raise TypeError(f"{app!r} is not an ASGI or WSGI app (not callable)")
        if prefix and not prefix.startswith("/"):
            raise ValueError(f"mount path must start with '/': {prefix!r}")
        if "{" in prefix:
            raise ValueError(f"mount path takes no parameters: {prefix!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.prefix = prefix.rstrip("/")
        self.interface: Interface = interface or ("asgi" if is_asgi_app(app) else "wsgi")
        self.target = app
        self.threads = threads
        self.name = getattr(app, "__qualname__", None) or type(app).__qualname__
        self._app: ASGIApp = app if self.interface == "asgi" else wsgi_to_asgi(app, threads)
        self._lifespan = lifespan and self.interface == "asgi"
        self._scopes: ScopeMaker | None = None
        self._owner: App | None = None  # the App it is mounted on, once installed
        self._route = WebSocketRoute()
        self._heads = ResponseHeads()

    def install(self, app: App) -> None:
        self._owner = app
        scopes = self._scopes = ScopeMaker(self.prefix, app)
        flags: dict[str, Any] = {"stream": True, "xsrf_exempt": True, "direct": True}
        if self.prefix:
            app.router.add(self.prefix, list(METHODS), self, **flags)
        app.router.add(self.prefix + "/{rest:path}", list(METHODS), self, **flags)
        if self._lifespan:
            lifespan = Lifespan(self._app, self.name, scopes.state)
            app.on_startup.append(lifespan.startup)
            # Bounded like the server's own drain: a shutdown that hangs does not hold the exit.
            app.on_shutdown.append(lambda: lifespan.shutdown(app.settings.timeouts.graceful))
        executor = getattr(self._app, "executor", None)
        if executor is not None:  # a2wsgi's pool
            app.on_shutdown.append(lambda: executor.shutdown(wait=False))

    @property
    def __wrapped__(self) -> Any:
        """The hosted app: what `rtserve routes` names as the routes' handler."""
        return self.target

    def __call__(self, exchange: Exchange) -> Coroutine[Any, Any, None]:
        """The routes' (direct) handler: the hosted app answers the request (or its
        WebSocket)."""
        scopes = self._scopes
        assert scopes is not None
        if exchange.head.upgrade and _asks_websocket(exchange.head.headers):
            assert self._owner is not None
            request = Request(exchange, self._owner, {})
            handshake = checked_handshake(request, self._route.settings(request.settings.websocket))
            scope = scopes.websocket(exchange, handshake.subprotocols)
            return serve_websocket(self._app, scope, exchange, handshake, self._route)
        return serve_http(self._app, scopes.http(exchange), exchange, self._heads)


def _asks_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(n.lower() == b"upgrade" and b"websocket" in v.lower() for n, v in headers)
