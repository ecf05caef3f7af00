"""Connecting with many channels: protocol 1 (connect, then a subscribe per channel, each
awaited) against protocol 2 (one connect carrying every subscription), on loopback.

    python -m bench.connect_round_trips --channels 20 --runs 40

The server (rtserve.testing.serve_app, memory broker) runs in this process, on 127.0.0.1,
port 0; the client is the independent `websockets` package. Prints the median milliseconds
from sending `connect` to holding every subscribe result, for each way, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from websockets.asyncio.client import ClientConnection, connect

from rtserve import App, ChannelSettings
from rtserve.testing import serve_app


async def one_by_one(ws: ClientConnection, channels: int) -> None:
    await ws.send(json.dumps({"id": 0, "op": "connect"}))
    await ws.recv()
    for n in range(channels):
        await ws.send(json.dumps({"id": n + 1, "op": "subscribe", "channel": f"c:{n}"}))
        await ws.recv()


async def in_connect(ws: ClientConnection, channels: int) -> None:
    subscriptions = [{"channel": f"c:{n}"} for n in range(channels)]
    command = {"id": 0, "op": "connect", "protocol": 2, "subscriptions": subscriptions}
    await ws.send(json.dumps(command))
    await ws.recv()


async def main(channels: int, runs: int) -> dict[str, float]:
    app = App(channels=ChannelSettings())
    app.channel("c:*", history=10)
    figures: dict[str, float] = {}
    async with serve_app(app) as server:
        url = f"ws://127.0.0.1:{server.port}/rt/ws"
        for name, way in (
            ("protocol 1, one by one", one_by_one),
            ("protocol 2, in connect", in_connect),
        ):
            times = []
            for _ in range(runs):
                async with connect(url) as ws:
                    started = time.perf_counter()
                    await way(ws, channels)
                    times.append(time.perf_counter() - started)
            figures[f"{name} (ms, median)"] = round(statistics.median(times) * 1000, 2)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.channels, args.runs)), indent=2))
