"""Responses: plain bodies, JSON, HTML, redirects and streams, with cookies set safely.

A response is sent through an `Exchange` by `send()`, which returns None when the response
went out at once, or a coroutine that finishes sending (streams, files).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
)
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rtserve.server.exchange import Exchange

if TYPE_CHECKING:
    from rtserve.app.signing import CookieSigner

HeadersInit = Mapping[str, str] | Iterable[tuple[str, str]] | None

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"
OCTETS = "application/octet-stream"


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _make_json_dumper() -> Callable[[Any], bytes]:
    """dump_json, with a reusable C encoder where CPython has one (building one per call is
    most of the cost)."""
    encode = _encoder.encode
    make = getattr(json.encoder, "c_make_encoder", None)
    escape = getattr(json.encoder, "c_encode_basestring", None)
    chunks = None
    if make is not None and escape is not None:
        # No circular-reference markers: a cyclic value ends in RecursionError, a 500.
        with contextlib.suppress(TypeError):
            chunks = make(None, _encoder.default, escape, None, ":", ",", False, False, True)

    if chunks is None:

        def dump_json(value: Any) -> bytes:
            return encode(value).encode("utf-8")

    else:

        def dump_json(value: Any) -> bytes:
            if type(value) is str:
                return encode(value).encode("utf-8")
            return "".join(chunks(value, 0)).encode("utf-8")

    dump_json.__doc__ = "Compact UTF-8 JSON."
    return dump_json


dump_json = _make_json_dumper()


class Response:
    """A status, headers and a body held in memory."""

    __slots__ = ("body", "cookies", "headers", "status")

    media_type: str = TEXT

    def __init__(
        self,
        body: str | bytes = b"",
        status: int = 200,
        headers: HeadersInit = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.cookies: list[tuple[str, bool]] = []  # (Set-Cookie value, add Secure under HTTPS)
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if headers is None:
            self.headers: list[tuple[str, str]] = []
        elif isinstance(headers, Mapping):
            self.headers = list(headers.items())
        else:
            self.headers = list(headers)
        if content_type is None and not self.has_header("content-type"):
            content_type = self.media_type if (self.body or type(self) is not Response) else None
        if content_type is not None:
            self.set_header("content-type", content_type)

    # --- headers ---------------------------------------------------------------------------

    def has_header(self, name: str) -> bool:
        lname = name.lower()
        return any(n.lower() == lname for n, _ in self.headers)

    def get_header(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return default

    def set_header(self, name: str, value: str) -> None:
        """Replace every field called `name` with one."""
        lname = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lname]
        self.headers.append((name, value))

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def set_cookie(
        self,
        name: str,
        value: str,
        *,
        max_age: int | None = None,
        expires: datetime | None = None,
        path: str = "/",
        domain: str | None = None,
        secure: bool | None = None,
        httponly: bool = True,
        samesite: str | None = "Lax",
    ) -> None:
        """Add a Set-Cookie. Safe defaults: HttpOnly, SameSite=Lax, Secure under HTTPS.

        `secure=None` means Secure whenever the request came over HTTPS.
        """
        if not name or any(c in name for c in ' \t\r\n;,="()<>@:\\/[]?{}'):
            raise ValueError(f"invalid cookie name {name!r}")
        for attribute, text in (("path", path), ("domain", domain)):
            # A `;` would smuggle in attributes of its own (Domain=, Secure, ...).
            if text and (";" in text or not text.isprintable()):
                raise ValueError(f"invalid cookie {attribute} {text!r}")
        if samesite and samesite.lower() not in ("strict", "lax", "none"):
            raise ValueError(f"samesite must be Strict, Lax or None, not {samesite!r}")
        parts = [f"{name}={quote(value, safe='')}"]
        if max_age is not None:
            parts.append(f"Max-Age={int(max_age)}")
        if expires is not None:
            # Naive datetimes are taken as UTC; aware ones are converted to it.
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            else:
                expires = expires.astimezone(UTC)
            parts.append(f"Expires={format_datetime(expires, usegmt=True)}")
        if path:
            parts.append(f"Path={path}")
        if domain:
            parts.append(f"Domain={domain}")
        if secure or (secure is None and samesite and samesite.lower() == "none"):
            parts.append("Secure")
        if httponly:
            parts.append("HttpOnly")
        if samesite:
            parts.append(f"SameSite={samesite}")
        self.cookies.append(("; ".join(parts), secure is None and "Secure" not in parts))

    def delete_cookie(self, name: str, *, path: str = "/", domain: str | None = None) -> None:
        self.set_cookie(name, "", max_age=0, path=path, domain=domain, samesite=None)

    def set_signed_cookie(
        self, signer: CookieSigner, name: str, value: str | bytes, **options: Any
    ) -> None:
        """Set a cookie whose value is signed (see `Request.get_signed_cookie`)."""
        self.set_cookie(name, signer.sign(name, value), **options)

    # --- sending ---------------------------------------------------------------------------

    def raw_headers(self, scheme: str) -> list[tuple[bytes, bytes]]:
        """Header fields as bytes; cookies set with `secure=None` get Secure under HTTPS.

        Raises ValueError for a field that could split the head (CR, LF or NUL, or a bad
        name): checked here, before anything is sent, so the app can still answer 500.
        """
        out = [_field(n, v) for n, v in self.headers]
        for value, auto_secure in self.cookies:
            if auto_secure and scheme == "https":
                value += "; Secure"
            out.append(_field("set-cookie", value))
        return out

    def send(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        """Write this response to `exchange`."""
        # The scheme (proxy headers resolved) matters only to cookies.
        scheme = exchange.client_and_scheme[1] if self.cookies else "http"
        exchange.respond(self.status, self.raw_headers(scheme), self.body)
        return None


def check_header(name: str, value: str) -> None:
    """ValueError unless `name: value` can be sent as a header field."""
    _field(name, value)


def _field(name: str, value: str) -> tuple[bytes, bytes]:
    if not name or _BAD_NAME.search(name) or _BAD_VALUE.search(value):
        raise ValueError(f"invalid header field {name!r}: {value!r}")
    return name.encode("latin-1"), value.encode("latin-1")


# What may not be in a field name (RFC 9110 token) or value: one regex search each, not a
# scan per character.
_BAD_NAME = re.compile(r'[ \t\r\n\0:()<>@,;\\"/\[\]?={}]')
_BAD_VALUE = re.compile(r"[\r\n\0]")


class JSONResponse(Response):
    """A JSON document."""

    __slots__ = ()
    media_type = JSON

    def __init__(
        self,
        content: Any,
        status: int = 200,
        headers: HeadersInit = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(dump_json(content), status, headers, content_type)


class HTMLResponse(Response):
    __slots__ = ()
    media_type = HTML


class RedirectResponse(Response):
    """A redirect to `url` (302 Found by default; 301, 303, 307 and 308 also make sense)."""

    __slots__ = ()

    def __init__(self, url: str, status: int = 302, headers: HeadersInit = None) -> None:
        super().__init__(b"", status, headers)
        self.set_header("location", quote(url, safe=":/%#?=@[]!$&'()*+,;~"))


class StreamingResponse(Response):
    """A body produced piece by piece; each piece is flushed and awaited (backpressure).

    The length is unknown, so HTTP/1.1 clients get chunked transfer coding.
    """

    __slots__ = ("content",)

    def __init__(
        self,
        content: AsyncIterable[str | bytes] | Iterable[str | bytes],
        status: int = 200,
        headers: HeadersInit = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(b"", status, headers, content_type or OCTETS)
        self.content = content

    def send(self, exchange: Exchange) -> Coroutine[Any, Any, None]:
        return self._stream(exchange)

    async def _stream(self, exchange: Exchange) -> None:
        exchange.start(self.status, self.raw_headers(exchange.client_and_scheme[1]))
        content = self.content
        try:
            if isinstance(content, AsyncIterable):
                async for piece in content:
                    exchange.write(piece.encode("utf-8") if isinstance(piece, str) else piece)
                    await exchange.drain()
            else:
                for piece in content:
                    exchange.write(piece.encode("utf-8") if isinstance(piece, str) else piece)
                    await exchange.drain()
        except BaseException:
            # The body is cut short: close the connection so that ending the exchange
            # writes no last-chunk, and the client sees an incomplete response.
            exchange.close()
            await _close_iterator(content)
            raise
        exchange.end()


async def _close_iterator(content: Any) -> None:
    """Run the `finally` blocks of an abandoned generator now rather than at GC time."""
    try:
        if isinstance(content, AsyncGenerator):
            await content.aclose()
        elif isinstance(content, Generator):
            content.close()
    except Exception:
        pass
