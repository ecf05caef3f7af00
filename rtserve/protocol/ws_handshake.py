"""The WebSocket opening handshake (RFC 6455 section 4) for the server side, sans-I/O.

`parse_request(method, version, headers)` validates an upgrade request over raw header fields
(`list[tuple[bytes, bytes]]`, names in any case, fields repeated or comma-separated) and
returns a `HandshakeRequest`, or raises `HandshakeError` carrying the HTTP answer: 405 (with
`Allow: GET`) for another method, 400 for HTTP/1.0, a missing `Upgrade: websocket` or
`Connection: upgrade`, a bad or repeated key or a repeated Origin, 426 (with
`Sec-WebSocket-Version: 13`) for a missing or other version. The caller then applies
`check_origin` (403 when False), `choose_subprotocol`, the extension negotiation, and answers
with `response_101(...)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from rtserve.errors import RtserveError
from rtserve.protocol.http11 import encode_headers

Header = tuple[bytes, bytes]

GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEFAULT_PORTS: Final = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`."""
    digest = hashlib.sha1((key + GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


class HandshakeError(RtserveError):
    """The upgrade request is refused: answer `status` with `headers`; `reason` says why."""

    def __init__(self, status: int, reason: str, headers: list[Header] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else []
        super().__init__(f"{status} {reason}")


@dataclass
class HandshakeRequest:
    """A valid upgrade request.

    subprotocols: the protocols offered, in the client's order (all fields, comma-split).
    extensions: the raw value of each `Sec-WebSocket-Extensions` field, in order; one value
        may hold several comma-separated offers (as `deflate.negotiate` expects).
    """

    key: str
    subprotocols: list[str] = field(default_factory=list)
    extensions: list[str] = field(default_factory=list)
    origin: str | None = None
    host: str | None = None


def _fields(headers: Sequence[Header]) -> dict[str, list[str]]:
    """Field values by lower-case name, in order; bytes read as latin-1."""
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        fields.setdefault(key, []).append(value.decode("latin-1").strip())
    return fields


def _tokens(values: list[str]) -> list[str]:
    """The elements of comma-separated list fields, empty elements dropped."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def parse_request(method: str, version: str, headers: Sequence[Header]) -> HandshakeRequest:
    """Validate an opening handshake request; raise HandshakeError with the answer."""
    if method != "GET":
        raise HandshakeError(405, "WebSocket handshake must use GET", [(b"allow", b"GET")])
    # HTTP/2: an extended CONNECT (RFC 8441), which the h2 connection presents as this GET.
    if version.removeprefix("HTTP/") not in ("1.1", "2"):
        raise HandshakeError(400, "WebSocket handshake requires HTTP/1.1")
    fields = _fields(headers)
    if "websocket" not in (t.lower() for t in _tokens(fields.get("upgrade", []))):
        raise HandshakeError(400, "missing Upgrade: websocket")
    if "upgrade" not in (t.lower() for t in _tokens(fields.get("connection", []))):
        raise HandshakeError(400, "missing Connection: upgrade")
    if _tokens(fields.get("sec-websocket-version", [])) != ["13"]:
        raise HandshakeError(
            426, "unsupported WebSocket version", [(b"sec-websocket-version", b"13")]
        )
    keys = fields.get("sec-websocket-key", [])
    if len(keys) != 1:
        raise HandshakeError(400, "missing or repeated Sec-WebSocket-Key")
    key = keys[0]
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    origins = fields.get("origin", [])
    if len(origins) > 1:
        raise HandshakeError(400, "repeated Origin")
    hosts = fields.get("host")
    return HandshakeRequest(
        key=key,
        subprotocols=_tokens(fields.get("sec-websocket-protocol", [])),
        extensions=fields.get("sec-websocket-extensions", []),
        origin=origins[0] if origins else None,
        host=hosts[0] if hosts else None,
    )


def _strip_default_port(netloc: str, scheme: str) -> str:
    host, sep, port = netloc.rpartition(":")
    if sep and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        return host
    return netloc


def check_origin(
    origin: str | None,
    host: str | None,
    allowed: Sequence[str] | None,
    scheme: str = "http",
) -> bool:
    """Whether a request from `origin` may open a WebSocket; answer 403 when False.

    A request without Origin is always allowed: browsers, which the check protects, always
    send one. `allowed=None` means same origin: an http(s) Origin whose host[:port] equals
    the Host header (case-insensitive, default ports ignored, http and https alike; `scheme`
    is the request's own, for Host's default port). Otherwise `allowed` lists origins such as
    `https://example.com`, matched exactly but for case and a trailing slash; `"*"` allows any.
    """
    if origin is None:
        return True
    origin = origin.lower()
    if allowed is not None:
        return any(entry == "*" or entry.lower().rstrip("/") == origin for entry in allowed)
    if host is None:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.fragment:
        return False
    if not parts.netloc or "@" in parts.netloc:
        return False
    mine = _strip_default_port(host.lower(), scheme.lower())
    return _strip_default_port(parts.netloc, parts.scheme) == mine


def choose_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first of the server's `supported` protocols that the client offered, or None."""
    for protocol in supported:
        if protocol in offered:
            return protocol
    return None


def response_headers(
    key: str, *, subprotocol: str | None = None, extensions: str | None = None
) -> list[Header]:
    """The header fields of the 101 answer to a request with `key`."""
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", accept_key(key).encode("ascii")),
    ]
    if subprotocol:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
    if extensions:
        headers.append((b"sec-websocket-extensions", extensions.encode("latin-1")))
    return headers


def response_101(
    key: str,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    headers: Sequence[Header] = (),
) -> bytes:
    """The whole `101 Switching Protocols` head; `headers` are extra fields (e.g. server)."""
    fields = response_headers(key, subprotocol=subprotocol, extensions=extensions)
    fields.extend(headers)
    return b"HTTP/1.1 101 Switching Protocols\r\n" + encode_headers(fields) + b"\r\n"
