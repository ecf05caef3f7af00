"""Which protocol a new connection speaks: HTTP/1.1, or HTTP/2 (by TLS ALPN, or h2c with prior
knowledge when `http2.h2c` is on).

HTTP/2 needs the optional `h2` package (`pip install 'rtserve[http2]'`); without it the server
offers HTTP/1.1 alone, and says so once, when TLS is on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from rtserve.errors import RtserveError

if TYPE_CHECKING:
    from rtserve.server.settings import ServerSettings
    from rtserve.server.state import ServerState

log = logging.getLogger("rtserve.server")

# What every HTTP/2 connection opens with (RFC 9113 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
INSTALL_HINT = "HTTP/2 needs the h2 package: pip install 'rtserve[http2]'"


class HTTP2Unavailable(RtserveError):
    """HTTP/2 was asked for (h2c) but the `h2` package is not installed."""


def http2_available() -> bool:
    """Whether the `h2` package can be imported."""
    return importlib.util.find_spec("h2") is not None


def http2_mode(settings: ServerSettings) -> tuple[bool, bool]:
    """(ALPN offers h2, cleartext h2c accepted) for these settings and this installation.

    Raises HTTP2Unavailable when h2c is on without `h2`; h2 over TLS (on by default) is just
    left out then, with a warning naming the extra to install."""
    http2 = settings.http2
    alpn = http2.enabled and settings.tls.enabled
    if not (alpn or http2.h2c) or http2_available():
        return alpn, http2.h2c
    if http2.h2c:
        raise HTTP2Unavailable(f"server.http2.h2c is on: {INSTALL_HINT}")
    log.warning("TLS without HTTP/2 (HTTP/1.1 only): %s", INSTALL_HINT)
    return False, False


def alpn_protocols(offer_h2: bool) -> list[str]:
    """What TLS offers by ALPN, preferred first."""
    return ["h2", "http/1.1"] if offer_h2 else ["http/1.1"]


def http2_connection(state: ServerState) -> asyncio.Protocol:
    """An HTTP/2 connection (imported on first use: `h2` is optional)."""
    from rtserve.server.h2_connection import H2Connection

    return H2Connection(state)


class ProtocolChoice(asyncio.Protocol):
    """Stands in for a new connection until its protocol is known, then hands the transport
    over: by ALPN once the TLS handshake is done (`connection_made`), or, for h2c, by whether
    the first bytes are the HTTP/2 preface."""

    __slots__ = ("_http1", "_http2", "_read", "_state", "_timer", "_transport")

    def __init__(
        self,
        state: ServerState,
        http1: Callable[[], asyncio.Protocol],
        http2: Callable[[], asyncio.Protocol] | None = None,
    ) -> None:
        self._state = state
        self._http1 = http1
        self._http2 = http2 or (lambda: http2_connection(state))
        self._transport: asyncio.BaseTransport | None = None
        self._read = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            chosen = ssl_object.selected_alpn_protocol()
            self._switch(self._http2() if chosen == "h2" else self._http1())
            return
        # h2c: undecided until the first bytes come, which must be within the header timeout.
        header = self._state.settings.timeouts.header
        self._timer = self._state.loop.call_later(header, transport.abort)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._read += data
        read = self._read
        if read[: len(PREFACE)] == PREFACE[: len(read)] and len(read) < len(PREFACE):
            return  # could be either yet
        is_h2 = read[: len(PREFACE)] == PREFACE
        self._switch(self._http2() if is_h2 else self._http1(), read)

    def eof_received(self) -> bool | None:
        return None  # closed before saying anything

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _switch(self, protocol: asyncio.Protocol, data: bytes = b"") -> None:
        transport = self._transport
        assert transport is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._read = b""
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)
