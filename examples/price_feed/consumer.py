"""A service following the price feed with rtserve.client: it keeps the latest price of each
symbol and prints them once a second. It reconnects by itself and, thanks to the channel's
history, resumes from its offset without missing a tick.

    python examples/price_feed/consumer.py [ws://127.0.0.1:8000/rt/ws]
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from rtserve.client import Client, Unrecovered

MARKET = "prices:demo"


async def follow(url: str, ticks: int | None = None) -> dict[str, Any]:
    """Follow MARKET (for `ticks` publications, or forever); the latest price per symbol."""
    latest: dict[str, Any] = {}
    seen = 0
    shown = time.monotonic()
    async with Client(url) as client:
        sub = await client.subscribe(MARKET, fill_gaps=False)  # conflation may skip offsets
        while ticks is None or seen < ticks:
            try:
                async for pub in sub:
                    latest[pub.data["symbol"]] = pub.data["price"]
                    seen += 1
                    if ticks is not None and seen >= ticks:
                        break
                    if time.monotonic() - shown >= 1.0:
                        shown = time.monotonic()
                        print("  ".join(f"{s} {p:>8.2f}" for s, p in sorted(latest.items())))
            except Unrecovered:
                latest.clear()  # too far behind for the history: start from what comes next
    return latest


if __name__ == "__main__":
    asyncio.run(follow(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/rt/ws"))
