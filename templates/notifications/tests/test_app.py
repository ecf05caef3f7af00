"""Notifications, end to end: tokens, per-user channels, and sending over HTTP.

The tests are plain functions; each runs its client code with asyncio.run (see `run`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from rtserve import App
from rtserve.broker import BrokerError, MemoryBroker
from rtserve.client import Client, ClientError, Publication, Subscription
from rtserve.config.project import build_app, load_project
from rtserve.testing import SyncClient, ThreadedServer
from rtserve.tokens import mint, verify

PROJECT = Path(__file__).resolve().parent.parent


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 10))


async def receive(sub: Subscription, timeout: float = 5) -> Publication:
    return await asyncio.wait_for(sub.__anext__(), timeout)


def token(app: App, user: str) -> str:
    """A token for `user`, minted as your login would (the tests do not rely on /token)."""
    return mint(app.hub.settings.secrets()[0], user, channels=[f"user:{user}"])


def api_key(app: App) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.hub.settings.api_keys()[0]}"}


def test_page_and_script_are_served(rtserve_client: SyncClient) -> None:
    page = rtserve_client.get("/")
    assert page.status == 200 and "/rtserve.js" in page.text
    assert page.headers["x-frame-options"] == "DENY"  # no other site may frame it
    for path in ("/rtserve.js", "/static/notifications.js", "/static/style.css", "/favicon.ico"):
        assert rtserve_client.get(path).status == 200, path


def test_each_user_gets_only_their_own(app: App, rtserve_client: SyncClient, ws_url: str) -> None:
    http = rtserve_client
    alice_token, bob_token = token(app, "alice"), token(app, "bob")

    async def scenario() -> None:
        async with (
            Client(ws_url, token=alice_token) as alice,
            Client(ws_url, token=bob_token) as bob,
        ):
            assert (alice.user, bob.user) == ("alice", "bob")
            alice_sub = await alice.subscribe("user:alice")
            bob_sub = await bob.subscribe("user:bob")
            with pytest.raises(ClientError) as refused:  # bob's token does not name alice's
                await bob.subscribe("user:alice")
            assert refused.value.code == 103

            sent = await asyncio.to_thread(
                http.post,
                "/notify/alice",
                json={"title": "Hi Alice", "body": "one"},
                headers=api_key(app),
            )
            assert sent.status == 200 and sent.json()["channel"] == "user:alice"
            pub = await receive(alice_sub)
            assert pub.data["title"] == "Hi Alice" and pub.data["body"] == "one"
            assert pub.data["id"] and pub.data["time"] > 0

            with pytest.raises(TimeoutError):  # nothing for bob
                await receive(bob_sub, timeout=0.3)
            await asyncio.to_thread(
                http.post, "/notify/bob", json={"title": "Hi Bob"}, headers=api_key(app)
            )
            assert (await receive(bob_sub)).data["title"] == "Hi Bob"  # his first is his own

    run(scenario())


def test_publish_api_reaches_the_user(app: App, rtserve_client: SyncClient, ws_url: str) -> None:
    alice_token = token(app, "alice")

    async def scenario() -> None:
        async with Client(ws_url, token=alice_token) as alice:
            sub = await alice.subscribe("user:alice")
            answer = await asyncio.to_thread(
                rtserve_client.post,
                "/rt/publish",
                json={"channel": "user:alice", "data": {"title": "from the API"}},
                headers=api_key(app),
            )
            assert answer.status == 200, answer.text
            assert (await receive(sub)).data == {"title": "from the API"}

    run(scenario())


def test_history_for_a_page_opened_later(app: App, rtserve_client: SyncClient, ws_url: str) -> None:
    for n in (1, 2):
        sent = rtserve_client.post("/notify/alice", json={"title": f"n{n}"}, headers=api_key(app))
        assert sent.status == 200
    alice_token = token(app, "alice")

    async def scenario() -> None:
        async with Client(ws_url, token=alice_token) as alice:
            await alice.subscribe("user:alice")
            history = await alice.history("user:alice")
            assert [p.data["title"] for p in history.publications] == ["n1", "n2"]

    run(scenario())


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"title": "x"}, 401),
        ({"Authorization": "Bearer wrong"}, {"title": "x"}, 401),
        (None, {"body": "no title"}, 400),
        (None, ["not", "an", "object"], 400),
        (None, {"title": "x", "url": 7}, 400),
    ],
)
def test_notify_refuses(
    app: App, rtserve_client: SyncClient, headers: dict[str, str] | None, body: Any, status: int
) -> None:
    sent = rtserve_client.post(
        "/notify/alice", json=body, headers=api_key(app) if headers is None else headers
    )
    assert sent.status == status, sent.text
    bad_user = rtserve_client.post("/notify/a:b", json={"title": "x"}, headers=api_key(app))
    assert bad_user.status == 400


class BrokerInAnOutage(MemoryBroker):
    """A broker that cannot publish, as when Redis is down."""

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        raise BrokerError("publish failed: connection refused (a test)")


def test_notify_during_a_broker_outage(app: App) -> None:
    """503 with a body that says to retry, as the publish API answers; not a 500."""
    app.hub.broker = BrokerInAnOutage()
    with ThreadedServer(app) as server, server.client() as http:
        sent = http.post("/notify/alice", json={"title": "x"}, headers=api_key(app))
    assert sent.status == 503, sent.text
    assert "try again" in sent.json()["error"]["detail"]
    assert "connection refused" not in sent.text  # what failed is for the log, not the client


def test_connect_needs_a_token(ws_url: str) -> None:
    async def scenario() -> None:
        client = Client(ws_url, reconnect=False)
        with pytest.raises(ClientError) as refused:
            await client.connect()
        assert refused.value.code == 101
        await client.close()

    run(scenario())


def test_dev_token_route() -> None:
    dev_secret = "dev-only-secret-for-the-tests-0123456789"
    app = build_app(*load_project(PROJECT, env={"RTSERVE_TOKEN_SECRET": dev_secret}))
    with ThreadedServer(app) as server, server.client() as http:
        answer = http.get("/token?user=alice")
        assert answer.status == 200, answer.text
        claims = verify(dev_secret, answer.json()["token"])
        assert claims.user == "alice" and list(claims.channels) == ["user:alice"]
        assert http.get("/token?user=a:b").status == 400
        assert http.get("/token").status == 400


def test_dev_token_route_is_off_with_a_real_secret() -> None:
    real = {"RTSERVE_TOKEN_SECRET": "a-real-secret-of-more-than-32-characters"}
    app = build_app(*load_project(PROJECT, env=real))
    with ThreadedServer(app) as server, server.client() as http:
        assert http.get("/token?user=alice").status == 404
