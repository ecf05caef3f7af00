"""Two rtserve servers (two simulated machines) on one Redis: every client sees every
message once and in order, presence spans both, and a client that moves to the other server
picks up where it was (WebSocket with `since`, SSE with Last-Event-ID).

Each server is an App with its own RedisBroker (same Redis, same key prefix: one deployment),
served from its own thread and event loop. Clients are the `websockets` package (Peer) and
http.client. Needs the machine's Redis: skipped without one, failing when CI is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from rtserve import App, ChannelSettings
from rtserve.broker.redis import RedisBroker
from rtserve.testing import ThreadedServer
from rtserve.tokens import mint
from tests.channel_peer import Peer
from tests.support.sse import SSE

SECRET = "a-test-secret-of-32-characters!!"
API_KEY = "k" * 20
WAIT = 10.0  # seconds for anything that should happen at once


def node_app(redis_url: str, prefix: str, name: str) -> App:
    broker = RedisBroker(redis_url, prefix=prefix, node_id=f"{prefix}-{name}")
    app = App(channels=ChannelSettings(token_secret=SECRET, api_key=API_KEY), broker=broker)
    app.channel("room:*", history=100, presence=True, join_leave=True, publish="clients")
    return app


@pytest.fixture
def nodes(redis_url: str, redis_prefix: str) -> Iterator[tuple[ThreadedServer, ThreadedServer]]:
    """Servers A and B, each on its own port, thread and RedisBroker, on the same Redis."""
    with contextlib.ExitStack() as stack:
        a, b = (
            stack.enter_context(ThreadedServer(node_app(redis_url, redis_prefix, name)))
            for name in ("a", "b")
        )
        yield a, b


def ws_url(server: ThreadedServer) -> str:
    return f"ws://127.0.0.1:{server.port}/rt/ws"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Poll `check` (presence is written in the background: no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.02)


def api_publish(server: ThreadedServer, channel: str, data: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{server.url}/rt/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        assert response.status == 200
        return json.loads(response.read())  # type: ignore[no-any-return]


async def no_more_pubs(peer: Peer) -> None:
    """Nothing beyond what was read: a ping's reply comes after any push sent before it."""
    await peer.call("ping")
    assert not [p for p in peer.pushes if p["push"] == "pub"], peer.pushes


def test_clients_on_both_servers_see_every_message_once_in_order_with_presence(
    nodes: tuple[ThreadedServer, ThreadedServer],
) -> None:
    a, b = nodes
    channel = "room:1"
    per_sender = 10

    async def scenario() -> None:
        users = {"ann": a, "bob": a, "cid": b, "dan": b}
        peers = {
            user: await Peer.open(ws_url(server), token=mint(SECRET, user))
            for user, server in users.items()
        }
        for peer in peers.values():
            await peer.call("subscribe", channel=channel)
        ids = {peer.info["client"] for peer in peers.values()}

        async def present_everywhere() -> bool:
            for peer in (peers["ann"], peers["dan"]):  # asked on A and on B
                if (await peer.call("presence", channel=channel))["clients"].keys() != ids:
                    return False
            return True

        await eventually(present_everywhere)
        present = await peers["cid"].call("presence", channel=channel)
        assert sorted(c["user"] for c in present["clients"].values()) == sorted(users)
        for peer in (peers["bob"], peers["cid"]):
            assert await peer.call("presence_stats", channel=channel) == {
                "clients": 4,
                "users": 4,
            }

        async def send(user: str) -> list[int]:
            peer = peers[user]
            return [
                (await peer.call("publish", channel=channel, data=f"{user}-{i}"))["offset"]
                for i in range(per_sender)
            ]

        async def send_api() -> list[int]:
            return [
                (await asyncio.to_thread(api_publish, a, channel, f"api-{i}"))["offset"]
                for i in range(per_sender)
            ]

        # everyone publishes at once, on both servers, and the HTTP API on A
        sent = await asyncio.gather(*(send(user) for user in users), send_api())
        total = per_sender * (len(users) + 1)
        assert sorted(o for offsets in sent for o in offsets) == list(range(1, total + 1))
        for offsets in sent:
            assert offsets == sorted(offsets)  # each sender's own publications in its order
        senders = [*users, "api"]
        offset_of = {
            f"{sender}-{i}": offsets[i]
            for sender, offsets in zip(senders, sent, strict=True)
            for i in range(per_sender)
        }
        for user, peer in peers.items():
            pubs = await peer.pubs(total)
            assert [p["offset"] for p in pubs] == list(range(1, total + 1)), user
            assert {p["data"]: p["offset"] for p in pubs} == offset_of, user
            await no_more_pubs(peer)

        # a client of B leaves: the clients of A are told, and presence on A follows
        await peers["dan"].close()
        for user in ("ann", "bob", "cid"):
            assert (await peers[user].next_push("leave"))["info"]["user"] == "dan"

        async def dan_gone() -> bool:
            clients = (await peers["ann"].call("presence", channel=channel))["clients"]
            return bool(clients.keys() == ids - {peers["dan"].info["client"]})

        await eventually(dan_gone)
        for user in ("ann", "bob", "cid"):
            await peers[user].close()

    run(scenario)


def test_a_client_moving_to_the_other_server_recovers_what_it_missed(
    nodes: tuple[ThreadedServer, ThreadedServer],
) -> None:
    a, b = nodes
    channel = "room:move"

    async def scenario() -> None:
        mover = await Peer.open(ws_url(a))
        stay = await Peer.open(ws_url(b))
        sub = await mover.call("subscribe", channel=channel)
        await stay.call("subscribe", channel=channel)
        for i in range(3):
            await stay.call("publish", channel=channel, data=i)
        seen = [p["offset"] for p in await mover.pubs(3)]
        assert seen == [1, 2, 3]
        mover.ws.transport.abort()  # server A loses it without a close handshake
        for i in range(3, 8):  # published on B while the client is away
            await stay.call("publish", channel=channel, data=i)
        await asyncio.to_thread(api_publish, a, channel, 8)  # and on A
        moved = await Peer.open(ws_url(b))
        result = await moved.call(
            "subscribe", channel=channel, since={"offset": seen[-1], "epoch": sub["epoch"]}
        )
        assert result["recovered"] is True and result["epoch"] == sub["epoch"]
        assert [p["offset"] for p in result["publications"]] == list(range(4, 10))
        assert [p["data"] for p in result["publications"]] == list(range(3, 9))
        await asyncio.to_thread(api_publish, a, channel, "live")  # from the old server
        live = await moved.next_push("pub")
        assert (live["offset"], live["data"]) == (10, "live")
        await no_more_pubs(moved)
        assert [p["offset"] for p in await stay.pubs(10)] == list(range(1, 11))
        await no_more_pubs(stay)
        await moved.close()
        await stay.close()

    run(scenario)


def test_sse_resumes_on_the_other_server_with_last_event_id(
    nodes: tuple[ThreadedServer, ThreadedServer],
) -> None:
    a, b = nodes
    channel = "room:sse"
    first = SSE(a.port, f"channel={channel}")
    try:
        epoch = json.loads(first.next("subscribed")["data"])["epoch"]
        for i in range(3):
            b.call(b.app.publish, channel, i)  # published on B, read on A
        pubs = [first.next() for _ in range(3)]
        assert [p["id"] for p in pubs] == [f"{channel}:{i}:{epoch}" for i in (1, 2, 3)]
    finally:
        first.close()
    for i in range(3, 6):  # missed, published on both
        server = a if i % 2 else b
        server.call(server.app.publish, channel, i)
    again = SSE(b.port, f"channel={channel}", {"Last-Event-ID": pubs[-1]["id"]})
    try:
        subscribed = json.loads(again.next("subscribed")["data"])
        assert subscribed["recovered"] is True and subscribed["offset"] == 6
        recovered = [again.next() for _ in range(3)]
        assert [json.loads(p["data"])["data"] for p in recovered] == [3, 4, 5]
        assert [p["id"] for p in recovered] == [f"{channel}:{i}:{epoch}" for i in (4, 5, 6)]
        a.call(a.app.publish, channel, "live")
        live = again.next()
        assert live["id"] == f"{channel}:7:{epoch}"  # nothing repeated before it
        assert json.loads(live["data"])["data"] == "live"
    finally:
        again.close()


def test_a_server_that_stops_takes_its_clients_out_of_presence_with_leaves(
    nodes: tuple[ThreadedServer, ThreadedServer],
) -> None:
    a, b = nodes
    channel = "room:stop"

    async def scenario() -> None:
        here = await Peer.open(ws_url(b), token=mint(SECRET, "here"))
        gone = await Peer.open(ws_url(a), token=mint(SECRET, "gone"))
        await here.call("subscribe", channel=channel)
        await gone.call("subscribe", channel=channel)
        assert (await here.next_push("join"))["info"]["user"] == "gone"

        async def both_present() -> bool:
            return len((await here.call("presence", channel=channel))["clients"]) == 2

        await eventually(both_present)
        await asyncio.to_thread(a.stop)  # a graceful shutdown of server A
        assert (await here.next_push("leave"))["info"]["user"] == "gone"
        present = await here.call("presence", channel=channel)
        assert [c["user"] for c in present["clients"].values()] == ["here"]
        await here.close()

    run(scenario)


def test_disconnecting_a_user_reaches_their_connections_on_every_server(
    nodes: tuple[ThreadedServer, ThreadedServer],
) -> None:
    """`app.disconnect(user)` on A ends the user's WebSocket on A and SSE stream on B (4005);
    other users stay."""
    a, b = nodes
    bob, alice = mint(SECRET, "bob"), mint(SECRET, "alice")
    stream = SSE(b.port, f"channel=room:x&token={bob}")
    try:
        stream.next("subscribed")

        async def on_a() -> None:  # runs on A's loop
            await a.app.disconnect("bob", "banned")

        async def scenario() -> None:
            bob_ws = await Peer.open(ws_url(a), token=bob)
            alice_ws = await Peer.open(ws_url(b), token=alice)
            await asyncio.to_thread(a.call, on_a)
            assert await bob_ws.closed_with() == (4005, "banned")
            await alice_ws.call("subscribe", channel="room:x")  # still served
            await alice_ws.close()

        run(scenario)
        error = stream.next("error")
        assert json.loads(error["data"]) == {"code": 4005, "message": "banned"}
        with pytest.raises(EOFError):
            stream.event()  # the stream ended
    finally:
        stream.close()
