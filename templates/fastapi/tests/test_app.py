"""The project, served: the API answers at /api and publishes each new todo to the channel."""

from __future__ import annotations

import asyncio

from rtserve.client import Client
from rtserve.testing import SyncClient, ThreadedServer


def test_page(rtserve_client: SyncClient) -> None:
    response = rtserve_client.get("/")
    assert response.status == 200 and "rtserve.js" in response.text
    assert response.headers["x-frame-options"] == "DENY"


def test_the_api_validates(rtserve_client: SyncClient) -> None:
    assert rtserve_client.post("/api/todos", json={"text": ""}).status == 422
    assert rtserve_client.get("/api/openapi.json").json()["info"]["title"] == "todos"


def test_a_new_todo_reaches_a_subscriber(
    rtserve_server: ThreadedServer, rtserve_client: SyncClient
) -> None:
    async def scenario() -> object:
        async with Client(f"ws://127.0.0.1:{rtserve_server.port}/rt/ws") as client:
            subscription = await client.subscribe("todos")
            answer = await asyncio.to_thread(
                rtserve_client.post, "/api/todos", json={"text": "buy milk"}
            )
            assert answer.status == 201
            publication = await asyncio.wait_for(subscription.__anext__(), 5)
            return publication.data

    data = asyncio.run(asyncio.wait_for(scenario(), 15))
    assert data == {"id": 1, "text": "buy milk"}
    assert rtserve_client.get("/api/todos").json() == [{"id": 1, "text": "buy milk"}]
