"""A raw-socket HTTP/1.1 test client: exact bytes out, responses parsed with httptools."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field

import httptools


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Collector:
    def __init__(self) -> None:
        self.done: list[RawResponse] = []
        self.current: RawResponse | None = None
        self.pieces: list[bytes] = []
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.current = RawResponse(0)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers[name.decode().lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.current is not None and self.parser is not None
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.body = b"".join(self.pieces)
        self.pieces = []
        self.done.append(self.current)


class RawClient:
    """Send arbitrary bytes; read back whole responses or the close."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self._new_parser()
        self.closed = False

    def _new_parser(self) -> None:
        self.collector = _Collector()
        self.parser = httptools.HttpResponseParser(self.collector)
        self.collector.parser = self.parser

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_once(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            with contextlib.suppress(httptools.HttpParserError):
                self.parser.feed_data(b"")
            return False
        self.parser.feed_data(data)
        return True

    def responses(self, count: int) -> list[RawResponse]:
        """Read until `count` responses arrived (or the server closed)."""
        deadline = time.monotonic() + self.timeout
        while len(self.collector.done) < count and time.monotonic() < deadline:
            if not self._read_once():
                break
        out = self.collector.done[:count]
        del self.collector.done[:count]
        return out

    def response(self) -> RawResponse:
        got = self.responses(1)
        assert got, "no response before close/timeout"
        return got[0]

    def wait_closed(self) -> bool:
        """True when the server closes the connection within the timeout."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                if not self._read_once():
                    return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get(path: str = "/", *, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


def raw_exchange(port: int, request: bytes, *, host: str = "127.0.0.1") -> bytes:
    """Send `request` as is and read until the server closes (the request should say so)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        for _ in range(100_000):  # bounded: the server closes after its answer
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one complete response without chunking."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
