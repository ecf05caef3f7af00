"""Fuzz the channel wire protocol's `parse_command` with raw bytes and with mutated JSON.

Allowed: a Command, or CommandError. Anything else is a crash.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["rtserve"]):
    from rtserve.realtime.protocol import CommandError, parse_command

from _harness import main

SEEDS = [
    b'{"id":1,"op":"subscribe","channel":"chat:1"}',
    b'{"id":2,"op":"publish","channel":"chat:1","data":{"text":"hi"}}',
    b'{"id":3,"op":"unsubscribe","channel":"chat:1"}',
    b'{"id":4,"op":"subscribe","channel":"c","since":{"offset":3,"epoch":"e"}}',
    b'{"id":5,"op":"presence","channel":"c"}',
    b'{"id":6,"op":"history","channel":"c","limit":10}',
    b'{"op":"ping"}',
]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        text: str | bytes = fdp.ConsumeBytes(fdp.remaining_bytes())
    elif mode == 1:
        text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    else:
        seed = bytearray(SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            if not seed:
                break
            pos = fdp.ConsumeIntInRange(0, len(seed) - 1)
            seed[pos : pos + 1] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
        text = bytes(seed)
    with contextlib.suppress(CommandError):
        parse_command(text)


if __name__ == "__main__":
    main(test_one_input)
