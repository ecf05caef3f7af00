"""The client side of RFC 6455's opening handshake, sans-I/O (the asyncio client that uses it
is rtserve.client.ws).

Handshake, bytes only: `parse_url(url)` splits a ws:// or wss:// URL, `new_key()` makes a
`Sec-WebSocket-Key`, `build_request(...)` the GET upgrade request, `parse_response(head)` reads
the answer's head and `check_response(response, key, subprotocols)` accepts a `101` or raises
`InvalidHandshake` (its `status` is the HTTP status, None for a bad 101).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from rtserve.errors import RtserveError
from rtserve.protocol.ws_handshake import accept_key

__all__ = [
    "ConnectionClosed",
    "HandshakeResponse",
    "InvalidHandshake",
    "WebSocketURL",
    "build_request",
    "check_response",
    "new_key",
    "parse_response",
    "parse_url",
]

MAX_HEAD: Final = 64 * 1024  # bytes of a handshake answer's head
MAX_ERROR_BODY: Final = 64 * 1024  # bytes of a refusal's body kept for the error

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]


class InvalidHandshake(RtserveError):
    """The server did not accept the WebSocket: `status` (None when the 101 itself was bad),
    `reason` says what was wrong, `body` is the start of a refusal's body."""

    def __init__(self, reason: str, status: int | None = None, body: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(reason)


class ConnectionClosed(RtserveError):
    """The WebSocket is closed: `code` and `reason` of the close (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket closed: {code} {reason}".rstrip())


# --- the handshake, sans-I/O ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebSocketURL:
    secure: bool
    host: str  # without brackets for IPv6
    port: int
    target: str  # path and query: the request target
    host_header: str  # the Host value: host[:port], the port only when not the default


def parse_url(url: str) -> WebSocketURL:
    """Split a ws:// or wss:// URL; ValueError for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("user information in a WebSocket URL is not supported")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    secure = scheme == "wss"
    default = 443 if secure else 80
    port = parts.port or default
    name = f"[{host}]" if ":" in host else host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebSocketURL(secure, host, port, target, name if port == default else f"{name}:{port}")


def new_key() -> str:
    """A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _check_field(text: str) -> str:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"invalid character in header field {text!r}")
    return text


def build_request(
    host_header: str,
    target: str,
    key: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: HeadersLike | None = None,
    origin: str | None = None,
) -> bytes:
    """The GET upgrade request; `headers` are extra fields (e.g. Authorization)."""
    lines = [
        f"GET {_check_field(target)} HTTP/1.1",
        f"Host: {_check_field(host_header)}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {_check_field(origin)}")
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {_check_field(', '.join(subprotocols))}")
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in items:
        if not name or ":" in name or " " in name:
            raise ValueError(f"invalid header name {name!r}")
        lines.append(f"{_check_field(name)}: {_check_field(value)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(slots=True)
class HandshakeResponse:
    """The head of the server's answer; header names lower-case, values stripped."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    @property
    def content_length(self) -> int | None:
        value = self.get("content-length")
        return int(value) if value is not None and value.isdigit() else None


def parse_response(head: bytes) -> HandshakeResponse:
    """Parse a response head (status line and fields, the final blank line optional)."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise InvalidHandshake(f"not an HTTP response: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise InvalidHandshake(f"invalid header line {line[:80]!r}")
        headers.append((name.lower(), value.strip()))
    return HandshakeResponse(int(code), reason.strip(), headers)


def _tokens(values: list[str]) -> list[str]:
    return [item.strip().lower() for value in values for item in value.split(",") if item.strip()]


def check_response(
    response: HandshakeResponse, key: str, subprotocols: Sequence[str] = ()
) -> str | None:
    """Accept a 101 answer to a request with `key`; return the subprotocol chosen (or None).

    Raises InvalidHandshake: another status, no `Upgrade: websocket` or `Connection: upgrade`,
    a wrong `Sec-WebSocket-Accept`, an extension (none is offered) or a subprotocol not offered.
    """
    if response.status != 101:
        raise InvalidHandshake(
            f"server answered {response.status} {response.reason} instead of 101",
            response.status,
        )
    if "websocket" not in _tokens(response.get_all("upgrade")):
        raise InvalidHandshake("101 without Upgrade: websocket")
    if "upgrade" not in _tokens(response.get_all("connection")):
        raise InvalidHandshake("101 without Connection: upgrade")
    accepts = response.get_all("sec-websocket-accept")
    if accepts != [accept_key(key)]:
        raise InvalidHandshake("wrong Sec-WebSocket-Accept")
    if response.get_all("sec-websocket-extensions"):
        raise InvalidHandshake("server chose an extension that was not offered")
    chosen = response.get_all("sec-websocket-protocol")
    if not chosen:
        return None
    if len(chosen) != 1 or chosen[0] not in subprotocols:
        raise InvalidHandshake(f"server chose a subprotocol that was not offered: {chosen}")
    return chosen[0]
