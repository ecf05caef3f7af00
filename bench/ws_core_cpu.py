"""CPU time of the WebSocket core's per-frame path, without sockets: a steadier figure than the
wall-clock bench/ws.py on a shared machine.

Cases, each on 1,000 small frames (a 20-byte text message each), best of `--repeat` rounds of
`--rounds` feeds, in process CPU time (time.process_time), microseconds per frame:

- reader-server: FrameReader (masked client frames) fed all 1,000 frames in one call;
- reader-server-split: the same frames fed one call per frame (one read per frame);
- reader-client: the client side's reader (unmasked server frames) fed all 1,000 at once;
- echo: a WebSocketConnection with an echoing handler and a transport that discards what it
  is given: data_received of the 1,000 frames, then the flush of the 1,000 echoes.

Usage: python bench/ws_core_cpu.py [--rounds 200] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # not bench/: its http.py


from rtserve.protocol import websocket as ws  # noqa: E402
from rtserve.server.settings import WebSocketSettings  # noqa: E402
from rtserve.server.state import ServerStats  # noqa: E402
from rtserve.server.websocket import WebSocketConnection  # noqa: E402

FRAMES = 1000
PAYLOAD = b"x" * 20


def _reader(masked: bool) -> ws.FrameReader:
    """The reader of the side that reads `masked` frames (a tree before the one reader of both
    sides, commit 0042176 and earlier, had UnmaskedFrameReader for the client: for before/after)."""
    try:
        return ws.FrameReader(masked=masked)
    except TypeError:
        return ws.FrameReader() if masked else ws.__dict__["UnmaskedFrameReader"]()


class _State:
    """What a WebSocketConnection asks of its server, and nothing more."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stats = ServerStats()
        self.now = 0.0
        self.ws_shutdown_close = (1001, "")
        self.due: list[WebSocketConnection] = []

    def websocket_opened(self, conn: Any) -> None: ...
    def websocket_closed(self, conn: Any) -> None: ...

    def schedule_flush(self, conn: WebSocketConnection, delay: float = 0.0) -> None:
        self.due.append(conn)

    def flush_soon(self, conn: WebSocketConnection) -> None:
        self.due.append(conn)


class _Transport:
    def write(self, data: bytes) -> None: ...
    def writelines(self, data: Any) -> None: ...
    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int, low: int) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class _Echo:
    conn: WebSocketConnection

    def on_open(self) -> None: ...
    def on_message(self, message: str | bytes) -> None:
        self.conn.send(message)

    def on_close(self, code: int, reason: str) -> None: ...
    def on_drain(self) -> None: ...
    def on_pong(self, data: bytes) -> None: ...


def best(run: Callable[[], None], rounds: int, repeat: int) -> float:
    """Microseconds of CPU per frame: the best of `repeat` timings of `rounds` runs."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(rounds):
            run()
        times.append(time.process_time() - start)
    return min(times) / rounds / FRAMES * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    masked_frames = [
        ws.encode_client_frame(ws.Opcode.TEXT, PAYLOAD, mask=b"abcd") for _ in range(FRAMES)
    ]
    masked = b"".join(masked_frames)
    unmasked = ws.encode_text(PAYLOAD.decode()) * FRAMES

    def reader_server() -> None:
        _reader(True).feed(masked)

    def reader_server_split() -> None:
        feed = _reader(True).feed
        for frame in masked_frames:
            feed(frame)

    def reader_client() -> None:
        _reader(False).feed(unmasked)

    loop = asyncio.new_event_loop()
    state = _State(loop)
    app = _Echo()
    conn = WebSocketConnection(
        state,  # type: ignore[arg-type]
        app,
        WebSocketSettings(ping_interval=0, max_queued_bytes=1 << 30),
    )
    app.conn = conn
    conn.connection_made(_Transport())  # type: ignore[arg-type]

    def echo() -> None:
        conn.data_received(masked)
        due, state.due = state.due, []
        for c in due:
            c.flush()

    for name, run in (
        ("reader-server", reader_server),
        ("reader-server-split", reader_server_split),
        ("reader-client", reader_client),
        ("echo", echo),
    ):
        print(f"{name:20} {best(run, args.rounds, args.repeat):6.3f} us/frame")
    loop.close()


if __name__ == "__main__":
    main()
