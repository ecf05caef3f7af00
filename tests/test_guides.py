"""The runnable examples of docs/guides/*.md, served and checked as the guides say.

`<!-- test: NAME -->` right before a fenced ```python block marks it runnable (the convention
of tests/test_migration_guide.py): the block is run as a module and must define `app`; the
checker `CHECKS[NAME]` serves it on 127.0.0.1 and checks what the guide's text describes. A
marked block without a checker, or a checker without a block, fails.
"""

from __future__ import annotations

import asyncio
import math
import re
import runpy
import struct
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from rtserve.testing import ThreadedServer

GUIDES = Path(__file__).resolve().parent.parent / "docs" / "guides"
BLOCK = re.compile(r"<!-- test: (\S+) -->\n```python\n(.*?)```", re.S)
TIMEOUT = 10.0


def marked_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for guide in sorted(GUIDES.glob("*.md")):
        for name, code in BLOCK.findall(guide.read_text(encoding="utf-8")):
            assert name not in blocks, f"test {name} is marked twice"
            blocks[name] = code
    return blocks


@pytest.fixture
def sensors() -> Iterator[None]:
    """The `sensors` module the streaming guide imports: a sine wave."""
    module = types.ModuleType("sensors")
    module.read_sensor = lambda name: math.sin(len(name))  # type: ignore[attr-defined]
    sys.modules["sensors"] = module
    yield
    del sys.modules["sensors"]


def check_binary_stream(ns: dict[str, Any], server: ThreadedServer) -> None:
    """Packed (time, value) samples arrive as binary frames, 10 ms of time apart."""

    async def samples() -> list[tuple[float, float]]:
        async with connect(f"ws://127.0.0.1:{server.port}/sensor/abc", compression=None) as ws:
            frames = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(5)]
        assert all(isinstance(frame, bytes) for frame in frames)
        return [struct.unpack("<dd", frame) for frame in frames]

    got = asyncio.run(samples())
    assert [round(t, 2) for t, _ in got] == [0.0, 0.01, 0.02, 0.03, 0.04]
    assert all(value == math.sin(3) for _, value in got)


CHECKS: dict[str, Callable[[dict[str, Any], ThreadedServer], None]] = {
    "binary_stream": check_binary_stream,
}


def test_every_marked_block_has_a_checker() -> None:
    assert set(marked_blocks()) == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
@pytest.mark.usefixtures("sensors")
def test_guide_example(name: str, tmp_path: Path) -> None:
    module = tmp_path / f"{name}.py"
    module.write_text(marked_blocks()[name], encoding="utf-8")
    ns = runpy.run_path(str(module), run_name=f"guide_{name}")
    with ThreadedServer(ns["app"]) as server:
        CHECKS[name](ns, server)
