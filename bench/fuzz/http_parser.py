"""Fuzz the HTTP/1.1 request parser, fed whole and split at a fuzzer-chosen point: raw bytes,
and valid requests (plain, with a body, chunked, pipelined, upgrade) with fuzzer-chosen splices.
llhttp is C and not instrumented, so the splices give the fuzzer valid framing to break.

Allowed: events, or ProtocolError with a 4xx/501/505 status. Anything else is a crash; so is a
request head whose path is not origin-form or `*`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["rtserve"]):
    from rtserve.errors import ProtocolError
    from rtserve.protocol.http11 import RequestHead, RequestParser

from _harness import main

STATUSES = {400, 413, 414, 417, 431, 501, 505}
SEEDS = [
    b"GET /a/b?c=d HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://x.example/p HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81",
    b"POST /p HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
]
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b":",
    b";",
    b",",
    b"0",
    b"-1",
    b"ffffffffffffffff",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: x\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"\x00",
    b"\xff",
    b"%2e%2e/",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"*",
    b"http://",
]


def build(data: bytes) -> tuple[bytes, int]:
    """The input to feed and where to split it."""
    fdp = atheris.FuzzedDataProvider(data)
    split = fdp.ConsumeIntInRange(0, 4096)
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.remaining_bytes()), split
    doc = bytearray(SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        pos = fdp.ConsumeIntInRange(0, len(doc))
        cut = fdp.ConsumeIntInRange(0, 4)
        if fdp.ConsumeBool():
            piece = TOKENS[fdp.ConsumeIntInRange(0, len(TOKENS) - 1)]
        else:
            piece = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4))
        doc[pos : pos + cut] = piece
    return bytes(doc), split


def test_one_input(data: bytes) -> None:
    payload, split = build(data)
    split %= len(payload) + 1
    for pieces in ([payload], [payload[:split], payload[split:]]):
        parser = RequestParser(max_head_size=1024, max_headers=20, max_body_size=4096)
        try:
            for piece in pieces:
                for event in parser.feed(piece):
                    if isinstance(event, RequestHead):
                        assert event.path is not None and event.raw_path[:1] in (b"/", b"*")
        except ProtocolError as exc:
            if exc.status not in STATUSES:
                raise


if __name__ == "__main__":
    main(test_one_input)
