"""The dashboard, end to end: the background task publishes, a subscriber sees the samples.

The tests are plain functions; each runs its client code with asyncio.run (see `run`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

import pytest

from rtserve import App
from rtserve.client import Client, ClientError, Publication, Subscription
from rtserve.testing import SyncClient, serve_app

CHANNEL = "metrics:system"
FIELDS = {
    "tick",
    "time",
    "load1",
    "load5",
    "load15",
    "cpu_percent",
    "mem_total",
    "mem_available",
    "mem_used_percent",
    "viewers",
}


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 15))


async def receive(sub: Subscription) -> Publication:
    return await asyncio.wait_for(sub.__anext__(), 5)


def test_page_and_script_are_served(rtserve_client: SyncClient) -> None:
    page = rtserve_client.get("/")
    assert page.status == 200 and "/rtserve.js" in page.text
    assert page.headers["x-frame-options"] == "DENY"  # no other site may frame it
    for path in ("/rtserve.js", "/static/dashboard.js", "/static/style.css", "/favicon.ico"):
        assert rtserve_client.get(path).status == 200, path


def test_subscriber_gets_metrics(ws_url: str) -> None:
    async def scenario() -> None:
        async with Client(ws_url) as client:
            sub = await client.subscribe(CHANNEL, fill_gaps=False)  # conflated: skips are fine
            first = await receive(sub)
            second = await receive(sub)
        for pub in (first, second):
            assert set(pub.data) == FIELDS
            assert pub.info is None  # published by the server, not by a client
            assert isinstance(pub.data["time"], float)
            assert pub.data["viewers"] >= 1  # this client is watching
        assert second.data["tick"] > first.data["tick"] >= 1
        assert 0.5 < second.data["time"] - first.data["time"] < 2.5  # about a second apart

    run(scenario())


def test_new_subscriber_gets_the_recent_past(ws_url: str) -> None:
    async def scenario() -> None:
        async with Client(ws_url) as client:
            sub = await client.subscribe(CHANNEL, fill_gaps=False)
            await receive(sub)
            history = await client.history(CHANNEL)
        assert history.publications
        assert set(history.publications[-1].data) == FIELDS

    run(scenario())


def test_clients_cannot_publish(ws_url: str) -> None:
    async def scenario() -> None:
        async with Client(ws_url) as client:
            with pytest.raises(ClientError) as refused:
                await client.publish(CHANNEL, {"cpu_percent": 0})
            assert refused.value.code == 103  # the rule's publish: server (the default)

    run(scenario())


def test_a_page_can_ask_for_one_machines_samples(ws_url: str) -> None:
    host = socket.gethostname()  # the `host` tag app.py puts on each sample

    async def scenario() -> None:
        async with Client(ws_url) as client:
            mine = await client.subscribe(CHANNEL, fill_gaps=False, filter={"eq": ["host", host]})
            pub = await receive(mine)
            assert pub.tags == {"host": host}
        async with Client(ws_url) as client:
            other = {"eq": ["host", "another machine"]}
            await client.subscribe(CHANNEL, fill_gaps=False, filter=other)
            history = await client.history(CHANNEL)  # the subscription's filter applies
            assert history.publications == [] and history.position.offset >= 1

    run(scenario())


def test_the_task_stops_with_the_server(app: App) -> None:
    def metrics_tasks() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "dashboard-metrics"]

    async def scenario() -> None:
        async with serve_app(app):
            assert len(metrics_tasks()) == 1
        assert metrics_tasks() == []

    run(scenario())
