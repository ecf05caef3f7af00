"""RedisClusterBroker under topology changes: a master killed while three channels on three
shards publish, and a slot migrated under a subscription. The broker contract and channel
suites run on the cluster too (tests/brokers.py, id ``[cluster]``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.crc import key_slot

from rtserve.broker.base import BrokerError, PublishOptions
from rtserve.broker.redis_cluster import RedisClusterBroker, from_url
from tests.redis_support import LocalCluster, migrate_slot
from tests.support.broker_events import Recorder

# Each test starts a cluster of its own: on the worker of the session's cluster (tests/brokers.py),
# so that no two clusters start and fail over side by side.
pytestmark = pytest.mark.xdist_group("redis-cluster")

KEEP_ALL = PublishOptions(history_size=10_000)
FAST = {"reconnect_delay": (0.05, 0.5), "timeout": 2.0, "ping_interval": 1.0}
FAULT_TIMEOUT = 30.0  # seconds for a failover and the catch-up after it (1 s node timeout)


@contextlib.asynccontextmanager
async def cluster_node(
    cluster: LocalCluster, prefix: str, **kwargs: Any
) -> AsyncIterator[tuple[RedisClusterBroker, Recorder]]:
    """A started RedisClusterBroker (one rtserve node) with a recording sink."""
    nodes = from_url(cluster.url)._nodes
    broker = RedisClusterBroker(nodes, prefix=prefix, **kwargs)
    events = Recorder()
    await broker.start(events)
    try:
        yield broker, events
    finally:
        await broker.close()


def channels_on_three_shards(broker: RedisClusterBroker) -> list[str]:
    """Three channel names whose slots have three different masters."""
    found: dict[tuple[str, int], str] = {}
    for i in range(1000):
        found.setdefault(broker._master_of(f"room-{i}"), f"room-{i}")
        if len(found) == 3:
            return list(found.values())
    raise AssertionError("no three channels on three shards among 1000 names")


async def publish_until(
    broker: RedisClusterBroker, channel: str, count: int, accepted: list[tuple[int, Any]]
) -> None:
    """Publish 0, 1, 2 ... until `count` were accepted; a refused one is sent again (it was
    not accepted), with a bounded number of tries."""
    value = 0
    for _ in range(count + 2000):
        if len(accepted) >= count:
            return
        try:
            position = await broker.publish(channel, value, options=KEEP_ALL)
        except BrokerError:
            await asyncio.sleep(0.02)
            continue
        accepted.append((position.offset, value))
        value += 1
    raise AssertionError(f"{channel}: only {len(accepted)} of {count} publications accepted")


# Slow, and flaky by a known defect: a publication the master acknowledged and died before
# replicating is lost and its offset given again by the promoted replica, without a gap signal
# (docs/deployment.md, "Limits of this version"); seen once in five runs with the machine busy.
# Run it with `pytest -m slow tests/test_redis_cluster.py` until that is fixed (WAIT 1, or a new
# epoch on promotion).
@pytest.mark.slow
def test_a_master_killed_while_publishing_on_three_shards(private_cluster: LocalCluster) -> None:
    """Every accepted publication reaches the subscriber once and in order, or the channel
    is signalled as a gap (on_gap); the killed master's channel included."""

    async def main() -> None:
        async with (
            cluster_node(private_cluster, "fault", **FAST) as (a, ea),
            cluster_node(private_cluster, "fault", **FAST) as (b, _),
        ):
            channels = channels_on_three_shards(a)
            for channel in channels:
                await a.subscribe(channel)
            accepted: dict[str, list[tuple[int, Any]]] = {c: [] for c in channels}
            publishers = [
                asyncio.create_task(publish_until(b, c, 150, accepted[c])) for c in channels
            ]
            victim = channels[0]
            await ea.wait_until(lambda: len(ea.offsets(victim)) >= 30, FAULT_TIMEOUT)
            _, port = a._master_of(victim)
            private_cluster.kill(port)
            await asyncio.wait_for(asyncio.gather(*publishers), FAULT_TIMEOUT)

            def complete(channel: str) -> bool:
                kinds = [e[0] for e in ea.of(channel)]
                return "gap" in kinds or ea.offsets(channel)[-1:] == [accepted[channel][-1][0]]

            await ea.wait_until(lambda: all(complete(c) for c in channels), FAULT_TIMEOUT)
            assert a.stats.reconnects >= 1
            for channel in channels:
                delivered = [(e[2], e[3]) for e in ea.of(channel) if e[0] == "pub"]
                if ("gap",) in [e[:1] for e in ea.of(channel)]:
                    offsets = [o for o, _ in delivered]
                    assert offsets == sorted(set(offsets)), channel  # once, in order
                else:
                    assert delivered == accepted[channel], channel

    asyncio.run(main())


def test_a_slot_migrated_under_a_subscription(private_cluster: LocalCluster) -> None:
    """After the channel's slot moved to another master (Redis ends the sharded
    subscription), the subscriber follows it: what is published there arrives once, in
    order, after what was published before."""

    async def main() -> None:
        async with (
            cluster_node(private_cluster, "move", **FAST) as (a, ea),
            cluster_node(private_cluster, "move", **FAST) as (b, _),
        ):
            channel = "room-0"
            await a.subscribe(channel)
            for i in range(1, 6):
                await b.publish(channel, i, options=KEEP_ALL)
            await ea.wait_until(lambda: len(ea.offsets(channel)) == 5)
            _, source = a._master_of(channel)
            masters = {a._master_of(f"room-{i}")[1] for i in range(100)}
            target = min(masters - {source})
            slot = key_slot(a._pubsub_name(channel))
            await asyncio.to_thread(migrate_slot, private_cluster, slot, source, target)
            for i in range(6, 11):
                await b.publish(channel, i, options=KEEP_ALL)
            await ea.wait_until(lambda: len(ea.offsets(channel)) >= 10, FAULT_TIMEOUT)
            assert [(e[2], e[3]) for e in ea.of(channel)] == [(i, i) for i in range(1, 11)]
            assert a._master_of(channel)[1] == target

    asyncio.run(main())
