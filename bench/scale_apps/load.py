"""The load client of bench/scale.py: bench/channel_apps/load.py's, aware of several workers.

With several workers the control connection reaches one of them, and its ``count`` answers
that worker's subscribers only: waiting for it to reach the number of subscribers would time
out. Here, with ``"workers" > 1`` in the plan, ``count`` is asked once and reported as it is
(the harness counts each worker's connections from /proc). A subscriber counts as joined once
the server answered its ``subscribe`` (with the Redis broker, after Redis confirmed the
worker's SUBSCRIBE), as in bench/channel_apps/load.py. Everything else is that module's.

    python -m bench.scale_apps.load --port 8000 --server-pid 1234 --plan '[...]'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import uvloop

from bench.channel_apps.load import Client
from bench.ws_apps.load import raise_nofile


class ScaleClient(Client):
    workers = 1

    async def wait_count(self, expected: int, timeout: float = 20.0) -> int:
        if self.workers > 1:
            return await self.count()  # the control's worker's subscribers only
        return await super().wait_count(expected, timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--plan", required=True, help="JSON list of phases")
    args = parser.parse_args()
    raise_nofile()
    plan = json.loads(args.plan)
    first = plan[0] if plan else {}
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    client = ScaleClient(loop, args.port, first.get("protocol", "rt"), first.get("api_key", ""))
    client.workers = int(first.get("workers", 1))
    try:
        loop.run_until_complete(client.main(plan))
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
