"""PubSubReader: one Redis pub/sub connection that delivers the channels this node listens to.

A RedisBroker has one (``SUBSCRIBE``); a RedisClusterBroker one per shard master it listens to
(``SSUBSCRIBE``). The reader subscribes, waits for Redis to confirm, hands what arrives to the
broker's events in order, and when the connection is lost (or a PING goes unanswered, or Redis
unsubscribes a channel nobody asked to leave: a Cluster slot moved) it reconnects with
exponential backoff and jitter, subscribes again and catches up from the streams: exactly the
offsets it missed, once each; a gap (``BrokerEvents.on_gap``) when the stream did not keep
them; a new epoch when the stream no longer holds what it delivered last (a failover lost it).
Positions and stream reads come from the broker through `StreamReads`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from rtserve.broker.base import BrokerError, BrokerEvents, ClientInfo, HistoryResult, Publication
from rtserve.broker.redis_codec import publication_of

__all__ = ["PLAIN", "SHARDED", "PubSubCommands", "PubSubReader", "RedisBrokerStats", "StreamReads"]

log = logging.getLogger("rtserve.broker")


@dataclass(slots=True)
class RedisBrokerStats:
    """Counters of one RedisBroker: pub/sub reconnections, publications delivered by catching
    up from the streams after one, offsets that could not be caught up (not kept), and
    channels whose stream no longer held what this node had delivered (a new epoch began)."""

    reconnects: int = 0
    recovered: int = 0
    lost: int = 0
    diverged: int = 0


@dataclass(frozen=True, slots=True)
class PubSubCommands:
    """The pub/sub commands and the kinds of their replies."""

    subscribe: str
    unsubscribe: str
    subscribed: bytes
    unsubscribed: bytes
    message: bytes


PLAIN = PubSubCommands("SUBSCRIBE", "UNSUBSCRIBE", b"subscribe", b"unsubscribe", b"message")
SHARDED = PubSubCommands("SSUBSCRIBE", "SUNSUBSCRIBE", b"ssubscribe", b"sunsubscribe", b"smessage")


class StreamReads(Protocol):
    """What a reader asks of its broker: where a channel's stream is, what it kept, and a new
    epoch when it lost what the reader delivered."""

    async def stream_position(self, channel: str) -> tuple[int, str | None]:
        """The channel's (offset, epoch) now, without creating it ((0, None) when none)."""
        ...

    async def read_streams(self, reads: list[tuple[str, int | None]]) -> list[HistoryResult]:
        """All kept publications after `since` of each (channel, since)."""
        ...

    async def renew_epoch(self, channel: str, epoch: str) -> tuple[int, str]:
        """Start a new epoch of `channel` unless it left `epoch` already; its position."""
        ...


class _Unsubscribed(Exception):
    """Redis ended a subscription nobody asked to end (under Cluster: its slot moved)."""


class _Sub:
    """A channel this node subscribed to, and the last position it delivered (or, before the
    first delivery, the position read just before subscribing: every publication that
    arrives on the subscription is past it); `last` is the publication delivered at that
    position, kept to check after a reconnection that Redis still holds the same one."""

    __slots__ = ("channel", "confirmed", "epoch", "last", "offset")

    def __init__(self, channel: str, offset: int, epoch: str | None) -> None:
        self.channel = channel
        self.offset = offset
        self.epoch = epoch
        self.last: Publication | None = None
        self.confirmed: asyncio.Future[None] | None = None  # done once Redis confirmed


def fail(future: asyncio.Future[None], error: BaseException) -> None:
    """End `future` with `error` (marked as seen: nobody may be waiting for it)."""
    if not future.done():
        future.set_exception(error)
        future.exception()


def _diverged(sub: _Sub, result: HistoryResult) -> bool:
    """Whether the stream (read from just before `sub`'s position) no longer holds what `sub`
    delivered last: its offset is past the stream's end, or a different publication has it.
    That happens when a master failed over before its replica had the last publications:
    the new master gives their offsets again, to other publications."""
    last, position = sub.last, result.position
    if last is None or position.epoch != sub.epoch:
        return False
    if position.offset < sub.offset:
        return True
    kept = next((p for p in result.publications if p.offset == sub.offset), None)
    return kept is not None and kept != last


def _catch_up_since(sub: _Sub) -> int | None:
    """Where catching up reads `sub`'s stream from: one before its position when there is a
    delivered publication to check there (`_diverged`), None (all) before any position."""
    if sub.epoch is None:
        return None
    return sub.offset - 1 if sub.last is not None else sub.offset


# Called before each reconnection with the reader: False ends it (a Cluster shard's reader
# whose channels all moved to other shards).
StillWanted = Callable[["PubSubReader"], Awaitable[bool]]


class PubSubReader:
    """One pub/sub connection from `pool` and the channels subscribed on it (see the module
    docstring). `where` names the server in log lines; `timeout` bounds connecting and each
    confirmation; `ping_interval` is the silence before a PING checks the connection."""

    __slots__ = (
        "_buffer",
        "_commands",
        "_conn",
        "_events",
        "_pool",
        "_reads",
        "_ready",
        "_reconnect_delay",
        "_still_wanted",
        "_subs",
        "_task",
        "_waiters",
        "ping_interval",
        "stats",
        "timeout",
        "where",
    )

    def __init__(
        self,
        pool: ConnectionPool,
        reads: StreamReads,
        stats: RedisBrokerStats,
        *,
        where: str,
        timeout: float,
        ping_interval: float,
        reconnect_delay: tuple[float, float],
        commands: PubSubCommands = PLAIN,
        still_wanted: StillWanted | None = None,
    ) -> None:
        self._pool = pool
        self._reads = reads
        self.stats = stats
        self.where = where
        self.timeout = timeout
        self.ping_interval = ping_interval
        self._reconnect_delay = reconnect_delay
        self._commands = commands
        self._still_wanted = still_wanted
        self._events: BrokerEvents | None = None
        self._conn: AbstractConnection | None = None
        self._ready = False  # `_conn` is subscribed to every channel of `_subs` (or sent so)
        self._task: asyncio.Task[None] | None = None
        self._subs: dict[bytes, _Sub] = {}  # by pub/sub name
        # Futures of subscribe / unsubscribe calls waiting for Redis to confirm, per
        # (b"subscribe" | b"unsubscribe", pub/sub name), oldest first.
        self._waiters: dict[tuple[bytes, bytes], deque[asyncio.Future[None]]] = {}
        self._buffer: list[tuple[bytes, bytes]] | None = None  # messages held during catch-up

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, events: BrokerEvents | None, conn: AbstractConnection | None = None) -> None:
        """Start reading `conn` (made and connected by the caller), or connect first."""
        self._events = events
        self._conn = conn
        self._ready = conn is not None
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="rtserve-redis-reader"
        )

    def deliver_to(self, events: BrokerEvents | None) -> None:
        """Deliver to `events` from now on (None: deliver nothing)."""
        self._events = events

    async def restart(self) -> None:
        """Drop the connection: the reader reconnects, subscribes to every channel (those
        just handed over too) and catches up."""
        self._ready = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()

    async def close(self) -> None:
        """Stop reading, fail the calls waiting for a confirmation, release the connection."""
        self._events = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for waiters in self._waiters.values():
            for future in waiters:
                fail(future, BrokerError("broker is closed"))
        self._waiters.clear()
        self._subs.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
            self._conn = None
        with contextlib.suppress(Exception):
            await self._pool.disconnect()

    # --- the channels held ----------------------------------------------------------------

    def holds(self, name: bytes) -> bool:
        """Whether `name` is subscribed here (or being subscribed)."""
        return name in self._subs

    def channels(self) -> list[tuple[bytes, str]]:
        """(pub/sub name, channel) of every channel held."""
        return [(name, sub.channel) for name, sub in self._subs.items()]

    def idle(self) -> bool:
        """No channel is held and no subscribe call waits."""
        return not self._subs and not any(kind == b"subscribe" for kind, _ in self._waiters)

    def hand_over(self, name: bytes, other: PubSubReader) -> None:
        """Move channel `name` (its position and the calls waiting for its confirmation) to
        `other`, which subscribes to it when it (re)connects."""
        other._subs[name] = self._subs.pop(name)
        waiters = self._waiters.pop((b"subscribe", name), None)
        if waiters:
            other._waiters.setdefault((b"subscribe", name), deque()).extend(waiters)

    # --- subscribe and unsubscribe --------------------------------------------------------

    def _waiter(self, kind: bytes, name: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((kind, name), deque()).append(future)
        return future

    def _forget_waiter(self, kind: bytes, name: bytes, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get((kind, name))
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if not waiters:
                del self._waiters[(kind, name)]

    def _confirm(self, kind: bytes, name: bytes) -> None:
        waiters = self._waiters.get((kind, name))
        if waiters:
            future = waiters.popleft()
            if not waiters:
                del self._waiters[(kind, name)]
            if not future.done():
                future.set_result(None)

    async def subscribe(self, channel: str, name: bytes) -> None:
        """Subscribe to `channel` (pub/sub `name`); returns once Redis confirmed."""
        sub = self._subs.get(name)
        if sub is None:
            # Read before subscribing: everything the subscription brings is past this
            # position, and catching up after a reconnection starts here until something
            # was delivered.
            offset, epoch = await self._reads.stream_position(channel)
            sub = self._subs.get(name)
        if sub is None:
            sub = self._subs[name] = _Sub(channel, offset, epoch)
            sub.confirmed = self._waiter(b"subscribe", name)
            if self._ready and self._conn is not None:
                # On failure the reader reconnects and subscribes to everything in `_subs`.
                with contextlib.suppress(RedisError, OSError):
                    await self._conn.send_command(self._commands.subscribe, name)
        future = sub.confirmed
        if future is None or future.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except BaseException as exc:
            if future.done() or self._subs.get(name) is not sub:
                raise
            # Give up on it (a late confirmation finds no waiter; the reader ignores the
            # channel's messages, and a reconnection leaves it out).
            error = BrokerError(
                f"Redis did not confirm the subscription to {channel!r} within {self.timeout:g} s"
            )
            self._forget_waiter(b"subscribe", name, future)
            fail(future, error)  # other callers waiting for the same channel
            del self._subs[name]
            if self._ready and self._conn is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._conn.send_command(self._commands.unsubscribe, name)
            if isinstance(exc, TimeoutError):
                raise error from None
            raise

    async def unsubscribe(self, channel: str, name: bytes) -> None:
        """Unsubscribe from `channel` (no error when not subscribed); nothing of it is
        delivered from now on."""
        if self._subs.pop(name, None) is None:
            return
        if not (self._ready and self._conn is not None):
            return  # a reconnection subscribes only to what is in `_subs`
        future = self._waiter(b"unsubscribe", name)
        try:
            await self._conn.send_command(self._commands.unsubscribe, name)
            await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except (RedisError, OSError):
            pass  # the connection is gone, and the subscription with it
        except TimeoutError:
            raise BrokerError(
                f"Redis did not confirm the unsubscription from {channel!r}"
            ) from None
        finally:
            self._forget_waiter(b"unsubscribe", name, future)

    # --- reading --------------------------------------------------------------------------

    async def _run(self) -> None:
        """Read the connection; on loss reconnect, resubscribe and catch up."""
        lost, first, delay = self._conn is None, self._conn is None, self._reconnect_delay[0]
        while True:
            try:
                if lost:
                    if not first and self._still_wanted is not None:
                        if not await self._still_wanted(self):
                            return
                    await self._reconnect()
                    await self._resubscribe()
                    lost, delay = False, self._reconnect_delay[0]
                    if not first:
                        self.stats.reconnects += 1
                        log.info("Redis pub/sub connection restored (%s)", self.where)
                first = False
                await self._read_forever()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                first = False
                self._ready = False
                self._buffer = None
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.disconnect()
                pause = delay * (0.5 + random.random())
                log.warning(
                    "Redis pub/sub connection to %s lost (%s); reconnecting in %.2f s",
                    self.where,
                    str(exc) or type(exc).__name__,
                    pause,
                )
                lost = True
                await asyncio.sleep(pause)
                delay = min(delay * 2, self._reconnect_delay[1])

    async def _reconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
        conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
        self._conn = conn
        await asyncio.wait_for(conn.connect(), self.timeout)
        # Calls waiting for an UNSUBSCRIBE: the new connection is not subscribed.
        for key in [key for key in self._waiters if key[0] == b"unsubscribe"]:
            for future in self._waiters.pop(key):
                if not future.done():
                    future.set_result(None)

    async def _receive(self, timeout: float) -> Any:
        """One reply of the pub/sub connection, or None after `timeout` seconds of silence."""
        assert self._conn is not None
        # push_request: with RESP3 (redis-py's default from 8 on) pub/sub messages are pushes.
        return await self._conn.read_response(
            timeout=timeout, disconnect_on_error=False, push_request=True
        )

    async def _resubscribe(self) -> None:
        """Subscribe the (new) connection to every channel, wait for Redis to confirm, then
        deliver what each channel published while the connection was down."""
        assert self._conn is not None
        names = list(self._subs)
        self._ready = True  # from here subscribe() sends its own SUBSCRIBE
        if not names:
            return
        self._buffer = []
        for i in range(0, len(names), 1000):
            await self._conn.send_command(self._commands.subscribe, *names[i : i + 1000])
        pending = set(names)
        while pending:
            reply = await self._receive(self.timeout)
            if reply is None:
                raise TimeoutError("Redis did not confirm the subscriptions")
            if isinstance(reply, list) and reply and reply[0] == self._commands.subscribed:
                pending.discard(reply[1])
            self._handle(reply)
        subs = [(name, sub) for name in names if (sub := self._subs.get(name)) is not None]
        for i in range(0, len(subs), 500):
            await self._catch_up(subs[i : i + 500])
        held, self._buffer = self._buffer, None
        for name, data in held or ():
            self._message(name, data)

    async def _catch_up(self, subs: list[tuple[bytes, _Sub]]) -> None:
        """Deliver what the channels published after the last position each delivered; a
        channel whose stream lost what this node delivered starts a new epoch (a gap)."""
        reads = [(sub.channel, _catch_up_since(sub)) for _, sub in subs]
        results = await self._reads.read_streams(reads)
        diverged = {i for i, (_, sub) in enumerate(subs) if _diverged(sub, results[i])}
        for i in sorted(diverged):
            await self._start_new_epoch(*subs[i])
        renewed = [
            i
            for i, (_, sub) in enumerate(subs)
            if i not in diverged
            and sub.epoch is not None
            and results[i].position.epoch != sub.epoch
        ]
        if renewed:  # a new epoch: all of it is new to this node
            again = await self._reads.read_streams([(subs[i][1].channel, None) for i in renewed])
            for i, result in zip(renewed, again, strict=True):
                results[i] = result
        for i, ((name, sub), result) in enumerate(zip(subs, results, strict=True)):
            if i not in diverged and self._subs.get(name) is sub:
                self._deliver_missed(name, sub, result)

    async def _start_new_epoch(self, name: bytes, sub: _Sub) -> None:
        """`sub`'s channel lost publications this node delivered (see `_diverged`): start a
        new epoch, so that every client holding the old offsets learns `recovered: false`,
        and end this node's subscriptions to it (on_gap)."""
        offset, epoch = await self._reads.renew_epoch(sub.channel, sub.epoch or "")
        self.stats.diverged += 1
        log.warning(
            "channel %s: Redis no longer holds offset %d that this node delivered (a failover "
            "or a restart lost it); the channel starts a new epoch",
            sub.channel,
            sub.offset,
        )
        if self._subs.get(name) is sub:
            sub.epoch, sub.offset, sub.last = epoch, offset, None
            if self._events is not None:
                self._events.on_gap(sub.channel)

    def _deliver_missed(self, name: bytes, sub: _Sub, result: HistoryResult) -> None:
        position = result.position
        expected = 1 if position.epoch != sub.epoch else sub.offset + 1
        publications = [p for p in result.publications if p.offset >= expected]
        if position.offset >= expected:
            first = publications[0].offset if publications else position.offset + 1
            if first > expected:
                missed = first - expected
                self.stats.lost += missed
                log.warning(
                    "channel %s: %d publication(s) (offsets %d-%d) published while the Redis "
                    "connection was down were not kept in history and are lost for this node",
                    sub.channel,
                    missed,
                    expected,
                    first - 1,
                )
                if self._events is not None:  # its subscribers must learn it: they resubscribe
                    self._events.on_gap(sub.channel)
                publications = []
        for publication in publications:
            self.stats.recovered += 1
            self._deliver(name, sub, publication, position.epoch)
        if sub.epoch != position.epoch or sub.offset < position.offset:
            sub.epoch, sub.offset, sub.last = position.epoch, position.offset, None

    async def _read_forever(self) -> None:
        assert self._conn is not None
        pinged = False
        while True:
            reply = await self._receive(self.ping_interval)
            if reply is None:
                if pinged:
                    raise TimeoutError("Redis did not answer a PING on the pub/sub connection")
                await self._conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            self._handle(reply)

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind, commands = reply[0], self._commands
        if kind == commands.message:
            if self._buffer is not None:
                self._buffer.append((reply[1], reply[2]))
            else:
                self._message(reply[1], reply[2])
        elif kind == commands.subscribed:
            self._confirm(b"subscribe", reply[1])
        elif kind == commands.unsubscribed:
            name = reply[1]
            if (b"unsubscribe", name) not in self._waiters and name in self._subs:
                raise _Unsubscribed(
                    f"Redis ended the subscription to {name.decode(errors='replace')}"
                )
            self._confirm(b"unsubscribe", name)

    def _message(self, name: bytes, data: bytes) -> None:
        sub = self._subs.get(name)
        events = self._events
        if sub is None or events is None:
            return
        publication: Publication | None = None
        try:
            body = json.loads(data)
            if "o" in body:
                publication = publication_of(int(body["o"]), body["p"])
                epoch = str(body["e"])
            else:
                joined = "j" in body
                who = ClientInfo.from_json(body["j" if joined else "l"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring a malformed message on %r: %.200r", name, data)
            return
        if publication is not None:
            self._deliver(name, sub, publication, epoch)
            return
        try:
            if joined:
                events.on_join(sub.channel, who)
            else:
                events.on_leave(sub.channel, who)
        except Exception:
            log.exception("delivering a join or leave of %r failed", sub.channel)

    def _deliver(self, name: bytes, sub: _Sub, publication: Publication, epoch: str) -> None:
        if epoch == sub.epoch and publication.offset <= sub.offset:
            return  # delivered already (caught up from the stream)
        sub.epoch, sub.offset, sub.last = epoch, publication.offset, publication
        events = self._events
        if events is None:
            return
        try:
            events.on_publication(sub.channel, publication, epoch)
        except Exception:
            log.exception("delivering a publication of %r failed", sub.channel)
