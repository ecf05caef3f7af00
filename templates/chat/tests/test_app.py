"""The chat, end to end: a live server and clients speaking the channel protocol.

The tests are plain functions; each runs its client code with asyncio.run (see `run`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import pytest

from rtserve.client import Client, ClientError, Join, Leave, Publication, Subscription
from rtserve.testing import SyncClient

ROOM = "chat:lobby"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 10))


async def receive(sub: Subscription) -> Publication:
    return await asyncio.wait_for(sub.__anext__(), 5)


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met within 5 s")


def user(url: str, name: str) -> Client:
    return Client(url, data={"name": name})


def test_page_and_script_are_served(rtserve_client: SyncClient) -> None:
    page = rtserve_client.get("/")
    assert page.status == 200 and "/rtserve.js" in page.text
    assert page.headers["x-frame-options"] == "DENY"  # no other site may frame it
    for path in ("/rtserve.js", "/static/chat.js", "/static/style.css", "/favicon.ico"):
        assert rtserve_client.get(path).status == 200, path


def test_two_clients_chat(ws_url: str) -> None:
    async def scenario() -> None:
        events: list[object] = []  # Ada's join and leave events
        async with user(ws_url, "Ada") as ada:
            ada_sub = await ada.subscribe(ROOM, on_presence=events.append)
            async with user(ws_url, " Bob ") as bob:
                bob_sub = await bob.subscribe(ROOM)
                await eventually(lambda: any(isinstance(e, Join) for e in events))
                assert [e.info.user for e in events if isinstance(e, Join)] == ["Bob"]

                await ada.publish(ROOM, {"text": "  hi Bob  "})
                for sub in (bob_sub, ada_sub):  # everyone gets it, the author too
                    pub = await receive(sub)
                    assert pub.data["text"] == "hi Bob"  # trimmed
                    assert pub.data["name"] == "Ada"  # stamped by on_publish
                    assert datetime.fromisoformat(pub.data["time"]).tzinfo is not None
                    assert pub.info is not None and pub.info.user == "Ada"

                await bob.publish(ROOM, {"text": "hello Ada"})
                assert (await receive(ada_sub)).data["name"] == "Bob"

                online = await ada.presence(ROOM)
                assert sorted(c.info["name"] for c in online.values() if c.info) == ["Ada", "Bob"]
            await eventually(lambda: any(isinstance(e, Leave) for e in events))

    run(scenario())


def test_history_after_reconnect(ws_url: str) -> None:
    async def scenario() -> None:
        async with user(ws_url, "Ada") as ada:
            await ada.publish(ROOM, {"text": "one"})
            async with user(ws_url, "Bob") as bob:
                position = (await bob.subscribe(ROOM)).position
            # Bob is away while Ada goes on.
            await ada.publish(ROOM, {"text": "two"})
            await ada.publish(ROOM, {"text": "three"})
            async with user(ws_url, "Bob") as bob:
                sub = await bob.subscribe(ROOM, since=position)
                assert [(await receive(sub)).data["text"] for _ in range(2)] == ["two", "three"]
                assert sub.recovered is True
                history = await bob.history(ROOM)
                assert [p.data["text"] for p in history.publications] == ["one", "two", "three"]

    run(scenario())


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"text": "   "}, 1002),
        ({"text": ""}, 1002),
        ("just a string", 1002),
        ({"text": "x" * 1001}, 1003),
    ],
)
def test_bad_messages_are_refused(ws_url: str, data: Any, code: int) -> None:
    async def scenario() -> None:
        async with user(ws_url, "Ada") as ada:
            sub = await ada.subscribe(ROOM)
            with pytest.raises(ClientError) as refused:
                await ada.publish(ROOM, data)
            assert refused.value.code == code
            await ada.publish(ROOM, {"text": "still here"})
            assert (await receive(sub)).data["text"] == "still here"  # nothing else was sent

    run(scenario())


def test_connect_needs_a_name(ws_url: str) -> None:
    async def scenario() -> None:
        for data in (None, {}, {"name": "  "}, {"name": "x" * 33}):
            client = Client(ws_url, data=data, reconnect=False)
            with pytest.raises(ClientError) as refused:
                await client.connect()
            assert refused.value.code == 1001
            await client.close()

    run(scenario())
