"""Class-based handlers in the Tornado manner: `get`/`post`/... methods with hooks.

`prepare()` runs before the method and `on_finish()` after the response; either may be
async. A method may return a value exactly like a function handler, or build the response
with `set_status`/`set_header`/`write` and, to stream, `await flush()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtserve.app.response import JSON, OCTETS, TEXT, Response, dump_json

if TYPE_CHECKING:
    from rtserve.app.app import App
    from rtserve.app.request import Request

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Handler:
    """Subclass and define the HTTP methods you answer, e.g. `async def get(self, id): ...`."""

    def __init__(self, request: Request, path_params: dict[str, Any]) -> None:
        self.request = request
        self.app: App = request.app
        self.path_params = path_params
        self.response = Response()
        self._chunks: list[bytes] = []
        self._streaming = False
        self._wrote = False

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The HTTP methods this class defines."""
        return [m for m in HTTP_METHODS if callable(getattr(cls, m.lower(), None))]

    # --- hooks -----------------------------------------------------------------------------

    def prepare(self) -> Any:
        """Runs before the method; may be async; raise HTTPError to refuse the request."""
        return None

    def on_finish(self) -> Any:
        """Runs after the response has been sent (or failed); may be async."""
        return None

    # --- building the response -------------------------------------------------------------

    def set_status(self, status: int) -> None:
        self.response.status = status

    def set_header(self, name: str, value: str) -> None:
        self.response.set_header(name, value)

    def add_header(self, name: str, value: str) -> None:
        self.response.add_header(name, value)

    def set_cookie(self, name: str, value: str, **options: Any) -> None:
        self.response.set_cookie(name, value, **options)

    def set_signed_cookie(self, name: str, value: str | bytes, **options: Any) -> None:
        self.response.set_signed_cookie(self.app.cookie_signer, name, value, **options)

    def write(self, chunk: str | bytes | dict[str, Any] | list[Any]) -> None:
        """Append to the body; a dict or list is sent as JSON (and sets the content type)."""
        if isinstance(chunk, dict | list):
            self.response.set_header("content-type", JSON)
            chunk = dump_json(chunk)
        elif isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        self._wrote = True
        self._chunks.append(chunk)

    async def flush(self) -> None:
        """Send what was written so far (the head first, then chunks) and wait for it to drain."""
        exchange = self.request.exchange
        if not self._streaming:
            self.request._add_xsrf_cookie(self.response)
            headers = self.response.raw_headers(self.request.scheme)
            self._streaming = True
            exchange.start(self.response.status, headers)
        if self._chunks:
            exchange.write(b"".join(self._chunks))
            self._chunks.clear()
        await exchange.drain()

    def render(self, template: str, **context: Any) -> None:
        """Render a Jinja2 template into the body (needs the `templates` extra)."""
        self.response.set_header("content-type", "text/html; charset=utf-8")
        self.write(self.app.render_template(template, request=self.request, **context))

    def _result(self, returned: Any) -> Any:
        """What the app should send: the returned value, or what was written."""
        if self._streaming:
            if returned is not None:
                self.write(returned)
            if self._chunks:
                self.request.exchange.write(b"".join(self._chunks))
            self.request.exchange.end()
            return SENT
        response = self.response
        touched = response.status != 200 or bool(response.headers) or bool(response.cookies)
        if returned is not None:
            return self._merge(returned) if touched else returned
        if self._wrote or touched:
            response.body = b"".join(self._chunks)
            if response.body and not response.has_header("content-type"):
                response.set_header("content-type", "text/html; charset=utf-8")
            return response
        return None

    def _merge(self, returned: Any) -> Any:
        """`returned`, keeping the status, headers and cookies set on this handler."""
        response = self.response
        if isinstance(returned, Response):
            # The returned response's own headers and status win; cookies add up.
            present = {name.lower() for name, _ in returned.headers}
            for name, value in response.headers:
                if name.lower() not in present:
                    returned.add_header(name, value)
            returned.cookies[:0] = response.cookies
            return returned
        kind = type(returned)
        if kind is str:
            body, media_type = returned.encode("utf-8"), TEXT
        elif kind is bytes:
            body, media_type = returned, OCTETS
        elif kind is dict or kind is list:
            body, media_type = dump_json(returned), JSON
        else:
            return returned  # not a supported result: the app answers 500
        response.body = body
        if not response.has_header("content-type"):
            response.set_header("content-type", media_type)
        return response


class _Sent:
    """Marker returned in place of a result: the response has been sent already."""


SENT: Any = _Sent()
