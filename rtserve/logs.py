"""The live log: one line per event on stderr with time, level, source and message."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)-7s %(name)-15s %(message)s"
MAX_HELD_LINES = 512  # lines held for the end of a loop turn before they are written anyway


def setup_logging(level: int = logging.INFO) -> None:
    """Send rtserve's loggers (server, access, app) to stderr, unless already configured."""
    root = logging.getLogger("rtserve")
    if root.handlers:
        return
    handler = TurnBufferedHandler(sys.stderr)
    handler.setFormatter(SecondFormatter(FORMAT, "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class SecondFormatter(logging.Formatter):
    """A Formatter that formats the time once per second, not once per record."""

    def __init__(self, fmt: str, datefmt: str) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._time = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._time = time.strftime(datefmt or "%H:%M:%S", self.converter(second))
            self._second = second
        return self._time


class TurnBufferedHandler(logging.Handler):
    """Writes lines to `stream` once per event-loop turn: an access log line per request
    would otherwise cost a system call each. Outside a running loop, and for warnings and
    errors, it writes at once (with what is held before them, in order)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._held: list[str] = []
        # The loop whose end of turn writes the held lines (a loop closed before that turn
        # ended never will: the next loop schedules its own write).
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._held.append(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self._held) >= MAX_HELD_LINES:
            self._write()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        if self._scheduled_on is not loop:
            self._scheduled_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is held (the loop calls this at the end of a turn; logging at exit)."""
        self.acquire()
        try:
            self._scheduled_on = None
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if not self._held:
            return
        text, self._held = "".join(self._held), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # a closed stream at exit: nothing to tell it to
            pass
