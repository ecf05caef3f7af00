"""rtserve.client against a small fake of the channel protocol (a WebSocketHandler written
here), and the `rtserve subscribe` / `rtserve publish` commands."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner

from rtserve import App, Request, WebSocketHandler
from rtserve.cli.main import main
from rtserve.client import (
    Client,
    ClientError,
    ClientInfo,
    Disconnected,
    Join,
    Leave,
    Position,
    PresenceDigest,
    PresenceEvent,
    Publication,
    Subscription,
    Unrecovered,
)
from rtserve.testing import ThreadedServer, serve_app

# --- the fake server ------------------------------------------------------------------------


@dataclass
class Channel:
    epoch: str
    offset: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    keep: int = 1000


class FakeHub:
    """Channels and sockets of the fake; tests call its methods to act as the server."""

    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.sockets: list[FakeSocket] = []
        self.commands: list[dict[str, Any]] = []
        self.connects = 0
        self.after_subscribe: dict[str, Any] = {}  # channel: data published once subscribed
        self.epochs = 0
        self.opened = asyncio.Event()

    def channel(self, name: str) -> Channel:
        if name not in self.channels:
            self.epochs += 1
            keep = 0 if name.startswith("nohistory") else 1000
            self.channels[name] = Channel(f"epoch{self.epochs}", keep=keep)
        return self.channels[name]

    def publish(self, name: str, data: Any, *, push: bool = True) -> tuple[int, str]:
        """Publish; `push=False` skips the pushes (as a slow-consumer policy would)."""
        channel = self.channel(name)
        channel.offset += 1
        pub = {"offset": channel.offset, "data": data}
        if channel.keep:
            channel.history = [*channel.history, pub][-channel.keep :]
        for sock in self.sockets:
            if name in sock.subs and push:
                sock.push({"push": "pub", "channel": name, **pub})
        return channel.offset, channel.epoch

    def reset(self, name: str) -> None:
        """Lose the channel's stream: a new epoch, offsets from 1 again."""
        del self.channels[name]
        self.channel(name)

    def push(self, message: dict[str, Any]) -> None:
        for sock in self.sockets:
            sock.push(message)

    def drop_all(self) -> None:
        """End every connection without a close frame (the client sees 1006)."""
        for sock in list(self.sockets):
            sock.connection.abort()

    def close_all(self, code: int, reason: str) -> None:
        for sock in list(self.sockets):
            sock.close(code, reason)

    def subscribes(self, channel: str) -> list[dict[str, Any]]:
        return [c for c in self.commands if c["op"] == "subscribe" and c["channel"] == channel]


class FakeSocket(WebSocketHandler):
    hub: FakeHub

    def on_open(self) -> None:
        self.subs: set[str] = set()
        self.hub.sockets.append(self)
        self.hub.opened.set()

    def on_close(self, code: int, reason: str) -> None:
        if self in self.hub.sockets:
            self.hub.sockets.remove(self)

    def push(self, message: dict[str, Any]) -> None:
        self.send(json.dumps(message))

    async def on_message(self, message: str | bytes) -> None:
        command = json.loads(message)
        self.hub.commands.append(command)
        id_ = command.get("id")
        try:
            result = await self.handle(command)
        except ClientError as exc:
            self.push({"id": id_, "error": {"code": exc.code, "message": exc.message}})
            if command["op"] == "connect":
                self.close(4001, "unauthorized")
            return
        self.push({"id": id_, "result": result})
        if command["op"] == "subscribe":
            self.subs.add(command["channel"])  # pushes only after the reply
            if command["channel"] in self.hub.after_subscribe:
                self.hub.publish(
                    command["channel"], self.hub.after_subscribe.pop(command["channel"])
                )

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        hub = self.hub
        if op == "connect":
            if command.get("token") == "bad":
                raise ClientError(101, "unauthorized")
            hub.connects += 1
            user = command.get("token")
            return {"client": f"c{hub.connects}", "user": user, "expires": None, "version": 1}
        name = command.get("channel", "")
        if name.startswith("forbidden"):
            raise ClientError(103, "permission denied")
        if op == "subscribe":
            if name in self.subs:
                raise ClientError(105, "already subscribed")
            channel = hub.channel(name)
            result: dict[str, Any] = {
                "channel": name,
                "offset": channel.offset,
                "epoch": channel.epoch,
            }
            since = command.get("since")
            if since is not None:
                missed = [p for p in channel.history if p["offset"] > since["offset"]]
                recovered = since["epoch"] == channel.epoch and (
                    since["offset"] == channel.offset
                    or bool(missed and missed[0]["offset"] == since["offset"] + 1)
                )
                result["recovered"] = recovered
                if recovered:
                    result["publications"] = missed
            return result
        if op == "unsubscribe":
            if name not in self.subs:
                raise ClientError(114, "not subscribed")
            self.subs.discard(name)
            return {}
        if op == "publish":
            offset, epoch = hub.publish(name, command["data"])
            return {"offset": offset, "epoch": epoch}
        if op == "history":
            channel = hub.channel(name)
            return {
                "publications": channel.history[: command.get("limit")],
                "offset": channel.offset,
                "epoch": channel.epoch,
            }
        if op == "presence":
            return {"clients": {"c1": {"client": "c1", "user": "ann", "info": {"x": 1}}}}
        if op == "presence_stats":
            if name.startswith("delay-"):  # answers later the larger N is
                n = int(name.split("-")[1])
                await asyncio.sleep(0.02 * n)
                return {"clients": n, "users": n}
            return {"clients": 1, "users": 1}
        if op == "refresh":
            return {"expires": 2e9}
        if op == "ping":
            return {}
        raise ClientError(104, "unknown op")


def make_app(hub: FakeHub) -> App:
    app = App()
    handler = type("Socket", (FakeSocket,), {"hub": hub})
    app.websocket("/rt/ws", concurrent=True)(handler)

    @app.route("/rt/publish", methods=["POST"])
    async def publish_endpoint(request: Request) -> Any:
        if request.headers.get("authorization") != "Bearer k1":
            return _json_error(401, 101, "unauthorized")
        body = await request.json()
        if body["channel"].startswith("forbidden"):
            return _json_error(403, 103, "permission denied")
        hub.commands.append({"op": "http-publish", **body})
        offset, epoch = hub.publish(body["channel"], body["data"])
        return {"offset": offset, "epoch": epoch}

    return app


def _json_error(status: int, code: int, message: str) -> Any:
    from rtserve import JSONResponse

    return JSONResponse({"error": {"code": code, "message": message}}, status=status)


Scenario = Callable[[FakeHub, str], Awaitable[None]]


def run(scenario: Scenario) -> None:
    """Serve the fake on the test's own loop and run `scenario(hub, ws_url)`."""

    async def main() -> None:
        hub = FakeHub()
        async with serve_app(make_app(hub), access_log=False) as server:
            await asyncio.wait_for(scenario(hub, f"ws://127.0.0.1:{server.port}/rt/ws"), 20)

    asyncio.run(main())


def client(url: str, **options: Any) -> Client:
    options.setdefault("backoff_min", 0.01)
    options.setdefault("backoff_max", 0.05)
    options.setdefault("request_timeout", 5.0)
    return Client(url, **options)


async def take(sub: Subscription, n: int) -> list[Publication]:
    return [await asyncio.wait_for(anext(sub), 5) for _ in range(n)]


# --- request and reply ----------------------------------------------------------------------


def test_connect_and_commands() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url, token="ann", data={"v": 1}) as c:
            assert (c.client_id, c.user, c.version, c.connected) == ("c1", "ann", 1, True)
            assert hub.commands[0] == {
                "id": 1,
                "op": "connect",
                "protocol": 2,
                "token": "ann",
                "data": {"v": 1},
            }
            assert await c.publish("news", {"n": 1}) == Position(1, "epoch1")
            offset, epoch = await c.publish("news", {"n": 2})
            assert (offset, epoch) == (2, "epoch1")
            history = await c.history("news", limit=1)
            assert history.position == (2, "epoch1")
            assert history.publications == [Publication("news", 1, {"n": 1})]
            assert await c.presence("news") == {"c1": ClientInfo("c1", "ann", {"x": 1})}
            assert tuple(await c.presence_stats("news")) == (1, 1)
            assert await c.refresh("ann2") == 2e9 and c.token == "ann2"
            await c.ping()
        assert not c.connected

    run(scenario)


def test_replies_are_matched_by_id() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url) as c:
            # The server answers these in the opposite order.
            stats = await asyncio.gather(*(c.presence_stats(f"delay-{n}") for n in (5, 3, 1)))
            assert [s.clients for s in stats] == [5, 3, 1]
            ids = [cmd["id"] for cmd in hub.commands]
            assert len(ids) == len(set(ids))

    run(scenario)


def test_errors_raise_client_error() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url) as c:
            with pytest.raises(ClientError) as info:
                await c.publish("forbidden", 1)
            assert (info.value.code, info.value.message) == (103, "permission denied")
            with pytest.raises(ClientError) as info:
                await c.subscribe("forbidden:x")
            assert info.value.code == 103
            assert "forbidden:x" not in c.subscriptions
            sub = await c.subscribe("ok")
            with pytest.raises(ValueError):
                await c.subscribe("ok")
            assert sub.position == (0, "epoch1")
            assert await c.publish("ok", 1) == (1, "epoch1")  # still usable

    run(scenario)


def test_refused_connect_raises_and_does_not_retry() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        c = client(url, token="bad")
        with pytest.raises(ClientError) as info:
            await c.connect()
        assert info.value.code == 101
        await c.close()
        assert hub.connects == 0

    run(scenario)


# --- pushes ---------------------------------------------------------------------------------


def test_pushes_reach_the_right_subscription() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        events: list[PresenceEvent] = []
        async with client(url) as c:
            a = await c.subscribe("a", on_presence=events.append)
            b = await c.subscribe("b")
            hub.publish("a", "a1")
            hub.publish("b", "b1")
            hub.publish("a", "a2")
            hub.publish("other", "x")  # not subscribed: never seen
            assert [p.data for p in await take(a, 2)] == ["a1", "a2"]
            assert await take(b, 1) == [Publication("b", 1, "b1")]
            assert a.position is not None and a.position == (2, a.position.epoch)
            info = {"client": "c9", "user": "bob"}
            hub.push({"push": "join", "channel": "a", "info": info})
            hub.push({"push": "leave", "channel": "a", "info": info})
            hub.push(
                {"push": "presence", "channel": "a", "count": 3, "joins": [info], "leaves": []}
            )
            hub.push({"push": "join", "channel": "b", "info": info})  # b has no callback
            hub.push({"push": "unsubscribe", "channel": "b", "code": 103, "message": "gone"})
            with pytest.raises(ClientError) as err:
                await asyncio.wait_for(anext(b), 5)
            assert (err.value.code, err.value.message) == (103, "gone")
            assert "b" not in c.subscriptions and b.ended
            await c.ping()  # every push before this reply has been handled
            bob = ClientInfo("c9", "bob")
            assert events == [
                Join("a", bob),
                Leave("a", bob),
                PresenceDigest("a", 3, [bob], []),
            ]
            hub.publish("a", "a3")
            await c.ping()
            await a.unsubscribe()
            assert [p.data async for p in a] == ["a3"]  # what it held, then the end

    run(scenario)


def test_duplicate_offsets_are_dropped() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url) as c:
            sub = await c.subscribe("d")
            hub.publish("d", 1)
            hub.publish("d", 2)
            for offset in (2, 1):
                hub.push({"push": "pub", "channel": "d", "offset": offset, "data": "dup"})
            hub.publish("d", 3)
            assert [p.data for p in await take(sub, 3)] == [1, 2, 3]
            assert sub.duplicates == 2 and sub.gaps == 0
            # A push falling back may be a new epoch: the subscription was made again to see.
            assert hub.subscribes("d")[-1]["since"] == {"offset": 2, "epoch": "epoch1"}
            hub.publish("d", 4)
            assert [p.data for p in await take(sub, 1)] == [4]

    run(scenario)


def test_duplicates_with_fill_gaps_off_are_just_dropped() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url) as c:
            sub = await c.subscribe("d", fill_gaps=False)
            for offset in (1, 2, 2, 1, 3):
                hub.push({"push": "pub", "channel": "d", "offset": offset, "data": offset})
            assert [p.offset for p in await take(sub, 3)] == [1, 2, 3]
            assert sub.duplicates == 2 and len(hub.subscribes("d")) == 1

    run(scenario)


def test_offset_jumps_are_filled_from_history() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url) as c:
            sub = await c.subscribe("j")
            hub.publish("j", 1)
            hub.publish("j", 2, push=False)  # skipped by the server
            hub.publish("j", 3, push=False)
            hub.publish("j", 4)
            assert [p.data for p in await take(sub, 4)] == [1, 2, 3, 4]
            assert sub.gaps == 0 and sub.skipped == 0
            # Conflated channels: jumps accepted and counted.
            conflated = await c.subscribe("k", fill_gaps=False)
            hub.publish("k", 1)
            hub.publish("k", 2, push=False)
            hub.publish("k", 3)
            assert [p.data for p in await take(conflated, 2)] == [1, 3]
            assert conflated.skipped == 1 and len(hub.subscribes("k")) == 1

    run(scenario)


def test_new_epoch_seen_from_offsets_is_surfaced() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url) as c:
            sub = await c.subscribe("l")
            for i in (1, 2, 3):
                hub.publish("l", i)
            await take(sub, 3)
            old = hub.channel("l").epoch
            hub.reset("l")  # the stream starts again at offset 1, and pushes carry no epoch
            hub.publish("l", "x")
            with pytest.raises(Unrecovered) as info:
                await asyncio.wait_for(anext(sub), 5)
            assert info.value.since == (3, old)
            assert info.value.position == (1, hub.channel("l").epoch)
            hub.publish("l", "y")
            assert [p.data for p in await take(sub, 1)] == ["y"]

    run(scenario)


def test_a_new_epoch_in_a_push_is_a_gap() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url) as c:
            sub = await c.subscribe("e")
            hub.publish("e", 1)
            await take(sub, 1)
            hub.push({"push": "pub", "channel": "e", "offset": 1, "data": 9, "epoch": "new"})
            with pytest.raises(Unrecovered) as info:
                await asyncio.wait_for(anext(sub), 5)
            assert info.value.since == (1, "epoch1") and info.value.position == (0, "new")
            assert [p.data for p in await take(sub, 1)] == [9]

    run(scenario)


# --- reconnecting ---------------------------------------------------------------------------


def test_reconnect_resubscribes_from_the_last_position() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url, token="ann") as c:
            sub = await c.subscribe("r")
            other = await c.subscribe("fresh", recover=False)
            hub.publish("r", 1)
            hub.publish("r", 2)
            assert [p.data for p in await take(sub, 2)] == [1, 2]
            epoch = hub.channel("r").epoch
            hub.drop_all()
            # Published while the client is away (nothing ran on the loop in between).
            hub.publish("r", 3)
            hub.publish("r", 4)
            hub.publish("fresh", "lost")
            while c.connected:  # until the client notices
                await asyncio.sleep(0.005)
            assert await c.publish("r", 5) == (5, epoch)  # waits for the reconnect
            assert [p.data for p in await take(sub, 3)] == [3, 4, 5]
            assert c.reconnects == 1 and c.client_id == "c2"
            connects = [cmd for cmd in hub.commands if cmd["op"] == "connect"]
            assert [cmd["token"] for cmd in connects] == ["ann", "ann"]
            last = hub.subscribes("r")[-1]
            assert last["since"] == {"offset": 2, "epoch": epoch}
            assert sub.recovered is True and sub.gaps == 0
            assert "since" not in hub.subscribes("fresh")[-1]  # recover=False
            assert other.gaps == 1  # counted, not raised
            hub.publish("fresh", "new")
            assert [p.data for p in await take(other, 1)] == ["new"]

    run(scenario)


def test_unrecoverable_gap_is_surfaced() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url) as c:
            sub = await c.subscribe("u")
            hub.publish("u", "old")
            await take(sub, 1)
            old = hub.channel("u").epoch
            hub.drop_all()
            hub.reset("u")  # the stream is lost: a new epoch
            hub.publish("u", "new1")
            with pytest.raises(Unrecovered) as info:
                await asyncio.wait_for(anext(sub), 5)
            new = hub.channel("u").epoch
            assert info.value.since == (1, old)
            assert info.value.position == (1, new)
            assert sub.recovered is False and sub.gaps == 1
            hub.publish("u", "new2")
            assert [p.data for p in await take(sub, 1)] == ["new2"]  # going on after it

    run(scenario)


def test_final_close_codes_stop_the_client() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        c = client(url)
        await c.connect()
        sub = await c.subscribe("f")
        hub.publish("f", 1)
        hub.close_all(4005, "kicked")
        assert [p.data for p in await take(sub, 1)] == [1]  # what came first still comes
        with pytest.raises(Disconnected) as info:
            await asyncio.wait_for(anext(sub), 5)
        assert (info.value.code, info.value.reason) == (4005, "kicked")
        with pytest.raises(Disconnected):
            await c.publish("f", 2)
        assert hub.connects == 1
        await c.close()

    run(scenario)


def test_no_reconnect_when_disabled() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url, reconnect=False) as c:
            sub = await c.subscribe("n")
            hub.drop_all()
            with pytest.raises(Disconnected) as info:
                await asyncio.wait_for(anext(sub), 5)
            assert info.value.code == 1006

    run(scenario)


def test_close_ends_iteration() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        c = client(url)
        await c.connect()
        sub = await c.subscribe("z")
        got: list[Any] = []

        async def consume() -> None:
            async for pub in sub:
                got.append(pub.data)

        task = asyncio.create_task(consume())
        hub.publish("z", 1)
        await c.ping()
        await c.close()
        await asyncio.wait_for(task, 5)
        assert got == [1]
        with pytest.raises(Disconnected):
            await c.publish("z", 2)

    run(scenario)


# --- a consumer that falls behind -----------------------------------------------------------


def test_overflow_is_recovered_from_history() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url, max_queue=4) as c:
            sub = await c.subscribe("o")
            for i in range(1, 21):
                hub.publish("o", i)
            assert [p.data for p in await take(sub, 20)] == list(range(1, 21))
            assert len(hub.subscribes("o")) > 1  # made again with since
            assert all("since" in cmd for cmd in hub.subscribes("o")[1:])
            assert sub.gaps == 0

    run(scenario)


def test_overflow_without_history_is_surfaced() -> None:
    async def scenario(hub: FakeHub, url: str) -> None:
        async with client(url, max_queue=4) as c:
            sub = await c.subscribe("nohistory")
            for i in range(1, 11):
                hub.publish("nohistory", i)
            assert [p.data for p in await take(sub, 4)] == [1, 2, 3, 4]
            with pytest.raises(Unrecovered) as info:
                await asyncio.wait_for(anext(sub), 5)
            assert info.value.since == (4, "epoch1") and info.value.position == (10, "epoch1")
            hub.publish("nohistory", 11)
            assert [p.data for p in await take(sub, 1)] == [11]

    run(scenario)


# --- the commands ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeHub, ThreadedServer]]:
    hub = FakeHub()
    with ThreadedServer(make_app(hub), access_log=False) as server:
        yield hub, server


def test_cli_publish(fake: tuple[FakeHub, ThreadedServer]) -> None:
    hub, server = fake
    runner = CliRunner()
    args = ["publish", "cli", '{"text": "hi"}', "--url", server.url, "--api-key", "k1"]
    result = runner.invoke(main, [*args, "--idempotency-key", "abc"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer == {"offset": 1, "epoch": hub.channel("cli").epoch}
    assert hub.commands[-1] == {
        "op": "http-publish",
        "channel": "cli",
        "data": {"text": "hi"},
        "idempotency_key": "abc",
    }
    # The key from the environment.
    result = runner.invoke(main, args[:-2], env={"RTSERVE_API_KEY": "k1"})
    assert result.exit_code == 0 and json.loads(result.output)["offset"] == 2
    # The server's error message.
    result = runner.invoke(main, [*args[:-1], "wrong"])
    assert result.exit_code == 1
    assert "unauthorized (code 101, HTTP 401)" in result.output
    result = runner.invoke(main, ["publish", "forbidden", "1", "--url", server.url, *args[-2:]])
    assert result.exit_code == 1 and "permission denied" in result.output
    # Not JSON.
    result = runner.invoke(main, ["publish", "cli", "{nope", "--url", server.url])
    assert result.exit_code == 2 and "not JSON" in result.output


def test_cli_publish_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    result = CliRunner().invoke(
        main, ["publish", "x", "1", "--url", f"http://127.0.0.1:{port}", "--api-key", "k"]
    )
    assert result.exit_code == 1
    assert f"cannot reach http://127.0.0.1:{port}/rt/publish" in result.output


def test_cli_subscribe_prints_json_lines(fake: tuple[FakeHub, ThreadedServer]) -> None:
    hub, server = fake
    url = f"ws://127.0.0.1:{server.port}/rt/ws"
    server.call(hub.publish, "tail", {"n": 1})
    server.call(hub.publish, "tail", "two")
    server.call(hub.publish, "tail", 3)
    epoch = hub.channel("tail").epoch
    runner = CliRunner()
    result = runner.invoke(
        main, ["subscribe", "tail", "--url", url, "--since", f"0:{epoch}", "--count", "2"]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"offset": 1, "data": {"n": 1}},
        {"offset": 2, "data": "two"},
    ]
    # An epoch the server no longer has: a warning, then what comes next.
    hub.after_subscribe["tail"] = {"n": 4}
    result = runner.invoke(
        main, ["subscribe", "tail", "--url", url, "--since", "1:gone", "--count", "1"]
    )
    assert result.exit_code == 0, result.output
    assert f"publications after 1:gone were lost; continuing from 3:{epoch}" in result.stderr
    assert json.loads(result.stdout) == {"offset": 4, "data": {"n": 4}}


def test_cli_subscribe_errors(fake: tuple[FakeHub, ThreadedServer]) -> None:
    server = fake[1]
    runner = CliRunner()
    url = f"ws://127.0.0.1:{server.port}/rt/ws"
    result = runner.invoke(main, ["subscribe", "forbidden", "--url", url])
    assert result.exit_code == 1 and "permission denied (code 103)" in result.output
    result = runner.invoke(main, ["subscribe", "x", "--url", url, "--token", "bad"])
    assert result.exit_code == 1 and "connect refused: unauthorized" in result.output
    result = runner.invoke(main, ["subscribe", "x", "--url", url.replace("/rt/ws", "/nope")])
    assert result.exit_code == 1 and "cannot connect" in result.output and "404" in result.output
    result = runner.invoke(main, ["subscribe", "x", "--since", "nope"])
    assert result.exit_code == 2 and "OFFSET:EPOCH" in result.output


@pytest.mark.usefixtures("app_broker")  # on each broker (tests/brokers.py)
def test_against_the_real_hub_a_dropped_connection_loses_and_repeats_nothing() -> None:
    """rtserve.client with the real /rt/ws: publications made while it was cut off arrive
    after it reconnects, once each and in order."""
    from rtserve import App
    from rtserve.client import Client
    from rtserve.testing import serve_app

    app = App()
    app.channel("feed:*", history=100)

    async def main() -> None:
        async with serve_app(app) as server:
            client = Client(f"ws://127.0.0.1:{server.port}/rt/ws", backoff_min=0.01)
            async with client:
                sub = await client.subscribe("feed:1")
                for i in range(3):
                    await app.publish("feed:1", i)
                got = []
                async for pub in sub:
                    got.append(pub.offset)
                    if pub.offset == 3:
                        break
                assert client._ws is not None
                client._ws.abort()  # cut off: no close handshake
                for i in range(3, 8):
                    await app.publish("feed:1", i)
                async for pub in sub:
                    got.append(pub.offset)
                    if pub.offset == 8:
                        break
                assert got == list(range(1, 9))
                for _ in range(200):  # counted once the resubscribing is all done
                    if client.reconnects:
                        break
                    await asyncio.sleep(0.01)
                assert client.reconnects == 1 and sub.recovered is not False
                await app.publish("feed:1", "live")
                async for pub in sub:
                    assert (pub.offset, pub.data) == (9, "live")
                    break

    asyncio.run(asyncio.wait_for(main(), 20))
