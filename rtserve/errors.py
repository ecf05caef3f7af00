"""The exception tree of rtserve.

RtserveError
 ├── HTTPError                 an HTTP answer with a status (raised by handlers and the framework)
 │    └── MissingArgument      `request.query[name]` / `form[name]` without it: 400 (a KeyError too)
 ├── ProtocolError             the peer broke HTTP/1.1 framing; carries the status to answer with
 ├── HandshakeError            a WebSocket upgrade that cannot be accepted (protocol/ws_handshake)
 ├── WebSocketProtocolError    the peer broke RFC 6455; carries the close code (protocol/websocket)
 │    └── DeflateError         a compressed message that cannot be accepted (protocol/deflate)
 ├── RouteError                routes that cannot coexist, or an unknown route name
 └── ConfigError               bad settings, naming where they came from
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class RtserveError(Exception):
    """Root of every error rtserve raises on purpose."""


class HTTPError(RtserveError):
    """Stop a handler and answer with `status`; `detail` is shown to the client.

    `headers` are added to the error response (for example `Allow` on a 405).
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = int(status)
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        self.detail = detail if detail is not None else phrase
        self.headers = dict(headers or {})
        super().__init__(f"{self.status} {self.detail}")


class MissingArgument(HTTPError, KeyError):
    """A required query parameter or form field is absent: `request.query["q"]` answers 400
    by itself when nothing catches it, and is still the KeyError a mapping raises."""

    def __init__(self, where: str, name: str) -> None:
        super().__init__(400, f"missing {where} {name!r}")
        self.name = name

    def __str__(self) -> str:
        return f"{self.status} {self.detail}"


class ProtocolError(RtserveError):
    """The peer sent bytes that are not acceptable HTTP/1.1.

    `status` is the answer to send before closing (400, 408, 413, 431, ...).
    """

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


class RouteError(RtserveError):
    """Routes that conflict, or a route name that does not exist."""


class ConfigError(RtserveError):
    """Bad configuration; `where` names the source (file:line or the setting)."""

    def __init__(self, message: str, *, where: str | None = None, **extra: Any) -> None:
        self.where = where
        self.extra = extra
        super().__init__(f"{where}: {message}" if where else message)
