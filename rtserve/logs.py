"""The live log: one line per event on stderr with time, level, source and message."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: int = logging.INFO) -> None:
    """Send rtserve's loggers (server, access, app) to stderr, unless already configured."""
    root = logging.getLogger("rtserve")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)-15s %(message)s", "%H:%M:%S")
    )
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
