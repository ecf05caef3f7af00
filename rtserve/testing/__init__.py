"""Test helpers for rtserve apps: a live server on an ephemeral loopback port, and clients.

`serve_app(app)` is an async context manager for async tests; `ThreadedServer(app)` runs the
server on its own loop in a thread for plain (sync) tests. Either serves an App, or a
middleware stack around one (its settings and admin interface are the App's). `SyncClient`
talks to a test server with the standard library's http.client — an independent HTTP
implementation.
`websocket_connect(url)` opens a WebSocket to a test server (rtserve's own client side of RFC
6455); `rtserve.client.Client` speaks the channel protocol.
"""

from __future__ import annotations

import asyncio
import http.client
import json as jsonlib
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rtserve.app.app import App
from rtserve.app.datastructures import Headers
from rtserve.app.middleware import Middleware
from rtserve.client.ws import ClientWebSocket
from rtserve.client.ws import connect as websocket_connect
from rtserve.server.listener import Server, new_event_loop
from rtserve.server.settings import ServerSettings
from rtserve.server.state import Application

if TYPE_CHECKING:  # a plain `ThreadedServer` is one of `rtserve.App` (PEP 696's default)
    from typing_extensions import TypeVar as DefaultingTypeVar

    from rtserve.realtime.application import App as ChannelsApp  # what `rtserve.App` is

    AppT = DefaultingTypeVar("AppT", bound=Application, default=ChannelsApp)
else:
    AppT = TypeVar("AppT", bound=Application)

__all__ = [
    "ClientResponse",
    "ClientWebSocket",
    "Server",
    "SyncClient",
    "ThreadedServer",
    "serve_app",
    "websocket_connect",
]


def _innermost(app: Application) -> Application:
    """The application under a middleware stack (the stack's settings and admin are its)."""
    for _ in range(1000):  # bounded: a stack is a few layers deep
        if not isinstance(app, Middleware):
            break
        app = app.inner
    return app


def _test_settings(app: Application, **overrides: Any) -> ServerSettings:
    inner = _innermost(app)
    base = inner.settings if isinstance(inner, App) else ServerSettings()
    settings = replace(base, host="127.0.0.1", port=0, unix_socket=None, fd=None)
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@asynccontextmanager
async def serve_app(
    app: Application, *, private_admin: bool = True, **overrides: Any
) -> AsyncIterator[Server]:
    """Run `app` on 127.0.0.1 and an ephemeral port for the duration of the block.

    Its admin interface, if it has one, serves on a socket in a temporary folder and an
    ephemeral port (`app.admin.socket_path`, `app.admin.port`), never on the project's own
    addresses, which a running `rtserve run` owns; `private_admin=False` keeps them."""
    inner = _innermost(app)
    admin = inner.admin if private_admin and isinstance(inner, App) else None
    startup = getattr(app, "startup", None)
    shutdown = getattr(app, "shutdown", None)
    with admin.private() if admin is not None and not admin.running else nullcontext():
        server = Server(app, _test_settings(app, **overrides))
        if startup is not None:
            await startup()
        await server.start()
        try:
            yield server
        finally:
            await server.shutdown(grace=1.0)
            if shutdown is not None:
                await shutdown()


@dataclass
class ClientResponse:
    """A response as a test sees it."""

    status: int
    headers: Headers
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return jsonlib.loads(self.body)


class SyncClient:
    """A keep-alive HTTP/1.1 client (stdlib http.client) for one server."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | str | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> ClientResponse:
        send_headers = dict(headers or {})
        if json is not None:
            body = jsonlib.dumps(json)
            send_headers.setdefault("Content-Type", "application/json")
        self.conn.request(method, path, body=body, headers=send_headers)
        response = self.conn.getresponse()
        data = response.read()
        return ClientResponse(response.status, Headers(response.getheaders()), data)

    def get(self, path: str, **kw: Any) -> ClientResponse:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> ClientResponse:
        return self.request("POST", path, **kw)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadedServer(Generic[AppT]):
    """Serve `app` from a background thread with its own event loop (for sync tests), as
    `serve_app` does (its admin interface on private addresses unless `private_admin=False`).

    Use as a context manager; `port`, `url` and `client()` are available inside.
    """

    def __init__(self, app: AppT, *, private_admin: bool = True, **overrides: Any) -> None:
        self.app = app
        self.private_admin = private_admin
        self.overrides = overrides
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 10.0) -> SyncClient:
        return SyncClient("127.0.0.1", self.port, timeout)

    def _run(self) -> None:
        loop = self.loop = new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve_app(
            self.app, private_admin=self.private_admin, **self.overrides
        ) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()

    def start(self) -> ThreadedServer[AppT]:
        self._thread = threading.Thread(target=self._run, name="rtserve-test", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("test server did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the server's loop and return its result (waits up to 10 s)."""
        assert self.loop is not None

        async def run() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread is not None:
            if self._thread.is_alive():
                self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> ThreadedServer[AppT]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
