"""RedisBroker: channels on Redis, for many workers and many machines.

Every node (server process) connects to the same Redis. A publication is one Lua script that
gives the channel's next offset, keeps it in the channel's stream (its history) and PUBLISHes
it, so offsets, history and fan-out agree however many nodes publish at once. Each node has
one pub/sub connection on which it subscribes to the channels its clients listen to; a reader
task hands what arrives to the Hub in order.

Key layout (``P`` is the ``prefix``, ``C`` the channel name; ``{C}`` is a Redis Cluster hash
tag, so every key of one channel lives in one slot and the scripts may touch them together):

=========================  ======  ===========================================================
key                        type    what
=========================  ======  ===========================================================
``P:{C}:meta``             hash    ``epoch``, ``offset`` (last given out), ``ttl`` (history TTL
                                   of the latest publication, ms); made by the first
                                   publication (never by a subscribe or read), expires
                                   ``meta_ttl`` after the last publication (the history TTL
                                   when that is longer). Gone: the next publication starts a
                                   new epoch at offset 1.
``P:{C}:stream``           stream  history: entry id ``<offset>-0``, fields ``p`` (the
                                   payload, JSON ``{"d": data, "i": client info, "t":
                                   tags}``, ``i`` and ``t`` when there are some) and ``t``
                                   (Redis time of the publication, ms); ``MAXLEN =
                                   history_size``; expires with its history TTL (or the meta);
                                   deleted when the channel publishes with history_size 0 and
                                   when a new epoch starts.
``P:{C}:idem:<key>``       string  ``<offset>:<epoch>`` of a publication with an idempotency
                                   key; expires after ``idempotency_ttl``.
``P:{C}:pres``             hash    presence: client id -> JSON ``ClientInfo``.
``P:{C}:pres:exp``         zset    presence: client id -> expiry (Redis time, ms). Both
                                   presence keys expire with their last member.
``P:epoch-seed``           string  random; with the channel and the time window (``meta_ttl``)
                                   it makes the epoch of a new stream, which every node and
                                   every read before the first publication agree on. The one
                                   key without a TTL (one per prefix; lost with the data set,
                                   which then starts new epochs).
``P:{C}:pub``              pubsub  the channel's pub/sub name (not a key). Messages are JSON:
                                   ``{"o": offset, "e": epoch, "p": payload}`` for a
                                   publication, ``{"j": info}`` / ``{"l": info}`` for a join /
                                   leave.
=========================  ======  ===========================================================

Times (publication time, presence expiry) come from Redis (``TIME`` inside the scripts), so
the nodes' clocks need not agree. Needs Redis >= 5 (streams, scripts that write after
``TIME``).

Presence: each node refreshes the expiry of its own present clients every
``presence_ttl / 3`` seconds; reading presence first drops the members whose expiry passed,
so the clients of a node that died disappear after ``presence_ttl``. ``close()`` removes
this node's entries at once.

Faults: ``start()`` raises BrokerError when Redis cannot be reached; every later operation
turns a Redis failure (connection lost, timeout, refused script) into BrokerError, never a
silent drop. Commands have a ``timeout`` (connect and read). When the pub/sub connection is
lost (or does not answer a PING within ``ping_interval``) the reader logs a warning,
reconnects with exponential backoff and jitter, subscribes again to every channel and then
catches up: for each channel it reads the stream after the last offset it delivered and
delivers what was missed, in order and without repeats (a new epoch's publications when the
epoch changed, which makes the Hub end those subscriptions). Publications that the stream did
not keep (history_size 0, or trimmed) cannot be caught up; they are logged, counted in
``stats.lost``, and the node is told (``BrokerEvents.on_gap``): the Hub ends those
subscriptions with code 112, so their clients resubscribe and learn ``recovered: false``.

Redis Cluster: RedisClusterBroker (rtserve/broker/redis_cluster.py) is this class on a
cluster client: the hash tags put every key of a channel in one slot, so the scripts run
unchanged on the slot's shard; fan-out is sharded pub/sub (``SPUBLISH`` inside the script,
one ``SSUBSCRIBE`` connection per shard master, each this class's reader), and the seed is
read once per node and passed to the scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from rtserve.broker import redis_scripts as scripts
from rtserve.broker.base import (
    NO_OPTIONS,
    Broker,
    BrokerError,
    BrokerEvents,
    ClientInfo,
    HistoryResult,
    PresenceStats,
    Publication,
    PublishOptions,
    StreamPosition,
    stream_lifetime,
)

__all__ = ["RedisBroker", "RedisBrokerStats"]

# The largest `since` and `limit` sent to the scripts: Lua numbers are doubles, and Redis
# refuses larger stream ids and counts. Above them: "after everything" and "no limit".
MAX_OFFSET = 2**53 - 1
MAX_LIMIT = 2**31 - 1

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


def _safe_url(url: str) -> str:
    """`url` without password and query (for messages)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid Redis URL>"


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    """End `future` with `error` (marked as seen: nobody may be waiting for it)."""
    if not future.done():
        future.set_exception(error)
        future.exception()


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, at least 1 when positive (0 stays 0)."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


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


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _payload(data: Any, info: ClientInfo | None, tags: Mapping[str, str] | None) -> str:
    """A publication's payload as kept and published: ``{"d": data, "i": info, "t": tags}``
    (``i`` and ``t`` only when there are some)."""
    body: dict[str, Any] = {"d": data}
    if info is not None:
        body["i"] = info.to_json()
    if tags:
        body["t"] = tags
    return _dumps(body)


def _publication(offset: int, payload: bytes | str | dict[str, Any]) -> Publication:
    """The publication of a payload `_payload` made (raw, or already parsed)."""
    body = json.loads(payload) if not isinstance(payload, dict) else payload
    info = body.get("i")
    return Publication(
        offset,
        body.get("d"),
        None if info is None else ClientInfo.from_json(info),
        body.get("t") or None,
    )


class RedisBroker(Broker):
    """The Broker on Redis: offsets, history, idempotency, presence and fan-out shared by
    every node connected to the same Redis.

    url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` for TLS.
    prefix: first part of every key (no braces). meta_ttl: seconds a channel's stream is kept
    after its last publication (its history TTL when longer); every node of a prefix must
    have the same, as new epochs are made from it. presence_ttl: seconds a present client
    of a node that stopped refreshing it stays listed. node_id: this node's name (the Redis
    client name shows it).
    timeout: seconds to connect, and to wait for an answer of Redis, before BrokerError.
    ping_interval: seconds of silence on the pub/sub connection before a PING checks it.
    reconnect_delay: (first, largest) pause in seconds between reconnection attempts.
    pool_size: connections for commands; more commands at once wait (up to `timeout`) for one.
    """

    # The pub/sub commands and the kinds of their replies (sharded ones under Cluster).
    _SUBSCRIBE, _UNSUBSCRIBE = "SUBSCRIBE", "UNSUBSCRIBE"
    _SUBSCRIBED, _UNSUBSCRIBED, _MESSAGE = b"subscribe", b"unsubscribe", b"message"

    __slots__ = (
        "_buffer",
        "_client",
        "_closed",
        "_conn",
        "_events",
        "_heartbeat",
        "_history",
        "_meta_ttl",
        "_node_id",
        "_ping_interval",
        "_pool_size",
        "_prefix",
        "_presence",
        "_presence_add",
        "_presence_remove",
        "_presence_stats",
        "_presence_ttl",
        "_present",
        "_publish",
        "_reader",
        "_ready",
        "_reconnect_delay",
        "_renew",
        "_sub_pool",
        "_subs",
        "_timeout",
        "_url",
        "_waiters",
        "stats",
    )

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "rtserve",
        meta_ttl: float = 86400.0,
        presence_ttl: float = 60.0,
        node_id: str | None = None,
        timeout: float = 5.0,
        ping_interval: float = 10.0,
        reconnect_delay: tuple[float, float] = (0.1, 5.0),
        pool_size: int = 64,
    ) -> None:
        if meta_ttl <= 0:
            raise ValueError("meta_ttl must be > 0")
        if presence_ttl <= 0:
            raise ValueError("presence_ttl must be > 0")
        if timeout <= 0 or ping_interval <= 0:
            raise ValueError("timeout and ping_interval must be > 0")
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must be non-empty and without braces")
        if not 0 < reconnect_delay[0] <= reconnect_delay[1]:
            raise ValueError("reconnect_delay must be (first, largest) with 0 < first <= largest")
        if pool_size < 1:
            raise ValueError("pool_size must be 1 or more")
        self._pool_size = pool_size
        self._url = url
        self._prefix = prefix
        self._meta_ttl = meta_ttl
        self._presence_ttl = presence_ttl
        node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._node_id = "-".join(node_id.split())  # Redis client names have no spaces
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._reconnect_delay = reconnect_delay
        self.stats = RedisBrokerStats()
        self._events: BrokerEvents | None = None
        self._closed = False
        self._client: aioredis.Redis | None = None
        self._sub_pool: ConnectionPool | None = None
        self._conn: AbstractConnection | None = None  # the pub/sub connection
        self._ready = False  # `_conn` is subscribed to every channel of `_subs` (or sent so)
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._subs: dict[bytes, _Sub] = {}  # by pub/sub name
        # Futures of subscribe / unsubscribe calls waiting for Redis to confirm, per
        # (b"subscribe" | b"unsubscribe", pub/sub name), oldest first.
        self._waiters: dict[tuple[bytes, bytes], deque[asyncio.Future[None]]] = {}
        self._buffer: list[tuple[bytes, bytes]] | None = None  # messages held during catch-up
        self._present: dict[tuple[str, str], str] = {}  # this node's presence: info JSON
        self._publish: Any = None
        self._history: Any = None
        self._presence_add: Any = None
        self._presence_remove: Any = None
        self._presence: Any = None
        self._presence_stats: Any = None
        self._renew: Any = None

    @property
    def node_id(self) -> str:
        return self._node_id

    # --- names ----------------------------------------------------------------------------

    def _key(self, channel: str, name: str) -> str:
        return f"{self._prefix}:{{{channel}}}:{name}"

    @property
    def _seed_key(self) -> str:
        return f"{self._prefix}:epoch-seed"

    def _pubsub_name(self, channel: str) -> bytes:
        return self._key(channel, "pub").encode()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        """Connect to Redis (BrokerError when it cannot be reached) and deliver to `events`
        from now on (a second call replaces `events`)."""
        if self._closed:
            raise BrokerError("broker is closed")
        if self._client is not None:
            self._events = events
            return
        where = _safe_url(self._url)
        options: dict[str, Any] = {
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),  # a publish is never repeated behind our back
            "client_name": f"rtserve:{self._node_id}",
        }
        try:
            # A pool that waits for a free connection: a burst of subscribes (thousands of
            # clients reconnecting at once) queues for `timeout` instead of failing at once.
            pool = BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._pool_size,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                **options,
            )
            client = aioredis.Redis.from_pool(pool)  # closes the pool when it closes
            sub_pool = ConnectionPool.from_url(
                self._url, socket_timeout=None, **{**options, "client_name": self._sub_name}
            )
        except (ValueError, RedisError) as exc:
            raise BrokerError(f"bad Redis URL {where}: {exc}") from None
        try:
            await asyncio.wait_for(client.ping(), self._timeout)
            conn = sub_pool.make_connection()  # type: ignore[no-untyped-call]
            await asyncio.wait_for(conn.connect(), self._timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            await client.aclose()
            await sub_pool.disconnect()
            raise BrokerError(
                f"cannot reach Redis at {where}: {str(exc) or type(exc).__name__}"
            ) from None
        self._client, self._sub_pool, self._conn = client, sub_pool, conn
        self._register_scripts(client)
        self._events = events
        self._ready = True
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._run_reader(), name="rtserve-redis-reader")
        self._heartbeat = loop.create_task(self._run_heartbeat(), name="rtserve-redis-heartbeat")

    def _register_scripts(self, client: Any) -> None:
        """The scripts (redis_scripts), called through `client` (a Redis or RedisCluster)."""
        self._publish = client.register_script(scripts.PUBLISH)
        self._history = client.register_script(scripts.HISTORY)
        self._presence_add = client.register_script(scripts.PRESENCE_ADD)
        self._presence_remove = client.register_script(scripts.PRESENCE_REMOVE)
        self._presence = client.register_script(scripts.PRESENCE)
        self._presence_stats = client.register_script(scripts.PRESENCE_STATS)
        self._renew = client.register_script(scripts.RENEW)

    @property
    def _sub_name(self) -> str:
        return f"rtserve:{self._node_id}:sub"

    async def close(self) -> None:
        """Stop delivering, remove this node's presence entries, release the connections."""
        if self._closed:
            return
        self._closed = True
        self._events = None
        for task in (self._reader, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._reader = self._heartbeat = None
        for waiters in self._waiters.values():
            for future in waiters:
                _fail(future, BrokerError("broker is closed"))
        self._waiters.clear()
        self._subs.clear()
        client, self._client = self._client, None
        if client is not None:
            if self._present:
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        for channel, member in self._present:
                            pipe.hdel(self._key(channel, "pres"), member)
                            pipe.zrem(self._key(channel, "pres:exp"), member)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    log.warning("could not remove this node's presence from Redis: %s", exc)
            await client.aclose()
        self._present.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
            self._conn = None
        if self._sub_pool is not None:
            with contextlib.suppress(Exception):
                await self._sub_pool.disconnect()
            self._sub_pool = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None or self._events is None:
            raise BrokerError("broker is closed" if self._closed else "broker is not started")
        return self._client

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """A Redis failure becomes BrokerError naming what failed."""
        try:
            yield
        except (TimeoutError, RedisError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise BrokerError(f"Redis {what} failed: {reason}") from None

    # --- publishing -----------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        info: ClientInfo | None = None,
        options: PublishOptions = NO_OPTIONS,
        tags: Mapping[str, str] | None = None,
    ) -> StreamPosition:
        """Give the next offset, keep it in the stream and PUBLISH it, in one script.

        Delivery to subscribed nodes (this one included) follows through pub/sub. A repeat of
        `options.idempotency_key` within `idempotency_ttl` returns the first position.
        """
        self._redis()
        payload = _payload(data, info, tags)
        keys, args = self._publish_call(channel, payload, options)
        with self._errors("publish"):
            offset, epoch, _ = await self._run_publish(channel, keys, args)
        return StreamPosition(int(offset), epoch.decode())

    async def _run_publish(self, channel: str, keys: list[str], args: list[Any]) -> Any:
        """The publish script's reply (Redis errors raised as they are)."""
        return await self._publish(keys=keys, args=args)

    def _publish_call(
        self, channel: str, payload: str, options: PublishOptions
    ) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of the publish script (redis_scripts.PUBLISH)."""
        key = options.idempotency_key
        idem_ttl = _ms(options.idempotency_ttl) if key is not None else 0
        meta = self._key(channel, "meta")
        idem = self._key(channel, f"idem:{key}") if idem_ttl else meta
        keys = [meta, self._key(channel, "stream"), idem, self._seed_key]
        args = [
            payload,
            secrets.token_hex(8),
            max(0, options.history_size),
            _ms(options.history_ttl),
            _ms(stream_lifetime(self._meta_ttl, options)),
            idem_ttl,
            self._pubsub_name(channel),
            channel,
            _ms(self._meta_ttl),
        ]
        return keys, args

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Tell every node subscribed to `channel` that `info` joined it (not kept)."""
        self._redis()
        with self._errors("publish of a join"):
            await self._announce(channel, _dumps({"j": info.to_json()}))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """Tell every node subscribed to `channel` that `info` left it (not kept)."""
        self._redis()
        with self._errors("publish of a leave"):
            await self._announce(channel, _dumps({"l": info.to_json()}))

    async def _announce(self, channel: str, message: str) -> None:
        """Send `message` to the nodes subscribed to `channel`, keeping nothing."""
        await self._redis().publish(self._pubsub_name(channel), message)

    # --- history --------------------------------------------------------------------------

    def _history_call(
        self, channel: str, since: int | None, limit: int | None, apply_ttl: bool
    ) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of the history script (redis_scripts.HISTORY)."""
        keys = [self._key(channel, "meta"), self._key(channel, "stream"), self._seed_key]
        args = [
            -1 if since is None or since < 0 else min(since, MAX_OFFSET),
            -1 if limit is None or limit > MAX_LIMIT else max(0, limit),
            secrets.token_hex(8),
            _ms(self._meta_ttl),
            1 if apply_ttl else 0,
            channel,
        ]
        return keys, args

    @staticmethod
    def _history_result(reply: list[Any]) -> HistoryResult:
        position = StreamPosition(int(reply[1]), reply[0].decode())
        publications = [
            _publication(int(reply[i]), reply[i + 1]) for i in range(2, len(reply) - 1, 2)
        ]
        return HistoryResult(publications, position)

    async def _read(
        self, channel: str, since: int | None, limit: int | None, *, apply_ttl: bool
    ) -> HistoryResult:
        keys, args = self._history_call(channel, since, limit, apply_ttl)
        with self._errors("history"):
            reply = await self._history(keys=keys, args=args)
        return self._history_result(reply)

    async def _read_many(self, reads: list[tuple[str, int | None]]) -> list[HistoryResult]:
        """All kept publications after `since` of each (channel, since), in one round trip
        (for catching up; the history TTL is not applied)."""
        client = self._redis()
        with self._errors("history"):
            async with client.pipeline(transaction=False) as pipe:
                for channel, since in reads:
                    keys, args = self._history_call(channel, since, None, False)
                    await self._history(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        return [self._history_result(reply) for reply in replies]

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Kept publications with offset > `since`, oldest first, at most `limit`.

        A channel without a stream is at offset 0 of the epoch its first publication will
        start (nothing is written for it).
        """
        self._redis()
        return await self._read(channel, since, limit, apply_ttl=True)

    # --- subscriptions --------------------------------------------------------------------

    async def _position(self, channel: str) -> tuple[int, str | None]:
        """The channel's (offset, epoch) as Redis has it now, without creating it."""
        client = self._redis()
        with self._errors("subscribe"):
            epoch, offset = await client.hmget(self._key(channel, "meta"), ["epoch", "offset"])
        if epoch is None:
            return 0, None
        return int(offset or 0), epoch.decode() if isinstance(epoch, bytes) else str(epoch)

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

    async def subscribe(self, channel: str) -> None:
        """Subscribe this node to `channel`; returns once Redis confirmed the SUBSCRIBE."""
        self._redis()
        name = self._pubsub_name(channel)
        sub = self._subs.get(name)
        if sub is None:
            # Read before subscribing: everything the subscription brings is past this
            # position, and catching up after a reconnection starts here until something
            # was delivered.
            offset, epoch = await self._position(channel)
            sub = self._subs.get(name)
        if sub is None:
            sub = self._subs[name] = _Sub(channel, offset, epoch)
            sub.confirmed = self._waiter(b"subscribe", name)
            if self._ready and self._conn is not None:
                # On failure the reader reconnects and subscribes to everything in `_subs`.
                with contextlib.suppress(RedisError, OSError):
                    await self._conn.send_command(self._SUBSCRIBE, name)
        future = sub.confirmed
        if future is None or future.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except BaseException as exc:
            if future.done() or self._subs.get(name) is not sub:
                raise
            # Give up on it (a late confirmation finds no waiter; the reader ignores the
            # channel's messages, and a reconnection leaves it out).
            error = BrokerError(
                f"Redis did not confirm the subscription to {channel!r} within {self._timeout:g} s"
            )
            self._forget_waiter(b"subscribe", name, future)
            _fail(future, error)  # other callers waiting for the same channel
            del self._subs[name]
            if self._ready and self._conn is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._conn.send_command(self._UNSUBSCRIBE, name)
            if isinstance(exc, TimeoutError):
                raise error from None
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe this node from `channel` (no error when not subscribed); nothing of it
        is delivered from now on."""
        self._redis()
        name = self._pubsub_name(channel)
        if self._subs.pop(name, None) is None:
            return
        if not (self._ready and self._conn is not None):
            return  # a reconnection subscribes only to what is in `_subs`
        future = self._waiter(b"unsubscribe", name)
        try:
            await self._conn.send_command(self._UNSUBSCRIBE, name)
            await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except (RedisError, OSError):
            pass  # the connection is gone, and the subscription with it
        except TimeoutError:
            raise BrokerError(
                f"Redis did not confirm the unsubscription from {channel!r}"
            ) from None
        finally:
            self._forget_waiter(b"unsubscribe", name, future)

    # --- the pub/sub reader ---------------------------------------------------------------

    async def _run_reader(self) -> None:
        """Read the pub/sub connection; on loss reconnect, resubscribe and catch up."""
        # start() made the first connection (a Cluster shard's reader makes its own).
        lost, first, delay = self._conn is None, self._conn is None, self._reconnect_delay[0]
        while True:
            try:
                if lost:
                    if not await self._still_wanted(first):
                        return
                    await self._reconnect()
                    await self._resubscribe()
                    lost, delay = False, self._reconnect_delay[0]
                    if not first:
                        self.stats.reconnects += 1
                        log.info("Redis pub/sub connection restored (%s)", _safe_url(self._url))
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
                    _safe_url(self._url),
                    str(exc) or type(exc).__name__,
                    pause,
                )
                lost = True
                await asyncio.sleep(pause)
                delay = min(delay * 2, self._reconnect_delay[1])

    async def _still_wanted(self, first: bool) -> bool:
        """Before each (re)connection: False ends the reader (a Cluster shard's reader when
        its channels moved to other shards). `first`: no connection was made yet."""
        return True

    async def _reconnect(self) -> None:
        assert self._sub_pool is not None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
        conn = self._sub_pool.make_connection()  # type: ignore[no-untyped-call]
        self._conn = conn
        await asyncio.wait_for(conn.connect(), self._timeout)
        # Calls waiting for an UNSUBSCRIBE: the new connection is not subscribed.
        for (kind, _), waiters in list(self._waiters.items()):
            if kind == b"unsubscribe":
                for future in waiters:
                    if not future.done():
                        future.set_result(None)
        for key in [key for key in self._waiters if key[0] == b"unsubscribe"]:
            del self._waiters[key]

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
            await self._conn.send_command(self._SUBSCRIBE, *names[i : i + 1000])
        pending = set(names)
        while pending:
            reply = await self._receive(self._timeout)
            if reply is None:
                raise TimeoutError("Redis did not confirm the subscriptions")
            if isinstance(reply, list) and reply and reply[0] == self._SUBSCRIBED:
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
        results = await self._read_many(reads)
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
            again = await self._read_many([(subs[i][1].channel, None) for i in renewed])
            for i, result in zip(renewed, again, strict=True):
                results[i] = result
        for i, ((name, sub), result) in enumerate(zip(subs, results, strict=True)):
            if i not in diverged and self._subs.get(name) is sub:
                self._deliver_missed(name, sub, result)

    async def _start_new_epoch(self, name: bytes, sub: _Sub) -> None:
        """`sub`'s channel lost publications this node delivered (see `_diverged`): start a
        new epoch, so that every client holding the old offsets learns `recovered: false`,
        and end this node's subscriptions to it (on_gap)."""
        offset, epoch = await self._renew_epoch(sub.channel, sub.epoch or "")
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

    async def _renew_epoch(self, channel: str, epoch: str) -> tuple[int, str]:
        """Start a new epoch of `channel` unless it left `epoch` already; its (offset, epoch)."""
        keys = [self._key(channel, "meta"), self._key(channel, "stream")]
        args = [epoch, secrets.token_hex(4), _ms(self._meta_ttl)]
        offset, new = await self._renew(keys=keys, args=args)
        return int(offset), new.decode() if isinstance(new, bytes) else str(new)

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
            reply = await self._receive(self._ping_interval)
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
        kind = reply[0]
        if kind == self._MESSAGE:
            if self._buffer is not None:
                self._buffer.append((reply[1], reply[2]))
            else:
                self._message(reply[1], reply[2])
        elif kind == self._SUBSCRIBED:
            self._confirm(b"subscribe", reply[1])
        elif kind == self._UNSUBSCRIBED:
            self._unsubscribed(reply[1])

    def _unsubscribed(self, name: bytes) -> None:
        """Redis says the connection no longer listens to `name`."""
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
                publication = _publication(int(body["o"]), body["p"])
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

    # --- presence -------------------------------------------------------------------------

    def _presence_keys(self, channel: str) -> list[str]:
        return [self._key(channel, "pres"), self._key(channel, "pres:exp")]

    async def presence_add(self, channel: str, info: ClientInfo) -> None:
        """Record `info.client` as present in `channel`; this node keeps it fresh."""
        self._redis()
        value = _dumps(info.to_json())
        args = [info.client, value, _ms(self._presence_ttl)]
        with self._errors("presence add"):
            await self._presence_add(keys=self._presence_keys(channel), args=args)
        self._present[(channel, info.client)] = value

    async def presence_remove(self, channel: str, client: str) -> None:
        """Forget `client` in `channel` (no error when absent)."""
        self._redis()
        self._present.pop((channel, client), None)
        with self._errors("presence remove"):
            await self._presence_remove(keys=self._presence_keys(channel), args=[client])

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is present in `channel` (members whose node stopped refreshing are dropped)."""
        self._redis()
        with self._errors("presence"):
            reply = await self._presence(keys=self._presence_keys(channel))
        members: dict[str, ClientInfo] = {}
        for i in range(0, len(reply) - 1, 2):
            try:
                info = ClientInfo.from_json(json.loads(reply[i + 1]))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("ignoring a malformed presence entry in %r", channel)
                continue
            members[reply[i].decode()] = info
        return members

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Clients present in `channel` and distinct users among them, counted in Redis."""
        self._redis()
        with self._errors("presence stats"):
            clients, users = await self._presence_stats(keys=self._presence_keys(channel))
        return PresenceStats(clients=int(clients), users=int(users))

    async def _run_heartbeat(self) -> None:
        """Every presence_ttl / 3: refresh the expiry of this node's present clients."""
        ttl = _ms(self._presence_ttl)
        while True:
            await asyncio.sleep(self._presence_ttl / 3)
            client = self._client
            if client is None or not self._present:
                continue
            entries = list(self._present.items())
            try:
                for i in range(0, len(entries), 500):
                    async with client.pipeline(transaction=False) as pipe:
                        for (channel, member), value in entries[i : i + 500]:
                            await self._presence_add(
                                keys=self._presence_keys(channel),
                                args=[member, value, ttl],
                                client=pipe,
                            )
                        await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("refreshing presence in Redis failed: %s", exc)
                continue
            # A client removed while the refresh ran was just written back: remove it again.
            gone = [entry for entry, _ in entries if entry not in self._present]
            with contextlib.suppress(RedisError, OSError):
                for channel, member in gone:
                    await self._presence_remove(keys=self._presence_keys(channel), args=[member])


def from_url(url: str) -> RedisBroker:
    """The broker a Redis URL names (see rtserve.broker.url): `?prefix=NAME` is the key
    prefix (default `rtserve`); the rest of the URL goes to redis-py."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), None) or "rtserve"
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return RedisBroker(urlunsplit(parts._replace(query=rest)), prefix=prefix)
