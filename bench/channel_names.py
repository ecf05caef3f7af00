"""What one client's channel names cost the server: subscribe to, read the history of, and
leave N distinct names a rule matches, on one WebSocket, and compare the server's RSS (and,
on Redis, the keys under its prefix) before and after.

The server runs in a subprocess of its own (`python -m bench.channel_names --serve`) with the
chat template's rule (`chat:{room}`: history 100 for a day, presence, join/leave, clients
publish) and anonymous clients. Nothing is published, so nothing should be kept: before
rtserve kept a stream per name for `meta_ttl` (24 h), 180,000 names took RSS from 34 to
231 MiB, and on Redis each name left a `…:meta` key.

    python -m bench.channel_names --names 100000
    python -m bench.channel_names --names 20000 --redis redis://127.0.0.1:6379/0

Prints the figures as JSON. The names go 500 at a time (subscribe, history with limit 0,
unsubscribe each), so the connection holds at most 500 subscriptions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from typing import Any

from bench.procs import serve_until_stdin_closes

BATCH = 500


def serve(redis_url: str | None, prefix: str) -> None:
    """Serve /rt/ws on 127.0.0.1 and a free port; print the port; run until stdin closes."""
    from rtserve import App, ChannelSettings

    broker: Any = None
    if redis_url is not None:
        from rtserve.broker.redis import RedisBroker

        broker = RedisBroker(redis_url, prefix=prefix)
    app = App(broker=broker, channels=ChannelSettings())
    app.channel(
        "chat:{room}",
        history=100,
        history_ttl=86400,
        presence=True,
        join_leave=True,
        publish="clients",
    )

    serve_until_stdin_closes(app)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def redis_keys(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


def redis_cleanup(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


async def walk_names(port: int, names: int) -> float:
    """Subscribe, read the history of and leave `names` names; the seconds it took."""
    from websockets.asyncio.client import connect

    started = time.perf_counter()
    async with connect(f"ws://127.0.0.1:{port}/rt/ws", max_size=None) as ws:
        await ws.send(json.dumps({"id": 0, "op": "connect"}))
        reply = json.loads(await ws.recv())
        assert "result" in reply, reply
        next_id = 1
        for start in range(0, names, BATCH):
            want = 0
            for op in ("subscribe", "history", "unsubscribe"):
                for i in range(start, min(start + BATCH, names)):
                    command: dict[str, Any] = {"id": next_id, "op": op, "channel": f"chat:n{i}"}
                    if op == "history":
                        command["limit"] = 0
                    await ws.send(json.dumps(command))
                    next_id += 1
                    want += 1
                while want:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if "id" in message:
                        assert "result" in message, message
                        want -= 1
    return time.perf_counter() - started


def drive(names: int, redis_url: str | None) -> dict[str, Any]:
    prefix = f"bench-names-{secrets.token_hex(4)}"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "bench.channel_names", "--serve", "--prefix", prefix]
    if redis_url is not None:
        command += ["--redis", redis_url]
    proc = subprocess.Popen(command, cwd=here, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        asyncio.run(walk_names(port, 100))  # warm-up: imports, first connection
        out: dict[str, Any] = {"names": names, "broker": "redis" if redis_url else "memory"}
        out["rss_before_mib"] = round(rss_mib(proc.pid), 1)
        if redis_url is not None:
            out["redis_keys_before"] = redis_keys(redis_url, prefix)
        out["seconds"] = round(asyncio.run(walk_names(port, names)), 1)
        time.sleep(0.5)  # the broker unsubscribes in the background
        out["rss_after_mib"] = round(rss_mib(proc.pid), 1)
        if redis_url is not None:
            out["redis_keys_after"] = redis_keys(redis_url, prefix)
        return out
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if redis_url is not None:
            redis_cleanup(redis_url, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--redis", default=None, help="a Redis URL (default: memory broker)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bench-names", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.redis, args.prefix)
        return
    print(json.dumps(drive(args.names, args.redis)))


if __name__ == "__main__":
    main()
