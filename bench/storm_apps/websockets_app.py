"""The websockets library's peer of bench/reconnect_storm.py: handshake, then a trivial echo of
the channel protocol (`connect` and `subscribe` answered with a result, nothing subscribed).

    python -m bench.storm_apps.websockets_app PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def handler(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            command = json.loads(message)
            result = {"channel": command["channel"]} if command.get("op") == "subscribe" else {}
            await ws.send(json.dumps({"id": command.get("id"), "result": result}))
    except ConnectionClosed:
        pass  # the benchmark's clients leave without a close frame


async def main(port: int) -> None:
    async with serve(
        handler, "127.0.0.1", port, compression=None, ping_interval=None, backlog=4096
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
