"""The request a handler receives: head, body, query, headers, cookies and client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from rtserve.app.datastructures import Headers, QueryParams, parse_cookies
from rtserve.app.forms import FormData, parse_form
from rtserve.app.signing import new_xsrf_token
from rtserve.errors import HTTPError
from rtserve.server.exchange import Exchange
from rtserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from rtserve.app.app import App
    from rtserve.app.response import Response


class Request:
    """An HTTP request; parsed parts (headers, query, cookies, JSON, form) are made on demand."""

    __slots__ = (
        "_cookies",
        "_form",
        "_headers",
        "_json",
        "_query",
        "_state",
        "_xsrf_new",
        "app",
        "exchange",
        "path_params",
    )

    def __init__(self, exchange: Exchange, app: App, path_params: dict[str, Any]) -> None:
        self.exchange = exchange
        self.app = app
        self.path_params = path_params
        self._state: dict[str, Any] | None = None
        self._xsrf_new: str | None = None
        self._headers: Headers | None = None
        self._query: QueryParams | None = None
        self._cookies: dict[str, str] | None = None
        self._json: Any = _UNSET
        self._form: FormData | None = None

    def forget_parsed(self) -> None:
        """Let go of the parsed query, headers and cookies (made again if used again): for a
        request that waits long after its handler read them, as a long poll does."""
        self._query = None
        self._headers = None
        self._cookies = None

    @property
    def state(self) -> dict[str, Any]:
        """A dict for the app's own per-request data (for example from `prepare`)."""
        if self._state is None:
            self._state = {}
        return self._state

    @property
    def xsrf_token(self) -> str:
        """The XSRF token to embed in forms; a new one is set as the `_xsrf` cookie if needed."""
        token = self.cookies.get("_xsrf") or self._xsrf_new
        if not token:
            token = self._xsrf_new = new_xsrf_token()
        return token

    def _add_xsrf_cookie(self, response: Response) -> None:
        """Set the `_xsrf` cookie on `response` if this request made a new token."""
        if self._xsrf_new:
            response.set_cookie("_xsrf", self._xsrf_new, httponly=False, samesite="Strict")

    @property
    def settings(self) -> ServerSettings:
        """The settings the serving server runs with (overrides included)."""
        return self.exchange.state.settings

    @property
    def method(self) -> str:
        return self.exchange.head.method

    @property
    def path(self) -> str:
        """The decoded path, without the query string."""
        return self.exchange.head.path

    @property
    def target(self) -> str:
        """The request target as sent (path and query, still encoded)."""
        return self.exchange.head.target.decode("latin-1")

    @property
    def query_string(self) -> str:
        return self.exchange.head.query_string.decode("latin-1")

    @property
    def http_version(self) -> str:
        return self.exchange.head.version

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers.from_raw(self.exchange.head.headers)
        return self._headers

    @property
    def query(self) -> QueryParams:
        """Query parameters; `getall(name)` for repeated ones."""
        if self._query is None:
            self._query = QueryParams.parse(self.exchange.head.query_string)
        return self._query

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.getall("cookie"))
        return self._cookies

    def get_signed_cookie(self, name: str, *, max_age: float | None = 31 * 86400) -> str | None:
        """The value of a cookie set with `Response.set_signed_cookie`, or None if not valid."""
        value = self.app.cookie_signer.unsign(name, self.cookies.get(name), max_age=max_age)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def client(self) -> str:
        """The client's address (from forwarding headers only when sent by a trusted proxy)."""
        return self.exchange.client_and_scheme[0]

    @property
    def scheme(self) -> str:
        return self.exchange.client_and_scheme[1]

    @property
    def host(self) -> str:
        return self.headers.get("host", "")

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def body(self) -> bytes:
        """The whole request body (routes declared with `stream=True` use `stream()`)."""
        if self.exchange.streaming:
            raise RuntimeError("this route streams its body: read it with request.stream()")
        return self.exchange.body

    def stream(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive; for routes declared with `stream=True`."""
        return self.exchange.stream()

    async def json(self) -> Any:
        """The body parsed as JSON; 400 if it is not valid JSON."""
        if self._json is _UNSET:
            body = self.body if not self.exchange.streaming else await self._read_stream()
            try:
                self._json = json.loads(body)
            except ValueError:
                raise HTTPError(400, "request body is not valid JSON") from None
        return self._json

    async def form(self) -> FormData:
        """The body parsed as a form (urlencoded or multipart), within the configured limits."""
        if self._form is None:
            body = self.body if not self.exchange.streaming else await self._read_stream()
            limits = self.settings.limits
            self._form = parse_form(
                self.content_type,
                body,
                max_fields=limits.max_form_fields,
                max_file_size=limits.max_upload_size,
            )
        return self._form

    async def _read_stream(self) -> bytes:
        return b"".join([chunk async for chunk in self.exchange.stream()])

    @property
    def is_disconnected(self) -> bool:
        return self.exchange.disconnected

    async def wait_disconnected(self) -> None:
        """Return when the client has gone away."""
        await self.exchange.wait_disconnected()

    def url_for(self, name: str, **params: Any) -> str:
        return self.app.url_for(name, **params)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


class _Unset:
    pass


_UNSET: Any = _Unset()
