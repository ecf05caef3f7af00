"""A price feed: a stream of market data over WebSocket, for browsers and for services.

A background task moves the prices of a few symbols (a random walk) and publishes every tick
to `prices:<market>`. Ticks arrive faster than a slow client can take them, so the channel is
`conflate`d by `symbol`: a subscriber that falls behind gets the latest price of each symbol
instead of a queue that grows (fast subscribers get every tick). The last 200 ticks are kept,
so a client that reconnects with its offset misses nothing.

    rtserve run examples/price_feed/app.py:create_app --port 8000
    # then open http://127.0.0.1:8000/ , or: python examples/price_feed/consumer.py

Environment: PRICE_FEED_RATE (ticks a second, default 50), PRICE_FEED_SYMBOLS (default
"ACME,GLOBEX,INITECH,UMBRELLA").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from rtserve import App

MARKET = "prices:demo"
HERE = Path(__file__).resolve().parent

log = logging.getLogger("price_feed")


class Market:
    """Prices that move: each tick picks a symbol and moves it by up to 0.5 %."""

    def __init__(self, symbols: list[str], seed: int | None = None) -> None:
        self.random = random.Random(seed)
        self.prices = {symbol: round(self.random.uniform(20, 200), 2) for symbol in symbols}

    def tick(self) -> dict[str, Any]:
        symbol = self.random.choice(list(self.prices))
        price = self.prices[symbol] * (1 + self.random.uniform(-0.005, 0.005))
        self.prices[symbol] = price = round(max(price, 0.01), 2)
        return {"symbol": symbol, "price": price, "time": round(time.time(), 3)}


def create_app(rate: float | None = None, symbols: list[str] | None = None) -> App:
    """The App: the page, the conflated channel, and the task that publishes ticks."""
    rate = rate or float(os.environ.get("PRICE_FEED_RATE", "50"))
    names = symbols or os.environ.get("PRICE_FEED_SYMBOLS", "ACME,GLOBEX,INITECH,UMBRELLA").split(
        ","
    )
    app = App()
    app.channel(
        "prices:*",
        history=200,
        slow_consumer="conflate",
        conflate_key="symbol",
    )
    app.static_file("/", HERE / "static" / "index.html")
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        market = Market([n.strip() for n in names if n.strip()])
        tasks.append(asyncio.create_task(publish_ticks(app, market, rate), name="price-feed"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app


async def publish_ticks(app: App, market: Market, rate: float) -> None:
    """Publish `rate` ticks a second to MARKET until cancelled (a failed publish is logged
    and the feed goes on)."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    next_time = loop.time()
    while True:
        try:
            await app.publish(MARKET, market.tick())
        except Exception:
            log.exception("publishing a tick failed")
        next_time += interval
        await asyncio.sleep(max(0.0, next_time - loop.time()))
