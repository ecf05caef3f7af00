"""The deadline wheel the long polls' timeouts share: one loop timer per tenth of a second."""

from __future__ import annotations

import asyncio

from rtserve.realtime.deadlines import RESOLUTION, DeadlineWheel


class Item:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.at: float | None = None
        self.done = loop.create_future()

    def expired(self) -> None:
        self.at = self.loop.time()
        self.done.set_result(None)


def test_items_expire_never_early_and_at_most_a_tenth_late() -> None:
    asyncio.run(_items_expire_never_early_and_at_most_a_tenth_late())


async def _items_expire_never_early_and_at_most_a_tenth_late() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel()
    start = loop.time()
    items = [Item(loop) for _ in range(50)]
    for item in items:
        wheel.add(0.05, item)
    assert len(wheel) == 50
    timers = len(loop._scheduled)  # type: ignore[attr-defined]
    assert timers <= 2  # one bucket (two if the adds straddled a tenth)
    await asyncio.wait_for(asyncio.gather(*(item.done for item in items)), 5)
    for item in items:
        assert item.at is not None
        assert 0.05 <= item.at - start + 1e-3 <= 0.05 + RESOLUTION + 0.2
    assert len(wheel) == 0


def test_a_discarded_item_is_not_told() -> None:
    asyncio.run(_a_discarded_item_is_not_told())


async def _a_discarded_item_is_not_told() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel()
    kept, dropped = Item(loop), Item(loop)
    wheel.add(0.01, kept)
    wheel.discard(wheel.add(0.01, dropped), dropped)
    await asyncio.wait_for(kept.done, 5)
    assert dropped.at is None
    wheel.discard(12345, dropped)  # an unknown slot: nothing to do


def test_one_failing_item_does_not_keep_the_others_waiting() -> None:
    asyncio.run(_one_failing_item_does_not_keep_the_others_waiting())


async def _one_failing_item_does_not_keep_the_others_waiting() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel()

    class Failing:
        def expired(self) -> None:
            raise RuntimeError("boom")

    wheel.add(0.01, Failing())
    after = Item(loop)
    wheel.add(0.01, after)
    await asyncio.wait_for(after.done, 5)
