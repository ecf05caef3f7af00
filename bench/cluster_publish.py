"""Publications/s over 1,000 channels: one Redis vs a Redis Cluster of three shards.

Issue 23's cluster row (bench/scale.py runs it as its ``cluster-publish`` case; this script
runs it alone): one Python process publishes through the broker (RedisBroker on one private
redis-server; RedisClusterBroker on a private cluster of three masters and three replicas,
tests/redis_support.py's LocalCluster, with ``wait=1``, the default: each publish waits for
its replica, and ``wait=0``), ``--concurrency`` publishes in flight, round-robin over
``--channels`` channels with history, for ``--seconds``; the cases take turns over
``--rounds`` rounds and the medians are reported. Per case: publications/s, Redis CPU per
publication (the CPU time of the masters, and of the replicas, from /proc/PID/stat, over
the publications) and the publishing process's CPU per publication.

On a two-core machine the publishing process (one core of Python) bounds publications/s
long before three shards do: the figure that carries over to bigger machines is Redis CPU
per publication. Servers listen on 127.0.0.1 only, without persistence.

Usage: python bench/cluster_publish.py [--seconds 3] [--channels 1000] [--concurrency 64]
                                      [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/, whose http.py would shadow the standard library

from rtserve.broker.base import Broker, PublishOptions  # noqa: E402
from rtserve.broker.url import broker_from_url  # noqa: E402
from tests.redis_support import LocalCluster, free_port  # noqa: E402

HISTORY = PublishOptions(history_size=100)


class _Sink:
    """BrokerEvents that drops everything (nothing is subscribed)."""

    def on_publication(self, *args: Any) -> None: ...
    def on_join(self, *args: Any) -> None: ...
    def on_leave(self, *args: Any) -> None: ...
    def on_gap(self, *args: Any) -> None: ...


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Counter(_Sink):
    """BrokerEvents that counts publications."""

    def __init__(self) -> None:
        self.count = 0

    def on_publication(self, *args: Any) -> None:
        self.count += 1


async def receive(url: str, channels: int) -> None:
    """The receiver process: subscribe to every channel, say ``ready``, then answer each line
    of stdin with the number of publications received so far (until stdin closes)."""
    broker = broker_from_url(url)
    counter = _Counter()
    await broker.start(counter)  # type: ignore[arg-type]
    try:
        for i in range(channels):
            await broker.subscribe(f"bench-{i}")
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(counter.count, flush=True)
    finally:
        await broker.close()


class Receiver:
    """Another process subscribed to every channel (a node whose clients listen to them):
    how much CPU receiving a publication costs it."""

    def __init__(self, url: str, channels: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--receive", url, "--channels", str(channels)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the receiver did not start")

    def received(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


async def measure(
    broker: Broker,
    masters: list[int],
    replicas: list[int],
    args: argparse.Namespace,
    receiver: Receiver | None = None,
) -> dict[str, float]:
    await broker.start(_Sink())  # type: ignore[arg-type]
    try:
        channels = [f"bench-{i}" for i in range(args.channels)]
        count = 0
        stop = time.monotonic() + args.seconds

        async def publisher(first: int) -> None:
            nonlocal count
            i = first
            while time.monotonic() < stop:
                await broker.publish(channels[i % len(channels)], {"n": i}, options=HISTORY)
                count += 1
                i += args.concurrency

        for _ in range(200):  # warm-up: scripts loaded, connections open
            await broker.publish(channels[0], {"n": 0}, options=HISTORY)
        await asyncio.sleep(0.5)  # the receiver has the warm-up's publications
        got = receiver.received() if receiver else 0
        receiver_before = cpu_seconds(receiver.process.pid) if receiver else 0.0
        masters_before = sum(map(cpu_seconds, masters))
        replicas_before = sum(map(cpu_seconds, replicas))
        own_before, began = own_cpu(), time.monotonic()
        stop = began + args.seconds
        await asyncio.gather(*(publisher(k) for k in range(args.concurrency)))
        elapsed = time.monotonic() - began
        masters_cpu = sum(map(cpu_seconds, masters)) - masters_before
        replicas_cpu = sum(map(cpu_seconds, replicas)) - replicas_before
        own = own_cpu() - own_before
        if receiver:
            await asyncio.sleep(0.5)  # what is still on its way
            got = receiver.received() - got
            receiver_cpu = cpu_seconds(receiver.process.pid) - receiver_before
    finally:
        await broker.close()
    row = {
        "publications/s": count / elapsed,
        "masters' CPU us/publication": masters_cpu / count * 1e6,
        "replicas' CPU us/publication": replicas_cpu / count * 1e6,
        "publisher CPU us/publication": own / count * 1e6,
    }
    if receiver:
        row["receiver CPU us/publication"] = receiver_cpu / max(1, got) * 1e6
        row["received %"] = 100 * got / count
    return row


def one_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode:
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return process, port


def roles(cluster: LocalCluster) -> tuple[list[int], list[int]]:
    """The pids of the cluster's masters and of its replicas."""
    masters, replicas = [], []
    for port, server in cluster.processes.items():
        role = subprocess.run(
            ["redis-cli", "-p", str(port), "role"], capture_output=True, text=True
        ).stdout.split()[:1]
        (masters if role == ["master"] else replicas).append(server.pid)
    return masters, replicas


CASES = ("one Redis", "cluster, 3 shards, wait=1", "cluster, 3 shards, wait=0")


def run_rounds(
    args: argparse.Namespace, cluster: LocalCluster, directory: Path
) -> dict[str, dict[str, float]]:
    """Every case of CASES once per round, in turn (so that other load on the machine falls
    on all alike), over `args.rounds` rounds: the median of each figure per case. The one
    Redis is a private redis-server; the cluster is `cluster` (started by the caller)."""
    process, port = one_redis(directory)
    try:
        masters, replicas = roles(cluster)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in CASES}
        for _ in range(args.rounds):
            for name in CASES:
                if name == "one Redis":
                    url = f"redis://127.0.0.1:{port}/0?prefix=bench"
                    watched: tuple[list[int], list[int]] = ([process.pid], [])
                else:
                    url = f"{cluster.url}?prefix=bench&wait={name[-1]}"
                    watched = (masters, replicas)
                receiver = Receiver(url, args.channels) if args.receiver else None
                try:
                    row = asyncio.run(measure(broker_from_url(url), *watched, args, receiver))
                finally:
                    if receiver:
                        receiver.stop()
                samples[name].append(row)
    finally:
        process.kill()
        process.wait(10)
    return {
        name: {key: statistics.median(s[key] for s in rows) for key in rows[0]}
        for name, rows in samples.items()
    }


def table(args: argparse.Namespace, rows: dict[str, dict[str, float]]) -> list[str]:
    """The markdown table of `run_rounds`'s medians."""
    receiver = ", another process subscribed to every channel" if args.receiver else ""
    columns = list(next(iter(rows.values())))
    out = [
        f"{args.channels} channels with history, {args.concurrency} publishes in flight from "
        f"one process{receiver}, {args.seconds:g} s per case and round, medians of "
        f"{args.rounds} alternating rounds ({os.cpu_count()} cores)",
        "",
        "| case | "
        + " | ".join(c.replace("publications/s", "publications/s (busy machine)") for c in columns)
        + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for name, row in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{value:,.0f}" for value in row.values()) + " |")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="per case and round (3)")
    parser.add_argument("--channels", type=int, default=1000, help="published round-robin")
    parser.add_argument("--concurrency", type=int, default=64, help="publishes in flight")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument(
        "--receiver",
        action="store_true",
        help="another process subscribes to every channel: its CPU per publication received",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--receive", metavar="URL", help=argparse.SUPPRESS)  # the receiver
    args = parser.parse_args()
    if args.receive:
        asyncio.run(receive(args.receive, args.channels))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp))
        cluster.start()
        try:
            rows = run_rounds(args, cluster, Path(tmp))
        finally:
            cluster.stop()
    print("\n".join(table(args, rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
