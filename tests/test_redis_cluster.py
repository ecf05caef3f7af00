"""RedisClusterBroker under topology changes: a master killed while three channels on three
shards publish, and a slot migrated under a subscription. The broker contract and channel
suites run on the cluster too (tests/brokers.py, id ``[cluster]``)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
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


Accepted = list[tuple[str, int, Any]]  # (epoch, offset, value) of acknowledged publishes


async def publish_until(
    broker: RedisClusterBroker, channel: str, done: asyncio.Event, accepted: Accepted
) -> None:
    """Publish 0, 1, 2 ... until `done` is set; a refused value is sent again (it was not
    accepted, though it may have been delivered), with a bounded number of tries."""
    value = 0
    for _ in range(100_000):
        if done.is_set():
            return
        try:
            position = await broker.publish(channel, value, options=KEEP_ALL)
        except BrokerError:
            await asyncio.sleep(0.02)
            continue
        accepted.append((position.epoch, position.offset, value))
        value += 1
    raise AssertionError(f"{channel}: still publishing after 100,000 tries")


def check_delivery(events: list[tuple[Any, ...]], accepted: Accepted) -> None:
    """What the proof asks of one channel: each publication delivered at most once, offsets
    rising within an epoch; every accepted one delivered, in order, except those of the
    epoch a gap (on_gap) ended; delivered ones that were not accepted are allowed (their
    publish failed)."""
    pubs = [(e[4], e[2], e[3]) for e in events if e[0] == "pub"]
    assert len({(epoch, offset) for epoch, offset, _ in pubs}) == len(pubs), "repeated"
    for epoch in {p[0] for p in pubs}:
        offsets = [o for e, o, _ in pubs if e == epoch]
        assert offsets == sorted(offsets), f"out of order in epoch {epoch}"
    gap = max((i for i, e in enumerate(events) if e[0] == "gap"), default=None)
    wanted = set(accepted)
    if gap is None:
        assert [p for p in pubs if p in wanted] == accepted
        return
    after = [(e[4], e[2], e[3]) for e in events[gap:] if e[0] == "pub"]
    epochs_after = {p[0] for p in after}
    before = {(e[4], e[2], e[3]) for e in events[:gap] if e[0] == "pub"}
    assert [p for p in after if p in wanted] == [p for p in accepted if p[0] in epochs_after]
    assert [p for p in pubs[: len(pubs) - len(after)] if p in wanted] == [
        p for p in accepted if p in before
    ]


@pytest.mark.parametrize(
    "lossy",
    [
        pytest.param(True, id="replica-missed-writes"),
        pytest.param(False, id="cluster-elects", marks=pytest.mark.slow),
    ],
)
def test_a_master_killed_while_publishing_on_three_shards(
    private_cluster: LocalCluster, lossy: bool
) -> None:
    """A master is killed while three channels on three shards publish: every accepted
    publication reaches the subscriber once and in order, or its channel is signalled as a
    gap (on_gap and a new epoch). `lossy`: the master's replica missed its last
    publications (frozen, link cut) and takes over at once, so the victim's channel must
    be signalled, as its subscriber had publications the new master never got; else the
    cluster elects the replica after its node timeout (slow: a few seconds more)."""

    async def main() -> None:
        async with (
            cluster_node(private_cluster, "fault", **FAST) as (a, ea),
            cluster_node(private_cluster, "fault", **FAST) as (b, _),
        ):
            channels = channels_on_three_shards(a)
            for channel in channels:
                await a.subscribe(channel)
            accepted: dict[str, Accepted] = {c: [] for c in channels}
            done = asyncio.Event()
            publishers = [
                asyncio.create_task(publish_until(b, c, done, accepted[c])) for c in channels
            ]
            victim = channels[0]
            await ea.wait_until(lambda: len(ea.offsets(victim)) >= 20, FAULT_TIMEOUT)
            _, master = a._master_of(victim)
            if lossy:
                replica = await asyncio.to_thread(private_cluster.cut_replication, master)
                seen = len(ea.offsets(victim))  # the next but one never reached the replica
                await ea.wait_until(lambda: len(ea.offsets(victim)) >= seen + 2, FAULT_TIMEOUT)
                private_cluster.kill(master)
                private_cluster.thaw(replica)
                await asyncio.to_thread(private_cluster.take_over, replica)
                await ea.wait_until(lambda: ("gap", victim) in ea.events, FAULT_TIMEOUT)
            else:
                private_cluster.kill(master)
                await ea.wait_until(lambda: a._master_of(victim)[1] != master, FAULT_TIMEOUT)
            # The new master has no replica: its publishes are refused until the old master
            # is back as one (each publish waits for a replica).
            await asyncio.to_thread(private_cluster.rejoin, master)
            goal = {c: len(accepted[c]) + 20 for c in channels}
            await ea.wait_until(
                lambda: all(len(accepted[c]) >= goal[c] for c in channels), FAULT_TIMEOUT
            )
            done.set()
            await asyncio.wait_for(asyncio.gather(*publishers), FAULT_TIMEOUT)
            last = {c: accepted[c][-1] for c in channels}
            await ea.wait_until(
                lambda: all(
                    any(e[0] == "pub" and (e[4], e[2], e[3]) == last[c] for e in ea.of(c))
                    for c in channels
                ),
                FAULT_TIMEOUT,
            )
            assert a.stats.reconnects >= 1
            for channel in channels:
                if lossy or channel != victim:
                    assert (("gap", channel) in ea.events) == (channel == victim), channel
                check_delivery(ea.of(channel), accepted[channel])
            if lossy:
                assert a.stats.diverged == 1

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


def test_a_burst_of_commands_waits_for_a_connection(redis_cluster: LocalCluster) -> None:
    """More commands at once than the pool has connections wait for one (as on one Redis)
    instead of failing: a burst of subscribers reading history, with a pool of 2."""

    async def main() -> None:
        prefix = f"burst-{secrets.token_hex(4)}"
        async with cluster_node(redis_cluster, prefix, pool_size=2) as (a, _):
            await a.publish("room-0", "x", options=KEEP_ALL)
            answers = await asyncio.gather(*(a.history("room-0") for _ in range(200)))
            assert all([p.data for p in answer.publications] == ["x"] for answer in answers)

    asyncio.run(main())


def test_the_url_says_how_many_replicas_a_publish_waits_for() -> None:
    assert from_url("redis+cluster://127.0.0.1:7000")._wait_replicas == 1  # the default
    assert from_url("redis+cluster://127.0.0.1:7000?prefix=p&wait=0")._wait_replicas == 0
    assert from_url("redis+cluster://127.0.0.1:7000?wait=2")._wait_replicas == 2
    with pytest.raises(ValueError, match="wait is a number of replicas"):
        from_url("redis+cluster://127.0.0.1:7000?wait=-1")


def test_a_publish_no_replica_acknowledged_is_an_error(private_cluster: LocalCluster) -> None:
    """With the channel's replica frozen, a publish is not acknowledged: BrokerError saying
    so (within half the timeout), where wait=0 answers at once; once the replica is back,
    publishing is acknowledged again."""

    async def main() -> None:
        async with (
            cluster_node(private_cluster, "wait", **FAST) as (a, _),
            cluster_node(private_cluster, "wait", wait_replicas=0, **FAST) as (b, _),
        ):
            await a.publish("room-0", 1, options=KEEP_ALL)
            _, master = a._master_of("room-0")
            replica = await asyncio.to_thread(private_cluster.cut_replication, master)
            try:
                with pytest.raises(BrokerError, match=r"0 of 1 replica\(s\) acknowledged"):
                    await a.publish("room-0", 2, options=KEEP_ALL)
                assert (await b.publish("room-0", 3, options=KEEP_ALL)).offset == 3
            finally:
                private_cluster.thaw(replica)
            for _ in range(200):  # the replica reconnects to its master within a second or so
                try:
                    assert (await a.publish("room-0", 4, options=KEEP_ALL)).offset >= 4
                    break
                except BrokerError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("publishing never acknowledged again")

    asyncio.run(main())
