"""Channels end to end over /rt/ws, with the independent `websockets` package as the client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rtserve import App, ChannelContext, ChannelError, ChannelSettings, ConnectResult
from rtserve.realtime.protocol import DisconnectCode, ErrorCode
from rtserve.server.settings import ServerSettings
from rtserve.testing import serve_app
from rtserve.tokens import mint
from tests.channel_peer import Peer, ReplyError

# Every test runs on each broker (tests/brokers.py): App() gets one of the backend.
pytestmark = pytest.mark.usefixtures("app_broker")

SECRET = "a-test-secret-of-32-characters!!"
Scenario = Callable[[Any, str], Awaitable[None]]


def run(app: App, scenario: Scenario) -> None:
    async def main() -> None:
        async with serve_app(app) as server:
            await asyncio.wait_for(scenario(server, f"ws://127.0.0.1:{server.port}/rt/ws"), 30)

    asyncio.run(main())


async def refused(code: int, call: Awaitable[Any]) -> ReplyError:
    with pytest.raises(ReplyError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


def chat_app(**settings: Any) -> App:
    app = App(channels=ChannelSettings(token_secret=SECRET, api_key="k" * 20, **settings))
    app.channel("chat:*", history=100, presence=True, join_leave=True, publish="clients")
    app.channel("news", history=5)
    app.channel("quiet", publish="clients")
    return app


def test_two_clients_chat() -> None:
    async def scenario(server: Any, url: str) -> None:
        alice, bob = await Peer.open(url), await Peer.open(url)
        await alice.call("subscribe", channel="chat:lobby")
        await bob.call("subscribe", channel="chat:lobby")
        sent = await alice.call("publish", channel="chat:lobby", data={"text": "hi bob"})
        assert sent["offset"] == 1
        for peer in (alice, bob):
            pub = await peer.next_push("pub")
            assert pub["channel"] == "chat:lobby"
            assert pub["offset"] == 1 and pub["data"] == {"text": "hi bob"}
            assert pub["info"]["client"] == alice.info["client"]
        await bob.call("publish", channel="chat:lobby", data="hello alice")
        assert (await alice.next_push("pub"))["data"] == "hello alice"
        # a publish retried with its idempotency key (say, after a reconnect) lands once
        once = [
            await bob.call("publish", channel="chat:lobby", data="once", idempotency_key="m-1")
            for _ in range(2)
        ]
        assert once[0] == once[1] and once[0]["offset"] == 3
        assert (await alice.next_push("pub"))["offset"] == 3
        await alice.call("ping")
        assert not [p for p in alice.pushes if p["push"] == "pub"]

    run(chat_app(), scenario)


def test_recovery_after_forced_disconnect_loses_and_repeats_nothing() -> None:
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        sub = await peer.call("subscribe", channel="chat:room")
        epoch = sub["epoch"]
        for i in range(3):
            await app.publish("chat:room", i)
        seen = [p["offset"] for p in await peer.pubs(3)]
        assert seen == [1, 2, 3]
        peer.ws.transport.abort()  # no close handshake: the server sees the socket drop
        for i in range(3, 10):
            await app.publish("chat:room", i)
        again = await Peer.open(url)
        result = await again.call(
            "subscribe", channel="chat:room", since={"offset": seen[-1], "epoch": epoch}
        )
        assert result["recovered"] is True
        assert [p["offset"] for p in result["publications"]] == list(range(4, 11))
        assert [p["data"] for p in result["publications"]] == list(range(3, 10))
        await app.publish("chat:room", "live")
        live = await again.next_push("pub")
        assert live["offset"] == 11 and live["data"] == "live"
        await again.call("ping")
        assert not [p for p in again.pushes if p["push"] == "pub"]  # no duplicate

    run(app, scenario)


def test_recovery_impossible_is_said_plainly() -> None:
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        first = await peer.call("subscribe", channel="news")
        for i in range(12):  # history keeps 5
            await app.publish("news", i)
        await peer.pubs(12)
        await peer.call("unsubscribe", channel="news")
        result = await peer.call(
            "subscribe", channel="news", since={"offset": 2, "epoch": first["epoch"]}
        )
        assert result["recovered"] is False and "publications" not in result
        assert result["offset"] == 12
        await peer.call("unsubscribe", channel="news")
        wrong = await peer.call("subscribe", channel="news", since={"offset": 12, "epoch": "other"})
        assert wrong["recovered"] is False
        await peer.call("unsubscribe", channel="news")
        same = await peer.call(
            "subscribe", channel="news", since={"offset": 12, "epoch": first["epoch"]}
        )
        assert same["recovered"] is True and same["publications"] == []
        history = await peer.call("history", channel="news")
        assert [p["offset"] for p in history["publications"]] == [8, 9, 10, 11, 12]
        newest = await peer.call("history", channel="news", limit=2)
        assert [p["offset"] for p in newest["publications"]] == [11, 12]
        await refused(
            ErrorCode.UNRECOVERABLE,
            peer.call("history", channel="news", since={"offset": 2, "epoch": first["epoch"]}),
        )
        await refused(
            ErrorCode.UNRECOVERABLE,
            peer.call("history", channel="news", since={"offset": 1, "epoch": "other"}),
        )
        limited = await peer.call(
            "history", channel="news", since={"offset": 9, "epoch": first["epoch"]}, limit=2
        )
        assert [p["offset"] for p in limited["publications"]] == [10, 11]

    run(app, scenario)


def test_publications_racing_a_subscribe_arrive_once_and_in_order() -> None:
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        first = await peer.call("subscribe", channel="chat:race")
        await peer.call("unsubscribe", channel="chat:race")

        async def publisher() -> None:
            for i in range(200):
                await app.publish("chat:race", i)
                if i % 10 == 0:
                    await asyncio.sleep(0)

        task = asyncio.create_task(publisher())
        await asyncio.sleep(0)
        result = await peer.call(
            "subscribe", channel="chat:race", since={"offset": 0, "epoch": first["epoch"]}
        )
        await task
        assert result["recovered"] is True
        offsets = [p["offset"] for p in result["publications"]]
        while not offsets or offsets[-1] < 200:
            offsets.append((await peer.next_push("pub"))["offset"])
        assert offsets == list(range(1, 201))

    run(app, scenario)


def test_presence_join_and_leave() -> None:
    async def scenario(server: Any, url: str) -> None:
        alice = await Peer.open(url, token=mint(SECRET, "alice", info={"name": "Alice"}))
        bob = await Peer.open(url, token=mint(SECRET, "bob"))
        await alice.call("subscribe", channel="chat:p")
        await bob.call("subscribe", channel="chat:p")
        join = await alice.next_push("join")
        assert join["info"]["user"] == "bob" and join["channel"] == "chat:p"
        present = await bob.call("presence", channel="chat:p")
        users = sorted(c["user"] for c in present["clients"].values())
        assert users == ["alice", "bob"]
        assert present["clients"][alice.info["client"]]["info"] == {"name": "Alice"}
        assert await bob.call("presence_stats", channel="chat:p") == {"clients": 2, "users": 2}
        await alice.close()
        leave = await bob.next_push("leave")
        assert leave["info"]["user"] == "alice"
        for _ in range(100):  # the leave is recorded in the background
            if (await bob.call("presence_stats", channel="chat:p"))["clients"] == 1:
                break
            await asyncio.sleep(0.01)
        assert (await bob.call("presence", channel="chat:p"))["clients"].keys() == {
            bob.info["client"]
        }
        assert not [p for p in bob.pushes if p["push"] == "join"]  # no join for oneself

    run(chat_app(), scenario)


def test_big_channel_gets_a_presence_digest() -> None:
    app = App(channels=ChannelSettings(presence_digest_interval=0.05))

    async def joined(ctx: ChannelContext) -> None:
        await app.publish("big", ctx.client.client)  # delivered after this client's join

    app.channel("big", presence=True, join_leave=True, presence_digest=2, on_join=joined)

    async def scenario(server: Any, url: str) -> None:
        peers = [await Peer.open(url) for _ in range(5)]
        for i, peer in enumerate(peers):
            await peer.call("subscribe", channel="big")
            if i < 2:  # a broker may deliver the join later (Redis: through pub/sub), so wait
                # for it while the channel is still small, by the marker published after it
                while (await peers[0].next_push("pub"))["data"] != peer.info["client"]:
                    pass
        digest = await peers[0].next_push("presence")
        joins = list(digest["joins"])
        while len(joins) < 3:  # from the 3rd on, each joined a channel over 2 subscribers
            digest = await peers[0].next_push("presence")
            joins += digest["joins"]
        assert digest["count"] == 5  # counted after the last join
        assert {j["client"] for j in joins} == {p.info["client"] for p in peers[2:]}
        assert not [p for p in peers[0].pushes if p["push"] == "join"]

    run(app, scenario)


def test_every_refusal_has_its_code() -> None:
    app = chat_app()
    app.channel("full", max_subscribers=1)
    app.channel("small", publish="clients", max_message_size=10)

    async def scenario(server: Any, url: str) -> None:
        fresh = await Peer.open(url, connect_cmd=False)
        await refused(ErrorCode.NOT_CONNECTED, fresh.call("subscribe", channel="news"))
        peer = await Peer.open(url)
        await refused(ErrorCode.ALREADY_CONNECTED, peer.call("connect"))
        await refused(ErrorCode.UNKNOWN_CHANNEL, peer.call("subscribe", channel="nope"))
        await refused(ErrorCode.PERMISSION_DENIED, peer.call("publish", channel="news", data=1))
        await refused(ErrorCode.UNKNOWN_OP, peer.call("dance"))
        await refused(ErrorCode.BAD_REQUEST, peer.call("subscribe", channel="bad name"))
        await refused(ErrorCode.BAD_REQUEST, peer.call("publish", channel="quiet"))
        await refused(
            ErrorCode.BAD_REQUEST, peer.call("subscribe", channel="news", since={"offset": -1})
        )
        await refused(ErrorCode.NOT_SUBSCRIBED, peer.call("history", channel="news"))
        await refused(ErrorCode.NOT_SUBSCRIBED, peer.call("unsubscribe", channel="news"))
        await peer.call("subscribe", channel="news")
        await refused(ErrorCode.ALREADY_SUBSCRIBED, peer.call("subscribe", channel="news"))
        await refused(ErrorCode.NOT_AVAILABLE, peer.call("presence", channel="news"))
        await peer.call("subscribe", channel="quiet")
        await refused(ErrorCode.NOT_AVAILABLE, peer.call("history", channel="quiet"))
        await refused(ErrorCode.TOO_LARGE, peer.call("publish", channel="small", data="x" * 20))
        await peer.call("publish", channel="small", data="ok")
        await peer.call("subscribe", channel="full")
        other = await Peer.open(url)
        await refused(ErrorCode.LIMIT_EXCEEDED, other.call("subscribe", channel="full"))
        await refused(ErrorCode.UNAUTHORIZED, other.call("refresh", token="garbage"))
        # the connection stays usable after every refusal
        assert await peer.call("ping") == {}

    run(app, scenario)


def test_garbage_closes_with_4000() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        await peer.ws.send("not json")
        assert (await peer.closed_with())[0] == DisconnectCode.BAD_REQUEST
        binary = await Peer.open(url)
        await binary.ws.send(b"\x00\x01")
        assert (await binary.closed_with())[0] == DisconnectCode.BAD_REQUEST

    run(chat_app(), scenario)


def test_tokens_guard_connect_and_token_channels() -> None:
    app = chat_app()
    app.channel("user:{id}", token=True, publish="clients")

    async def scenario(server: Any, url: str) -> None:
        bad = await Peer.open(url, connect_cmd=False)
        await refused(ErrorCode.UNAUTHORIZED, bad.call("connect", token="x.y.z"))
        assert (await bad.closed_with())[0] == DisconnectCode.UNAUTHORIZED
        old = await Peer.open(url, connect_cmd=False)
        expired = mint(SECRET, "u1", ttl=10, now=time.time() - 60)
        await refused(ErrorCode.TOKEN_EXPIRED, old.call("connect", token=expired))
        assert (await old.closed_with())[0] == DisconnectCode.TOKEN_EXPIRED
        anonymous = await Peer.open(url)
        await refused(ErrorCode.PERMISSION_DENIED, anonymous.call("subscribe", channel="user:1"))
        one = await Peer.open(url, token=mint(SECRET, "1", channels=["user:1"]))
        await one.call("subscribe", channel="user:1")
        await refused(ErrorCode.PERMISSION_DENIED, one.call("subscribe", channel="user:2"))
        # a subscription token for one channel, for the same user
        sub_token = mint(SECRET, "1", channels=["user:2"])
        await one.call("subscribe", channel="user:2", token=sub_token)
        await one.call("publish", channel="user:2", data="allowed by the subscription token")
        await refused(
            ErrorCode.PERMISSION_DENIED, anonymous.call("publish", channel="user:1", data=1)
        )
        stranger = mint(SECRET, "9", channels=["user:3"])
        await refused(
            ErrorCode.PERMISSION_DENIED, one.call("subscribe", channel="user:3", token=stranger)
        )
        # a subscription token that expires ends its subscription, not the connection
        brief = mint(SECRET, "1", channels=["user:4"], ttl=1)
        await one.call("subscribe", channel="user:4", token=brief)
        ended = await one.next_push("unsubscribe")
        assert ended["channel"] == "user:4" and ended["code"] == ErrorCode.TOKEN_EXPIRED
        await refused(ErrorCode.NOT_SUBSCRIBED, one.call("unsubscribe", channel="user:4"))
        await one.call("unsubscribe", channel="user:1")  # the rest of the connection goes on

    run(app, scenario)


def test_required_token() -> None:
    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url, connect_cmd=False)
        await refused(ErrorCode.UNAUTHORIZED, peer.call("connect"))
        assert (await peer.closed_with())[0] == DisconnectCode.UNAUTHORIZED
        ok = await Peer.open(url, token=mint(SECRET, "u"))
        assert ok.info["user"] == "u"

    run(chat_app(require_token=True), scenario)


def test_token_expiring_on_a_live_connection_closes_it_unless_refreshed() -> None:
    async def scenario(server: Any, url: str) -> None:
        soon = time.time() + 1.2
        lapsing = await Peer.open(url, token=mint(SECRET, "a", ttl=1.2))
        refreshed = await Peer.open(url, token=mint(SECRET, "b", ttl=1.2))
        assert lapsing.info["expires"] is not None and lapsing.info["expires"] >= int(soon) - 1
        result = await refreshed.call("refresh", token=mint(SECRET, "b", ttl=60))
        assert result["expires"] > time.time() + 30
        await refused(
            ErrorCode.UNAUTHORIZED, refreshed.call("refresh", token=mint(SECRET, "other"))
        )
        code, _ = await lapsing.closed_with()
        assert code == DisconnectCode.TOKEN_EXPIRED
        assert await refreshed.call("ping") == {}

    run(chat_app(), scenario)


def test_hooks_decide() -> None:
    app = chat_app()
    stored: list[Any] = []
    joined: list[str] = []

    @app.on_connect
    async def authenticate(ctx: Any) -> ConnectResult:
        name = ctx.request.query.get("name") or (ctx.data or {}).get("name")
        if name == "mallory":
            raise ChannelError(4100, "no mallory")
        return ConnectResult(user=name, info={"via": "hook"})

    async def check(ctx: ChannelContext) -> None:
        if ctx.params["room"] == "secret" and ctx.user != "admin":
            raise ChannelError(1001, "members only")

    async def persist(ctx: ChannelContext) -> Any:
        if ctx.data == "spam":
            raise ChannelError(1002, "no spam")
        stored.append(ctx.data)
        return {"text": ctx.data, "by": ctx.user}

    left: list[str] = []
    gone = asyncio.Event()

    def leave(ctx: ChannelContext) -> None:
        left.append(ctx.user or "")
        gone.set()

    def broken(ctx: ChannelContext) -> None:
        raise RuntimeError("a bug in an observer")

    app.channel(
        "room:{room}",
        publish="clients",
        on_subscribe=check,
        on_publish=persist,
        on_join=lambda ctx: joined.append(ctx.user),
        on_leave=leave,
    )
    app.channel("lounge", on_join=broken, on_leave=broken)

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url + "?name=carol")
        assert peer.info["user"] == "carol"
        await refused(1001, peer.call("subscribe", channel="room:secret"))
        await peer.call("subscribe", channel="room:open")
        assert joined == ["carol"]
        await refused(1002, peer.call("publish", channel="room:open", data="spam"))
        await peer.call("publish", channel="room:open", data="hello")
        pub = await peer.next_push("pub")
        assert pub["data"] == {"text": "hello", "by": "carol"}
        assert stored == ["hello"]
        admin = await Peer.open(url, data={"name": "admin"})
        await admin.call("subscribe", channel="room:secret")
        await admin.call("subscribe", channel="lounge")  # on_join fails: logged, one reply
        assert await admin.call("ping") == {}
        await admin.call("unsubscribe", channel="lounge")
        await admin.close()
        await asyncio.wait_for(gone.wait(), 5)  # on_leave runs for a disconnect too
        assert left == ["admin"]
        bad = await Peer.open(url, connect_cmd=False)
        error = await refused(4100, bad.call("connect", data={"name": "mallory"}))
        assert error.message == "no mallory"
        assert (await bad.closed_with())[0] == DisconnectCode.UNAUTHORIZED

    run(app, scenario)


def test_flood_is_rate_limited_without_hurting_others() -> None:
    app = App()
    app.channel("chat:flood", publish="clients", publish_rate=5, publish_burst=5)

    async def scenario(server: Any, url: str) -> None:
        flooder, polite, listener = [await Peer.open(url) for _ in range(3)]
        await listener.call("subscribe", channel="chat:flood")
        ids = [await flooder.send("publish", channel="chat:flood", data="x") for _ in range(50)]
        replies = [await flooder.reply(i) for i in ids]
        limited = [r for r in replies if "error" in r]
        assert all(r["error"]["code"] == ErrorCode.RATE_LIMITED for r in limited)
        assert 5 <= 50 - len(limited) <= 7  # the burst, plus what the rate refilled meanwhile
        for i in range(5):
            await polite.call("publish", channel="chat:flood", data=f"p{i}")
        got = [p["data"] for p in await listener.pubs(50 - len(limited) + 5)]
        assert [d for d in got if d != "x"] == [f"p{i}" for i in range(5)]

    run(app, scenario)


def _raw_subscriber(port: int, channel: str) -> socket.socket:
    """A subscriber that never reads after subscribing (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /rt/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    from rtserve.protocol.websocket import Opcode, encode_client_frame

    for command in ({"id": 1, "op": "connect"}, {"id": 2, "op": "subscribe", "channel": channel}):
        sock.sendall(encode_client_frame(Opcode.TEXT, json.dumps(command).encode()))
    return sock


@pytest.mark.parametrize("policy", ["disconnect", "drop_oldest", "conflate"])
def test_slow_subscriber_is_handled_by_policy_while_fast_ones_keep_receiving(policy: str) -> None:
    settings = ServerSettings()
    settings.websocket.max_queued_bytes = 64 * 1024
    app = App(settings)
    app.channel("feed", slow_consumer=policy, max_pending=10, conflate_key="k")
    payload = "x" * 20000  # enough to fill the kernel's buffers on loopback too
    count = 600

    async def scenario(server: Any, url: str) -> None:
        fast = await Peer.open(url)
        await fast.call("subscribe", channel="feed")
        slow = await asyncio.to_thread(_raw_subscriber, server.port, "feed")
        hub = app.hub
        for _ in range(500):
            if hub.subscriber_count("feed") == 2:
                break
            await asyncio.sleep(0.01)
        received = 0
        for i in range(count):
            await app.publish("feed", {"k": i % 3, "n": i, "pad": payload})
            while fast.pushes or received < i - 20:  # keep the fast one close behind
                await fast.next_push("pub")
                received += 1
        while received < count:
            pub = await fast.next_push("pub")
            received += 1
        assert pub["data"]["n"] == count - 1  # the fast subscriber got everything
        stats = hub.stats
        if policy == "disconnect":
            assert stats.slow_disconnected == 1
            for _ in range(500):
                if hub.subscriber_count("feed") == 1:
                    break
                await asyncio.sleep(0.01)
            assert hub.subscriber_count("feed") == 1
        elif policy == "drop_oldest":
            assert stats.dropped > 0 and stats.slow_disconnected == 0
        else:
            assert stats.conflated > 0 and stats.slow_disconnected == 0
        slow.close()

    run(app, scenario)


def _read_until(sock: socket.socket, done: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    """Read a raw subscriber's stream (past the 101) until `done(pushes)`, or 5 s without data."""
    from rtserve.protocol.websocket import FrameReader, TextMessage

    reader = FrameReader(masked=False, max_message_size=1 << 22, max_frame_size=1 << 22)
    head = b""
    pushes: list[dict[str, Any]] = []
    sock.settimeout(5.0)
    while not done(pushes):
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        if head is not None:
            head += data
            if b"\r\n\r\n" not in head:
                continue
            data = head.split(b"\r\n\r\n", 1)[1]
            head = None  # type: ignore[assignment]
        for event in reader.feed(data):
            if isinstance(event, TextMessage):
                message = json.loads(event.data)
                if "push" in message:
                    pushes.append(message)
    return pushes


@pytest.mark.parametrize("policy", ["drop_oldest", "conflate"])
def test_held_publications_reach_a_slow_subscriber_when_it_reads_again(policy: str) -> None:
    # Held pushes go out as the connection drains, with no further publication to push them.
    settings = ServerSettings()
    settings.websocket.max_queued_bytes = 64 * 1024
    app = App(settings)
    app.channel("feed", slow_consumer=policy, max_pending=5, conflate_key="k")
    count, keys = 300, 3

    async def scenario(server: Any, url: str) -> None:
        slow = await asyncio.to_thread(_raw_subscriber, server.port, "feed")
        hub = app.hub
        for _ in range(500):
            if hub.subscriber_count("feed") == 1:
                break
            await asyncio.sleep(0.01)
        for i in range(count):  # the subscriber reads nothing meanwhile
            await app.publish("feed", {"k": i % keys, "n": i, "pad": "x" * 20000})
        assert hub.stats.dropped + hub.stats.conflated > 0  # some were held and let go
        latest = set(range(count - keys, count))  # each key's last value

        def got_latest(pushes: list[dict[str, Any]]) -> bool:
            return latest <= {p["data"]["n"] for p in pushes if p["push"] == "pub"}

        pushes = await asyncio.to_thread(_read_until, slow, got_latest)
        seen = [p["data"]["n"] for p in pushes if p["push"] == "pub"]
        assert latest <= set(seen), seen[-10:]
        assert seen == sorted(seen)  # in their queue order
        slow.close()

    run(app, scenario)


def test_publish_api() -> None:
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        await peer.call("subscribe", channel="news")
        base = f"http://127.0.0.1:{server.port}/rt/publish"

        def post(
            body: Any, key: str | None = "k" * 20, path: str = "", headers: Any = None
        ) -> tuple[int, Any]:
            import urllib.error
            import urllib.request

            request = urllib.request.Request(
                base + path, data=json.dumps(body).encode(), method="POST"
            )
            request.add_header("content-type", "application/json")
            if key is not None:
                request.add_header("authorization", f"Bearer {key}")
            for name, value in (headers or {}).items():
                request.add_header(name, value)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        status, body = await asyncio.to_thread(post, {"channel": "news", "data": 1}, None)
        assert status == 401 and body["error"]["code"] == ErrorCode.UNAUTHORIZED
        status, body = await asyncio.to_thread(post, {"channel": "news", "data": 1}, "wrong")
        assert status == 401
        status, body = await asyncio.to_thread(post, {"channel": "nope", "data": 1})
        assert status == 404 and body["error"]["code"] == ErrorCode.UNKNOWN_CHANNEL
        status, body = await asyncio.to_thread(post, {"channel": "news"})
        assert status == 400
        status, body = await asyncio.to_thread(
            post, {"channel": "news", "data": "a", "idempotency_key": "k1"}
        )
        assert status == 200 and body["offset"] == 1
        again = await asyncio.to_thread(
            post, {"channel": "news", "data": "a", "idempotency_key": "k1"}
        )
        assert again == (200, body)  # a retried publish lands once
        header = await asyncio.to_thread(
            post, {"channel": "news", "data": "b"}, headers={"Idempotency-Key": "k2"}
        )
        assert header[1]["offset"] == 2
        status, batch = await asyncio.to_thread(
            post,
            {"publications": [{"channel": "news", "data": "c"}, {"channel": "nope", "data": 0}]},
            path="/batch",
        )
        assert status == 200
        assert batch["results"][0]["offset"] == 3
        assert batch["results"][1]["error"]["code"] == ErrorCode.UNKNOWN_CHANNEL
        assert batch["results"][1]["error"]["temporary"] is False
        assert [p["data"] for p in await peer.pubs(3)] == ["a", "b", "c"]
        await peer.call("ping")
        assert not peer.pushes

    run(app, scenario)


def test_publish_api_is_off_without_a_key() -> None:
    app = App()
    app.channel("news")

    async def scenario(server: Any, url: str) -> None:
        from rtserve.testing import SyncClient

        def post() -> int:
            client = SyncClient("127.0.0.1", server.port)
            return client.request(
                "POST",
                "/rt/publish",
                json={"channel": "news", "data": 1},
                headers={"authorization": "Bearer anything"},
            ).status

        assert await asyncio.to_thread(post) == 403

    run(app, scenario)


def test_publish_from_another_thread() -> None:
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        await peer.call("subscribe", channel="news")
        results: list[Any] = []
        thread = threading.Thread(
            target=lambda: results.append(app.publish_threadsafe("news", "from a thread").result(5))
        )
        thread.start()
        pub = await peer.next_push("pub")
        await asyncio.to_thread(thread.join, 5)
        assert pub["data"] == "from a thread" and results[0].offset == 1

    run(app, scenario)


def test_connect_timeout_and_user_limit() -> None:
    async def scenario(server: Any, url: str) -> None:
        idle = await Peer.open(url, connect_cmd=False)
        token = mint(SECRET, "solo")
        first = await Peer.open(url, token=token)
        second = await Peer.open(url, connect_cmd=False)
        await refused(ErrorCode.LIMIT_EXCEEDED, second.call("connect", token=token))
        assert (await second.closed_with())[0] == DisconnectCode.CONNECTION_LIMIT
        assert (await idle.closed_with())[0] == DisconnectCode.CONNECT_TIMEOUT
        await first.close()
        for _ in range(100):
            try:
                third = await Peer.open(url, token=token)
                break
            except ReplyError:
                await asyncio.sleep(0.02)
        assert third.info["user"] == "solo"

    run(chat_app(connect_timeout=0.3, max_connections_per_user=1), scenario)


def test_server_publish_errors() -> None:
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        with pytest.raises(ChannelError) as info:
            await app.publish("nope", 1)
        assert info.value.code == ErrorCode.UNKNOWN_CHANNEL
        # Data that cannot be sent is refused where it is made, and nothing is published.
        peer = await Peer.open(url)
        await peer.call("subscribe", channel="news")
        cyclic: list[Any] = []
        cyclic.append(cyclic)
        for bad in ({"v": float("nan")}, {"when": object()}, [float("inf")], cyclic):
            with pytest.raises(ChannelError) as info:
                await app.publish("news", bad)
            assert info.value.code == ErrorCode.BAD_REQUEST
            assert "data is not JSON" in str(info.value)
        assert (await app.publish("news", "fine")).offset == 1
        assert (await peer.next_push("pub"))["data"] == "fine"

    run(app, scenario)
    with pytest.raises(RuntimeError):
        app.publish_threadsafe("news", 1)


def test_fields_are_checked_whenever_present_null_included() -> None:
    # token, since, limit and idempotency_key: present means checked (null is not absent).
    async def scenario(server: Any, url: str) -> None:
        fresh = await Peer.open(url, connect_cmd=False)
        await refused(ErrorCode.BAD_REQUEST, fresh.call("connect", token=None))
        await fresh.call("connect")  # the 107 left the connection open and unconnected
        peer = await Peer.open(url)
        await peer.call("subscribe", channel="news")
        for op, fields in [
            ("subscribe", {"channel": "chat:a", "token": None}),
            ("subscribe", {"channel": "chat:a", "since": None}),
            ("history", {"channel": "news", "since": None}),
            ("history", {"channel": "news", "limit": None}),
            ("publish", {"channel": "chat:a", "data": 1, "idempotency_key": None}),
            ("publish", {"channel": "chat:a", "data": 1, "idempotency_key": ""}),
            ("publish", {"channel": "chat:a", "data": 1, "idempotency_key": "k" * 257}),
            ("ping", {"limit": None}),
        ]:
            await refused(ErrorCode.BAD_REQUEST, peer.call(op, **fields))  # type: ignore[arg-type]
        assert await peer.call("history", channel="news", limit=0)
        sent = await peer.call("publish", channel="chat:a", data=1, idempotency_key="k" * 256)
        assert sent["offset"] == 1

    run(chat_app(), scenario)


def test_refresh_to_a_narrower_token_ends_the_subscriptions_it_no_longer_allows() -> None:
    app = chat_app()
    app.channel("user:{team}", token=True, history=10, publish="clients")

    async def scenario(server: Any, url: str) -> None:
        wide = mint(SECRET, "ann", channels=["user:teamx", "user:teamy"])
        peer = await Peer.open(url, token=wide)
        for channel in ("user:teamx", "user:teamy", "news"):
            await peer.call("subscribe", channel=channel)
        # user:teamz by a subscription token of its own: that token alone decides it
        await peer.call(
            "subscribe", channel="user:teamz", token=mint(SECRET, "ann", channels=["user:teamz"])
        )
        await peer.call("refresh", token=mint(SECRET, "ann", channels=["user:teamy"]))
        ended = await peer.next_push("unsubscribe")
        assert ended == {
            "push": "unsubscribe",
            "channel": "user:teamx",
            "code": ErrorCode.PERMISSION_DENIED,
            "message": "token does not allow channel",
        }
        for channel in ("user:teamx", "user:teamy", "user:teamz", "news"):
            await app.publish(channel, channel)
        got = [p["channel"] for p in await peer.pubs(3)]
        assert got == ["user:teamy", "user:teamz", "news"]
        await refused(ErrorCode.NOT_SUBSCRIBED, peer.call("history", channel="user:teamx"))
        await refused(ErrorCode.PERMISSION_DENIED, peer.call("subscribe", channel="user:teamx"))
        await peer.call("ping")
        assert not [p for p in peer.pushes if p["push"] in ("pub", "unsubscribe")]


def test_huge_since_and_limit_get_the_same_answer_on_every_broker() -> None:
    """2**70 as `since` or `limit` is 'after everything' / 'no limit' on both brokers (Redis
    answered 115 with its script's SHA and line: issue 16)."""
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        await peer.call("subscribe", channel="news")
        epoch = ""
        for i in range(3):
            epoch = (await app.publish("news", i)).epoch
        huge = 2**70
        ahead = await peer.call("history", channel="news", since={"offset": huge, "epoch": epoch})
        assert ahead == {"publications": [], "offset": 3, "epoch": epoch}
        every = await peer.call("history", channel="news", limit=huge)
        assert [p["offset"] for p in every["publications"]] == [1, 2, 3]
        await peer.call("unsubscribe", channel="news")
        back = await peer.call("subscribe", channel="news", since={"offset": huge, "epoch": epoch})
        assert back["recovered"] is False and back["offset"] == 3

    run(app, scenario)


def test_a_broker_failure_tells_the_client_nothing_of_the_broker(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """115 says 'broker unavailable'; what failed (a script's SHA and line, the Redis
    address) goes to the log only (issue 16)."""
    from rtserve.broker.base import BrokerError

    app = chat_app()
    detail = "Redis history failed: script: 145e4e54, on @user_script:29 (redis://10.0.0.5)"

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError(detail)

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        await peer.call("subscribe", channel="news")
        monkeypatch.setattr(type(app.hub.broker), "history", failing)
        monkeypatch.setattr(type(app.hub.broker), "publish", failing)
        for call in (
            peer.call("history", channel="news"),
            peer.call("subscribe", channel="chat:a"),
            peer.call("publish", channel="chat:a", data=1),
        ):
            error = await refused(ErrorCode.BROKER_UNAVAILABLE, call)
            assert error.message == "broker unavailable"
        assert detail in caplog.text

    run(app, scenario)


def test_idempotency_keys_are_the_publishers_own() -> None:
    """A client's key does not swallow another client's publish with the same key (issue
    16: the second answered success with the first's offset and was dropped). Keys are per
    token user (across its connections), else per connection; the publish API has its own."""
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        alice, bob = await Peer.open(url), await Peer.open(url)
        await bob.call("subscribe", channel="chat:k")
        first = await alice.call("publish", channel="chat:k", data="a", idempotency_key="msg-1")
        again = await alice.call("publish", channel="chat:k", data="a", idempotency_key="msg-1")
        assert again == first and first["offset"] == 1
        other = await bob.call("publish", channel="chat:k", data="b", idempotency_key="msg-1")
        assert other["offset"] == 2
        assert [(await bob.next_push("pub"))["data"] for _ in range(2)] == ["a", "b"]
        # one token user on two connections shares its keys; another user does not
        carol = [await Peer.open(url, token=mint(SECRET, user="carol")) for _ in range(2)]
        dave = await Peer.open(url, token=mint(SECRET, user="dave"))
        c1 = await carol[0].call("publish", channel="chat:k", data="c", idempotency_key="k")
        assert await carol[1].call("publish", channel="chat:k", data="c", idempotency_key="k") == c1
        d1 = await dave.call("publish", channel="chat:k", data="d", idempotency_key="k")
        assert (c1["offset"], d1["offset"]) == (3, 4)
        # the server's publish API keeps its own keys
        server_side = await app.publish("chat:k", "s", idempotency_key="msg-1")
        assert server_side.offset == 5

    run(app, scenario)


def test_history_limit_0_over_the_wire_says_whether_since_is_kept() -> None:
    """The client's check 'can I still recover from here?' (`history`, `limit: 0`, `since`)
    gets 112 for a position the history dropped (issue 18), the position otherwise."""
    app = chat_app()

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)
        await peer.call("subscribe", channel="news")
        epoch = ""
        for i in range(8):  # news keeps 5: offsets 4 to 8
            epoch = (await app.publish("news", i)).epoch

        def check(offset: int) -> Awaitable[Any]:
            since = {"offset": offset, "epoch": epoch}
            return peer.call("history", channel="news", since=since, limit=0)

        assert await check(3) == {"publications": [], "offset": 8, "epoch": epoch}
        await refused(ErrorCode.UNRECOVERABLE, check(1))

    run(app, scenario)
