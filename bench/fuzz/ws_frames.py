"""Fuzz the WebSocket frame reader of either side (server: masked frames, client: unmasked),
with and without permessage-deflate.

Allowed: events, or WebSocketProtocolError with close code 1002, 1007 or 1009.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["rtserve"]):
    from rtserve.protocol.deflate import DeflateConfig, DeflateParams, PerMessageDeflate
    from rtserve.protocol.websocket import FrameReader, WebSocketProtocolError

from _harness import main

CODES = {1002, 1007, 1009}


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    step = data[0] % 16 + 1
    masked = not data[0] & 0x10  # the server's reader, or the client's
    compressed = bool(data[1] & 1)
    room = (data[1] >> 1) * 128 + 1  # 1..16,257 bytes of messages per call
    payload = data[2:]
    deflate = PerMessageDeflate(DeflateParams(True, False, 15, 15), DeflateConfig())
    decompress = deflate.decompress if compressed else None
    reader = FrameReader(
        max_frame_size=4096, max_message_size=8192, decompress=decompress, masked=masked
    )
    try:
        for i in range(0, len(payload), step):
            reader.feed(payload[i : i + step], room)
            for _ in range(len(payload)):  # each call with room takes a message or more
                if not reader.held_back:
                    break
                reader.feed(b"", room)
            assert not reader.held_back
    except WebSocketProtocolError as exc:
        if exc.code not in CODES:
            raise


if __name__ == "__main__":
    main(test_one_input)
