"""The price feed end to end: the page, a fast subscriber gets every tick in order, and a
service follows with rtserve.client. (The conflate policy itself, a slow subscriber getting
the latest per key while a fast one gets everything, is tested in tests/test_channels.py.)"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

from websockets.asyncio.client import connect

from rtserve.testing import ThreadedServer

HERE = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0


def load(name: str) -> ModuleType:
    """One of the example's modules, under a name of its own (projects share `app`)."""
    spec = importlib.util.spec_from_file_location(f"price_feed_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


feed = load("app")
consumer = load("consumer")


def test_the_page_loads_rtserve_js() -> None:
    with ThreadedServer(feed.create_app(rate=100)) as server:
        with urllib.request.urlopen(f"{server.url}/", timeout=TIMEOUT) as page:
            assert page.status == 200 and b'<script src="/rtserve.js">' in page.read()
        with urllib.request.urlopen(f"{server.url}/rtserve.js", timeout=TIMEOUT) as script:
            assert script.status == 200 and b"class Rtserve" in script.read()


def test_a_fast_subscriber_gets_every_tick_in_order() -> None:
    with ThreadedServer(feed.create_app(rate=200)) as server:

        async def scenario() -> list[dict[str, Any]]:
            async with connect(f"ws://127.0.0.1:{server.port}/rt/ws") as ws:
                await ws.send(json.dumps({"id": 1, "op": "connect"}))
                await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": feed.MARKET}))
                pubs: list[dict[str, Any]] = []
                while len(pubs) < 50:
                    message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    if message.get("push") == "pub":
                        pubs.append(message)
                return pubs

        pubs = asyncio.run(scenario())
    offsets = [p["offset"] for p in pubs]
    assert offsets == list(range(offsets[0], offsets[0] + 50))  # every tick, in order
    assert {p["data"]["symbol"] for p in pubs} <= {"ACME", "GLOBEX", "INITECH", "UMBRELLA"}
    assert all(p["data"]["price"] > 0 for p in pubs)


def test_a_service_follows_with_rtserve_client() -> None:
    with ThreadedServer(feed.create_app(rate=200, symbols=["A", "B"])) as server:
        url = f"ws://127.0.0.1:{server.port}/rt/ws"
        latest = asyncio.run(asyncio.wait_for(consumer.follow(url, ticks=40), TIMEOUT))
    assert set(latest) <= {"A", "B"} and latest
    assert all(price > 0 for price in latest.values())
