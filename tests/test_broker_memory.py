"""MemoryBroker only: what its injected clock shows (history TTL, idempotency and stream
expiry, sweeping), delivery done when publish returns, and a model-based property test. The
interface itself is tested on both brokers in tests/test_broker_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserve.broker.base import (
    Publication,
    PublishOptions,
    StreamPosition,
)
from rtserve.broker.memory import MemoryBroker
from tests.support.broker_events import Recorder

KEEP = PublishOptions(history_size=10)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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


def test_delivery_is_done_when_publish_returns() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        await broker.subscribe("a")
        tasks = [asyncio.create_task(broker.publish("a", i)) for i in range(20)]
        positions = await asyncio.gather(*tasks)
        assert events.offsets("a") == sorted(p.offset for p in positions)
        assert events.offsets("a") == list(range(1, 21))

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


def test_a_new_stream_never_takes_an_expired_ones_epoch() -> None:
    """Reads before the first publication report the epoch it then starts (within one
    meta_ttl window); after a stream expired, reads and the next stream get another one."""

    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        seen = (await broker.history("a")).position
        clock.advance(50)
        first = await broker.publish("a", 1, options=KEEP)
        assert first == StreamPosition(1, seen.epoch)
        clock.advance(100)  # expired
        after = (await broker.history("a")).position
        assert after.offset == 0 and after.epoch != first.epoch
        assert broker._streams == {} and broker._expiry == {}
        assert (await broker.publish("a", 2)).epoch == after.epoch

    run(scenario, meta_ttl=100.0)


def test_streams_of_different_lifetimes_are_swept_each_in_time() -> None:
    async def scenario(broker: MemoryBroker, events: Recorder, clock: Clock) -> None:
        week = PublishOptions(history_size=5, history_ttl=1000)
        await broker.publish("long", 1, options=week)  # first in line, lives longest
        for i in range(100):
            await broker.publish(f"short:{i}", i)
        clock.advance(100)
        await broker.history("x")
        assert list(broker._streams) == ["long"]
        clock.advance(900)
        await broker.history("x")
        assert broker._streams == {}

    run(scenario, meta_ttl=100.0)
