"""A whole response made once and sent as is to many exchanges (the polls one publication
releases): HTTP/1.1 connections write the same framed bytes, built once per Date line.

Made by the app layer (status, header fields already checked and encoded, body); handed to
`Exchange.respond_prepared`. The head's per-connection parts (keep-alive, HTTP/1.0) are part
of the cache key, so every exchange still gets its own connection's framing.
"""

from __future__ import annotations

from rtserve.protocol.http11 import response_head


class PreparedAnswer:
    """A complete response with a body (no cookies, nothing per request; not 1xx, 204 or
    304) and its HTTP/1.1 framings."""

    __slots__ = ("_date", "_framed", "_server", "body", "headers", "status")

    def __init__(self, status: int, headers: bytes, body: bytes) -> None:
        if status < 200 or status == 204 or status == 304:
            raise ValueError(f"a {status} answer has no body to share")
        self.status = status
        self.headers = headers  # encoded fields (`encode_headers`): checked already
        self.body = body
        self._date = b""
        self._server = b""
        self._framed: dict[tuple[bool, bool], bytes] = {}

    def framed(self, date: bytes, server: bytes, keep_alive: bool, http10: bool) -> bytes:
        """Head and body as one HTTP/1.1 (or 1.0) response: built once per Date line (and
        server line, keep-alive and version), then the very same bytes."""
        if date is not self._date or server is not self._server:
            self._date, self._server = date, server
            self._framed = {}
        key = (keep_alive, http10)
        framed = self._framed.get(key)
        if framed is None:
            head = response_head(
                self.status,
                self.headers,
                content_length=len(self.body),
                keep_alive=keep_alive,
                date=date,
                server=server,
                http10=http10,
            )
            framed = self._framed[key] = head + self.body
        return framed
