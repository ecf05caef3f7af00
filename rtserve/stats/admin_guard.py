"""Which requests the admin interface's HTTP address refuses before routing (403), so that
a web page of another site cannot use it through the browser of someone who can reach it:
`refusal` says why, `AdminGuard` is the middleware answering it.

- A cross-site request (`Sec-Fetch-Site: cross-site|same-site`, or an `Origin` other than the
  address asked for) is refused, token or not; a top-level navigation to a page is not (a
  link to the admin page: what it shows is not readable by the page that linked it).
- Without a token the address is read-only: POST and the like need `admin.token` (the unix
  socket, private to its user, needs none).
- Without a token the `Host` must be a loopback name (127.0.0.1, ::1, localhost) with the
  bound port: a page whose DNS name was rebound to 127.0.0.1 sends its own name.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rtserve.app.middleware import Middleware
from rtserve.app.response import JSON, dump_json
from rtserve.protocol.http11 import encode_headers
from rtserve.protocol.ws_handshake import check_origin
from rtserve.server.exchange import Exchange

if TYPE_CHECKING:
    from rtserve.server.state import Application

_READ_METHODS = frozenset({"GET", "HEAD"})
_CROSS_SITE = frozenset({b"cross-site", b"same-site"})
_FORBIDDEN_HEADERS = encode_headers([(b"content-type", JSON.encode())])


class AdminGuard(Middleware):
    """Answers 403 (JSON, with the reason) to the requests `refusal` refuses, before the inner
    app routes them. `port` gives the bound port (known once listening); `has_token`: a
    BearerAuth outside this guard checks a token."""

    def __init__(self, inner: Application, port: Callable[[], int], *, has_token: bool) -> None:
        super().__init__(inner)
        self._port = port
        self._has_token = has_token

    def dispatch(self, exchange: Exchange) -> asyncio.Task[None] | None:
        head = exchange.head
        why = refusal(
            head.method, head.headers, head.authority, has_token=self._has_token, port=self._port()
        )
        if why is not None:
            exchange.respond(403, _FORBIDDEN_HEADERS, dump_json({"error": why}))
            return None
        return self.inner.dispatch(exchange)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve anywhere


def refusal(
    method: str,
    headers: Sequence[tuple[bytes, bytes]],
    authority: bytes | None,
    *,
    has_token: bool,
    port: int,
) -> str | None:
    """Why a request to the admin HTTP address on `port` is refused, or None to serve it.
    `authority`: the host of an absolute-form target, which stands for Host."""
    fields: dict[bytes, bytes] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), value.strip())
    host = authority if authority is not None else fields.get(b"host", b"")
    host_text = host.decode("latin-1")
    navigation = method in _READ_METHODS and fields.get(b"sec-fetch-mode") == b"navigate"
    site = fields.get(b"sec-fetch-site", b"").lower()
    origin = fields.get(b"origin")
    if not navigation and (
        site in _CROSS_SITE
        or (origin is not None and not check_origin(origin.decode("latin-1"), host_text, None))
    ):
        return "cross-site request refused: open the admin interface at its own address"
    if has_token:
        return None
    if not _names_this_address(host_text, port):
        return (
            f"Host {host_text!r} is not this admin interface's address (use "
            f"http://127.0.0.1:{port}), or set admin.token to serve it under other names"
        )
    if method not in _READ_METHODS:
        return (
            f"{method} over HTTP needs a token: set admin.token, or use the admin unix socket "
            "(admin.socket)"
        )
    return None


def _names_this_address(host: str, port: int) -> bool:
    """Whether a Host value is a loopback name with `port` (80 when it names none)."""
    name, sep, port_text = host.rpartition(":")
    if not sep or "]" in port_text:  # no port: `localhost`, `[::1]`
        name, port_text = host, "80"
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return port_text.isdigit() and int(port_text) == port and is_loopback(name)
