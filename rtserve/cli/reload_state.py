"""What a reload hands from the old worker to the new one: the memory broker's streams.

The old worker freezes its MemoryBroker (publications are refused from then on, so none is
made after the export and lost), writes its state to a file the supervisor named, and stays
frozen until it retires (or is thawed, when its replacement fails). The new worker reads the
file before it serves (the freeze lasts that long: a few seconds for a state of 10 MiB). A
state over `STATE_LIMIT`, one that does not encode, or a file that does not read gives the
new worker an empty broker and a log line, never a failed start.
Presence is not handed over: the connections it described end with the old worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from rtserve.broker.memory import MemoryBroker

log = logging.getLogger("rtserve.server")

STATE_LIMIT = 16 << 20  # bytes of JSON: beyond it a reload starts with an empty broker


async def export_state(broker: MemoryBroker, path: Path, limit: int = STATE_LIMIT) -> bool:
    """Freeze `broker` and write its state to `path`, encoded on a thread (the worker goes
    on serving meanwhile); False (logged, nothing written) when it cannot be handed over."""
    broker.freeze()
    state = broker.export_state()  # lists of its own: the broker may change while encoding
    return await asyncio.to_thread(_write, state, path, limit)


def _write(state: dict[str, Any], path: Path, limit: int) -> bool:
    try:
        data = json.dumps(state, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        log.warning("the channels are not handed to the new worker: %s", exc)
        return False
    encoded = data.encode()
    if len(encoded) > limit:
        log.warning(
            "the channels are not handed to the new worker: their state (%.1f MiB) is over "
            "the %d MiB a reload carries",
            len(encoded) / (1 << 20),
            limit >> 20,
        )
        return False
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(encoded)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("the channels are not handed to the new worker: %s", exc)
        return False
    return True


def import_state(broker: MemoryBroker, path: Path, limit: int = STATE_LIMIT) -> int:
    """Load the state at `path` into `broker` (not serving yet) and remove the file; the
    number of channels taken over, 0 (logged) when it does not read."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            raise ValueError(f"over {limit >> 20} MiB")
        return broker.import_state(json.loads(raw))
    except (OSError, ValueError) as exc:
        log.warning("starting with empty channels: the previous worker's state: %s", exc)
        return 0
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
