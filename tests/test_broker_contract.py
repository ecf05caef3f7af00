"""The Broker contract, run on every backend: MemoryBroker and RedisBroker.

What a backend may differ in: delivery of a publication may come after `publish` returns
(Redis delivers through pub/sub), so these tests wait for deliveries (bounded) and prove an
absence by waiting for a later marker on the same node. Tests of the memory broker's fake
clock and internals live in test_broker_memory.py, Redis-only ones in test_broker_redis.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rtserve.broker.base import (
    Broker,
    BrokerError,
    ClientInfo,
    Publication,
    PublishOptions,
    StreamPosition,
)
from rtserve.broker.memory import MemoryBroker
from tests.support.broker_events import Recorder
from tests.support.waiting import eventually

KEEP = PublishOptions(history_size=10)
WAIT = 5.0  # seconds a test waits for something that should happen at once


Factory = Callable[..., Broker]


Scenario = Callable[[Broker, Recorder], Awaitable[None]]


def run(make_broker: Factory, scenario: Scenario, **kwargs: Any) -> None:
    async def main() -> None:
        broker = make_broker(**kwargs)
        events = Recorder()
        await broker.start(events)
        try:
            await asyncio.wait_for(scenario(broker, events), 20)
        finally:
            await broker.close()

    asyncio.run(main())


def offsets(pubs: list[Publication]) -> list[int]:
    return [p.offset for p in pubs]


def test_offsets_start_at_one_and_epoch_is_stable(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        positions = [await broker.publish("a", i) for i in range(5)]
        assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
        assert len({p.epoch for p in positions}) == 1
        assert positions[0].epoch
        assert (await broker.publish("b", "x")).offset == 1
        result = await broker.history("a")
        assert result.publications == []  # history_size 0 keeps nothing, offsets still count
        assert result.position == positions[-1]

    run(make_broker, scenario)


def test_history_keeps_the_newest_size_and_any_json(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        options = PublishOptions(history_size=3)
        values: list[Any] = [None, {"n": 2, "s": "é\n\"'"}, [1, 2.5, True], "text", {"x": {}}]
        alice = ClientInfo("c1", "alice", {"device": "phone"})
        for value in values:
            await broker.publish("a", value, info=alice, options=options)
        result = await broker.history("a")
        assert offsets(result.publications) == [3, 4, 5]
        assert [p.data for p in result.publications] == values[2:]
        assert all(p.info == alice for p in result.publications)
        assert result.position.offset == 5
        await broker.publish("a", "no info", options=options)
        assert (await broker.history("a", since=5)).publications == [Publication(6, "no info")]
        # A smaller size trims what is kept; size 0 keeps nothing.
        await broker.publish("a", 7, options=PublishOptions(history_size=1))
        assert offsets((await broker.history("a")).publications) == [7]
        await broker.publish("a", 8)
        assert (await broker.history("a")).publications == []
        await broker.publish("a", 9, options=options)
        assert offsets((await broker.history("a")).publications) == [9]

    run(make_broker, scenario)


def test_since_and_limit(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        options = PublishOptions(history_size=5)
        for i in range(8):
            await broker.publish("a", i, options=options)
        # Kept: 4..8.
        assert offsets((await broker.history("a", since=0)).publications) == [4, 5, 6, 7, 8]
        assert offsets((await broker.history("a", since=2)).publications) == [4, 5, 6, 7, 8]
        assert offsets((await broker.history("a", since=5)).publications) == [6, 7, 8]
        assert (await broker.history("a", since=8)).publications == []
        assert (await broker.history("a", since=20)).publications == []
        assert offsets((await broker.history("a", limit=2)).publications) == [4, 5]
        assert offsets((await broker.history("a", since=5, limit=2)).publications) == [6, 7]
        assert offsets((await broker.history("a", since=5, limit=9)).publications) == [6, 7, 8]
        empty = await broker.history("a", since=5, limit=0)
        assert empty.publications == []
        assert empty.position.offset == 8

    run(make_broker, scenario)


def test_history_ttl(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        options = PublishOptions(history_size=10, history_ttl=0.3)
        first = await broker.publish("a", 1, options=options)
        await broker.publish("a", 2, options=options)
        assert offsets((await broker.history("a")).publications) == [1, 2]

        async def emptied() -> bool:
            return (await broker.history("a")).publications == []

        await eventually(emptied)
        result = await broker.history("a")
        assert result.position == StreamPosition(2, first.epoch)
        assert (await broker.publish("a", 3, options=options)).offset == 3
        assert offsets((await broker.history("a")).publications) == [3]

    run(make_broker, scenario)


def test_delivery_only_when_subscribed_and_in_order(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        await broker.publish("a", "before")
        await broker.subscribe("marker")
        await broker.publish("marker", 1)
        await events.wait_count("marker", 1)
        assert events.of("a") == []

        await broker.subscribe("a")
        positions = [await broker.publish("a", i) for i in range(3)]
        await broker.publish("b", "elsewhere")
        await events.wait_count("a", 3)
        assert events.of("a") == [
            ("pub", "a", p.offset, i, p.epoch) for i, p in enumerate(positions)
        ]
        assert events.offsets("a") == [2, 3, 4]

        await broker.unsubscribe("a")
        await broker.unsubscribe("a")  # not subscribed: no error
        await broker.publish("a", "after")
        await broker.publish("marker", 2)
        await events.wait_count("marker", 2)
        assert events.offsets("a") == [2, 3, 4]
        assert events.of("b") == []

    run(make_broker, scenario)


def test_tags_are_kept_and_delivered_with_the_publication(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        await broker.subscribe("t")
        who = ClientInfo("c1", "u1")
        await broker.publish("t", {"v": 1}, options=KEEP, tags={"region": "eu", "é": "ü"})
        await broker.publish("t", 2, info=who, options=KEEP, tags={"region": "us"})
        await broker.publish("t", 3, options=KEEP)
        await events.wait_count("t", 3)
        wanted = [({"region": "eu", "é": "ü"}, None), ({"region": "us"}, who), (None, None)]
        assert [(p.tags, p.info) for p in events.publications] == wanted
        kept = (await broker.history("t")).publications
        assert [(p.tags, p.info) for p in kept] == wanted
        assert [p.data for p in kept] == [{"v": 1}, 2, 3]

    run(make_broker, scenario)


def test_concurrent_publications_arrive_in_offset_order(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        await broker.subscribe("a")
        tasks = [asyncio.create_task(broker.publish("a", i, options=KEEP)) for i in range(50)]
        positions = await asyncio.gather(*tasks)
        assert sorted(p.offset for p in positions) == list(range(1, 51))
        await events.wait_count("a", 50)
        assert events.offsets("a") == list(range(1, 51))
        # Each delivered publication carries the data its publish sent.
        sent = {p.offset: i for i, p in enumerate(positions)}
        assert all(e[3] == sent[e[2]] for e in events.of("a"))

    run(make_broker, scenario)


def test_failing_receiver_does_not_fail_the_publish(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        calls: list[str] = []

        def boom(channel: str, publication: Publication, epoch: str) -> None:
            calls.append("pub")
            raise RuntimeError("receiver bug")

        def boom_info(channel: str, info: ClientInfo) -> None:
            calls.append("info")
            raise RuntimeError("receiver bug")

        events.on_publication = boom  # type: ignore[method-assign]
        events.on_join = events.on_leave = boom_info  # type: ignore[method-assign]
        await broker.subscribe("a")
        assert (await broker.publish("a", 1, options=KEEP)).offset == 1
        await broker.publish_join("a", ClientInfo("c1"))
        await broker.publish_leave("a", ClientInfo("c1"))
        assert offsets((await broker.history("a")).publications) == [1]
        await eventually(lambda: _true(len(calls) == 3))
        assert (await broker.publish("a", 2, options=KEEP)).offset == 2  # still works
        await eventually(lambda: _true(len(calls) == 4))

    run(make_broker, scenario)


async def _true(value: bool) -> bool:
    return value


def test_join_and_leave_delivery(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        alice = ClientInfo("c1", "alice")
        await broker.subscribe("marker")
        await broker.publish_join("a", alice)
        await broker.publish("marker", 1)
        await events.wait_count("marker", 1)
        assert events.of("a") == []
        await broker.subscribe("a")
        await broker.publish_join("a", alice)
        await broker.publish_leave("a", alice)
        await broker.publish_join("b", alice)
        await events.wait_count("a", 2)
        assert events.of("a") == [("join", "a", "c1"), ("leave", "a", "c1")]
        await broker.unsubscribe("a")
        await broker.publish_leave("a", alice)
        await broker.publish("marker", 2)
        await events.wait_count("marker", 2)
        assert len(events.of("a")) == 2
        assert events.of("b") == []
        assert (await broker.history("a")).position.offset == 0  # joins are not kept

    run(make_broker, scenario)


def test_idempotency(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        await broker.subscribe("a")
        once = PublishOptions(history_size=10, idempotency_key="k", idempotency_ttl=60.0)
        first = await broker.publish("a", "x", options=once)
        assert await broker.publish("a", "y", options=once) == first
        other = await broker.publish("b", "x", options=once)  # keys are per channel
        assert other.offset == 1
        different = PublishOptions(history_size=10, idempotency_key="k2")
        assert (await broker.publish("a", "z", options=different)).offset == 2
        await events.wait_count("a", 2)
        assert events.offsets("a") == [1, 2]
        assert [p.data for p in (await broker.history("a")).publications] == ["x", "z"]

        short = PublishOptions(history_size=10, idempotency_key="s", idempotency_ttl=0.2)
        kept = await broker.publish("a", "s1", options=short)
        assert await broker.publish("a", "s2", options=short) == kept
        await asyncio.sleep(0.25)
        assert (await broker.publish("a", "s3", options=short)).offset == kept.offset + 1

    run(make_broker, scenario)


def test_unknown_channel_position_keeps_its_epoch(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        before = await broker.history("a")
        assert before.publications == []
        assert before.position.offset == 0
        assert before.position.epoch
        assert (await broker.history("a", limit=0)).position == before.position
        published = await broker.publish("a", 1)
        assert published == StreamPosition(1, before.position.epoch)

    run(make_broker, scenario)


def test_presence(make_broker: Factory) -> None:
    async def scenario(broker: Broker, events: Recorder) -> None:
        assert await broker.presence("a") == {}
        stats = await broker.presence_stats("a")
        assert (stats.clients, stats.users) == (0, 0)

        c1 = ClientInfo("c1", "alice", {"device": "phone"})
        c2 = ClientInfo("c2", "alice")
        c3 = ClientInfo("c3", "bob")
        c4 = ClientInfo("c4")
        for info in (c1, c2, c3, c4):
            await broker.presence_add("a", info)
        await broker.presence_add("b", c1)
        members = await broker.presence("a")
        assert members == {"c1": c1, "c2": c2, "c3": c3, "c4": c4}
        stats = await broker.presence_stats("a")
        assert (stats.clients, stats.users) == (4, 2)

        members.clear()  # a copy
        assert len(await broker.presence("a")) == 4

        replaced = ClientInfo("c1", "carol")
        await broker.presence_add("a", replaced)
        assert (await broker.presence("a"))["c1"] == replaced
        stats = await broker.presence_stats("a")
        assert (stats.clients, stats.users) == (4, 3)
        await broker.presence_add("a", c1)

        await broker.presence_remove("a", "c1")
        await broker.presence_remove("a", "nobody")
        await broker.presence_remove("nowhere", "c1")
        stats = await broker.presence_stats("a")
        assert (stats.clients, stats.users) == (3, 2)
        await broker.presence_remove("a", "c2")
        stats = await broker.presence_stats("a")
        assert (stats.clients, stats.users) == (2, 1)
        for client in ("c3", "c4"):
            await broker.presence_remove("a", client)
        assert await broker.presence("a") == {}
        assert await broker.presence("b") == {"c1": c1}

    run(make_broker, scenario)


def test_broker_error_before_start_and_after_close(make_broker: Factory) -> None:
    async def main() -> None:
        broker = make_broker()
        alice = ClientInfo("c1")
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: broker.publish("a", 1),
            lambda: broker.subscribe("a"),
            lambda: broker.unsubscribe("a"),
            lambda: broker.publish_join("a", alice),
            lambda: broker.publish_leave("a", alice),
            lambda: broker.history("a"),
            lambda: broker.presence_add("a", alice),
            lambda: broker.presence_remove("a", "c1"),
            lambda: broker.presence("a"),
            lambda: broker.presence_stats("a"),
        ]
        for call in calls:
            with pytest.raises(BrokerError, match="not started"):
                await call()

        events = Recorder()
        await broker.start(events)
        await broker.subscribe("a")
        await broker.presence_add("a", alice)
        await broker.close()
        for call in calls:
            with pytest.raises(BrokerError, match="closed"):
                await call()
        with pytest.raises(BrokerError):
            await broker.start(events)
        await broker.close()  # twice is fine
        assert events.events == []

        # Closing removed this node's presence.
        again = make_broker()
        await again.start(Recorder())
        assert await again.presence("a") == {}
        await again.close()

    asyncio.run(main())


# --- what a channel costs, and how long its stream lives -----------------------------------


async def kept_per_channel(broker: Broker) -> int:
    """What the backend holds for channels: streams (memory), or keys under the prefix that
    belong to a channel (Redis: ``P:{C}:...``; the prefix's one epoch seed is not counted)."""
    if isinstance(broker, MemoryBroker):
        return len(broker._streams)
    from rtserve.broker.redis import RedisBroker

    assert isinstance(broker, RedisBroker) and broker._client is not None
    return len([key async for key in broker._client.scan_iter(match=f"{broker._prefix}:{{*")])


def test_reading_and_subscribing_unknown_channels_keeps_nothing(make_broker: Factory) -> None:
    """A subscribe or a history read of a channel nothing was published to creates no stream
    (issue 16: 180,000 names cost 200 MiB for a day); the position it reports is the one the
    first publication starts."""

    async def scenario(broker: Broker, events: Recorder) -> None:
        for i in range(200):
            name = f"names:{i}"
            await broker.subscribe(name)
            await broker.history(name, limit=0)
            await broker.history(name, since=5, limit=10)
            await broker.unsubscribe(name)
        assert await kept_per_channel(broker) == 0
        before = await broker.history("names:7")
        assert before.position.offset == 0 and before.position.epoch
        assert (await broker.history("names:7")).position == before.position
        assert await broker.publish("names:7", 1) == StreamPosition(1, before.position.epoch)
        assert await kept_per_channel(broker) == 1  # the stream exists from its publication

    run(make_broker, scenario)


def test_each_stream_lives_as_long_as_its_own_history(make_broker: Factory) -> None:
    """A channel's stream lives meta_ttl after its last publication, or its own history_ttl
    when that is longer; another channel's longer history does not leak to it (issue 18)."""

    async def scenario(broker: Broker, events: Recorder) -> None:
        short = await broker.publish("short", 1)
        kept = PublishOptions(history_size=5, history_ttl=30)
        long = await broker.publish("long", 1, options=kept)

        async def short_reset() -> bool:
            return (await broker.history("short", limit=0)).position.offset == 0

        await eventually(short_reset)
        assert (await broker.history("short")).position.epoch != short.epoch
        result = await broker.history("long")
        assert result.position == long and offsets(result.publications) == [1]
        assert await broker.publish("long", 2, options=kept) == StreamPosition(2, long.epoch)

    run(make_broker, scenario, meta_ttl=0.3)


def test_huge_since_and_limit_are_answered_like_any_other(make_broker: Factory) -> None:
    """Offsets and limits far beyond anything kept (2**70) read as 'nothing after that' and
    'no limit', on every backend (Redis's script failed on them: issue 16)."""

    async def scenario(broker: Broker, events: Recorder) -> None:
        for i in range(3):
            await broker.publish("a", i, options=KEEP)
        huge = 2**70
        ahead = await broker.history("a", since=huge)
        assert ahead.publications == [] and ahead.position.offset == 3
        assert offsets((await broker.history("a", limit=huge)).publications) == [1, 2, 3]
        both = await broker.history("a", since=huge, limit=huge)
        assert both.publications == [] and both.position.offset == 3
        assert (await broker.history("unknown", since=huge, limit=huge)).position.offset == 0

    run(make_broker, scenario)


# --- the Hub on each backend ------------------------------------------------------------------


class HubSubscriber:
    """A Hub subscriber that records what it is given."""

    def __init__(self, name: str) -> None:
        self.client = ClientInfo(name)
        self.got: list[tuple[str, int]] = []
        self.ended: list[tuple[str, int]] = []
        self.changed = asyncio.Event()

    def deliver(self, channel: str, message: Any, rule: Any) -> None:
        self.got.append((channel, message.offset))
        self.changed.set()

    def deliver_event(self, channel: str, message: Any) -> None:
        pass

    def end_subscription(self, channel: str, code: int, message: str) -> None:
        self.ended.append((channel, code))
        self.changed.set()


def hub_on(broker: Broker, *rules: Any) -> Any:
    from rtserve.realtime.hub import Hub
    from rtserve.realtime.rules import ChannelRule, ChannelRules
    from rtserve.realtime.settings import ChannelSettings

    table = ChannelRules()
    for pattern, options in rules:
        table.add(ChannelRule(pattern, **options))
    return Hub(table, broker, ChannelSettings())


def run_hub(
    make_broker: Factory, scenario: Callable[[Any], Awaitable[None]], *rules: Any, **kwargs: Any
) -> None:
    async def main() -> None:
        hub = hub_on(make_broker(**kwargs), *rules)
        await hub.start()
        try:
            await asyncio.wait_for(scenario(hub), 20)
        finally:
            await hub.close()

    asyncio.run(main())


def test_hub_a_rule_without_history_keeps_its_stream_only_meta_ttl(make_broker: Factory) -> None:
    """Another rule's long history_ttl does not keep this rule's streams (issue 18)."""

    async def scenario(hub: Any) -> None:
        first = await hub.publish("plain:a", 1)
        kept = await hub.publish("inbox:a", 1)

        async def reset() -> bool:
            return bool((await hub.broker.history("plain:a", limit=0)).position.offset == 0)

        await eventually(reset)
        assert (await hub.publish("plain:a", 2)).epoch != first.epoch
        assert await hub.publish("inbox:a", 2) == StreamPosition(2, kept.epoch)

    rules = [("plain:*", {}), ("inbox:*", {"history": 10, "history_ttl": 30})]
    run_hub(make_broker, scenario, *rules, meta_ttl=0.3)


def test_hub_a_subscriber_before_the_first_publication_recovers_exactly(
    make_broker: Factory,
) -> None:
    """Subscribing creates no stream, yet the first publication continues the position the
    subscriber was given: it is delivered (no 112), and a resubscribe with it recovers."""

    async def scenario(hub: Any) -> None:
        early = HubSubscriber("early")
        result, _ = await hub.subscribe(early, "room:1")
        assert result["offset"] == 0
        assert await kept_per_channel(hub.broker) == 0
        position = await hub.publish("room:1", "first")
        assert position == StreamPosition(1, result["epoch"])
        while not early.got:
            early.changed.clear()
            await asyncio.wait_for(early.changed.wait(), WAIT)
        assert early.got == [("room:1", 1)] and early.ended == []
        hub.unsubscribe(early, "room:1")
        await hub.publish("room:1", "second")
        again, _ = await hub.subscribe(early, "room:1", StreamPosition(1, result["epoch"]))
        assert again["recovered"] is True
        assert [p["offset"] for p in again["publications"]] == [2]

    run_hub(make_broker, scenario, ("room:*", {"history": 10}))


def test_hub_history_limit_0_says_whether_since_is_still_kept(make_broker: Factory) -> None:
    """`history` with `limit: 0` and a `since` answers 112 when the history no longer holds
    what follows `since`, as without a limit (issue 18: it answered as if it could recover)."""
    from rtserve.realtime.protocol import ChannelError, ErrorCode

    async def scenario(hub: Any) -> None:
        for i in range(6):
            epoch = (await hub.publish("news", i)).epoch  # kept: 4, 5, 6
        for since in (3, 4, 5, 6):
            result = await hub.history("news", since=StreamPosition(since, epoch), limit=0)
            assert result == {"publications": [], "offset": 6, "epoch": epoch}, since
        for since in (0, 1, 2):
            with pytest.raises(ChannelError) as info:
                await hub.history("news", since=StreamPosition(since, epoch), limit=0)
            assert info.value.code == ErrorCode.UNRECOVERABLE, since
        with pytest.raises(ChannelError) as info:
            await hub.history("news", since=StreamPosition(6, "other"), limit=0)
        assert info.value.code == ErrorCode.UNRECOVERABLE

    run_hub(make_broker, scenario, ("news", {"history": 3}))
