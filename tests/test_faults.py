"""Faults during traffic: nothing accepted is lost, clients recover.

- SIGTERM to a serving `rtserve run` while publishers POST /rt/publish and subscribers listen:
  every publication answered 200 before a subscriber saw its close reached that subscriber, in
  order, once; every subscriber is closed with 1001; the server exits 0.
- SIGKILL to one of two workers (`--workers 2` on Redis) while the publish API is busy: the
  killed worker's clients (rtserve.client) reconnect and recover every publication accepted
  meanwhile, in order, once; the other worker's clients stay connected and see no gap.
- Redis killed and restarted while publishing (over HTTP and over the channel protocol): each
  publish is answered 200 / a result (then delivered once, in order) or refused with 503 / 115,
  never accepted and lost; publishing resumes once Redis is back and the subscribers
  (rtserve.client) have every accepted publication.

tests/test_redis_faults.py covers one publish at a time around a Redis outage and a cut
pub/sub connection; tests/test_workers.py a killed worker without traffic. These add the
traffic. Each is bounded (publishing a few seconds; every wait has a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from rtserve import App, ChannelSettings
from rtserve.broker.redis import RedisBroker
from rtserve.client import Client, ClientError, Disconnected, Subscription, Unrecovered
from rtserve.realtime.protocol import ErrorCode
from rtserve.testing import ThreadedServer
from tests.redis_support import PrivateRedis
from tests.support.net import free_port
from tests.support.project_run import Run, alive, answer, make_project
from tests.support.waiting import until

API_KEY = "fault-key-0123456789"
CHANNEL = "feed"
WAIT = 10.0
PROJECT_CHANNELS = """\
channels:
  api_key: {api_key}
  rules:
    - pattern: {channel}
      history: 5000
      history_ttl: 600
      publish: clients
broker: {broker}
"""


# --- helpers --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one publish got: `offset` when accepted, else `error` (and when it was answered)."""

    offset: int | None = None
    error: str | None = None
    at: float = 0.0
    data: str = ""


@dataclass
class Publishing:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def accepted(self) -> list[int]:
        return [o.offset for o in self.outcomes if o.offset is not None]


async def post_publish(port: int, data: Any, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """POST /rt/publish on a connection of its own: (status, JSON body)."""
    body = json.dumps({"channel": CHANNEL, "data": data}).encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(
            (
                f"POST /rt/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no answer ({raw[:60]!r})")
    return int(head[9:12]), json.loads(rest) if rest else {}


async def publish_http(
    port: int, publishing: Publishing, stop: asyncio.Event, interval: float, tag: str
) -> None:
    """Publish until `stop`, recording every outcome; connection errors are outcomes too."""
    seq = 0
    while not stop.is_set() and seq < 2000:
        seq += 1
        try:
            status, body = await post_publish(port, f"{tag}{seq}")
        except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
            outcome = Outcome(error=f"{type(exc).__name__}: {exc}")
        else:
            if status == 200:
                outcome = Outcome(offset=int(body["offset"]))
            else:
                outcome = Outcome(error=f"{status} {body.get('error', body)}")
        outcome.at, outcome.data = time.monotonic(), f"{tag}{seq}"
        publishing.outcomes.append(outcome)
        await asyncio.sleep(interval)


@dataclass
class Watcher:
    """A subscription of rtserve.client read to the end: the offsets it yields, in order."""

    client: Client
    sub: Subscription
    offsets: list[int] = field(default_factory=list)
    data: dict[int, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, url: str) -> Watcher:
        client = Client(url, backoff_min=0.05, backoff_max=0.5, request_timeout=WAIT)
        await client.connect()
        watcher = cls(client, await client.subscribe(CHANNEL))
        watcher.task = asyncio.create_task(watcher._read())
        return watcher

    async def _read(self) -> None:
        while True:
            try:
                async for pub in self.sub:
                    self.offsets.append(pub.offset)
                    self.data[pub.offset] = pub.data
                return
            except Unrecovered as exc:
                self.problems.append(f"unrecovered: {exc}")

    async def wait_for(self, offset: int, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not self.offsets or self.offsets[-1] < offset:
            if time.monotonic() > deadline:
                last = self.offsets[-1] if self.offsets else None
                raise AssertionError(f"offset {offset} not reached in {timeout} s (at {last})")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.client.close()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, WAIT)


def assert_once_in_order(offsets: list[int], start: int, accepted: list[int], who: str) -> None:
    """`offsets` are start+1, start+2, ... with no gap or repeat, and hold every accepted one."""
    assert offsets == list(range(start + 1, start + 1 + len(offsets))), (
        f"{who}: offsets not consecutive: {offsets[:50]}"
    )
    missing = sorted(set(accepted) - set(offsets))
    assert not missing, f"{who}: accepted and not delivered: {missing[:20]}"


# --- (a) SIGTERM during traffic -------------------------------------------------------------


@pytest.fixture
def channel_project(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    started: list[Run] = []

    def start(*args: str, broker: str = "memory") -> Run:
        folder = make_project(tmp_path / "proj")
        with open(folder / "rtserve.yaml", "a") as config:
            config.write(PROJECT_CHANNELS.format(api_key=API_KEY, channel=CHANNEL, broker=broker))
        run = Run(folder, free_port(), "--no-reload", *args)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            run.stop()


@dataclass
class RawSubscriber:
    """A subscriber on the `websockets` package: every pub offset and the close it got."""

    offsets: list[int] = field(default_factory=list)
    close_code: int | None = None
    closed_at: float = 0.0
    start: int = -1


async def raw_subscriber(port: int, ready: asyncio.Event, sub: RawSubscriber) -> None:
    async with connect(f"ws://127.0.0.1:{port}/rt/ws", open_timeout=WAIT) as ws:
        await ws.send(json.dumps({"id": 1, "op": "connect"}))
        await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": CHANNEL}))
        try:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message.get("push") == "pub":
                    sub.offsets.append(int(message["offset"]))
                elif message.get("id") == 2:
                    sub.start = int(message["result"]["offset"])
                    ready.set()
        except ConnectionClosed as exc:
            sub.closed_at = time.monotonic()
            sub.close_code = exc.rcvd.code if exc.rcvd is not None else None


def test_sigterm_during_traffic_loses_nothing_accepted(
    channel_project: Callable[..., Run],
) -> None:
    run = channel_project()
    until(lambda: answer(run.port) == "v1", 15, "the server")
    subscribers = [RawSubscriber() for _ in range(20)]
    publishing = Publishing()

    async def scenario() -> float:
        readies = [asyncio.Event() for _ in subscribers]
        listening = [
            asyncio.create_task(raw_subscriber(run.port, ready, sub))
            for ready, sub in zip(readies, subscribers, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), WAIT)
        stop = asyncio.Event()
        publishers = [
            asyncio.create_task(publish_http(run.port, publishing, stop, 0.005, f"p{i}-"))
            for i in range(4)
        ]
        await asyncio.sleep(1.0)
        signalled = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*listening), 20)
        await asyncio.sleep(0.5)  # publishers meet the closed port
        stop.set()
        await asyncio.wait_for(asyncio.gather(*publishers), 20)
        return signalled

    signalled = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert run.proc.wait(15) == 0, run.output
    accepted = publishing.accepted
    assert len(accepted) >= 20, publishing.outcomes[:5]  # traffic was flowing
    assert sorted(accepted) == list(range(1, len(accepted) + 1))  # one stream, no hole
    before = [o for o in publishing.outcomes if o.at < signalled]
    assert all(o.offset is not None for o in before), [o.error for o in before if o.error]
    for i, sub in enumerate(subscribers):
        assert sub.close_code == 1001, (i, sub.close_code)
        assert sub.start == 0
        # Every accepted publication reached every subscriber: once the server shuts down
        # (and its WebSockets close) it refuses publishes with 503, so nothing is accepted
        # that no one can receive.
        assert_once_in_order(sub.offsets, 0, accepted, f"sub{i}")
    refused = [o.error for o in publishing.outcomes if o.offset is None]
    assert refused, "the publishers never met the stopped server"
    after = [o for o in publishing.outcomes if o.at >= signalled and o.offset is not None]
    print(
        f"\nsigterm: {len(accepted)} accepted ({len(after)} answered after the signal), "
        f"{len(refused)} refused, {len(subscribers)} subscribers closed 1001 with "
        f"{sum(len(s.offsets) for s in subscribers)} deliveries checked"
    )


# --- (b) a worker killed during traffic -----------------------------------------------------


def test_a_worker_killed_during_traffic_its_clients_recover_everything(
    channel_project: Callable[..., Run], redis_url: str, redis_prefix: str
) -> None:
    run = channel_project("--workers", "2", broker=f"{redis_url}?prefix={redis_prefix}")
    run.wait_for(r"worker \d \(pid \d+\) ready in", count=2, timeout=20)
    pids = until(lambda: len(run.note_workers()) == 2 and run.note_workers(), 5, "2 workers")
    url = f"ws://127.0.0.1:{run.port}/rt/ws"
    publishing = Publishing()

    async def scenario() -> list[Watcher]:
        watchers = [await Watcher.start(url) for _ in range(16)]
        try:
            stop = asyncio.Event()
            publishers = [
                asyncio.create_task(publish_http(run.port, publishing, stop, 0.01, f"p{i}-"))
                for i in range(2)
            ]
            await asyncio.sleep(1.0)
            os.kill(pids[0], signal.SIGKILL)
            await asyncio.to_thread(run.wait_for, r"worker \d \(pid \d+\) restarted in", 15)
            await asyncio.sleep(1.0)  # traffic on the restarted pair
            stop.set()
            await asyncio.wait_for(asyncio.gather(*publishers), 20)
            top = max(publishing.accepted)
            for watcher in watchers:
                await watcher.wait_for(top, 15)
            return watchers
        finally:
            for watcher in watchers:
                await watcher.close()

    watchers = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert not alive(pids[0])
    accepted = publishing.accepted
    assert len(accepted) >= 50
    killed = [w for w in watchers if w.client.reconnects]
    others = [w for w in watchers if not w.client.reconnects]
    # SO_REUSEPORT spreads 16 clients over 2 workers (all on one: 2 chances in 65,536)
    assert killed and others, (len(killed), len(others))
    for i, watcher in enumerate(watchers):
        assert not watcher.problems, watcher.problems
        assert watcher.sub.gaps == 0
        assert_once_in_order(watcher.offsets, 0, accepted, f"client {i}")
    for watcher in killed:
        assert watcher.client.reconnects == 1
        assert watcher.sub.recovered is True
    for watcher in others:
        assert watcher.sub.recovered is None  # never had to subscribe again
        assert watcher.sub.duplicates == 0  # nothing came twice from the server
    refused = [o.error for o in publishing.outcomes if o.offset is None]
    # a publish cut by the kill may fail; everything else was accepted
    assert len(refused) <= 4, refused
    print(
        f"\nworker kill: {len(accepted)} accepted, {len(refused)} cut, {len(killed)} clients "
        f"reconnected and recovered ({sum(w.sub.duplicates for w in killed)} repeats dropped), "
        f"{len(others)} undisturbed, {sum(len(w.offsets) for w in watchers)} deliveries checked"
    )


# --- (c) Redis killed and restarted during publishing ---------------------------------------


def redis_app(url: str) -> App:
    broker = RedisBroker(url, prefix="faults", timeout=1.0, reconnect_delay=(0.05, 0.2))
    app = App(channels=ChannelSettings(api_key=API_KEY), broker=broker)
    app.channel(CHANNEL, history=5000, history_ttl=600, publish="clients")
    return app


async def publish_ws(
    url: str, publishing: Publishing, stop: asyncio.Event, interval: float
) -> None:
    """Publish over the channel protocol (rtserve.client) until `stop`."""
    client = Client(url, backoff_min=0.05, backoff_max=0.5, request_timeout=5.0)
    await client.connect()
    seq = 0
    try:
        while not stop.is_set() and seq < 2000:
            seq += 1
            try:
                offset, _epoch = await client.publish(CHANNEL, f"ws{seq}")
            except ClientError as exc:
                outcome = Outcome(error=f"code {exc.code}")
            except (Disconnected, TimeoutError) as exc:
                outcome = Outcome(error=f"{type(exc).__name__}: {exc}")
            else:
                outcome = Outcome(offset=offset)
            outcome.at, outcome.data = time.monotonic(), f"ws{seq}"
            publishing.outcomes.append(outcome)
            await asyncio.sleep(interval)
    finally:
        await client.close()


def test_redis_killed_and_restarted_during_publishing(private_redis: PrivateRedis) -> None:
    app = redis_app(private_redis.url)
    over_http, over_ws = Publishing(), Publishing()

    async def scenario(server: ThreadedServer) -> tuple[list[Watcher], float, float]:
        url = f"ws://127.0.0.1:{server.port}/rt/ws"
        watchers = [await Watcher.start(url) for _ in range(5)]
        try:
            stop = asyncio.Event()
            publishers = [
                asyncio.create_task(publish_http(server.port, over_http, stop, 0.01, "h")),
                asyncio.create_task(publish_ws(url, over_ws, stop, 0.01)),
            ]
            await asyncio.sleep(0.7)
            await asyncio.to_thread(private_redis.kill)
            down = time.monotonic()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(private_redis.start)
            up = time.monotonic()
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*publishers), 20)
            top = max(over_http.accepted + over_ws.accepted)
            for watcher in watchers:
                await watcher.wait_for(top, 15)
            return watchers, down, up
        finally:
            for watcher in watchers:
                await watcher.close()

    with ThreadedServer(app) as server:
        watchers, down, up = asyncio.run(asyncio.wait_for(scenario(server), 60))
        lost = server.app.hub.broker.stats.lost  # type: ignore[attr-defined]

    accepted = sorted(over_http.accepted + over_ws.accepted)
    assert len(accepted) == len(set(accepted)), "an offset was given twice"
    for name, publishing in (("http", over_http), ("ws", over_ws)):
        errors = [o.error for o in publishing.outcomes if o.offset is None]
        # a clear refusal, nothing else: 503 with code 115 over HTTP, 115 over the protocol
        clear = "503" if name == "http" else f"code {ErrorCode.BROKER_UNAVAILABLE}"
        assert all(e is not None and e.startswith(clear) for e in errors), (name, errors[:5])
        if name == "http":
            assert all(str(ErrorCode.BROKER_UNAVAILABLE) in (e or "") for e in errors), errors[:5]
        assert errors, f"{name}: no publish met the outage"
        # accepted while Redis was up only (down..up, with the broker's timeout of 1 s)
        assert any(o.offset is not None and o.at > up for o in publishing.outcomes), name
        assert any(o.offset is not None and o.at < down for o in publishing.outcomes), name
    extra: set[int] = set()
    for i, watcher in enumerate(watchers):
        assert not watcher.problems, watcher.problems
        assert_once_in_order(watcher.offsets, 0, accepted, f"subscriber {i}")
        extra |= set(watcher.offsets) - set(accepted)
    # Delivered and not accepted: only a publish in flight when Redis died, run and written
    # to its append-only file but its answer lost with the connection (one per publisher at
    # most), refused with 503 / 115 at the kill: the publisher cannot tell, as with any lost
    # answer (the idempotency key is for that). Never one refused while Redis was down.
    refused_at = {o.data: o.at for o in over_http.outcomes + over_ws.outcomes if o.offset is None}
    assert len(extra) <= 2, sorted(extra)
    for offset in extra:
        data = watchers[0].data[offset]
        assert data in refused_at, (offset, data)
        assert down - 0.5 < refused_at[data] < down + 1.5, (offset, data, refused_at[data] - down)
    assert lost == 0
    print(
        f"\nredis fault: {len(accepted)} accepted, "
        f"{sum(o.offset is None for o in over_http.outcomes + over_ws.outcomes)} refused "
        f"(503/115), {len(watchers)} subscribers x {len(watchers[0].offsets)} checked, "
        f"unanswered yet delivered {len(extra)}, broker lost {lost}"
    )
