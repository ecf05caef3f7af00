"""The shared slow-consumer buffer without a connection: each policy, held and drained
messages, conflation keys and subscribe-time gathering, over a fake `offer` with room for a
given number of messages."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtserve.realtime.hub import HubStats
from rtserve.realtime.outbound import Outbound
from rtserve.realtime.outbox import Outbox
from rtserve.realtime.rules import ChannelRule


class Pipe:
    """A connection that takes `room` more messages, then refuses (as offer_frame does)."""

    def __init__(self, room: int = 0) -> None:
        self.room = room
        self.sent: list[bytes] = []

    def offer(self, data: bytes) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        self.sent.append(data)
        return True


def message(offset: int, key: Any = None) -> Outbound:
    return Outbound(b'{"n":%d}' % offset, offset, key)


def plain(message: Outbound) -> bytes:
    return message.plain


def outbox(room: int = 0) -> tuple[Outbox, Pipe, HubStats]:
    pipe, stats = Pipe(room), HubStats()
    return Outbox(pipe.offer, plain, stats), pipe, stats


def rule(policy: str, max_pending: int = 1000) -> ChannelRule:
    return ChannelRule("c", slow_consumer=policy, max_pending=max_pending)  # type: ignore[arg-type]


def offsets(pipe: Pipe) -> list[int]:
    return [int(data.rsplit(b":", 1)[1].rstrip(b"}")) for data in pipe.sent]


@pytest.mark.parametrize("policy", ["disconnect", "drop_oldest", "conflate"])
def test_with_room_the_shared_bytes_go_straight_through(policy: str) -> None:
    box, pipe, stats = outbox(room=2)
    first, second = message(1, "k"), message(2, "k")
    assert box.deliver("c", first, rule(policy)) and box.deliver("c", second, rule(policy))
    assert pipe.sent[0] is first.plain and pipe.sent[1] is second.plain  # no copy
    assert box.pending == 0 and stats == HubStats()


def test_disconnect_refuses_and_holds_nothing() -> None:
    box, pipe, stats = outbox(room=1)
    assert box.deliver("c", message(1), rule("disconnect"))
    assert not box.deliver("c", message(2), rule("disconnect"))
    assert box.pending == 0 and offsets(pipe) == [1]
    assert stats == HubStats()  # the transport counts the disconnect it makes


# policy, the conflation key of each message 1..N, max_pending, what is held (in order),
# then the dropped and conflated counts
HOLD_CASES = [
    ("drop_oldest", [None] * 5, 3, [3, 4, 5], 2, 0),
    ("drop_oldest", [None] * 2, 3, [1, 2], 0, 0),
    ("conflate", ["a", "b", "a", "c", "b"], 10, [3, 4, 5], 0, 2),
    ("conflate", ["a", "b", "c", "d"], 2, [3, 4], 2, 0),
    ("conflate", [None] * 4, 10, [4], 0, 3),  # no key: the channel's latest
    ("conflate", ["a", "a", "b"], 1, [3], 1, 1),
]


@pytest.mark.parametrize(
    ("policy", "keys", "max_pending", "held", "dropped", "conflated"), HOLD_CASES
)
def test_what_is_held_without_room_and_drained_in_order(
    policy: str, keys: list[Any], max_pending: int, held: list[int], dropped: int, conflated: int
) -> None:
    box, pipe, stats = outbox(room=0)
    for offset, key in enumerate(keys, 1):
        assert box.deliver("c", message(offset, key), rule(policy, max_pending))
    assert pipe.sent == [] and box.pending == len(held)
    assert (stats.dropped, stats.conflated) == (dropped, conflated)
    pipe.room = 1
    box.drained()  # room for one: the oldest held goes, the rest wait
    assert offsets(pipe) == held[:1] and box.pending == len(held) - 1
    pipe.room = 100
    box.drained()
    assert offsets(pipe) == held and box.pending == 0
    box.drained()  # nothing held: nothing offered
    assert offsets(pipe) == held


@pytest.mark.parametrize("policy", ["drop_oldest", "conflate"])
def test_a_newer_message_waits_behind_what_is_held(policy: str) -> None:
    box, pipe, _ = outbox(room=0)
    box.deliver("c", message(1, "a"), rule(policy))
    pipe.room = 1  # room came back, but nobody said drained
    assert box.deliver("c", message(2, "b"), rule(policy))
    assert offsets(pipe) == [1] and box.pending == 1  # the held one first, the new one held
    pipe.room = 1
    assert box.deliver("c", message(3, "c"), rule(policy))
    assert offsets(pipe) == [1, 2] and box.pending == 1


def test_a_disconnect_channel_is_not_held_behind_another_channels_backlog() -> None:
    box, pipe, _ = outbox(room=0)
    box.deliver("held", message(1), rule("drop_oldest"))
    assert not box.deliver("strict", message(2), rule("disconnect"))  # no room for either
    pipe.room = 2
    assert box.deliver("strict", message(3), rule("disconnect"))  # the backlog first, then it
    assert offsets(pipe) == [1, 3] and box.pending == 0


def test_forget_lets_go_of_one_channel_only() -> None:
    box, pipe, _ = outbox(room=0)
    for offset, channel in enumerate(["a", "b", "a", "b"], 1):
        box.deliver(channel, message(offset), rule("drop_oldest"))
    box.forget("a")
    pipe.room = 10
    box.drained()
    assert offsets(pipe) == [2, 4]


def test_clear_lets_go_of_everything() -> None:
    box, pipe, _ = outbox(room=0)
    box.deliver("a", message(1), rule("drop_oldest"))
    box.gather("b")
    box.clear()
    assert box.pending == 0 and list(box.gathering) == [] and box.idle
    assert box.gathered("b", 0) == []
    pipe.room = 5
    box.deliver("a", message(2), rule("drop_oldest"))
    assert pipe.sent == []  # nor does it offer to the connection any more (no cycle to it)


@pytest.mark.parametrize("policy", ["disconnect", "drop_oldest", "conflate"])
def test_publications_during_a_subscribe_are_gathered_then_delivered_by_the_policy(
    policy: str,
) -> None:
    box, pipe, stats = outbox(room=1)
    box.gather("c")
    assert list(box.gathering) == ["c"]
    messages = [message(offset, "k") for offset in range(1, 5)]
    for m in messages:
        assert box.deliver("c", m, rule(policy, max_pending=1))  # gathered, whatever the room
    assert box.deliver("other", message(9), rule(policy))  # other channels go on as usual
    assert offsets(pipe) == [9] and box.pending == 0
    after = box.gathered("c", last=2)  # the subscribe reply stood at offset 2
    assert after == messages[2:] and list(box.gathering) == []
    assert box.gathered("c", last=0) == []  # once
    delivered = [box.deliver("c", m, rule(policy, max_pending=1)) for m in after]
    if policy == "disconnect":
        assert delivered == [False, False]
    else:
        assert delivered == [True, True] and box.pending == 1
        assert stats.dropped + stats.conflated == 1
        pipe.room = 5
        box.drained()
        assert offsets(pipe) == [9, 4]


def test_idle_is_nothing_held_and_nothing_gathered() -> None:
    box, pipe, _ = outbox(room=0)
    assert box.idle
    box.deliver("c", message(1), rule("drop_oldest"))
    assert not box.idle
    pipe.room = 1
    box.drained()
    assert box.idle
    box.gather("c")
    assert not box.idle
    box.gathered("c", 0)
    assert box.idle
    box.gather("c")
    box.forget("c")
    assert box.idle


CHANNELS = {"d": "disconnect", "o": "drop_oldest", "k": "conflate"}
NAMES = st.sampled_from(sorted(CHANNELS))
DELIVER = st.tuples(st.just("deliver"), NAMES, st.integers(0, 2))
OPS = st.lists(
    st.one_of(
        DELIVER,
        DELIVER,
        DELIVER,  # mostly publications, so that things are held
        st.tuples(st.just("room"), st.just(""), st.integers(0, 3)),
        st.tuples(st.just("drained"), st.just(""), st.just(0)),
        st.tuples(st.sampled_from(["gather", "gathered"]), NAMES, st.just(0)),
    ),
    max_size=60,
)


@given(OPS, st.integers(1, 4))
def test_any_sequence_of_offers_refusals_drains_and_subscribes(
    ops: list[Any], max_pending: int
) -> None:
    pipe, stats = Pipe(0), HubStats()
    seen = [True]  # what on_idle reported, starting from idle
    box = Outbox(pipe.offer, plain, stats, seen.append)
    rules = {channel: rule(policy, max_pending) for channel, policy in CHANNELS.items()}
    delivered: list[tuple[str, int, int]] = []  # channel, offset, key
    refused = 0

    def deliver(channel: str, m: Outbound) -> None:
        nonlocal refused
        if not box.deliver(channel, m, rules[channel]):
            refused += 1
            assert channel == "d"

    def subscribed(channel: str) -> None:  # what a transport does after its subscribe reply
        for m in box.gathered(channel, 0):
            deliver(channel, m)

    for op, channel, value in ops:
        if op == "deliver":
            offset = len(delivered) + 1
            delivered.append((channel, offset, value))
            deliver(channel, message(offset, value))
        elif op == "room":
            pipe.room += value
        elif op == "drained":
            box.drained()
        elif op == "gather" and channel not in box.gathering:
            box.gather(channel)
        elif op == "gathered":
            subscribed(channel)
        assert box.pending <= max_pending
        assert box.idle == (box.pending == 0 and not box.gathering)
        assert seen[-1] == box.idle  # told of every change (the session's direct writes)
    assert all(a != b for a, b in pairwise(seen))  # and only of changes
    for channel in list(box.gathering):
        subscribed(channel)
    pipe.room = len(delivered)
    box.drained()
    sent = offsets(pipe)
    channel_of = {offset: channel for channel, offset, _ in delivered}
    for channel in CHANNELS:
        in_channel = [offset for offset in sent if channel_of[offset] == channel]
        assert in_channel == sorted(set(in_channel))  # nothing reordered, nothing twice
    if not any(op.startswith("gather") for op, _, _ in ops):
        assert sent == sorted(set(sent))  # across channels too
    assert box.pending == 0 and box.idle
    assert len(sent) + refused + stats.dropped + stats.conflated == len(delivered)
    if stats.dropped == 0:  # all the held ones were kept: each key's latest arrived
        latest = {(c, key): offset for c, offset, key in delivered if c == "k"}
        assert set(latest.values()) <= set(sent)
        assert {offset for c, offset, _ in delivered if c == "o"} <= set(sent)
