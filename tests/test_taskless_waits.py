"""A waiting long poll and an idle SSE stream hold no Task and no request parser: their
handlers return (the exchange deferred) and callbacks answer or stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rtserve import App, ChannelSettings
from rtserve.testing import ThreadedServer
from tests.rawhttp import RawClient, get
from tests.support.sse import SSE
from tests.support.waiting import until


def _tasks(server: ThreadedServer) -> int:
    """Tasks alive in the server's loop, besides the one counting them and the serve task."""

    async def count() -> int:
        here = asyncio.current_task()
        return sum(1 for t in asyncio.all_tasks() if t is not here and t.get_coro() is not None)

    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(count(), server.loop).result(5)


def _publish(app: App, server: ThreadedServer, data: Any) -> None:
    assert server.loop is not None
    asyncio.run_coroutine_threadsafe(app.publish("c", data), server.loop).result(5)


def test_waiting_polls_and_idle_streams_hold_no_task() -> None:
    app = App(channels=ChannelSettings(sse_heartbeat=3600))
    app.channel("c", history=10)
    with ThreadedServer(app, access_log=False) as server:
        base = _tasks(server)
        polls = [RawClient(server.port) for _ in range(3)]
        streams = [SSE(server.port, "channel=c") for _ in range(3)]
        try:
            for poll in polls:
                poll.send(get("/rt/poll?channel=c&timeout=30"))
            for stream in streams:
                assert stream.next("subscribed")
            until(lambda: app.hub.subscriber_count("c") == 6, 5, "6 subscribers")
            assert _tasks(server) == base
            _publish(app, server, {"n": 1})
            for poll in polls:
                answer = json.loads(poll.response().body)
                assert answer["channels"]["c"]["publications"][0]["data"] == {"n": 1}
            for stream in streams:
                assert json.loads(stream.next()["data"])["data"] == {"n": 1}
        finally:
            for poll in polls:
                poll.close()
            for stream in streams:
                stream.close()
        until(lambda: app.hub.subscriber_count("c") == 0, 5, "the streams to leave")


def test_a_poll_times_out_with_its_shared_deadline() -> None:
    app = App()
    app.channel("c", history=10)
    with ThreadedServer(app, access_log=False) as server, RawClient(server.port) as poll:
        poll.send(get("/rt/poll?channel=c&timeout=0.2"))
        answer = json.loads(poll.response().body)
        assert answer["channels"]["c"]["publications"] == []
        assert len(app.hub.poll_deadlines) == 0
        assert app.hub.subscriber_count("c") == 0
