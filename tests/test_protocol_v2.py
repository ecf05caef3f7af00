"""Protocol version 2 over /rt/ws (docs/protocol.md): what a `connect` with `protocol: 2`
changes, the ops added with it, and that a client sending no `protocol` sees version 1."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rtserve import App, ChannelContext, ChannelError, ChannelSettings, ConnectResult
from rtserve.client import Client, ClientError
from rtserve.realtime.protocol import (
    ERRORS,
    CommandError,
    ErrorCode,
    is_temporary,
    parse_command,
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
            assert await sub.refresh(fresh) >= time.time() + 59
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
