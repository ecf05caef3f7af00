"""MemoryBroker: offsets, epochs, history, delivery, idempotency, expiry and presence."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserve.broker.base import (
    BrokerError,
    ClientInfo,
    Publication,
    PublishOptions,
    StreamPosition,
)
from rtserve.broker.memory import MemoryBroker

KEEP = PublishOptions(history_size=10)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """BrokerEvents that records every call."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None:
        self.events.append(("pub", channel, publication.offset, publication.data, epoch))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.events.append(("join", channel, info.client))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.events.append(("leave", channel, info.client))

    def offsets(self, channel: str) -> list[int]:
        return [e[2] for e in self.events if e[0] == "pub" and e[1] == channel]


Scenario = Callable[[MemoryBroker, Recorder, Clock], Awaitable[None]]


def run(scenario: Scenario, **kwargs: Any) -> None:
    """Run `scenario` against a started broker with a recording sink and a fake clock."""

    async def main() -> None:
        clock = Clock()
        broker = MemoryBroker(clock=clock, **kwargs)
        events = Recorder()
        await broker.start(events)
        await scenario(broker, events, clock)
        await broker.close()

    asyncio.run(main())


def offsets(pubs: list[Publication]) -> list[int]:
    return [p.offset for p in pubs]


def test_offsets_start_at_one_and_epoch_is_stable() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        positions = [await broker.publish("a", i) for i in range(5)]
        assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
        assert len({p.epoch for p in positions}) == 1
        assert positions[0].epoch
        other = await broker.publish("b", "x")
        assert other.offset == 1
        result = await broker.history("a")
        assert result.publications == []  # history_size 0 keeps nothing, offsets still count
        assert result.position == positions[-1]

    run(scenario)


def test_history_keeps_the_newest_size() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        options = PublishOptions(history_size=3)
        for i in range(1, 6):
            await broker.publish("a", {"n": i}, options=options)
        result = await broker.history("a")
        assert offsets(result.publications) == [3, 4, 5]
        assert [p.data for p in result.publications] == [{"n": 3}, {"n": 4}, {"n": 5}]
        assert result.position.offset == 5

    run(scenario)


def test_history_ttl() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        options = PublishOptions(history_size=10, history_ttl=10.0)
        await broker.publish("a", 1, options=options)
        clock.advance(6)
        await broker.publish("a", 2, options=options)
        clock.advance(3)
        assert offsets((await broker.history("a")).publications) == [1, 2]
        clock.advance(1)  # the first is now exactly 10 s old
        result = await broker.history("a")
        assert offsets(result.publications) == [2]
        assert result.position.offset == 2
        clock.advance(6)
        result = await broker.history("a")
        assert result.publications == []
        assert result.position.offset == 2
        assert (await broker.publish("a", 3, options=options)).offset == 3
        assert offsets((await broker.history("a")).publications) == [3]

    run(scenario)


def test_since_and_limit() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
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

    run(scenario)


def test_delivery_only_when_subscribed_and_in_order() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        await broker.publish("a", "before")
        assert events.events == []
        await broker.subscribe("a")
        positions = [await broker.publish("a", i) for i in range(3)]
        await broker.publish("b", "elsewhere")
        assert events.events == [
            ("pub", "a", p.offset, i, p.epoch) for i, p in enumerate(positions)
        ]
        assert events.offsets("a") == [2, 3, 4]
        await broker.unsubscribe("a")
        await broker.unsubscribe("a")  # not subscribed: no error
        await broker.publish("a", "after")
        assert events.offsets("a") == [2, 3, 4]

    run(scenario)


def test_delivery_is_done_when_publish_returns() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        await broker.subscribe("a")
        tasks = [asyncio.create_task(broker.publish("a", i)) for i in range(20)]
        positions = await asyncio.gather(*tasks)
        assert events.offsets("a") == sorted(p.offset for p in positions)
        assert events.offsets("a") == list(range(1, 21))

    run(scenario)


def test_failing_receiver_does_not_fail_the_publish() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        def boom(channel: str, publication: Publication, epoch: str) -> None:
            raise RuntimeError("receiver bug")

        def boom_info(channel: str, info: ClientInfo) -> None:
            raise RuntimeError("receiver bug")

        events.on_publication = boom  # type: ignore[method-assign]
        events.on_join = events.on_leave = boom_info  # type: ignore[method-assign]
        await broker.subscribe("a")
        assert (await broker.publish("a", 1, options=KEEP)).offset == 1
        await broker.publish_join("a", ClientInfo("c1"))
        await broker.publish_leave("a", ClientInfo("c1"))
        assert offsets((await broker.history("a")).publications) == [1]

    run(scenario)


def test_join_and_leave_delivery() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        alice = ClientInfo("c1", "alice")
        await broker.publish_join("a", alice)
        assert events.events == []
        await broker.subscribe("a")
        await broker.publish_join("a", alice)
        await broker.publish_leave("a", alice)
        await broker.publish_join("b", alice)
        assert events.events == [("join", "a", "c1"), ("leave", "a", "c1")]
        await broker.unsubscribe("a")
        await broker.publish_leave("a", alice)
        assert len(events.events) == 2
        assert (await broker.history("a")).position.offset == 0  # joins are not kept

    run(scenario)


def test_idempotency() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        await broker.subscribe("a")
        once = PublishOptions(history_size=10, idempotency_key="k", idempotency_ttl=60.0)
        first = await broker.publish("a", "x", options=once)
        clock.advance(30)
        again = await broker.publish("a", "y", options=once)
        assert again == first
        assert events.offsets("a") == [1]
        assert [p.data for p in (await broker.history("a")).publications] == ["x"]

        other = await broker.publish("b", "x", options=once)
        assert other.offset == 1

        different = PublishOptions(history_size=10, idempotency_key="k2")
        assert (await broker.publish("a", "z", options=different)).offset == 2

        clock.advance(30)  # 60 s after the first: the key has expired
        later = await broker.publish("a", "w", options=once)
        assert later.offset == 3
        assert events.offsets("a") == [1, 2, 3]
        assert await broker.publish("a", "w", options=once) == later

    run(scenario)


def test_idempotency_keys_are_forgotten() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        for i in range(100):
            key = PublishOptions(idempotency_key=f"k{i}", idempotency_ttl=5.0 + i % 3)
            await broker.publish(f"c{i}", i, options=key)
        clock.advance(10)
        await broker.publish("a", "x")
        assert broker._idempotency == {}
        assert broker._idempotency_expiry == []

    run(scenario)


def test_meta_expiry_starts_a_new_epoch() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        first = await broker.publish("a", 1, options=KEEP)
        await broker.publish("a", 2, options=KEEP)
        clock.advance(50)
        kept = await broker.publish("a", 3, options=KEEP)  # publishing keeps the stream alive
        assert kept == StreamPosition(3, first.epoch)
        clock.advance(99)
        assert (await broker.history("a")).position == kept
        clock.advance(1)
        renewed = await broker.publish("a", 4, options=KEEP)
        assert renewed.offset == 1
        assert renewed.epoch != first.epoch
        result = await broker.history("a")
        assert offsets(result.publications) == [1]
        assert [p.data for p in result.publications] == [4]

    run(scenario, meta_ttl=100.0)


def test_expired_streams_are_swept() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        for i in range(1000):
            await broker.publish(f"one-off:{i}", i, options=KEEP)
        await broker.history("asked-only")
        clock.advance(100)
        await broker.publish("a", "x")
        assert list(broker._streams) == ["a"]

    run(scenario, meta_ttl=100.0)


def test_unknown_channel_position_keeps_its_epoch() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        before = await broker.history("a")
        assert before.publications == []
        assert before.position.offset == 0
        assert before.position.epoch
        clock.advance(10)
        assert (await broker.history("a")).position == before.position
        published = await broker.publish("a", 1)
        assert published == StreamPosition(1, before.position.epoch)

    run(scenario)


def test_presence() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
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
        assert "a" not in broker._presence
        assert await broker.presence("b") == {"c1": c1}

    run(scenario)


def test_broker_error_before_start_and_after_close() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        alice = ClientInfo("c1")
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: broker.publish("a", 1),
            lambda: broker.subscribe("a"),
            lambda: broker.unsubscribe("a"),
            lambda: broker.publish_join("a", alice),
            lambda: broker.publish_leave("a", alice),
            lambda: broker.history("a"),
            lambda: broker.presence_add("a", alice),
            lambda: broker.presence("a"),
            lambda: broker.presence_stats("a"),
        ]
        for call in calls:
            with pytest.raises(BrokerError):
                await call()

        events = Recorder()
        await broker.start(events)
        await broker.subscribe("a")
        await broker.presence_add("a", alice)
        await broker.close()
        for call in calls:
            with pytest.raises(BrokerError):
                await call()
        with pytest.raises(BrokerError):
            await broker.start(events)
        await broker.close()  # twice is fine
        assert events.events == []
        assert broker._presence == {}
        assert broker._subscriptions == set()

    asyncio.run(main())


def test_meta_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryBroker(meta_ttl=0)


# A step: ("publish", history_size, seconds to wait first) or ("history", since, limit).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 6), st.sampled_from([0.0, 0.0, 1.0, 4.0])),
        st.tuples(
            st.just("history"), st.none() | st.integers(-1, 40), st.none() | st.integers(0, 8)
        ),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps=steps, fixed_size=st.none() | st.integers(1, 6), ttl=st.sampled_from([0.0, 6.0]))
def test_history_property(
    steps: list[tuple[str, Any, Any]], fixed_size: int | None, ttl: float
) -> None:
    async def main() -> None:
        clock = Clock()
        broker = MemoryBroker(clock=clock)
        await broker.start(Recorder())
        epoch: str | None = None
        published = 0
        # A model: offset -> (time published), for what the contract says is kept.
        kept: list[tuple[int, float]] = []
        for step in steps:
            if step[0] == "publish":
                _, size, wait = step
                size = fixed_size if fixed_size is not None else size
                clock.advance(wait)
                position = await broker.publish(
                    "ch", published + 1, options=PublishOptions(history_size=size, history_ttl=ttl)
                )
                published += 1
                assert position.offset == published
                kept = [*kept, (published, clock.now)][-size:] if size else []
            else:
                _, since, limit = step
                result = await broker.history("ch", since=since, limit=limit)
                if ttl > 0:
                    kept = [(o, t) for o, t in kept if clock.now - t < ttl]
                assert result.position.offset == published
                got = offsets(result.publications)
                assert [p.data for p in result.publications] == got
                want = [o for o, _ in kept if since is None or o > since]
                if limit is not None:
                    want = want[:limit]
                assert got == want
                if got:
                    assert got == list(range(got[0], got[0] + len(got)))
                if kept:
                    assert kept[-1][0] == result.position.offset
                full = await broker.history("ch")
                if full.publications:
                    assert full.publications[-1].offset == full.position.offset
            if epoch is None:
                epoch = (await broker.history("ch")).position.epoch
            assert (await broker.history("ch")).position.epoch == epoch
        await broker.close()

    asyncio.run(main())
