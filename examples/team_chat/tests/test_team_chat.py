"""The team chat end to end: a live server on a free port, clients speaking the channel
protocol (rtserve.client), and the HTTP route that pages the stored messages.

Every test has its own SQLite file (pytest's tmp_path) and bounds its waits by TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rtserve.client import Client, ClientError, Join, Publication, Subscription
from rtserve.testing import ThreadedServer

HERE = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0
ROOM = "general"
CHAT = f"chat:{ROOM}"
TYPING = f"typing:{ROOM}"


def load(name: str) -> ModuleType:
    """One of the example's modules, under a name of its own (projects share `app`)."""
    spec = importlib.util.spec_from_file_location(f"team_chat_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


chat = load("app")


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 3 * TIMEOUT))


def ws_url(server: ThreadedServer) -> str:
    return f"ws://127.0.0.1:{server.port}/rt/ws"


def user(server: ThreadedServer, name: str) -> Client:
    return Client(ws_url(server), data={"name": name}, reconnect=False, request_timeout=TIMEOUT)


async def receive(sub: Subscription) -> Publication:
    return await asyncio.wait_for(sub.__anext__(), TIMEOUT)


def get(server: ThreadedServer, path: str) -> tuple[int, Any]:
    """GET `path`: the status and the JSON body (None when it is not JSON)."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, None


def texts(page: dict[str, Any]) -> list[str]:
    return [message["text"] for message in page["messages"]]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "chat.db"


def test_the_page_and_its_scripts_are_served(db: Path) -> None:
    with ThreadedServer(chat.create_app(db)) as server:
        with urllib.request.urlopen(f"{server.url}/", timeout=TIMEOUT) as page:
            body = page.read()
        assert b'<script src="/rtserve.js">' in body and b"/static/team_chat.js" in body
        for path in ("/rtserve.js", "/static/team_chat.js", "/static/style.css"):
            with urllib.request.urlopen(server.url + path, timeout=TIMEOUT) as response:
                assert response.status == 200 and response.read(), path


def test_published_messages_are_stored_and_paged(db: Path) -> None:
    with ThreadedServer(chat.create_app(db)) as server:
        delivered: list[dict[str, Any]] = []

        async def scenario() -> None:
            async with user(server, "Ada") as ada:
                sub = await ada.subscribe(CHAT)
                for n in range(1, 6):
                    await ada.publish(CHAT, {"text": f"  message {n} "})
                delivered.extend([(await receive(sub)).data for _ in range(5)])

        run(scenario())
        # What members got is what was stored: trimmed, stamped, with growing ids.
        assert [m["text"] for m in delivered] == [f"message {n}" for n in range(1, 6)]
        assert all(m["name"] == "Ada" and m["time"].endswith("+00:00") for m in delivered)
        ids = [m["id"] for m in delivered]
        assert ids == sorted(ids) and len(set(ids)) == 5

        status, newest = get(server, f"/rooms/{ROOM}/messages?limit=2")
        assert status == 200 and newest["room"] == ROOM
        assert newest["messages"] == delivered[3:] and newest["more"] is True
        before = newest["messages"][0]["id"]
        status, older = get(server, f"/rooms/{ROOM}/messages?before={before}&limit=2")
        assert texts(older) == ["message 2", "message 3"] and older["more"] is True
        before = older["messages"][0]["id"]
        status, oldest = get(server, f"/rooms/{ROOM}/messages?before={before}&limit=2")
        assert texts(oldest) == ["message 1"] and oldest["more"] is False
        # Without a limit, a page of 50; another room has its own messages (none).
        assert texts(get(server, f"/rooms/{ROOM}/messages")[1]) == [m["text"] for m in delivered]
        assert get(server, "/rooms/other/messages")[1] == {
            "room": "other",
            "messages": [],
            "more": False,
        }
        for query in ("limit=0", "limit=201", "limit=x", "before=0", "before=-3"):
            assert get(server, f"/rooms/{ROOM}/messages?{query}")[0] == 400, query
        assert get(server, "/rooms/no%20spaces/messages")[0] == 400


def test_messages_survive_a_restart(db: Path) -> None:
    async def say(server: ThreadedServer, *lines: str) -> None:
        async with user(server, "Ada") as ada:
            for line in lines:
                await ada.publish(CHAT, {"text": line})

    with ThreadedServer(chat.create_app(db)) as server:
        run(say(server, "before one", "before two"))
    # A new app on the same file: the channel starts afresh, the database does not.
    with ThreadedServer(chat.create_app(db)) as server:

        async def after_restart() -> None:
            async with user(server, "Bob") as bob:
                await bob.subscribe(CHAT)
                history = await bob.history(CHAT)
                assert history.publications == []  # the channel's history is in memory
            await say(server, "after")

        run(after_restart())
        status, page = get(server, f"/rooms/{ROOM}/messages")
    assert status == 200
    assert texts(page) == ["before one", "before two", "after"]
    assert page["messages"][0]["id"] < page["messages"][2]["id"]


def test_typing_events_are_delivered_and_not_kept(db: Path) -> None:
    with ThreadedServer(chat.create_app(db)) as server:

        async def scenario() -> None:
            async with user(server, "Ada") as ada, user(server, "Bob") as bob:
                sub = await bob.subscribe(TYPING)
                # The client's data is replaced by who it is: nothing else gets through.
                await ada.publish(TYPING, {"typing": True, "text": "sneaky"})
                pub = await receive(sub)
                assert pub.data == {"name": "Ada", "typing": True}
                await ada.publish(TYPING, {"typing": False})
                assert (await receive(sub)).data == {"name": "Ada", "typing": False}
                # Rate limited (a burst of 2, then one every 2 s): the third at once is refused.
                with pytest.raises(ClientError) as limited:
                    await ada.publish(TYPING, {"typing": True})
                assert limited.value.code == 111
                # No history: nothing is kept to ask for, and nothing reaches the database.
                with pytest.raises(ClientError) as kept:
                    await bob.history(TYPING)
                assert kept.value.code == 108
                with pytest.raises(ClientError) as large:
                    await bob.publish(TYPING, {"typing": True, "padding": "x" * 100})
                assert large.value.code == 113

        run(scenario())
        assert get(server, f"/rooms/{ROOM}/messages")[1]["messages"] == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"text": ""}, 1002),
        ({"text": " \n\t "}, 1002),
        ({"no": "text"}, 1002),
        ("just a string", 1002),
        ({"text": "x" * 2001}, 1003),  # over MAX_TEXT: refused by on_publish
        ({"text": "x" * 20000}, 113),  # over the rule's max_message_size, before the hook
        ({"text": "hi", "nonce": ""}, 1005),
        ({"text": "hi", "nonce": 42}, 1005),
    ],
)
def test_bad_messages_are_refused_and_not_stored(db: Path, data: Any, code: int) -> None:
    with ThreadedServer(chat.create_app(db)) as server:

        async def scenario() -> None:
            async with user(server, "Ada") as ada:
                sub = await ada.subscribe(CHAT)
                with pytest.raises(ClientError) as refused:
                    await ada.publish(CHAT, data)
                assert refused.value.code == code
                await ada.publish(CHAT, {"text": "x" * 2000})  # the longest that is allowed
                assert len((await receive(sub)).data["text"]) == 2000  # nothing came before

        run(scenario())
        assert [len(text) for text in texts(get(server, f"/rooms/{ROOM}/messages")[1])] == [2000]


def test_a_retry_with_the_same_nonce_is_stored_and_delivered_once(db: Path) -> None:
    with ThreadedServer(chat.create_app(db)) as server:

        async def scenario() -> None:
            async with user(server, "Ada") as ada, user(server, "Bob") as bob:
                sub = await bob.subscribe(CHAT)
                message = {"text": "only once", "nonce": "n-1"}
                first = await ada.publish(CHAT, message, idempotency_key="n-1")
                again = await ada.publish(CHAT, message, idempotency_key="n-1")
                assert again == first
                await ada.publish(CHAT, {"text": "next"})
                assert [(await receive(sub)).data["text"] for _ in range(2)] == [
                    "only once",
                    "next",
                ]

        run(scenario())
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT text, nonce FROM messages ORDER BY id").fetchall()
    assert rows == [("only once", "n-1"), ("next", None)]


def test_presence_shows_two_users(db: Path) -> None:
    with ThreadedServer(chat.create_app(db)) as server:

        async def scenario() -> None:
            bob_joined = asyncio.Event()

            def on_presence(event: object) -> None:
                if isinstance(event, Join) and event.info.user == "Bob":
                    bob_joined.set()

            async with user(server, "Ada") as ada:
                await ada.subscribe(CHAT, on_presence=on_presence)
                async with user(server, "Bob") as bob:
                    await bob.subscribe(CHAT)
                    await asyncio.wait_for(bob_joined.wait(), TIMEOUT)
                    online = await ada.presence(CHAT)
                    names = sorted(c.info["name"] for c in online.values() if c.info)
                    assert names == ["Ada", "Bob"]
                    assert (await bob.presence_stats(CHAT)).users == 2

        run(scenario())


def test_rooms_and_names_are_checked(db: Path) -> None:
    with ThreadedServer(chat.create_app(db)) as server:

        async def scenario() -> None:
            async with user(server, "Ada") as ada:
                for channel in (f"chat:{'x' * 65}", "typing:a+b"):
                    with pytest.raises(ClientError) as refused:
                        await ada.subscribe(channel)
                    assert refused.value.code == 1004, channel
            for data in (None, {"name": "   "}, {"name": "x" * 33}):
                client = Client(ws_url(server), data=data, reconnect=False)
                with pytest.raises(ClientError) as refused:
                    await client.connect()
                assert refused.value.code == 1001
                await client.close()

        run(scenario())
