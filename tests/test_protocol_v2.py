"""Protocol version 2 over /rt/ws (docs/protocol.md): what a `connect` with `protocol: 2`
changes, the ops added with it, and that a client sending no `protocol` sees version 1."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rtserve import App, ChannelContext, ChannelError, ChannelSettings, ConnectResult, RpcContext
from rtserve.broker.base import StreamPosition
from rtserve.client import Client, ClientError, PresenceDiff
from rtserve.realtime.protocol import (
    ERRORS,
    MAX_BATCH,
    Command,
    CommandError,
    ErrorCode,
    SubscribeRequest,
    is_temporary,
    parse_command,
    parse_frame,
)
from rtserve.testing import serve_app
from rtserve.tokens import mint
from tests.channel_peer import Peer

SECRET = "a-test-secret-of-32-characters!!"
Scenario = Callable[[Any, str], Awaitable[None]]


def run(app: App, scenario: Scenario) -> None:
    async def main() -> None:
        async with serve_app(app) as server:
            await asyncio.wait_for(scenario(server, f"ws://127.0.0.1:{server.port}/rt/ws"), 30)

    asyncio.run(main())


def v2_app(**settings: Any) -> App:
    app = App(channels=ChannelSettings(token_secret=SECRET, **settings))
    app.channel("chat:*", history=100, presence=True, join_leave=True, publish="clients")
    app.channel("slow", publish="clients", publish_rate=0.001, publish_burst=1)
    app.channel("user:{id}", token=True, publish="clients")

    def on_subscribe(context: ChannelContext) -> None:
        if context.channel == "busy":
            raise ChannelError(1001, "come back later", temporary=True)
        raise ChannelError(1002, "never")

    app.channel("busy", on_subscribe=on_subscribe)
    app.channel("closed", on_subscribe=on_subscribe)
    return app


async def raw_call(peer: Peer, op: str, **fields: Any) -> dict[str, Any]:
    """The whole reply (result or error) to one command."""
    return await peer.reply(await peer.send(op, **fields))


# --- version and connect result -------------------------------------------------------------


def test_protocol_field_is_checked_on_connect() -> None:
    assert parse_command('{"op": "connect", "protocol": 2}').protocol == 2
    assert parse_command('{"op": "connect"}').protocol is None
    for bad in ("3", "0", "1.5", '"2"', "true"):
        with pytest.raises(CommandError) as info:
            parse_command('{"id": 4, "op": "connect", "protocol": ' + bad + "}")
        assert info.value.code == ErrorCode.BAD_REQUEST and info.value.id == 4


def test_temporary_comes_from_one_table() -> None:
    assert {code for code, (_, temporary) in ERRORS.items() if temporary} == {
        ErrorCode.INTERNAL,
        ErrorCode.LIMIT_EXCEEDED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.BROKER_UNAVAILABLE,
    }
    assert set(ERRORS) == set(ErrorCode)
    assert ChannelError(ErrorCode.BROKER_UNAVAILABLE).temporary
    assert not ChannelError(ErrorCode.UNKNOWN_CHANNEL).temporary
    assert not ChannelError(4321, "app's own").temporary and not is_temporary(4321)
    assert ChannelError(4321, "app's own", temporary=True).temporary


def test_the_error_table_of_the_docs_says_what_the_server_sends() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| (\d{3}) \| (\w+) \| .*? \| (true|false) \| ", doc, re.M)
    assert {int(code): (name, flag == "true") for code, name, flag in rows} == {
        code: (ErrorCode(code).name, temporary) for code, (_, temporary) in ERRORS.items()
    }


def test_a_connect_without_protocol_is_answered_as_version_1() -> None:
    app = v2_app()

    @app.on_connect
    def on_connect(context: Any) -> ConnectResult:
        return ConnectResult(data={"motd": "hello"})

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        assert set(peer.info) == {"client", "user", "expires", "version"}
        assert peer.info["version"] == 1
        reply = await raw_call(peer, "subscribe", channel="nope")
        assert reply["error"] == {"code": 102, "message": "no channel rule matches 'nope'"}

    run(app, scenario)


def test_a_protocol_2_connect_result_has_the_apps_data_and_the_limits() -> None:
    app = v2_app(max_subscriptions=7)

    @app.on_connect
    def on_connect(context: Any) -> ConnectResult:
        return ConnectResult(user="ann", data={"motd": "hello", "asked": context.data})

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2, data=5)
        info = peer.info
        assert info["version"] == 2 and info["user"] == "ann"
        assert info["data"] == {"motd": "hello", "asked": 5}
        assert info["limits"]["max_subscriptions"] == 7
        assert info["limits"]["max_message_size"] == 1024 * 1024
        # a version the server does not speak is a bad request, and the connection stays
        other = await Peer.open(url, connect_cmd=False)
        reply = await raw_call(other, "connect", protocol=3)
        assert reply["error"]["code"] == 107 and "protocol" in reply["error"]["message"]
        assert (await other.call("connect"))["version"] == 1

    run(app, scenario)


def test_connect_data_that_is_not_json_is_an_internal_error() -> None:
    app = v2_app()

    @app.on_connect
    def on_connect(context: Any) -> ConnectResult:
        return ConnectResult(data={"when": object()})

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, connect_cmd=False)
        reply = await raw_call(peer, "connect", protocol=2)
        assert reply["error"] == {"code": 100, "message": "internal error", "temporary": True}

    run(app, scenario)


def test_every_error_of_protocol_2_says_whether_it_is_temporary() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2)

        async def error(op: str, **fields: Any) -> tuple[int, bool]:
            reply = await raw_call(peer, op, **fields)
            return reply["error"]["code"], reply["error"]["temporary"]

        assert await error("subscribe", channel="nope") == (102, False)
        assert await error("fly") == (104, False)
        assert await error("history", channel="chat:a", limit=-1) == (107, False)
        assert await error("subscribe", channel="user:2") == (103, False)
        await peer.call("publish", channel="slow", data=1)  # the burst of one
        assert await error("publish", channel="slow", data=2) == (111, True)
        assert await error("subscribe", channel="busy") == (1001, True)
        assert await error("subscribe", channel="closed") == (1002, False)
        assert await error("connect", protocol=2) == (116, False)

    run(v2_app(), scenario)


# --- rtserve.client on protocol 2 ------------------------------------------------------------


def test_rtserve_client_speaks_protocol_2() -> None:
    app = v2_app(max_subscriptions=9)

    @app.on_connect
    def on_connect(context: Any) -> ConnectResult:
        return ConnectResult(data={"motd": "hello"})

    async def scenario(server: Any, url: str) -> None:
        async with Client(url) as client:
            assert client.version == 2 and client.connect_data == {"motd": "hello"}
            assert client.limits["max_subscriptions"] == 9
            with pytest.raises(ClientError) as info:
                await client.subscribe("busy")
            assert (info.value.code, info.value.temporary) == (1001, True)
            with pytest.raises(ClientError) as info:
                await client.subscribe("nope")
            assert (info.value.code, info.value.temporary) == (102, False)

    run(app, scenario)


# --- sub_refresh ------------------------------------------------------------------------------


def test_sub_refresh_is_parsed_with_its_channel_and_token() -> None:
    command = parse_command('{"id": 1, "op": "sub_refresh", "channel": "user:2", "token": "t"}')
    assert (command.op, command.channel, command.token) == ("sub_refresh", "user:2", "t")
    for text in (
        '{"id": 1, "op": "sub_refresh", "channel": "user:2"}',
        '{"id": 1, "op": "sub_refresh", "token": "t"}',
        '{"id": 1, "op": "sub_refresh", "channel": "user:2", "token": 5}',
    ):
        with pytest.raises(CommandError) as info:
            parse_command(text)
        assert info.value.code == ErrorCode.BAD_REQUEST and info.value.id == 1


def test_sub_refresh_extends_a_subscription_token_without_resubscribing() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2, token=mint(SECRET, "1", channels=["user:1"]))
        short = mint(SECRET, "1", channels=["user:2"], ttl=1)
        subscribed = await peer.call("subscribe", channel="user:2", token=short)
        old_expiry = subscribed["expires"]
        assert isinstance(old_expiry, int) and old_expiry <= time.time() + 1
        fresh = mint(SECRET, "1", channels=["user:2"], ttl=60)
        refreshed = await peer.call("sub_refresh", channel="user:2", token=fresh)
        assert refreshed["expires"] >= time.time() + 59
        # past the first token's expiry (no event tells that nothing happened: wait it out)
        await asyncio.sleep(max(0.0, old_expiry - time.time()) + 0.3)
        await peer.call("publish", channel="user:2", data="still subscribed")
        pub = await peer.next_push()  # an `unsubscribe` push would come first
        assert (pub["push"], pub["data"]) == ("pub", "still subscribed")
        # the publish right of the subscription token goes on too
        assert (await peer.call("publish", channel="user:2", data=2))["offset"] == 2

    run(v2_app(), scenario)


def test_sub_refresh_refusals() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2, token=mint(SECRET, "1", channels=["user:1"]))
        await peer.call("subscribe", channel="user:2", token=mint(SECRET, "1", channels=["user:2"]))
        await peer.call("subscribe", channel="chat:a")

        async def error(channel: str, token: str) -> tuple[int, str]:
            reply = await raw_call(peer, "sub_refresh", channel=channel, token=token)
            return reply["error"]["code"], reply["error"]["message"]

        good = mint(SECRET, "1", channels=["user:2"])
        assert (await error("user:3", good))[0] == 114
        assert (await error("chat:a", good))[0] == 107  # subscribed without a token
        assert await error("user:2", mint(SECRET, "9", channels=["user:2"])) == (
            103,
            "token of another user",
        )
        assert await error("user:2", mint(SECRET, "1", channels=["user:3"])) == (
            103,
            "token does not allow channel",
        )
        expired = mint(SECRET, "1", channels=["user:2"], ttl=10, now=time.time() - 60)
        assert (await error("user:2", expired))[0] == 109
        assert (await error("user:2", "x.y.z"))[0] == 101
        # the subscription survived every refusal
        assert (await peer.call("publish", channel="user:2", data=1))["offset"] == 1

    run(v2_app(), scenario)


def test_rtserve_client_sub_refresh() -> None:
    async def scenario(server: Any, url: str) -> None:
        async with Client(url, token=mint(SECRET, "1", channels=["user:1"])) as client:
            short = mint(SECRET, "1", channels=["user:2"], ttl=1)
            sub = await client.subscribe("user:2", token=short)
            assert sub.expires is not None and sub.expires <= time.time() + 1
            fresh = mint(SECRET, "1", channels=["user:2"], ttl=60)
            assert (await sub.refresh(fresh) or 0) >= time.time() + 59
            assert sub.token == fresh and sub.expires is not None
            await asyncio.sleep(max(0.0, short_expiry(short) - time.time()) + 0.3)
            await client.publish("user:2", "after")
            async with asyncio.timeout(5):
                pub = await anext(aiter(sub))
            assert pub.data == "after"

    run(v2_app(), scenario)


def short_expiry(token: str) -> float:
    from rtserve.tokens import verify

    expires = verify([SECRET], token).expires
    assert expires is not None
    return expires


# --- several commands in one message; subscriptions in connect ---------------------------------


def test_parse_frame_reads_a_batch_item_by_item() -> None:
    batch = parse_frame('[{"id": 1, "op": "ping"}, {"id": 2, "op": "fly"}, 5, {"op": "ping"}]')
    assert isinstance(batch, list) and len(batch) == 4
    first, second, third, fourth = batch
    assert isinstance(first, Command) and first.id == 1
    assert isinstance(second, CommandError) and (second.code, second.id) == (104, 2)
    assert isinstance(third, CommandError) and (third.code, third.id) == (107, None)
    assert isinstance(fourth, Command) and fourth.id is None
    single = parse_frame('{"id": 3, "op": "ping"}')
    assert isinstance(single, Command) and single.id == 3
    for text in ("[]", "[" + ",".join(['{"op": "ping"}'] * (MAX_BATCH + 1)) + "]"):
        with pytest.raises(CommandError) as info:
            parse_frame(text)
        assert (info.value.code, info.value.id) == (107, None)


def test_connect_subscriptions_are_parsed_and_checked() -> None:
    command = parse_command(
        '{"id": 1, "op": "connect", "subscriptions": [{"channel": "a"},'
        ' {"channel": "b", "since": {"offset": 3, "epoch": "e"}, "token": "t"}]}'
    )
    assert command.subscriptions == [
        SubscribeRequest("a"),
        SubscribeRequest("b", StreamPosition(3, "e"), "t"),
    ]
    for bad in (
        '{"channel": "a"}',
        '[{"channel": "a b"}]',
        '[{"channel": "a"}, {"channel": "a"}]',
        '[{"channel": "a", "token": 5}]',
        '[{"channel": "a", "since": {"offset": -1, "epoch": "e"}}]',
        "[" + ",".join(f'{{"channel": "c{n}"}}' for n in range(MAX_BATCH + 1)) + "]",
    ):
        with pytest.raises(CommandError) as info:
            parse_command('{"id": 1, "op": "connect", "subscriptions": ' + bad + "}")
        assert (info.value.code, info.value.id) == (107, 1)


async def frames(peer: Peer, ids: set[int]) -> list[Any]:
    """Messages received until every id in `ids` is answered (arrays are batched replies)."""
    out: list[Any] = []
    while ids:
        message = json.loads(await asyncio.wait_for(peer.ws.recv(), 5))
        out.append(message)
        for reply in message if isinstance(message, list) else [message]:
            ids.discard(reply.get("id"))
    return out


def test_a_batch_is_answered_in_one_message_in_order() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2)
        assert peer.info["limits"]["max_batch"] == MAX_BATCH
        batch = [
            {"id": 1, "op": "subscribe", "channel": "chat:a"},
            {"id": 2, "op": "subscribe", "channel": "chat:b"},
            {"id": 3, "op": "presence_stats", "channel": "chat:a"},
            {"id": 4, "op": "fly"},
            {"id": 5, "op": "ping"},
        ]
        await peer.ws.send(json.dumps(batch))
        (answer,) = await frames(peer, {1, 2, 3, 4, 5})
        assert [reply["id"] for reply in answer] == [1, 2, 3, 4, 5]
        assert answer[0]["result"]["channel"] == "chat:a"
        assert answer[2]["result"] == {"clients": 1, "users": 0}
        assert answer[3]["error"] == {
            "code": 104,
            "message": "unknown op 'fly'",
            "temporary": False,
        }
        assert answer[4]["result"] == {}

    run(v2_app(), scenario)


def test_a_push_in_a_batch_comes_after_the_replies_before_it() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2)
        batch = [
            {"id": 1, "op": "subscribe", "channel": "chat:a"},
            {"id": 2, "op": "publish", "channel": "chat:a", "data": "x"},
            {"id": 3, "op": "ping"},
        ]
        await peer.ws.send(json.dumps(batch))
        received = await frames(peer, {1, 2, 3})
        order = [
            f"reply {m['id']}" if "id" in m else f"push {m['push']}"
            for message in received
            for m in (message if isinstance(message, list) else [message])
        ]
        assert order.index("reply 1") < order.index("push pub")
        assert [o for o in order if o.startswith("reply")] == ["reply 1", "reply 2", "reply 3"]

    run(v2_app(), scenario)


def test_a_batch_may_open_with_a_protocol_2_connect_and_only_then() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, connect_cmd=False)
        batch = [
            {"id": 1, "op": "connect", "protocol": 2},
            {"id": 2, "op": "subscribe", "channel": "chat:a"},
        ]
        await peer.ws.send(json.dumps(batch))
        (answer,) = await frames(peer, {1, 2})
        assert answer[0]["result"]["version"] == 2 and answer[1]["result"]["offset"] == 0
        # a version 1 session (or a batch before a protocol 2 connect) is as before: 4000
        for opening in ({"id": 1, "op": "connect"}, {"id": 1, "op": "ping"}):
            old = await Peer.open(url, connect_cmd=False)
            await old.ws.send(json.dumps([opening, {"id": 2, "op": "ping"}]))
            reply = json.loads(await asyncio.wait_for(old.ws.recv(), 5))
            assert reply == {
                "id": None,
                "error": {"code": 107, "message": "a command is a JSON object"},
            }
            assert await old.closed_with() == (4000, "a command is a JSON object")

    run(v2_app(), scenario)


def test_a_malformed_command_without_id_in_a_batch_closes_after_the_replies_before_it() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2)
        batch = [{"id": 1, "op": "ping"}, {"op": "subscribe"}, {"id": 3, "op": "ping"}]
        await peer.ws.send(json.dumps(batch))
        answer = json.loads(await asyncio.wait_for(peer.ws.recv(), 5))
        assert [reply["id"] for reply in answer] == [1, None]
        assert answer[1]["error"]["code"] == 107
        assert (await peer.closed_with())[0] == 4000

    run(v2_app(), scenario)


def test_connect_makes_the_subscriptions_it_asks_for_in_one_round_trip() -> None:
    app = v2_app()

    async def scenario(server: Any, url: str) -> None:
        first = await Peer.open(url, protocol=2)
        await first.call("subscribe", channel="chat:a")
        for n in range(3):
            await first.call("publish", channel="chat:a", data=n)
        epoch = (await first.call("history", channel="chat:a", limit=0))["epoch"]
        await first.close()
        peer = await Peer.open(url, connect_cmd=False)
        requests = [
            {"channel": "chat:a", "since": {"offset": 1, "epoch": epoch}},
            {"channel": "nope"},
            {"channel": "busy"},
        ] + [{"channel": f"chat:{n}"} for n in range(20)]
        await peer.ws.send(
            json.dumps({"id": 1, "op": "connect", "protocol": 2, "subscriptions": requests})
        )
        reply = json.loads(await asyncio.wait_for(peer.ws.recv(), 5))  # the first message
        subscriptions = reply["result"]["subscriptions"]
        assert len(subscriptions) == 23
        recovered = subscriptions["chat:a"]
        assert recovered["recovered"] is True
        assert [p["data"] for p in recovered["publications"]] == [1, 2]
        assert subscriptions["nope"]["error"]["code"] == 102
        assert subscriptions["busy"]["error"] == {
            "code": 1001,
            "message": "come back later",
            "temporary": True,
        }
        assert subscriptions["chat:7"]["offset"] == 0
        await app.publish("chat:7", "live")
        push = await peer.next_push("pub")
        assert (push["channel"], push["data"]) == ("chat:7", "live")
        stats = await peer.call("presence_stats", channel="chat:19")
        assert stats["clients"] == 1
        # the refused ones were not subscribed; the limit counts the others
        assert (await raw_call(peer, "unsubscribe", channel="busy"))["error"]["code"] == 114

    run(app, scenario)


def test_connect_subscriptions_count_against_max_subscriptions() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, connect_cmd=False)
        requests = [{"channel": f"chat:{n}"} for n in range(4)]
        info = await raw_call(peer, "connect", protocol=2, subscriptions=requests)
        answers = info["result"]["subscriptions"]
        assert [answers[f"chat:{n}"].get("error", {}).get("code") for n in range(4)] == [
            None,
            None,
            106,
            106,
        ]

    run(v2_app(max_subscriptions=2), scenario)


def test_rtserve_client_makes_its_subscriptions_again_in_the_reconnects_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rtserve.realtime.ws_session import ChannelSocket

    subscribes: list[str] = []  # subscribe commands the server handled
    plain = ChannelSocket._subscribe

    async def counted(self: ChannelSocket, command: Any) -> None:
        subscribes.append(command.channel)
        await plain(self, command)

    monkeypatch.setattr(ChannelSocket, "_subscribe", counted)
    app = v2_app()

    async def scenario(server: Any, url: str) -> None:
        async with Client(url, backoff_min=0.01, backoff_max=0.05) as client:
            subs = [await client.subscribe(f"chat:{n}") for n in range(3)]
            await client.publish("chat:1", "before")
            async with asyncio.timeout(5):
                assert (await anext(aiter(subs[1]))).data == "before"
            assert subscribes == ["chat:0", "chat:1", "chat:2"]
            connected = client._ws
            assert connected is not None
            connected.abort()  # the network drops
            await app.publish("chat:1", "during")  # recovered from the history
            async with asyncio.timeout(5):
                while client._ws is connected or not client.connected:
                    await asyncio.sleep(0.01)
            await app.publish("chat:1", "after")
            async with asyncio.timeout(5):
                assert (await anext(aiter(subs[1]))).data == "during"
                assert (await anext(aiter(subs[1]))).data == "after"
            assert client.reconnects == 1
            assert subscribes == ["chat:0", "chat:1", "chat:2"]  # none sent again: in connect
            assert [s.recovered for s in subs] == [True, True, True]

    run(app, scenario)


# --- the server's heartbeat -------------------------------------------------------------------


def test_heartbeat_setting_is_checked() -> None:
    assert ChannelSettings().heartbeat == 25.0
    with pytest.raises(ValueError, match="heartbeat"):
        ChannelSettings(heartbeat=-1)


def test_a_protocol_2_session_gets_ping_pushes_at_the_interval_of_its_connect_result() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2)
        assert peer.info["ping"] == 0.2
        started = time.monotonic()
        assert await peer.next_push() == {"push": "ping"}
        assert await peer.next_push() == {"push": "ping"}
        assert time.monotonic() - started >= 0.35  # two intervals, give or take the clock
        # a version 1 session gets none: the same wait, then only the reply to its ping
        old = await Peer.open(url)
        assert "ping" not in old.info
        await asyncio.sleep(0.5)
        await old.call("ping")
        assert old.pushes == []

    run(v2_app(heartbeat=0.2), scenario)


def test_no_ping_pushes_with_heartbeat_0() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2)
        assert peer.info["ping"] == 0
        await asyncio.sleep(0.3)
        await peer.call("ping")
        assert peer.pushes == []

    run(v2_app(heartbeat=0), scenario)


def test_rtserve_client_takes_ping_pushes_in_its_stride(caplog: pytest.LogCaptureFixture) -> None:
    app = v2_app(heartbeat=0.05)

    async def scenario(server: Any, url: str) -> None:
        async with Client(url) as client:
            sub = await client.subscribe("chat:a")
            await asyncio.sleep(0.2)  # a few heartbeats
            await app.publish("chat:a", "hi")
            async with asyncio.timeout(5):
                assert (await anext(aiter(sub))).data == "hi"

    with caplog.at_level("WARNING", logger="rtserve.client"):
        run(app, scenario)
    assert not [r for r in caplog.records if r.name == "rtserve.client"], caplog.records


# --- rpc ----------------------------------------------------------------------------------------


def rpc_app(**settings: Any) -> App:
    app = v2_app(**settings)

    @app.rpc("add")
    def add(context: RpcContext) -> Any:
        numbers = context.data["numbers"]
        return {"sum": sum(numbers), "user": context.user, "method": context.method}

    @app.rpc("cart.total")
    async def total(context: RpcContext) -> Any:
        await asyncio.sleep(0)
        if context.data is None:
            raise ChannelError(4400, "which cart?")
        return None

    @app.rpc("busy")
    def busy(context: RpcContext) -> Any:
        raise ChannelError(4503, "try later", temporary=True)

    @app.rpc("broken")
    def broken(context: RpcContext) -> Any:
        raise RuntimeError("a bug")

    @app.rpc("not-json")
    def not_json(context: RpcContext) -> Any:
        return {"when": object()}

    return app


def test_rpc_is_parsed_with_its_method() -> None:
    command = parse_command('{"id": 1, "op": "rpc", "method": "cart.total", "data": [1]}')
    assert (command.method, command.data) == ("cart.total", [1])
    for method in ("", '"a b"', '"' + "m" * 129 + '"', "5", "null"):
        text = '{"id": 1, "op": "rpc"' + (f', "method": {method}' if method else "") + "}"
        with pytest.raises(CommandError) as info:
            parse_command(text)
        assert (info.value.code, info.value.id) == (107, 1)


def test_rpc_methods_are_checked_when_registered() -> None:
    app = App()
    app.rpc("ok")(lambda context: None)
    with pytest.raises(ValueError, match="twice"):
        app.rpc("ok")
    with pytest.raises(ValueError, match="rpc method"):
        app.rpc("not ok")


def test_rpc_calls_the_apps_handler_over_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, protocol=2, token=mint(SECRET, "ann"))
        result = await peer.call("rpc", method="add", data={"numbers": [1, 2, 3]})
        assert result == {"data": {"sum": 6, "user": "ann", "method": "add"}}
        assert await peer.call("rpc", method="cart.total", data=7) == {"data": None}

        async def error(method: str, **fields: Any) -> dict[str, Any]:
            reply = await raw_call(peer, "rpc", method=method, **fields)
            return reply["error"]  # type: ignore[no-any-return]

        assert await error("cart.total") == {
            "code": 4400,
            "message": "which cart?",
            "temporary": False,
        }
        assert await error("busy") == {"code": 4503, "message": "try later", "temporary": True}
        assert await error("nope") == {
            "code": 117,
            "message": "no rpc method 'nope'",
            "temporary": False,
        }
        assert (await error("broken"))["code"] == 100
        assert (await error("not-json"))["code"] == 100
        await peer.call("ping")  # the connection stays
        before = await Peer.open(url, connect_cmd=False)
        reply = await raw_call(before, "rpc", method="add", data={"numbers": [1]})
        assert reply["error"]["code"] == 110

    with caplog.at_level("ERROR", logger="rtserve.channels"):
        run(rpc_app(), scenario)
    logged = [r.getMessage() for r in caplog.records if r.name == "rtserve.channels"]
    assert logged == ["error handling rpc", "error handling rpc"]


def test_rpc_calls_are_rate_limited_per_connection() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer, other = [await Peer.open(url, protocol=2) for _ in range(2)]
        for _ in range(3):  # the burst
            await peer.call("rpc", method="add", data={"numbers": [1]})
        reply = await raw_call(peer, "rpc", method="add", data={"numbers": [1]})
        assert reply["error"] == {"code": 111, "message": "rate limited", "temporary": True}
        await peer.call("ping")  # the connection stays
        await other.call("rpc", method="add", data={"numbers": [1]})  # a budget of its own

    run(rpc_app(rpc_rate=0.001, rpc_burst=3), scenario)


def test_rtserve_client_rpc() -> None:
    async def scenario(server: Any, url: str) -> None:
        async with Client(url) as client:
            assert await client.rpc("add", {"numbers": [4, 5]}) == {
                "sum": 9,
                "user": None,
                "method": "add",
            }
            with pytest.raises(ClientError) as info:
                await client.rpc("cart.total")
            assert (info.value.code, info.value.message) == (4400, "which cart?")

    run(rpc_app(), scenario)


# --- history backwards --------------------------------------------------------------------------


def test_history_reverse_is_parsed() -> None:
    assert parse_command('{"op": "history", "channel": "c", "reverse": true}').reverse
    assert not parse_command('{"op": "history", "channel": "c"}').reverse
    for bad in ("1", '"true"', "null"):
        with pytest.raises(CommandError) as info:
            parse_command('{"id": 1, "op": "history", "channel": "c", "reverse": ' + bad + "}")
        assert (info.value.code, info.value.id) == (107, 1)


@pytest.mark.usefixtures("app_broker")  # memory and Redis
def test_history_pages_backwards_to_the_start_of_what_is_kept() -> None:
    app = App(channels=ChannelSettings())
    app.channel("news", history=8)

    async def scenario(server: Any, url: str) -> None:
        for n in range(1, 13):  # offsets 1 to 12; 5 to 12 kept
            await app.publish("news", f"n{n}")
        peer = await Peer.open(url, protocol=2)
        await peer.call("subscribe", channel="news")

        async def page(**fields: Any) -> list[int]:
            result = await peer.call("history", channel="news", reverse=True, **fields)
            assert result["offset"] == 12
            return [p["offset"] for p in result["publications"]]

        assert await page(limit=3) == [12, 11, 10]
        epoch = (await peer.call("history", channel="news", limit=0))["epoch"]
        assert await page(limit=3, since={"offset": 10, "epoch": epoch}) == [9, 8, 7]
        assert await page(limit=3, since={"offset": 7, "epoch": epoch}) == [6, 5]
        assert await page(limit=3, since={"offset": 5, "epoch": epoch}) == []
        assert await page() == list(range(12, 4, -1))  # the rule's history by default
        assert await page(limit=0) == []
        assert await page(limit=2, since={"offset": 99, "epoch": epoch}) == [12, 11]
        reply = await raw_call(
            peer, "history", channel="news", reverse=True, since={"offset": 3, "epoch": "x"}
        )
        assert reply["error"]["code"] == 112
        # over HTTP too, with the same answer
        query = f"channel=news&limit=3&reverse=1&since=news:10:{epoch}"
        answer = await asyncio.to_thread(http_json, server.port, f"/rt/history?{query}")
        assert [p["offset"] for p in answer["publications"]] == [9, 8, 7]
        # and rtserve.client
        async with Client(url) as client:
            await client.subscribe("news")
            back = await client.history("news", limit=2, since=(9, epoch), reverse=True)
            assert [p.offset for p in back.publications] == [8, 7]

    run(app, scenario)


def http_json(port: int, path: str) -> Any:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


# --- presence by user, and its diffs -------------------------------------------------------------


def test_presence_grouping_and_diffs_are_parsed() -> None:
    assert parse_command('{"op": "presence", "channel": "c", "group": "user"}').by_user
    assert parse_command('{"op": "subscribe", "channel": "c", "presence_diff": true}').presence_diff
    connect = parse_command(
        '{"op": "connect", "subscriptions": [{"channel": "c", "presence_diff": true}]}'
    )
    assert connect.subscriptions == [SubscribeRequest("c", presence_diff=True)]
    for text in (
        '{"id": 1, "op": "presence", "channel": "c", "group": "client"}',
        '{"id": 1, "op": "subscribe", "channel": "c", "presence_diff": 1}',
        '{"id": 1, "op": "connect", "subscriptions": [{"channel": "c", "presence_diff": "y"}]}',
    ):
        with pytest.raises(CommandError) as info:
            parse_command(text)
        assert (info.value.code, info.value.id) == (107, 1)


@pytest.mark.usefixtures("app_broker")  # memory and Redis
def test_presence_by_user_and_presence_diff_pushes() -> None:
    def token(user: str) -> str:
        return mint(SECRET, user, info={"name": user.title()})

    async def scenario(server: Any, url: str) -> None:
        watcher = await Peer.open(url, protocol=2, token=token("wat"))
        await watcher.call("subscribe", channel="chat:p", presence_diff=True)
        ann1 = await Peer.open(url, protocol=2, token=token("ann"))
        await ann1.call("subscribe", channel="chat:p")
        joined = await watcher.next_push()
        ann = ann1.info["client"]
        assert joined == {
            "push": "presence_diff",
            "channel": "chat:p",
            "joins": {
                "users": {"ann": {ann: {"client": ann, "user": "ann", "info": {"name": "Ann"}}}},
                "anonymous": {},
            },
            "leaves": {"users": {}, "anonymous": {}},
        }
        ann2 = await Peer.open(url, protocol=2, token=token("ann"))
        await ann2.call("subscribe", channel="chat:p")
        guest = await Peer.open(url, protocol=2)
        await guest.call("subscribe", channel="chat:p")
        assert set((await watcher.next_push())["joins"]["users"]["ann"]) == {ann2.info["client"]}
        assert set((await watcher.next_push())["joins"]["anonymous"]) == {guest.info["client"]}
        grouped = await watcher.call("presence", channel="chat:p", group="user")
        assert set(grouped) == {"users", "anonymous"}
        assert {user: set(clients) for user, clients in grouped["users"].items()} == {
            "wat": {watcher.info["client"]},
            "ann": {ann, ann2.info["client"]},
        }
        assert set(grouped["anonymous"]) == {guest.info["client"]}
        await ann1.call("unsubscribe", channel="chat:p")
        left = await watcher.next_push()
        assert left["push"] == "presence_diff" and set(left["leaves"]["users"]["ann"]) == {ann}
        # a subscriber without presence_diff still gets join and leave pushes
        await ann2.call("unsubscribe", channel="chat:p")
        # (over a broker, ann2's join may reach the guest after its own subscribe: skip joins)
        leavers = {(await guest.next_push("leave"))["info"]["client"] for _ in range(2)}
        assert leavers == {ann, ann2.info["client"]}
        # and over HTTP
        query = "channel=chat:p&group=user"
        answer = await asyncio.to_thread(http_json, server.port, f"/rt/presence?{query}")
        assert set(answer["users"]) == {"wat"} and set(answer["anonymous"]) == {
            guest.info["client"]
        }

    run(v2_app(), scenario)


def test_a_big_channels_digest_comes_as_a_presence_diff_too() -> None:
    app = App(channels=ChannelSettings(presence_digest_interval=0.05))
    app.channel("big", presence=True, join_leave=True, presence_digest=1)

    async def scenario(server: Any, url: str) -> None:
        watcher = await Peer.open(url, protocol=2)
        await watcher.call("subscribe", channel="big", presence_diff=True)
        plain = await Peer.open(url, protocol=2)
        await plain.call("subscribe", channel="big")
        third = await Peer.open(url, protocol=2)
        await third.call("subscribe", channel="big")  # 3 > presence_digest: a digest
        diffs = [await watcher.next_push("presence_diff")]
        while third.info["client"] not in diffs[-1]["joins"]["anonymous"]:
            diffs.append(await watcher.next_push("presence_diff"))
        assert (await plain.next_push("presence"))["count"] >= 2  # the digest as before

    run(app, scenario)


def test_rtserve_client_presence_by_user_and_diffs() -> None:
    async def scenario(server: Any, url: str) -> None:
        events: list[Any] = []
        async with Client(url, token=mint(SECRET, "wat")) as client:
            await client.subscribe("chat:p", presence_diff=True, on_presence=events.append)
            other = await Peer.open(url, protocol=2, token=mint(SECRET, "ann"))
            await other.call("subscribe", channel="chat:p")
            await other.close()
            async with asyncio.timeout(5):
                while len(events) < 2:
                    await asyncio.sleep(0.01)
            joined, left = events
            assert isinstance(joined, PresenceDiff) and isinstance(left, PresenceDiff)
            assert [i.user for i in joined.joins] == ["ann"] and joined.leaves == []
            assert [i.user for i in left.leaves] == ["ann"] and left.joins == []
            grouped = await client.presence_by_user("chat:p")
            assert list(grouped) == ["wat"] and list(grouped["wat"]) == [client.client_id]

    run(v2_app(), scenario)
