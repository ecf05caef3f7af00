"""Delta publications (`delta: fossil`, docs/protocol.md#delta-publications): the Hub's choice
of whole text or shared delta per subscriber, and the pushes on /rt/ws and SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserve import App, ChannelSettings
from rtserve.broker.base import ClientInfo, StreamPosition
from rtserve.broker.memory import MemoryBroker
from rtserve.client import Client, Subscription
from rtserve.client.delta import DeltaText
from rtserve.errors import ConfigError
from rtserve.protocol.fossil import DeltaError, apply_delta, create_delta
from rtserve.realtime.delta import data_text
from rtserve.realtime.hub import Hub, HubStats
from rtserve.realtime.outbound import Outbound
from rtserve.realtime.outbox import Outbox
from rtserve.realtime.protocol import CommandError, ErrorCode, parse_command
from rtserve.realtime.rules import ChannelRule, ChannelRules
from rtserve.testing import serve_app
from tests.channel_peer import Peer, ReplyError
from tests.support.sse import SSE


def state(tick: int, size: int = 100) -> dict[str, Any]:
    """A dashboard state of `size` values of which the first `tick % size` ones changed."""
    return {f"v{i}": {"value": i * 10 + (tick if i < tick % size else 0), "unit": "ms"}
            for i in range(size)}  # fmt: skip


class Recorder:
    """A Hub subscriber keeping the Outbound objects it was handed."""

    def __init__(self, name: str) -> None:
        self.client = ClientInfo(name)
        self.got: list[Outbound] = []

    def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> None:
        self.got.append(message)

    def deliver_event(self, channel: str, message: Outbound) -> None:
        pass

    def end_subscription(self, channel: str, code: int, message: str) -> None:
        pass


def hub_with(**rule: Any) -> Hub:
    rules = ChannelRules()
    rules.add(ChannelRule("dash:*", **rule))
    return Hub(rules, MemoryBroker(), ChannelSettings())


def pushed(message: Outbound) -> dict[str, Any]:
    return json.loads(message.payload)  # type: ignore[no-any-return]


def test_subscribers_in_step_share_one_delta_and_others_get_the_whole_text() -> None:
    async def main() -> None:
        hub = hub_with(delta="fossil", history=10)
        await hub.start()
        a, b, plain = Recorder("a"), Recorder("b"), Recorder("plain")
        result, _ = await hub.subscribe(a, "dash:1", delta="fossil")
        assert result["delta"] == "fossil"
        await hub.subscribe(b, "dash:1", delta="fossil")
        result, _ = await hub.subscribe(plain, "dash:1")
        assert "delta" not in result
        await hub.publish("dash:1", state(1))
        await hub.publish("dash:1", state(2))
        first, second = pushed(a.got[0]), pushed(a.got[1])
        assert first["delta"] is False and json.loads(first["data"]) == state(1)
        assert second["delta"] is True and second["offset"] == 2
        text = apply_delta(first["data"].encode(), second["data"].encode())
        assert json.loads(text) == state(2)
        assert a.got[1] is b.got[1]  # encoded once, the very object shared
        assert [pushed(m)["data"] for m in plain.got] == [state(1), state(2)]
        assert len(second["data"]) * 10 < len(first["data"])

        # Subscribing again (as a recovery does) puts a subscriber out of step: the whole
        # text first, then deltas again.
        hub.unsubscribe(b, "dash:1")
        await hub.subscribe(b, "dash:1", StreamPosition(2, result["epoch"]), delta="fossil")
        await hub.publish("dash:1", state(3))
        await hub.publish("dash:1", state(4))
        assert [pushed(m)["delta"] for m in b.got[2:]] == [False, True]
        assert pushed(a.got[2])["delta"] is True
        assert hub.stats.deltas == 5 and hub.stats.deliveries == 12  # a, b: 2, 1, 2 deltas
        await hub.close()

    asyncio.run(main())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(JSON_VALUES, st.booleans()), min_size=1, max_size=10))
def test_any_stream_decodes_to_what_was_published(steps: list[tuple[Any, bool]]) -> None:
    """Whatever is published, and whenever one subscriber subscribes again, each delta
    subscriber's pushes read in order (as a client does) give back every publication."""

    async def main() -> None:
        hub = hub_with(delta="fossil", history=50)
        await hub.start()
        moving, staying = Recorder("moving"), Recorder("staying")
        await hub.subscribe(moving, "dash:p", delta="fossil")
        await hub.subscribe(staying, "dash:p", delta="fossil")
        for data, again in steps:
            if again:
                hub.unsubscribe(moving, "dash:p")
                await hub.subscribe(moving, "dash:p", delta="fossil")
            await hub.publish("dash:p", data)
        published = [data for data, _ in steps]
        for subscriber in (moving, staying):
            text = DeltaText()
            assert [text.data(pushed(m), 1 << 20) for m in subscriber.got] == published
        assert all(pushed(m)["delta"] is False for m in staying.got[:1])
        await hub.close()

    asyncio.run(main())


def test_a_delta_no_smaller_than_the_data_is_not_sent() -> None:
    async def main() -> None:
        hub = hub_with(delta="fossil")
        await hub.start()
        sub = Recorder("s")
        await hub.subscribe(sub, "dash:x", delta="fossil")
        await hub.publish("dash:x", "a" * 40)
        await hub.publish("dash:x", "b" * 40)  # nothing in common
        assert [pushed(m)["delta"] for m in sub.got] == [False, False]
        assert json.loads(pushed(sub.got[1])["data"]) == "b" * 40
        await hub.close()

    asyncio.run(main())


def test_a_delta_held_back_for_a_slow_subscriber_is_held_whole() -> None:
    """What the outbox holds may be conflated or dropped, so it holds the whole text: the
    deltas sent once it drained follow the last publication it held."""
    sent: list[bytes] = []
    room = [False]

    def offer(data: bytes) -> bool:
        if room[0]:
            sent.append(data)
        return room[0]

    def pushes(offset: int) -> Outbound:
        patch = Outbound(b"delta-%d" % offset, offset, channel="d", epoch="e")
        patch.whole = Outbound(b"whole-%d" % offset, offset, channel="d", epoch="e")
        return patch

    stats = HubStats()
    outbox = Outbox(offer, attrgetter("payload"), stats)
    rule = ChannelRule("d", delta="fossil", slow_consumer="conflate")
    outbox.deliver("d", pushes(1), rule)
    outbox.deliver("d", pushes(2), rule)  # replaces the first (one key per channel)
    room[0] = True
    outbox.drained()
    outbox.deliver("d", pushes(3), rule)
    assert sent == [b"whole-2", b"delta-3"] and stats.conflated == 1


def test_a_channel_without_delta_ignores_the_wish() -> None:
    async def main() -> None:
        hub = hub_with()
        await hub.start()
        sub = Recorder("s")
        result, _ = await hub.subscribe(sub, "dash:1", delta="fossil")
        await hub.publish("dash:1", {"n": 1})
        assert "delta" not in result and pushed(sub.got[0])["data"] == {"n": 1}
        await hub.close()

    asyncio.run(main())


def test_rules_and_commands_check_delta() -> None:
    assert ChannelRule("d", delta="fossil").delta == "fossil"
    with pytest.raises(ValueError, match="must be one of"):
        ChannelRule("d", delta="zstd")
    assert parse_command('{"op":"subscribe","channel":"d","delta":"fossil"}').delta == "fossil"
    with pytest.raises(CommandError) as info:
        parse_command('{"id":3,"op":"subscribe","channel":"d","delta":true}')
    assert info.value.code == ErrorCode.BAD_REQUEST and info.value.id == 3
    command = parse_command(
        '{"op":"connect","subscriptions":[{"channel":"d","delta":"fossil"},{"channel":"e"}]}'
    )
    assert command.subscriptions is not None
    assert [s.delta for s in command.subscriptions] == ["fossil", None]


def test_data_text_is_ascii_json() -> None:
    assert data_text({"name": "Zoë", "n": [1, 2.5]}) == b'{"name":"Zo\\u00eb","n":[1,2.5]}'


# --- over the wire ------------------------------------------------------------------------


def delta_app() -> App:
    app = App()
    app.channel("dash:*", delta="fossil", history=10, slow_consumer="drop_oldest")
    return app


def test_pushes_on_rt_ws_apply_to_the_published_states() -> None:
    async def main() -> None:
        app = delta_app()
        async with serve_app(app) as server:
            url = f"ws://127.0.0.1:{server.port}/rt/ws"
            peer = await Peer.open(url, protocol=2)
            plain = await Peer.open(url, protocol=2)
            result = await peer.call("subscribe", channel="dash:1", delta="fossil")
            assert result["delta"] == "fossil"
            with pytest.raises(ReplyError) as info:
                await peer.call("subscribe", channel="dash:2", delta="brotli")
            assert info.value.code == ErrorCode.BAD_REQUEST
            await plain.call("subscribe", channel="dash:1")
            for tick in range(1, 6):
                await app.publish("dash:1", state(tick))
            text = b""
            kinds = []
            for tick, push in enumerate(await peer.pubs(5), start=1):
                data = push["data"].encode()
                text = apply_delta(text, data) if push["delta"] else data
                kinds.append(push["delta"])
                assert json.loads(text) == state(tick)
            assert kinds == [False, True, True, True, True]
            assert [p["data"] for p in await plain.pubs(5)] == [state(t) for t in range(1, 6)]

            # In connect's subscriptions too, and a recovery starts with the whole text.
            again = await Peer.open(
                url,
                protocol=2,
                subscriptions=[
                    {"channel": "dash:1", "delta": "fossil", "since": {
                        "offset": 3, "epoch": result["epoch"]}},
                ],
            )  # fmt: skip
            recovered = again.info["subscriptions"]["dash:1"]
            assert recovered["recovered"] and recovered["delta"] == "fossil"
            assert [p["data"] for p in recovered["publications"]] == [state(4), state(5)]
            await app.publish("dash:1", state(6))
            await app.publish("dash:1", state(7))
            first, second = await again.pubs(2)
            assert (first["delta"], second["delta"]) == (False, True)
            text = apply_delta(first["data"].encode(), second["data"].encode())
            assert json.loads(text) == state(7)
            for client in (peer, plain, again):
                await client.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_sse_streams_deltas_when_asked() -> None:
    async def main() -> None:
        app = delta_app()
        async with serve_app(app) as server:
            loop = asyncio.get_running_loop()
            port = server.port
            sse = await loop.run_in_executor(None, SSE, port, "channel=dash:s&delta=fossil")
            subscribed = await loop.run_in_executor(None, sse.next, "subscribed")
            assert json.loads(subscribed["data"])["delta"] == "fossil"
            for tick in range(1, 4):
                await app.publish("dash:s", state(tick))
            text = b""
            kinds = []
            for tick in range(1, 4):
                push = json.loads((await loop.run_in_executor(None, sse.next))["data"])
                data = push["data"].encode()
                text = apply_delta(text, data) if push["delta"] else data
                kinds.append(push["delta"])
                assert json.loads(text) == state(tick)
            assert kinds == [False, True, True]
            sse.close()
            for query in ("channel=dash:s&delta=zstd", "channel=dash:s&delta=zstd&probe=1"):
                answer = await loop.run_in_executor(None, SSE, port, query)
                assert answer.response.status == 400
                assert json.loads(answer.response.read())["error"]["code"] == ErrorCode.BAD_REQUEST
                answer.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_bad_delta_in_rtserve_yaml_is_refused_where_it_is_written(tmp_path: Path) -> None:
    from rtserve.config.project import load_project

    (tmp_path / "rtserve.yaml").write_text(
        "channels:\n  rules:\n    - pattern: 'dash:*'\n      delta: fossil\n"
        "    - pattern: 'x:*'\n      delta: gzip\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert "rtserve.yaml:6:14: channels.rules[1].delta: must be one of" in str(caught.value)
    (tmp_path / "rtserve.yaml").write_text(
        "channels:\n  rules:\n    - pattern: 'dash:*'\n      delta: fossil\n"
    )
    config, _ = load_project(tmp_path)
    assert config.channels.rules[0].delta == "fossil"


# --- rtserve.client ---------------------------------------------------------------------------


async def take(sub: Subscription, n: int) -> list[Any]:
    return [(await asyncio.wait_for(anext(sub), 5)).data for _ in range(n)]


def test_the_python_client_applies_deltas_and_recovers_from_a_bad_one() -> None:
    async def main() -> None:
        app = delta_app()
        async with serve_app(app) as server:
            client = Client(f"ws://127.0.0.1:{server.port}/rt/ws")
            await client.connect()
            sub = await client.subscribe("dash:c", delta=True)
            for tick in range(1, 4):
                await app.publish("dash:c", state(tick))
            assert await take(sub, 3) == [state(t) for t in (1, 2, 3)]
            assert sub._text.offset == 3 and sub.delta_errors == 0

            # A text that is not the server's: the next delta fails its checksum; the
            # subscription is made again from offset 3 and offset 4 comes from the history.
            sub._text.text = sub._text.text.replace(b'"ms"', b'"us"', 1)
            await app.publish("dash:c", state(4))
            assert await take(sub, 1) == [state(4)]
            assert sub.delta_errors == 1
            await app.publish("dash:c", state(5))
            assert await take(sub, 1) == [state(5)]

            # A delta that does not follow the offset held: made again too.
            await app.publish("dash:c", state(6))
            assert await take(sub, 1) == [state(6)]
            sub._text.offset = 2
            await app.publish("dash:c", state(7))
            await app.publish("dash:c", state(8))
            assert await take(sub, 2) == [state(7), state(8)]
            assert sub.delta_errors == 2
            await client.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_client_reads_the_text_and_refuses_what_is_not_a_delta() -> None:
    text = DeltaText()
    assert text.data({"offset": 5, "data": '{"a":1}', "delta": False}, 1000) == {"a": 1}
    delta = create_delta(b'{"a":1}', b'{"a":2}').decode()
    with pytest.raises(DeltaError, match="does not follow offset 5"):
        text.data({"offset": 7, "data": delta, "delta": True}, 1000)
    assert text.offset is None  # nothing held after a failure: the next delta fails too
    text.data({"offset": 5, "data": '{"a":1}', "delta": False}, 1000)
    assert text.data({"offset": 6, "data": delta, "delta": True}, 1000) == {"a": 2}
    with pytest.raises(DeltaError, match="is a string"):
        text.data({"offset": 7, "data": {"a": 3}, "delta": False}, 1000)


def test_deltas_on_every_broker_across_two_nodes(
    app_broker: Any, request: pytest.FixtureRequest
) -> None:
    """Each node computes its deltas from the publications its broker delivers: a subscriber
    of node B gets deltas of what node A published (one node on the memory broker)."""
    one_node = request.node.callspec.params["app_broker"] == "memory"

    async def main() -> None:
        node_a = delta_app()
        node_b = node_a if one_node else delta_app()
        async with contextlib.AsyncExitStack() as stack:
            server_b = await stack.enter_async_context(serve_app(node_b))
            if not one_node:
                await stack.enter_async_context(serve_app(node_a))
            url = f"ws://127.0.0.1:{server_b.port}/rt/ws"
            peer = await Peer.open(url, protocol=2)
            await peer.call("subscribe", channel="dash:n", delta="fossil")
            for tick in range(1, 5):
                await node_a.publish("dash:n", state(tick))
            text = b""
            for tick, push in enumerate(await peer.pubs(4), start=1):
                data = push["data"].encode()
                text = apply_delta(text, data) if push["delta"] else data
                assert json.loads(text) == state(tick)
                assert push["delta"] is (tick > 1)
            await peer.close()

    asyncio.run(asyncio.wait_for(main(), 30))
