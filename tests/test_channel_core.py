"""The channel layer without sockets: rules, the wire protocol parser, the Hub on a MemoryBroker."""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtserve.broker.base import ClientInfo, StreamPosition
from rtserve.broker.memory import MemoryBroker
from rtserve.realtime.context import ChannelContext
from rtserve.realtime.hub import Hub
from rtserve.realtime.outbound import Outbound
from rtserve.realtime.protocol import (
    ChannelError,
    CommandError,
    ErrorCode,
    encode_publication,
    parse_command,
)
from rtserve.realtime.rules import ChannelRule, ChannelRules
from rtserve.realtime.settings import ChannelSettings

# --- rules -------------------------------------------------------------------------------------


def test_rules_match_literals_then_patterns_in_order() -> None:
    rules = ChannelRules()
    star = rules.add(ChannelRule("chat:*"))
    user = rules.add(ChannelRule("user:{id}"))
    lobby = rules.add(ChannelRule("chat:lobby"))
    deep = rules.add(ChannelRule("org:{org}:team:{team}"))
    assert rules.match("chat:lobby") == (lobby, {})
    assert rules.match("chat:a:b") == (star, {})
    assert rules.match("user:42") == (user, {"id": "42"})
    assert rules.match("user:42:x") is None  # {id} stops at ':'
    assert rules.match("org:acme:team:red") == (deep, {"org": "acme", "team": "red"})
    assert rules.match("chat:") is None  # '*' needs at least one character
    assert rules.match("other") is None
    with pytest.raises(ValueError, match="twice"):
        rules.add(ChannelRule("chat:*"))


def test_rule_options_are_checked() -> None:
    with pytest.raises(ValueError, match="publish"):
        ChannelRule("x", publish="everyone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slow_consumer"):
        ChannelRule("x", slow_consumer="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history"):
        ChannelRule("x", history=-1)
    with pytest.raises(ValueError, match="parameter"):
        ChannelRules().add(ChannelRule("x:{bad-name}"))


# --- wire protocol ------------------------------------------------------------------------------


def test_parse_command_fields() -> None:
    command = parse_command(
        '{"id": 3, "op": "subscribe", "channel": "chat:a", "since": {"offset": 4, "epoch": "e"}}'
    )
    assert command.id == 3 and command.op == "subscribe" and command.channel == "chat:a"
    assert command.since == StreamPosition(4, "e")
    publish = parse_command(b'{"id": 1, "op": "publish", "channel": "c", "data": {"a": "\\u00e9"}}')
    assert publish.data == {"a": "é"} and publish.size == len('{"a":"é"}'.encode())


@pytest.mark.parametrize(
    ("text", "code", "id_"),
    [
        ("nope", ErrorCode.BAD_REQUEST, None),
        ("[1]", ErrorCode.BAD_REQUEST, None),
        ('{"id": -1, "op": "ping"}', ErrorCode.BAD_REQUEST, None),
        ('{"id": 1.5, "op": "ping"}', ErrorCode.BAD_REQUEST, None),
        ('{"id": 2}', ErrorCode.BAD_REQUEST, 2),
        ('{"id": 2, "op": "fly"}', ErrorCode.UNKNOWN_OP, 2),
        ('{"id": 2, "op": "subscribe"}', ErrorCode.BAD_REQUEST, 2),
        ('{"id": 2, "op": "subscribe", "channel": "a b"}', ErrorCode.BAD_REQUEST, 2),
        ('{"id": 2, "op": "subscribe", "channel": "' + "x" * 256 + '"}', ErrorCode.BAD_REQUEST, 2),
        ('{"id": 2, "op": "publish", "channel": "c"}', ErrorCode.BAD_REQUEST, 2),
        ('{"id": 2, "op": "history", "channel": "c", "limit": -3}', ErrorCode.BAD_REQUEST, 2),
        ('{"id": 2, "op": "history", "channel": "c", "since": {"offset": 1}}', 107, 2),
        ('{"id": 2, "op": "refresh"}', ErrorCode.BAD_REQUEST, 2),
        ('{"id": 2, "op": "connect", "token": 5}', ErrorCode.BAD_REQUEST, 2),
    ],
)
def test_parse_command_refusals(text: str, code: int, id_: int | None) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(text)
    assert info.value.code == code and info.value.id == id_


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parse_command_never_crashes_on_text(text: str | bytes) -> None:
    try:
        parse_command(text)
    except CommandError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_OP)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["id", "op", "channel", "data", "since", "limit", "token"]), json_values
    )
)
def test_parse_command_never_crashes_on_objects(raw: dict[str, Any]) -> None:
    try:
        command = parse_command(json.dumps(raw))
    except CommandError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_OP)
    else:
        assert command.op == raw["op"]


def test_publication_push_is_plain_json() -> None:
    from rtserve.broker.base import Publication

    push = json.loads(encode_publication("c", Publication(3, {"x": 1}, ClientInfo("id", "u"))))
    assert push == {
        "push": "pub",
        "channel": "c",
        "offset": 3,
        "data": {"x": 1},
        "info": {"client": "id", "user": "u"},
    }


# --- the Hub over the memory broker ------------------------------------------------------------


class FakeSubscriber:
    def __init__(self, name: str) -> None:
        self.client = ClientInfo(name)
        self.got: list[tuple[str, int, bytes]] = []
        self.events: list[bytes] = []
        self.ended: list[tuple[str, int]] = []

    def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> None:
        self.got.append((channel, message.offset, message.payload))

    def deliver_event(self, channel: str, message: Outbound) -> None:
        self.events.append(message.payload)

    def end_subscription(self, channel: str, code: int, message: str) -> None:
        self.ended.append((channel, code))


def make_hub(**rule: Any) -> Hub:
    rules = ChannelRules()
    rules.add(ChannelRule("c:*", **rule))
    return Hub(rules, MemoryBroker(), ChannelSettings())


def test_hub_fans_out_one_encoding_to_local_subscribers() -> None:
    async def main() -> None:
        hub = make_hub(history=10)
        await hub.start()
        a, b = FakeSubscriber("a"), FakeSubscriber("b")
        await hub.subscribe(a, "c:1")
        await hub.subscribe(b, "c:1")
        position = await hub.publish("c:1", {"n": 1})
        assert position.offset == 1
        assert a.got == b.got and a.got[0][1] == 1
        assert a.got[0][2] is b.got[0][2]  # one encoding for both
        assert hub.stats.deliveries == 2 and hub.channels() == {"c:1": 2}
        assert hub.unsubscribe(a, "c:1") and not hub.unsubscribe(a, "c:1")
        await hub.publish("c:1", {"n": 2})
        assert len(a.got) == 1 and len(b.got) == 2
        hub.unsubscribe(b, "c:1")
        await asyncio.sleep(0)  # the broker unsubscription runs in the background
        await asyncio.sleep(0)
        assert hub.channels() == {} and "c:1" not in hub._node
        await hub.close()

    asyncio.run(main())


def test_work_after_a_delivery_runs_once_every_subscriber_has_the_publication() -> None:
    async def main() -> None:
        hub = make_hub(history=10)
        await hub.start()
        a, b = FakeSubscriber("a"), FakeSubscriber("b")
        seen: list[int] = []

        def broken() -> None:
            raise RuntimeError("a failing callback")

        def deliver(channel: str, message: Outbound, rule: ChannelRule) -> None:
            FakeSubscriber.deliver(a, channel, message, rule)
            hub.after_delivery(broken)  # logged; the next one runs all the same
            hub.after_delivery(lambda: seen.append(len(b.got)))

        a.deliver = deliver  # type: ignore[method-assign]
        await hub.subscribe(a, "c:1")
        await hub.subscribe(b, "c:1")
        await hub.publish("c:1", {"n": 1})
        assert seen == [1]  # after b had it too, and once
        await hub.publish("c:1", {"n": 2})
        assert seen == [1, 2]
        await hub.close()

    asyncio.run(main())


def test_work_after_a_delivery_runs_on_the_shared_frame_path_too() -> None:
    # A channel with a WebSocket subscriber (a `wire`) fans out on the shared-frame path once
    # no new subscriber's floor is in the way: its deliveries' after-work must run as well.
    async def main() -> None:
        hub = make_hub(history=10)
        await hub.start()
        a, b = FakeSubscriber("a"), FakeSubscriber("b")
        # A wire that never takes a shared frame (as if it had one this turn): `deliver` each.
        a.wire = SimpleNamespace(  # type: ignore[attr-defined]
            direct_after=math.inf,
            state=SimpleNamespace(stats=None),
            join_set=lambda wires, key: None,
            part_set=lambda wires: None,
        )
        seen: list[int] = []

        def deliver(channel: str, message: Outbound, rule: ChannelRule) -> None:
            FakeSubscriber.deliver(b, channel, message, rule)
            hub.after_delivery(lambda: seen.append(message.offset))

        b.deliver = deliver  # type: ignore[method-assign]
        await hub.subscribe(a, "c:1")
        await hub.subscribe(b, "c:1")
        for n in range(1, 4):  # the first passes the floors; the others take the fast path
            await hub.publish("c:1", {"n": n})
        assert seen == [1, 2, 3]
        assert [offset for _, offset, _ in a.got] == [1, 2, 3]
        await hub.close()

    asyncio.run(main())


def test_hub_recovery_decisions() -> None:
    async def main() -> None:
        hub = make_hub(history=3)
        await hub.start()
        sub = FakeSubscriber("s")
        first, _ = await hub.subscribe(sub, "c:r")
        epoch = first["epoch"]
        hub.unsubscribe(sub, "c:r")
        for i in range(5):
            await hub.publish("c:r", i)
        ok, last = await hub.subscribe(sub, "c:r", StreamPosition(3, epoch))
        assert ok["recovered"] and [p["offset"] for p in ok["publications"]] == [4, 5] and last == 5
        hub.unsubscribe(sub, "c:r")
        gone, _ = await hub.subscribe(sub, "c:r", StreamPosition(1, epoch))
        assert gone["recovered"] is False and "publications" not in gone
        hub.unsubscribe(sub, "c:r")
        ahead, _ = await hub.subscribe(sub, "c:r", StreamPosition(9, epoch))
        assert ahead["recovered"] is False
        hub.unsubscribe(sub, "c:r")
        other, _ = await hub.subscribe(sub, "c:r", StreamPosition(5, "other-epoch"))
        assert other["recovered"] is False
        await hub.close()

    asyncio.run(main())


def test_hub_refuses_unknown_channels_and_full_ones() -> None:
    async def main() -> None:
        hub = make_hub(max_subscribers=1)
        await hub.start()
        with pytest.raises(ChannelError) as info:
            await hub.publish("nope", 1)
        assert info.value.code == ErrorCode.UNKNOWN_CHANNEL
        await hub.subscribe(FakeSubscriber("a"), "c:x")
        with pytest.raises(ChannelError) as info:
            await hub.subscribe(FakeSubscriber("b"), "c:x")
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
        assert hub.subscriber_count("c:x") == 1
        await hub.close()
        with pytest.raises(ChannelError):
            await hub.publish("c:x", 1)

    asyncio.run(main())


def test_hub_join_and_leave_reach_others_only() -> None:
    async def main() -> None:
        hub = make_hub(presence=True, join_leave=True)
        await hub.start()
        a, b = FakeSubscriber("a"), FakeSubscriber("b")
        rule, _ = hub.rule("c:p")
        for sub in (a, b):
            await hub.subscribe(sub, "c:p")
            await hub.join(rule, ChannelContext("c:p", {}, sub.client))
        assert [json.loads(e)["push"] for e in a.events] == ["join"]
        assert b.events == []
        assert set(await hub.broker.presence("c:p")) == {"a", "b"}
        hub.unsubscribe(b, "c:p")
        await hub.leave(rule, ChannelContext("c:p", {}, b.client))
        assert json.loads(a.events[-1]) == {
            "push": "leave",
            "channel": "c:p",
            "info": {"client": "b", "user": None},
        }
        assert set(await hub.broker.presence("c:p")) == {"a"}
        await hub.close()

    asyncio.run(main())


def test_a_new_epoch_ends_subscriptions_with_112() -> None:
    now = [0.0]

    async def main() -> None:
        rules = ChannelRules()
        rules.add(ChannelRule("c:*", history=10, history_ttl=60))
        hub = Hub(rules, MemoryBroker(meta_ttl=60, clock=lambda: now[0]), ChannelSettings())
        await hub.start()
        sub = FakeSubscriber("s")
        await hub.publish("c:e", 1)
        await hub.subscribe(sub, "c:e")
        now[0] += 120  # the broker forgets the channel's stream
        position = await hub.publish("c:e", 2)
        assert position.offset == 1  # a new epoch
        assert sub.ended == [("c:e", ErrorCode.UNRECOVERABLE)] and sub.got == []
        # the same when a new subscriber is the first to see the new stream
        old, new = FakeSubscriber("old"), FakeSubscriber("new")
        await hub.subscribe(old, "c:f")
        now[0] += 120
        await hub.subscribe(new, "c:f")
        assert old.ended == [("c:f", ErrorCode.UNRECOVERABLE)] and new.ended == []
        await hub.close()

    asyncio.run(main())


def test_a_rules_history_outlives_a_shorter_broker_meta_ttl() -> None:
    """A week of history on a broker that forgets idle streams after a day: the stream (its
    epoch and offsets) is kept as long as the history, so a client back after two days
    recovers instead of meeting a new epoch."""
    now = [0.0]

    async def main() -> None:
        rules = ChannelRules()
        rules.add(ChannelRule("inbox:*", history=10, history_ttl=600))
        hub = Hub(rules, MemoryBroker(meta_ttl=60, clock=lambda: now[0]), ChannelSettings())
        await hub.start()
        first = await hub.publish("inbox:a", "kept")
        now[0] += 300  # past the broker's meta_ttl, within the rule's history_ttl
        position = await hub.publish("inbox:a", "later")
        assert position == StreamPosition(2, first.epoch)
        now[0] += 601  # past both: a new stream
        assert (await hub.publish("inbox:a", "new")).offset == 1
        await hub.close()

    asyncio.run(main())


def test_short_token_secret_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        ChannelSettings(token_secret="short")
    with pytest.raises(ValueError, match="prefix"):
        ChannelSettings(prefix="rt")
