"""Typed server settings: the one place where each setting, its default and its help live.

Each field's `metadata["help"]` documents it. `config.example.yaml` is checked against these
fields by a test; the project loader (rtserve.yaml) is to be derived from them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from rtserve.schema import opt, opt_list

KiB = 1024
MiB = 1024 * 1024


@dataclass(slots=True)
class LimitSettings:
    """Sizes the server accepts before answering 4xx."""

    max_head_size: int = opt(
        16 * KiB, "request line + headers, bytes (414 for a long target, 431 beyond)", size=True
    )
    max_headers: int = opt(100, "number of header fields (431 beyond)")
    max_body_size: int = opt(1 * MiB, "request body, bytes (413 beyond)", size=True)
    max_pipelined: int = opt(16, "queued pipelined requests before reading pauses")
    max_form_fields: int = opt(1000, "fields in one urlencoded or multipart form (413 beyond)")
    max_upload_size: int = opt(16 * MiB, "one uploaded file in a multipart form", size=True)
    min_body_rate: int = opt(
        500, "bytes/s a request body must average beyond timeouts.body (408; 0: any)", size=True
    )
    write_buffer_high: int = opt(256 * KiB, "outbound bytes buffered before pausing", size=True)
    write_buffer_low: int = opt(64 * KiB, "outbound bytes at which writing resumes", size=True)


@dataclass(slots=True)
class TimeoutSettings:
    """Timeouts in seconds; each ends the connection that hits it."""

    header: float = opt(
        10.0, "a request head must arrive within this (408, then close)", duration=True
    )
    keepalive: float = opt(
        75.0, "an idle keep-alive connection is closed after this", duration=True
    )
    body: float = opt(
        30.0, "longest pause between two pieces of a request body (408)", duration=True
    )
    send: float = opt(
        60.0,
        "a client that takes nothing of a full write buffer for this long is cut off",
        duration=True,
    )
    graceful: float = opt(
        10.0, "on SIGTERM/SIGINT, in-flight requests get this long", duration=True
    )


@dataclass(slots=True)
class TLSSettings:
    """TLS from a PEM certificate chain and private key (stdlib ssl)."""

    cert: str | None = opt(None, "certificate chain file (PEM)")
    key: str | None = opt(None, "private key file (PEM)")

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


@dataclass(slots=True)
class HTTP2Settings:
    """HTTP/2 (the `http2` extra): over TLS by ALPN, or cleartext h2c with prior knowledge."""

    enabled: bool = opt(True, "offer h2 by ALPN when TLS is on (needs the http2 extra)")
    h2c: bool = opt(False, "also accept cleartext HTTP/2 with prior knowledge (trusted proxies)")
    max_concurrent_streams: int = opt(100, "open streams a client may have on one connection")
    initial_window_size: int = opt(
        256 * KiB, "request body bytes a stream may send before the app takes them", size=True
    )
    max_frame_size: int = opt(16 * KiB, "largest frame payload accepted", size=True)
    max_header_list_size: int = opt(
        16 * KiB, "a request's header fields, decoded, bytes (HPACK bombs end the connection)"
    )
    max_resets: int = opt(
        200, "streams a client may reset per 10 s before GOAWAY (rapid reset, CVE-2023-44487)"
    )
    max_control_frames: int = opt(
        1000, "SETTINGS, PING, PRIORITY, empty non-final DATA frames a client may send per 10 s"
    )
    max_streams: int = opt(
        0, "streams served on one connection before a graceful GOAWAY (0: until ids run out)"
    )


@dataclass(slots=True)
class WebSocketSettings:
    """Defaults for every WebSocket route; `app.websocket(path, **options)` overrides them."""

    max_message_size: int = opt(1 * MiB, "largest message accepted (1009 beyond)", size=True)
    max_frame_size: int = opt(1 * MiB, "largest single frame accepted (1009 beyond)", size=True)
    max_queued_bytes: int = opt(
        1 * MiB,
        "outbound bytes a connection may have queued before the slow-consumer policy",
        size=True,
    )
    slow_consumer: str = opt("close", "over the outbound budget: 'close' (1013) or 'drop'")
    ping_interval: float = opt(
        20.0, "seconds between keepalive pings (0 turns them off)", duration=True
    )
    ping_timeout: float = opt(
        20.0, "a peer that does not answer a ping within this is closed", duration=True
    )
    close_timeout: float = opt(5.0, "how long to wait for the peer's close frame", duration=True)
    compression: bool = opt(True, "offer permessage-deflate (RFC 7692)")
    compression_min_size: int = opt(
        256, "messages smaller than this are sent uncompressed", size=True
    )
    origins: list[str] | None = opt(
        None, "allowed Origin values; null means same origin only, ['*'] allows any"
    )
    concurrent: bool = opt(False, "handle one connection's messages concurrently, not in order")
    write_delay: float = opt(
        0.0, "seconds to hold outbound frames so more go in one write", duration=True
    )

    def contradictions(self) -> list[str]:
        """Settings valid alone that work against each other (`rtserve check` warns)."""
        found = []
        if self.max_queued_bytes < self.max_message_size:
            found.append(
                f"max_queued_bytes ({_show_size(self.max_queued_bytes)}) is below "
                f"max_message_size ({_show_size(self.max_message_size)}): an answer as large "
                "as a message accepted (an echo) goes out only when nothing else is queued, "
                f"and behind another meets slow_consumer ({self.slow_consumer!r}); set "
                "max_queued_bytes to at least max_message_size (twice it to queue two)"
            )
        return found


def _show_size(size: int) -> str:
    for unit, name in ((MiB, "MiB"), (KiB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size:,} bytes"


@dataclass(slots=True)
class ServerSettings:
    """Where and how the HTTP server listens, and what it accepts."""

    host: list[str] | str = opt("127.0.0.1", "address(es) to bind; IPv4 and IPv6 both work")
    port: int = opt(8000, "TCP port (0 picks a free one)", port=True)
    unix_socket: str | None = opt(None, "listen on this unix socket path instead of TCP")
    fd: int | None = opt(None, "serve an inherited, already-listening socket descriptor")
    reuse_port: bool = opt(False, "SO_REUSEPORT, so several processes can share the port")
    workers: int = opt(
        1, "worker processes serving the same sockets (more than 1 needs a shared broker: Redis)"
    )
    max_connections: int = opt(
        0, "open connections (HTTP and WebSocket); new ones beyond get 503 and close (0: any)"
    )
    backlog: int = opt(2048, "listen backlog")
    access_log: bool = opt(True, "log each request with its status, size and time")
    debug: bool = opt(False, "show tracebacks in error pages (never in production)")
    server_header: str = opt("rtserve", "value of the Server header; empty to omit")
    trusted_proxies: list[str] = opt_list(
        "addresses/networks whose X-Forwarded-For/-Proto and Forwarded are believed"
    )
    limits: LimitSettings = field(default_factory=LimitSettings, metadata={"help": "limits"})
    timeouts: TimeoutSettings = field(
        default_factory=TimeoutSettings, metadata={"help": "timeouts"}
    )
    tls: TLSSettings = field(default_factory=TLSSettings, metadata={"help": "TLS"})
    http2: HTTP2Settings = field(default_factory=HTTP2Settings, metadata={"help": "HTTP/2"})
    websocket: WebSocketSettings = field(
        default_factory=WebSocketSettings, metadata={"help": "WebSocket defaults"}
    )

    @property
    def hosts(self) -> list[str]:
        return [self.host] if isinstance(self.host, str) else list(self.host)


def settings_keys(cls: type[Any], prefix: str = "") -> list[str]:
    """Dotted names of every leaf setting of a settings dataclass, in declaration order."""
    keys: list[str] = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if hasattr(default, "__dataclass_fields__"):
            keys.extend(settings_keys(type(default), f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys
