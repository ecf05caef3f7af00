"""SSE streams on a fan-out's shared path (rtserve.realtime.sse_shared): a chunked HTTP/1.1
stream with nothing queued or held back takes the publication's shared chunk by reference
(written at the end of the turn), counted as its own write would be; whatever follows it in
the turn goes behind it in one write; the others (paused, closed, HTTP/1.0) get `deliver`."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace
from typing import Any

from rtserve import App, ChannelSettings
from rtserve.protocol.http11 import encode_chunk
from rtserve.realtime.outbound import Outbound
from rtserve.realtime.sse import SSEStream
from rtserve.realtime.sse_shared import BLOCKED, DIRECT, share_event
from rtserve.server.state import ServerStats
from rtserve.testing import serve_app


def make_app() -> App:
    app = App(channels=ChannelSettings(sse_heartbeat=3600))
    app.channel("a")
    app.channel("b")
    return app


class Client:
    """A raw EventSource: the bytes as they come, chunk framing included."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seen = b""

    async def until(self, marker: bytes) -> bytes:
        while marker not in self.seen:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, f"closed before {marker!r}: {self.seen!r}"
            self.seen += data
        return self.seen

    def close(self) -> None:
        self.writer.close()


async def open_stream(port: int, query: str, version: str = "1.1") -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /rt/sse?{query} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    client = Client(reader, writer)
    await client.until(b"event: subscribed")
    return client


async def streams(server: Any, count: int, app: App, *channels: str) -> list[SSEStream]:
    """The server's streams, once `count` of them stream and may take shared chunks (one
    publication per channel first: past the new subscribers' floors)."""
    for channel in channels:
        await app.publish(channel, "past the floors")
    for _ in range(200):
        found = [s for s in server.state.long_lived if isinstance(s, SSEStream)]
        if len(found) == count and all(s.direct_after == DIRECT for s in found):
            return found
        await asyncio.sleep(0.01)
    raise AssertionError("streams not on the shared path")


def test_a_streaming_sse_stream_takes_the_shared_chunk_counted_as_its_own_write() -> None:
    async def main() -> None:
        app = make_app()
        async with serve_app(app) as server:
            one, two = (
                await open_stream(server.port, "channel=a"),
                await open_stream(server.port, "channel=a"),
            )
            found = await streams(server, 2, app, "a")
            assert server.state is not None
            stats = server.state.stats
            sent, frames = stats.bytes_sent, stats.ws_frames_sent
            deliveries = app.hub.stats.deliveries
            before = [(s.wire.bytes_out, s.exchange.response_bytes) for s in found]  # type: ignore[union-attr]
            await app.publish("a", {"i": 1})
            assert all(s.direct_after not in (DIRECT, BLOCKED) for s in found)  # taken
            shared = found[0].shared
            assert shared is not None and shared is found[1].shared and not shared.written
            for client in (one, two):
                await client.until(b'"i":1')
            event = shared.event
            assert encode_chunk(event) in one.seen and encode_chunk(event) in two.seen
            assert b"event: pub\n" in event and b'"channel":"a"' in event
            assert stats.bytes_sent - sent == 2 * len(shared.frame)
            assert stats.ws_frames_sent == frames  # an SSE chunk is no WebSocket frame
            for stream, (out, body) in zip(found, before, strict=True):
                assert stream.wire is not None
                assert stream.wire.bytes_out - out == len(shared.frame)
                assert stream.exchange.response_bytes - body == len(event)
            assert app.hub.stats.deliveries - deliveries == 2
            one.close()
            two.close()

    asyncio.run(main())


def test_what_follows_a_taken_chunk_in_the_turn_goes_behind_it_in_one_chunk() -> None:
    async def main() -> None:
        app = make_app()
        async with serve_app(app) as server:
            client = await open_stream(server.port, "channel=a&channel=b")
            (stream,) = await streams(server, 1, app, "a", "b")
            assert server.state is not None
            stats = server.state.stats
            sent, out = stats.bytes_sent, stream.wire.bytes_out  # type: ignore[union-attr]
            await app.publish("a", {"i": 1})  # taken directly
            shared = stream.shared
            assert shared is not None
            await app.publish("b", {"i": 2})  # the same turn: moves the first into the queue
            await app.publish("a", {"i": 3})
            stream.beat()  # a ping behind them
            assert stream.shared is None and stream.direct_after == BLOCKED
            await client.until(b": ping")
            events = client.seen[client.seen.index(shared.event) :]
            body = events[: events.index(b": ping\n\n") + len(b": ping\n\n")]
            # One chunk: the moved event, the two after it and the ping, in order.
            assert client.seen.count(b"%x\r\n" % len(body) + body + b"\r\n") == 1
            assert [
                json.loads(line[6:])["data"]["i"]
                for line in body.split(b"\n")
                if line.startswith(b"data: ")
            ] == [1, 2, 3]
            assert stats.bytes_sent - sent == len(encode_chunk(body))  # counted once
            assert stream.wire.bytes_out - out == len(encode_chunk(body))  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
            assert stream.direct_after == DIRECT  # back on the shared path once written
            client.close()

    asyncio.run(main())


def test_an_http10_stream_takes_no_shared_chunk() -> None:
    async def main() -> None:
        app = make_app()
        async with serve_app(app) as server:
            client = await open_stream(server.port, "channel=a", version="1.0")
            for _ in range(100):
                assert server.state is not None
                found = [s for s in server.state.long_lived if isinstance(s, SSEStream)]
                if found and found[0]._running:
                    break
                await asyncio.sleep(0.01)
            (stream,) = found
            assert stream.wire is None  # no chunked body to share
            await app.publish("a", {"i": 1})
            assert stream.direct_after == BLOCKED and stream.shared is None
            await client.until(b'"i":1')
            assert b"\r\n" not in client.seen.partition(b"\r\n\r\n")[2]  # not chunked
            client.close()

    asyncio.run(main())


def test_a_paused_or_closed_connection_gets_deliver_instead() -> None:
    def stream(**wire: Any) -> Any:
        exchange = SimpleNamespace(response_bytes=0, state=SimpleNamespace(stats=ServerStats()))
        fields = {"writing_paused": False, "closed": False, **wire}
        conn = SimpleNamespace(transport=object(), bytes_out=0, **fields)
        return SimpleNamespace(direct_after=DIRECT, shared=None, wire=conn, exchange=exchange)

    async def main() -> None:
        open_, paused, closed = stream(), stream(writing_paused=True), stream(closed=True)
        blocked = stream()
        blocked.direct_after = BLOCKED
        message = Outbound(b'{"push":"pub"}', 1, channel="a", epoch="e")
        subscribers = [open_, paused, closed, blocked]
        assert share_event(subscribers, message) == [paused, closed, blocked]
        assert open_.shared is not None and open_.shared.transports == [open_.wire.transport]
        assert open_.wire.bytes_out == len(encode_chunk(message.sse))
        assert open_.exchange.response_bytes == len(message.sse)
        for other in (paused, closed, blocked):
            assert other.shared is None and other.wire.bytes_out == 0
        # One chunk per turn: a second publication of the turn is for `deliver`.
        assert share_event(subscribers, message) == subscribers

    asyncio.run(main())
    # Outside a running loop nothing is taken.
    alone = stream()
    assert share_event([alone], Outbound(b"{}", 1, channel="a")) == [alone]


def test_a_client_that_stops_reading_leaves_the_shared_path_for_its_channel_policy() -> None:
    # Taken directly while the connection keeps up; once it pauses, the full path: the
    # outbox holds (drop_oldest) and, read again, the client gets the rest in order.
    from rtserve.realtime import hub as hub_module

    taken: list[int] = []

    def counting(streams: Any, message: Outbound) -> Any:
        others = share_event(streams, message)
        taken.append(len(streams) - len(others))
        return others

    async def main() -> None:
        app = App(channels=ChannelSettings(sse_heartbeat=3600))
        app.channel("backlog", slow_consumer="drop_oldest", max_pending=10)
        async with serve_app(app) as server:
            client = await open_stream(server.port, "channel=backlog")
            (stream,) = await streams(server, 1, app, "backlog")
            big = "x" * 60000
            for i in range(200):
                await app.publish("backlog", {"i": i, "pad": big})
                await asyncio.sleep(0)  # one publication per turn
            assert taken[0] == 1 and 0 in taken  # shared first, then the full path
            assert app.hub.stats.dropped > 0
            await client.until(b'"i":199,')
            seen = [int(i) for i in re.findall(rb'"i":(\d+),', client.seen)]
            assert seen == sorted(set(seen)) and seen[-1] == 199 and len(seen) < 200
            await asyncio.sleep(0.05)
            assert stream.direct_after == DIRECT  # caught up: back on the shared path
            client.close()

    original = hub_module.share_event  # type: ignore[attr-defined]
    hub_module.share_event = counting  # type: ignore[attr-defined]
    try:
        asyncio.run(main())
    finally:
        hub_module.share_event = original  # type: ignore[attr-defined]
