"""A raw HTTP/2 client for tests: the h2 library as a client over a blocking socket (TLS with
ALPN h2, or cleartext prior knowledge), every read bounded by a timeout. It can send what a
well-behaved client would not (resets, floods, stalls) through `conn` and `send()`."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)


@dataclass
class StreamState:
    """What one stream received."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


def tls_context() -> ssl.SSLContext:
    """An unverifying client context that offers h2 by ALPN."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


class H2Client:
    """One HTTP/2 connection to 127.0.0.1:`port`; `auto_ack=False` never reopens windows."""

    def __init__(self, port: int, *, tls: bool = True, auto_ack: bool = True) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock: socket.socket = (
            tls_context().wrap_socket(raw, server_hostname="localhost") if tls else raw
        )
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.auto_ack = auto_ack
        self.outgoing: dict[int, tuple[bytes, bool]] = {}  # request bodies beyond a window
        self.streams: dict[int, StreamState] = {}
        self.goaway: int | None = None  # the error code of the server's GOAWAY
        self.closed = False  # the server closed the socket
        self.send()

    @property
    def alpn(self) -> str | None:
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.selected_alpn_protocol()
        return None

    def send(self, extra: bytes = b"") -> None:
        """Write what h2 framed, then `extra` (raw bytes: frames h2 would refuse to make)."""
        data = self.conn.data_to_send() + extra
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
    ) -> int:
        """Start a request; the stream id. `end=False` leaves the body open."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            *(headers or []),
        ]
        self.streams[stream_id] = StreamState()
        self.conn.send_headers(stream_id, fields, end_stream=end and not body)
        if body:
            self.outgoing[stream_id] = (body, end)
            self._pump()
        self.send()
        return stream_id

    def _pump(self) -> None:
        """Send what request bodies the server's windows allow."""
        for stream_id, (body, end) in list(self.outgoing.items()):
            size = min(
                len(body),
                self.conn.local_flow_control_window(stream_id),
                self.conn.max_outbound_frame_size,
            )
            while size > 0:
                last = size == len(body)
                self.conn.send_data(stream_id, body[:size], end_stream=end and last)
                body = body[size:]
                size = min(
                    len(body),
                    self.conn.local_flow_control_window(stream_id),
                    self.conn.max_outbound_frame_size,
                )
            if body:
                self.outgoing[stream_id] = (body, end)
            else:
                del self.outgoing[stream_id]

    def read(self, timeout: float = 5.0) -> bool:
        """Read once (up to `timeout` s) and handle what came; False when the socket closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, ResponseReceived) and stream is not None:
                stream.headers = list(event.headers or [])
            elif isinstance(event, DataReceived):
                if stream is not None:
                    stream.body += event.data or b""
                if self.auto_ack and event.stream_id:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id
                    )
            elif isinstance(event, StreamEnded) and stream is not None:
                stream.ended = True
            elif isinstance(event, StreamReset) and stream is not None:
                stream.reset = int(event.error_code or 0)
            elif isinstance(event, ConnectionTerminated):
                self.goaway = int(event.error_code or 0)
        self._pump()
        self.send()
        return True

    def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read until `check()` holds; AssertionError after `timeout` s or if the socket closes
        first."""
        deadline = time.monotonic() + timeout
        while not check():
            left = deadline - time.monotonic()
            assert left > 0, "timed out"
            if not self.read(min(left, 1.0)):
                assert check(), "the server closed the connection"
                return

    def response(self, stream_id: int, timeout: float = 10.0) -> StreamState:
        """Wait for the stream to end (or be reset)."""
        stream = self.streams[stream_id]
        self.until(lambda: stream.ended or stream.reset is not None, timeout)
        return stream

    def get(self, path: str, timeout: float = 10.0) -> StreamState:
        return self.response(self.request(path), timeout)

    def wait_closed(self, timeout: float = 10.0) -> None:
        """Read until the server closes the socket (its GOAWAY recorded)."""
        deadline = time.monotonic() + timeout
        while self.read(max(0.01, min(1.0, deadline - time.monotonic()))):
            assert time.monotonic() < deadline, "the server did not close the connection"

    def close(self) -> None:
        self.sock.close()
