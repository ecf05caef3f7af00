"""Middleware: an application wrapping another, over the server's two-method protocol.

The server talks to an app through `rtserve.server.state.Application`: `wants_stream(exchange)`
when a request's head has arrived, then `dispatch(exchange)`. A middleware implements the same
two methods around an `inner` application, so a stack is built by wrapping, innermost first:

    app = App()
    served = BearerAuth(ResponseHeaders(app, [(b"x-frame-options", b"DENY")]), token)

`Middleware` passes both calls (and the app's lifecycle: startup, shutdown,
bind_server_state) through; a subclass overrides `dispatch` to answer a request itself (a
401) or to hand the inner app an `ExchangeView` that changes what it answers.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl

from rtserve.app.response import JSON
from rtserve.protocol.http11 import Header, encode_headers
from rtserve.server.exchange import Exchange

if TYPE_CHECKING:
    from rtserve.server.state import Application, ServerState


class Middleware:
    """An Application around `inner` that changes nothing: subclass it and override
    `dispatch` (and `wants_stream`, to decide on body streaming) for what yours does."""

    def __init__(self, inner: Application) -> None:
        self.inner = inner

    def wants_stream(self, exchange: Exchange) -> bool:
        """The inner app's answer: stream the body of this request as it arrives?"""
        return self.inner.wants_stream(exchange)

    def dispatch(self, exchange: Exchange) -> asyncio.Task[None] | None:
        """Hand the exchange to the inner app (answered now: None; else its Task)."""
        return self.inner.dispatch(exchange)

    # The lifecycle the server and `serve` look up on the app they are given.
    def bind_server_state(self, state: ServerState) -> None:
        bind = getattr(self.inner, "bind_server_state", None)
        if bind is not None:
            bind(state)

    async def startup(self) -> None:
        startup = getattr(self.inner, "startup", None)
        if startup is not None:
            await startup()

    async def shutdown(self) -> None:
        shutdown = getattr(self.inner, "shutdown", None)
        if shutdown is not None:
            await shutdown()


class ExchangeView:
    """An exchange as a middleware hands it to the inner app: every attribute and method is
    the wrapped exchange's, except those a subclass overrides (`respond` and `start`, to change
    a response's status or head). Costs an object per request and a Python-level lookup per
    attribute the inner app reads (about 1.8 us per small request, bench/middleware.py): only
    middleware that needs it makes one."""

    __slots__ = ("exchange",)

    def __init__(self, exchange: Exchange) -> None:
        object.__setattr__(self, "exchange", exchange)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.exchange, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.exchange, name, value)

    def as_exchange(self) -> Exchange:
        """This view, typed as what the inner app is given."""
        return cast(Exchange, self)


class ResponseHeaders(Middleware):
    """Adds `headers` to every response of the inner app (one that sets a header of the same
    name gets both)."""

    def __init__(self, inner: Application, headers: list[Header]) -> None:
        super().__init__(inner)
        self.headers = list(headers)
        self._encoded = encode_headers(self.headers)

    def dispatch(self, exchange: Exchange) -> asyncio.Task[None] | None:
        return self.inner.dispatch(_WithHeaders(exchange, self).as_exchange())


class _WithHeaders(ExchangeView):
    __slots__ = ("added",)

    def __init__(self, exchange: Exchange, added: ResponseHeaders) -> None:
        super().__init__(exchange)
        object.__setattr__(self, "added", added)

    def respond(self, status: int, headers: list[Header] | bytes, body: bytes = b"") -> None:
        if isinstance(headers, bytes):
            headers = headers + self.added._encoded
        else:
            headers = headers + self.added.headers
        self.exchange.respond(status, headers, body)

    def start(self, status: int, headers: list[Header], content_length: int | None = None) -> None:
        self.exchange.start(status, headers + self.added.headers, content_length)


_UNAUTHORIZED_BODY = b'{"error":"unauthorized"}'


class BearerAuth(Middleware):
    """Answers 401 (JSON, with `WWW-Authenticate: Bearer`) to a request without
    `Authorization: Bearer <token>`; the paths in `query_token_paths` also take `?token=`
    (a browser opening a page, or an EventSource, cannot send the header). The comparison
    takes the same time whatever the token given."""

    def __init__(
        self,
        inner: Application,
        token: str,
        *,
        realm: str = "rtserve",
        query_token_paths: Collection[str] = (),
    ) -> None:
        super().__init__(inner)
        self._token = token.encode("utf-8")
        self._query_token_paths = frozenset(query_token_paths)
        self._unauthorized = encode_headers(
            [
                (b"content-type", JSON.encode()),
                (b"www-authenticate", b'Bearer realm="%s"' % realm.encode("latin-1")),
            ]
        )

    def dispatch(self, exchange: Exchange) -> asyncio.Task[None] | None:
        if not self.authorized(exchange):
            exchange.respond(401, self._unauthorized, _UNAUTHORIZED_BODY)
            return None
        return self.inner.dispatch(exchange)

    def authorized(self, exchange: Exchange) -> bool:
        """Whether the request carries the token (header, or query on the allowed paths)."""
        head = exchange.head
        for name, value in head.headers:
            if name.lower() == b"authorization":
                scheme, _, given = value.strip().partition(b" ")
                ok = hmac.compare_digest(given.strip(), self._token)
                return ok and scheme.lower() == b"bearer"
        if head.path in self._query_token_paths and head.query_string:
            for key, value in parse_qsl(head.query_string, keep_blank_values=True):
                if key == b"token":
                    return hmac.compare_digest(value, self._token)
        return False
