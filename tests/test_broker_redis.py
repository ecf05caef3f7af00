"""RedisBroker beyond the shared contract: several nodes on one Redis, presence expiry, the
key layout, and faults (Redis down, restarted, a killed pub/sub connection, a hung server).

The contract both brokers keep is in test_broker_contract.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from rtserve.broker.base import BrokerError, ClientInfo, Publication, PublishOptions
from rtserve.broker.redis import RedisBroker
from rtserve.broker.redis_pubsub import PubSubReader
from rtserve.realtime.hub import Hub
from rtserve.realtime.outbound import Outbound
from rtserve.realtime.rules import ChannelRule, ChannelRules
from rtserve.realtime.settings import ChannelSettings
from tests.redis_support import PrivateRedis
from tests.support.broker_events import Recorder
from tests.support.net import free_port
from tests.support.waiting import eventually

KEEP = PublishOptions(history_size=100)


def run(coro: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(main())


@asynccontextmanager
async def node(url: str, prefix: str, **kwargs: Any) -> AsyncIterator[tuple[RedisBroker, Recorder]]:
    """A started RedisBroker (one node) with a recording sink; closed afterwards."""
    broker = RedisBroker(url, prefix=prefix, **kwargs)
    events = Recorder()
    await broker.start(events)
    try:
        yield broker, events
    finally:
        await broker.close()


def sync_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5)


# --- several nodes ------------------------------------------------------------------------------


def test_two_nodes_see_each_others_publications_in_order(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        async with (
            node(redis_url, redis_prefix) as (a, ea),
            node(redis_url, redis_prefix) as (b, eb),
        ):
            await a.subscribe("ch")
            await b.subscribe("ch")
            sends = [
                (a if i % 2 else b).publish("ch", {"i": i}, info=ClientInfo(f"c{i % 2}"))
                for i in range(40)
            ]
            positions = await asyncio.gather(*sends)
            assert sorted(p.offset for p in positions) == list(range(1, 41))
            assert len({p.epoch for p in positions}) == 1
            await ea.wait_count("ch", 40)
            await eb.wait_count("ch", 40)
            assert ea.offsets("ch") == list(range(1, 41))
            assert ea.events == eb.events
            by_offset = {p.offset: i for i, p in enumerate(positions)}
            assert all(e[3] == {"i": by_offset[e[2]]} for e in ea.events)

            await b.publish_join("ch", ClientInfo("c9", "u"))
            await ea.wait_until(lambda: ("join", "ch", "c9") in ea.events)
            await eb.wait_until(lambda: ("join", "ch", "c9") in eb.events)

    run(main)


def test_nodes_agree_on_a_new_channels_epoch(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        async with (
            node(redis_url, redis_prefix) as (a, _),
            node(redis_url, redis_prefix) as (b, _),
        ):
            results = await asyncio.gather(*[(a if i % 2 else b).history("new") for i in range(10)])
            assert len({r.position for r in results}) == 1
            epoch = results[0].position.epoch
            assert (await b.publish("new", 1)).epoch == epoch

    run(main)


def test_idempotency_across_nodes(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        async with (
            node(redis_url, redis_prefix) as (a, ea),
            node(redis_url, redis_prefix) as (b, _),
        ):
            await a.subscribe("ch")
            once = PublishOptions(history_size=10, idempotency_key="order-7")
            first = await a.publish("ch", "x", options=once)
            assert await b.publish("ch", "y", options=once) == first
            await a.publish("ch", "marker", options=PublishOptions(history_size=10))
            await ea.wait_count("ch", 2)
            assert [e[3] for e in ea.events] == ["x", "marker"]
            assert [p.data for p in (await b.history("ch")).publications] == ["x", "marker"]

    run(main)


def test_presence_across_nodes_and_close(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        async with node(redis_url, redis_prefix) as (a, _):
            b = RedisBroker(redis_url, prefix=redis_prefix)
            await b.start(Recorder())
            c1, c2, c3 = ClientInfo("c1", "alice"), ClientInfo("c2", "bob"), ClientInfo("c3")
            await a.presence_add("room", c1)
            await b.presence_add("room", c2)
            await b.presence_add("room", c3)
            assert await a.presence("room") == {"c1": c1, "c2": c2, "c3": c3}
            stats = await b.presence_stats("room")
            assert (stats.clients, stats.users) == (3, 2)
            await b.close()  # a node that closes takes its clients with it
            assert await a.presence("room") == {"c1": c1}

    run(main)


def test_a_node_that_stops_refreshing_loses_its_members(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        ttl = 0.5
        async with (
            node(redis_url, redis_prefix, presence_ttl=ttl) as (a, _),
            node(redis_url, redis_prefix, presence_ttl=ttl) as (b, _),
        ):
            await a.presence_add("room", ClientInfo("dies"))
            await b.presence_add("room", ClientInfo("lives", "u"))
            assert set(await b.presence("room")) == {"dies", "lives"}
            assert a._heartbeat is not None
            a._heartbeat.cancel()  # node a hangs: it no longer refreshes its clients
            started = time.monotonic()

            async def gone() -> bool:
                return set(await b.presence("room")) == {"lives"}

            await eventually(gone, timeout=3 * ttl + 1)
            assert time.monotonic() - started >= ttl * 0.5
            stats = await a.presence_stats("room")
            assert (stats.clients, stats.users) == (1, 1)
            await asyncio.sleep(2 * ttl)  # b keeps refreshing its own
            assert set(await a.presence("room")) == {"lives"}

    run(main)


def test_key_layout_hash_tags_and_expiry(redis_url: str, redis_prefix: str) -> None:
    from redis.crc import key_slot

    async def main() -> None:
        async with node(redis_url, redis_prefix, presence_ttl=30) as (a, _):
            options = PublishOptions(history_size=5, history_ttl=60, idempotency_key="k")
            await a.publish("chat:1", 1, options=options)
            await a.presence_add("chat:1", ClientInfo("c1"))
            await a.publish("chat:2", 1)

    run(main)
    client = sync_client(redis_url)
    try:
        keys = {k.decode() for k in client.scan_iter(match=f"{redis_prefix}:*")}
        tag = f"{redis_prefix}:{{chat:1}}"
        assert keys == {
            f"{tag}:meta",
            f"{tag}:stream",
            f"{tag}:idem:k",
            f"{redis_prefix}:{{chat:2}}:meta",
            f"{redis_prefix}:epoch-seed",
        }  # close() removed the presence keys
        assert len({key_slot(f"{tag}:{name}".encode()) for name in ("meta", "stream")}) == 1
        assert key_slot(f"{tag}:pres".encode()) == key_slot(f"{tag}:meta".encode())
        for key in keys - {f"{redis_prefix}:epoch-seed"}:  # one per prefix
            assert client.pttl(key) > 0, key  # nothing of a channel lives forever
        assert 0 < client.pttl(f"{tag}:stream") <= 60_000
        assert client.hget(f"{tag}:meta", "offset") == b"1"
    finally:
        client.close()


def test_meta_expiry_starts_a_new_epoch_and_drops_the_stale_stream(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with node(redis_url, redis_prefix, meta_ttl=0.3) as (a, _):
            first = await a.publish("ch", 1, options=KEEP)
            await a.publish("ch", 2, options=KEEP)

            async def expired() -> bool:
                return (await a.history("ch", limit=0)).position.epoch != first.epoch

            await eventually(expired)
            renewed = await a.publish("ch", 3, options=KEEP)
            assert renewed.offset == 1 and renewed.epoch != first.epoch
            assert [p.data for p in (await a.history("ch")).publications] == [3]

        # The meta key alone lost (the stream outliving it): the old stream goes too.
        async with node(redis_url, redis_prefix) as (b, _):
            old = await b.publish("other", "old", options=KEEP)
            client = sync_client(redis_url)
            client.delete(f"{redis_prefix}:{{other}}:meta")
            client.close()
            new = await b.publish("other", "new", options=KEEP)
            assert new.offset == 1 and new.epoch != old.epoch
            assert (await b.history("other")).publications == [Publication(1, "new")]

    run(main)


def test_through_the_hub_on_two_nodes(redis_url: str, redis_prefix: str) -> None:
    class Subscriber:
        def __init__(self, name: str) -> None:
            self.client = ClientInfo(name)
            self.got: list[tuple[str, int, bytes]] = []
            self.arrived = asyncio.Event()

        def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> None:
            self.got.append((channel, message.offset, message.payload))
            self.arrived.set()

        def deliver_event(self, channel: str, message: Outbound) -> None:
            pass

        def end_subscription(self, channel: str, code: int, message: str) -> None:
            pass

    def make_hub() -> Hub:
        rules = ChannelRules()
        rules.add(ChannelRule("c:*", history=10))
        return Hub(rules, RedisBroker(redis_url, prefix=redis_prefix), ChannelSettings())

    async def main() -> None:
        one, two = make_hub(), make_hub()
        await one.start()
        await two.start()
        try:
            sub = Subscriber("s")
            result, last = await two.subscribe(sub, "c:room")
            assert (result["offset"], last) == (0, 0)
            position = await one.publish("c:room", {"text": "hello"})
            assert position.epoch == result["epoch"]
            await asyncio.wait_for(sub.arrived.wait(), 5)
            assert [(c, o) for c, o, _ in sub.got] == [("c:room", 1)]
            assert b"hello" in sub.got[0][2]
            history = await two.history("c:room")
            assert [p["offset"] for p in history["publications"]] == [1]
        finally:
            await one.close()
            await two.close()

    run(main)


# --- faults ---------------------------------------------------------------------------------


def test_start_against_a_closed_port_raises_quickly() -> None:
    async def main() -> None:
        url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
        broker = RedisBroker(url, timeout=2)
        started = time.monotonic()
        with pytest.raises(BrokerError) as info:
            await broker.start(Recorder())
        assert time.monotonic() - started < 3
        message = str(info.value)
        assert "cannot reach Redis" in message and "127.0.0.1" in message
        assert "s3cret" not in message
        with pytest.raises(BrokerError, match="not started"):
            await broker.publish("a", 1)
        await broker.close()

    run(main)


def test_redis_down_is_an_error_and_a_restart_is_survived(private_redis: PrivateRedis) -> None:
    url = private_redis.url

    async def main() -> None:
        async with (
            node(url, "p", reconnect_delay=(0.05, 0.2), timeout=2) as (a, ea),
            node(url, "p", timeout=2) as (b, _),
        ):
            await a.subscribe("ch")
            await b.publish("ch", "before", options=KEEP)
            await ea.wait_count("ch", 1)

            private_redis.kill()
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: b.publish("ch", "lost", options=KEEP),
                lambda: b.publish_join("ch", ClientInfo("c1")),
                lambda: b.history("ch"),
                lambda: b.subscribe("other"),
                lambda: b.presence_add("ch", ClientInfo("c1")),
                lambda: b.presence("ch"),
                lambda: b.presence_stats("ch"),
            ]
            for call in calls:
                started = time.monotonic()
                with pytest.raises(BrokerError):
                    await call()
                assert time.monotonic() - started < 3

            private_redis.start()  # same port; the append-only file kept the stream
            await eventually(lambda: _true(a.stats.reconnects >= 1))
            position = await b.publish("ch", "after", options=KEEP)
            assert position.offset == 2
            await ea.wait_count("ch", 2)
            assert [e[3] for e in ea.events] == ["before", "after"]

    run(main)


async def _true(value: bool) -> bool:
    return value


def hold_reconnect(monkeypatch: pytest.MonkeyPatch, broker: RedisBroker) -> asyncio.Event:
    """Make `broker`'s pub/sub reader wait before reconnecting until the event is set, so
    that what a test publishes meanwhile is surely missed by the subscription."""
    gate = asyncio.Event()
    real = PubSubReader._reconnect

    async def held(self: PubSubReader) -> None:
        if self.stats is broker.stats:  # the broker's reader
            await gate.wait()
        await real(self)

    monkeypatch.setattr(PubSubReader, "_reconnect", held)
    return gate


def test_killed_pubsub_connection_catches_up_exactly(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = private_redis.url

    async def main() -> None:
        async with (
            node(url, "p", reconnect_delay=(0.05, 0.1)) as (a, ea),
            node(url, "p") as (b, _),
        ):
            await a.subscribe("ch")
            await a.subscribe("nohist")
            for i in range(1, 4):
                await b.publish("ch", i, options=KEEP)
            await ea.wait_count("ch", 3)

            # While a catches up, two more land: they come both from the stream and live.
            real_read = RedisBroker.read_streams
            during: list[int] = []

            async def read_then_publish(self: RedisBroker, *args: Any, **kwargs: Any) -> Any:
                if self is a and not during:
                    for _ in range(2):
                        during.append((await b.publish("ch", "during", options=KEEP)).offset)
                return await real_read(self, *args, **kwargs)

            monkeypatch.setattr(RedisBroker, "read_streams", read_then_publish)
            back = hold_reconnect(monkeypatch, a)

            client = sync_client(url)
            assert client.client_kill_filter(_type="pubsub") == 1
            client.close()
            for i in range(4, 11):
                await b.publish("ch", i, options=KEEP)
            await b.publish("nohist", "gone")  # no history: cannot be caught up
            await b.publish("nohist", "gone too")
            back.set()

            await ea.wait_count("ch", 12)
            assert during == [11, 12]
            await b.publish("ch", "live", options=KEEP)
            await b.publish("nohist", "live")
            await ea.wait_count("ch", 13)
            await ea.wait_count("nohist", 2)  # the gap, then "live"
            assert ea.offsets("ch") == list(range(1, 14))  # each once, in order
            # the node was told it missed publications it cannot deliver, then got the next
            assert [e[0] for e in ea.of("nohist")] == ["gap", "pub"]
            assert [e[3] for e in ea.of("nohist") if e[0] == "pub"] == ["live"]
            assert ea.offsets("nohist") == [3]
            assert a.stats.reconnects == 1
            assert a.stats.recovered == 9  # 4..12 from the stream
            assert a.stats.lost == 2

    run(main)


def test_new_epoch_while_away_is_delivered(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = private_redis.url

    async def main() -> None:
        async with (
            node(url, "p", reconnect_delay=(0.05, 0.1)) as (a, ea),
            node(url, "p") as (b, _),
        ):
            await a.subscribe("ch")
            old = await b.publish("ch", "old", options=KEEP)
            await ea.wait_count("ch", 1)
            back = hold_reconnect(monkeypatch, a)
            client = sync_client(url)
            client.client_kill_filter(_type="pubsub")
            client.delete("p:{ch}:meta")  # the stream's life ends (as by expiry)
            client.close()
            new = await b.publish("ch", "new", options=KEEP)
            assert new.offset == 1 and new.epoch != old.epoch
            back.set()
            await ea.wait_count("ch", 2)
            assert ea.events[1] == ("pub", "ch", 1, "new", new.epoch)

    run(main)


def test_a_hung_redis_times_out(private_redis: PrivateRedis) -> None:
    url = private_redis.url

    async def main() -> None:
        options: dict[str, Any] = {"timeout": 0.5, "ping_interval": 0.2}
        async with node(url, "p", reconnect_delay=(0.05, 0.2), **options) as (a, ea):
            await a.subscribe("ch")
            await a.publish("ch", 1, options=KEEP)
            await asyncio.sleep(0.5)  # idle: PINGs keep finding the connection alive
            assert a.stats.reconnects == 0
            assert private_redis.process is not None
            pid = private_redis.process.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(BrokerError, match="publish"):
                    await a.publish("ch", 2, options=KEEP)
                assert time.monotonic() - started < 2
                await asyncio.sleep(0.5)  # an unanswered PING: the reader gives up
            finally:
                os.kill(pid, signal.SIGCONT)
            await eventually(lambda: _true(a.stats.reconnects >= 1))
            last = await a.publish("ch", 3, options=KEEP)
            await ea.wait_until(lambda: ea.offsets("ch")[-1:] == [last.offset])
            assert ea.offsets("ch") == list(range(1, last.offset + 1))  # the timed out one too

    run(main)


def test_malformed_messages_are_ignored(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        async with node(redis_url, redis_prefix, node_id="node one") as (a, ea):
            await a.subscribe("ch")
            client = sync_client(redis_url)
            try:
                for junk in (b"not json", b"[1]", b'{"o": "x"}', b'{"j": 5}', b"{}"):
                    client.publish(f"{redis_prefix}:{{ch}}:pub", junk)
                names = [c["name"] for c in client.client_list()]
            finally:
                client.close()
            assert "rtserve:node-one" in names and "rtserve:node-one:sub" in names
            await a.publish("ch", "fine")
            await ea.wait_count("ch", 1)
            assert ea.events == [("pub", "ch", 1, "fine", ea.events[0][4])]

    run(main)


def test_a_burst_of_commands_waits_for_the_pool_instead_of_failing(
    redis_url: str, redis_prefix: str
) -> None:
    """Many clients subscribing at once (a reconnect storm) need more connections than the
    pool has: they wait their turn, none is refused."""

    async def main() -> None:
        async with node(redis_url, redis_prefix, pool_size=4) as (broker, _):
            await broker.publish("burst", "x", options=KEEP)
            answers = await asyncio.gather(*(broker.history("burst") for _ in range(400)))
            assert all([p.data for p in a.publications] == ["x"] for a in answers)

    run(main)


# --- a stream that lost what a node delivered (a failover to a replica that missed it) -------


def _sub_after(offset: int, data: Any) -> Any:
    from rtserve.broker.redis_pubsub import _Sub

    sub = _Sub("c", offset, "e1")
    sub.last = Publication(offset, data)
    return sub


@pytest.mark.parametrize(
    ("sub", "position", "kept", "diverged"),
    [
        (_sub_after(3, "x"), (3, "e1"), [(3, "x")], False),  # the same publication
        (_sub_after(3, "x"), (5, "e1"), [(3, "x"), (4, "y")], False),  # more came after it
        (_sub_after(3, "x"), (3, "e1"), [(3, "other")], True),  # offset 3 given again
        (_sub_after(3, "x"), (2, "e1"), [(2, "w")], True),  # the stream ends before it
        (_sub_after(3, "x"), (4, "e1"), [(4, "y")], False),  # not kept: cannot tell
        (_sub_after(3, "x"), (1, "e2"), [(1, "z")], False),  # a new epoch says it already
    ],
)
def test_what_counts_as_a_diverged_stream(
    sub: Any, position: tuple[int, str], kept: list[tuple[int, Any]], diverged: bool
) -> None:
    from rtserve.broker.base import HistoryResult, StreamPosition
    from rtserve.broker.redis_pubsub import _diverged

    result = HistoryResult([Publication(o, d) for o, d in kept], StreamPosition(*position))
    assert _diverged(sub, result) is diverged


def test_a_stream_that_lost_delivered_publications_starts_a_new_epoch(
    redis_url: str, redis_prefix: str
) -> None:
    """Redis forgets offset 3, which the node delivered, and gives it to another publication
    (as when a master fails over to a replica that missed it); once the node's pub/sub
    connection comes back it signals a gap and the channel is on a new epoch, so clients
    holding offset 3 learn `recovered: false` instead of skipping the replacement."""

    async def main() -> None:
        async with node(redis_url, redis_prefix, reconnect_delay=(0.05, 0.2)) as (a, ea):
            await a.subscribe("lossy")
            for i in (1, 2, 3):
                await a.publish("lossy", i, options=KEEP)
            await ea.wait_until(lambda: ea.offsets("lossy") == [1, 2, 3])
            epoch = (await a.history("lossy")).position.epoch
            client = sync_client(redis_url)
            try:
                client.hset(f"{redis_prefix}:{{lossy}}:meta", "offset", 2)
                client.xdel(f"{redis_prefix}:{{lossy}}:stream", "3-0")
                client.execute_command("XSETID", f"{redis_prefix}:{{lossy}}:stream", "2-0")
                assert (await a.publish("lossy", 30, options=KEEP)).offset == 3  # skipped
                ours = [c for c in client.client_list() if c["name"] == f"rtserve:{a.node_id}:sub"]
                assert len(ours) == 1
                client.client_kill_filter(_id=ours[0]["id"])
            finally:
                client.close()
            await ea.wait_until(lambda: ("gap", "lossy") in ea.events)
            assert ea.offsets("lossy") == [1, 2, 3]
            position = (await a.history("lossy")).position
            assert position.epoch != epoch and position.offset == 0
            assert a.stats.diverged == 1
            await a.publish("lossy", 4, options=KEEP)
            await ea.wait_until(lambda: ea.events[-1][:4] == ("pub", "lossy", 1, 4))
            assert ea.events[-1][4] == position.epoch

    run(main)
